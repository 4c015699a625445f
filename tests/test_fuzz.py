"""Property-based fuzzing of every RPC of the three services through the real server.

Hypothesis draws requests field by field: random unicode (NUL, controls, emoji, RTL
marks), strings just under, at and over each field's cap and far beyond it, random
bytes, unknown enum numbers, oversized repeated fields, random JSON and CBOR where
WebAuthn JSON goes, mutations of real passkey ceremonies and of real action tokens, and
random field masks. Each request is valid but for one or two fields (sometimes none,
sometimes all), with live ids, codes, tokens and ceremonies, so that bad values reach
the deep checks. Whatever comes in, the answer must be a deliberate one:

* never ``INTERNAL`` or ``UNKNOWN`` (or a hang);
* no stack trace and no Python exception class name in the message, which stays short
  (it travels in the trailers, twice);
* ``INVALID_ARGUMENT`` always carries a ``BadRequest`` naming a field;
* every error of the service carries its ``ErrorInfo`` reason;
* the server keeps serving: after each batch, health says SERVING and a real call works.

Hypothesis runs synchronously in a worker thread; each example is one coroutine run on
the test's event loop, where the gRPC client and the server live.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import cbor2
import grpc
import pytest
from authenticator import SoftAuthenticator, b64url, unb64url
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from flows import TotpDevice, call, challenge, update_settings
from helpers import FakeClock
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service.app import Application
from mfa_service.domain.settings import UPDATABLE_PATHS
from mfa_service.server import MAX_MESSAGE_BYTES

ENV = "env-fuzz"
# UpdateSettings is fuzzed on its own environment, so that it leaves ENV's alone.
pytestmark = pytest.mark.environments(ENV, "env-settings")
ORIGIN = "https://app.example.com"
RP_ID = "example.com"
EXAMPLES_PER_RPC = 60
CALL_TIMEOUT = 10.0
# The error message goes out twice in the trailers (grpc-message, percent-encoded, and
# inside grpc-status-details-bin); clients refuse trailers over 8-16 KiB.
MAX_ERROR_MESSAGE_BYTES = 1024

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_RPC,
    deadline=None,
    database=None,
    print_blob=True,
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
)

# --- what an answer may look like ------------------------------------------------------

_EXCEPTION_NAMES = sorted(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)
_LEAKS = re.compile(
    r"Traceback|File \"|<class |\b(?:" + "|".join(_EXCEPTION_NAMES) + r"|\w+(?:Error|Exception))\b"
)


def _strings_in(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Message):
        for _descriptor, inner in value.ListFields():
            yield from _strings_in(inner)
    elif isinstance(value, Iterable) and not isinstance(value, bytes):
        for inner in value:
            yield from _strings_in(inner)


def check_refusal(error: grpc.aio.AioRpcError, request: Message) -> None:
    code = error.code()
    details = error.details() or ""
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "the server did not answer in time"
    echoed = " ".join(_strings_in(request))
    leak = _LEAKS.search(details)
    assert leak is None or leak.group() in echoed, f"leaked {leak.group()!r}: {details}"
    assert len(details.encode()) <= MAX_ERROR_MESSAGE_BYTES, f"{len(details)} characters"
    refusal = MfaServiceError.from_rpc_error(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not refusal.reason:
        # gRPC's own refusal of a message over the receive limit.
        assert "larger than max" in details, details
        return
    assert refusal.reason.startswith("ERROR_REASON_"), (code, details)
    assert refusal.reason != "ERROR_REASON_INTERNAL", details
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert refusal.reason == "ERROR_REASON_INVALID_ARGUMENT"
        assert refusal.field_violations, f"no BadRequest: {details}"
        assert all(v.field for v in refusal.field_violations), refusal.field_violations


# --- building blocks ---------------------------------------------------------------------

ODD_STRINGS = [
    "\x00",
    "a\x00b",
    "alice\x00",
    " alice",
    "alice ",
    "\t",
    "\r\n",
    "\u202eecila",
    "\u200b",
    "\ufeff",
    "é",
    "ß",
    "😀",
    "\U0010ffff",
    "\ufffd",
    ":",
    "a:b",
    "%00",
    "../../etc/passwd",
    "' OR 1=1 --",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "null",
    "[]",
    "{}",
    "-1",
    "0",
    "9" * 30,
    "00000000-0000-0000-0000-000000000000",
    "{12345678-1234-5678-1234-567812345678}",
    "urn:uuid:12345678-1234-5678-1234-567812345678",
    "12345678123456781234567812345678",
    "123456",
    "000000",
    "١٢٣٤٥٦",
    "\uff11\uff12\uff13\uff14\uff15\uff16",  # fullwidth digits
    "12345",
    "1234567",
    "AAAAA-BBBBB-CCCCC-DDDDD",
    "aaaaa bbbbb ccccc ddddd",
    "ÀÀÀÀÀ-ÀÀÀÀÀ-ÀÀÀÀÀ-ÀÀÀÀÀ",
]


def _repeat(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def sized(lengths: Iterable[int]) -> st.SearchStrategy[str]:
    """A string of exactly one of ``lengths`` characters (ASCII or not)."""
    unit = st.sampled_from(["a", "Z9", "é", "😀", "\x00", "-"]) | st.text(min_size=1, max_size=3)
    return st.builds(_repeat, unit, st.sampled_from(sorted(set(lengths))))


def strings(cap: int | None = None) -> st.SearchStrategy[str]:
    """Random and odd strings, strings around ``cap`` and far beyond it."""
    options: list[st.SearchStrategy[str]] = [
        st.just(""),
        st.text(max_size=40),
        st.text(st.characters(codec="ascii"), max_size=40),
        st.sampled_from(ODD_STRINGS),
        sized([1_000, 20_000]),
    ]
    if cap is not None:
        options.append(sized([cap - 1, cap, cap + 1, 2 * cap]))
    return st.one_of(options)


def enum_values(enum: Any) -> st.SearchStrategy[int]:
    return st.sampled_from(list(enum.values())) | st.integers(-(2**31), 2**31 - 1)


def enum_lists(enum: Any) -> st.SearchStrategy[list[int]]:
    return st.lists(enum_values(enum), max_size=8) | st.builds(
        lambda value, n: [value] * n, enum_values(enum), st.sampled_from([500, 20_000])
    )


def uuids() -> st.SearchStrategy[str]:
    return st.uuids().map(str) | st.uuids().map(lambda u: u.hex.upper()) | strings()


def durations() -> st.SearchStrategy[duration_pb2.Duration]:
    return st.builds(
        duration_pb2.Duration,
        seconds=st.integers(-100, 100_000) | st.integers(-(2**63), 2**63 - 1),
        nanos=st.just(0) | st.integers(-(2**31), 2**31 - 1),
    )


def durations_between(low: int, high: int) -> st.SearchStrategy[duration_pb2.Duration]:
    return st.builds(duration_pb2.Duration, seconds=st.integers(low, high))


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    return st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.integers(-(2**63), 2**63 - 1),
        nanos=st.integers(-(2**31), 2**31 - 1),
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=80) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-5, 5) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _cbor(value: Any) -> bytes:
    return bytes(cbor2.dumps(value))


encoded_fields = st.one_of(
    st.binary(max_size=120).map(b64url),
    json_values.map(lambda v: b64url(json.dumps(v).encode())),
    cbor_values.map(lambda v: b64url(_cbor(v))),
    st.builds(
        lambda fmt, stmt, data: b64url(_cbor({"fmt": fmt, "attStmt": stmt, "authData": data})),
        st.sampled_from(["none", "packed", "fido-u2f", "tpm", "apple", "x"]) | cbor_values,
        cbor_values,
        st.binary(max_size=120) | cbor_values,
    ),
    strings(),
    json_values,
)

# --- mutations of real WebAuthn responses -------------------------------------------------

_DELETE = "<delete>"


@dataclass(frozen=True)
class Mutation:
    """Replace (or delete) the value at ``path`` of a real WebAuthn response.

    Paths starting with ``clientData`` or ``attestation`` reach into the decoded
    clientDataJSON or attestation object; ``authData`` flips or cuts a byte.
    """

    path: tuple[str, ...]
    value: Any


CREDENTIAL_PATHS = [
    ("id",),
    ("rawId",),
    ("type",),
    ("response",),
    ("response", "clientDataJSON"),
    ("response", "authenticatorData"),
    ("response", "signature"),
    ("response", "userHandle"),
    ("response", "attestationObject"),
    ("response", "transports"),
    ("clientExtensionResults",),
    ("authenticatorAttachment",),
]
CLIENT_DATA_KEYS = ["type", "challenge", "origin", "crossOrigin", "tokenBinding", "topOrigin"]
ATTESTATION_KEYS = ["fmt", "attStmt", "authData"]

mutations = st.one_of(
    st.builds(Mutation, st.sampled_from(CREDENTIAL_PATHS), encoded_fields | st.just(_DELETE)),
    st.builds(
        Mutation,
        st.sampled_from(CLIENT_DATA_KEYS).map(lambda k: ("clientData", k)),
        json_values | st.sampled_from(["webauthn.get", "webauthn.create", ORIGIN, _DELETE]),
    ),
    st.builds(
        Mutation,
        st.sampled_from(ATTESTATION_KEYS).map(lambda k: ("attestation", k)),
        cbor_values | st.just(_DELETE),
    ),
    st.builds(
        Mutation,
        st.sampled_from([("authData", "cut"), ("authData", "flip")]),
        st.integers(0, 300),
    ),
)


def _apply(document: dict[str, Any], mutation: Mutation) -> None:
    head = mutation.path[0]
    response = document.get("response")
    if head in ("clientData", "attestation", "authData"):
        if not isinstance(response, dict):
            return
        key = {"clientData": "clientDataJSON", "attestation": "attestationObject"}.get(
            head, "authenticatorData" if "authenticatorData" in response else "attestationObject"
        )
        if not isinstance(response.get(key), str):
            return
        try:
            response[key] = b64url(_mutated(unb64url(response[key]), key, mutation))
        except (ValueError, TypeError, KeyError, cbor2.CBORError):
            return  # an earlier mutation left nothing to reach into
        return
    target: Any = document
    for part in mutation.path[:-1]:
        if not isinstance(target, dict):
            return
        target = target.get(part)
    _set(target, mutation.path[-1], mutation.value)


def _mutated(raw: bytes, key: str, mutation: Mutation) -> bytes:
    head, leaf = mutation.path
    if head == "clientData":
        decoded = json.loads(raw)
        _set(decoded, leaf, mutation.value)
        return json.dumps(decoded).encode()
    if head == "attestation":
        decoded = cbor2.loads(raw)
        _set(decoded, leaf, mutation.value)
        return _cbor(decoded)
    if key == "attestationObject":
        decoded = cbor2.loads(raw)
        decoded["authData"] = _bytes_mutated(decoded["authData"], leaf, mutation.value)
        return _cbor(decoded)
    return _bytes_mutated(raw, leaf, mutation.value)


def _set(target: Any, key: str, value: Any) -> None:
    if not isinstance(target, dict):
        return
    if value == _DELETE:
        target.pop(key, None)
    else:
        target[key] = value


def _bytes_mutated(data: bytes, how: str, at: int) -> bytes:
    if not data:
        return data
    if how == "cut":
        return data[: at % (len(data) + 1)]
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


# --- placeholders, replaced by live values when an example runs ---------------------------


@dataclass(frozen=True)
class FreshChallenge:
    """A real challenge for the request's user: of ``method``, or of the proof's method."""

    method: types.Method.ValueType | None = None


@dataclass(frozen=True)
class FreshEnrollment:
    """A real pending enrollment of ``method`` for the request's user."""

    method: types.Method.ValueType


@dataclass(frozen=True)
class Owner:
    """The user the proof belongs to: alice (TOTP, recovery codes) or pat (passkey)."""


@dataclass(frozen=True)
class Assertion:
    """pat's authenticator answering the request's challenge, then mutated."""

    mutations: tuple[Mutation, ...] = ()


@dataclass(frozen=True)
class Registration:
    """A new authenticator answering the request's enrollment, then mutated."""

    mutations: tuple[Mutation, ...] = ()


@dataclass(frozen=True)
class CurrentCode:
    """alice's TOTP code of a fresh time step."""


@dataclass(frozen=True)
class RecoveryCode:
    index: int


@dataclass(frozen=True)
class RealDevice:
    """alice's TOTP device (0) or pat's passkey (1)."""

    index: int


@dataclass(frozen=True)
class RealToken:
    """One of alice's real action tokens, maybe damaged."""

    index: int
    damage: str = ""
    at: int = 0


def passkey_json() -> st.SearchStrategy[str]:
    shaped = st.fixed_dictionaries(
        {
            "id": encoded_fields,
            "rawId": encoded_fields,
            "type": st.just("public-key") | json_values,
            "response": st.dictionaries(
                st.sampled_from([path[1] for path in CREDENTIAL_PATHS if len(path) == 2]),
                encoded_fields,
            )
            | json_values,
        },
        optional={"clientExtensionResults": json_values, "authenticatorAttachment": json_values},
    )
    return st.one_of(json_values.map(json.dumps), shaped.map(json.dumps), strings(64 * 1024))


def assertions() -> st.SearchStrategy[Any]:
    mutated = st.builds(Assertion, st.lists(mutations, min_size=1, max_size=3).map(tuple))
    return mutated | passkey_json()


def registrations() -> st.SearchStrategy[Any]:
    mutated = st.builds(Registration, st.lists(mutations, min_size=1, max_size=3).map(tuple))
    return mutated | passkey_json()


def _jwt_like(header: Any, payload: Any, signature: bytes) -> str:
    parts = [json.dumps(header).encode(), json.dumps(payload).encode(), signature]
    return ".".join(b64url(part) for part in parts)


def bad_tokens() -> st.SearchStrategy[Any]:
    headers = st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["ES256", "EdDSA", "none", "HS256", "RS256"]) | json_values,
            "kid": st.text(max_size=20) | json_values,
            "typ": st.just("mfa-action+jwt") | json_values,
        },
    )
    return st.one_of(
        st.builds(
            RealToken,
            st.integers(0, 2),
            st.sampled_from(["cut", "flip", "append"]),
            st.integers(0, 500),
        ),
        st.builds(_jwt_like, headers | json_values, json_values, st.binary(max_size=80)),
        strings(4096),
    )


def good_tokens() -> st.SearchStrategy[Any]:
    return st.just("") | st.builds(RealToken, st.integers(0, 2))


# --- requests: valid except one or two fields -------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A request field: its valid values, and what the fuzzer throws at it."""

    valid: st.SearchStrategy[Any]
    fuzz: st.SearchStrategy[Any]


def text(cap: int, *valid: str) -> Field:
    return Field(st.sampled_from(valid), strings(cap))


def enum(enum_type: Any, *valid: int) -> Field:
    return Field(st.sampled_from(valid or list(enum_type.values())), enum_values(enum_type))


def flag() -> Field:
    return Field(st.booleans(), st.booleans())


@st.composite
def requests(draw: st.DrawFn, fields: dict[str, Field]) -> dict[str, Any]:
    """Field values: valid but for one or two (sometimes none, sometimes all), so that
    each bad value gets past the others to the checks meant for it."""
    names = sorted(fields)
    if not names:
        return {}
    how_many = draw(st.sampled_from([1, 1, 1, 1, 1, 2, 2, 2, 0, len(names)]))
    bad = set(draw(st.randoms(use_true_random=False)).sample(names, min(how_many, len(names))))
    drawn = {name: draw(fields[name].fuzz if name in bad else fields[name].valid) for name in names}
    if "update_mask" in fields and "update_mask" not in bad:
        # A valid mask names what was fuzzed (a leaf, its section or "*"), else anything.
        paths = [
            draw(st.sampled_from([name, name.partition(".")[0], "*"]))
            for name in sorted(bad & set(UPDATABLE_PATHS))
        ]
        drawn["update_mask"] = paths or drawn["update_mask"]
    return drawn


ODD_ORIGINS = [ORIGIN, "https://login.example.com", "http://localhost:8080"]
SETTINGS_FIELDS = {
    "environment_id": text(128, "env-settings"),
    "totp_enabled": flag(),
    "passkey_enabled": flag(),
    "require_at_onboarding": flag(),
    "session_mfa_enabled": flag(),
    "action_methods": Field(
        st.sampled_from([[types.METHOD_TOTP], [types.METHOD_PASSKEY]]), enum_lists(types.Method)
    ),
    "protected_actions": Field(
        st.lists(st.sampled_from([1, 2, 3, 4]), unique=True, max_size=4), enum_lists(types.Action)
    ),
    "single_use_token_ttl": Field(durations_between(10, 300), durations()),
    "multi_use_token_ttl": Field(durations_between(10, 3600), durations()),
    "totp.issuer": text(64, "Acme", "MFA"),
    "totp.skew_steps": Field(st.integers(0, 1), st.integers(0, 2**32 - 1)),
    "totp.max_devices": Field(st.integers(1, 10), st.integers(0, 2**32 - 1)),
    "totp.digits": Field(st.just(6), st.integers(0, 2**32 - 1)),
    "totp.period": Field(durations_between(30, 30), durations()),
    "passkey.rp_id": text(253, RP_ID),
    "passkey.rp_name": text(64, "Acme", ""),
    "passkey.allowed_origins": Field(
        st.lists(st.sampled_from(ODD_ORIGINS[:2]), min_size=1, max_size=2, unique=True),
        st.lists(strings() | st.sampled_from(ODD_ORIGINS), max_size=4)
        | st.builds(lambda o, n: [o] * n, strings(), st.sampled_from([21, 2_000])),
    ),
    "passkey.user_verification": enum(types.UserVerification, 1, 2, 3),
    "passkey.attestation": enum(types.Attestation, 1, 2, 3, 4),
    "lockout.max_failed_attempts": Field(st.integers(1, 100), st.integers(0, 2**32 - 1)),
    "lockout.lockout_duration": Field(durations_between(60, 86_400), durations()),
    "update_time": Field(st.none(), timestamps()),
    "revision": Field(st.just(0), st.integers(-(2**63), 2**63 - 1)),
}


def settings_message(drawn: dict[str, Any]) -> types.Settings:
    settings = types.Settings()
    for path, value in drawn.items():
        if path not in SETTINGS_FIELDS or value is None:
            continue
        target: Any = settings
        *parents, leaf = path.split(".")
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, list):
            getattr(target, leaf).extend(value)
        elif isinstance(value, Message):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)
    return settings


def update_settings_request(drawn: dict[str, Any]) -> admin_pb.UpdateSettingsRequest:
    return admin_pb.UpdateSettingsRequest(
        settings=settings_message(drawn) if drawn.get("settings", True) else None,
        update_mask=field_mask_pb2.FieldMask(paths=drawn.get("update_mask", [])),
    )


mask_paths = st.one_of(
    st.sampled_from([*UPDATABLE_PATHS, "*", "environment_id", "revision", "update_time"]),
    st.sampled_from(UPDATABLE_PATHS).map(lambda p: f" {p} "),
    strings(),
)
UPDATE_SETTINGS_FIELDS = {
    **SETTINGS_FIELDS,
    "settings": Field(st.just(True), st.just(False)),  # False: no settings at all
    "update_mask": Field(
        st.lists(st.sampled_from(["*", *UPDATABLE_PATHS]), min_size=1, max_size=4),
        st.lists(mask_paths, max_size=6)
        | st.builds(lambda p, n: [p] * n, mask_paths, st.sampled_from([100, 10_000])),
    ),
}


def create_environment_request(drawn: dict[str, Any]) -> admin_pb.CreateEnvironmentRequest:
    return admin_pb.CreateEnvironmentRequest(
        settings=settings_message(drawn) if drawn.get("settings", True) else None,
        update_mask=field_mask_pb2.FieldMask(paths=drawn.get("update_mask", [])),
    )


CREATE_ENVIRONMENT_FIELDS = {
    **UPDATE_SETTINGS_FIELDS,
    # A new one (created by the first valid request), or one that exists.
    "environment_id": text(128, "env-new", "env-settings"),
    # Empty: every field set to a non-zero value.
    "update_mask": Field(
        st.just([]) | UPDATE_SETTINGS_FIELDS["update_mask"].valid,
        UPDATE_SETTINGS_FIELDS["update_mask"].fuzz,
    ),
}


def _cursor(value: object) -> str:
    """A ListAuditEvents or ListEnvironments page token of the service's format around
    ``value``."""
    return base64.urlsafe_b64encode(f"v1:{value}".encode()).decode().rstrip("=")


# --- the RPCs ----------------------------------------------------------------------------------

ODD_WEBHOOK_URLS = [
    "https://[::1",
    "https://a:0/",
    "https://a:65536/",
    "https://@/",
    "http://127.0.0.1:9/hook",
    "https://u:p@127.0.0.1/",
    "HTTPS://127.0.0.1/#",
    "javascript:alert(1)",
    "https://" + "a" * 2041,
]

PROOF_KINDS = ["totp_code", "passkey_assertion_json", "recovery_code"]
PROOF = Field(
    st.one_of(
        st.tuples(st.just("totp_code"), st.just(CurrentCode())),
        st.tuples(st.just("recovery_code"), st.builds(RecoveryCode, st.integers(0, 9))),
        st.tuples(st.just("passkey_assertion_json"), st.just(Assertion())),
    ),
    st.one_of(
        st.none(),
        st.tuples(st.sampled_from(PROOF_KINDS), strings(64 * 1024)),
        st.tuples(st.just("passkey_assertion_json"), assertions()),
    ),
)
CHALLENGE_ID = Field(
    st.just(FreshChallenge()),
    st.one_of(
        uuids(),
        st.builds(FreshChallenge, st.sampled_from([types.METHOD_TOTP, types.METHOD_PASSKEY])),
    ),
)
ENV_ID = text(128, ENV)
USER_ID = text(256, "alice", "pat", "nobody")
OWNER = Field(st.just(Owner()), strings(256))
SESSION_ID = text(256, "s1", "s2")
OPTIONAL_SESSION_ID = Field(st.sampled_from(["", "s1"]), strings(256))
DEVICE_ID = Field(st.builds(RealDevice, st.integers(0, 1)), uuids())
DIGEST = Field(
    st.just(b"") | st.binary(min_size=32, max_size=32),
    st.binary(max_size=40) | st.just(b"\x00" * 33),
)
ACTION_TOKEN = Field(good_tokens(), bad_tokens())


def _proof(value: Any) -> types.Proof | None:
    if value is None:
        return None
    kind, text_ = value
    return types.Proof(**{kind: text_})


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    fields: dict[str, Field]
    build: Callable[[dict[str, Any]], Message]
    examples: int = EXAMPLES_PER_RPC
    regressions: tuple[dict[str, Any], ...] = ()
    # A server stream that never ends (WatchAuditEvents): its first answer is the outcome.
    streaming: bool = False

    @property
    def path(self) -> str:
        return f"/mfa.v1.{self.service}/{self.name}"


def plain(message: type[Message]) -> Callable[[dict[str, Any]], Message]:
    return lambda drawn: message(**drawn)


def with_proof(message: type[Message]) -> Callable[[dict[str, Any]], Message]:
    return lambda drawn: message(**{**drawn, "proof": _proof(drawn["proof"])})


RPC_LIST = [
    Rpc(
        "MfaService",
        "GetStatus",
        {"environment_id": ENV_ID, "user_id": USER_ID, "session_id": OPTIONAL_SESSION_ID},
        plain(pb.GetStatusRequest),
    ),
    Rpc(
        "MfaService",
        "Enroll",
        {
            "environment_id": ENV_ID,
            "user_id": text(256, "alice", "pat", "newcomer"),
            "method": enum(types.Method, types.METHOD_TOTP, types.METHOD_PASSKEY),
            "action_token": ACTION_TOKEN,
            "account_name": text(128, "", "alice@example.com"),
        },
        plain(pb.EnrollRequest),
    ),
    Rpc(
        "MfaService",
        "CompleteEnrollment",
        {
            "environment_id": ENV_ID,
            "user_id": text(256, "newcomer", "alice"),
            "enrollment_id": Field(
                st.builds(
                    FreshEnrollment, st.sampled_from([types.METHOD_TOTP, types.METHOD_PASSKEY])
                ),
                uuids(),
            ),
            "totp_code": Field(st.just(""), strings(6) | st.just(CurrentCode())),
            "passkey_registration_json": Field(
                st.just("") | st.just(Registration()), registrations()
            ),
            "alias": text(64, "", "Work phone"),
        },
        plain(pb.CompleteEnrollmentRequest),
        examples=150,
    ),
    Rpc(
        "MfaService",
        "Challenge",
        {
            "environment_id": ENV_ID,
            "user_id": USER_ID,
            "method": enum(types.Method, 1, 2, 3),
            "device_id": Field(st.just("") | DEVICE_ID.valid, DEVICE_ID.fuzz),
        },
        plain(pb.ChallengeRequest),
    ),
    Rpc(
        "MfaService",
        "VerifySession",
        {
            "environment_id": ENV_ID,
            "user_id": OWNER,
            "session_id": SESSION_ID,
            "challenge_id": CHALLENGE_ID,
            "proof": PROOF,
        },
        with_proof(pb.VerifySessionRequest),
        examples=150,
    ),
    Rpc(
        "MfaService",
        "IssueActionToken",
        {
            "environment_id": ENV_ID,
            "user_id": OWNER,
            "challenge_id": CHALLENGE_ID,
            "proof": PROOF,
            "actions": Field(
                st.sampled_from([[types.ACTION_WAAS_SIGN], [1, 3], [types.ACTION_CREDENTIAL_LINK]]),
                enum_lists(types.Action),
            ),
            "single_use": flag(),
            "payload_digest": DIGEST,
            "session_id": OPTIONAL_SESSION_ID,
        },
        with_proof(pb.IssueActionTokenRequest),
        examples=150,
    ),
    Rpc(
        "MfaService",
        "ListDevices",
        {"environment_id": ENV_ID, "user_id": USER_ID},
        plain(pb.ListDevicesRequest),
    ),
    Rpc(
        "MfaService",
        "UpdateDevice",
        {
            "environment_id": ENV_ID,
            "user_id": USER_ID,
            "device_id": DEVICE_ID,
            "alias": text(64, "Laptop", ""),
            "make_default": flag(),
        },
        plain(pb.UpdateDeviceRequest),
    ),
    Rpc(
        "MfaService",
        "DeleteDevice",
        {
            "environment_id": ENV_ID,
            "user_id": USER_ID,
            "device_id": DEVICE_ID,
            "action_token": ACTION_TOKEN,
        },
        plain(pb.DeleteDeviceRequest),
    ),
    Rpc(
        "MfaService",
        "RegenerateRecoveryCodes",
        {"environment_id": ENV_ID, "user_id": USER_ID, "action_token": ACTION_TOKEN},
        plain(pb.RegenerateRecoveryCodesRequest),
    ),
    Rpc(
        "MfaService",
        "AcknowledgeRecoveryCodes",
        {"environment_id": ENV_ID, "user_id": USER_ID},
        plain(pb.AcknowledgeRecoveryCodesRequest),
    ),
    Rpc(
        "ActionTokenService",
        "ValidateActionToken",
        {
            "environment_id": ENV_ID,
            "user_id": USER_ID,
            "action": enum(types.Action),
            "token": ACTION_TOKEN,
            "payload_digest": DIGEST,
            "session_id": OPTIONAL_SESSION_ID,
            "idempotency_key": text(128, "", "key-1", "key-2"),
        },
        plain(at_pb.ValidateActionTokenRequest),
    ),
    Rpc("ActionTokenService", "GetJwks", {}, plain(at_pb.GetJwksRequest)),
    Rpc(
        "AdminService",
        "CreateEnvironment",
        CREATE_ENVIRONMENT_FIELDS,
        create_environment_request,
        examples=200,
        regressions=(
            {"environment_id": "env-new\x00", "update_mask": []},
            {"environment_id": "env-new", "passkey.rp_name": "a\x00b", "update_mask": []},
            {"environment_id": "env-new", "update_mask": ["x" * 100_000]},
        ),
    ),
    Rpc(
        "AdminService",
        "ListEnvironments",
        {
            "page_size": Field(st.integers(0, 500), st.integers(-(2**31), 2**31 - 1)),
            "page_token": Field(
                st.just(""),
                st.one_of(
                    strings(300),
                    st.text(max_size=200).map(_cursor),
                    st.sampled_from([ENV, "e" * 128, "e" * 200]).map(_cursor),
                ),
            ),
        },
        plain(admin_pb.ListEnvironmentsRequest),
        regressions=(
            {"page_size": -1, "page_token": ""},
            {"page_size": 1, "page_token": _cursor("\x00")},
            {"page_size": 1, "page_token": _cursor("")},
        ),
    ),
    Rpc(
        "AdminService",
        "GetSettings",
        {"environment_id": ENV_ID},
        plain(admin_pb.GetSettingsRequest),
    ),
    Rpc(
        "AdminService",
        "UpdateSettings",
        UPDATE_SETTINGS_FIELDS,
        update_settings_request,
        examples=200,
        regressions=(
            # An int64 Duration beyond timedelta's range: OverflowError, was INTERNAL.
            {
                "environment_id": "env-settings",
                "single_use_token_ttl": duration_pb2.Duration(seconds=2**62),
                "update_mask": ["single_use_token_ttl"],
            },
            # NUL cannot be stored in jsonb: was INTERNAL.
            {
                "environment_id": "env-settings",
                "passkey.rp_name": "a\x00b",
                "update_mask": ["passkey.rp_name"],
            },
            {
                "environment_id": "env-settings",
                "passkey.rp_id": RP_ID,
                "passkey.allowed_origins": ["https://a\x00.example.com"],
                "update_mask": ["passkey.rp_id", "passkey.allowed_origins"],
            },
            # Echoed input and one violation per origin: trailers over the client's
            # limit, so the caller got RESOURCE_EXHAUSTED instead of the BadRequest.
            {"environment_id": "env-settings", "update_mask": ["x" * 100_000]},
            {
                "environment_id": "env-settings",
                "passkey.rp_id": "x" * 10_000,
                "passkey.allowed_origins": ["https://x"] * 2_000,
                "update_mask": ["passkey"],
            },
        ),
    ),
    Rpc(
        "AdminService",
        "ResetUserMfa",
        {"environment_id": ENV_ID, "user_id": USER_ID, "reason": text(256, "", "ticket 42")},
        plain(admin_pb.ResetUserMfaRequest),
    ),
    Rpc(
        "AdminService",
        "ListAuditEvents",
        {
            "environment_id": ENV_ID,
            "page_size": Field(st.integers(0, 500), st.integers(0, 2**32 - 1)),
            "page_token": Field(
                st.just(""),
                st.one_of(
                    strings(),
                    st.integers(-(2**70), 2**70).map(_cursor),
                    st.text(max_size=30).map(_cursor),
                ),
            ),
            "user_id": Field(st.sampled_from(["", "alice"]), strings(256)),
            "types": Field(
                st.lists(
                    st.sampled_from(range(1, len(admin_pb.AuditEventType.values()))), max_size=3
                ),
                enum_lists(admin_pb.AuditEventType),
            ),
        },
        plain(admin_pb.ListAuditEventsRequest),
        regressions=(
            # A cursor beyond bigint: asyncpg's OverflowError, was INTERNAL.
            {"environment_id": ENV, "page_token": _cursor(10**23)},
        ),
    ),
    Rpc(
        "AdminService",
        "WatchAuditEvents",
        {
            "environment_id": ENV_ID,
            "after_cursor": Field(
                st.just(""),
                st.one_of(
                    strings(),
                    st.tuples(st.integers(-(2**70), 2**70), st.integers(-(2**70), 2**70)).map(
                        lambda p: _cursor(f"{p[0]}.{p[1]}")
                    ),
                    st.text(max_size=30).map(_cursor),
                ),
            ),
        },
        plain(admin_pb.WatchAuditEventsRequest),
        streaming=True,
    ),
    Rpc(
        "AdminService",
        "CreateWebhook",
        {
            "environment_id": ENV_ID,
            # https to a closed loopback port: a delivery is refused at once.
            "url": Field(
                st.just("https://127.0.0.1:9/hook"),
                strings(4096) | st.sampled_from(ODD_WEBHOOK_URLS),
            ),
            "event_types": Field(
                st.lists(
                    st.sampled_from(range(1, len(admin_pb.AuditEventType.values()))),
                    min_size=1,
                    max_size=4,
                    unique=True,
                ),
                enum_lists(admin_pb.AuditEventType),
            ),
            "format": enum(admin_pb.WebhookFormat),
        },
        plain(admin_pb.CreateWebhookRequest),
    ),
    Rpc(
        "AdminService",
        "ListWebhooks",
        {"environment_id": ENV_ID},
        plain(admin_pb.ListWebhooksRequest),
    ),
    Rpc(
        "AdminService",
        "DeleteWebhook",
        {"environment_id": ENV_ID, "webhook_id": Field(st.uuids().map(str), uuids())},
        plain(admin_pb.DeleteWebhookRequest),
    ),
]
RPCS = {rpc.name: rpc for rpc in RPC_LIST}
RPCS_BY_PATH = {rpc.path: rpc for rpc in RPC_LIST}


# --- the world the requests meet -------------------------------------------------------------


@dataclass
class World:
    client: Client
    clock: FakeClock
    alice: TotpDevice
    recovery_codes: list[str]
    pat: SoftAuthenticator
    device_ids: list[str]
    tokens: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)  # per example: ceremony options

    def code(self) -> str:
        self.clock.advance(timedelta(seconds=30))  # a step never used before
        return self.alice.code(self.clock.now())


async def make_world(client: Client, clock: FakeClock) -> World:
    """alice with a TOTP device and recovery codes, pat with a passkey, alice's tokens."""
    await update_settings(
        client,
        ENV,
        passkey__rp_id=RP_ID,
        passkey__allowed_origins=[ORIGIN],
        protected_actions=[types.ACTION_WAAS_SIGN, types.ACTION_WAAS_EXPORT],
        session_mfa_enabled=True,
        lockout__max_failed_attempts=100,
        lockout__lockout_duration=timedelta(minutes=1),
        multi_use_token_ttl=timedelta(hours=1),
    )
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(environment_id=ENV, user_id="alice", method=types.METHOD_TOTP)
        )
    )
    secret = started.totp.secret
    done = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="alice",
                enrollment_id=started.enrollment_id,
                totp_code=TotpDevice("", secret).code(clock.now()),
            )
        )
    )
    pat = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(environment_id=ENV, user_id="pat", method=types.METHOD_PASSKEY)
        )
    )
    registered = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="pat",
                enrollment_id=started.enrollment_id,
                passkey_registration_json=pat.register(started.passkey.creation_options_json),
            )
        )
    )
    world = World(
        client=client,
        clock=clock,
        alice=TotpDevice(done.device.device_id, secret),
        recovery_codes=list(done.recovery_codes),
        pat=pat,
        device_ids=[done.device.device_id, registered.device.device_id],
    )
    for actions, single_use in [
        ([types.ACTION_WAAS_SIGN], False),
        ([types.ACTION_WAAS_SIGN, types.ACTION_WAAS_EXPORT], True),
        ([types.ACTION_CREDENTIAL_LINK, types.ACTION_CREDENTIAL_UNLINK], False),
    ]:
        issued = await call(
            client.mfa_stub.IssueActionToken(
                pb.IssueActionTokenRequest(
                    environment_id=ENV,
                    user_id="alice",
                    challenge_id=await challenge(client, ENV, "alice"),
                    proof=types.Proof(totp_code=world.code()),
                    actions=actions,
                    single_use=single_use,
                )
            )
        )
        world.tokens.append(issued.token)
    return world


async def resolve(world: World, drawn: dict[str, Any]) -> dict[str, Any]:
    """The drawn fields with every placeholder replaced by a live value."""
    proof = drawn.get("proof")
    passkey_proof = isinstance(proof, tuple) and proof[0] == "passkey_assertion_json"
    resolved = {
        name: ("pat" if passkey_proof else "alice") if isinstance(value, Owner) else value
        for name, value in drawn.items()
    }
    env = resolved.get("environment_id")
    user = resolved.get("user_id")
    env = env if isinstance(env, str) else ENV
    user = user if isinstance(user, str) else "alice"
    world.options = {}
    for name, value in resolved.items():
        if isinstance(value, FreshChallenge):
            method = value.method or (types.METHOD_PASSKEY if passkey_proof else types.METHOD_TOTP)
            resolved[name] = await _fresh_challenge(world, env, user, method)
        elif isinstance(value, FreshEnrollment):
            resolved[name] = await _fresh_enrollment(world, env, user, value.method)
    return {name: _live_value(world, value) for name, value in resolved.items()}


async def _fresh_challenge(
    world: World, env: str, user: str, method: types.Method.ValueType
) -> str:
    try:
        response = await world.client.mfa_stub.Challenge(
            pb.ChallengeRequest(environment_id=env, user_id=user, method=method),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError:
        return str(uuid.uuid4())
    world.options["assertion"] = response.passkey_request_options_json
    return str(response.challenge_id)


async def _fresh_enrollment(
    world: World, env: str, user: str, method: types.Method.ValueType
) -> str:
    try:
        response = await world.client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=env, user_id=user, method=method, action_token=world.tokens[2]
            ),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError:
        return str(uuid.uuid4())
    world.options["registration"] = response.passkey.creation_options_json
    world.options["secret"] = response.totp.secret
    return str(response.enrollment_id)


def _live_value(world: World, value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], _live_value(world, value[1]))
    if isinstance(value, CurrentCode):
        secret = world.options.get("secret")
        if secret:  # the code of the enrollment just started
            return TotpDevice("", secret).code(world.clock.now())
        return world.code()
    if isinstance(value, RealDevice):
        return world.device_ids[value.index]
    if isinstance(value, RecoveryCode):
        return world.recovery_codes[value.index]
    if isinstance(value, RealToken):
        token = world.tokens[value.index]
        at = value.at % len(token)
        return {
            "": token,
            "cut": token[:at],
            "flip": token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :],
            "append": token + "." + token[:at],
        }[value.damage]
    if isinstance(value, Assertion | Registration):
        return _ceremony(world, value)
    return value


def _ceremony(world: World, value: Assertion | Registration) -> str:
    fallback = {"challenge": b64url(b"x" * 32), "user": {"id": b64url(b"u" * 32)}}
    if isinstance(value, Assertion):
        options = world.options.get("assertion") or json.dumps(fallback)
        document = json.loads(world.pat.assertion(options))
    else:
        options = world.options.get("registration") or json.dumps(fallback)
        document = json.loads(SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID).register(options))
    for mutation in value.mutations:
        _apply(document, mutation)
    return json.dumps(document)


# --- the tests ---------------------------------------------------------------------------------

SERVICE_METHODS = {
    f"/mfa.v1.{service}/{method}"
    for module, service in [
        (pb, "MfaService"),
        (at_pb, "ActionTokenService"),
        (admin_pb, "AdminService"),
    ]
    for method in module.DESCRIPTOR.services_by_name[service].methods_by_name
}


def test_every_rpc_is_fuzzed() -> None:
    assert {rpc.path for rpc in RPC_LIST} == SERVICE_METHODS


async def assert_still_serving(app: Application, client: Client) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    await call(
        client.mfa_stub.GetStatus(
            pb.GetStatusRequest(environment_id=ENV, user_id="alice"), timeout=CALL_TIMEOUT
        )
    )


def run_property(
    loop: asyncio.AbstractEventLoop,
    strategy: st.SearchStrategy[Any],
    exercise: Callable[[Any], Coroutine[Any, Any, None]],
    *,
    examples: int,
    regressions: Iterable[Any] = (),
) -> Awaitable[None]:
    """Run ``exercise`` on the test's event loop for each example Hypothesis draws.

    Hypothesis itself runs in a worker thread (it is synchronous); the gRPC client and
    the server stay on the loop they were made on.
    """

    def one(value: Any) -> None:
        asyncio.run_coroutine_threadsafe(exercise(value), loop).result(timeout=120)

    test = given(strategy)(one)
    for value in regressions:
        test = example(value)(test)
    return asyncio.to_thread(settings(FUZZ_SETTINGS, max_examples=examples)(test))


# How long a stream that answered nothing yet may wait before it counts as serving (a
# valid cursor after every event: the stream waits for the next one).
STREAM_QUIET_SECONDS = 0.5


def sender(
    client: Client, path: str, *, streaming: bool, serialize: bool = True
) -> Callable[[Any, float], Awaitable[None]]:
    """A raw call of ``path`` with a deadline in seconds: a unary one, or a server stream
    of which only the first answer (a response, the status, or silence while it waits)
    is taken."""
    serializer = (lambda message: message.SerializeToString()) if serialize else None
    if not streaming:
        unary = client.channel.unary_unary(
            path, request_serializer=serializer, response_deserializer=lambda raw: raw
        )

        async def once(request: Any, deadline: float) -> None:
            await unary(request, timeout=deadline)

        return once
    stream = client.channel.unary_stream(
        path, request_serializer=serializer, response_deserializer=lambda raw: raw
    )

    async def first(request: Any, deadline: float) -> None:
        call = stream(request, timeout=deadline)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.read(), STREAM_QUIET_SECONDS)
        finally:
            call.cancel()

    return first


@pytest.mark.parametrize("name", sorted(RPCS))
async def test_fuzz_rpc(app: Application, client: Client, clock: FakeClock, name: str) -> None:
    rpc = RPCS[name]
    world = await make_world(client, clock)
    send = sender(client, rpc.path, streaming=rpc.streaming)

    async def exercise(drawn: dict[str, Any]) -> None:
        request = rpc.build(await resolve(world, drawn))
        try:
            await send(request, CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            check_refusal(error, request)

    await run_property(
        asyncio.get_running_loop(),
        requests(rpc.fields),
        exercise,
        examples=rpc.examples,
        regressions=rpc.regressions,
    )
    await assert_still_serving(app, client)


async def test_raw_wire_bytes_are_refused_cleanly(app: Application, client: Client) -> None:
    """Bytes that are no protobuf message, or carry a string that is not UTF-8."""
    send = {
        path: sender(client, path, streaming=RPCS_BY_PATH[path].streaming, serialize=False)
        for path in sorted(SERVICE_METHODS)
    }
    wire = st.one_of(
        st.binary(max_size=64),
        # field 1 (a string everywhere but in GetJwksRequest) that is not UTF-8
        st.binary(min_size=1, max_size=8).map(lambda b: b"\x0a" + bytes([len(b)]) + b),
    )

    async def exercise(drawn: tuple[str, bytes]) -> None:
        path, raw = drawn
        try:
            await send[path](raw, CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            check_refusal(error, types.Proof())

    await run_property(
        asyncio.get_running_loop(),
        st.tuples(st.sampled_from(sorted(SERVICE_METHODS)), wire),
        exercise,
        examples=200,
        regressions=[
            ("/mfa.v1.MfaService/GetStatus", b"\x0a\x02\xff\xfe"),
            ("/mfa.v1.ActionTokenService/GetJwks", b"\xff\xff\xff"),
        ],
    )
    await assert_still_serving(app, client)


async def test_a_message_over_the_receive_limit_is_refused(
    app: Application, client: Client
) -> None:
    too_big = "a" * (MAX_MESSAGE_BYTES + 1)
    calls: list[tuple[Callable[..., Awaitable[object]], Message]] = [
        (client.mfa_stub.GetStatus, pb.GetStatusRequest(environment_id=ENV, user_id=too_big)),
        (
            client.action_tokens_stub.ValidateActionToken,
            at_pb.ValidateActionTokenRequest(environment_id=ENV, user_id="u", token=too_big),
        ),
        (
            client.admin.stub.UpdateSettings,
            admin_pb.UpdateSettingsRequest(
                settings=types.Settings(environment_id=ENV),
                update_mask=field_mask_pb2.FieldMask(paths=["totp.issuer"] * 25_000),
            ),
        ),
    ]
    for send, request in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send(request, timeout=CALL_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        check_refusal(caught.value, request)
        await assert_still_serving(app, client)


LONGEST_ENV = "e" * 128


@pytest.mark.environments(LONGEST_ENV)
async def test_a_full_page_of_the_largest_audit_events_fits_the_send_limit(
    client: Client, db: asyncpg.Connection
) -> None:
    """500 events with every field at its longest: a page may hold fewer than page_size
    (AIP-158), never more bytes than the server may send; the pages hold each event once."""
    env, user = LONGEST_ENV, "u" * 256
    await db.execute(
        """
        INSERT INTO audit_events (event_id, environment_id, user_id, type, occurred_at,
                                  device_id, caller, request_id, details)
        SELECT gen_random_uuid(), $1, $2, 'USER_RESET', now(), gen_random_uuid()::text,
               $3, $4, jsonb_build_object('reason', $5::text, 'devices_removed', '10',
                                          'tokens_revoked', '100000')
        FROM generate_series(1, 500)
        """,
        env,
        user,
        "spiffe://" + "c" * 247,  # a caller identity of 256 characters
        "r" * 64,  # the longest request id a caller may choose
        "\U0001f600" * 256,  # the longest reason, 4 bytes a character
    )
    stored = {
        str(r["event_id"])
        for r in await db.fetch("SELECT event_id FROM audit_events WHERE type = 'USER_RESET'")
    }
    assert len(stored) == 500

    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = await call(
            client.admin.stub.ListAuditEvents(
                admin_pb.ListAuditEventsRequest(
                    environment_id=env, user_id=user, page_size=500, page_token=token
                ),
                timeout=CALL_TIMEOUT,
            )
        )
        assert page.events
        assert page.ByteSize() < MAX_MESSAGE_BYTES
        seen += [event.event_id for event in page.events]
        sizes.append(len(page.events))
        token = page.next_page_token
        if not token:
            break
    assert len(sizes) > 1  # 500 such events do not fit one response
    assert len(seen) == len(set(seen)) == 500
    assert set(seen) == stored
