"""The append-only audit log."""

from __future__ import annotations

import uuid

from mfa_service.domain.audit import AuditEvent
from mfa_service.store.db import Connection


async def append(conn: Connection, event: AuditEvent) -> None:
    await conn.execute(
        """
        INSERT INTO audit_events (event_id, environment_id, user_id, type, occurred_at,
                                  method, device_id, caller, request_id, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        uuid.uuid4(),
        event.environment_id,
        event.user_id,
        event.type.name,
        event.occurred_at,
        event.method.name if event.method else None,
        event.device_id,
        event.context.caller,
        event.context.request_id,
        dict(event.details),
    )
