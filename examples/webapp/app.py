"""The demo application backend: one page and a small JSON API over mfa-service.

The browser runs the WebAuthn ceremonies; this backend asks mfa-service for the options
and hands it the browser's answers, as a real API backend would. There is no login here:
the page names its own user and session. A real backend takes both from its own
authenticated session, never from the request body.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from google.protobuf import timestamp_pb2

from examples.signer import (
    ApprovalNotVerified,
    Signer,
    SigningRefused,
    VerifiedApproval,
    check_token_approval,
)
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import mfa_service_pb2_grpc, types_pb2
from mfa_client import Client, MfaServiceError

RP_ID = "localhost"  # browsers treat http://localhost as a secure context
MAX_MESSAGE_BYTES = 4096
RPC_TIMEOUT_SECONDS = 5.0
STATIC = Path(__file__).parent / "static"
# The payment form of the approval flow: what the backend accepts to build a transfer.
NETWORKS = ("Base", "Ethereum", "Optimism", "Arbitrum")
_AMOUNT = re.compile(r"[0-9]{1,12}(\.[0-9]{1,18})?")
_ASSET = re.compile(r"[A-Z][A-Z0-9]{1,9}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

CLIENT = web.AppKey("client", Client)
ENVIRONMENT = web.AppKey("environment_id", str)
SIGNER = web.AppKey("signer", Signer)

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Response = TypeVar("_Response")

# gRPC status -> HTTP status for the page. Anything else (e.g. UNAUTHENTICATED, which is
# about this backend's own credentials, not the user) is the backend's fault: 502.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,  # ERROR_REASON_VERIFICATION_FAILED, step-up
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,  # locked out
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class _BadRequest(Exception):
    pass


def create_app(client: Client, environment_id: str, signer: Signer) -> web.Application:
    """The page at ``/`` and its API; ``signer`` is the wallet signer example."""
    app = web.Application(middlewares=[_errors])
    app[CLIENT] = client
    app[ENVIRONMENT] = environment_id
    app[SIGNER] = signer
    app.router.add_get("/", _index)
    app.router.add_get("/api/status", _status)
    app.router.add_post("/api/enroll/start", _enroll_start)
    app.router.add_post("/api/enroll/finish", _enroll_finish)
    app.router.add_post("/api/session/challenge", _challenge)
    app.router.add_post("/api/session/verify", _verify_session)
    app.router.add_post("/api/token/challenge", _challenge)
    app.router.add_post("/api/token/issue", _issue_token)
    app.router.add_post("/api/sign", _sign)
    app.router.add_post("/api/approval/start", _approval_start)
    app.router.add_post("/api/approval/issue", _approval_issue)
    app.router.add_post("/api/approval/sign", _approval_sign)
    return app


async def configure_environment(client: Client, environment_id: str, origin: str) -> None:
    """Turn passkeys on for ``origin``, protect ACTION_WAAS_SIGN and turn session MFA on.
    Origins already allowed for RP id ``localhost`` are kept. The demo is its own
    operator: it creates the environment (default settings) when it does not exist."""
    try:
        current = await client.admin.get_settings(environment_id)
    except MfaServiceError as error:
        if error.reason != "ERROR_REASON_ENVIRONMENT_NOT_FOUND":
            raise
        current = await client.admin.create_environment(environment_id)
    origins = list(current.passkey.allowed_origins) if current.passkey.rp_id == RP_ID else []
    if origin not in origins:
        origins.append(origin)
    actions = list(current.protected_actions)
    if types_pb2.ACTION_WAAS_SIGN not in actions:
        actions.append(types_pb2.ACTION_WAAS_SIGN)
    settings = types_pb2.Settings(
        environment_id=environment_id,
        passkey_enabled=True,
        session_mfa_enabled=True,
        protected_actions=actions,
        passkey=types_pb2.PasskeySettings(rp_id=RP_ID, allowed_origins=origins),
    )
    await client.admin.update_settings(
        settings,
        [
            "passkey_enabled",
            "session_mfa_enabled",
            "protected_actions",
            "passkey.rp_id",
            "passkey.allowed_origins",
        ],
    )


@dataclass
class RunningServer:
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, *, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start serving ``app``; ``port`` 0 picks a free one (see ``RunningServer.port``)."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return RunningServer(runner, int(runner.addresses[0][1]))


# --- handlers -------------------------------------------------------------------------


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def _status(request: web.Request) -> web.StreamResponse:
    user = _text(dict(request.query), "user_id")
    response = await _rpc(
        _mfa(request).GetStatus(
            pb.GetStatusRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=user,
                session_id=request.query.get("session_id", ""),
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response(
        {
            "user_id": user,
            "enrolled_methods": [types_pb2.Method.Name(m) for m in response.enrolled_methods],
            "enrollment_required": response.enrollment_required,
            "session_mfa_pending": response.session_mfa_pending,
            "protected_actions": [types_pb2.Action.Name(a) for a in response.protected_actions],
            "locked_until": _time(response.locked_until),
        }
    )


async def _enroll_start(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    user = _text(body, "user_id")
    response = await _rpc(
        _mfa(request).Enroll(
            pb.EnrollRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=user,
                method=types_pb2.METHOD_PASSKEY,
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response(
        {
            "enrollment_id": response.enrollment_id,
            "options": json.loads(response.passkey.creation_options_json),
        }
    )


async def _enroll_finish(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    response = await _rpc(
        _mfa(request).CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=_text(body, "user_id"),
                enrollment_id=_text(body, "enrollment_id"),
                passkey_registration_json=_credential(body),
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response(
        {
            "device_id": response.device.device_id,
            "alias": response.device.alias,
            "recovery_codes": list(response.recovery_codes),
        }
    )


async def _challenge(request: web.Request) -> web.StreamResponse:
    """The same passkey challenge serves session MFA and action tokens."""
    body = await _body(request)
    response = await _rpc(
        _mfa(request).Challenge(
            pb.ChallengeRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=_text(body, "user_id"),
                method=types_pb2.METHOD_PASSKEY,
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response(
        {
            "challenge_id": response.challenge_id,
            "options": json.loads(response.passkey_request_options_json),
        }
    )


async def _verify_session(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    response = await _rpc(
        _mfa(request).VerifySession(
            pb.VerifySessionRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=_text(body, "user_id"),
                session_id=_text(body, "session_id"),
                challenge_id=_text(body, "challenge_id"),
                proof=types_pb2.Proof(passkey_assertion_json=_credential(body)),
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response(
        {"device_id": response.device_id, "verified_at": _time(response.verified_at)}
    )


async def _issue_token(request: web.Request) -> web.StreamResponse:
    """A single-use ACTION_WAAS_SIGN token for exactly this message, in this session."""
    body = await _body(request)
    response = await _rpc(
        _mfa(request).IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=_text(body, "user_id"),
                session_id=_text(body, "session_id"),
                challenge_id=_text(body, "challenge_id"),
                proof=types_pb2.Proof(passkey_assertion_json=_credential(body)),
                actions=[types_pb2.ACTION_WAAS_SIGN],
                single_use=True,
                payload_digest=hashlib.sha256(_message(body)).digest(),
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response({"token": response.token, "expires_at": _time(response.expires_at)})


async def _sign(request: web.Request) -> web.StreamResponse:
    """The wallet signer validates the token (consuming it), then signs."""
    body = await _body(request)
    signer = request.app[SIGNER]
    signature = await signer.sign(
        _text(body, "user_id"),
        _message(body),
        _text(body, "token"),
        session_id=_text(body, "session_id"),
    )
    return web.json_response({"signature": signature.hex(), "public_key": _public_hex(signer)})


# --- approvals: the passkey signs the transfer and the words shown (docs/approvals.md) --


@dataclass(frozen=True)
class Transfer:
    """A transfer the page asks for: the exact payload the signer signs, and the words
    the user is shown. Both are built here, by the backend, never taken from the page."""

    message: bytes
    display_text: str


def transfer(body: Json) -> Transfer:
    amount, asset, to = _text(body, "amount"), _text(body, "asset"), _text(body, "to")
    network = _text(body, "network")
    for name, value, pattern in (
        ("amount", amount, _AMOUNT),
        ("asset", asset, _ASSET),
        ("to", to, _ADDRESS),
    ):
        if not pattern.fullmatch(value):
            raise _BadRequest(f"{name}: not a valid {name}")
    if network not in NETWORKS:
        raise _BadRequest(f"network: one of {', '.join(NETWORKS)}")
    payload = {"amount": amount, "asset": asset, "network": network, "to": to}
    return Transfer(
        message=json.dumps(payload, sort_keys=True, separators=(",", ":")).encode(),
        display_text=f"Send {amount} {asset} to {to} on {network}",
    )


async def _approval_start(request: web.Request) -> web.StreamResponse:
    """A passkey challenge bound to an approval of one transfer: single use, in this
    session, for ACTION_WAAS_SIGN on SHA-256 of the transfer's message. The WebAuthn
    challenge in the options is the approval hash: the passkey signs the words shown.

    The demo keeps no state, so the message goes to the page and comes back to
    ``/api/approval/sign``; the signer's offline check refuses any other message."""
    body = await _body(request)
    pending = transfer(body)
    response = await _rpc(
        _mfa(request).Challenge(
            pb.ChallengeRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=_text(body, "user_id"),
                method=types_pb2.METHOD_PASSKEY,
                approval=types_pb2.Approval(
                    actions=[types_pb2.ACTION_WAAS_SIGN],
                    payload_digest=hashlib.sha256(pending.message).digest(),
                    display_text=pending.display_text,
                    single_use=True,
                    session_id=_text(body, "session_id"),
                ),
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response(
        {
            "challenge_id": response.challenge_id,
            "expires_at": _time(response.expires_at),
            "approval_hash": response.approval_hash.hex(),
            "display_text": pending.display_text,
            "message": pending.message.decode(),
            "options": json.loads(response.passkey_request_options_json),
        }
    )


async def _approval_issue(request: web.Request) -> web.StreamResponse:
    """The token of a bound challenge: its actions, digest, use and session are the
    approval's, so the request names none of them."""
    body = await _body(request)
    response = await _rpc(
        _mfa(request).IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=request.app[ENVIRONMENT],
                user_id=_text(body, "user_id"),
                challenge_id=_text(body, "challenge_id"),
                proof=types_pb2.Proof(passkey_assertion_json=_credential(body)),
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    return web.json_response({"token": response.token, "expires_at": _time(response.expires_at)})


async def _approval_sign(request: web.Request) -> web.StreamResponse:
    """The signer checks offline that one of the user's passkeys (their COSE keys from
    ListDevices) approved this message, then validates the token and signs."""
    body = await _body(request)
    user, message, token = _text(body, "user_id"), _message(body), _text(body, "token")
    devices = await _rpc(
        _mfa(request).ListDevices(
            pb.ListDevicesRequest(environment_id=request.app[ENVIRONMENT], user_id=user),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    )
    keys = [
        device.passkey_public_key
        for device in devices.devices
        if device.method == types_pb2.METHOD_PASSKEY and device.passkey_public_key
    ]
    key, verified = _approving_key(token, message, keys)
    signer = request.app[SIGNER]
    signature = await signer.sign(
        user, message, token, session_id=_text(body, "session_id"), passkey_public_key=key
    )
    return web.json_response(
        {
            "signature": signature.hex(),
            "public_key": _public_hex(signer),
            "display_text": verified.display_text,
        }
    )


def _approving_key(token: str, message: bytes, keys: list[bytes]) -> tuple[bytes, VerifiedApproval]:
    """The passkey key (of ``keys``) whose signature approves ``message``, and what it
    approved; ``ApprovalNotVerified`` (the last key's reason) when none does."""
    refused = ApprovalNotVerified("the user has no passkey")
    for key in keys:
        try:
            return key, check_token_approval(token, message, key)
        except ApprovalNotVerified as error:
            refused = error
    raise refused


# --- plumbing -------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as ``{"error": {"status", "reason", "message"}}`` for the page."""
    try:
        return await handler(request)
    except _BadRequest as error:
        return _error(400, "INVALID_ARGUMENT", "", str(error))
    except SigningRefused as refused:
        return _error(403, "PERMISSION_DENIED", refused.reason_name, "the signer refused")
    except ApprovalNotVerified as refused:
        return _error(403, "PERMISSION_DENIED", "APPROVAL_NOT_VERIFIED", refused.reason)
    except MfaServiceError as error:
        response = _error(
            _HTTP_STATUS.get(error.code, 502), error.code.name, error.reason, error.message
        )
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(int(error.retry_after.total_seconds()) + 1)
        return response


def _error(status: int, code: str, reason: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"status": code, "reason": reason, "message": message}}, status=status
    )


async def _body(request: web.Request) -> Json:
    # JSON only: a cross-site form cannot send this content type without a CORS preflight.
    if request.content_type != "application/json":
        raise _BadRequest("expected Content-Type: application/json")
    try:
        body = await request.json()
    except ValueError:
        raise _BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _text(body: Json, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{name}: a non-empty string is required")
    return value


def _credential(body: Json) -> str:
    """The browser's ``PublicKeyCredential.toJSON()``, passed on to mfa-service as is."""
    credential = body.get("credential")
    if not isinstance(credential, dict):
        raise _BadRequest("credential: the PublicKeyCredential's toJSON() is required")
    return json.dumps(credential)


def _message(body: Json) -> bytes:
    message = _text(body, "message").encode()
    if len(message) > MAX_MESSAGE_BYTES:
        raise _BadRequest(f"message: at most {MAX_MESSAGE_BYTES} bytes")
    return message


def _mfa(request: web.Request) -> mfa_service_pb2_grpc.MfaServiceAsyncStub:
    return request.app[CLIENT].mfa_stub


async def _rpc(call: Awaitable[_Response]) -> _Response:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise MfaServiceError.from_rpc_error(error) from None


def _time(timestamp: timestamp_pb2.Timestamp) -> str | None:
    return timestamp.ToJsonString() if timestamp.seconds or timestamp.nanos else None


def _public_hex(signer: Signer) -> str:
    raw = signer.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()
