"""Lockouts that keep counting: consecutive failures count until a success, each lockout of
a streak lasts twice the one before (at most 24 h), and at 100 consecutive failures
(NIST SP 800-63B §5.2.2) the authenticator app and passkeys stop verifying until a
recovery code succeeds or an administrator resets the user."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from authenticator import SoftAuthenticator

from flows import (
    TotpDevice,
    call,
    challenge,
    enroll_passkey,
    enroll_totp,
    issue_action_token,
    start_totp,
    status,
    update_settings,
    verify_session,
)
from helpers import FakeClock, refused
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service.app import Application
from mfa_service.domain import lockout
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.domain.settings import (
    LOCKOUT_DURATION_RANGE,
    MAX_FAILED_ATTEMPTS_RANGE,
    LockoutSettings,
)
from mfa_service.domain.verification import TotpStep
from mfa_service.store import verifications as verification_store
from mfa_service.store.verifications import WrittenOn

ENV = "env-lockout"
pytestmark = pytest.mark.environments(ENV)
ORIGIN = "https://app.example.com"
RP_ID = "example.com"
LOCKED_OUT = (grpc.StatusCode.RESOURCE_EXHAUSTED, "ERROR_REASON_LOCKED_OUT")
FAILED = (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_VERIFICATION_FAILED")
RECOVERY_REQUIRED = (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_RECOVERY_REQUIRED")


def wrong(device: TotpDevice, clock: FakeClock, offset: int = 1) -> str:
    return f"{(int(device.code(clock.now())) + offset) % 10**6:06d}"


def audit_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def failures(db: asyncpg.Connection, user: str) -> int | None:
    count: int | None = await db.fetchval(
        "SELECT failed_attempts FROM mfa_users WHERE environment_id = $1 AND user_id = $2",
        ENV,
        user,
    )
    return count


async def challenge_left(db: asyncpg.Connection, challenge_id: str) -> bool:
    found: bool = await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM challenges WHERE id = $1)", uuid.UUID(challenge_id)
    )
    return found


async def lockout_events(db: asyncpg.Connection, user: str) -> list[dict[str, str]]:
    rows = await db.fetch(
        "SELECT details FROM audit_events WHERE environment_id = $1 AND user_id = $2 "
        "AND type = 'LOCKED_OUT' ORDER BY id",
        ENV,
        user,
    )
    return [json.loads(r["details"]) for r in rows]


async def guess_wrong(
    client: Client, clock: FakeClock, user: str, device: TotpDevice, n: int
) -> None:
    """``n`` wrong codes, each refused as a plain failure (none of them locked out)."""
    for i in range(n):
        await refused(verify_session(client, ENV, user, "s", wrong(device, clock, i + 1)), *FAILED)


# --- the formula, pure --------------------------------------------------------------


def test_the_kth_lockout_of_a_streak_lasts_twice_the_one_before_up_to_a_day() -> None:
    base = timedelta(minutes=15)
    durations = [lockout.lockout_duration(5 * k, 5, base) for k in range(1, 11)]
    assert durations == [
        timedelta(minutes=15),
        timedelta(minutes=30),
        timedelta(hours=1),
        timedelta(hours=2),
        timedelta(hours=4),
        timedelta(hours=8),
        timedelta(hours=16),
        timedelta(hours=24),  # capped: 32 h would be longer than the longest allowed
        timedelta(hours=24),
        timedelta(hours=24),
    ]
    assert lockout.LONGEST_LOCKOUT == LOCKOUT_DURATION_RANGE[1] == timedelta(hours=24)
    # The loosest settings: 100 attempts, 1 min: one lockout before the hard limit.
    assert lockout.lockout_duration(100, 100, timedelta(minutes=1)) == timedelta(minutes=1)
    assert lockout.lockout_duration(200, 100, timedelta(minutes=1)) == timedelta(minutes=2)
    # Far past the hard limit (recovery-code failures go on counting), still one day.
    assert lockout.lockout_duration(10**6, 1, timedelta(hours=24)) == timedelta(hours=24)


def test_only_a_multiple_of_the_limit_starts_a_lockout() -> None:
    base = timedelta(minutes=1)
    started = [n for n in range(0, 31) if lockout.lockout_duration(n, 3, base) is not None]
    assert started == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert lockout.lockout_duration(1, 1, base) == base  # every failure, with a limit of 1


def test_the_hard_limit_is_100_consecutive_failures() -> None:
    assert lockout.HARD_LIMIT == 100 == MAX_FAILED_ATTEMPTS_RANGE[1]
    assert not lockout.recovery_required(99)
    assert lockout.recovery_required(100)
    assert lockout.recovery_required(101)
    assert lockout.AttemptState(100, None).recovery_required


async def test_reaching_the_hard_limit_is_audited_without_a_lockout(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The 100th consecutive failure writes LOCKED_OUT even when no temporary lockout
    starts with it (3 attempts a lockout: the 99th locked, the 100th does not); the 101st
    writes none. Counted by the statement every transactional path uses."""
    await db.execute(
        "INSERT INTO mfa_users (environment_id, user_id, created_at, failed_attempts) "
        "VALUES ($1, 'lim', $2, 99)",
        ENV,
        clock.now(),
    )
    context = CallContext("test", "r")

    async def count() -> None:
        def event(event_type: AuditEventType) -> AuditEvent:
            return AuditEvent(event_type, ENV, clock.now(), context, user_id="lim")

        async with db.transaction():
            await verification_store.count_failure(
                db,
                EnvironmentId(ENV),
                UserId("lim"),
                now=clock.now(),
                lockout=LockoutSettings(3, timedelta(minutes=1)),
                events=[
                    (WrittenOn.FAILURE, event(AuditEventType.VERIFICATION_FAILED)),
                    (WrittenOn.LOCKOUT, event(AuditEventType.LOCKED_OUT)),
                ],
            )

    await count()
    assert await lockout_events(db, "lim") == [
        {"failed_attempts": "100", "recovery_required": "true"}
    ]
    await count()
    assert await failures(db, "lim") == 101
    assert len(await lockout_events(db, "lim")) == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_events "
            "WHERE user_id = 'lim' AND type = 'VERIFICATION_FAILED'"
        )
        == 2
    )


async def test_the_database_rule_is_the_domain_formula(db: asyncpg.Connection) -> None:
    """Every statement that counts a failure calls mfa_lockout_duration (migration 0008):
    it must be exactly domain.lockout.lockout_duration."""
    bases = [
        timedelta(minutes=1),
        timedelta(minutes=7, seconds=30),
        timedelta(minutes=15),
        timedelta(hours=5),
        timedelta(hours=24),
    ]
    cases = [
        (failures, limit, base)
        for failures in [*range(0, 120), 199, 200, 1000, 10**6, 2**31 - 1]
        for limit in (1, 2, 3, 5, 7, 100)
        for base in bases
    ]
    rows = await db.fetch(
        "SELECT mfa_lockout_duration(f, m, b) AS d "
        "FROM unnest($1::int[], $2::int[], $3::interval[]) WITH ORDINALITY AS t(f, m, b, i) "
        "ORDER BY i",
        [c[0] for c in cases],
        [c[1] for c in cases],
        [c[2] for c in cases],
    )
    assert [r["d"] for r in rows] == [lockout.lockout_duration(*c) for c in cases]


# --- through the server -------------------------------------------------------------


async def test_an_ended_lockout_does_not_restart_the_count_and_the_next_lasts_twice_as_long(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(
        client, ENV, lockout__max_failed_attempts=3, lockout__lockout_duration=timedelta(minutes=1)
    )
    device = await enroll_totp(client, clock, ENV, "ann")
    clock.advance(timedelta(seconds=30))
    await guess_wrong(client, clock, "ann", device, 3)
    locked = await refused(
        verify_session(client, ENV, "ann", "s", device.code(clock.now())), *LOCKED_OUT
    )
    assert locked.retry_after == timedelta(seconds=60)

    clock.advance(timedelta(seconds=61))
    await guess_wrong(client, clock, "ann", device, 3)
    assert await failures(db, "ann") == 6
    locked = await refused(
        verify_session(client, ENV, "ann", "s", device.code(clock.now())), *LOCKED_OUT
    )
    assert locked.retry_after == timedelta(seconds=120)
    until = clock.now() + timedelta(seconds=120)
    assert (await status(client, ENV, "ann")).locked_until.ToDatetime(tzinfo=UTC) == until
    assert (await lockout_events(db, "ann"))[-1] == {
        "failed_attempts": "6",
        "locked_until": audit_time(until),
    }

    # A correct code after the lockout ends the streak: the count, and the doubling.
    clock.advance(timedelta(seconds=120))
    await verify_session(client, ENV, "ann", "s", device.code(clock.now()))
    assert await failures(db, "ann") == 0
    assert not (await status(client, ENV, "ann")).HasField("locked_until")
    await guess_wrong(client, clock, "ann", device, 3)
    locked = await refused(
        verify_session(client, ENV, "ann", "s", device.code(clock.now())), *LOCKED_OUT
    )
    assert locked.retry_after == timedelta(seconds=60)


@pytest.fixture
async def hard_limit_settings(client: Client) -> None:
    """The loosest lockout the settings allow, so 100 failures take 100 calls."""
    await update_settings(
        client,
        ENV,
        passkey__rp_id=RP_ID,
        passkey__allowed_origins=[ORIGIN],
        lockout__max_failed_attempts=100,
        lockout__lockout_duration=timedelta(minutes=1),
    )


async def passkey_challenge(client: Client, user: str) -> pb.ChallengeResponse:
    return await call(
        client.mfa_stub.Challenge(
            pb.ChallengeRequest(environment_id=ENV, user_id=user, method=types.METHOD_PASSKEY)
        )
    )


async def verify_proof(
    client: Client, user: str, challenge_id: str, **proof: str
) -> pb.VerifySessionResponse:
    return await call(
        client.mfa_stub.VerifySession(
            pb.VerifySessionRequest(
                environment_id=ENV,
                user_id=user,
                session_id="s",
                challenge_id=challenge_id,
                proof=types.Proof(**proof),
            )
        )
    )


async def reset(client: Client, user: str) -> None:
    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id=user, reason="ticket-17")
        )
    )


async def test_at_100_consecutive_failures_only_a_recovery_code_verifies(
    client: Client, clock: FakeClock, db: asyncpg.Connection, hard_limit_settings: None
) -> None:
    started = await start_totp(client, ENV, "hal")
    device = TotpDevice("", started.totp.secret)
    done = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="hal",
                enrollment_id=started.enrollment_id,
                totp_code=device.code(clock.now()),
            )
        )
    )
    codes = list(done.recovery_codes)
    clock.advance(timedelta(seconds=30))
    link = await issue_action_token(
        client,
        ENV,
        "hal",
        device.code(clock.now()),
        await challenge(client, ENV, "hal"),
        actions=(types.ACTION_CREDENTIAL_LINK,),
    )
    passkey = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    await enroll_passkey(client, ENV, "hal", passkey, link.token)

    await guess_wrong(client, clock, "hal", device, 99)
    assert not (await status(client, ENV, "hal")).recovery_required
    await guess_wrong(client, clock, "hal", device, 1)  # the 100th
    assert await failures(db, "hal") == 100
    until = clock.now() + timedelta(minutes=1)  # the streak's first lockout
    assert (await lockout_events(db, "hal"))[-1] == {
        "failed_attempts": "100",
        "locked_until": audit_time(until),
        "recovery_required": "true",
    }
    seen = await status(client, ENV, "hal")
    assert seen.recovery_required
    assert seen.locked_until.ToDatetime(tzinfo=UTC) == until

    # The lockout answers first, with its delay, whatever the count; for a recovery code too.
    locked = await refused(
        verify_session(client, ENV, "hal", "s", device.code(clock.now())), *LOCKED_OUT
    )
    assert locked.retry_after == timedelta(minutes=1)
    pending = await challenge(client, ENV, "hal", types.METHOD_RECOVERY_CODE)
    locked = await refused(
        verify_proof(client, "hal", pending, recovery_code=codes[0]), *LOCKED_OUT
    )

    # After it, the right TOTP code and the right passkey are refused, spend nothing and
    # are not counted.
    clock.advance(timedelta(minutes=1))
    pending = await challenge(client, ENV, "hal")
    await refused(
        verify_session(client, ENV, "hal", "s", device.code(clock.now()), pending),
        *RECOVERY_REQUIRED,
    )
    assert await challenge_left(db, pending)
    opened = await passkey_challenge(client, "hal")
    assertion = passkey.assertion(opened.passkey_request_options_json)
    await refused(
        verify_proof(client, "hal", opened.challenge_id, passkey_assertion_json=assertion),
        *RECOVERY_REQUIRED,
    )
    assert await challenge_left(db, opened.challenge_id)
    await refused(
        issue_action_token(
            client,
            ENV,
            "hal",
            device.code(clock.now()),
            pending,
            actions=(types.ACTION_CREDENTIAL_LINK,),
        ),
        *RECOVERY_REQUIRED,
    )
    assert await challenge_left(db, pending)
    assert await failures(db, "hal") == 100
    assert await db.fetchval("SELECT count(*) FROM verified_sessions WHERE user_id = 'hal'") == 0
    assert await db.fetchval("SELECT count(*) FROM action_tokens WHERE user_id = 'hal'") == 1

    # A wrong recovery code is a counted failure (the lockouts keep going); the right
    # one verifies and ends the streak.
    pending = await challenge(client, ENV, "hal", types.METHOD_RECOVERY_CODE)
    await refused(
        verify_proof(client, "hal", pending, recovery_code="ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ"), *FAILED
    )
    assert await failures(db, "hal") == 101
    pending = await challenge(client, ENV, "hal", types.METHOD_RECOVERY_CODE)
    verified = await verify_proof(client, "hal", pending, recovery_code=codes[0])
    assert verified.method == types.METHOD_RECOVERY_CODE
    assert await failures(db, "hal") == 0
    assert not (await status(client, ENV, "hal")).recovery_required

    # The authenticator app and the passkey verify again (challenges left from before).
    await verify_proof(client, "hal", opened.challenge_id, passkey_assertion_json=assertion)
    await verify_session(client, ENV, "hal", "s", device.code(clock.now()))


async def test_at_the_hard_limit_enrollment_waits_for_an_admin_reset(
    client: Client, clock: FakeClock, db: asyncpg.Connection, hard_limit_settings: None
) -> None:
    """A user with no factor (so no recovery code) driven to the limit: neither a first
    code nor a first passkey completes an enrollment, until ResetUserMfa."""
    totp = await start_totp(client, ENV, "ivy")
    secret = TotpDevice("", totp.totp.secret)
    passkey = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    for i in range(100):  # wrong first codes: counted like any wrong code
        await refused(
            call(
                client.mfa_stub.CompleteEnrollment(
                    pb.CompleteEnrollmentRequest(
                        environment_id=ENV,
                        user_id="ivy",
                        enrollment_id=totp.enrollment_id,
                        totp_code=wrong(secret, clock, i + 1),
                    )
                )
            ),
            *FAILED,
        )
    assert await failures(db, "ivy") == 100
    assert (await lockout_events(db, "ivy"))[-1] == {
        "failed_attempts": "100",
        "locked_until": audit_time(clock.now() + timedelta(minutes=1)),
        "recovery_required": "true",
    }
    clock.advance(timedelta(minutes=1))
    registration = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(environment_id=ENV, user_id="ivy", method=types.METHOD_PASSKEY)
        )
    )
    for request in (
        pb.CompleteEnrollmentRequest(
            environment_id=ENV,
            user_id="ivy",
            enrollment_id=totp.enrollment_id,
            totp_code=secret.code(clock.now()),
        ),
        pb.CompleteEnrollmentRequest(
            environment_id=ENV,
            user_id="ivy",
            enrollment_id=registration.enrollment_id,
            passkey_registration_json=passkey.register(registration.passkey.creation_options_json),
        ),
    ):
        await refused(call(client.mfa_stub.CompleteEnrollment(request)), *RECOVERY_REQUIRED)
    # Neither enrollment was spent, nothing was counted, no device exists.
    assert await db.fetchval("SELECT count(*) FROM enrollments WHERE user_id = 'ivy'") == 2
    assert await failures(db, "ivy") == 100
    assert await db.fetchval("SELECT count(*) FROM devices WHERE user_id = 'ivy'") == 0

    await reset(client, "ivy")
    assert await failures(db, "ivy") is None
    assert not (await status(client, ENV, "ivy")).recovery_required
    device = await enroll_totp(client, clock, ENV, "ivy")
    clock.advance(timedelta(seconds=30))
    await verify_session(client, ENV, "ivy", "s", device.code(clock.now()))


async def test_an_admin_reset_reopens_the_factors_of_a_user_at_the_hard_limit(
    client: Client, clock: FakeClock, db: asyncpg.Connection, hard_limit_settings: None
) -> None:
    device = await enroll_totp(client, clock, ENV, "jo")
    clock.advance(timedelta(seconds=30))
    await guess_wrong(client, clock, "jo", device, 100)
    clock.advance(timedelta(minutes=1))
    await refused(
        verify_session(client, ENV, "jo", "s", device.code(clock.now())), *RECOVERY_REQUIRED
    )

    await reset(client, "jo")
    seen = await status(client, ENV, "jo")
    assert not seen.recovery_required
    assert not seen.HasField("locked_until")
    assert await failures(db, "jo") is None
    device = await enroll_totp(client, clock, ENV, "jo")
    clock.advance(timedelta(seconds=30))
    await verify_session(client, ENV, "jo", "s", device.code(clock.now()))
    passkey = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    clock.advance(timedelta(seconds=30))
    link = await issue_action_token(
        client,
        ENV,
        "jo",
        device.code(clock.now()),
        await challenge(client, ENV, "jo"),
        actions=(types.ACTION_CREDENTIAL_LINK,),
    )
    await enroll_passkey(client, ENV, "jo", passkey, link.token)
    opened = await passkey_challenge(client, "jo")
    await verify_proof(
        client,
        "jo",
        opened.challenge_id,
        passkey_assertion_json=passkey.assertion(opened.passkey_request_options_json),
    )


async def test_the_deciding_statement_refuses_at_the_hard_limit_whatever_was_read(
    client: Client, clock: FakeClock, db: asyncpg.Connection, hard_limit_settings: None
) -> None:
    """The read before the proof check may be stale (99 failures then, 100 now): the
    statement that decides checks the limit itself, leaves the challenge and counts
    nothing, even for a proof that holds."""
    device = await enroll_totp(client, clock, ENV, "kim")
    clock.advance(timedelta(seconds=30))
    await guess_wrong(client, clock, "kim", device, 100)
    clock.advance(timedelta(minutes=1))
    device_id = await db.fetchval("SELECT id FROM devices WHERE user_id = 'kim'")
    stored = await db.fetchval("SELECT totp_last_step FROM devices WHERE id = $1", device_id)
    pending = await challenge(client, ENV, "kim")
    concluded = await verification_store.conclude(
        db,
        EnvironmentId(ENV),
        UserId("kim"),
        uuid.UUID(pending),
        now=clock.now(),
        device_id=device_id,
        advance=TotpStep(stored + 10),
        lockout=LockoutSettings(100, timedelta(minutes=1)),
        grant=None,
        events=[],
    )
    assert concluded.outcome is verification_store.Outcome.RECOVERY_REQUIRED
    assert await challenge_left(db, pending)
    assert await failures(db, "kim") == 100
    assert await db.fetchval("SELECT totp_last_step FROM devices WHERE id = $1", device_id) == (
        stored
    )


@pytest.fixture
async def clients(app: Application) -> Any:
    """Several connections, so the calls really run at once on the server."""
    opened = [Client.connect(f"127.0.0.1:{app.port}", insecure=True) for _ in range(4)]
    yield opened
    for c in opened:
        await c.close()


async def test_a_correct_code_cannot_slip_past_the_hard_limit_reached_concurrently(
    client: Client,
    clients: list[Client],
    clock: FakeClock,
    db: asyncpg.Connection,
    hard_limit_settings: None,
) -> None:
    """At 99 failures a correct code races three wrong ones (the limit of 7 set after
    them puts no temporary lockout at 100). Only serial outcomes: the correct code first
    (it succeeds, the wrong ones count 1..3) or a wrong one first (it reaches the limit,
    everything after is RECOVERY_REQUIRED and counts nothing)."""
    for round_ in range(4):
        user = f"lu{round_}"
        await update_settings(client, ENV, lockout__max_failed_attempts=100)
        device = await enroll_totp(client, clock, ENV, user)
        clock.advance(timedelta(seconds=30))
        await guess_wrong(client, clock, user, device, 99)
        await update_settings(client, ENV, lockout__max_failed_attempts=7)
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
        errors = sorted((r.code.name, r.reason) for r in results if isinstance(r, MfaServiceError))
        sessions = await db.fetchval(
            "SELECT count(*) FROM verified_sessions WHERE user_id = $1", user
        )
        left = await db.fetchval("SELECT count(*) FROM challenges WHERE user_id = $1", user)
        if isinstance(results[0], pb.VerifySessionResponse):  # the correct code first
            assert errors == [(FAILED[0].name, FAILED[1])] * 3
            assert (await failures(db, user), sessions, left) == (3, 1, 0)
        else:  # a wrong code first: it reached the limit
            assert errors == sorted(
                [(FAILED[0].name, FAILED[1])]
                + [(RECOVERY_REQUIRED[0].name, RECOVERY_REQUIRED[1])] * 3
            )
            assert (await failures(db, user), sessions, left) == (100, 0, 3)
