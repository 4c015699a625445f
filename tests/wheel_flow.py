"""A complete flow through the installed mfa-client wheel, run by test_client_wheel.py in a
fresh virtual environment that holds only the wheel and its dependencies (so this file
imports nothing else: no pytest, no pyotp, nothing of the repository).

    python -I wheel_flow.py TARGET ENVIRONMENT USER NOW sync|async

enrolls USER's TOTP device, fails a challenge with a wrong code, passes one for a token
bound to a payload digest, validates it (for that payload, for another), resets the user,
validates it again, and prints what it saw as JSON. NOW is the server's time (its clock
is the tests' fake clock), in Unix seconds.

The flow is written once for both clients: each call is yielded. The sync client's call
has run by then, so its result (or its error) is already there; the async client's is a
coroutine, which ``run_async`` awaits and sends back, or throws back in on an error.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import struct
import sys
from collections.abc import Generator
from importlib import metadata
from typing import Any

import mfa_client
from mfa.v1 import types_pb2
from mfa_client import Client, MfaServiceError, Proof, SyncClient

Flow = Generator[Any, Any, dict[str, Any]]
SIGN = types_pb2.ACTION_WAAS_SIGN
TOTP = types_pb2.METHOD_TOTP


def totp(secret: str, at: float) -> str:
    """RFC 6238 (SHA-1, 6 digits, 30 s steps; RFC 4226 §5.3 truncation)."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return f"{(int.from_bytes(mac[offset : offset + 4]) & 0x7FFFFFFF) % 10**6:06d}"


def refusal(error: MfaServiceError) -> list[str]:
    return [error.code.name, error.reason]


def flow(client: Client | SyncClient, env: str, user: str, now: float) -> Flow:
    mfa, admin, tokens = client.mfa, client.admin, client.action_tokens
    seen: dict[str, Any] = {}
    settings = types_pb2.Settings(environment_id=env, protected_actions=[SIGN])
    yield admin.update_settings(settings, ["protected_actions"])

    started = yield mfa.enroll(environment_id=env, user_id=user, method=TOTP)
    secret = started.totp.secret
    done = yield mfa.complete_enrollment(
        environment_id=env,
        user_id=user,
        enrollment_id=started.enrollment_id,
        totp_code=totp(secret, now),
    )
    seen["recovery_codes"] = len(done.recovery_codes)

    next_code = totp(secret, now + 30)  # the next step's: the enrollment's code is spent
    opened = yield mfa.challenge(environment_id=env, user_id=user, method=TOTP)
    try:
        yield mfa.issue_action_token(
            environment_id=env,
            user_id=user,
            challenge_id=opened.challenge_id,
            proof=Proof.totp(f"{(int(next_code) + 1) % 10**6:06d}"),
            actions=[SIGN],
        )
    except MfaServiceError as error:
        seen["wrong_code"] = refusal(error)

    digest = hashlib.sha256(b"send 1.5 ETH to 0x12ab").digest()
    opened = yield mfa.challenge(environment_id=env, user_id=user, method=TOTP)
    issued = yield mfa.issue_action_token(  # multi-use: still usable when the user is reset
        environment_id=env,
        user_id=user,
        challenge_id=opened.challenge_id,
        proof=Proof.totp(next_code),
        actions=[SIGN],
        payload_digest=digest,
    )

    def validate(payload: bytes) -> Any:
        return tokens.validate(
            environment_id=env,
            user_id=user,
            action=SIGN,
            token=issued.token,
            payload_digest=payload,
        )

    allowed = yield validate(digest)
    other = yield validate(hashlib.sha256(b"send 99 ETH to 0x66ff").digest())
    reset = yield admin.reset_user_mfa(environment_id=env, user_id=user, reason="TICKET-1")
    revoked = yield validate(digest)
    seen["validations"] = [v.reason_name for v in (allowed, other, revoked)]
    seen["reset"] = [reset.devices_removed, reset.tokens_revoked]
    status = yield mfa.get_status(environment_id=env, user_id=user)
    seen["methods_after_reset"] = list(status.enrolled_methods)
    try:
        yield admin.create_environment(env)
    except MfaServiceError as error:
        seen["create_again"] = refusal(error)
    return seen


def run_sync(steps: Flow) -> dict[str, Any]:
    result = None
    try:
        while True:
            result = steps.send(result)
    except StopIteration as done:
        seen: dict[str, Any] = done.value
        return seen


async def run_async(steps: Flow) -> dict[str, Any]:
    result: Any = None
    error: MfaServiceError | None = None
    while True:
        try:
            call = steps.throw(error) if error else steps.send(result)
        except StopIteration as done:
            seen: dict[str, Any] = done.value
            return seen
        try:
            result, error = await call, None
        except MfaServiceError as failed:
            result, error = None, failed


async def main_async(target: str, env: str, user: str, now: float) -> dict[str, Any]:
    async with Client.connect(target, insecure=True) as client:
        return await run_async(flow(client, env, user, now))


def main() -> None:
    target, env, user, now, mode = sys.argv[1:]
    if mode == "sync":
        with SyncClient.connect(target, insecure=True) as client:
            seen = run_sync(flow(client, env, user, float(now)))
    else:
        seen = asyncio.run(main_async(target, env, user, float(now)))
    seen["installed"] = {
        "client": mfa_client.__file__.startswith(sys.prefix),
        "distributions": sorted(  # normalized names (PEP 503)
            re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in metadata.distributions()
        ),
    }
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
