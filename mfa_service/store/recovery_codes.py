"""Recovery code rows (salted scrypt hashes) and their acknowledgement flag."""

from __future__ import annotations

from datetime import datetime

from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.domain.recovery import HashedCode
from mfa_service.store.db import Connection


async def replace_set(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    codes: list[HashedCode],
    *,
    now: datetime,
) -> None:
    """A new set; every older code of the user stops working. Pending acknowledgement."""
    await conn.execute(
        "DELETE FROM recovery_codes WHERE environment_id = $1 AND user_id = $2", env, user
    )
    await conn.executemany(
        """
        INSERT INTO recovery_codes (environment_id, user_id, code_id, salt, hash, created_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        [(env, user, c.code_id, c.salt, c.hash, now) for c in codes],
    )
    await conn.execute(
        "UPDATE mfa_users SET recovery_codes_pending_ack = true "
        "WHERE environment_id = $1 AND user_id = $2",
        env,
        user,
    )


async def delete_all(conn: Connection, env: EnvironmentId, user: UserId) -> None:
    await conn.execute(
        "DELETE FROM recovery_codes WHERE environment_id = $1 AND user_id = $2", env, user
    )
    await conn.execute(
        "UPDATE mfa_users SET recovery_codes_pending_ack = false "
        "WHERE environment_id = $1 AND user_id = $2",
        env,
        user,
    )


async def find_unused(
    conn: Connection, env: EnvironmentId, user: UserId, code_id: str
) -> HashedCode | None:
    row = await conn.fetchrow(
        """
        SELECT code_id, salt, hash FROM recovery_codes
        WHERE environment_id = $1 AND user_id = $2 AND code_id = $3 AND used_at IS NULL
        """,
        env,
        user,
        code_id,
    )
    return None if row is None else HashedCode(row["code_id"], row["salt"], row["hash"])


async def mark_used(
    conn: Connection, env: EnvironmentId, user: UserId, code: HashedCode, *, now: datetime
) -> bool:
    """One conditional UPDATE: of concurrent uses of one code, exactly one wins; and only
    the row that was checked (a set regenerated since then has other hashes)."""
    used = await conn.fetchval(
        """
        UPDATE recovery_codes SET used_at = $5
        WHERE environment_id = $1 AND user_id = $2 AND code_id = $3 AND hash = $4
          AND used_at IS NULL
        RETURNING true
        """,
        env,
        user,
        code.code_id,
        code.hash,
        now,
    )
    return bool(used)


async def remaining(conn: Connection, env: EnvironmentId, user: UserId) -> int:
    value: int = await conn.fetchval(
        "SELECT count(*) FROM recovery_codes "
        "WHERE environment_id = $1 AND user_id = $2 AND used_at IS NULL",
        env,
        user,
    )
    return value


async def pending_acknowledgement(conn: Connection, env: EnvironmentId, user: UserId) -> bool:
    pending = await conn.fetchval(
        "SELECT recovery_codes_pending_ack FROM mfa_users "
        "WHERE environment_id = $1 AND user_id = $2",
        env,
        user,
    )
    return bool(pending)


async def acknowledge(conn: Connection, env: EnvironmentId, user: UserId) -> bool:
    acknowledged = await conn.fetchval(
        """
        UPDATE mfa_users SET recovery_codes_pending_ack = false
        WHERE environment_id = $1 AND user_id = $2 AND recovery_codes_pending_ack
        RETURNING true
        """,
        env,
        user,
    )
    return bool(acknowledged)
