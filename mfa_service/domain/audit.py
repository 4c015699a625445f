"""Security events and the call context they record."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mfa_service.domain.model import Method


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling and which request this is, as the API layer saw it; and where the
    user's request came from, as the calling service says (DESIGN §3f, NIST SP 800-63B-4
    §4.1: the source of lifecycle events is recorded). None: not said."""

    caller: str
    request_id: str
    client_ip: str | None = None
    client_user_agent: str | None = None


# The longest user agent recorded: browsers send 100 to 300 characters; a longer one is
# refused, not cut (what is recorded is exactly what the caller said, or nothing).
MAX_CLIENT_USER_AGENT = 512


def client_ip(text: str) -> str:
    """An IPv4 or IPv6 address in its normalised text (``2001:DB8::0:1`` ->
    ``2001:db8::1``; an IPv4-mapped IPv6 address as the IPv4 one). ValueError otherwise,
    and for a scoped address (``fe80::1%eth0``: an interface of the caller's host, not
    a client's address). The errors never repeat ``text``."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ValueError("a scoped address (%zone) is not a client address")
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def client_user_agent(text: str) -> str:
    """A user agent as recorded: printable ASCII (what a gRPC metadata value may hold),
    at most MAX_CLIENT_USER_AGENT characters. ValueError otherwise."""
    if len(text) > MAX_CLIENT_USER_AGENT:
        raise ValueError(f"at most {MAX_CLIENT_USER_AGENT} characters")
    if not text.isascii() or not text.isprintable():
        raise ValueError("printable ASCII only")
    return text


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
