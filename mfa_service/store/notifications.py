"""PostgreSQL LISTEN/NOTIFY: how replicas tell each other that settings changed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from mfa_service.store.db import Connection

SETTINGS_CHANNEL = "mfa_settings_changed"
log = logging.getLogger("mfa_service.store")


async def notify_settings_changed(conn: Connection, environment_id: str) -> None:
    """Delivered to every listener when the surrounding transaction commits."""
    await conn.execute("SELECT pg_notify($1, $2)", SETTINGS_CHANNEL, environment_id)


class SettingsListener:
    """A dedicated connection listening for settings changes of any replica."""

    def __init__(self, url: str, on_change: Callable[[str | None], None]) -> None:
        self._url = url
        self._on_change = on_change
        self._conn: asyncpg.Connection[Any] | None = None

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self._on_change(str(payload))

    def _lost(self, _conn: Any) -> None:
        # Notifications may have been missed while disconnected: forget everything.
        self._conn = None
        self._on_change(None)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> None:
        """(Re)connect if needed; failures are left for the next call to retry."""
        if self.connected:
            return
        try:
            conn = await asyncpg.connect(self._url, timeout=5)
            await conn.add_listener(SETTINGS_CHANNEL, self._notified)
            conn.add_termination_listener(self._lost)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("settings listener not connected: %s", type(exc).__name__)
            return
        self._conn = conn
        self._on_change(None)  # anything cached before this point may be stale

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
