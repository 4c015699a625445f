"""Webhooks and how far each has delivered (migration 0011).

A replica delivers a webhook's events only while it holds the webhook's claim: a lease,
``claimed_until``, taken by one statement that skips rows another replica is claiming
(``FOR UPDATE SKIP LOCKED``) and rows whose lease has not run out. Every later write of
the delivery is conditional on that same lease value, so a replica whose lease ran out
(it stalled, and another took over) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from mfa_service.domain.audit import AuditEventType
from mfa_service.domain.model import EnvironmentId
from mfa_service.domain.webhooks import DeliveryState, Webhook, WebhookFormat
from mfa_service.store.audit_stream import Cursor
from mfa_service.store.db import Connection
from mfa_service.store.sql import named

_COLUMNS = """id, environment_id, url, event_types, format, created_at, attempts,
    next_attempt_at, last_attempt_at, last_status_code, last_error, last_success_at,
    dropped_events"""


def _webhook(row: Any) -> Webhook:
    return Webhook(
        id=row["id"],
        environment_id=EnvironmentId(row["environment_id"]),
        url=row["url"],
        event_types=tuple(AuditEventType[t] for t in row["event_types"]),
        format=WebhookFormat[row["format"]],
        created_at=row["created_at"],
        state=DeliveryState(
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_attempt_at=row["last_attempt_at"],
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            last_success_at=row["last_success_at"],
            dropped_events=row["dropped_events"],
        ),
    )


_INSERT = named(f"""
INSERT INTO webhooks (id, environment_id, url, event_types, format, secret_sealed,
                      created_at, cursor_xid, cursor_id, next_attempt_at)
SELECT :id, :env, :url, :types::text[], :format, :sealed, :now, :xid::text::xid8, :cursor_id,
       :now
WHERE (SELECT count(*) FROM webhooks WHERE environment_id = :env) < :cap
RETURNING {_COLUMNS}
""")  # noqa: S608 (a constant column list)


async def insert(
    conn: Connection, webhook: Webhook, *, secret_sealed: bytes, start: Cursor, cap: int
) -> Webhook | None:
    """Store ``webhook``, delivering the events after ``start``, unless its environment
    has ``cap`` webhooks already (None). The caller holds the environment's row lock,
    so two creations cannot both take the last place."""
    values = {
        "id": webhook.id,
        "env": webhook.environment_id,
        "url": webhook.url,
        "types": [t.name for t in webhook.event_types],
        "format": webhook.format.name,
        "sealed": secret_sealed,
        "now": webhook.created_at,
        "xid": str(start.xid),
        "cursor_id": start.id,
        "cap": cap,
    }
    row = await conn.fetchrow(_INSERT.text, *_INSERT.args(values))
    return _webhook(row) if row is not None else None


async def list_for(conn: Connection, env: EnvironmentId) -> list[Webhook]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM webhooks WHERE environment_id = $1 ORDER BY created_at, id",  # noqa: S608
        env,
    )
    return [_webhook(row) for row in rows]


async def delete(conn: Connection, env: EnvironmentId, webhook_id: UUID) -> Webhook | None:
    row = await conn.fetchrow(
        f"DELETE FROM webhooks WHERE environment_id = $1 AND id = $2 RETURNING {_COLUMNS}",  # noqa: S608
        env,
        webhook_id,
    )
    return _webhook(row) if row is not None else None


# --- the dispatcher's side --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """A webhook this replica may deliver until ``until``, from ``cursor`` on."""

    webhook: Webhook
    secret_sealed: bytes
    cursor: Cursor
    until: datetime


# Only a webhook with an event after its cursor (of any type: the dispatcher moves the
# cursor past the others too), so an idle webhook costs an index probe, never a write.
_CLAIM = named(f"""
UPDATE webhooks SET claimed_until = :until
WHERE id = (
    SELECT id FROM webhooks w
    WHERE next_attempt_at <= :now
      AND (claimed_until IS NULL OR claimed_until <= :now)
      AND id <> ALL(:skip::uuid[])
      AND EXISTS (
          SELECT FROM audit_events e
          WHERE e.environment_id = w.environment_id
            AND (e.xid, e.id) > (w.cursor_xid, w.cursor_id)
            AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
      )
    ORDER BY next_attempt_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING {_COLUMNS}, secret_sealed, cursor_xid::text AS cursor_xid_text, cursor_id
""")  # noqa: S608 (a constant column list)


async def claim(
    conn: Connection, *, now: datetime, until: datetime, skip: Sequence[UUID] = ()
) -> Claim | None:
    """Claim one webhook that is due and that no replica holds (none of ``skip``), until
    ``until``; None when there is none."""
    values = {"now": now, "until": until, "skip": list(skip)}
    row = await conn.fetchrow(_CLAIM.text, *_CLAIM.args(values))
    if row is None:
        return None
    return Claim(
        webhook=_webhook(row),
        secret_sealed=row["secret_sealed"],
        cursor=Cursor(int(row["cursor_xid_text"]), row["cursor_id"]),
        until=until,
    )


# Each write below holds only while the claim is still this replica's (its lease value).
_MOVED_PAST = named("""
UPDATE webhooks
SET cursor_xid = :xid::text::xid8, cursor_id = :cursor_id, attempts = 0,
    dropped_events = dropped_events + :dropped,
    last_success_at = coalesce(:delivered_at, last_success_at),
    last_attempt_at = CASE WHEN :attempted THEN :now ELSE last_attempt_at END,
    last_status_code = CASE WHEN :attempted THEN :status ELSE last_status_code END,
    last_error = CASE WHEN :attempted THEN :error ELSE last_error END,
    claimed_until = :renewed
WHERE id = :id AND claimed_until = :until
RETURNING id
""")


@dataclass(frozen=True, slots=True)
class Progress:
    """Events done with since the last write: delivered, given up on (``dropped``), or
    with nothing to send; ``cursor`` is the last of them. ``now``/``status``/``error``:
    what the last POST among them came to (``attempted`` False: there was none);
    ``delivered_at``: the time of the last delivery among them (None: none)."""

    cursor: Cursor
    attempted: bool
    now: datetime
    status: int | None
    error: str | None
    dropped: int
    delivered_at: datetime | None


async def moved_past(
    conn: Connection, held: Claim, progress: Progress, *, renewed: datetime | None
) -> bool:
    """The cursor moves past ``progress``; the lease is renewed until ``renewed``, or let
    go (None). False: the claim was lost (taken over after a stall) or the webhook
    deleted; nothing was written."""
    values = {
        "id": held.webhook.id,
        "until": held.until,
        "xid": str(progress.cursor.xid),
        "cursor_id": progress.cursor.id,
        "attempted": progress.attempted,
        "dropped": progress.dropped,
        "delivered_at": progress.delivered_at,
        "now": progress.now,
        "status": progress.status,
        "error": progress.error,
        "renewed": renewed,
    }
    return await conn.fetchval(_MOVED_PAST.text, *_MOVED_PAST.args(values)) is not None


_FAILED = named("""
UPDATE webhooks
SET attempts = :attempts, next_attempt_at = :next_attempt_at,
    last_attempt_at = :now, last_status_code = :status, last_error = :error,
    claimed_until = NULL
WHERE id = :id AND claimed_until = :until
RETURNING id
""")


async def failed(
    conn: Connection,
    held: Claim,
    *,
    now: datetime,
    status: int | None,
    error: str,
    attempts: int,
    next_attempt_at: datetime,
) -> bool:
    """The head event failed: the cursor stays, the next try is at ``next_attempt_at``,
    and the claim is let go."""
    values = {
        "id": held.webhook.id,
        "until": held.until,
        "attempts": attempts,
        "next_attempt_at": next_attempt_at,
        "now": now,
        "status": status,
        "error": error,
    }
    return await conn.fetchval(_FAILED.text, *_FAILED.args(values)) is not None


async def release(conn: Connection, held: Claim) -> None:
    """Let the claim go (nothing more to deliver now)."""
    await conn.execute(
        "UPDATE webhooks SET claimed_until = NULL WHERE id = $1 AND claimed_until = $2",
        held.webhook.id,
        held.until,
    )
