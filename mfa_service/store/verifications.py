"""The statements of a verification.

A device factor (TOTP, passkey) takes two round trips and no transaction: ``read``
finds the attempt state, the challenge and the devices that may answer it; the proof
is checked in memory; then ``conclude``, one statement, decides under the user's row
lock and writes the outcome: the challenge used up, the device's replay state moved
forward, the failure count, the audit events, and on success the caller's own write
(the token, the verified session). A recovery code keeps a transaction (``begin``):
its scrypt check is what costs, not the round trips.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from mfa_service.domain.audit import AuditEvent
from mfa_service.domain.devices import Challenge, Device
from mfa_service.domain.lockout import HARD_LIMIT, AttemptState
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.store import audit as audit_store
from mfa_service.store.challenges import TAKEN_COLUMNS, challenge_from_row
from mfa_service.store.db import Connection
from mfa_service.store.devices import COLUMNS as DEVICE_COLUMNS
from mfa_service.store.devices import device_from_row
from mfa_service.store.users import LOCK_FOR_VERIFICATION


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


_CHALLENGE_COLUMNS = ", ".join(
    f"c.{column} AS challenge_{column}" for column in TAKEN_COLUMNS.split(", ")
)

# For a recovery code, in its transaction. ``u`` locks the user's row for the
# transaction (so the failure count is exact); ``c`` takes the challenge out, so it is
# used at most once, but not while the user is locked out. The hard limit does not stop
# a recovery code: it is the way out.
_BEGIN = f"""
WITH u AS ({LOCK_FOR_VERIFICATION}),
c AS (
    DELETE FROM challenges
    WHERE id = $4 AND environment_id = $1 AND user_id = $2 AND expires_at > $3
      AND NOT EXISTS (SELECT 1 FROM u WHERE locked_until > $3)
    RETURNING {TAKEN_COLUMNS}
)
SELECT u.failed_attempts AS attempts_failed, u.locked_until AS attempts_locked_until,
       NULL::bytea AS user_handle, {_CHALLENGE_COLUMNS}
FROM u LEFT JOIN c ON true
"""  # noqa: S608 (constant SQL fragments)


async def begin(
    conn: Connection, env: EnvironmentId, user: UserId, challenge_id: UUID, *, now: datetime
) -> Found:
    """Lock the user's row, and take the challenge unless they are locked out."""
    rows = await conn.fetch(_BEGIN, env, user, now, challenge_id)
    if not rows:  # INSERT ... ON CONFLICT DO UPDATE always returns the row
        raise LookupError("mfa_users upsert returned no row")
    return _found(rows, env, user, devices=False)


# --- device factors: read, check in memory, conclude -------------------------------


_READ = f"""
SELECT u.failed_attempts AS attempts_failed, u.locked_until AS attempts_locked_until,
       u.webauthn_user_handle AS user_handle, {_CHALLENGE_COLUMNS}, d.*
FROM (SELECT) AS one
LEFT JOIN mfa_users u ON u.environment_id = $1 AND u.user_id = $2
LEFT JOIN challenges c
       ON c.id = $4 AND c.environment_id = $1 AND c.user_id = $2 AND c.expires_at > $3
LEFT JOIN LATERAL (
    SELECT {DEVICE_COLUMNS} FROM devices
    WHERE environment_id = $1 AND user_id = $2 AND method = c.method
    ORDER BY created_at, id
) d ON true
"""  # noqa: S608 (constant SQL fragments)


async def read(
    conn: Connection, env: EnvironmentId, user: UserId, challenge_id: UUID, *, now: datetime
) -> Found:
    """The attempt state, the challenge (left in place) and its method's devices."""
    rows = await conn.fetch(_READ, env, user, now, challenge_id)
    return _found(rows, env, user, devices=True)  # the one-row left side: never empty


@dataclass(frozen=True, slots=True)
class SuccessWrite:
    """A caller's INSERT, made by ``conclude`` only if the verification succeeds.

    ``render(first, condition)`` is the statement with its parameters numbered from
    ``first`` and ``condition`` in its WHERE; ``args`` are the parameters' values.
    """

    render: Callable[[int, str], str]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class TotpStep:
    """Accept this time step on the device, if it is after the last one accepted."""

    step: int


@dataclass(frozen=True, slots=True)
class SignCount:
    """Move the passkey's signature counter forward (both zero: a synced passkey)."""

    new: int
    backed_up: bool


Advance = TotpStep | SignCount


# The device write of each factor: (SET, condition, parameter count), parameters numbered
# from ``first``. The condition is decided on the row as it is when the UPDATE reaches
# it, so of two uses of one code (or one counter value) exactly one wins, and none goes
# backwards.
def _advance_sql(kind: str, first: int) -> tuple[str, str, int]:
    if kind == TotpStep.__name__:
        return (
            f"totp_last_step = ${first}::bigint",
            f"(totp_last_step IS NULL OR totp_last_step < ${first}::bigint)",
            1,
        )
    count, backed_up = f"${first}::bigint", f"${first + 1}::boolean"
    return (
        f"passkey_sign_count = {count}, passkey_backed_up = {backed_up}",
        f"(passkey_sign_count < {count} OR (passkey_sign_count = 0 AND {count} = 0))",
        2,
    )


def _advance_args(advance: Advance | None) -> tuple[Any, ...]:
    if isinstance(advance, TotpStep):
        return (advance.step,)
    if isinstance(advance, SignCount):
        return (advance.new, advance.backed_up)
    return ()


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"  # the device moved forward; the success write was made
    FAILED = "failed"  # the challenge was used up and the failure counted
    LOCKED_OUT = "locked_out"  # nothing written: the user is locked out (now)
    RECOVERY_REQUIRED = "recovery_required"  # nothing written: at the hard limit
    NO_CHALLENGE = "no_challenge"  # nothing written: the challenge is gone


@dataclass(frozen=True, slots=True)
class Concluded:
    outcome: Outcome
    attempts: AttemptState  # after a failure; before the statement otherwise


# When each audit event is written: with the outcome of its name, or "lockout" when
# this failure started a lockout or reached the hard limit (its details gain the
# failure count, the lockout's end and whether recovery is required, as
# ``AttemptState.lockout_details`` writes them).
EVENT_ON_SUCCESS, EVENT_ON_FAILURE, EVENT_ON_LOCKOUT = "succeeded", "failed", "lockout"

# $1 environment, $2 user, $3 now, $4 challenge, $5 the device that answered (NULL: none
# did), $6 the lockout limit, $7 its duration; then the device write's, the success
# write's and the audit events' parameters.
#
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
    WHERE environment_id = $1 AND user_id = $2
    FOR UPDATE
),
taken AS (
    DELETE FROM challenges
    WHERE id = $4 AND environment_id = $1 AND user_id = $2 AND expires_at > $3
      AND NOT EXISTS (SELECT 1 FROM u WHERE locked_until > $3
                                           OR failed_attempts >= {hard_limit})
    RETURNING id
),
advanced AS ({advanced}),
reset AS (
    UPDATE mfa_users SET failed_attempts = 0, locked_until = NULL
    WHERE environment_id = $1 AND user_id = $2 AND EXISTS (SELECT 1 FROM advanced)
      AND (failed_attempts <> 0 OR locked_until IS NOT NULL)
),
failed AS (
    INSERT INTO mfa_users AS m (environment_id, user_id, created_at, failed_attempts,
                                locked_until)
    SELECT $1, $2, $3, 1, $3::timestamptz + mfa_lockout_duration(1, $6, $7)
    WHERE EXISTS (SELECT 1 FROM taken) AND NOT EXISTS (SELECT 1 FROM advanced)
    ON CONFLICT (environment_id, user_id) DO UPDATE SET
        failed_attempts = m.failed_attempts + 1,
        locked_until = $3::timestamptz + mfa_lockout_duration(m.failed_attempts + 1, $6, $7)
    RETURNING failed_attempts, locked_until
),
outcome AS (
    SELECT CASE WHEN EXISTS (SELECT 1 FROM advanced) THEN 'succeeded'
                WHEN EXISTS (SELECT 1 FROM taken) THEN 'failed'
                WHEN EXISTS (SELECT 1 FROM u WHERE locked_until > $3) THEN 'locked_out'
                WHEN EXISTS (SELECT 1 FROM u WHERE failed_attempts >= {hard_limit})
                THEN 'recovery_required'
                ELSE 'no_challenge' END AS outcome
),
success_write AS ({success_write}),
events AS ({events})
SELECT o.outcome, f.failed_attempts, f.locked_until AS failed_locked_until,
       (SELECT locked_until FROM u) AS locked_until
FROM outcome o LEFT JOIN failed f ON true
"""

_EVENT_WRITTEN = f"""
    e.written_on = (SELECT outcome FROM outcome)
    OR (e.written_on = '{EVENT_ON_LOCKOUT}'
        AND EXISTS (SELECT 1 FROM failed
                    WHERE locked_until > $3 OR failed_attempts = {HARD_LIMIT}))
"""  # noqa: S608 (constants)
# What AttemptState.lockout_details says, for the failure this statement counted.
_EVENT_DETAILS = f"""
    CASE WHEN e.written_on = '{EVENT_ON_LOCKOUT}'
         THEN e.details::jsonb || (
             SELECT jsonb_strip_nulls(jsonb_build_object(
                 'failed_attempts', f.failed_attempts::text,
                 'locked_until', CASE WHEN f.locked_until > $3 THEN to_char(
                     f.locked_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END,
                 'recovery_required', CASE WHEN f.failed_attempts >= {HARD_LIMIT}
                                           THEN 'true' END))
             FROM failed f)
         ELSE e.details::jsonb END
"""  # noqa: S608 (constants)


@functools.cache
def _conclude_sql(
    advance: str | None, success: Callable[[int, str], str] | None, success_args: int
) -> str:
    """The statement for this kind of device write and success write (a few variants,
    each prepared once per connection)."""
    first = 8
    if advance is None:  # nothing answered
        advanced = "SELECT $5::uuid AS id WHERE false"
    else:
        advance_set, advance_condition, count = _advance_sql(advance, first)
        advanced = f"""
            UPDATE devices SET {advance_set}, last_used_at = $3
            WHERE id = $5 AND environment_id = $1 AND user_id = $2
              AND EXISTS (SELECT 1 FROM taken) AND {advance_condition}
            RETURNING id
        """  # noqa: S608 (constant fragments)
        first += count
    success_write = "SELECT"
    if success is not None:
        success_write = success(first, "EXISTS (SELECT 1 FROM advanced)")
        first += success_args
    events = audit_store.insert_many_sql(
        first, where=_EVENT_WRITTEN, details=_EVENT_DETAILS, extra="written_on"
    )
    return _CONCLUDE.format(
        advanced=advanced, success_write=success_write, events=events, hard_limit=HARD_LIMIT
    )


async def conclude(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    challenge_id: UUID,
    *,
    now: datetime,
    device_id: UUID | None,
    advance: Advance | None,
    max_failed_attempts: int,
    lockout_duration: timedelta,
    success: SuccessWrite | None,
    events: Sequence[tuple[str, AuditEvent]],
) -> Concluded:
    """Decide and write a device-factor verification in one statement (see ``_CONCLUDE``).

    ``device_id`` and ``advance``: the device whose secret answered and how its replay
    state must move (both None when nothing answered). ``events``: (when, event) pairs,
    when being one of the ``EVENT_ON_*`` constants.
    """
    if (device_id is None) != (advance is None):
        raise ValueError("device_id and advance go together")
    sql = _conclude_sql(
        type(advance).__name__ if advance is not None else None,
        success.render if success is not None else None,
        len(success.args) if success is not None else 0,
    )
    row = await conn.fetchrow(
        sql,
        env,
        user,
        now,
        challenge_id,
        device_id,
        max_failed_attempts,
        lockout_duration,
        *_advance_args(advance),
        *(success.args if success is not None else ()),
        *audit_store.many_args([event for _, event in events]),
        [when for when, _ in events],
    )
    if row is None:  # the outcome CTE always yields a row
        raise LookupError("conclude returned no row")
    outcome = Outcome(row["outcome"])
    if outcome is Outcome.FAILED:
        attempts = AttemptState(row["failed_attempts"], row["failed_locked_until"])
    else:
        attempts = AttemptState(0, row["locked_until"])
    return Concluded(outcome, attempts)
