"""The audit log in commit order (store.audit_stream): a cursor misses nothing and
repeats nothing, whatever order transactions commit in."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from mfa_service.domain.audit import AuditEvent, AuditEventType, CallContext
from mfa_service.store import audit as audit_store
from mfa_service.store import audit_stream
from mfa_service.store.audit_stream import START

ENV = "env-stream"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def event(user: str) -> AuditEvent:
    return AuditEvent(
        AuditEventType.VERIFICATION_FAILED, ENV, NOW, CallContext("test", "r"), user_id=user
    )


async def users_after(db: asyncpg.Connection, cursor: audit_stream.Cursor) -> list[str]:
    return [e.event.user_id for _, e in await audit_stream.after(db, ENV, cursor, limit=100)]


async def test_an_event_is_not_returned_before_every_older_transaction_has_ended(
    database_url: str, db: asyncpg.Connection
) -> None:
    """T1 writes first and commits last: T2's event waits for T1's, then both come in
    transaction order, and a cursor taken in between misses neither."""
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        t1 = first.transaction()
        await t1.start()
        await audit_store.append(first, event("t1"))
        async with second.transaction():
            await audit_store.append(second, event("t2"))
        assert await users_after(db, START) == []  # t2 committed, but t1 may still come
        cursor = await audit_stream.horizon(db)
        await t1.commit()
        assert await users_after(db, START) == ["t1", "t2"]
        assert await users_after(db, cursor) == ["t1", "t2"]  # the horizon was before both
        [(last, _)] = (await audit_stream.after(db, ENV, START, limit=100))[1:]
        assert await users_after(db, last) == []
        await audit_store.append(db, event("t3"))
        assert await users_after(db, last) == ["t3"]
    finally:
        await first.close()
        await second.close()


async def test_a_rolled_back_event_never_appears(database_url: str, db: asyncpg.Connection) -> None:
    other = await asyncpg.connect(database_url)
    try:
        transaction = other.transaction()
        await transaction.start()
        await audit_store.append(other, event("gone"))
        await transaction.rollback()
        await audit_store.append(db, event("kept"))
        assert await users_after(db, START) == ["kept"]
    finally:
        await other.close()


async def test_a_page_resumes_where_the_last_one_ended(db: asyncpg.Connection) -> None:
    for i in range(5):
        await audit_store.append(db, event(f"u{i}"))
    page = await audit_stream.after(db, ENV, START, limit=2)
    assert [e.event.user_id for _, e in page] == ["u0", "u1"]
    rest = await audit_stream.after(db, ENV, page[-1][0], limit=10)
    assert [e.event.user_id for _, e in rest] == ["u2", "u3", "u4"]
    assert [c for c, _ in page + rest] == sorted(c for c, _ in page + rest)
