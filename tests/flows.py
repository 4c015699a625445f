"""User flows through the real client, shared by the integration tests."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import grpc
import pyotp
from authenticator import SoftAuthenticator
from google.protobuf import field_mask_pb2

from helpers import FakeClock
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service.domain import tokens

T = TypeVar("T")


@dataclass(frozen=True)
class TotpDevice:
    device_id: str
    secret: str

    def code(self, at: datetime, step_offset: int = 0) -> str:
        return pyotp.TOTP(self.secret).at(at, counter_offset=step_offset)


async def call(coro: Awaitable[T]) -> T:
    """Await a raw stub call, raising MfaServiceError like the typed client does."""
    try:
        return await coro
    except grpc.aio.AioRpcError as error:
        raise MfaServiceError.from_rpc_error(error) from None


async def update_settings(client: Client, env: str, **fields: object) -> types.Settings:
    """Set top-level or nested (``totp__skew_steps=0``) settings fields."""
    settings = types.Settings(environment_id=env)
    paths = []
    for key, value in fields.items():
        path = key.replace("__", ".")
        target = settings
        *parents, leaf = path.split(".")
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, list):
            getattr(target, leaf).extend(value)
        else:
            setattr(target, leaf, value)
        paths.append(path)
    response = await call(
        client.admin.stub.UpdateSettings(
            admin_pb.UpdateSettingsRequest(
                settings=settings, update_mask=field_mask_pb2.FieldMask(paths=paths)
            )
        )
    )
    return response.settings


async def start_totp(client: Client, env: str, user: str) -> pb.EnrollResponse:
    return await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(environment_id=env, user_id=user, method=types.METHOD_TOTP)
        )
    )


async def enroll_totp(client: Client, clock: FakeClock, env: str, user: str) -> TotpDevice:
    device, _ = await enroll_totp_with_codes(client, clock, env, user)
    return device


async def enroll_totp_with_codes(
    client: Client, clock: FakeClock, env: str, user: str
) -> tuple[TotpDevice, list[str]]:
    """Enroll the user's first (TOTP) device: the device, and its 10 recovery codes."""
    started = await start_totp(client, env, user)
    code = pyotp.TOTP(started.totp.secret).at(clock.now())
    done = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=env,
                user_id=user,
                enrollment_id=started.enrollment_id,
                totp_code=code,
            )
        )
    )
    device = TotpDevice(device_id=done.device.device_id, secret=started.totp.secret)
    return device, list(done.recovery_codes)


async def challenge(
    client: Client, env: str, user: str, method: types.Method.ValueType = types.METHOD_TOTP
) -> str:
    response = await call(
        client.mfa_stub.Challenge(
            pb.ChallengeRequest(environment_id=env, user_id=user, method=method)
        )
    )
    return str(response.challenge_id)


async def verify_session(
    client: Client, env: str, user: str, session: str, code: str, challenge_id: str | None = None
) -> pb.VerifySessionResponse:
    challenge_id = challenge_id or await challenge(client, env, user)
    return await call(
        client.mfa_stub.VerifySession(
            pb.VerifySessionRequest(
                environment_id=env,
                user_id=user,
                session_id=session,
                challenge_id=challenge_id,
                proof=types.Proof(totp_code=code),
            )
        )
    )


async def status(client: Client, env: str, user: str, session: str = "") -> pb.GetStatusResponse:
    return await call(
        client.mfa_stub.GetStatus(
            pb.GetStatusRequest(environment_id=env, user_id=user, session_id=session)
        )
    )


async def issue_action_token(
    client: Client,
    env: str,
    user: str,
    code: str,
    challenge_id: str,
    *,
    actions: tuple[types.Action.ValueType, ...] = (types.ACTION_WAAS_SIGN,),
    single_use: bool = True,
    payload_digest: bytes = b"",
    session_id: str = "",
) -> pb.IssueActionTokenResponse:
    """IssueActionToken with a TOTP code answering ``challenge_id``."""
    return await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=env,
                user_id=user,
                challenge_id=challenge_id,
                proof=types.Proof(totp_code=code),
                actions=list(actions),
                single_use=single_use,
                payload_digest=payload_digest,
                session_id=session_id,
            )
        )
    )


async def token_with_code(
    client: Client,
    clock: FakeClock,
    env: str,
    user: str,
    device: TotpDevice,
    action: types.Action.ValueType,
    *,
    single_use: bool = True,
) -> str:
    """An action token for ``action`` earned with ``device``'s code, at a fresh time step
    (the clock moves 30 s first)."""
    clock.advance(timedelta(seconds=30))
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=env,
                user_id=user,
                challenge_id=await challenge(client, env, user),
                proof=types.Proof(totp_code=device.code(clock.now())),
                actions=[action],
                single_use=single_use,
            )
        )
    )
    return str(issued.token)


async def enroll_passkey(
    client: Client, env: str, user: str, authenticator: SoftAuthenticator, action_token: str = ""
) -> pb.CompleteEnrollmentResponse:
    """Enroll and register ``authenticator`` (the environment's passkey settings must fit it)."""
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=env,
                user_id=user,
                method=types.METHOD_PASSKEY,
                action_token=action_token,
            )
        )
    )
    return await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=env,
                user_id=user,
                enrollment_id=started.enrollment_id,
                passkey_registration_json=authenticator.register(
                    started.passkey.creation_options_json
                ),
            )
        )
    )


def unknown_token() -> str:
    """Shaped like one of ours (algorithm, type, a jti), so only the database says no."""

    def part(value: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    header = part({"alg": "ES256", "typ": tokens.TOKEN_TYPE})
    return f"{header}.{part({'jti': str(uuid.uuid4())})}.{part({'sig': 'none'})}"


async def validate_unknown_tokens(
    client: Client, env: str, calls: int
) -> list[at_pb.ValidateActionTokenResponse]:
    """``calls`` validations of unknown tokens at once (for ``ACTION_WAAS_SIGN``, one user
    each): they reach the database together, to be decided in batches."""
    return await asyncio.gather(
        *(
            call(
                client.action_tokens_stub.ValidateActionToken(
                    at_pb.ValidateActionTokenRequest(
                        environment_id=env,
                        user_id=f"user-{i}",
                        action=types.ACTION_WAAS_SIGN,
                        token=unknown_token(),
                    )
                )
            )
            for i in range(calls)
        )
    )
