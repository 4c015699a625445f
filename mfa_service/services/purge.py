"""The background purge of expired challenges, enrollments, tokens and records."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from opentelemetry import trace

from mfa_service.clock import Clock
from mfa_service.domain.devices import SESSION_MFA_MAX_AGE
from mfa_service.errors import DatabaseUnavailable
from mfa_service.services.action_tokens import IDEMPOTENCY_WINDOW
from mfa_service.store import purge as purge_store
from mfa_service.store.db import Database

log = logging.getLogger("mfa_service.purge")

# How long past its end a row is kept (for support and forensics; the audit log keeps
# the events themselves).
MARGINS: dict[str, timedelta] = {
    "challenges": timedelta(hours=1),
    "enrollments": timedelta(hours=1),
    "action_tokens": timedelta(days=1),
    "token_validations": IDEMPOTENCY_WINDOW,
    "verified_sessions": SESSION_MFA_MAX_AGE,
}
BATCH = 1000


class Purger:
    def __init__(
        self, db: Database, clock: Clock, *, batch: int = BATCH, tracer: trace.Tracer | None = None
    ) -> None:
        """``tracer``: each run of ``run_forever`` is a root span, ``mfa.purge``."""
        self._db = db
        self._clock = clock
        self._batch = batch
        self._tracer = tracer or trace.NoOpTracer()

    async def run_once(self) -> dict[str, int]:
        """Purge every table until a batch comes back short; returns rows deleted per table."""
        deleted = dict.fromkeys(purge_store.TABLES, 0)
        now = self._clock.now()
        for table in purge_store.TABLES:
            while True:
                async with self._db.transaction() as conn:
                    count = await purge_store.delete_dead(
                        conn, table, before=now - MARGINS[table], limit=self._batch
                    )
                deleted[table] += count
                if count < self._batch:
                    break
                await asyncio.sleep(0)  # let calls in between batches
        return deleted

    async def run_forever(self, interval: timedelta) -> None:
        """Every replica may run this: deletes are idempotent and batches are small."""
        while True:
            with self._tracer.start_as_current_span(
                "mfa.purge", record_exception=False, set_status_on_exception=False
            ) as span:
                try:
                    deleted = await self.run_once()
                    for table, count in deleted.items():
                        span.set_attribute(f"mfa.purge.{table}", count)
                    if any(deleted.values()):
                        log.info(
                            "purged %s", ", ".join(f"{t}={n}" for t, n in deleted.items() if n)
                        )
                except DatabaseUnavailable:
                    span.set_status(trace.StatusCode.ERROR, "DatabaseUnavailable")
                    log.warning("purge skipped: database unavailable")
                except Exception as error:
                    # Anything else (a lock timeout, a dropped table, a bug) must not end
                    # the loop for the life of the process. The purge handles no secret:
                    # its statements carry a table name, a time and a batch size.
                    span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                    log.exception("purge failed; next try in %s", interval)
            await asyncio.sleep(interval.total_seconds())
