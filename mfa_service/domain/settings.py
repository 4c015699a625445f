"""Per-environment MFA settings: defaults, field-mask updates and validation."""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

from mfa_service.domain.model import CONFIGURABLE_ACTIONS, Action, EnvironmentId, Method
from mfa_service.errors import FieldViolation, InvalidArgument

# Authenticator apps honour nothing else (Google Authenticator hard-codes these).
TOTP_DIGITS = 6
TOTP_PERIOD = timedelta(seconds=30)

SINGLE_USE_TTL_RANGE = (timedelta(seconds=10), timedelta(minutes=5))  # ASVS 9.2.1
MULTI_USE_TTL_RANGE = (timedelta(seconds=10), timedelta(hours=1))  # NIST 800-63B-4: 1 h idle
LOCKOUT_DURATION_RANGE = (timedelta(minutes=1), timedelta(hours=24))
MAX_TOKEN_TTL_RANGE = (timedelta(seconds=10), timedelta(hours=1))  # under MULTI_USE_TTL_RANGE
MAX_FAILED_ATTEMPTS_RANGE = (1, 100)  # NIST 800-63B §3.2.2 caps it at 100
MAX_TOTP_DEVICES_RANGE = (1, 10)
MAX_ISSUER_LENGTH = 64
MAX_ORIGINS = 20
# "https://", the longest DNS name (253) and ":65535".
MAX_ORIGIN_LENGTH = len("https://") + 253 + len(":65535")

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# The development name: valid as rp_id and origin host although no registry holds it.
LOCALHOST = "localhost"


class UserVerification(enum.Enum):
    """WebAuthn §5.8.6; values are the strings WebAuthn uses."""

    REQUIRED = "required"
    PREFERRED = "preferred"
    DISCOURAGED = "discouraged"


class Attestation(enum.Enum):
    """WebAuthn §5.4.7; values are the strings WebAuthn uses."""

    NONE = "none"
    INDIRECT = "indirect"
    DIRECT = "direct"
    ENTERPRISE = "enterprise"


@dataclass(frozen=True, slots=True)
class TotpSettings:
    issuer: str = "MFA"
    skew_steps: int = 1
    max_devices: int = 1


@dataclass(frozen=True, slots=True)
class PasskeySettings:
    rp_id: str = ""
    rp_name: str = ""
    allowed_origins: tuple[str, ...] = ()
    user_verification: UserVerification = UserVerification.REQUIRED
    attestation: Attestation = Attestation.NONE


@dataclass(frozen=True, slots=True)
class LockoutSettings:
    max_failed_attempts: int = 5
    lockout_duration: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    """One action's policy (DESIGN §3e); ``domain.policy`` applies it.

    ``allowed_methods`` empty: the environment's action methods (and recovery codes), as
    for an action without a policy; listed: exactly these (recovery codes only if
    listed). ``max_token_ttl`` (None: none) caps the lifetime of its tokens.
    """

    action: Action
    allowed_methods: tuple[Method, ...] = ()
    require_approval: bool = False
    max_token_ttl: timedelta | None = None


# Fields added to ``Settings`` after its stored document was pinned (issue 18) are
# written only when they differ from their default: the document of settings that do not
# use them stays, byte for byte, what earlier releases wrote and read.
_WRITTEN_WHEN_SET = {"written_when_set": True}


@dataclass(frozen=True, slots=True)
class Settings:
    """One environment's configuration. ``Settings(environment_id=...)`` is the default."""

    environment_id: EnvironmentId
    totp_enabled: bool = True
    passkey_enabled: bool = True
    require_at_onboarding: bool = False
    session_mfa_enabled: bool = False
    action_methods: tuple[Method, ...] = (Method.TOTP, Method.PASSKEY)
    protected_actions: tuple[Action, ...] = ()
    single_use_token_ttl: timedelta = timedelta(minutes=5)
    multi_use_token_ttl: timedelta = timedelta(minutes=10)
    totp: TotpSettings = field(default_factory=TotpSettings)
    passkey: PasskeySettings = field(default_factory=PasskeySettings)
    lockout: LockoutSettings = field(default_factory=LockoutSettings)
    # At most one per action; an action without one follows the fields above.
    action_policies: tuple[ActionPolicy, ...] = field(default=(), metadata=_WRITTEN_WHEN_SET)
    # Output only.
    revision: int = 0
    update_time: datetime | None = None

    @property
    def enabled_methods(self) -> frozenset[Method]:
        enabled = set()
        if self.totp_enabled:
            enabled.add(Method.TOTP)
        if self.passkey_enabled:
            enabled.add(Method.PASSKEY)
        return frozenset(enabled)

    @property
    def usable_methods(self) -> frozenset[Method]:
        """Enabled methods a user can actually pass: passkeys only once configured."""
        configured = bool(self.passkey.rp_id and self.passkey.allowed_origins)
        return self.enabled_methods - (frozenset() if configured else {Method.PASSKEY})

    @property
    def rp_name(self) -> str:
        return self.passkey.rp_name or self.totp.issuer

    def policy_for(self, action: Action) -> ActionPolicy | None:
        """The action's policy, if it has one."""
        for candidate in self.action_policies:
            if candidate.action is action:
                return candidate
        return None


#: The sections of ``Settings``: each a dataclass of its own, stored and sent nested.
SECTIONS: dict[str, type[Any]] = {
    "totp": TotpSettings,
    "passkey": PasskeySettings,
    "lockout": LockoutSettings,
}
_OUTPUT_ONLY = frozenset({"environment_id", "revision", "update_time"})


def _field_names(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


#: Every path an update mask may name, in declaration order.
UPDATABLE_PATHS: tuple[str, ...] = tuple(
    path
    for name in _field_names(Settings)
    if name not in _OUTPUT_ONLY
    for path in (
        [name, *(f"{name}.{sub}" for sub in _field_names(SECTIONS[name]))]
        if name in SECTIONS
        else [name]
    )
)
TOP_LEVEL_PATHS: tuple[str, ...] = tuple(p for p in UPDATABLE_PATHS if "." not in p)


def apply_update(current: Settings, changes: Mapping[str, Any]) -> Settings:
    """Return ``current`` with each path of ``changes`` set to its value.

    Paths are those of ``UPDATABLE_PATHS`` ("lockout" replaces the whole section,
    "lockout.max_failed_attempts" one field). The result is not validated here.
    """
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        if path not in UPDATABLE_PATHS:
            raise InvalidArgument.field(path, "not a settings field that can be updated")
        section, _, sub = path.partition(".")
        if sub:
            nested.setdefault(section, {})[sub] = value
        else:
            top[section] = value
    for section, fields in nested.items():
        base = top.get(section, getattr(current, section))
        top[section] = dataclasses.replace(base, **fields)
    return dataclasses.replace(current, **top)


def validate(settings: Settings) -> None:
    """Refuse an invalid configuration, naming every offending field."""
    violations = list(_violations(settings))
    if violations:
        raise InvalidArgument(violations)


def _violations(s: Settings) -> Iterable[FieldViolation]:
    enabled = s.enabled_methods
    no_method = (
        "needs a method users can pass: totp_enabled, or passkey_enabled with "
        "passkey.rp_id and passkey.allowed_origins"
    )
    if not s.usable_methods:
        if s.session_mfa_enabled:
            yield FieldViolation("session_mfa_enabled", no_method)
        if s.require_at_onboarding:
            yield FieldViolation("require_at_onboarding", no_method)
        if s.protected_actions:
            yield FieldViolation("protected_actions", no_method)

    yield from _distinct("action_methods", s.action_methods)
    for i, method in enumerate(s.action_methods):
        if method is Method.RECOVERY_CODE:
            yield FieldViolation(
                f"action_methods[{i}]",
                "recovery codes are the fallback everywhere and are not configured here",
            )
        elif method not in enabled:
            yield FieldViolation(
                f"action_methods[{i}]", f"{method.name} is not enabled for this environment"
            )
    if s.protected_actions and not s.action_methods:
        yield FieldViolation("action_methods", "protected actions need at least one method")
    elif s.protected_actions and not set(s.action_methods) & s.usable_methods:
        yield FieldViolation(
            "action_methods",
            "protected actions need a method users can pass: passkeys need passkey.rp_id "
            "and passkey.allowed_origins",
        )

    yield from _distinct("protected_actions", s.protected_actions)
    for i, action in enumerate(s.protected_actions):
        if action not in CONFIGURABLE_ACTIONS:
            yield FieldViolation(
                f"protected_actions[{i}]", f"{action.name} is always protected; do not list it"
            )

    yield from _in_range("single_use_token_ttl", s.single_use_token_ttl, SINGLE_USE_TTL_RANGE)
    yield from _in_range("multi_use_token_ttl", s.multi_use_token_ttl, MULTI_USE_TTL_RANGE)

    issuer = s.totp.issuer
    if not issuer.strip():
        yield FieldViolation("totp.issuer", "must not be empty")
    elif len(issuer) > MAX_ISSUER_LENGTH:
        yield FieldViolation("totp.issuer", f"at most {MAX_ISSUER_LENGTH} characters")
    elif ":" in issuer or not issuer.isprintable():
        # Key-Uri-Format: the label is "issuer:account"; a colon would split it wrongly.
        yield FieldViolation("totp.issuer", 'must not contain ":" or control characters')
    if s.totp.skew_steps not in (0, 1):
        # RFC 6238 §5.2 recommends at most one step of network delay.
        yield FieldViolation("totp.skew_steps", "must be 0 or 1")
    yield from _in_range("totp.max_devices", s.totp.max_devices, MAX_TOTP_DEVICES_RANGE)

    yield from _passkey_violations(s.passkey)

    yield from _in_range(
        "lockout.max_failed_attempts", s.lockout.max_failed_attempts, MAX_FAILED_ATTEMPTS_RANGE
    )
    yield from _in_range(
        "lockout.lockout_duration", s.lockout.lockout_duration, LOCKOUT_DURATION_RANGE
    )

    yield from _policy_violations(s)


def _policy_violations(s: Settings) -> Iterable[FieldViolation]:
    passable = s.usable_methods | {Method.RECOVERY_CODE}
    seen: set[Action] = set()
    for i, p in enumerate(s.action_policies):
        at = f"action_policies[{i}]"
        if p.action in seen:
            yield FieldViolation(
                f"{at}.action", f"{p.action.name} has a policy already: one policy per action"
            )
        seen.add(p.action)
        yield from _distinct(f"{at}.allowed_methods", p.allowed_methods)
        for j, method in enumerate(p.allowed_methods):
            if method is not Method.RECOVERY_CODE and method not in s.enabled_methods:
                yield FieldViolation(
                    f"{at}.allowed_methods[{j}]",
                    f"{method.name} is not enabled for this environment",
                )
        if p.allowed_methods and not set(p.allowed_methods) & passable:
            yield FieldViolation(
                f"{at}.allowed_methods",
                "needs a method users can pass: passkeys need passkey.rp_id and "
                "passkey.allowed_origins",
            )
        if p.max_token_ttl is not None:
            yield from _in_range(f"{at}.max_token_ttl", p.max_token_ttl, MAX_TOKEN_TTL_RANGE)


def _passkey_violations(p: PasskeySettings) -> Iterable[FieldViolation]:
    if p.rp_id and (problem := rp_id_problem(p.rp_id)):
        yield FieldViolation("passkey.rp_id", problem)
    if len(p.rp_name) > MAX_ISSUER_LENGTH:
        yield FieldViolation("passkey.rp_name", f"at most {MAX_ISSUER_LENGTH} characters")
    elif not p.rp_name.isprintable():
        yield FieldViolation("passkey.rp_name", "must not contain control characters")
    if p.rp_id and not p.allowed_origins:
        yield FieldViolation("passkey.allowed_origins", "at least one origin is needed with rp_id")
    if p.allowed_origins and not p.rp_id:
        yield FieldViolation("passkey.rp_id", "required when allowed_origins are set")
    if len(p.allowed_origins) > MAX_ORIGINS:
        yield FieldViolation("passkey.allowed_origins", f"at most {MAX_ORIGINS} origins")
    yield from _distinct("passkey.allowed_origins", p.allowed_origins)
    for i, origin in enumerate(p.allowed_origins):
        if len(origin) > MAX_ORIGIN_LENGTH:
            yield FieldViolation(
                f"passkey.allowed_origins[{i}]", f"at most {MAX_ORIGIN_LENGTH} characters"
            )
            continue
        problem = origin_problem(origin, p.rp_id)
        if problem:
            yield FieldViolation(f"passkey.allowed_origins[{i}]", problem)


@cache
def _public_suffix_list() -> PublicSuffixList:
    """The Public Suffix List as the publicsuffixlist package bundles it (its ICANN and
    private sections), read once; never fetched at run time (an upgrade of the package
    brings a newer list)."""
    return PublicSuffixList()


def is_public_suffix(name: str) -> bool:
    """``com``, ``co.uk``, ``github.io``: a name under which anyone registers their own.
    Unlisted top-level names (``test``, ``internal``) count as public too, as browsers
    treat them; ``localhost`` is allowed for development."""
    return name != LOCALHOST and bool(_public_suffix_list().is_public(name))


def _is_host_name(name: str) -> bool:
    """Lowercase LDH labels of 1-63 characters (RFC 1123), at most 253 in all, and not
    an IPv4 address: no wildcard, no empty label, no trailing dot."""
    if len(name) > 253:
        return False
    labels = name.split(".")
    return all(_HOST_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def rp_id_problem(rp_id: str) -> str | None:
    """Why ``rp_id`` cannot be a WebAuthn RP ID, or None. §5.1.2: a valid domain string;
    a public suffix would let every site under it answer for this relying party."""
    if not _is_host_name(rp_id):
        return "must be a domain name such as example.com"
    if is_public_suffix(rp_id):
        return "is a public suffix: use a domain registered under it, such as example.com"
    return None


def origin_problem(origin: str, rp_id: str) -> str | None:
    """Why ``origin`` cannot be an allowed WebAuthn origin for ``rp_id``, or None.

    WebAuthn §13.4.9: the origin must be exactly scheme://host[:port], its host a domain
    name (no wildcard), not a public suffix, the RP ID or a subdomain of it, and https
    unless the host is localhost.
    """
    if not origin.isprintable():
        return "not a valid origin"
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return "not a valid origin"
    host = parts.hostname or ""
    if (
        parts.scheme not in ("https", "http")
        or not host
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
        or origin.endswith(":")
    ):
        return "must be exactly scheme://host[:port], e.g. https://app.example.com"
    default_port = (parts.scheme, port) in (("https", 443), ("http", 80))
    if default_port or origin != f"{parts.scheme}://{host}" + (
        f":{port}" if port is not None else ""
    ):
        # HTML origin serialization (what clientDataJSON carries) omits a default port.
        return "must be written in lowercase with no default port"
    if parts.scheme == "http" and host != LOCALHOST:
        return "must use https (http only for localhost)"
    if not _is_host_name(host):
        return "host must be a domain name (no wildcard, no IP address)"
    if is_public_suffix(host):
        return "host is a public suffix"
    if rp_id and host != rp_id and not host.endswith("." + rp_id):
        return f"host must be {rp_id} or a subdomain of it"
    return None


def _distinct(path: str, values: tuple[Any, ...]) -> Iterable[FieldViolation]:
    if len(set(values)) != len(values):
        yield FieldViolation(path, "must not list a value twice")


_Bound = TypeVar("_Bound", int, timedelta)


def _in_range(path: str, value: _Bound, bounds: tuple[_Bound, _Bound]) -> Iterable[FieldViolation]:
    low, high = bounds
    if not low <= value <= high:
        yield FieldViolation(path, f"must be between {_show(low)} and {_show(high)}")


def _show(value: int | timedelta) -> str:
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        if seconds % 3600 == 0:
            return f"{seconds // 3600}h"
        if seconds % 60 == 0:
            return f"{seconds // 60}m"
        return f"{seconds}s"
    return str(value)


# --- the stored document: derived from the fields, one codec per type ------------------
#
# Every field but the output-only ones is stored under its own name, a section as a
# nested object: enums by member name, durations as seconds (a float), tuples as lists
# (of objects, for a tuple of sections such as ``action_policies``), an optional value
# absent as null. A field missing from an older document keeps its default; a duration
# stored as null too. A field added later (``_WRITTEN_WHEN_SET``) is left out while it
# holds its default. Keys the code does not know are ignored.


@cache
def field_kinds(cls: type[Any]) -> tuple[tuple[str, Any], ...]:
    """(name, type) of each field of ``cls`` a caller sets (the output-only ones left
    out), in declaration order: what the document, the proto conversion and the update
    mask all walk."""
    hints = typing.get_type_hints(cls)
    return tuple((n, hints[n]) for n in _field_names(cls) if n not in _OUTPUT_ONLY)


def is_section(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def optional_of(kind: Any) -> Any | None:
    """``X`` for a field of type ``X | None``, else None."""
    if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
        [inner] = [a for a in typing.get_args(kind) if a is not type(None)]
        return inner
    return None


@cache
def _written_when_set(cls: type[Any]) -> dict[str, Any]:
    """The default of each field of ``cls`` left out of the document while it holds it."""
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.metadata.get("written_when_set")
    }


def _encode(kind: Any, value: Any) -> Any:
    if is_section(kind):
        sparse = _written_when_set(kind)
        return {
            name: _encode(sub, getattr(value, name))
            for name, sub in field_kinds(kind)
            if name not in sparse or getattr(value, name) != sparse[name]
        }
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        return [_encode(element, v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _decode(kind: Any, stored: Any, default: Any) -> Any:
    if is_section(kind):
        # An element of a tuple of sections has no default: it is made of what is stored.
        read = {
            name: _decode(sub, stored[name], getattr(default, name, None))
            for name, sub in field_kinds(kind)
            if name in stored
        }
        return kind(**read) if default is None else dataclasses.replace(default, **read)
    if (inner := optional_of(kind)) is not None:
        return None if stored is None else _decode(inner, stored, default)
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        return tuple(_decode(element, v, None) for v in stored)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind[stored]
    if kind is timedelta:
        return default if stored is None else timedelta(seconds=float(stored))
    return stored


def to_document(s: Settings) -> dict[str, Any]:
    """The JSON document stored for ``s`` (enums by name, durations in seconds)."""
    document: dict[str, Any] = _encode(Settings, s)
    return document


def from_document(
    environment_id: EnvironmentId,
    doc: Mapping[str, Any],
    *,
    revision: int,
    update_time: datetime | None,
) -> Settings:
    """Inverse of ``to_document``; fields missing from an older document keep defaults."""
    read: Settings = _decode(Settings, doc, Settings(environment_id=environment_id))
    return dataclasses.replace(read, revision=revision, update_time=update_time)


def changed_paths(before: Settings, after: Settings) -> list[str]:
    """The leaf paths whose values differ, for the audit log."""
    changed = []
    for path in UPDATABLE_PATHS:
        section, _, sub = path.partition(".")
        if section in SECTIONS and not sub:
            continue
        old = getattr(getattr(before, section), sub) if sub else getattr(before, section)
        new = getattr(getattr(after, section), sub) if sub else getattr(after, section)
        if old != new:
            changed.append(path)
    return changed
