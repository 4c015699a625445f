"""Deleting rows whose time is over, a bounded batch at a time."""

from __future__ import annotations

from datetime import datetime

from mfa_service.store.db import Connection

# table -> the condition that makes a row dead at $1 (now minus that table's margin).
_DEAD: dict[str, str] = {
    "challenges": "expires_at < $1",
    "enrollments": "expires_at < $1",
    "action_tokens": "expires_at < $1",
    "token_validations": "created_at < $1",
    "verified_sessions": "verified_at < $1",
}
TABLES = tuple(_DEAD)


async def delete_dead(conn: Connection, table: str, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` dead rows of ``table``; returns how many went.

    Small batches keep each transaction short, so purging never holds locks that
    verification or token consumption wait on.
    """
    condition = _DEAD[table]
    deleted: int = await conn.fetchval(
        f"""
        WITH dead AS (
            DELETE FROM {table}
            WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {condition} LIMIT $2))
            RETURNING 1
        )
        SELECT count(*) FROM dead
        """,  # noqa: S608 (table and condition come from the constant map above)
        before,
        limit,
    )
    return deleted
