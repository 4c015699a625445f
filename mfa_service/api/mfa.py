"""mfa.v1.MfaService."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grpc import aio

from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import mfa_service_pb2_grpc as pb_grpc
from mfa_service.api import context as call_context
from mfa_service.api import convert
from mfa_service.domain import totp
from mfa_service.domain.model import Method
from mfa_service.errors import InvalidArgument
from mfa_service.services.action_tokens import ActionTokenService, Coverage
from mfa_service.services.devices import DeviceService
from mfa_service.services.enrollment import EnrollmentService
from mfa_service.services.recovery import RecoveryService
from mfa_service.services.status import StatusService
from mfa_service.services.verification import VerificationService

Context = aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class MfaServicer(pb_grpc.MfaServiceServicer):
    """mfa.v1.MfaService: each RPC converts its request, calls its use case, converts
    the answer (errors are mapped by the interceptor)."""

    status: StatusService
    enrollment: EnrollmentService
    verification: VerificationService
    tokens: ActionTokenService
    devices: DeviceService
    recovery: RecoveryService

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        status = await self.status.get(
            convert.environment_id(request.environment_id),
            convert.user_id(request.user_id),
            convert.session_id(request.session_id) if request.session_id else "",
        )
        return pb.GetStatusResponse(
            enrollment_required=status.enrollment_required,
            session_mfa_pending=status.session_mfa_pending,
            enrolled_methods=[convert.method_to_proto(m) for m in status.enrolled_methods],
            protected_actions=[convert.action_to_proto(a) for a in status.protected_actions],
            locked_until=convert.timestamp(status.locked_until),
            recovery_codes_pending_acknowledgement=status.recovery_codes_pending_acknowledgement,
            recovery_codes_remaining=status.recovery_codes_remaining,
            recovery_required=status.recovery_required,
        )

    async def Enroll(self, request: pb.EnrollRequest, context: Context) -> pb.EnrollResponse:
        env = convert.environment_id(request.environment_id)
        user = convert.user_id(request.user_id)
        method = convert.method_from_proto(request.method, "method")
        action_token = convert.action_token(request.action_token)
        if method is Method.RECOVERY_CODE:
            raise InvalidArgument.field("method", "recovery codes come with the first device")
        account_field = "account_name" if request.account_name else "user_id"
        account_name = totp.check_label_part(request.account_name or user, account_field)
        started = await self.enrollment.enroll(
            env,
            user,
            method,
            account_name=account_name,
            action_token=action_token,
            context=call_context.current(),
        )
        response = pb.EnrollResponse(
            enrollment_id=str(started.enrollment_id),
            expires_at=convert.timestamp(started.expires_at),
        )
        if method is Method.PASSKEY:
            response.passkey.creation_options_json = started.creation_options_json
        else:
            response.totp.secret = started.totp_secret
            response.totp.otpauth_uri = started.otpauth_uri
        return response

    async def CompleteEnrollment(
        self, request: pb.CompleteEnrollmentRequest, context: Context
    ) -> pb.CompleteEnrollmentResponse:
        env = convert.environment_id(request.environment_id)
        user = convert.user_id(request.user_id)
        enrollment_id = convert.uuid_field(request.enrollment_id, "enrollment_id")
        alias = convert.alias(request.alias)
        if request.passkey_registration_json and request.totp_code:
            raise InvalidArgument.field("totp_code", "give a TOTP code or a passkey, not both")
        registration = request.passkey_registration_json or None
        if registration is not None and len(registration) > convert.MAX_PROOF:
            raise InvalidArgument.field(
                "passkey_registration_json", f"at most {convert.MAX_PROOF} characters"
            )
        code = None if registration else totp.check_code_format(request.totp_code, "totp_code")
        completed = await self.enrollment.complete(
            env,
            user,
            enrollment_id=enrollment_id,
            totp_code=code,
            registration_json=registration,
            alias=alias,
            context=call_context.current(),
        )
        return pb.CompleteEnrollmentResponse(
            device=convert.device_to_proto(completed.device),
            recovery_codes=list(completed.recovery_codes),
        )

    async def Challenge(
        self, request: pb.ChallengeRequest, context: Context
    ) -> pb.ChallengeResponse:
        challenge, options = await self.verification.challenge(
            convert.environment_id(request.environment_id),
            convert.user_id(request.user_id),
            convert.method_from_proto(request.method, "method"),
            convert.optional_uuid(request.device_id, "device_id"),
            convert.approval_from_proto(request.approval) if request.HasField("approval") else None,
        )
        return pb.ChallengeResponse(
            challenge_id=str(challenge.id),
            expires_at=convert.timestamp(challenge.expires_at),
            passkey_request_options_json=options,
            approval_hash=challenge.approval.hash if challenge.approval else b"",
        )

    async def VerifySession(
        self, request: pb.VerifySessionRequest, context: Context
    ) -> pb.VerifySessionResponse:
        env = convert.environment_id(request.environment_id)
        user = convert.user_id(request.user_id)
        session = convert.session_id(request.session_id)
        challenge_id = convert.uuid_field(request.challenge_id, "challenge_id")
        if not request.HasField("proof"):
            raise InvalidArgument.field("proof", "required")
        proof = convert.proof_from_proto(request.proof)
        verified = await self.verification.verify_session(
            env, user, session, challenge_id, proof, call_context.current()
        )
        return pb.VerifySessionResponse(
            method=convert.method_to_proto(verified.method),
            verified_at=convert.timestamp(verified.at),
            device_id=str(verified.device_id) if verified.device_id else "",
        )

    async def IssueActionToken(
        self, request: pb.IssueActionTokenRequest, context: Context
    ) -> pb.IssueActionTokenResponse:
        env = convert.environment_id(request.environment_id)
        user = convert.user_id(request.user_id)
        challenge_id = convert.uuid_field(request.challenge_id, "challenge_id")
        if not request.HasField("proof"):
            raise InvalidArgument.field("proof", "required")
        proof = convert.proof_from_proto(request.proof)
        issued = await self.tokens.issue(
            env,
            user,
            challenge_id=challenge_id,
            proof=proof,
            asked=Coverage(
                actions=convert.actions(request.actions, required=False),
                payload_digest=convert.payload_digest(request.payload_digest),
                single_use=request.single_use,
                session_id=convert.session_id(request.session_id) if request.session_id else None,
            ),
            context=call_context.current(),
        )
        return pb.IssueActionTokenResponse(
            token=issued.token, expires_at=convert.timestamp(issued.claims.expires_at)
        )

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> pb.ListDevicesResponse:
        devices = await self.devices.list(
            convert.environment_id(request.environment_id), convert.user_id(request.user_id)
        )
        return pb.ListDevicesResponse(devices=[convert.device_to_proto(d) for d in devices])

    async def UpdateDevice(
        self, request: pb.UpdateDeviceRequest, context: Context
    ) -> pb.UpdateDeviceResponse:
        env = convert.environment_id(request.environment_id)
        user = convert.user_id(request.user_id)
        device_id = convert.uuid_field(request.device_id, "device_id")
        alias = convert.alias(request.alias)
        if not alias and not request.make_default:
            raise InvalidArgument.field("alias", "give a new alias, make_default, or both")
        device = await self.devices.update(
            env,
            user,
            device_id,
            alias=alias,
            make_default=request.make_default,
            context=call_context.current(),
        )
        return pb.UpdateDeviceResponse(device=convert.device_to_proto(device))

    async def DeleteDevice(
        self, request: pb.DeleteDeviceRequest, context: Context
    ) -> pb.DeleteDeviceResponse:
        await self.devices.delete(
            convert.environment_id(request.environment_id),
            convert.user_id(request.user_id),
            convert.uuid_field(request.device_id, "device_id"),
            action_token=convert.action_token(request.action_token),
            context=call_context.current(),
        )
        return pb.DeleteDeviceResponse()

    async def RegenerateRecoveryCodes(
        self, request: pb.RegenerateRecoveryCodesRequest, context: Context
    ) -> pb.RegenerateRecoveryCodesResponse:
        codes = await self.recovery.regenerate(
            convert.environment_id(request.environment_id),
            convert.user_id(request.user_id),
            action_token=convert.action_token(request.action_token),
            context=call_context.current(),
        )
        return pb.RegenerateRecoveryCodesResponse(recovery_codes=list(codes))

    async def AcknowledgeRecoveryCodes(
        self, request: pb.AcknowledgeRecoveryCodesRequest, context: Context
    ) -> pb.AcknowledgeRecoveryCodesResponse:
        await self.recovery.acknowledge(
            convert.environment_id(request.environment_id),
            convert.user_id(request.user_id),
            call_context.current(),
        )
        return pb.AcknowledgeRecoveryCodesResponse()
