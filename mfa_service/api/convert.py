"""Proto <-> domain conversion, with request checks that name the offending field."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from google.protobuf import duration_pb2, timestamp_pb2

from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2 as pb
from mfa_service.domain.audit import AuditEvent, AuditEventType
from mfa_service.domain.devices import Device
from mfa_service.domain.model import Action, EnvironmentId, Method, Proof, UserId
from mfa_service.domain.settings import (
    TOTP_DIGITS,
    TOTP_PERIOD,
    UPDATABLE_PATHS,
    Attestation,
    LockoutSettings,
    PasskeySettings,
    Settings,
    TotpSettings,
    UserVerification,
)
from mfa_service.errors import InvalidArgument

MAX_ENVIRONMENT_ID = 128
MAX_USER_ID = 256

_E = TypeVar("_E", bound=enum.Enum)


def identifier(value: str, field: str, max_length: int) -> str:
    if not value:
        raise InvalidArgument.field(field, "required")
    if len(value) > max_length:
        raise InvalidArgument.field(field, f"at most {max_length} characters")
    if not value.isascii() or not value.isprintable() or value != value.strip():
        raise InvalidArgument.field(field, "printable ASCII without surrounding spaces")
    return value


def environment_id(value: str, field: str = "environment_id") -> EnvironmentId:
    return EnvironmentId(identifier(value, field, MAX_ENVIRONMENT_ID))


def user_id(value: str, field: str = "user_id") -> UserId:
    return UserId(identifier(value, field, MAX_USER_ID))


# --- enums: proto value NAME == PREFIX + domain member name -----------------------


def _to_domain(
    name_of: Callable[[Any], str], prefix: str, cls: type[_E], value: int, field: str
) -> _E:
    try:
        name = name_of(value)
    except ValueError:
        raise InvalidArgument.field(field, f"unknown value {value}") from None
    member = cls.__members__.get(name.removeprefix(prefix))
    if member is None:
        raise InvalidArgument.field(field, f"{name} is not allowed here")
    return member


def method_from_proto(value: int, field: str) -> Method:
    return _to_domain(pb.Method.Name, "METHOD_", Method, value, field)


def method_to_proto(method: Method) -> pb.Method.ValueType:
    return pb.Method.Value(f"METHOD_{method.name}")


def action_from_proto(value: int, field: str) -> Action:
    return _to_domain(pb.Action.Name, "ACTION_", Action, value, field)


def action_to_proto(action: Action) -> pb.Action.ValueType:
    return pb.Action.Value(f"ACTION_{action.name}")


def _each(values: Iterable[int], field: str, convert: Callable[[int, str], _E]) -> tuple[_E, ...]:
    return tuple(convert(v, f"{field}[{i}]") for i, v in enumerate(values))


# --- time ----------------------------------------------------------------------------


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(value: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


# google/protobuf/duration.proto: about +-10,000 years, nanos within a second.
_MAX_DURATION_SECONDS = 315_576_000_000
_MAX_DURATION_NANOS = 999_999_999


def duration_from_proto(value: duration_pb2.Duration, field: str) -> timedelta:
    """A valid Duration of whole seconds as a timedelta (int64 seconds can overflow
    timedelta). The settings' durations keep whole seconds (token lifetimes end on a
    JWT NumericDate): a fraction is refused, never silently dropped."""
    if abs(value.seconds) > _MAX_DURATION_SECONDS or abs(value.nanos) > _MAX_DURATION_NANOS:
        raise InvalidArgument.field(field, "not a valid duration")
    if value.nanos:
        raise InvalidArgument.field(field, "must be whole seconds (nanos 0)")
    return timedelta(seconds=value.seconds)


# --- settings ------------------------------------------------------------------------


def settings_to_proto(s: Settings) -> pb.Settings:
    return pb.Settings(
        environment_id=s.environment_id,
        totp_enabled=s.totp_enabled,
        passkey_enabled=s.passkey_enabled,
        require_at_onboarding=s.require_at_onboarding,
        session_mfa_enabled=s.session_mfa_enabled,
        action_methods=[method_to_proto(m) for m in s.action_methods],
        protected_actions=[action_to_proto(a) for a in s.protected_actions],
        single_use_token_ttl=duration(s.single_use_token_ttl),
        multi_use_token_ttl=duration(s.multi_use_token_ttl),
        totp=pb.TotpSettings(
            issuer=s.totp.issuer,
            skew_steps=s.totp.skew_steps,
            max_devices=s.totp.max_devices,
            digits=TOTP_DIGITS,
            period=duration(TOTP_PERIOD),
        ),
        passkey=pb.PasskeySettings(
            rp_id=s.passkey.rp_id,
            rp_name=s.passkey.rp_name,
            allowed_origins=list(s.passkey.allowed_origins),
            user_verification=pb.UserVerification.Value(
                f"USER_VERIFICATION_{s.passkey.user_verification.name}"
            ),
            attestation=pb.Attestation.Value(f"ATTESTATION_{s.passkey.attestation.name}"),
        ),
        lockout=pb.LockoutSettings(
            max_failed_attempts=s.lockout.max_failed_attempts,
            lockout_duration=duration(s.lockout.lockout_duration),
        ),
        update_time=timestamp(s.update_time),
        revision=s.revision,
    )


_F = "settings."
# One reader per leaf path: proto Settings -> the domain value of that field.
_LEAVES: dict[str, Callable[[pb.Settings], Any]] = {
    "totp_enabled": lambda m: m.totp_enabled,
    "passkey_enabled": lambda m: m.passkey_enabled,
    "require_at_onboarding": lambda m: m.require_at_onboarding,
    "session_mfa_enabled": lambda m: m.session_mfa_enabled,
    "action_methods": lambda m: _each(m.action_methods, _F + "action_methods", method_from_proto),
    "protected_actions": lambda m: _each(
        m.protected_actions, _F + "protected_actions", action_from_proto
    ),
    "single_use_token_ttl": lambda m: duration_from_proto(
        m.single_use_token_ttl, _F + "single_use_token_ttl"
    ),
    "multi_use_token_ttl": lambda m: duration_from_proto(
        m.multi_use_token_ttl, _F + "multi_use_token_ttl"
    ),
    "totp.issuer": lambda m: m.totp.issuer,
    "totp.skew_steps": lambda m: m.totp.skew_steps,
    "totp.max_devices": lambda m: m.totp.max_devices,
    "passkey.rp_id": lambda m: m.passkey.rp_id,
    "passkey.rp_name": lambda m: m.passkey.rp_name,
    "passkey.allowed_origins": lambda m: tuple(m.passkey.allowed_origins),
    "passkey.user_verification": lambda m: _to_domain(
        pb.UserVerification.Name,
        "USER_VERIFICATION_",
        UserVerification,
        m.passkey.user_verification,
        _F + "passkey.user_verification",
    ),
    "passkey.attestation": lambda m: _to_domain(
        pb.Attestation.Name,
        "ATTESTATION_",
        Attestation,
        m.passkey.attestation,
        _F + "passkey.attestation",
    ),
    "lockout.max_failed_attempts": lambda m: m.lockout.max_failed_attempts,
    "lockout.lockout_duration": lambda m: duration_from_proto(
        m.lockout.lockout_duration, _F + "lockout.lockout_duration"
    ),
}
_SECTIONS: dict[str, type[Any]] = {
    "totp": TotpSettings,
    "passkey": PasskeySettings,
    "lockout": LockoutSettings,
}
_READ_ONLY_PATHS = ("environment_id", "update_time", "revision", "totp.digits", "totp.period")
# More than a mask needs: every updatable path once is 21 (UPDATABLE_PATHS).
MAX_MASK_PATHS = 64
MAX_MASK_PATH = 64  # the longest path, "lockout.max_failed_attempts", has 27 characters


def settings_changes(message: pb.Settings, paths: Sequence[str]) -> dict[str, Any]:
    """The domain values of the fields an update mask names (AIP-134 semantics).

    ``*`` names every updatable field. A section path ("totp") replaces the whole
    section; a leaf path ("totp.issuer") one field. Unknown and output-only paths are
    refused, naming ``update_mask.paths[i]``.
    """
    if not paths:
        raise InvalidArgument.field("update_mask", 'required: name the fields to change, or "*"')
    return _values(message, _mask_paths(paths))


def new_settings_fields(message: pb.Settings, paths: Sequence[str]) -> dict[str, Any]:
    """The fields CreateEnvironment takes from ``message``; the others keep the defaults.

    With a mask, the fields it names (as for UpdateSettings: ``["totp_enabled"]`` with
    ``totp_enabled`` false creates an environment without TOTP). Without one, every
    field set to a non-zero value (proto3 cannot tell an unset bool from false).
    """
    return _values(message, _mask_paths(paths) if paths else _set_paths(message))


def _mask_paths(paths: Sequence[str]) -> list[str]:
    """The updatable paths a field mask names, refusing any other, in order, once each."""
    if len(paths) > MAX_MASK_PATHS:
        raise InvalidArgument.field("update_mask.paths", f"at most {MAX_MASK_PATHS} paths")
    selected: list[str] = []
    for i, raw in enumerate(paths):
        if len(raw) > MAX_MASK_PATH:
            raise InvalidArgument.field(
                f"update_mask.paths[{i}]", f"at most {MAX_MASK_PATH} characters"
            )
        path = raw.strip()
        if path == "*":
            selected.extend(p for p in UPDATABLE_PATHS if "." not in p)
        elif path in _READ_ONLY_PATHS:
            raise InvalidArgument.field(f"update_mask.paths[{i}]", f"{path} cannot be changed")
        elif path in UPDATABLE_PATHS:
            selected.append(path)
        else:
            raise InvalidArgument.field(
                f"update_mask.paths[{i}]", f"{path!r} is not a field of Settings"
            )
    return list(dict.fromkeys(selected))


def _set_paths(message: pb.Settings) -> list[str]:
    """The leaf paths of ``message`` set to a non-zero value (a message field: present)."""
    top = {f.name for f, _ in message.ListFields()}
    paths = []
    for leaf in _LEAVES:
        section, _, sub = leaf.partition(".")
        if section not in top:
            continue
        if sub and sub not in {f.name for f, _ in getattr(message, section).ListFields()}:
            continue
        paths.append(leaf)
    return paths


def _values(message: pb.Settings, paths: Sequence[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for path in paths:
        if path in _SECTIONS:
            prefix = path + "."
            changes[path] = _SECTIONS[path](
                **{
                    leaf.removeprefix(prefix): read(message)
                    for leaf, read in _LEAVES.items()
                    if leaf.startswith(prefix)
                }
            )
        else:
            changes[path] = _LEAVES[path](message)
    return changes


# --- ids, proofs, devices -------------------------------------------------------------

MAX_SESSION_ID = 256
MAX_ALIAS = 64
MAX_PROOF = 64 * 1024  # passkey assertions are a few KiB
MAX_ACTION_TOKEN = 4096  # an action token is about 600 characters


def uuid_field(value: str, field: str) -> UUID:
    if not value:
        raise InvalidArgument.field(field, "required")
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgument.field(field, "not a valid id") from None


def optional_uuid(value: str, field: str) -> UUID | None:
    return uuid_field(value, field) if value else None


def session_id(value: str, field: str = "session_id") -> str:
    return identifier(value, field, MAX_SESSION_ID)


def action_token(value: str, field: str = "action_token") -> str:
    """An action token as given (empty: none), refused when too long to be one."""
    if len(value) > MAX_ACTION_TOKEN:
        raise InvalidArgument.field(field, f"at most {MAX_ACTION_TOKEN} characters")
    return value


def alias(value: str, field: str = "alias") -> str:
    if len(value) > MAX_ALIAS:
        raise InvalidArgument.field(field, f"at most {MAX_ALIAS} characters")
    if not value.isprintable():
        raise InvalidArgument.field(field, "must not contain control characters")
    return value.strip()


def proof_from_proto(message: pb.Proof, field: str = "proof") -> Proof:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument.field(
            field, "required: totp_code, passkey_assertion_json or recovery_code"
        )
    value: str = getattr(message, kind)
    if not value:
        raise InvalidArgument.field(f"{field}.{kind}", "required")
    if len(value) > MAX_PROOF:
        raise InvalidArgument.field(f"{field}.{kind}", f"at most {MAX_PROOF} characters")
    method = {
        "totp_code": Method.TOTP,
        "passkey_assertion_json": Method.PASSKEY,
        "recovery_code": Method.RECOVERY_CODE,
    }[kind]
    return Proof(method=method, value=value)


def device_to_proto(device: Device) -> pb.Device:
    message = pb.Device(
        device_id=str(device.id),
        method=method_to_proto(device.method),
        alias=device.alias,
        created_at=timestamp(device.created_at),
        last_used_at=timestamp(device.last_used_at),
        is_default=device.is_default,
    )
    if device.passkey is not None:
        message.passkey_aaguid = device.passkey.aaguid
        message.passkey_backup_eligible = device.passkey.backup_eligible
        message.passkey_backed_up = device.passkey.backed_up
    return message


def payload_digest(value: bytes, field: str = "payload_digest") -> bytes | None:
    """Optional SHA-256 of the exact payload: empty, or exactly 32 bytes."""
    if not value:
        return None
    if len(value) != 32:
        raise InvalidArgument.field(field, "must be a SHA-256 digest (32 bytes)")
    return bytes(value)


def actions(values: Iterable[int], field: str = "actions") -> tuple[Action, ...]:
    converted = _each(values, field, action_from_proto)
    if not converted:
        raise InvalidArgument.field(field, "at least one action is required")
    if len(set(converted)) != len(converted):
        raise InvalidArgument.field(field, "must not list an action twice")
    return converted


def audit_event_type_from_proto(value: int, field: str) -> AuditEventType:
    return _to_domain(
        admin_pb.AuditEventType.Name, "AUDIT_EVENT_TYPE_", AuditEventType, value, field
    )


def audit_event_to_proto(event_id: str, event: AuditEvent) -> admin_pb.AuditEvent:
    return admin_pb.AuditEvent(
        event_id=event_id,
        type=admin_pb.AuditEventType.Value(f"AUDIT_EVENT_TYPE_{event.type.name}"),
        environment_id=event.environment_id,
        user_id=event.user_id,
        occurred_at=timestamp(event.occurred_at),
        method=method_to_proto(event.method) if event.method else pb.METHOD_UNSPECIFIED,
        device_id=event.device_id,
        caller=event.context.caller,
        request_id=event.context.request_id,
        details=dict(event.details),
    )
