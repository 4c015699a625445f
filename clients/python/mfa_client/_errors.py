"""The one error type the client raises: a failed call, with its decoded details.

    Exception
    └── MfaServiceError      every failed call, sync or async, unary or streamed:
                             code (grpc.StatusCode), reason (mfa.v1.ErrorReason name),
                             message, request_id, field_violations, retry_after

The service sends a ``google.rpc.Status`` with an ``ErrorInfo`` (the reason, the request
id), a ``BadRequest`` (the fields at fault) or a ``RetryInfo`` (when to try again); a
failure of the transport (no connection, a deadline) has none of them and an empty
reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One request field the service refused (``google.rpc.BadRequest``): ``field`` is its
    path in the request, e.g. ``"settings.totp.issuer"``."""

    field: str
    description: str


@dataclass
class MfaServiceError(Exception):
    """A call to mfa-service failed.

    ``code`` is the gRPC status. ``reason`` is the ``mfa.v1.ErrorReason`` name (e.g.
    ``"ERROR_REASON_LOCKED_OUT"``), empty when the failure came from the transport
    rather than the service: branch on it, not on the message. ``request_id`` finds the
    call in the service's logs. ``field_violations`` name the request fields at fault
    (``INVALID_ARGUMENT``); ``retry_after`` says when a refusal such as a lockout ends
    (``RESOURCE_EXHAUSTED``), ``None`` when the service did not say.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    request_id: str = ""
    field_violations: list[FieldViolation] = field(default_factory=list)
    retry_after: timedelta | None = None

    def __str__(self) -> str:
        where = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.code.name}: {self.message}{where}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> MfaServiceError:
        """The error of a failed call of a ``grpc`` or ``grpc.aio`` channel (a raw stub's
        ``grpc.RpcError`` or ``grpc.aio.AioRpcError``), its details decoded."""
        result = cls(code=error.code(), message=error.details() or "")
        metadata: Any = error.trailing_metadata() or ()
        for key, value in metadata:
            if key == "x-request-id" and isinstance(value, str):
                result.request_id = value
            if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
                _decode_details(result, value)
        return result


def _decode_details(result: MfaServiceError, raw: bytes) -> None:
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            result.reason = info.reason
            result.request_id = info.metadata.get("request_id", result.request_id)
        elif detail.Unpack(bad):
            result.field_violations = [
                FieldViolation(v.field, v.description) for v in bad.field_violations
            ]
        elif detail.Unpack(retry):
            result.retry_after = retry.retry_delay.ToTimedelta()
