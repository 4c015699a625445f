"""Environment settings rows: an environment exists once it has one (DESIGN §3c)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mfa_service.domain.model import EnvironmentId
from mfa_service.domain.settings import Settings, from_document, to_document
from mfa_service.store.db import Connection

_GET = """
    SELECT environment_id, document, revision, updated_at FROM environment_settings
     WHERE environment_id = $1
"""
_GET_FOR_UPDATE = _GET + " FOR UPDATE"


def _settings(row: Any) -> Settings:
    return from_document(
        row["environment_id"],
        row["document"],
        revision=row["revision"],
        update_time=row["updated_at"],
    )


async def get(
    conn: Connection, environment_id: EnvironmentId, *, for_update: bool = False
) -> Settings | None:
    """The stored settings, or None if the environment was never created.

    ``for_update``: lock the row until the transaction ends (one writer at a time).
    """
    row = await conn.fetchrow(_GET_FOR_UPDATE if for_update else _GET, environment_id)
    return None if row is None else _settings(row)


async def insert(conn: Connection, settings: Settings, *, now: datetime) -> Settings | None:
    """Create the environment with ``settings`` as revision 1; None if it exists already.

    Of concurrent inserts of one id, the first to commit wins; the others wait for it on
    the primary key and then find the row there.
    """
    row = await conn.fetchrow(
        """
        INSERT INTO environment_settings (environment_id, document, revision, updated_at)
        VALUES ($1, $2, 1, $3)
        ON CONFLICT (environment_id) DO NOTHING
        RETURNING environment_id, document, revision, updated_at
        """,
        settings.environment_id,
        to_document(settings),
        now,
    )
    return None if row is None else _settings(row)


async def update(conn: Connection, settings: Settings, *, now: datetime) -> Settings:
    """Store ``settings`` as the next revision of an existing environment (locked by
    ``get(for_update=True)`` in this transaction)."""
    row = await conn.fetchrow(
        """
        UPDATE environment_settings
           SET document = $2, revision = revision + 1, updated_at = $3
         WHERE environment_id = $1
        RETURNING environment_id, document, revision, updated_at
        """,
        settings.environment_id,
        to_document(settings),
        now,
    )
    if row is None:  # the caller holds the row lock; environments are never deleted
        raise LookupError(f"environment {settings.environment_id!r} vanished")
    return _settings(row)


async def page(conn: Connection, *, after: EnvironmentId | None, limit: int) -> list[Settings]:
    """Up to ``limit`` environments in id order (byte order, as ``COLLATE "C"``),
    starting after ``after``."""
    rows = await conn.fetch(
        """
        SELECT environment_id, document, revision, updated_at FROM environment_settings
         WHERE $1::text IS NULL OR environment_id COLLATE "C" > $1::text COLLATE "C"
         ORDER BY environment_id COLLATE "C"
         LIMIT $2
        """,
        after,
        limit,
    )
    return [_settings(row) for row in rows]
