"""The two screens of issue 22 in one browser: what an operator toggles on the dashboard
(examples/dashboard) is what the user's screens (examples/webapp) then require, with
nothing but the service between them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from playwright.async_api import BrowserContext, Page
from test_dashboard import open_dashboard, save
from test_totp_flow import oathtool
from webapp_pages import enter_code, outcome, sign_in, sign_out, visible_screen, webapps

from examples.dashboard import create_app as dashboard_app
from examples.web import serve
from flows import enroll_totp_with_codes
from helpers import FakeClock
from mfa_client import Client

ENV = "env-together"
pytestmark = pytest.mark.environments(ENV)
SHOWN = "Send 1.5 ETH to 0x1234567890abcdef1234567890abcdef123456ab on Base"


@pytest.fixture
async def dashboard(client: Client) -> AsyncIterator[str]:
    server = await serve(dashboard_app(client), host="127.0.0.1", port=0)
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


@pytest.fixture
async def operator(browser: BrowserContext) -> AsyncIterator[Page]:
    """The operator's tab, beside the user's (``page``); a script error fails the test."""
    tab = await browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    assert errors == [], f"uncaught errors on the dashboard: {errors}"


async def toggle(operator: Page, *, session_mfa: bool, waas_sign: bool) -> None:
    """Set "Session-based MFA" and "WaaS Sign" on the dashboard and save."""
    await operator.set_checked("#session-mfa", session_mfa)
    await operator.set_checked("#action-ACTION_WAAS_SIGN", waas_sign)
    state, words = await save(operator)
    assert state == "ok", words


async def test_the_dashboards_toggles_decide_what_the_users_screens_require(
    client: Client, clock: FakeClock, dashboard: str, operator: Page, page: Page
) -> None:
    async with webapps(client, ENV) as apps:
        user_screens = await apps.start()  # session MFA on, WaaS Sign protected
        device, _codes = await enroll_totp_with_codes(client, clock, ENV, "tess")
        await open_dashboard(operator, dashboard, ENV)
        assert await operator.is_checked("#session-mfa")
        assert await operator.is_checked("#action-ACTION_WAAS_SIGN")

        # Both off: a sign-in goes straight home, a transfer asks for no factor.
        await toggle(operator, session_mfa=False, waas_sign=False)
        await sign_in(page, user_screens, "tess", then="screen-home")
        await page.click("#approval-start")
        signed = await outcome(page, "#sign-outcome")
        assert signed.state == "ok", signed
        assert await page.get_attribute("#sign-outcome", "data-checked") == "none"
        await sign_out(page)

        # Both on: the next sign-in asks for the second step, and a transfer must be
        # approved with the words shown.
        await toggle(operator, session_mfa=True, waas_sign=True)
        await sign_in(page, user_screens, "tess", then="screen-mfa-login")
        clock.advance(timedelta(seconds=30))
        await enter_code(page, await oathtool(device.secret, clock.now()))
        await visible_screen(page, "screen-home")
        await page.click("#approval-start")
        await visible_screen(page, "screen-approve")
        assert await page.text_content("#approval-text") == SHOWN
        clock.advance(timedelta(seconds=30))
        await enter_code(page, await oathtool(device.secret, clock.now()))
        approved = await outcome(page, "#sign-outcome")
        assert approved.state == "ok", approved
        assert approved.text == f'Signed. You approved "{SHOWN}" with a code.'
        await sign_out(page)

        # Session MFA off again, WaaS Sign still protected: home at once, approval still
        # asked.
        await toggle(operator, session_mfa=False, waas_sign=True)
        await sign_in(page, user_screens, "tess", then="screen-home")
        await page.click("#approval-start")
        await visible_screen(page, "screen-approve")
