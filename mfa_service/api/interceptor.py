"""Every call gets a request id, a caller identity, authorization, error mapping, a log
line, and (when given a tracer and metrics) a server span and its Prometheus series."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio
from opentelemetry import trace

from mfa_service import errors
from mfa_service.api import context as call_context
from mfa_service.api import metrics as rpc_metrics
from mfa_service.api.authorization import Authorizer, peer_identity
from mfa_service.api.errors import rich_status, status_of
from mfa_service.api.metrics import Metrics
from mfa_service.api.spans import ServerSpan, traced
from mfa_service.domain import audit
from mfa_service.domain.audit import CallContext

log = logging.getLogger("mfa_service.rpc")

REQUEST_ID_HEADER = "x-request-id"
# Where the user's request came from (DESIGN §3f), read on the user RPCs only: the
# calling service says it for the user it acts for; on admin and signer calls there is
# no such user.
CLIENT_IP_HEADER = "mfa-client-ip"
CLIENT_USER_AGENT_HEADER = "mfa-client-user-agent"
USER_SERVICE = "mfa.v1.MfaService"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
Deserializer = Callable[[bytes], Any]


class _Malformed:
    """A request body that is not a message of the method's type."""


_MALFORMED = _Malformed()


def _tolerant(deserialize: Deserializer | None) -> Deserializer | None:
    """Parse as ``deserialize`` does, but hand a body that does not parse (corrupt wire
    format, a string that is not UTF-8) to ``serve`` to refuse, rather than to grpcio,
    which answers UNKNOWN with the exception's class in the message."""
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError:
            return _MALFORMED

    return parse


def _request_id(metadata: tuple[Any, ...] | None) -> str:
    """The caller's ``x-request-id`` if it is sane, else a new one (never trust its shape)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _SAFE_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


def _client_source(metadata: tuple[Any, ...] | None) -> tuple[str | None, str | None]:
    """The ``mfa-client-ip`` and ``mfa-client-user-agent`` of a call, checked (None: not
    given, or given empty). A bad one is refused naming its key, never recorded
    half-right; the message never repeats the value (it reaches logs and clients)."""
    given: dict[str, list[str]] = {CLIENT_IP_HEADER: [], CLIENT_USER_AGENT_HEADER: []}
    for key, value in metadata or ():
        if key in given:
            given[key].append(value if isinstance(value, str) else "")
    found: list[str | None] = []
    for key, check in (
        (CLIENT_IP_HEADER, audit.client_ip),
        (CLIENT_USER_AGENT_HEADER, audit.client_user_agent),
    ):
        values = given[key]
        if len(values) > 1:
            raise errors.InvalidArgument.field(key, "given more than once")
        if not values or not values[0]:
            found.append(None)
            continue
        try:
            found.append(check(values[0]))
        except ValueError as error:
            raise errors.InvalidArgument.field(key, str(error)) from None
    return found[0], found[1]


if TYPE_CHECKING:
    _Interceptor = aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = aio.ServerInterceptor  # not subscriptable at run time


class CallInterceptor(_Interceptor):
    """``authorizer`` is None without mutual TLS: then every caller may call everything."""

    def __init__(
        self,
        authorizer: Authorizer | None = None,
        *,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        """``metrics`` and ``tracer``: None (the default) records nothing of either."""
        self._authorizer = authorizer
        self._metrics = metrics
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if handler is None:
            return handler
        tracer = self._tracer if self._tracer is not None and traced(method) else None
        if handler.unary_unary is None:
            # Streaming RPCs: health Watch and reflection, open to every TLS client, and
            # AdminService.WatchAuditEvents, authorized as its service's unary calls.
            return _streaming(method, metadata, handler, self._authorizer, self._metrics, tracer)
        return grpc.unary_unary_rpc_method_handler(
            _wrap(
                method,
                metadata,
                handler.unary_unary,  # type: ignore[arg-type]
                self._authorizer,
                self._metrics,
                tracer,
            ),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _service(method: str) -> str:
    """``/mfa.v1.AdminService/GetSettings`` -> ``mfa.v1.AdminService``."""
    return method[1:].partition("/")[0]


def _wrap(
    method: str,
    metadata: tuple[Any, ...] | None,
    behavior: Behavior,
    authorizer: Authorizer | None,
    metrics: Metrics | None,
    tracer: trace.Tracer | None,
) -> Behavior:
    method_metrics = metrics.for_method(method) if metrics is not None else None

    async def serve(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        request_id = _request_id(metadata)
        identity = peer_identity(context)
        caller = identity or f"unauthenticated@{context.peer()}"
        token = call_context.set_current(CallContext(caller=caller, request_id=request_id))
        if method_metrics is not None:
            method_metrics.start()
            if request is not _MALFORMED:
                method_metrics.received.inc()
        span = ServerSpan(tracer, method, metadata, context.peer(), request_id) if tracer else None
        code = grpc.StatusCode.OK
        reason: str | None = None
        failure: str | None = None
        response = None
        try:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            if authorizer is not None:
                authorizer.check(_service(method), identity)
            if _service(method) == USER_SERVICE:
                ip, agent = _client_source(metadata)
                if ip is not None or agent is not None:
                    # Reset with the call's token below, like the context it replaces.
                    call_context.set_current(
                        CallContext(caller, request_id, client_ip=ip, client_user_agent=agent)
                    )
            if request is _MALFORMED:
                raise errors.InvalidArgument.field(
                    "request", "not a valid message (corrupt, or a string that is not UTF-8)"
                )
            response = await behavior(request, context)
            if method_metrics is not None:
                method_metrics.sent.inc()
            return response
        except errors.MfaError as error:
            reason = error.reason
            code, status = status_of(error, request_id)
            await _abort(context, code, status.message, status.SerializeToString(), request_id)
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = _cancelled(context)
            raise
        except Exception as error:
            code = grpc.StatusCode.INTERNAL
            failure = type(error).__name__  # the span's status says which, never what
            log.exception("unexpected error in %s request_id=%s", method, request_id)
            message = f"internal error; request id {request_id}"
            status = rich_status(code, message, "ERROR_REASON_INTERNAL", request_id)
            await _abort(context, code, message, status.SerializeToString(), request_id)
        finally:
            seconds = time.perf_counter() - started
            _log_call(method, caller, code, seconds, request_id)  # in the span: its ids
            if metrics is not None and method_metrics is not None:
                method_metrics.end(code, seconds)
                metrics.record(method_metrics, code, reason, request, response)
            if span is not None:
                span.end(code, failure or reason)
            call_context.reset(token)

    return serve


def _cancelled(context: aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code of a call grpc.aio cancelled: its deadline passed (a server fault for its
    span), or the client hung up."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _log_call(
    method: str, caller: str, code: grpc.StatusCode, seconds: float, request_id: str
) -> None:
    """The one line every call leaves, unary or streaming."""
    log.info(
        "rpc method=%s caller=%s status=%s duration_ms=%.2f request_id=%s",
        method,
        caller,
        code.name,
        seconds * 1000,
        request_id,
        extra={
            "request_id": request_id,
            "caller": caller,
            "method": method,
            "status": code.name,
            "duration_ms": round(seconds * 1000, 3),
        },
    )


def _streaming(
    method: str,
    metadata: tuple[Any, ...] | None,
    handler: grpc.RpcMethodHandler[Any, Any],
    authorizer: Authorizer | None,
    metrics: Metrics | None,
    tracer: trace.Tracer | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A streaming handler (health Watch, reflection, WatchAuditEvents) with a request id,
    the caller's authorization, the error mapping of unary calls, its span, series and log
    line, ended when the stream ends. grpc.aio serves a coroutine handler (it writes with
    ``context.write``) and an async generator differently, so the wrapper keeps the shape
    of the handler it wraps."""
    behavior: Any = handler.unary_stream or handler.stream_stream or handler.stream_unary
    if handler.unary_stream is not None:
        grpc_type = rpc_metrics.SERVER_STREAM
    elif handler.stream_stream is not None:
        grpc_type = rpc_metrics.BIDI_STREAM
    else:
        grpc_type = rpc_metrics.CLIENT_STREAM
    method_metrics = metrics.for_method(method, grpc_type) if metrics is not None else None

    def outcome(error: BaseException, context: aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            return _cancelled(context)
        if isinstance(error, aio.AbortError):
            return context.code() or grpc.StatusCode.UNKNOWN
        if isinstance(error, errors.MfaError):
            return status_of(error, "")[0]
        return grpc.StatusCode.INTERNAL

    async def fail(
        error: Exception, context: aio.ServicerContext[Any, Any], request_id: str
    ) -> None:
        if isinstance(error, aio.AbortError):
            raise error
        if isinstance(error, errors.MfaError):
            code, status = status_of(error, request_id)
            await _abort(context, code, status.message, status.SerializeToString(), request_id)
        log.exception("unexpected error in %s request_id=%s", method, request_id)
        message = f"internal error; request id {request_id}"
        status = rich_status(grpc.StatusCode.INTERNAL, message, "ERROR_REASON_INTERNAL", request_id)
        await _abort(
            context, grpc.StatusCode.INTERNAL, message, status.SerializeToString(), request_id
        )

    @contextlib.asynccontextmanager
    async def observed(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """The call's request id, span, series and log line, and its error mapping."""
        started = time.perf_counter()
        request_id = _request_id(metadata)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        identity = peer_identity(context)
        caller = identity or f"unauthenticated@{context.peer()}"
        if method_metrics is not None:
            method_metrics.start()
            if handler.unary_stream is not None and request is not _MALFORMED:
                method_metrics.received.inc()
        span = ServerSpan(tracer, method, metadata, context.peer(), request_id) if tracer else None
        code = grpc.StatusCode.OK
        failure: str | None = None
        try:
            if authorizer is not None:
                authorizer.check(_service(method), identity)
            if request is _MALFORMED:
                raise errors.InvalidArgument.field(
                    "request", "not a valid message (corrupt, or a string that is not UTF-8)"
                )
            yield
            code = context.code() or grpc.StatusCode.OK
        except BaseException as error:
            code = outcome(error, context)
            if isinstance(error, errors.MfaError):
                failure = error.reason
            elif code == grpc.StatusCode.INTERNAL:
                failure = type(error).__name__
            if not isinstance(error, Exception):
                raise
            await fail(error, context, request_id)
        finally:
            seconds = time.perf_counter() - started
            _log_call(method, caller, code, seconds, request_id)  # in the span: its ids
            if method_metrics is not None:
                method_metrics.end(code, seconds)
            if span is not None:
                span.end(code, failure)

    # A stream of requests: each counted as the handler reads it.
    received = None
    if method_metrics is not None and handler.unary_stream is None:
        received = method_metrics.received

    def requests(request: Any) -> Any:
        return _counted(request, received) if received is not None else request

    serve: Any
    if inspect.iscoroutinefunction(behavior):

        async def serve(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with observed(request, context):
                writer: Any = context
                if method_metrics is not None:
                    writer = _CountedWrites(context, method_metrics.sent)
                return await behavior(requests(request), writer)

    else:

        async def serve(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with observed(request, context):
                async for response in behavior(requests(request), context):
                    if method_metrics is not None:
                        method_metrics.sent.inc()
                    yield response

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        # One request, refused as a unary call's when it does not parse.
        options["request_deserializer"] = _tolerant(handler.request_deserializer)
        return grpc.unary_stream_rpc_method_handler(serve, **options)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(serve, **options)
    return grpc.stream_unary_rpc_method_handler(serve, **options)


async def _counted(requests: AsyncIterator[Any], received: Any) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request


class _CountedWrites:
    """A servicer context whose ``write`` counts each message sent (a coroutine streaming
    handler, e.g. health Watch, sends with it); everything else is the context's own."""

    def __init__(self, context: aio.ServicerContext[Any, Any], sent: Any) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _abort(
    context: aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    details: bytes,
    request_id: str,
) -> None:
    await context.abort(
        code,
        message,
        trailing_metadata=((_STATUS_DETAILS_KEY, details), (REQUEST_ID_HEADER, request_id)),
    )
