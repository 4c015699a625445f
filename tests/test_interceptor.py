"""The call interceptor: unexpected failures leak nothing, database trouble is UNAVAILABLE.

A tiny test-only grpc.aio server mounts ``CallInterceptor`` in front of generic handlers
that fail on purpose; no service code is mocked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from helpers import eventually, serving_handlers
from mfa_service.api.interceptor import REQUEST_ID_HEADER, CallInterceptor
from mfa_service.errors import DatabaseUnavailable

SERVICE = "mfatest.Failing"
SECRET = "hunter2"


async def _explode(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
    raise RuntimeError(f"db password {SECRET}")


async def _database_down(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
    raise DatabaseUnavailable()


@pytest.fixture
async def channel() -> AsyncIterator[aio.Channel]:
    handlers = {
        "Explode": grpc.unary_unary_rpc_method_handler(_explode),
        "DatabaseDown": grpc.unary_unary_rpc_method_handler(_database_down),
    }
    async with serving_handlers(CallInterceptor(), SERVICE, handlers) as ch:
        yield ch


def _pairs(metadata: object) -> tuple[tuple[str, str | bytes], ...]:
    """An error's trailing metadata as the (key, value) pairs it holds at runtime
    (grpc-stubs types each item as an opaque ``_Metadatum``)."""
    return cast(tuple[tuple[str, str | bytes], ...], metadata or ())


def _trailer(error: aio.AioRpcError, key: str) -> Any:
    values = [v for k, v in _pairs(error.trailing_metadata()) if k == key]
    assert len(values) == 1, f"expected one {key} trailer, got {values}"
    return values[0]


def _error_info(error: aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = status_pb2.Status.FromString(_trailer(error, "grpc-status-details-bin"))
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1
    return infos[0]


async def _call(channel: aio.Channel, method: str, request_id: str | None) -> aio.AioRpcError:
    metadata = ((REQUEST_ID_HEADER, request_id),) if request_id else None
    with pytest.raises(aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/{method}")(b"", metadata=metadata, timeout=5)  # type: ignore[call-arg]  # grpc-stubs: the serializers are optional
    return caught.value


@pytest.mark.parametrize("sent_request_id", ["req-test-42", None])
async def test_unexpected_exception_is_internal_with_request_id_and_no_text(
    channel: aio.Channel, sent_request_id: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mfa_service.rpc"):
        error = await _call(channel, "Explode", sent_request_id)
        # The call's log line is written as its handler ends, which may be just after
        # the caller has its answer: wait for it.
        await eventually(
            lambda: any("status=INTERNAL" in r.getMessage() for r in caplog.records),
            what="the call's status=INTERNAL log line",
        )

    assert error.code() == grpc.StatusCode.INTERNAL
    request_id = _trailer(error, REQUEST_ID_HEADER)
    if sent_request_id:
        assert request_id == sent_request_id
    assert request_id
    details = error.details()
    assert details is not None
    assert request_id in details
    assert SECRET not in details
    assert "RuntimeError" not in details
    assert SECRET.encode() not in b"".join(
        v if isinstance(v, bytes) else v.encode() for _, v in _pairs(error.trailing_metadata())
    )

    info = _error_info(error)
    assert info.reason == "ERROR_REASON_INTERNAL"
    assert info.domain == "mfa.v1"
    assert info.metadata["request_id"] == request_id

    # The operator finds the cause by the request id in the server's own log.
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in logged)
    assert any("status=INTERNAL" in r.getMessage() for r in logged)


async def test_database_unavailable_is_unavailable(channel: aio.Channel) -> None:
    error = await _call(channel, "DatabaseDown", "req-db-down")

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == DatabaseUnavailable.default_message
    info = _error_info(error)
    assert info.reason == "ERROR_REASON_DATABASE_UNAVAILABLE"
    assert info.metadata["request_id"] == "req-db-down"
