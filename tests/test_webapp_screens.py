"""The user's MFA screens (examples/webapp) in real Chromium, against the real service.

Ids other tests rely on (the cross-app test toggles the dashboard's settings and checks
what these screens then ask for); keep them:
- sign-in: input ``#signin-user``, button ``#signin``; sign out: ``#signout``;
- after sign-in: ``#screen-mfa-login`` (a ``[data-screen]``) is shown when session MFA is
  pending, ``#screen-home`` when not (also for a user with no factor, unless the
  environment requires one at onboarding: then ``#screen-choose``);
- on home, the transfer form: ``#amount``, ``#asset``, ``#to``, ``#network`` and the
  button ``#approval-start`` ("Review");
- when ACTION_WAAS_SIGN is protected, ``#screen-approve`` shows the words in
  ``#approval-text``; when it is not, no factor is asked;
- the signer's final answer: ``#sign-outcome`` with ``data-state="ok"|"error"`` and
  ``data-reason`` (an ErrorReason or DecisionReason name, ``APPROVAL_NOT_VERIFIED``...).
- the factor prompt: ``#factor-code`` and ``#factor-submit``, ``#factor-passkey``,
  switches ``#use-totp``, ``#use-passkey``, ``#use-recovery``; its refusal
  ``#factor-error`` with ``data-reason``; a lockout ``#screen-locked``, ``#locked-text``
  with ``data-retry-after`` (seconds).

Every screen passes ``check_screen`` (axe-core, no sideways scroll, screenshots at 375
and 1280 px under .artifacts/screenshots/webapp-*.png).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Page
from test_totp_flow import oathtool
from webapp_pages import (
    Webapps,
    enter_code,
    factor_error,
    outcome,
    sign_in,
    sign_out,
    totp_secret,
    visible_screen,
    webapps,
)

from browser import Authenticator, check_screen, decode_qr
from examples.webapp.app import STATIC
from flows import TotpDevice, enroll_totp_with_codes, status
from helpers import FakeClock
from mfa.v1 import types_pb2 as types
from mfa_client import Client

ENV = "env-webapp"
pytestmark = pytest.mark.environments(ENV)
TO = "0x1234567890abcdef1234567890abcdef123456ab"


@pytest.fixture
async def apps(client: Client) -> AsyncIterator[Webapps]:
    async with webapps(client, ENV) as started:
        yield started


async def test_totp_onboarding_from_the_qr_code_then_a_login_with_the_app(
    client: Client, clock: FakeClock, apps: Webapps, page: Page, tmp_path: Path
) -> None:
    origin = await apps.start()
    assert (await client.admin.get_settings(ENV)).totp_enabled
    await page.goto(f"{origin}/")
    await visible_screen(page, "screen-signin")
    await check_screen(page, "webapp-signin")
    await page.fill("#signin-user", "tina")
    await page.click("#signin")
    await visible_screen(page, "screen-home")
    assert await page.is_visible("#setup-card")
    await check_screen(page, "webapp-home-no-factor")

    await page.click("#setup-start")
    await visible_screen(page, "screen-choose")
    await check_screen(page, "webapp-choose-factor")
    await page.click("#choose-totp")
    await visible_screen(page, "screen-totp")
    await page.locator("#totp-qr[src^='data:image/svg+xml']").wait_for()
    await check_screen(page, "webapp-totp-setup")

    # The QR code, read from the pixels: the otpauth:// URI of the enrollment.
    uri = await decode_qr(page.locator("#totp-qr"))
    assert uri.startswith("otpauth://totp/") and "tina" in uri
    secret = totp_secret(uri)
    shown = await page.text_content("#totp-secret") or ""
    assert shown.replace(" ", "") == secret
    assert all(len(group) == 4 for group in shown.split(" ")[:-1])

    # A wrong code: said beside the field, nothing enrolled.
    wrong = await oathtool(secret, clock.now() + timedelta(hours=1))
    assert wrong != await oathtool(secret, clock.now())
    await page.fill("#totp-code", wrong)
    await page.click("#totp-verify")
    await page.locator("#totp-code[aria-invalid='true']").wait_for()
    assert "not right" in (await page.text_content("#totp-code-error") or "")
    await check_screen(page, "webapp-totp-wrong-code")
    assert list((await status(client, ENV, "tina")).enrolled_methods) == []

    # The code oathtool computes from the QR code's secret completes the enrollment.
    clock.advance(timedelta(seconds=30))
    await page.fill("#totp-code", await oathtool(secret, clock.now()))
    await page.fill("#totp-name", "Tina's phone")
    await page.click("#totp-verify")
    await visible_screen(page, "screen-codes")
    codes = [c.strip() for c in await page.locator("#recovery-codes li").all_text_contents()]
    assert len(codes) == 10 and len(set(codes)) == 10
    await check_screen(page, "webapp-recovery-codes")
    assert list((await status(client, ENV, "tina")).enrolled_methods) == [types.METHOD_TOTP]
    assert (await status(client, ENV, "tina")).recovery_codes_pending_acknowledgement

    async with page.expect_download() as download_info:
        await page.click("#codes-download")
    download = await download_info.value
    assert download.suggested_filename == "recovery-codes.txt"
    saved = tmp_path / "codes.txt"
    await download.save_as(saved)
    assert saved.read_text().splitlines()[-10:] == codes

    # "I saved them" is a step of its own: not ticked, not acknowledged.
    await page.click("#codes-done")
    await page.locator("#codes-saved[aria-invalid='true']").wait_for()
    assert (await status(client, ENV, "tina")).recovery_codes_pending_acknowledgement
    await page.check("#codes-saved")
    await page.click("#codes-done")
    await visible_screen(page, "screen-mfa-login")
    assert not (await status(client, ENV, "tina")).recovery_codes_pending_acknowledgement
    assert await page.locator("#recovery-codes li").count() == 0  # shown once

    # The new factor guards this sign-in from now on, then every later one.
    assert await page.get_attribute("#factor", "data-method") == "totp"
    clock.advance(timedelta(seconds=30))
    await enter_code(page, await oathtool(secret, clock.now()))
    await visible_screen(page, "screen-home")
    await sign_out(page)

    await sign_in(page, origin, "tina", then="screen-mfa-login")
    await check_screen(page, "webapp-mfa-prompt")
    clock.advance(timedelta(seconds=30))
    await enter_code(page, await oathtool(secret, clock.now()))
    await visible_screen(page, "screen-home")
    assert await page.text_content("#who-name") == "tina"
    assert not await page.is_visible("#setup-card")
    await check_screen(page, "webapp-home")


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
LONG_HEX = re.compile(r"\b[0-9a-f]{64,}\b", re.IGNORECASE)


async def assert_plain_words(page: Page) -> None:
    """No device id, no hash or signature in hex, no gRPC status name, no JSON on the
    screen shown (``data-*`` attributes are for tests and stay)."""
    shown = await page.locator("body").inner_text()
    assert not UUID.search(shown), shown
    assert not LONG_HEX.search(shown), shown
    for word in ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "ERROR_REASON_", "DECISION_", "{"):
        assert word not in shown, shown


async def signed_in_with_app(
    client: Client, clock: FakeClock, page: Page, origin: str, user: str
) -> tuple[TotpDevice, list[str]]:
    """``user`` with an authenticator app (enrolled through the service), signed in on the
    page past session MFA; the device and its recovery codes."""
    device, codes = await enroll_totp_with_codes(client, clock, ENV, user)
    await sign_in(page, origin, user, then="screen-mfa-login")
    clock.advance(timedelta(seconds=30))
    await enter_code(page, await oathtool(device.secret, clock.now()))
    await visible_screen(page, "screen-home")
    return device, codes


async def wrong_code(secret: str, clock: FakeClock) -> str:
    """A code of another hour: not one the service accepts now (skew of one step)."""
    wrong = await oathtool(secret, clock.now() + timedelta(hours=1))
    near = [await oathtool(secret, clock.now() + timedelta(seconds=s)) for s in (-30, 0, 30)]
    assert wrong not in near
    return wrong


async def test_login_switches_to_a_recovery_code_and_a_lockout_says_when_to_retry(
    client: Client, clock: FakeClock, apps: Webapps, page: Page
) -> None:
    origin = await apps.start()
    device, codes = await enroll_totp_with_codes(client, clock, ENV, "rita")
    await sign_in(page, origin, "rita", then="screen-mfa-login")
    assert await page.get_attribute("#factor", "data-method") == "totp"
    assert not await page.is_visible("#use-passkey")  # she has no passkey

    await page.click("#use-recovery")
    assert await page.get_attribute("#factor", "data-method") == "recovery_code"
    assert await page.text_content("#factor-code-label") == "Recovery code"
    await check_screen(page, "webapp-recovery-entry")
    await enter_code(page, "AAAAA-BBBBB-CCCCC-DDDDD")
    reason, words = await factor_error(page)
    assert reason == "ERROR_REASON_VERIFICATION_FAILED"
    assert "recovery code is not right" in words
    await assert_plain_words(page)
    await check_screen(page, "webapp-recovery-wrong-code")
    await enter_code(page, codes[0])
    await visible_screen(page, "screen-home")
    assert (await status(client, ENV, "rita")).recovery_codes_remaining == 9
    await sign_out(page)

    # A new sign-in, five wrong codes of the app: locked out, and told for how long.
    await sign_in(page, origin, "rita", then="screen-mfa-login")
    wrong = await wrong_code(device.secret, clock)
    refusals = []
    for _ in range(6):
        await enter_code(page, wrong)
        await page.locator("#factor-error[data-reason], #screen-locked:not([hidden])").wait_for()
        if await page.is_visible("#screen-locked"):
            break
        refusals.append((await factor_error(page))[0])
        await page.locator("#factor-error").evaluate("e => e.removeAttribute('data-reason')")
    assert refusals == ["ERROR_REASON_VERIFICATION_FAILED"] * 5
    await visible_screen(page, "screen-locked")
    retry_after = int(await page.get_attribute("#locked-text", "data-retry-after") or "0")
    assert 15 * 60 <= retry_after <= 15 * 60 + 1
    assert await page.text_content("#locked-text") == "You can try again in 15 minutes."
    await check_screen(page, "webapp-lockout")
    await assert_plain_words(page)
    locked = await status(client, ENV, "rita")
    assert locked.locked_until.ToDatetime(tzinfo=UTC) == clock.now() + timedelta(minutes=15)

    # Still locked: "Try again" says until when; once it has passed, the app's code works.
    await page.click("#locked-retry")
    await page.locator("#locked-text:not([data-retry-after])").wait_for()
    assert (await page.text_content("#locked-text") or "").startswith("You can try again at ")
    clock.advance(timedelta(minutes=15, seconds=30))
    await page.click("#locked-retry")
    await visible_screen(page, "screen-mfa-login")
    await enter_code(page, await oathtool(device.secret, clock.now()))
    await visible_screen(page, "screen-home")


async def test_devices_renamed_made_default_added_and_removed_with_a_step_up(
    client: Client, clock: FakeClock, apps: Webapps, page: Page, authenticator: Authenticator
) -> None:
    origin = await apps.start()
    device, _codes = await signed_in_with_app(client, clock, page, origin, "dana")
    await page.click("#open-devices")
    await visible_screen(page, "screen-devices")
    assert await page.locator("#device-list li").count() == 1
    await check_screen(page, "webapp-devices")
    await assert_plain_words(page)

    # Adding a passkey next to the app: the step-up asks for the app's code, says why.
    await page.click("#add-factor")
    await visible_screen(page, "screen-choose")
    assert await page.text_content("#choose-title") == "Add a sign-in method"
    await check_screen(page, "webapp-add-factor")
    await page.click("#choose-passkey")
    await visible_screen(page, "screen-stepup")
    assert "add a passkey" in (await page.text_content("#stepup-why") or "")
    await check_screen(page, "webapp-step-up")
    clock.advance(timedelta(seconds=30))
    await enter_code(page, await oathtool(device.secret, clock.now()))
    await visible_screen(page, "screen-passkey")
    await page.fill("#passkey-name", "Laptop passkey")
    await page.click("#passkey-create")
    added = await outcome(page, "#devices-status")
    assert (added.state, added.text) == ("ok", "Laptop passkey is added.")
    assert len(await authenticator.credentials()) == 1

    async def devices() -> dict[str, types.Device]:
        return {
            d.alias: d for d in await client.mfa.list_devices(environment_id=ENV, user_id="dana")
        }

    assert set(await devices()) == {"Authenticator app", "Laptop passkey"}
    app_row = page.locator("#device-list li", has_text="Authenticator app")
    passkey_row = page.locator("#device-list li", has_text="Laptop passkey")
    assert await app_row.get_attribute("data-default") == "true"
    assert await passkey_row.get_attribute("data-kind") == "passkey"

    # Rename the app, make the passkey the default: no step-up for either.
    await app_row.get_by_role("button", name="Rename Authenticator app").click()
    assert await page.evaluate("document.activeElement.id") == "rename-name"
    await check_screen(page, "webapp-device-rename")
    await page.fill("#rename-name", "Work phone")
    await page.click("#rename-save")
    await page.locator("#devices-status", has_text='Renamed to "Work phone".').wait_for()
    await passkey_row.get_by_role("button", name="Make default Laptop passkey").click()
    await page.locator("#devices-status", has_text="is now your default").wait_for()
    now = await devices()
    assert set(now) == {"Work phone", "Laptop passkey"}
    assert now["Laptop passkey"].is_default and not now["Work phone"].is_default

    # Remove the app: the step-up asks for the default first, the passkey.
    await (
        page.locator("#device-list li", has_text="Work phone")
        .get_by_role("button", name="Remove Work phone")
        .click()
    )
    await visible_screen(page, "screen-stepup")
    assert await page.get_attribute("#factor", "data-method") == "passkey"
    assert 'remove "Work phone"' in (await page.text_content("#stepup-why") or "")
    await page.click("#factor-passkey")
    await page.locator("#devices-status", has_text='"Work phone" is removed.').wait_for()
    assert set(await devices()) == {"Laptop passkey"}
    assert await page.locator("#device-list li").count() == 1
    await assert_plain_words(page)

    # New recovery codes, with a step-up: ten, to save again; the old ones stop working.
    await page.click("#regenerate-codes")
    await visible_screen(page, "screen-stepup")
    await page.click("#factor-passkey")
    await visible_screen(page, "screen-codes")
    new_codes = [c.strip() for c in await page.locator("#recovery-codes li").all_text_contents()]
    assert len(new_codes) == 10 and not set(new_codes) & set(_codes)
    assert (await status(client, ENV, "dana")).recovery_codes_pending_acknowledgement
    await page.check("#codes-saved")
    await page.click("#codes-done")
    await page.locator("#devices-status", has_text="new recovery codes are saved").wait_for()
    assert not (await status(client, ENV, "dana")).recovery_codes_pending_acknowledgement


async def test_a_code_of_the_app_approves_a_transfer_and_the_signer_signs_it(
    client: Client, clock: FakeClock, apps: Webapps, page: Page
) -> None:
    origin = await apps.start()
    device, _codes = await signed_in_with_app(client, clock, page, origin, "omar")

    # The backend checks the form: a bad address is said beside its field.
    await page.fill("#to", "0x12…ab")
    await page.click("#approval-start")
    await page.locator("#to[aria-invalid='true']").wait_for()
    assert "address" in (await page.text_content("#to-error") or "")
    await check_screen(page, "webapp-transfer-invalid")
    await page.fill("#to", TO)
    await page.fill("#amount", "1.5")
    await page.click("#approval-start")
    await visible_screen(page, "screen-approve")
    shown = f"Send 1.5 ETH to {TO} on Base"
    assert await page.text_content("#approval-text") == shown
    assert await page.get_attribute("#factor", "data-method") == "totp"
    await check_screen(page, "webapp-approval-review")

    await enter_code(page, await wrong_code(device.secret, clock))
    assert (await factor_error(page))[0] == "ERROR_REASON_VERIFICATION_FAILED"
    clock.advance(timedelta(seconds=30))
    await enter_code(page, await oathtool(device.secret, clock.now()))
    signed = await outcome(page, "#sign-outcome")
    assert signed.state == "ok", signed
    assert signed.text == f'Signed. You approved "{shown}" with a code.'
    await visible_screen(page, "screen-result")
    await check_screen(page, "webapp-approval-result")
    await assert_plain_words(page)
    signature = await page.get_attribute("#sign-outcome", "data-signature")
    assert signature is not None
    message = json.dumps(
        {"amount": "1.5", "asset": "ETH", "network": "Base", "to": TO},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    apps.signer.public_key.verify(bytes.fromhex(signature), message)  # raises if wrong


async def test_an_unprotected_transfer_asks_no_factor_and_the_signer_still_decides(
    client: Client, clock: FakeClock, apps: Webapps, page: Page
) -> None:
    origin = await apps.start()
    await client.admin.update_settings(types.Settings(environment_id=ENV), ["protected_actions"])
    await signed_in_with_app(client, clock, page, origin, "uma")
    assert "does not ask for a second step" in (await page.text_content("#sign-mode") or "")

    await page.click("#approval-start")
    signed = await outcome(page, "#sign-outcome")
    assert signed.state == "ok", signed
    assert signed.text.startswith(f'Signed: "Send 1.5 ETH to {TO} on Base". This app does not ask')
    assert await page.get_attribute("#sign-outcome", "data-checked") == "none"
    await check_screen(page, "webapp-approval-unprotected")

    # Protected again (the dashboard): a sign request without a token is refused by the
    # signer's ValidateActionToken, whatever the page believed; the page now asks.
    await client.admin.update_settings(
        types.Settings(environment_id=ENV, protected_actions=[types.ACTION_WAAS_SIGN]),
        ["protected_actions"],
    )
    refused = await page.evaluate(
        """async () => {
             const { api } = await import("/shared/common.js");
             try {
               await api.post("/api/approval/sign", {message: "{}", token: ""});
               return "signed";
             }
             catch (error) { return `${error.httpStatus} ${error.reason}`; }
           }"""
    )
    assert refused == "403 DECISION_REASON_MFA_REQUIRED"
    await page.click("#result-home")
    await page.click("#approval-start")
    await visible_screen(page, "screen-approve")


async def test_a_cross_site_post_is_refused_and_the_page_runs_under_a_strict_csp(
    client: Client, clock: FakeClock, apps: Webapps, page: Page
) -> None:
    origin = await apps.start()
    await signed_in_with_app(client, clock, page, origin, "carl")
    [device] = await client.mfa.list_devices(environment_id=ENV, user_id="carl")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session_cookie = cookies["demo_session"]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"
    csrf = cookies["csrf"]["value"]
    rename = {"device": device.device_id, "name": "Stolen"}

    async def post(headers: dict[str, str]) -> tuple[int, str]:
        response = await page.request.post(
            f"{origin}/api/devices/rename",
            data=json.dumps(rename),
            headers={"Content-Type": "application/json", **headers},
        )
        return response.status, (await response.json())["error"][
            "reason"
        ] if not response.ok else ""

    assert await post({"Origin": origin}) == (403, "CSRF")  # no X-CSRF-Token
    assert await post({"Origin": "https://evil.example", "X-CSRF-Token": csrf}) == (403, "CSRF")
    assert await post({"Origin": origin, "X-CSRF-Token": "another"}) == (403, "CSRF")
    [unchanged] = await client.mfa.list_devices(environment_id=ENV, user_id="carl")
    assert unchanged.alias == "Authenticator app"
    # The same request from the page's own origin with the header: it was only the CSRF.
    assert await post({"Origin": origin, "X-CSRF-Token": csrf}) == (200, "")
    [renamed] = await client.mfa.list_devices(environment_id=ENV, user_id="carl")
    assert renamed.alias == "Stolen"

    index = await page.request.get(f"{origin}/")
    policy = index.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert index.headers["cache-control"] == "no-store"
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script
    assert not re.search(r"\s(on[a-z]+|style)=", html)  # no handler or style attribute
    assert "<style" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no CDN


async def test_the_user_and_session_come_from_the_signed_cookie_only(
    client: Client, clock: FakeClock, apps: Webapps, page: Page
) -> None:
    origin = await apps.start()
    await page.goto(f"{origin}/")
    await visible_screen(page, "screen-signin")
    csrf = {c["name"]: c["value"] for c in await page.context.cookies()}["csrf"]
    headers = {"Content-Type": "application/json", "Origin": origin, "X-CSRF-Token": csrf}
    [victim] = (await enroll_totp_with_codes(client, clock, ENV, "vic"))[:1]

    # Not signed in: a body naming a user is not a sign-in.
    response = await page.request.post(
        f"{origin}/api/devices/rename",
        data=json.dumps({"user_id": "vic", "device": victim.device_id, "name": "x"}),
        headers=headers,
    )
    assert response.status == 401 and (await response.json())["error"]["reason"] == "SIGNED_OUT"

    # Signed in as mallory, still pending session MFA: her factors are out of reach too.
    await signed_in_with_app(client, clock, page, origin, "mallory")
    await sign_out(page)
    assert "demo_session" not in {c["name"] for c in await page.context.cookies()}
    await sign_in(page, origin, "mallory", then="screen-mfa-login")
    response = await page.request.get(f"{origin}/api/devices")
    assert response.status == 403
    assert (await response.json())["error"]["reason"] == "SESSION_MFA_PENDING"

    # A cookie changed by one character signs in nobody.
    [cookie] = [c for c in await page.context.cookies() if c["name"] == "demo_session"]
    value = cookie["value"]
    forged = value[:-1] + ("A" if value[-1] != "A" else "B")
    await page.context.add_cookies(
        [
            {
                "name": cookie["name"],
                "value": forged,
                "domain": cookie["domain"],
                "path": cookie["path"],
                "httpOnly": True,
                "sameSite": "Strict",
            }
        ]
    )
    assert (await (await page.request.get(f"{origin}/api/me")).json()) == {"signed_in": False}
    await page.reload()
    await visible_screen(page, "screen-signin")
    assert [d.alias for d in await client.mfa.list_devices(environment_id=ENV, user_id="vic")] == [
        "Authenticator app"
    ]


async def focused(page: Page) -> str:
    return str(await page.evaluate("document.activeElement.id"))


async def test_sign_in_and_the_second_step_with_the_keyboard_only(
    client: Client, clock: FakeClock, apps: Webapps, page: Page
) -> None:
    """Tab, type, Enter: the focus goes to each new screen's heading, then to its field;
    a wrong code puts it back on the field, with the error said beside it."""
    origin = await apps.start()
    device, _codes = await enroll_totp_with_codes(client, clock, ENV, "kim")
    await page.goto(f"{origin}/")
    await visible_screen(page, "screen-signin")
    assert await focused(page) == "signin-title"
    await page.keyboard.press("Tab")
    assert await focused(page) == "signin-user"
    await page.keyboard.type("kim")
    await page.keyboard.press("Enter")
    await visible_screen(page, "screen-mfa-login")
    assert await focused(page) == "mfa-login-title"  # announced by a screen reader
    await page.keyboard.press("Tab")
    assert await focused(page) == "factor-code"
    await page.keyboard.type(await wrong_code(device.secret, clock))
    await page.keyboard.press("Enter")
    assert (await factor_error(page))[0] == "ERROR_REASON_VERIFICATION_FAILED"
    assert await focused(page) == "factor-code"
    assert await page.get_attribute("#factor-error", "role") == "alert"
    await check_screen(page, "webapp-mfa-wrong-code")
    clock.advance(timedelta(seconds=30))
    await page.keyboard.type(await oathtool(device.secret, clock.now()))
    await page.keyboard.press("Enter")
    await visible_screen(page, "screen-home")
    assert await focused(page) == "home-title"
    order = []
    for _ in range(5):
        await page.keyboard.press("Tab")
        order.append(await focused(page))
    assert order == ["amount", "asset", "to", "network", "approval-start"]
