"""Matching a proof against what a verification read: pure, time passed in.

A verification reads the attempt state, the challenge and the devices that may answer it
(``store.verifications.read``), matches the proof here, and concludes in one statement
(``store.verifications.conclude``). A match says which device answered and how its
replay state must move; the concluding statement decides again on the rows as they are
then, so a stale read can only make it refuse. What a success records (an action token,
a verified session) is a ``Grant``: a value the store writes, in that same statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mfa_service.domain import passkeys, totp
from mfa_service.domain.audit import AuditEventType
from mfa_service.domain.devices import Device
from mfa_service.domain.lockout import AttemptState
from mfa_service.domain.model import Method
from mfa_service.domain.settings import PasskeySettings
from mfa_service.domain.tokens import ActionClaims
from mfa_service.errors import LockedOut, RecoveryRequired

# Checked when a user has no TOTP device, so an unknown user costs what a known one does
# (ASVS 6.3.8: no enumeration through timing).
_DECOY_SECRET = totp.new_secret()


@dataclass(frozen=True, slots=True)
class TotpStep:
    """Accept this time step on the device, if it is after the last one accepted."""

    step: int


@dataclass(frozen=True, slots=True)
class SignCount:
    """Move the passkey's signature counter forward (both zero: a synced passkey)."""

    new: int
    backed_up: bool


Advance = TotpStep | SignCount


@dataclass(frozen=True, slots=True)
class Match:
    """What matching a proof found.

    ``device``: the device whose secret answered; ``advance``: how its replay state must
    move for the proof to hold (None: it may not, e.g. a code at or before the device's
    last step); ``failures``: the audit events of a failure, each with the device it
    names.
    """

    device: Device | None
    advance: Advance | None
    failures: tuple[tuple[AuditEventType, Device | None], ...]

    @property
    def holds(self) -> bool:
        return self.device is not None and self.advance is not None


NO_MATCH = Match(None, None, ((AuditEventType.VERIFICATION_FAILED, None),))


@dataclass(frozen=True, slots=True)
class IssueToken:
    """Record this action token (its claims and the SHA-256 of its text)."""

    claims: ActionClaims
    token_hash: bytes


@dataclass(frozen=True, slots=True)
class MarkSession:
    """Mark this login session verified by ``method``."""

    session_id: str
    method: Method


# What a verification records when it succeeds; the device that answered (None for a
# recovery code) is the one the concluding statement moved forward.
Grant = IssueToken | MarkSession


def device_factor_refusal(
    state: AttemptState, now: datetime
) -> LockedOut | RecoveryRequired | None:
    """Why an authenticator app's code or a passkey may not be tried now, if it may not:
    a lockout first (with its delay), whatever the count, then the hard limit."""
    if (retry_after := state.retry_after(now)) is not None:
        return LockedOut(retry_after)
    if state.recovery_required:
        return RecoveryRequired()
    return None


def match_totp(
    secrets: Sequence[tuple[Device, str]], code: str, *, now: datetime, skew_steps: int
) -> Match:
    """The device whose code this is (``secrets``: each device with its opened secret),
    preferring one that has not accepted the code's step yet."""
    if not secrets:
        totp.matching_step(secret=_DECOY_SECRET, code=code, at=now, skew_steps=skew_steps)
    reused = None
    for device, secret in secrets:
        step = totp.matching_step(secret=secret, code=code, at=now, skew_steps=skew_steps)
        if step is None:
            continue
        replayed = ((AuditEventType.CODE_REUSED, device),)
        # Decided again by the concluding statement, on the row as it is then.
        if device.totp_last_step is None or device.totp_last_step < step:
            return Match(device, TotpStep(step), replayed)
        reused = Match(device, None, replayed)
    return reused or NO_MATCH


def match_passkey(
    settings: PasskeySettings,
    devices: Sequence[Device],
    assertion: passkeys.Assertion,
    *,
    webauthn_challenge: bytes | None,
    user_handle: bytes | None,
) -> Match:
    """The passkey that signed ``assertion`` over ``webauthn_challenge``, if one did."""
    # WebAuthn §7.2 steps 5-6: the credential must be one of ``devices`` (the user's, or
    # the one the challenge named: allowCredentials), and a userHandle, when sent, must be
    # this user's.
    device = next(
        (
            d
            for d in devices
            if d.passkey is not None and d.passkey.credential_id == assertion.credential_id
        ),
        None,
    )
    if device is None or device.passkey is None or webauthn_challenge is None:
        return NO_MATCH
    if assertion.user_handle is not None and assertion.user_handle != user_handle:
        return NO_MATCH
    result = passkeys.verify_assertion(
        settings,
        assertion,
        challenge=webauthn_challenge,
        public_key=device.passkey.public_key,
    )
    # §7.2 step 19: the backup eligibility of a credential never changes.
    if result is None or result.backup_eligible != device.passkey.backup_eligible:
        return NO_MATCH
    # A counter that does not move forward (a possible cloned authenticator) is refused
    # and audited. The device was read without a lock, so the concluding statement checks
    # the counter again as it is then.
    regressed = (
        (AuditEventType.SIGN_COUNT_REGRESSION, device),
        (AuditEventType.VERIFICATION_FAILED, None),
    )
    if not passkeys.sign_count_ok(device.passkey.sign_count, result.new_sign_count):
        return Match(device, None, regressed)
    return Match(device, SignCount(result.new_sign_count, result.backed_up), regressed)
