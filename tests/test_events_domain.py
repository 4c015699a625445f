"""domain.events and the client source, pure: what an event says when it leaves (DESIGN
§3f) and the user's notification."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mfa_service.domain import audit, events
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext, LoggedEvent
from mfa_service.domain.model import Method

AT = datetime(2026, 12, 7, 15, 0, 0, 123456, tzinfo=UTC)
EVENT_ID = "4f7c2a52-51a8-4f8e-9c57-0d1e6f3a9b10"


def logged(
    event_type: AuditEventType,
    method: Method | None = None,
    *,
    context: CallContext | None = None,
    **details: str,
) -> LoggedEvent:
    return LoggedEvent(
        row_id=1,
        event_id=EVENT_ID,
        event=AuditEvent(
            type=event_type,
            environment_id="env-1",
            occurred_at=AT,
            context=context or CallContext("signer", "req-1"),
            user_id="u-1",
            method=method,
            device_id="0b1e0f5e-9f0e-4c9a-8d5e-3c2b1a0f9e8d" if method else "",
            details=details,
        ),
    )


# --- where the request came from ----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::1", "::1"),
    ],
)
def test_a_client_ip_is_recorded_in_its_normalised_text(given: str, recorded: str) -> None:
    assert audit.client_ip(given) == recorded


@pytest.mark.parametrize(
    "given",
    ["", " 203.0.113.7", "203.0.113.07", "203.0.113", "203.0.113.0/24", "fe80::1%eth0", "x"],
)
def test_anything_else_is_no_client_ip(given: str) -> None:
    with pytest.raises(ValueError, match=r"^(not an IPv4 or IPv6 address|a scoped address)"):
        audit.client_ip(given)


def test_a_user_agent_is_printable_ascii_up_to_the_cap() -> None:
    longest = "a" * audit.MAX_CLIENT_USER_AGENT
    assert audit.client_user_agent(longest) == longest
    for bad in (longest + "a", "Mozilla\n5.0", "Mozilla\x7f", "Mözilla"):
        with pytest.raises(ValueError):
            audit.client_user_agent(bad)


# --- what the user must be told -----------------------------------------------------------

TOLD = {
    AuditEventType.ENROLLMENT_COMPLETED,
    AuditEventType.DEVICE_DELETED,
    AuditEventType.RECOVERY_CODE_USED,
    AuditEventType.RECOVERY_CODES_GENERATED,
    AuditEventType.USER_RESET,
    AuditEventType.LOCKED_OUT,
}


@pytest.mark.parametrize("event_type", list(AuditEventType), ids=lambda t: t.value)
def test_the_user_is_told_of_the_issues_list(event_type: AuditEventType) -> None:
    assert events.notify_user(logged(event_type).event) is (event_type in TOLD)


def test_of_recovery_codes_the_user_is_told_of_a_regeneration_only() -> None:
    generated = AuditEventType.RECOVERY_CODES_GENERATED
    assert events.notify_user(logged(generated, regenerated="true").event)
    assert not events.notify_user(logged(generated, regenerated="false").event)
    # An event from before the detail: told (better twice than never).
    assert events.notify_user(logged(generated).event)


def test_a_webhook_names_the_device_when_and_the_client() -> None:
    data = events.webhook_data(
        logged(
            AuditEventType.DEVICE_DELETED,
            Method.TOTP,
            context=CallContext("signer", "req-1", "203.0.113.7", "Firefox/128.0"),
            alias="Work phone",
        )
    )
    assert data["notify_user"] is True
    assert (data["method"], data["device_alias"], data["occurred_at"]) == (
        "TOTP",
        "Work phone",
        "2026-12-07T15:00:00.123456Z",
    )
    assert (data["client_ip"], data["client_user_agent"]) == ("203.0.113.7", "Firefox/128.0")
    quiet = events.webhook_data(logged(AuditEventType.TOKEN_VALIDATED))
    assert quiet["notify_user"] is False
    assert (quiet["device_alias"], quiet["client_ip"], quiet["client_user_agent"]) == (
        None,
        None,
        None,
    )
