"""PostgreSQL LISTEN/NOTIFY: how replicas tell each other that settings (or, on channels
passed in, anything else such as the signing keys) changed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from mfa_service.store.db import Connection

SETTINGS_CHANNEL = "mfa_settings_changed"
log = logging.getLogger("mfa_service.store")


async def notify_settings_changed(conn: Connection, environment_id: str) -> None:
    """Delivered to every listener when the surrounding transaction commits."""
    await conn.execute("SELECT pg_notify($1, $2)", SETTINGS_CHANNEL, environment_id)


class SettingsListener:
    """A dedicated connection listening for settings changes of any replica, and on the
    ``other_channels`` for whatever else they announce.

    Each callback gets the notification's payload, or None when notifications may have
    been missed (connected anew, or the connection was lost).
    """

    def __init__(
        self,
        url: str,
        on_change: Callable[[str | None], None],
        *,
        other_channels: Mapping[str, Callable[[str | None], None]] | None = None,
    ) -> None:
        self._url = url
        self._callbacks = {SETTINGS_CHANNEL: on_change, **(other_channels or {})}
        self._conn: asyncpg.Connection[Any] | None = None

    def _notified(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        self._callbacks[channel](str(payload))

    def _missed(self) -> None:
        for callback in self._callbacks.values():
            callback(None)

    def _lost(self, _conn: Any) -> None:
        # Notifications may have been missed while disconnected: forget everything.
        self._conn = None
        self._missed()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> None:
        """(Re)connect if needed; failures are left for the next call to retry."""
        if self.connected:
            return
        try:
            conn = await asyncpg.connect(self._url, timeout=5)
            for channel in self._callbacks:
                await conn.add_listener(channel, self._notified)
            conn.add_termination_listener(self._lost)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("settings listener not connected: %s", type(exc).__name__)
            return
        self._conn = conn
        self._missed()  # anything cached before this point may be stale

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
