"""GetStatus: the user's factors and what is due now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mfa_service.clock import Clock
from mfa_service.domain import policy
from mfa_service.domain.model import Action, EnvironmentId, Method, UserId
from mfa_service.services.settings import load as load_settings
from mfa_service.store import devices as device_store
from mfa_service.store import recovery_codes as recovery_store
from mfa_service.store import sessions as session_store
from mfa_service.store import users as user_store
from mfa_service.store.db import Database


@dataclass(frozen=True, slots=True)
class Status:
    enrollment_required: bool
    session_mfa_pending: bool
    enrolled_methods: tuple[Method, ...]
    protected_actions: tuple[Action, ...]
    locked_until: datetime | None
    recovery_codes_pending_acknowledgement: bool
    recovery_codes_remaining: int


class StatusService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get(self, env: EnvironmentId, user: UserId, session_id: str) -> Status:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            settings = await load_settings(conn, env)
            devices = await device_store.list_for_user(conn, env, user)
            verified_at = (
                await session_store.verified_at(conn, env, user, session_id) if session_id else None
            )
            locked_until = await user_store.locked_until(conn, env, user)
            pending_ack = await recovery_store.pending_acknowledgement(conn, env, user)
            remaining = await recovery_store.remaining(conn, env, user)
        methods = policy.enrolled_methods(settings, [d.method for d in devices])
        return Status(
            enrollment_required=policy.enrollment_required(settings, methods),
            session_mfa_pending=policy.session_mfa_pending(
                settings, methods, session_verified_at=verified_at, now=now
            ),
            enrolled_methods=methods,
            protected_actions=policy.protected_actions(settings, methods),
            locked_until=locked_until if locked_until and locked_until > now else None,
            recovery_codes_pending_acknowledgement=pending_ack,
            recovery_codes_remaining=remaining,
        )
