"""mfa.v1.MfaService."""

from __future__ import annotations

from typing import Any

from grpc import aio

from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import mfa_service_pb2_grpc as pb_grpc
from mfa_service.errors import NotImplementedYet

Context = aio.ServicerContext[Any, Any]


class MfaServicer(pb_grpc.MfaServiceServicer):
    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        raise NotImplementedYet("GetStatus")

    async def Enroll(self, request: pb.EnrollRequest, context: Context) -> pb.EnrollResponse:
        raise NotImplementedYet("Enroll")

    async def CompleteEnrollment(
        self, request: pb.CompleteEnrollmentRequest, context: Context
    ) -> pb.CompleteEnrollmentResponse:
        raise NotImplementedYet("CompleteEnrollment")

    async def Challenge(
        self, request: pb.ChallengeRequest, context: Context
    ) -> pb.ChallengeResponse:
        raise NotImplementedYet("Challenge")

    async def VerifySession(
        self, request: pb.VerifySessionRequest, context: Context
    ) -> pb.VerifySessionResponse:
        raise NotImplementedYet("VerifySession")

    async def IssueActionToken(
        self, request: pb.IssueActionTokenRequest, context: Context
    ) -> pb.IssueActionTokenResponse:
        raise NotImplementedYet("IssueActionToken")

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> pb.ListDevicesResponse:
        raise NotImplementedYet("ListDevices")

    async def UpdateDevice(
        self, request: pb.UpdateDeviceRequest, context: Context
    ) -> pb.UpdateDeviceResponse:
        raise NotImplementedYet("UpdateDevice")

    async def DeleteDevice(
        self, request: pb.DeleteDeviceRequest, context: Context
    ) -> pb.DeleteDeviceResponse:
        raise NotImplementedYet("DeleteDevice")

    async def RegenerateRecoveryCodes(
        self, request: pb.RegenerateRecoveryCodesRequest, context: Context
    ) -> pb.RegenerateRecoveryCodesResponse:
        raise NotImplementedYet("RegenerateRecoveryCodes")

    async def AcknowledgeRecoveryCodes(
        self, request: pb.AcknowledgeRecoveryCodesRequest, context: Context
    ) -> pb.AcknowledgeRecoveryCodesResponse:
        raise NotImplementedYet("AcknowledgeRecoveryCodes")
