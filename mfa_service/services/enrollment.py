"""Enroll and CompleteEnrollment."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from webauthn.helpers.structs import RegistrationCredential

from mfa_service.domain import passkeys, policy, totp
from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.devices import (
    CHALLENGE_TTL,
    ENROLLMENT_TTL,
    Device,
    Enrollment,
    secret_context,
)
from mfa_service.domain.model import Action, EnvironmentId, Method, UserId
from mfa_service.domain.settings import Settings
from mfa_service.domain.verification import device_factor_refusal
from mfa_service.errors import (
    CredentialAlreadyRegistered,
    DeviceLimitReached,
    EnrollmentNotFound,
    InvalidArgument,
    StepUpRequired,
)
from mfa_service.services import audit
from mfa_service.services import recovery as recovery_service
from mfa_service.services.action_tokens import ActionTokenService
from mfa_service.services.runtime import Runtime, UseCase
from mfa_service.services.settings import load as load_settings
from mfa_service.services.verification import Counted, count_failure, settle
from mfa_service.store import devices as device_store
from mfa_service.store import enrollments as enrollment_store
from mfa_service.store import users as user_store
from mfa_service.store.db import Connection

DEFAULT_TOTP_ALIAS = "Authenticator app"
DEFAULT_PASSKEY_ALIAS = "Passkey"
MAX_PASSKEYS = 10


@dataclass(frozen=True, slots=True)
class EnrollmentStarted:
    """A pending enrollment: for an authenticator app its secret and ``otpauth://`` URI,
    for a passkey the WebAuthn creation options (JSON)."""

    enrollment_id: UUID
    expires_at: datetime
    totp_secret: str = ""
    otpauth_uri: str = ""
    creation_options_json: str = ""


@dataclass(frozen=True, slots=True)
class EnrollmentCompleted:
    device: Device
    recovery_codes: tuple[str, ...]


async def _lock_unless_refused(
    conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime
) -> None:
    """Lock the user's row for this transaction, or refuse a locked-out user (also at
    the hard limit: a new factor waits for a recovery code or a reset)."""
    state = await user_store.lock_for_verification(conn, env, user, now=now)
    if (refusal := device_factor_refusal(state, now)) is not None:
        raise refusal


class EnrollmentService(UseCase):
    def __init__(self, runtime: Runtime, tokens: ActionTokenService) -> None:
        super().__init__(runtime)
        self._tokens = tokens

    async def enroll(
        self,
        env: EnvironmentId,
        user: UserId,
        method: Method,
        *,
        account_name: str,
        action_token: str,
        context: CallContext,
    ) -> EnrollmentStarted:
        """Start enrolling a factor of ``method`` (replacing the user's pending one)."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            settings = await load_settings(conn, env)
            linked = await self._start(
                conn,
                settings,
                env,
                user,
                method=method,
                action_token=action_token,
                now=now,
                context=context,
            )
            enrollment = Enrollment(
                id=uuid.uuid4(),
                environment_id=env,
                user_id=user,
                method=method,
                created_at=now,
                expires_at=now + (ENROLLMENT_TTL if method is Method.TOTP else CHALLENGE_TTL),
                linked=linked,
            )
            if method is Method.TOTP:
                enrollment, started = self._pending_totp(enrollment, settings, account_name)
            else:
                enrollment, started = await self._pending_passkey(
                    conn, enrollment, settings, account_name
                )
            await self._save_pending(conn, enrollment, context=context)
        return started

    def _pending_totp(
        self, enrollment: Enrollment, settings: Settings, account_name: str
    ) -> tuple[Enrollment, EnrollmentStarted]:
        """A new secret, sealed for the pending row and shown once to the user."""
        env, user = enrollment.environment_id, enrollment.user_id
        secret = totp.new_secret()
        sealed = self._key_ring.encrypt(
            secret.encode(), context=secret_context("totp", env, user, enrollment.id)
        )
        started = EnrollmentStarted(
            enrollment_id=enrollment.id,
            expires_at=enrollment.expires_at,
            totp_secret=secret,
            otpauth_uri=totp.provisioning_uri(
                secret=secret, account_name=account_name, issuer=settings.totp.issuer
            ),
        )
        return dataclasses.replace(enrollment, totp_secret_sealed=sealed), started

    @staticmethod
    async def _pending_passkey(
        conn: Connection, enrollment: Enrollment, settings: Settings, account_name: str
    ) -> tuple[Enrollment, EnrollmentStarted]:
        """A registration challenge, and the options that exclude the user's passkeys."""
        env, user = enrollment.environment_id, enrollment.user_id
        handle = await user_store.webauthn_user_handle(
            conn, env, user, new_handle=passkeys.new_user_handle()
        )
        existing = await device_store.list_for_user(conn, env, user, methods=[Method.PASSKEY])
        challenge = passkeys.new_challenge()
        options = passkeys.registration_options(
            settings.passkey,
            rp_name=settings.rp_name,
            user_handle=handle,
            user_name=account_name,
            exclude=[
                passkeys.StoredCredential(d.passkey.credential_id, d.passkey.transports)
                for d in existing
                if d.passkey is not None
            ],
            challenge=challenge,
        )
        started = EnrollmentStarted(
            enrollment_id=enrollment.id,
            expires_at=enrollment.expires_at,
            creation_options_json=options,
        )
        return dataclasses.replace(enrollment, webauthn_challenge=challenge), started

    async def complete(
        self,
        env: EnvironmentId,
        user: UserId,
        *,
        enrollment_id: UUID,
        totp_code: str | None = None,
        registration_json: str | None = None,
        alias: str,
        context: CallContext,
    ) -> EnrollmentCompleted:
        """CompleteEnrollment: an authenticator app's first code, or a passkey's
        registration response (``registration_json``)."""
        method, field = Method.TOTP, "totp_code"
        credential = None
        if registration_json is not None:
            method, field = Method.PASSKEY, "passkey_registration_json"
            credential = passkeys.parse_registration(registration_json, field)
        now = self._clock.now()
        prepared = await self._first_factor_codes(
            env, user, enrollment_id, now=now, totp_code=totp_code
        )
        async with self._db.transaction() as conn:
            settings = await load_settings(conn, env)
            await _lock_unless_refused(conn, env, user, now=now)
            # A registration challenge is single use: taken out whatever happens next, so
            # from here a refusal is ``Counted`` (it keeps the enrollment spent). A TOTP
            # enrollment stays until its code is right.
            find = enrollment_store.get_live if credential is None else enrollment_store.take_live
            enrollment = await find(conn, enrollment_id, env, user, now=now)
            if enrollment is None:
                raise EnrollmentNotFound()
            if enrollment.method is not method:
                other = "a passkey" if credential is None else "an authenticator app"
                raise InvalidArgument.field(field, f"this enrollment is for {other}")
            added: Device | Counted | None = await self._step_up_missing(conn, enrollment)
            if added is None:
                policy.require_enabled(settings, method)
                if credential is None:
                    added = await self._add_totp(
                        conn, settings, enrollment, totp_code or "", alias, now, context
                    )
                else:
                    added = await self._add_passkey(
                        conn, settings, enrollment, credential, alias, now, context
                    )
            if isinstance(added, Counted):
                outcome: EnrollmentCompleted | Counted = added
            else:
                outcome = await self._completed(
                    conn, added, now=now, context=context, prepared=prepared
                )
        return settle(outcome)  # a Counted refusal is raised once its writes committed

    async def _add_totp(
        self,
        conn: Connection,
        settings: Settings,
        enrollment: Enrollment,
        code: str,
        alias: str,
        now: datetime,
        context: CallContext,
    ) -> Device | Counted:
        """The authenticator app, if the code fits its secret (a wrong code counts)."""
        env, user = enrollment.environment_id, enrollment.user_id
        secret = self._key_ring.decrypt(
            enrollment.totp_secret_sealed or b"",
            context=secret_context("totp", env, user, enrollment.id),
        ).decode()
        step = totp.matching_step(
            secret=secret, code=code, at=now, skew_steps=settings.totp.skew_steps
        )
        if step is None:
            return await count_failure(conn, settings, user, Method.TOTP, now=now, context=context)
        if await device_store.count(conn, env, user, Method.TOTP) >= settings.totp.max_devices:
            raise DeviceLimitReached()
        device = await device_store.insert_totp(
            conn, enrollment, alias=alias or DEFAULT_TOTP_ALIAS, accepted_step=step, now=now
        )
        await enrollment_store.delete(conn, enrollment.id)
        return device

    @staticmethod
    async def _add_passkey(
        conn: Connection,
        settings: Settings,
        enrollment: Enrollment,
        credential: RegistrationCredential,
        alias: str,
        now: datetime,
        context: CallContext,
    ) -> Device | Counted:
        """The passkey, if its registration verifies against the enrollment's challenge
        (a failed one counts; the enrollment is spent either way)."""
        env, user = enrollment.environment_id, enrollment.user_id
        registered = passkeys.verify_registration(
            settings.passkey, credential, challenge=enrollment.webauthn_challenge or b""
        )
        if registered is None:
            return await count_failure(
                conn, settings, user, Method.PASSKEY, now=now, context=context
            )
        if await device_store.passkey_credential_taken(conn, registered.credential_id):
            return Counted(CredentialAlreadyRegistered())
        if await device_store.count(conn, env, user, Method.PASSKEY) >= MAX_PASSKEYS:
            return Counted(DeviceLimitReached())
        device = await device_store.insert_passkey(
            conn, enrollment, alias=alias or DEFAULT_PASSKEY_ALIAS, credential=registered, now=now
        )
        if device is None:  # another user registered it in the meantime
            raise CredentialAlreadyRegistered()
        return device

    async def _start(
        self,
        conn: Connection,
        settings: Settings,
        env: EnvironmentId,
        user: UserId,
        *,
        method: Method,
        action_token: str,
        now: datetime,
        context: CallContext,
    ) -> bool:
        """What every enrollment checks first: method on, step-up, room for a device.
        True when it consumed an ACTION_CREDENTIAL_LINK token (the user has a factor)."""
        policy.require_enabled(settings, method)
        # One change of the user's factors at a time: of concurrent Enroll calls one
        # pending enrollment per method is left (``enrollment_store.replace``).
        await user_store.lock(conn, env, user, now=now)
        linked = False
        if await device_store.list_for_user(conn, env, user):
            # DESIGN §2: a factor next to an existing one needs that factor first.
            await self._tokens.require_step_up(
                conn,
                env,
                user,
                Action.CREDENTIAL_LINK,
                action_token,
                settings=settings,
                now=now,
                context=context,
            )
            linked = True
        limit = settings.totp.max_devices if method is Method.TOTP else MAX_PASSKEYS
        if await device_store.count(conn, env, user, method) >= limit:
            raise DeviceLimitReached()
        return linked

    async def _first_factor_codes(
        self,
        env: EnvironmentId,
        user: UserId,
        enrollment_id: UUID,
        *,
        now: datetime,
        totp_code: str | None = None,
    ) -> recovery_service.PreparedSet | None:
        """The recovery codes of the user's first factor, hashed before the transaction
        opens (about 80 ms of scrypt must not hold a pooled connection), when a read
        says this completion will likely add it: the user has no device, is not locked
        out, the enrollment is live and, for TOTP, the code fits its secret. A guess
        costs no scrypt; a completion the read did not foresee hashes in the transaction.
        """
        async with self._db.connection() as conn:
            enrollment = await enrollment_store.first_factor_candidate(
                conn, enrollment_id, env, user, now=now
            )
        if enrollment is None:
            return None
        if totp_code is not None:
            if enrollment.totp_secret_sealed is None:
                return None
            secret = self._key_ring.decrypt(
                enrollment.totp_secret_sealed,
                context=secret_context("totp", env, user, enrollment.id),
            ).decode()
            if totp.matching_step(secret=secret, code=totp_code, at=now, skew_steps=1) is None:
                return None
        return await recovery_service.prepare_set()

    async def _step_up_missing(self, conn: Connection, enrollment: Enrollment) -> Counted | None:
        """Step-up is decided when a factor is added, under the user's row lock: next to
        an existing factor only an enrollment that consumed an ACTION_CREDENTIAL_LINK
        token may complete. Another one is ended (its start was not authorized), and
        stays ended: the refusal is ``Counted``."""
        env, user = enrollment.environment_id, enrollment.user_id
        if enrollment.linked or not await device_store.list_for_user(conn, env, user):
            return None
        await enrollment_store.delete(conn, enrollment.id)
        return Counted(
            StepUpRequired(
                "the user has a factor now: start the enrollment again with an "
                "ACTION_CREDENTIAL_LINK action token"
            )
        )

    @staticmethod
    async def _save_pending(
        conn: Connection, enrollment: Enrollment, *, context: CallContext
    ) -> None:
        """Store a started enrollment (replacing the user's other pending one) and audit it."""
        await enrollment_store.replace(conn, enrollment)
        await audit.record_device_event(
            conn,
            AuditEventType.ENROLLMENT_STARTED,
            enrollment,
            now=enrollment.created_at,
            context=context,
        )

    async def _completed(
        self,
        conn: Connection,
        device: Device,
        *,
        now: datetime,
        context: CallContext,
        prepared: recovery_service.PreparedSet | None,
    ) -> EnrollmentCompleted:
        """A verified device: success resets the failures; the user's first device
        comes with ten recovery codes, shown this once, and ends every other pending
        enrollment (begun without step-up, when the user had no factor to step up with)."""
        env, user = device.environment_id, device.user_id
        await user_store.reset_failures(conn, env, user)
        await audit.record_device_event(
            conn,
            AuditEventType.ENROLLMENT_COMPLETED,
            device,
            now=now,
            context=context,
        )
        codes: tuple[str, ...] = ()
        if len(await device_store.list_for_user(conn, env, user)) == 1:
            await enrollment_store.delete_for_user(conn, env, user)
            codes = await recovery_service.new_set(
                conn, env, user, now=now, context=context, prepared=prepared, regenerated=False
            )
        return EnrollmentCompleted(device=device, recovery_codes=codes)
