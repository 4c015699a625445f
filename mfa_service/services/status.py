"""GetStatus: the user's factors and what is due now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mfa_service.domain import lockout, policy
from mfa_service.domain.model import Action, EnvironmentId, Method, UserId
from mfa_service.services.runtime import UseCase
from mfa_service.store import status as status_store


@dataclass(frozen=True, slots=True)
class Status:
    enrollment_required: bool
    session_mfa_pending: bool
    enrolled_methods: tuple[Method, ...]
    protected_actions: tuple[Action, ...]
    locked_until: datetime | None
    recovery_codes_pending_acknowledgement: bool
    recovery_codes_remaining: int
    recovery_required: bool


class StatusService(UseCase):
    async def get(self, env: EnvironmentId, user: UserId, session_id: str) -> Status:
        """Settings from the cache, the user's state in one statement."""
        now = self._clock.now()
        settings = await self._settings.get(env)
        async with self._db.connection() as conn:
            found = await status_store.snapshot(conn, env, user, session_id or None)
        methods = policy.enrolled_methods(found.device_methods)
        locked_until = found.locked_until
        return Status(
            enrollment_required=policy.enrollment_required(settings, methods),
            session_mfa_pending=policy.session_mfa_pending(
                settings, methods, session_verified_at=found.session_verified_at, now=now
            ),
            enrolled_methods=methods,
            protected_actions=policy.protected_actions(settings, methods),
            locked_until=locked_until if locked_until and locked_until > now else None,
            recovery_codes_pending_acknowledgement=found.recovery_codes_pending_ack,
            recovery_codes_remaining=found.recovery_codes_remaining,
            recovery_required=lockout.recovery_required(found.failed_attempts),
        )
