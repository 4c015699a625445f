"""Webhook deliveries from real ``mfa-service serve --dev`` processes on one PostgreSQL:
a crash between an event's commit and its delivery loses nothing, and three replicas
POST each event once."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook
from test_process import serve

from flows import call, enroll_totp
from helpers import FakeClock, eventually
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa_client import Client
from mfa_service.crypto import KeyRing
from receiver import Receiver

ENV = "env-hook-processes"
DELIVERY_BUDGET_SECONDS = 60.0


def _env(database_url: str) -> dict[str, str]:
    """Development mode (http to loopback) on the test database; a POST gives up after
    2 s, so a dead replica's claim (twice that) runs out soon."""
    return {
        "DATABASE_URL": database_url,
        "MFA_ENCRYPTION_KEYS": KeyRing.generate_entry("hooks1"),
        "MFA_WEBHOOK_TIMEOUT_SECONDS": "2",
        "MFA_LOG_LEVEL": "WARNING",
    }


async def _create_webhook(
    client: Client, url: str, event_type: admin_pb.AuditEventType.ValueType
) -> str:
    created = await call(
        client.admin.stub.CreateWebhook(
            admin_pb.CreateWebhookRequest(environment_id=ENV, url=url, event_types=[event_type])
        )
    )
    return created.signing_secret


async def test_an_enrollment_committed_before_a_crash_is_delivered_after_the_restart(
    tmp_path: Path, database_url: str
) -> None:
    env = _env(database_url)
    clock = FakeClock(datetime.now(UTC))  # the authenticator's clock; the servers read theirs
    async with Receiver() as receiver:
        receiver.hold = True  # the POST arrives and gets no answer
        async with (
            serve(tmp_path, env, "--dev", name="first") as first,
            Client.connect(first.target, insecure=True) as client,
        ):
            await client.admin.create_environment(ENV)
            secret = await _create_webhook(
                client, receiver.url(), admin_pb.AUDIT_EVENT_TYPE_ENROLLMENT_COMPLETED
            )
            await enroll_totp(client, clock, ENV, "alice")
            (held,) = await eventually(lambda: receiver.held, what="the POST of the enrollment")
            first.signal(signal.SIGKILL)
            assert await first.wait() == -signal.SIGKILL
        assert receiver.delivered() == []

        receiver.release()
        async with serve(tmp_path, env, "--dev", name="second"):
            (delivery,) = await eventually(
                lambda: receiver.delivered(),
                within=DELIVERY_BUDGET_SECONDS,
                what="the enrollment delivered by the restarted server",
            )
    assert delivery.message_id == held.message_id  # the same webhook-id: a redelivery
    payload = StandardWebhook(secret).verify(delivery.body, delivery.headers)
    assert (payload["type"], payload["data"]["user_id"]) == ("mfa.enrollment_completed", "alice")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _idle(pid: int) -> bool:
    return os.sched_getscheduler(pid) == os.SCHED_IDLE


def _command(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("settled", [True, False], ids=["running", "starting"])
async def test_deliveries_run_in_a_process_of_lower_priority_that_ends_with_its_server(
    tmp_path: Path, database_url: str, settled: bool
) -> None:
    """``serve`` delivers webhooks from a child process scheduled SCHED_IDLE (the calls
    keep the CPU first); killed with the server, even by SIGKILL, it does not outlive it:
    neither once running nor while it is still starting (before it could ask to die with
    its parent: it checks that its parent is still the server it was started by)."""
    async with serve(tmp_path, _env(database_url), "--dev") as server:
        parent = server.process.pid
        (child,) = await eventually(lambda: _children(parent), what="the delivery process")
        if settled:  # it lowers its own priority once it has started
            await eventually(lambda: _idle(child), what="the delivery process SCHED_IDLE")
            assert os.sched_getscheduler(parent) == os.SCHED_OTHER
            assert _command(child)[-4:] == ["deliver", "--dev", "--parent", str(parent)]
            # Each names its own sessions, for an operator reading pg_stat_activity.
            await eventually(
                lambda: _names_both(database_url),
                what="the sessions of the server and of its delivery process, named",
            )
        server.signal(signal.SIGKILL)
        await server.wait()
        await eventually(lambda: not _alive(child), what="the delivery process ended")


async def _names_both(database_url: str) -> bool:
    """The server's sessions and its delivery process's are in pg_stat_activity, each
    under its own application_name."""
    db = await asyncpg.connect(database_url)
    try:
        names = await db.fetch(
            "SELECT DISTINCT application_name FROM pg_stat_activity "
            "WHERE datname = current_database()"
        )
    finally:
        await db.close()
    return {"mfa-service", "mfa-service deliver"} <= {row[0] for row in names}


async def test_three_replicas_post_each_event_once(tmp_path: Path, database_url: str) -> None:
    env = _env(database_url)
    paths = ["/a", "/b", "/c"]
    resets = 30
    async with Receiver() as receiver, AsyncExitStack() as stack:
        servers = await asyncio.gather(
            *(
                stack.enter_async_context(serve(tmp_path, env, "--dev", name=f"replica{i}"))
                for i in range(3)
            )
        )
        clients = [
            await stack.enter_async_context(Client.connect(s.target, insecure=True))
            for s in servers
        ]
        await clients[0].admin.create_environment(ENV)
        for path in paths:
            await _create_webhook(
                clients[0], receiver.url(path), admin_pb.AUDIT_EVENT_TYPE_USER_RESET
            )
        for i in range(resets):
            request = admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id=f"user-{i % 7}")
            await call(clients[i % 3].admin.stub.ResetUserMfa(request))

        await eventually(
            lambda: all(len(receiver.delivered(p)) >= resets for p in paths),
            within=DELIVERY_BUDGET_SECONDS,
            what=lambda: f"every reset delivered ({len(receiver.received)} POSTs so far)",
        )
        db = await asyncpg.connect(database_url)
        try:
            rows = await db.fetch(
                "SELECT event_id::text, user_id FROM audit_events WHERE type = 'USER_RESET' "
                "ORDER BY xid, id"
            )
        finally:
            await db.close()
    expected = [row["event_id"] for row in rows]
    assert len(expected) == resets
    for path in paths:  # every event, each user's in commit order
        delivered = receiver.delivered(path)
        assert sorted(r.message_id for r in delivered) == sorted(expected)
        for user in {row["user_id"] for row in rows}:
            mine = [row["event_id"] for row in rows if row["user_id"] == user]
            assert [r.message_id for r in delivered if r.user_id == user] == mine
    assert len(receiver.received) == len(paths) * resets  # no POST twice, none failed
