"""The seams between features, attacked through the public API (issue 17).

The attacker holds the user's primary session: they speak for the user to the API
backend (same user id and session) but know none of the user's factors. Each test
here failed on the code before the fix it names.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
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
    start_totp,
    status,
    token_with_code,
    update_settings,
)
from helpers import FakeClock, eventually, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service import app as app_module
from mfa_service.app import Application
from mfa_service.crypto import KeyRing
from mfa_service.domain import recovery
from mfa_service.domain.devices import MAX_OPEN_CHALLENGES
from mfa_service.services.verification import KDF_SLOTS

ENV = "env-seams"
pytestmark = pytest.mark.environments(ENV)
ORIGIN = "https://app.example.com"
RP_ID = "example.com"


async def configure_passkeys(client: Client, **more: Any) -> None:
    await update_settings(
        client, ENV, passkey__rp_id=RP_ID, passkey__allowed_origins=[ORIGIN], **more
    )


async def complete_totp(
    client: Client, clock: FakeClock, user: str, started: pb.EnrollResponse
) -> pb.CompleteEnrollmentResponse:
    code = TotpDevice("", started.totp.secret).code(clock.now())
    return await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id=user,
                enrollment_id=started.enrollment_id,
                totp_code=code,
            )
        )
    )


async def start_passkey(client: Client, user: str, token: str = "") -> pb.EnrollResponse:
    return await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id=user, method=types.METHOD_PASSKEY, action_token=token
            )
        )
    )


async def complete_passkey(
    client: Client, user: str, started: pb.EnrollResponse, authenticator: SoftAuthenticator
) -> pb.CompleteEnrollmentResponse:
    return await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id=user,
                enrollment_id=started.enrollment_id,
                passkey_registration_json=authenticator.register(
                    started.passkey.creation_options_json
                ),
            )
        )
    )


async def code_token(client: Client, user: str, code: str, action: types.Action.ValueType) -> str:
    """An action token earned with a recovery code."""
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id=user,
                challenge_id=await challenge(client, ENV, user, types.METHOD_RECOVERY_CODE),
                proof=types.Proof(recovery_code=code),
                actions=[action],
                single_use=True,
            )
        )
    )
    return str(issued.token)


async def validate(
    client: Client, user: str, action: types.Action.ValueType, token: str = ""
) -> Any:
    return await call(
        client.action_tokens.stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV, user_id=user, action=action, token=token
            )
        )
    )


async def devices_of(db: asyncpg.Connection, user: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM devices WHERE environment_id = $1 AND user_id = $2", ENV, user
    )
    return count


async def live_codes(db: asyncpg.Connection, user: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM recovery_codes "
        "WHERE environment_id = $1 AND user_id = $2 AND used_at IS NULL",
        ENV,
        user,
    )
    return count


# --- 1. step-up is decided when a factor is added ------------------------------------


async def test_a_passkey_planted_before_the_first_factor_cannot_complete(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The attacker starts a passkey enrollment while the victim has no factor; the
    victim's first factor ends it, so it can never be completed without step-up."""
    await configure_passkeys(client)
    planted = await start_passkey(client, "victim")
    await enroll_totp(client, clock, ENV, "victim")
    attacker = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    await refused(
        complete_passkey(client, "victim", planted, attacker),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )
    assert await devices_of(db, "victim") == 1


async def test_a_totp_planted_before_the_first_passkey_cannot_complete(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The mirror order: a pending TOTP enrollment, then the victim's first passkey."""
    await configure_passkeys(client)
    planted = await start_totp(client, ENV, "victim")
    await enroll_passkey(client, ENV, "victim", SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID))
    await refused(
        complete_totp(client, clock, "victim", planted),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )
    assert await devices_of(db, "victim") == 1


async def test_completion_next_to_a_factor_needs_an_enrollment_begun_with_step_up(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """A pending enrollment not begun with an ACTION_CREDENTIAL_LINK token (one left from
    before this check, say) cannot add a factor next to an existing one: the check is
    made at completion, under the user's row lock, and the enrollment ends."""
    await update_settings(client, ENV, totp__max_devices=2)
    first = await enroll_totp(client, clock, ENV, "alice")
    link = await token_with_code(client, clock, ENV, "alice", first, types.ACTION_CREDENTIAL_LINK)
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id="alice", method=types.METHOD_TOTP, action_token=link
            )
        )
    )
    assert await db.fetchval("SELECT linked FROM enrollments") is True
    await db.execute("UPDATE enrollments SET linked = false")
    await refused(
        complete_totp(client, clock, "alice", started),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )
    assert await db.fetchval("SELECT count(*) FROM enrollments") == 0
    assert await devices_of(db, "alice") == 1


async def test_concurrent_enrollments_leave_one_pending_enrollment(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """Enroll locks the user's row: of eight concurrent Enroll(TOTP) calls for a user
    whose row exists, one pending enrollment is left, and only it completes."""
    await update_settings(client, ENV, totp__max_devices=3)
    await start_totp(client, ENV, "bob")  # the user's row now exists
    started = await asyncio.gather(*(start_totp(client, ENV, "bob") for _ in range(8)))
    assert await db.fetchval("SELECT count(*) FROM enrollments") == 1
    done = 0
    for one in started:
        try:
            await complete_totp(client, clock, "bob", one)
            done += 1
        except MfaServiceError as error:
            assert (error.code, error.reason) == (
                grpc.StatusCode.NOT_FOUND,
                "ERROR_REASON_ENROLLMENT_NOT_FOUND",
            ), error
    assert done == 1
    assert await devices_of(db, "bob") == 1


# --- 3. switching a method off never switches MFA off ---------------------------------


async def test_disabling_a_method_keeps_its_users_enrolled_and_enforced(
    client: Client, clock: FakeClock
) -> None:
    await update_settings(
        client, ENV, protected_actions=[types.ACTION_WAAS_SIGN], session_mfa_enabled=True
    )
    await enroll_totp(client, clock, ENV, "carol")
    assert (await validate(client, "carol", types.ACTION_WAAS_SIGN)).reason == (
        types.DECISION_REASON_MFA_REQUIRED
    )
    # Passkeys were never configured: no method users can pass would be left.
    error = await refused(
        update_settings(client, ENV, totp_enabled=False, action_methods=[types.METHOD_PASSKEY]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert {v.field for v in error.field_violations} >= {"settings.action_methods"}
    # With passkeys configured the change is accepted, and enforcement stays.
    await configure_passkeys(client, totp_enabled=False, action_methods=[types.METHOD_PASSKEY])
    decision = await validate(client, "carol", types.ACTION_WAAS_SIGN)
    assert (decision.decision, decision.reason) == (
        types.DECISION_DENY,
        types.DECISION_REASON_MFA_REQUIRED,
    )
    unlink = await validate(client, "carol", types.ACTION_CREDENTIAL_UNLINK)
    assert unlink.reason == types.DECISION_REASON_MFA_REQUIRED
    now = await status(client, ENV, "carol", "session-1")
    assert list(now.enrolled_methods) == [types.METHOD_TOTP]
    assert now.session_mfa_pending
    assert types.ACTION_WAAS_SIGN in now.protected_actions
    # No new challenge with the method switched off ...
    await refused(
        challenge(client, ENV, "carol"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_METHOD_DISABLED",
    )


async def test_a_recovery_code_still_passes_for_the_users_of_a_disabled_method(
    client: Client, clock: FakeClock
) -> None:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    started = await start_totp(client, ENV, "dave")
    codes = list((await complete_totp(client, clock, "dave", started)).recovery_codes)
    await configure_passkeys(client, totp_enabled=False, action_methods=[types.METHOD_PASSKEY])
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="dave",
                challenge_id=await challenge(client, ENV, "dave", types.METHOD_RECOVERY_CODE),
                proof=types.Proof(recovery_code=codes[0]),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
    )
    allowed = await validate(client, "dave", types.ACTION_WAAS_SIGN, issued.token)
    assert (allowed.decision, allowed.reason) == (
        types.DECISION_ALLOW,
        types.DECISION_REASON_TOKEN_VALID,
    )


# --- 4. credential tokens: single use, and they die with their device ------------------


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


@pytest.mark.parametrize(
    "action",
    [
        types.ACTION_CREDENTIAL_LINK,
        types.ACTION_CREDENTIAL_UNLINK,
        types.ACTION_RECOVERY_CODES_REGENERATE,
    ],
)
async def test_credential_tokens_are_single_use_whatever_is_asked(
    client: Client, clock: FakeClock, action: types.Action.ValueType
) -> None:
    device = await enroll_totp(client, clock, ENV, "erin")
    token = await token_with_code(client, clock, ENV, "erin", device, action, single_use=False)
    assert claims_of(token)["su"] is True
    first = await validate(client, "erin", action, token)
    again = await validate(client, "erin", action, token)
    assert (first.decision, again.decision, again.reason) == (
        types.DECISION_ALLOW,
        types.DECISION_DENY,
        types.DECISION_REASON_TOKEN_ALREADY_USED,
    )


async def test_one_step_up_adds_one_factor_and_removes_one(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The finding: one multi-use LINK token added two devices, one UNLINK token
    deleted all of them, one REGENERATE token replaced the codes twice."""
    await update_settings(client, ENV, totp__max_devices=3)
    first = await enroll_totp(client, clock, ENV, "fay")
    link = await token_with_code(
        client, clock, ENV, "fay", first, types.ACTION_CREDENTIAL_LINK, single_use=False
    )
    enroll = pb.EnrollRequest(
        environment_id=ENV, user_id="fay", method=types.METHOD_TOTP, action_token=link
    )
    second = await call(client.mfa_stub.Enroll(enroll))
    await complete_totp(client, clock, "fay", second)
    await refused(
        call(client.mfa_stub.Enroll(enroll)),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )
    unlink = await token_with_code(
        client, clock, ENV, "fay", first, types.ACTION_CREDENTIAL_UNLINK, single_use=False
    )
    devices = [
        d.device_id
        for d in (
            await call(
                client.mfa_stub.ListDevices(
                    pb.ListDevicesRequest(environment_id=ENV, user_id="fay")
                )
            )
        ).devices
    ]
    assert len(devices) == 2
    delete = pb.DeleteDeviceRequest(environment_id=ENV, user_id="fay", action_token=unlink)
    delete.device_id = devices[1]
    await call(client.mfa_stub.DeleteDevice(delete))
    delete.device_id = devices[0]
    await refused(
        call(client.mfa_stub.DeleteDevice(delete)),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )
    assert await devices_of(db, "fay") == 1


async def test_deleting_a_device_revokes_the_tokens_it_earned(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """A LINK token saved by whoever passed with a (rogue) device dies with the device."""
    await update_settings(
        client, ENV, totp__max_devices=2, protected_actions=[types.ACTION_WAAS_SIGN]
    )
    mine = await enroll_totp(client, clock, ENV, "gil")
    link = await token_with_code(client, clock, ENV, "gil", mine, types.ACTION_CREDENTIAL_LINK)
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id="gil", method=types.METHOD_TOTP, action_token=link
            )
        )
    )
    done = await complete_totp(client, clock, "gil", started)
    rogue = TotpDevice(done.device.device_id, started.totp.secret)
    saved_link = await token_with_code(
        client, clock, ENV, "gil", rogue, types.ACTION_CREDENTIAL_LINK
    )
    saved_sign = await token_with_code(client, clock, ENV, "gil", rogue, types.ACTION_WAAS_SIGN)
    kept_sign = await token_with_code(client, clock, ENV, "gil", mine, types.ACTION_WAAS_SIGN)
    unlink = await token_with_code(client, clock, ENV, "gil", mine, types.ACTION_CREDENTIAL_UNLINK)
    await call(
        client.mfa_stub.DeleteDevice(
            pb.DeleteDeviceRequest(
                environment_id=ENV, user_id="gil", device_id=rogue.device_id, action_token=unlink
            )
        )
    )
    await refused(
        call(
            client.mfa_stub.Enroll(
                pb.EnrollRequest(
                    environment_id=ENV,
                    user_id="gil",
                    method=types.METHOD_TOTP,
                    action_token=saved_link,
                )
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )
    revoked = await validate(client, "gil", types.ACTION_WAAS_SIGN, saved_sign)
    assert (revoked.decision, revoked.reason) == (
        types.DECISION_DENY,
        types.DECISION_REASON_TOKEN_REVOKED,
    )
    kept = await validate(client, "gil", types.ACTION_WAAS_SIGN, kept_sign)
    assert kept.reason == types.DECISION_REASON_TOKEN_VALID
    assert await devices_of(db, "gil") == 1


# --- 6. races on the codes and the last device ---------------------------------------


async def all_at_once(
    database_url: str, hold: str, calls: Sequence[Callable[[], Awaitable[Any]]]
) -> list[Any]:
    """Start ``calls`` while another transaction holds the row locks ``hold`` takes, until
    each call waits on a lock (on a row, or behind another call), then let them go: the
    widest window a race can have. (A stub call starts its RPC when it is made, so the
    calls come as functions, made here once the rows are held.)"""
    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(hold)
        running = [asyncio.ensure_future(c()) for c in calls]

        async def all_waiting() -> bool:
            finished = [r.exception() or r.result() for r in running if r.done()]
            assert not finished, f"a call finished while the rows were held: {finished}"
            await holder.execute("SELECT pg_stat_clear_snapshot()")  # fresh each time
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool(waiting == len(calls))

        await eventually(all_waiting, interval=0.01, what=f"{len(calls)} calls waiting on locks")
        await transaction.rollback()
        return list(await asyncio.gather(*running))
    finally:
        await holder.close()


async def test_concurrent_regenerations_leave_ten_live_codes(
    client: Client, clock: FakeClock, db: asyncpg.Connection, database_url: str
) -> None:
    device = await enroll_totp(client, clock, ENV, "hal")
    tokens = [
        await token_with_code(
            client, clock, ENV, "hal", device, types.ACTION_RECOVERY_CODES_REGENERATE
        )
        for _ in range(4)  # the test server's pool has four connections
    ]
    regenerations = [
        functools.partial(
            client.mfa_stub.RegenerateRecoveryCodes,
            pb.RegenerateRecoveryCodesRequest(
                environment_id=ENV, user_id="hal", action_token=token
            ),
        )
        for token in tokens
    ]
    # The old codes' rows held: every regeneration gets as far as it can, then all go.
    sets = await all_at_once(database_url, "SELECT 1 FROM recovery_codes FOR UPDATE", regenerations)
    assert await live_codes(db, "hal") == 10
    live = {
        row["code_id"]
        for row in await db.fetch("SELECT code_id FROM recovery_codes WHERE used_at IS NULL")
    }
    # The ten live codes are exactly one of the sets handed out.
    assert any({recovery.split(c, "c")[0] for c in s.recovery_codes} == live for s in sets)


async def test_deleting_the_last_two_devices_at_once_takes_the_codes(
    client: Client, clock: FakeClock, db: asyncpg.Connection, database_url: str
) -> None:
    await update_settings(client, ENV, totp__max_devices=2)
    started = await start_totp(client, ENV, "ivy")
    codes = list((await complete_totp(client, clock, "ivy", started)).recovery_codes)
    first = TotpDevice("", started.totp.secret)
    link = await token_with_code(client, clock, ENV, "ivy", first, types.ACTION_CREDENTIAL_LINK)
    second_started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id="ivy", method=types.METHOD_TOTP, action_token=link
            )
        )
    )
    await complete_totp(client, clock, "ivy", second_started)
    listed = await call(
        client.mfa_stub.ListDevices(pb.ListDevicesRequest(environment_id=ENV, user_id="ivy"))
    )
    # Earned with recovery codes: a token earned by a device dies with it.
    unlinks = [
        await code_token(client, "ivy", code, types.ACTION_CREDENTIAL_UNLINK) for code in codes[2:4]
    ]
    deletes = [
        functools.partial(
            client.mfa_stub.DeleteDevice,
            pb.DeleteDeviceRequest(
                environment_id=ENV, user_id="ivy", device_id=device.device_id, action_token=token
            ),
        )
        for device, token in zip(listed.devices, unlinks, strict=True)
    ]
    # Both devices' rows held: each delete gets as far as it can, then both go.
    await all_at_once(database_url, "SELECT 1 FROM devices FOR UPDATE", deletes)
    assert await devices_of(db, "ivy") == 0
    assert await live_codes(db, "ivy") == 0
    await refused(
        call(
            client.mfa_stub.VerifySession(
                pb.VerifySessionRequest(
                    environment_id=ENV,
                    user_id="ivy",
                    session_id="s",
                    challenge_id=await challenge(client, ENV, "ivy", types.METHOD_RECOVERY_CODE),
                    proof=types.Proof(recovery_code=codes[1]),
                )
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )


# --- 9. one user's guesses do not hold everyone's connections --------------------------


async def test_recovery_code_hashing_holds_no_pooled_connection(
    database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scrypt (a check, and the ten hashes of a new set) runs while the request holds no
    connection of the pool: a flood of guesses cannot starve the signer's validations.

    A server of its own with a pool of one connection: each scrypt call takes that
    connection for a moment from the event loop. If the request held it, the take could
    never succeed (the request waits for the hash), so it times out and the test fails;
    a background task holding it briefly only delays the take."""
    app = await app_module.start(
        database_url=database_url,
        key_ring=KeyRing.parse(KeyRing.generate_entry("seams")),
        clock=clock,
        pool_size=1,
    )
    try:
        async with Client.connect(f"127.0.0.1:{app.port}", insecure=True) as client:
            await client.admin.create_environment(ENV)
            await hashing_holds_no_connection(app, client, clock, monkeypatch)
    finally:
        await app.stop()


async def hashing_holds_no_connection(
    app: Application, client: Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = app.db.pool
    loop = asyncio.get_running_loop()
    taken: list[bool] = []
    real_matches, real_hash = recovery.matches, recovery.hash_code

    async def take_and_give_back() -> None:
        connection = await pool.acquire(timeout=2)
        await pool.release(connection)

    def the_pool_is_free() -> None:
        """From scrypt's thread: the only connection can be taken meanwhile."""
        future = asyncio.run_coroutine_threadsafe(take_and_give_back(), loop)
        try:
            future.result(timeout=10)
            taken.append(True)
        except Exception:  # the acquire timed out: the request holds the connection
            taken.append(False)

    def matches(secret: str, stored: Any) -> bool:
        the_pool_is_free()
        return real_matches(secret, stored)

    def hash_code(code: str) -> recovery.HashedCode:
        the_pool_is_free()
        return real_hash(code)

    monkeypatch.setattr(recovery, "matches", matches)
    monkeypatch.setattr(recovery, "hash_code", hash_code)
    started = await start_totp(client, ENV, "jo")
    codes = list((await complete_totp(client, clock, "jo", started)).recovery_codes)
    device = TotpDevice("", started.totp.secret)
    token = await token_with_code(
        client, clock, ENV, "jo", device, types.ACTION_RECOVERY_CODES_REGENERATE
    )
    await call(
        client.mfa_stub.RegenerateRecoveryCodes(
            pb.RegenerateRecoveryCodesRequest(environment_id=ENV, user_id="jo", action_token=token)
        )
    )
    for guess in (codes[0], "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ"):
        await refused(
            call(
                client.mfa_stub.VerifySession(
                    pb.VerifySessionRequest(
                        environment_id=ENV,
                        user_id="jo",
                        session_id="s",
                        challenge_id=await challenge(client, ENV, "jo", types.METHOD_RECOVERY_CODE),
                        proof=types.Proof(recovery_code=guess),
                    )
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
    assert len(taken) == 10 + 10 + 2  # the first set, the new set, two checks
    assert all(taken)


async def test_recovery_code_checks_run_at_most_two_at_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of guesses queues for the scrypt check instead of taking every core."""
    running, peak = 0, 0
    counting = threading.Lock()
    real_matches = recovery.matches

    def matches(secret: str, stored: Any) -> bool:
        nonlocal running, peak
        with counting:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.05)  # a slower scrypt: the calls overlap if they may
            return real_matches(secret, stored)
        finally:
            with counting:
                running -= 1

    monkeypatch.setattr(recovery, "matches", matches)

    async def guess(user: str) -> None:
        await refused(
            call(
                client.mfa_stub.VerifySession(
                    pb.VerifySessionRequest(
                        environment_id=ENV,
                        user_id=user,
                        session_id="s",
                        challenge_id=await challenge(client, ENV, user, types.METHOD_RECOVERY_CODE),
                        proof=types.Proof(recovery_code="ABCDE-FGHJK-MNPQR-STVWX"),
                    )
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )

    await asyncio.gather(*(guess(f"made-up-{i}") for i in range(8)))
    assert peak == KDF_SLOTS


async def test_a_users_open_challenges_are_capped(client: Client, clock: FakeClock) -> None:
    await enroll_totp(client, clock, ENV, "kim")
    for _ in range(MAX_OPEN_CHALLENGES):
        await challenge(client, ENV, "kim")
    error = await refused(
        challenge(client, ENV, "kim"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_TOO_MANY_CHALLENGES",
    )
    assert error.retry_after == timedelta(minutes=5)
    await challenge(client, ENV, "lee")  # another user is not affected
    clock.advance(timedelta(minutes=5))
    await challenge(client, ENV, "kim")
