"""Verified devices (factors) of users."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from mfa_service.domain.devices import Device, Enrollment, PasskeyCredential
from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection
from mfa_service.store.sql import named

COLUMNS = """id, environment_id, user_id, method, alias, is_default, created_at,
              last_used_at, totp_secret, totp_last_step, passkey_credential_id,
              passkey_public_key, passkey_sign_count, passkey_transports, passkey_aaguid,
              passkey_backup_eligible, passkey_backed_up"""


def device_from_row(row: Any) -> Device:
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
        passkey=None
        if row["passkey_credential_id"] is None
        else PasskeyCredential(
            credential_id=row["passkey_credential_id"],
            public_key=row["passkey_public_key"],
            sign_count=row["passkey_sign_count"],
            transports=tuple(row["passkey_transports"] or ()),
            aaguid=row["passkey_aaguid"] or "",
            backup_eligible=bool(row["passkey_backup_eligible"]),
            backed_up=bool(row["passkey_backed_up"]),
        ),
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
        SELECT {COLUMNS} FROM devices
        WHERE environment_id = $1 AND user_id = $2
          AND ($3::text[] IS NULL OR method = ANY($3::text[]))
        ORDER BY created_at, id
        """,  # noqa: S608 (a constant column list)
        env,
        user,
        None if methods is None else [m.name for m in methods],
    )
    return [device_from_row(r) for r in rows]


async def count(conn: Connection, env: EnvironmentId, user: UserId, method: Method) -> int:
    value: int = await conn.fetchval(
        "SELECT count(*) FROM devices WHERE environment_id = $1 AND user_id = $2 AND method = $3",
        env,
        user,
        method.name,
    )
    return value


# One INSERT for both kinds (the other kind's columns stay NULL): the first device of a
# user becomes the default; a passkey's credential id is unique across all users and
# environments, so a taken one inserts nothing.
_INSERT = named(f"""
    INSERT INTO devices (id, environment_id, user_id, method, alias, is_default,
                         created_at, last_used_at, totp_secret, totp_last_step,
                         passkey_credential_id, passkey_public_key, passkey_sign_count,
                         passkey_transports, passkey_aaguid, passkey_backup_eligible,
                         passkey_backed_up)
    VALUES (:id, :env, :user, :method, :alias,
            NOT EXISTS (SELECT 1 FROM devices WHERE environment_id = :env AND user_id = :user),
            :now, :last_used_at, :totp_secret, :totp_last_step,
            :credential_id, :public_key, :sign_count,
            :transports, :aaguid, :backup_eligible,
            :backed_up)
    ON CONFLICT (passkey_credential_id) WHERE passkey_credential_id IS NOT NULL DO NOTHING
    RETURNING {COLUMNS}
""")  # noqa: S608 (a constant column list)
_NO_TOTP = {"totp_secret": None, "totp_last_step": None}
_NO_PASSKEY = dict.fromkeys(
    (
        "credential_id",
        "public_key",
        "sign_count",
        "transports",
        "aaguid",
        "backup_eligible",
        "backed_up",
    )
)


async def _insert(
    conn: Connection, enrollment: Enrollment, alias: str, now: datetime, **kind: Any
) -> Device | None:
    values = {
        "id": enrollment.id,
        "env": enrollment.environment_id,
        "user": enrollment.user_id,
        "method": enrollment.method.name,
        "alias": alias,
        "now": now,
        **kind,
    }
    row = await conn.fetchrow(_INSERT.text, *_INSERT.args(values))
    return None if row is None else device_from_row(row)


async def insert_totp(
    conn: Connection, enrollment: Enrollment, *, alias: str, accepted_step: int, now: datetime
) -> Device:
    """The verified TOTP device ``enrollment`` becomes (its id and sealed secret), the
    user's default if it is their first; the enrollment's code step counts as already
    used, and as the device's first use."""
    device = await _insert(
        conn,
        enrollment,
        alias,
        now,
        last_used_at=now,
        totp_secret=enrollment.totp_secret_sealed,
        totp_last_step=accepted_step,
        **_NO_PASSKEY,
    )
    if device is None:  # only a passkey's credential id can conflict
        raise RuntimeError("a TOTP device insert conflicted")
    return device


async def passkey_credential_taken(conn: Connection, credential_id: bytes) -> bool:
    taken = await conn.fetchval(
        "SELECT true FROM devices WHERE passkey_credential_id = $1", credential_id
    )
    return bool(taken)


async def insert_passkey(
    conn: Connection,
    enrollment: Enrollment,
    *,
    alias: str,
    credential: PasskeyCredential,
    now: datetime,
) -> Device | None:
    """The verified passkey ``enrollment`` becomes, the user's default if it is their
    first, or None if the credential id is taken (unique across all users and
    environments)."""
    return await _insert(
        conn,
        enrollment,
        alias,
        now,
        last_used_at=None,
        credential_id=credential.credential_id,
        public_key=credential.public_key,
        sign_count=credential.sign_count,
        transports=list(credential.transports),
        aaguid=credential.aaguid,
        backup_eligible=credential.backup_eligible,
        backed_up=credential.backed_up,
        **_NO_TOTP,
    )


async def update(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    device_id: UUID,
    *,
    alias: str | None,
    make_default: bool,
) -> Device | None:
    """Rename and/or make default one of the user's devices (None if it is not theirs)."""
    if make_default:
        await conn.execute(
            "UPDATE devices SET is_default = (id = $3) "
            "WHERE environment_id = $1 AND user_id = $2 "
            "AND EXISTS (SELECT 1 FROM devices WHERE id = $3 AND environment_id = $1 "
            "AND user_id = $2)",
            env,
            user,
            device_id,
        )
    row = await conn.fetchrow(
        f"""
        UPDATE devices SET alias = COALESCE($4, alias)
        WHERE id = $3 AND environment_id = $1 AND user_id = $2
        RETURNING {COLUMNS}
        """,  # noqa: S608 (a constant column list)
        env,
        user,
        device_id,
        alias,
    )
    return None if row is None else device_from_row(row)


async def delete(conn: Connection, device_id: UUID) -> None:
    await conn.execute("DELETE FROM devices WHERE id = $1", device_id)


async def make_oldest_default(conn: Connection, env: EnvironmentId, user: UserId) -> None:
    await conn.execute(
        """
        UPDATE devices SET is_default = true
        WHERE id = (SELECT id FROM devices WHERE environment_id = $1 AND user_id = $2
                    ORDER BY created_at, id LIMIT 1)
        """,
        env,
        user,
    )
