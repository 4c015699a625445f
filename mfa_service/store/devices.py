"""Verified devices (factors) of users."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from mfa_service.domain.devices import Device
from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection

_COLUMNS = """id, environment_id, user_id, method, alias, is_default, created_at,
              last_used_at, totp_secret, totp_last_step"""


def _device(row: Any) -> Device:
    return Device(
        id=row["id"],
        environment_id=EnvironmentId(row["environment_id"]),
        user_id=UserId(row["user_id"]),
        method=Method[row["method"]],
        alias=row["alias"],
        is_default=row["is_default"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        totp_secret_sealed=row["totp_secret"],
        totp_last_step=row["totp_last_step"],
    )


async def list_for_user(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    *,
    methods: Iterable[Method] | None = None,
) -> list[Device]:
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM devices
        WHERE environment_id = $1 AND user_id = $2
          AND ($3::text[] IS NULL OR method = ANY($3::text[]))
        ORDER BY created_at, id
        """,  # noqa: S608 (a constant column list)
        env,
        user,
        None if methods is None else [m.name for m in methods],
    )
    return [_device(r) for r in rows]


async def count(conn: Connection, env: EnvironmentId, user: UserId, method: Method) -> int:
    value: int = await conn.fetchval(
        "SELECT count(*) FROM devices WHERE environment_id = $1 AND user_id = $2 AND method = $3",
        env,
        user,
        method.name,
    )
    return value


async def insert_totp(
    conn: Connection,
    *,
    device_id: UUID,
    env: EnvironmentId,
    user: UserId,
    alias: str,
    sealed_secret: bytes,
    accepted_step: int,
    now: datetime,
) -> Device:
    """A verified TOTP device; the enrollment's code step counts as already used.

    The first device of a user becomes the default.
    """
    row = await conn.fetchrow(
        f"""
        INSERT INTO devices (id, environment_id, user_id, method, alias, is_default,
                             created_at, last_used_at, totp_secret, totp_last_step)
        VALUES ($1, $2, $3, 'TOTP', $4,
                NOT EXISTS (SELECT 1 FROM devices WHERE environment_id = $2 AND user_id = $3),
                $5, $5, $6, $7)
        RETURNING {_COLUMNS}
        """,  # noqa: S608 (a constant column list)
        device_id,
        env,
        user,
        alias,
        now,
        sealed_secret,
        accepted_step,
    )
    return _device(row)


async def accept_totp_step(conn: Connection, device_id: UUID, step: int, *, now: datetime) -> bool:
    """Record ``step`` as used, unless it is at or before the last accepted step.

    RFC 6238 §5.2 and 800-63B §3.1.4.2: one conditional UPDATE decides, so of any
    number of concurrent uses of a code exactly one wins.
    """
    accepted = await conn.fetchval(
        """
        UPDATE devices SET totp_last_step = $2, last_used_at = $3
        WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)
        RETURNING true
        """,
        device_id,
        step,
        now,
    )
    return bool(accepted)
