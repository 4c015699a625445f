"""ListDevices, UpdateDevice and DeleteDevice."""

from __future__ import annotations

from uuid import UUID

from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.devices import Device
from mfa_service.domain.model import Action, EnvironmentId, UserId
from mfa_service.errors import DeviceNotFound
from mfa_service.services import audit
from mfa_service.services.action_tokens import ActionTokenService
from mfa_service.services.runtime import Runtime, UseCase
from mfa_service.store import action_tokens as token_store
from mfa_service.store import devices as device_store
from mfa_service.store import enrollments as enrollment_store
from mfa_service.store import recovery_codes as recovery_store
from mfa_service.store import users as user_store


class DeviceService(UseCase):
    def __init__(self, runtime: Runtime, tokens: ActionTokenService) -> None:
        super().__init__(runtime)
        self._tokens = tokens

    async def list(self, env: EnvironmentId, user: UserId) -> list[Device]:
        await self._settings.require(env)
        async with self._db.transaction() as conn:
            return await device_store.list_for_user(conn, env, user)

    async def update(
        self,
        env: EnvironmentId,
        user: UserId,
        device_id: UUID,
        *,
        alias: str,
        make_default: bool,
        context: CallContext,
    ) -> Device:
        now = self._clock.now()
        await self._settings.require(env)
        async with self._db.transaction() as conn:
            device = await device_store.update(
                conn, env, user, device_id, alias=alias or None, make_default=make_default
            )
            if device is None:
                raise DeviceNotFound()
            changed = [
                name for name, on in (("alias", bool(alias)), ("default", make_default)) if on
            ]
            await audit.record_device_event(
                conn,
                AuditEventType.DEVICE_UPDATED,
                device,
                now=now,
                context=context,
                fields=",".join(changed),
            )
        return device

    async def delete(
        self,
        env: EnvironmentId,
        user: UserId,
        device_id: UUID,
        *,
        action_token: str,
        context: CallContext,
    ) -> None:
        """Remove a factor: needs an ACTION_CREDENTIAL_UNLINK token (DESIGN §2).

        The tokens the device earned die with it, and so do the user's pending
        enrollments (begun under factors that have changed). The last factor takes the
        recovery codes with it: the user is back to not enrolled. The user's row lock
        orders this against every other change of their factors and codes, so two
        deletes of the last two devices cannot both see one left.
        """
        now = self._clock.now()
        settings = await self._settings.get(env)
        async with self._db.transaction() as conn:
            await user_store.lock(conn, env, user, now=now)
            owned = await device_store.list_for_user(conn, env, user)
            device = next((d for d in owned if d.id == device_id), None)
            if device is None:
                raise DeviceNotFound()
            await self._tokens.require_step_up(
                conn,
                env,
                user,
                Action.CREDENTIAL_UNLINK,
                action_token,
                settings=settings,
                now=now,
                context=context,
            )
            await device_store.delete(conn, device.id)
            revoked = await token_store.revoke_for_device(conn, env, user, device.id, now=now)
            await enrollment_store.delete_for_user(conn, env, user)
            if len(owned) == 1:
                await recovery_store.delete_all(conn, env, user)
            elif device.is_default:
                await device_store.make_oldest_default(conn, env, user)
            await audit.record_device_event(
                conn,
                AuditEventType.DEVICE_DELETED,
                device,
                now=now,
                context=context,
                remaining_devices=str(len(owned) - 1),
                tokens_revoked=str(revoked),
            )
