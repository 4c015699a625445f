"""The append-only audit log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mfa_service.domain.audit import AuditEvent
from mfa_service.store.db import Connection
from mfa_service.store.sql import named

# Each column of an audit event, in the order every INSERT names it: the element type of
# its array in ``insert_many_sql`` and how an event gives its value.
_COLUMNS: dict[str, tuple[str, Callable[[AuditEvent], Any]]] = {
    "event_id": ("uuid", lambda e: uuid.uuid4()),
    "environment_id": ("text", lambda e: e.environment_id),
    "user_id": ("text", lambda e: e.user_id),
    "type": ("text", lambda e: e.type.name),
    "occurred_at": ("timestamptz", lambda e: e.occurred_at),
    "method": ("text", lambda e: e.method.name if e.method else None),
    "device_id": ("text", lambda e: e.device_id),
    "caller": ("text", lambda e: e.context.caller),
    "request_id": ("text", lambda e: e.context.request_id),
    "client_ip": ("text", lambda e: e.context.client_ip),  # NULL: not said
    "client_user_agent": ("text", lambda e: e.context.client_user_agent),
    "details": ("text", lambda e: json.dumps(dict(e.details))),  # JSON text, cast per row
}
COLUMNS: tuple[str, ...] = tuple(_COLUMNS)


def insert_sql(values: Mapping[str, str], source: str = "") -> str:
    """``INSERT INTO audit_events ... SELECT ...``: every one of ``COLUMNS`` gets the SQL
    expression ``values`` gives it (``NULL`` written out), ``source`` follows the
    SELECT list (FROM, WHERE, ...). A column missing or unknown is refused."""
    if set(values) != set(COLUMNS):
        raise ValueError(f"audit INSERT must give exactly {COLUMNS}, not {tuple(values)}")
    return f"""
        INSERT INTO audit_events ({", ".join(COLUMNS)})
        SELECT {", ".join(values[c] for c in COLUMNS)}
        {source}
    """


async def append(conn: Connection, event: AuditEvent) -> None:
    await append_many(conn, [event])


def insert_many_sql(
    *, where: str = "true", details: str = "e.details::jsonb", extra: str = ""
) -> str:
    """Several events in one INSERT, in order: each column's values are the array
    parameter ``:audit_<column>`` (``many_values``), the details JSON text cast per row.
    ``where`` and ``details`` may refer to the row as ``e`` (a conditional insert, see
    store.verifications); ``extra`` names one more text array, ``:audit_<extra>``."""
    arrays = [f":audit_{column}::{element}[]" for column, (element, _) in _COLUMNS.items()]
    if extra:
        arrays.append(f":audit_{extra}::text[]")
    names = [*COLUMNS, *([extra] if extra else []), "position"]
    values = {c: f"e.{c}" for c in COLUMNS} | {"details": details}
    return insert_sql(
        values,
        f"""FROM unnest({", ".join(arrays)})
            WITH ORDINALITY AS e({", ".join(names)})
        WHERE {where}
        ORDER BY position""",
    )


def many_values(events: Sequence[AuditEvent]) -> dict[str, list[Any]]:
    """The arrays of ``insert_many_sql`` by parameter name, one per column."""
    return {
        f"audit_{column}": [value(e) for e in events] for column, (_, value) in _COLUMNS.items()
    }


_APPEND_MANY = named(insert_many_sql())


async def append_many(conn: Connection, events: Sequence[AuditEvent]) -> None:
    """Write ``events`` in one statement, in order."""
    if events:
        await conn.execute(_APPEND_MANY.text, *_APPEND_MANY.args(many_values(events)))
