"""The Python client's typed methods (mfa_client) against the real in-process server: each
RPC of the three services through ``Client`` and ``SyncClient``, each refusal an
``MfaServiceError`` with its status and reason.

The sync client blocks, so its calls run in a thread (``asyncio.to_thread``) while the
server keeps serving on the test's event loop. ``test_the_two_clients_have_one_method_per_rpc``
holds both to the protos.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import pyotp
import pytest
from authenticator import SoftAuthenticator
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from flows import TotpDevice
from helpers import FakeClock, refused
from mfa.v1 import action_token_service_pb2, admin_service_pb2, mfa_service_pb2
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2 as types
from mfa.v1.action_token_service_pb2 import ValidateActionTokenRequest
from mfa_client import (
    READ_METHODS,
    ActionTokenClient,
    AdminClient,
    Client,
    FieldViolation,
    MfaClient,
    MfaServiceError,
    Proof,
    ServiceClient,
    SyncActionTokenClient,
    SyncAdminClient,
    SyncClient,
    SyncMfaClient,
    approval_hash,
)
from mfa_service import app as app_module

ENV = "env-pyclient"
pytestmark = pytest.mark.environments(ENV)

SIGN = types.ACTION_WAAS_SIGN
DIGEST = hashlib.sha256(b"send 1.5 ETH to 0x12ab").digest()
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
T = TypeVar("T")

# Each service's typed clients, async and sync; the method of an RPC is its snake_case
# name, but for the signer's two.
CLIENTS: dict[str, tuple[type[ServiceClient[Any]], type[ServiceClient[Any]]]] = {
    "mfa.v1.MfaService": (MfaClient, SyncMfaClient),
    "mfa.v1.AdminService": (AdminClient, SyncAdminClient),
    "mfa.v1.ActionTokenService": (ActionTokenClient, SyncActionTokenClient),
}
RENAMED = {"ValidateActionToken": "validate", "GetJwks": "jwks"}
NOT_RPCS = {"stub", "with_options"}


def method_name(rpc: str) -> str:
    return RENAMED.get(rpc) or re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def test_the_two_clients_have_one_method_per_rpc() -> None:
    """Every RPC of the protos has a documented method of the same signature in the async
    client (a coroutine, or an async generator for the stream) and the sync one."""
    files = (mfa_service_pb2, admin_service_pb2, action_token_service_pb2)
    services = [s for f in files for s in f.DESCRIPTOR.services_by_name.values()]
    assert {s.full_name for s in services} == set(CLIENTS)
    for service in services:
        expected = {method_name(m.name): m for m in service.methods}
        for kind in CLIENTS[service.full_name]:
            public = {n for n in dir(kind) if not n.startswith("_")} - NOT_RPCS
            assert public == set(expected), kind.__name__
        async_kind, sync_kind = CLIENTS[service.full_name]
        for name, rpc in expected.items():
            async_method, sync_method = getattr(async_kind, name), getattr(sync_kind, name)
            async_signature, sync_signature = map(inspect.signature, (async_method, sync_method))
            assert async_signature.parameters == sync_signature.parameters, name
            if not rpc.server_streaming:  # else an async generator and a generator
                assert async_signature.return_annotation == sync_signature.return_annotation
            assert async_method.__doc__ and async_method.__doc__ == sync_method.__doc__, name
            assert inspect.iscoroutinefunction(async_method) != rpc.server_streaming, name
            assert not inspect.iscoroutinefunction(sync_method), name


def code_at(secret: str, clock: FakeClock, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock.now(), counter_offset=steps)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def enrolled(client: Client, clock: FakeClock, user: str) -> tuple[TotpDevice, list[str]]:
    """``user`` with a verified TOTP device, and its recovery codes; the clock moved to the
    next time step (the enrollment's code is spent)."""
    started = await client.mfa.enroll(environment_id=ENV, user_id=user, method=types.METHOD_TOTP)
    assert started.totp.otpauth_uri.startswith("otpauth://totp/")
    done = await client.mfa.complete_enrollment(
        environment_id=ENV,
        user_id=user,
        enrollment_id=started.enrollment_id,
        totp_code=code_at(started.totp.secret, clock),
        alias="phone",
    )
    clock.advance(timedelta(seconds=30))
    return TotpDevice(done.device.device_id, started.totp.secret), list(done.recovery_codes)


async def token(
    client: Client,
    clock: FakeClock,
    user: str,
    device: TotpDevice,
    action: types.Action.ValueType = SIGN,
) -> str:
    """A single-use token for ``action``, earned with the device's code of this step."""
    opened = await client.mfa.challenge(environment_id=ENV, user_id=user, method=types.METHOD_TOTP)
    issued = await client.mfa.issue_action_token(
        environment_id=ENV,
        user_id=user,
        challenge_id=opened.challenge_id,
        proof=Proof.totp(code_at(device.secret, clock)),
        actions=[action],
        single_use=True,
    )
    clock.advance(timedelta(seconds=30))
    return issued.token


# --- MfaService ----------------------------------------------------------------------


async def test_enrollment_status_and_a_verified_session(client: Client, clock: FakeClock) -> None:
    before = await client.mfa.get_status(environment_id=ENV, user_id="ann")
    assert list(before.enrolled_methods) == []
    device, codes = await enrolled(client, clock, "ann")
    assert len(codes) == 10

    status = await client.mfa.get_status(environment_id=ENV, user_id="ann")
    assert list(status.enrolled_methods) == [types.METHOD_TOTP]
    assert status.recovery_codes_pending_acknowledgement
    await client.mfa.acknowledge_recovery_codes(environment_id=ENV, user_id="ann")
    status = await client.mfa.get_status(environment_id=ENV, user_id="ann")
    assert not status.recovery_codes_pending_acknowledgement

    opened = await client.mfa.challenge(environment_id=ENV, user_id="ann", method=types.METHOD_TOTP)
    verified = await client.mfa.verify_session(
        environment_id=ENV,
        user_id="ann",
        session_id="login-1",
        challenge_id=opened.challenge_id,
        proof=Proof.totp(code_at(device.secret, clock)),
    )
    assert (verified.method, verified.device_id) == (types.METHOD_TOTP, device.device_id)


async def test_enrollment_refusals_name_their_reason(client: Client, clock: FakeClock) -> None:
    started = await client.mfa.enroll(environment_id=ENV, user_id="bo", method=types.METHOD_TOTP)
    good = code_at(started.totp.secret, clock)
    complete = client.mfa.complete_enrollment
    await refused(
        complete(
            environment_id=ENV,
            user_id="bo",
            enrollment_id=started.enrollment_id,
            totp_code=wrong(good),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await refused(
        complete(environment_id=ENV, user_id="bo", enrollment_id=UNKNOWN_ID, totp_code=good),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )
    await refused(
        client.mfa.enroll(environment_id="env-never", user_id="bo", method=types.METHOD_TOTP),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENVIRONMENT_NOT_FOUND",
    )
    await enrolled(client, clock, "cy")
    await refused(
        client.mfa.enroll(environment_id=ENV, user_id="cy", method=types.METHOD_TOTP),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )


async def test_an_action_token_bound_to_a_digest_is_validated_once(
    client: Client, clock: FakeClock
) -> None:
    await client.admin.update_settings(
        types.Settings(environment_id=ENV, protected_actions=[SIGN]), ["protected_actions"]
    )
    device, _ = await enrolled(client, clock, "dee")
    opened = await client.mfa.challenge(environment_id=ENV, user_id="dee", method=types.METHOD_TOTP)
    issue = client.mfa.issue_action_token
    await refused(
        issue(
            environment_id=ENV,
            user_id="dee",
            challenge_id=opened.challenge_id,
            proof=Proof.totp(wrong(code_at(device.secret, clock))),
            actions=[SIGN],
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    opened = await client.mfa.challenge(environment_id=ENV, user_id="dee", method=types.METHOD_TOTP)
    issued = await issue(
        environment_id=ENV,
        user_id="dee",
        challenge_id=opened.challenge_id,
        proof=types.Proof(totp_code=code_at(device.secret, clock)),  # the message works too
        actions=[SIGN],
        single_use=True,
        payload_digest=DIGEST,
    )
    assert issued.expires_at.seconds > clock.now().timestamp()

    def validate(digest: bytes) -> Any:
        return client.action_tokens.validate(
            environment_id=ENV,
            user_id="dee",
            action=SIGN,
            token=issued.token,
            payload_digest=digest,
        )

    assert (await validate(hashlib.sha256(b"other").digest())).reason_name == (
        "DECISION_REASON_PAYLOAD_MISMATCH"
    )
    first, again = await validate(DIGEST), await validate(DIGEST)
    assert first.allowed and first.reason_name == "DECISION_REASON_TOKEN_VALID"
    assert not again.allowed and again.reason_name == "DECISION_REASON_TOKEN_ALREADY_USED"
    jwks = await client.action_tokens.jwks()
    assert jwks["keys"] and all("d" not in key for key in jwks["keys"])


async def test_a_challenge_bound_to_an_approval(client: Client, clock: FakeClock) -> None:
    await client.admin.update_settings(
        types.Settings(environment_id=ENV, protected_actions=[SIGN]), ["protected_actions"]
    )
    device, _ = await enrolled(client, clock, "eve")
    approval = types.Approval(
        actions=[SIGN], payload_digest=DIGEST, display_text="Send 1.5 ETH", single_use=True
    )
    opened = await client.mfa.challenge(
        environment_id=ENV, user_id="eve", method=types.METHOD_TOTP, approval=approval
    )
    assert opened.approval_hash == approval_hash(
        environment_id=ENV,
        user_id="eve",
        challenge_id=opened.challenge_id,
        expires_at=opened.expires_at,
        approval=approval,
    )
    await refused(
        client.mfa.issue_action_token(
            environment_id=ENV,
            user_id="eve",
            challenge_id=opened.challenge_id,
            proof=Proof.totp(code_at(device.secret, clock)),
            payload_digest=hashlib.sha256(b"another payload").digest(),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_APPROVAL_MISMATCH",
    )
    opened = await client.mfa.challenge(
        environment_id=ENV, user_id="eve", method=types.METHOD_TOTP, approval=approval
    )
    issued = await client.mfa.issue_action_token(  # the approval's terms, left empty
        environment_id=ENV,
        user_id="eve",
        challenge_id=opened.challenge_id,
        proof=Proof.totp(code_at(device.secret, clock)),
    )
    validation = await client.action_tokens.validate(
        environment_id=ENV, user_id="eve", action=SIGN, token=issued.token, payload_digest=DIGEST
    )
    assert validation.allowed


async def test_devices_and_recovery_codes(client: Client, clock: FakeClock) -> None:
    device, old_codes = await enrolled(client, clock, "fay")
    [listed] = await client.mfa.list_devices(environment_id=ENV, user_id="fay")
    assert (listed.device_id, listed.alias, listed.is_default) == (device.device_id, "phone", True)
    renamed = await client.mfa.update_device(
        environment_id=ENV, user_id="fay", device_id=device.device_id, alias="work phone"
    )
    assert renamed.alias == "work phone"
    await refused(
        client.mfa.update_device(
            environment_id=ENV, user_id="fay", device_id=UNKNOWN_ID, alias="x"
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_DEVICE_NOT_FOUND",
    )

    regenerate = types.ACTION_RECOVERY_CODES_REGENERATE
    new_codes = await client.mfa.regenerate_recovery_codes(
        environment_id=ENV,
        user_id="fay",
        action_token=await token(client, clock, "fay", device, regenerate),
    )
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    for code, outcome in ((old_codes[0], "refused"), (new_codes[0], "verified")):
        opened = await client.mfa.challenge(
            environment_id=ENV, user_id="fay", method=types.METHOD_RECOVERY_CODE
        )
        verify = client.mfa.verify_session(
            environment_id=ENV,
            user_id="fay",
            session_id="s",
            challenge_id=opened.challenge_id,
            proof=Proof.recovery_code(code),
        )
        if outcome == "refused":
            await refused(
                verify, grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_VERIFICATION_FAILED"
            )
        else:
            assert (await verify).method == types.METHOD_RECOVERY_CODE

    delete = client.mfa.delete_device
    await refused(
        delete(environment_id=ENV, user_id="fay", device_id=device.device_id, action_token=""),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )
    unlink = await token(client, clock, "fay", device, types.ACTION_CREDENTIAL_UNLINK)
    await delete(environment_id=ENV, user_id="fay", device_id=device.device_id, action_token=unlink)
    assert await client.mfa.list_devices(environment_id=ENV, user_id="fay") == []


async def test_a_passkey_proof_from_the_browser_s_json_object(client: Client) -> None:
    origin, rp_id = "https://app.example.com", "example.com"
    await client.admin.update_settings(
        types.Settings(
            environment_id=ENV,
            passkey=types.PasskeySettings(rp_id=rp_id, allowed_origins=[origin]),
        ),
        ["passkey.rp_id", "passkey.allowed_origins"],
    )
    authenticator = SoftAuthenticator(origin=origin, rp_id=rp_id)
    started = await client.mfa.enroll(
        environment_id=ENV, user_id="gil", method=types.METHOD_PASSKEY
    )
    await client.mfa.complete_enrollment(
        environment_id=ENV,
        user_id="gil",
        enrollment_id=started.enrollment_id,
        passkey_registration_json=authenticator.register(started.passkey.creation_options_json),
    )
    opened = await client.mfa.challenge(
        environment_id=ENV, user_id="gil", method=types.METHOD_PASSKEY
    )
    assertion = json.loads(authenticator.assertion(opened.passkey_request_options_json))
    proof = Proof.passkey(assertion)
    assert repr(proof) == "Proof(kind='passkey_assertion_json')"  # no secret in a log line
    verified = await client.mfa.verify_session(
        environment_id=ENV,
        user_id="gil",
        session_id="s",
        challenge_id=opened.challenge_id,
        proof=proof,
    )
    assert verified.method == types.METHOD_PASSKEY


# --- AdminService --------------------------------------------------------------------


async def test_settings_refusals_carry_their_field(client: Client) -> None:
    await refused(
        client.admin.create_environment(ENV),
        grpc.StatusCode.ALREADY_EXISTS,
        "ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS",
    )
    error = await refused(
        client.admin.update_settings(
            types.Settings(environment_id=ENV, totp=types.TotpSettings(issuer="a:b")),
            ["totp.issuer"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == ["settings.totp.issuer"]
    assert isinstance(error.field_violations[0], FieldViolation) and error.request_id
    created = await client.admin.create_environment(
        types.Settings(
            environment_id="env-pyclient-2",
            passkey_enabled=False,
            action_methods=[types.METHOD_TOTP],
        ),
        ["passkey_enabled", "action_methods"],
    )
    assert not created.passkey_enabled
    page, next_token = await client.admin.list_environments(page_size=1)
    assert [s.environment_id for s in page] == [ENV] and next_token
    assert (await client.admin.get_settings("env-pyclient-2")).environment_id == "env-pyclient-2"


async def test_reset_audit_log_and_stream(client: Client, clock: FakeClock) -> None:
    await client.admin.update_settings(
        types.Settings(environment_id=ENV, protected_actions=[SIGN]), ["protected_actions"]
    )
    device, _ = await enrolled(client, clock, "hal")
    outstanding = await token(client, clock, "hal", device)
    reset = await client.admin.reset_user_mfa(environment_id=ENV, user_id="hal", reason="TICKET-1")
    assert (reset.devices_removed, reset.tokens_revoked) == (1, 1)
    validation = await client.action_tokens.validate(
        environment_id=ENV, user_id="hal", action=SIGN, token=outstanding
    )
    assert validation.reason_name == "DECISION_REASON_TOKEN_REVOKED"

    events, next_token = await client.admin.list_audit_events(
        ENV, user_id="hal", types=[admin_pb.AUDIT_EVENT_TYPE_USER_RESET]
    )
    assert [(e.type, e.details["reason"]) for e in events] == [
        (admin_pb.AUDIT_EVENT_TYPE_USER_RESET, "TICKET-1")
    ]
    assert next_token == ""
    [newest], next_token = await client.admin.list_audit_events(ENV, user_id="hal", page_size=1)
    assert newest.type == admin_pb.AUDIT_EVENT_TYPE_TOKEN_VALIDATED and next_token

    stream = client.admin.watch_audit_events(ENV)
    try:
        first = await anext(stream)
    finally:
        await stream.aclose()
    assert first.event.type == admin_pb.AUDIT_EVENT_TYPE_ENVIRONMENT_CREATED and first.cursor


async def test_webhooks_are_created_listed_and_deleted(client: Client) -> None:
    created = await client.admin.create_webhook(
        ENV, url="https://hooks.example.com/mfa", event_types=[admin_pb.AUDIT_EVENT_TYPE_USER_RESET]
    )
    assert created.signing_secret.startswith("whsec_")
    [listed] = await client.admin.list_webhooks(ENV)
    assert listed.webhook_id == created.webhook.webhook_id
    assert listed.format == admin_pb.WEBHOOK_FORMAT_STANDARD_WEBHOOKS
    await client.admin.delete_webhook(ENV, created.webhook.webhook_id)
    assert await client.admin.list_webhooks(ENV) == []
    await refused(
        client.admin.delete_webhook(ENV, created.webhook.webhook_id),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_WEBHOOK_NOT_FOUND",
    )


# --- the sync client -----------------------------------------------------------------


async def in_thread(call: Callable[[], T]) -> T:
    """A blocking call, away from the event loop that serves it."""
    return await asyncio.to_thread(call)


@pytest.fixture
async def sync_client(app: app_module.Application) -> AsyncIterator[SyncClient]:
    client = SyncClient.connect(f"127.0.0.1:{app.port}", insecure=True)
    yield client
    await in_thread(client.close)


async def test_the_sync_client_enrolls_verifies_and_is_refused_alike(
    sync_client: SyncClient, clock: FakeClock
) -> None:
    mfa = sync_client.mfa.with_options(metadata=[("mfa-client-ip", "203.0.113.7")])
    started = await in_thread(
        lambda: mfa.enroll(environment_id=ENV, user_id="ivy", method=types.METHOD_TOTP)
    )
    secret = started.totp.secret
    done = await in_thread(
        lambda: mfa.complete_enrollment(
            environment_id=ENV,
            user_id="ivy",
            enrollment_id=started.enrollment_id,
            totp_code=code_at(secret, clock),
        )
    )
    assert len(done.recovery_codes) == 10
    opened = await in_thread(
        lambda: mfa.challenge(environment_id=ENV, user_id="ivy", method=types.METHOD_TOTP)
    )
    await refused(
        in_thread(
            lambda: mfa.verify_session(
                environment_id=ENV,
                user_id="ivy",
                session_id="s",
                challenge_id=opened.challenge_id,
                proof=Proof.totp(wrong(code_at(secret, clock, 1))),
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await refused(
        in_thread(lambda: sync_client.admin.get_settings("env-never")),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENVIRONMENT_NOT_FOUND",
    )
    events, _ = await in_thread(
        lambda: sync_client.admin.list_audit_events(
            ENV, user_id="ivy", types=[admin_pb.AUDIT_EVENT_TYPE_ENROLLMENT_STARTED]
        )
    )
    assert [e.client_ip for e in events] == ["203.0.113.7"]  # with_options' metadata

    def first_streamed() -> admin_pb.WatchAuditEventsResponse:
        stream = sync_client.admin.watch_audit_events(ENV)
        try:
            return next(stream)
        finally:
            stream.close()

    first = await in_thread(first_streamed)
    assert first.event.type == admin_pb.AUDIT_EVENT_TYPE_ENVIRONMENT_CREATED


async def test_a_lockout_says_when_to_retry_through_the_sync_client(
    sync_client: SyncClient, client: Client, clock: FakeClock
) -> None:
    await client.admin.update_settings(
        types.Settings(environment_id=ENV, lockout=types.LockoutSettings(max_failed_attempts=1)),
        ["lockout.max_failed_attempts"],
    )
    device, _ = await enrolled(client, clock, "jo")
    mfa = sync_client.mfa

    def verify(code: str) -> Any:
        opened = mfa.challenge(environment_id=ENV, user_id="jo", method=types.METHOD_TOTP)
        return mfa.verify_session(
            environment_id=ENV,
            user_id="jo",
            session_id="s",
            challenge_id=opened.challenge_id,
            proof=Proof.totp(code),
        )

    good = code_at(device.secret, clock)
    await refused(
        in_thread(lambda: verify(wrong(good))),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    locked = await refused(
        in_thread(lambda: verify(good)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert locked.retry_after == timedelta(minutes=15)


# --- every method on the wire: deadline, metadata, retries, the refusal decoded -------

USER = {"environment_id": ENV, "user_id": "u"}
# Arguments for each method (any the server would take; the recorder refuses them all).
EXAMPLE_CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "get_status": ((), USER),
    "enroll": ((), {**USER, "method": types.METHOD_TOTP}),
    "complete_enrollment": ((), {**USER, "enrollment_id": UNKNOWN_ID, "totp_code": "123456"}),
    "challenge": ((), {**USER, "method": types.METHOD_TOTP}),
    "verify_session": (
        (),
        {**USER, "session_id": "s", "challenge_id": UNKNOWN_ID, "proof": Proof.totp("123456")},
    ),
    "issue_action_token": (
        (),
        {**USER, "challenge_id": UNKNOWN_ID, "proof": Proof.recovery_code("abcd-efgh")},
    ),
    "list_devices": ((), USER),
    "update_device": ((), {**USER, "device_id": UNKNOWN_ID, "alias": "phone"}),
    "delete_device": ((), {**USER, "device_id": UNKNOWN_ID, "action_token": "t"}),
    "regenerate_recovery_codes": ((), {**USER, "action_token": "t"}),
    "acknowledge_recovery_codes": ((), USER),
    "create_environment": ((ENV,), {}),
    "list_environments": ((), {}),
    "get_settings": ((ENV,), {}),
    "update_settings": ((types.Settings(environment_id=ENV), ["*"]), {}),
    "reset_user_mfa": ((), {**USER, "reason": "ticket"}),
    "list_audit_events": ((ENV,), {}),
    "watch_audit_events": ((ENV,), {}),
    "create_webhook": ((ENV,), {"url": "https://hooks.example.com", "event_types": [1]}),
    "list_webhooks": ((ENV,), {}),
    "delete_webhook": ((ENV, UNKNOWN_ID), {}),
    "validate": ((), {**USER, "action": SIGN, "token": "t"}),
    "jwks": ((), {}),
}
SERVICE_ATTRIBUTES = {
    "mfa.v1.MfaService": "mfa",
    "mfa.v1.AdminService": "admin",
    "mfa.v1.ActionTokenService": "action_tokens",
}
RPCS = [
    (service.full_name, method.name)
    for file in (mfa_service_pb2, admin_service_pb2, action_token_service_pb2)
    for service in file.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
READS = {f"/{service}/{method}" for service, method in READ_METHODS}
VALIDATE = "/mfa.v1.ActionTokenService/ValidateActionToken"


@dataclass(frozen=True)
class Arrived:
    method: str
    time_remaining: float | None
    metadata: dict[str, str | bytes]
    request: bytes


class Recorder(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # not subscriptable at runtime
    """A gRPC server that refuses every call as mfa-service would (``code``, ErrorInfo,
    BadRequest, RetryInfo), recording what arrived."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.arrived: list[Arrived] = []
        self._code = code
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((self,))
        self.target = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"

    def refusal(self) -> bytes:
        delay = Duration()
        delay.FromTimedelta(timedelta(seconds=7))
        details = [
            error_details_pb2.ErrorInfo(
                reason="ERROR_REASON_DATABASE_UNAVAILABLE", metadata={"request_id": "req-1"}
            ),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field="user_id", description="x")
                ]
            ),
            error_details_pb2.RetryInfo(retry_delay=delay),
        ]
        packed = []
        for detail in details:
            packed.append(any_pb2.Any())
            packed[-1].Pack(detail)
        status = status_pb2.Status(code=self._code.value[0], message="refused", details=packed)
        return bytes(status.SerializeToString())

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            self.arrived.append(
                Arrived(details.method, context.time_remaining(), metadata, request)
            )
            await context.abort(
                self._code, "refused", (("grpc-status-details-bin", self.refusal()),)
            )
            raise AssertionError("abort returned")

        if details.method == "/mfa.v1.AdminService/WatchAuditEvents":
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)

    async def __aenter__(self) -> Recorder:
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(None)


def first(result: Any) -> Any:
    """A sync method's result; a stream's first response."""
    return next(result) if inspect.isgenerator(result) else result


async def failure(client: Client | SyncClient, service: str, rpc: str, **options: Any) -> Any:
    """The ``MfaServiceError`` of ``rpc``'s method of ``client`` called with its example
    arguments (``options``: of ``with_options``)."""
    target = getattr(client, SERVICE_ATTRIBUTES[service])
    if options:
        target = target.with_options(**options)
    name = method_name(rpc)
    args, kwargs = EXAMPLE_CALLS[name]
    method = getattr(target, name)
    with pytest.raises(MfaServiceError) as caught:
        if isinstance(client, SyncClient):
            await in_thread(lambda: first(method(*args, **kwargs)))
        else:
            result = method(*args, **kwargs)
            await (anext(result) if inspect.isasyncgen(result) else result)
    return caught.value


@asynccontextmanager
async def both_clients(target: str) -> AsyncIterator[tuple[Client, SyncClient]]:
    sync_client = SyncClient.connect(target, insecure=True)
    try:
        async with Client.connect(target, insecure=True) as client:
            yield client, sync_client
    finally:
        await in_thread(sync_client.close)


def test_every_method_has_an_example_call() -> None:
    assert set(EXAMPLE_CALLS) == {method_name(rpc) for _, rpc in RPCS}


async def test_every_method_has_a_deadline_sends_the_metadata_and_decodes_the_refusal() -> None:
    async with (
        Recorder(grpc.StatusCode.FAILED_PRECONDITION) as recorder,
        both_clients(recorder.target) as clients,
    ):
        for client in clients:
            for service, rpc in RPCS:
                path = f"/{service}/{rpc}"
                for options, deadline in (({}, 5.0), ({"timeout": 2.5}, 2.5)):
                    sent = {"metadata": [("x-caller", "test")], **options}
                    error = await failure(client, service, rpc, **sent)
                    assert (error.code, error.reason, error.request_id) == (
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "ERROR_REASON_DATABASE_UNAVAILABLE",
                        "req-1",
                    ), path
                    assert error.field_violations == [FieldViolation("user_id", "x")]
                    assert error.retry_after == timedelta(seconds=7)
                    arrived = recorder.arrived.pop()
                    assert (arrived.method, arrived.metadata["x-caller"]) == (path, "test")
                    if rpc == "WatchAuditEvents":  # a stream without end has no deadline
                        assert arrived.time_remaining is None
                    else:
                        assert arrived.time_remaining is not None, path
                        # (a few ms more at times: gRPC rounds the deadline it sends up)
                        assert deadline - 1 < arrived.time_remaining < deadline + 0.1, path
        assert recorder.arrived == []  # one attempt each: FAILED_PRECONDITION is final


async def test_only_reads_and_keyed_validations_are_sent_again() -> None:
    """After UNAVAILABLE, the channel sends a read again (4 attempts in all) and
    ``validate`` its request under one idempotency key (3); nothing else is resent."""
    async with (
        Recorder(grpc.StatusCode.UNAVAILABLE) as recorder,
        both_clients(recorder.target) as clients,
    ):
        for client in clients:
            # All at once: the reads' retries wait 0.1 to 1 s each (READ_METHODS).
            errors = await asyncio.gather(*(failure(client, s, rpc) for s, rpc in RPCS))
            arrived, recorder.arrived[:] = list(recorder.arrived), []
            for (service, rpc), error in zip(RPCS, errors, strict=True):
                path = f"/{service}/{rpc}"
                assert (error.code, error.reason) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "ERROR_REASON_DATABASE_UNAVAILABLE",
                )
                attempts = [a for a in arrived if a.method == path]
                expected = 4 if path in READS else 3 if path == VALIDATE else 1
                assert len(attempts) == expected, path
                if path == VALIDATE:
                    keys = {
                        ValidateActionTokenRequest.FromString(a.request).idempotency_key
                        for a in attempts
                    }
                    assert len(keys) == 1 and "" not in keys
