"""What a security event says when it leaves the service (DESIGN §3f): the JSON data of a
webhook delivery, whether the user must be told, and the CAEP form of a credential change.

Pure: the dispatcher (services) and the stream (api) both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mfa_service.domain.audit import AuditEvent, AuditEventType, LoggedEvent, audit_time
from mfa_service.domain.model import Method

# NIST SP 800-63B-4 §4.1.2.1 (an authenticator bound), §4.2 (recovery used), §4.6 (account
# events): the user is told of these. The list, event by event: a factor added
# (ENROLLMENT_COMPLETED), removed (DEVICE_DELETED), a recovery code used, the codes
# regenerated (RECOVERY_CODES_GENERATED, but not the first set: see ``notify_user``), an
# admin reset (USER_RESET), a lockout (LOCKED_OUT).
NOTIFY_USER: frozenset[AuditEventType] = frozenset(
    {
        AuditEventType.ENROLLMENT_COMPLETED,
        AuditEventType.DEVICE_DELETED,
        AuditEventType.RECOVERY_CODE_USED,
        AuditEventType.RECOVERY_CODES_GENERATED,
        AuditEventType.USER_RESET,
        AuditEventType.LOCKED_OUT,
    }
)


def notify_user(event: AuditEvent) -> bool:
    """The user must be told of ``event``.

    The first set of recovery codes comes with the first factor, in the same call: the
    user is told of that factor (ENROLLMENT_COMPLETED), not a second time of its codes.
    A set whose event does not say (written before the detail existed) is told of.
    """
    if event.type is AuditEventType.RECOVERY_CODES_GENERATED:
        return event.details.get("regenerated") != "false"
    return event.type in NOTIFY_USER


def event_type_name(event_type: AuditEventType) -> str:
    """The event's ``type`` in a delivery: ``mfa.<type>``, e.g. ``mfa.enrollment_completed``."""
    return f"mfa.{event_type.value}"


def webhook_data(logged: LoggedEvent) -> dict[str, Any]:
    """The ``data`` of a Standard Webhooks delivery of ``logged`` (never a secret): with
    ``notify_user``, all a notification to the user needs: which device (id, method,
    alias when the event knows it), when, and from which client (None: not said)."""
    event = logged.event
    return {
        "event_id": logged.event_id,
        "environment_id": event.environment_id,
        "user_id": event.user_id,
        "occurred_at": audit_time(event.occurred_at),
        "method": event.method.name if event.method else None,
        "device_id": event.device_id or None,
        "device_alias": event.details.get("alias") or None,
        "caller": event.context.caller,
        "request_id": event.context.request_id,
        "client_ip": event.context.client_ip,
        "client_user_agent": event.context.client_user_agent,
        "details": dict(event.details),
        "notify_user": notify_user(event),
    }


# OpenID CAEP 1.0 §3.3 Credential Change (final, 2025-08-29), in a Security Event Token
# (RFC 8417) as the Shared Signals Framework 1.0 profiles it.
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"

# CAEP's credential_type values. TOTP: "app" (CAEP names "OTP, app-based" second factors;
# it has no TOTP value). Recovery codes and a whole reset have no CAEP value: the spec
# allows "any other credential type supported mutually by the Transmitter and the
# Receiver", so they get values of ours, which receivers must be told of.
APP = "app"
FIDO2_PLATFORM = "fido2-platform"
FIDO2_ROAMING = "fido2-roaming"
RECOVERY_CODE = "recovery-code"  # ours: NIST SP 800-63B look-up secrets
ALL_FACTORS = "mfa-all"  # ours: every factor and recovery code of the user, at once

_NO_AAGUID = "00000000-0000-0000-0000-000000000000"  # "none" attestation: no model

# WebAuthn transports of an authenticator apart from the client's device (roaming).
_ROAMING_TRANSPORTS = frozenset({"usb", "nfc", "ble", "smart-card", "hybrid"})


def _passkey_type(details: Mapping[str, str]) -> str:
    """``fido2-platform`` for a passkey whose transports (as its registration reported
    them) are only ``internal``; ``fido2-roaming`` for any other, including one whose
    transports are unknown (the conservative reading: reachable from more than the
    user's device)."""
    transports = {t for t in details.get("transports", "").split(",") if t}
    if transports and "internal" in transports and not transports & _ROAMING_TRANSPORTS:
        return FIDO2_PLATFORM
    return FIDO2_ROAMING


def _credential_change(event: AuditEvent) -> dict[str, Any] | None:
    """The event-specific claims (credential_type, change_type, initiating_entity and
    what else fits), or None: ``event`` is not a credential change."""
    match event.type:
        case AuditEventType.ENROLLMENT_COMPLETED | AuditEventType.DEVICE_DELETED:
            if event.method is Method.TOTP:
                kind = APP
            elif event.method is Method.PASSKEY:
                kind = _passkey_type(event.details)
            else:
                return None
            change: dict[str, Any] = {
                "credential_type": kind,
                "change_type": (
                    "create" if event.type is AuditEventType.ENROLLMENT_COMPLETED else "delete"
                ),
                "initiating_entity": "user",
            }
            if alias := event.details.get("alias"):
                change["friendly_name"] = alias
            if (aaguid := event.details.get("aaguid")) and aaguid != _NO_AAGUID:
                change["fido2_aaguid"] = aaguid
            return change
        case AuditEventType.RECOVERY_CODES_GENERATED:
            # A new set replaces the old one: the first is created, a later one updates.
            first = event.details.get("regenerated") == "false"
            return {
                "credential_type": RECOVERY_CODE,
                "change_type": "create" if first else "update",
                "initiating_entity": "user",
            }
        case AuditEventType.USER_RESET:
            if event.details.get("devices_removed") == "0":
                return None  # nothing was revoked: recovery codes come with a device
            change = {
                "credential_type": ALL_FACTORS,
                "change_type": "revoke",
                "initiating_entity": "admin",
            }
            if reason := event.details.get("reason"):
                # The administrator's words, in a language we do not know: BCP 47 "und".
                change["reason_admin"] = {"und": reason}
            return change
    return None


# The event types a CAEP credential-change SET can be made of (a CAEP webhook takes only
# these; ``caep_set_claims`` may still find one of them to be no change, e.g. a reset
# that removed nothing).
CAEP_EVENT_TYPES: frozenset[AuditEventType] = frozenset(
    {
        AuditEventType.ENROLLMENT_COMPLETED,
        AuditEventType.DEVICE_DELETED,
        AuditEventType.RECOVERY_CODES_GENERATED,
        AuditEventType.USER_RESET,
    }
)


def caep_subject(issuer: str, environment_id: str, user_id: str) -> dict[str, Any]:
    """The user as SSF 1.0 §3 subjects name it: a complex subject, the user as our
    tokens name them (``iss`` and ``sub``, RFC 9493 ``iss_sub``) within the environment
    (the tenant, ``opaque``): a user id is unique only within its environment."""
    return {
        "format": "complex",
        "user": {"format": "iss_sub", "iss": issuer, "sub": user_id},
        "tenant": {"format": "opaque", "id": environment_id},
    }


def caep_set_claims(
    logged: LoggedEvent, *, issuer: str, audience: str, issued_at: datetime | None = None
) -> dict[str, Any] | None:
    """The claims of a CAEP credential-change SET for ``logged``, or None when it is not
    a credential change (a verification, a token, a settings change...).

    ``jti`` is the event id, so a receiver drops a SET delivered twice; ``iat`` is
    ``issued_at``, by default the event's time (the same SET on every delivery); ``txn``
    the request id (RFC 8417 §2.2: SETs of one request share it). The subject is both
    the top-level ``sub_id`` (SSF 1.0 §3.1: MUST) and the event's ``subject`` (which
    CAEP receivers of earlier drafts read; SSF allows it for existing CAEP events).
    """
    event = logged.event
    change = _credential_change(event)
    if change is None:
        return None
    subject = caep_subject(issuer, event.environment_id, event.user_id)
    at = int(event.occurred_at.timestamp())
    return {
        "iss": issuer,
        "iat": int(issued_at.timestamp()) if issued_at is not None else at,
        "jti": logged.event_id,
        "aud": audience,
        "txn": event.context.request_id,
        "sub_id": subject,
        "events": {
            CREDENTIAL_CHANGE: {"subject": subject, **change, "event_timestamp": at},
        },
    }
