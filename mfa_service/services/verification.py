"""Challenge and VerifySession, and the one verification path every proof goes through.

Each verification runs in one transaction that first locks the user's row: attempts
of one user are serialized, so the lockout count and the replay checks are exact. A
failed verification still commits (the failure is counted, the challenge is used up),
so failures are returned as values inside the transaction and raised after it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from mfa_service.clock import Clock
from mfa_service.crypto import KeyRing
from mfa_service.domain import passkeys, recovery, totp
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.devices import CHALLENGE_TTL, Challenge, Device, secret_context
from mfa_service.domain.lockout import AttemptState
from mfa_service.domain.model import EnvironmentId, Method, Proof, UserId
from mfa_service.domain.settings import Settings
from mfa_service.errors import (
    ChallengeNotFound,
    DeviceNotFound,
    InvalidArgument,
    LockedOut,
    MethodDisabled,
    MfaError,
    PasskeyNotConfigured,
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


@dataclass(frozen=True, slots=True)
class Verified:
    """A proof that held. ``events``: its audit events, not yet written: the caller
    writes them with its own changes (one statement for both, on the hot paths)."""

    method: Method
    device_id: UUID | None
    at: datetime
    events: tuple[AuditEvent, ...]


def require_enabled(settings: Settings, method: Method) -> None:
    if method not in (Method.TOTP, Method.PASSKEY):
        return
    if method not in settings.enabled_methods:
        raise MethodDisabled(f"{method.name} is disabled in this environment's settings")
    if method is Method.PASSKEY and not (
        settings.passkey.rp_id and settings.passkey.allowed_origins
    ):
        raise PasskeyNotConfigured()


class Verifier:
    """Checks a proof against a consumed challenge, counting failures (all verify paths)."""

    def __init__(self, key_ring: KeyRing) -> None:
        self._key_ring = key_ring

    async def check_not_locked(
        self, conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime
    ) -> LockedOut | None:
        """Lock the user's row for this transaction; a LockedOut if they are locked out."""
        state = await user_store.lock_for_verification(conn, env, user, now=now)
        retry_after = state.retry_after(now)
        return None if retry_after is None else LockedOut(retry_after)

    async def verify(
        self,
        conn: Connection,
        *,
        settings: Settings,
        env: EnvironmentId,
        user: UserId,
        challenge_id: UUID,
        proof: Proof,
        now: datetime,
        context: CallContext,
    ) -> Verified | MfaError:
        begun = await verification_store.begin(conn, env, user, challenge_id, now=now)
        attempts, challenge = begun.attempts, begun.challenge
        if (retry_after := attempts.retry_after(now)) is not None:
            return LockedOut(retry_after)  # the challenge is left as it was
        if challenge is None:
            return ChallengeNotFound()
        if proof.method is Method.RECOVERY_CODE:
            # The fallback answers a challenge of any method (a user who lost the device
            # finds out at the prompt).
            return await self._verify_recovery_code(
                conn, settings, user, proof.value, attempts, now=now, context=context
            )
        if proof.method is not challenge.method:
            raise InvalidArgument.field(
                "proof",
                f"a {proof.method.name} proof does not answer a {challenge.method.name} challenge",
            )
        require_enabled(settings, challenge.method)
        devices = begun.devices
        if challenge.device_id is not None:
            devices = [d for d in devices if d.id == challenge.device_id]
        reused = regressed = None
        if challenge.method is Method.TOTP:
            code = totp.check_code_format(proof.value, "proof.totp_code")
            matched, reused = await self._match_totp(conn, settings, devices, code, now=now)
        else:
            assertion = passkeys.parse_assertion(proof.value, "proof.passkey_assertion_json")
            matched, regressed = await self._match_passkey(
                conn, settings, user, devices, assertion, challenge, now=now
            )
        if matched is not None:
            if attempts.failed_attempts:
                await user_store.record_success(conn, env, user)
            succeeded = audit.event(
                AuditEventType.VERIFICATION_SUCCEEDED,
                env=env,
                user=user,
                now=now,
                context=context,
                method=challenge.method,
                device_id=matched.id,
            )
            return Verified(challenge.method, matched.id, now, (succeeded,))
        if regressed is not None:
            await audit.record(
                conn,
                AuditEventType.SIGN_COUNT_REGRESSION,
                env=env,
                user=user,
                now=now,
                context=context,
                method=Method.PASSKEY,
                device_id=regressed.id,
            )
        return await self.record_failure(
            conn,
            settings=settings,
            user=user,
            method=challenge.method,
            reused_device=reused,
            now=now,
            context=context,
        )

    async def _verify_recovery_code(
        self,
        conn: Connection,
        settings: Settings,
        user: UserId,
        code: str,
        attempts: AttemptState,
        *,
        now: datetime,
        context: CallContext,
    ) -> Verified | MfaError:
        env = settings.environment_id
        code_id, secret = recovery.split(code, "proof.recovery_code")
        stored = await recovery_store.find_unused(conn, env, user, code_id)
        # scrypt runs off the event loop; one call per attempt, whatever is stored.
        if await asyncio.to_thread(recovery.matches, secret, stored) and (
            await recovery_store.mark_used(conn, env, user, code_id, now=now)
        ):
            if attempts.failed_attempts:
                await user_store.record_success(conn, env, user)
            left = await recovery_store.remaining(conn, env, user)
            events = tuple(
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
            return Verified(Method.RECOVERY_CODE, None, now, events)
        return await self.record_failure(
            conn,
            settings=settings,
            user=user,
            method=Method.RECOVERY_CODE,
            now=now,
            context=context,
        )

    async def _match_passkey(
        self,
        conn: Connection,
        settings: Settings,
        user: UserId,
        devices: list[Device],
        assertion: passkeys.Assertion,
        challenge: Challenge,
        *,
        now: datetime,
    ) -> tuple[Device | None, Device | None]:
        """(the device that verified, a device whose counter went backwards)."""
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
            return None, None
        handle = assertion.user_handle
        if handle is not None and handle != await user_store.get_webauthn_user_handle(
            conn, settings.environment_id, user
        ):
            return None, None
        result = passkeys.verify_assertion(
            settings.passkey,
            assertion,
            challenge=challenge.webauthn_challenge,
            public_key=device.passkey.public_key,
        )
        # §7.2 step 19: the backup eligibility of a credential never changes.
        if result is None or result.backup_eligible != device.passkey.backup_eligible:
            return None, None
        # A counter that does not move forward (a possible cloned authenticator) is
        # refused and audited. The devices were read before this user's row lock was
        # granted, so the database decides on the counter as it is now.
        if not passkeys.sign_count_ok(
            device.passkey.sign_count, result.new_sign_count
        ) or not await device_store.advance_sign_count(
            conn,
            device.id,
            new=result.new_sign_count,
            backed_up=result.backed_up,
            now=now,
        ):
            return None, device
        return device, None

    async def record_failure(
        self,
        conn: Connection,
        *,
        settings: Settings,
        user: UserId,
        method: Method,
        now: datetime,
        context: CallContext,
        reused_device: Device | None = None,
    ) -> MfaError:
        """Count a failed verification (a reused code is one too), audit it, maybe lock."""
        env = settings.environment_id
        await audit.record(
            conn,
            AuditEventType.CODE_REUSED if reused_device else AuditEventType.VERIFICATION_FAILED,
            env=env,
            user=user,
            now=now,
            context=context,
            method=method,
            device_id=reused_device.id if reused_device else None,
        )
        state = await user_store.record_failure(
            conn,
            env,
            user,
            now=now,
            max_failed_attempts=settings.lockout.max_failed_attempts,
            lockout_duration=settings.lockout.lockout_duration,
        )
        retry_after = state.retry_after(now)
        if retry_after is not None:
            await audit.record(
                conn,
                AuditEventType.LOCKED_OUT,
                env=env,
                user=user,
                now=now,
                context=context,
                method=method,
                failed_attempts=str(state.failed_attempts),
            )
        # RFC 6238 §5.2, keycloak#13867: a reused code fails exactly like a wrong one.
        return VerificationFailed()

    def totp_secret(self, device: Device) -> str:
        if device.totp_secret_sealed is None:
            raise LookupError(f"TOTP device {device.id} has no secret")
        return self._key_ring.decrypt(
            device.totp_secret_sealed,
            context=secret_context("totp", device.environment_id, device.user_id, device.id),
        ).decode()

    async def _match_totp(
        self,
        conn: Connection,
        settings: Settings,
        devices: list[Device],
        code: str,
        *,
        now: datetime,
    ) -> tuple[Device | None, Device | None]:
        """(the device that accepted the code, a device whose code was replayed)."""
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
            if await device_store.accept_totp_step(conn, device.id, step, now=now):
                return device, None
            reused = device
        return None, reused


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
            require_enabled(settings, method)
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
            await challenge_store.insert(conn, challenge)
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
        async with self._db.transaction() as conn:
            outcome = await self._verifier.verify(
                conn,
                settings=settings,
                env=env,
                user=user,
                challenge_id=challenge_id,
                proof=proof,
                now=now,
                context=context,
            )
            if isinstance(outcome, Verified):
                await audit.write(conn, outcome.events)
                await session_store.mark_verified(
                    conn,
                    env,
                    user,
                    session_id,
                    method=outcome.method,
                    device_id=outcome.device_id,
                    now=now,
                )
        if isinstance(outcome, MfaError):
            raise outcome
        return outcome
