"""The statements of a verification.

A device factor (TOTP, passkey) takes two round trips and no transaction: ``read``
finds the attempt state, the challenge and the devices that may answer it; the proof
is matched in memory (``domain.verification``); then ``conclude``, one statement,
decides under the user's row lock and writes the outcome: the challenge used up, the
device's replay state moved forward, the failure count, the audit events, and on success
the ``Grant`` (the action token, the verified session). A recovery code and an
enrollment decide in a transaction that locks the user first (``begin`` or
``users.lock_for_verification``), then ``count_failure`` or ``succeed``.

Counting a failure and resetting the count are the fragments of ``store.users``, used
here as they are; every statement has named parameters (``store.sql``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from mfa_service.domain.audit import AuditEvent
from mfa_service.domain.devices import Challenge, Device
from mfa_service.domain.lockout import HARD_LIMIT, AttemptState
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.domain.settings import LockoutSettings
from mfa_service.domain.verification import (
    Advance,
    Grant,
    IssueToken,
    MarkSession,
    SignCount,
    TotpStep,
)
from mfa_service.store import action_tokens as token_store
from mfa_service.store import audit as audit_store
from mfa_service.store import sessions as session_store
from mfa_service.store import users as user_store
from mfa_service.store.challenges import TAKEN_COLUMNS, challenge_from_row
from mfa_service.store.db import Connection
from mfa_service.store.devices import COLUMNS as DEVICE_COLUMNS
from mfa_service.store.devices import device_from_row
from mfa_service.store.sql import Statement, named


@dataclass(frozen=True, slots=True)
class Found:
    """The user's attempt state and the challenge; for ``read`` also the devices that may
    answer it (a snapshot, not a lock: ``conclude`` decides again what matters)."""

    attempts: AttemptState
    challenge: Challenge | None  # None: unknown, another user's, expired or used
    devices: list[Device]  # the user's devices of the challenge's method
    webauthn_user_handle: bytes | None = None


def _found(rows: list[Any], env: EnvironmentId, user: UserId, *, devices: bool) -> Found:
    first = rows[0]
    attempts = AttemptState(first["attempts_failed"] or 0, first["attempts_locked_until"])
    handle = first["user_handle"]
    if first["challenge_id"] is None:
        return Found(attempts, None, [], handle)
    challenge = challenge_from_row(first, env, user, prefix="challenge_")
    found = [device_from_row(r) for r in rows if r["id"] is not None] if devices else []
    return Found(attempts, challenge, found, handle)


def _key(env: EnvironmentId, user: UserId, now: datetime) -> dict[str, Any]:
    return {"env": env, "user": user, "now": now}


def _lockout(lockout: LockoutSettings) -> dict[str, Any]:
    return {
        "max_failed_attempts": lockout.max_failed_attempts,
        "lockout_duration": lockout.lockout_duration,
    }


_CHALLENGE_COLUMNS = ", ".join(
    f"c.{column} AS challenge_{column}" for column in TAKEN_COLUMNS.split(", ")
)

# For a recovery code, in its transaction. ``u`` locks the user's row for the
# transaction (so the failure count is exact); ``c`` takes the challenge out, so it is
# used at most once, but not while the user is locked out. The hard limit does not stop
# a recovery code: it is the way out.
_BEGIN = named(f"""
WITH u AS ({user_store.LOCK}),
c AS (
    DELETE FROM challenges
    WHERE id = :challenge AND environment_id = :env AND user_id = :user
      AND expires_at > :now
      AND NOT EXISTS (SELECT 1 FROM u WHERE locked_until > :now)
    RETURNING {TAKEN_COLUMNS}
)
SELECT u.failed_attempts AS attempts_failed, u.locked_until AS attempts_locked_until,
       NULL::bytea AS user_handle, {_CHALLENGE_COLUMNS}
FROM u LEFT JOIN c ON true
""")  # noqa: S608 (constant SQL fragments)


async def begin(
    conn: Connection, env: EnvironmentId, user: UserId, challenge_id: UUID, *, now: datetime
) -> Found:
    """Lock the user's row, and take the challenge unless they are locked out."""
    rows = await conn.fetch(
        _BEGIN.text, *_BEGIN.args(_key(env, user, now) | {"challenge": challenge_id})
    )
    if not rows:  # INSERT ... ON CONFLICT DO UPDATE always returns the row
        raise LookupError("mfa_users upsert returned no row")
    return _found(rows, env, user, devices=False)


_READ = named(f"""
SELECT u.failed_attempts AS attempts_failed, u.locked_until AS attempts_locked_until,
       u.webauthn_user_handle AS user_handle, {_CHALLENGE_COLUMNS}, d.*
FROM (SELECT) AS one
LEFT JOIN mfa_users u ON u.environment_id = :env AND u.user_id = :user
LEFT JOIN challenges c
       ON c.id = :challenge AND c.environment_id = :env AND c.user_id = :user
      AND c.expires_at > :now
LEFT JOIN LATERAL (
    SELECT {DEVICE_COLUMNS} FROM devices
    WHERE environment_id = :env AND user_id = :user AND method = c.method
    ORDER BY created_at, id
) d ON true
""")  # noqa: S608 (constant SQL fragments)


async def read(
    conn: Connection, env: EnvironmentId, user: UserId, challenge_id: UUID, *, now: datetime
) -> Found:
    """The attempt state, the challenge (left in place) and its method's devices."""
    rows = await conn.fetch(
        _READ.text, *_READ.args(_key(env, user, now) | {"challenge": challenge_id})
    )
    return _found(rows, env, user, devices=True)  # the one-row left side: never empty


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"  # the device moved forward; the grant was recorded
    FAILED = "failed"  # the challenge was used up and the failure counted
    LOCKED_OUT = "locked_out"  # nothing written: the user is locked out (now)
    RECOVERY_REQUIRED = "recovery_required"  # nothing written: at the hard limit
    NO_CHALLENGE = "no_challenge"  # nothing written: the challenge is gone


class WrittenOn(enum.Enum):
    """When an audit event of a verification is written."""

    SUCCESS = Outcome.SUCCEEDED.value
    FAILURE = Outcome.FAILED.value
    # When this failure started a lockout or reached the hard limit; the event's details
    # gain the failure count, the lockout's end and whether recovery is required.
    LOCKOUT = "lockout"


@dataclass(frozen=True, slots=True)
class Concluded:
    outcome: Outcome
    attempts: AttemptState  # after a failure; before the statement otherwise


# The device write of each kind of advance: it is decided on the row as it is when the
# UPDATE reaches it, so of two uses of one code (or one counter value) exactly one wins,
# and none goes backwards.
_ADVANCE_SQL: dict[type[Advance], str] = {
    TotpStep: """
        UPDATE devices SET totp_last_step = :totp_step::bigint, last_used_at = :now
        WHERE id = :device AND environment_id = :env AND user_id = :user
          AND EXISTS (SELECT 1 FROM taken)
          AND (totp_last_step IS NULL OR totp_last_step < :totp_step::bigint)
        RETURNING id
    """,
    SignCount: """
        UPDATE devices SET passkey_sign_count = :sign_count::bigint,
                           passkey_backed_up = :backed_up::boolean, last_used_at = :now
        WHERE id = :device AND environment_id = :env AND user_id = :user
          AND EXISTS (SELECT 1 FROM taken)
          AND (passkey_sign_count < :sign_count::bigint
               OR (passkey_sign_count = 0 AND :sign_count::bigint = 0))
        RETURNING id
    """,
}


def _advance_values(advance: Advance | None) -> dict[str, Any]:
    match advance:
        case TotpStep(step):
            return {"totp_step": step}
        case SignCount(new, backed_up):
            return {"sign_count": new, "backed_up": backed_up}
    return {}


_GRANT_SQL: dict[type[Grant], str] = {
    IssueToken: token_store.INSERT,
    MarkSession: session_store.MARK_VERIFIED,
}


def _grant_values(grant: Grant | None) -> dict[str, Any]:
    match grant:
        case IssueToken(claims, token_hash):
            return token_store.values(claims, token_hash)
        case MarkSession(session_id, method):
            return {"session_id": session_id, "session_method": method.name}
    return {}


# ``u`` locks the user's row (when there is one) and, under READ COMMITTED, returns it as
# it is once the lock is granted: verifications of one user decide one at a time. The
# challenge is taken only while the user is neither locked out nor at the hard limit
# (consecutive failures: a device factor no longer verifies); the device moves forward
# only with the challenge; success resets the failure count, anything else that took
# the challenge counts one more consecutive failure (an upsert: an unknown user is
# counted too, as a known one would be) and may start a lockout, by the one rule
# ``mfa_lockout_duration`` (domain.lockout). An ended lockout does not reset the count.
_CONCLUDE = """
WITH u AS (
    SELECT locked_until, failed_attempts FROM mfa_users
    WHERE environment_id = :env AND user_id = :user
    FOR UPDATE
),
taken AS (
    DELETE FROM challenges
    WHERE id = :challenge AND environment_id = :env AND user_id = :user
      AND expires_at > :now
      AND NOT EXISTS (SELECT 1 FROM u WHERE locked_until > :now
                                           OR failed_attempts >= {hard_limit})
    RETURNING id
),
advanced AS ({advanced}),
reset AS ({reset}),
failed AS ({failed}),
outcome AS (
    SELECT CASE WHEN EXISTS (SELECT 1 FROM advanced) THEN 'succeeded'
                WHEN EXISTS (SELECT 1 FROM taken) THEN 'failed'
                WHEN EXISTS (SELECT 1 FROM u WHERE locked_until > :now) THEN 'locked_out'
                WHEN EXISTS (SELECT 1 FROM u WHERE failed_attempts >= {hard_limit})
                THEN 'recovery_required'
                ELSE 'no_challenge' END AS outcome
),
granted AS ({granted}),
events AS ({events})
SELECT o.outcome, f.failed_attempts, f.locked_until AS failed_locked_until,
       (SELECT locked_until FROM u) AS locked_until
FROM outcome o LEFT JOIN failed f ON true
"""

# Which events a statement writes: those of its outcome, and the lockout's when the
# failure it counted started one or reached the hard limit.
_EVENT_WRITTEN = f"""
    e.written_on = (SELECT outcome FROM outcome)
    OR (e.written_on = '{WrittenOn.LOCKOUT.value}'
        AND EXISTS (SELECT 1 FROM failed
                    WHERE locked_until > :now OR failed_attempts = {HARD_LIMIT}))
"""  # noqa: S608 (constants)
_EVENT_DETAILS = f"""
    CASE WHEN e.written_on = '{WrittenOn.LOCKOUT.value}'
         THEN e.details::jsonb || (
             SELECT jsonb_strip_nulls(jsonb_build_object(
                 'failed_attempts', f.failed_attempts::text,
                 'locked_until', CASE WHEN f.locked_until > :now THEN to_char(
                     f.locked_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END,
                 'recovery_required', CASE WHEN f.failed_attempts >= {HARD_LIMIT}
                                           THEN 'true' END))
             FROM failed f)
         ELSE e.details::jsonb END
"""  # noqa: S608 (constants)
_EVENTS = audit_store.insert_many_sql(
    where=_EVENT_WRITTEN, details=_EVENT_DETAILS, extra="written_on"
)


def _conclude_statement(advance: type[Advance] | None, grant: type[Grant] | None) -> Statement:
    """The statement for this kind of device write and grant."""
    nothing_advanced = "SELECT :device::uuid AS id WHERE false"
    return named(
        _CONCLUDE.format(
            advanced=_ADVANCE_SQL[advance] if advance else nothing_advanced,
            reset=user_store.RESET_FAILURES.format(when="EXISTS (SELECT 1 FROM advanced)"),
            failed=user_store.COUNT_FAILURE.format(
                when="EXISTS (SELECT 1 FROM taken) AND NOT EXISTS (SELECT 1 FROM advanced)"
            ),
            granted=(
                _GRANT_SQL[grant].format(when="EXISTS (SELECT 1 FROM advanced)")
                if grant
                else "SELECT"
            ),
            events=_EVENTS,
            hard_limit=HARD_LIMIT,
        )
    )


# Every variant, made once (each is prepared once per connection).
_CONCLUDE_STATEMENTS = {
    (advance, grant): _conclude_statement(advance, grant)
    for advance in (None, *_ADVANCE_SQL)
    for grant in (None, *_GRANT_SQL)
}


async def conclude(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    challenge_id: UUID,
    *,
    now: datetime,
    device_id: UUID | None,
    advance: Advance | None,
    lockout: LockoutSettings,
    grant: Grant | None,
    events: Sequence[tuple[WrittenOn, AuditEvent]],
) -> Concluded:
    """Decide and write a device-factor verification in one statement (``_CONCLUDE``).

    ``device_id`` and ``advance``: the device whose secret answered and how its replay
    state must move (both None when nothing answered); ``grant``: what a success records,
    with ``device_id``; ``events``: each with when it is written.
    """
    if (device_id is None) != (advance is None):
        raise ValueError("device_id and advance go together")
    statement = _CONCLUDE_STATEMENTS[
        type(advance) if advance is not None else None,
        type(grant) if grant is not None else None,
    ]
    values = (
        _key(env, user, now)
        | {"challenge": challenge_id, "device": device_id}
        | _lockout(lockout)
        | _advance_values(advance)
        | _grant_values(grant)
        | _event_values(events)
    )
    row = await conn.fetchrow(statement.text, *statement.args(values))
    if row is None:  # the outcome CTE always yields a row
        raise LookupError("conclude returned no row")
    outcome = Outcome(row["outcome"])
    if outcome is Outcome.FAILED:
        attempts = AttemptState(row["failed_attempts"], row["failed_locked_until"])
    else:
        attempts = AttemptState(0, row["locked_until"])
    return Concluded(outcome, attempts)


def _event_values(events: Sequence[tuple[WrittenOn, AuditEvent]]) -> dict[str, Any]:
    return audit_store.many_values([event for _, event in events]) | {
        "audit_written_on": [when.value for when, _ in events]
    }


# For a failure decided in a transaction that holds the user's row lock: the same count
# and the same events as ``_CONCLUDE``'s, as if its challenge had been taken.
_COUNT_FAILURE = named(f"""
WITH failed AS ({user_store.COUNT_FAILURE.format(when="true")}),
outcome AS (SELECT '{Outcome.FAILED.value}' AS outcome),
events AS ({_EVENTS})
SELECT failed_attempts, locked_until FROM failed
""")  # noqa: S608 (constant SQL fragments)


async def count_failure(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    *,
    now: datetime,
    lockout: LockoutSettings,
    events: Sequence[tuple[WrittenOn, AuditEvent]],
) -> AttemptState:
    """Count one consecutive failure (maybe starting a lockout) and write ``events``, in
    a transaction that holds the user's row lock (enrollment, recovery codes)."""
    values = _key(env, user, now) | _lockout(lockout) | _event_values(events)
    row = await conn.fetchrow(_COUNT_FAILURE.text, *_COUNT_FAILURE.args(values))
    if row is None:  # an upsert always returns its row
        raise LookupError("count_failure returned no row")
    return AttemptState(row["failed_attempts"], row["locked_until"])


_SUCCEED = {
    grant: named(f"""
WITH reset AS ({user_store.RESET_FAILURES.format(when="true")}),
granted AS ({_GRANT_SQL[grant].format(when="true")}),
events AS ({audit_store.insert_many_sql()})
SELECT
""")
    for grant in _GRANT_SQL
}


async def succeed(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    *,
    now: datetime,
    grant: Grant,
    events: Sequence[AuditEvent],
) -> None:
    """A success decided in a transaction that holds the user's row lock (a recovery
    code): reset the failure count, record ``grant`` (no device) and write ``events``."""
    statement = _SUCCEED[type(grant)]
    values = (
        _key(env, user, now)
        | {"device": None}
        | _grant_values(grant)
        | audit_store.many_values(events)
    )
    await conn.execute(statement.text, *statement.args(values))
