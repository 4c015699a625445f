"""A small typed async client over the generated mfa.v1 stubs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf import field_mask_pb2

from mfa.v1 import (
    action_token_service_pb2_grpc,
    admin_service_pb2,
    admin_service_pb2_grpc,
    mfa_service_pb2_grpc,
    types_pb2,
)
from mfa_client._errors import MfaServiceError

DEFAULT_TIMEOUT_SECONDS = 5.0
_Response = TypeVar("_Response")


async def _call(call: Callable[[], Awaitable[_Response]]) -> _Response:
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        raise MfaServiceError.from_rpc_error(error) from None


class AdminClient:
    """AdminService: settings, resets and the audit log (the dashboard backend)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self.stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        self._timeout = timeout

    async def get_settings(self, environment_id: str) -> types_pb2.Settings:
        request = admin_service_pb2.GetSettingsRequest(environment_id=environment_id)
        response = await _call(lambda: self.stub.GetSettings(request, timeout=self._timeout))
        return response.settings

    async def update_settings(
        self, settings: types_pb2.Settings, paths: Sequence[str]
    ) -> types_pb2.Settings:
        """Change the fields named by ``paths`` (e.g. ``["totp.issuer"]``, or ``["*"]``)."""
        request = admin_service_pb2.UpdateSettingsRequest(
            settings=settings, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        )
        response = await _call(lambda: self.stub.UpdateSettings(request, timeout=self._timeout))
        return response.settings


class Client:
    """One channel to mfa-service and a typed client per service.

    ``client.admin`` has typed helpers; ``client.mfa_stub`` and
    ``client.action_tokens_stub`` are the generated stubs for the rest.
    """

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.channel = channel
        self.admin = AdminClient(channel, timeout)
        self.mfa_stub = mfa_service_pb2_grpc.MfaServiceStub(channel)
        self.action_tokens_stub = action_token_service_pb2_grpc.ActionTokenServiceStub(channel)

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        insecure: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> Client:
        """A client over TLS (with a client certificate for mTLS), or plaintext if ``insecure``."""
        if insecure:
            channel = grpc.aio.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
            channel = grpc.aio.secure_channel(target, credentials)
        return cls(channel, timeout=timeout)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
