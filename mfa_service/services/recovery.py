"""Recovery codes: the first set with the first device, RegenerateRecoveryCodes and
AcknowledgeRecoveryCodes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from mfa_service.domain import recovery
from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.model import Action, EnvironmentId, UserId
from mfa_service.domain.recovery import HashedCode
from mfa_service.errors import NotEnrolled
from mfa_service.services import audit
from mfa_service.services.action_tokens import ActionTokenService
from mfa_service.services.runtime import Runtime, UseCase
from mfa_service.store import devices as device_store
from mfa_service.store import recovery_codes as recovery_store
from mfa_service.store import users as user_store
from mfa_service.store.db import Connection


@dataclass(frozen=True, slots=True)
class PreparedSet:
    """Ten new codes and their hashes, made before a transaction opens: hashing them
    costs about 80 ms of scrypt, which must not hold a pooled connection."""

    codes: tuple[str, ...]
    hashed: tuple[HashedCode, ...]


async def prepare_set() -> PreparedSet:
    codes = recovery.generate()
    hashed = await asyncio.to_thread(lambda: [recovery.hash_code(c) for c in codes])
    return PreparedSet(tuple(codes), tuple(hashed))


async def new_set(
    conn: Connection,
    env: EnvironmentId,
    user: UserId,
    *,
    now: datetime,
    context: CallContext,
    prepared: PreparedSet | None = None,
    regenerated: bool,
) -> tuple[str, ...]:
    """Ten new codes replacing any older set; the caller shows them once.

    ``regenerated``: the user asked for this set (RegenerateRecoveryCodes); not: the first
    set, with the first factor. The event says which: the user is told of a regenerated
    set; of the first, they are told as of the factor it came with.

    ``prepared``: the set made before the transaction; without it (a caller that could
    not foresee it, e.g. a first factor raced in) the set is hashed here.
    """
    prepared = prepared or await prepare_set()
    codes, hashed = prepared.codes, list(prepared.hashed)
    await recovery_store.replace_set(conn, env, user, hashed, now=now)
    await audit.record(
        conn,
        AuditEventType.RECOVERY_CODES_GENERATED,
        env=env,
        user=user,
        now=now,
        context=context,
        count=str(len(codes)),
        regenerated=str(regenerated).lower(),
    )
    return tuple(codes)


class RecoveryService(UseCase):
    def __init__(self, runtime: Runtime, tokens: ActionTokenService) -> None:
        super().__init__(runtime)
        self._tokens = tokens

    async def regenerate(
        self, env: EnvironmentId, user: UserId, *, action_token: str, context: CallContext
    ) -> tuple[str, ...]:
        now = self._clock.now()
        settings = await self._settings.get(env)
        # The new set is hashed before the transaction, and only for a token that could
        # pass (a read, nothing consumed): a forged one costs no scrypt. A token that
        # cannot pass gets the transaction's refusal, as before.
        prepared = None
        if await self._tokens.may_step_up(
            settings, user, Action.RECOVERY_CODES_REGENERATE, action_token, now=now
        ):
            prepared = await prepare_set()
        async with self._db.transaction() as conn:
            # One change of a user's factors or codes at a time (DeleteDevice, the first
            # factor): the last device takes its codes with it under any interleaving.
            await user_store.lock(conn, env, user, now=now)
            if not await device_store.list_for_user(conn, env, user):
                raise NotEnrolled("recovery codes come with a verified device")
            # DESIGN §2: replacing the codes is always protected.
            await self._tokens.require_step_up(
                conn,
                env,
                user,
                Action.RECOVERY_CODES_REGENERATE,
                action_token,
                settings=settings,
                now=now,
                context=context,
            )
            return await new_set(
                conn, env, user, now=now, context=context, prepared=prepared, regenerated=True
            )

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
