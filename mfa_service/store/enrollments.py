"""Pending enrollments: started, not yet proven by a first code or registration."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from mfa_service.domain.devices import Enrollment
from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection


def _enrollment(row: Any) -> Enrollment:
    return Enrollment(
        id=row["id"],
        environment_id=EnvironmentId(row["environment_id"]),
        user_id=UserId(row["user_id"]),
        method=Method[row["method"]],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        totp_secret_sealed=row["totp_secret"],
        webauthn_challenge=row["webauthn_challenge"],
        linked=row["linked"],
    )


async def replace(conn: Connection, enrollment: Enrollment) -> None:
    """Store ``enrollment``, dropping the user's other pending ones of that method.

    The caller holds the user's row lock (``users.lock``), so of concurrent Enroll calls
    for one user and method exactly one pending enrollment is left.
    """
    await conn.execute(
        "DELETE FROM enrollments WHERE environment_id = $1 AND user_id = $2 AND method = $3",
        enrollment.environment_id,
        enrollment.user_id,
        enrollment.method.name,
    )
    await conn.execute(
        """
        INSERT INTO enrollments (id, environment_id, user_id, method, totp_secret,
                                 created_at, expires_at, webauthn_challenge, linked)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        """,
        enrollment.id,
        enrollment.environment_id,
        enrollment.user_id,
        enrollment.method.name,
        enrollment.totp_secret_sealed,
        enrollment.created_at,
        enrollment.expires_at,
        enrollment.webauthn_challenge,
        enrollment.linked,
    )


async def delete_for_user(
    conn: Connection, env: EnvironmentId, user: UserId, *, keep: UUID | None = None
) -> None:
    """End the user's pending enrollments (but ``keep``): a first factor, or a factor
    removed, changes what they were started under."""
    await conn.execute(
        """
        DELETE FROM enrollments
        WHERE environment_id = $1 AND user_id = $2 AND id IS DISTINCT FROM $3
        """,
        env,
        user,
        keep,
    )


async def get_live(
    conn: Connection, enrollment_id: UUID, env: EnvironmentId, user: UserId, *, now: datetime
) -> Enrollment | None:
    """The user's unexpired pending enrollment with this id (another user's is invisible)."""
    row = await conn.fetchrow(
        """
        SELECT * FROM enrollments
        WHERE id = $1 AND environment_id = $2 AND user_id = $3 AND expires_at > $4
        """,
        enrollment_id,
        env,
        user,
        now,
    )
    return None if row is None else _enrollment(row)


async def first_factor_candidate(
    conn: Connection, enrollment_id: UUID, env: EnvironmentId, user: UserId, *, now: datetime
) -> Enrollment | None:
    """The live enrollment if completing it would likely add the user's first factor:
    the user has no device and is not locked out (a read: nothing is locked)."""
    row = await conn.fetchrow(
        """
        SELECT e.* FROM enrollments e
        WHERE e.id = $1 AND e.environment_id = $2 AND e.user_id = $3 AND e.expires_at > $4
          AND NOT EXISTS (SELECT 1 FROM devices d
                          WHERE d.environment_id = $2 AND d.user_id = $3)
          AND NOT EXISTS (SELECT 1 FROM mfa_users u
                          WHERE u.environment_id = $2 AND u.user_id = $3
                            AND u.locked_until > $4)
        """,
        enrollment_id,
        env,
        user,
        now,
    )
    return None if row is None else _enrollment(row)


async def delete(conn: Connection, enrollment_id: UUID) -> None:
    await conn.execute("DELETE FROM enrollments WHERE id = $1", enrollment_id)


async def take_live(
    conn: Connection, enrollment_id: UUID, env: EnvironmentId, user: UserId, *, now: datetime
) -> Enrollment | None:
    """Remove and return the user's unexpired enrollment: its challenge is single use,
    so a failed registration needs a new Enroll (WebAuthn §13.4.3)."""
    row = await conn.fetchrow(
        """
        DELETE FROM enrollments
        WHERE id = $1 AND environment_id = $2 AND user_id = $3 AND expires_at > $4
        RETURNING *
        """,
        enrollment_id,
        env,
        user,
        now,
    )
    return None if row is None else _enrollment(row)
