"""The async client (``grpc.aio``): a typed method for every RPC of ``_rpcs``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import grpc

from mfa_client import _rpcs as rpcs
from mfa_client._channel import DEFAULT_TIMEOUT_SECONDS, open_channel
from mfa_client._errors import MfaServiceError
from mfa_client._rpcs import ServerStream, Unary
from mfa_client._service import ServiceClient, method_of, result_type

# The generated stub classes; over an aio channel their calls are awaitable, which
# their .pyi says with names that exist for type checkers only.
if TYPE_CHECKING:
    from mfa.v1.action_token_service_pb2_grpc import (
        ActionTokenServiceAsyncStub as ActionTokenServiceStub,
    )
    from mfa.v1.admin_service_pb2_grpc import AdminServiceAsyncStub as AdminServiceStub
    from mfa.v1.mfa_service_pb2_grpc import MfaServiceAsyncStub as MfaServiceStub
else:
    from mfa.v1.action_token_service_pb2_grpc import ActionTokenServiceStub
    from mfa.v1.admin_service_pb2_grpc import AdminServiceStub
    from mfa.v1.mfa_service_pb2_grpc import MfaServiceStub

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncServiceClient(ServiceClient[grpc.aio.Channel]):
    """A service over a ``grpc.aio`` channel: its methods are coroutines."""

    async def _call(self, rpc: Unary[Any, _T]) -> _T:
        call = self._unary(rpc)
        attempts = self._attempts(rpc)
        while True:
            try:
                return rpc.result(await call(rpc.request, **self._options(rpc)))
            except grpc.RpcError as error:
                delay = attempts.after(error)  # raises MfaServiceError when it was the last
            await asyncio.sleep(delay)

    async def _stream(self, rpc: ServerStream[Any, _T]) -> AsyncGenerator[_T, None]:
        call = self._server_stream(rpc)(rpc.request, metadata=self._metadata or None)
        try:
            async for response in call:
                yield rpc.result(response)
        except grpc.RpcError as error:
            raise MfaServiceError.from_rpc_error(error) from None
        finally:
            call.cancel()


def _unary(
    op: Callable[_P, Unary[Any, _T]],
) -> Callable[Concatenate[AsyncServiceClient, _P], Coroutine[Any, Any, _T]]:
    async def method(self: AsyncServiceClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._call(op(*args, **kwargs))

    return method_of(method, op, result_type(op))


def _server_stream(
    op: Callable[_P, ServerStream[Any, _T]],
) -> Callable[Concatenate[AsyncServiceClient, _P], AsyncGenerator[_T, None]]:
    def method(self: AsyncServiceClient, /, *args: _P.args, **kwargs: _P.kwargs) -> Any:
        return self._stream(op(*args, **kwargs))

    return method_of(method, op, AsyncGenerator[result_type(op), None])  # type: ignore[misc]  # a runtime annotation


class MfaClient(AsyncServiceClient):
    """``mfa.v1.MfaService``: enrollment, challenges, session and action verification,
    devices and recovery codes (the API backend, for a user whose primary login it has
    checked)."""

    get_status = _unary(rpcs.get_status)
    enroll = _unary(rpcs.enroll)
    complete_enrollment = _unary(rpcs.complete_enrollment)
    challenge = _unary(rpcs.challenge)
    verify_session = _unary(rpcs.verify_session)
    issue_action_token = _unary(rpcs.issue_action_token)
    list_devices = _unary(rpcs.list_devices)
    update_device = _unary(rpcs.update_device)
    delete_device = _unary(rpcs.delete_device)
    regenerate_recovery_codes = _unary(rpcs.regenerate_recovery_codes)
    acknowledge_recovery_codes = _unary(rpcs.acknowledge_recovery_codes)

    @cached_property
    def stub(self) -> MfaServiceStub:
        """The generated stub, for what the typed methods do not say."""
        return MfaServiceStub(self._channel)


class AdminClient(AsyncServiceClient):
    """``mfa.v1.AdminService``: environments, settings, user resets, the audit log and
    webhooks (the dashboard backend, operators)."""

    create_environment = _unary(rpcs.create_environment)
    list_environments = _unary(rpcs.list_environments)
    get_settings = _unary(rpcs.get_settings)
    update_settings = _unary(rpcs.update_settings)
    reset_user_mfa = _unary(rpcs.reset_user_mfa)
    list_audit_events = _unary(rpcs.list_audit_events)
    watch_audit_events = _server_stream(rpcs.watch_audit_events)
    create_webhook = _unary(rpcs.create_webhook)
    list_webhooks = _unary(rpcs.list_webhooks)
    delete_webhook = _unary(rpcs.delete_webhook)

    @cached_property
    def stub(self) -> AdminServiceStub:
        """The generated stub, for what the typed methods do not say."""
        return AdminServiceStub(self._channel)


class ActionTokenClient(AsyncServiceClient):
    """``mfa.v1.ActionTokenService``: "may this action run now?" (the wallet signer)."""

    validate = _unary(rpcs.validate)
    jwks = _unary(rpcs.jwks)

    @cached_property
    def stub(self) -> ActionTokenServiceStub:
        """The generated stub, for what the typed methods do not say."""
        return ActionTokenServiceStub(self._channel)


class Client:
    """One ``grpc.aio`` channel to mfa-service and a typed client per service:
    ``client.mfa``, ``client.admin``, ``client.action_tokens``.

    ``client.mfa_stub`` and ``client.action_tokens_stub`` are the generated stubs (also
    ``client.admin.stub``). Close it (``await client.close()``, or ``async with``) when
    done.
    """

    channel: grpc.aio.Channel
    mfa: MfaClient
    """``MfaService``: the API backend's calls, for a user."""
    admin: AdminClient
    """``AdminService``: the dashboard backend's and the operators' calls."""
    action_tokens: ActionTokenClient
    """``ActionTokenService``: the wallet signer's calls."""
    mfa_stub: MfaServiceStub
    action_tokens_stub: ActionTokenServiceStub

    def __init__(
        self, channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.channel = channel
        self.mfa = MfaClient(channel, timeout)
        self.admin = AdminClient(channel, timeout)
        self.action_tokens = ActionTokenClient(channel, timeout)
        self.mfa_stub = self.mfa.stub
        self.action_tokens_stub = self.action_tokens.stub

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
        """A client over TLS (PEM bytes; with a client certificate for mutual TLS), or
        plaintext if ``insecure``. ``timeout``: each call's deadline in seconds.

        ``target`` may resolve to several replicas: calls are balanced over them
        (round_robin). Reads (``READ_METHODS``) failing with ``UNAVAILABLE`` are retried.
        """
        channel = open_channel(
            target,
            insecure=insecure,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            plaintext=grpc.aio.insecure_channel,
            tls=grpc.aio.secure_channel,
        )
        return cls(channel, timeout=timeout)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
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
