"""The error tree, its one table of gRPC codes, and the rich google.rpc.Status."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mfa.v1 import types_pb2
from mfa_service import errors
from mfa_service.api.errors import ERROR_DOMAIN, status_code, status_of

REASONS = set(types_pb2.ErrorReason.keys())
LEAVES = errors.leaf_classes()

# Families (what a caller's retry logic depends on) and their codes.
EXPECTED_CODES: dict[type[errors.MfaError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def instance(cls: type[errors.MfaError]) -> errors.MfaError:
    """One instance of a leaf (a new leaf with a required argument belongs here)."""
    if issubclass(cls, errors.InvalidArgument):
        return cls.field("x", "bad")
    if issubclass(cls, errors.ResourceExhausted):
        return cls(timedelta(seconds=30))
    if issubclass(cls, errors.NotImplementedYet):
        return cls("SomeRpc")
    return cls()


def test_the_tree_has_leaves() -> None:
    assert len(LEAVES) >= 18
    assert errors.MfaError not in LEAVES
    for family in EXPECTED_CODES:
        if family is not errors.InvalidArgument:
            assert family not in LEAVES, f"{family.__name__} is a family, not a leaf"


@pytest.mark.parametrize("cls", LEAVES, ids=lambda c: c.__name__)
def test_every_leaf_has_a_code_and_a_proto_reason(cls: type[errors.MfaError]) -> None:
    error = instance(cls)
    family = next(f for f in EXPECTED_CODES if issubclass(cls, f))
    assert status_code(error) == EXPECTED_CODES[family]
    assert cls.reason in REASONS
    assert cls.reason != "ERROR_REASON_UNSPECIFIED"
    assert error.message


def test_leaf_reasons_are_distinct() -> None:
    reasons = [cls.reason for cls in LEAVES]
    assert len(reasons) == len(set(reasons))


def test_every_proto_reason_is_used() -> None:
    used = {cls.reason for cls in LEAVES} | {"ERROR_REASON_INTERNAL"}
    assert used == REASONS - {"ERROR_REASON_UNSPECIFIED"}


def test_an_error_outside_the_table_is_a_lookup_error() -> None:
    class Stray(errors.MfaError):
        reason = "ERROR_REASON_INTERNAL"

    with pytest.raises(LookupError):
        status_code(Stray())


def _details(status: status_pb2.Status) -> dict[str, Message]:
    """The packed details of a status, by message name."""
    found: dict[str, Message] = {}
    for packed in status.details:
        for message in (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.BadRequest(),
            error_details_pb2.RetryInfo(),
        ):
            if packed.Is(message.DESCRIPTOR):
                packed.Unpack(message)
                found[type(message).__name__] = message
    assert len(found) == len(status.details), "an unexpected detail was packed"
    return found


def test_status_of_invalid_argument_carries_bad_request_violations() -> None:
    error = errors.InvalidArgument(
        [
            errors.FieldViolation("settings.totp.issuer", "must not be empty"),
            errors.FieldViolation("settings.totp.skew_steps", "must be 0 or 1"),
        ]
    )
    code, status = status_of(error, "req-1")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "settings.totp.issuer: must not be empty"
    details = _details(status)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("ERROR_REASON_INVALID_ARGUMENT", ERROR_DOMAIN)
    assert ERROR_DOMAIN == "mfa.v1"
    assert dict(info.metadata) == {"request_id": "req-1"}
    bad = details["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("settings.totp.issuer", "must not be empty"),
        ("settings.totp.skew_steps", "must be 0 or 1"),
    ]
    assert "RetryInfo" not in details


def test_status_of_locked_out_carries_the_retry_delay() -> None:
    code, status = status_of(errors.LockedOut(timedelta(minutes=14, seconds=5)), "req-2")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    details = _details(status)
    retry = details["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(minutes=14, seconds=5)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "ERROR_REASON_LOCKED_OUT"
    assert info.metadata["request_id"] == "req-2"
    assert "BadRequest" not in details


@pytest.mark.parametrize("cls", LEAVES, ids=lambda c: c.__name__)
def test_status_of_every_leaf_has_error_info(cls: type[errors.MfaError]) -> None:
    error = instance(cls)
    code, status = status_of(error, "rid")
    assert status.code == getattr(code_pb2, code.name)
    assert status.message == error.message
    info = _details(status)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        cls.reason,
        "mfa.v1",
        {"request_id": "rid"},
    )


def test_invalid_argument_prefixed_names_the_request_path() -> None:
    error = errors.InvalidArgument.field("totp.issuer", "bad").prefixed("settings")
    assert [v.field for v in error.violations] == ["settings.totp.issuer"]
    assert error.message == "settings.totp.issuer: bad"
