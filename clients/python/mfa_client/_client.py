"""A small typed async client over the generated mfa.v1 stubs."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from mfa.v1 import (
    action_token_service_pb2,
    action_token_service_pb2_grpc,
    admin_service_pb2,
    admin_service_pb2_grpc,
    mfa_service_pb2_grpc,
    types_pb2,
)
from mfa_client._errors import MfaServiceError

DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_VALIDATE_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 1.0
# The answer may have been lost after the server decided: safe to resend only with the
# same idempotency key, which makes the server answer as it did the first time.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_jitter = random.SystemRandom()
_Response = TypeVar("_Response")

# Calls are balanced over every address the target resolves to (gRPC's round_robin):
# "dns:///mfa.internal:50051" for a name with one address a replica, or a list such as
# "ipv4:10.0.0.1:50051,10.0.0.2:50051". Each call goes to the next ready replica, over
# a TLS connection of this client's own, so mutual TLS stays end to end.
#
# Reads change nothing, so gRPC itself sends one again when it fails with UNAVAILABLE:
# the replica was unreachable or restarting, or could not reach its database (during a
# PostgreSQL failover). A retry policy in the channel's service config (gRFC A6), so it
# holds for the generated stubs' reads too. Writes are never resent blindly: only
# ValidateActionToken is, by ActionTokenClient.validate, under one idempotency key.
READ_METHODS: tuple[tuple[str, str], ...] = (
    ("mfa.v1.MfaService", "GetStatus"),
    ("mfa.v1.MfaService", "ListDevices"),
    ("mfa.v1.AdminService", "ListEnvironments"),
    ("mfa.v1.AdminService", "GetSettings"),
    ("mfa.v1.AdminService", "ListAuditEvents"),
    ("mfa.v1.ActionTokenService", "GetJwks"),
)
READ_ATTEMPTS = 4
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method} for service, method in READ_METHODS
                ],
                "retryPolicy": {
                    "maxAttempts": READ_ATTEMPTS,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
# What Client.connect gives its channel; pass them to a channel made by hand.
CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
)


async def _call(call: Callable[[], Awaitable[_Response]]) -> _Response:
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        raise MfaServiceError.from_rpc_error(error) from None


class AdminClient:
    """AdminService: environments, settings, resets and the audit log (the dashboard
    backend)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self.stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        self._timeout = timeout

    async def create_environment(
        self, settings: types_pb2.Settings | str, paths: Sequence[str] = ()
    ) -> types_pb2.Settings:
        """Create an environment: ``"env-1"`` with the default settings, or ``settings``
        (its ``environment_id`` names it) taking the fields named by ``paths`` (empty:
        every field set to a non-zero value; ``["totp_enabled"]`` with ``totp_enabled``
        false turns TOTP off). Raises ``MfaServiceError`` with ``ALREADY_EXISTS`` if it
        exists. Not retried: a lost answer shows as ``ALREADY_EXISTS`` when sent again."""
        if isinstance(settings, str):
            settings = types_pb2.Settings(environment_id=settings)
        request = admin_service_pb2.CreateEnvironmentRequest(
            settings=settings, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        )
        response = await _call(lambda: self.stub.CreateEnvironment(request, timeout=self._timeout))
        return response.settings

    async def list_environments(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[types_pb2.Settings], str]:
        """One page of environments in id order, and the token of the next (empty on the
        last page). ``page_size`` 1..500; 0 means 50."""
        request = admin_service_pb2.ListEnvironmentsRequest(
            page_size=page_size, page_token=page_token
        )
        response = await _call(lambda: self.stub.ListEnvironments(request, timeout=self._timeout))
        return list(response.environments), response.next_page_token

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

    async def watch_audit_events(
        self, environment_id: str, after_cursor: str = ""
    ) -> AsyncGenerator[admin_service_pb2.WatchAuditEventsResponse, None]:
        """The environment's audit events in commit order, after ``after_cursor`` (empty:
        from the oldest kept), then each new one as it commits, without end. Each
        response carries its ``cursor``: resume with the last one received (after an
        error, or when the server stopped and ended the stream) and nothing is missed
        or seen twice. No deadline, no retry: the caller decides when to resume; ``aclose()``
        hangs up."""
        request = admin_service_pb2.WatchAuditEventsRequest(
            environment_id=environment_id, after_cursor=after_cursor
        )
        call = self.stub.WatchAuditEvents(request)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            raise MfaServiceError.from_rpc_error(error) from None
        finally:
            call.cancel()


@dataclass(frozen=True, slots=True)
class Validation:
    """A ``ValidateActionToken`` decision: ``allowed`` only on ``DECISION_ALLOW``."""

    decision: types_pb2.Decision.ValueType
    reason: types_pb2.DecisionReason.ValueType

    @property
    def allowed(self) -> bool:
        return self.decision == types_pb2.DECISION_ALLOW

    @property
    def reason_name(self) -> str:
        """E.g. ``"DECISION_REASON_TOKEN_ALREADY_USED"``."""
        return types_pb2.DecisionReason.Name(self.reason)


class ActionTokenClient:
    """ActionTokenService: "may this action run now?" (the wallet signer)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float,
        *,
        max_attempts: int = DEFAULT_VALIDATE_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF_SECONDS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.stub = action_token_service_pb2_grpc.ActionTokenServiceStub(channel)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff = backoff

    async def validate(
        self,
        *,
        environment_id: str,
        user_id: str,
        action: types_pb2.Action.ValueType,
        token: str = "",
        payload_digest: bytes = b"",
        session_id: str = "",
        idempotency_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline per attempt)
    ) -> Validation:
        """Ask whether ``action`` may run now, consuming a single-use ``token``.

        Each attempt has its own deadline (``timeout``). ``UNAVAILABLE`` and
        ``DEADLINE_EXCEEDED`` are retried under one idempotency key (a new UUID unless
        given), so a retry after a lost answer gets the first decision rather than
        ``TOKEN_ALREADY_USED``. Other failures raise ``MfaServiceError`` at once.
        """
        request = action_token_service_pb2.ValidateActionTokenRequest(
            environment_id=environment_id,
            user_id=user_id,
            action=action,
            token=token,
            payload_digest=payload_digest,
            session_id=session_id,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        deadline = self._timeout if timeout is None else timeout
        attempt = 1
        while True:
            try:
                response = await _call(
                    lambda: self.stub.ValidateActionToken(request, timeout=deadline)
                )
            except MfaServiceError as error:
                if error.code not in _RETRYABLE or attempt >= self._max_attempts:
                    raise
                # Full jitter, so replicas of a caller do not retry in step.
                await asyncio.sleep(
                    _jitter.uniform(0, min(_MAX_BACKOFF_SECONDS, self._backoff * 2**attempt))
                )
                attempt += 1
                continue
            return Validation(decision=response.decision, reason=response.reason)

    async def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set (RFC 7517) whose keys sign action tokens."""
        request = action_token_service_pb2.GetJwksRequest()
        response = await _call(lambda: self.stub.GetJwks(request, timeout=self._timeout))
        jwks: dict[str, Any] = json.loads(response.jwks_json)
        return jwks


class Client:
    """One channel to mfa-service and a typed client per service.

    ``client.admin`` and ``client.action_tokens`` have typed helpers;
    ``client.mfa_stub`` and ``client.action_tokens_stub`` are the generated stubs.
    """

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.channel = channel
        self.admin = AdminClient(channel, timeout)
        self.mfa_stub = mfa_service_pb2_grpc.MfaServiceStub(channel)
        self.action_tokens = ActionTokenClient(channel, timeout)
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
        """A client over TLS (with a client certificate for mTLS), or plaintext if ``insecure``.

        ``target`` may resolve to several replicas: calls are balanced over them
        (round_robin). Reads (``READ_METHODS``) failing with ``UNAVAILABLE`` are retried.
        """
        options = list(CHANNEL_OPTIONS)
        if insecure:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
            channel = grpc.aio.secure_channel(target, credentials, options=options)
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
