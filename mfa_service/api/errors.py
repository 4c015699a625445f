"""The one table from ``MfaError`` families to gRPC status codes, and the rich status.

Errors travel as ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer
(what grpcio-status and every gRPC client library read), with an ``ErrorInfo`` whose
reason is the ``mfa.v1.ErrorReason`` name and whose metadata holds the request id,
plus ``BadRequest`` field violations or ``RetryInfo`` where they apply.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mfa_service import errors

ERROR_DOMAIN = "mfa.v1"

# A refusal travels in the trailers: its message twice (percent-encoded in grpc-message,
# and in grpc-status-details-bin with the violations, base64). Clients drop trailers
# over 8-16 KiB, and the caller would get RESOURCE_EXHAUSTED instead of the refusal; a
# message may echo request input, and a request may break one rule many times.
MAX_MESSAGE_BYTES = 512
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 256
MAX_VIOLATIONS_BYTES = 2048

STATUS_CODES: dict[type[errors.MfaError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def status_code(error: errors.MfaError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    raise LookupError(f"{type(error).__name__} has no gRPC status code")  # a bug, caught by tests


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def _bounded_violations(
    violations: list[errors.FieldViolation],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The first violations, as many as fit the budget (always at least one)."""
    kept: list[error_details_pb2.BadRequest.FieldViolation] = []
    used = 0
    for v in violations:
        field = bounded(v.field, MAX_FIELD_BYTES)
        description = bounded(v.description, MAX_DESCRIPTION_BYTES)
        used += len(field.encode()) + len(description.encode())
        if kept and used > MAX_VIOLATIONS_BYTES:
            break
        kept.append(
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        )
    return kept


def rich_status(
    code: grpc.StatusCode, message: str, reason: str, request_id: str
) -> status_pb2.Status:
    message = bounded(message, MAX_MESSAGE_BYTES)
    info = error_details_pb2.ErrorInfo(
        reason=reason,
        domain=ERROR_DOMAIN,
        metadata={"request_id": request_id},
    )
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=[_packed(info)]
    )


def status_of(error: errors.MfaError, request_id: str) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = status_code(error)
    status = rich_status(code, error.message, error.reason, request_id)
    if isinstance(error, errors.InvalidArgument):
        status.details.append(
            _packed(
                error_details_pb2.BadRequest(field_violations=_bounded_violations(error.violations))
            )
        )
    if isinstance(error, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        status.details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return code, status
