"""Removing a user's MFA state as a whole (admin reset)."""

from __future__ import annotations

from datetime import datetime

from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.store.db import Connection


async def reset_user(
    conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime
) -> tuple[int, int]:
    """Delete devices, enrollments, verified sessions and challenges, revoke live tokens.

    Returns (devices removed, tokens revoked). Deleting the user's row cascades to
    everything that hangs off it, and with it the attempt counter. Only tokens that
    could still have been used are revoked and counted: not one expired, already
    revoked, or single-use and already consumed.
    """
    devices = await conn.fetchval(
        "SELECT count(*) FROM devices WHERE environment_id = $1 AND user_id = $2", env, user
    )
    await conn.execute(
        "DELETE FROM mfa_users WHERE environment_id = $1 AND user_id = $2", env, user
    )
    await conn.execute(
        "DELETE FROM challenges WHERE environment_id = $1 AND user_id = $2", env, user
    )
    revoked = await conn.fetchval(
        """
        WITH revoked AS (
            UPDATE action_tokens SET revoked_at = $3
            WHERE environment_id = $1 AND user_id = $2 AND revoked_at IS NULL
              AND expires_at > $3 AND NOT (single_use AND consumed_at IS NOT NULL)
            RETURNING 1
        )
        SELECT count(*) FROM revoked
        """,
        env,
        user,
        now,
    )
    return int(devices), int(revoked)
