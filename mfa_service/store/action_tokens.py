"""Action token state: issued, consumed, revoked; and remembered decisions."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from mfa_service.domain.tokens import ActionClaims
from mfa_service.store.db import Connection


async def insert(conn: Connection, claims: ActionClaims) -> None:
    await conn.execute(
        """
        INSERT INTO action_tokens (jti, environment_id, user_id, actions, single_use,
                                   session_id, payload_digest, method, issued_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        claims.jti,
        claims.environment_id,
        claims.user_id,
        [a.name for a in claims.actions],
        claims.single_use,
        claims.session_id,
        claims.payload_digest,
        claims.method.name,
        claims.issued_at,
        claims.expires_at,
    )


async def consume(conn: Connection, jti: UUID, *, now: datetime) -> bool:
    """Mark a single-use token used: one conditional UPDATE, so exactly one caller wins."""
    consumed = await conn.fetchval(
        """
        UPDATE action_tokens SET consumed_at = $2
        WHERE jti = $1 AND consumed_at IS NULL AND revoked_at IS NULL AND expires_at > $2
        RETURNING true
        """,
        jti,
        now,
    )
    return bool(consumed)


async def state(conn: Connection, jti: UUID) -> tuple[datetime | None, datetime | None] | None:
    """(consumed_at, revoked_at) of a token we issued, or None if we never issued it."""
    row = await conn.fetchrow(
        "SELECT consumed_at, revoked_at FROM action_tokens WHERE jti = $1", jti
    )
    return None if row is None else (row["consumed_at"], row["revoked_at"])


async def prior_decision(
    conn: Connection, env: str, key: str, *, since: datetime
) -> tuple[bytes, str, str] | None:
    """(fingerprint, decision, reason) remembered for this idempotency key since ``since``.

    An older record is deleted: the key starts afresh.
    """
    await conn.execute(
        "DELETE FROM token_validations "
        "WHERE environment_id = $1 AND idempotency_key = $2 AND created_at <= $3",
        env,
        key,
        since,
    )
    row = await conn.fetchrow(
        "SELECT fingerprint, decision, reason FROM token_validations "
        "WHERE environment_id = $1 AND idempotency_key = $2",
        env,
        key,
    )
    return None if row is None else (row["fingerprint"], row["decision"], row["reason"])


async def remember_decision(
    conn: Connection,
    env: str,
    key: str,
    *,
    fingerprint: bytes,
    decision: str,
    reason: str,
    now: datetime,
) -> bool:
    """Store the decision for the key; False if a concurrent call stored one first."""
    stored = await conn.fetchval(
        """
        INSERT INTO token_validations (environment_id, idempotency_key, fingerprint,
                                       decision, reason, created_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT DO NOTHING
        RETURNING true
        """,
        env,
        key,
        fingerprint,
        decision,
        reason,
        now,
    )
    return bool(stored)
