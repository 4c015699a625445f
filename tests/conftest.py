"""Fixtures: a real PostgreSQL (embedded unless MFA_TEST_DATABASE_URL is set), a fresh
migrated database per session, clean tables per test, and a real gRPC server.

Environments exist once created (DESIGN §3c). A module names those its tests use with
``pytestmark = pytest.mark.environments(ENV, ...)`` (a test may add its own with the same
marker); the ``app`` fixture creates them with the default settings through
``AdminService.CreateEnvironment``, as an operator would, once the tables are clean.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from helpers import (
    FakeClock,
    create_database,
    create_environments,
    drop_database,
    started_app,
)
from mfa_client import Client
from mfa_service import app as app_module
from mfa_service.services.webhooks import WebhookOptions
from mfa_service.store.db import migrate_url

# The browser fixtures (chromium, browser, page, authenticator) of tests/browser.py.
pytest_plugins = ["browser"]


@pytest.fixture(scope="session")
def database_server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server the tests may create databases on."""
    url = os.environ.get("MFA_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from pgserver.postgres_server import get_server

    pgdata = Path(tempfile.mkdtemp(prefix="mfa-test-pg-"))
    server = get_server(pgdata, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def session_database_url(database_server_url: str) -> Iterator[str]:
    """One migrated database for the whole session; tests clean its tables."""
    url = asyncio.run(create_database(database_server_url))
    asyncio.run(migrate_url(url))
    yield url
    asyncio.run(drop_database(database_server_url, url))


async def _truncate_all(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'schema_migrations'"
        )
        if tables:
            names = ", ".join(f'"{t["tablename"]}"' for t in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def database_url(session_database_url: str) -> str:
    await _truncate_all(session_database_url)
    return session_database_url


@pytest.fixture
async def fresh_database_url(database_server_url: str) -> AsyncIterator[str]:
    """An empty, unmigrated database of its own."""
    url = await create_database(database_server_url)
    yield url
    await drop_database(database_server_url, url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "environments(*ids): environments the app fixture creates for the test"
    )


def marked_environments(request: pytest.FixtureRequest) -> list[str]:
    """The ids of every ``environments`` marker of the test, its class and module."""
    ids = (i for marker in request.node.iter_markers("environments") for i in marker.args)
    return list(dict.fromkeys(ids))


@pytest.fixture
def webhook_options() -> WebhookOptions | None:
    """How the ``app`` fixture's server creates and delivers webhooks (None: as in
    production); tests/test_webhooks.py overrides it."""
    return None


@pytest.fixture
async def app(
    database_url: str,
    clock: FakeClock,
    webhook_options: WebhookOptions | None,
    request: pytest.FixtureRequest,
) -> AsyncIterator[app_module.Application]:
    async with started_app(database_url, clock, webhooks=webhook_options) as application:
        await create_environments(f"127.0.0.1:{application.port}", marked_environments(request))
        yield application


@pytest.fixture
async def client(app: app_module.Application) -> AsyncIterator[Client]:
    async with Client.connect(f"127.0.0.1:{app.port}", insecure=True) as c:
        yield c


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, to look at what the service stored."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()
