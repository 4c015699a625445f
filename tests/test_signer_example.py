"""The wallet signer example and ``client.action_tokens``, end to end through the server."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from examples.signer import Signer, SigningRefused
from flows import TotpDevice, challenge, enroll_totp, issue_action_token, update_settings
from helpers import FakeClock, refused
from mfa.v1 import types_pb2 as types
from mfa_client import ActionTokenClient, Client, MfaServiceError
from mfa_service.app import Application

ENV = "env-signer"
pytestmark = pytest.mark.environments(ENV)
USER = "alice"
REPO = Path(__file__).resolve().parents[1]
VALIDATE = "/mfa.v1.ActionTokenService/ValidateActionToken"


async def issue_token(
    client: Client, clock: FakeClock, device: TotpDevice, message: bytes, *, user: str = USER
) -> str:
    """A single-use ACTION_WAAS_SIGN token bound to sha256(message), from a fresh TOTP code."""
    clock.advance(timedelta(seconds=30))  # a TOTP step is accepted once per device
    response = await issue_action_token(
        client,
        ENV,
        user,
        device.code(clock.now()),
        await challenge(client, ENV, user),
        payload_digest=hashlib.sha256(message).digest(),
    )
    return str(response.token)


@pytest.fixture
async def device(client: Client, clock: FakeClock) -> TotpDevice:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    return await enroll_totp(client, clock, ENV, USER)


@pytest.fixture
def signer(client: Client) -> Signer:
    return Signer(client, ENV, Ed25519PrivateKey.generate())


async def refusal(coro: Any) -> str:
    with pytest.raises(SigningRefused) as caught:
        await coro
    return caught.value.reason_name


# --- the signer --------------------------------------------------------------------


async def test_signs_once_with_a_token_for_the_message(
    client: Client, clock: FakeClock, device: TotpDevice, signer: Signer
) -> None:
    message = b"transfer 1 ETH to 0xabc"
    token = await issue_token(client, clock, device, message)
    signature = await signer.sign(USER, message, token)
    signer.public_key.verify(signature, message)  # raises InvalidSignature if wrong
    again = signer.sign(USER, message, token)
    assert await refusal(again) == "DECISION_REASON_TOKEN_ALREADY_USED"


async def test_refuses_without_a_token(device: TotpDevice, signer: Signer) -> None:
    assert await refusal(signer.sign(USER, b"hello", "")) == "DECISION_REASON_MFA_REQUIRED"


async def test_refuses_a_token_for_another_message(
    client: Client, clock: FakeClock, device: TotpDevice, signer: Signer
) -> None:
    token = await issue_token(client, clock, device, b"pay 1")
    refused = await refusal(signer.sign(USER, b"pay 1000", token))
    assert refused == "DECISION_REASON_PAYLOAD_MISMATCH"
    # The refused attempt did not burn the token: it still signs what it was issued for.
    signature = await signer.sign(USER, b"pay 1", token)
    signer.public_key.verify(signature, b"pay 1")


async def test_refusal_carries_the_proto_reason(device: TotpDevice, signer: Signer) -> None:
    with pytest.raises(SigningRefused) as caught:
        await signer.sign(USER, b"hello", "not-a-jwt")
    assert caught.value.reason == types.DECISION_REASON_TOKEN_INVALID
    assert not caught.value.validation.allowed
    assert "DECISION_REASON_TOKEN_INVALID" in str(caught.value)


# --- client.action_tokens ------------------------------------------------------------


async def test_a_retry_with_the_same_key_gets_the_first_decision(
    client: Client, clock: FakeClock, device: TotpDevice
) -> None:
    message = b"hello"
    token = await issue_token(client, clock, device, message)
    request: dict[str, Any] = {
        "environment_id": ENV,
        "user_id": USER,
        "action": types.ACTION_WAAS_SIGN,
        "token": token,
        "payload_digest": hashlib.sha256(message).digest(),
    }
    first = await client.action_tokens.validate(**request, idempotency_key="sign-1")
    retry = await client.action_tokens.validate(**request, idempotency_key="sign-1")
    assert first == retry
    assert first.allowed
    assert first.decision == types.DECISION_ALLOW
    assert first.reason == types.DECISION_REASON_TOKEN_VALID
    later = await client.action_tokens.validate(**request, idempotency_key="sign-2")
    assert not later.allowed
    assert later.reason_name == "DECISION_REASON_TOKEN_ALREADY_USED"
    # The same key for a different request is a caller bug, not a decision.
    misuse = await refused(
        client.action_tokens.validate(
            **{**request, "payload_digest": hashlib.sha256(b"other").digest()},
            idempotency_key="sign-1",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in misuse.field_violations] == ["idempotency_key"]


async def test_a_mistyped_environment_signs_nothing(
    client: Client, clock: FakeClock, device: TotpDevice
) -> None:
    """Finding 5 (issue 17): a signer configured with an environment never created
    (here another case of ENV) signed anything, with or without a token."""
    message = b"transfer 1 ETH to 0xabc"
    token = await issue_token(client, clock, device, message)
    mistyped = Signer(client, ENV.upper(), Ed25519PrivateKey.generate())
    for presented in ("", "garbage", token):
        refused = await refusal(mistyped.sign(USER, message, presented))
        assert refused == "DECISION_REASON_ENVIRONMENT_UNKNOWN"


@pytest.mark.environments("env-open")
async def test_an_unprotected_action_needs_no_token(client: Client) -> None:
    validation = await client.action_tokens.validate(
        environment_id="env-open", user_id=USER, action=types.ACTION_WAAS_SIGN
    )
    assert validation.allowed
    assert validation.reason == types.DECISION_REASON_MFA_NOT_REQUIRED


async def test_jwks_verifies_tokens_offline(
    client: Client, clock: FakeClock, device: TotpDevice
) -> None:
    jwks = await client.action_tokens.jwks()
    assert jwks["keys"]
    for key in jwks["keys"]:
        assert key["kid"]
        assert key["alg"] in ("EdDSA", "ES256")
        assert "d" not in key  # never a private part
    token = await issue_token(client, clock, device, b"hello")
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[jwk["alg"]],
        audience="mfa-action",
        options={"verify_exp": False},  # issued at the fake clock's time
    )
    assert (claims["sub"], claims["env"]) == (USER, ENV)


async def test_the_typed_client_reports_errors_as_mfa_service_errors(client: Client) -> None:
    with pytest.raises(MfaServiceError) as caught:
        await client.action_tokens.validate(
            environment_id="", user_id=USER, action=types.ACTION_WAAS_SIGN
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "ERROR_REASON_INVALID_ARGUMENT"


# --- retries through a real gRPC hop that loses answers ----------------------------


def _pairs(metadata: object) -> tuple[tuple[str, str | bytes], ...]:
    """An error's trailing metadata as the (key, value) pairs it holds at runtime
    (grpc-stubs types each item as an opaque ``_Metadatum``)."""
    return cast(tuple[tuple[str, str | bytes], ...], metadata or ())


class LossyProxy:
    """A gRPC proxy in front of the server that forwards ValidateActionToken and then
    loses the answer of the first ``lose`` calls: the server has decided (and consumed
    the token) but the caller sees UNAVAILABLE, or nothing until its deadline."""

    def __init__(self, upstream: str, *, lose: int, how: str = "unavailable") -> None:
        self.calls = 0
        self._lose = lose
        self._how = how
        self._channel = grpc.aio.insecure_channel(upstream)
        # Raw bytes both ways.
        self._forward = self._channel.unary_unary(VALIDATE)  # type: ignore[call-arg]  # grpc-stubs: the serializers are optional
        self._server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "mfa.v1.ActionTokenService",
            {"ValidateActionToken": grpc.unary_unary_rpc_method_handler(self._handle)},
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._caller = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    def tokens(self, **options: Any) -> ActionTokenClient:
        """An ActionTokenClient whose calls go through the proxy."""
        return ActionTokenClient(self._caller, **{"timeout": 5.0, "backoff": 0.01, **options})

    async def _handle(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.calls += 1
        try:
            response = await self._forward(request)
        except grpc.aio.AioRpcError as error:  # the server's answer, ErrorInfo and all
            await context.abort(
                error.code(), error.details() or "", tuple(_pairs(error.trailing_metadata()))
            )
        if self.calls <= self._lose:
            if self._how == "deadline":
                await asyncio.sleep(10)  # the caller's deadline passes first
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by test proxy")
        return response

    async def __aenter__(self) -> LossyProxy:
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._caller.close()  # type: ignore[call-arg]  # grpc-stubs: grace is optional
        await self._server.stop(None)
        await self._channel.close()  # type: ignore[call-arg]  # grpc-stubs: grace is optional


@pytest.mark.parametrize("how", ["unavailable", "deadline"])
async def test_a_lost_answer_is_retried_without_burning_the_token(
    app: Application, client: Client, clock: FakeClock, device: TotpDevice, how: str
) -> None:
    message = b"hello"
    token = await issue_token(client, clock, device, message)
    async with LossyProxy(f"127.0.0.1:{app.port}", lose=1, how=how) as proxy:
        # A deadline short enough to pass while the proxy holds the first answer back.
        tokens = proxy.tokens(timeout=1.0 if how == "deadline" else 5.0)
        validation = await tokens.validate(
            environment_id=ENV,
            user_id=USER,
            action=types.ACTION_WAAS_SIGN,
            token=token,
            payload_digest=hashlib.sha256(message).digest(),
        )
    assert proxy.calls == 2
    assert validation.reason_name == "DECISION_REASON_TOKEN_VALID"
    # The first attempt really consumed the token: only the key made the retry ALLOW.
    again = await client.action_tokens.validate(
        environment_id=ENV,
        user_id=USER,
        action=types.ACTION_WAAS_SIGN,
        token=token,
        payload_digest=hashlib.sha256(message).digest(),
    )
    assert again.reason_name == "DECISION_REASON_TOKEN_ALREADY_USED"


async def test_attempts_are_bounded(app: Application, device: TotpDevice) -> None:
    async with LossyProxy(f"127.0.0.1:{app.port}", lose=100) as proxy:
        tokens = proxy.tokens(max_attempts=3)
        await refused(
            tokens.validate(environment_id=ENV, user_id=USER, action=types.ACTION_WAAS_SIGN),
            grpc.StatusCode.UNAVAILABLE,
            "",  # the proxy's own refusal: the service never answered
        )
    assert proxy.calls == 3


async def test_invalid_argument_is_not_retried(app: Application) -> None:
    async with LossyProxy(f"127.0.0.1:{app.port}", lose=0) as proxy:
        tokens = proxy.tokens()
        invalid = await refused(
            tokens.validate(
                environment_id=ENV,
                user_id=USER,
                action=types.ACTION_WAAS_SIGN,
                payload_digest=b"not a sha-256",
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ERROR_REASON_INVALID_ARGUMENT",
        )
    assert [v.field for v in invalid.field_violations] == ["payload_digest"]
    assert proxy.calls == 1


# --- the command line ----------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    # create_subprocess_exec, not subprocess.run: the event loop must keep serving.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.signer",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode().strip(), stderr.decode().strip()


async def test_the_command_line_signs_with_a_valid_token_and_refuses_without(
    app: Application, client: Client, clock: FakeClock, device: TotpDevice, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signing-key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    token = await issue_token(client, clock, device, b"hello")
    common = ["--target", f"127.0.0.1:{app.port}", "--env", ENV, "--user", USER]
    common += ["--message", "hello", "--signing-key", str(key_file)]

    code, out, err = await run_cli(*common, "--token", token)
    assert code == 0, err
    key.public_key().verify(bytes.fromhex(out), b"hello")

    code, out, err = await run_cli(*common)
    assert (code, out) == (3, "")
    assert err == "refused: DECISION_REASON_MFA_REQUIRED"
