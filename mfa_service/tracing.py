"""OpenTelemetry tracing, off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

Off, nothing is traced and nothing is done per call: the interceptor and the pool get no
tracer. On, every RPC is a server span (opened by the interceptor) and every database
statement a client span, its child, made from asyncpg's query logger after the statement
(asyncpg has no instrumentation of its own here). Statements are parameterized: a span
carries the SQL text, never an argument.

``console`` prints spans to stdout as they end; ``otlp`` needs
``opentelemetry-exporter-otlp-proto-grpc`` and reads the standard ``OTEL_EXPORTER_OTLP_*``
variables. ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` apply as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    """An asyncpg query logger making a span of each statement.

    asyncpg calls it with ``call_soon`` from the statement's task, so the context, and
    with it the RPC's span as the parent, is the statement's.
    """

    def log_query(record: Any) -> None:
        end = time.time_ns()
        query: str = record.query
        verb = query.lstrip().split(None, 1)[0].upper() if query.strip() else "SQL"
        span = tracer.start_span(
            f"postgresql {verb}",
            kind=trace.SpanKind.CLIENT,
            start_time=end - int(record.elapsed * 1e9),
            attributes={"db.system": "postgresql", "db.statement": query},
        )
        if record.exception is not None:
            span.set_status(trace.StatusCode.ERROR, type(record.exception).__name__)
        span.end(end_time=end)

    return log_query
