"""Action token state: issued, consumed, revoked; and remembered decisions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from mfa_service.domain.tokens import ActionClaims
from mfa_service.store.db import Connection


async def insert(conn: Connection, claims: ActionClaims, *, token_hash: bytes) -> None:
    await conn.execute(
        """
        INSERT INTO action_tokens (jti, environment_id, user_id, actions, single_use,
                                   session_id, payload_digest, method, issued_at, expires_at,
                                   token_hash)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
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
        token_hash,
    )


@dataclass(frozen=True, slots=True)
class Decided:
    """What the one validation statement found.

    ``reason`` is the decision for this call (None when a remembered decision exists);
    ``token_problem`` what is wrong with the token now, if anything (for re-checking a
    remembered ALLOW); ``prior_*`` the remembered decision of the idempotency key.
    """

    reason: str | None
    token_problem: str | None
    prior_fingerprint: bytes | None
    prior_reason: str | None
    remembered: bool


# One round trip decides, consumes, remembers and audits (DESIGN §8: exactly-once state
# is decided by single-statement conditional writes). The token row is found by jti AND
# the SHA-256 of the exact token, so a token we did not issue matches nothing.
_DECIDE = """
WITH prior AS (
    SELECT fingerprint, reason FROM token_validations
    WHERE $9::text IS NOT NULL AND environment_id = $1 AND idempotency_key = $9
      AND created_at > $11
),
tok AS (
    SELECT * FROM action_tokens WHERE jti = $3 AND token_hash = $4
),
fits AS (
    SELECT single_use, CASE
        WHEN environment_id <> $1 OR user_id <> $2 THEN 'USER_MISMATCH'
        WHEN NOT ($5 = ANY(actions)) THEN 'ACTION_MISMATCH'
        WHEN session_id IS NOT NULL AND session_id IS DISTINCT FROM $6 THEN 'SESSION_MISMATCH'
        WHEN payload_digest IS NOT NULL AND payload_digest IS DISTINCT FROM $7
            THEN 'PAYLOAD_MISMATCH'
        WHEN revoked_at IS NOT NULL THEN 'TOKEN_REVOKED'
        WHEN expires_at <= $8 THEN 'TOKEN_EXPIRED'
    END AS problem
    FROM tok
),
consumed AS (
    UPDATE action_tokens SET consumed_at = $8
    WHERE jti = $3 AND token_hash = $4 AND single_use AND consumed_at IS NULL
      AND revoked_at IS NULL AND expires_at > $8
      AND EXISTS (SELECT 1 FROM fits WHERE problem IS NULL)
      AND NOT EXISTS (SELECT 1 FROM prior)
    RETURNING 1
),
decision AS (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM prior) THEN NULL
        WHEN NOT EXISTS (SELECT 1 FROM fits) THEN 'TOKEN_INVALID'
        WHEN (SELECT problem FROM fits) IS NOT NULL THEN (SELECT problem FROM fits)
        WHEN NOT (SELECT single_use FROM fits) THEN 'TOKEN_VALID'
        WHEN EXISTS (SELECT 1 FROM consumed) THEN 'TOKEN_VALID'
        -- Not consumed although it fit: used before, or by a concurrent call that won.
        ELSE 'TOKEN_ALREADY_USED'
    END AS reason
),
remembered AS (
    INSERT INTO token_validations (environment_id, idempotency_key, fingerprint, decision,
                                   reason, created_at)
    SELECT $1, $9, $10, CASE WHEN reason = 'TOKEN_VALID' THEN 'ALLOW' ELSE 'DENY' END,
           reason, $8
    FROM decision WHERE $9::text IS NOT NULL AND reason IS NOT NULL
    ON CONFLICT (environment_id, idempotency_key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, decision = EXCLUDED.decision,
            reason = EXCLUDED.reason, created_at = EXCLUDED.created_at
        WHERE token_validations.created_at <= $11
    RETURNING 1
),
audited AS (
    INSERT INTO audit_events (event_id, environment_id, user_id, type, occurred_at,
                              caller, request_id, details)
    SELECT gen_random_uuid(), $1, $2, 'TOKEN_VALIDATED', $8, $12, $13,
           jsonb_build_object(
               'action', $14::text,
               'decision', CASE WHEN reason = 'TOKEN_VALID' THEN 'ALLOW' ELSE 'DENY' END,
               'reason', reason,
               'jti', $3::text)
    FROM decision WHERE reason IS NOT NULL
)
SELECT (SELECT reason FROM decision) AS reason,
       (SELECT problem FROM fits) AS token_problem,
       (SELECT fingerprint FROM prior) AS prior_fingerprint,
       (SELECT reason FROM prior) AS prior_reason,
       EXISTS (SELECT 1 FROM remembered) AS remembered
"""


async def decide(
    conn: Connection,
    *,
    jti: UUID,
    token_hash: bytes,
    environment_id: str,
    user_id: str,
    action: str,
    session_id: str | None,
    payload_digest: bytes | None,
    now: datetime,
    idempotency_key: str | None,
    fingerprint: bytes,
    remembered_since: datetime,
    caller: str,
    request_id: str,
) -> Decided:
    row = await conn.fetchrow(
        _DECIDE,
        environment_id,
        user_id,
        jti,
        token_hash,
        action,
        session_id,
        payload_digest,
        now,
        idempotency_key,
        fingerprint,
        remembered_since,
        caller,
        request_id,
        f"ACTION_{action}",
    )
    if row is None:  # a SELECT without FROM always yields one row
        raise LookupError("token decision returned no row")
    return Decided(
        reason=row["reason"],
        token_problem=row["token_problem"],
        prior_fingerprint=row["prior_fingerprint"],
        prior_reason=row["prior_reason"],
        remembered=row["remembered"],
    )


async def prior_decision(
    conn: Connection, env: str, key: str, *, since: datetime
) -> tuple[bytes, str] | None:
    """(fingerprint, reason) remembered for this idempotency key since ``since``."""
    row = await conn.fetchrow(
        "SELECT fingerprint, reason FROM token_validations "
        "WHERE environment_id = $1 AND idempotency_key = $2 AND created_at > $3",
        env,
        key,
        since,
    )
    return None if row is None else (row["fingerprint"], row["reason"])
