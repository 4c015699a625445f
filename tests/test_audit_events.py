"""Each audit event is written by the step that causes it, with the caller's request id."""

from __future__ import annotations

from datetime import timedelta

import grpc
import jwt
import pytest

from flows import (
    call,
    challenge,
    enroll_totp,
    issue_action_token,
    update_settings,
)
from helpers import FakeClock, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service.store import audit as audit_store

ENV = "env-audit"
pytestmark = pytest.mark.environments(ENV)


async def newest(client: Client, user: str) -> admin_pb.AuditEvent:
    page = await call(
        client.admin.stub.ListAuditEvents(
            admin_pb.ListAuditEventsRequest(environment_id=ENV, user_id=user, page_size=1)
        )
    )
    assert len(page.events) == 1
    return page.events[0]


async def newest_type(client: Client, user: str) -> str:
    return admin_pb.AuditEventType.Name((await newest(client, user)).type)


async def test_each_step_leaves_its_event_newest(client: Client, clock: FakeClock) -> None:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    device = await enroll_totp(client, clock, ENV, "vera")

    await call(
        client.mfa_stub.AcknowledgeRecoveryCodes(
            pb.AcknowledgeRecoveryCodesRequest(environment_id=ENV, user_id="vera")
        )
    )
    assert await newest_type(client, "vera") == "AUDIT_EVENT_TYPE_RECOVERY_CODES_ACKNOWLEDGED"

    clock.advance(timedelta(seconds=30))
    issued = await issue_action_token(
        client, ENV, "vera", device.code(clock.now()), await challenge(client, ENV, "vera")
    )
    jti = jwt.decode(issued.token, options={"verify_signature": False})["jti"]
    validate = at_pb.ValidateActionTokenRequest(
        environment_id=ENV, user_id="vera", action=types.ACTION_WAAS_SIGN, token=issued.token
    )
    for decision, reason in (("ALLOW", "TOKEN_VALID"), ("DENY", "TOKEN_ALREADY_USED")):
        await call(client.action_tokens_stub.ValidateActionToken(validate))
        event = await newest(client, "vera")
        assert event.type == admin_pb.AUDIT_EVENT_TYPE_TOKEN_VALIDATED
        assert dict(event.details) == {
            "action": "ACTION_WAAS_SIGN",
            "decision": decision,
            "reason": reason,
            "jti": jti,
        }

    clock.advance(timedelta(seconds=30))
    unlink = await issue_action_token(
        client,
        ENV,
        "vera",
        device.code(clock.now()),
        await challenge(client, ENV, "vera"),
        actions=(types.ACTION_CREDENTIAL_UNLINK,),
    )
    await call(
        client.mfa_stub.DeleteDevice(
            pb.DeleteDeviceRequest(
                environment_id=ENV,
                user_id="vera",
                device_id=device.device_id,
                action_token=unlink.token,
            )
        )
    )
    assert await newest_type(client, "vera") == "AUDIT_EVENT_TYPE_DEVICE_DELETED"

    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="vera")
        )
    )
    assert await newest_type(client, "vera") == "AUDIT_EVENT_TYPE_USER_RESET"


@pytest.mark.parametrize("proof", ["totp_code", "recovery_code"])
async def test_the_failure_that_locks_leaves_locked_out_newest(
    client: Client, clock: FakeClock, proof: str
) -> None:
    """Both failure paths: the one-statement TOTP check and the recovery code's."""
    await update_settings(client, ENV, lockout__max_failed_attempts=2)
    device = await enroll_totp(client, clock, ENV, "walt")
    wrong = {
        "totp_code": device.code(clock.now(), step_offset=20),
        "recovery_code": "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ",
    }[proof]
    for expected in ("AUDIT_EVENT_TYPE_VERIFICATION_FAILED", "AUDIT_EVENT_TYPE_LOCKED_OUT"):
        # The failure that starts the lockout is answered as a failure too.
        await refused(
            call(
                client.mfa_stub.VerifySession(
                    pb.VerifySessionRequest(
                        environment_id=ENV,
                        user_id="walt",
                        session_id="s",
                        challenge_id=await challenge(client, ENV, "walt"),
                        proof=types.Proof(**{proof: wrong}),
                    )
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
        assert await newest_type(client, "walt") == expected


async def test_the_callers_request_id_is_on_the_event(client: Client, clock: FakeClock) -> None:
    device = await enroll_totp(client, clock, ENV, "xena")
    update = pb.UpdateDeviceRequest(
        environment_id=ENV, user_id="xena", device_id=device.device_id, alias="Phone"
    )
    await client.mfa_stub.UpdateDevice(update, metadata=(("x-request-id", "req-update-42"),))
    event = await newest(client, "xena")
    assert event.type == admin_pb.AUDIT_EVENT_TYPE_DEVICE_UPDATED
    assert event.request_id == "req-update-42"
    await client.mfa_stub.UpdateDevice(update)
    generated = (await newest(client, "xena")).request_id
    assert generated and generated != "req-update-42"  # per call, not sticky


def test_every_audit_insert_names_the_one_column_list() -> None:
    """store.audit.COLUMNS is the one column list: an INSERT that gives a column too few or
    one unknown is refused when its module is imported, not written short."""
    assert audit_store.COLUMNS == (
        "event_id",
        "environment_id",
        "user_id",
        "type",
        "occurred_at",
        "method",
        "device_id",
        "caller",
        "request_id",
        "client_ip",
        "client_user_agent",
        "details",
    )
    everything = {column: "NULL" for column in audit_store.COLUMNS}
    assert "INSERT INTO audit_events (event_id, environment_id," in audit_store.insert_sql(
        everything
    )
    for wrong in (
        {c: v for c, v in everything.items() if c != "device_id"},
        everything | {"actor": "NULL"},
    ):
        with pytest.raises(ValueError, match="audit INSERT must give exactly"):
            audit_store.insert_sql(wrong)
