"""Passkeys in a real browser: headless Chromium with a virtual authenticator drives the
user's screens (examples/webapp: passkey setup, session MFA, transfer approvals), which
call the real server over gRPC. The approval
tests hold what the browser signed to the approval hash recomputed by the TypeScript
client under node, and check its signature with the COSE key of ListDevices alone.

Needs Debian's ``chromium`` (``make system-deps`` installs it); without it these tests
fail, they are never skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
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
from webapp_pages import Webapps, outcome, session_id, sign_in, visible_screen, webapps

from browser import STEP_TIMEOUT_MS, Authenticator, check_screen
from examples.signer import (
    ApprovalNotVerified,
    check_passkey_approval,
    check_token_approval,
    token_claims,
)
from flows import call, status
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, approval_hash
from typescript_client import compile_client, node_approval_hashes

ENV = "env-browser"
pytestmark = pytest.mark.environments(ENV)


@pytest.fixture
async def apps(client: Client) -> AsyncIterator[Webapps]:
    async with webapps(client, ENV) as started:
        yield started


async def create_passkey(page: Page, origin: str, user: str) -> None:
    """Sign in as ``user`` (no factor yet) and start the passkey setup as the page offers
    it: "Set up a second step", "Create a passkey", then the button that runs
    ``navigator.credentials.create``."""
    await sign_in(page, origin, user, then="screen-home")
    await page.click("#setup-start")
    await visible_screen(page, "screen-choose")
    await page.click("#choose-passkey")
    await visible_screen(page, "screen-passkey")
    await page.click("#passkey-create")


async def save_codes(page: Page) -> None:
    await visible_screen(page, "screen-codes")
    assert await page.locator("#recovery-codes li").count() == 10
    await page.check("#codes-saved")
    await page.click("#codes-done")


async def passkey_error(page: Page, selector: str) -> str:
    error = page.locator(f"{selector}[data-reason]")
    await error.wait_for(timeout=STEP_TIMEOUT_MS)
    return await error.get_attribute("data-reason") or ""


async def test_passkey_onboarding_then_a_login_and_transfers_each_with_a_fresh_assertion(
    client: Client,
    apps: Webapps,
    page: Page,
    authenticator: Authenticator,
) -> None:
    origin = await apps.start()
    settings = await client.admin.get_settings(ENV)
    assert list(settings.passkey.allowed_origins) == [origin]
    assert settings.session_mfa_enabled and settings.totp_enabled
    assert list(settings.protected_actions) == [types.ACTION_WAAS_SIGN]

    await sign_in(page, origin, "alice", then="screen-home")
    await page.click("#setup-start")
    await page.click("#choose-passkey")
    await visible_screen(page, "screen-passkey")
    await check_screen(page, "webapp-passkey-setup")
    await page.fill("#passkey-name", "Alice's laptop")
    await page.click("#passkey-create")
    await save_codes(page)
    [credential] = await authenticator.credentials()
    assert credential["rpId"] == "localhost"
    assert credential["isResidentCredential"]
    first_session = await session_id(page)
    after_enroll = await status(client, ENV, "alice", first_session)
    assert list(after_enroll.enrolled_methods) == [types.METHOD_PASSKEY]
    assert not after_enroll.recovery_codes_pending_acknowledgement

    # Session MFA: the prompt offers the passkey first.
    await visible_screen(page, "screen-mfa-login")
    assert after_enroll.session_mfa_pending
    assert await page.get_attribute("#factor", "data-method") == "passkey"
    await check_screen(page, "webapp-mfa-prompt-passkey")
    await page.click("#factor-passkey")
    await visible_screen(page, "screen-home")
    assert not (await status(client, ENV, "alice", first_session)).session_mfa_pending
    assert (await status(client, ENV, "alice", "another-login")).session_mfa_pending

    # Each transfer takes a fresh assertion: the token is single use and per message.
    for amount in ("1", "2"):
        await page.fill("#amount", amount)
        await page.click("#approval-start")
        await visible_screen(page, "screen-approve")
        await page.click("#factor-passkey")
        signed = await outcome(page, "#sign-outcome")
        assert signed.state == "ok", signed.text
        signature = await page.get_attribute("#sign-outcome", "data-signature")
        assert signature is not None
        message = json.dumps(
            {"amount": amount, "asset": "ETH", "network": "Base", "to": TO},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        apps.signer.public_key.verify(bytes.fromhex(signature), message)  # raises if wrong
        await page.click("#result-home")


async def test_the_service_refuses_a_ceremony_from_another_origin(
    client: Client, apps: Webapps, page: Page, authenticator: Authenticator
) -> None:
    """The same page on an origin that is not allowed: the browser completes every
    ceremony (same RP id), and mfa-service refuses each on its origin."""
    allowed = await apps.start()
    other = await apps.start(configure=False)

    await create_passkey(page, other, "bob")
    assert await passkey_error(page, "#passkey-error") == "ERROR_REASON_VERIFICATION_FAILED"
    await check_screen(page, "webapp-passkey-refused")
    assert len(await authenticator.credentials()) == 1  # the browser did make a credential
    assert list((await status(client, ENV, "bob")).enrolled_methods) == []

    await create_passkey(page, allowed, "bob")
    await save_codes(page)
    await visible_screen(page, "screen-mfa-login")

    await sign_in(page, other, "bob", then="screen-mfa-login")
    await page.click("#factor-passkey")
    assert await passkey_error(page, "#factor-error") == "ERROR_REASON_VERIFICATION_FAILED"
    assert (await status(client, ENV, "bob", await session_id(page))).session_mfa_pending

    # The refusals cost nothing on the allowed origin.
    await sign_in(page, allowed, "bob", then="screen-mfa-login")
    await page.click("#factor-passkey")
    await visible_screen(page, "screen-home")
    assert not (await status(client, ENV, "bob", await session_id(page))).session_mfa_pending


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

    def paths(self) -> set[str]:
        return set(self._requests)

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


async def enrolled_in_page(apps: Webapps, page: Page, user: str) -> str:
    """A webapp allowed for passkeys, ``user`` signed in there with a passkey enrolled on
    the page and session MFA passed with it; returns the origin."""
    origin = await apps.start()
    await create_passkey(page, origin, user)
    await save_codes(page)
    await visible_screen(page, "screen-mfa-login")
    await page.click("#factor-passkey")
    await visible_screen(page, "screen-home")
    return origin


async def review(page: Page) -> str:
    """Review the form's transfer; the words the approval screen then shows."""
    await page.click("#approval-start")
    await visible_screen(page, "screen-approve")
    assert await page.get_attribute("#factor", "data-method") == "passkey"
    return await page.text_content("#approval-text") or ""


async def test_the_passkey_signs_the_words_shown_and_the_signer_signs_only_that_transfer(
    client: Client,
    apps: Webapps,
    page: Page,
    authenticator: Authenticator,
    typescript_client: Path,
) -> None:
    exchanges = Exchanges(page)
    origin = await enrolled_in_page(apps, page, "carol")
    login = await session_id(page)
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
    await check_screen(page, "webapp-approval-review-passkey")
    started = await exchanges.answer("/api/approval/start")
    message = started["message"].encode()
    assert json.loads(message) == {"amount": "1.5", "asset": "ETH", "network": "Base", "to": TO}
    assert started["display_text"] == SHOWN

    await page.click("#factor-passkey")
    approved = await outcome(page, "#sign-outcome")
    assert approved.state == "ok", approved.text
    assert approved.text.startswith(f'Signed. Your passkey approved "{SHOWN}"'), approved.text
    assert await page.get_attribute("#sign-outcome", "data-checked") == "passkey"
    await check_screen(page, "webapp-approval-result-passkey")
    signature = await page.get_attribute("#sign-outcome", "data-signature")
    assert signature is not None
    apps.signer.public_key.verify(bytes.fromhex(signature), message)  # raises if wrong
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
        session_id=login,
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
    apps: Webapps,
    page: Page,
    authenticator: Authenticator,
) -> None:
    """A front end that sends the signer another transfer after the approval (one byte
    of the amount): the offline check refuses it, and the page says so."""
    exchanges = Exchanges(page)
    await enrolled_in_page(apps, page, "dave")

    async def tamper(route: Route) -> None:
        body = route.request.post_data_json
        assert isinstance(body, dict)
        body["message"] = body["message"].replace('"1.5"', '"9.5"')
        await route.continue_(post_data=json.dumps(body))

    # The backend writes the words from a transfer it accepts: no address, no approval.
    await page.fill("#to", "0x12…ab")
    await page.click("#approval-start")
    await page.locator("#to[aria-invalid='true']").wait_for()
    assert not await page.is_visible("#screen-approve")
    assert "/api/approval/issue" not in exchanges.paths()

    await page.fill("#to", TO)
    await page.route("**/api/approval/sign", tamper)
    assert await review(page) == SHOWN
    await page.click("#factor-passkey")
    refused = await outcome(page, "#sign-outcome")
    assert (refused.state, refused.reason) == ("error", "APPROVAL_NOT_VERIFIED"), refused.text
    assert refused.text.startswith("Not signed. The wallet could not confirm"), refused.text
    assert await page.get_attribute("#sign-outcome", "data-signature") is None
    await check_screen(page, "webapp-approval-refused")

    # The service was not asked: the single-use token still signs the approved transfer.
    message = (await exchanges.answer("/api/approval/start"))["message"].encode()
    token = (await exchanges.answer("/api/approval/issue"))["token"]
    signature = await apps.signer.sign(
        "dave",
        message,
        token,
        session_id=await session_id(page),
        passkey_public_key=await passkey_key(client, "dave"),
    )
    apps.signer.public_key.verify(signature, message)
