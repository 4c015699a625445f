"""Server spans of the RPCs, as the OpenTelemetry RPC semantic conventions (gRPC) say.

A span is named ``package.Service/Method`` and carries ``rpc.system`` (``grpc``),
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` and the peer's address; it
continues the caller's trace when the call's metadata carries one (W3C ``traceparent``
and ``tracestate``, or what ``OTEL_PROPAGATORS`` names). Only the codes that say the
server failed mark it as an error (``UNKNOWN``, ``DEADLINE_EXCEEDED``, ``UNIMPLEMENTED``,
``INTERNAL``, ``UNAVAILABLE``, ``DATA_LOSS``); a code the caller caused
(``INVALID_ARGUMENT``, ``NOT_FOUND``, ``PERMISSION_DENIED``, ...) leaves the status
unset. No request field, metadata value or exception message becomes an attribute:
the request id (checked by the interceptor) and an exception's type at most.

Why not ``opentelemetry-instrumentation-grpc``'s ``aio_server_interceptor`` (0.66b2,
checked against this server): it names the span ``/package.Service/Method`` (a leading
slash the conventions do not have); its streaming wrapper iterates the handler with
``async for``, so a streaming handler that is a coroutine writing with
``context.write`` (the health service's ``Watch``) fails with UNKNOWN (``'async for'
requires an object with __aiter__ method, got coroutine``) while its span says OK; and it
learns the code from a proxy of the servicer context wrapped around every call, where
``CallInterceptor`` already knows each call's final code (its error mapping decides it).
Its status table is the one below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter

# The codes a server span is an error for (semantic conventions, gRPC server status).
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Probes (every few seconds, from each load balancer and kubelet) and tooling: counted
# in the metrics, not traced.
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")

Metadata = Sequence[tuple[str, Any]]


class _MetadataGetter(Getter[Metadata]):
    """Text values of a key of a call's invocation metadata (``-bin`` keys hold bytes)."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [value for k, value in carrier if k == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [key for key, _ in carrier]


_METADATA = _MetadataGetter()


def traced(method: str) -> bool:
    """Does a call of ``method`` (``/package.Service/Name``) get a span?"""
    return not method.startswith(UNTRACED_SERVICES, 1)


def _peer(peer: str) -> tuple[str, int] | None:
    """``ipv4:127.0.0.1:5000`` or ``ipv6:[::1]:5000`` -> address and port (None: a
    Unix socket or a shape not known)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    address, _, port = rest.rpartition(":")
    if not port.isdecimal():
        return None
    return address.removeprefix("[").removesuffix("]"), int(port)


class ServerSpan:
    """The span of one call, current from ``start`` until ``end`` (called once, in the
    same task): the database statements and log lines of the call are in it."""

    __slots__ = ("_span", "_token")

    def __init__(
        self,
        tracer: trace.Tracer,
        method: str,
        metadata: Metadata | None,
        peer: str,
        request_id: str,
    ) -> None:
        # From the metadata alone: never a context the server's task happened to inherit.
        parent = propagate.extract(metadata or (), otel_context.Context(), getter=_METADATA)
        service, _, name = method[1:].partition("/")
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "mfa.request_id": request_id,
        }
        address = _peer(peer)
        if address is not None:
            attributes["network.peer.address"], attributes["network.peer.port"] = address
        self._span = tracer.start_span(
            method[1:], context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))

    def end(self, code: grpc.StatusCode, description: str | None = None) -> None:
        """The call ended with ``code``; ``description`` (an error reason or an
        exception's type, never a message) says why a server error happened."""
        span = self._span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_ERRORS:
            span.set_status(trace.StatusCode.ERROR, description or code.name)
        span.end()
        otel_context.detach(self._token)
