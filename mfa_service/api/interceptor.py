"""Every call gets a request id, a caller identity, error mapping and one log line."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from mfa_service import errors
from mfa_service.api import context as call_context
from mfa_service.api.errors import rich_status, status_of
from mfa_service.domain.audit import CallContext

log = logging.getLogger("mfa_service.rpc")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _request_id(metadata: tuple[Any, ...] | None) -> str:
    """The caller's ``x-request-id`` if it is sane, else a new one (never trust its shape)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _SAFE_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


def caller_identity(context: aio.ServicerContext[Any, Any]) -> str:
    """The calling service: its certificate's identity over mTLS, else its address."""
    auth = context.auth_context()
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        for name in auth.get(key, ()):
            return name.decode(errors="replace")
    return f"unauthenticated@{context.peer()}"


if TYPE_CHECKING:
    _Interceptor = aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = aio.ServerInterceptor  # not subscriptable at run time


class CallInterceptor(_Interceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs: health Watch and reflection
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        return grpc.unary_unary_rpc_method_handler(
            _wrap(method, metadata, handler.unary_unary),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _wrap(method: str, metadata: tuple[Any, ...] | None, behavior: Behavior) -> Behavior:
    async def serve(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        request_id = _request_id(metadata)
        caller = caller_identity(context)
        token = call_context.set_current(CallContext(caller=caller, request_id=request_id))
        code = grpc.StatusCode.OK
        try:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            return await behavior(request, context)
        except errors.MfaError as error:
            code, status = status_of(error, request_id)
            await _abort(context, code, status.message, status.SerializeToString(), request_id)
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error in %s request_id=%s", method, request_id)
            message = f"internal error; request id {request_id}"
            status = rich_status(code, message, "ERROR_REASON_INTERNAL", request_id)
            await _abort(context, code, message, status.SerializeToString(), request_id)
        finally:
            log.info(
                "rpc method=%s caller=%s status=%s duration_ms=%.2f request_id=%s",
                method,
                caller,
                code.name,
                (time.perf_counter() - started) * 1000,
                request_id,
            )
            call_context.reset(token)

    return serve


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
