"""Settings policy (mfa_service.domain.settings): defaults, mask updates, validation."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mfa_service.domain.model import ALWAYS_PROTECTED_ACTIONS, Action, EnvironmentId, Method
from mfa_service.domain.settings import (
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
    origin_problem,
    to_document,
    validate,
)
from mfa_service.errors import InvalidArgument

ENV = EnvironmentId("env-1")
DEFAULTS = Settings(environment_id=ENV)
PASSKEY_OK = PasskeySettings(rp_id="example.com", allowed_origins=("https://app.example.com",))


def violations_of(settings: Settings) -> list[str]:
    """The field paths ``validate`` names, in order; [] when it accepts."""
    try:
        validate(settings)
    except InvalidArgument as error:
        return [v.field for v in error.violations]
    return []


def with_(base: Settings = DEFAULTS, **changes: Any) -> Settings:
    return dataclasses.replace(base, **changes)


def totp(**changes: Any) -> Settings:
    return with_(totp=dataclasses.replace(TotpSettings(), **changes))


def passkey(**changes: Any) -> Settings:
    return with_(passkey=dataclasses.replace(PASSKEY_OK, **changes))


def lockout(**changes: Any) -> Settings:
    return with_(lockout=dataclasses.replace(LockoutSettings(), **changes))


NO_METHOD: dict[str, Any] = {"totp_enabled": False, "passkey_enabled": False, "action_methods": ()}


def policies(*each: ActionPolicy, base: Settings = DEFAULTS) -> Settings:
    return with_(base, action_policies=each)


SIGN_POLICY = ActionPolicy(Action.WAAS_SIGN)


# --- defaults ----------------------------------------------------------------------


def test_defaults_match_the_design() -> None:
    s = Settings(environment_id=ENV)
    assert s.environment_id == ENV
    assert (s.totp_enabled, s.passkey_enabled) == (True, True)
    assert (s.require_at_onboarding, s.session_mfa_enabled) == (False, False)
    assert s.action_methods == (Method.TOTP, Method.PASSKEY)
    assert s.protected_actions == ()
    assert s.single_use_token_ttl == timedelta(minutes=5)
    assert s.multi_use_token_ttl == timedelta(minutes=10)
    assert s.totp == TotpSettings(issuer="MFA", skew_steps=1, max_devices=1)
    assert s.passkey.user_verification is UserVerification.REQUIRED
    assert s.passkey.attestation is Attestation.NONE
    assert (s.passkey.rp_id, s.passkey.allowed_origins) == ("", ())
    assert s.lockout == LockoutSettings(
        max_failed_attempts=5, lockout_duration=timedelta(minutes=15)
    )
    assert (s.revision, s.update_time) == (0, None)
    assert s.enabled_methods == {Method.TOTP, Method.PASSKEY}


def test_defaults_are_valid() -> None:
    validate(DEFAULTS)


# --- update paths ------------------------------------------------------------------


def test_updatable_paths() -> None:
    assert UPDATABLE_PATHS == (
        "totp_enabled",
        "passkey_enabled",
        "require_at_onboarding",
        "session_mfa_enabled",
        "action_methods",
        "protected_actions",
        "single_use_token_ttl",
        "multi_use_token_ttl",
        "totp",
        "totp.issuer",
        "totp.skew_steps",
        "totp.max_devices",
        "passkey",
        "passkey.rp_id",
        "passkey.rp_name",
        "passkey.allowed_origins",
        "passkey.user_verification",
        "passkey.attestation",
        "lockout",
        "lockout.max_failed_attempts",
        "lockout.lockout_duration",
        "action_policies",
    )
    for output_only in ("environment_id", "revision", "update_time"):
        assert output_only not in UPDATABLE_PATHS


def test_apply_update_leaf_path_changes_only_that_field() -> None:
    current = with_(totp=TotpSettings(issuer="Old", skew_steps=0, max_devices=3))
    updated = apply_update(current, {"totp.issuer": "New"})
    assert updated == with_(current, totp=TotpSettings(issuer="New", skew_steps=0, max_devices=3))
    assert current.totp.issuer == "Old"


def test_apply_update_section_path_replaces_the_section() -> None:
    current = with_(lockout=LockoutSettings(max_failed_attempts=9, lockout_duration=timedelta(1)))
    new_section = LockoutSettings(max_failed_attempts=3)
    updated = apply_update(current, {"lockout": new_section})
    assert updated.lockout == new_section
    assert updated == with_(current, lockout=new_section)


def test_apply_update_section_and_leaf_together() -> None:
    current = with_(totp=TotpSettings(issuer="Old", skew_steps=1, max_devices=5))
    updated = apply_update(
        current,
        {
            "totp.issuer": "Leaf",
            "totp": TotpSettings(issuer="Section", skew_steps=0, max_devices=2),
            "require_at_onboarding": True,
        },
    )
    # The leaf lands on top of the replaced section, whatever the order of the paths.
    assert updated.totp == TotpSettings(issuer="Leaf", skew_steps=0, max_devices=2)
    assert updated.require_at_onboarding is True
    assert updated == with_(current, totp=updated.totp, require_at_onboarding=True)


@pytest.mark.parametrize("path", ["revision", "environment_id", "update_time", "totp.digits", "x"])
def test_apply_update_refuses_paths_that_are_not_updatable(path: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        apply_update(DEFAULTS, {path: 1})
    assert [v.field for v in raised.value.violations] == [path]


def test_changed_paths_lists_changed_leaves() -> None:
    after = apply_update(
        DEFAULTS, {"totp.issuer": "X", "lockout": LockoutSettings(max_failed_attempts=7)}
    )
    assert changed_paths(DEFAULTS, after) == ["totp.issuer", "lockout.max_failed_attempts"]
    assert changed_paths(after, after) == []


# --- validation --------------------------------------------------------------------

REFUSED: list[Any] = [
    # (settings, exact violation paths in order)
    pytest.param(
        with_(**NO_METHOD, session_mfa_enabled=True),
        ["session_mfa_enabled"],
        id="session-no-method",
    ),
    pytest.param(
        with_(**NO_METHOD, require_at_onboarding=True),
        ["require_at_onboarding"],
        id="onboarding-no-method",
    ),
    pytest.param(
        with_(**NO_METHOD, protected_actions=(Action.WAAS_SIGN,)),
        ["protected_actions", "action_methods"],
        id="protected-actions-no-method",
    ),
    pytest.param(
        with_(protected_actions=(Action.WAAS_SIGN,), action_methods=()),
        ["action_methods"],
        id="protected-actions-no-action-method",
    ),
    pytest.param(
        with_(totp_enabled=False, action_methods=(Method.TOTP, Method.PASSKEY)),
        ["action_methods[0]"],
        id="action-method-not-enabled",
    ),
    pytest.param(
        with_(passkey_enabled=False, action_methods=(Method.TOTP, Method.PASSKEY)),
        ["action_methods[1]"],
        id="action-method-passkey-not-enabled",
    ),
    pytest.param(
        with_(action_methods=(Method.TOTP, Method.RECOVERY_CODE)),
        ["action_methods[1]"],
        id="recovery-code-as-action-method",
    ),
    pytest.param(
        with_(action_methods=(Method.TOTP, Method.TOTP)),
        ["action_methods"],
        id="duplicate-action-method",
    ),
    pytest.param(
        with_(protected_actions=(Action.WAAS_SIGN, Action.WAAS_SIGN)),
        ["protected_actions"],
        id="duplicate-protected-action",
    ),
    pytest.param(
        passkey(allowed_origins=("https://app.example.com", "https://app.example.com")),
        ["passkey.allowed_origins"],
        id="duplicate-origin",
    ),
    *(
        pytest.param(
            with_(protected_actions=(Action.WAAS_SIGN, action)),
            ["protected_actions[1]"],
            id=f"always-protected-{action.name}",
        )
        for action in sorted(ALWAYS_PROTECTED_ACTIONS, key=lambda a: a.name)
    ),
    pytest.param(
        with_(single_use_token_ttl=timedelta(seconds=9)),
        ["single_use_token_ttl"],
        id="single-use-ttl-too-short",
    ),
    pytest.param(
        with_(single_use_token_ttl=timedelta(minutes=5, seconds=1)),
        ["single_use_token_ttl"],
        id="single-use-ttl-too-long",
    ),
    pytest.param(
        with_(multi_use_token_ttl=timedelta(seconds=9)),
        ["multi_use_token_ttl"],
        id="multi-use-ttl-too-short",
    ),
    pytest.param(
        with_(multi_use_token_ttl=timedelta(hours=1, seconds=1)),
        ["multi_use_token_ttl"],
        id="multi-use-ttl-too-long",
    ),
    pytest.param(totp(issuer=""), ["totp.issuer"], id="issuer-empty"),
    pytest.param(totp(issuer="   "), ["totp.issuer"], id="issuer-blank"),
    pytest.param(totp(issuer="x" * 65), ["totp.issuer"], id="issuer-too-long"),
    pytest.param(totp(issuer="Acme:Corp"), ["totp.issuer"], id="issuer-colon"),
    pytest.param(totp(issuer="Acme\nCorp"), ["totp.issuer"], id="issuer-control-char"),
    pytest.param(totp(skew_steps=2), ["totp.skew_steps"], id="skew-2"),
    pytest.param(totp(skew_steps=-1), ["totp.skew_steps"], id="skew-negative"),
    pytest.param(totp(max_devices=0), ["totp.max_devices"], id="max-devices-0"),
    pytest.param(totp(max_devices=11), ["totp.max_devices"], id="max-devices-11"),
    pytest.param(
        passkey(rp_id="Example.com", allowed_origins=("https://app.example.com",)),
        ["passkey.rp_id", "passkey.allowed_origins[0]"],
        id="rp-id-uppercase",
    ),
    pytest.param(
        passkey(rp_id="exa mple.com", allowed_origins=()),
        ["passkey.rp_id", "passkey.allowed_origins"],
        id="rp-id-space",
    ),
    pytest.param(
        passkey(rp_id="-bad.example.com", allowed_origins=("https://x.-bad.example.com",)),
        ["passkey.rp_id", "passkey.allowed_origins[0]"],  # the origin's host is as bad
        id="rp-id-leading-hyphen",
    ),
    pytest.param(
        passkey(rp_id="10.0.0.1", allowed_origins=("https://10.0.0.1",)),
        ["passkey.rp_id", "passkey.allowed_origins[0]"],
        id="rp-id-ip-address",
    ),
    *(
        pytest.param(
            passkey(rp_id=rp_id, allowed_origins=(f"https://wallet.{rp_id}",)),
            ["passkey.rp_id"],
            id=f"rp-id-{name}",
        )
        for name, rp_id in [
            ("public-suffix-com", "com"),
            ("public-suffix-co-uk", "co.uk"),
            ("public-suffix-github-io", "github.io"),  # the list's private section
            ("unlisted-top-level-name", "internal"),
        ]
    ),
    *(
        pytest.param(
            passkey(rp_id=rp_id, allowed_origins=(f"https://wallet.{rp_id}",)),
            ["passkey.rp_id", "passkey.allowed_origins[0]"],  # the same host name below it
            id=f"rp-id-{name}",
        )
        for name, rp_id in [
            ("wildcard", "*.example.com"),
            ("trailing-dot", "example.com."),
            ("empty-label", "app..example.com"),
            ("underscore", "a_b.example.com"),
        ]
    ),
    pytest.param(
        passkey(rp_id="com", allowed_origins=("https://com",)),
        ["passkey.rp_id", "passkey.allowed_origins[0]"],
        id="rp-id-and-origin-public-suffix",
    ),
    pytest.param(
        # amazonaws.com is registrable, s3.amazonaws.com below it a public suffix.
        passkey(rp_id="amazonaws.com", allowed_origins=("https://s3.amazonaws.com",)),
        ["passkey.allowed_origins[0]"],
        id="origin-public-suffix-below-rp-id",
    ),
    pytest.param(
        passkey(rp_id="https://example.com", allowed_origins=("https://example.com",)),
        ["passkey.rp_id", "passkey.allowed_origins[0]"],
        id="rp-id-is-an-origin",
    ),
    pytest.param(
        passkey(rp_id="", allowed_origins=("https://app.example.com",)),
        ["passkey.rp_id"],
        id="origins-without-rp-id",
    ),
    pytest.param(
        passkey(rp_id="example.com", allowed_origins=()),
        ["passkey.allowed_origins"],
        id="rp-id-without-origins",
    ),
    pytest.param(passkey(rp_name="x" * 65), ["passkey.rp_name"], id="rp-name-too-long"),
    pytest.param(passkey(rp_name="Acme\tWallet"), ["passkey.rp_name"], id="rp-name-control-char"),
    pytest.param(
        passkey(allowed_origins=tuple(f"https://a{i}.example.com" for i in range(21))),
        ["passkey.allowed_origins"],
        id="too-many-origins",
    ),
    *(
        pytest.param(
            passkey(allowed_origins=("https://app.example.com", origin)),
            ["passkey.allowed_origins[1]"],
            id=f"origin-{name}",
        )
        for name, origin in [
            ("outside-rp-id", "https://evil.com"),
            ("suffix-not-subdomain", "https://notexample.com"),
            ("parent-of-rp-id", "https://com"),
            ("http-not-localhost", "http://app.example.com"),
            ("with-path", "https://app.example.com/login"),
            ("with-slash", "https://app.example.com/"),
            ("with-query", "https://app.example.com?x=1"),
            ("with-fragment", "https://app.example.com#x"),
            ("with-user", "https://user@app.example.com"),
            ("uppercase-host", "https://App.example.com"),
            ("uppercase-scheme", "HTTPS://app.example.com"),
            ("default-port", "https://app.example.com:443"),
            ("bad-port", "https://app.example.com:99999"),
            ("empty-port", "https://app.example.com:"),
            ("wildcard", "https://*.example.com"),
            ("wildcard-label-part", "https://app-*.example.com"),
            ("empty-label", "https://app..example.com"),
            ("underscore", "https://a_b.example.com"),
            ("ipv6-address", "https://[::1]"),
            ("other-scheme", "ftp://app.example.com"),
            ("no-scheme", "app.example.com"),
            ("no-host", "https://"),
            # origin_problem checks no label length: the length cap refuses it.
            ("too-long", "https://" + "a" * 300 + ".example.com"),
        ]
    ),
    pytest.param(
        lockout(max_failed_attempts=0), ["lockout.max_failed_attempts"], id="lockout-attempts-0"
    ),
    pytest.param(
        lockout(max_failed_attempts=101), ["lockout.max_failed_attempts"], id="lockout-attempts-101"
    ),
    pytest.param(
        lockout(lockout_duration=timedelta(seconds=59)),
        ["lockout.lockout_duration"],
        id="lockout-duration-too-short",
    ),
    pytest.param(
        lockout(lockout_duration=timedelta(hours=24, seconds=1)),
        ["lockout.lockout_duration"],
        id="lockout-duration-too-long",
    ),
    # Per-action policies (DESIGN §3e).
    pytest.param(
        policies(SIGN_POLICY, ActionPolicy(Action.WAAS_EXPORT), SIGN_POLICY),
        ["action_policies[2].action"],
        id="policy-action-twice",
    ),
    pytest.param(
        policies(SIGN_POLICY, ActionPolicy(Action.WAAS_EXPORT, (Method.TOTP, Method.TOTP))),
        ["action_policies[1].allowed_methods"],
        id="policy-method-twice",
    ),
    pytest.param(
        policies(
            ActionPolicy(Action.WAAS_SIGN, (Method.RECOVERY_CODE, Method.PASSKEY)),
            base=with_(passkey_enabled=False, action_methods=(Method.TOTP,)),
        ),
        ["action_policies[0].allowed_methods[1]"],
        id="policy-method-not-enabled",
    ),
    pytest.param(
        # Passkeys enabled but not configured: nobody could earn a token for the action.
        policies(ActionPolicy(Action.WAAS_SIGN, (Method.PASSKEY,))),
        ["action_policies[0].allowed_methods"],
        id="policy-method-nobody-can-pass",
    ),
    pytest.param(
        policies(ActionPolicy(Action.WAAS_SIGN, max_token_ttl=timedelta(seconds=9))),
        ["action_policies[0].max_token_ttl"],
        id="policy-ttl-too-short",
    ),
    pytest.param(
        policies(
            SIGN_POLICY,
            ActionPolicy(Action.WAAS_EXPORT, max_token_ttl=timedelta(hours=1, seconds=1)),
        ),
        ["action_policies[1].max_token_ttl"],
        id="policy-ttl-too-long",
    ),
]


@pytest.mark.parametrize(("settings", "expected"), REFUSED)
def test_validate_refuses(settings: Settings, expected: list[str]) -> None:
    assert violations_of(settings) == expected


def test_validate_names_every_violation_at_once() -> None:
    settings = with_(
        totp=TotpSettings(issuer="", skew_steps=5, max_devices=0),
        lockout=LockoutSettings(max_failed_attempts=0),
    )
    assert violations_of(settings) == [
        "totp.issuer",
        "totp.skew_steps",
        "totp.max_devices",
        "lockout.max_failed_attempts",
    ]


# A domain name of 253 characters, the longest there is.
LONGEST_RP_ID = ".".join(["a" * 63] * 3 + ["b" * 61])
ACCEPTED: list[Any] = [
    pytest.param(with_(**NO_METHOD), id="everything-off"),
    pytest.param(with_(totp_enabled=False, action_methods=(Method.PASSKEY,)), id="passkey-only"),
    pytest.param(
        with_(
            session_mfa_enabled=True,
            require_at_onboarding=True,
            protected_actions=(Action.WAAS_EXPORT, Action.WAAS_SIGN),
        ),
        id="everything-on",
    ),
    pytest.param(with_(single_use_token_ttl=timedelta(seconds=10)), id="single-ttl-low"),
    pytest.param(with_(single_use_token_ttl=timedelta(minutes=5)), id="single-ttl-high"),
    pytest.param(with_(multi_use_token_ttl=timedelta(seconds=10)), id="multi-ttl-low"),
    pytest.param(with_(multi_use_token_ttl=timedelta(hours=1)), id="multi-ttl-high"),
    pytest.param(totp(issuer="x" * 64, skew_steps=0, max_devices=10), id="totp-limits"),
    pytest.param(totp(max_devices=1), id="max-devices-1"),
    pytest.param(passkey(), id="passkey-configured"),
    pytest.param(
        passkey(rp_id="localhost", allowed_origins=("http://localhost:5173", "https://localhost")),
        id="passkey-localhost",
    ),
    pytest.param(
        passkey(rp_id=LONGEST_RP_ID, allowed_origins=(f"https://{LONGEST_RP_ID}:65535",)),
        id="passkey-longest-origin",
    ),
    pytest.param(
        passkey(rp_id="example.co.uk", allowed_origins=("https://app.example.co.uk",)),
        id="passkey-under-a-two-label-suffix",
    ),
    pytest.param(
        passkey(rp_id="me.github.io", allowed_origins=("https://me.github.io",)),
        id="passkey-under-a-private-suffix",
    ),
    pytest.param(
        passkey(rp_id="localhost", allowed_origins=("https://app.localhost",)),
        id="passkey-localhost-subdomain",
    ),
    pytest.param(lockout(max_failed_attempts=1), id="lockout-attempts-1"),
    pytest.param(lockout(max_failed_attempts=100), id="lockout-attempts-100"),
    pytest.param(lockout(lockout_duration=timedelta(minutes=1)), id="lockout-duration-1m"),
    pytest.param(lockout(lockout_duration=timedelta(hours=24)), id="lockout-duration-24h"),
    pytest.param(
        policies(
            ActionPolicy(Action.WAAS_EXPORT, (Method.PASSKEY,), True, timedelta(seconds=10)),
            ActionPolicy(Action.WAAS_SIGN, (Method.RECOVERY_CODE,), False, timedelta(hours=1)),
            ActionPolicy(Action.CREDENTIAL_LINK, require_approval=True),
            base=passkey(),
        ),
        id="policies",
    ),
    # Recovery codes are always passable; a policy may name an action not protected yet.
    pytest.param(
        policies(
            ActionPolicy(Action.WAAS_RESHARE, (Method.RECOVERY_CODE,)), base=with_(**NO_METHOD)
        ),
        id="policy-recovery-codes-only",
    ),
]


@pytest.mark.parametrize("settings", ACCEPTED)
def test_validate_accepts(settings: Settings) -> None:
    assert violations_of(settings) == []


@pytest.mark.parametrize(
    ("origin", "rp_id"),
    [
        ("https://app.example.com", "example.com"),
        ("https://example.com", "example.com"),
        ("https://example.com:8443", "example.com"),
        ("https://a.b.example.com", "example.com"),
        ("http://localhost:5173", "localhost"),
        ("http://localhost:5173", ""),
        ("https://app.example.com", ""),
    ],
)
def test_origin_problem_accepts(origin: str, rp_id: str) -> None:
    assert origin_problem(origin, rp_id) is None


# --- storage document ----------------------------------------------------------------


def test_document_round_trip() -> None:
    settings = Settings(
        environment_id=ENV,
        totp_enabled=True,
        passkey_enabled=False,
        require_at_onboarding=True,
        session_mfa_enabled=True,
        action_methods=(Method.TOTP,),
        protected_actions=(Action.WAAS_SIGN, Action.WAAS_EXPORT),
        single_use_token_ttl=timedelta(seconds=90.5),
        multi_use_token_ttl=timedelta(minutes=30),
        totp=TotpSettings(issuer="Acme Wallet", skew_steps=0, max_devices=4),
        passkey=PasskeySettings(
            rp_id="example.com",
            rp_name="Acme",
            allowed_origins=("https://app.example.com", "https://example.com:8443"),
            user_verification=UserVerification.DISCOURAGED,
            attestation=Attestation.DIRECT,
        ),
        lockout=LockoutSettings(max_failed_attempts=9, lockout_duration=timedelta(hours=2)),
    )
    updated = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    # The document goes through JSON in PostgreSQL.
    document = json.loads(json.dumps(to_document(settings)))
    restored = from_document(ENV, document, revision=7, update_time=updated)
    assert restored == dataclasses.replace(settings, revision=7, update_time=updated)


def test_document_of_defaults_round_trips_and_empty_document_means_defaults() -> None:
    document = json.loads(json.dumps(to_document(DEFAULTS)))
    assert from_document(ENV, document, revision=0, update_time=None) == DEFAULTS
    assert from_document(ENV, {}, revision=0, update_time=None) == DEFAULTS


# What ``to_document`` wrote for the settings of ``test_document_round_trip`` before the
# document was derived from the dataclass fields (issue 18): stored documents look like
# this, and must keep reading, and being written, exactly so.
STORED_DOCUMENT: dict[str, Any] = {
    "totp_enabled": True,
    "passkey_enabled": False,
    "require_at_onboarding": True,
    "session_mfa_enabled": True,
    "action_methods": ["TOTP"],
    "protected_actions": ["WAAS_SIGN", "WAAS_EXPORT"],
    "single_use_token_ttl": 90.5,
    "multi_use_token_ttl": 1800.0,
    "totp": {"issuer": "Acme Wallet", "skew_steps": 0, "max_devices": 4},
    "passkey": {
        "rp_id": "example.com",
        "rp_name": "Acme",
        "allowed_origins": ["https://app.example.com", "https://example.com:8443"],
        "user_verification": "DISCOURAGED",
        "attestation": "DIRECT",
    },
    "lockout": {"max_failed_attempts": 9, "lockout_duration": 7200.0},
}
STORED_SETTINGS = Settings(
    environment_id=ENV,
    passkey_enabled=False,
    require_at_onboarding=True,
    session_mfa_enabled=True,
    action_methods=(Method.TOTP,),
    protected_actions=(Action.WAAS_SIGN, Action.WAAS_EXPORT),
    single_use_token_ttl=timedelta(seconds=90.5),
    multi_use_token_ttl=timedelta(minutes=30),
    totp=TotpSettings(issuer="Acme Wallet", skew_steps=0, max_devices=4),
    passkey=PasskeySettings(
        rp_id="example.com",
        rp_name="Acme",
        allowed_origins=("https://app.example.com", "https://example.com:8443"),
        user_verification=UserVerification.DISCOURAGED,
        attestation=Attestation.DIRECT,
    ),
    lockout=LockoutSettings(max_failed_attempts=9, lockout_duration=timedelta(hours=2)),
)


def test_action_policies_round_trip_through_the_document() -> None:
    settings = policies(
        ActionPolicy(Action.WAAS_EXPORT, (Method.PASSKEY,), True, timedelta(seconds=60)),
        ActionPolicy(Action.WAAS_SIGN),
        base=STORED_SETTINGS,
    )
    document = json.loads(json.dumps(to_document(settings)))
    assert document == STORED_DOCUMENT | {
        "action_policies": [
            {
                "action": "WAAS_EXPORT",
                "allowed_methods": ["PASSKEY"],
                "require_approval": True,
                "max_token_ttl": 60.0,
            },
            {
                "action": "WAAS_SIGN",
                "allowed_methods": [],
                "require_approval": False,
                "max_token_ttl": None,
            },
        ]
    }
    assert from_document(ENV, document, revision=0, update_time=None) == settings
    # Emptied again: the document is what it was before the field existed.
    assert to_document(with_(settings, action_policies=())) == STORED_DOCUMENT


def test_a_stored_document_reads_and_writes_as_before() -> None:
    assert to_document(STORED_SETTINGS) == STORED_DOCUMENT
    assert list(to_document(STORED_SETTINGS)) == list(STORED_DOCUMENT)  # same key order
    read = from_document(ENV, STORED_DOCUMENT, revision=3, update_time=None)
    assert read == dataclasses.replace(STORED_SETTINGS, revision=3)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        # An older document lacks later fields and whole sections: they keep defaults.
        ({"totp_enabled": False}, with_(totp_enabled=False)),
        ({"totp": {"issuer": "Old"}}, totp(issuer="Old")),
        ({"lockout": {"lockout_duration": 60}}, lockout(lockout_duration=timedelta(minutes=1))),
        # A duration stored as null reads as the default, as it always has.
        ({"single_use_token_ttl": None}, DEFAULTS),
        (
            {"passkey": {"user_verification": "PREFERRED"}},
            with_(passkey=PasskeySettings(user_verification=UserVerification.PREFERRED)),
        ),
        # Keys the code no longer knows are ignored.
        ({"totp_digits": 8, "totp": {"period": 60}}, DEFAULTS),
    ],
)
def test_an_older_document_reads_with_defaults(
    document: dict[str, Any], expected: Settings
) -> None:
    assert from_document(ENV, document, revision=0, update_time=None) == expected
