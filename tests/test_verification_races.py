"""Attacks on the deciding statement of a device-factor verification.

A TOTP or passkey verification reads without a lock, checks the proof in memory, and
then one statement decides under the user's row lock (store.verifications.conclude).
These tests race that statement against itself: replays, a lockout starting while a
correct code is in flight, and the writes that must happen only with success.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from flows import (
    TotpDevice,
    challenge,
    enroll_totp,
    issue_action_token,
    update_settings,
    verify_session,
)
from helpers import FakeClock, refused
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service.app import Application
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.domain.settings import LockoutSettings
from mfa_service.domain.verification import TotpStep
from mfa_service.store import verifications as verification_store

ENV = "env-races"
pytestmark = pytest.mark.environments(ENV)
SIGN = types.ACTION_WAAS_SIGN


def wrong(device: TotpDevice, clock: FakeClock, offset: int = 1) -> str:
    return f"{(int(device.code(clock.now())) + offset) % 10**6:06d}"


async def issue(client: Client, user: str, code: str, challenge_id: str) -> str:
    return str((await issue_action_token(client, ENV, user, code, challenge_id)).token)


async def audit_types(db: asyncpg.Connection, user: str) -> list[str]:
    rows = await db.fetch(
        "SELECT type FROM audit_events WHERE environment_id = $1 AND user_id = $2",
        ENV,
        user,
    )
    return sorted(r["type"] for r in rows)


def reasons(results: list[Any]) -> list[str]:
    return sorted(r.reason for r in results if isinstance(r, MfaServiceError))


@pytest.fixture
async def clients(app: Application) -> Any:
    """Several connections, so the calls really run at once on the server."""
    opened = [Client.connect(f"127.0.0.1:{app.port}", insecure=True) for _ in range(4)]
    yield opened
    for c in opened:
        await c.close()


async def test_one_code_issued_concurrently_mints_one_token_and_nothing_else(
    client: Client, clients: list[Client], clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(client, ENV, protected_actions=[SIGN], lockout__max_failed_attempts=100)
    device = await enroll_totp(client, clock, ENV, "ada")
    clock.advance(timedelta(seconds=30))
    code = device.code(clock.now())
    challenges = [await challenge(client, ENV, "ada") for _ in range(12)]
    results = await asyncio.gather(
        *(issue(clients[i % 4], "ada", code, c) for i, c in enumerate(challenges)),
        return_exceptions=True,
    )
    tokens = [r for r in results if isinstance(r, str)]
    assert len(tokens) == 1
    assert reasons(results) == ["ERROR_REASON_VERIFICATION_FAILED"] * 11
    # Only the winner's write happened; every loser was counted and audited as a reuse.
    assert await db.fetchval("SELECT count(*) FROM action_tokens WHERE user_id = 'ada'") == 1
    assert await db.fetchval("SELECT count(*) FROM challenges WHERE user_id = 'ada'") == 0
    assert await db.fetchval("SELECT failed_attempts FROM mfa_users WHERE user_id = 'ada'") == 11
    seen = await audit_types(db, "ada")
    assert seen.count("TOKEN_ISSUED") == 1
    assert seen.count("VERIFICATION_SUCCEEDED") == 1
    assert seen.count("CODE_REUSED") == 11
    assert "VERIFICATION_FAILED" not in seen


async def test_a_correct_code_cannot_slip_past_a_lockout_started_concurrently(
    client: Client, clients: list[Client], clock: FakeClock, db: asyncpg.Connection
) -> None:
    """One failure short of the limit, a correct code races three wrong ones. Whatever
    order the server picks, the outcome must be one a serial order could give: the
    correct code first (it succeeds, resets the count, the three wrong ones count 1..3),
    or a wrong one first (it starts the lockout, everything after is refused)."""
    for round_ in range(16):
        user = f"bo{round_}"
        device = await enroll_totp(client, clock, ENV, user)
        clock.advance(timedelta(seconds=30))
        for i in range(4):  # the limit is 5
            await refused(
                verify_session(client, ENV, user, "s", wrong(device, clock, i + 1)),
                grpc.StatusCode.PERMISSION_DENIED,
                "ERROR_REASON_VERIFICATION_FAILED",
            )
        attempts = [(device.code(clock.now()), await challenge(client, ENV, user))]
        for i in range(3):
            attempts.append((wrong(device, clock, 10 + i), await challenge(client, ENV, user)))
        results = await asyncio.gather(
            *(
                verify_session(clients[i], ENV, user, "s", code, challenge_id)
                for i, (code, challenge_id) in enumerate(attempts)
            ),
            return_exceptions=True,
        )
        state = await db.fetchrow(
            "SELECT failed_attempts, locked_until FROM mfa_users WHERE user_id = $1", user
        )
        assert state is not None
        sessions = await db.fetchval(
            "SELECT count(*) FROM verified_sessions WHERE user_id = $1", user
        )
        lockouts = (await audit_types(db, user)).count("LOCKED_OUT")
        if isinstance(results[0], pb.VerifySessionResponse):  # the correct code first
            assert reasons(results[1:]) == ["ERROR_REASON_VERIFICATION_FAILED"] * 3
            assert (state["failed_attempts"], state["locked_until"]) == (3, None)
            assert (sessions, lockouts) == (1, 0)
        else:  # a wrong code first: it started the lockout
            assert isinstance(results[0], MfaServiceError)
            assert results[0].reason == "ERROR_REASON_LOCKED_OUT"
            assert reasons(results[1:]) == [
                "ERROR_REASON_LOCKED_OUT",
                "ERROR_REASON_LOCKED_OUT",
                "ERROR_REASON_VERIFICATION_FAILED",
            ]
            assert state["failed_attempts"] == 5
            assert state["locked_until"] is not None
            assert (sessions, lockouts) == (0, 1)


async def test_the_lockout_event_records_the_count_that_started_it(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    device = await enroll_totp(client, clock, ENV, "cy")
    await update_settings(client, ENV, lockout__max_failed_attempts=3)
    clock.advance(timedelta(seconds=30))
    for i in range(3):
        await refused(
            verify_session(client, ENV, "cy", "s", wrong(device, clock, i + 1)),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
    rows = await db.fetch(
        "SELECT method, details FROM audit_events WHERE user_id = 'cy' AND type = 'LOCKED_OUT'"
    )
    assert len(rows) == 1
    assert rows[0]["method"] == "TOTP"
    assert json.loads(rows[0]["details"]) == {
        "failed_attempts": "3",
        "locked_until": (clock.now() + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


async def test_a_failure_after_an_ended_lockout_goes_on_counting(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The count is of consecutive failures: an ended lockout does not restart it, so the
    streak's next lockout comes after as many failures again and lasts twice as long."""
    device = await enroll_totp(client, clock, ENV, "di")
    clock.advance(timedelta(seconds=30))
    for i in range(5):
        await refused(
            verify_session(client, ENV, "di", "s", wrong(device, clock, i + 1)),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
    clock.advance(timedelta(minutes=15))
    await refused(
        verify_session(client, ENV, "di", "s", wrong(device, clock)),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    state = await db.fetchrow(
        "SELECT failed_attempts, locked_until FROM mfa_users WHERE user_id = 'di'"
    )
    assert state is not None
    assert (state["failed_attempts"], state["locked_until"]) == (6, None)
    for i in range(4):
        with pytest.raises(MfaServiceError) as caught:
            await verify_session(client, ENV, "di", "s", wrong(device, clock, i + 2))
        assert caught.value.reason == "ERROR_REASON_VERIFICATION_FAILED"
    state = await db.fetchrow(
        "SELECT failed_attempts, locked_until FROM mfa_users WHERE user_id = 'di'"
    )
    assert state is not None
    assert (state["failed_attempts"], state["locked_until"]) == (
        10,
        clock.now() + timedelta(minutes=30),
    )


async def test_the_totp_step_write_decides_on_the_stored_step_not_on_what_was_read(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """Verification reads the devices without a lock, so the last step it read may be
    stale: the deciding statement itself refuses a step at or before the stored one (and
    then counts a failure)."""
    await enroll_totp(client, clock, ENV, "fay")
    device_id = await db.fetchval("SELECT id FROM devices WHERE user_id = 'fay'")

    async def advance(step: int) -> verification_store.Outcome:
        concluded = await verification_store.conclude(
            db,
            EnvironmentId(ENV),
            UserId("fay"),
            uuid.UUID(await challenge(client, ENV, "fay")),
            now=clock.now(),
            device_id=device_id,
            advance=TotpStep(step),
            lockout=LockoutSettings(100, timedelta(minutes=15)),
            grant=None,
            events=[],
        )
        return concluded.outcome

    stored = await db.fetchval("SELECT totp_last_step FROM devices WHERE id = $1", device_id)
    assert stored is not None  # the enrollment code's step
    failed, succeeded = verification_store.Outcome.FAILED, verification_store.Outcome.SUCCEEDED
    assert await advance(stored) is failed  # the step already accepted: a replay
    assert await advance(stored + 1) is succeeded
    assert await advance(stored + 1) is failed  # the same step again
    assert await advance(stored) is failed  # read stale, would move the step back
    assert (
        await db.fetchval("SELECT totp_last_step FROM devices WHERE id = $1", device_id)
        == stored + 1
    )
    assert await db.fetchval("SELECT failed_attempts FROM mfa_users WHERE user_id = 'fay'") == 2


async def test_a_failed_verification_writes_neither_token_nor_session(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(client, ENV, protected_actions=[SIGN])
    device = await enroll_totp(client, clock, ENV, "ed")
    clock.advance(timedelta(seconds=30))
    with pytest.raises(MfaServiceError):
        await issue(client, "ed", wrong(device, clock), await challenge(client, ENV, "ed"))
    with pytest.raises(MfaServiceError):
        await verify_session(client, ENV, "ed", "s", wrong(device, clock, 2))
    assert await db.fetchval("SELECT count(*) FROM action_tokens WHERE user_id = 'ed'") == 0
    assert await db.fetchval("SELECT count(*) FROM verified_sessions WHERE user_id = 'ed'") == 0
    assert await audit_types(db, "ed") == [
        "ENROLLMENT_COMPLETED",
        "ENROLLMENT_STARTED",
        "RECOVERY_CODES_GENERATED",
        "VERIFICATION_FAILED",
        "VERIFICATION_FAILED",
    ]
