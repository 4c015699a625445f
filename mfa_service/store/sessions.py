"""Login sessions that passed MFA."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection


async def mark_verified(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    session_id: str,
    *,
    method: Method,
    device_id: UUID | None,
    now: datetime,
) -> None:
    await conn.execute(
        """
        INSERT INTO verified_sessions (environment_id, user_id, session_id, verified_at,
                                       method, device_id)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (environment_id, user_id, session_id) DO UPDATE
            SET verified_at = EXCLUDED.verified_at, method = EXCLUDED.method,
                device_id = EXCLUDED.device_id
        """,
        env,
        user,
        session_id,
        now,
        method.name,
        device_id,
    )


async def verified_at(
    conn: Connection, env: EnvironmentId, user: UserId, session_id: str
) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT verified_at FROM verified_sessions "
        "WHERE environment_id = $1 AND user_id = $2 AND session_id = $3",
        env,
        user,
        session_id,
    )
    return value
