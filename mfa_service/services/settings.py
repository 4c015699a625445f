"""GetSettings and UpdateSettings."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mfa_service.clock import Clock
from mfa_service.domain import settings as policy
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.model import EnvironmentId
from mfa_service.domain.settings import Settings
from mfa_service.store import audit as audit_store
from mfa_service.store import notifications
from mfa_service.store import settings as settings_store
from mfa_service.store.db import Connection, Database
from mfa_service.store.notifications import SettingsListener


async def load(conn: Connection, environment_id: EnvironmentId) -> Settings:
    """The environment's settings, or the defaults if it was never configured."""
    return await settings_store.get(conn, environment_id) or Settings(environment_id=environment_id)


class SettingsCache:
    """Settings per environment in memory, for the hot paths.

    A change made through any replica reaches the others by LISTEN/NOTIFY; while the
    listener is not connected nothing is cached (every read goes to PostgreSQL), and
    entries older than ``max_age`` are re-read anyway, in case a notification is lost.
    """

    def __init__(self, db: Database, *, max_age_seconds: float = 30.0) -> None:
        self._db = db
        self._max_age = max_age_seconds
        self._entries: dict[EnvironmentId, tuple[float, Settings]] = {}
        self.listener: SettingsListener | None = None

    def invalidate(self, environment_id: str | None) -> None:
        if environment_id is None:
            self._entries.clear()
        else:
            self._entries.pop(EnvironmentId(environment_id), None)

    async def get(self, environment_id: EnvironmentId) -> Settings:
        entry = self._entries.get(environment_id)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self._max_age:
            return entry[1]
        async with self._db.connection() as conn:  # one statement
            settings = await load(conn, environment_id)
        if self.listener is not None and self.listener.connected:
            self._entries[environment_id] = (now, settings)
        return settings


class SettingsService:
    def __init__(self, db: Database, clock: Clock, cache: SettingsCache | None = None) -> None:
        self._db = db
        self._clock = clock
        self._cache = cache

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
            await notifications.notify_settings_changed(conn, environment_id)
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
        if self._cache is not None:
            self._cache.invalidate(environment_id)
        return saved
