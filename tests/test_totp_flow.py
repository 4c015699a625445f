"""TOTP enrollment, session verification, replay protection and lockout, end to end."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pyotp
import pytest

from flows import (
    TotpDevice,
    call,
    challenge,
    enroll_totp,
    issue_action_token,
    start_totp,
    status,
    update_settings,
    verify_session,
)
from helpers import FakeClock, last_audit_type, refused
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service.app import Application

ENV = "env-totp"
pytestmark = pytest.mark.environments(ENV)


async def complete(
    client: Client, user: str, enrollment_id: str, code: str
) -> pb.CompleteEnrollmentResponse:
    return await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV, user_id=user, enrollment_id=enrollment_id, totp_code=code
            )
        )
    )


async def oathtool(secret: str, at: datetime) -> str:
    """The code an independent RFC 6238 implementation computes (Debian's oathtool)."""
    process = await asyncio.create_subprocess_exec(
        "oathtool",
        "--totp",
        "-b",
        secret,
        "--now",
        at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0
    return stdout.decode().strip()


# --- enrollment --------------------------------------------------------------------


async def test_enroll_gives_a_160_bit_secret_and_an_authenticator_uri(
    client: Client, clock: FakeClock
) -> None:
    await update_settings(client, ENV, totp__issuer="Acme Wallet")
    started = await start_totp(client, ENV, "alice")
    assert len(base64.b32decode(started.totp.secret)) == 20
    parsed = pyotp.parse_uri(started.totp.otpauth_uri)
    assert parsed.secret == started.totp.secret
    assert parsed.issuer == "Acme Wallet"
    assert parsed.name == "alice"
    assert started.totp.otpauth_uri.startswith("otpauth://totp/Acme%20Wallet:alice?")
    assert started.expires_at.ToDatetime(tzinfo=UTC) == clock.now() + timedelta(minutes=10)


async def test_oathtool_codes_are_accepted(client: Client, clock: FakeClock) -> None:
    """Interop with an independent RFC 6238 implementation."""
    started = await start_totp(client, ENV, "bob")
    code = await oathtool(started.totp.secret, clock.now())
    done = await complete(client, "bob", started.enrollment_id, code)
    assert done.device.method == types.METHOD_TOTP
    assert done.device.is_default
    clock.advance(timedelta(seconds=30))
    later = await oathtool(started.totp.secret, clock.now())
    verified = await verify_session(client, ENV, "bob", "s1", later)
    assert verified.device_id == done.device.device_id


async def test_the_secret_is_never_stored_in_clear(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    started = await start_totp(client, ENV, "carol")
    raw = base64.b32decode(started.totp.secret)
    pending = await db.fetchval("SELECT totp_secret FROM enrollments")
    await complete(
        client, "carol", started.enrollment_id, pyotp.TOTP(started.totp.secret).at(clock.now())
    )
    stored = await db.fetchval("SELECT totp_secret FROM devices")
    for blob in (pending, stored):
        assert started.totp.secret.encode() not in blob
        assert raw not in blob
    dump = str(await db.fetch("SELECT * FROM devices")) + str(
        await db.fetch("SELECT * FROM audit_events")
    )
    assert started.totp.secret not in dump


async def test_a_sealed_secret_moved_to_another_user_does_not_open(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """AES-GCM associated data binds the secret to environment, user and device."""
    victim = await enroll_totp(client, clock, ENV, "victim")
    await enroll_totp(client, clock, ENV, "thief")
    await db.execute(
        "UPDATE devices SET totp_secret = "
        "(SELECT totp_secret FROM devices WHERE user_id = 'victim') WHERE user_id = 'thief'"
    )
    clock.advance(timedelta(seconds=30))
    await refused(
        verify_session(client, ENV, "thief", "s", victim.code(clock.now())),
        grpc.StatusCode.INTERNAL,
        "ERROR_REASON_INTERNAL",
    )


async def test_a_wrong_first_code_is_refused_and_counted(client: Client, clock: FakeClock) -> None:
    started = await start_totp(client, ENV, "dave")
    good = pyotp.TOTP(started.totp.secret).at(clock.now())
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    await refused(
        complete(client, "dave", started.enrollment_id, wrong),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await update_settings(client, ENV, lockout__max_failed_attempts=2)
    await refused(
        complete(client, "dave", started.enrollment_id, wrong),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await refused(
        complete(client, "dave", started.enrollment_id, good),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )


async def test_a_pending_enrollment_expires_and_is_not_a_factor(
    client: Client, clock: FakeClock
) -> None:
    await update_settings(client, ENV, require_at_onboarding=True)
    started = await start_totp(client, ENV, "erin")
    twin = await start_totp(client, ENV, "ezra")  # started at the same instant
    now = await status(client, ENV, "erin")
    assert now.enrollment_required
    assert list(now.enrolled_methods) == []
    clock.advance(timedelta(minutes=9, seconds=59))
    await complete(client, "ezra", twin.enrollment_id, pyotp.TOTP(twin.totp.secret).at(clock.now()))
    clock.advance(timedelta(seconds=2))  # 10 min 1 s after the start
    await refused(
        complete(
            client, "erin", started.enrollment_id, pyotp.TOTP(started.totp.secret).at(clock.now())
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )


async def test_another_users_enrollment_cannot_be_completed(
    client: Client, clock: FakeClock
) -> None:
    started = await start_totp(client, ENV, "frank")
    code = pyotp.TOTP(started.totp.secret).at(clock.now())
    await refused(
        complete(client, "mallory", started.enrollment_id, code),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )


async def test_totp_disabled_refuses_enrollment_and_challenges(
    client: Client, clock: FakeClock
) -> None:
    device = await enroll_totp(client, clock, ENV, "gina")
    await update_settings(client, ENV, totp_enabled=False, action_methods=[types.METHOD_PASSKEY])
    for attempt in (start_totp(client, ENV, "hank"), challenge(client, ENV, "gina")):
        await refused(attempt, grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_METHOD_DISABLED")
    # Switching a method off stops new enrollments and challenges, never enforcement:
    # gina stays enrolled (tests/test_seams.py shows what still applies to her).
    assert list((await status(client, ENV, "gina")).enrolled_methods) == [types.METHOD_TOTP]
    assert device.device_id


async def test_totp_disabled_after_enrollment_started_refuses_completion(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    started = await start_totp(client, ENV, "gwen")
    await update_settings(client, ENV, totp_enabled=False, action_methods=[types.METHOD_PASSKEY])
    code = pyotp.TOTP(started.totp.secret).at(clock.now())
    await refused(
        complete(client, "gwen", started.enrollment_id, code),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_METHOD_DISABLED",
    )
    assert await db.fetchval("SELECT count(*) FROM devices WHERE user_id = 'gwen'") == 0


async def test_totp_disabled_after_a_challenge_refuses_verification(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    device = await enroll_totp(client, clock, ENV, "gus")
    taken = await challenge(client, ENV, "gus")
    await update_settings(client, ENV, totp_enabled=False, action_methods=[types.METHOD_PASSKEY])
    clock.advance(timedelta(seconds=30))
    await refused(
        verify_session(client, ENV, "gus", "s", device.code(clock.now()), taken),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_METHOD_DISABLED",
    )
    assert await db.fetchval("SELECT count(*) FROM verified_sessions WHERE user_id = 'gus'") == 0


async def link_token(client: Client, clock: FakeClock, device: TotpDevice, user: str) -> str:
    """A CREDENTIAL_LINK action token from the user's TOTP device (a step past enrollment)."""
    clock.advance(timedelta(seconds=30))
    issued = await issue_action_token(
        client,
        ENV,
        user,
        device.code(clock.now()),
        await challenge(client, ENV, user),
        actions=(types.ACTION_CREDENTIAL_LINK,),
    )
    return str(issued.token)


async def start_linked_totp(client: Client, user: str, link: str) -> pb.EnrollResponse:
    return await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id=user, method=types.METHOD_TOTP, action_token=link
            )
        )
    )


async def test_enroll_refuses_a_totp_device_beyond_the_limit(
    client: Client, clock: FakeClock
) -> None:
    """max_totp_devices defaults to 1: with step-up passed, the limit still refuses."""
    device = await enroll_totp(client, clock, ENV, "hugo")
    link = await link_token(client, clock, device, "hugo")
    await refused(
        start_linked_totp(client, "hugo", link),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_DEVICE_LIMIT_REACHED",
    )


async def test_completion_checks_the_totp_device_limit_again(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The limit lowered while an enrollment is pending: completing it is refused."""
    await update_settings(client, ENV, totp__max_devices=2)
    device = await enroll_totp(client, clock, ENV, "hilda")
    link = await link_token(client, clock, device, "hilda")
    started = await start_linked_totp(client, "hilda", link)
    await update_settings(client, ENV, totp__max_devices=1)
    code = pyotp.TOTP(started.totp.secret).at(clock.now())
    await refused(
        complete(client, "hilda", started.enrollment_id, code),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_DEVICE_LIMIT_REACHED",
    )
    assert await db.fetchval("SELECT count(*) FROM devices WHERE user_id = 'hilda'") == 1


async def test_a_second_device_needs_step_up(client: Client, clock: FakeClock) -> None:
    """DESIGN §2: a stolen primary session must not add a factor next to the user's."""
    await update_settings(client, ENV, totp__max_devices=3)
    await enroll_totp(client, clock, ENV, "ivan")
    await refused(
        start_totp(client, ENV, "ivan"),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )


@pytest.mark.parametrize(
    ("field", "request_fields"),
    [
        ("method", {"method": types.METHOD_UNSPECIFIED}),
        ("method", {"method": types.METHOD_RECOVERY_CODE}),
        ("account_name", {"method": types.METHOD_TOTP, "account_name": "a:b"}),
        ("user_id", {"method": types.METHOD_TOTP, "user_id": "org:alice"}),
        ("user_id", {"method": types.METHOD_TOTP, "user_id": ""}),
        ("environment_id", {"method": types.METHOD_TOTP, "environment_id": ""}),
    ],
)
async def test_enroll_input_errors_name_the_field(
    client: Client, field: str, request_fields: dict[str, object]
) -> None:
    request = pb.EnrollRequest(environment_id=ENV, user_id="judy")
    for key, value in request_fields.items():
        setattr(request, key, value)
    error = await refused(
        call(client.mfa_stub.Enroll(request)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [field]


# --- verification ------------------------------------------------------------------


async def test_window_with_skew_one(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    device = await enroll_totp(client, clock, ENV, "kim")
    clock.advance(timedelta(minutes=5))
    now = clock.now()
    for offset in (-2, 2):
        await refused(
            verify_session(client, ENV, "kim", "s", device.code(now, offset)),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
        assert await last_audit_type(db, "kim") == "VERIFICATION_FAILED"  # not a reuse
    for offset in (-1, 0, 1):
        await verify_session(client, ENV, "kim", "s", device.code(now, offset))


async def test_window_with_skew_zero(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(client, ENV, totp__skew_steps=0)
    device = await enroll_totp(client, clock, ENV, "lee")
    clock.advance(timedelta(minutes=5))
    now = clock.now()
    for offset in (-1, 1):
        await refused(
            verify_session(client, ENV, "lee", "s", device.code(now, offset)),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
        assert await last_audit_type(db, "lee") == "VERIFICATION_FAILED"  # not a reuse
    await verify_session(client, ENV, "lee", "s", device.code(now))


async def test_a_code_is_accepted_once_and_a_reuse_looks_like_a_wrong_code(
    client: Client, clock: FakeClock
) -> None:
    device = await enroll_totp(client, clock, ENV, "mia")
    clock.advance(timedelta(seconds=30))
    code = device.code(clock.now())
    await verify_session(client, ENV, "mia", "s1", code)
    reused = await refused(
        verify_session(client, ENV, "mia", "s2", code),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    wrong = await refused(
        verify_session(client, ENV, "mia", "s2", f"{(int(code) + 7) % 10**6:06d}"),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert (reused.code, reused.message, reused.reason) == (wrong.code, wrong.message, wrong.reason)


async def test_the_enrollment_code_cannot_verify_a_session(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    device = await enroll_totp(client, clock, ENV, "nia")
    await refused(
        verify_session(client, ENV, "nia", "s1", device.code(clock.now())),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert await last_audit_type(db, "nia") == "CODE_REUSED"  # refused as a reuse, not a typo


async def test_an_earlier_step_after_a_later_one_is_refused(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    device = await enroll_totp(client, clock, ENV, "omar")
    clock.advance(timedelta(minutes=2))
    now = clock.now()
    await verify_session(client, ENV, "omar", "s1", device.code(now, 1))
    await refused(
        verify_session(client, ENV, "omar", "s2", device.code(now)),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert await last_audit_type(db, "omar") == "CODE_REUSED"  # refused by the replay rule


async def test_concurrent_uses_of_one_code_succeed_exactly_once(
    app: Application, client: Client, clock: FakeClock
) -> None:
    device = await enroll_totp(client, clock, ENV, "pia")
    await update_settings(client, ENV, lockout__max_failed_attempts=100)
    clock.advance(timedelta(seconds=30))
    code = device.code(clock.now())
    challenges = [await challenge(client, ENV, "pia") for _ in range(20)]
    clients = [Client.connect(f"127.0.0.1:{app.port}", insecure=True) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(
                verify_session(clients[i % 4], ENV, "pia", f"s{i}", code, challenge_id)
                for i, challenge_id in enumerate(challenges)
            ),
            return_exceptions=True,
        )
    finally:
        for c in clients:
            await c.close()
    successes = [r for r in results if isinstance(r, pb.VerifySessionResponse)]
    failures = [r for r in results if isinstance(r, MfaServiceError)]
    assert len(successes) == 1
    assert len(failures) == 19
    assert {f.reason for f in failures} == {"ERROR_REASON_VERIFICATION_FAILED"}


async def test_unknown_user_fails_like_a_wrong_code(client: Client, clock: FakeClock) -> None:
    device = await enroll_totp(client, clock, ENV, "quinn")
    clock.advance(timedelta(seconds=30))
    wrong = f"{(int(device.code(clock.now())) + 3) % 10**6:06d}"
    known = await refused(
        verify_session(client, ENV, "quinn", "s", wrong),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    unknown = await refused(
        verify_session(client, ENV, "nobody", "s", wrong),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert (known.code, known.message, known.reason) == (
        unknown.code,
        unknown.message,
        unknown.reason,
    )


# --- challenges --------------------------------------------------------------------


async def test_challenges_are_single_use_expiring_and_bound_to_the_user(
    client: Client, clock: FakeClock
) -> None:
    device = await enroll_totp(client, clock, ENV, "rita")
    clock.advance(timedelta(seconds=30))
    used = await challenge(client, ENV, "rita")
    await verify_session(client, ENV, "rita", "s", device.code(clock.now()), used)
    clock.advance(timedelta(seconds=30))
    await refused(
        verify_session(client, ENV, "rita", "s", device.code(clock.now()), used),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )

    others = await challenge(client, ENV, "someone-else")
    await refused(
        verify_session(client, ENV, "rita", "s", device.code(clock.now()), others),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )

    stale = await challenge(client, ENV, "rita")
    clock.advance(timedelta(minutes=5, seconds=1))
    await refused(
        verify_session(client, ENV, "rita", "s", device.code(clock.now()), stale),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )


async def test_a_failed_verification_uses_up_the_challenge(
    client: Client, clock: FakeClock
) -> None:
    device = await enroll_totp(client, clock, ENV, "sam")
    clock.advance(timedelta(seconds=30))
    challenge_id = await challenge(client, ENV, "sam")
    good = device.code(clock.now())
    await refused(
        verify_session(client, ENV, "sam", "s", f"{(int(good) + 1) % 10**6:06d}", challenge_id),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await refused(
        verify_session(client, ENV, "sam", "s", good, challenge_id),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )


@pytest.mark.parametrize(
    ("field", "proof", "challenge_id"),
    [
        ("proof.totp_code", types.Proof(totp_code="12ab56"), None),
        ("proof.totp_code", types.Proof(totp_code="1234567"), None),
        ("proof", None, None),
        ("challenge_id", types.Proof(totp_code="123456"), "not-a-uuid"),
        ("proof", types.Proof(passkey_assertion_json="{}"), None),
    ],
)
async def test_verify_input_errors_name_the_field(
    client: Client,
    clock: FakeClock,
    field: str,
    proof: types.Proof | None,
    challenge_id: str | None,
) -> None:
    await enroll_totp(client, clock, ENV, "tara")
    request = pb.VerifySessionRequest(
        environment_id=ENV,
        user_id="tara",
        session_id="s",
        challenge_id=challenge_id or await challenge(client, ENV, "tara"),
    )
    if proof is not None:
        request.proof.CopyFrom(proof)
    error = await refused(
        call(client.mfa_stub.VerifySession(request)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [field]


# --- lockout -----------------------------------------------------------------------


async def lock_out(client: Client, clock: FakeClock, user: str) -> TotpDevice:
    """Enroll ``user``, then fail five times (the default limit): locked out now."""
    device = await enroll_totp(client, clock, ENV, user)
    clock.advance(timedelta(minutes=1))
    wrong = f"{(int(device.code(clock.now())) + 5) % 10**6:06d}"
    for _ in range(5):
        await refused(
            verify_session(client, ENV, user, "s", wrong),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
    return device


async def test_lockout_refuses_even_a_correct_code_until_it_ends(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    device = await lock_out(client, clock, "uma")
    locked = await refused(
        verify_session(client, ENV, "uma", "s", device.code(clock.now())),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert locked.retry_after == timedelta(minutes=15)
    assert (await status(client, ENV, "uma")).locked_until.ToDatetime() > clock.now().replace(
        tzinfo=None
    )

    clock.advance(timedelta(minutes=14))
    still = await refused(
        verify_session(client, ENV, "uma", "s", device.code(clock.now())),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert still.retry_after == timedelta(minutes=1)

    clock.advance(timedelta(minutes=1))
    await verify_session(client, ENV, "uma", "s", device.code(clock.now()))
    assert not (await status(client, ENV, "uma")).HasField("locked_until")
    types_seen = {
        r["type"] for r in await db.fetch("SELECT type FROM audit_events WHERE user_id='uma'")
    }
    assert {"LOCKED_OUT", "VERIFICATION_FAILED", "VERIFICATION_SUCCEEDED"} <= types_seen


async def test_a_locked_out_attempt_leaves_its_challenge_untouched(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """While locked out nothing is verified and nothing is used up, the challenge included."""
    device = await lock_out(client, clock, "ula")
    pending = await challenge(client, ENV, "ula")
    await refused(
        verify_session(client, ENV, "ula", "s", device.code(clock.now()), pending),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert await db.fetchval("SELECT count(*) FROM challenges WHERE id = $1", uuid.UUID(pending))
    failures = await db.fetchval("SELECT failed_attempts FROM mfa_users WHERE user_id = 'ula'")
    assert failures == 5  # the refused attempt was not counted either


async def test_the_failure_count_resets_only_on_success(client: Client, clock: FakeClock) -> None:
    device = await enroll_totp(client, clock, ENV, "vic")
    clock.advance(timedelta(minutes=1))

    async def guess_wrong(times: int) -> None:
        for _ in range(times):
            await refused(
                verify_session(
                    client, ENV, "vic", "s", f"{(int(device.code(clock.now())) + 5) % 10**6:06d}"
                ),
                grpc.StatusCode.PERMISSION_DENIED,
                "ERROR_REASON_VERIFICATION_FAILED",
            )

    await guess_wrong(4)
    await verify_session(client, ENV, "vic", "s", device.code(clock.now()))
    clock.advance(timedelta(seconds=30))
    await guess_wrong(4)
    await verify_session(client, ENV, "vic", "s", device.code(clock.now()))  # not locked: 4 < 5
    clock.advance(timedelta(seconds=30))
    await guess_wrong(5)
    error = await refused(
        verify_session(client, ENV, "vic", "s", device.code(clock.now())),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert error.retry_after == timedelta(minutes=15)
    # An ended lockout is no success: the streak goes on, and its second lockout is longer.
    clock.advance(timedelta(minutes=15))
    await guess_wrong(5)
    error = await refused(
        verify_session(client, ENV, "vic", "s", device.code(clock.now())),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert (error.reason, error.retry_after) == ("ERROR_REASON_LOCKED_OUT", timedelta(minutes=30))
    # A success ends the streak: the next one starts from nothing, its first lockout short.
    clock.advance(timedelta(minutes=30))
    await verify_session(client, ENV, "vic", "s", device.code(clock.now()))
    clock.advance(timedelta(seconds=30))
    await guess_wrong(4)
    await verify_session(client, ENV, "vic", "s", device.code(clock.now()))  # not locked: 4 < 5
    clock.advance(timedelta(seconds=30))
    await guess_wrong(5)
    error = await refused(
        verify_session(client, ENV, "vic", "s", device.code(clock.now())),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert (error.reason, error.retry_after) == ("ERROR_REASON_LOCKED_OUT", timedelta(minutes=15))


async def test_concurrent_wrong_guesses_cannot_exceed_the_limit(
    client: Client, clock: FakeClock
) -> None:
    device = await enroll_totp(client, clock, ENV, "walt")
    clock.advance(timedelta(minutes=1))
    good = int(device.code(clock.now()))
    guesses = [f"{(good + i) % 10**6:06d}" for i in range(1, 21)]
    challenges = [await challenge(client, ENV, "walt") for _ in guesses]
    results = await asyncio.gather(
        *(
            verify_session(client, ENV, "walt", "s", g, c)
            for g, c in zip(guesses, challenges, strict=True)
        ),
        return_exceptions=True,
    )
    reasons = [r.reason for r in results if isinstance(r, MfaServiceError)]
    assert reasons.count("ERROR_REASON_VERIFICATION_FAILED") == 5
    assert reasons.count("ERROR_REASON_LOCKED_OUT") == 15


# --- session-based enforcement and onboarding ---------------------------------------


async def test_session_mfa_flow(client: Client, clock: FakeClock) -> None:
    await update_settings(client, ENV, session_mfa_enabled=True)
    assert not (await status(client, ENV, "xena", "s1")).session_mfa_pending  # not enrolled
    device = await enroll_totp(client, clock, ENV, "xena")
    assert (await status(client, ENV, "xena", "s1")).session_mfa_pending
    assert (await status(client, ENV, "xena")).session_mfa_pending  # no session id: fail closed
    clock.advance(timedelta(seconds=30))
    await verify_session(client, ENV, "xena", "s1", device.code(clock.now()))
    assert not (await status(client, ENV, "xena", "s1")).session_mfa_pending
    assert (await status(client, ENV, "xena", "s2")).session_mfa_pending
    clock.advance(timedelta(hours=24))
    assert (await status(client, ENV, "xena", "s1")).session_mfa_pending  # NIST: 24 h at most


async def test_session_mfa_off_means_nothing_pending(client: Client, clock: FakeClock) -> None:
    await enroll_totp(client, clock, ENV, "yuri")
    assert not (await status(client, ENV, "yuri", "s1")).session_mfa_pending


async def test_onboarding_requires_a_completed_enrollment(client: Client, clock: FakeClock) -> None:
    await update_settings(
        client, ENV, require_at_onboarding=True, protected_actions=[types.ACTION_WAAS_SIGN]
    )
    fresh = await status(client, ENV, "zoe")
    assert fresh.enrollment_required
    assert list(fresh.protected_actions) == [types.ACTION_WAAS_SIGN]
    await start_totp(client, ENV, "zoe")
    assert (await status(client, ENV, "zoe")).enrollment_required
    await enroll_totp(client, clock, ENV, "zoe2")
    done = await status(client, ENV, "zoe2")
    assert not done.enrollment_required
    assert list(done.enrolled_methods) == [types.METHOD_TOTP]
    assert set(done.protected_actions) == {
        types.ACTION_WAAS_SIGN,
        types.ACTION_CREDENTIAL_LINK,
        types.ACTION_CREDENTIAL_UNLINK,
        types.ACTION_RECOVERY_CODES_REGENERATE,
    }


async def test_nothing_is_due_for_a_user_without_factors(client: Client) -> None:
    await update_settings(
        client, ENV, protected_actions=[types.ACTION_WAAS_EXPORT], session_mfa_enabled=True
    )
    fresh = await status(client, ENV, "newbie", "s1")
    assert not fresh.enrollment_required
    assert not fresh.session_mfa_pending
    assert list(fresh.protected_actions) == []


# --- audit and logs ---------------------------------------------------------------


async def test_audit_rows_and_logs_never_hold_the_secret_or_codes(
    client: Client, clock: FakeClock, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    started = await start_totp(client, ENV, "audited")
    first = pyotp.TOTP(started.totp.secret).at(clock.now())
    done = await complete(client, "audited", started.enrollment_id, first)
    clock.advance(timedelta(seconds=30))
    second = pyotp.TOTP(started.totp.secret).at(clock.now())
    await verify_session(client, ENV, "audited", "s1", second)
    await refused(
        verify_session(client, ENV, "audited", "s2", second),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    rows = await db.fetch("SELECT * FROM audit_events WHERE user_id = 'audited' ORDER BY id")
    assert [r["type"] for r in rows] == [
        "ENROLLMENT_STARTED",
        "ENROLLMENT_COMPLETED",
        "RECOVERY_CODES_GENERATED",
        "VERIFICATION_SUCCEEDED",
        "CODE_REUSED",
    ]
    assert all(r["request_id"] for r in rows)
    assert {r["method"] for r in rows} == {"TOTP", None}
    everything = str([dict(r) for r in rows]) + caplog.text
    assert len(done.recovery_codes) == 10
    for secret in (
        started.totp.secret,
        first,
        second,
        started.totp.otpauth_uri,
        *done.recovery_codes,
    ):
        assert secret not in everything
