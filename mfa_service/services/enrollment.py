"""Enroll and CompleteEnrollment."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from mfa_service.clock import Clock
from mfa_service.crypto import KeyRing
from mfa_service.domain import totp
from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.devices import ENROLLMENT_TTL, Device, Enrollment, secret_context
from mfa_service.domain.model import Action, EnvironmentId, Method, UserId
from mfa_service.errors import (
    DeviceLimitReached,
    EnrollmentNotFound,
    MfaError,
    NotImplementedYet,
)
from mfa_service.services import audit
from mfa_service.services.action_tokens import ActionTokenService
from mfa_service.services.settings import load as load_settings
from mfa_service.services.verification import Verifier, require_enabled
from mfa_service.store import devices as device_store
from mfa_service.store import enrollments as enrollment_store
from mfa_service.store import users as user_store
from mfa_service.store.db import Database

DEFAULT_TOTP_ALIAS = "Authenticator app"


@dataclass(frozen=True, slots=True)
class TotpEnrollmentStarted:
    enrollment_id: UUID
    secret: str
    otpauth_uri: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class EnrollmentCompleted:
    device: Device
    recovery_codes: tuple[str, ...]


class EnrollmentService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        key_ring: KeyRing,
        verifier: Verifier,
        tokens: ActionTokenService,
    ) -> None:
        self._db = db
        self._clock = clock
        self._key_ring = key_ring
        self._verifier = verifier
        self._tokens = tokens

    async def enroll_totp(
        self,
        env: EnvironmentId,
        user: UserId,
        *,
        account_name: str,
        action_token: str,
        context: CallContext,
    ) -> TotpEnrollmentStarted:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            settings = await load_settings(conn, env)
            require_enabled(settings, Method.TOTP)
            await user_store.ensure(conn, env, user, now=now)
            if await device_store.list_for_user(conn, env, user):
                # DESIGN §2: a factor next to an existing one needs that factor first.
                await self._tokens.require_step_up(
                    conn, env, user, Action.CREDENTIAL_LINK, action_token, now=now
                )
            if await device_store.count(conn, env, user, Method.TOTP) >= settings.totp.max_devices:
                raise DeviceLimitReached()
            enrollment_id = uuid.uuid4()
            secret = totp.new_secret()
            sealed = self._key_ring.encrypt(
                secret.encode(), context=secret_context("totp", env, user, enrollment_id)
            )
            enrollment = Enrollment(
                id=enrollment_id,
                environment_id=env,
                user_id=user,
                method=Method.TOTP,
                created_at=now,
                expires_at=now + ENROLLMENT_TTL,
                totp_secret_sealed=sealed,
            )
            await enrollment_store.replace(conn, enrollment)
            await audit.record(
                conn,
                AuditEventType.ENROLLMENT_STARTED,
                env=env,
                user=user,
                now=now,
                context=context,
                method=Method.TOTP,
                device_id=enrollment_id,
            )
        return TotpEnrollmentStarted(
            enrollment_id=enrollment_id,
            secret=secret,
            otpauth_uri=totp.provisioning_uri(
                secret=secret, account_name=account_name, issuer=settings.totp.issuer
            ),
            expires_at=enrollment.expires_at,
        )

    async def complete_totp(
        self,
        env: EnvironmentId,
        user: UserId,
        *,
        enrollment_id: UUID,
        code: str,
        alias: str,
        context: CallContext,
    ) -> EnrollmentCompleted:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            settings = await load_settings(conn, env)
            outcome: EnrollmentCompleted | MfaError
            locked = await self._verifier.check_not_locked(conn, env, user, now=now)
            enrollment = await enrollment_store.get_live(conn, enrollment_id, env, user, now=now)
            if locked is not None:
                outcome = locked
            elif enrollment is None:
                outcome = EnrollmentNotFound()
            elif enrollment.method is not Method.TOTP:
                raise NotImplementedYet("passkey enrollment")
            else:
                require_enabled(settings, Method.TOTP)
                secret = self._key_ring.decrypt(
                    enrollment.totp_secret_sealed or b"",
                    context=secret_context("totp", env, user, enrollment.id),
                ).decode()
                step = totp.matching_step(
                    secret=secret, code=code, at=now, skew_steps=settings.totp.skew_steps
                )
                if step is None:
                    outcome = await self._verifier.record_failure(
                        conn,
                        settings=settings,
                        user=user,
                        method=Method.TOTP,
                        now=now,
                        context=context,
                    )
                else:
                    count = await device_store.count(conn, env, user, Method.TOTP)
                    if count >= settings.totp.max_devices:
                        raise DeviceLimitReached()
                    device = await device_store.insert_totp(
                        conn,
                        device_id=enrollment.id,
                        env=env,
                        user=user,
                        alias=alias or DEFAULT_TOTP_ALIAS,
                        sealed_secret=enrollment.totp_secret_sealed or b"",
                        accepted_step=step,
                        now=now,
                    )
                    await enrollment_store.delete(conn, enrollment.id)
                    await user_store.record_success(conn, env, user)
                    await audit.record(
                        conn,
                        AuditEventType.ENROLLMENT_COMPLETED,
                        env=env,
                        user=user,
                        now=now,
                        context=context,
                        method=Method.TOTP,
                        device_id=device.id,
                    )
                    outcome = EnrollmentCompleted(device=device, recovery_codes=())
        if isinstance(outcome, MfaError):
            raise outcome
        return outcome
