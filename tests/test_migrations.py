"""Migrations: each applied once, recorded with its checksum, safe under concurrent starts."""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg
import pytest

from helpers import venv_binary
from mfa_service.store.db import MigrationError, load_migrations, migrate, migrate_url

TABLES = ("schema_migrations", "environment_settings", "audit_events")


async def _recorded(url: str) -> list[tuple[int, str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
    finally:
        await conn.close()
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


async def _missing_tables(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [t for t in TABLES if await conn.fetchval("SELECT to_regclass($1)", t) is None]
    finally:
        await conn.close()


def _expected() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in load_migrations()]


def test_migration_files_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions, "no migration files found in mfa_service/migrations"
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_applies_each_migration_once_and_records_it(
    fresh_database_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        applied = await migrate(conn)
        assert applied == [m.version for m in load_migrations()]
        first = await conn.fetch("SELECT version, applied_at FROM schema_migrations")

        assert await migrate(conn) == []
        again = await conn.fetch("SELECT version, applied_at FROM schema_migrations")
    finally:
        await conn.close()

    assert await _recorded(fresh_database_url) == _expected()
    assert all(len(checksum) == 64 for _, _, checksum in _expected())
    assert again == first  # nothing re-applied, nothing re-recorded
    assert await _missing_tables(fresh_database_url) == []


async def test_concurrent_migrations_apply_everything_exactly_once(
    fresh_database_url: str,
) -> None:
    # Four replicas starting at once, each with its own connection.
    results = await asyncio.gather(*(migrate_url(fresh_database_url) for _ in range(4)))

    all_versions = [m.version for m in load_migrations()]
    assert sorted(results, key=len) == [[], [], [], all_versions]
    assert await _recorded(fresh_database_url) == _expected()
    assert await _missing_tables(fresh_database_url) == []


async def test_changed_checksum_of_an_applied_migration_is_refused(
    fresh_database_url: str,
) -> None:
    await migrate_url(fresh_database_url)
    first = load_migrations()[0]
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(
            "UPDATE schema_migrations SET checksum = $1 WHERE version = $2",
            "0" * 64,
            first.version,
        )
        with pytest.raises(MigrationError, match=f"{first.version:04d}_{first.name}"):
            await migrate(conn)
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate_url(fresh_database_url)


async def test_migrate_command_applies_then_finds_nothing_to_do(fresh_database_url: str) -> None:
    # Only DATABASE_URL: a migration job needs no encryption keys and no TLS settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFA_")}
    env["DATABASE_URL"] = fresh_database_url
    command = [venv_binary("mfa-service"), "migrate"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stderr
    assert f"applied {len(load_migrations())} migration(s)" in first.stdout

    second = await asyncio.to_thread(run)
    assert second.returncode == 0, second.stderr
    assert "database is up to date" in second.stdout

    assert await _recorded(fresh_database_url) == _expected()
