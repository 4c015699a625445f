"""ListAuditEvents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mfa_service.domain.audit import AuditEvent, AuditEventType
from mfa_service.domain.model import EnvironmentId
from mfa_service.errors import InvalidArgument
from mfa_service.services import page_tokens
from mfa_service.services.runtime import UseCase
from mfa_service.store import audit_log

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    event: AuditEvent
    # The page token of the events after this one: a caller that stops a page early
    # (to keep a response under its size limit) continues from here.
    page_token_after: str


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next_page_token: str


def _encode_cursor(event_row_id: int) -> str:
    return page_tokens.encode(str(event_row_id))


def _row_id(position: str) -> int:
    if not (position.isdecimal() and 0 < int(position) < 2**63):  # row ids are bigint
        raise ValueError(position)
    return int(position)


class AuditLogService(UseCase):
    async def list(
        self,
        env: EnvironmentId,
        *,
        page_size: int,
        page_token: str,
        user_id: str,
        types: Sequence[AuditEventType],
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> EventPage:
        """A page of the events that match every filter given; ``since`` (inclusive) and
        ``until`` (exclusive) bound when they occurred."""
        size = page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 1 to {MAX_PAGE_SIZE}")
        if since is not None and until is not None and until <= since:
            raise InvalidArgument.field("end_time", "must be after start_time")
        before = page_tokens.decode(page_token, _row_id) if page_token else None
        await self._settings.require(env)
        async with self._db.transaction() as conn:
            logged = await audit_log.page(
                conn,
                env,
                user_id=user_id,
                types=[t.name for t in types] or None,
                before_id=before,
                since=since,
                until=until,
                limit=size + 1,
            )
        more = len(logged) > size
        events = [
            StoredEvent(
                event_id=e.event_id,
                event=e.event,
                page_token_after=_encode_cursor(e.row_id),
            )
            for e in logged[:size]
        ]
        return EventPage(events, events[-1].page_token_after if more and events else "")
