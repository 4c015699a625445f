"""Real Chromium for the browser tests: the fixtures (``chromium``, ``browser``, ``page``,
``authenticator``, loaded by conftest as a plugin) and what every screen test needs:
an accessibility check with axe-core, screenshots at a phone's and a desktop's width,
and a QR decoder that reads the page's pixels, not its data.

Needs Debian's ``chromium`` (``make system-deps`` installs it) and ``axe-core`` from the
Node lock (``make node-deps``); without them these tests fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from playwright.async_api import BrowserContext, CDPSession, Locator, Page, async_playwright

ROOT = Path(__file__).resolve().parent.parent
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
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
# Where the screenshots of every screen go (CI keeps this directory as an artifact).
SCREENSHOTS = Path(os.environ.get("MFA_SCREENSHOTS_DIR") or ROOT / ".artifacts" / "screenshots")
WIDTHS = {"phone": (375, 812), "desktop": (1280, 800)}


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


async def add_authenticator(page: Page) -> Authenticator:
    """A virtual passkey authenticator for ``page`` (user verification always passes)."""
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
    """The browser's page; an uncaught script error or a CSP violation fails the test."""
    page = browser.pages[0] if browser.pages else await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield page
    assert errors == [], f"uncaught errors on the page: {errors}"


@pytest.fixture
async def authenticator(page: Page) -> Authenticator:
    return await add_authenticator(page)


# --- what every screen is held to -----------------------------------------------------


async def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations of WCAG 2.x A/AA on the page as it is,
    one line each (rule, impact, the elements' selectors); ``[]`` when there are none."""
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: run `make node-deps`", pytrace=False)
    if not await page.evaluate("typeof window.axe === 'object'"):
        # Evaluated, not added as a <script>: a page's CSP must not have to allow it.
        await page.evaluate(AXE.read_text())
    result: dict[str, Any] = await page.evaluate(
        """() => axe.run(document, {
             runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
             resultTypes: ["violations"],
           })"""
    )
    return [
        f"{violation['id']} ({violation['impact']}): "
        + ", ".join(str(node["target"]) for node in violation["nodes"])
        for violation in result["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


async def check_screen(page: Page, name: str) -> None:
    """The screen as it is now, at a phone's width and at a desktop's: no serious or
    critical axe violation at either, nothing wider than the viewport, and a full-page
    screenshot of each at ``SCREENSHOTS/<name>-375.png`` and ``-1280.png``."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"screen name {name!r}: lowercase letters, digits and dashes")
    await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
    before = page.viewport_size
    try:
        for width, height in WIDTHS.values():
            await page.set_viewport_size({"width": width, "height": height})
            violations = await serious_violations(page)
            assert violations == [], f"{name} at {width} px: {violations}"
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{name} at {width} px scrolls sideways by {overflow} px"
            await page.screenshot(path=SCREENSHOTS / f"{name}-{width}.png", full_page=True)
    finally:
        if before is not None:
            await page.set_viewport_size(before)


async def decode_qr(element: Locator) -> str:
    """The text of the one QR code in ``element``, read from a screenshot of its pixels."""
    png = await element.screenshot()
    [found] = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert found.format == zxingcpp.BarcodeFormat.QRCode, found.format
    return str(found.text)
