"""The grpc.aio server: mfa.v1 services, health, reflection, limits and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

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
from mfa_service.api.interceptor import CallInterceptor
from mfa_service.api.mfa import MfaServicer
from mfa_service.config import TlsConfig

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


class Server:
    def __init__(
        self,
        servicers: Servicers,
        *,
        listen_addr: str,
        tls: TlsConfig | None,
        database_ready: Callable[[], Awaitable[bool]],
        health_interval_seconds: float = 2.0,
    ) -> None:
        self._server = aio.server(
            interceptors=[CallInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        mfa_service_pb2_grpc.add_MfaServiceServicer_to_server(servicers.mfa, self._server)
        action_token_service_pb2_grpc.add_ActionTokenServiceServicer_to_server(
            servicers.action_tokens, self._server
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(servicers.admin, self._server)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self._listen_addr = listen_addr
        self._tls = tls
        self._database_ready = database_ready
        self._health_interval = health_interval_seconds
        self._health_task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        if self._tls is None:
            self.port = self._server.add_insecure_port(self._listen_addr)
        else:
            ca = self._tls.client_ca_file.read_bytes() if self._tls.client_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(self._tls.key_file.read_bytes(), self._tls.cert_file.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            self.port = self._server.add_secure_port(self._listen_addr, credentials)
        await self._server.start()
        await self._set_serving(await self._database_ready())
        self._health_task = asyncio.create_task(self._watch_database())
        return self.port

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _watch_database(self) -> None:
        """Health follows the database: NOT_SERVING while it is unreachable."""
        serving = True
        while True:
            await asyncio.sleep(self._health_interval)
            ready = await self._database_ready()
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
