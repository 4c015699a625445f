"""Enforcement rules (mfa_service.domain.policy): pure, the settings passed in."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from operator import attrgetter

import pytest

from mfa_service.domain.model import (
    ALWAYS_PROTECTED_ACTIONS,
    CONFIGURABLE_ACTIONS,
    Action,
    EnvironmentId,
    Method,
)
from mfa_service.domain.policy import (
    allowed_methods,
    approval_required,
    is_protected,
    require_enabled,
    token_ttl,
)
from mfa_service.domain.settings import ActionPolicy, PasskeySettings, Settings
from mfa_service.errors import MethodDisabled, PasskeyNotConfigured

PASSKEYS = PasskeySettings(rp_id="example.com", allowed_origins=("https://app.example.com",))
DEFAULTS = Settings(environment_id=EnvironmentId("env-policy"))
CONFIGURED = dataclasses.replace(DEFAULTS, passkey=PASSKEYS)
ALL = frozenset(Method)


@pytest.mark.parametrize("action", sorted(ALWAYS_PROTECTED_ACTIONS, key=attrgetter("name")))
def test_the_credential_actions_are_always_protected(action: Action) -> None:
    assert is_protected(DEFAULTS, action)
    assert is_protected(dataclasses.replace(DEFAULTS, protected_actions=()), action)


def test_a_waas_action_is_protected_only_when_the_settings_list_it() -> None:
    assert not any(is_protected(DEFAULTS, a) for a in CONFIGURABLE_ACTIONS)
    signing = dataclasses.replace(DEFAULTS, protected_actions=(Action.WAAS_SIGN,))
    assert is_protected(signing, Action.WAAS_SIGN)
    assert not is_protected(signing, Action.WAAS_EXPORT)


def test_a_credential_action_takes_any_usable_method_and_a_recovery_code() -> None:
    totp_only = dataclasses.replace(CONFIGURED, action_methods=(Method.TOTP,))
    assert allowed_methods(totp_only, (Action.CREDENTIAL_LINK,)) == ALL
    # Passkeys not configured: not usable, whatever else the settings say.
    assert allowed_methods(DEFAULTS, (Action.CREDENTIAL_LINK,)) == {
        Method.TOTP,
        Method.RECOVERY_CODE,
    }


def test_a_waas_action_takes_the_action_methods_and_a_recovery_code() -> None:
    totp_only = dataclasses.replace(CONFIGURED, action_methods=(Method.TOTP,))
    assert allowed_methods(totp_only, (Action.WAAS_SIGN,)) == {Method.TOTP, Method.RECOVERY_CODE}
    # With a credential action in the same token, the stricter set applies to both.
    both = (Action.WAAS_SIGN, Action.CREDENTIAL_UNLINK)
    assert allowed_methods(totp_only, both) == {Method.TOTP, Method.RECOVERY_CODE}


def test_a_method_switched_off_leaves_the_recovery_code() -> None:
    off = dataclasses.replace(CONFIGURED, totp_enabled=False, passkey_enabled=False)
    assert allowed_methods(off, (Action.WAAS_SIGN,)) == {Method.RECOVERY_CODE}
    assert allowed_methods(off, (Action.RECOVERY_CODES_REGENERATE,)) == {Method.RECOVERY_CODE}


# --- per-action policies (DESIGN §3e) ----------------------------------------------------


def with_policies(*each: ActionPolicy, base: Settings = CONFIGURED) -> Settings:
    return dataclasses.replace(base, action_policies=each)


def test_a_policy_without_methods_follows_the_environment() -> None:
    totp_only = dataclasses.replace(CONFIGURED, action_methods=(Method.TOTP,))
    settings = with_policies(ActionPolicy(Action.WAAS_SIGN, require_approval=True), base=totp_only)
    assert allowed_methods(settings, (Action.WAAS_SIGN,)) == {Method.TOTP, Method.RECOVERY_CODE}
    linking = with_policies(ActionPolicy(Action.CREDENTIAL_LINK), base=totp_only)
    assert allowed_methods(linking, (Action.CREDENTIAL_LINK,)) == ALL


def test_a_policy_listing_methods_allows_exactly_those() -> None:
    settings = with_policies(
        ActionPolicy(Action.WAAS_EXPORT, (Method.PASSKEY,)),
        ActionPolicy(Action.CREDENTIAL_UNLINK, (Method.TOTP, Method.RECOVERY_CODE)),
    )
    # No recovery code unless listed; the other actions are untouched.
    assert allowed_methods(settings, (Action.WAAS_EXPORT,)) == {Method.PASSKEY}
    assert allowed_methods(settings, (Action.CREDENTIAL_UNLINK,)) == {
        Method.TOTP,
        Method.RECOVERY_CODE,
    }
    assert allowed_methods(settings, (Action.WAAS_SIGN,)) == ALL
    # A policy may name methods beyond the environment's action methods.
    passkey_actions = dataclasses.replace(settings, action_methods=(Method.PASSKEY,))
    totp_sign = with_policies(ActionPolicy(Action.WAAS_SIGN, (Method.TOTP,)), base=passkey_actions)
    assert allowed_methods(totp_sign, (Action.WAAS_SIGN,)) == {Method.TOTP}


def test_a_listed_method_nobody_can_use_allows_nothing() -> None:
    # Passkeys not configured (validation refuses such a policy; the rule holds anyway).
    settings = with_policies(ActionPolicy(Action.WAAS_EXPORT, (Method.PASSKEY,)), base=DEFAULTS)
    assert allowed_methods(settings, (Action.WAAS_EXPORT,)) == frozenset()


def test_several_actions_take_the_methods_every_one_allows() -> None:
    settings = with_policies(
        ActionPolicy(Action.WAAS_EXPORT, (Method.PASSKEY, Method.RECOVERY_CODE)),
        ActionPolicy(Action.WAAS_SIGN, (Method.TOTP, Method.RECOVERY_CODE)),
    )
    assert allowed_methods(settings, (Action.WAAS_EXPORT, Action.WAAS_SIGN)) == {
        Method.RECOVERY_CODE
    }
    assert allowed_methods(settings, (Action.WAAS_EXPORT, Action.WAAS_REFRESH)) == {
        Method.PASSKEY,
        Method.RECOVERY_CODE,
    }


def test_approval_is_required_when_one_actions_policy_says_so() -> None:
    settings = with_policies(
        ActionPolicy(Action.WAAS_EXPORT, require_approval=True), ActionPolicy(Action.WAAS_SIGN)
    )
    assert approval_required(settings, (Action.WAAS_EXPORT,))
    assert approval_required(settings, (Action.WAAS_SIGN, Action.WAAS_EXPORT))
    assert not approval_required(settings, (Action.WAAS_SIGN,))
    assert not approval_required(settings, (Action.WAAS_REFRESH,))
    assert not approval_required(DEFAULTS, tuple(Action))


def test_the_token_lifetime_is_capped_by_the_smallest_policy() -> None:
    settings = with_policies(
        ActionPolicy(Action.WAAS_EXPORT, max_token_ttl=timedelta(seconds=30)),
        ActionPolicy(Action.WAAS_SIGN, max_token_ttl=timedelta(minutes=7)),
        ActionPolicy(Action.WAAS_REFRESH),
    )
    five, ten = timedelta(minutes=5), timedelta(minutes=10)
    assert token_ttl(DEFAULTS, (Action.WAAS_SIGN,), single_use=True) == five
    assert token_ttl(DEFAULTS, (Action.WAAS_SIGN,), single_use=False) == ten
    # A cap above the environment's lifetime changes nothing.
    assert token_ttl(settings, (Action.WAAS_SIGN,), single_use=True) == five
    assert token_ttl(settings, (Action.WAAS_SIGN,), single_use=False) == timedelta(minutes=7)
    assert token_ttl(settings, (Action.WAAS_REFRESH,), single_use=False) == ten
    both = (Action.WAAS_SIGN, Action.WAAS_EXPORT)
    assert token_ttl(settings, both, single_use=False) == timedelta(seconds=30)


def test_require_enabled_passes_an_enabled_and_configured_method() -> None:
    require_enabled(CONFIGURED, Method.TOTP)
    require_enabled(CONFIGURED, Method.PASSKEY)


def test_require_enabled_always_passes_a_recovery_code() -> None:
    off = dataclasses.replace(DEFAULTS, totp_enabled=False, passkey_enabled=False)
    require_enabled(off, Method.RECOVERY_CODE)


@pytest.mark.parametrize(
    ("settings", "method"),
    [
        (dataclasses.replace(CONFIGURED, totp_enabled=False), Method.TOTP),
        (dataclasses.replace(CONFIGURED, passkey_enabled=False), Method.PASSKEY),
        # Switched off wins over not configured.
        (dataclasses.replace(DEFAULTS, passkey_enabled=False), Method.PASSKEY),
    ],
)
def test_require_enabled_refuses_a_method_switched_off(settings: Settings, method: Method) -> None:
    with pytest.raises(MethodDisabled) as refused:
        require_enabled(settings, method)
    assert refused.value.reason == "ERROR_REASON_METHOD_DISABLED"
    assert method.name in str(refused.value)


@pytest.mark.parametrize(
    "passkey",
    [
        PasskeySettings(),
        PasskeySettings(rp_id="example.com"),
        dataclasses.replace(PASSKEYS, rp_id=""),
    ],
)
def test_require_enabled_refuses_passkeys_not_configured(passkey: PasskeySettings) -> None:
    with pytest.raises(PasskeyNotConfigured) as refused:
        require_enabled(dataclasses.replace(DEFAULTS, passkey=passkey), Method.PASSKEY)
    assert refused.value.reason == "ERROR_REASON_PASSKEY_NOT_CONFIGURED"
