"""mfa.v1.ActionTokenService."""

from __future__ import annotations

from typing import Any

from grpc import aio

from mfa.v1 import action_token_service_pb2 as pb
from mfa.v1 import action_token_service_pb2_grpc as pb_grpc
from mfa.v1 import types_pb2
from mfa_service.api import context as call_context
from mfa_service.api import convert
from mfa_service.services.action_tokens import ActionTokenService, ValidationRequest

Context = aio.ServicerContext[Any, Any]

MAX_IDEMPOTENCY_KEY = 128


class ActionTokenServicer(pb_grpc.ActionTokenServiceServicer):
    def __init__(self, tokens: ActionTokenService) -> None:
        self._tokens = tokens

    async def ValidateActionToken(
        self, request: pb.ValidateActionTokenRequest, context: Context
    ) -> pb.ValidateActionTokenResponse:
        token = convert.action_token(request.token, "token")
        reason = await self._tokens.validate(
            ValidationRequest(
                environment_id=convert.environment_id(request.environment_id),
                user_id=convert.user_id(request.user_id),
                action=convert.action_from_proto(request.action, "action"),
                token=token,
                payload_digest=convert.payload_digest(request.payload_digest),
                session_id=convert.session_id(request.session_id) if request.session_id else None,
                idempotency_key=convert.identifier(
                    request.idempotency_key, "idempotency_key", MAX_IDEMPOTENCY_KEY
                )
                if request.idempotency_key
                else None,
            ),
            call_context.current(),
        )
        return pb.ValidateActionTokenResponse(
            decision=types_pb2.DECISION_ALLOW if reason.allows else types_pb2.DECISION_DENY,
            reason=types_pb2.DecisionReason.Value(f"DECISION_REASON_{reason.name}"),
        )

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(jwks_json=await self._tokens.jwks())
