"""Driving the user's screens (examples/webapp) in the browser tests: start the app on a
free port, sign in, wait for a screen, answer the factor prompt. The codes of an
authenticator app come from Debian's oathtool (``test_totp_flow.oathtool``) at the
service's fake clock."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import Page

from browser import STEP_TIMEOUT_MS
from examples.signer import Signer
from examples.webapp import RunningServer, configure_environment, create_app, serve, session
from mfa_client import Client


@dataclass(frozen=True)
class Outcome:
    """What an output element says once it has a ``data-state``."""

    state: str
    reason: str | None
    text: str


class Webapps:
    """Webapp instances on free ports, each answering at ``http://localhost:PORT``, all
    with the same wallet signer (``signer``, a new key)."""

    def __init__(self, client: Client, env: str) -> None:
        self._client, self._env = client, env
        self.signer = Signer(client, env, Ed25519PrivateKey.generate())
        self._servers: list[RunningServer] = []

    async def start(self, *, configure: bool = True) -> str:
        """A new instance; its origin (localhost, never 127.0.0.1: the RP id), allowed
        for passkeys and the environment configured as ``python -m examples.webapp``
        does unless ``configure`` is false."""
        server = await serve(create_app(self._client, self._env, self.signer), port=0)
        self._servers.append(server)
        origin = f"http://localhost:{server.port}"
        if configure:
            await configure_environment(self._client, self._env, origin)
        return origin

    async def close(self) -> None:
        for server in self._servers:
            await server.close()


@asynccontextmanager
async def webapps(client: Client, env: str) -> AsyncIterator[Webapps]:
    apps = Webapps(client, env)
    try:
        yield apps
    finally:
        await apps.close()


async def visible_screen(page: Page, screen: str) -> None:
    """Wait until ``#screen`` is the screen shown."""
    await page.locator(f"#{screen}:not([hidden])").wait_for(timeout=STEP_TIMEOUT_MS)


async def sign_in(page: Page, origin: str, user: str, then: str) -> None:
    """The demo sign-in as ``user``; ``then`` is the screen expected next."""
    await page.goto(f"{origin}/")
    await visible_screen(page, "screen-signin")
    await page.fill("#signin-user", user)
    await page.click("#signin")
    await visible_screen(page, then)


async def sign_out(page: Page) -> None:
    await page.click("#signout")
    await visible_screen(page, "screen-signin")


async def outcome(page: Page, selector: str) -> Outcome:
    """Wait for ``selector`` to get its ``data-state``; what it then says."""
    done = page.locator(f"{selector}[data-state]")
    await done.wait_for(timeout=STEP_TIMEOUT_MS)
    return Outcome(
        state=await done.get_attribute("data-state") or "",
        reason=await done.get_attribute("data-reason"),
        text=(await done.text_content() or "").strip(),
    )


async def factor_error(page: Page) -> tuple[str, str]:
    """The factor prompt's refusal: its reason (data-reason) and its words."""
    error = page.locator("#factor-error[data-reason]")
    await error.wait_for(timeout=STEP_TIMEOUT_MS)
    return await error.get_attribute("data-reason") or "", await error.text_content() or ""


async def enter_code(page: Page, code: str) -> None:
    """Answer the factor prompt with a code (of the app, or a recovery code)."""
    await page.fill("#factor-code", code)
    await page.click("#factor-submit")


def totp_secret(otpauth_uri: str) -> str:
    parts = urlsplit(otpauth_uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp"), otpauth_uri
    [secret] = parse_qs(parts.query)["secret"]
    return secret


async def session_id(page: Page) -> str:
    """The login session the page is signed in with, read from its demo session cookie
    (signed, not encrypted: its payload is base64url JSON)."""
    [cookie] = [c for c in await page.context.cookies() if c["name"] == session.COOKIE]
    payload = cookie["value"].split(".")[0]
    value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(value["s"])
