"""Micro-batching: concurrent requests share one database statement.

A request that finds the database idle goes alone, at once; requests that arrive while
statements are in flight wait for the next one and then go together. Under load, one
round trip and one commit serve many calls, which is where a hot path's CPU went (the
statement's fixed cost in asyncpg, the event loop and PostgreSQL); at low load nothing
waits for a batch to fill. No timer is involved.

Traced (a ``tracer``), each batch is a root span of its own (it belongs to no one
request), linked to the span of every request it served: its statement is that span's
child, and each request's trace leads to the statement that decided it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from opentelemetry import trace

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs ``run`` over batches of submitted items; each submitter gets its own result.

    ``run`` returns one result per item, in order; if it raises, every submitter of that
    batch gets the exception. At most ``max_in_flight`` batches run at once, each of at
    most ``max_batch`` items. Two items with the same ``conflict_key`` (not None) never
    share a batch: the later one waits for the next. When a batch fails with an error
    for which ``fails_all`` is true (the database is down or hung), the items still
    waiting fail with it at once: their batch would only wait as long again.
    ``on_batch`` is told the size of each batch sent (metrics). ``tracer``: each batch
    is a span named ``span_name``, linked to the spans its items were submitted in.
    """

    def __init__(
        self,
        run: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 64,
        max_in_flight: int = 2,
        conflict_key: Callable[[T], Hashable | None] = lambda _: None,
        fails_all: Callable[[Exception], bool] = lambda _: False,
        on_batch: Callable[[int], None] | None = None,
        tracer: trace.Tracer | None = None,
        span_name: str = "batch",
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run = run
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._conflict_key = conflict_key
        self._fails_all = fails_all
        self._on_batch = on_batch
        self._tracer = tracer
        self._span_name = span_name
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()
        # The span each waiting item was submitted in (traced only).
        self._submitted_in: dict[asyncio.Future[R], trace.SpanContext] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._starting = False  # a batch task was created and has not taken its items yet

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if self._tracer is not None:
            self._submitted_in[future] = trace.get_current_span().get_span_context()
        self._waiting.append((item, future))
        self._start_batches()
        try:
            return await future
        finally:
            if self._tracer is not None:
                self._submitted_in.pop(future, None)

    def _start_batches(self) -> None:
        """Start a batch if one may start and none is about to (it will take these too)."""
        if self._starting or not self._waiting or len(self._in_flight) >= self._max_in_flight:
            return
        self._starting = True
        # A fresh context: the batch belongs to no one request's log or trace context.
        task = asyncio.get_running_loop().create_task(
            self._run_next(), context=contextvars.Context()
        )
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    async def _run_next(self) -> None:
        """Take the batch when the task first runs, one turn of the event loop after it
        was started: the requests that reached the server in that turn go along."""
        self._starting = False
        batch = self._take()
        self._start_batches()  # more waiting than one batch holds, and room for another
        if not batch:
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        if self._tracer is None:
            await self._run_batch(batch)
            return
        links = [
            trace.Link(context)
            for _, future in batch
            if (context := self._submitted_in.get(future)) is not None and context.is_valid
        ]
        with self._tracer.start_as_current_span(
            self._span_name,
            links=links,
            attributes={"mfa.batch.size": len(batch)},
            record_exception=False,  # a message may hold a value; the type is the status
        ):
            await self._run_batch(batch)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        deferred: list[tuple[T, asyncio.Future[R]]] = []
        while self._waiting and len(batch) < self._max_batch:
            item, future = self._waiting.popleft()
            if future.done():  # its caller gave up (cancelled) before it was sent
                continue
            key = self._conflict_key(item)
            if key is not None:
                if key in keys:
                    deferred.append((item, future))
                    continue
                keys.add(key)
            batch.append((item, future))
        self._waiting.extendleft(reversed(deferred))
        return batch

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError("a batch returned the wrong number of results")
        except Exception as exc:
            trace.get_current_span().set_status(trace.StatusCode.ERROR, type(exc).__name__)
            failed = list(batch)
            if self._fails_all(exc):
                failed.extend(self._waiting)
                self._waiting.clear()
            for _, future in failed:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): the callers are cancelled too
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if task.cancelled():
            self._starting = False  # it may have been cancelled before it took its batch
        self._start_batches()
