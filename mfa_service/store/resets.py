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
    everything that hangs off it, and with it the attempt counter. Every unexpired
    token is revoked, a consumed one too (so that a decision remembered under an
    idempotency key is not replayed as ALLOW after the reset), but only those that could
    still have been used are counted: not a single-use token already consumed.
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
              AND expires_at > $3
            RETURNING single_use AND consumed_at IS NOT NULL AS spent
        )
        SELECT count(*) FILTER (WHERE NOT spent) FROM revoked
        """,
        env,
        user,
        now,
    )
    return int(devices), int(revoked)
