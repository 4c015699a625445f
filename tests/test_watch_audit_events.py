"""AdminService.WatchAuditEvents (DESIGN §3f): every event after a cursor in commit order,
then each new one as it commits; a client that resumes from its last cursor misses
nothing and sees nothing twice, across a server restart too. A real server and a real
PostgreSQL; events written concurrently by several writers, one of them a transaction
that stays open while later ones commit."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest
from test_process import serve

from helpers import TEST_KEY_RING, FakeClock, create_environments, eventually, refused, started_app
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import admin_service_pb2_grpc as admin_grpc
from mfa.v1 import types_pb2
from mfa_client import Client
from mfa_service import app as app_module
from mfa_service.crypto import KeyRing
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.services import page_tokens
from mfa_service.services.audit_stream import PAGE_SIZE
from mfa_service.store import audit as audit_store
from mfa_service.store import audit_stream
from mfa_service.store.audit_stream import START

ENV = "env-watch"
OTHER_ENV = "env-watch-other"
pytestmark = pytest.mark.environments(ENV, OTHER_ENV)
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
INVALID_CURSOR = (grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_ARGUMENT")
# Longer than any test waits: with it, only a notification can deliver an event in time.
NEVER = 3600.0
# Waits for what arrives on its own (eventually's budget): generous on a loaded machine.
WITHIN = 15.0

Watched = tuple[str, str]  # (event id, cursor)


def event(user: str, env: str = ENV, *, details: dict[str, str] | None = None) -> AuditEvent:
    return AuditEvent(
        AuditEventType.VERIFICATION_FAILED,
        env,
        NOW,
        CallContext("test-writer", "r"),
        user_id=user,
        details=details or {},
    )


async def commit_order(db: asyncpg.Connection, env: str = ENV) -> list[str]:
    """Every event id of ``env`` in commit order, as the store reads it."""
    return [e.event_id for _, e in await audit_stream.after(db, env, START, limit=100_000)]


def started(
    database_url: str, clock: FakeClock, *, wake_interval: float = NEVER
) -> AbstractAsyncContextManager[app_module.Application]:
    return started_app(database_url, clock, audit_wake_interval_seconds=wake_interval)


@asynccontextmanager
async def connected(application: app_module.Application) -> AsyncIterator[Client]:
    async with Client.connect(f"127.0.0.1:{application.port}", insecure=True) as client:
        yield client


class Reader:
    """One WatchAuditEvents stream read in the background into ``received``."""

    def __init__(self, client: Client, env: str = ENV, after_cursor: str = "") -> None:
        self.received: list[Watched] = []
        self._stream = client.admin.watch_audit_events(env, after_cursor)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self._stream:
            assert response.event.environment_id
            self.received.append((response.event.event_id, response.cursor))

    def has(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.received) >= count

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.aclose()


async def writers(database_url: str, *, count: int, per_writer: int) -> None:
    """``count`` connections writing ``per_writer`` events each at once, one or two per
    transaction, while a transaction opened first stays open until they are half done:
    events commit out of the order their ids and transaction ids were taken in."""
    connections = [await asyncpg.connect(database_url) for _ in range(count + 1)]
    held, *others = connections
    halfway = asyncio.Event()
    try:
        late = held.transaction()
        await late.start()
        await audit_store.append(held, event("held-first"))

        async def write(n: int, conn: asyncpg.Connection) -> None:
            rng = random.Random(n)
            i = 0
            while i < per_writer:
                batch = min(rng.choice((1, 2)), per_writer - i)
                async with conn.transaction():
                    await audit_store.append_many(
                        conn, [event(f"w{n}-{i + k}") for k in range(batch)]
                    )
                i += batch
                if n == 0 and i >= per_writer // 2:
                    halfway.set()
                await asyncio.sleep(0)

        async def release() -> None:
            await halfway.wait()
            await late.commit()

        await asyncio.gather(release(), *(write(n, c) for n, c in enumerate(others)))
    finally:
        for conn in connections:
            await conn.close()


# --- resuming from a cursor ------------------------------------------------------------


async def test_a_client_that_resumes_from_its_last_cursor_misses_nothing_and_sees_nothing_twice(
    app: app_module.Application, client: Client, database_url: str, db: asyncpg.Connection
) -> None:
    first = Reader(client)
    writing = asyncio.create_task(writers(database_url, count=3, per_writer=60))
    await eventually(first.has(40), within=WITHIN, what="40 events on the first stream")
    await first.close()  # disconnects after event N, with writers still writing
    before = first.received
    second = Reader(client, after_cursor=before[-1][1])
    await writing
    expected = await commit_order(db)
    assert len(expected) == 1 + 1 + 3 * 60  # ENVIRONMENT_CREATED, held-first, the writers'
    await eventually(second.has(len(expected) - len(before)), within=WITHIN)
    await second.close()
    # Exactly the events after N, in commit order: no gap, no duplicate.
    assert [i for i, _ in before + second.received] == expected
    # The cursors follow commit order too (each resumes right after its event).
    assert [c for _, c in before + second.received] == [
        page_tokens.encode(f"{c.xid}.{c.id}")
        for c, _ in await audit_stream.after(db, ENV, START, limit=1000)
    ]


async def test_a_client_resumes_across_a_server_restart(
    database_url: str, clock: FakeClock, db: asyncpg.Connection
) -> None:
    async with started(database_url, clock) as first_server:
        await create_environments(f"127.0.0.1:{first_server.port}", [ENV])
        await audit_store.append_many(db, [event(f"u{i}") for i in range(10)])
        async with connected(first_server) as client:
            before = Reader(client)
            await eventually(before.has(6), within=WITHIN)
            await before.close()
    # The first server is gone; more events commit before the next one starts.
    await audit_store.append_many(db, [event(f"v{i}") for i in range(5)])
    async with started(database_url, clock) as second_server, connected(second_server) as client:
        after = Reader(client, after_cursor=before.received[5][1])
        await audit_store.append_many(db, [event(f"w{i}") for i in range(5)])
        expected = await commit_order(db)
        await eventually(after.has(len(expected) - 6), within=WITHIN)
        await after.close()
    assert [i for i, _ in before.received[:6] + after.received] == expected


async def test_a_client_resumes_across_a_killed_server_process(
    tmp_path: Path, database_url: str, db: asyncpg.Connection
) -> None:
    """The same with ``mfa-service serve`` processes: the first is SIGKILLed while the
    client reads, more events commit, a new process serves the rest from the cursor."""
    env = {
        "DATABASE_URL": database_url,
        "MFA_ENCRYPTION_KEYS": KeyRing.generate_entry("watch1"),
        "MFA_LOG_LEVEL": "WARNING",
    }
    async with (
        serve(tmp_path, env, "--dev", name="first") as first,
        Client.connect(first.target, insecure=True) as client,
    ):
        await client.admin.create_environment(ENV)
        await audit_store.append_many(db, [event(f"u{i}") for i in range(10)])
        before = Reader(client)
        await eventually(before.has(6), within=WITHIN)
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        await before.close()
    await audit_store.append_many(db, [event(f"v{i}") for i in range(5)])
    async with (
        serve(tmp_path, env, "--dev", name="second") as second,
        Client.connect(second.target, insecure=True) as client,
    ):
        cursor = before.received[5][1]
        after = Reader(client, after_cursor=cursor)
        await audit_store.append_many(db, [event(f"w{i}") for i in range(5)])
        expected = await commit_order(db)
        assert len(expected) == 1 + 10 + 5 + 5  # ENVIRONMENT_CREATED and the three sets
        await eventually(after.has(len(expected) - 6), within=WITHIN)
        await after.close()
    assert [i for i, _ in before.received[:6] + after.received] == expected


async def test_streams_end_when_the_server_stops_without_holding_its_grace_period(
    database_url: str, clock: FakeClock
) -> None:
    server = await app_module.start(
        database_url=database_url, key_ring=TEST_KEY_RING, clock=clock, pool_size=4
    )
    stopped = False
    try:
        await create_environments(f"127.0.0.1:{server.port}", [ENV])
        async with connected(server) as client:
            readers = [Reader(client) for _ in range(3)]
            for reader in readers:
                await eventually(reader.has(1), within=WITHIN)
            assert server.audit_stream.streams == 3
            # A grace period far longer than the budget: only streams that end on their
            # own let the stop return within it.
            await asyncio.wait_for(server.stop(grace_seconds=NEVER), timeout=WITHIN)
            stopped = True
            assert server.audit_stream.streams == 0  # every stream's generator finished
            for reader in readers:
                await reader.close()
    finally:
        if not stopped:
            await server.stop()


# --- the live path ---------------------------------------------------------------------


async def test_an_event_reaches_a_waiting_stream_as_it_commits(
    database_url: str, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The stream's timer never fires within the test (NEVER): only the notification of
    the commit can wake it. Measured: a few milliseconds; the budget is eventually's,
    generous for a loaded machine."""
    async with started(database_url, clock) as server, connected(server) as client:
        await create_environments(f"127.0.0.1:{server.port}", [ENV, OTHER_ENV])
        reader = Reader(client)
        await eventually(reader.has(1), within=WITHIN, what="ENVIRONMENT_CREATED")
        await eventually(lambda: server.audit_stream.streams == 1)
        await client.admin.update_settings(
            types_pb2.Settings(environment_id=ENV, session_mfa_enabled=True),
            ["session_mfa_enabled"],
        )
        await eventually(reader.has(2), within=WITHIN, what="SETTINGS_CHANGED, live")
        await reader.close()
        assert [i for i, _ in reader.received] == await commit_order(db)


async def test_an_event_held_back_by_an_older_transaction_comes_when_that_one_ends(
    database_url: str, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """The older transaction writes no event, so its end notifies nobody: the stream's
    timer (here 0.1 s) reads again and finds the event."""
    async with (
        started(database_url, clock, wake_interval=0.1) as server,
        connected(server) as client,
    ):
        await create_environments(f"127.0.0.1:{server.port}", [ENV])
        reader = Reader(client)
        await eventually(reader.has(1), within=WITHIN)
        older = await asyncpg.connect(database_url)
        try:
            transaction = older.transaction()
            await transaction.start()
            await older.fetchval("SELECT pg_current_xact_id()")  # it holds an xid now
            await audit_store.append(db, event("held-back"))
            assert await commit_order(db) == [reader.received[0][0]]  # not returnable yet
            await transaction.commit()
        finally:
            await older.close()
        await eventually(reader.has(2), within=WITHIN, what="the held-back event")
        await reader.close()
        assert [i for i, _ in reader.received] == await commit_order(db)


async def test_a_stream_sees_only_its_environment(
    app: app_module.Application, client: Client, db: asyncpg.Connection
) -> None:
    await audit_store.append(db, event("other", OTHER_ENV))
    await audit_store.append(db, event("mine"))
    reader = Reader(client)
    await eventually(reader.has(2), within=WITHIN)
    await reader.close()
    assert [i for i, _ in reader.received] == await commit_order(db)
    assert (await commit_order(db, OTHER_ENV))[-1] not in {i for i, _ in reader.received}


# --- a slow reader -----------------------------------------------------------------------


async def test_a_slow_reader_holds_back_its_streams_reads_one_page_at_most_ahead(
    database_url: str, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """30 pages of 1 KiB events wait; the client takes them one at a time, yielding
    between each. Whatever the timing, the server reads a page only once the previous
    one went out under HTTP/2 flow control: never more pages than the client has taken,
    plus the one in hand, plus what the stream's 64 KiB flow-control window holds (BDP
    probing off, so the window stays at its initial size)."""
    padding = {"padding": "x" * 1000}
    pages = 30
    await audit_store.append_many(
        db, [event(f"u{i}", details=padding) for i in range(pages * PAGE_SIZE)]
    )
    window_events = 64 * 1024 // 1000
    async with started(database_url, clock) as server:
        await create_environments(f"127.0.0.1:{server.port}", [ENV])
        total = len(await commit_order(db))
        service = server.audit_stream
        before = service.pages_read
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]
        ) as channel:
            call = admin_grpc.AdminServiceStub(channel).WatchAuditEvents(
                admin_pb.WatchAuditEventsRequest(environment_id=ENV)
            )
            most_ahead = 0
            for taken in range(1, total + 1):
                await call.read()
                if taken == 1:
                    # Give the server time to run ahead as far as it can: the bound below
                    # holds whatever the timing; this pause lets a server that buffered
                    # without bound show it.
                    await eventually(lambda: service.pages_read > before, within=WITHIN)
                    await asyncio.sleep(0.5)
                read = service.pages_read - before
                ahead = read - (taken // PAGE_SIZE)
                most_ahead = max(most_ahead, ahead)
                assert read <= (taken + window_events) // PAGE_SIZE + 2, (taken, read)
                await asyncio.sleep(0)
            call.cancel()
    assert most_ahead <= 2, most_ahead


# --- refusals ----------------------------------------------------------------------------


async def first_response(client: Client, env: str, after_cursor: str) -> None:
    stream = client.admin.watch_audit_events(env, after_cursor)
    try:
        await asyncio.wait_for(anext(stream), WITHIN)
    finally:
        await stream.aclose()


def _list_page_token() -> str:
    return page_tokens.encode("12")  # ListAuditEvents' kind of token: a row id


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "v1:0.1",  # the position, not encoded
        _list_page_token(),  # a token of ListAuditEvents: foreign to this stream
        page_tokens.encode("1.-2"),
        page_tokens.encode(f"{2**64}.1"),  # beyond xid8
        page_tokens.encode("1.2.3"),
        "A" * 65,  # longer than any cursor
    ],
)
async def test_a_malformed_or_foreign_cursor_is_refused_naming_after_cursor(
    cursor: str, app: app_module.Application, client: Client
) -> None:
    error = await refused(first_response(client, ENV, cursor), *INVALID_CURSOR)
    assert [v.field for v in error.field_violations] == ["after_cursor"]


async def test_an_unknown_environment_is_not_found_and_a_malformed_id_is_named(
    app: app_module.Application, client: Client
) -> None:
    await refused(
        first_response(client, "env-never-created", ""),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENVIRONMENT_NOT_FOUND",
    )
    error = await refused(first_response(client, "", ""), *INVALID_CURSOR)
    assert [v.field for v in error.field_violations] == ["environment_id"]
