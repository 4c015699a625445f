"""domain.events and the client source, pure: what an event says when it leaves (DESIGN
§3f), the user's notification, the CAEP credential-change claims and their SET."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import jwt
import pytest

from mfa_service.domain import audit, events, tokens
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext, LoggedEvent
from mfa_service.domain.model import Method

AT = datetime(2026, 12, 7, 15, 0, 0, 123456, tzinfo=UTC)
EVENT_ID = "4f7c2a52-51a8-4f8e-9c57-0d1e6f3a9b10"
AAGUID = "accced6a-63f5-490a-9eea-e59bc1896cfc"


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


# --- CAEP credential change ---------------------------------------------------------------


def change_of(event: LoggedEvent) -> Mapping[str, object]:
    claims = events.caep_set_claims(event, issuer="mfa-service", audience="https://rx")
    assert claims is not None
    change: Mapping[str, object] = claims["events"][events.CREDENTIAL_CHANGE]
    return change


@pytest.mark.parametrize(
    ("event", "credential_type", "change_type", "initiating_entity"),
    [
        (logged(AuditEventType.ENROLLMENT_COMPLETED, Method.TOTP), "app", "create", "user"),
        (logged(AuditEventType.DEVICE_DELETED, Method.TOTP), "app", "delete", "user"),
        (
            logged(AuditEventType.ENROLLMENT_COMPLETED, Method.PASSKEY, transports="internal"),
            "fido2-platform",
            "create",
            "user",
        ),
        (
            logged(AuditEventType.DEVICE_DELETED, Method.PASSKEY, transports="usb,nfc"),
            "fido2-roaming",
            "delete",
            "user",
        ),
        (
            logged(AuditEventType.DEVICE_DELETED, Method.PASSKEY, transports="hybrid,internal"),
            "fido2-roaming",
            "delete",
            "user",
        ),
        (  # transports unknown: roaming, the conservative reading
            logged(AuditEventType.ENROLLMENT_COMPLETED, Method.PASSKEY, transports=""),
            "fido2-roaming",
            "create",
            "user",
        ),
        (
            logged(AuditEventType.RECOVERY_CODES_GENERATED, regenerated="false"),
            "recovery-code",
            "create",
            "user",
        ),
        (
            logged(AuditEventType.RECOVERY_CODES_GENERATED, regenerated="true"),
            "recovery-code",
            "update",
            "user",
        ),
        (
            logged(AuditEventType.USER_RESET, devices_removed="2", reason=""),
            "mfa-all",
            "revoke",
            "admin",
        ),
    ],
    ids=[
        "totp-added",
        "totp-deleted",
        "platform-passkey-added",
        "roaming-passkey-deleted",
        "hybrid-passkey-deleted",
        "unknown-passkey-added",
        "first-codes",
        "regenerated-codes",
        "admin-reset",
    ],
)
def test_a_credential_change_maps_to_caep(
    event: LoggedEvent, credential_type: str, change_type: str, initiating_entity: str
) -> None:
    change = change_of(event)
    assert (
        change["credential_type"],
        change["change_type"],
        change["initiating_entity"],
    ) == (credential_type, change_type, initiating_entity)
    assert change["event_timestamp"] == int(AT.timestamp())
    assert "reason_admin" not in change  # an empty reason says nothing


NOT_CHANGES = sorted(
    set(AuditEventType)
    - {
        AuditEventType.ENROLLMENT_COMPLETED,
        AuditEventType.DEVICE_DELETED,
        AuditEventType.RECOVERY_CODES_GENERATED,
        AuditEventType.USER_RESET,
    },
    key=lambda t: t.value,
)


@pytest.mark.parametrize("event_type", NOT_CHANGES, ids=lambda t: t.value)
def test_other_events_are_no_credential_change(event_type: AuditEventType) -> None:
    event = logged(event_type, Method.TOTP)
    assert events.caep_set_claims(event, issuer="mfa-service", audience="https://rx") is None


def test_a_reset_that_removed_nothing_is_no_credential_change() -> None:
    event = logged(AuditEventType.USER_RESET, devices_removed="0", reason="T-1")
    assert events.caep_set_claims(event, issuer="mfa-service", audience="https://rx") is None


def test_the_set_claims_name_the_event_the_user_and_the_device() -> None:
    event = logged(
        AuditEventType.ENROLLMENT_COMPLETED,
        Method.PASSKEY,
        alias="YubiKey",
        aaguid=AAGUID,
        transports="usb",
    )
    claims = events.caep_set_claims(event, issuer="mfa-service", audience="https://rx")
    subject = {
        "format": "complex",
        "user": {"format": "iss_sub", "iss": "mfa-service", "sub": "u-1"},
        "tenant": {"format": "opaque", "id": "env-1"},
    }
    assert claims == {
        "iss": "mfa-service",
        "iat": int(AT.timestamp()),
        "jti": EVENT_ID,
        "aud": "https://rx",
        "txn": "req-1",
        "sub_id": subject,
        "events": {
            events.CREDENTIAL_CHANGE: {
                "subject": subject,
                "credential_type": "fido2-roaming",
                "change_type": "create",
                "initiating_entity": "user",
                "friendly_name": "YubiKey",
                "fido2_aaguid": AAGUID,
                "event_timestamp": int(AT.timestamp()),
            }
        },
    }
    later = datetime(2026, 12, 8, tzinfo=UTC)
    again = events.caep_set_claims(
        event, issuer="mfa-service", audience="https://rx", issued_at=later
    )
    assert again is not None and again["iat"] == int(later.timestamp())
    # "none" attestation: no authenticator model to name.
    anonymous = logged(
        AuditEventType.ENROLLMENT_COMPLETED,
        Method.PASSKEY,
        aaguid="00000000-0000-0000-0000-000000000000",
    )
    assert "fido2_aaguid" not in change_of(anonymous)


def test_an_admin_reset_gives_the_admins_reason() -> None:
    event = logged(AuditEventType.USER_RESET, devices_removed="1", reason="ticket 7")
    assert change_of(event)["reason_admin"] == {"und": "ticket 7"}


@pytest.mark.parametrize("algorithm", tokens.ALGORITHMS)
def test_a_set_is_signed_typed_and_never_an_action_token(algorithm: str) -> None:
    key = tokens.generate_key(algorithm, now=AT)
    claims = events.caep_set_claims(
        logged(AuditEventType.DEVICE_DELETED, Method.TOTP), issuer="mfa-service", audience="rx"
    )
    assert claims is not None
    token = tokens.encode_security_event(claims, key)
    assert jwt.get_unverified_header(token) == {
        "alg": algorithm,
        "kid": key.kid,
        "typ": "secevent+jwt",
    }
    jwk = jwt.PyJWK.from_dict(key.public_jwk())
    assert jwt.decode(token, jwk.key, algorithms=[algorithm], audience="rx") == claims
    # Same keys as action tokens: the explicit typ keeps a SET from passing for one.
    assert tokens.peek(token, algorithms=tokens.ALGORITHMS) is None
    retired = tokens.SigningKey(key.kid, algorithm, None, key.public_key, created_at=AT)
    with pytest.raises(ValueError, match="cannot sign"):
        tokens.encode_security_event(claims, retired)
