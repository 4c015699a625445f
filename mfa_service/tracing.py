"""OpenTelemetry tracing, off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

Off, nothing is traced and nothing is done per call: the interceptor, the pool and the
background jobs get no tracer. On, every RPC is a server span (opened by the
interceptor, in the caller's trace when its metadata carries a W3C ``traceparent``) and
every database statement run inside a span a client span, its child, made from asyncpg's
query logger after the statement. Statements outside any span are not traced: what runs
them on its own (the health check's ``SELECT 1``, the webhook dispatcher's poll, a
waiting ``WatchAuditEvents`` stream's wake-up read) would otherwise leave a parentless
span every second or two. Background work that does something opens a root span of its
own: a purge run (``mfa.purge``), a webhook's deliveries (``mfa.webhook.deliver``), a
batch of validations decided by one statement (``mfa.validation_batch``, linked to the
span of each call it decided). Statements are parameterized: a span carries the SQL text,
never an argument.

Why not ``opentelemetry-instrumentation-asyncpg``: it patches asyncpg's classes for the
whole process, with one tracer provider, so every connection of the process is traced
(migrations, the listening session, any other application in the process: the tests run
several, traced and not) and each call goes through its wrapper whether or not a span
is wanted; a query logger belongs to one pool and costs nothing when tracing is off.

``console`` prints spans to stdout as they end; ``otlp`` needs
``opentelemetry-exporter-otlp-proto-grpc`` and reads the standard ``OTEL_EXPORTER_OTLP_*``
variables. ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` apply as usual, and
``OTEL_PROPAGATORS`` (default: W3C trace context and baggage) says which incoming
metadata carries the caller's trace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

EXPORTERS = ("console", "otlp")


@dataclass
class Tracing:
    tracer: trace.Tracer
    provider: TracerProvider

    def shutdown(self) -> None:
        self.provider.shutdown()


def start(exporter: str | None) -> Tracing | None:
    """A tracer exporting to ``exporter`` (``console`` or ``otlp``); None: tracing off."""
    if exporter is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "mfa-service"}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"unknown traces exporter {exporter!r}")
    return Tracing(provider.get_tracer("mfa_service"), provider)


def query_logger(tracer: trace.Tracer) -> Callable[[Any], None]:
    """An asyncpg query logger making a span of each statement run inside a span.

    asyncpg calls it with ``call_soon`` from the statement's task, so the context, and
    with it the parent span (the RPC's, or a background job's), is the statement's.
    Attributes as the database semantic conventions name them (``db.statement`` is the
    parameterized text).
    """

    def log_query(record: Any) -> None:
        if not trace.get_current_span().get_span_context().is_valid:
            return
        end = time.time_ns()
        query: str = record.query
        words = query.split(None, 1)
        verb = words[0].rstrip(";").upper() if words else "SQL"
        database = getattr(record.conn_params, "database", None)
        attributes: dict[str, str | int] = {
            "db.system": "postgresql",
            "db.operation": verb,
            "db.statement": query,
        }
        if database:
            attributes["db.name"] = database
        address = record.conn_addr
        if isinstance(address, tuple) and len(address) == 2:
            attributes["server.address"], attributes["server.port"] = address
        span = tracer.start_span(
            f"{verb} {database}" if database else verb,
            kind=trace.SpanKind.CLIENT,
            start_time=end - int(record.elapsed * 1e9),
            attributes=attributes,
        )
        if record.exception is not None:
            span.set_status(trace.StatusCode.ERROR, type(record.exception).__name__)
        span.end(end_time=end)

    return log_query


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Statements of the block leave no span, even inside a span (a poll of a long
    stream). Never around a ``yield`` of an async generator: the context is the task's."""
    token = otel_context.attach(trace.set_span_in_context(trace.INVALID_SPAN))
    try:
        yield
    finally:
        otel_context.detach(token)
