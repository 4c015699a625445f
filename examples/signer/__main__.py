"""``python -m examples.signer``: sign one message if mfa-service allows it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from examples.signer.approval import ApprovalNotVerified, b64url_decode
from examples.signer.signer import Signer, SigningRefused
from mfa_client import Client, MfaServiceError

EXIT_REFUSED = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.signer",
        description="Sign a message with Ed25519 if mfa-service allows ACTION_WAAS_SIGN.",
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="mfa-service address")
    parser.add_argument("--env", required=True, help="environment id")
    parser.add_argument("--user", required=True, help="user id")
    parser.add_argument("--token", default="", help="the user's action token (may be empty)")
    parser.add_argument("--session", default="", help="login session, if the token is bound")
    parser.add_argument("--message", required=True, help="the message to sign (UTF-8)")
    parser.add_argument(
        "--signing-key",
        type=Path,
        help="Ed25519 private key, PKCS#8 PEM (default: a new key; its public key goes to stderr)",
    )
    parser.add_argument(
        "--verify-approval",
        action="store_true",
        help="first check offline that the user's passkey approved this message "
        "(docs/approvals.md); needs --passkey-public-key",
    )
    parser.add_argument(
        "--passkey-public-key",
        type=_cose_key,
        help="the user's passkey public key: COSE, base64url (Device.passkey_public_key)",
    )
    parser.add_argument("--ca-cert", type=Path, help="CA of the server certificate: use TLS")
    parser.add_argument("--client-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--client-key", type=Path, help="client key for mutual TLS")
    return parser


def _cose_key(text: str) -> bytes:
    try:
        return b64url_decode(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError("not base64url") from error


def _signing_key(path: Path | None) -> Ed25519PrivateKey:
    if path is None:
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        print(f"ephemeral public key: {public.hex()}", file=sys.stderr)
        return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SystemExit(f"{path}: not an Ed25519 private key")
    return loaded


def _connect(args: argparse.Namespace) -> Client:
    if args.ca_cert is None:
        return Client.connect(args.target, insecure=True)  # plaintext: development only
    return Client.connect(
        args.target,
        root_certificates=args.ca_cert.read_bytes(),
        certificate_chain=args.client_cert.read_bytes() if args.client_cert else None,
        private_key=args.client_key.read_bytes() if args.client_key else None,
    )


async def _run(args: argparse.Namespace) -> int:
    key = _signing_key(args.signing_key)
    async with _connect(args) as client:
        signer = Signer(client, args.env, key)
        try:
            signature = await signer.sign(
                args.user,
                args.message.encode(),
                args.token,
                session_id=args.session,
                passkey_public_key=args.passkey_public_key if args.verify_approval else None,
            )
        except SigningRefused as refused:
            print(f"refused: {refused.reason_name}", file=sys.stderr)
            return EXIT_REFUSED
        except ApprovalNotVerified as refused:
            print(f"refused: {refused}", file=sys.stderr)
            return EXIT_REFUSED
        except MfaServiceError as error:
            print(f"mfa-service error: {error}", file=sys.stderr)
            return 1
    print(signature.hex())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verify_approval != (args.passkey_public_key is not None):
        parser.error("--verify-approval and --passkey-public-key go together")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
