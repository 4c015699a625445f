"""Writing audit events from use cases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store import audit as audit_store
from mfa_service.store.db import Connection


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


async def record(
    conn: Connection,
    event_type: AuditEventType,
    *,
    env: EnvironmentId,
    user: UserId,
    now: datetime,
    context: CallContext,
    method: Method | None = None,
    device_id: UUID | None = None,
    **details: str,
) -> None:
    await audit_store.append(
        conn,
        event(
            event_type,
            env=env,
            user=user,
            now=now,
            context=context,
            method=method,
            device_id=device_id,
            **details,
        ),
    )


async def write(conn: Connection, events: Sequence[AuditEvent]) -> None:
    """Events built with ``event``, in one statement."""
    await audit_store.append_many(conn, events)
