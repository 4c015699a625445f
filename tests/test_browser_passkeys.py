"""Passkeys in a real browser: headless Chromium with a virtual authenticator drives the
example webapp (examples/webapp), which calls the real server over gRPC.

Needs Debian's ``chromium`` (``make system-deps`` installs it); without it these tests
fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import BrowserContext, CDPSession, Page, async_playwright

from examples.signer import Signer
from examples.webapp import RunningServer, configure_environment, create_app, serve
from flows import status
from mfa.v1 import types_pb2 as types
from mfa_client import Client

ENV = "env-browser"
pytestmark = pytest.mark.environments(ENV)
# MFA_TEST_CHROMIUM: another Chromium binary (e.g. on a machine without Debian's).
CHROMIUM = os.environ.get("MFA_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Known to work headless as root in containers. Playwright adds --headless and its
# --remote-debugging-pipe, and takes the (fresh) profile directory as an argument.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# With no usable authenticator, navigator.credentials.* neither resolves nor rejects
# until the ceremony's 5-minute timeout: every wait on the browser is bounded.
STEP_TIMEOUT_MS = 15_000

StartWebapp = Callable[[], Awaitable[str]]


async def cdp_send(cdp: CDPSession, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A DevTools command; unlike Playwright's page calls it has no timeout of its own."""
    result: dict[str, Any] = await asyncio.wait_for(
        cdp.send(method, params), STEP_TIMEOUT_MS / 1000
    )
    return result


@dataclass(frozen=True)
class Authenticator:
    """A CTAP2 platform authenticator with UV, inside the page (CDP WebAuthn domain)."""

    cdp: CDPSession
    authenticator_id: str

    async def credentials(self) -> list[dict[str, Any]]:
        result = await cdp_send(
            self.cdp, "WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id}
        )
        credentials: list[dict[str, Any]] = result["credentials"]
        return credentials


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


@pytest.fixture
def chromium() -> str:
    """The browser binary; missing is a failure, not a skip."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium not found ({CHROMIUM}): the browser tests need it. "
            "Install it with `make system-deps` (Debian: apt-get install chromium).",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",  # fresh and empty
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=30_000,
        )
        context.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def page(browser: BrowserContext) -> AsyncIterator[Page]:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert errors == [], f"uncaught errors on the page: {errors}"


@pytest.fixture
async def authenticator(page: Page) -> Authenticator:
    # WebAuthn.* goes to the page's session, and enable comes first.
    cdp = await page.context.new_cdp_session(page)
    await cdp_send(cdp, "WebAuthn.enable", {"enableUI": False})
    added = await cdp_send(
        cdp,
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "ctap2Version": "ctap2_1",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return Authenticator(cdp, added["authenticatorId"])


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
