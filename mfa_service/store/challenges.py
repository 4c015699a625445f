"""Verification challenges: single use, short lived."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from mfa_service.domain import approvals
from mfa_service.domain.devices import Challenge
from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection


async def insert(conn: Connection, challenge: Challenge, *, limit: int) -> datetime | None:
    """Store ``challenge`` unless its user has ``limit`` open challenges already; None
    when stored, else when the oldest open one expires. One statement and no lock:
    calls that race each other may pass the cap by as many as they are."""
    row = await conn.fetchrow(
        """
        WITH open AS (
            SELECT count(*) AS n, min(expires_at) AS oldest FROM challenges
            WHERE environment_id = $2 AND user_id = $3 AND expires_at > $6
        ),
        stored AS (
            INSERT INTO challenges (id, environment_id, user_id, method, device_id,
                                    created_at, expires_at, webauthn_challenge,
                                    approval_json, approval_hash)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10, $11 WHERE (SELECT n FROM open) < $9
            RETURNING id
        )
        SELECT EXISTS (SELECT 1 FROM stored) AS stored, (SELECT oldest FROM open) AS oldest
        """,
        challenge.id,
        challenge.environment_id,
        challenge.user_id,
        challenge.method.name,
        challenge.device_id,
        challenge.created_at,
        challenge.expires_at,
        challenge.webauthn_challenge,
        limit,
        challenge.approval.encoded if challenge.approval else None,
        challenge.approval.hash if challenge.approval else None,
    )
    if row is None:  # a SELECT of two subqueries always yields its row
        raise LookupError("challenge insert returned no row")
    oldest: datetime | None = row["oldest"]
    return None if row["stored"] else oldest


async def take(conn: Connection, env: EnvironmentId, user: UserId, challenge_id: UUID) -> None:
    """Use a challenge up without a verification (a request that does not fit its
    approval spends it)."""
    await conn.execute(
        "DELETE FROM challenges WHERE id = $3 AND environment_id = $1 AND user_id = $2",
        env,
        user,
        challenge_id,
    )


# What a verification takes out of a challenge row (verifications.begin).
TAKEN_COLUMNS = (
    "id, method, device_id, created_at, expires_at, webauthn_challenge, approval_json, "
    "approval_hash"
)


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
        approval=_bound(row[f"{prefix}approval_json"], row[f"{prefix}approval_hash"]),
    )


def _bound(encoded: str | None, approval_hash: bytes | None) -> approvals.Bound | None:
    if encoded is None or approval_hash is None:
        return None
    return approvals.Bound(approvals.from_encoded(encoded), encoded, approval_hash)
