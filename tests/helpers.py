"""Test support: a controllable clock, database helpers, the grpcurl binary, and the two
ways a test waits for an outcome: ``refused`` (this exact refusal) and ``eventually``
(this condition, within a budget)."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast, overload
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from mfa_client import Client, MfaServiceError
from mfa_service import app as app_module
from mfa_service.crypto import KeyRing
from mfa_service.services.webhooks import WebhookOptions

T = TypeVar("T")

TEST_KEY_RING = KeyRing.parse(KeyRing.generate_entry("test1"))

# Webhooks as in development mode (http to loopback receivers), with a dispatcher that
# looks for new events every 50 ms.
LOOPBACK_WEBHOOKS = WebhookOptions(
    allow_loopback_http=True,
    timeout=timedelta(seconds=5),
    poll_interval=timedelta(milliseconds=50),
)


class FakeClock:
    """The only fake in the suite: time that moves when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def create_database(server_url: str) -> str:
    """A new empty database on the server of ``server_url``; returns its URL."""
    name = f"mfa_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def venv_binary(name: str) -> str:
    """A console script installed beside the running interpreter (e.g. grpcurl)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError(f"{name} is not installed in the virtual environment")
    return found


async def create_environments(target: str, ids: list[str]) -> None:
    """Create each environment with the default settings through the public API."""
    async with Client.connect(target, insecure=True) as operator:
        # The server was started just before; a first connection refused once in about
        # a thousand starts on a loaded machine, so the operator waits for the channel.
        await asyncio.wait_for(operator.channel.channel_ready(), timeout=10)
        for environment_id in ids:
            await operator.admin.create_environment(environment_id)


async def refused(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> MfaServiceError:
    """Await ``call``, which must fail with exactly this status and ``ErrorInfo`` reason.

    Any other outcome fails the test: a success, another status, or the right status for
    another reason (a refusal for a typo must not pass for the refusal a test means).
    Returns the error for further checks (field violations, retry-after, message).
    """
    with pytest.raises(MfaServiceError) as caught:
        await call
    error = caught.value
    assert (error.code, error.reason) == (code, reason), (
        f"expected {code.name} {reason}, got {error.code.name} {error.reason}: {error.message}"
    )
    return error


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    within: float = ...,
    interval: float = ...,
    what: str | Callable[[], str] = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    within: float = ...,
    interval: float = ...,
    what: str | Callable[[], str] = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    *,
    within: float = 10.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "",
) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    ``check`` may be sync or async, and may itself fail the test early (a server process
    that exited will never answer). Fails the test, naming what was awaited (``what``, a
    text or a function that makes one then, such as a server's output so far, else the
    check's name) and the last value seen, if ``within`` seconds pass first. For
    conditions that become true on their own, never for measuring a duration: the budget
    is generous because a loaded machine is slow, not because the wait may be long.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        value = cast(T, await result if inspect.isawaitable(result) else result)
        if value:
            return value
        if time.monotonic() >= deadline:
            name = (what() if callable(what) else what) or getattr(check, "__name__", "?")
            pytest.fail(f"not within {within:g} s: {name} (last value {value!r})")
        await asyncio.sleep(interval)


async def last_audit_type(db: asyncpg.Connection, user_id: str) -> str | None:
    """The type of the user's latest audit event: tells apart refusals that answer alike
    (a reused TOTP code and a wrong one are both VERIFICATION_FAILED to the caller)."""
    found: str | None = await db.fetchval(
        "SELECT type FROM audit_events WHERE user_id = $1 ORDER BY id DESC LIMIT 1", user_id
    )
    return found


@asynccontextmanager
async def started_app(
    database_url: str, clock: FakeClock, **options: Any
) -> AsyncIterator[app_module.Application]:
    """The service on ``database_url`` as the tests run it (their key ring, the fake
    clock, a small pool; ``options``: more of ``app.start``'s), stopped afterwards."""
    application = await app_module.start(
        database_url=database_url, key_ring=TEST_KEY_RING, clock=clock, pool_size=4, **options
    )
    try:
        yield application
    finally:
        await application.stop()


@asynccontextmanager
async def serving_handlers(
    interceptor: grpc.aio.ServerInterceptor[Any, Any],
    service: str,
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]],
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a test-only grpc.aio server: ``interceptor`` (a ``CallInterceptor``)
    in front of ``handlers``, the methods of ``service``. Handlers made without
    (de)serializers take and answer raw bytes."""
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)
