"""Every RPC of mfa.v1, written once: its request from typed arguments, its deadline and
retry rule, and its typed result. The async client (``_client``) and the sync one
(``_sync``) run these descriptions and nothing else: their methods are these functions,
with the docstrings below.

What a method returns: the response message when it is the answer (``EnrollResponse``,
``ChallengeResponse``, ...: typed by the generated ``.pyi``, documented in protos/), the
one resource when the response only wraps it (``Settings``, ``Device``, a list of them),
``(items, next_page_token)`` for a page, ``None`` for an empty response, and a dataclass
where the message needs reading (``Validation``, the parsed JWKS).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from mfa.v1 import action_token_service_pb2 as token_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as mfa_pb
from mfa.v1 import types_pb2
from mfa_client._types import Proof, Validation, proof_message

_Response = TypeVar("_Response", bound=Message)
_Result = TypeVar("_Result")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Unary(Generic[_Response, _Result]):
    """One unary call: ``result`` makes the method's answer of the response."""

    method: str  # "/mfa.v1.MfaService/GetStatus"
    request: Message
    response_type: type[_Response]
    result: Callable[[_Response], _Result]
    timeout: float | None = None  # None: the client's deadline
    # Sent again after UNAVAILABLE or DEADLINE_EXCEEDED: only a request whose
    # idempotency key makes the server answer a resend as it answered the first.
    keyed_retry: bool = False


@dataclass(frozen=True, slots=True)
class ServerStream(Generic[_Response, _Result]):
    """One server-streaming call, without deadline or retry: the caller resumes it."""

    method: str
    request: Message
    response_type: type[_Response]
    result: Callable[[_Response], _Result]


Rpc = Unary[Any, _T]
StreamRpc = ServerStream[Any, _T]


def _same(response: _T) -> _T:
    return response


def _nothing(response: Message) -> None:
    return None


class _Service:
    """The method paths of one service, checked against its descriptor at import."""

    def __init__(self, file: FileDescriptor, name: str) -> None:
        service = file.services_by_name[name]
        self._paths = {m.name: f"/{service.full_name}/{m.name}" for m in service.methods}

    @overload
    def unary(
        self, name: str, request: Message, response_type: type[_Response]
    ) -> Unary[_Response, _Response]: ...

    @overload
    def unary(
        self,
        name: str,
        request: Message,
        response_type: type[_Response],
        result: Callable[[_Response], _Result],
        *,
        timeout: float | None = None,
        keyed_retry: bool = False,
    ) -> Unary[_Response, _Result]: ...

    def unary(
        self,
        name: str,
        request: Message,
        response_type: type[_Response],
        result: Callable[[_Response], Any] = _same,
        *,
        timeout: float | None = None,
        keyed_retry: bool = False,
    ) -> Unary[_Response, Any]:
        return Unary(self._paths[name], request, response_type, result, timeout, keyed_retry)

    def server_stream(
        self, name: str, request: Message, response_type: type[_Response]
    ) -> ServerStream[_Response, _Response]:
        return ServerStream(self._paths[name], request, response_type, _same)


_MFA = _Service(mfa_pb.DESCRIPTOR, "MfaService")
_ADMIN = _Service(admin_pb.DESCRIPTOR, "AdminService")
_TOKENS = _Service(token_pb.DESCRIPTOR, "ActionTokenService")


# --- mfa.v1.MfaService: the API backend, for a user ---------------------------------


def get_status(
    *, environment_id: str, user_id: str, session_id: str = ""
) -> Rpc[mfa_pb.GetStatusResponse]:
    """The user's factors and what is due now: ``enrollment_required``,
    ``session_mfa_pending`` (for ``session_id``, when given), ``enrolled_methods``,
    ``protected_actions``, ``locked_until``, ``recovery_codes_remaining``,
    ``recovery_required``. A read: retried by the channel after ``UNAVAILABLE``."""
    request = mfa_pb.GetStatusRequest(
        environment_id=environment_id, user_id=user_id, session_id=session_id
    )
    return _MFA.unary("GetStatus", request, mfa_pb.GetStatusResponse)


def enroll(
    *,
    environment_id: str,
    user_id: str,
    method: types_pb2.Method.ValueType,
    action_token: str = "",
    account_name: str = "",
) -> Rpc[mfa_pb.EnrollResponse]:
    """Begin enrolling a TOTP device (``METHOD_TOTP``: the answer's ``totp`` holds the
    secret and the ``otpauth://`` URI to show as a QR code) or a passkey
    (``METHOD_PASSKEY``: ``passkey.creation_options_json`` for
    ``PublicKeyCredential.parseCreationOptionsFromJSON``). Finish with
    ``complete_enrollment(enrollment_id=...)`` before ``expires_at``.

    A user who already has a verified device needs an ``ACTION_CREDENTIAL_LINK`` token
    (``action_token``), else ``ERROR_REASON_STEP_UP_REQUIRED``. ``account_name`` is what
    the app or the passkey shows (default ``user_id``)."""
    request = mfa_pb.EnrollRequest(
        environment_id=environment_id,
        user_id=user_id,
        method=method,
        action_token=action_token,
        account_name=account_name,
    )
    return _MFA.unary("Enroll", request, mfa_pb.EnrollResponse)


def complete_enrollment(
    *,
    environment_id: str,
    user_id: str,
    enrollment_id: str,
    totp_code: str = "",
    passkey_registration_json: str = "",
    alias: str = "",
) -> Rpc[mfa_pb.CompleteEnrollmentResponse]:
    """Finish an enrollment with the first code of the app (``totp_code``) or the
    browser's ``PublicKeyCredential`` from ``navigator.credentials.create()`` as JSON
    (``passkey_registration_json``). The answer holds the ``device`` and, with the user's
    first device, ten ``recovery_codes`` to show once. A wrong code is
    ``ERROR_REASON_VERIFICATION_FAILED``; an unknown or expired enrollment
    ``ERROR_REASON_ENROLLMENT_NOT_FOUND``."""
    request = mfa_pb.CompleteEnrollmentRequest(
        environment_id=environment_id,
        user_id=user_id,
        enrollment_id=enrollment_id,
        totp_code=totp_code,
        passkey_registration_json=passkey_registration_json,
        alias=alias,
    )
    return _MFA.unary("CompleteEnrollment", request, mfa_pb.CompleteEnrollmentResponse)


def challenge(
    *,
    environment_id: str,
    user_id: str,
    method: types_pb2.Method.ValueType,
    device_id: str = "",
    approval: types_pb2.Approval | None = None,
) -> Rpc[mfa_pb.ChallengeResponse]:
    """Begin a verification: a single-use, short-lived challenge (``challenge_id``,
    ``expires_at``; for a passkey ``passkey_request_options_json`` for
    ``navigator.credentials.get()``). ``device_id`` restricts it to one device.

    ``approval`` binds the challenge to what the user approves (the actions, the SHA-256
    of the exact payload, the words shown: docs/approvals.md): the answer's
    ``approval_hash`` commits to it (a passkey signs it; ``approval_hash(...)``
    recomputes it), and only ``issue_action_token`` for exactly that approval may answer
    the challenge. A user with no verified factor is ``ERROR_REASON_NOT_ENROLLED``."""
    request = mfa_pb.ChallengeRequest(
        environment_id=environment_id,
        user_id=user_id,
        method=method,
        device_id=device_id,
        approval=approval,
    )
    return _MFA.unary("Challenge", request, mfa_pb.ChallengeResponse)


def verify_session(
    *,
    environment_id: str,
    user_id: str,
    session_id: str,
    challenge_id: str,
    proof: Proof | types_pb2.Proof,
) -> Rpc[mfa_pb.VerifySessionResponse]:
    """Answer ``challenge_id`` with ``proof`` (``Proof.totp(code)``, ...) to mark the login
    session ``session_id`` MFA-verified. A wrong, reused or expired proof is
    ``ERROR_REASON_VERIFICATION_FAILED`` and counts towards the lockout
    (``ERROR_REASON_LOCKED_OUT`` with ``retry_after``)."""
    request = mfa_pb.VerifySessionRequest(
        environment_id=environment_id,
        user_id=user_id,
        session_id=session_id,
        challenge_id=challenge_id,
        proof=proof_message(proof),
    )
    return _MFA.unary("VerifySession", request, mfa_pb.VerifySessionResponse)


def issue_action_token(
    *,
    environment_id: str,
    user_id: str,
    challenge_id: str,
    proof: Proof | types_pb2.Proof,
    actions: Iterable[types_pb2.Action.ValueType] = (),
    single_use: bool = False,
    payload_digest: bytes = b"",
    session_id: str = "",
) -> Rpc[mfa_pb.IssueActionTokenResponse]:
    """Answer ``challenge_id`` with ``proof`` to get an action token (``token``,
    ``expires_at``) for ``actions``, for the wallet signer to validate.

    ``single_use``: one run of the action, else any number until the token expires (a
    credential action's token is single use regardless). ``payload_digest`` (SHA-256, 32
    bytes) binds the token to the exact message or transaction, ``session_id`` to the
    login session. On a challenge bound to an approval, leave ``actions``,
    ``payload_digest`` and ``session_id`` empty and ``single_use`` false to take the
    approval's, or repeat them: anything else is ``ERROR_REASON_APPROVAL_MISMATCH``.
    A wrong proof is ``ERROR_REASON_VERIFICATION_FAILED``."""
    request = mfa_pb.IssueActionTokenRequest(
        environment_id=environment_id,
        user_id=user_id,
        challenge_id=challenge_id,
        proof=proof_message(proof),
        actions=list(actions),
        single_use=single_use,
        payload_digest=payload_digest,
        session_id=session_id,
    )
    return _MFA.unary("IssueActionToken", request, mfa_pb.IssueActionTokenResponse)


def list_devices(*, environment_id: str, user_id: str) -> Rpc[list[types_pb2.Device]]:
    """The user's devices (TOTP and passkeys; never a secret). A read: retried by the
    channel after ``UNAVAILABLE``."""
    request = mfa_pb.ListDevicesRequest(environment_id=environment_id, user_id=user_id)
    return _MFA.unary("ListDevices", request, mfa_pb.ListDevicesResponse, lambda r: list(r.devices))


def update_device(
    *,
    environment_id: str,
    user_id: str,
    device_id: str,
    alias: str = "",
    make_default: bool = False,
) -> Rpc[types_pb2.Device]:
    """Rename a device (``alias``; empty keeps it) or make it the user's default. An
    unknown device is ``ERROR_REASON_DEVICE_NOT_FOUND``."""
    request = mfa_pb.UpdateDeviceRequest(
        environment_id=environment_id,
        user_id=user_id,
        device_id=device_id,
        alias=alias,
        make_default=make_default,
    )
    return _MFA.unary("UpdateDevice", request, mfa_pb.UpdateDeviceResponse, lambda r: r.device)


def delete_device(
    *, environment_id: str, user_id: str, device_id: str, action_token: str
) -> Rpc[None]:
    """Remove a device, with an ``ACTION_CREDENTIAL_UNLINK`` token (else
    ``ERROR_REASON_STEP_UP_REQUIRED``). Not retried: a resend after a lost answer would
    be ``ERROR_REASON_DEVICE_NOT_FOUND``."""
    request = mfa_pb.DeleteDeviceRequest(
        environment_id=environment_id,
        user_id=user_id,
        device_id=device_id,
        action_token=action_token,
    )
    return _MFA.unary("DeleteDevice", request, mfa_pb.DeleteDeviceResponse, _nothing)


def regenerate_recovery_codes(
    *, environment_id: str, user_id: str, action_token: str
) -> Rpc[list[str]]:
    """Ten new recovery codes, to show once, with an ``ACTION_RECOVERY_CODES_REGENERATE``
    token; every older code stops working."""
    request = mfa_pb.RegenerateRecoveryCodesRequest(
        environment_id=environment_id, user_id=user_id, action_token=action_token
    )
    return _MFA.unary(
        "RegenerateRecoveryCodes",
        request,
        mfa_pb.RegenerateRecoveryCodesResponse,
        lambda r: list(r.recovery_codes),
    )


def acknowledge_recovery_codes(*, environment_id: str, user_id: str) -> Rpc[None]:
    """The user confirms the recovery codes are saved
    (``recovery_codes_pending_acknowledgement`` turns false)."""
    request = mfa_pb.AcknowledgeRecoveryCodesRequest(environment_id=environment_id, user_id=user_id)
    return _MFA.unary(
        "AcknowledgeRecoveryCodes", request, mfa_pb.AcknowledgeRecoveryCodesResponse, _nothing
    )


# --- mfa.v1.AdminService: the dashboard backend, operators ----------------------------


def create_environment(
    settings: types_pb2.Settings | str, paths: Sequence[str] = ()
) -> Rpc[types_pb2.Settings]:
    """Create an environment: ``"env-1"`` with the default settings, or ``settings``
    (its ``environment_id`` names it) taking the fields named by ``paths`` (empty: every
    field set to a non-zero value; ``["totp_enabled"]`` with ``totp_enabled`` false
    turns TOTP off). ``ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS`` if it exists. Not
    retried: a lost answer shows as ``ALREADY_EXISTS`` when sent again."""
    if isinstance(settings, str):
        settings = types_pb2.Settings(environment_id=settings)
    request = admin_pb.CreateEnvironmentRequest(
        settings=settings, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
    )
    return _ADMIN.unary(
        "CreateEnvironment", request, admin_pb.CreateEnvironmentResponse, lambda r: r.settings
    )


def list_environments(
    *, page_size: int = 0, page_token: str = ""
) -> Rpc[tuple[list[types_pb2.Settings], str]]:
    """One page of environments in id order, and the token of the next (empty on the
    last page). ``page_size`` 1..500; 0 means 50."""
    request = admin_pb.ListEnvironmentsRequest(page_size=page_size, page_token=page_token)
    return _ADMIN.unary(
        "ListEnvironments",
        request,
        admin_pb.ListEnvironmentsResponse,
        lambda r: (list(r.environments), r.next_page_token),
    )


def get_settings(environment_id: str) -> Rpc[types_pb2.Settings]:
    """The environment's settings; ``ERROR_REASON_ENVIRONMENT_NOT_FOUND`` for an id never
    created."""
    request = admin_pb.GetSettingsRequest(environment_id=environment_id)
    return _ADMIN.unary("GetSettings", request, admin_pb.GetSettingsResponse, lambda r: r.settings)


def update_settings(settings: types_pb2.Settings, paths: Sequence[str]) -> Rpc[types_pb2.Settings]:
    """Change the fields of ``settings`` named by ``paths`` (e.g. ``["totp.issuer"]``,
    ``["lockout"]`` or ``["*"]``), validated as a whole: a refusal is
    ``INVALID_ARGUMENT`` with the field in ``field_violations``."""
    request = admin_pb.UpdateSettingsRequest(
        settings=settings, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
    )
    return _ADMIN.unary(
        "UpdateSettings", request, admin_pb.UpdateSettingsResponse, lambda r: r.settings
    )


def reset_user_mfa(
    environment_id: str, *, user_id: str, reason: str
) -> Rpc[admin_pb.ResetUserMfaResponse]:
    """Remove all of a user's factors and recovery codes and revoke their outstanding
    tokens (``devices_removed``, ``tokens_revoked``); ``reason`` (e.g. a support ticket)
    goes to the audit log."""
    request = admin_pb.ResetUserMfaRequest(
        environment_id=environment_id, user_id=user_id, reason=reason
    )
    return _ADMIN.unary("ResetUserMfa", request, admin_pb.ResetUserMfaResponse)


def list_audit_events(
    environment_id: str,
    *,
    user_id: str = "",
    types: Iterable[admin_pb.AuditEventType.ValueType] = (),
    page_size: int = 0,
    page_token: str = "",
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> Rpc[tuple[list[admin_pb.AuditEvent], str]]:
    """One page of the environment's security events, newest first, and the token of the
    next (empty on the last page), optionally of one user, of some ``types``, and that
    occurred from ``start_time`` (inclusive) to ``end_time`` (exclusive), aware datetimes.
    ``page_size`` 1..500; 0 means 50. The next page takes the same filters."""
    request = admin_pb.ListAuditEventsRequest(
        environment_id=environment_id,
        user_id=user_id,
        types=list(types),
        page_size=page_size,
        page_token=page_token,
    )
    for field, value in (("start_time", start_time), ("end_time", end_time)):
        if value is not None:
            if value.utcoffset() is None:  # ambiguous: which zone's midnight?
                raise ValueError(f"{field} must be an aware datetime (with a tzinfo)")
            getattr(request, field).FromDatetime(value)
    return _ADMIN.unary(
        "ListAuditEvents",
        request,
        admin_pb.ListAuditEventsResponse,
        lambda r: (list(r.events), r.next_page_token),
    )


def watch_audit_events(
    environment_id: str, after_cursor: str = ""
) -> StreamRpc[admin_pb.WatchAuditEventsResponse]:
    """The environment's audit events in commit order, after ``after_cursor`` (empty: from
    the oldest kept), then each new one as it commits, without end. Each response
    carries its ``cursor``: resume with the last one received (after an error, or when
    the server stopped and ended the stream) and nothing is missed or seen twice. No
    deadline, no retry: the caller decides when to resume. Closing the iterator
    (``aclose()`` or ``close()``) hangs up. Admin callers only."""
    request = admin_pb.WatchAuditEventsRequest(
        environment_id=environment_id, after_cursor=after_cursor
    )
    return _ADMIN.server_stream("WatchAuditEvents", request, admin_pb.WatchAuditEventsResponse)


def create_webhook(
    environment_id: str,
    *,
    url: str,
    event_types: Iterable[admin_pb.AuditEventType.ValueType],
    format: admin_pb.WebhookFormat.ValueType = admin_pb.WEBHOOK_FORMAT_UNSPECIFIED,
) -> Rpc[admin_pb.CreateWebhookResponse]:
    """Deliver the environment's events of ``event_types`` to ``url`` (https), at least
    once, in order per user, as Standard Webhooks (the default ``format``) or OpenID CAEP
    Security Event Tokens. The answer's ``signing_secret`` is shown only here."""
    request = admin_pb.CreateWebhookRequest(
        environment_id=environment_id, url=url, event_types=list(event_types), format=format
    )
    return _ADMIN.unary("CreateWebhook", request, admin_pb.CreateWebhookResponse)


def list_webhooks(environment_id: str) -> Rpc[list[admin_pb.Webhook]]:
    """The environment's webhooks, with the state of their deliveries. A read: retried by
    the channel after ``UNAVAILABLE``."""
    request = admin_pb.ListWebhooksRequest(environment_id=environment_id)
    return _ADMIN.unary(
        "ListWebhooks", request, admin_pb.ListWebhooksResponse, lambda r: list(r.webhooks)
    )


def delete_webhook(environment_id: str, webhook_id: str) -> Rpc[None]:
    """Stop delivering to a webhook; what it had not delivered is dropped. An unknown id
    is ``ERROR_REASON_WEBHOOK_NOT_FOUND``."""
    request = admin_pb.DeleteWebhookRequest(environment_id=environment_id, webhook_id=webhook_id)
    return _ADMIN.unary("DeleteWebhook", request, admin_pb.DeleteWebhookResponse, _nothing)


# --- mfa.v1.ActionTokenService: the wallet signer -----------------------------------


def validate(
    *,
    environment_id: str,
    user_id: str,
    action: types_pb2.Action.ValueType,
    token: str = "",
    payload_digest: bytes = b"",
    session_id: str = "",
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> Rpc[Validation]:
    """Ask whether ``action`` may run now (``ValidateActionToken``), consuming a
    single-use ``token``. A refusal is a ``Validation`` (``allowed`` false, with its
    ``reason_name``), not an error.

    Each attempt has its own deadline (``timeout``, else the client's). ``UNAVAILABLE``
    and ``DEADLINE_EXCEEDED`` are retried under one idempotency key (a new UUID unless
    given), so a retry after a lost answer gets the first decision rather than
    ``TOKEN_ALREADY_USED``. Other failures raise ``MfaServiceError`` at once."""
    request = token_pb.ValidateActionTokenRequest(
        environment_id=environment_id,
        user_id=user_id,
        action=action,
        token=token,
        payload_digest=payload_digest,
        session_id=session_id,
        idempotency_key=idempotency_key or str(uuid.uuid4()),
    )
    return _TOKENS.unary(
        "ValidateActionToken",
        request,
        token_pb.ValidateActionTokenResponse,
        lambda r: Validation(decision=r.decision, reason=r.reason),
        timeout=timeout,
        keyed_retry=True,
    )


def _jwks(response: token_pb.GetJwksResponse) -> dict[str, Any]:
    jwks: dict[str, Any] = json.loads(response.jwks_json)
    return jwks


def jwks() -> Rpc[dict[str, Any]]:
    """The JSON Web Key Set (RFC 7517) whose keys sign action tokens, parsed. A read:
    retried by the channel after ``UNAVAILABLE``."""
    return _TOKENS.unary("GetJwks", token_pb.GetJwksRequest(), token_pb.GetJwksResponse, _jwks)
