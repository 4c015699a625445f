"""Writing audit events from use cases."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, Concatenate, ParamSpec
from uuid import UUID

from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.devices import Device, Enrollment
from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store import audit as audit_store
from mfa_service.store.db import Connection

_P = ParamSpec("_P")


def event(
    event_type: AuditEventType,
    *,
    env: EnvironmentId,
    user: UserId,
    now: datetime,
    context: CallContext,
    method: Method | None = None,
    device_id: UUID | None = None,
    **details: str,
) -> AuditEvent:
    """An event to write later, with other writes of the same transaction."""
    return AuditEvent(
        type=event_type,
        environment_id=env,
        user_id=user,
        occurred_at=now,
        context=context,
        method=method,
        device_id=str(device_id) if device_id else "",
        details=details,
    )


def _written(
    build: Callable[_P, AuditEvent],
) -> Callable[Concatenate[Connection, _P], Coroutine[Any, Any, None]]:
    """``build`` with a connection first: the event it builds, written at once."""

    async def write_built(conn: Connection, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        await audit_store.append(conn, build(*args, **kwargs))

    return write_built


# An event written at once: ``record(conn, ...)`` takes ``event``'s arguments after the
# connection (and is type-checked against them).
record = _written(event)


def device_event(
    event_type: AuditEventType,
    device: Device | Enrollment,
    *,
    now: datetime,
    context: CallContext,
    **details: str,
) -> AuditEvent:
    """An event about one device (or the enrollment that becomes it), naming its owner,
    method and id; a device also by what a notification names it by (``device_facts``)."""
    if isinstance(device, Device):
        details = device_facts(device) | details
    return event(
        event_type,
        env=device.environment_id,
        user=device.user_id,
        now=now,
        context=context,
        method=device.method,
        device_id=device.id,
        **details,
    )


record_device_event = _written(device_event)


def device_facts(device: Device) -> dict[str, str]:
    """What a notification of a factor added or removed names it by (never a secret): its
    alias, and for a passkey its authenticator model (AAGUID) and transports, which tell
    a platform passkey from a roaming one (domain.events)."""
    facts = {"alias": device.alias}
    if device.passkey is not None:
        facts["aaguid"] = device.passkey.aaguid
        facts["transports"] = ",".join(device.passkey.transports)
    return facts


async def write(conn: Connection, events: Sequence[AuditEvent]) -> None:
    """Events built with ``event``, in one statement."""
    await audit_store.append_many(conn, events)
