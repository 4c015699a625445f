"""The keys that sign action tokens (private parts sealed by the key ring)."""

from __future__ import annotations

from datetime import datetime

from mfa_service.domain.tokens import SealedSigningKey
from mfa_service.store.db import Connection

# Serializes "create the first key" and rotations across replicas.
SIGNING_KEY_LOCK_ID = 0x6D666B79
# Every replica LISTENs on it (store.notifications) and reloads its keys when told.
KEYS_CHANNEL = "mfa_signing_keys_changed"


async def lock(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", SIGNING_KEY_LOCK_ID)


async def list_usable(conn: Connection, *, retired_after: datetime) -> list[SealedSigningKey]:
    """The active key and the retired keys that may still have live tokens, newest first."""
    rows = await conn.fetch(
        """
        SELECT kid, algorithm, private_key AS sealed_private_key, created_at, retired_at
        FROM signing_keys
        WHERE retired_at IS NULL OR retired_at > $1
        ORDER BY created_at DESC
        """,
        retired_after,
    )
    return [SealedSigningKey(**dict(row)) for row in rows]


async def insert_active(
    conn: Connection, *, kid: str, algorithm: str, sealed_private_key: bytes, now: datetime
) -> None:
    """Retire the signing key, if any, and make ``kid`` the one that signs; the replicas
    are told when the surrounding transaction commits."""
    await conn.execute("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL", now)
    await conn.execute(
        "INSERT INTO signing_keys (kid, algorithm, private_key, created_at) "
        "VALUES ($1, $2, $3, $4)",
        kid,
        algorithm,
        sealed_private_key,
        now,
    )
    await conn.execute("SELECT pg_notify($1, $2)", KEYS_CHANNEL, kid)
