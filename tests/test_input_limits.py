"""The length cap of every capped field of every request, one table row each.

One character (or item) over the cap is INVALID_ARGUMENT whose first BadRequest field
violation names exactly that field; at the cap that refusal is gone (the call may still
fail for another reason). A row whose value can be valid at the cap asserts that no
violation names the field at all; for the others (a TOTP code of 64 KiB is no code) only
the length refusal must be gone. A new capped field is one more row of ``CAPS``.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError

ENV = "env-limits"
pytestmark = pytest.mark.environments(ENV)
SOME_ID = str(uuid.uuid4())


def _base_requests() -> dict[str, Message]:
    """A valid request of each RPC with a string field; every row changes one field."""
    user: dict[str, Any] = {"environment_id": ENV, "user_id": "alice"}
    return {
        "MfaService/GetStatus": pb.GetStatusRequest(**user, session_id="s1"),
        "MfaService/Enroll": pb.EnrollRequest(**user, method=types.METHOD_TOTP),
        "MfaService/CompleteEnrollment": pb.CompleteEnrollmentRequest(
            **user, enrollment_id=SOME_ID, alias="Phone", totp_code="123456"
        ),
        "MfaService/Challenge": pb.ChallengeRequest(**user, method=types.METHOD_TOTP),
        "MfaService/VerifySession": pb.VerifySessionRequest(
            **user, session_id="s1", challenge_id=SOME_ID, proof=types.Proof(totp_code="123456")
        ),
        "MfaService/IssueActionToken": pb.IssueActionTokenRequest(
            **user,
            challenge_id=SOME_ID,
            proof=types.Proof(totp_code="123456"),
            actions=[types.ACTION_WAAS_SIGN],
        ),
        "MfaService/ListDevices": pb.ListDevicesRequest(**user),
        "MfaService/UpdateDevice": pb.UpdateDeviceRequest(**user, device_id=SOME_ID, alias="P"),
        "MfaService/DeleteDevice": pb.DeleteDeviceRequest(**user, device_id=SOME_ID),
        "MfaService/RegenerateRecoveryCodes": pb.RegenerateRecoveryCodesRequest(**user),
        "MfaService/AcknowledgeRecoveryCodes": pb.AcknowledgeRecoveryCodesRequest(**user),
        "ActionTokenService/ValidateActionToken": at_pb.ValidateActionTokenRequest(
            **user, action=types.ACTION_WAAS_SIGN, token="not-a-token"
        ),
        "AdminService/CreateEnvironment": admin_pb.CreateEnvironmentRequest(
            settings=types.Settings(environment_id="env-new")
        ),
        "AdminService/ListEnvironments": admin_pb.ListEnvironmentsRequest(),
        "AdminService/GetSettings": admin_pb.GetSettingsRequest(environment_id=ENV),
        "AdminService/UpdateSettings": admin_pb.UpdateSettingsRequest(
            settings=types.Settings(environment_id=ENV),
            update_mask=field_mask_pb2.FieldMask(paths=["totp.issuer"]),
        ),
        "AdminService/ResetUserMfa": admin_pb.ResetUserMfaRequest(**user, reason="ticket 42"),
        "AdminService/ListAuditEvents": admin_pb.ListAuditEventsRequest(environment_id=ENV),
        "AdminService/CreateWebhook": admin_pb.CreateWebhookRequest(
            environment_id=ENV,
            url="https://hooks.example.com/mfa",
            event_types=[admin_pb.AUDIT_EVENT_TYPE_USER_RESET],
        ),
        "AdminService/ListWebhooks": admin_pb.ListWebhooksRequest(environment_id=ENV),
        "AdminService/DeleteWebhook": admin_pb.DeleteWebhookRequest(
            environment_id=ENV, webhook_id=SOME_ID
        ),
    }


def ascii_of(length: int) -> str:
    return "a" * length


def page_token_of(length: int) -> str:
    """A page token of the service's format (``v1:`` and a zero-padded row id), with
    dots, which base64 decoding skips, to make up ``length`` characters."""
    digits = length // 4 * 3 - len("v1:")
    token = base64.urlsafe_b64encode(f"v1:{1:0{digits}d}".encode()).decode()
    return token + "." * (length - len(token))


def environment_page_token_of(length: int) -> str:
    """A ListEnvironments page token of the service's format (``v1:`` and an id), with
    dots, which base64 decoding skips, to make up ``length`` characters."""
    id_length = length // 4 * 3 - len("v1:")
    token = base64.urlsafe_b64encode(f"v1:{'e' * id_length}".encode()).decode()
    return token + "." * (length - len(token))


def rp_id_of(length: int) -> str:
    """A domain name of ``length`` characters, every label of it valid (at most 63)."""
    return ".".join(["a" * 63] * 3 + ["b" * (length - 3 * 64)])


def origin_of(length: int) -> str:
    """An origin of ``length`` characters that is valid for example.com but for its length:
    host labels of at most 63 characters, and a port once the host alone (at most 253)
    cannot be that long."""
    port = ":65535" if length - len("https://") > 253 else ""
    prefix = length - len("https://") - len(port) - len("example.com")  # labels and dots
    full, extra = divmod(prefix, 64)
    labels = ["a" * 63] * full
    if extra == 1:  # a label needs a character before its dot
        labels[-1], extra = "a" * 62, 2
    if extra:
        labels.append("a" * (extra - 1))
    return "https://" + ".".join([*labels, "example.com"]) + port


@dataclass(frozen=True)
class Cap:
    """``field`` of ``rpc``'s request refuses more than ``cap`` characters (or items).

    ``value`` makes a value of a given size; ``valid_at_cap``: that value is a valid
    one at the cap (else only the length refusal must be gone); ``extra`` sets other
    fields of the request first (a field path to its value).
    """

    rpc: str
    field: str
    cap: int
    value: Callable[[int], Any] = ascii_of
    valid_at_cap: bool = True
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.rpc.partition('/')[2]}.{self.field}"


def ids_of(rpc: str, *, user: bool = True) -> list[Cap]:
    caps = [Cap(rpc, "environment_id", 128)]
    if not user:
        return caps
    # A TOTP label's account name has at most 128 characters: a longer user id gives one.
    extra = {"account_name": "alice"} if rpc == "MfaService/Enroll" else {}
    return [*caps, Cap(rpc, "user_id", 256, extra=extra)]


PROOFS = ("proof.totp_code", "proof.passkey_assertion_json", "proof.recovery_code")
USER_RPCS = [
    "MfaService/GetStatus",
    "MfaService/Enroll",
    "MfaService/CompleteEnrollment",
    "MfaService/Challenge",
    "MfaService/VerifySession",
    "MfaService/IssueActionToken",
    "MfaService/ListDevices",
    "MfaService/UpdateDevice",
    "MfaService/DeleteDevice",
    "MfaService/RegenerateRecoveryCodes",
    "MfaService/AcknowledgeRecoveryCodes",
    "ActionTokenService/ValidateActionToken",
    "AdminService/ResetUserMfa",
    "AdminService/ListAuditEvents",  # user_id: an optional filter
]
# The whole passkey section, valid but for the field of the row.
ORIGINS_SECTION = {
    "update_mask.paths": ["passkey"],
    "settings.passkey.rp_id": "example.com",
    "settings.passkey.allowed_origins": ["https://app.example.com"],
    "settings.passkey.user_verification": types.USER_VERIFICATION_REQUIRED,
    "settings.passkey.attestation": types.ATTESTATION_NONE,
}
CAPS: list[Cap] = [
    *(cap for rpc in USER_RPCS for cap in ids_of(rpc)),
    *ids_of("AdminService/GetSettings", user=False),
    Cap("MfaService/GetStatus", "session_id", 256),
    Cap("MfaService/VerifySession", "session_id", 256),
    Cap("MfaService/IssueActionToken", "session_id", 256),
    Cap("ActionTokenService/ValidateActionToken", "session_id", 256),
    Cap("MfaService/Enroll", "account_name", 128),
    Cap("MfaService/Enroll", "action_token", 8192),
    Cap("MfaService/DeleteDevice", "action_token", 8192),
    Cap("MfaService/RegenerateRecoveryCodes", "action_token", 8192),
    Cap("ActionTokenService/ValidateActionToken", "token", 8192),
    Cap("ActionTokenService/ValidateActionToken", "idempotency_key", 128),
    Cap("MfaService/CompleteEnrollment", "alias", 64),
    Cap("MfaService/UpdateDevice", "alias", 64),
    Cap(
        "MfaService/CompleteEnrollment",
        "passkey_registration_json",
        64 * 1024,
        valid_at_cap=False,
        extra={"totp_code": ""},
    ),
    *(Cap("MfaService/VerifySession", p, 64 * 1024, valid_at_cap=False) for p in PROOFS),
    *(Cap("MfaService/IssueActionToken", p, 64 * 1024, valid_at_cap=False) for p in PROOFS),
    Cap("AdminService/ResetUserMfa", "reason", 256),
    Cap("AdminService/ListAuditEvents", "page_token", 64, page_token_of),
    Cap("AdminService/UpdateSettings", "settings.environment_id", 128),
    Cap("AdminService/UpdateSettings", "settings.totp.issuer", 64),
    Cap(
        "AdminService/UpdateSettings",
        "settings.passkey.rp_id",
        253,
        rp_id_of,
        extra={"update_mask.paths": ["passkey.rp_id"]},
    ),
    Cap(
        "AdminService/UpdateSettings",
        "settings.passkey.rp_name",
        64,
        extra={"update_mask.paths": ["passkey.rp_name"]},
    ),
    Cap(
        "AdminService/UpdateSettings",
        "settings.passkey.allowed_origins[0]",
        267,
        origin_of,
        extra=ORIGINS_SECTION,
    ),
    Cap(
        "AdminService/UpdateSettings",
        "settings.passkey.allowed_origins",
        20,
        lambda n: [f"https://a{i}.example.com" for i in range(n)],
        extra=ORIGINS_SECTION,
    ),
    Cap(
        "AdminService/UpdateSettings",
        "update_mask.paths[0]",
        64,
        lambda n: "totp.issuer".ljust(n),  # surrounding spaces are ignored
    ),
    Cap("AdminService/UpdateSettings", "update_mask.paths", 64, lambda n: ["totp.issuer"] * n),
    Cap("AdminService/CreateEnvironment", "settings.environment_id", 128),
    Cap("AdminService/CreateEnvironment", "settings.totp.issuer", 64),
    Cap("AdminService/CreateEnvironment", "settings.passkey.rp_id", 253, rp_id_of),
    Cap("AdminService/CreateEnvironment", "settings.passkey.rp_name", 64),
    Cap(
        "AdminService/CreateEnvironment",
        "settings.passkey.allowed_origins[0]",
        267,
        origin_of,
        extra={"settings.passkey.rp_id": "example.com"},
    ),
    Cap(
        "AdminService/CreateEnvironment",
        "settings.passkey.allowed_origins",
        20,
        lambda n: [f"https://a{i}.example.com" for i in range(n)],
        extra={"settings.passkey.rp_id": "example.com"},
    ),
    Cap(
        "AdminService/CreateEnvironment",
        "update_mask.paths[0]",
        64,
        lambda n: "totp.issuer".ljust(n),
        extra={"settings.totp.issuer": "Acme"},
    ),
    Cap(
        "AdminService/CreateEnvironment",
        "update_mask.paths",
        64,
        lambda n: ["totp.issuer"] * n,
        extra={"settings.totp.issuer": "Acme"},
    ),
    Cap("AdminService/ListEnvironments", "page_token", 256, environment_page_token_of),
    *ids_of("AdminService/CreateWebhook", user=False),
    Cap(
        "AdminService/CreateWebhook", "url", 2048, lambda n: "https://example.com/" + "a" * (n - 20)
    ),
    Cap(
        "AdminService/CreateWebhook",
        "event_types",
        len(admin_pb.AuditEventType.values()) - 1,
        lambda n: list(range(1, n + 1)),
    ),
    *ids_of("AdminService/ListWebhooks", user=False),
    *ids_of("AdminService/DeleteWebhook", user=False),
]


def test_every_rpc_with_a_string_field_has_rows() -> None:
    assert {cap.rpc for cap in CAPS} == set(_base_requests())
    assert len({cap.id for cap in CAPS}) == len(CAPS)


def with_value(request: Message, path: str, value: Any) -> None:
    """Set the field at ``path`` (``a.b``, ``a.list[0]`` or a whole ``a.list``)."""
    *parents, leaf = path.split(".")
    target: Any = request
    for parent in parents:
        target = getattr(target, parent)
    name, _, index = leaf.partition("[")
    if index or isinstance(value, list):
        items = getattr(target, name)
        del items[:]
        items.extend(value if isinstance(value, list) else [value])
    else:
        setattr(target, name, value)


async def violations_at(client: Client, cap: Cap, length: int) -> MfaServiceError | None:
    """The service's refusal of the request with the field at ``length``, or None."""
    request = _base_requests()[cap.rpc]
    for path, value in cap.extra.items():
        with_value(request, path, value)
    with_value(request, cap.field, cap.value(length))
    send = client.channel.unary_unary(
        f"/mfa.v1.{cap.rpc}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=lambda raw: raw,
    )
    try:
        await send(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        return MfaServiceError.from_rpc_error(error)
    return None


@pytest.mark.parametrize("cap", CAPS, ids=[cap.id for cap in CAPS])
async def test_one_over_the_cap_is_refused_naming_the_field(client: Client, cap: Cap) -> None:
    over = await violations_at(client, cap, cap.cap + 1)
    assert over is not None, "accepted"
    assert over.code == grpc.StatusCode.INVALID_ARGUMENT, over
    assert over.field_violations, over
    assert over.field_violations[0].field == cap.field, over.field_violations
    length_refusal = over.field_violations[0].description

    at = await violations_at(client, cap, cap.cap)
    on_field = [v for v in (at.field_violations if at else []) if v.field == cap.field]
    if cap.valid_at_cap:
        assert on_field == [], on_field
    else:
        assert length_refusal not in [v.description for v in on_field], on_field
