"""The background purge removes only rows whose time is over, in bounded batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import asyncpg
import pytest

from flows import call, challenge, enroll_totp, start_totp, update_settings, verify_session
from helpers import FakeClock, eventually
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service.app import Application
from mfa_service.services.purge import MARGINS, Purger
from mfa_service.store import purge as purge_store

ENV = "env-purge"
pytestmark = pytest.mark.environments(ENV)


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    tables = (
        "challenges",
        "enrollments",
        "action_tokens",
        "token_validations",
        "verified_sessions",
    )
    return {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in tables}  # noqa: S608


async def test_purge_deletes_dead_rows_in_batches_and_keeps_live_ones(
    app: Application, client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    device = await enroll_totp(client, clock, ENV, "alice")
    for i in range(5):
        await challenge(client, ENV, "alice")  # left unused
        await start_totp(client, ENV, f"pending-{i}")
    for i in range(3):
        clock.advance(timedelta(seconds=30))
        await verify_session(client, ENV, "alice", f"s{i}", device.code(clock.now()))
    clock.advance(timedelta(seconds=30))
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="alice",
                challenge_id=await challenge(client, ENV, "alice"),
                proof=types.Proof(totp_code=device.code(clock.now())),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
    )
    await call(
        client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV,
                user_id="alice",
                action=types.ACTION_WAAS_SIGN,
                token=issued.token,
                idempotency_key="k1",
            )
        )
    )
    before = await counts(db)
    assert before == {
        "challenges": 5,
        "enrollments": 5,
        "action_tokens": 1,
        "token_validations": 1,
        "verified_sessions": 3,
    }
    purger = Purger(app.db, clock, batch=2)
    assert sum((await purger.run_once()).values()) == 0  # nothing is dead yet
    assert await counts(db) == before

    clock.advance(timedelta(days=1, hours=1))
    fresh = await challenge(client, ENV, "alice")  # alive: must survive
    deleted = await purger.run_once()
    assert deleted == before
    after = await counts(db)
    assert after == {t: (1 if t == "challenges" else 0) for t in before}
    assert str(await db.fetchval("SELECT id FROM challenges")) == fresh
    assert await db.fetchval("SELECT count(*) FROM devices") == 1  # factors are never purged


async def test_one_batch_deletes_at_most_its_limit(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    for _ in range(5):
        await challenge(client, ENV, "bob")
    clock.advance(timedelta(hours=2))
    before = clock.now() - MARGINS["challenges"]
    assert await db.fetchval("SELECT count(*) FROM challenges WHERE expires_at < $1", before) == 5
    for expected, remaining in [(2, 3), (2, 1), (1, 0)]:
        assert await purge_store.delete_dead(db, "challenges", before=before, limit=2) == expected
        assert await db.fetchval("SELECT count(*) FROM challenges") == remaining


async def test_the_purge_loop_survives_a_failing_run(
    app: Application,
    client: Client,
    clock: FakeClock,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run that fails for another reason than an outage is logged, and the loop goes on."""
    for _ in range(3):
        await challenge(client, ENV, "carol")
    clock.advance(timedelta(hours=2))
    await db.execute(
        """
        CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'deletes refused by the test'; END $$;
        CREATE TRIGGER refuse_delete BEFORE DELETE ON challenges
            FOR EACH STATEMENT EXECUTE FUNCTION refuse_delete();
        """
    )
    loop = asyncio.create_task(Purger(app.db, clock).run_forever(timedelta(seconds=0.05)))
    try:
        with caplog.at_level(logging.ERROR, logger="mfa_service.purge"):
            await eventually(
                lambda: any("purge failed" in r.getMessage() for r in caplog.records),
                what="a 'purge failed' log line",
            )
            failures = len(caplog.records)
            await eventually(lambda: len(caplog.records) > failures, what="another try")
        assert not loop.done()
        assert await db.fetchval("SELECT count(*) FROM challenges") == 3
        assert caplog.records[0].exc_info is not None  # the exception, for the operator

        await db.execute("DROP TRIGGER refuse_delete ON challenges; DROP FUNCTION refuse_delete")
        await eventually(
            lambda: rows_are(db, "challenges", 0), what="the purge emptying challenges"
        )
        assert not loop.done()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def rows_are(db: asyncpg.Connection, table: str, count: int) -> bool:
    return bool(await db.fetchval(f"SELECT count(*) FROM {table}") == count)  # noqa: S608
