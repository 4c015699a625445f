"""``python -m examples.dashboard``: serve the Settings > Security page on
http://127.0.0.1:PORT (loopback only: it is an admin screen with no login of its own)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from examples.dashboard.app import create_app
from examples.web import run, serve, until_stopped
from mfa_client import Client

HOST = "127.0.0.1"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.dashboard",
        description="The dashboard's Settings > Security page: per-environment MFA "
        "settings, the audit log and user resets, through mfa-service's AdminService.",
    )
    parser.add_argument("--grpc", default="127.0.0.1:50051", help="mfa-service address")
    parser.add_argument("--port", type=int, default=8081, help="HTTP port (0: any free one)")
    tls = parser.add_argument_group(
        "mutual TLS", "without these, plaintext gRPC to a local `make run` (development)"
    )
    tls.add_argument("--ca", type=Path, help="CA of mfa-service's certificate (PEM)")
    tls.add_argument("--cert", type=Path, help="this dashboard's client certificate (PEM)")
    tls.add_argument("--key", type=Path, help="its private key (PEM)")
    return parser


def _connect(args: argparse.Namespace) -> Client:
    if args.cert is None and args.key is None and args.ca is None:
        return Client.connect(args.grpc, insecure=True)
    if args.cert is None or args.key is None or args.ca is None:
        raise SystemExit("--ca, --cert and --key go together")
    return Client.connect(
        args.grpc,
        root_certificates=args.ca.read_bytes(),
        certificate_chain=args.cert.read_bytes(),
        private_key=args.key.read_bytes(),
    )


async def _run(args: argparse.Namespace) -> None:
    async with _connect(args) as client:
        # Shown before serving: a dashboard that cannot reach mfa-service says so now.
        await client.admin.list_environments(page_size=1)
        server = await serve(create_app(client), host=HOST, port=args.port)
        try:
            print(f"open http://{HOST}:{server.port}/  (mfa-service at {args.grpc})", flush=True)
            await until_stopped()
        finally:
            await server.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), args.grpc)


if __name__ == "__main__":
    sys.exit(main())
