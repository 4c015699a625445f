"""The dashboard's Settings > Security page (examples/dashboard) in real Chromium, over
the real server: what the operator toggles is what mfa-service then enforces.

Ids the cross-app test relies on (keep them): the environment picker ``#environment``
(a select); checkboxes ``#totp-enabled``, ``#passkey-enabled``, ``#require-at-onboarding``,
``#session-mfa`` ("Session-based MFA"), ``#action-ACTION_WAAS_EXPORT``,
``#action-ACTION_WAAS_REFRESH``, ``#action-ACTION_WAAS_SIGN`` ("WaaS Sign"),
``#action-ACTION_WAAS_RESHARE``; the origins ``#allowed-origins`` and its error
``#allowed-origins-error``; ``#save`` and ``#save-status`` (``data-state`` "ok" or
"error" once a save finished); the audit table ``#audit-table``; the user lookup
``#lookup-user`` + ``#lookup``; the reset reason ``#reset-reason``, ``#reset``, then
``#reset-confirm``.

Needs Debian's ``chromium`` and axe-core (``make system-deps``, ``make node-deps``);
without them these tests fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, expect

from browser import check_screen
from examples.dashboard import create_app
from examples.web import CONTENT_SECURITY_POLICY, CSRF_COOKIE, CSRF_HEADER, serve
from flows import enroll_totp
from helpers import FakeClock
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service.app import Application

ROOT = Path(__file__).resolve().parent.parent
ENV = "env-dashboard"
OTHER = "env-dashboard-other"
pytestmark = pytest.mark.environments(ENV, OTHER)
# GetStatus lists the credential actions too: they are always protected.
WAAS_ACTIONS = {
    types.ACTION_WAAS_EXPORT,
    types.ACTION_WAAS_REFRESH,
    types.ACTION_WAAS_SIGN,
    types.ACTION_WAAS_RESHARE,
}


@pytest.fixture
async def dashboard(client: Client) -> AsyncIterator[str]:
    """The dashboard on a free port of 127.0.0.1; its origin."""
    server = await serve(create_app(client), host="127.0.0.1", port=0)
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def open_dashboard(page: Page, origin: str, env: str = ENV, screen: str = "") -> None:
    await page.goto(f"{origin}/?env={env}" + (f"#{screen}" if screen else ""))
    await page.locator("body[data-ready]").wait_for()


# What the operator must never read: enum constants and gRPC status names.
CONSTANTS = re.compile(
    r"\b(?:ACTION|METHOD|AUDIT_EVENT_TYPE|ERROR_REASON|DECISION|USER_VERIFICATION|ATTESTATION)_"
    r"|\b(?:INVALID_ARGUMENT|NOT_FOUND|PERMISSION_DENIED|FAILED_PRECONDITION|UNAVAILABLE)\b"
)


async def check_dashboard_screen(page: Page, name: str) -> None:
    """``check_screen`` (axe, no sideways scroll, screenshots), and plain words: no
    constant of the API in the text the page shows."""
    await check_screen(page, name)
    shown = await page.evaluate("document.body.innerText")
    assert CONSTANTS.findall(shown) == [], f"{name} shows API constants"


async def tab_to(page: Page, target: str, limit: int = 60) -> list[str]:
    """Press Tab until the element with id ``target`` has the focus; the ids (or tag
    names) focused on the way, in order."""
    path = []
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            "document.activeElement.id || document.activeElement.tagName.toLowerCase()"
        )
        path.append(focused)
        if focused == target:
            return path
    raise AssertionError(f"#{target} not reached with Tab: {path}")


async def save(page: Page) -> tuple[str, str]:
    """Click Save; the status's data-state ("ok" or "error") and its words."""
    await page.click("#save")
    status = page.locator("#save-status[data-state]")
    await status.wait_for()
    return await status.get_attribute("data-state") or "", await status.inner_text()


# The ids of the module docstring, and what each must be.
CONTRACT = {
    "environment": "select",
    "session-mfa": "input[type=checkbox]",
    "action-ACTION_WAAS_EXPORT": "input[type=checkbox]",
    "action-ACTION_WAAS_REFRESH": "input[type=checkbox]",
    "action-ACTION_WAAS_SIGN": "input[type=checkbox]",
    "action-ACTION_WAAS_RESHARE": "input[type=checkbox]",
    "totp-enabled": "input[type=checkbox]",
    "passkey-enabled": "input[type=checkbox]",
    "require-at-onboarding": "input[type=checkbox]",
    "allowed-origins": "textarea",
    "allowed-origins-error": "p",
    "save": "button",
    "save-status": "p",
    "audit-table": "table",
    "lookup-user": "input",
    "lookup": "button",
    "reset-reason": "input",
    "reset": "button",
    "reset-confirm": "button",
}


async def test_the_ids_other_tests_rely_on_are_there(dashboard: str, page: Page) -> None:
    await open_dashboard(page, dashboard)
    missing = [
        f"{element}#{id_}"
        for id_, element in CONTRACT.items()
        if await page.locator(f"{element}#{id_}").count() != 1
    ]
    assert missing == []
    labels = {
        id_: await page.inner_text(f"label[for={id_}]")
        for id_ in CONTRACT
        if id_.startswith(("action-", "session-", "totp-", "passkey-", "require-"))
    }
    assert labels == {
        "session-mfa": "Session-based MFA",
        "action-ACTION_WAAS_EXPORT": "Waas Export",
        "action-ACTION_WAAS_REFRESH": "Waas Refresh",
        "action-ACTION_WAAS_SIGN": "WaaS Sign",
        "action-ACTION_WAAS_RESHARE": "WaaS Reshare",
        "totp-enabled": "TOTP",
        "passkey-enabled": "Passkeys",
        "require-at-onboarding": "Require at onboarding",
    }


async def test_toggles_change_what_the_service_enforces_and_only_the_fields_touched(
    client: Client, clock: FakeClock, dashboard: str, page: Page
) -> None:
    await enroll_totp(client, clock, ENV, "alice")
    before = await client.mfa.get_status(environment_id=ENV, user_id="alice", session_id="s1")
    assert not before.session_mfa_pending
    assert WAAS_ACTIONS.intersection(before.protected_actions) == set()

    await open_dashboard(page, dashboard)
    await check_dashboard_screen(page, "dashboard-settings")
    assert await page.is_checked("#totp-enabled")
    assert not await page.is_checked("#session-mfa")

    # Meanwhile another operator changes another field through the API.
    await client.admin.update_settings(
        types.Settings(
            environment_id=ENV,
            totp=types.TotpSettings(issuer="Acme"),
            protected_actions=[types.ACTION_WAAS_EXPORT],
        ),
        ["totp.issuer", "protected_actions"],
    )
    await page.check("#session-mfa")
    await page.check("#action-ACTION_WAAS_SIGN")
    state, words = await save(page)
    assert state == "ok", words
    assert "Someone else changed other settings" in words

    settings = await client.admin.get_settings(ENV)
    assert settings.session_mfa_enabled
    assert list(settings.protected_actions) == [types.ACTION_WAAS_EXPORT, types.ACTION_WAAS_SIGN]
    assert settings.totp.issuer == "Acme"  # not overwritten by the page's stale "MFA"
    assert await page.input_value("#totp-issuer") == "Acme"  # the page shows theirs now
    after = await client.mfa.get_status(environment_id=ENV, user_id="alice", session_id="s1")
    assert after.session_mfa_pending
    assert WAAS_ACTIONS.intersection(after.protected_actions) == {
        types.ACTION_WAAS_EXPORT,
        types.ACTION_WAAS_SIGN,
    }
    # The audit log names exactly the fields the save changed.
    [event], _ = await client.admin.list_audit_events(
        ENV, types=[admin_pb.AUDIT_EVENT_TYPE_SETTINGS_CHANGED], page_size=1
    )
    assert set(event.details["fields"].split(",")) == {"session_mfa_enabled", "protected_actions"}

    await page.uncheck("#session-mfa")
    await page.uncheck("#action-ACTION_WAAS_SIGN")
    state, _ = await save(page)
    assert state == "ok"
    settings = await client.admin.get_settings(ENV)
    assert not settings.session_mfa_enabled
    assert list(settings.protected_actions) == [types.ACTION_WAAS_EXPORT]
    restored = await client.mfa.get_status(environment_id=ENV, user_id="alice", session_id="s1")
    assert not restored.session_mfa_pending
    assert WAAS_ACTIONS.intersection(restored.protected_actions) == {types.ACTION_WAAS_EXPORT}


async def test_an_invalid_origin_is_shown_beside_the_origins_and_nothing_is_saved(
    client: Client, dashboard: str, page: Page
) -> None:
    before = await client.admin.get_settings(ENV)
    await open_dashboard(page, dashboard)
    await page.fill("#rp-id", "example.com")
    await page.fill("#allowed-origins", "https://app.example.com\nhttp://example.com/path")
    await page.check("#session-mfa")
    state, words = await save(page)
    assert state == "error"
    assert await page.get_attribute("#save-status", "data-reason") == (
        "ERROR_REASON_INVALID_ARGUMENT"
    )
    assert "Nothing was changed" in words
    error = await page.inner_text("#allowed-origins-error")
    assert error.startswith("http://example.com/path: ")
    assert "scheme://host" in error
    assert await page.get_attribute("#allowed-origins", "aria-invalid") == "true"
    described = await page.get_attribute("#allowed-origins", "aria-describedby") or ""
    assert "allowed-origins-error" in described.split()
    assert await page.evaluate("document.activeElement.id") == "allowed-origins"
    assert await page.get_attribute("#rp-id", "aria-invalid") is None
    await check_dashboard_screen(page, "dashboard-settings-field-error")
    after = await client.admin.get_settings(ENV)
    assert after == before

    # ftp is refused the same way; a fixed list saves, and the error goes.
    await page.fill("#allowed-origins", "ftp://x")
    assert (await save(page))[0] == "error"
    assert "ftp://x: " in await page.inner_text("#allowed-origins-error")
    assert await client.admin.get_settings(ENV) == before
    await page.fill("#allowed-origins", "https://app.example.com")
    assert (await save(page))[0] == "ok"
    assert await page.inner_text("#allowed-origins-error") == ""
    assert await page.get_attribute("#allowed-origins", "aria-invalid") is None
    saved = await client.admin.get_settings(ENV)
    assert list(saved.passkey.allowed_origins) == ["https://app.example.com"]
    assert saved.passkey.rp_id == "example.com"
    assert saved.session_mfa_enabled


async def test_advanced_fields_and_a_policy_save_and_name_their_errors(
    client: Client, dashboard: str, page: Page
) -> None:
    await open_dashboard(page, dashboard)
    assert not await page.locator("#advanced").evaluate("d => d.open")
    await page.click("#advanced > summary")
    await page.fill("#lockout-max-failed-attempts", "7")
    await page.fill("#lockout-duration", "30")  # under a minute: refused
    state, _ = await save(page)
    assert state == "error"
    assert "between 1m and 24h" in await page.inner_text("#lockout-duration-error")
    assert await page.evaluate("document.activeElement.id") == "lockout-duration"
    assert (await client.admin.get_settings(ENV)).lockout.max_failed_attempts == 5
    await page.fill("#lockout-duration", "600")
    await page.click("#policies > summary")
    await page.check("#policy-ACTION_WAAS_SIGN-approval")
    await page.fill("#policy-ACTION_WAAS_SIGN-ttl", "60")
    await check_dashboard_screen(page, "dashboard-settings-advanced")
    # Meanwhile another operator gives Waas Refresh a policy through the API.
    refresh = types.ActionPolicy(action=types.ACTION_WAAS_REFRESH, require_approval=True)
    await client.admin.update_settings(
        types.Settings(environment_id=ENV, action_policies=[refresh]), ["action_policies"]
    )
    assert (await save(page))[0] == "ok"
    settings = await client.admin.get_settings(ENV)
    assert settings.lockout.max_failed_attempts == 7
    assert settings.lockout.lockout_duration.seconds == 600
    kept, policy = settings.action_policies  # theirs stays; the page's is added
    assert kept == refresh
    assert policy.action == types.ACTION_WAAS_SIGN
    assert policy.require_approval
    assert policy.max_token_ttl.seconds == 60
    assert await page.is_checked("#policy-ACTION_WAAS_REFRESH-approval")

    # A policy error lands in that action's policy, in plain words.
    await page.check("#policy-ACTION_WAAS_EXPORT-METHOD_PASSKEY")
    assert (await save(page))[0] == "error"
    error = await page.inner_text("#policy-ACTION_WAAS_EXPORT-methods-error")
    assert "“Relying party ID”" in error
    assert "METHOD_" not in error and "passkey.rp_id" not in error
    assert await page.get_attribute("#policy-ACTION_WAAS_EXPORT-METHOD_TOTP", "aria-invalid") == (
        "true"
    )
    assert list((await client.admin.get_settings(ENV)).action_policies) == [kept, policy]

    # Emptied, a policy is removed: the action follows the settings above again.
    await page.uncheck("#policy-ACTION_WAAS_EXPORT-METHOD_PASSKEY")
    await page.uncheck("#policy-ACTION_WAAS_SIGN-approval")
    await page.fill("#policy-ACTION_WAAS_SIGN-ttl", "")
    assert (await save(page))[0] == "ok"
    assert list((await client.admin.get_settings(ENV)).action_policies) == [kept]


async def test_the_environment_picker_lists_and_switches_environments(
    client: Client, dashboard: str, page: Page
) -> None:
    await client.admin.update_settings(
        types.Settings(environment_id=OTHER, session_mfa_enabled=True), ["session_mfa_enabled"]
    )
    await open_dashboard(page, dashboard)
    options = await page.locator("#environment option").all_inner_texts()
    assert options == [ENV, OTHER]
    assert not await page.is_checked("#session-mfa")
    await page.select_option("#environment", OTHER)
    await page.locator("#environment-status", has_text=OTHER).wait_for()
    assert await page.is_checked("#session-mfa")
    assert f"env={OTHER}" in page.url

    # A new environment, created from the picker, starts with the defaults.
    await page.click("#environment-new")
    await page.fill("#new-environment-id", "env-dashboard-new")
    await page.click("#environment-create")
    await page.locator("#environment-status", has_text="env-dashboard-new").wait_for()
    assert await page.input_value("#environment") == "env-dashboard-new"
    assert not await page.is_checked("#session-mfa")
    created = await client.admin.get_settings("env-dashboard-new")
    assert created.revision == 1
    await page.click("#environment-new")
    await page.fill("#new-environment-id", ENV)
    await page.click("#environment-create")
    await page.locator("#new-environment-id[aria-invalid=true]").wait_for()
    assert "exists already" in await page.inner_text("#new-environment-id-error")


async def test_the_picker_pages_through_many_environments(
    client: Client, dashboard: str, page: Page
) -> None:
    for i in range(100):
        await client.admin.create_environment(f"env-page-{i:03}")
    await open_dashboard(page, dashboard)
    options = page.locator("#environment option")
    assert await options.count() == 100  # the first page of ListEnvironments
    await page.click("#environments-more")
    await page.locator("#environments-more[hidden]").wait_for(state="attached")
    assert await options.count() == 102
    assert await options.last.inner_text() == "env-page-099"
    await page.select_option("#environment", "env-page-099")
    await page.locator("body[data-environment=env-page-099]").wait_for()


async def test_an_unreachable_service_is_said_in_plain_words(page: Page) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Client.connect(f"127.0.0.1:{port}", insecure=True, timeout=2) as nowhere:
        server = await serve(create_app(nowhere), host="127.0.0.1", port=0)
        try:
            await page.goto(f"http://127.0.0.1:{server.port}/")
            await page.locator("body[data-ready]").wait_for()
            status = page.locator("#page-status[data-state=error]")
            assert "mfa-service did not answer" in await status.inner_text()
            assert await page.is_disabled("#save")
            await check_dashboard_screen(page, "dashboard-unavailable")
        finally:
            await server.close()


async def test_a_user_reset_needs_a_reason_removes_the_devices_and_is_in_the_audit_log(
    client: Client, clock: FakeClock, dashboard: str, page: Page
) -> None:
    await enroll_totp(client, clock, ENV, "bob")
    await enroll_totp(client, clock, ENV, "carol")
    await open_dashboard(page, dashboard, screen="users")
    await page.fill("#lookup-user", "bob")
    await page.click("#lookup")
    await page.locator("#user-card:not([hidden])").wait_for()
    assert "TOTP" in await page.inner_text("#user-facts")
    assert await page.locator("#devices-table tbody tr").count() == 1
    await check_dashboard_screen(page, "dashboard-user-lookup")

    # No reason: refused on the page, nothing asked of the service.
    await page.click("#reset")
    assert await page.get_attribute("#reset-reason", "aria-invalid") == "true"
    assert await page.inner_text("#reset-reason-error") != ""
    assert await page.evaluate("document.activeElement.id") == "reset-reason"
    assert await page.is_hidden("#reset-confirmation")
    # ... and by the backend, asked directly with the page's own CSRF header.
    refused = await page.evaluate(
        """async (environment) => {
             const { api } = await import("/shared/common.js");
             try {
               await api.post("/api/users/reset",
                              {environment_id: environment, user_id: "bob", reason: "  "});
               return null;
             } catch (error) { return {status: error.httpStatus, fields: error.fields}; }
           }""",
        ENV,
    )
    assert refused is not None
    assert refused["status"] == 400
    assert list(refused["fields"]) == ["reason"]
    assert len(await client.mfa.list_devices(environment_id=ENV, user_id="bob")) == 1

    await page.fill("#reset-reason", "support ticket 4711")
    await page.click("#reset")
    await page.locator("#reset-confirmation:not([hidden])").wait_for()
    assert "bob" in await page.inner_text("#reset-confirmation")
    assert await page.evaluate("document.activeElement.id") == "reset-confirm-title"
    await check_dashboard_screen(page, "dashboard-reset-confirmation")
    await page.click("#reset-confirm")
    done = page.locator("#reset-status[data-state]")
    await done.wait_for()
    assert await done.get_attribute("data-state") == "ok"
    assert "1 device removed" in await done.inner_text()
    assert await client.mfa.list_devices(environment_id=ENV, user_id="bob") == []
    assert await page.is_visible("#no-devices")
    assert len(await client.mfa.list_devices(environment_id=ENV, user_id="carol")) == 1

    # The reset, found through the audit table's filters, with its reason.
    await page.click("#tab-audit")
    await page.locator("#audit-status[data-state]").wait_for()
    await check_dashboard_screen(page, "dashboard-audit-log")
    await page.fill("#audit-user", "bob")
    await page.select_option("#audit-type", "AUDIT_EVENT_TYPE_USER_RESET")
    await page.click("#audit-apply")
    await page.locator("#audit-status", has_text="matching user bob").wait_for()
    rows = page.locator("#audit-table tbody tr")
    assert await rows.count() == 1
    row = rows.first
    assert await row.get_attribute("data-type") == "AUDIT_EVENT_TYPE_USER_RESET"
    assert "MFA reset by an administrator" in await row.inner_text()
    assert "Reason: support ticket 4711" in await row.inner_text()
    await row.locator("summary").click()
    facts = await row.locator("dl").inner_text()
    assert "Devices removed" in facts
    assert "AUDIT_EVENT_TYPE" not in await row.inner_text()
    await check_dashboard_screen(page, "dashboard-audit-log-filtered")


async def test_the_audit_log_pages_with_the_page_token(
    client: Client, dashboard: str, page: Page
) -> None:
    for issuer in [f"Issuer {i}" for i in range(30)]:
        await client.admin.update_settings(
            types.Settings(environment_id=ENV, totp=types.TotpSettings(issuer=issuer)),
            ["totp.issuer"],
        )
    await open_dashboard(page, dashboard, screen="audit")
    await page.locator("#audit-status[data-state=ok]").wait_for()
    assert await page.locator("#audit-table tbody tr").count() == 25
    assert await page.is_disabled("#audit-prev")
    await page.click("#audit-next")
    await page.locator("#audit-status", has_text="Page 2").wait_for()
    # 30 settings changes and the environment's creation: 31 in all.
    assert await page.locator("#audit-table tbody tr").count() == 6
    assert await page.is_disabled("#audit-next")
    last = page.locator("#audit-table tbody tr").last
    assert await last.get_attribute("data-type") == "AUDIT_EVENT_TYPE_ENVIRONMENT_CREATED"
    await page.click("#audit-prev")
    await page.locator("#audit-status", has_text="Page 1").wait_for()
    assert await page.locator("#audit-table tbody tr").count() == 25

    # A user id the service refuses is shown beside the filter.
    await page.fill("#audit-user", "élodie")
    await page.click("#audit-apply")
    await page.locator("#audit-user[aria-invalid=true]").wait_for()
    assert "printable ASCII" in await page.inner_text("#audit-user-error")
    assert await page.get_attribute("#audit-status", "data-state") == "error"


async def local_time(page: Page, instant: datetime) -> str:
    """``instant`` as the page's datetime-local inputs take it: in the browser's zone."""
    value: str = await page.evaluate(
        """iso => {
             const d = new Date(iso), p = n => String(n).padStart(2, "0");
             return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}` +
                    `T${p(d.getHours())}:${p(d.getMinutes())}`;
           }""",
        instant.isoformat(),
    )
    return value


async def test_the_audit_log_filters_by_a_time_range(
    client: Client, clock: FakeClock, dashboard: str, page: Page
) -> None:
    start = clock.now()  # the environment was created now
    for minute in range(1, 61):
        clock.advance(timedelta(minutes=1))
        await client.admin.update_settings(
            types.Settings(environment_id=ENV, totp=types.TotpSettings(issuer=f"At {minute}")),
            ["totp.issuer"],
        )
    await open_dashboard(page, dashboard, screen="audit")
    await page.locator("#audit-status[data-state=ok]").wait_for()
    await page.fill("#audit-since", await local_time(page, start + timedelta(minutes=20)))
    await page.fill("#audit-until", await local_time(page, start + timedelta(minutes=23)))
    await page.click("#audit-apply")
    await page.locator("#audit-status", has_text="Page 1: 3 events").wait_for()
    # 12:22, 12:21 and 12:20: the start is in the range, its end is not.
    rows = page.locator("#audit-table tbody tr")
    assert await rows.count() == 3
    assert await page.is_disabled("#audit-next")

    # Only an end: the one event before the first change, the environment's creation,
    # on the first page, however many events are newer.
    await page.fill("#audit-since", "")
    await page.fill("#audit-until", await local_time(page, start + timedelta(minutes=1)))
    await page.click("#audit-apply")
    await page.locator("#audit-status", has_text="Page 1: 1 event").wait_for()
    assert await rows.get_attribute("data-type") == "AUDIT_EVENT_TYPE_ENVIRONMENT_CREATED"
    assert await page.is_disabled("#audit-next")

    # A range that ends before it starts is refused beside "Until".
    await page.fill("#audit-since", await local_time(page, start + timedelta(minutes=30)))
    await page.click("#audit-apply")
    await page.locator("#audit-until[aria-invalid=true]").wait_for()
    assert "after the start" in await page.inner_text("#audit-until-error")


async def test_posts_without_the_csrf_header_or_from_another_origin_are_refused(
    client: Client, dashboard: str
) -> None:
    before = await client.admin.get_settings(ENV)
    change = {"environment_id": ENV, "changes": {"session_mfa_enabled": True}}
    # unsafe: the jar keeps cookies of an IP address (127.0.0.1) too.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{dashboard}/") as response:
            assert response.status == 200
            policy = response.headers["Content-Security-Policy"]
            assert policy == CONTENT_SECURITY_POLICY
            assert "unsafe-inline" not in policy
            assert "script-src 'self'" in policy
            token = response.cookies[CSRF_COOKIE].value
        for headers in (
            {"Origin": dashboard},  # no header: a form or fetch from elsewhere
            {"Origin": "https://evil.example", CSRF_HEADER: token},  # another site
        ):
            async with http.post(
                f"{dashboard}/api/settings", data=json.dumps(change), headers=headers
            ) as response:
                assert response.status == 403
                assert (await response.json())["error"]["reason"] == "CSRF"
        async with http.post(
            f"{dashboard}/api/users/reset",
            data=json.dumps({"environment_id": ENV, "user_id": "bob", "reason": "x"}),
            headers={"Origin": "https://evil.example", CSRF_HEADER: token},
        ) as response:
            assert response.status == 403
        assert await client.admin.get_settings(ENV) == before
        # The same request from the page's origin with the header goes through.
        async with http.post(
            f"{dashboard}/api/settings",
            data=json.dumps(change),
            headers={"Origin": dashboard, CSRF_HEADER: token, "Content-Type": "application/json"},
        ) as response:
            assert response.status == 200, await response.text()
    assert (await client.admin.get_settings(ENV)).session_mfa_enabled


async def test_the_documented_command_serves_the_page_on_loopback_only(app: Application) -> None:
    """`python -m examples.dashboard --grpc ... --port ...`, as the README says."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.dashboard", "--grpc", f"127.0.0.1:{app.port}",
        "--port", "0", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        opened = re.fullmatch(r"open (http://127\.0\.0\.1:\d+)/  \(mfa-service at .+\)\n", line)
        assert opened, line
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{opened[1]}/") as response:
                assert response.status == 200
                assert "<h1>Settings \u203a Security</h1>" in await response.text()
            # Bound to 127.0.0.1 alone: another address of this host is refused.
            elsewhere = opened[1].replace("127.0.0.1", "127.0.0.2")
            with pytest.raises(aiohttp.ClientConnectorError):
                await http.get(f"{elsewhere}/")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def test_a_save_and_a_reset_work_with_the_keyboard_alone(
    client: Client, clock: FakeClock, dashboard: str, page: Page
) -> None:
    await enroll_totp(client, clock, ENV, "dave")
    await open_dashboard(page, dashboard)
    # The focus order follows the page: skip link, environment, tabs, then Enrollment.
    assert await tab_to(page, "session-mfa") == [
        "skip-link",
        "environment",
        "environment-new",
        "tab-settings",
        "tab-audit",
        "tab-users",
        "totp-enabled",
        "passkey-enabled",
        "require-at-onboarding",
        "session-mfa",
    ]
    await page.keyboard.press("Space")
    assert "1 unsaved change" in await page.inner_text("#unsaved")
    await tab_to(page, "save")
    await page.keyboard.press("Enter")
    await page.locator("#save-status[data-state=ok]").wait_for()
    assert (await client.admin.get_settings(ENV)).session_mfa_enabled

    await page.focus("#tab-users")
    await page.keyboard.press("Enter")
    # The tab is a link: its screen opens on the hashchange event, a task after the key.
    await expect(page.locator("#users-title")).to_be_focused()
    await tab_to(page, "lookup-user")
    await page.keyboard.type("dave")
    await page.keyboard.press("Enter")  # submits the lookup
    await page.locator("#user-card:not([hidden])").wait_for()
    await tab_to(page, "reset-reason")
    await page.keyboard.type("ticket 42: lost phone")
    await page.keyboard.press("Enter")  # asks for the confirmation
    await page.locator("#reset-confirmation:not([hidden])").wait_for()
    assert await tab_to(page, "reset-confirm", limit=1) == ["reset-confirm"]
    await page.keyboard.press("Enter")
    await page.locator("#reset-status[data-state=ok]").wait_for()
    assert await client.mfa.list_devices(environment_id=ENV, user_id="dave") == []
