"""Environments and their settings: CreateEnvironment, ListEnvironments, GetSettings,
UpdateSettings, and the settings every other use case reads (DESIGN §3c: an environment
exists once created; a name never created is refused, never given defaults)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mfa_service.domain import settings as policy
from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.domain.model import EnvironmentId
from mfa_service.domain.settings import Settings
from mfa_service.errors import EnvironmentAlreadyExists, EnvironmentNotFound, InvalidArgument
from mfa_service.services import page_tokens
from mfa_service.services.runtime import UseCase
from mfa_service.store import audit as audit_store
from mfa_service.store import notifications
from mfa_service.store import settings as settings_store
from mfa_service.store.db import Connection, Database
from mfa_service.store.notifications import SettingsListener

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


async def load(
    conn: Connection, environment_id: EnvironmentId, *, for_update: bool = False
) -> Settings:
    """The environment's settings; EnvironmentNotFound if it was never created."""
    settings = await settings_store.get(conn, environment_id, for_update=for_update)
    if settings is None:
        raise EnvironmentNotFound()
    return settings


class SettingsCache:
    """Settings per environment in memory, for the hot paths.

    A change made through any replica reaches the others by LISTEN/NOTIFY; while the
    listener is not connected nothing is cached (every read goes to PostgreSQL), and
    entries older than ``max_age`` are re-read anyway, in case a notification is lost.
    An environment that does not exist is never cached: the next call reads again, so
    one created through another replica works here at once. Environments are never
    deleted, so a cached one exists.
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
        """The environment's settings; EnvironmentNotFound if it was never created."""
        entry = self._entries.get(environment_id)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self._max_age:
            return entry[1]
        async with self._db.connection() as conn:  # one statement
            settings = await load(conn, environment_id)
        if self.listener is not None and self.listener.connected:
            self._entries[environment_id] = (now, settings)
        return settings

    async def require(self, environment_id: EnvironmentId) -> None:
        """Refuse an environment never created (EnvironmentNotFound): for the use cases
        that need no settings. Free when the environment is cached."""
        await self.get(environment_id)


@dataclass(frozen=True, slots=True)
class EnvironmentPage:
    environments: list[Settings]
    next_page_token: str


def page_token_after(environment_id: EnvironmentId) -> str:
    """The page token of the environments after this one (AIP-158: opaque to callers)."""
    return page_tokens.encode(environment_id)


def _environment_id(position: str) -> EnvironmentId:
    if not (position and position.isascii() and position.isprintable()):
        raise ValueError(position)
    return EnvironmentId(position)


class SettingsService(UseCase):
    async def create(
        self,
        environment_id: EnvironmentId,
        changes: Mapping[str, Any],
        context: CallContext,
    ) -> Settings:
        """A new environment: the defaults (DESIGN §5) with ``changes`` (path -> value)
        applied, validated as a whole. EnvironmentAlreadyExists if the id is taken."""
        now = self._clock.now()
        defaults = Settings(environment_id=environment_id)
        settings = policy.apply_update(defaults, changes)
        policy.validate(settings)
        async with self._db.transaction() as conn:
            created = await settings_store.insert(conn, settings, now=now)
            if created is None:
                raise EnvironmentAlreadyExists()
            await self._announce(
                conn,
                AuditEventType.ENVIRONMENT_CREATED,
                created,
                policy.changed_paths(defaults, created),
                context,
                now=now,
            )
        self._forget(environment_id)
        return created

    async def list(self, *, page_size: int, page_token: str) -> EnvironmentPage:
        """Environments in id order, ``page_size`` (0: the default) at a time."""
        size = page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 1 to {MAX_PAGE_SIZE}")
        after = page_tokens.decode(page_token, _environment_id) if page_token else None
        async with self._db.connection() as conn:  # one statement
            found = await settings_store.page(conn, after=after, limit=size + 1)
        more = len(found) > size
        found = found[:size]
        return EnvironmentPage(
            found, page_token_after(found[-1].environment_id) if more and found else ""
        )

    async def get(self, environment_id: EnvironmentId) -> Settings:
        """The environment's settings; EnvironmentNotFound if it was never created."""
        async with self._db.connection() as conn:  # one statement
            return await load(conn, environment_id)

    async def update(
        self,
        environment_id: EnvironmentId,
        changes: Mapping[str, Any],
        context: CallContext,
    ) -> Settings:
        """Apply ``changes`` (path -> value) to the current settings, validated as a whole.
        EnvironmentNotFound if it was never created: an update never creates one."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            current = await load(conn, environment_id, for_update=True)
            updated = policy.apply_update(current, changes)
            policy.validate(updated)
            changed = policy.changed_paths(current, updated)
            if not changed:
                return current
            saved = await settings_store.update(conn, updated, now=now)
            await self._announce(
                conn, AuditEventType.SETTINGS_CHANGED, saved, changed, context, now=now
            )
        self._forget(environment_id)
        return saved

    @staticmethod
    async def _announce(
        conn: Connection,
        event_type: AuditEventType,
        saved: Settings,
        fields: Sequence[str],
        context: CallContext,
        *,
        now: datetime,
    ) -> None:
        """A saved revision, in its transaction: every replica re-reads the environment
        (NOTIFY, sent at commit), and the audit log records which fields it set."""
        await notifications.notify_settings_changed(conn, saved.environment_id)
        await audit_store.append(
            conn,
            AuditEvent(
                type=event_type,
                environment_id=saved.environment_id,
                occurred_at=now,
                context=context,
                details={"fields": ",".join(fields), "revision": str(saved.revision)},
            ),
        )

    def _forget(self, environment_id: EnvironmentId) -> None:
        """This replica's cache re-reads the environment at once (the others on NOTIFY)."""
        self._settings.invalidate(environment_id)
