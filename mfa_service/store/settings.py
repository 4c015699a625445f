"""Environment settings rows."""

from __future__ import annotations

from datetime import datetime

from mfa_service.domain.model import EnvironmentId
from mfa_service.domain.settings import Settings, from_document, to_document
from mfa_service.store.db import Connection


async def get(conn: Connection, environment_id: EnvironmentId) -> Settings | None:
    """The stored settings, or None if the environment was never configured."""
    row = await conn.fetchrow(
        "SELECT document, revision, updated_at FROM environment_settings WHERE environment_id = $1",
        environment_id,
    )
    if row is None:
        return None
    return from_document(
        environment_id, row["document"], revision=row["revision"], update_time=row["updated_at"]
    )


async def lock_environment(conn: Connection, environment_id: EnvironmentId) -> None:
    """Serialize the writers of one environment's settings until the transaction ends.

    An advisory lock rather than ``SELECT ... FOR UPDATE``: it also covers an
    environment that has no row yet, where two first updates would otherwise both
    start from the defaults and one would be lost.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", environment_id)


async def save(conn: Connection, settings: Settings, *, now: datetime) -> Settings:
    """Store ``settings`` as the next revision; returns it with revision and time set."""
    row = await conn.fetchrow(
        """
        INSERT INTO environment_settings (environment_id, document, revision, updated_at)
        VALUES ($1, $2, 1, $3)
        ON CONFLICT (environment_id) DO UPDATE
            SET document = EXCLUDED.document,
                revision = environment_settings.revision + 1,
                updated_at = EXCLUDED.updated_at
        RETURNING revision, updated_at
        """,
        settings.environment_id,
        to_document(settings),
        now,
    )
    if row is None:  # INSERT ... RETURNING always yields a row
        raise LookupError("environment_settings upsert returned no row")
    return from_document(
        settings.environment_id,
        to_document(settings),
        revision=row["revision"],
        update_time=row["updated_at"],
    )
