"""The background purge removes only rows whose time is over, in bounded batches."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from flows import call, challenge, enroll_totp, start_totp, update_settings, verify_session
from helpers import FakeClock
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service.app import Application
from mfa_service.services.purge import MARGINS, Purger
from mfa_service.store import purge as purge_store

ENV = "env-purge"


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
