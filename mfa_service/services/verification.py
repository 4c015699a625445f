"""Challenge and VerifySession, and the one verification path every proof goes through.

A use case reads top to bottom. ``Verifier.read``: the attempt state, the challenge and
the user's devices (``store.verifications.read``), refusing what needs no proof check
(locked out, no such challenge, a malformed proof). Then the use case decides what a
success records, its ``Grant`` (the action token, the verified session; on a challenge
bound to an approval, exactly the approval). ``Verifier.verify``: match the proof
against what was read (pure: ``domain.verification``) and conclude in one statement
under the user's row lock (``store.verifications.conclude``): the challenge used up, the
device's replay state moved forward, the failure counted or the count reset, the audit
events and, on success, the grant. Nothing it decides rests on the read: a stale read
can only make it refuse. A recovery code is checked with scrypt while no pooled
connection is held, and decided in a transaction that locks the user first.

Why a refusal is sometimes returned and not raised: a refused attempt must still count.
Its challenge (or enrollment) stays spent, its failure stays counted, its audit events
stay written; but inside a transaction a raised error rolls all of that back. So a
refusal that counts is a ``Counted`` value: returned out of the transaction that wrote
it, raised by ``settle`` once that transaction has committed. Every path does it this
way (TOTP, passkey, recovery code, enrollment). A refusal that writes nothing (locked
out, no such challenge, bad input) is raised where it is found. Raising a counted
refusal's error inside its transaction instead would quietly stop counting failures
(``tests/test_lockout.py`` and ``tests/test_totp_flow.py`` fail when it does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID

from mfa_service.crypto import KeyRing
from mfa_service.domain import approvals, passkeys, policy, recovery, totp
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.devices import (
    CHALLENGE_TTL,
    MAX_OPEN_CHALLENGES,
    Challenge,
    Device,
    secret_context,
)
from mfa_service.domain.model import EnvironmentId, Method, Proof, UserId
from mfa_service.domain.settings import Settings
from mfa_service.domain.verification import (
    Grant,
    MarkSession,
    Match,
    device_factor_refusal,
    match_passkey,
    match_totp,
)
from mfa_service.errors import (
    ApprovalMismatch,
    ChallengeNotFound,
    DeviceNotFound,
    InvalidArgument,
    LockedOut,
    MfaError,
    RecoveryRequired,
    TooManyChallenges,
    VerificationFailed,
)
from mfa_service.services import audit
from mfa_service.services.runtime import UseCase
from mfa_service.store import challenges as challenge_store
from mfa_service.store import devices as device_store
from mfa_service.store import recovery_codes as recovery_store
from mfa_service.store import verifications as verification_store
from mfa_service.store.db import Connection, Database
from mfa_service.store.verifications import Found, Outcome, WrittenOn

# Recovery-code checks (scrypt, about 8 ms of a core each) run at most this many at once
# per process: a flood of guesses queues in memory, holding no connection and leaving
# the cores to everyone else. Measured with 64 guessers on 2 cores: the signer's
# validations stayed at p50 6-8 ms / p99 17-22 ms, against 10-37 / 155-225 ms unbounded.
KDF_SLOTS = 2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Counted:
    """Refused, but the attempt counts (see the module docstring): return it from the
    transaction that wrote the attempt; ``settle`` raises ``error`` after the commit."""

    error: MfaError


def settle(outcome: T | Counted) -> T:
    """The outcome of a committed attempt: its value, or its counted refusal raised."""
    if isinstance(outcome, Counted):
        raise outcome.error
    return outcome


@dataclass(frozen=True, slots=True)
class Verified:
    """A proof that held: the method and device that verified, and when."""

    method: Method
    device_id: UUID | None
    at: datetime


async def count_failure(
    conn: Connection,
    settings: Settings,
    user: UserId,
    method: Method,
    *,
    now: datetime,
    context: CallContext,
) -> Counted:
    """Count a failed verification in a transaction that holds the user's row lock
    (enrollment, recovery codes), audit it, maybe lock the user out."""
    env = settings.environment_id

    def event(event_type: AuditEventType) -> AuditEvent:
        return audit.event(event_type, env=env, user=user, now=now, context=context, method=method)

    await verification_store.count_failure(
        conn,
        env,
        user,
        now=now,
        lockout=settings.lockout,
        events=[
            (WrittenOn.FAILURE, event(AuditEventType.VERIFICATION_FAILED)),
            (WrittenOn.LOCKOUT, event(AuditEventType.LOCKED_OUT)),
        ],
    )
    return Counted(VerificationFailed())


@dataclass(frozen=True, slots=True)
class Attempt:
    """A proof against a challenge, and what its success records (the grant, with the
    audit events that go with it)."""

    settings: Settings
    user: UserId
    proof: Proof
    grant: Grant
    now: datetime
    context: CallContext
    grant_events: Sequence[AuditEvent] = ()


@dataclass(frozen=True, slots=True)
class Read:
    """What a verification reads before the proof is checked (``Verifier.read``): the
    attempt state and the challenge, still open then (the concluding write decides
    again); the user's devices that may answer it; the proof parsed (a passkey's
    assertion) and, for a recovery code, the unused code of that id, if any."""

    found: Found
    challenge: Challenge
    assertion: passkeys.Assertion | None = None
    stored_code: recovery.HashedCode | None = None


def _device_factor_events(
    attempt: Attempt, method: Method, match: Match
) -> list[tuple[WrittenOn, AuditEvent]]:
    """What the concluding statement may write, each with when: the match's failure
    events, the success (naming the device, the grant's events too) and a lockout."""

    def event(event_type: AuditEventType, device: Device | None = None) -> AuditEvent:
        return audit.event(
            event_type,
            env=attempt.settings.environment_id,
            user=attempt.user,
            now=attempt.now,
            context=attempt.context,
            method=method,
            device_id=device.id if device else None,
        )

    events = [(WrittenOn.FAILURE, event(t, device)) for t, device in match.failures]
    if match.holds and match.device is not None:
        device_id = str(match.device.id)
        succeeded = event(AuditEventType.VERIFICATION_SUCCEEDED, match.device)
        granted = [dataclasses.replace(e, device_id=device_id) for e in attempt.grant_events]
        events += [(WrittenOn.SUCCESS, e) for e in (succeeded, *granted)]
    events.append((WrittenOn.LOCKOUT, event(AuditEventType.LOCKED_OUT)))
    return events


class Verifier:
    """Checks a proof against a challenge, counting failures (all verify paths)."""

    def __init__(self, db: Database, key_ring: KeyRing) -> None:
        self._db = db
        self._key_ring = key_ring
        self._kdf_slots = asyncio.Semaphore(KDF_SLOTS)

    async def read(
        self, settings: Settings, user: UserId, challenge_id: UUID, proof: Proof, *, now: datetime
    ) -> Read:
        """Read what the proof will be checked against, refusing what needs no check: a
        malformed proof, a locked-out user, a challenge that is gone, a proof of another
        method (a recovery code answers a challenge of any method)."""
        env = settings.environment_id
        if proof.method is Method.RECOVERY_CODE:
            code_id, _ = recovery.split(proof.value, "proof.recovery_code")
            async with self._db.connection() as conn:
                found = await verification_store.read(conn, env, user, challenge_id, now=now)
                stored = await recovery_store.find_unused(conn, env, user, code_id)
            if (retry_after := found.attempts.retry_after(now)) is not None:
                raise LockedOut(retry_after)  # decided again when concluding
            if found.challenge is None:
                raise ChallengeNotFound()
            return Read(found, found.challenge, stored_code=stored)
        async with self._db.connection() as conn:
            found = await verification_store.read(conn, env, user, challenge_id, now=now)
        if (refusal := device_factor_refusal(found.attempts, now)) is not None:
            raise refusal  # the challenge is left as it was, nothing counted
        challenge = found.challenge
        if challenge is None:
            raise ChallengeNotFound()
        if proof.method is not challenge.method:
            raise InvalidArgument.field(
                "proof",
                f"a {proof.method.name} proof does not answer a {challenge.method.name} challenge",
            )
        policy.require_enabled(settings, challenge.method)
        if proof.method is Method.TOTP:
            totp.check_code_format(proof.value, "proof.totp_code")
            return Read(found, challenge)
        assertion = passkeys.parse_assertion(proof.value, "proof.passkey_assertion_json")
        return Read(found, challenge, assertion=assertion)

    async def spend(self, read: Read) -> None:
        """Use the challenge up without checking the proof (a request it does not fit)."""
        challenge = read.challenge
        async with self._db.connection() as conn:
            await challenge_store.take(
                conn, challenge.environment_id, challenge.user_id, challenge.id
            )

    async def verify(self, attempt: Attempt, read: Read) -> Verified:
        """Check the attempt's proof against what was read and write the outcome; on
        success also its grant and grant events, in the same statement or transaction.
        Raises the refusal, once written."""
        if attempt.proof.method is Method.RECOVERY_CODE:
            outcome = await self._recovery_code(attempt, read)
        else:
            outcome = await self._device_factor(attempt, read)
        return settle(outcome)

    async def _device_factor(self, attempt: Attempt, read: Read) -> Verified | Counted:
        settings, user, now, challenge = attempt.settings, attempt.user, attempt.now, read.challenge
        matched = self._match(settings, read, attempt.proof, now=now)
        device = matched.device if matched.holds else None
        async with self._db.connection() as conn:
            concluded = await verification_store.conclude(
                conn,
                settings.environment_id,
                user,
                challenge.id,
                now=now,
                device_id=device.id if device else None,
                advance=matched.advance if device else None,
                lockout=settings.lockout,
                grant=attempt.grant,
                events=_device_factor_events(attempt, challenge.method, matched),
            )
        match concluded.outcome:
            case Outcome.SUCCEEDED if device is not None:
                return Verified(challenge.method, device.id, now)
            case Outcome.LOCKED_OUT:
                raise LockedOut(concluded.attempts.retry_after(now) or timedelta(0))
            case Outcome.RECOVERY_REQUIRED:
                raise RecoveryRequired()
            case Outcome.NO_CHALLENGE:
                raise ChallengeNotFound()
        # RFC 6238 §5.2, keycloak#13867: a reused code fails exactly like a wrong one.
        return Counted(VerificationFailed())

    def _match(self, settings: Settings, read: Read, proof: Proof, *, now: datetime) -> Match:
        """Which device answered the challenge, and how (``domain.verification``)."""
        challenge, devices = read.challenge, read.found.devices
        if challenge.device_id is not None:
            devices = [d for d in devices if d.id == challenge.device_id]
        if read.assertion is None:
            return match_totp(
                [(d, self.totp_secret(d)) for d in devices],
                proof.value,
                now=now,
                skew_steps=settings.totp.skew_steps,
            )
        return match_passkey(
            settings.passkey,
            devices,
            read.assertion,
            webauthn_challenge=challenge.webauthn_challenge,
            user_handle=read.found.webauthn_user_handle,
        )

    async def _recovery_code(self, attempt: Attempt, read: Read) -> Verified | Counted:
        """The fallback answers a challenge of any method (a user who lost the device
        finds out at the prompt).

        The read found the code's row; scrypt (about 8 ms, one call per attempt whatever
        is stored) runs off the event loop and holds no pooled connection; one
        transaction, the user's row locked first, decides: the code is spent only if it
        is still the unused row that was checked.
        """
        settings, user, now, context = attempt.settings, attempt.user, attempt.now, attempt.context
        env, challenge_id, stored = settings.environment_id, read.challenge.id, read.stored_code
        _, secret = recovery.split(attempt.proof.value, "proof.recovery_code")
        async with self._kdf_slots:
            matched = await asyncio.to_thread(recovery.matches, secret, stored)
        async with self._db.transaction() as conn:
            begun = await verification_store.begin(conn, env, user, challenge_id, now=now)
            if (retry_after := begun.attempts.retry_after(now)) is not None:
                raise LockedOut(retry_after)  # the challenge is left as it was
            if begun.challenge is None:
                raise ChallengeNotFound()
            if not (
                matched
                and stored is not None
                and await recovery_store.mark_used(conn, env, user, stored, now=now)
            ):
                return await count_failure(
                    conn, settings, user, Method.RECOVERY_CODE, now=now, context=context
                )
            left = str(await recovery_store.remaining(conn, env, user))
            used = [
                audit.event(
                    event_type,
                    env=env,
                    user=user,
                    now=now,
                    context=context,
                    method=Method.RECOVERY_CODE,
                    remaining=left,
                )
                for event_type in (
                    AuditEventType.RECOVERY_CODE_USED,
                    AuditEventType.VERIFICATION_SUCCEEDED,
                )
            ]
            await verification_store.succeed(
                conn, env, user, now=now, grant=attempt.grant, events=[*used, *attempt.grant_events]
            )
        return Verified(Method.RECOVERY_CODE, None, now)

    def totp_secret(self, device: Device) -> str:
        if device.totp_secret_sealed is None:
            raise LookupError(f"TOTP device {device.id} has no secret")
        return self._key_ring.decrypt(
            device.totp_secret_sealed,
            context=secret_context("totp", device.environment_id, device.user_id, device.id),
        ).decode()


class VerificationService(UseCase):
    async def challenge(
        self,
        env: EnvironmentId,
        user: UserId,
        method: Method,
        device_id: UUID | None,
        approval: approvals.Approval | None = None,
    ) -> tuple[Challenge, str]:
        """A new challenge, and for passkeys the WebAuthn request options (JSON). With an
        approval it is bound to it (DESIGN §3d): it expires at a whole second, and a
        passkey's WebAuthn challenge is the approval's hash."""
        now = self._clock.now()
        settings = await self._settings.get(env)
        challenge_id, expires_at = uuid.uuid4(), now + CHALLENGE_TTL
        bound = None
        if approval is not None:
            policy.require_token_allowed(settings, approval.actions, method, "approval.actions")
            expires_at = approvals.whole_second(expires_at)
            bound = approvals.bind(
                approval,
                environment_id=env,
                user_id=user,
                challenge_id=challenge_id,
                expires_at=expires_at,
            )
        async with self._db.transaction() as conn:
            if method is Method.RECOVERY_CODE and device_id is not None:
                raise InvalidArgument.field("device_id", "recovery codes are not a device")
            policy.require_enabled(settings, method)
            owned = await device_store.list_for_user(conn, env, user, methods=[method])
            if device_id is not None:
                owned = [d for d in owned if d.id == device_id]
                if not owned:
                    raise DeviceNotFound()
            webauthn_challenge = None
            if method is Method.PASSKEY:
                webauthn_challenge = bound.hash if bound else passkeys.new_challenge()
            challenge = Challenge(
                id=challenge_id,
                environment_id=env,
                user_id=user,
                method=method,
                device_id=device_id,
                created_at=now,
                expires_at=expires_at,
                webauthn_challenge=webauthn_challenge,
                approval=bound,
            )
            oldest = await challenge_store.insert(conn, challenge, limit=MAX_OPEN_CHALLENGES)
            if oldest is not None:
                raise TooManyChallenges(max(oldest - now, timedelta(seconds=1)))
        options = ""
        if webauthn_challenge is not None:
            options = passkeys.authentication_options(
                settings.passkey,
                allow=[
                    passkeys.StoredCredential(d.passkey.credential_id, d.passkey.transports)
                    for d in owned
                    if d.passkey is not None
                ],
                challenge=webauthn_challenge,
            )
        return challenge, options

    async def verify_session(
        self,
        env: EnvironmentId,
        user: UserId,
        session_id: str,
        challenge_id: UUID,
        proof: Proof,
        context: CallContext,
    ) -> Verified:
        now = self._clock.now()
        settings = await self._settings.get(env)
        read = await self._verifier.read(settings, user, challenge_id, proof, now=now)
        if read.challenge.approval is not None:
            await self._verifier.spend(read)
            raise ApprovalMismatch(
                "the challenge is bound to an approval: it answers IssueActionToken, not a "
                "login; the challenge is spent"
            )
        grant = MarkSession(session_id, proof.method)
        return await self._verifier.verify(
            Attempt(settings, user, proof, grant, now, context), read
        )
