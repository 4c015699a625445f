"""Recovery codes, device management with step-up, admin reset and the audit log."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import jwt
import pyotp
import pytest
from authenticator import SoftAuthenticator

from flows import (
    TotpDevice,
    call,
    challenge,
    enroll_passkey,
    enroll_totp,
    enroll_totp_with_codes,
    start_totp,
    status,
    token_with_code,
    update_settings,
    verify_session,
)
from helpers import FakeClock, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service.app import Application
from mfa_service.domain import recovery

ENV = "env-recovery"
pytestmark = pytest.mark.environments(ENV)
CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5}){3}$")


async def enroll_with_codes(
    client: Client, clock: FakeClock, user: str
) -> tuple[TotpDevice, list[str]]:
    return await enroll_totp_with_codes(client, clock, ENV, user)


async def verify_with_code(
    client: Client, user: str, code: str, session: str = "s"
) -> pb.VerifySessionResponse:
    return await call(
        client.mfa_stub.VerifySession(
            pb.VerifySessionRequest(
                environment_id=ENV,
                user_id=user,
                session_id=session,
                challenge_id=await challenge(client, ENV, user, types.METHOD_RECOVERY_CODE),
                proof=types.Proof(recovery_code=code),
            )
        )
    )


# --- recovery codes ------------------------------------------------------------------


async def test_ten_codes_with_the_first_device_only(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(client, ENV, totp__max_devices=2)
    device, codes = await enroll_with_codes(client, clock, "alice")
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert len({c[:5] for c in codes}) == 10  # distinct ids: one row per check
    assert all(CODE.match(c) for c in codes)
    link = await token_with_code(client, clock, ENV, "alice", device, types.ACTION_CREDENTIAL_LINK)
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id="alice", method=types.METHOD_TOTP, action_token=link
            )
        )
    )
    second = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="alice",
                enrollment_id=started.enrollment_id,
                totp_code=pyotp.TOTP(started.totp.secret).at(clock.now()),
            )
        )
    )
    assert list(second.recovery_codes) == []
    assert await db.fetchval("SELECT count(*) FROM recovery_codes") == 10


async def test_codes_are_stored_hashed(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    _, codes = await enroll_with_codes(client, clock, "bob")
    rows = await db.fetch("SELECT * FROM recovery_codes")
    dump = repr([dict(r) for r in rows]).upper()
    for code in codes:
        secret = code.replace("-", "")[5:]
        assert secret not in dump
        assert code not in dump
    assert all(len(r["hash"]) == 32 and len(r["salt"]) == 16 for r in rows)
    assert len({bytes(r["salt"]) for r in rows}) == 10


async def test_a_code_works_once_and_is_forgiving_to_type(client: Client, clock: FakeClock) -> None:
    _, codes = await enroll_with_codes(client, clock, "carol")
    loose = codes[0].lower().replace("-", " ").replace("0", "o")
    verified = await verify_with_code(client, "carol", loose)
    assert verified.method == types.METHOD_RECOVERY_CODE
    assert verified.device_id == ""
    await refused(
        verify_with_code(client, "carol", codes[0]),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert (await status(client, ENV, "carol")).recovery_codes_remaining == 9


async def test_one_hash_per_attempt_whatever_is_stored(
    client: Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code id finds the one row: a check costs one KDF call, never one per code."""
    _, codes = await enroll_with_codes(client, clock, "quinn")
    hashed: list[str] = []
    real_kdf = recovery._kdf

    def counting_kdf(secret: str, salt: bytes) -> bytes:
        hashed.append(secret)
        return real_kdf(secret, salt)

    monkeypatch.setattr(recovery, "_kdf", counting_kdf)
    right_id_wrong_secret = f"{codes[0][:5]}-ZZZZZ-ZZZZZ-ZZZZZ"
    unknown_id = next(i for i in ("ZZZZZ", "YYYYY") if i not in {c[:5] for c in codes})
    for attempt, code in enumerate(
        (right_id_wrong_secret, f"{unknown_id}-{codes[0][6:]}"), start=1
    ):
        await refused(
            verify_with_code(client, "quinn", code),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
        assert len(hashed) == attempt, code
    await verify_with_code(client, "quinn", codes[0])
    assert len(hashed) == 3


async def test_thirty_concurrent_uses_of_one_code_succeed_once(
    app: Application, client: Client, clock: FakeClock
) -> None:
    await update_settings(client, ENV, lockout__max_failed_attempts=100)
    _, codes = await enroll_with_codes(client, clock, "dave")
    challenges = [
        await challenge(client, ENV, "dave", types.METHOD_RECOVERY_CODE) for _ in range(30)
    ]
    clients = [Client.connect(f"127.0.0.1:{app.port}", insecure=True) for _ in range(3)]

    async def use(i: int, challenge_id: str) -> pb.VerifySessionResponse:
        return await call(
            clients[i % 3].mfa_stub.VerifySession(
                pb.VerifySessionRequest(
                    environment_id=ENV,
                    user_id="dave",
                    session_id=f"s{i}",
                    challenge_id=challenge_id,
                    proof=types.Proof(recovery_code=codes[3]),
                )
            )
        )

    try:
        results = await asyncio.gather(
            *(use(i, c) for i, c in enumerate(challenges)), return_exceptions=True
        )
    finally:
        for c in clients:
            await c.close()
    assert sum(isinstance(r, pb.VerifySessionResponse) for r in results) == 1
    assert {r.reason for r in results if isinstance(r, MfaServiceError)} == {
        "ERROR_REASON_VERIFICATION_FAILED"
    }


async def test_a_recovery_code_answers_any_challenge_and_mints_action_tokens(
    client: Client, clock: FakeClock
) -> None:
    await update_settings(
        client, ENV, protected_actions=[types.ACTION_WAAS_SIGN], action_methods=[types.METHOD_TOTP]
    )
    _, codes = await enroll_with_codes(client, clock, "erin")
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="erin",
                challenge_id=await challenge(client, ENV, "erin"),  # a TOTP challenge
                proof=types.Proof(recovery_code=codes[1]),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
    )
    validation = await call(
        client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV,
                user_id="erin",
                action=types.ACTION_WAAS_SIGN,
                token=issued.token,
            )
        )
    )
    assert validation.decision == types.DECISION_ALLOW


async def test_a_code_spent_on_a_token_is_spent_everywhere(
    client: Client, clock: FakeClock
) -> None:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    _, codes = await enroll_with_codes(client, clock, "rosa")

    async def issue(code: str) -> pb.IssueActionTokenResponse:
        return await call(
            client.mfa_stub.IssueActionToken(
                pb.IssueActionTokenRequest(
                    environment_id=ENV,
                    user_id="rosa",
                    challenge_id=await challenge(client, ENV, "rosa", types.METHOD_RECOVERY_CODE),
                    proof=types.Proof(recovery_code=code),
                    actions=[types.ACTION_WAAS_SIGN],
                    single_use=True,
                )
            )
        )

    issued = await issue(codes[0])
    assert jwt.decode(issued.token, options={"verify_signature": False})["amr"] == ["rcode"]
    await refused(
        issue(codes[0]), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_VERIFICATION_FAILED"
    )
    await refused(
        verify_with_code(client, "rosa", codes[0]),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert (await status(client, ENV, "rosa")).recovery_codes_remaining == 9


async def test_recovery_failures_count_toward_lockout(client: Client, clock: FakeClock) -> None:
    await update_settings(client, ENV, lockout__max_failed_attempts=2)
    _, codes = await enroll_with_codes(client, clock, "fred")
    fake = "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ"
    for _ in range(2):
        await refused(
            verify_with_code(client, "fred", fake),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
    await refused(
        verify_with_code(client, "fred", codes[0]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )


@pytest.mark.parametrize("bad", ["12345", "ABCDE-FGHIJ-KLMNP-QRSTU-V", "!!!!!-!!!!!-!!!!!-!!!!!"])
async def test_a_malformed_code_names_the_field(client: Client, clock: FakeClock, bad: str) -> None:
    await enroll_with_codes(client, clock, "gina")
    error = await refused(
        verify_with_code(client, "gina", bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == ["proof.recovery_code"]


async def test_regeneration_needs_its_token_and_kills_the_old_set(
    client: Client, clock: FakeClock
) -> None:
    device, old = await enroll_with_codes(client, clock, "hank")

    async def regenerate(token: str) -> list[str]:
        response = await call(
            client.mfa_stub.RegenerateRecoveryCodes(
                pb.RegenerateRecoveryCodesRequest(
                    environment_id=ENV, user_id="hank", action_token=token
                )
            )
        )
        return list(response.recovery_codes)

    await refused(
        regenerate(""), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED"
    )
    wrong = await token_with_code(
        client, clock, ENV, "hank", device, types.ACTION_CREDENTIAL_UNLINK
    )
    await refused(
        regenerate(wrong), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED"
    )
    token = await token_with_code(
        client, clock, ENV, "hank", device, types.ACTION_RECOVERY_CODES_REGENERATE
    )
    new = await regenerate(token)
    assert len(new) == 10 and not set(new) & set(old)
    await refused(
        regenerate(token), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED"
    )  # used
    await refused(
        verify_with_code(client, "hank", old[0]),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await verify_with_code(client, "hank", new[0])


async def test_acknowledgement_flow(client: Client, clock: FakeClock) -> None:
    assert not (await status(client, ENV, "ivy")).recovery_codes_pending_acknowledgement
    device, _ = await enroll_with_codes(client, clock, "ivy")
    now = await status(client, ENV, "ivy")
    assert now.recovery_codes_pending_acknowledgement
    assert now.recovery_codes_remaining == 10
    await call(
        client.mfa_stub.AcknowledgeRecoveryCodes(
            pb.AcknowledgeRecoveryCodesRequest(environment_id=ENV, user_id="ivy")
        )
    )
    assert not (await status(client, ENV, "ivy")).recovery_codes_pending_acknowledgement
    token = await token_with_code(
        client, clock, ENV, "ivy", device, types.ACTION_RECOVERY_CODES_REGENERATE
    )
    await call(
        client.mfa_stub.RegenerateRecoveryCodes(
            pb.RegenerateRecoveryCodesRequest(environment_id=ENV, user_id="ivy", action_token=token)
        )
    )
    assert (await status(client, ENV, "ivy")).recovery_codes_pending_acknowledgement


async def test_a_passkey_as_the_first_device_brings_ten_codes(client: Client) -> None:
    origin, rp_id = "https://app.example.com", "example.com"
    await update_settings(client, ENV, passkey__rp_id=rp_id, passkey__allowed_origins=[origin])
    done = await enroll_passkey(client, ENV, "sven", SoftAuthenticator(origin=origin, rp_id=rp_id))
    assert done.device.method == types.METHOD_PASSKEY
    codes = list(done.recovery_codes)
    assert len(set(codes)) == 10 and all(CODE.match(c) for c in codes)
    assert (await status(client, ENV, "sven")).recovery_codes_pending_acknowledgement
    await verify_with_code(client, "sven", codes[0])


# --- devices -----------------------------------------------------------------------


async def list_devices(client: Client, user: str) -> list[types.Device]:
    response = await call(
        client.mfa_stub.ListDevices(pb.ListDevicesRequest(environment_id=ENV, user_id=user))
    )
    return list(response.devices)


async def test_list_and_update_devices(client: Client, clock: FakeClock) -> None:
    await update_settings(client, ENV, totp__max_devices=2)
    first, _ = await enroll_with_codes(client, clock, "jack")
    link = await token_with_code(client, clock, ENV, "jack", first, types.ACTION_CREDENTIAL_LINK)
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id="jack", method=types.METHOD_TOTP, action_token=link
            )
        )
    )
    await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="jack",
                enrollment_id=started.enrollment_id,
                totp_code=pyotp.TOTP(started.totp.secret).at(clock.now()),
                alias="Backup phone",
            )
        )
    )
    devices = await list_devices(client, "jack")
    assert [(d.alias, d.is_default, d.method) for d in devices] == [
        ("Authenticator app", True, types.METHOD_TOTP),
        ("Backup phone", False, types.METHOD_TOTP),
    ]
    assert all(d.HasField("created_at") and d.HasField("last_used_at") for d in devices)
    assert first.secret not in str(devices) and started.totp.secret not in str(devices)

    updated = await call(
        client.mfa_stub.UpdateDevice(
            pb.UpdateDeviceRequest(
                environment_id=ENV,
                user_id="jack",
                device_id=devices[1].device_id,
                alias="Spare",
                make_default=True,
            )
        )
    )
    assert (updated.device.alias, updated.device.is_default) == ("Spare", True)
    assert [d.is_default for d in await list_devices(client, "jack")] == [False, True]
    await refused(
        call(
            client.mfa_stub.UpdateDevice(
                pb.UpdateDeviceRequest(
                    environment_id=ENV,
                    user_id="mallory",
                    device_id=devices[0].device_id,
                    alias="mine",
                )
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_DEVICE_NOT_FOUND",
    )
    assert [d.alias for d in await list_devices(client, "jack")] == ["Authenticator app", "Spare"]


async def test_a_verification_moves_last_used(client: Client, clock: FakeClock) -> None:
    device, _ = await enroll_with_codes(client, clock, "tara")

    async def last_used() -> datetime:
        [listed] = await list_devices(client, "tara")
        return listed.last_used_at.ToDatetime(tzinfo=UTC)

    before = await last_used()
    clock.advance(timedelta(minutes=7))
    await verify_session(client, ENV, "tara", "s", device.code(clock.now()))
    after = await last_used()
    assert after == clock.now()
    assert after - before == timedelta(minutes=7)


async def test_delete_needs_an_unlink_token_and_the_last_device_unenrolls(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(client, ENV, require_at_onboarding=True)
    device, _ = await enroll_with_codes(client, clock, "kate")

    async def delete(token: str) -> pb.DeleteDeviceResponse:
        return await call(
            client.mfa_stub.DeleteDevice(
                pb.DeleteDeviceRequest(
                    environment_id=ENV,
                    user_id="kate",
                    device_id=device.device_id,
                    action_token=token,
                )
            )
        )

    await refused(delete(""), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED")
    link = await token_with_code(client, clock, ENV, "kate", device, types.ACTION_CREDENTIAL_LINK)
    await refused(delete(link), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED")
    assert len(await list_devices(client, "kate")) == 1
    unlink = await token_with_code(
        client, clock, ENV, "kate", device, types.ACTION_CREDENTIAL_UNLINK
    )
    await delete(unlink)
    assert await list_devices(client, "kate") == []
    after = await status(client, ENV, "kate")
    assert after.enrollment_required
    assert list(after.enrolled_methods) == []
    assert after.recovery_codes_remaining == 0
    assert await db.fetchval("SELECT count(*) FROM recovery_codes WHERE user_id = 'kate'") == 0


async def test_deleting_an_unknown_device_is_not_found(client: Client, clock: FakeClock) -> None:
    await enroll_with_codes(client, clock, "lena")
    await refused(
        call(
            client.mfa_stub.DeleteDevice(
                pb.DeleteDeviceRequest(
                    environment_id=ENV,
                    user_id="lena",
                    device_id="00000000-0000-4000-8000-000000000000",
                )
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_DEVICE_NOT_FOUND",
    )


async def test_reset_removes_devices_codes_and_sessions(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(client, ENV, session_mfa_enabled=True, totp__max_devices=2)
    device, codes = await enroll_with_codes(client, clock, "mike")
    clock.advance(timedelta(seconds=30))
    await verify_session(client, ENV, "mike", "s1", device.code(clock.now()))
    link = await token_with_code(client, clock, ENV, "mike", device, types.ACTION_CREDENTIAL_LINK)
    pending = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id="mike", method=types.METHOD_TOTP, action_token=link
            )
        )
    )
    unused_challenge = await challenge(client, ENV, "mike")
    tables = ("devices", "recovery_codes", "verified_sessions", "enrollments", "challenges")

    async def rows_of_mike() -> dict[str, int]:
        return {
            t: await db.fetchval(f"SELECT count(*) FROM {t} WHERE user_id = 'mike'")  # noqa: S608
            for t in tables
        }

    assert await rows_of_mike() == dict(zip(tables, (1, 10, 1, 1, 1), strict=True))
    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="mike", reason="lost phone")
        )
    )
    assert await rows_of_mike() == dict.fromkeys(tables, 0)
    await refused(
        verify_with_code(client, "mike", codes[0]),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await refused(
        call(
            client.mfa_stub.CompleteEnrollment(
                pb.CompleteEnrollmentRequest(
                    environment_id=ENV,
                    user_id="mike",
                    enrollment_id=pending.enrollment_id,
                    totp_code=pyotp.TOTP(pending.totp.secret).at(clock.now()),
                )
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )
    await refused(
        verify_session(client, ENV, "mike", "s2", device.code(clock.now()), unused_challenge),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )


async def test_a_reset_that_fails_midway_changes_nothing(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """SECURITY #39: one transaction. The reset's last write (revoking the tokens) fails,
    so its earlier deletes must not stay."""
    await update_settings(client, ENV, session_mfa_enabled=True)
    device, codes = await enroll_with_codes(client, clock, "nico")
    clock.advance(timedelta(seconds=30))
    await verify_session(client, ENV, "nico", "s1", device.code(clock.now()))
    await token_with_code(client, clock, ENV, "nico", device, types.ACTION_CREDENTIAL_UNLINK)
    await db.execute(
        "CREATE FUNCTION test_fail_reset() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'reset interrupted by the test'; END $$"
    )
    await db.execute(
        "CREATE TRIGGER test_fail_reset BEFORE UPDATE ON action_tokens "
        "FOR EACH STATEMENT EXECUTE FUNCTION test_fail_reset()"
    )
    try:
        failed = await refused(
            call(
                client.admin.stub.ResetUserMfa(
                    admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="nico")
                )
            ),
            grpc.StatusCode.INTERNAL,
            "ERROR_REASON_INTERNAL",
        )
    finally:
        await db.execute("DROP TRIGGER test_fail_reset ON action_tokens")
        await db.execute("DROP FUNCTION test_fail_reset()")
    assert failed.code == grpc.StatusCode.INTERNAL
    assert "reset interrupted" not in str(failed)
    kept = {
        t: await db.fetchval(f"SELECT count(*) FROM {t} WHERE user_id = 'nico'")  # noqa: S608
        for t in ("mfa_users", "devices", "recovery_codes", "verified_sessions")
    }
    assert kept == {"mfa_users": 1, "devices": 1, "recovery_codes": 10, "verified_sessions": 1}
    assert (
        await db.fetchval(
            "SELECT count(*) FROM action_tokens WHERE user_id = 'nico' AND revoked_at IS NULL"
        )
        == 1
    )
    assert await db.fetchval("SELECT count(*) FROM audit_events WHERE type = 'USER_RESET'") == 0
    await verify_with_code(client, "nico", codes[0])


# --- the audit log -------------------------------------------------------------------


async def list_events(client: Client, **fields: Any) -> admin_pb.ListAuditEventsResponse:
    return await call(
        client.admin.stub.ListAuditEvents(
            admin_pb.ListAuditEventsRequest(environment_id=ENV, **fields)
        )
    )


def written_forms(code: str) -> list[str]:
    """A recovery code as shown, without dashes, and its secret part (after the id)."""
    compact = code.replace("-", "")
    return [code, compact, compact[5:]]


async def test_every_event_type_is_recorded_and_holds_no_secret(
    client: Client, clock: FakeClock
) -> None:
    secrets: list[str] = []
    await update_settings(
        client,
        ENV,
        protected_actions=[types.ACTION_WAAS_SIGN],
        lockout__max_failed_attempts=2,
        totp__max_devices=2,
    )
    started = await start_totp(client, ENV, "nora")
    secrets.append(started.totp.secret)
    first_code = pyotp.TOTP(started.totp.secret).at(clock.now())
    done = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="nora",
                enrollment_id=started.enrollment_id,
                totp_code=first_code,
            )
        )
    )
    secrets += [f for c in done.recovery_codes for f in written_forms(c)] + [first_code]
    device = TotpDevice(done.device.device_id, started.totp.secret)
    await call(
        client.mfa_stub.AcknowledgeRecoveryCodes(
            pb.AcknowledgeRecoveryCodesRequest(environment_id=ENV, user_id="nora")
        )
    )
    await call(
        client.mfa_stub.UpdateDevice(
            pb.UpdateDeviceRequest(
                environment_id=ENV, user_id="nora", device_id=device.device_id, alias="Phone"
            )
        )
    )
    sign = await token_with_code(client, clock, ENV, "nora", device, types.ACTION_WAAS_SIGN)
    secrets.append(sign)
    await call(
        client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV, user_id="nora", action=types.ACTION_WAAS_SIGN, token=sign
            )
        )
    )
    await verify_with_code(client, "nora", done.recovery_codes[0])
    regen = await token_with_code(
        client, clock, ENV, "nora", device, types.ACTION_RECOVERY_CODES_REGENERATE
    )
    new_codes = await call(
        client.mfa_stub.RegenerateRecoveryCodes(
            pb.RegenerateRecoveryCodesRequest(
                environment_id=ENV, user_id="nora", action_token=regen
            )
        )
    )
    secrets += [regen] + [f for c in new_codes.recovery_codes for f in written_forms(c)]
    link = await token_with_code(client, clock, ENV, "nora", device, types.ACTION_CREDENTIAL_LINK)
    second = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id="nora", method=types.METHOD_TOTP, action_token=link
            )
        )
    )
    secrets += [link, second.totp.secret]
    clock.advance(timedelta(seconds=30))
    reused = device.code(clock.now())
    secrets.append(reused)
    challenge_id = await challenge(client, ENV, "nora")
    await call(
        client.mfa_stub.VerifySession(
            pb.VerifySessionRequest(
                environment_id=ENV,
                user_id="nora",
                session_id="s",
                challenge_id=challenge_id,
                proof=types.Proof(totp_code=reused),
            )
        )
    )
    await refused(
        call(
            client.mfa_stub.VerifySession(
                pb.VerifySessionRequest(
                    environment_id=ENV,
                    user_id="nora",
                    session_id="s",
                    challenge_id=await challenge(client, ENV, "nora"),
                    proof=types.Proof(totp_code=reused),
                )
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await refused(  # the second failure: it locks the user out ...
        verify_with_code(client, "nora", "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ"),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await refused(  # ... which the next attempt meets
        verify_with_code(client, "nora", "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    clock.advance(timedelta(minutes=15))
    unlink = await token_with_code(
        client, clock, ENV, "nora", device, types.ACTION_CREDENTIAL_UNLINK
    )
    secrets.append(unlink)
    await call(
        client.mfa_stub.DeleteDevice(
            pb.DeleteDeviceRequest(
                environment_id=ENV, user_id="nora", device_id=device.device_id, action_token=unlink
            )
        )
    )
    hook = await call(
        client.admin.stub.CreateWebhook(
            admin_pb.CreateWebhookRequest(
                environment_id=ENV,
                url="https://127.0.0.1:9/mfa",
                event_types=[admin_pb.AUDIT_EVENT_TYPE_USER_RESET],
            )
        )
    )
    secrets.append(hook.signing_secret)
    await call(
        client.admin.stub.DeleteWebhook(
            admin_pb.DeleteWebhookRequest(environment_id=ENV, webhook_id=hook.webhook.webhook_id)
        )
    )
    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="nora")
        )
    )

    events = []
    token = ""
    while True:
        page = await list_events(client, page_size=7, page_token=token)
        events += list(page.events)
        token = page.next_page_token
        if not token:
            break
    seen = {admin_pb.AuditEventType.Name(e.type) for e in events}
    expected = {n for n in admin_pb.AuditEventType.keys() if n != "AUDIT_EVENT_TYPE_UNSPECIFIED"}  # noqa: SIM118
    assert (
        expected - {"AUDIT_EVENT_TYPE_SIGN_COUNT_REGRESSION"} <= seen
    )  # passkey tests cover that one
    assert len({e.event_id for e in events}) == len(events)  # each event exactly once
    times = [e.occurred_at.ToDatetime() for e in events]
    assert times == sorted(times, reverse=True)  # newest first
    assert all(e.request_id and e.caller for e in events)
    text = str(events)
    for secret in secrets:
        assert secret not in text


@pytest.mark.environments("env-elsewhere")
async def test_pagination_and_filters(client: Client, clock: FakeClock) -> None:
    for user in ("olive", "pete"):
        await enroll_totp(client, clock, ENV, user)
    everything = await list_events(client, page_size=500)
    assert not everything.next_page_token
    walked, token = [], ""
    while True:
        page = await list_events(client, page_size=2, page_token=token)
        assert len(page.events) <= 2
        walked += [e.event_id for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert walked == [e.event_id for e in everything.events]
    mine = await list_events(client, user_id="olive", page_size=500)
    assert mine.events and {e.user_id for e in mine.events} == {"olive"}
    started = await list_events(
        client, types=[admin_pb.AUDIT_EVENT_TYPE_ENROLLMENT_STARTED], page_size=500
    )
    assert [e.user_id for e in started.events] == ["pete", "olive"]
    other_env = await call(
        client.admin.stub.ListAuditEvents(
            admin_pb.ListAuditEventsRequest(environment_id="env-elsewhere")
        )
    )
    # Only its own creation: none of ENV's events.
    assert [e.type for e in other_env.events] == [admin_pb.AUDIT_EVENT_TYPE_ENVIRONMENT_CREATED]


@pytest.mark.parametrize(
    ("field", "request_fields"),
    [
        ("page_size", {"page_size": 501}),
        ("page_token", {"page_token": "garbage!"}),
        ("types[0]", {"types": [admin_pb.AUDIT_EVENT_TYPE_UNSPECIFIED]}),
    ],
)
async def test_audit_list_input_errors(
    client: Client, field: str, request_fields: dict[str, Any]
) -> None:
    error = await refused(
        list_events(client, **request_fields),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [field]


async def test_audit_rows_of_token_issues_and_recovery_proofs(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The verification's events and the issue's are written with the token, in order."""
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    device, codes = await enroll_with_codes(client, clock, "auditor")
    await token_with_code(client, clock, ENV, "auditor", device, types.ACTION_WAAS_SIGN)
    by_code = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="auditor",
                challenge_id=await challenge(client, ENV, "auditor", types.METHOD_RECOVERY_CODE),
                proof=types.Proof(recovery_code=codes[0]),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
    )
    await verify_with_code(client, "auditor", codes[1])
    rows = await db.fetch(
        "SELECT type, method, device_id, details FROM audit_events "
        "WHERE user_id = 'auditor' AND type NOT LIKE 'ENROLLMENT_%' "
        "AND type <> 'RECOVERY_CODES_GENERATED' ORDER BY id"
    )
    assert [(r["type"], r["method"]) for r in rows] == [
        ("VERIFICATION_SUCCEEDED", "TOTP"),
        ("TOKEN_ISSUED", "TOTP"),
        ("RECOVERY_CODE_USED", "RECOVERY_CODE"),
        ("VERIFICATION_SUCCEEDED", "RECOVERY_CODE"),
        ("TOKEN_ISSUED", "RECOVERY_CODE"),
        ("RECOVERY_CODE_USED", "RECOVERY_CODE"),
        ("VERIFICATION_SUCCEEDED", "RECOVERY_CODE"),
    ]
    assert rows[0]["device_id"] == rows[1]["device_id"] == device.device_id
    details = [json.loads(r["details"]) for r in rows]
    assert details[1]["actions"] == "WAAS_SIGN"
    assert (
        details[4]["jti"] == jwt.decode(by_code.token, options={"verify_signature": False})["jti"]
    )
    assert [d.get("remaining") for d in details[2:4]] == ["9", "9"]
    assert [d.get("remaining") for d in details[5:]] == ["8", "8"]
