"""The grpc.aio server: mfa.v1 services, health, reflection, limits and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from mfa.v1 import (
    action_token_service_pb2,
    action_token_service_pb2_grpc,
    admin_service_pb2,
    admin_service_pb2_grpc,
    mfa_service_pb2,
    mfa_service_pb2_grpc,
)
from mfa_service.api.action_token import ActionTokenServicer
from mfa_service.api.admin import AdminServicer
from mfa_service.api.authorization import Authorizer
from mfa_service.api.interceptor import CallInterceptor
from mfa_service.api.metrics import Metrics
from mfa_service.api.mfa import MfaServicer
from mfa_service.config import TlsConfig
from mfa_service.listening import PortUnavailable

log = logging.getLogger("mfa_service.server")

SERVICE_NAMES = (
    mfa_service_pb2.DESCRIPTOR.services_by_name["MfaService"].full_name,
    action_token_service_pb2.DESCRIPTOR.services_by_name["ActionTokenService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# Requests are ids, codes and WebAuthn JSON of a few KiB: refuse anything near gRPC's
# 4 MiB default long before it is parsed.
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass
class Servicers:
    mfa: MfaServicer
    action_tokens: ActionTokenServicer
    admin: AdminServicer


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1, whose Watch streams end once they have reported the shutdown.

    As grpcio's reference ``aio.HealthServicer``, except for that: an open Watch is a
    call in flight (client-side health checking keeps one per channel), so a Watch that
    never ends would hold every graceful stop for its whole grace period.
    """

    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {
            "": health_pb2.HealthCheckResponse.SERVING
        }
        self._changed = asyncio.Condition()
        self._shutting_down = False

    def _current(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        return self._status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> None:
        sent = None
        while True:
            async with self._changed:
                while not self._shutting_down and self._current(request.service) == sent:
                    await self._changed.wait()
                status = self._current(request.service)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if self._shutting_down:
                return

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        async with self._changed:
            if not self._shutting_down:
                self._status[service] = status
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service, for good; each Watch reports it and ends."""
        async with self._changed:
            self._shutting_down = True
            for service in self._status:
                self._status[service] = health_pb2.HealthCheckResponse.NOT_SERVING
            self._changed.notify_all()


class Server:
    def __init__(
        self,
        *,
        listen_addr: str,
        tls: TlsConfig | None,
        health_interval_seconds: float = 2.0,
        reuse_port: bool = False,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        """Binds ``listen_addr`` at once, before the services exist (``start`` adds them):
        a port in use stops start-up before anything is written (``PortUnavailable``).

        ``reuse_port``: share the port with the other workers of ``serve --workers N``
        (SO_REUSEPORT); otherwise a port already in use is an error. ``metrics`` and
        ``tracer``: what the interceptor records each call in (None: nothing)."""
        authorizer = None
        if tls is not None and tls.client_ca_file is not None:
            authorizer = Authorizer(tls.caller_roles)
        self._server = aio.server(
            interceptors=[CallInterceptor(authorizer, metrics=metrics, tracer=tracer)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", int(reuse_port)),
            ],
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self._health_interval = health_interval_seconds
        self._health_task: asyncio.Task[None] | None = None
        self.port = _bind(self._server, listen_addr, tls)

    async def start(
        self, servicers: Servicers, database_ready: Callable[[], Awaitable[bool]]
    ) -> int:
        """Serve ``servicers`` on the bound port; health follows ``database_ready``."""
        mfa_service_pb2_grpc.add_MfaServiceServicer_to_server(servicers.mfa, self._server)
        action_token_service_pb2_grpc.add_ActionTokenServiceServicer_to_server(
            servicers.action_tokens, self._server
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(servicers.admin, self._server)
        await self._server.start()
        await self._set_serving(await database_ready())
        self._health_task = asyncio.create_task(self._watch_database(database_ready))
        return self.port

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _watch_database(self, database_ready: Callable[[], Awaitable[bool]]) -> None:
        """Health follows the database: NOT_SERVING while it is unreachable."""
        serving = True
        while True:
            await asyncio.sleep(self._health_interval)
            ready = await database_ready()
            if ready != serving:
                log.warning("database %s", "reachable again" if ready else "unreachable")
                serving = ready
                await self._set_serving(ready)

    async def stop(self, grace_seconds: float) -> None:
        """Graceful stop: NOT_SERVING first, then let in-flight calls finish."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace_seconds)

    async def close(self) -> None:
        """Release the port of a server whose start-up failed before ``start``. gRPC
        lets a bound port go only once started: it starts with no service but health,
        NOT_SERVING, and stops at once."""
        await self.health.enter_graceful_shutdown()
        await self._server.start()
        await self._server.stop(None)


def _bind(server: aio.Server, listen_addr: str, tls: TlsConfig | None) -> int:
    """Bind the server's port now (gRPC listens from ``start``); its number."""
    try:
        if tls is None:
            port = server.add_insecure_port(listen_addr)
        else:
            ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            port = server.add_secure_port(listen_addr, credentials)
    except RuntimeError:  # grpcio: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise PortUnavailable(
            "MFA_LISTEN_ADDR",
            f"cannot listen on {listen_addr}: in use, or not an address of this host",
        )
    return port
