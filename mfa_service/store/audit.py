"""The append-only audit log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

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


# Several events in one INSERT (the details as JSON text, cast per row). ``$N`` numbering
# starts at ``first`` so that another statement can carry it (verifications.conclude).
# ``where`` and ``details`` may refer to the row as ``e`` (a conditional insert, see
# verifications.conclude); ``extra`` names more parallel arrays, numbered after the ten.
def insert_many_sql(
    first: int, *, where: str = "true", details: str = "e.details::jsonb", extra: str = ""
) -> str:
    n = [f"${first + i}" for i in range(11)]
    extra_arrays = f", {n[10]}::text[]" if extra else ""
    extra_names = f", {extra}" if extra else ""
    return f"""
        INSERT INTO audit_events (event_id, environment_id, user_id, type, occurred_at,
                                  method, device_id, caller, request_id, details)
        SELECT e.event_id, e.environment_id, e.user_id, e.type, e.occurred_at, e.method,
               e.device_id, e.caller, e.request_id, {details}
        FROM unnest({n[0]}::uuid[], {n[1]}::text[], {n[2]}::text[], {n[3]}::text[],
                    {n[4]}::timestamptz[], {n[5]}::text[], {n[6]}::text[], {n[7]}::text[],
                    {n[8]}::text[], {n[9]}::text[]{extra_arrays})
            WITH ORDINALITY AS e(event_id, environment_id, user_id, type, occurred_at,
                                 method, device_id, caller, request_id, details{extra_names},
                                 position)
        WHERE {where}
        ORDER BY position
    """  # noqa: S608 (parameter numbers and constant fragments only)


def many_args(events: Sequence[AuditEvent]) -> list[list[Any]]:
    """The ten arrays of ``insert_many_sql``, in order."""
    return [
        [uuid.uuid4() for _ in events],
        [e.environment_id for e in events],
        [e.user_id for e in events],
        [e.type.name for e in events],
        [e.occurred_at for e in events],
        [e.method.name if e.method else None for e in events],
        [e.device_id for e in events],
        [e.context.caller for e in events],
        [e.context.request_id for e in events],
        [json.dumps(dict(e.details)) for e in events],
    ]


async def append_many(conn: Connection, events: Sequence[AuditEvent]) -> None:
    """Write ``events`` in one statement, in order."""
    if events:
        await conn.execute(insert_many_sql(1), *many_args(events))
