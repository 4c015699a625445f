"""Challenge and VerifySession, and the one verification path every proof goes through.

A device factor (TOTP, passkey) is verified in two round trips without a transaction:
read the challenge and the user's devices, check the proof in memory, then one
statement (``store.verifications.conclude``) decides under the user's row lock: it uses
up the challenge, moves the device's replay state forward, counts a failure or resets
the count, writes the audit events and, on success, the caller's own write (the action
token, the verified session). Nothing it decides rests on the first read: a stale read
can only make it refuse. A recovery code is read, checked with scrypt while no pooled
connection is held, and decided in a transaction that locks the user first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar
from uuid import UUID

from mfa_service.clock import Clock
from mfa_service.crypto import KeyRing
from mfa_service.domain import passkeys, policy, recovery, totp
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.devices import (
    CHALLENGE_TTL,
    MAX_OPEN_CHALLENGES,
    Challenge,
    Device,
    secret_context,
)
from mfa_service.domain.lockout import AttemptState
from mfa_service.domain.model import EnvironmentId, Method, Proof, UserId
from mfa_service.domain.settings import Settings
from mfa_service.errors import (
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
from mfa_service.services.settings import SettingsCache
from mfa_service.store import challenges as challenge_store
from mfa_service.store import devices as device_store
from mfa_service.store import recovery_codes as recovery_store
from mfa_service.store import sessions as session_store
from mfa_service.store import users as user_store
from mfa_service.store import verifications as verification_store
from mfa_service.store.db import Connection, Database

# Checked when a user has no TOTP device, so an unknown user costs what a known one does
# (ASVS 6.3.8: no enumeration through timing).
_DECOY_SECRET = totp.new_secret()
# Recovery-code checks (scrypt, about 8 ms of a core each) run at most this many at once
# per process: a flood of guesses queues in memory, holding no connection and leaving
# the cores to everyone else. Measured with 64 guessers on 2 cores: the signer's
# validations stayed at p50 6-8 ms / p99 17-22 ms, against 10-37 / 155-225 ms unbounded.
KDF_SLOTS = 2


@dataclass(frozen=True, slots=True)
class Verified:
    """A proof that held: the method and device that verified, and when."""

    method: Method
    device_id: UUID | None
    at: datetime


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Success(Generic[T]):
    """What the caller writes when a verification succeeds, made in the same statement
    (or transaction), and what ``Verifier.verify`` then returns."""

    write: verification_store.SuccessWrite
    events: tuple[AuditEvent, ...]
    result: T


@dataclass(frozen=True, slots=True)
class _Answer:
    """What checking a proof in memory found.

    ``device``: the device whose secret answered; ``advance``: how its replay state must
    move for the proof to hold (None: it may not hold, e.g. a code at or before the
    device's last step); ``failures``: the audit events of a failure, each with the
    device it names.
    """

    device: Device | None
    advance: verification_store.Advance | None
    failures: tuple[tuple[AuditEventType, Device | None], ...]


_NO_ANSWER = _Answer(None, None, ((AuditEventType.VERIFICATION_FAILED, None),))


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


class Verifier:
    """Checks a proof against a challenge, counting failures (all verify paths)."""

    def __init__(self, db: Database, key_ring: KeyRing) -> None:
        self._db = db
        self._key_ring = key_ring
        self._kdf_slots = asyncio.Semaphore(KDF_SLOTS)

    async def check_not_locked(
        self, conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime
    ) -> LockedOut | RecoveryRequired | None:
        """Lock the user's row for this transaction; the refusal of a device factor
        (an authenticator app's code, a passkey) if there is one: LockedOut while a
        lockout lasts, then RecoveryRequired at the hard limit."""
        state = await user_store.lock_for_verification(conn, env, user, now=now)
        return device_factor_refusal(state, now)

    async def verify(
        self,
        *,
        settings: Settings,
        env: EnvironmentId,
        user: UserId,
        challenge_id: UUID,
        proof: Proof,
        now: datetime,
        context: CallContext,
        on_success: Callable[[Verified], Success[T]],
    ) -> T | MfaError:
        """Verify ``proof`` and write the outcome. ``on_success`` builds the caller's
        write for the success it is given; it is made only if the proof holds."""
        if proof.method is Method.RECOVERY_CODE:
            return await self._verify_recovery_code(
                settings, user, challenge_id, proof.value, on_success, now=now, context=context
            )
        async with self._db.connection() as conn:
            found = await verification_store.read(conn, env, user, challenge_id, now=now)
            if (refusal := device_factor_refusal(found.attempts, now)) is not None:
                return refusal  # the challenge is left as it was, nothing counted
            challenge = found.challenge
            if challenge is None:
                return ChallengeNotFound()
            if proof.method is not challenge.method:
                raise InvalidArgument.field(
                    "proof",
                    f"a {proof.method.name} proof does not answer a "
                    f"{challenge.method.name} challenge",
                )
            policy.require_enabled(settings, challenge.method)
            devices = found.devices
            if challenge.device_id is not None:
                devices = [d for d in devices if d.id == challenge.device_id]
            if challenge.method is Method.TOTP:
                code = totp.check_code_format(proof.value, "proof.totp_code")
                answer = self._match_totp(settings, devices, code, now=now)
            else:
                assertion = passkeys.parse_assertion(proof.value, "proof.passkey_assertion_json")
                answer = self._match_passkey(settings, found, devices, assertion, challenge)
            success = None
            if answer.device is not None and answer.advance is not None:
                success = on_success(Verified(challenge.method, answer.device.id, now))

            def event(event_type: AuditEventType, device: Device | None = None) -> AuditEvent:
                return audit.event(
                    event_type,
                    env=env,
                    user=user,
                    now=now,
                    context=context,
                    method=challenge.method,
                    device_id=device.id if device else None,
                )

            events = [
                (verification_store.EVENT_ON_FAILURE, event(event_type, device))
                for event_type, device in answer.failures
            ]
            if success is not None:
                succeeded = event(AuditEventType.VERIFICATION_SUCCEEDED, answer.device)
                events += [
                    (verification_store.EVENT_ON_SUCCESS, e) for e in (succeeded, *success.events)
                ]
            events.append((verification_store.EVENT_ON_LOCKOUT, event(AuditEventType.LOCKED_OUT)))
            concluded = await verification_store.conclude(
                conn,
                env,
                user,
                challenge.id,
                now=now,
                device_id=answer.device.id if success and answer.device else None,
                advance=answer.advance if success else None,
                max_failed_attempts=settings.lockout.max_failed_attempts,
                lockout_duration=settings.lockout.lockout_duration,
                success=success.write if success else None,
                events=events,
            )
        match concluded.outcome:
            case verification_store.Outcome.SUCCEEDED if success is not None:
                return success.result
            case verification_store.Outcome.LOCKED_OUT:
                return LockedOut(concluded.attempts.retry_after(now) or timedelta(0))
            case verification_store.Outcome.RECOVERY_REQUIRED:
                return RecoveryRequired()
            case verification_store.Outcome.NO_CHALLENGE:
                return ChallengeNotFound()
        # RFC 6238 §5.2, keycloak#13867: a reused code fails exactly like a wrong one.
        return VerificationFailed()

    async def _verify_recovery_code(
        self,
        settings: Settings,
        user: UserId,
        challenge_id: UUID,
        code: str,
        on_success: Callable[[Verified], Success[T]],
        *,
        now: datetime,
        context: CallContext,
    ) -> T | MfaError:
        """The fallback answers a challenge of any method (a user who lost the device
        finds out at the prompt).

        A read finds the attempt state, the challenge and the code's row; scrypt (about
        8 ms, one call per attempt whatever is stored) then runs off the event loop and
        holds no pooled connection; one transaction, the user's row locked first,
        decides: the code is spent only if it is still the unused row that was checked.
        """
        env = settings.environment_id
        code_id, secret = recovery.split(code, "proof.recovery_code")
        async with self._db.connection() as conn:
            found = await verification_store.read(conn, env, user, challenge_id, now=now)
            stored = await recovery_store.find_unused(conn, env, user, code_id)
        if (retry_after := found.attempts.retry_after(now)) is not None:
            return LockedOut(retry_after)  # decided again below; nothing spent here
        if found.challenge is None:
            return ChallengeNotFound()
        async with self._kdf_slots:
            matched = await asyncio.to_thread(recovery.matches, secret, stored)
        async with self._db.transaction() as conn:
            begun = await verification_store.begin(conn, env, user, challenge_id, now=now)
            if (retry_after := begun.attempts.retry_after(now)) is not None:
                return LockedOut(retry_after)  # the challenge is left as it was
            if begun.challenge is None:
                return ChallengeNotFound()
            if not (
                matched
                and stored is not None
                and await recovery_store.mark_used(conn, env, user, stored, now=now)
            ):
                return await self.record_failure(
                    conn,
                    settings=settings,
                    user=user,
                    method=Method.RECOVERY_CODE,
                    now=now,
                    context=context,
                )
            if begun.attempts.failed_attempts:
                await user_store.record_success(conn, env, user)
            left = await recovery_store.remaining(conn, env, user)
            success = on_success(Verified(Method.RECOVERY_CODE, None, now))
            await conn.execute(success.write.render(1, "true"), *success.write.args)
            used = tuple(
                audit.event(
                    event,
                    env=env,
                    user=user,
                    now=now,
                    context=context,
                    method=Method.RECOVERY_CODE,
                    remaining=str(left),
                )
                for event in (
                    AuditEventType.RECOVERY_CODE_USED,
                    AuditEventType.VERIFICATION_SUCCEEDED,
                )
            )
            await audit.write(conn, used + success.events)
        return success.result

    def _match_passkey(
        self,
        settings: Settings,
        found: verification_store.Found,
        devices: list[Device],
        assertion: passkeys.Assertion,
        challenge: Challenge,
    ) -> _Answer:
        # WebAuthn §7.2 steps 5-6: the credential must be one of this user's (and in
        # allowCredentials when the challenge named a device), and a userHandle, when
        # sent, must be this user's.
        device = next(
            (
                d
                for d in devices
                if d.passkey is not None and d.passkey.credential_id == assertion.credential_id
            ),
            None,
        )
        if device is None or device.passkey is None or challenge.webauthn_challenge is None:
            return _NO_ANSWER
        handle = assertion.user_handle
        if handle is not None and handle != found.webauthn_user_handle:
            return _NO_ANSWER
        result = passkeys.verify_assertion(
            settings.passkey,
            assertion,
            challenge=challenge.webauthn_challenge,
            public_key=device.passkey.public_key,
        )
        # §7.2 step 19: the backup eligibility of a credential never changes.
        if result is None or result.backup_eligible != device.passkey.backup_eligible:
            return _NO_ANSWER
        # A counter that does not move forward (a possible cloned authenticator) is
        # refused and audited. The device was read without a lock, so the deciding
        # statement checks the counter again as it is then.
        regressed = (
            (AuditEventType.SIGN_COUNT_REGRESSION, device),
            (AuditEventType.VERIFICATION_FAILED, None),
        )
        if not passkeys.sign_count_ok(device.passkey.sign_count, result.new_sign_count):
            return _Answer(device, None, regressed)
        advance = verification_store.SignCount(result.new_sign_count, result.backed_up)
        return _Answer(device, advance, regressed)

    async def record_failure(
        self,
        conn: Connection,
        *,
        settings: Settings,
        user: UserId,
        method: Method,
        now: datetime,
        context: CallContext,
    ) -> MfaError:
        """Count a failed verification in a transaction that holds the user's row lock
        (enrollment, recovery codes), audit it, maybe lock the user out."""
        env = settings.environment_id
        await audit.record(
            conn,
            AuditEventType.VERIFICATION_FAILED,
            env=env,
            user=user,
            now=now,
            context=context,
            method=method,
        )
        state = await user_store.record_failure(
            conn,
            env,
            user,
            now=now,
            max_failed_attempts=settings.lockout.max_failed_attempts,
            lockout_duration=settings.lockout.lockout_duration,
        )
        details = state.lockout_details(now)
        if details is not None:
            locked = audit.event(
                AuditEventType.LOCKED_OUT,
                env=env,
                user=user,
                now=now,
                context=context,
                method=method,
            )
            await audit.write(conn, [dataclasses.replace(locked, details=details)])
        return VerificationFailed()

    def totp_secret(self, device: Device) -> str:
        if device.totp_secret_sealed is None:
            raise LookupError(f"TOTP device {device.id} has no secret")
        return self._key_ring.decrypt(
            device.totp_secret_sealed,
            context=secret_context("totp", device.environment_id, device.user_id, device.id),
        ).decode()

    def _match_totp(
        self, settings: Settings, devices: list[Device], code: str, *, now: datetime
    ) -> _Answer:
        """The device whose code this is, preferring one that has not accepted its step."""
        skew = settings.totp.skew_steps
        if not devices:
            totp.matching_step(secret=_DECOY_SECRET, code=code, at=now, skew_steps=skew)
        reused = None
        for device in devices:
            step = totp.matching_step(
                secret=self.totp_secret(device), code=code, at=now, skew_steps=skew
            )
            if step is None:
                continue
            replayed = ((AuditEventType.CODE_REUSED, device),)
            # Decided again by the deciding statement, on the row as it is then.
            if device.totp_last_step is None or device.totp_last_step < step:
                return _Answer(device, verification_store.TotpStep(step), replayed)
            reused = _Answer(device, None, replayed)
        return reused or _NO_ANSWER


class VerificationService:
    def __init__(
        self, db: Database, clock: Clock, verifier: Verifier, settings: SettingsCache
    ) -> None:
        self._db = db
        self._clock = clock
        self._verifier = verifier
        self._settings = settings

    async def challenge(
        self, env: EnvironmentId, user: UserId, method: Method, device_id: UUID | None
    ) -> tuple[Challenge, str]:
        """A new challenge, and for passkeys the WebAuthn request options (JSON)."""
        now = self._clock.now()
        settings = await self._settings.get(env)
        async with self._db.transaction() as conn:
            if method is Method.RECOVERY_CODE and device_id is not None:
                raise InvalidArgument.field("device_id", "recovery codes are not a device")
            policy.require_enabled(settings, method)
            owned = await device_store.list_for_user(conn, env, user, methods=[method])
            if device_id is not None:
                owned = [d for d in owned if d.id == device_id]
                if not owned:
                    raise DeviceNotFound()
            webauthn_challenge = passkeys.new_challenge() if method is Method.PASSKEY else None
            challenge = Challenge(
                id=uuid.uuid4(),
                environment_id=env,
                user_id=user,
                method=method,
                device_id=device_id,
                created_at=now,
                expires_at=now + CHALLENGE_TTL,
                webauthn_challenge=webauthn_challenge,
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

        def mark_session(verified: Verified) -> Success[Verified]:
            write = session_store.mark_verified_on_success(
                env,
                user,
                session_id,
                method=verified.method,
                device_id=verified.device_id,
                now=now,
            )
            return Success(write, (), verified)

        outcome = await self._verifier.verify(
            settings=settings,
            env=env,
            user=user,
            challenge_id=challenge_id,
            proof=proof,
            now=now,
            context=context,
            on_success=mark_session,
        )
        if isinstance(outcome, MfaError):
            raise outcome
        return outcome
