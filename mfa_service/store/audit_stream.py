"""The audit log in commit order: what WatchAuditEvents streams and webhooks deliver.

An event's place is ``(xid, id)``: the id of the transaction that wrote it, then its row
id. ``after`` returns only events of transactions older than every transaction still
running (``pg_snapshot_xmin``): all of those have ended, so no event can later appear
before the last one returned. A cursor therefore misses nothing and repeats nothing,
whatever the order transactions commit in; a long transaction only delays what follows
it. Migration 0011.

Each INSERT into audit_events notifies ``CHANNEL`` with the environment's id when its
transaction commits (migration 0012): what wakes a waiting stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mfa_service.domain.audit import LoggedEvent
from mfa_service.store.audit_log import LOGGED_COLUMNS, logged_event
from mfa_service.store.db import Connection
from mfa_service.store.sql import named


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A place in commit order: after every event of an older transaction, and after
    the events of transaction ``xid`` up to row ``id``."""

    xid: int
    id: int


START = Cursor(0, 0)  # before every event
CHANNEL = "mfa_audit_events"  # migration 0012's trigger notifies it

_AFTER = named(f"""
SELECT {LOGGED_COLUMNS}, xid::text AS xid_text
FROM audit_events
WHERE environment_id = :env
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
  AND (xid, id) > (:xid::text::xid8, :id::bigint)
  AND (:types::text[] IS NULL OR type = ANY(:types::text[]))
ORDER BY xid, id
LIMIT :limit
""")  # noqa: S608 (a constant column list)


async def after(
    conn: Connection,
    env: str,
    cursor: Cursor,
    *,
    limit: int,
    types: Sequence[str] | None = None,
) -> list[tuple[Cursor, LoggedEvent]]:
    """Up to ``limit`` events of ``env`` after ``cursor`` in commit order (of ``types``
    only, when given), each with its own cursor; only events that can no longer be
    preceded by one still to commit."""
    values = {
        "env": env,
        "xid": str(cursor.xid),
        "id": cursor.id,
        "types": list(types) if types is not None else None,
        "limit": limit,
    }
    rows = await conn.fetch(_AFTER.text, *_AFTER.args(values))
    return [(Cursor(int(row["xid_text"]), row["id"]), logged_event(row)) for row in rows]


async def horizon(conn: Connection) -> Cursor:
    """A cursor before every event still to be returned by ``after`` and after every
    one already returnable: where a new subscriber starts."""
    xmin = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
    return Cursor(int(xmin), 0)
