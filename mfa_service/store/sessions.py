"""Login sessions that passed MFA."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection
from mfa_service.store.verifications import SuccessWrite


def _mark_if_sql(first: int, condition: str) -> str:
    """Mark the session verified if ``condition`` holds, parameters from ``first``."""
    n = [f"${first + i}" for i in range(6)]
    return f"""
        INSERT INTO verified_sessions (environment_id, user_id, session_id, verified_at,
                                       method, device_id)
        SELECT {n[0]}::text, {n[1]}::text, {n[2]}::text, {n[3]}::timestamptz,
               {n[4]}::text, {n[5]}::uuid
        WHERE {condition}
        ON CONFLICT (environment_id, user_id, session_id) DO UPDATE
            SET verified_at = EXCLUDED.verified_at, method = EXCLUDED.method,
                device_id = EXCLUDED.device_id
    """  # noqa: S608 (parameter numbers and a constant condition)


def mark_verified_on_success(
    env: EnvironmentId,
    user: UserId,
    session_id: str,
    *,
    method: Method,
    device_id: UUID | None,
    now: datetime,
) -> SuccessWrite:
    """Mark the session verified in the statement that decides its verification."""
    return SuccessWrite(_mark_if_sql, (env, user, session_id, now, method.name, device_id))


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
