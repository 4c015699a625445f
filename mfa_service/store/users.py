"""Per-user MFA state: the row every verification locks, and the attempt counter."""

from __future__ import annotations

from datetime import datetime, timedelta

from mfa_service.domain.lockout import AttemptState
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.store.db import Connection


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


# $1 environment, $2 user, $3 now: the one statement that locks a user's row (also the
# first part of verifications.begin). ``ON CONFLICT DO UPDATE`` locks the row it finds,
# waiting for a concurrent insert to commit (``DO NOTHING`` would lock nothing); the
# no-op update changes nothing, and an ended lockout neither (the count goes on).
LOCK_FOR_VERIFICATION = """
    INSERT INTO mfa_users (environment_id, user_id, created_at) VALUES ($1, $2, $3)
    ON CONFLICT (environment_id, user_id) DO UPDATE SET
        failed_attempts = mfa_users.failed_attempts
    RETURNING failed_attempts, locked_until
"""


async def lock(conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime) -> None:
    """Create the user's row if it is missing and lock it until the transaction ends.

    Every change to a user's factors and recovery codes (Enroll, CompleteEnrollment,
    DeleteDevice, RegenerateRecoveryCodes, the verifications) takes this lock first, so
    they apply one at a time per user.
    """
    await conn.execute(LOCK_FOR_VERIFICATION, env, user, now)


async def lock_for_verification(
    conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime
) -> AttemptState:
    """Lock the user's row until the transaction ends and return the attempt state.

    Verifications of one user therefore run one at a time, so the failure count and
    the replay checks they make are exact under any concurrency.
    """
    row = await conn.fetchrow(LOCK_FOR_VERIFICATION, env, user, now)
    if row is None:  # INSERT ... ON CONFLICT DO UPDATE always returns the row
        raise LookupError("mfa_users upsert returned no row")
    return AttemptState(row["failed_attempts"], row["locked_until"])


async def record_failure(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    *,
    now: datetime,
    max_failed_attempts: int,
    lockout_duration: timedelta,
) -> AttemptState:
    """Count one consecutive failure; the lockout rule (``mfa_lockout_duration``,
    domain.lockout) decides whether it starts a lockout."""
    row = await conn.fetchrow(
        """
        UPDATE mfa_users SET
            failed_attempts = failed_attempts + 1,
            locked_until = $4::timestamptz
                           + mfa_lockout_duration(failed_attempts + 1, $3, $5)
        WHERE environment_id = $1 AND user_id = $2
        RETURNING failed_attempts, locked_until
        """,
        env,
        user,
        max_failed_attempts,
        now,
        lockout_duration,
    )
    if row is None:
        raise LookupError("record_failure before lock_for_verification")
    return AttemptState(row["failed_attempts"], row["locked_until"])


async def record_success(conn: Connection, env: EnvironmentId, user: UserId) -> None:
    """NIST SP 800-63B §3.2.2: the count resets on success only."""
    await conn.execute(
        "UPDATE mfa_users SET failed_attempts = 0, locked_until = NULL "
        "WHERE environment_id = $1 AND user_id = $2 "
        "AND (failed_attempts <> 0 OR locked_until IS NOT NULL)",
        env,
        user,
    )


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
