"""Replicas: several ``mfa-service serve`` processes against one PostgreSQL.

DESIGN §8: exactly-once state is decided in PostgreSQL by single-statement conditional
writes, so any number of replicas is safe. Here three real server processes on three
ports validate each of 1,000 single-use tokens at the same moment, and exactly one of
them allows it. And ``serve --workers N``: N processes on one port, stopped together.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev dependencies
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_process import serve

from helpers import eventually
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import action_token_service_pb2_grpc as at_grpc
from mfa.v1 import types_pb2 as types
from mfa_service.clock import SystemClock
from mfa_service.crypto import KeyRing
from mfa_service.domain import tokens
from mfa_service.domain.model import Action, EnvironmentId, Method, UserId
from mfa_service.domain.settings import Settings
from mfa_service.services.action_tokens import AUDIENCE, DEFAULT_ISSUER
from mfa_service.services.keys import TokenKeys
from mfa_service.store import action_tokens as token_store
from mfa_service.store import settings as settings_store
from mfa_service.store.db import Database, create_pool

ENV = EnvironmentId("env-replicas")
TOKENS = 1000
REPLICAS = 3
CHANNELS_PER_REPLICA = 3
IN_FLIGHT = 96


def _env(database_url: str, key_ring: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "MFA_ENCRYPTION_KEYS": key_ring,
        "MFA_ALLOW_PLAINTEXT": "true",
        "MFA_LOG_LEVEL": "WARNING",
    }


async def _issue_tokens(database_url: str, key_ring: KeyRing) -> list[tuple[UserId, str]]:
    """Single-use tokens signed with the replicas' key, stored as IssueActionToken does."""
    db = Database(await create_pool(database_url, size=1))
    try:
        now = datetime.now(UTC)
        key = await TokenKeys(db, SystemClock(), key_ring, "ES256").signing_key()
        issued = []
        async with db.transaction() as conn:
            for i in range(TOKENS):
                claims = tokens.ActionClaims(
                    jti=uuid.uuid4(),
                    environment_id=ENV,
                    user_id=UserId(f"user-{i % 50}"),
                    actions=(Action.WAAS_SIGN,),
                    single_use=True,
                    issued_at=now,
                    expires_at=now + timedelta(minutes=5),
                    method=Method.TOTP,
                )
                token = tokens.encode(claims, key, issuer=DEFAULT_ISSUER, audience=AUDIENCE)
                await token_store.insert(conn, claims, token_hash=tokens.token_hash(token))
                issued.append((claims.user_id, token))
        return issued
    finally:
        await db.close()


async def _create_environment_protecting_sign(database_url: str) -> None:
    """Seeded before the replicas start, as CreateEnvironment stores it."""
    db = Database(await create_pool(database_url, size=1))
    try:
        async with db.transaction() as conn:
            settings = Settings(environment_id=ENV, protected_actions=(Action.WAAS_SIGN,))
            assert await settings_store.insert(conn, settings, now=datetime.now(UTC))
    finally:
        await db.close()


async def test_one_allow_per_token_across_three_replicas(tmp_path: Path, database_url: str) -> None:
    await _create_environment_protecting_sign(database_url)
    key_ring_spec = KeyRing.generate_entry("replicas1")
    env = _env(database_url, key_ring_spec)
    async with AsyncExitStack() as stack:
        servers = await asyncio.gather(
            *(
                stack.enter_async_context(serve(tmp_path, env, name=f"replica{i}"))
                for i in range(REPLICAS)
            )
        )
        assert len({s.port for s in servers}) == REPLICAS
        issued = await _issue_tokens(database_url, KeyRing.parse(key_ring_spec))

        # Several connections to each replica (a local subchannel pool per channel).
        options = [("grpc.use_local_subchannel_pool", 1)]
        stubs = [
            [
                at_grpc.ActionTokenServiceStub(
                    await stack.enter_async_context(
                        grpc.aio.insecure_channel(server.target, options=options)
                    )
                )
                for _ in range(CHANNELS_PER_REPLICA)
            ]
            for server in servers
        ]
        limit = asyncio.Semaphore(IN_FLIGHT)

        async def validate(stub: at_grpc.ActionTokenServiceAsyncStub, user: str, token: str) -> str:
            async with limit:
                reply = await stub.ValidateActionToken(
                    at_pb.ValidateActionTokenRequest(
                        environment_id=ENV,
                        user_id=user,
                        action=types.ACTION_WAAS_SIGN,
                        token=token,
                    ),
                    timeout=30,
                )
            return (
                f"{types.Decision.Name(reply.decision)}/{types.DecisionReason.Name(reply.reason)}"
            )

        async def race(i: int, user: str, token: str) -> list[str]:
            """The same token at every replica at once; who sends first rotates."""
            order = [(i + k) % REPLICAS for k in range(REPLICAS)]
            replies = await asyncio.gather(
                *(validate(stubs[r][i % CHANNELS_PER_REPLICA], user, token) for r in order)
            )
            return [replies[order.index(r)] for r in range(REPLICAS)]

        outcomes = await asyncio.gather(
            *(race(i, user, token) for i, (user, token) in enumerate(issued))
        )

    allow = "DECISION_ALLOW/DECISION_REASON_TOKEN_VALID"
    used = "DECISION_DENY/DECISION_REASON_TOKEN_ALREADY_USED"
    assert len(outcomes) == TOKENS
    for decisions in outcomes:
        assert sorted(decisions) == [allow] + [used] * (REPLICAS - 1), decisions
    # The races were real: more than one process won some of them. (Which replica
    # wins is timing; a replica that is busier for the whole run may win none.)
    winners = Counter(decisions.index(allow) for decisions in outcomes)
    assert len(winners) >= 2, winners


async def test_workers_share_one_port_and_stop_together(tmp_path: Path, database_url: str) -> None:
    env = _env(database_url, KeyRing.generate_entry("workers1"))
    env["MFA_LOG_LEVEL"] = "INFO"
    async with serve(tmp_path, env, "--workers", "2") as server:
        parent = psutil.Process(server.process.pid)
        await eventually(
            lambda: server.stderr.count("mfa-service serving on") >= 2,
            within=60,
            interval=0.1,
            what=lambda: f"both workers serving:\n{server.stderr}",
        )
        children = parent.children()
        # Two workers, and one webhook delivery process for both (mfa_service.deliveries).
        workers = [c for c in children if "deliver" not in c.cmdline()]
        assert len(workers) == 2 and len(children) == 3
        (delivery,) = set(children) - set(workers)
        assert delivery.cmdline()[-3:] == ["deliver", "--parent", str(server.process.pid)]
        # Both workers listen on the one port (SO_REUSEPORT).
        listening = {
            w.pid
            for w in workers
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
                for c in w.net_connections(kind="tcp")
            )
        }
        assert listening == {w.pid for w in workers}
        for _ in range(4):  # new connections, each to either worker: all answer
            async with grpc.aio.insecure_channel(server.target) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

        server.signal(signal.SIGTERM)
        assert await server.wait(within=15) == 0
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert server.stderr.count("stopped") == 2
