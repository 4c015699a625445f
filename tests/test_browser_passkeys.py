"""Passkeys in a real browser: headless Chromium with a virtual authenticator drives the
example webapp (examples/webapp), which calls the real server over gRPC. The approval
tests hold what the browser signed to the approval hash recomputed by the TypeScript
client under node, and check its signature with the COSE key of ListDevices alone.

Needs Debian's ``chromium`` (``make system-deps`` installs it); without it these tests
fail, they are never skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.async_api import Page, Request, Route

from browser import STEP_TIMEOUT_MS, Authenticator
from examples.signer import (
    ApprovalNotVerified,
    Signer,
    check_passkey_approval,
    check_token_approval,
    token_claims,
)
from examples.webapp import RunningServer, configure_environment, create_app, serve
from flows import call, status
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, approval_hash
from typescript_client import compile_client, node_approval_hashes

ENV = "env-browser"
pytestmark = pytest.mark.environments(ENV)
StartWebapp = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class Outcome:
    state: str
    reason: str | None
    text: str


@pytest.fixture
def signer(client: Client) -> Signer:
    return Signer(client, ENV, Ed25519PrivateKey.generate())


@pytest.fixture
async def start_webapp(client: Client, signer: Signer) -> AsyncIterator[StartWebapp]:
    """Starts webapp instances on free ports; returns each one's origin."""
    servers: list[RunningServer] = []

    async def start() -> str:
        server = await serve(create_app(client, ENV, signer), host="127.0.0.1", port=0)
        servers.append(server)
        return f"http://localhost:{server.port}"  # localhost, never 127.0.0.1 (RP id)

    yield start
    for server in servers:
        await server.close()


async def click_step(page: Page, button: str, output: str) -> Outcome:
    """Click a step's button and wait until its output says ok or error."""
    await page.click(button)
    done = page.locator(f"{output}[data-state]")
    await done.wait_for(timeout=STEP_TIMEOUT_MS)
    return Outcome(
        state=await done.get_attribute("data-state") or "",
        reason=await done.get_attribute("data-reason"),
        text=await done.text_content() or "",
    )


async def open_page(page: Page, origin: str, user: str, session: str) -> None:
    await page.goto(f"{origin}/?user={user}&session={session}")
    await page.locator("#status:not(:empty)").wait_for()


async def test_enroll_verify_session_and_sign_in_a_browser(
    client: Client,
    start_webapp: StartWebapp,
    signer: Signer,
    page: Page,
    authenticator: Authenticator,
) -> None:
    origin = await start_webapp()
    await configure_environment(client, ENV, origin)
    settings = await client.admin.get_settings(ENV)
    assert list(settings.passkey.allowed_origins) == [origin]
    assert settings.session_mfa_enabled
    assert list(settings.protected_actions) == [types.ACTION_WAAS_SIGN]
    await open_page(page, origin, "alice", "login-1")

    enrolled = await click_step(page, "#enroll", "#enroll-result")
    assert enrolled.state == "ok", enrolled.text
    [credential] = await authenticator.credentials()
    assert credential["rpId"] == "localhost"
    assert credential["isResidentCredential"]
    after_enroll = await status(client, ENV, "alice", "login-1")
    assert list(after_enroll.enrolled_methods) == [types.METHOD_PASSKEY]
    assert after_enroll.session_mfa_pending

    verified = await click_step(page, "#verify-session", "#session-result")
    assert verified.state == "ok", verified.text
    assert not (await status(client, ENV, "alice", "login-1")).session_mfa_pending
    assert (await status(client, ENV, "alice", "login-2")).session_mfa_pending

    message = "transfer 1 ETH to 0xabc"
    await page.fill("#message", message)
    signed = await click_step(page, "#sign", "#sign-result")
    assert signed.state == "ok", signed.text
    signature = await page.get_attribute("#sign-result", "data-signature")
    assert signature is not None
    signer.public_key.verify(bytes.fromhex(signature), message.encode())  # raises if wrong

    # Each signature takes a fresh assertion: the token was single use and per message.
    await page.fill("#message", "transfer 2 ETH to 0xdef")
    again = await click_step(page, "#sign", "#sign-result")
    assert again.state == "ok", again.text
    signature = await page.get_attribute("#sign-result", "data-signature")
    assert signature is not None
    signer.public_key.verify(bytes.fromhex(signature), b"transfer 2 ETH to 0xdef")


async def test_the_service_refuses_a_ceremony_from_another_origin(
    client: Client, start_webapp: StartWebapp, page: Page, authenticator: Authenticator
) -> None:
    """The same page on an origin that is not allowed: the browser completes every
    ceremony (same RP id), and mfa-service refuses each on its origin."""
    allowed, other = await start_webapp(), await start_webapp()
    await configure_environment(client, ENV, allowed)

    await open_page(page, other, "bob", "login-1")
    refused = await click_step(page, "#enroll", "#enroll-result")
    assert (refused.state, refused.reason) == ("error", "ERROR_REASON_VERIFICATION_FAILED")
    assert len(await authenticator.credentials()) == 1  # the browser did make a credential
    assert list((await status(client, ENV, "bob")).enrolled_methods) == []

    await open_page(page, allowed, "bob", "login-1")
    enrolled = await click_step(page, "#enroll", "#enroll-result")
    assert enrolled.state == "ok", enrolled.text

    await open_page(page, other, "bob", "login-1")
    refused = await click_step(page, "#verify-session", "#session-result")
    assert (refused.state, refused.reason) == ("error", "ERROR_REASON_VERIFICATION_FAILED")
    assert (await status(client, ENV, "bob", "login-1")).session_mfa_pending
    refused = await click_step(page, "#sign", "#sign-result")
    assert (refused.state, refused.reason) == ("error", "ERROR_REASON_VERIFICATION_FAILED")
    assert await page.get_attribute("#sign-result", "data-signature") is None

    # The refusals cost nothing on the allowed origin.
    await open_page(page, allowed, "bob", "login-1")
    verified = await click_step(page, "#verify-session", "#session-result")
    assert verified.state == "ok", verified.text
    assert not (await status(client, ENV, "bob", "login-1")).session_mfa_pending


# --- approvals: the passkey signs the transfer and the words shown ------------------------

TO = "0x1234567890abcdef1234567890abcdef123456ab"
SHOWN = f"Send 1.5 ETH to {TO} on Base"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def one_byte_changed(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


@pytest.fixture
def typescript_client() -> Path:
    return compile_client()


class Exchanges:
    """The page's API calls as the browser made them, by path (the last of each)."""

    def __init__(self, page: Page) -> None:
        self._requests: dict[str, Request] = {}
        page.on("request", self._record)

    def _record(self, request: Request) -> None:
        self._requests[urlsplit(request.url).path] = request

    def sent(self, path: str) -> Any:
        return self._requests[path].post_data_json

    async def answer(self, path: str) -> Any:
        response = await self._requests[path].response()
        assert response is not None, path
        return await response.json()


PasskeyPublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def cose_public_key(cose_key: bytes) -> PasskeyPublicKey:
    """The key of a COSE_Key (RFC 9052) as Chromium's authenticator makes them: OKP
    Ed25519 (EdDSA), or EC2 P-256 (ES256)."""
    key = cbor2.loads(cose_key)
    if (key[1], key[3], key[-1]) == (1, -8, 6):
        return Ed25519PublicKey.from_public_bytes(key[-2])
    assert (key[1], key[3], key[-1]) == (2, -7, 1), key
    x, y = (int.from_bytes(key[label], "big") for label in (-2, -3))
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def verify_signature(public_key: PasskeyPublicKey, signature: bytes, data: bytes) -> None:
    """Raises ``InvalidSignature`` unless ``signature`` is the key's over ``data``."""
    if isinstance(public_key, Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def spki(key: PasskeyPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def passkey_key(client: Client, user: str) -> bytes:
    [device] = (
        await call(
            client.mfa_stub.ListDevices(pb.ListDevicesRequest(environment_id=ENV, user_id=user))
        )
    ).devices
    assert device.method == types.METHOD_PASSKEY
    return device.passkey_public_key


async def enrolled_in_page(client: Client, start_webapp: StartWebapp, page: Page, user: str) -> str:
    """A webapp allowed for passkeys, its page open for ``user`` in session login-1, a
    passkey enrolled there; returns the origin."""
    origin = await start_webapp()
    await configure_environment(client, ENV, origin)
    await open_page(page, origin, user, "login-1")
    enrolled = await click_step(page, "#enroll", "#enroll-result")
    assert enrolled.state == "ok", enrolled.text
    return origin


async def review(page: Page) -> str:
    """Review the form's transfer; the words the page then shows."""
    reviewed = await click_step(page, "#approval-start", "#approval-review")
    assert reviewed.state == "ok", reviewed.text
    shown = page.locator("#approval-text")
    assert await shown.is_visible()
    assert await page.is_enabled("#approve")
    return await shown.text_content() or ""


async def test_the_passkey_signs_the_words_shown_and_the_signer_signs_only_that_transfer(
    client: Client,
    start_webapp: StartWebapp,
    signer: Signer,
    page: Page,
    authenticator: Authenticator,
    typescript_client: Path,
) -> None:
    exchanges = Exchanges(page)
    origin = await enrolled_in_page(client, start_webapp, page, "carol")
    cose_key = await passkey_key(client, "carol")
    # The key ListDevices gives is the browser authenticator's own.
    [credential] = await authenticator.credentials()
    private_key = serialization.load_der_private_key(
        base64.b64decode(credential["privateKey"]), password=None
    )
    assert isinstance(private_key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    public_key = cose_public_key(cose_key)
    assert spki(private_key.public_key()) == spki(public_key)

    await page.fill("#amount", "1.5")
    await page.fill("#asset", "ETH")
    await page.fill("#to", TO)
    await page.select_option("#network", "Base")
    assert await review(page) == SHOWN
    started = await exchanges.answer("/api/approval/start")
    message = started["message"].encode()
    assert json.loads(message) == {"amount": "1.5", "asset": "ETH", "network": "Base", "to": TO}

    approved = await click_step(page, "#approve", "#approval-result")
    assert approved.state == "ok", approved.text
    assert approved.text.startswith(f'Signed. Your passkey approved "{SHOWN}"'), approved.text
    signature = await page.get_attribute("#approval-result", "data-signature")
    assert signature is not None
    signer.public_key.verify(bytes.fromhex(signature), message)  # raises if wrong
    assert not await page.locator("#approval-text").is_visible()  # one approval, spent

    # What the browser's authenticator returned, as the page sent it on.
    assertion = exchanges.sent("/api/approval/issue")["credential"]["response"]
    client_data_json = unb64url(assertion["clientDataJSON"])
    authenticator_data = unb64url(assertion["authenticatorData"])
    passkey_signature = unb64url(assertion["signature"])
    client_data = json.loads(client_data_json)
    assert (client_data["type"], client_data["origin"]) == ("webauthn.get", origin)
    signed_challenge = unb64url(client_data["challenge"])

    # The TypeScript client (node) recomputes the approval hash from the terms: the page's
    # words, SHA-256 of the transfer, the challenge's id and expiry, the user and session.
    expires_at = Timestamp()
    expires_at.FromJsonString(started["expires_at"])
    approval = types.Approval(
        actions=[types.ACTION_WAAS_SIGN],
        payload_digest=hashlib.sha256(message).digest(),
        display_text=SHOWN,
        single_use=True,
        session_id="login-1",
    )
    other_digest, other_text = types.Approval(), types.Approval()
    other_digest.CopyFrom(approval)
    other_digest.payload_digest = one_byte_changed(approval.payload_digest)
    other_text.CopyFrom(approval)
    other_text.display_text = SHOWN.replace("1.5", "1.6")  # one byte
    terms = {
        "environmentId": ENV,
        "userId": "carol",
        "challengeId": started["challenge_id"],
        "expiresAt": expires_at.seconds,
        "asDate": False,
    }
    recomputed, for_other_digest, for_other_text = (
        bytes.fromhex(answer["hash"])
        for answer in node_approval_hashes(
            [
                {**terms, "approval": json_format.MessageToDict(a)}
                for a in (approval, other_digest, other_text)
            ]
        )
    )
    assert signed_challenge == recomputed
    assert for_other_digest != signed_challenge and for_other_text != signed_challenge
    python_hash = approval_hash(
        environment_id=ENV,
        user_id="carol",
        challenge_id=started["challenge_id"],
        expires_at=expires_at,
        approval=approval,
    )
    assert python_hash == recomputed

    # The signature, with the COSE key from ListDevices and cryptography alone: over this
    # approval it verifies; over the approval of another digest or other words it does not.
    assert authenticator_data[32] & 0x01, "user present"

    def verify(challenge: bytes) -> None:
        data = client_data_json.replace(
            client_data["challenge"].encode(), b64url(challenge).encode()
        )
        verify_signature(
            public_key, passkey_signature, authenticator_data + hashlib.sha256(data).digest()
        )

    verify(recomputed)
    for other in (for_other_digest, for_other_text):
        with pytest.raises(InvalidSignature):
            verify(other)

    # The token carries that same assertion, and the signer's own check passes on it for
    # this transfer only, and not for other words.
    token = (await exchanges.answer("/api/approval/issue"))["token"]
    jwks = await client.action_tokens.jwks()
    claims = token_claims(token, jwks)
    assert unb64url(claims["passkey_evidence"]["client_data_json"]) == client_data_json
    assert claims["apv"] == b64url(recomputed)
    verified = check_token_approval(token, message, cose_key, jwks=jwks)
    assert verified.display_text == SHOWN
    with pytest.raises(ApprovalNotVerified, match="apv is not the approval"):
        check_token_approval(token, one_byte_changed(message), cose_key, jwks=jwks)
    claims["approval"]["display_text"] = other_text.display_text
    with pytest.raises(ApprovalNotVerified, match="apv is not the approval"):
        check_passkey_approval(claims, message, cose_key)


async def test_the_signer_refuses_another_transfer_than_the_one_approved(
    client: Client,
    start_webapp: StartWebapp,
    signer: Signer,
    page: Page,
    authenticator: Authenticator,
) -> None:
    """A front end that sends the signer another transfer after the approval (one byte
    of the amount): the offline check refuses it, and the page says so."""
    exchanges = Exchanges(page)
    await enrolled_in_page(client, start_webapp, page, "dave")

    async def tamper(route: Route) -> None:
        body = route.request.post_data_json
        assert isinstance(body, dict)
        body["message"] = body["message"].replace('"1.5"', '"9.5"')
        await route.continue_(post_data=json.dumps(body))

    # The backend writes the words from a transfer it accepts: no address, no approval.
    await page.fill("#to", "0x12…ab")
    bad = await click_step(page, "#approval-start", "#approval-review")
    assert (bad.state, bad.reason) == ("error", "INVALID_ARGUMENT"), bad.text
    assert not await page.is_enabled("#approve")

    await page.fill("#to", TO)
    await page.route("**/api/approval/sign", tamper)
    assert await review(page) == SHOWN
    refused = await click_step(page, "#approve", "#approval-result")
    assert (refused.state, refused.reason) == ("error", "APPROVAL_NOT_VERIFIED"), refused.text
    assert refused.text.startswith("APPROVAL_NOT_VERIFIED: Not signed."), refused.text
    assert await page.get_attribute("#approval-result", "data-signature") is None

    # The service was not asked: the single-use token still signs the approved transfer.
    message = (await exchanges.answer("/api/approval/start"))["message"].encode()
    token = (await exchanges.answer("/api/approval/issue"))["token"]
    signature = await signer.sign(
        "dave",
        message,
        token,
        session_id="login-1",
        passkey_public_key=await passkey_key(client, "dave"),
    )
    signer.public_key.verify(signature, message)
