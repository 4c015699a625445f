"""AdminService.GetSettings / UpdateSettings through a real server and real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from flows import call
from helpers import FakeClock, refused
from mfa.v1 import action_token_service_pb2, admin_service_pb2, mfa_service_pb2
from mfa.v1 import types_pb2 as pb
from mfa_client import Client, MfaServiceError
from mfa_service import app as app_module
from mfa_service.api.action_token import ActionTokenServicer
from mfa_service.api.admin import AdminServicer
from mfa_service.api.convert import new_settings_fields, settings_changes, settings_to_proto
from mfa_service.api.mfa import MfaServicer
from mfa_service.crypto import KeyRing
from mfa_service.domain.model import Action, EnvironmentId, Method
from mfa_service.domain.settings import (
    SECTIONS,
    UPDATABLE_PATHS,
    ActionPolicy,
    Attestation,
    LockoutSettings,
    PasskeySettings,
    Settings,
    TotpSettings,
    UserVerification,
    apply_update,
    changed_paths,
    from_document,
    to_document,
)

ENV = "env-settings"
pytestmark = pytest.mark.environments(ENV)
INVALID = "ERROR_REASON_INVALID_ARGUMENT"
SETTINGS_CHANGES = "SELECT count(*) FROM audit_events WHERE type = 'SETTINGS_CHANGED'"


def seconds(n: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=n))
    return d


def default_settings(environment_id: str) -> pb.Settings:
    """DESIGN §5 defaults, as GetSettings shows them for an environment created without
    settings (as the app fixture creates the module's, at the fake clock's start)."""
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(FakeClock().now())
    return pb.Settings(
        environment_id=environment_id,
        totp_enabled=True,
        passkey_enabled=True,
        require_at_onboarding=False,
        session_mfa_enabled=False,
        action_methods=[pb.METHOD_TOTP, pb.METHOD_PASSKEY],
        protected_actions=[],
        single_use_token_ttl=seconds(300),
        multi_use_token_ttl=seconds(600),
        totp=pb.TotpSettings(
            issuer="MFA", skew_steps=1, max_devices=1, digits=6, period=seconds(30)
        ),
        passkey=pb.PasskeySettings(
            user_verification=pb.USER_VERIFICATION_REQUIRED, attestation=pb.ATTESTATION_NONE
        ),
        lockout=pb.LockoutSettings(max_failed_attempts=5, lockout_duration=seconds(900)),
        revision=1,
        update_time=created,
    )


def full_settings(environment_id: str) -> pb.Settings:
    """A valid configuration with every field away from its default."""
    return pb.Settings(
        environment_id=environment_id,
        totp_enabled=True,
        passkey_enabled=True,
        require_at_onboarding=True,
        session_mfa_enabled=True,
        action_methods=[pb.METHOD_PASSKEY],
        protected_actions=[pb.ACTION_WAAS_SIGN, pb.ACTION_WAAS_EXPORT],
        single_use_token_ttl=seconds(120),
        multi_use_token_ttl=seconds(1800),
        totp=pb.TotpSettings(issuer="Acme Wallet", skew_steps=0, max_devices=3),
        passkey=pb.PasskeySettings(
            rp_id="example.com",
            rp_name="Acme",
            allowed_origins=["https://app.example.com", "https://example.com"],
            user_verification=pb.USER_VERIFICATION_PREFERRED,
            attestation=pb.ATTESTATION_DIRECT,
        ),
        lockout=pb.LockoutSettings(max_failed_attempts=8, lockout_duration=seconds(3600)),
        action_policies=[
            pb.ActionPolicy(
                action=pb.ACTION_WAAS_EXPORT,
                allowed_methods=[pb.METHOD_PASSKEY],
                require_approval=True,
                max_token_ttl=seconds(60),
            )
        ],
    )


def without_output_only(settings: pb.Settings) -> pb.Settings:
    copy = pb.Settings()
    copy.CopyFrom(settings)
    copy.ClearField("revision")
    copy.ClearField("update_time")
    copy.totp.ClearField("digits")
    copy.totp.ClearField("period")
    return copy


def fields_of(error: MfaServiceError) -> list[str]:
    return [v.field for v in error.field_violations]


async def configure(client: Client, environment_id: str = ENV) -> pb.Settings:
    """Store full_settings for the environment; returns what the server answered."""
    return await client.admin.update_settings(full_settings(environment_id), ["*"])


# --- reading -------------------------------------------------------------------------


async def test_an_environment_created_without_settings_has_the_defaults(
    client: Client, db: asyncpg.Connection
) -> None:
    settings = await client.admin.get_settings(ENV)  # created by the app fixture
    assert settings == default_settings(ENV)
    assert settings.revision == 1
    # Reading changes nothing.
    assert await db.fetchval("SELECT count(*) FROM environment_settings") == 1
    assert await client.admin.get_settings(ENV) == settings


@pytest.mark.parametrize("environment_id", ["", " env", "env ", "x" * 129, "é", "a\nb"])
async def test_get_settings_refuses_a_bad_environment_id(
    client: Client, environment_id: str
) -> None:
    error = await refused(
        client.admin.get_settings(environment_id), grpc.StatusCode.INVALID_ARGUMENT, INVALID
    )
    assert fields_of(error) == ["environment_id"]


# --- update masks ----------------------------------------------------------------------


async def test_leaf_path_changes_only_that_field(client: Client) -> None:
    before = await configure(client)
    garbage = pb.Settings(
        environment_id=ENV,
        totp=pb.TotpSettings(issuer="Globex", skew_steps=99, max_devices=0),
        passkey=pb.PasskeySettings(user_verification=pb.USER_VERIFICATION_UNSPECIFIED),
        lockout=pb.LockoutSettings(max_failed_attempts=0),
    )
    after = await client.admin.update_settings(garbage, ["totp.issuer"])
    expected = without_output_only(before)
    expected.totp.issuer = "Globex"
    assert without_output_only(after) == expected
    assert after.revision == before.revision + 1
    assert await client.admin.get_settings(ENV) == after


async def test_top_level_leaf_path(client: Client) -> None:
    after = await client.admin.update_settings(
        pb.Settings(environment_id=ENV, session_mfa_enabled=True), ["session_mfa_enabled"]
    )
    expected = without_output_only(default_settings(ENV))
    expected.session_mfa_enabled = True
    assert without_output_only(after) == expected


async def test_action_policies_round_trip_and_are_replaced_as_a_whole(client: Client) -> None:
    configured = await configure(client)  # with a policy for ACTION_WAAS_EXPORT
    assert [p.action for p in configured.action_policies] == [pb.ACTION_WAAS_EXPORT]
    policies = [
        pb.ActionPolicy(
            action=pb.ACTION_WAAS_SIGN,
            allowed_methods=[pb.METHOD_TOTP, pb.METHOD_RECOVERY_CODE],
            max_token_ttl=seconds(30),
        ),
        pb.ActionPolicy(action=pb.ACTION_CREDENTIAL_LINK, require_approval=True),
    ]
    after = await client.admin.update_settings(_set(action_policies=policies), ["action_policies"])
    assert list(after.action_policies) == policies  # the EXPORT policy is gone
    read = await client.admin.get_settings(ENV)
    assert read == after
    assert not read.action_policies[1].HasField("max_token_ttl")  # no cap stays no cap
    expected = without_output_only(configured)
    expected.ClearField("action_policies")
    expected.action_policies.extend(policies)
    assert without_output_only(read) == expected  # nothing else changed
    emptied = await client.admin.update_settings(_set(), ["action_policies"])
    assert list(emptied.action_policies) == []


async def test_section_path_replaces_the_whole_section(client: Client) -> None:
    await configure(client)
    # TOTP may answer the protected actions too, and no policy needs passkeys only, so
    # passkeys may lose their rp_id below.
    before = await client.admin.update_settings(
        pb.Settings(environment_id=ENV, action_methods=[pb.METHOD_TOTP, pb.METHOD_PASSKEY]),
        ["action_methods", "action_policies"],
    )
    section_only = pb.Settings(
        environment_id=ENV,
        passkey=pb.PasskeySettings(
            user_verification=pb.USER_VERIFICATION_DISCOURAGED, attestation=pb.ATTESTATION_NONE
        ),
        totp=pb.TotpSettings(issuer="ignored", skew_steps=1, max_devices=1),
    )
    after = await client.admin.update_settings(section_only, ["passkey"])
    expected = without_output_only(before)
    # rp_id, rp_name and origins are not in the message, so the replaced section drops them.
    expected.passkey.CopyFrom(section_only.passkey)
    assert without_output_only(after) == expected


async def test_section_and_leaf_paths_together(client: Client) -> None:
    await configure(client)
    message = pb.Settings(
        environment_id=ENV,
        totp=pb.TotpSettings(issuer="Initech", skew_steps=1, max_devices=2),
        lockout=pb.LockoutSettings(max_failed_attempts=3, lockout_duration=seconds(120)),
    )
    after = await client.admin.update_settings(message, ["totp", "lockout.max_failed_attempts"])
    assert (after.totp.issuer, after.totp.skew_steps, after.totp.max_devices) == ("Initech", 1, 2)
    assert after.lockout.max_failed_attempts == 3
    assert after.lockout.lockout_duration == seconds(3600)  # not in the mask


async def test_star_replaces_everything(client: Client) -> None:
    await configure(client)
    replacement = pb.Settings(
        environment_id=ENV,
        totp_enabled=True,
        passkey_enabled=False,
        action_methods=[pb.METHOD_TOTP],
        single_use_token_ttl=seconds(60),
        multi_use_token_ttl=seconds(60),
        totp=pb.TotpSettings(issuer="Star", skew_steps=1, max_devices=1),
        passkey=pb.PasskeySettings(
            user_verification=pb.USER_VERIFICATION_REQUIRED, attestation=pb.ATTESTATION_NONE
        ),
        lockout=pb.LockoutSettings(max_failed_attempts=5, lockout_duration=seconds(900)),
    )
    after = await client.admin.update_settings(replacement, ["*"])
    # Everything the message leaves unset (onboarding, session MFA, protected actions,
    # the passkey RP) is reset, not kept from before.
    assert without_output_only(after) == replacement
    assert without_output_only(await client.admin.get_settings(ENV)) == replacement


async def test_star_with_a_partial_message_is_validated_as_a_whole(client: Client) -> None:
    before = await configure(client)
    error = await refused(
        client.admin.update_settings(pb.Settings(environment_id=ENV, totp_enabled=True), ["*"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert "settings.passkey.user_verification" in fields_of(error)
    assert await client.admin.get_settings(ENV) == before


BAD_MASKS: list[Any] = [
    pytest.param([], "update_mask", id="empty"),
    pytest.param(["revision"], "update_mask.paths[0]", id="revision"),
    pytest.param(["update_time"], "update_mask.paths[0]", id="update-time"),
    pytest.param(["environment_id"], "update_mask.paths[0]", id="environment-id"),
    pytest.param(["totp.digits"], "update_mask.paths[0]", id="totp-digits"),
    pytest.param(["totp.period"], "update_mask.paths[0]", id="totp-period"),
    pytest.param(["nonsense"], "update_mask.paths[0]", id="unknown"),
    pytest.param(["totp.nonsense"], "update_mask.paths[0]", id="unknown-leaf"),
    pytest.param(["Totp_Enabled"], "update_mask.paths[0]", id="wrong-case"),
    pytest.param(["totp.issuer", "revision"], "update_mask.paths[1]", id="second-path"),
    pytest.param(["totp_enabled", "*", "bogus"], "update_mask.paths[2]", id="third-path"),
]


@pytest.mark.parametrize(("paths", "field"), BAD_MASKS)
async def test_bad_update_mask_is_refused(client: Client, paths: list[str], field: str) -> None:
    before = await configure(client)
    message = full_settings(ENV)
    message.totp.issuer = "Changed"
    error = await refused(
        client.admin.update_settings(message, paths), grpc.StatusCode.INVALID_ARGUMENT, INVALID
    )
    assert fields_of(error) == [field]
    assert await client.admin.get_settings(ENV) == before


async def test_missing_settings_is_refused(client: Client) -> None:
    request = admin_service_pb2.UpdateSettingsRequest(
        update_mask=field_mask_pb2.FieldMask(paths=["totp_enabled"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.admin.stub.UpdateSettings(request)
    error = MfaServiceError.from_rpc_error(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, INVALID)
    assert fields_of(error) == ["settings"]


@pytest.mark.parametrize("environment_id", ["", "x" * 129, " padded"])
async def test_update_refuses_a_bad_environment_id(client: Client, environment_id: str) -> None:
    error = await refused(
        client.admin.update_settings(
            pb.Settings(environment_id=environment_id, totp_enabled=True), ["totp_enabled"]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        INVALID,
    )
    assert fields_of(error) == ["settings.environment_id"]


def _set(**fields: Any) -> pb.Settings:
    return pb.Settings(environment_id=ENV, **fields)


def _sign(**fields: Any) -> pb.ActionPolicy:
    return pb.ActionPolicy(action=pb.ACTION_WAAS_SIGN, **fields)


def _refused_policy(
    name: str, field: str, *each: pb.ActionPolicy, paths: tuple[str, ...] = ("action_policies",)
) -> Any:
    """A refusal case: settings with the policies ``each``, the mask, the field named."""
    message = _set(action_policies=list(each))
    return pytest.param(message, list(paths), f"settings.action_policies{field}", id=name)


UNSPECIFIED_ENUMS: list[Any] = [
    pytest.param(
        _set(passkey=pb.PasskeySettings(user_verification=pb.USER_VERIFICATION_UNSPECIFIED)),
        ["passkey.user_verification"],
        "settings.passkey.user_verification",
        id="user-verification",
    ),
    pytest.param(
        _set(passkey=pb.PasskeySettings(attestation=pb.ATTESTATION_UNSPECIFIED)),
        ["passkey.attestation"],
        "settings.passkey.attestation",
        id="attestation",
    ),
    pytest.param(
        _set(
            passkey=pb.PasskeySettings(
                user_verification=pb.USER_VERIFICATION_UNSPECIFIED,
                attestation=pb.ATTESTATION_NONE,
            )
        ),
        ["passkey"],
        "settings.passkey.user_verification",
        id="user-verification-in-section",
    ),
    pytest.param(
        _set(action_methods=[pb.METHOD_UNSPECIFIED]),
        ["action_methods"],
        "settings.action_methods[0]",
        id="method",
    ),
    pytest.param(
        _set(action_methods=[pb.METHOD_TOTP, 99]),
        ["action_methods"],
        "settings.action_methods[1]",
        id="method-unknown-number",
    ),
    pytest.param(
        _set(protected_actions=[pb.ACTION_WAAS_SIGN, pb.ACTION_UNSPECIFIED]),
        ["protected_actions"],
        "settings.protected_actions[1]",
        id="action",
    ),
    _refused_policy(
        "policy-action", "[1].action", _sign(), pb.ActionPolicy(allowed_methods=[pb.METHOD_TOTP])
    ),
    _refused_policy(
        "policy-method",
        "[0].allowed_methods[1]",
        _sign(allowed_methods=[pb.METHOD_TOTP, pb.METHOD_UNSPECIFIED]),
    ),
    _refused_policy(
        "policy-method-unknown-number", "[0].allowed_methods[0]", _sign(allowed_methods=[99])
    ),
]


@pytest.mark.parametrize(("message", "paths", "field"), UNSPECIFIED_ENUMS)
async def test_unspecified_enum_in_a_masked_field_is_refused(
    client: Client, message: pb.Settings, paths: list[str], field: str
) -> None:
    error = await refused(
        client.admin.update_settings(message, paths), grpc.StatusCode.INVALID_ARGUMENT, INVALID
    )
    assert fields_of(error) == [field]
    assert await client.admin.get_settings(ENV) == default_settings(ENV)


# --- validation through gRPC -------------------------------------------------------------

REFUSALS: list[Any] = [
    pytest.param(
        _set(totp_enabled=False, passkey_enabled=False, session_mfa_enabled=True),
        ["totp_enabled", "passkey_enabled", "action_methods", "session_mfa_enabled"],
        "settings.session_mfa_enabled",
        id="session-mfa-no-method",
    ),
    pytest.param(
        _set(totp_enabled=False, passkey_enabled=False, require_at_onboarding=True),
        ["totp_enabled", "passkey_enabled", "action_methods", "require_at_onboarding"],
        "settings.require_at_onboarding",
        id="onboarding-no-method",
    ),
    pytest.param(
        # The stored action methods still list TOTP.
        _set(totp_enabled=False),
        ["totp_enabled"],
        "settings.action_methods[0]",
        id="disabling-a-method-still-in-use",
    ),
    pytest.param(
        _set(action_methods=[pb.METHOD_RECOVERY_CODE]),
        ["action_methods"],
        "settings.action_methods[0]",
        id="recovery-code-as-action-method",
    ),
    pytest.param(
        _set(protected_actions=[pb.ACTION_WAAS_SIGN, pb.ACTION_CREDENTIAL_UNLINK]),
        ["protected_actions"],
        "settings.protected_actions[1]",
        id="always-protected-action",
    ),
    pytest.param(
        _set(protected_actions=[pb.ACTION_WAAS_SIGN, pb.ACTION_WAAS_SIGN]),
        ["protected_actions"],
        "settings.protected_actions",
        id="duplicate-action",
    ),
    pytest.param(
        _set(single_use_token_ttl=seconds(301)),
        ["single_use_token_ttl"],
        "settings.single_use_token_ttl",
        id="single-use-ttl-too-long",
    ),
    pytest.param(
        _set(), ["multi_use_token_ttl"], "settings.multi_use_token_ttl", id="multi-use-ttl-zero"
    ),
    pytest.param(
        _set(totp=pb.TotpSettings(issuer="Acme:Corp")),
        ["totp.issuer"],
        "settings.totp.issuer",
        id="issuer-colon",
    ),
    pytest.param(
        _set(totp=pb.TotpSettings(skew_steps=2)),
        ["totp.skew_steps"],
        "settings.totp.skew_steps",
        id="skew-2",
    ),
    pytest.param(
        _set(totp=pb.TotpSettings(max_devices=11)),
        ["totp.max_devices"],
        "settings.totp.max_devices",
        id="max-devices-11",
    ),
    pytest.param(
        _set(passkey=pb.PasskeySettings(rp_id="example.com", allowed_origins=["https://evil.com"])),
        ["passkey.rp_id", "passkey.allowed_origins"],
        "settings.passkey.allowed_origins[0]",
        id="origin-outside-rp-id",
    ),
    pytest.param(
        _set(passkey=pb.PasskeySettings(rp_id="example.com")),
        ["passkey.rp_id"],
        "settings.passkey.allowed_origins",
        id="rp-id-without-origins",
    ),
    *(
        pytest.param(
            _set(passkey=pb.PasskeySettings(rp_id=rp_id, allowed_origins=[f"https://a.{rp_id}"])),
            ["passkey.rp_id", "passkey.allowed_origins"],
            "settings.passkey.rp_id",
            id=f"rp-id-public-suffix-{rp_id}",
        )
        for rp_id in ("com", "co.uk", "github.io")
    ),
    pytest.param(
        _set(
            passkey=pb.PasskeySettings(
                rp_id="example.com",
                allowed_origins=["https://app.example.com", "https://*.example.com"],
            )
        ),
        ["passkey.rp_id", "passkey.allowed_origins"],
        "settings.passkey.allowed_origins[1]",
        id="origin-wildcard",
    ),
    pytest.param(
        _set(
            passkey=pb.PasskeySettings(
                rp_id="example.com",
                allowed_origins=["http://app.example.com"],
                user_verification=pb.USER_VERIFICATION_REQUIRED,
                attestation=pb.ATTESTATION_NONE,
            )
        ),
        ["passkey"],
        "settings.passkey.allowed_origins[0]",
        id="http-origin-in-section",
    ),
    pytest.param(
        _set(lockout=pb.LockoutSettings(max_failed_attempts=101)),
        ["lockout.max_failed_attempts"],
        "settings.lockout.max_failed_attempts",
        id="lockout-attempts-101",
    ),
    pytest.param(
        _set(lockout=pb.LockoutSettings(lockout_duration=seconds(30))),
        ["lockout.lockout_duration"],
        "settings.lockout.lockout_duration",
        id="lockout-duration-30s",
    ),
    _refused_policy(
        "policy-action-twice",
        "[2].action",
        _sign(),
        pb.ActionPolicy(action=pb.ACTION_WAAS_EXPORT),
        _sign(require_approval=True),
    ),
    _refused_policy(
        "policy-method-twice",
        "[0].allowed_methods",
        _sign(allowed_methods=[pb.METHOD_RECOVERY_CODE, pb.METHOD_RECOVERY_CODE]),
    ),
    # Passkeys are enabled but not configured (no rp_id): nobody could pass.
    _refused_policy(
        "policy-passkey-not-configured",
        "[0].allowed_methods",
        _sign(allowed_methods=[pb.METHOD_PASSKEY]),
    ),
    _refused_policy(
        "policy-method-disabled",
        "[0].allowed_methods[0]",
        _sign(allowed_methods=[pb.METHOD_TOTP]),
        paths=("totp_enabled", "action_policies"),
    ),
    _refused_policy("policy-ttl-too-long", "[0].max_token_ttl", _sign(max_token_ttl=seconds(3601))),
    _refused_policy(
        "policy-ttl-too-short",
        "[1].max_token_ttl",
        _sign(),
        pb.ActionPolicy(action=pb.ACTION_WAAS_EXPORT, max_token_ttl=seconds(9)),
    ),
    _refused_policy("policy-ttl-fraction", "[0].max_token_ttl", _sign(max_token_ttl=seconds(60.5))),
    pytest.param(
        # Past google.protobuf.Duration's range and past what a timedelta holds.
        _set(lockout=pb.LockoutSettings(lockout_duration=duration_pb2.Duration(seconds=10**15))),
        ["lockout.lockout_duration"],
        "settings.lockout.lockout_duration",
        id="lockout-duration-beyond-any-duration",
    ),
]


@pytest.mark.parametrize(("message", "paths", "field"), REFUSALS)
async def test_invalid_settings_are_refused_and_nothing_changes(
    client: Client,
    db: asyncpg.Connection,
    message: pb.Settings,
    paths: list[str],
    field: str,
) -> None:
    before = await client.admin.update_settings(
        _set(action_methods=[pb.METHOD_TOTP]), ["action_methods"]
    )
    error = await refused(
        client.admin.update_settings(message, paths), grpc.StatusCode.INVALID_ARGUMENT, INVALID
    )
    assert field in fields_of(error)
    assert all(f.startswith("settings.") for f in fields_of(error))
    assert error.message.startswith("settings.")
    assert await client.admin.get_settings(ENV) == before
    assert await db.fetchval(SETTINGS_CHANGES) == 1


# --- state over time ------------------------------------------------------------------


@pytest.mark.environments("env-a", "env-b")
async def test_environments_are_isolated(client: Client) -> None:
    a = await configure(client, "env-a")
    assert await client.admin.get_settings("env-b") == default_settings("env-b")
    b = await client.admin.update_settings(
        pb.Settings(environment_id="env-b", totp=pb.TotpSettings(issuer="B")), ["totp.issuer"]
    )
    assert await client.admin.get_settings("env-a") == a
    assert (a.totp.issuer, b.totp.issuer) == ("Acme Wallet", "B")
    assert b.revision == 2  # 1 is the creation
    assert b.environment_id == "env-b"


async def test_revision_increments_and_update_time_comes_from_the_clock(
    client: Client, clock: FakeClock
) -> None:
    first = await client.admin.update_settings(
        _set(totp=pb.TotpSettings(issuer="One")), ["totp.issuer"]
    )
    assert first.revision == 2  # 1 is the creation
    assert first.update_time.ToDatetime(tzinfo=clock.now().tzinfo) == clock.now()

    clock.advance(timedelta(hours=3, seconds=7))
    second = await client.admin.update_settings(
        _set(totp=pb.TotpSettings(issuer="Two")), ["totp.issuer"]
    )
    assert second.revision == 3
    assert second.update_time.ToDatetime(tzinfo=clock.now().tzinfo) == clock.now()
    assert await client.admin.get_settings(ENV) == second


async def test_an_update_that_changes_nothing_is_not_a_new_revision(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    first = await configure(client)
    clock.advance(timedelta(minutes=1))
    again = await configure(client)
    assert again == first
    assert await db.fetchval(SETTINGS_CHANGES) == 1


# Each update: (mask paths, fields of the message). All combinations are valid, so every
# update must land; fields written twice keep the value of the later revision.
CONCURRENT_UPDATES: list[tuple[list[str], dict[str, Any]]] = [
    (["require_at_onboarding"], {"require_at_onboarding": True}),
    (["session_mfa_enabled"], {"session_mfa_enabled": True}),
    # Not passkeys alone: with protected actions and no rp_id yet, no method could pass.
    # (And not the default order, which would change nothing and make no revision.)
    (["action_methods"], {"action_methods": [pb.METHOD_PASSKEY, pb.METHOD_TOTP]}),
    (["action_methods"], {"action_methods": [pb.METHOD_TOTP]}),
    (["protected_actions"], {"protected_actions": [pb.ACTION_WAAS_SIGN]}),
    (["protected_actions"], {"protected_actions": [pb.ACTION_WAAS_EXPORT]}),
    (["single_use_token_ttl"], {"single_use_token_ttl": seconds(60)}),
    (["single_use_token_ttl"], {"single_use_token_ttl": seconds(120)}),
    (["multi_use_token_ttl"], {"multi_use_token_ttl": seconds(900)}),
    (["totp.issuer"], {"totp": pb.TotpSettings(issuer="Acme")}),
    (["totp.issuer"], {"totp": pb.TotpSettings(issuer="Globex")}),
    (["totp.skew_steps"], {"totp": pb.TotpSettings(skew_steps=0)}),
    (["totp.max_devices"], {"totp": pb.TotpSettings(max_devices=3)}),
    (["totp.max_devices"], {"totp": pb.TotpSettings(max_devices=4)}),
    (["passkey.rp_name"], {"passkey": pb.PasskeySettings(rp_name="Acme Wallet")}),
    (
        ["passkey.user_verification"],
        {"passkey": pb.PasskeySettings(user_verification=pb.USER_VERIFICATION_PREFERRED)},
    ),
    (["passkey.attestation"], {"passkey": pb.PasskeySettings(attestation=pb.ATTESTATION_DIRECT)}),
    (["lockout.max_failed_attempts"], {"lockout": pb.LockoutSettings(max_failed_attempts=7)}),
    (["lockout.lockout_duration"], {"lockout": pb.LockoutSettings(lockout_duration=seconds(1800))}),
    (
        ["passkey.rp_id", "passkey.allowed_origins"],
        {
            "passkey": pb.PasskeySettings(
                rp_id="example.com", allowed_origins=["https://app.example.com"]
            )
        },
    ),
]


def _read(settings: pb.Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value if isinstance(value, str | int | Message) else list(value)  # repeated -> list


@pytest.mark.environments("env-concurrent")
async def test_concurrent_updates_of_one_environment_are_all_kept(client: Client) -> None:
    env = "env-concurrent"
    assert len(CONCURRENT_UPDATES) == 20
    results = await asyncio.gather(
        *(
            client.admin.update_settings(pb.Settings(environment_id=env, **fields), paths)
            for paths, fields in CONCURRENT_UPDATES
        )
    )
    # Serialized: every update saw the previous one and made its own revision (after
    # the creation's, 1).
    assert sorted(r.revision for r in results) == list(range(2, 22))
    final = await client.admin.get_settings(env)
    assert final.revision == 21
    latest: dict[str, tuple[int, Any]] = {}
    for (paths, fields), result in zip(CONCURRENT_UPDATES, results, strict=True):
        message = pb.Settings(environment_id=env, **fields)
        for path in paths:
            if path not in latest or latest[path][0] < result.revision:
                latest[path] = (result.revision, _read(message, path))
    for path, (_, value) in latest.items():
        assert _read(final, path) == value, path


async def test_settings_survive_a_restart(database_url: str, clock: FakeClock) -> None:
    key_ring = KeyRing.parse(KeyRing.generate_entry("restart"))

    async def with_server(use: Callable[[Client], Awaitable[pb.Settings]]) -> pb.Settings:
        application = await app_module.start(
            database_url=database_url, key_ring=key_ring, clock=clock, pool_size=2
        )
        try:
            async with Client.connect(f"127.0.0.1:{application.port}", insecure=True) as c:
                return await use(c)
        finally:
            await application.stop()

    async def create_and_configure(c: Client) -> pb.Settings:
        await c.admin.create_environment(ENV)
        return await configure(c)

    written = await with_server(create_and_configure)
    read = await with_server(lambda c: c.admin.get_settings(ENV))
    assert read == written
    assert read.revision == 2


# --- audit ---------------------------------------------------------------------------


async def test_an_update_writes_a_settings_changed_audit_event(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    request = admin_service_pb2.UpdateSettingsRequest(
        settings=_set(
            totp=pb.TotpSettings(issuer="Audited"),
            lockout=pb.LockoutSettings(max_failed_attempts=9),
            session_mfa_enabled=True,
        ),
        update_mask=field_mask_pb2.FieldMask(
            paths=["lockout.max_failed_attempts", "totp.issuer", "session_mfa_enabled"]
        ),
    )
    await client.admin.stub.UpdateSettings(request, metadata=(("x-request-id", "audit-req-1"),))
    rows = await db.fetch("SELECT * FROM audit_events WHERE type <> 'ENVIRONMENT_CREATED'")
    assert len(rows) == 1
    row = rows[0]
    assert row["type"] == "SETTINGS_CHANGED"
    assert row["environment_id"] == ENV
    assert row["occurred_at"] == clock.now()
    assert row["request_id"] == "audit-req-1"
    assert row["caller"]
    details = json.loads(row["details"])
    # Leaf paths in declaration order, whatever the order of the mask.
    assert details["fields"] == "session_mfa_enabled,totp.issuer,lockout.max_failed_attempts"
    assert details["revision"] == "2"
    assert "Audited" not in row["details"]  # field names, not values


# --- cross-cutting: unimplemented RPCs and request ids ---------------------------------


@pytest.mark.parametrize(
    ("service", "servicer"),
    [
        ("MfaService", MfaServicer),
        ("ActionTokenService", ActionTokenServicer),
        ("AdminService", AdminServicer),
    ],
)
def test_every_rpc_of_the_contract_is_implemented(service: str, servicer: type) -> None:
    """Each RPC in the protos is served by our servicer, not the generated UNIMPLEMENTED
    stub."""
    files = [mfa_service_pb2, action_token_service_pb2, admin_service_pb2]
    descriptor = next(
        f.DESCRIPTOR.services_by_name[service]
        for f in files
        if service in f.DESCRIPTOR.services_by_name
    )
    for method in descriptor.methods:
        implementation = getattr(servicer, method.name)
        assert implementation.__qualname__ == f"{servicer.__name__}.{method.name}", method.name


async def _failing_get(client: Client, request_id: str) -> MfaServiceError:
    request = admin_service_pb2.GetSettingsRequest(environment_id="")
    return await refused(
        call(client.admin.stub.GetSettings(request, metadata=(("x-request-id", request_id),))),
        grpc.StatusCode.INVALID_ARGUMENT,
        INVALID,
    )


@pytest.mark.parametrize("request_id", ["req-123", "a" * 64, "trace:abc.DEF_9-x"])
async def test_the_callers_request_id_comes_back(client: Client, request_id: str) -> None:
    error = await _failing_get(client, request_id)
    assert error.request_id == request_id
    assert request_id in str(error)

    rpc = client.admin.stub.GetSettings(
        admin_service_pb2.GetSettingsRequest(environment_id=ENV),
        metadata=(("x-request-id", request_id),),
    )
    await rpc
    assert ("x-request-id", request_id) in tuple(await rpc.trailing_metadata())


@pytest.mark.parametrize(
    "request_id", ["a" * 200, "a" * 65, "has spaces", "new\\nline", "<script>", "semi;colon"]
)
async def test_a_malformed_request_id_is_replaced(client: Client, request_id: str) -> None:
    error = await _failing_get(client, request_id)
    assert error.request_id != request_id
    assert re.fullmatch(r"[0-9a-f]{32}", error.request_id)


async def test_each_call_without_a_request_id_gets_its_own(client: Client) -> None:
    ids = set()
    for _ in range(3):
        error = await refused(
            client.admin.get_settings(""), grpc.StatusCode.INVALID_ARGUMENT, INVALID
        )
        ids.add(error.request_id)
    assert len(ids) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize(
    ("path", "seconds_", "nanos", "kept"),
    [
        ("single_use_token_ttl", 300, 0, True),
        ("single_use_token_ttl", 300, 1, False),  # was stored as 300 s
        ("single_use_token_ttl", 299, 999_999_999, False),
        ("multi_use_token_ttl", 600, 0, True),
        ("multi_use_token_ttl", 599, 500_000_000, False),
        ("lockout.lockout_duration", 60, 0, True),
        ("lockout.lockout_duration", 60, 1_000, False),  # a microsecond: still refused
        ("lockout.lockout_duration", 86_399, 999_999_999, False),
    ],
)
async def test_durations_are_whole_seconds(
    client: Client, path: str, seconds_: int, nanos: int, kept: bool
) -> None:
    """A duration the field cannot hold exactly (it keeps whole seconds) is refused
    naming the field, never rounded; whole seconds at the same range edges are kept."""
    value = duration_pb2.Duration(seconds=seconds_, nanos=nanos)
    message = (
        _set(lockout=pb.LockoutSettings(lockout_duration=value))
        if path.startswith("lockout.")
        else _set(**{path: value})
    )
    before = await client.admin.get_settings(ENV)
    if kept:
        after = await client.admin.update_settings(message, [path])
        stored = (
            after.lockout.lockout_duration if path.startswith("lockout.") else getattr(after, path)
        )
        assert (stored.seconds, stored.nanos) == (seconds_, 0)
        return
    error = await refused(
        client.admin.update_settings(message, [path]), grpc.StatusCode.INVALID_ARGUMENT, INVALID
    )
    assert fields_of(error) == [f"settings.{path}"]
    assert await client.admin.get_settings(ENV) == before


# --- one field list (issue 18): the message, the document and the mask follow the dataclass


def _message_leaves(descriptor: Any, prefix: str = "") -> set[str]:
    """The leaf paths of a settings message: a section's fields, not the section."""
    leaves: set[str] = set()
    for f in descriptor.fields:
        if f.message_type is not None and f.name in SECTIONS:
            leaves |= _message_leaves(f.message_type, f"{f.name}.")
        else:
            leaves.add(prefix + f.name)
    return leaves


def _document_leaves(document: dict[str, Any], prefix: str = "") -> set[str]:
    leaves: set[str] = set()
    for key, value in document.items():
        if isinstance(value, dict):
            leaves |= _document_leaves(value, f"{key}.")
        else:
            leaves.add(prefix + key)
    return leaves


DOMAIN_LEAVES = {p for p in UPDATABLE_PATHS if p not in SECTIONS}
# Fields of the message that are not settings a caller sets.
OUTPUT_ONLY = {"environment_id", "revision", "update_time", "totp.digits", "totp.period"}
ALL_CHANGED = Settings(
    environment_id=EnvironmentId(ENV),
    totp_enabled=False,  # with passkey_enabled: not valid, but every field is changed
    passkey_enabled=False,
    require_at_onboarding=True,
    session_mfa_enabled=True,
    action_methods=(Method.PASSKEY,),
    protected_actions=(Action.WAAS_SIGN, Action.WAAS_EXPORT),
    single_use_token_ttl=timedelta(seconds=90),
    multi_use_token_ttl=timedelta(minutes=30),
    totp=TotpSettings(issuer="Acme Wallet", skew_steps=0, max_devices=4),
    passkey=PasskeySettings(
        rp_id="example.com",
        rp_name="Acme",
        allowed_origins=("https://app.example.com",),
        user_verification=UserVerification.DISCOURAGED,
        attestation=Attestation.DIRECT,
    ),
    lockout=LockoutSettings(max_failed_attempts=9, lockout_duration=timedelta(hours=2)),
    action_policies=(
        ActionPolicy(Action.WAAS_EXPORT, (Method.PASSKEY,), True, timedelta(seconds=60)),
        ActionPolicy(Action.WAAS_SIGN),
    ),
    revision=4,
)


def test_the_message_the_document_and_the_mask_name_the_dataclass_fields() -> None:
    """A field added to the dataclass and not to the proto message (or the reverse), or
    stored under another name, fails here."""
    assert _message_leaves(pb.Settings.DESCRIPTOR) == DOMAIN_LEAVES | OUTPUT_ONLY
    assert _document_leaves(to_document(ALL_CHANGED)) == DOMAIN_LEAVES


def test_every_field_round_trips_through_the_message_and_the_document() -> None:
    # Every leaf differs from its default, so a field dropped on the way shows.
    assert set(changed_paths(Settings(EnvironmentId(ENV)), ALL_CHANGED)) == DOMAIN_LEAVES
    message = settings_to_proto(ALL_CHANGED)
    assert message.environment_id == ENV
    assert message.revision == 4
    assert message.totp.digits == 6
    assert message.totp.period.seconds == 30
    assert message.passkey.user_verification == pb.USER_VERIFICATION_DISCOURAGED
    assert list(message.protected_actions) == [pb.ACTION_WAAS_SIGN, pb.ACTION_WAAS_EXPORT]
    read = apply_update(Settings(EnvironmentId(ENV)), settings_changes(message, ["*"]))
    assert read == dataclasses.replace(ALL_CHANGED, revision=0)
    leaf_by_leaf = new_settings_fields(message, sorted(DOMAIN_LEAVES))
    assert apply_update(Settings(EnvironmentId(ENV)), leaf_by_leaf) == read
    stored = from_document(
        EnvironmentId(ENV), to_document(ALL_CHANGED), revision=4, update_time=None
    )
    assert stored == ALL_CHANGED
