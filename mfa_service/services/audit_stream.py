"""WatchAuditEvents: an environment's audit events in commit order, then each new one as it
commits (DESIGN §3f).

A stream reads pages of ``store.audit_stream.after`` from its cursor, each on a pooled
connection taken for that one statement. When a page comes back short it waits to be
woken: by the INSERT trigger's notification for its environment (migration 0012),
which the process's one listening session (``store.notifications.SettingsListener``)
hands to ``Wakeups``, or after ``WAKE_INTERVAL_SECONDS`` at the latest. The timer is
what delivers an event held back by an older transaction that wrote no event (it ends
without a notification), and anything a lost listening session missed.

Bounded memory: ``watch`` is an async generator and reads the next page only when it is
resumed, i.e. when its caller has handed every event of the previous page on. Behind
grpc.aio, which resumes a streaming handler only once the previous message went out
under HTTP/2 flow control, a reader that does not keep up stalls its stream's reads:
one page (``PAGE_SIZE`` events) at most is held per stream, however far behind it is.

Measured on the 2-core development machine (PostgreSQL 15 on loopback, shared with other
work, load 3-5): from a writer's commit returning to the event at a waiting client,
median 0.67 ms, p99 1.2 ms, max 2.2 ms (200 events, one at a time). A waiting stream costs
one indexed read per wake-up interval, 48 us a round trip with a million events in the
table. The trigger's cost on the hot paths, ``make bench`` (BENCH_ARGS default) in
alternate runs without and with migration 0012: ValidateActionToken at 60-61 % of the
empty RPC's calls/s without it and 62 % with it (a first run with it, while the
machine's load rose, 54 %), PostgreSQL CPU 84-93 us a validation without and 93-99
with: a few microseconds a statement, within the run-to-run spread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from mfa_service import tracing
from mfa_service.domain.audit import LoggedEvent
from mfa_service.domain.model import EnvironmentId
from mfa_service.services import page_tokens
from mfa_service.services.runtime import Runtime, UseCase
from mfa_service.store import audit_stream
from mfa_service.store.audit_stream import START, Cursor

PAGE_SIZE = 100
# How long a stream waits for a notification before it reads again anyway: the delay of
# an event held back by an older transaction that ends without writing one.
WAKE_INTERVAL_SECONDS = 1.0
_XID8_MAX = 2**64  # xid8 is an unsigned 64-bit counter
_ROW_ID_MAX = 2**63  # audit_events.id is a bigint


def encode_cursor(cursor: Cursor) -> str:
    return page_tokens.encode(f"{cursor.xid}.{cursor.id}")


def _cursor(position: str) -> Cursor:
    xid, dot, row_id = position.partition(".")
    if not (dot and xid.isdecimal() and row_id.isdecimal()):
        raise ValueError(position)
    cursor = Cursor(int(xid), int(row_id))
    if cursor.xid >= _XID8_MAX or cursor.id >= _ROW_ID_MAX:
        raise ValueError(position)
    return cursor


def decode_cursor(text: str) -> Cursor:
    """The place ``encode_cursor`` wrote; anything else (a page token of another list, a
    cursor edited by hand) is refused as ``after_cursor``."""
    return page_tokens.decode(
        text, _cursor, field="after_cursor", description="not a cursor of this stream"
    )


@dataclass(frozen=True, slots=True)
class StreamedEvent:
    event: LoggedEvent
    cursor: str  # the stream continues after this event from here


class Wakeups:
    """The streams waiting for new events, woken per environment from the one listening
    session of the process (fan-out in memory: no connection per stream)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def notified(self, environment_id: str | None) -> None:
        """A listener callback: events of ``environment_id`` committed; None when
        notifications may have been missed (the session was lost or is new)."""
        if environment_id is None:
            for events in self._waiting.values():
                for event in events:
                    event.set()
            return
        for event in self._waiting.get(environment_id, ()):
            event.set()

    @contextlib.contextmanager
    def subscription(self, environment_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``environment_id`` may have new events, for as long as
        the block lasts."""
        woken = asyncio.Event()
        self._waiting.setdefault(environment_id, set()).add(woken)
        try:
            yield woken
        finally:
            waiting = self._waiting[environment_id]
            waiting.discard(woken)
            if not waiting:
                del self._waiting[environment_id]

    @property
    def streams(self) -> int:
        return sum(len(events) for events in self._waiting.values())


class AuditStreamService(UseCase):
    def __init__(
        self,
        runtime: Runtime,
        wakeups: Wakeups,
        *,
        page_size: int = PAGE_SIZE,
        wake_interval_seconds: float = WAKE_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(runtime)
        self._wakeups = wakeups
        self._page_size = page_size
        self._wake_interval = wake_interval_seconds
        self._closing = False
        # Reads of audit_events by every stream so far: what shows that a slow reader
        # holds its stream's reads back (tests, metrics).
        self.pages_read = 0

    async def watch(
        self, env: EnvironmentId, after_cursor: str
    ) -> AsyncIterator[list[StreamedEvent]]:
        """Pages of the events of ``env`` after ``after_cursor`` (empty: from the oldest
        kept) in commit order, without end until ``close``. The next page is read only
        when the caller asks for it (see the module docstring)."""
        cursor = decode_cursor(after_cursor) if after_cursor else START
        await self._settings.require(env)
        waited = False
        with self._wakeups.subscription(env) as woken:
            while not self._closing:
                woken.clear()  # a commit from now on wakes the wait below
                # Traced until the stream first waits: the reads of each wake-up, one a
                # second for as long as the stream lasts, would swamp its trace.
                with tracing.untraced() if waited else contextlib.nullcontext():
                    async with self._db.connection() as conn:
                        page = await audit_stream.after(conn, env, cursor, limit=self._page_size)
                self.pages_read += 1
                if page:
                    cursor = page[-1][0]
                    yield [StreamedEvent(event, encode_cursor(at)) for at, event in page]
                    if len(page) == self._page_size:
                        continue  # more may be there already
                if not self._closing:
                    waited = True
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._wake_interval):
                            await woken.wait()

    @property
    def streams(self) -> int:
        """The streams open now (a stream ended by ``close`` is no longer counted)."""
        return self._wakeups.streams

    def close(self) -> None:
        """End every stream (the server is stopping): each returns from its wait or its
        next page; a client continues elsewhere from its last cursor."""
        self._closing = True
        self._wakeups.notified(None)
