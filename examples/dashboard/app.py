"""The dashboard backend: the Settings > Security page and a small JSON API over
mfa-service's ``AdminService`` (and the two ``MfaService`` reads of the user lookup).

An admin screen. There is no login here: a real dashboard sits behind the operator's
own login and talks to mfa-service under mutual TLS with a certificate whose identity
has the ``admin`` role (and ``mfa``, for the user lookup's ``GetStatus`` and
``ListDevices``). Every POST is checked by ``examples.web.security`` (same origin,
CSRF double submit); errors come back as ``examples.web`` JSON errors whose ``fields``
are keyed by the settings' own paths, which the page's inputs carry (``data-field``).

Save sends ``UpdateSettings`` with a mask of exactly the fields the operator changed.
``protected_actions``, ``action_methods`` and ``action_policies`` are lists the service
replaces as a whole: the page sends which members it switched on or off (and which
actions' policies it edited), and the backend applies that to the current list just
before the update, so an operator who ticks "WaaS Sign" does not undo another's "WaaS
Export". The service offers no precondition on ``UpdateSettings`` (``revision`` is
output only), so that read and the write are two calls: a change landing between them
is the one race left.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from google.protobuf import duration_pb2

from examples.web import (
    BadRequest,
    Json,
    add_shared_static,
    body,
    error_response,
    errors,
    security,
    text,
    timestamp_json,
)
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2
from mfa_client import Client, MfaServiceError

STATIC = Path(__file__).parent / "static"
CLIENT = web.AppKey("client", Client)

MAX_ENVIRONMENT_ID = 128
MAX_USER_ID = 256
MAX_REASON = 256  # what ResetUserMfa takes
MAX_TEXT = 256
MAX_ORIGINS = 50  # the service allows 20: it names the field past that, not this page
ENVIRONMENTS_PAGE = 100
AUDIT_PAGE = 25
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
_INDEX = re.compile(r"\[(\d+)\]")


class EnumType(Protocol):
    """A generated enum of mfa.v1 (``types_pb2.Action``...): names to numbers and back."""

    def Value(self, name: str) -> int: ...
    def Name(self, number: Any) -> str: ...


def create_app(client: Client) -> web.Application:
    """The page at ``/``, its assets, and the API under ``/api/``."""
    app = web.Application(middlewares=[security, errors])
    app[CLIENT] = client
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    add_shared_static(app)
    app.router.add_get("/api/environments", _list_environments)
    app.router.add_post("/api/environments", _create_environment)
    app.router.add_get("/api/settings", _get_settings)
    app.router.add_post("/api/settings", _update_settings)
    app.router.add_get("/api/audit", _list_audit_events)
    app.router.add_get("/api/users/status", _user_status)
    app.router.add_post("/api/users/reset", _reset_user)
    return app


# --- settings as the page sees them: flat keys, the service's own field paths ----------


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(path, "true or false")
    return value


def _string(path: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadRequest(path, f"text of at most {MAX_TEXT} characters")
    return value.strip()


def _whole_number(path: str, value: Any) -> int:
    """A count or a number of seconds, typed by the operator into a number input."""
    raw = str(value).strip() if isinstance(value, str | int) else ""
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise BadRequest(path, "enter a whole number")
    return int(raw)


def _seconds(path: str, value: Any) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=_whole_number(path, value))


def _origins(path: str, value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ORIGINS:
        raise BadRequest(path, f"a list of at most {MAX_ORIGINS} origins")
    return [_string(path, origin) for origin in value if str(origin).strip()]


def _enum(wrapper: EnumType) -> Callable[[str, Any], int]:
    def parse(path: str, value: Any) -> int:
        try:
            return int(wrapper.Value(value))
        except (ValueError, TypeError):
            raise BadRequest(path, "not one of the choices") from None

    return parse


# The fields the page sets to a value; each parser names the field when it refuses.
SCALAR_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "totp_enabled": _bool,
    "passkey_enabled": _bool,
    "require_at_onboarding": _bool,
    "session_mfa_enabled": _bool,
    "single_use_token_ttl": _seconds,
    "multi_use_token_ttl": _seconds,
    "totp.issuer": _string,
    "totp.skew_steps": _whole_number,
    "totp.max_devices": _whole_number,
    "passkey.rp_id": _string,
    "passkey.rp_name": _string,
    "passkey.allowed_origins": _origins,
    "passkey.user_verification": _enum(types_pb2.UserVerification),
    "passkey.attestation": _enum(types_pb2.Attestation),
    "lockout.max_failed_attempts": _whole_number,
    "lockout.lockout_duration": _seconds,
}
# Lists of enum values the page switches member by member.
MEMBER_FIELDS: dict[str, EnumType] = {
    "protected_actions": types_pb2.Action,
    "action_methods": types_pb2.Method,
}
POLICIES = "action_policies"


def settings_json(settings: types_pb2.Settings) -> Json:
    """The settings keyed by field path, enums by name, durations in seconds."""
    values: Json = {
        "environment_id": settings.environment_id,
        "revision": settings.revision,
        "update_time": timestamp_json(settings.update_time),
    }
    for path in SCALAR_FIELDS:
        value = _leaf(settings, path)
        if isinstance(value, duration_pb2.Duration):
            value = value.seconds
        elif path == "passkey.allowed_origins":
            value = list(value)
        elif path == "passkey.user_verification":
            value = types_pb2.UserVerification.Name(value)
        elif path == "passkey.attestation":
            value = types_pb2.Attestation.Name(value)
        values[path] = value
    for path, wrapper in MEMBER_FIELDS.items():
        values[path] = [wrapper.Name(v) for v in getattr(settings, path)]
    values[POLICIES] = {
        types_pb2.Action.Name(p.action): {
            "allowed_methods": [types_pb2.Method.Name(m) for m in p.allowed_methods],
            "require_approval": p.require_approval,
            "max_token_ttl": p.max_token_ttl.seconds if p.HasField("max_token_ttl") else None,
        }
        for p in settings.action_policies
    }
    return values


def _leaf(settings: types_pb2.Settings, path: str) -> Any:
    section, _, leaf = path.partition(".")
    return getattr(getattr(settings, section), leaf) if leaf else getattr(settings, section)


def _assign(settings: types_pb2.Settings, path: str, value: Any) -> None:
    section, _, leaf = path.partition(".")
    target = getattr(settings, section) if leaf else settings
    name = leaf or section
    if isinstance(value, duration_pb2.Duration):
        getattr(target, name).CopyFrom(value)
    elif isinstance(value, list):
        getattr(target, name).extend(value)
    else:
        setattr(target, name, value)


def _switched(path: str, wanted: Any, wrapper: EnumType, current: list[int]) -> list[int]:
    """``current`` with the members ``wanted`` switches on (true) or off (false), in the
    order the list had: what another operator changed meanwhile stays."""
    if not isinstance(wanted, dict) or not wanted:
        raise BadRequest(path, "name the choices switched on or off")
    result = list(current)
    for name, on in wanted.items():
        member = _enum(wrapper)(path, name)
        if _bool(path, on) and member not in result:
            result.append(member)
        elif not on and member in result:
            result.remove(member)
    return result


def _policy(action: types_pb2.Action.ValueType, value: Json) -> types_pb2.ActionPolicy | None:
    """One action's policy from the page; None when it says nothing an action without a
    policy does not (no methods listed, no approval, no lifetime cap)."""
    at = f"{POLICIES}.{types_pb2.Action.Name(action)}"
    methods = value.get("allowed_methods", [])
    if not isinstance(methods, list):
        raise BadRequest(f"{at}.allowed_methods", "a list of methods")
    policy = types_pb2.ActionPolicy(
        action=action,
        allowed_methods=[
            types_pb2.Method.ValueType(_enum(types_pb2.Method)(f"{at}.allowed_methods", m))
            for m in methods
        ],
        require_approval=_bool(f"{at}.require_approval", value.get("require_approval", False)),
    )
    cap = value.get("max_token_ttl")
    if cap not in (None, ""):
        policy.max_token_ttl.CopyFrom(_seconds(f"{at}.max_token_ttl", cap))
    elif not policy.allowed_methods and not policy.require_approval:
        return None
    return policy


def _with_policies(wanted: Any, current: list[types_pb2.ActionPolicy]) -> list[Any]:
    """``current`` with the policies of the actions ``wanted`` names replaced (or
    removed, when the page left nothing in them); the other actions' stay as they are."""
    if not isinstance(wanted, dict) or not wanted:
        raise BadRequest(POLICIES, "name the actions whose policy changed")
    result: list[types_pb2.ActionPolicy | None] = list(current)
    for name, value in wanted.items():
        action = types_pb2.Action.ValueType(_enum(types_pb2.Action)(POLICIES, name))
        if not isinstance(value, dict):
            raise BadRequest(f"{POLICIES}.{name}", "a policy")
        policy = _policy(action, value)
        at = next((i for i, p in enumerate(result) if p and p.action == action), None)
        if at is None:
            result.append(policy)
        else:
            result[at] = policy
    return [p for p in result if p is not None]


def _page_fields(error: MfaServiceError, sent: types_pb2.Settings) -> dict[str, str]:
    """The service's field violations keyed as the page's inputs are: ``settings.``
    dropped, ``action_policies[1]`` named by its action, an origin's index by the origin
    itself (one box holds them all), other indexes dropped."""
    fields: dict[str, str] = {}
    for violation in error.field_violations:
        path = violation.field.removeprefix("settings.")
        description = violation.description
        policy = re.match(r"action_policies\[(\d+)\]", path)
        if policy and int(policy[1]) < len(sent.action_policies):
            action = types_pb2.Action.Name(sent.action_policies[int(policy[1])].action)
            path = f"{POLICIES}.{action}" + path[policy.end() :]
        origin = re.fullmatch(r"passkey\.allowed_origins\[(\d+)\]", path)
        if origin and int(origin[1]) < len(sent.passkey.allowed_origins):
            description = f"{sent.passkey.allowed_origins[int(origin[1])]}: {description}"
        path = _INDEX.sub("", path)
        fields[path] = f"{fields[path]}; {description}" if path in fields else description
    return fields


# --- handlers -------------------------------------------------------------------------


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


def _client(request: web.Request) -> Client:
    return request.app[CLIENT]


def _environment(values: Any) -> str:
    return text(dict(values), "environment_id", max_length=MAX_ENVIRONMENT_ID)


async def _list_environments(request: web.Request) -> web.StreamResponse:
    """One page of environment ids (ListEnvironments), and the next page's token."""
    environments, next_token = await _client(request).admin.list_environments(
        page_size=ENVIRONMENTS_PAGE, page_token=request.query.get("page_token", "")
    )
    return web.json_response(
        {
            "environments": [e.environment_id for e in environments],
            "next_page_token": next_token,
        }
    )


async def _create_environment(request: web.Request) -> web.StreamResponse:
    """A new environment with the default settings (CreateEnvironment)."""
    created = await _client(request).admin.create_environment(_environment(await body(request)))
    return web.json_response(settings_json(created))


async def _get_settings(request: web.Request) -> web.StreamResponse:
    settings = await _client(request).admin.get_settings(_environment(request.query))
    return web.json_response(settings_json(settings))


async def _update_settings(request: web.Request) -> web.StreamResponse:
    """``changes`` maps each changed field's path to its new value (for the lists of
    ``MEMBER_FIELDS`` and the policies: to what was switched). UpdateSettings gets a
    mask of exactly those paths."""
    values = await body(request)
    environment = _environment(values)
    changes = values.get("changes")
    if not isinstance(changes, dict) or not changes:
        raise BadRequest("changes", "nothing to save")
    admin = _client(request).admin
    sent = types_pb2.Settings(environment_id=environment)
    current = None
    for path, value in changes.items():
        if path in SCALAR_FIELDS:
            _assign(sent, path, SCALAR_FIELDS[path](path, value))
            continue
        if path not in (*MEMBER_FIELDS, POLICIES):
            raise BadRequest(path, "not a setting this page changes")
        current = current or await admin.get_settings(environment)
        if path == POLICIES:
            sent.action_policies.extend(_with_policies(value, list(current.action_policies)))
        else:
            wrapper = MEMBER_FIELDS[path]
            _assign(sent, path, _switched(path, value, wrapper, list(getattr(current, path))))
    try:
        updated = await admin.update_settings(sent, list(changes))
    except MfaServiceError as error:
        if not error.field_violations:
            raise
        return error_response(
            400, error.code.name, error.reason, "Not saved.", _page_fields(error, sent)
        )
    return web.json_response(settings_json(updated))


async def _list_audit_events(request: web.Request) -> web.StreamResponse:
    """One page of the audit log, newest first, of one user, one event type and a time
    range (``since`` included, ``until`` not) when the filters name them: ListAuditEvents
    filters on each."""
    query = request.query
    kind = query.get("type", "")
    if kind:
        try:
            types = [admin_pb.AuditEventType.Value(kind)]
        except ValueError:
            raise BadRequest("type", "not an event type") from None
    else:
        types = []
    since, until = _instant(query, "since"), _instant(query, "until")
    if since and until and since >= until:
        raise BadRequest("until", "must be after the start of the range")
    events, token = await _client(request).admin.list_audit_events(
        _environment(query),
        user_id=query.get("user_id", "").strip(),
        types=types,
        page_size=AUDIT_PAGE,
        page_token=query.get("page_token", ""),
        start_time=since,
        end_time=until,
    )
    return web.json_response({"events": [_event_json(e) for e in events], "next_page_token": token})


def _instant(values: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 time with its offset (the page sends UTC), or None when empty."""
    raw = values.get(name, "")
    if not raw:
        return None
    try:
        instant = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(name, "not a date and time") from None
    if instant.tzinfo is None:
        raise BadRequest(name, "a time zone is needed")
    return instant


def _event_json(event: admin_pb.AuditEvent) -> Json:
    return {
        "event_id": event.event_id,
        "type": admin_pb.AuditEventType.Name(event.type),
        "user_id": event.user_id,
        "occurred_at": timestamp_json(event.occurred_at),
        "method": types_pb2.Method.Name(event.method) if event.method else "",
        "device_id": event.device_id,
        "caller": event.caller,
        "request_id": event.request_id,
        "details": dict(sorted(event.details.items())),
        "notify_user": event.notify_user,
        "client_ip": event.client_ip,
        "client_user_agent": event.client_user_agent,
    }


async def _user_status(request: web.Request) -> web.StreamResponse:
    """What the user has (GetStatus, ListDevices): methods, devices, lockout."""
    environment = _environment(request.query)
    user = text(dict(request.query), "user_id", max_length=MAX_USER_ID).strip()
    mfa = _client(request).mfa
    status = await mfa.get_status(environment_id=environment, user_id=user)
    devices = await mfa.list_devices(environment_id=environment, user_id=user)
    return web.json_response(
        {
            "user_id": user,
            "enrolled_methods": [types_pb2.Method.Name(m) for m in status.enrolled_methods],
            "enrollment_required": status.enrollment_required,
            "locked_until": timestamp_json(status.locked_until),
            "recovery_required": status.recovery_required,
            "recovery_codes_remaining": status.recovery_codes_remaining,
            "devices": [
                {
                    "device_id": d.device_id,
                    "method": types_pb2.Method.Name(d.method),
                    "alias": d.alias,
                    "is_default": d.is_default,
                    "created_at": timestamp_json(d.created_at),
                    "last_used_at": timestamp_json(d.last_used_at),
                }
                for d in devices
            ],
        }
    )


async def _reset_user(request: web.Request) -> web.StreamResponse:
    """ResetUserMfa, with the reason the operator gave (required here, for the audit
    log: a reset without one would leave nobody able to say why)."""
    values = await body(request)
    environment = _environment(values)
    user = text(values, "user_id", max_length=MAX_USER_ID).strip()
    reason = values.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest("reason", "say why, e.g. the support ticket")
    reason = text({"reason": reason.strip()}, "reason", max_length=MAX_REASON)
    result = await _client(request).admin.reset_user_mfa(environment, user_id=user, reason=reason)
    return web.json_response(
        {"devices_removed": result.devices_removed, "tokens_revoked": result.tokens_revoked}
    )
