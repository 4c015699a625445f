"""Proto <-> domain conversion, with request checks that name the offending field."""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from google.protobuf import duration_pb2, timestamp_pb2

from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2 as pb
from mfa_service.domain import approvals, events
from mfa_service.domain.audit import AuditEvent, AuditEventType
from mfa_service.domain.devices import Device
from mfa_service.domain.model import Action, EnvironmentId, Method, Proof, UserId
from mfa_service.domain.settings import (
    SECTIONS,
    TOTP_DIGITS,
    TOTP_PERIOD,
    UPDATABLE_PATHS,
    Attestation,
    Settings,
    UserVerification,
    field_kinds,
    is_section,
    optional_of,
)
from mfa_service.domain.webhooks import Webhook, WebhookFormat
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


def instant(message: Any, field: str) -> datetime | None:
    """``message.<field>``, a Timestamp, as an aware datetime; None when not set. Outside
    Timestamp's range (years 1 to 9999, nanos under a second) is refused naming it."""
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 10**9):
        raise InvalidArgument.field(field, "must be a time from year 1 to 9999")
    return value.ToDatetime(tzinfo=UTC)


# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


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


# The settings' proto messages mirror the domain dataclasses field by field (same names,
# a section's message named as its class); both conversions walk ``field_kinds``.
# Each enum the settings hold, with the proto enum and the prefix of its value names.
_PROTO_ENUMS: dict[type[enum.Enum], tuple[Any, str]] = {
    Method: (pb.Method, "METHOD_"),
    Action: (pb.Action, "ACTION_"),
    UserVerification: (pb.UserVerification, "USER_VERIFICATION_"),
    Attestation: (pb.Attestation, "ATTESTATION_"),
}


def _to_proto(kind: Any, value: Any) -> Any:
    if is_section(kind):
        message = getattr(pb, kind.__name__)
        return message(
            **{
                n: _to_proto(sub, getattr(value, n))
                for n, sub in field_kinds(kind)
                if getattr(value, n) is not None  # an optional field left out
            }
        )
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        return [_to_proto(element, v) for v in value]
    if isinstance(value, enum.Enum):
        proto_enum, prefix = _PROTO_ENUMS[type(value)]
        return proto_enum.Value(prefix + value.name)
    if isinstance(value, timedelta):
        return duration(value)
    return value


def _from_proto(kind: Any, value: Any, field: str) -> Any:
    if is_section(kind):  # an element of a repeated message (action_policies)
        return kind(
            **{
                n: _from_proto(sub, getattr(value, n), f"{field}.{n}")
                for n, sub in field_kinds(kind)
                if optional_of(sub) is None or value.HasField(n)
            }
        )
    if (inner := optional_of(kind)) is not None:
        kind = inner
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        return tuple(_from_proto(element, v, f"{field}[{i}]") for i, v in enumerate(value))
    if kind in _PROTO_ENUMS:
        proto_enum, prefix = _PROTO_ENUMS[kind]
        return _to_domain(proto_enum.Name, prefix, kind, value, field)
    if kind is timedelta:
        return duration_from_proto(value, field)
    return value


def settings_to_proto(s: Settings) -> pb.Settings:
    message: pb.Settings = _to_proto(Settings, s)
    message.environment_id = s.environment_id
    message.revision = s.revision
    if s.update_time is not None:
        message.update_time.FromDatetime(s.update_time)
    # Output only: what authenticator apps honour (domain.settings).
    message.totp.digits = TOTP_DIGITS
    message.totp.period.CopyFrom(duration(TOTP_PERIOD))
    return message


def _leaf_reader(path: str, kind: Any) -> Callable[[pb.Settings], Any]:
    section, _, sub = path.partition(".")

    def read(message: pb.Settings) -> Any:
        value = getattr(message, section)
        return _from_proto(kind, getattr(value, sub) if sub else value, _F + path)

    return read


def _leaves() -> dict[str, Callable[[pb.Settings], Any]]:
    leaves = {}
    for name, kind in field_kinds(Settings):
        if is_section(kind):
            for sub, sub_kind in field_kinds(kind):
                leaves[f"{name}.{sub}"] = _leaf_reader(f"{name}.{sub}", sub_kind)
        else:
            leaves[name] = _leaf_reader(name, kind)
    return leaves


_F = "settings."
# One reader per leaf path (every one of UPDATABLE_PATHS but the sections): proto
# Settings -> the domain value of that field.
_LEAVES = _leaves()
_READ_ONLY_PATHS = ("environment_id", "update_time", "revision", "totp.digits", "totp.period")
# More than a mask needs: every updatable path once is 22 (UPDATABLE_PATHS).
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
        if path in SECTIONS:
            prefix = path + "."
            changes[path] = SECTIONS[path](
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
MAX_ACTION_TOKEN = 8192  # about 600 characters; with an approval and its evidence, up to 4 KiB


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
        message.passkey_public_key = device.passkey.public_key
    return message


def payload_digest(value: bytes, field: str = "payload_digest") -> bytes | None:
    """Optional SHA-256 of the exact payload: empty, or exactly 32 bytes."""
    if not value:
        return None
    if len(value) != 32:
        raise InvalidArgument.field(field, "must be a SHA-256 digest (32 bytes)")
    return bytes(value)


def actions(
    values: Iterable[int], field: str = "actions", *, required: bool = True
) -> tuple[Action, ...]:
    converted = _each(values, field, action_from_proto)
    if not converted and required:
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
        notify_user=events.notify_user(event),
        client_ip=event.context.client_ip or "",
        client_user_agent=event.context.client_user_agent or "",
    )


def approval_from_proto(message: pb.Approval, field: str = "approval") -> approvals.Approval:
    """What the user approves (DESIGN §3d); every part checked, naming ``field.part``."""
    session = message.session_id
    return approvals.approval(
        actions(message.actions, f"{field}.actions"),
        bytes(message.payload_digest),
        message.display_text,
        single_use=message.single_use,
        session_id=session_id(session, f"{field}.session_id") if session else None,
        field=field,
    )


# --- webhooks ----------------------------------------------------------------------------


def webhook_format_from_proto(value: int, field: str = "format") -> WebhookFormat:
    """WEBHOOK_FORMAT_UNSPECIFIED (left out) is the default, Standard Webhooks."""
    if value == admin_pb.WEBHOOK_FORMAT_UNSPECIFIED:
        return WebhookFormat.STANDARD_WEBHOOKS
    return _to_domain(admin_pb.WebhookFormat.Name, "WEBHOOK_FORMAT_", WebhookFormat, value, field)


def webhook_to_proto(webhook: Webhook) -> admin_pb.Webhook:
    state = webhook.state
    return admin_pb.Webhook(
        webhook_id=str(webhook.id),
        environment_id=webhook.environment_id,
        url=webhook.url,
        event_types=[
            admin_pb.AuditEventType.Value(f"AUDIT_EVENT_TYPE_{t.name}") for t in webhook.event_types
        ],
        format=admin_pb.WebhookFormat.Value(f"WEBHOOK_FORMAT_{webhook.format.name}"),
        create_time=timestamp(webhook.created_at),
        last_attempt_time=timestamp(state.last_attempt_at),
        last_status_code=state.last_status_code or 0,
        last_error=state.last_error or "",
        last_success_time=timestamp(state.last_success_at),
        attempts=state.attempts,
        next_attempt_time=timestamp(state.next_attempt_at),
        dropped_events=state.dropped_events,
    )
