"""The one error tree of mfa-service.

Every failure a caller can act on is an ``MfaError``. Each leaf carries a ``reason``,
the name of a value of the proto enum ``mfa.v1.ErrorReason`` (sent as
``google.rpc.ErrorInfo.reason``); its family decides the gRPC status code, in one table
in ``mfa_service.api.errors``. Messages are written for the calling engineer and never
contain a secret, a code or a token.

    MfaError
    ├── InvalidArgument            INVALID_ARGUMENT     (field violations attached)
    ├── NotFound                   NOT_FOUND
    │   ├── EnrollmentNotFound
    │   ├── ChallengeNotFound
    │   ├── DeviceNotFound
    │   ├── EnvironmentNotFound
    │   └── WebhookNotFound
    ├── AlreadyExists              ALREADY_EXISTS
    │   ├── CredentialAlreadyRegistered
    │   └── EnvironmentAlreadyExists
    ├── FailedPrecondition         FAILED_PRECONDITION
    │   ├── MethodDisabled
    │   ├── DeviceLimitReached
    │   ├── ActionNotProtected
    │   ├── MethodNotAllowed
    │   ├── NotEnrolled
    │   ├── PasskeyNotConfigured
    │   └── RecoveryRequired
    ├── PermissionDenied           PERMISSION_DENIED
    │   ├── VerificationFailed
    │   ├── StepUpRequired
    │   └── CallerNotAuthorized
    ├── Unauthenticated            UNAUTHENTICATED      (the calling service, never a user)
    │   └── CallerUnauthenticated
    ├── ResourceExhausted          RESOURCE_EXHAUSTED   (retry delay attached)
    │   ├── LockedOut
    │   └── TooManyChallenges
    ├── Unavailable                UNAVAILABLE
    │   └── DatabaseUnavailable
    └── Unimplemented              UNIMPLEMENTED
        └── NotImplementedYet
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field; ``field`` is its request path, e.g. ``settings.totp.issuer``."""

    field: str
    description: str


class MfaError(Exception):
    """Base of every error a caller can act on."""

    reason: ClassVar[str] = "ERROR_REASON_UNSPECIFIED"
    default_message: ClassVar[str] = "request failed"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


# --- families (abstract: raise a leaf) -------------------------------------------


class NotFound(MfaError):
    pass


class AlreadyExists(MfaError):
    pass


class FailedPrecondition(MfaError):
    pass


class PermissionDenied(MfaError):
    pass


class Unauthenticated(MfaError):
    pass


class ResourceExhausted(MfaError):
    """Refused for now: ``retry_after`` says when to try again (google.rpc.RetryInfo)."""

    def __init__(self, retry_after: timedelta) -> None:
        self.retry_after = retry_after
        super().__init__()


class Unavailable(MfaError):
    pass


class Unimplemented(MfaError):
    pass


# --- leaves ------------------------------------------------------------------------


class InvalidArgument(MfaError):
    reason = "ERROR_REASON_INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        self.violations = violations if isinstance(violations, list) else [violations]
        first = self.violations[0]
        super().__init__(f"{first.field}: {first.description}")

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field, description))

    def prefixed(self, prefix: str) -> InvalidArgument:
        """The same violations with ``prefix.`` before each field path."""
        return InvalidArgument(
            [FieldViolation(f"{prefix}.{v.field}", v.description) for v in self.violations]
        )


class EnrollmentNotFound(NotFound):
    reason = "ERROR_REASON_ENROLLMENT_NOT_FOUND"
    default_message = "no pending enrollment with this id (unknown, expired or completed)"


class ChallengeNotFound(NotFound):
    reason = "ERROR_REASON_CHALLENGE_NOT_FOUND"
    default_message = "no usable challenge with this id (unknown, expired or already used)"


class DeviceNotFound(NotFound):
    reason = "ERROR_REASON_DEVICE_NOT_FOUND"
    default_message = "no such device for this user"


class EnvironmentNotFound(NotFound):
    reason = "ERROR_REASON_ENVIRONMENT_NOT_FOUND"
    default_message = "no such environment: create it with AdminService.CreateEnvironment"


class WebhookNotFound(NotFound):
    reason = "ERROR_REASON_WEBHOOK_NOT_FOUND"
    default_message = "no webhook with this id in this environment"


class CredentialAlreadyRegistered(AlreadyExists):
    reason = "ERROR_REASON_CREDENTIAL_ALREADY_REGISTERED"
    default_message = "this passkey is already registered"


class EnvironmentAlreadyExists(AlreadyExists):
    reason = "ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS"
    default_message = "an environment with this id exists already"


class MethodDisabled(FailedPrecondition):
    reason = "ERROR_REASON_METHOD_DISABLED"
    default_message = "this method is disabled in the environment's settings"


class DeviceLimitReached(FailedPrecondition):
    reason = "ERROR_REASON_DEVICE_LIMIT_REACHED"
    default_message = "the user has as many devices of this method as the settings allow"


class ActionNotProtected(FailedPrecondition):
    reason = "ERROR_REASON_ACTION_NOT_PROTECTED"
    default_message = "the action is not protected in this environment"


class MethodNotAllowed(FailedPrecondition):
    reason = "ERROR_REASON_METHOD_NOT_ALLOWED"
    default_message = "this method is not accepted for action MFA in this environment"


class NotEnrolled(FailedPrecondition):
    reason = "ERROR_REASON_NOT_ENROLLED"
    default_message = "the user has no verified factor of this method"


class PasskeyNotConfigured(FailedPrecondition):
    reason = "ERROR_REASON_PASSKEY_NOT_CONFIGURED"
    default_message = "passkeys need passkey.rp_id and passkey.allowed_origins in the settings"


class RecoveryRequired(FailedPrecondition):
    reason = "ERROR_REASON_RECOVERY_REQUIRED"
    default_message = (
        "too many consecutive failed attempts: the authenticator app and passkeys stay "
        "locked until a recovery code succeeds or an administrator resets the user"
    )


class ApprovalMismatch(FailedPrecondition):
    reason = "ERROR_REASON_APPROVAL_MISMATCH"
    default_message = (
        "the challenge is bound to an approval and this request asks for something else "
        "(actions, payload_digest, single_use or session_id); the challenge is spent"
    )


class ApprovalRequired(FailedPrecondition):
    reason = "ERROR_REASON_APPROVAL_REQUIRED"
    default_message = "this action's policy requires an approval: bind the challenge to one"


class VerificationFailed(PermissionDenied):
    reason = "ERROR_REASON_VERIFICATION_FAILED"
    default_message = "verification failed"


class StepUpRequired(PermissionDenied):
    reason = "ERROR_REASON_STEP_UP_REQUIRED"
    default_message = "this change needs a valid action token for the credential action"


class CallerNotAuthorized(PermissionDenied):
    reason = "ERROR_REASON_CALLER_NOT_AUTHORIZED"
    default_message = "the calling service may not call this method"


class CallerUnauthenticated(Unauthenticated):
    reason = "ERROR_REASON_CALLER_UNAUTHENTICATED"
    default_message = "the calling service presented no valid identity"


class LockedOut(ResourceExhausted):
    reason = "ERROR_REASON_LOCKED_OUT"
    default_message = "too many failed attempts; try again later"


class TooManyChallenges(ResourceExhausted):
    reason = "ERROR_REASON_TOO_MANY_CHALLENGES"
    default_message = "too many open challenges for this user; retry when the oldest expires"


class DatabaseUnavailable(Unavailable):
    reason = "ERROR_REASON_DATABASE_UNAVAILABLE"
    # Neutral: a statement outside a transaction may have taken effect before its answer
    # was lost. store.db says more where it knows more (nothing changed; outcome unknown).
    default_message = "the database is unavailable; retry later"


class NotImplementedYet(Unimplemented):
    reason = "ERROR_REASON_NOT_IMPLEMENTED"

    def __init__(self, rpc: str) -> None:
        super().__init__(f"{rpc} is part of the mfa.v1 contract but not available in this build")


def leaf_classes() -> list[type[MfaError]]:
    """Every concrete error class (the ones with a reason of their own)."""
    found: list[type[MfaError]] = []
    pending: list[type[MfaError]] = [MfaError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.reason != "ERROR_REASON_UNSPECIFIED":
            found.append(cls)
    return found
