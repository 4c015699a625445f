"""The user's MFA screens: one page and the JSON API behind it, over mfa-service.

This is the application backend of the demo, as an integrator would write theirs: it
signs the user in (a demo sign-in, ``session.py``), takes the user and the login session
from its own signed cookie on every call, and calls mfa-service through the typed
``mfa_client.Client``. The browser runs the WebAuthn ceremonies; this backend asks
mfa-service for the options and hands it the browser's answers. Step-up tokens
(``CREDENTIAL_LINK``, ``CREDENTIAL_UNLINK``, ``RECOVERY_CODES_REGENERATE``) are minted and
spent here, in the same request, and never reach the page.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segno
from aiohttp import web

from examples.signer import (
    ApprovalNotVerified,
    Signer,
    SigningRefused,
    VerifiedApproval,
    check_token_approval,
    token_claims,
)
from examples.web import (
    BadRequest,
    add_shared_static,
    body,
    credential,
    error_response,
    errors,
    security,
    serve,
    text,
    timestamp_json,
)
from examples.web import RunningServer as RunningServer
from examples.webapp import session
from mfa.v1 import types_pb2
from mfa_client import Client, MfaClient, MfaServiceError, Proof

RP_ID = "localhost"  # browsers treat http://localhost as a secure context
MAX_MESSAGE_BYTES = 4096
MAX_NAME = 64  # a device's name (mfa-service's alias limit)
STATIC = Path(__file__).parent / "static"
# The payment form of the approval flow: what the backend accepts to build a transfer.
NETWORKS = ("Base", "Ethereum", "Optimism", "Arbitrum")
_AMOUNT = re.compile(r"[0-9]{1,12}(\.[0-9]{1,18})?")
_ASSET = re.compile(r"[A-Z][A-Z0-9]{1,9}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CODE = re.compile(r"[0-9]{6}")

CLIENT = web.AppKey("client", Client)
ENVIRONMENT = web.AppKey("environment_id", str)
SIGNER = web.AppKey("signer", Signer)
SESSION_KEY = web.AppKey("session_key", bytes)

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The page's words for a method, and back.
METHODS = {
    "totp": types_pb2.METHOD_TOTP,
    "passkey": types_pb2.METHOD_PASSKEY,
    "recovery_code": types_pb2.METHOD_RECOVERY_CODE,
}
_METHOD_NAMES = {value: name for name, value in METHODS.items()}

__all__ = ["RunningServer", "configure_environment", "create_app", "serve"]


class NotSignedIn(Exception):
    """No valid session cookie: the page shows the sign-in screen."""


class SessionMfaPending(Exception):
    """The login session has not passed its second factor yet."""


def create_app(client: Client, environment_id: str, signer: Signer) -> web.Application:
    """The page at ``/`` and its API; ``signer`` is the wallet signer example. The key that
    signs the session cookies is made here: a restart signs everyone out."""
    app = web.Application(middlewares=[security, errors, _refusals])
    app[CLIENT] = client
    app[ENVIRONMENT] = environment_id
    app[SIGNER] = signer
    app[SESSION_KEY] = session.new_key()
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    add_shared_static(app)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/api/me", _me),
        ("POST", "/api/signin", _signin),
        ("POST", "/api/signout", _signout),
        ("POST", "/api/enroll/start", _enroll_start),
        ("POST", "/api/enroll/finish", _enroll_finish),
        ("POST", "/api/recovery-codes/acknowledge", _acknowledge),
        ("POST", "/api/recovery-codes/regenerate", _regenerate),
        ("POST", "/api/challenge", _challenge),
        ("POST", "/api/session/verify", _verify_session),
        ("GET", "/api/devices", _devices),
        ("POST", "/api/devices/rename", _rename),
        ("POST", "/api/devices/default", _make_default),
        ("POST", "/api/devices/remove", _remove),
        ("POST", "/api/approval/start", _approval_start),
        ("POST", "/api/approval/issue", _approval_issue),
        ("POST", "/api/approval/sign", _approval_sign),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app


async def configure_environment(client: Client, environment_id: str, origin: str) -> None:
    """Turn authenticator apps and passkeys on (passkeys for ``origin``), protect
    ACTION_WAAS_SIGN and turn session MFA on. Origins already allowed for RP id
    ``localhost`` are kept. The demo is its own operator: it creates the environment
    (default settings) when it does not exist."""
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
        totp_enabled=True,
        passkey_enabled=True,
        session_mfa_enabled=True,
        protected_actions=actions,
        passkey=types_pb2.PasskeySettings(rp_id=RP_ID, allowed_origins=origins),
    )
    await client.admin.update_settings(
        settings,
        [
            "totp_enabled",
            "passkey_enabled",
            "session_mfa_enabled",
            "protected_actions",
            "passkey.rp_id",
            "passkey.allowed_origins",
        ],
    )


# --- sign-in and what the user has ----------------------------------------------------


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


def _who(request: web.Request) -> session.SignedIn:
    who = session.signed_in(request.app[SESSION_KEY], request.cookies.get(session.COOKIE))
    if who is None:
        raise NotSignedIn
    return who


async def _verified(request: web.Request) -> session.SignedIn:
    """The signed-in user, whose login session has passed session MFA (or needs none):
    what every call that reads or changes the user's factors, or acts, requires."""
    who = _who(request)
    status = await _mfa(request).get_status(
        environment_id=request.app[ENVIRONMENT], user_id=who.user_id, session_id=who.session_id
    )
    if status.session_mfa_pending:
        raise SessionMfaPending
    return who


async def _me_answer(request: web.Request, who: session.SignedIn) -> Json:
    env = request.app[ENVIRONMENT]
    status = await _mfa(request).get_status(
        environment_id=env, user_id=who.user_id, session_id=who.session_id
    )
    devices = await _mfa(request).list_devices(environment_id=env, user_id=who.user_id)
    methods = [_METHOD_NAMES[m] for m in status.enrolled_methods if m in _METHOD_NAMES]
    default = next((d.method for d in devices if d.is_default), None)
    return {
        "signed_in": True,
        "user": who.user_id,
        "methods": methods,
        "default_method": _METHOD_NAMES.get(default) if default is not None else None,
        "session_mfa_pending": status.session_mfa_pending,
        "enrollment_required": status.enrollment_required,
        "sign_protected": types_pb2.ACTION_WAAS_SIGN in status.protected_actions,
        "locked_until": timestamp_json(status.locked_until),
        "recovery_codes_remaining": status.recovery_codes_remaining,
        "recovery_codes_unacknowledged": status.recovery_codes_pending_acknowledgement,
        "recovery_required": status.recovery_required,
    }


async def _me(request: web.Request) -> web.StreamResponse:
    try:
        who = _who(request)
    except NotSignedIn:
        return web.json_response({"signed_in": False})
    return web.json_response(await _me_answer(request, who))


async def _signin(request: web.Request) -> web.StreamResponse:
    """The demo sign-in: any user name, no password (the page and the README say so)."""
    user = text(await body(request), "user", max_length=64).strip().lower()
    if not session.USER_NAME.fullmatch(user):
        raise BadRequest("user", "letters, digits, dots, dashes or underscores")
    who, cookie = session.sign_in(request.app[SESSION_KEY], user)
    response = web.json_response(await _me_answer(request, who))
    response.set_cookie(
        session.COOKIE,
        cookie,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,  # Secure over https; the demo's http://localhost is not
    )
    return response


async def _signout(request: web.Request) -> web.StreamResponse:
    response = web.json_response({"signed_in": False})
    response.del_cookie(session.COOKIE, path="/")
    return response


# --- enrollment and recovery codes ----------------------------------------------------


async def _enroll_start(request: web.Request) -> web.StreamResponse:
    """Begin enrolling an authenticator app (the QR code, drawn here, and the secret for
    typing in) or a passkey (the creation options). A user who already has a factor
    adds another with a step-up: the ``step_up`` proof mints the ``CREDENTIAL_LINK``
    token that ``Enroll`` consumes."""
    who, values = _who(request), await body(request)
    method = _method(values, choices=("totp", "passkey"))
    token = ""
    if values.get("step_up") is not None:
        step_up = values["step_up"]
        if not isinstance(step_up, dict):
            raise BadRequest("step_up", "the proof of a factor")
        token = await _step_up(request, who, step_up, types_pb2.ACTION_CREDENTIAL_LINK)
    started = await _mfa(request).enroll(
        environment_id=request.app[ENVIRONMENT],
        user_id=who.user_id,
        method=METHODS[method],
        action_token=token,
    )
    if method == "passkey":
        options = json.loads(started.passkey.creation_options_json)
        return web.json_response({"enrollment_id": started.enrollment_id, "options": options})
    secret = started.totp.secret
    qr = segno.make(started.totp.otpauth_uri, error="m").svg_data_uri(scale=5, border=4)
    return web.json_response(
        {
            "enrollment_id": started.enrollment_id,
            "qr": qr,
            "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        }
    )


async def _enroll_finish(request: web.Request) -> web.StreamResponse:
    """The first code of the app, or the browser's new credential; the device, and with
    the user's first factor the ten recovery codes to show once."""
    who, values = _who(request), await body(request)
    name = _optional_name(values)
    if "credential" in values:
        factor = {"passkey_registration_json": credential(values)}
    else:
        factor = {"totp_code": _code(values)}
    done = await _mfa(request).complete_enrollment(
        environment_id=request.app[ENVIRONMENT],
        user_id=who.user_id,
        enrollment_id=text(values, "enrollment_id"),
        alias=name,
        **factor,
    )
    return web.json_response(
        {"device": _device(done.device), "recovery_codes": list(done.recovery_codes)}
    )


async def _acknowledge(request: web.Request) -> web.StreamResponse:
    who = _who(request)
    await _mfa(request).acknowledge_recovery_codes(
        environment_id=request.app[ENVIRONMENT], user_id=who.user_id
    )
    return web.json_response(await _me_answer(request, who))


async def _regenerate(request: web.Request) -> web.StreamResponse:
    """Ten new recovery codes (the old ones stop working), with a step-up."""
    who, values = await _verified(request), await body(request)
    token = await _step_up(request, who, values, types_pb2.ACTION_RECOVERY_CODES_REGENERATE)
    codes = await _mfa(request).regenerate_recovery_codes(
        environment_id=request.app[ENVIRONMENT], user_id=who.user_id, action_token=token
    )
    return web.json_response({"recovery_codes": codes})


# --- challenges and session MFA -------------------------------------------------------


async def _challenge(request: web.Request) -> web.StreamResponse:
    """A challenge for one method: for a passkey, the request options for
    ``navigator.credentials.get``. Session MFA and step-ups answer it."""
    who, values = _who(request), await body(request)
    method = _method(values)
    answer = await _mfa(request).challenge(
        environment_id=request.app[ENVIRONMENT], user_id=who.user_id, method=METHODS[method]
    )
    return web.json_response(_challenge_answer(method, answer.challenge_id, answer))


async def _verify_session(request: web.Request) -> web.StreamResponse:
    who, values = _who(request), await body(request)
    await _mfa(request).verify_session(
        environment_id=request.app[ENVIRONMENT],
        user_id=who.user_id,
        session_id=who.session_id,
        challenge_id=text(values, "challenge_id"),
        proof=_proof(values),
    )
    return web.json_response(await _me_answer(request, who))


# --- devices --------------------------------------------------------------------------


async def _devices(request: web.Request) -> web.StreamResponse:
    who = await _verified(request)
    devices = await _mfa(request).list_devices(
        environment_id=request.app[ENVIRONMENT], user_id=who.user_id
    )
    return web.json_response({"devices": [_device(d) for d in devices]})


async def _rename(request: web.Request) -> web.StreamResponse:
    values = await body(request)
    name = text(values, "name", max_length=MAX_NAME).strip()
    if not name:
        raise BadRequest("name", "a name is required")
    return await _update_device(request, values, alias=name)


async def _make_default(request: web.Request) -> web.StreamResponse:
    return await _update_device(request, await body(request), make_default=True)


async def _update_device(
    request: web.Request, values: Json, *, alias: str = "", make_default: bool = False
) -> web.StreamResponse:
    """``UpdateDevice``: no step-up (a name or the order of the prompts protects nothing),
    but only in a session that passed session MFA."""
    who = await _verified(request)
    device = await _mfa(request).update_device(
        environment_id=request.app[ENVIRONMENT],
        user_id=who.user_id,
        device_id=text(values, "device"),
        alias=alias,
        make_default=make_default,
    )
    return web.json_response({"device": _device(device)})


async def _remove(request: web.Request) -> web.StreamResponse:
    """Remove a device, with a step-up: the proof mints the ``CREDENTIAL_UNLINK`` token
    ``DeleteDevice`` consumes."""
    who, values = await _verified(request), await body(request)
    device = text(values, "device")
    token = await _step_up(request, who, values, types_pb2.ACTION_CREDENTIAL_UNLINK)
    await _mfa(request).delete_device(
        environment_id=request.app[ENVIRONMENT],
        user_id=who.user_id,
        device_id=device,
        action_token=token,
    )
    return web.json_response({"removed": True})


async def _step_up(
    request: web.Request,
    who: session.SignedIn,
    values: Json,
    action: types_pb2.Action.ValueType,
) -> str:
    """A single-use token for one credential action, from the proof in ``values``
    (``challenge_id``, ``method``, ``code`` or ``credential``). Not bound to the session:
    the service checks a credential action's token without one (it is spent at once, in
    this request, and never leaves this backend)."""
    issued = await _mfa(request).issue_action_token(
        environment_id=request.app[ENVIRONMENT],
        user_id=who.user_id,
        challenge_id=text(values, "challenge_id"),
        proof=_proof(values),
        actions=[action],
        single_use=True,
    )
    return issued.token


# --- approvals: the factor approves the transfer and the words shown (docs/approvals.md)


@dataclass(frozen=True)
class Transfer:
    """A transfer the page asks for: the exact payload the signer signs, and the words
    the user is shown. Both are built here, by the backend, never taken from the page."""

    message: bytes
    display_text: str


def transfer(values: Json) -> Transfer:
    amount, asset = text(values, "amount").strip(), text(values, "asset").strip().upper()
    to, network = text(values, "to").strip(), text(values, "network")
    for name, value, pattern, what in (
        ("amount", amount, _AMOUNT, "an amount such as 1.5"),
        ("asset", asset, _ASSET, "an asset symbol such as ETH"),
        ("to", to, _ADDRESS, "an address: 0x and 40 hexadecimal characters"),
    ):
        if not pattern.fullmatch(value):
            raise BadRequest(name, f"Enter {what}.")
    if network not in NETWORKS:
        raise BadRequest("network", f"Choose one of {', '.join(NETWORKS)}.")
    payload = {"amount": amount, "asset": asset, "network": network, "to": to}
    return Transfer(
        message=json.dumps(payload, sort_keys=True, separators=(",", ":")).encode(),
        display_text=f"Send {amount} {asset} to {to} on {network}",
    )


async def _approval_start(request: web.Request) -> web.StreamResponse:
    """The transfer's words and message. When ACTION_WAAS_SIGN is protected, also a
    challenge bound to an approval of that transfer (single use, in this session, on
    SHA-256 of the message) for the chosen method: for a passkey the WebAuthn challenge
    is the approval hash, so the passkey signs the words shown.

    When it is not protected, no factor is asked; the page then asks ``/approval/sign``
    with no token, and the signer still asks ``ValidateActionToken``, which refuses if
    the action is protected by then (fail closed).

    The demo keeps no state, so the message goes to the page and comes back to
    ``/api/approval/sign``; the signer refuses any other message."""
    who, values = await _verified(request), await body(request)
    pending = transfer(values)
    env = request.app[ENVIRONMENT]
    status = await _mfa(request).get_status(environment_id=env, user_id=who.user_id)
    answer: Json = {"display_text": pending.display_text, "message": pending.message.decode()}
    if types_pb2.ACTION_WAAS_SIGN not in status.protected_actions:
        return web.json_response({**answer, "protected": False})
    method = _method(values)
    challenge = await _mfa(request).challenge(
        environment_id=env,
        user_id=who.user_id,
        method=METHODS[method],
        approval=types_pb2.Approval(
            actions=[types_pb2.ACTION_WAAS_SIGN],
            payload_digest=hashlib.sha256(pending.message).digest(),
            display_text=pending.display_text,
            single_use=True,
            session_id=who.session_id,
        ),
    )
    return web.json_response(
        {
            **answer,
            **_challenge_answer(method, challenge.challenge_id, challenge),
            "protected": True,
            "expires_at": timestamp_json(challenge.expires_at),
        }
    )


async def _approval_issue(request: web.Request) -> web.StreamResponse:
    """The token of a bound challenge: its actions, digest, use and session are the
    approval's, so the request names none of them."""
    who, values = await _verified(request), await body(request)
    issued = await _mfa(request).issue_action_token(
        environment_id=request.app[ENVIRONMENT],
        user_id=who.user_id,
        challenge_id=text(values, "challenge_id"),
        proof=_proof(values),
    )
    return web.json_response(
        {"token": issued.token, "expires_at": timestamp_json(issued.expires_at)}
    )


async def _approval_sign(request: web.Request) -> web.StreamResponse:
    """The wallet signer signs the message once mfa-service allows it.

    A token whose claims (its signature checked with the service's JWKS) carry a
    passkey's evidence must first pass the signer's offline check with one of the user's
    passkeys (their COSE keys from ListDevices): the passkey signed this message and
    these words. A code's approval is bound on the service's side only. No token (the
    action is not protected): the signer asks ``ValidateActionToken`` all the same."""
    who, values = await _verified(request), await body(request)
    message = text(values, "message", max_length=MAX_MESSAGE_BYTES).encode()
    token = values.get("token") or ""
    if not isinstance(token, str):
        raise BadRequest("token", "a string")
    signer = request.app[SIGNER]
    key: bytes | None = None
    approved = ""
    if token:
        claims = token_claims(token, await _client(request).action_tokens.jwks())
        if "passkey_evidence" in claims:
            key, verified = _approving_key(token, message, await _passkey_keys(request, who))
            approved = verified.display_text
        else:
            approved = str(claims.get("approval", {}).get("display_text", ""))
    signature = await signer.sign(
        who.user_id, message, token, session_id=who.session_id, passkey_public_key=key
    )
    return web.json_response(
        {
            "signature": signature.hex(),
            "display_text": approved,
            "checked": "passkey" if key is not None else "service" if token else "none",
        }
    )


async def _passkey_keys(request: web.Request, who: session.SignedIn) -> list[bytes]:
    devices = await _mfa(request).list_devices(
        environment_id=request.app[ENVIRONMENT], user_id=who.user_id
    )
    return [
        device.passkey_public_key
        for device in devices
        if device.method == types_pb2.METHOD_PASSKEY and device.passkey_public_key
    ]


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
async def _refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """This backend's own refusals, and the signer's, as JSON errors for the page."""
    try:
        return await handler(request)
    except NotSignedIn:
        return error_response(401, "UNAUTHENTICATED", "SIGNED_OUT", "sign in first")
    except SessionMfaPending:
        return error_response(
            403, "PERMISSION_DENIED", "SESSION_MFA_PENDING", "this session needs its second factor"
        )
    except SigningRefused as refused:
        return error_response(403, "PERMISSION_DENIED", refused.reason_name, "the signer refused")
    except ApprovalNotVerified as refused:
        return error_response(403, "PERMISSION_DENIED", "APPROVAL_NOT_VERIFIED", refused.reason)


def _client(request: web.Request) -> Client:
    return request.app[CLIENT]


def _mfa(request: web.Request) -> MfaClient:
    return request.app[CLIENT].mfa


def _method(values: Json, choices: tuple[str, ...] = tuple(METHODS)) -> str:
    method = values.get("method")
    if not isinstance(method, str) or method not in choices:
        raise BadRequest("method", f"one of {', '.join(choices)}")
    return method


def _code(values: Json) -> str:
    code = text(values, "code", max_length=32).replace(" ", "")
    if not _CODE.fullmatch(code):
        raise BadRequest("code", "Enter the 6 digits your app shows.")
    return code


def _proof(values: Json) -> Proof:
    """The user's answer to a challenge: a passkey's assertion, a code of the app, or a
    recovery code (as typed: the service ignores spaces, dashes and case)."""
    method = _method(values)
    if method == "passkey":
        return Proof.passkey(credential(values))
    if method == "totp":
        return Proof.totp(_code(values))
    return Proof.recovery_code(text(values, "code", max_length=64).strip())


def _optional_name(values: Json) -> str:
    name = values.get("name") or ""
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise BadRequest("name", f"at most {MAX_NAME} characters")
    return name.strip()


def _challenge_answer(method: str, challenge_id: str, answer: Any) -> Json:
    result: Json = {"challenge_id": challenge_id, "method": method}
    if method == "passkey":
        result["options"] = json.loads(answer.passkey_request_options_json)
    return result


def _device(device: types_pb2.Device) -> Json:
    """A device as the page shows it: its name and kind, never its id as text (the page
    keeps the id to act on the device)."""
    return {
        "id": device.device_id,
        "name": device.alias,
        "kind": _METHOD_NAMES.get(device.method, "other"),
        "is_default": device.is_default,
        "added": timestamp_json(device.created_at),
        "last_used": timestamp_json(device.last_used_at),
    }
