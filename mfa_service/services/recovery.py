"""Recovery codes: the first set with the first device, RegenerateRecoveryCodes and
AcknowledgeRecoveryCodes."""

from __future__ import annotations

import asyncio
from datetime import datetime

from mfa_service.clock import Clock
from mfa_service.domain import recovery
from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.model import Action, EnvironmentId, UserId
from mfa_service.errors import NotEnrolled
from mfa_service.services import audit
from mfa_service.services.action_tokens import ActionTokenService
from mfa_service.services.settings import SettingsCache
from mfa_service.store import devices as device_store
from mfa_service.store import recovery_codes as recovery_store
from mfa_service.store import users as user_store
from mfa_service.store.db import Connection, Database


async def new_set(
    conn: Connection, env: EnvironmentId, user: UserId, *, now: datetime, context: CallContext
) -> tuple[str, ...]:
    """Ten new codes replacing any older set; the caller shows them once."""
    codes = recovery.generate()
    hashed = await asyncio.to_thread(lambda: [recovery.hash_code(c) for c in codes])
    await recovery_store.replace_set(conn, env, user, hashed, now=now)
    await audit.record(
        conn,
        AuditEventType.RECOVERY_CODES_GENERATED,
        env=env,
        user=user,
        now=now,
        context=context,
        count=str(len(codes)),
    )
    return tuple(codes)


class RecoveryService:
    def __init__(
        self, db: Database, clock: Clock, tokens: ActionTokenService, settings: SettingsCache
    ) -> None:
        self._db = db
        self._clock = clock
        self._tokens = tokens
        self._settings = settings

    async def regenerate(
        self, env: EnvironmentId, user: UserId, *, action_token: str, context: CallContext
    ) -> tuple[str, ...]:
        now = self._clock.now()
        await self._settings.require(env)
        async with self._db.transaction() as conn:
            await user_store.ensure(conn, env, user, now=now)
            if not await device_store.list_for_user(conn, env, user):
                raise NotEnrolled("recovery codes come with a verified device")
            # DESIGN §2: replacing the codes is always protected.
            await self._tokens.require_step_up(
                conn,
                env,
                user,
                Action.RECOVERY_CODES_REGENERATE,
                action_token,
                now=now,
                context=context,
            )
            return await new_set(conn, env, user, now=now, context=context)

    async def acknowledge(self, env: EnvironmentId, user: UserId, context: CallContext) -> None:
        now = self._clock.now()
        await self._settings.require(env)
        async with self._db.transaction() as conn:
            if await recovery_store.acknowledge(conn, env, user):
                await audit.record(
                    conn,
                    AuditEventType.RECOVERY_CODES_ACKNOWLEDGED,
                    env=env,
                    user=user,
                    now=now,
                    context=context,
                )
