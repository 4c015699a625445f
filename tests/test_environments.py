"""Environments exist once created (DESIGN §3c): CreateEnvironment, ListEnvironments,
and every other RPC refusing an environment never created, writing nothing."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from examples.webapp import configure_environment
from flows import (
    TotpDevice,
    call,
    challenge,
    enroll_totp,
    issue_action_token,
    start_totp,
    update_settings,
)
from helpers import TEST_KEY_RING, FakeClock, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service import app as app_module
from mfa_service.domain.model import Action, EnvironmentId, Method
from mfa_service.domain.settings import (
    ActionPolicy,
    PasskeySettings,
    Settings,
    TotpSettings,
    from_document,
    to_document,
    validate,
)
from mfa_service.errors import EnvironmentNotFound
from mfa_service.server import MAX_MESSAGE_BYTES
from mfa_service.services.settings import SettingsCache
from mfa_service.store.db import Database, create_pool, load_migrations
from mfa_service.store.notifications import SettingsListener

ENV = "env-known"
pytestmark = pytest.mark.environments(ENV)
INVALID = (grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_ARGUMENT")
NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_ENVIRONMENT_NOT_FOUND")
ALREADY_EXISTS = (grpc.StatusCode.ALREADY_EXISTS, "ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS")
SIGN, UNLINK = types.ACTION_WAAS_SIGN, types.ACTION_CREDENTIAL_UNLINK


def fields_of(error: MfaServiceError) -> list[str]:
    return [v.field for v in error.field_violations]


def seconds(n: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=n)


def without_output_only(settings: types.Settings) -> types.Settings:
    copy = types.Settings()
    copy.CopyFrom(settings)
    copy.ClearField("revision")
    copy.ClearField("update_time")
    copy.totp.ClearField("digits")
    copy.totp.ClearField("period")
    return copy


async def environment_ids(client: Client) -> list[str]:
    """Every environment, walking the pages."""
    ids: list[str] = []
    token = ""
    while True:
        page, token = await client.admin.list_environments(page_size=500, page_token=token)
        ids += [e.environment_id for e in page]
        if not token:
            return ids


# What the webhook dispatcher writes in the background as it delivers (the cursor and the
# state of deliveries), not by any call: left out of the digest of the webhooks.
WEBHOOKS_AS_CALLS_WRITE_THEM = (
    "(SELECT id, environment_id, url, event_types, format, secret_sealed, created_at FROM webhooks)"
)


async def table_contents(db: asyncpg.Connection) -> dict[str, str]:
    """A digest of every row of every table: equal digests, nothing written."""
    tables = [
        r["tablename"]
        for r in await db.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'schema_migrations' ORDER BY tablename"
        )
    ]
    rows = {table: f'"{table}"' for table in tables}
    rows["webhooks"] = WEBHOOKS_AS_CALLS_WRITE_THEM
    return {
        table: await db.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "  # noqa: S608
            f"FROM {rows[table]} t"
        )
        for table in tables
    }


# --- CreateEnvironment --------------------------------------------------------------------


async def test_created_without_settings_it_has_the_defaults_and_is_audited(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    created = await client.admin.create_environment("env-new")
    defaults = types.Settings(
        environment_id="env-new",
        totp_enabled=True,
        passkey_enabled=True,
        action_methods=[types.METHOD_TOTP, types.METHOD_PASSKEY],
        single_use_token_ttl=seconds(300),
        multi_use_token_ttl=seconds(600),
        totp=types.TotpSettings(issuer="MFA", skew_steps=1, max_devices=1),
        passkey=types.PasskeySettings(
            user_verification=types.USER_VERIFICATION_REQUIRED, attestation=types.ATTESTATION_NONE
        ),
        lockout=types.LockoutSettings(max_failed_attempts=5, lockout_duration=seconds(900)),
    )
    assert without_output_only(created) == defaults
    assert created.revision == 1
    assert created.update_time.ToDatetime(tzinfo=UTC) == clock.now()
    assert await client.admin.get_settings("env-new") == created
    [event] = await db.fetch("SELECT * FROM audit_events WHERE environment_id = 'env-new'")
    assert event["type"] == "ENVIRONMENT_CREATED"
    assert event["caller"].startswith("unauthenticated@")
    assert json.loads(event["details"]) == {"fields": "", "revision": "1"}


async def test_without_a_mask_every_non_zero_field_is_taken(client: Client) -> None:
    given = types.Settings(
        environment_id="env-full",
        require_at_onboarding=True,
        session_mfa_enabled=True,
        action_methods=[types.METHOD_TOTP],
        protected_actions=[SIGN, types.ACTION_WAAS_EXPORT],
        single_use_token_ttl=seconds(120),
        totp=types.TotpSettings(issuer="Acme Wallet", max_devices=3),
        passkey=types.PasskeySettings(
            rp_id="example.com", allowed_origins=["https://app.example.com"]
        ),
        lockout=types.LockoutSettings(lockout_duration=seconds(3600)),
        action_policies=[types.ActionPolicy(action=SIGN, max_token_ttl=seconds(60))],
    )
    created = await client.admin.create_environment(given)
    expected = types.Settings()
    expected.CopyFrom(given)
    # Left out (zero): the defaults, including within a section that is given.
    expected.totp_enabled = expected.passkey_enabled = True
    expected.multi_use_token_ttl.CopyFrom(seconds(600))
    expected.totp.skew_steps = 1
    expected.passkey.user_verification = types.USER_VERIFICATION_REQUIRED
    expected.passkey.attestation = types.ATTESTATION_NONE
    expected.lockout.max_failed_attempts = 5
    assert without_output_only(created) == expected


async def test_false_and_zero_take_a_mask(client: Client) -> None:
    """Proto3 cannot tell an unset bool from false: without a mask, passkey_enabled
    false is the default (on); named in the mask, it is off."""
    message = types.Settings(
        environment_id="env-unmasked", passkey_enabled=False, action_methods=[types.METHOD_TOTP]
    )
    unmasked = await client.admin.create_environment(message)
    assert unmasked.passkey_enabled
    message.environment_id = "env-masked"
    masked = await client.admin.create_environment(message, ["passkey_enabled", "action_methods"])
    assert not masked.passkey_enabled
    assert masked.totp_enabled  # not named: the default
    assert list(masked.action_methods) == [types.METHOD_TOTP]
    assert await client.admin.get_settings("env-masked") == masked
    # "*" takes every field as given: here, zeros, refused.
    error = await refused(
        client.admin.create_environment(types.Settings(environment_id="env-star"), ["*"]), *INVALID
    )
    assert fields_of(error) == ["settings.passkey.user_verification"]  # the first refusal


async def test_an_existing_environment_is_never_created_again(
    client: Client, db: asyncpg.Connection
) -> None:
    first = await client.admin.create_environment(
        types.Settings(environment_id="env-once", totp=types.TotpSettings(issuer="First"))
    )
    await refused(
        client.admin.create_environment(
            types.Settings(environment_id="env-once", totp=types.TotpSettings(issuer="Second"))
        ),
        *ALREADY_EXISTS,
    )
    assert await client.admin.get_settings("env-once") == first
    events = "SELECT count(*) FROM audit_events WHERE environment_id = 'env-once'"
    assert await db.fetchval(events) == 1


async def test_of_concurrent_creations_of_one_id_exactly_one_succeeds(client: Client) -> None:
    results = await asyncio.gather(
        *(
            client.admin.create_environment(
                types.Settings(environment_id="env-race", totp=types.TotpSettings(issuer=f"I{i}"))
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )
    [created] = [r for r in results if isinstance(r, types.Settings)]
    errors = [r for r in results if not isinstance(r, types.Settings)]
    assert len(errors) == 9
    assert all(
        isinstance(e, MfaServiceError) and (e.code, e.reason) == ALREADY_EXISTS for e in errors
    )
    assert await client.admin.get_settings("env-race") == created


async def test_ids_are_case_sensitive(client: Client) -> None:
    await client.admin.create_environment(
        types.Settings(environment_id="Env-Known", totp=types.TotpSettings(issuer="Upper"))
    )
    assert (await client.admin.get_settings("Env-Known")).totp.issuer == "Upper"
    assert (await client.admin.get_settings(ENV)).totp.issuer == "MFA"


def _new(**fields: Any) -> types.Settings:
    return types.Settings(environment_id="env-invalid", **fields)


INVALID_CREATIONS: list[Any] = [
    pytest.param(None, [], "settings", id="no-settings"),
    pytest.param(types.Settings(), [], "settings.environment_id", id="no-id"),
    pytest.param(
        types.Settings(environment_id=" env"), [], "settings.environment_id", id="padded-id"
    ),
    pytest.param(
        types.Settings(environment_id="e" * 129), [], "settings.environment_id", id="long-id"
    ),
    pytest.param(
        types.Settings(environment_id="env-é"), [], "settings.environment_id", id="non-ascii-id"
    ),
    pytest.param(_new(), ["revision"], "update_mask.paths[0]", id="mask-output-only"),
    pytest.param(_new(), ["environment_id"], "update_mask.paths[0]", id="mask-id"),
    pytest.param(_new(), ["totp_enabled", "bogus"], "update_mask.paths[1]", id="mask-unknown"),
    pytest.param(
        _new(totp_enabled=False, passkey_enabled=False, session_mfa_enabled=True),
        ["totp_enabled", "passkey_enabled", "action_methods", "session_mfa_enabled"],
        "settings.session_mfa_enabled",
        id="session-mfa-no-method",
    ),
    pytest.param(
        _new(totp_enabled=False),
        ["totp_enabled"],
        "settings.action_methods[0]",
        id="default-action-method-disabled",
    ),
    pytest.param(
        _new(protected_actions=[UNLINK]), [], "settings.protected_actions[0]", id="always-protected"
    ),
    pytest.param(
        _new(totp=types.TotpSettings(issuer="Acme:Corp")),
        [],
        "settings.totp.issuer",
        id="issuer-colon",
    ),
    pytest.param(
        _new(passkey=types.PasskeySettings(rp_id="example.com")),
        [],
        "settings.passkey.allowed_origins",
        id="rp-id-without-origins",
    ),
    pytest.param(
        _new(lockout=types.LockoutSettings(max_failed_attempts=101)),
        [],
        "settings.lockout.max_failed_attempts",
        id="lockout-101",
    ),
    pytest.param(
        _new(
            action_policies=[
                types.ActionPolicy(action=SIGN),
                types.ActionPolicy(action=SIGN, require_approval=True),
            ]
        ),
        [],
        "settings.action_policies[1].action",
        id="policy-action-twice",
    ),
    pytest.param(
        _new(
            action_policies=[
                types.ActionPolicy(action=SIGN, allowed_methods=[types.METHOD_TOTP] * 2)
            ]
        ),
        ["action_policies"],
        "settings.action_policies[0].allowed_methods",
        id="policy-method-twice",
    ),
    pytest.param(
        _new(action_policies=[types.ActionPolicy(action=SIGN, max_token_ttl=seconds(7200))]),
        [],
        "settings.action_policies[0].max_token_ttl",
        id="policy-ttl-too-long",
    ),
    pytest.param(
        _new(single_use_token_ttl=duration_pb2.Duration(seconds=10**15)),
        [],
        "settings.single_use_token_ttl",
        id="duration-beyond-range",
    ),
]


@pytest.mark.parametrize(("settings", "paths", "field"), INVALID_CREATIONS)
async def test_invalid_creations_name_the_field_and_create_nothing(
    client: Client,
    db: asyncpg.Connection,
    settings: types.Settings | None,
    paths: list[str],
    field: str,
) -> None:
    before = await table_contents(db)
    request = admin_pb.CreateEnvironmentRequest(
        settings=settings, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    error = await refused(call(client.admin.stub.CreateEnvironment(request)), *INVALID)
    assert field in fields_of(error)
    assert await table_contents(db) == before
    assert await environment_ids(client) == [ENV]


# --- ListEnvironments ----------------------------------------------------------------------


async def test_environments_are_listed_in_id_order_page_by_page(client: Client) -> None:
    ids = ["b", "A", "a", "env-2", "env-10", "Z~", "0", "env-1"]
    for environment_id in ids:
        await client.admin.create_environment(environment_id)
    everything = sorted([*ids, ENV])  # byte order: digits, upper case, lower case
    assert await environment_ids(client) == everything
    walked: list[str] = []
    token = ""
    while True:
        page, token = await client.admin.list_environments(page_size=2, page_token=token)
        assert 1 <= len(page) <= 2
        walked += [e.environment_id for e in page]
        if not token:
            break
    assert walked == everything
    page, token = await client.admin.list_environments(page_size=len(everything))
    assert len(page) == len(everything)
    assert not token  # the last page says so
    [first], _ = await client.admin.list_environments(page_size=1)
    assert first == await client.admin.get_settings("0")  # whole settings, not just ids


async def test_page_size_zero_means_fifty(client: Client) -> None:
    for i in range(50):
        await client.admin.create_environment(f"env-{i:02}")
    page, token = await client.admin.list_environments()
    assert len(page) == 50
    assert token
    rest, token = await client.admin.list_environments(page_token=token)
    assert [e.environment_id for e in rest] == [ENV]
    assert not token


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("page_size", "page_token", "field"),
    [
        pytest.param(-1, "", "page_size", id="negative"),
        pytest.param(501, "", "page_size", id="over-500"),
        pytest.param(2**31 - 1, "", "page_size", id="int32-max"),
        pytest.param(0, "garbage!", "page_token", id="not-base64"),
        pytest.param(0, _token("v2:env-a"), "page_token", id="other-version"),
        pytest.param(0, _token("v1:"), "page_token", id="no-id"),
        pytest.param(0, _token("v1:env\x00"), "page_token", id="control-character"),
        pytest.param(0, "A", "page_token", id="bad-padding"),
        pytest.param(0, "A" * 257, "page_token", id="too-long"),
    ],
)
async def test_bad_page_size_and_token_are_refused(
    client: Client, page_size: int, page_token: str, field: str
) -> None:
    error = await refused(
        client.admin.list_environments(page_size=page_size, page_token=page_token), *INVALID
    )
    assert fields_of(error) == [field]


async def test_a_full_page_of_the_largest_settings_fits_the_send_limit(
    client: Client, db: asyncpg.Connection
) -> None:
    """500 environments with settings at their largest (20 origins of 253-character
    hosts, a policy for every action listing every method): a page may hold fewer than
    page_size, never more than the server may send."""
    origins = tuple(
        "https://" + f"{i:02}" + "a" * 61 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 49
        + ".example.com"
        for i in range(20)
    )  # fmt: skip
    largest = Settings(
        environment_id=EnvironmentId("e" * 128),
        totp=TotpSettings(issuer="i" * 64),
        passkey=PasskeySettings(rp_id="example.com", rp_name="r" * 64, allowed_origins=origins),
        action_policies=tuple(
            ActionPolicy(a, tuple(Method), True, timedelta(minutes=30)) for a in Action
        ),
    )
    validate(largest)  # a configuration the service accepts
    await db.execute(
        """
        INSERT INTO environment_settings (environment_id, document, revision, updated_at)
        SELECT 'e' || lpad(n::text, 127, '0'), $1::jsonb, 1, now()
        FROM generate_series(1, 500) n
        """,
        json.dumps(to_document(largest)),
    )
    seen: list[str] = []
    pages = 0
    token = ""
    while True:
        response = await call(
            client.admin.stub.ListEnvironments(
                admin_pb.ListEnvironmentsRequest(page_size=500, page_token=token)
            )
        )
        assert response.environments
        assert response.ByteSize() < MAX_MESSAGE_BYTES
        seen += [e.environment_id for e in response.environments]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert pages > 1  # 500 such environments do not fit one response
    assert len(seen) == len(set(seen)) == 501
    assert seen == sorted(seen)


# --- every other RPC refuses an environment never created ----------------------------------


@dataclass
class Known:
    """Live ids of ENV, sent to the other environment: nothing of ENV may answer them."""

    device: TotpDevice
    enrollment_id: str
    enrollment_code: str
    challenge_id: str
    code: str
    unlink_token: str
    regenerate_token: str
    sign_token: str
    webhook_id: str


@pytest.fixture
async def known(client: Client, clock: FakeClock) -> Known:
    await update_settings(
        client,
        ENV,
        protected_actions=[SIGN],
        passkey__rp_id="example.com",
        passkey__allowed_origins=["https://app.example.com"],
    )
    device = await enroll_totp(client, clock, ENV, "alice")
    tokens = []
    for actions in ((UNLINK,), (types.ACTION_RECOVERY_CODES_REGENERATE,), (SIGN,)):
        clock.advance(timedelta(seconds=30))
        issued = await issue_action_token(
            client,
            ENV,
            "alice",
            device.code(clock.now()),
            await challenge(client, ENV, "alice"),
            actions=actions,
        )
        tokens.append(issued.token)
    clock.advance(timedelta(seconds=30))
    bob = await start_totp(client, ENV, "bob")
    return Known(
        device=device,
        enrollment_id=bob.enrollment_id,
        enrollment_code=TotpDevice("", bob.totp.secret).code(clock.now()),
        challenge_id=await challenge(client, ENV, "alice"),
        code=device.code(clock.now()),
        unlink_token=tokens[0],
        regenerate_token=tokens[1],
        sign_token=tokens[2],
        webhook_id=(await call(create_webhook(client, ENV))).webhook.webhook_id,
    )


Send = Callable[[Client, str, Known], Awaitable[Any]]


def create_webhook(client: Client, env: str) -> Awaitable[admin_pb.CreateWebhookResponse]:
    """A webhook of USER_RESET events to a closed https port (a delivery fails at once)."""
    return client.admin.stub.CreateWebhook(
        admin_pb.CreateWebhookRequest(
            environment_id=env,
            url="https://127.0.0.1:9/mfa",
            event_types=[admin_pb.AUDIT_EVENT_TYPE_USER_RESET],
        )
    )


async def first_watched(client: Client, env: str) -> admin_pb.WatchAuditEventsResponse:
    """WatchAuditEvents' first response (in ENV, its creation), then hang up."""
    stream = client.admin.stub.WatchAuditEvents(
        admin_pb.WatchAuditEventsRequest(environment_id=env)
    )
    try:
        response = await stream.read()
    finally:
        stream.cancel()
    assert isinstance(response, admin_pb.WatchAuditEventsResponse), response
    return response


# Every RPC naming an environment, with a request that succeeds in ENV.
REFUSING: dict[str, Send] = {
    "GetStatus": lambda c, env, k: c.mfa_stub.GetStatus(
        pb.GetStatusRequest(environment_id=env, user_id="alice", session_id="s1")
    ),
    "Enroll": lambda c, env, k: c.mfa_stub.Enroll(
        pb.EnrollRequest(environment_id=env, user_id="carol", method=types.METHOD_TOTP)
    ),
    "Enroll(passkey)": lambda c, env, k: c.mfa_stub.Enroll(
        pb.EnrollRequest(environment_id=env, user_id="carol", method=types.METHOD_PASSKEY)
    ),
    "CompleteEnrollment": lambda c, env, k: c.mfa_stub.CompleteEnrollment(
        pb.CompleteEnrollmentRequest(
            environment_id=env,
            user_id="bob",
            enrollment_id=k.enrollment_id,
            totp_code=k.enrollment_code,
        )
    ),
    "Challenge": lambda c, env, k: c.mfa_stub.Challenge(
        pb.ChallengeRequest(environment_id=env, user_id="alice", method=types.METHOD_TOTP)
    ),
    "VerifySession": lambda c, env, k: c.mfa_stub.VerifySession(
        pb.VerifySessionRequest(
            environment_id=env,
            user_id="alice",
            session_id="s1",
            challenge_id=k.challenge_id,
            proof=types.Proof(totp_code=k.code),
        )
    ),
    "IssueActionToken": lambda c, env, k: c.mfa_stub.IssueActionToken(
        pb.IssueActionTokenRequest(
            environment_id=env,
            user_id="alice",
            challenge_id=k.challenge_id,
            proof=types.Proof(totp_code=k.code),
            actions=[SIGN],
            single_use=True,
        )
    ),
    "ListDevices": lambda c, env, k: c.mfa_stub.ListDevices(
        pb.ListDevicesRequest(environment_id=env, user_id="alice")
    ),
    "UpdateDevice": lambda c, env, k: c.mfa_stub.UpdateDevice(
        pb.UpdateDeviceRequest(
            environment_id=env, user_id="alice", device_id=k.device.device_id, alias="x"
        )
    ),
    "DeleteDevice": lambda c, env, k: c.mfa_stub.DeleteDevice(
        pb.DeleteDeviceRequest(
            environment_id=env,
            user_id="alice",
            device_id=k.device.device_id,
            action_token=k.unlink_token,
        )
    ),
    "RegenerateRecoveryCodes": lambda c, env, k: c.mfa_stub.RegenerateRecoveryCodes(
        pb.RegenerateRecoveryCodesRequest(
            environment_id=env, user_id="alice", action_token=k.regenerate_token
        )
    ),
    "AcknowledgeRecoveryCodes": lambda c, env, k: c.mfa_stub.AcknowledgeRecoveryCodes(
        pb.AcknowledgeRecoveryCodesRequest(environment_id=env, user_id="alice")
    ),
    "GetSettings": lambda c, env, k: c.admin.stub.GetSettings(
        admin_pb.GetSettingsRequest(environment_id=env)
    ),
    "UpdateSettings": lambda c, env, k: c.admin.stub.UpdateSettings(
        admin_pb.UpdateSettingsRequest(
            settings=types.Settings(environment_id=env, totp=types.TotpSettings(issuer="Typo")),
            update_mask=field_mask_pb2.FieldMask(paths=["totp.issuer"]),
        )
    ),
    "ResetUserMfa": lambda c, env, k: c.admin.stub.ResetUserMfa(
        admin_pb.ResetUserMfaRequest(environment_id=env, user_id="alice", reason="ticket 1")
    ),
    "ListAuditEvents": lambda c, env, k: c.admin.stub.ListAuditEvents(
        admin_pb.ListAuditEventsRequest(environment_id=env)
    ),
    "WatchAuditEvents": lambda c, env, k: first_watched(c, env),
    "CreateWebhook": lambda c, env, k: create_webhook(c, env),
    "ListWebhooks": lambda c, env, k: c.admin.stub.ListWebhooks(
        admin_pb.ListWebhooksRequest(environment_id=env)
    ),
    "DeleteWebhook": lambda c, env, k: c.admin.stub.DeleteWebhook(
        admin_pb.DeleteWebhookRequest(environment_id=env, webhook_id=k.webhook_id)
    ),
}
# Named no environment; CreateEnvironment's own refusal is ALREADY_EXISTS (above).
NO_ENVIRONMENT = {"GetJwks", "CreateEnvironment", "ListEnvironments"}
UNKNOWN_ENVIRONMENTS = ["env-never-created", "Env-Known", "ENV-KNOWN", "env-know"]


def test_every_rpc_naming_an_environment_is_in_the_table() -> None:
    rpcs = {
        method.name
        for module, service in [
            (pb, "MfaService"),
            (at_pb, "ActionTokenService"),
            (admin_pb, "AdminService"),
        ]
        for method in module.DESCRIPTOR.services_by_name[service].methods
    }
    named = {name.partition("(")[0] for name in REFUSING} | {"ValidateActionToken"}
    assert named | NO_ENVIRONMENT == rpcs
    assert not named & NO_ENVIRONMENT


@pytest.mark.parametrize("rpc", sorted(REFUSING))
async def test_an_environment_never_created_is_not_found_and_nothing_is_written(
    client: Client, db: asyncpg.Connection, known: Known, rpc: str
) -> None:
    before = await table_contents(db)
    for env in UNKNOWN_ENVIRONMENTS:
        error = await refused(
            call(REFUSING[rpc](client, env, known)),
            grpc.StatusCode.NOT_FOUND,
            "ERROR_REASON_ENVIRONMENT_NOT_FOUND",
        )
        assert (error.code, error.reason) == NOT_FOUND, env
        assert await table_contents(db) == before, env
    await call(REFUSING[rpc](client, ENV, known))  # the same request in ENV succeeds


async def test_validate_denies_an_unknown_environment_first_and_writes_nothing(
    client: Client, db: asyncpg.Connection, known: Known
) -> None:
    """Finding 5 (issue 17): any string that is not a created environment (a typo, a case
    change) answered ALLOW / MFA_NOT_REQUIRED, even with a garbage token and for the
    credential actions."""
    before = await table_contents(db)
    for env in UNKNOWN_ENVIRONMENTS:
        for token in ("", "garbage", known.sign_token, known.unlink_token):
            for action in (SIGN, types.ACTION_WAAS_REFRESH, UNLINK):
                for key in ("", "retry-1"):
                    request = at_pb.ValidateActionTokenRequest(
                        environment_id=env,
                        user_id="alice",
                        action=action,
                        token=token,
                        idempotency_key=key,
                    )
                    answer = await call(client.action_tokens_stub.ValidateActionToken(request))
                    assert (answer.decision, answer.reason) == (
                        types.DECISION_DENY,
                        types.DECISION_REASON_ENVIRONMENT_UNKNOWN,
                    ), (env, token, action, key)
    assert await table_contents(db) == before
    # Nothing was consumed: the token still allows what it was issued for.
    validation = await client.action_tokens.validate(
        environment_id=ENV, user_id="alice", action=SIGN, token=known.sign_token
    )
    assert validation.reason_name == "DECISION_REASON_TOKEN_VALID"


# --- replicas and the settings cache -------------------------------------------------------


async def test_an_environment_created_through_one_replica_works_at_once_on_another(
    client: Client, clock: FakeClock, database_url: str
) -> None:
    other = await app_module.start(
        database_url=database_url, key_ring=TEST_KEY_RING, clock=clock, pool_size=2
    )
    try:
        async with Client.connect(f"127.0.0.1:{other.port}", insecure=True) as replica:
            request = at_pb.ValidateActionTokenRequest(
                environment_id="env-fresh", user_id="alice", action=SIGN
            )
            first = await call(replica.action_tokens_stub.ValidateActionToken(request))
            assert first.reason == types.DECISION_REASON_ENVIRONMENT_UNKNOWN
            await refused(replica.admin.get_settings("env-fresh"), *NOT_FOUND)
            await client.admin.create_environment("env-fresh")
            # No waiting for a notification: a miss is never remembered.
            after = await call(replica.action_tokens_stub.ValidateActionToken(request))
            assert after.reason == types.DECISION_REASON_MFA_NOT_REQUIRED
            assert (await replica.admin.get_settings("env-fresh")).revision == 1
    finally:
        await other.stop()


async def test_the_cache_answers_a_known_environment_without_the_database_and_never_a_miss(
    database_url: str, db: asyncpg.Connection
) -> None:
    """What keeps the hot paths' cost: an environment read once is answered from memory
    (no round trip), while an unknown one is read again on every call."""
    database = Database(await create_pool(database_url, size=1))
    cache = SettingsCache(database)
    cache.listener = SettingsListener(database_url, cache.invalidate)  # caches only if connected
    await cache.listener.ensure()
    try:
        with pytest.raises(EnvironmentNotFound):
            await cache.get(EnvironmentId("env-cached"))
        await db.execute(
            "INSERT INTO environment_settings VALUES ('env-cached', $1::jsonb, 1, now())",
            json.dumps(to_document(Settings(EnvironmentId("env-cached")))),
        )
        assert (await cache.get(EnvironmentId("env-cached"))).revision == 1  # read again
        await db.execute("UPDATE environment_settings SET revision = 7")
        await cache.require(EnvironmentId("env-cached"))
        assert (await cache.get(EnvironmentId("env-cached"))).revision == 1  # from memory
        cache.invalidate("env-cached")
        assert (await cache.get(EnvironmentId("env-cached"))).revision == 7
    finally:
        await cache.listener.close()
        await database.close()


# --- the examples ----------------------------------------------------------------------------


async def test_the_webapp_example_creates_its_environment_when_missing(client: Client) -> None:
    await configure_environment(client, "env-demo", "http://localhost:8080")
    settings = await client.admin.get_settings("env-demo")
    assert settings.revision == 2  # created, then configured
    assert list(settings.passkey.allowed_origins) == ["http://localhost:8080"]
    await configure_environment(client, "env-demo", "http://localhost:8081")  # exists now
    settings = await client.admin.get_settings("env-demo")
    assert list(settings.passkey.allowed_origins) == [
        "http://localhost:8080",
        "http://localhost:8081",
    ]


def test_the_migrated_default_document_is_todays_default() -> None:
    """Migration 0007 writes the default settings as a literal: read back, they are the
    defaults (a field added later is absent from it and takes its default when read)."""
    [migration] = [m for m in load_migrations() if m.version == 7]
    literal = json.loads(migration.sql.split("'", 2)[1])
    read = from_document(EnvironmentId("any"), literal, revision=0, update_time=None)
    assert read == Settings(EnvironmentId("any"))
