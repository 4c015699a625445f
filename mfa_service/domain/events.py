"""What a security event says when it leaves the service (DESIGN §3f): the JSON data of a
webhook delivery, whether the user must be told, and the CAEP form of a credential change.

Pure: the dispatcher (services) and the stream (api) both use it.
"""

from __future__ import annotations

from typing import Any

from mfa_service.domain.audit import AuditEventType, LoggedEvent, audit_time

# NIST SP 800-63B-4 §4.1.2.1 (an authenticator bound), §4.2 (recovery used), §4.6 (account
# events): the user is told of these.
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


def notify_user(event_type: AuditEventType) -> bool:
    """The user must be told of an event of this type."""
    return event_type in NOTIFY_USER


def event_type_name(event_type: AuditEventType) -> str:
    """The event's ``type`` in a delivery: ``mfa.<type>``, e.g. ``mfa.enrollment_completed``."""
    return f"mfa.{event_type.value}"


def webhook_data(logged: LoggedEvent) -> dict[str, Any]:
    """The ``data`` of a Standard Webhooks delivery of ``logged`` (never a secret)."""
    event = logged.event
    return {
        "event_id": logged.event_id,
        "environment_id": event.environment_id,
        "user_id": event.user_id,
        "occurred_at": audit_time(event.occurred_at),
        "method": event.method.name if event.method else None,
        "device_id": event.device_id or None,
        "caller": event.context.caller,
        "request_id": event.context.request_id,
        "details": dict(event.details),
        "notify_user": notify_user(event.type),
    }
