"""Reading the audit log: newest first, by keyset pagination."""

from __future__ import annotations

from typing import Any

from mfa_service.store.db import Connection


async def page(
    conn: Connection,
    env: str,
    *,
    user_id: str,
    types: list[str] | None,
    before_id: int | None,
    limit: int,
) -> list[Any]:
    """Up to ``limit`` events older than ``before_id`` (the last one of the previous page)."""
    return list(
        await conn.fetch(
            """
            SELECT id, event_id, environment_id, user_id, type, occurred_at, method,
                   device_id, caller, request_id, details
            FROM audit_events
            WHERE environment_id = $1
              AND ($2 = '' OR user_id = $2)
              AND ($3::text[] IS NULL OR type = ANY($3::text[]))
              AND ($4::bigint IS NULL OR id < $4)
            ORDER BY id DESC
            LIMIT $5
            """,
            env,
            user_id,
            types,
            before_id,
            limit,
        )
    )
