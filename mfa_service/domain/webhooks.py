"""Webhooks (DESIGN §3f): where events may go, how a delivery is signed (Standard
Webhooks), and what a failed delivery leads to (a retry after a jittered backoff, or,
past the horizon, giving the event up).

Pure: the dispatcher (services.webhooks) reads the state, POSTs and writes what this
module decided.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit
from uuid import UUID

from mfa_service.domain.audit import AuditEventType, LoggedEvent, audit_time
from mfa_service.domain.events import event_type_name, webhook_data
from mfa_service.domain.model import EnvironmentId
from mfa_service.errors import FieldViolation, InvalidArgument

MAX_URL = 2048
MAX_WEBHOOKS_PER_ENVIRONMENT = 10
SECRET_BYTES = 32  # Standard Webhooks: 24 to 64 bytes
SECRET_PREFIX = "whsec_"


class WebhookFormat(enum.Enum):
    """Proto ``mfa.v1.WebhookFormat`` without its prefix."""

    STANDARD_WEBHOOKS = "standard_webhooks"
    CAEP = "caep"


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """How far a webhook's deliveries are: ``attempts`` of the oldest event not yet
    delivered, and when the next is due."""

    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    last_success_at: datetime | None = None
    dropped_events: int = 0


@dataclass(frozen=True, slots=True)
class Webhook:
    id: UUID
    environment_id: EnvironmentId
    url: str
    event_types: tuple[AuditEventType, ...]
    format: WebhookFormat
    created_at: datetime
    state: DeliveryState


# --- what may be created ------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """An address of 127.0.0.0/8 or ::1, or the name localhost (RFC 6761 §6.3). Parsed as
    an address, never matched as text: ``127.evil.example.com`` is a name like any other."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_loopback_http: bool, field: str = "url") -> str:
    """The URL a webhook POSTs to: https (http only to a loopback address, and only when
    ``allow_loopback_http``: development mode), a host, no credentials (they would be
    sent to whoever answers and shown by ListWebhooks), no fragment, at most MAX_URL
    printable ASCII characters (an internationalised name in its xn-- form)."""

    def refuse(description: str) -> InvalidArgument:
        return InvalidArgument.field(field, description)

    if not url:
        raise refuse("required")
    if len(url) > MAX_URL:
        raise refuse(f"at most {MAX_URL} characters")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise refuse("printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port  # a port out of range raises here
    except ValueError:
        raise refuse("not a valid URL") from None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if "@" in parts.netloc:
        raise refuse("must not hold credentials (user or password)")
    if "#" in url:
        raise refuse("must not have a fragment")
    if not host or port == 0:
        raise refuse("needs a host (and a port from 1 to 65535, if given)")
    loopback_http = scheme == "http" and allow_loopback_http and is_loopback_host(host)
    if scheme != "https" and not loopback_http:
        raise refuse("must be https (http only to a loopback address, in development mode)")
    return url


def check_event_types(
    types: Sequence[AuditEventType], field: str = "event_types"
) -> tuple[AuditEventType, ...]:
    """At least one, each once (the second of a pair is the one named)."""
    if not types:
        raise InvalidArgument.field(field, "at least one event type is required")
    violations = [
        FieldViolation(f"{field}[{i}]", f"{t.name} is listed twice")
        for i, t in enumerate(types)
        if t in types[:i]
    ]
    if violations:
        raise InvalidArgument(violations)
    return tuple(types)


def new_secret() -> bytes:
    """A signing secret from the OS CSPRNG."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_text(secret: bytes) -> str:
    """The secret as Standard Webhooks libraries take it: ``whsec_`` and base64."""
    return SECRET_PREFIX + base64.b64encode(secret).decode()


# --- a delivery ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST: the exact body and its headers. Its ``message_id`` is the event's id,
    the same on every retry, so a receiver drops what it has seen (Standard Webhooks)."""

    message_id: str
    body: bytes
    headers: Mapping[str, str]


def signature(*, secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed
    with the secret, of ``{id}.{timestamp}.{body}`` (the body's exact bytes)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_webhooks_delivery(logged: LoggedEvent, *, secret: bytes, now: datetime) -> Delivery:
    """``logged`` as a Standard Webhooks message, signed at ``now`` (the receiver refuses
    a timestamp far from its clock, so a retry is signed anew, under the same id)."""
    payload = {
        "type": event_type_name(logged.event.type),
        "timestamp": audit_time(logged.event.occurred_at),
        "data": webhook_data(logged),
    }
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(now.timestamp())
    return Delivery(
        message_id=logged.event_id,
        body=body,
        headers={
            "content-type": "application/json",
            "webhook-id": logged.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(
                secret=secret, message_id=logged.event_id, timestamp=timestamp, body=body
            ),
        },
    )


def security_event_token_delivery(message_id: str, set_jwt: str) -> Delivery:
    """A signed Security Event Token pushed as RFC 8935 says: the JWT is the body; the
    receiver answers 202 Accepted (any 2xx counts) and checks the JWT's own signature."""
    return Delivery(
        message_id=message_id,
        body=set_jwt.encode(),
        headers={"content-type": "application/secevent+jwt", "accept": "application/json"},
    )


def delivered(status: int) -> bool:
    """A 2xx answer, nothing else: a redirect is never followed, so a 3xx is a failure."""
    return 200 <= status < 300


# --- after a failure ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter from ``base`` doubling to ``cap``; an event
    still not delivered ``horizon`` after it happened is given up on its next failure."""

    base: timedelta = timedelta(seconds=1)
    cap: timedelta = timedelta(minutes=10)
    horizon: timedelta = timedelta(days=3)

    def delay(self, attempts: int, rand: float) -> timedelta:
        """How long to wait after the ``attempts``-th failure in a row: uniform in
        [0, min(cap, base * 2^(attempts - 1))) for ``rand`` uniform in [0, 1) ("full
        jitter": replicas and webhooks that failed together do not retry together)."""
        doublings = min(max(attempts - 1, 0), 32)  # past 2^32 s the cap decides anyway
        ceiling: timedelta = min(self.cap, self.base * (1 << doublings))
        return ceiling * rand


@dataclass(frozen=True, slots=True)
class Retry:
    """Keep the event at the head of the queue; try again at ``at``."""

    attempts: int
    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Drop the event (counted in ``dropped_events``) and go on with the next one."""


def after_failure(
    policy: RetryPolicy, *, attempts: int, occurred_at: datetime, now: datetime, rand: float
) -> Retry | GiveUp:
    """What a failed delivery of an event that happened at ``occurred_at`` leads to, after
    ``attempts`` earlier failures of it."""
    if now - occurred_at >= policy.horizon:
        return GiveUp()
    return Retry(attempts=attempts + 1, at=now + policy.delay(attempts + 1, rand))
