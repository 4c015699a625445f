"""ResetUserMfa."""

from __future__ import annotations

from dataclasses import dataclass

from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.services import audit
from mfa_service.services.runtime import UseCase
from mfa_service.store import resets


@dataclass(frozen=True, slots=True)
class ResetResult:
    devices_removed: int
    tokens_revoked: int


class AdminService(UseCase):
    async def reset_user(
        self, env: EnvironmentId, user: UserId, *, reason: str, context: CallContext
    ) -> ResetResult:
        """Remove every factor and pending enrollment, forget verified sessions and
        revoke outstanding action tokens: all in one transaction."""
        now = self._clock.now()
        await self._settings.require(env)
        async with self._db.transaction() as conn:
            devices, tokens = await resets.reset_user(conn, env, user, now=now)
            await audit.record(
                conn,
                AuditEventType.USER_RESET,
                env=env,
                user=user,
                now=now,
                context=context,
                reason=reason,
                devices_removed=str(devices),
                tokens_revoked=str(tokens),
            )
        return ResetResult(devices_removed=devices, tokens_revoked=tokens)
