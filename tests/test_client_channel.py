"""The typed client's channel: calls balanced over replicas, and retried where safe.

``Client.connect`` balances calls over every address of its target (round_robin): the
load balancing of a deployment with several replicas (docs/operations.md). And it
retries what is safe to retry, and nothing else.

Reads (``mfa_client.READ_METHODS``) are sent again by the channel's retry policy when
they fail with UNAVAILABLE, as they do while a replica cannot reach PostgreSQL during a
failover; writes are not (``ValidateActionToken`` has its own, keyed retry: see
test_signer_example). A proxy between the client and the real server fails the first
calls of every method.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import pytest

from flows import call
from helpers import refused
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import CHANNEL_OPTIONS, READ_METHODS, Client
from mfa_service.app import Application

ENV = "env-retries"
pytestmark = pytest.mark.environments(ENV)


class FailingProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # not subscriptable at runtime
    """Forwards every unary call to ``upstream`` as raw bytes, after failing the first
    ``fail`` calls of each method with UNAVAILABLE (reads: after the server answered,
    so the answer is lost; writes: before they reach it)."""

    def __init__(self, upstream: str, *, fail: int) -> None:
        self.calls: Counter[str] = Counter()
        self._fail = fail
        self._upstream = grpc.aio.insecure_channel(upstream)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((self,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method

        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.calls[method] += 1
            read = tuple(method.strip("/").split("/")) in READ_METHODS
            failing = self.calls[method] <= self._fail
            if failing and not read:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "lost by test proxy")
            try:
                response: bytes = await self._upstream.unary_unary(method)(request)  # type: ignore[call-arg]  # grpc-stubs: the serializers are optional
            except grpc.aio.AioRpcError as error:
                await context.abort(error.code(), error.details() or "")
            if failing:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost by test proxy")
            return response

        return grpc.unary_unary_rpc_method_handler(handle)

    async def __aenter__(self) -> FailingProxy:
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(None)
        await self._upstream.close()  # type: ignore[call-arg]  # grpc-stubs: grace is optional


def test_the_read_methods_exist() -> None:
    """A renamed or removed RPC would silently lose its retries."""
    from mfa.v1 import action_token_service_pb2, admin_service_pb2

    files = (pb.DESCRIPTOR, admin_service_pb2.DESCRIPTOR, action_token_service_pb2.DESCRIPTOR)
    methods = {
        (service.full_name, method.name)
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    }
    assert set(READ_METHODS) <= methods


@pytest.mark.parametrize("fail", [1, 3])
async def test_reads_are_retried(app: Application, fail: int) -> None:
    async with (
        FailingProxy(f"127.0.0.1:{app.port}", fail=fail) as proxy,
        Client.connect(f"127.0.0.1:{proxy.port}", insecure=True) as client,
    ):
        settings = await client.admin.get_settings(ENV)
        status = await client.mfa_stub.GetStatus(
            pb.GetStatusRequest(environment_id=ENV, user_id="alice"), timeout=10
        )
        jwks = await client.action_tokens.jwks()
    assert settings.environment_id == ENV
    assert not status.enrollment_required
    assert jwks["keys"]
    assert proxy.calls == {
        "/mfa.v1.AdminService/GetSettings": fail + 1,
        "/mfa.v1.MfaService/GetStatus": fail + 1,
        "/mfa.v1.ActionTokenService/GetJwks": fail + 1,
    }


async def test_read_attempts_are_bounded(app: Application) -> None:
    async with (
        FailingProxy(f"127.0.0.1:{app.port}", fail=100) as proxy,
        Client.connect(f"127.0.0.1:{proxy.port}", insecure=True) as client,
    ):
        # The proxy's own refusal (no ErrorInfo): the service never answered.
        await refused(client.admin.get_settings(ENV), grpc.StatusCode.UNAVAILABLE, "")
    assert proxy.calls["/mfa.v1.AdminService/GetSettings"] == 4


async def test_writes_are_not_retried(app: Application) -> None:
    async with (
        FailingProxy(f"127.0.0.1:{app.port}", fail=1) as proxy,
        Client.connect(f"127.0.0.1:{proxy.port}", insecure=True) as client,
    ):
        request = pb.EnrollRequest(environment_id=ENV, user_id="bob", method=types.METHOD_TOTP)
        await refused(
            call(client.mfa_stub.Enroll(request, timeout=10)), grpc.StatusCode.UNAVAILABLE, ""
        )
        assert proxy.calls["/mfa.v1.MfaService/Enroll"] == 1
        # The channel options are exported for channels made by hand.
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{proxy.port}", options=list(CHANNEL_OPTIONS)
        ) as channel:
            by_hand = Client(channel)
            assert (await by_hand.admin.get_settings(ENV)).environment_id == ENV
    assert proxy.calls["/mfa.v1.AdminService/GetSettings"] == 2


async def test_calls_are_balanced_over_every_address_of_the_target(app: Application) -> None:
    async with (
        FailingProxy(f"127.0.0.1:{app.port}", fail=0) as first,
        FailingProxy(f"127.0.0.1:{app.port}", fail=0) as second,
        Client.connect(
            f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}", insecure=True
        ) as client,
    ):
        await client.admin.get_settings(ENV)
        for _ in range(40):
            await client.admin.get_settings(ENV)
    calls = [proxy.calls["/mfa.v1.AdminService/GetSettings"] for proxy in (first, second)]
    assert sum(calls) == 41
    # Round robin once both connections are up: at most a few calls before that.
    assert min(calls) >= 15, calls
