"""Action token state: issued, consumed, revoked; and remembered decisions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any
from uuid import UUID

from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.domain.tokens import ActionClaims
from mfa_service.store import audit as audit_store
from mfa_service.store.db import Connection
from mfa_service.store.sql import named

# Record an issued token if ``{when}`` holds, with the device whose proof earned it
# (``:device``; None: a recovery code). A fragment of the statement that decides the
# verification (store.verifications), and on its own in ``insert``.
INSERT = """
    INSERT INTO action_tokens (jti, environment_id, user_id, actions, single_use,
                               session_id, payload_digest, method, issued_at, expires_at,
                               token_hash, device_id, approval_hash)
    SELECT :token_jti::uuid, :token_environment_id::text, :token_user_id::text,
           :token_actions::text[], :token_single_use::boolean, :token_session_id::text,
           :token_payload_digest::bytea, :token_method::text, :token_issued_at::timestamptz,
           :token_expires_at::timestamptz, :token_hash::bytea, :device::uuid,
           :token_approval_hash::bytea
    WHERE {when}
"""
_INSERT = named(INSERT.format(when="true"))


def values(claims: ActionClaims, token_hash: bytes) -> dict[str, Any]:
    """The parameters of ``INSERT`` but ``:device``."""
    return {
        "token_jti": claims.jti,
        "token_environment_id": claims.environment_id,
        "token_user_id": claims.user_id,
        "token_actions": [a.name for a in claims.actions],
        "token_single_use": claims.single_use,
        "token_session_id": claims.session_id,
        "token_payload_digest": claims.payload_digest,
        "token_method": claims.method.name,
        "token_issued_at": claims.issued_at,
        "token_expires_at": claims.expires_at,
        "token_hash": token_hash,
        "token_approval_hash": claims.approval.hash if claims.approval else None,
    }


async def insert(
    conn: Connection, claims: ActionClaims, *, token_hash: bytes, device_id: UUID | None = None
) -> None:
    """Record an issued token on its own (seeding benchmarks and tests)."""
    await conn.execute(
        _INSERT.text, *_INSERT.args(values(claims, token_hash) | {"device": device_id})
    )


def methods_text(methods: Iterable[Method]) -> str:
    """Methods as one text value the statements below test a token's ``method`` against
    (``strpos``): each name between commas, ",TOTP,RECOVERY_CODE,"."""
    return "," + "".join(f"{m.name}," for m in sorted(methods, key=attrgetter("name")))


# A token's method is one the action's policy allows now (``:methods``, ``methods_text``),
# and it carries an approval if the policy requires one (DESIGN §3e): a policy tightened
# after a token was issued holds for it.
_POLICY_PROBLEM = """
        WHEN strpos({methods}, ',' || t.method || ',') = 0 THEN 'METHOD_NOT_ALLOWED'
        WHEN {require_approval} AND t.approval_hash IS NULL THEN 'APPROVAL_REQUIRED'
"""

_USABLE = f"""
    SELECT true FROM action_tokens t
    WHERE jti = $3 AND token_hash = $4 AND environment_id = $1 AND user_id = $2
      AND $5 = ANY(actions) AND expires_at > $6 AND revoked_at IS NULL
      AND NOT (single_use AND consumed_at IS NOT NULL)
      AND CASE{_POLICY_PROBLEM.format(methods="$7", require_approval="$8")}      END IS NULL
"""  # noqa: S608 (constant fragments)


async def usable(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    jti: UUID,
    token_hash: bytes,
    action: str,
    *,
    allowed_methods: str,
    require_approval: bool,
    now: datetime,
) -> bool:
    """Whether this exact token is live for ``action`` and its policy now
    (``allowed_methods``: ``methods_text``): a read, nothing consumed."""
    found = await conn.fetchval(
        _USABLE,
        env,
        user,
        jti,
        token_hash,
        action,
        now,
        allowed_methods,
        require_approval,
    )
    return bool(found)


async def revoke_for_device(
    conn: Connection, env: EnvironmentId, user: UserId, device_id: UUID, *, now: datetime
) -> int:
    """Revoke the live tokens a device earned (it was deleted); returns how many."""
    revoked: int = await conn.fetchval(
        """
        WITH revoked AS (
            UPDATE action_tokens SET revoked_at = $4
            WHERE device_id = $3 AND environment_id = $1 AND user_id = $2
              AND revoked_at IS NULL AND expires_at > $4
              AND NOT (single_use AND consumed_at IS NOT NULL)
            RETURNING 1
        )
        SELECT count(*) FROM revoked
        """,
        env,
        user,
        device_id,
        now,
    )
    return revoked


@dataclass(frozen=True, slots=True)
class Consumption:
    """One validation to decide: the token (by jti and the SHA-256 of its text) and what
    the caller asks it to cover, with the caller's idempotency key, if any."""

    environment_id: str
    user_id: str
    jti: UUID
    token_hash: bytes
    action: str
    # The action's policy now: the methods it allows (``methods_text``), and whether the
    # token must carry an approval.
    allowed_methods: str
    require_approval: bool
    session_id: str | None
    payload_digest: bytes | None
    idempotency_key: str | None
    fingerprint: bytes
    caller: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Decided:
    """What the validation statement found for one ``Consumption``.

    ``reason`` is the decision for this call (None when a remembered decision exists);
    ``token_problem`` what is wrong with the token now, if anything (for re-checking a
    remembered ALLOW); ``prior_*`` the remembered decision of the idempotency key.
    """

    reason: str | None
    token_problem: str | None
    prior_fingerprint: bytes | None
    prior_reason: str | None
    remembered: bool


# Every decision is audited (TOKEN_VALIDATED, with its action, decision, reason and jti).
_AUDITED = audit_store.insert_sql(
    {
        "event_id": "gen_random_uuid()",
        "environment_id": "environment_id",
        "user_id": "user_id",
        "type": "'TOKEN_VALIDATED'",
        "occurred_at": "$12",
        "method": "NULL",
        "device_id": "''",  # the column's default: no device
        "caller": "caller",
        "request_id": "request_id",
        # ValidateActionToken is the signer's call, not a user RPC: no client source.
        "client_ip": "NULL",
        "client_user_agent": "NULL",
        "details": """jsonb_build_object(
           'action', 'ACTION_' || action,
           'decision', CASE WHEN reason = 'TOKEN_VALID' THEN 'ALLOW' ELSE 'DENY' END,
           'reason', reason,
           'jti', jti::text)""",
    },
    "FROM decision WHERE reason IS NOT NULL",
)

# One round trip decides, consumes, remembers and audits a whole batch of validations
# (DESIGN §8: exactly-once state is decided by single-statement conditional writes). A
# token row is found by jti AND the SHA-256 of the exact token, so a token we did not
# issue matches nothing. Single-use tokens are consumed by one conditional UPDATE: of two
# requests for the same token, in this batch or in concurrent statements, exactly one
# sees ``consumed_at IS NULL`` (a concurrent winner makes PostgreSQL re-check the row and
# skip it; within one statement a row is updated at most once, for one of the requests).
# The checks come in the order the README gives: a token we did not issue (no row),
# expired, revoked, then what it is bound to (environment and user, action, session,
# payload digest), then the action's policy now (method, approval), and consumption
# last, so a refusal never consumes.
# Idempotency keys must be distinct within a batch (ON CONFLICT may touch a row once).
_DECIDE = f"""
WITH req AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bytea[], $5::text[],
                         $6::text[], $7::bytea[], $8::text[], $9::bytea[], $10::text[],
                         $11::text[], $14::text[], $15::boolean[])
        WITH ORDINALITY AS r(environment_id, user_id, jti, token_hash, action, session_id,
                             payload_digest, idempotency_key, fingerprint, caller,
                             request_id, allowed_methods, require_approval, i)
),
prior AS (
    SELECT r.i, v.fingerprint, v.reason
    FROM req r JOIN token_validations v
      ON v.environment_id = r.environment_id AND v.idempotency_key = r.idempotency_key
     AND v.created_at > $13
),
fits AS (
    SELECT r.i, t.jti, t.single_use, CASE
        WHEN t.expires_at <= $12 THEN 'TOKEN_EXPIRED'
        WHEN t.revoked_at IS NOT NULL THEN 'TOKEN_REVOKED'
        WHEN t.environment_id <> r.environment_id OR t.user_id <> r.user_id
            THEN 'USER_MISMATCH'
        WHEN NOT (r.action = ANY(t.actions)) THEN 'ACTION_MISMATCH'
        WHEN t.session_id IS NOT NULL AND t.session_id IS DISTINCT FROM r.session_id
            THEN 'SESSION_MISMATCH'
        WHEN t.payload_digest IS NOT NULL AND t.payload_digest IS DISTINCT FROM r.payload_digest
            THEN 'PAYLOAD_MISMATCH'{
    _POLICY_PROBLEM.format(methods="r.allowed_methods", require_approval="r.require_approval")
}    END AS problem
    FROM req r JOIN action_tokens t ON t.jti = r.jti AND t.token_hash = r.token_hash
),
consumed AS (
    UPDATE action_tokens t SET consumed_at = $12
    FROM fits f
    WHERE t.jti = f.jti AND f.problem IS NULL AND t.single_use AND t.consumed_at IS NULL
      AND t.revoked_at IS NULL AND t.expires_at > $12
      AND NOT EXISTS (SELECT 1 FROM prior p WHERE p.i = f.i)
    RETURNING f.i
),
decision AS (
    SELECT r.*, CASE
        WHEN p.i IS NOT NULL THEN NULL
        WHEN f.i IS NULL THEN 'TOKEN_INVALID'
        WHEN f.problem IS NOT NULL THEN f.problem
        WHEN NOT f.single_use THEN 'TOKEN_VALID'
        WHEN c.i IS NOT NULL THEN 'TOKEN_VALID'
        -- Not consumed although it fit: used before, or by a concurrent request that won.
        ELSE 'TOKEN_ALREADY_USED'
    END AS reason
    FROM req r
    LEFT JOIN prior p ON p.i = r.i
    LEFT JOIN fits f ON f.i = r.i
    LEFT JOIN consumed c ON c.i = r.i
),
remembered AS (
    INSERT INTO token_validations (environment_id, idempotency_key, fingerprint, decision,
                                   reason, created_at)
    SELECT environment_id, idempotency_key, fingerprint,
           CASE WHEN reason = 'TOKEN_VALID' THEN 'ALLOW' ELSE 'DENY' END, reason, $12
    FROM decision WHERE idempotency_key IS NOT NULL AND reason IS NOT NULL
    ON CONFLICT (environment_id, idempotency_key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, decision = EXCLUDED.decision,
            reason = EXCLUDED.reason, created_at = EXCLUDED.created_at
        WHERE token_validations.created_at <= $13
    RETURNING environment_id, idempotency_key
),
audited AS ({_AUDITED})
SELECT d.i, d.reason, f.problem AS token_problem, p.fingerprint AS prior_fingerprint,
       p.reason AS prior_reason, m.idempotency_key IS NOT NULL AS remembered
FROM decision d
LEFT JOIN fits f ON f.i = d.i
LEFT JOIN prior p ON p.i = d.i
LEFT JOIN remembered m
  ON m.environment_id = d.environment_id AND m.idempotency_key = d.idempotency_key
ORDER BY d.i
"""  # noqa: S608 (constant fragments)


async def decide(
    conn: Connection,
    batch: Sequence[Consumption],
    *,
    now: datetime,
    remembered_since: datetime,
) -> list[Decided]:
    """Decide every validation of ``batch`` in one statement, in order."""
    keys = [(c.environment_id, c.idempotency_key) for c in batch if c.idempotency_key]
    if len(keys) != len(set(keys)):
        raise ValueError("idempotency keys must be distinct within a batch")
    rows = await conn.fetch(
        _DECIDE,
        [c.environment_id for c in batch],
        [c.user_id for c in batch],
        [c.jti for c in batch],
        [c.token_hash for c in batch],
        [c.action for c in batch],
        [c.session_id for c in batch],
        [c.payload_digest for c in batch],
        [c.idempotency_key for c in batch],
        [c.fingerprint for c in batch],
        [c.caller for c in batch],
        [c.request_id for c in batch],
        now,
        remembered_since,
        [c.allowed_methods for c in batch],
        [c.require_approval for c in batch],
    )
    if len(rows) != len(batch):  # every request row yields one decision row
        raise LookupError("token decision returned the wrong number of rows")
    return [
        Decided(
            reason=row["reason"],
            token_problem=row["token_problem"],
            prior_fingerprint=row["prior_fingerprint"],
            prior_reason=row["prior_reason"],
            remembered=row["remembered"],
        )
        for row in rows
    ]


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
