"""ES256 against EdDSA for action tokens: what signing and verifying one costs here.

Signs the service's real token (``domain.tokens.encode``: every claim, a payload digest
and a session id) and verifies it the way an offline verifier does (``jwt.decode`` with
the JWKS key, the algorithm pinned, ``aud``, ``iss`` and ``exp`` checked), with pyjwt and
the OpenSSL that ``cryptography`` links. The last two columns are the bare signature
operations on the token's signing input (``cryptography`` alone), to tell OpenSSL's
share from pyjwt's.

Each figure is the best of ``--rounds`` timeit runs of ``--number`` calls, in µs a call:
the best run is the one least disturbed by the rest of the machine. The rounds take every
algorithm and operation in turn, so a drift of the machine's speed hits them alike.

Usage: python tools/token_algorithms.py [--number N] [--rounds R]
"""

from __future__ import annotations

import argparse
import hashlib
import timeit
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import cryptography
import jwt
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mfa_service.domain import tokens
from mfa_service.domain.model import Action, EnvironmentId, Method, UserId

ISSUER = "mfa-service"
AUDIENCE = "mfa-action"
OPERATIONS = ("sign", "verify", "bare sign", "bare verify")


def operations(algorithm: str) -> tuple[Callable[[], object], ...]:
    """The four timed calls of ``OPERATIONS`` for ``algorithm``, each checked once."""
    now = datetime.now(UTC)
    key = tokens.generate_key(algorithm, now=now)
    claims = tokens.ActionClaims(
        jti=uuid.uuid4(),
        environment_id=EnvironmentId("env-1"),
        user_id=UserId("alice"),
        actions=(Action.WAAS_SIGN,),
        single_use=True,
        issued_at=now,
        expires_at=now + timedelta(minutes=5),
        method=Method.TOTP,
        payload_digest=hashlib.sha256(b"transfer 1 ETH to bob").digest(),
        session_id="s-1",
    )
    token = tokens.encode(claims, key, issuer=ISSUER, audience=AUDIENCE)
    public = jwt.PyJWK(key.public_jwk()).key
    signing_input = token.rsplit(".", 1)[0].encode()
    private = key.private_key
    ecdsa = ec.ECDSA(hashes.SHA256())

    def sign() -> object:
        return tokens.encode(claims, key, issuer=ISSUER, audience=AUDIENCE)

    def verify() -> object:
        return jwt.decode(token, public, algorithms=[algorithm], audience=AUDIENCE, issuer=ISSUER)

    bare_sign: Callable[[], object]
    bare_verify: Callable[[], object]
    if isinstance(private, ec.EllipticCurvePrivateKey):
        ec_private, signature = private, private.sign(signing_input, ecdsa)
        ec_public = ec_private.public_key()
        bare_sign = lambda: ec_private.sign(signing_input, ecdsa)  # noqa: E731
        bare_verify = lambda: ec_public.verify(signature, signing_input, ecdsa)  # noqa: E731
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        ed_private, signature = private, private.sign(signing_input)
        ed_public = ed_private.public_key()
        bare_sign = lambda: ed_private.sign(signing_input)  # noqa: E731
        bare_verify = lambda: ed_public.verify(signature, signing_input)  # noqa: E731
    else:
        raise ValueError(f"no private key for {algorithm}")
    calls = (sign, verify, bare_sign, bare_verify)
    for call in calls:
        call()  # a wrong setup fails here, not in the table
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per timeit run")
    parser.add_argument("--rounds", type=int, default=5, help="timeit runs; the best counts")
    args = parser.parse_args()
    calls = {algorithm: operations(algorithm) for algorithm in tokens.ALGORITHMS}
    best = {algorithm: [float("inf")] * len(OPERATIONS) for algorithm in calls}
    for _ in range(args.rounds):
        for algorithm, timed in calls.items():
            for i, call in enumerate(timed):
                us = timeit.timeit(call, number=args.number) / args.number * 1e6
                best[algorithm][i] = min(best[algorithm][i], us)
    print(
        f"pyjwt {jwt.__version__}, cryptography {cryptography.__version__}, "
        f"{backend.openssl_version_text()}; best of {args.rounds} x {args.number} calls"
    )
    print(f"{'algorithm':<10}" + "".join(f"{op + ' µs':>16}" for op in OPERATIONS))
    for algorithm, figures in best.items():
        print(f"{algorithm:<10}" + "".join(f"{f:>16.1f}" for f in figures))


if __name__ == "__main__":
    main()
