"""The pool's database settings for a highly available PostgreSQL (docs/operations.md).

A write refused as read-only means the connection reached a standby (a node that is not,
or no longer, the primary during a failover): UNAVAILABLE, and the connection is dropped
so the next call connects again, to the new primary. ``statement_cache_size=0``
(``MFA_DB_STATEMENT_CACHE``, behind pgbouncer in transaction mode) leaves no named
prepared statement on a server connection, and the settings listener connects where
``MFA_DB_LISTEN_URL`` says.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from helpers import TEST_KEY_RING, eventually
from mfa_service import app as app_module
from mfa_service.errors import DatabaseUnavailable
from mfa_service.store.db import NOTHING_CHANGED, OUTCOME_UNKNOWN, Database, create_pool


async def test_a_write_refused_as_read_only_is_unavailable_and_drops_the_connection(
    database_url: str,
) -> None:
    db = Database(await create_pool(database_url, size=1))
    try:
        async with db.transaction() as conn:
            first_backend = await conn.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(DatabaseUnavailable):
            async with db.transaction() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == first_backend
                # What a standby answers to any write (SQLSTATE 25006).
                await conn.execute("SET TRANSACTION READ ONLY")
                await conn.execute("UPDATE schema_migrations SET name = name WHERE false")
        async with db.transaction() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != first_backend
    finally:
        await db.close()


@pytest.mark.parametrize(("cache_size", "named"), [(100, True), (0, False)])
async def test_statement_cache_size(database_url: str, cache_size: int, named: bool) -> None:
    db = Database(await create_pool(database_url, size=1, statement_cache_size=cache_size))
    try:
        async with db.connection() as conn:
            for _ in range(2):
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
            prepared = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
        assert (prepared > 0) is named, prepared
    finally:
        await db.close()


async def test_the_settings_listener_connects_to_its_own_url(database_url: str) -> None:
    parts = urlsplit(database_url)
    query = "&".join(filter(None, [parts.query, "application_name=mfa-settings-listener"]))
    listen_url = urlunsplit(parts._replace(query=query))
    application = await app_module.start(
        database_url=database_url, key_ring=TEST_KEY_RING, pool_size=1, listen_url=listen_url
    )
    try:
        conn = await asyncpg.connect(database_url)
        try:

            async def listener_sessions() -> list[str]:
                return [
                    r["query"]
                    for r in await conn.fetch(
                        "SELECT query FROM pg_stat_activity WHERE application_name = $1",
                        "mfa-settings-listener",
                    )
                ]

            sessions = await eventually(listener_sessions)
            assert len(sessions) == 1, sessions
            assert sessions[0].startswith("LISTEN"), sessions
        finally:
            await conn.close()
    finally:
        await application.stop()


async def _kill_backend(database_url: str, pid: int) -> None:
    """End one server process, as a crash or a failover does, and wait until it is gone."""
    admin = await asyncpg.connect(database_url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await admin.close()


@pytest.mark.parametrize(
    ("lost", "message"),
    [("before commit", NOTHING_CHANGED), ("at commit", OUTCOME_UNKNOWN)],
)
async def test_a_lost_connection_says_what_the_caller_may_assume(
    database_url: str, lost: str, message: str
) -> None:
    """Lost before COMMIT, the transaction was rolled back; lost at COMMIT, it may not."""
    db = Database(await create_pool(database_url, size=1))
    try:
        with pytest.raises(DatabaseUnavailable) as refused:
            async with db.transaction() as conn:
                await conn.execute("CREATE TEMP TABLE doomed (x int)")
                await _kill_backend(database_url, await conn.fetchval("SELECT pg_backend_pid()"))
                if lost == "before commit":
                    await conn.execute("INSERT INTO doomed VALUES (1)")
        assert refused.value.message == message
        # And the service goes on, on a new connection.
        async with db.transaction() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await db.close()
