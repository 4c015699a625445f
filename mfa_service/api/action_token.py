"""mfa.v1.ActionTokenService."""

from __future__ import annotations

from typing import Any

from grpc import aio

from mfa.v1 import action_token_service_pb2 as pb
from mfa.v1 import action_token_service_pb2_grpc as pb_grpc
from mfa_service.errors import NotImplementedYet

Context = aio.ServicerContext[Any, Any]


class ActionTokenServicer(pb_grpc.ActionTokenServiceServicer):
    async def ValidateActionToken(
        self, request: pb.ValidateActionTokenRequest, context: Context
    ) -> pb.ValidateActionTokenResponse:
        raise NotImplementedYet("ValidateActionToken")

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> pb.GetJwksResponse:
        raise NotImplementedYet("GetJwks")
