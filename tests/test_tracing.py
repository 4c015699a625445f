"""OpenTelemetry spans of a real server (in-process, spans kept by the SDK's in-memory
exporter): the caller's trace continued from its ``traceparent``, spans as the RPC
semantic conventions say, statements parented by the work they belong to (a call, a
batch linked to its calls, a background job's run), and the trace on the log lines.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import grpc
import pytest
from grpc import aio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flows import call, update_settings, validate_unknown_tokens
from helpers import FakeClock, create_environments, eventually, serving_handlers, started_app
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service import app as app_module
from mfa_service import errors, logs
from mfa_service.api.interceptor import CallInterceptor
from mfa_service.services.webhooks import WebhookOptions
from mfa_service.store import purge as purge_store
from receiver import Receiver

ENV = "env-traced"
GET_SETTINGS = "mfa.v1.AdminService/GetSettings"
VALIDATE = "mfa.v1.ActionTokenService/ValidateActionToken"
WATCH = "mfa.v1.AdminService/WatchAuditEvents"
# Root spans of work no call asked for (mfa_service.tracing).
BACKGROUND_ROOTS = {"mfa.purge", "mfa.webhook.deliver", "mfa.validation_batch"}


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def all(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        span_id = _context(parent).span_id
        return [s for s in self.all() if s.parent is not None and s.parent.span_id == span_id]

    async def one(self, name: str) -> ReadableSpan:
        found = await eventually(lambda: self.named(name), what=f"a span {name}")
        assert len(found) == 1, found
        return found[0]


@pytest.fixture
def spans() -> Iterator[Spans]:
    kept = Spans()
    yield kept
    kept.provider.shutdown()


@pytest.fixture
async def traced(
    database_url: str, clock: FakeClock, spans: Spans
) -> AsyncIterator[app_module.Application]:
    async with started_app(
        database_url,
        clock,
        tracer=spans.tracer,
        # Polls, many times a test, none of them traced: the health check's database
        # pings, a waiting stream's wake-ups, the webhook dispatcher's look for work.
        health_interval_seconds=0.05,
        audit_wake_interval_seconds=0.05,
        webhooks=WebhookOptions(allow_loopback_http=True, poll_interval=timedelta(seconds=0.05)),
    ) as application:
        await create_environments(f"127.0.0.1:{application.port}", [ENV])
        yield application


@pytest.fixture
async def client(traced: app_module.Application) -> AsyncIterator[Client]:
    async with Client.connect(f"127.0.0.1:{traced.port}", insecure=True) as c:
        yield c


def _context(span: ReadableSpan) -> trace.SpanContext:
    context: trace.SpanContext | None = span.context
    assert context is not None
    return context


def _traceparent() -> tuple[int, int, str]:
    """A caller's trace id, span id and the ``traceparent`` that carries them (sampled)."""
    trace_id, span_id = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    return trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-01"


@pytest.fixture
def rpc_log() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The lines of ``mfa_service.rpc`` as ``logs.configure`` writes them in JSON (its
    handler's filter and formatter), as parsed objects."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.TraceContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("mfa_service.rpc")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_call_with_a_traceparent_is_a_server_span_of_that_trace(
    client: Client, spans: Spans, rpc_log: Callable[[], list[dict[str, Any]]]
) -> None:
    spans.exporter.clear()
    trace_id, caller_span_id, traceparent = _traceparent()
    await client.admin.stub.GetSettings(
        admin_pb.GetSettingsRequest(environment_id=ENV),
        metadata=(("traceparent", traceparent), ("tracestate", "caller=kept")),
    )

    server = await spans.one(GET_SETTINGS)
    context = _context(server)
    assert context.trace_id == trace_id
    assert server.parent is not None
    assert server.parent.span_id == caller_span_id
    assert server.parent.is_remote
    assert context.trace_state.get("caller") == "kept"
    assert server.kind == trace.SpanKind.SERVER
    assert server.status.status_code == trace.StatusCode.UNSET
    attributes = dict(server.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "mfa.v1.AdminService"
    assert attributes["rpc.method"] == "GetSettings"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["network.peer.address"] == "127.0.0.1"

    # Its statements are its children, in its trace.
    statements = await eventually(lambda: spans.children(server), what="the call's statements")
    for statement in statements:
        assert statement.kind == trace.SpanKind.CLIENT
        assert _context(statement).trace_id == trace_id
        assert (statement.attributes or {})["db.system"] == "postgresql"
    texts = [str((s.attributes or {})["db.statement"]) for s in statements]
    assert any("environment_settings" in text for text in texts), texts

    # The call's log line carries the trace and the server span.
    line = await eventually(
        lambda: [r for r in rpc_log() if r.get("method") == f"/{GET_SETTINGS}"],
        what="the call's log line",
    )
    assert line[0]["trace_id"] == f"{trace_id:032x}"
    assert line[0]["span_id"] == f"{context.span_id:016x}"
    assert line[0]["trace_flags"] == "01"


async def test_without_a_traceparent_a_call_starts_a_trace_and_its_log_line_names_it(
    client: Client, spans: Spans, rpc_log: Callable[[], list[dict[str, Any]]]
) -> None:
    spans.exporter.clear()
    await client.admin.get_settings(ENV)
    server = await spans.one(GET_SETTINGS)
    assert server.parent is None
    line = await eventually(
        lambda: [r for r in rpc_log() if r.get("method") == f"/{GET_SETTINGS}"],
        what="the call's log line",
    )
    assert line[0]["trace_id"] == f"{_context(server).trace_id:032x}"


def test_a_text_line_ends_with_the_trace_only_inside_a_span(spans: Spans) -> None:
    formatter, tracing_filter = logs.TextFormatter(), logs.TraceContextFilter()

    def line() -> str:
        record = logging.LogRecord("mfa_service", logging.INFO, __file__, 1, "hello", (), None)
        tracing_filter.filter(record)
        return formatter.format(record)

    assert line().endswith(" hello")
    with spans.tracer.start_as_current_span("work") as span:
        context = span.get_span_context()
        inside = line()
    assert inside.endswith(
        f" hello trace_id={context.trace_id:032x} span_id={context.span_id:016x}"
    )


# --- status: only a server's fault is an error ---------------------------------------

SERVICE = "mfatest.Traced"
SECRET = "hunter2"


def _raising(error: BaseException) -> Any:
    async def handler(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        raise error

    return handler


def _aborting(code: grpc.StatusCode) -> Any:
    async def handler(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(code, "aborted by the handler")
        raise AssertionError("abort returned")

    return handler


async def _slow(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(30)  # cancelled first: the client's deadline passes, or it hangs up
    return b""


def _streaming_raising(error: BaseException) -> Any:
    async def handler(request: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
        yield b"first"
        raise error

    return handler


# method -> (handler, the code the caller sees, is the span an error?)
STATUS_CASES: dict[str, tuple[Any, grpc.StatusCode, bool]] = {
    "InvalidArgument": (
        _raising(errors.InvalidArgument.field("user_id", "required")),
        grpc.StatusCode.INVALID_ARGUMENT,
        False,
    ),
    "NotFound": (_raising(errors.EnrollmentNotFound()), grpc.StatusCode.NOT_FOUND, False),
    "PermissionDenied": (
        _raising(errors.VerificationFailed()),
        grpc.StatusCode.PERMISSION_DENIED,
        False,
    ),
    "Unauthenticated": (
        _raising(errors.CallerUnauthenticated()),
        grpc.StatusCode.UNAUTHENTICATED,
        False,
    ),
    "FailedPrecondition": (
        _raising(errors.NotEnrolled()),
        grpc.StatusCode.FAILED_PRECONDITION,
        False,
    ),
    "ResourceExhausted": (
        _raising(errors.LockedOut(timedelta(seconds=30))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        False,
    ),
    "AbortedAlreadyExists": (
        _aborting(grpc.StatusCode.ALREADY_EXISTS),
        grpc.StatusCode.ALREADY_EXISTS,
        False,
    ),
    "Internal": (_raising(RuntimeError(f"password {SECRET}")), grpc.StatusCode.INTERNAL, True),
    "Unavailable": (_raising(errors.DatabaseUnavailable()), grpc.StatusCode.UNAVAILABLE, True),
    "Unimplemented": (
        _raising(errors.NotImplementedYet("Traced")),
        grpc.StatusCode.UNIMPLEMENTED,
        True,
    ),
    "AbortedDataLoss": (_aborting(grpc.StatusCode.DATA_LOSS), grpc.StatusCode.DATA_LOSS, True),
}
STREAM_CASES: dict[str, tuple[Any, grpc.StatusCode, bool]] = {
    "StreamInvalidArgument": (
        _streaming_raising(errors.InvalidArgument.field("after_cursor", "not a cursor")),
        grpc.StatusCode.INVALID_ARGUMENT,
        False,
    ),
    "StreamInternal": (
        _streaming_raising(RuntimeError(f"password {SECRET}")),
        grpc.StatusCode.INTERNAL,
        True,
    ),
}


@pytest.fixture
async def status_channel(spans: Spans) -> AsyncIterator[aio.Channel]:
    """A test-only server: ``CallInterceptor`` before handlers that fail on purpose."""
    handlers = {
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
        **{m: grpc.unary_unary_rpc_method_handler(h) for m, (h, _, _) in STATUS_CASES.items()},
        **{m: grpc.unary_stream_rpc_method_handler(h) for m, (h, _, _) in STREAM_CASES.items()},
    }
    async with serving_handlers(CallInterceptor(tracer=spans.tracer), SERVICE, handlers) as ch:
        yield ch


async def _refused_code(channel: aio.Channel, method: str) -> grpc.StatusCode:
    path = f"/{SERVICE}/{method}"
    with pytest.raises(aio.AioRpcError) as caught:
        if method in STREAM_CASES:
            async for _ in channel.unary_stream(path)(b"", timeout=5):  # type: ignore[call-arg]  # grpc-stubs: the serializers are optional
                pass
        else:
            await channel.unary_unary(path)(b"", timeout=5)  # type: ignore[call-arg]
    code = caught.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


@pytest.mark.parametrize("method", [*STATUS_CASES, *STREAM_CASES])
async def test_only_server_faults_mark_the_server_span_as_an_error(
    status_channel: aio.Channel, spans: Spans, method: str
) -> None:
    _, code, is_error = {**STATUS_CASES, **STREAM_CASES}[method]
    assert await _refused_code(status_channel, method) == code

    span = await spans.one(f"{SERVICE}/{method}")
    assert (span.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    if is_error:
        assert span.status.status_code == trace.StatusCode.ERROR
        assert span.status.description
    else:
        assert span.status.status_code == trace.StatusCode.UNSET
    # What a span holds never includes an exception's message.
    held = [span.status.description or "", *map(str, (span.attributes or {}).values())]
    held += [str(event.attributes) for event in span.events]
    assert not any(SECRET in text for text in held), held


async def test_an_internal_error_names_the_exception_type_only(
    status_channel: aio.Channel, spans: Spans
) -> None:
    await _refused_code(status_channel, "Internal")
    span = await spans.one(f"{SERVICE}/Internal")
    assert span.status.description == "RuntimeError"


async def test_a_deadline_that_passes_is_an_error_and_a_hang_up_is_not(
    status_channel: aio.Channel, spans: Spans
) -> None:
    slow = status_channel.unary_unary(f"/{SERVICE}/Slow")  # type: ignore[call-arg]  # grpc-stubs: the serializers are optional
    with pytest.raises(aio.AioRpcError) as caught:
        await slow(b"", timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    late = await spans.one(f"{SERVICE}/Slow")
    assert (late.attributes or {})["rpc.grpc.status_code"] == caught.value.code().value[0]
    assert late.status.status_code == trace.StatusCode.ERROR
    spans.exporter.clear()

    call = slow(b"")
    await asyncio.sleep(0.2)
    call.cancel()
    hung_up = await spans.one(f"{SERVICE}/Slow")
    assert (hung_up.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert hung_up.status.status_code == trace.StatusCode.UNSET


# --- statements: parented by their work --------------------------------------------


async def test_a_batched_validation_links_each_call_it_decided(
    client: Client, spans: Spans
) -> None:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    calls = 24
    await validate_unknown_tokens(client, ENV, calls)

    def every_call() -> list[ReadableSpan]:
        found = spans.named(VALIDATE)
        return found if len(found) == calls else []

    validations = await eventually(every_call, what=f"{calls} ValidateActionToken spans")
    call_ids = {_context(s).span_id for s in validations}
    batches = spans.named("mfa.validation_batch")
    linked = [link.context.span_id for batch in batches for link in batch.links]
    # Each call linked once, by the one batch whose statement decided it.
    assert sorted(linked) == sorted(call_ids)
    for batch in batches:
        assert batch.parent is None  # its own trace: it belongs to no one call
        assert (batch.attributes or {})["mfa.batch.size"] == len(batch.links)
        statements = await eventually(
            functools.partial(spans.children, batch), what="the batch's statement"
        )
        # The batch's one statement (and asyncpg's type introspection, the first time a
        # connection prepares it).
        assert {s.kind for s in statements} == {trace.SpanKind.CLIENT}
        texts = [str((s.attributes or {})["db.statement"]) for s in statements]
        assert len([t for t in texts if "unnest" in t]) == 1, texts


async def test_statements_outside_any_work_are_not_traced_and_a_stream_traces_its_first_read(
    traced: app_module.Application, client: Client, spans: Spans
) -> None:
    """The purge's run at start is a root span over its statements; a WatchAuditEvents
    stream is a server span over its first read, not over each wake-up's (every 50 ms
    here); the health check's pings leave no span at all."""
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    stream = client.admin.stub.WatchAuditEvents(
        admin_pb.WatchAuditEventsRequest(environment_id=ENV)
    )
    await stream.read()
    read_before = traced.audit_stream.pages_read
    await eventually(
        lambda: traced.audit_stream.pages_read >= read_before + 5, what="five wake-up reads"
    )
    stream.cancel()

    watch = await spans.one(WATCH)
    assert (watch.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert watch.status.status_code == trace.StatusCode.UNSET  # the client hung up
    reads = [
        s
        for s in spans.children(watch)
        if "audit_events" in str((s.attributes or {}).get("db.statement"))
    ]
    assert len(reads) == 1, [s.attributes for s in reads]

    purge = await spans.one("mfa.purge")
    assert purge.parent is None
    texts = [str((s.attributes or {})["db.statement"]) for s in spans.children(purge)]
    for table in purge_store.TABLES:
        deleted_from = re.compile(rf"DELETE\s+FROM\s+{table}\b")
        assert any(deleted_from.search(text) for text in texts), (table, texts)

    everything = spans.all()
    statements = [s for s in everything if s.kind == trace.SpanKind.CLIENT]
    assert statements
    assert [s.attributes for s in statements if s.parent is None] == []
    roots = {s.name for s in everything if s.parent is None}
    rpc_roots = {name for name in roots if name.startswith("mfa.v1.")}
    assert roots - rpc_roots <= BACKGROUND_ROOTS, roots
    # Probes are counted, not traced.
    assert not [s for s in everything if s.name.startswith("grpc.health.v1.")]


async def test_a_webhook_delivery_is_a_root_span_over_its_statements(
    client: Client, spans: Spans
) -> None:
    async with Receiver() as receiver:
        created = await call(
            client.admin.stub.CreateWebhook(
                admin_pb.CreateWebhookRequest(
                    environment_id=ENV,
                    url=receiver.url(),
                    event_types=[admin_pb.AUDIT_EVENT_TYPE_USER_RESET],
                )
            )
        )
        await call(
            client.admin.stub.ResetUserMfa(
                admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="alice")
            )
        )
        await eventually(receiver.delivered, what="the reset delivered")

    delivery = (await eventually(lambda: spans.named("mfa.webhook.deliver"), what="its span"))[0]
    assert delivery.parent is None
    assert (delivery.attributes or {})["mfa.webhook.id"] == created.webhook.webhook_id
    assert delivery.status.status_code == trace.StatusCode.UNSET
    texts = [str((s.attributes or {})["db.statement"]) for s in spans.children(delivery)]
    assert any("audit_events" in text for text in texts), texts  # the events it sent
    # The dispatcher's polls (every 50 ms, most finding nothing due) left no statement.
    assert [
        s.attributes for s in spans.all() if s.kind == trace.SpanKind.CLIENT and s.parent is None
    ] == []
