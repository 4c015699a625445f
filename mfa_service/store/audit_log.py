"""Reading the audit log: newest first, by keyset pagination."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext, LoggedEvent
from mfa_service.domain.model import Method
from mfa_service.store.db import Connection


async def page(
    conn: Connection,
    env: str,
    *,
    user_id: str,
    types: list[str] | None,
    before_id: int | None,
    limit: int,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[LoggedEvent]:
    """Up to ``limit`` events older than ``before_id`` (the last one of the previous page),
    newest first; with a time range, those that occurred at ``since`` or later and before
    ``until`` (either may be open)."""
    if since is None and until is None:
        rows = await conn.fetch(_PAGE, env, user_id, types, before_id, limit)
    else:
        rows = await conn.fetch(
            _PAGE_IN_RANGE,
            env,
            user_id,
            types,
            before_id,
            limit,
            since or _EARLIEST,
            until or _LATEST,
        )
    return [logged_event(row) for row in rows]


# The columns ``logged_event`` reads.
LOGGED_COLUMNS = """id, event_id, environment_id, user_id, type, occurred_at, method, device_id,
    caller, request_id, client_ip, client_user_agent, details::text AS details"""


def _page_sql(range_condition: str) -> str:
    return f"""
        SELECT {LOGGED_COLUMNS}
        FROM audit_events
        WHERE environment_id = $1
          AND ($2 = '' OR user_id = $2)
          AND ($3::text[] IS NULL OR type = ANY($3::text[]))
          AND ($4::bigint IS NULL OR id < $4)
          {range_condition}
        ORDER BY id DESC
        LIMIT $5
    """  # noqa: S608 (constant text)


_PAGE = _page_sql("")
# A statement of its own, its range on plain parameters: a plan prepared once can use
# the BRIN index on occurred_at (migration 0013) whatever the range; the page without one
# keeps walking the environment's index newest first.
_PAGE_IN_RANGE = _page_sql("AND occurred_at >= $6 AND occurred_at < $7")
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def logged_event(row: Any) -> LoggedEvent:
    """An audit row (``LOGGED_COLUMNS``) as the domain holds it."""
    return LoggedEvent(
        row_id=row["id"],
        event_id=str(row["event_id"]),
        event=AuditEvent(
            type=AuditEventType[row["type"]],
            environment_id=row["environment_id"],
            occurred_at=row["occurred_at"],
            context=CallContext(
                caller=row["caller"],
                request_id=row["request_id"],
                client_ip=row["client_ip"],
                client_user_agent=row["client_user_agent"],
            ),
            user_id=row["user_id"],
            method=Method[row["method"]] if row["method"] else None,
            device_id=row["device_id"],
            details={str(k): str(v) for k, v in json.loads(row["details"] or "{}").items()},
        ),
    )
