"""``python -m examples.webapp``: serve the user's MFA screens on http://localhost:PORT."""

from __future__ import annotations

import argparse
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from examples.signer import Signer
from examples.web import run, until_stopped
from examples.webapp.app import configure_environment, create_app, serve
from mfa_client import Client


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.webapp",
        description="A demo application backend with the user's MFA screens: set up an "
        "authenticator app or a passkey, recovery codes, session MFA at sign-in, approvals "
        "and devices, through mfa-service.",
    )
    parser.add_argument("--grpc", default="127.0.0.1:50051", help="mfa-service address")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (0: any free one)")
    parser.add_argument("--env", default="demo", help="environment id")
    parser.add_argument(
        "--no-configure",
        dest="configure",
        action="store_false",
        help="leave the environment's settings alone (by default authenticator apps and "
        "passkeys are turned on, the page's origin allowed for passkeys, ACTION_WAAS_SIGN "
        "protected and session MFA turned on)",
    )
    return parser


async def _run(args: argparse.Namespace) -> None:
    # Plaintext gRPC: a local mfa-service from `make run`. Demo only.
    async with Client.connect(args.grpc, insecure=True) as client:
        signer = Signer(client, args.env, Ed25519PrivateKey.generate())
        server = await serve(create_app(client, args.env, signer), port=args.port)
        try:
            # The URL must say localhost: the RP id is "localhost", and browsers refuse
            # WebAuthn for it from http://127.0.0.1.
            origin = f"http://localhost:{server.port}"
            if args.configure:
                await configure_environment(client, args.env, origin)
            print(
                f"open {origin}/  (environment {args.env!r}, mfa-service at {args.grpc})",
                flush=True,
            )
            await until_stopped()
        finally:
            await server.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), args.grpc)


if __name__ == "__main__":
    sys.exit(main())
