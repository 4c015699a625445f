"""Each audit event is written by the step that causes it, with the caller's request id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import jwt
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

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


async def test_a_time_range_keeps_the_events_from_its_start_to_before_its_end_across_pages(
    client: Client, clock: FakeClock
) -> None:
    """start_time is inclusive, end_time exclusive; either may be open; the next page keeps
    the range."""
    start = clock.now()
    for n in range(4):  # one settings change an hour, on the hour
        clock.advance(timedelta(hours=1 if n else 0))
        await update_settings(client, ENV, totp__issuer=f"Issuer {n}")

    async def issuers(
        start_time: datetime | None = None, end_time: datetime | None = None
    ) -> list[str]:
        found, token = [], ""
        while True:
            events, token = await client.admin.list_audit_events(
                ENV,
                types=[admin_pb.AUDIT_EVENT_TYPE_SETTINGS_CHANGED],
                page_size=1,
                page_token=token,
                start_time=start_time,
                end_time=end_time,
            )
            found += [e.occurred_at.ToDatetime(tzinfo=UTC) - start for e in events]
            if not token:
                return [f"{delta // timedelta(hours=1)}h" for delta in found]

    hour = timedelta(hours=1)
    assert await issuers() == ["3h", "2h", "1h", "0h"]
    assert await issuers(start_time=start + hour, end_time=start + 3 * hour) == ["2h", "1h"]
    assert await issuers(start_time=start + hour) == ["3h", "2h", "1h"]
    assert await issuers(end_time=start + hour) == ["0h"]
    # A microsecond either side of an event decides it.
    tick = timedelta(microseconds=1)
    assert await issuers(start_time=start + 2 * hour + tick) == ["3h"]
    assert await issuers(start_time=start + hour, end_time=start + hour + tick) == ["1h"]
    assert await issuers(start_time=start + 4 * hour) == []


@pytest.mark.parametrize(
    ("window", "field"),
    [
        ({"start_time": Timestamp(seconds=100), "end_time": Timestamp(seconds=100)}, "end_time"),
        ({"start_time": Timestamp(seconds=100), "end_time": Timestamp(seconds=99)}, "end_time"),
        ({"start_time": Timestamp(seconds=-62_135_596_801)}, "start_time"),
        ({"end_time": Timestamp(seconds=253_402_300_800)}, "end_time"),
        ({"start_time": Timestamp(seconds=0, nanos=-1)}, "start_time"),
        ({"end_time": Timestamp(seconds=0, nanos=1_000_000_000)}, "end_time"),
    ],
    ids=["empty", "reversed", "before-year-1", "after-9999", "negative-nanos", "whole-nanos"],
)
async def test_a_bad_time_range_is_refused_naming_its_field(
    client: Client, window: dict[str, Timestamp], field: str
) -> None:
    request = admin_pb.ListAuditEventsRequest(environment_id=ENV)
    for name, value in window.items():
        getattr(request, name).CopyFrom(value)
    error = await refused(
        call(client.admin.stub.ListAuditEvents(request)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [field]


async def test_the_python_client_refuses_a_time_without_its_zone(client: Client) -> None:
    with pytest.raises(ValueError, match="start_time must be an aware datetime"):
        await client.admin.list_audit_events(ENV, start_time=datetime(2026, 1, 1))
