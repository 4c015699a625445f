"""Devices, pending enrollments, challenges and verified sessions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from mfa_service.domain.approvals import Bound
from mfa_service.domain.model import EnvironmentId, Method, UserId

ENROLLMENT_TTL = timedelta(minutes=10)
CHALLENGE_TTL = timedelta(minutes=5)  # WebAuthn §13.4.3 / RFD 155: at most 5 minutes
# A user's challenges open at once: a login page opened a few times stays well under it;
# a script creating thousands is refused until the oldest expires.
MAX_OPEN_CHALLENGES = 32
# NIST SP 800-63B-4 §2.2.3: an AAL2 session re-authenticates at least every 24 hours.
SESSION_MFA_MAX_AGE = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Device:
    id: UUID
    environment_id: EnvironmentId
    user_id: UserId
    method: Method
    alias: str
    is_default: bool
    created_at: datetime
    last_used_at: datetime | None
    totp_secret_sealed: bytes | None = None
    totp_last_step: int | None = None
    passkey: PasskeyCredential | None = None


@dataclass(frozen=True, slots=True)
class PasskeyCredential:
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    aaguid: str
    backup_eligible: bool
    backed_up: bool


@dataclass(frozen=True, slots=True)
class Enrollment:
    id: UUID
    environment_id: EnvironmentId
    user_id: UserId
    method: Method
    created_at: datetime
    expires_at: datetime
    totp_secret_sealed: bytes | None = None
    webauthn_challenge: bytes | None = None
    # Enroll consumed an ACTION_CREDENTIAL_LINK token for it: it may add a factor next to
    # the user's existing ones.
    linked: bool = False


@dataclass(frozen=True, slots=True)
class Challenge:
    id: UUID
    environment_id: EnvironmentId
    user_id: UserId
    method: Method
    device_id: UUID | None
    created_at: datetime
    expires_at: datetime
    webauthn_challenge: bytes | None = None
    # Bound to what the user approves (DESIGN §3d): then a passkey's WebAuthn challenge
    # is the approval's hash.
    approval: Bound | None = None


def secret_context(
    kind: str, environment_id: EnvironmentId, user_id: UserId, device_id: UUID
) -> bytes:
    """Associated data binding a sealed secret to its row: a copy elsewhere won't open.

    Ids are printable ASCII (checked at the API), so NUL separates them unambiguously.
    """
    return b"\x00".join(part.encode() for part in (kind, environment_id, user_id, str(device_id)))
