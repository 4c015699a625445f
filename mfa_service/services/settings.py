"""GetSettings and UpdateSettings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mfa_service.clock import Clock
from mfa_service.domain import settings as policy
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.model import EnvironmentId
from mfa_service.domain.settings import Settings
from mfa_service.store import audit as audit_store
from mfa_service.store import settings as settings_store
from mfa_service.store.db import Connection, Database


async def load(conn: Connection, environment_id: EnvironmentId) -> Settings:
    """The environment's settings, or the defaults if it was never configured."""
    return await settings_store.get(conn, environment_id) or Settings(environment_id=environment_id)


class SettingsService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get(self, environment_id: EnvironmentId) -> Settings:
        """The environment's settings, or the defaults if it was never configured."""
        async with self._db.transaction() as conn:
            return await load(conn, environment_id)

    async def update(
        self,
        environment_id: EnvironmentId,
        changes: Mapping[str, Any],
        context: CallContext,
    ) -> Settings:
        """Apply ``changes`` (path -> value) to the current settings, validated as a whole."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            await settings_store.lock_environment(conn, environment_id)
            current = await load(conn, environment_id)
            updated = policy.apply_update(current, changes)
            policy.validate(updated)
            changed = policy.changed_paths(current, updated)
            if not changed and current.revision:
                return current
            saved = await settings_store.save(conn, updated, now=now)
            await audit_store.append(
                conn,
                AuditEvent(
                    type=AuditEventType.SETTINGS_CHANGED,
                    environment_id=environment_id,
                    occurred_at=now,
                    context=context,
                    details={"fields": ",".join(changed), "revision": str(saved.revision)},
                ),
            )
        return saved
