"""Enforcement rules (mfa_service.domain.policy): pure, the settings passed in."""

from __future__ import annotations

import dataclasses
from operator import attrgetter

import pytest

from mfa_service.domain.model import (
    ALWAYS_PROTECTED_ACTIONS,
    CONFIGURABLE_ACTIONS,
    Action,
    EnvironmentId,
    Method,
)
from mfa_service.domain.policy import allowed_methods, is_protected, require_enabled
from mfa_service.domain.settings import PasskeySettings, Settings
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
