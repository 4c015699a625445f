"""Security events and the call context they record."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mfa_service.domain.model import Method


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling and which request this is, as the API layer saw it."""

    caller: str
    request_id: str


class AuditEventType(enum.Enum):
    """Proto ``mfa.v1.AuditEventType`` without its prefix."""

    ENROLLMENT_STARTED = "enrollment_started"
    ENROLLMENT_COMPLETED = "enrollment_completed"
    DEVICE_UPDATED = "device_updated"
    DEVICE_DELETED = "device_deleted"
    VERIFICATION_SUCCEEDED = "verification_succeeded"
    VERIFICATION_FAILED = "verification_failed"
    CODE_REUSED = "code_reused"
    LOCKED_OUT = "locked_out"
    TOKEN_ISSUED = "token_issued"
    TOKEN_VALIDATED = "token_validated"
    RECOVERY_CODES_GENERATED = "recovery_codes_generated"
    RECOVERY_CODE_USED = "recovery_code_used"
    RECOVERY_CODES_ACKNOWLEDGED = "recovery_codes_acknowledged"
    SETTINGS_CHANGED = "settings_changed"
    USER_RESET = "user_reset"
    SIGN_COUNT_REGRESSION = "sign_count_regression"
    ENVIRONMENT_CREATED = "environment_created"
    WEBHOOK_CREATED = "webhook_created"
    WEBHOOK_DELETED = "webhook_deleted"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One security event. Never holds a secret, a code or a token."""

    type: AuditEventType
    environment_id: str
    occurred_at: datetime
    context: CallContext
    user_id: str = ""
    method: Method | None = None
    device_id: str = ""
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event as the audit log holds it: ``row_id`` orders the log (newer is larger),
    ``event_id`` names the event."""

    row_id: int
    event_id: str
    event: AuditEvent


def audit_time(at: datetime) -> str:
    """A time as events show it: ISO 8601 in UTC, to the microsecond."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
