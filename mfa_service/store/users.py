"""Per-user MFA state: the row every verification locks, and the attempt counter."""

from __future__ import annotations

from datetime import datetime

from mfa_service.domain.lockout import AttemptState
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.store.db import Connection
from mfa_service.store.sql import named


async def ensure(conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime) -> None:
    """Create the user's row if it is missing (devices and enrollments hang off it)."""
    await conn.execute(
        """
        INSERT INTO mfa_users (environment_id, user_id, created_at) VALUES ($1, $2, $3)
        ON CONFLICT DO NOTHING
        """,
        env,
        user,
        now,
    )


# The one statement that locks a user's row (also the first part of
# verifications.begin). ``ON CONFLICT DO UPDATE`` locks the row it finds, waiting for a
# concurrent insert to commit (``DO NOTHING`` would lock nothing); the no-op update
# changes nothing, and an ended lockout neither (the count goes on).
LOCK = """
    INSERT INTO mfa_users (environment_id, user_id, created_at) VALUES (:env, :user, :now)
    ON CONFLICT (environment_id, user_id) DO UPDATE SET
        failed_attempts = mfa_users.failed_attempts
    RETURNING failed_attempts, locked_until
"""
_LOCK = named(LOCK)

# Applying the lockout rule, written once and used by every statement that counts (as a
# CTE of store.verifications), ``{when}`` its condition. A failure counts one more
# consecutive failure (an upsert: an unknown user is counted too, as a known one would
# be) and may start a lockout, by the one rule ``mfa_lockout_duration`` (domain.lockout);
# a success resets the count (NIST SP 800-63B §3.2.2: on success only).
COUNT_FAILURE = """
    INSERT INTO mfa_users AS m (environment_id, user_id, created_at, failed_attempts,
                                locked_until)
    SELECT :env, :user, :now, 1,
           :now::timestamptz + mfa_lockout_duration(1, :max_failed_attempts,
                                                    :lockout_duration)
    WHERE {when}
    ON CONFLICT (environment_id, user_id) DO UPDATE SET
        failed_attempts = m.failed_attempts + 1,
        locked_until = :now::timestamptz + mfa_lockout_duration(
            m.failed_attempts + 1, :max_failed_attempts, :lockout_duration)
    RETURNING failed_attempts, locked_until
"""
RESET_FAILURES = """
    UPDATE mfa_users SET failed_attempts = 0, locked_until = NULL
    WHERE environment_id = :env AND user_id = :user AND {when}
      AND (failed_attempts <> 0 OR locked_until IS NOT NULL)
"""
_RESET_FAILURES = named(RESET_FAILURES.format(when="true"))


async def lock(conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime) -> None:
    """Create the user's row if it is missing and lock it until the transaction ends.

    Every change to a user's factors and recovery codes (Enroll, CompleteEnrollment,
    DeleteDevice, RegenerateRecoveryCodes, the verifications) takes this lock first, so
    they apply one at a time per user.
    """
    await lock_for_verification(conn, env, user, now=now)


async def lock_for_verification(
    conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime
) -> AttemptState:
    """Lock the user's row until the transaction ends and return the attempt state.

    Verifications of one user therefore run one at a time, so the failure count and
    the replay checks they make are exact under any concurrency.
    """
    row = await conn.fetchrow(_LOCK.text, *_LOCK.args({"env": env, "user": user, "now": now}))
    if row is None:  # INSERT ... ON CONFLICT DO UPDATE always returns the row
        raise LookupError("mfa_users upsert returned no row")
    return AttemptState(row["failed_attempts"], row["locked_until"])


async def reset_failures(conn: Connection, env: EnvironmentId, user: UserId) -> None:
    """A success (an enrollment completed): the failure count starts again."""
    await conn.execute(_RESET_FAILURES.text, *_RESET_FAILURES.args({"env": env, "user": user}))


async def locked_until(conn: Connection, env: EnvironmentId, user: UserId) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT locked_until FROM mfa_users WHERE environment_id = $1 AND user_id = $2",
        env,
        user,
    )
    return value


async def webauthn_user_handle(
    conn: Connection, env: EnvironmentId, user: UserId, *, new_handle: bytes
) -> bytes:
    """The user's WebAuthn user handle, set to ``new_handle`` the first time."""
    handle: bytes = await conn.fetchval(
        """
        UPDATE mfa_users SET webauthn_user_handle = COALESCE(webauthn_user_handle, $3)
        WHERE environment_id = $1 AND user_id = $2
        RETURNING webauthn_user_handle
        """,
        env,
        user,
        new_handle,
    )
    return handle
