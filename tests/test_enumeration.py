"""An unknown user cannot be told from an enrolled user giving a wrong proof.

Status, message, ErrorInfo reason and retry delay are compared on every path where a
caller presents a proof for a user: the lockout after repeated failures, a step-up for
an action token, and a recovery code. (VerifySession with one wrong TOTP code is
``tests/test_totp_flow.py::test_unknown_user_fails_like_a_wrong_code``.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pyotp
import pytest

from flows import call, challenge, enroll_totp, issue_action_token, start_totp, update_settings
from helpers import FakeClock
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError

ENV = "env-enumeration"
pytestmark = pytest.mark.environments(ENV)
Answer = tuple[grpc.StatusCode, str, str, timedelta | None]


async def answer(coro: Any) -> Answer:
    """What a refusal tells the caller: status, message, reason and retry delay."""
    with pytest.raises(MfaServiceError) as caught:
        await coro
    error = caught.value
    return error.code, error.message, error.reason, error.retry_after


async def verify(client: Client, user: str, proof: types.Proof) -> pb.VerifySessionResponse:
    return await call(
        client.mfa_stub.VerifySession(
            pb.VerifySessionRequest(
                environment_id=ENV,
                user_id=user,
                session_id="s",
                challenge_id=await challenge(client, ENV, user),
                proof=proof,
            )
        )
    )


def wrong_code_for(code: str) -> str:
    return f"{(int(code) + 3) % 10**6:06d}"


async def test_unknown_and_enrolled_users_lock_out_alike(client: Client, clock: FakeClock) -> None:
    device = await enroll_totp(client, clock, ENV, "ursula")
    clock.advance(timedelta(seconds=30))
    wrong = types.Proof(totp_code=wrong_code_for(device.code(clock.now())))
    known = [await answer(verify(client, "ursula", wrong)) for _ in range(6)]
    unknown = [await answer(verify(client, "nobody", wrong)) for _ in range(6)]
    assert known == unknown
    code, _, reason, retry_after = known[-1]
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "ERROR_REASON_LOCKED_OUT")
    assert retry_after is not None and retry_after > timedelta(0)


async def test_unknown_user_gets_no_token_like_a_wrong_code(
    client: Client, clock: FakeClock
) -> None:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    device = await enroll_totp(client, clock, ENV, "victor")
    clock.advance(timedelta(seconds=30))
    wrong = wrong_code_for(device.code(clock.now()))
    known = await answer(
        issue_action_token(client, ENV, "victor", wrong, await challenge(client, ENV, "victor"))
    )
    unknown = await answer(
        issue_action_token(client, ENV, "nobody", wrong, await challenge(client, ENV, "nobody"))
    )
    assert known == unknown
    assert known[2] == "ERROR_REASON_VERIFICATION_FAILED"


async def test_unknown_user_fails_like_a_wrong_recovery_code(
    client: Client, clock: FakeClock
) -> None:
    started = await start_totp(client, ENV, "wendy")
    done = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="wendy",
                enrollment_id=started.enrollment_id,
                totp_code=pyotp.TOTP(started.totp.secret).at(clock.now()),
            )
        )
    )
    real = done.recovery_codes[0]
    # Its id finds her row but the rest is wrong; or no code of hers has that id.
    wrong_secret = real[:-1] + ("A" if real[-1] != "A" else "B")
    wrong_id = ("A" if real[0] != "A" else "B") + real[1:]
    answers = [
        await answer(verify(client, user, types.Proof(recovery_code=code)))
        for user, code in [("wendy", wrong_secret), ("wendy", wrong_id), ("nobody", real)]
    ]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][2] == "ERROR_REASON_VERIFICATION_FAILED"
    await verify(client, "wendy", types.Proof(recovery_code=real))  # the real one still works
