"""The sync client (``grpc``'s blocking channel, no event loop): the same methods as the
async one, made of the same RPC descriptions (``_rpcs``), for threaded servers such as
Django or Flask."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from functools import cached_property
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from mfa.v1 import action_token_service_pb2_grpc, admin_service_pb2_grpc, mfa_service_pb2_grpc
from mfa_client import _rpcs as rpcs
from mfa_client._channel import DEFAULT_TIMEOUT_SECONDS, open_channel
from mfa_client._errors import MfaServiceError
from mfa_client._rpcs import ServerStream, Unary
from mfa_client._service import ServiceClient, method_of, result_type

_P = ParamSpec("_P")
_T = TypeVar("_T")


class SyncServiceClient(ServiceClient[grpc.Channel]):
    """A service over a blocking ``grpc`` channel: its methods return when answered.
    Safe to share between threads."""

    def _call(self, rpc: Unary[Any, _T]) -> _T:
        call = self._unary(rpc)
        attempts = self._attempts(rpc)
        while True:
            try:
                return rpc.result(call(rpc.request, **self._options(rpc)))
            except grpc.RpcError as error:
                delay = attempts.after(error)  # raises MfaServiceError when it was the last
            time.sleep(delay)

    def _stream(self, rpc: ServerStream[Any, _T]) -> Generator[_T, None, None]:
        call = self._server_stream(rpc)(rpc.request, metadata=self._metadata or None)
        try:
            for response in call:
                yield rpc.result(response)
        except grpc.RpcError as error:
            raise MfaServiceError.from_rpc_error(error) from None
        finally:
            call.cancel()


def _unary(
    op: Callable[_P, Unary[Any, _T]],
) -> Callable[Concatenate[SyncServiceClient, _P], _T]:
    def method(self: SyncServiceClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._call(op(*args, **kwargs))

    return method_of(method, op, result_type(op))


def _server_stream(
    op: Callable[_P, ServerStream[Any, _T]],
) -> Callable[Concatenate[SyncServiceClient, _P], Generator[_T, None, None]]:
    def method(self: SyncServiceClient, /, *args: _P.args, **kwargs: _P.kwargs) -> Any:
        return self._stream(op(*args, **kwargs))

    return method_of(method, op, Generator[result_type(op), None, None])  # type: ignore[misc]  # a runtime annotation


class SyncMfaClient(SyncServiceClient):
    """``mfa.v1.MfaService``, blocking: the methods of ``MfaClient``."""

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
    def stub(self) -> mfa_service_pb2_grpc.MfaServiceStub:
        """The generated stub, for what the typed methods do not say."""
        return mfa_service_pb2_grpc.MfaServiceStub(self._channel)


class SyncAdminClient(SyncServiceClient):
    """``mfa.v1.AdminService``, blocking: the methods of ``AdminClient``;
    ``watch_audit_events`` is a generator (``close()`` it to hang up)."""

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
    def stub(self) -> admin_service_pb2_grpc.AdminServiceStub:
        """The generated stub, for what the typed methods do not say."""
        return admin_service_pb2_grpc.AdminServiceStub(self._channel)


class SyncActionTokenClient(SyncServiceClient):
    """``mfa.v1.ActionTokenService``, blocking: the methods of ``ActionTokenClient``
    (``validate`` sleeps between its keyed retries)."""

    validate = _unary(rpcs.validate)
    jwks = _unary(rpcs.jwks)

    @cached_property
    def stub(self) -> action_token_service_pb2_grpc.ActionTokenServiceStub:
        """The generated stub, for what the typed methods do not say."""
        return action_token_service_pb2_grpc.ActionTokenServiceStub(self._channel)


class SyncClient:
    """One blocking ``grpc`` channel to mfa-service and a typed client per service:
    ``client.mfa``, ``client.admin``, ``client.action_tokens``, with the methods of
    ``Client``'s, returning their results instead of coroutines.

    For a threaded web server (Django, Flask): one ``SyncClient`` per process, shared by
    its threads. gRPC channels do not survive ``fork()``: a server that forks workers
    (gunicorn's ``preload_app``) connects in each worker, after the fork. Close it
    (``client.close()``, or ``with``) when done.
    """

    channel: grpc.Channel
    mfa: SyncMfaClient
    """``MfaService``: the API backend's calls, for a user."""
    admin: SyncAdminClient
    """``AdminService``: the dashboard backend's and the operators' calls."""
    action_tokens: SyncActionTokenClient
    """``ActionTokenService``: the wallet signer's calls."""
    mfa_stub: mfa_service_pb2_grpc.MfaServiceStub
    action_tokens_stub: action_token_service_pb2_grpc.ActionTokenServiceStub

    def __init__(self, channel: grpc.Channel, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.channel = channel
        self.mfa = SyncMfaClient(channel, timeout)
        self.admin = SyncAdminClient(channel, timeout)
        self.action_tokens = SyncActionTokenClient(channel, timeout)
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
    ) -> SyncClient:
        """A client over TLS (PEM bytes; with a client certificate for mutual TLS), or
        plaintext if ``insecure``: as ``Client.connect``, with a blocking channel."""
        channel = open_channel(
            target,
            insecure=insecure,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            plaintext=grpc.insecure_channel,
            tls=grpc.secure_channel,
        )
        return cls(channel, timeout=timeout)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self.channel.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
