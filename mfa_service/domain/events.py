"""What a security event says when it leaves the service (DESIGN §3f): the JSON data of a
webhook delivery and whether the user must be told.

Pure: the dispatcher (services) and the stream (api) both use it.
"""

from __future__ import annotations

from typing import Any

from mfa_service.domain.audit import AuditEvent, AuditEventType, LoggedEvent, audit_time

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
