"""Verification challenges: single use, short lived."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from mfa_service.domain.devices import Challenge
from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection


async def insert(conn: Connection, challenge: Challenge) -> None:
    await conn.execute(
        """
        INSERT INTO challenges (id, environment_id, user_id, method, device_id,
                                created_at, expires_at, webauthn_challenge)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        challenge.id,
        challenge.environment_id,
        challenge.user_id,
        challenge.method.name,
        challenge.device_id,
        challenge.created_at,
        challenge.expires_at,
        challenge.webauthn_challenge,
    )


async def consume(
    conn: Connection, challenge_id: UUID, env: EnvironmentId, user: UserId, *, now: datetime
) -> Challenge | None:
    """Take the challenge out: one statement, so it is used at most once.

    Another user's, an expired or an already used challenge yields None.
    """
    row = await conn.fetchrow(
        """
        DELETE FROM challenges
        WHERE id = $1 AND environment_id = $2 AND user_id = $3 AND expires_at > $4
        RETURNING id, method, device_id, created_at, expires_at, webauthn_challenge
        """,
        challenge_id,
        env,
        user,
        now,
    )
    if row is None:
        return None
    return Challenge(
        id=row["id"],
        environment_id=env,
        user_id=user,
        method=Method[row["method"]],
        device_id=row["device_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        webauthn_challenge=row["webauthn_challenge"],
    )
