"""Verification challenges: single use, short lived."""

from __future__ import annotations

from typing import Any

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


# What a verification takes out of a challenge row (verifications.begin).
TAKEN_COLUMNS = "id, method, device_id, created_at, expires_at, webauthn_challenge"


def challenge_from_row(
    row: Any, env: EnvironmentId, user: UserId, *, prefix: str = ""
) -> Challenge:
    """``row`` holds ``TAKEN_COLUMNS``, each named with ``prefix``."""
    return Challenge(
        id=row[f"{prefix}id"],
        environment_id=env,
        user_id=user,
        method=Method[row[f"{prefix}method"]],
        device_id=row[f"{prefix}device_id"],
        created_at=row[f"{prefix}created_at"],
        expires_at=row[f"{prefix}expires_at"],
        webauthn_challenge=row[f"{prefix}webauthn_challenge"],
    )
