"""The delivery process gives way to the calls (mfa_service/deliveries.py): after each
batch, while the machine's CPUs are busy with other work, it waits long enough to keep
itself at a small share of one CPU; on a machine with CPU to spare it does not wait. The dispatcher
awaits its pace after every batch, holding no claim."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from test_webhooks import committed_ids, create_webhook, reset

from helpers import LOOPBACK_WEBHOOKS, TEST_KEY_RING, FakeClock, started_app
from mfa_client import Client
from mfa_service import deliveries
from mfa_service.services.keys import TokenKeys
from mfa_service.services.runtime import Runtime
from mfa_service.services.settings import SettingsCache
from mfa_service.services.verification import Verifier
from mfa_service.services.webhooks import Dispatcher, WebhookOptions
from mfa_service.store.db import Database, create_pool
from receiver import Receiver

ENV = "env-hooks"  # test_webhooks' environment, whose helpers name it
TICKS = deliveries._CLOCK_TICKS


def test_no_wait_below_three_quarters_busy_and_a_two_percent_share_above() -> None:
    assert deliveries.pause_seconds(own_cpu=0.02, others_busy=0.74) == 0.0
    # 20 ms of its own CPU while others kept the CPUs busy: 980 ms of waiting, 2 %.
    assert deliveries.pause_seconds(own_cpu=0.02, others_busy=0.75) == pytest.approx(0.98)
    assert deliveries.pause_seconds(own_cpu=0.02, others_busy=1.0) == pytest.approx(0.98)
    # A batch still goes at least every 5 seconds.
    assert deliveries.pause_seconds(own_cpu=0.5, others_busy=0.9) == 5.0


class Counters:
    """The machine's (busy, total) ticks and this process's CPU seconds, as set."""

    def __init__(self) -> None:
        self.busy, self.total, self.own = 0, 0, 0.0

    def machine(self) -> tuple[int, int] | None:
        return self.busy, self.total

    def own_cpu(self) -> float:
        return self.own

    def advance(self, *, seconds: float, others: float, own: float, cpus: int = 2) -> None:
        """``seconds`` of wall time on ``cpus`` CPUs: ``others`` of them busy with other
        work (0 to 1), and ``own`` CPU seconds of this process."""
        ticks = round(seconds * cpus * TICKS)
        self.total += ticks
        self.busy += round(ticks * others) + round(own * TICKS)
        self.own += own


def test_the_pacer_judges_the_others_load_with_its_own_cpu_left_out() -> None:
    counters = Counters()
    pacer = deliveries.Pacer(counters.machine, counters.own_cpu)
    counters.advance(seconds=1.0, others=0.9, own=0.04)
    assert pacer.pause() == pytest.approx(1.96)
    # Busy only with itself (a whole CPU of two): nothing to give way to.
    counters.advance(seconds=1.0, others=0.0, own=1.0)
    assert pacer.pause() == 0.0
    counters.advance(seconds=1.0, others=0.7, own=0.04)
    assert pacer.pause() == 0.0
    # No tick passed, or no /proc/stat: nothing to judge by, no wait.
    assert pacer.pause() == 0.0
    assert deliveries.Pacer(lambda: None, counters.own_cpu).pause() == 0.0


def test_the_machines_cpu_is_read_from_proc_stat() -> None:
    first = deliveries.machine_cpu()
    assert first is not None  # Linux
    busy, total = first
    assert 0 < busy <= total


@pytest.fixture
def webhook_options() -> WebhookOptions:
    return LOOPBACK_WEBHOOKS


@pytest.fixture
async def app_without_dispatcher(
    database_url: str, clock: FakeClock, webhook_options: WebhookOptions
) -> AsyncIterator[Client]:
    """The service with no dispatcher of its own (as under ``serve``); its client."""
    async with (
        started_app(
            database_url, clock, webhooks=webhook_options, deliver_webhooks=False
        ) as application,
        Client.connect(f"127.0.0.1:{application.port}", insecure=True) as client,
    ):
        await client.admin.create_environment(ENV)
        yield client


async def test_the_dispatcher_awaits_its_pace_after_every_batch_holding_no_claim(
    app_without_dispatcher: Client,
    database_url: str,
    clock: FakeClock,
    webhook_options: WebhookOptions,
) -> None:
    client = app_without_dispatcher
    db = Database(await create_pool(database_url, size=2))
    paces: list[list[object]] = []

    async def pace() -> None:
        async with db.connection() as conn:
            held = await conn.fetch("SELECT claimed_until FROM webhooks")
        paces.append([row["claimed_until"] for row in held])

    try:
        runtime = Runtime(db, clock, TEST_KEY_RING, SettingsCache(db), Verifier(db, TEST_KEY_RING))
        dispatcher = Dispatcher(
            runtime,
            webhook_options,
            keys=TokenKeys(db, clock, TEST_KEY_RING, "ES256"),
            issuer="mfa-service",
            pace=pace,
        )
        async with Receiver() as receiver:
            await create_webhook(client, receiver.url())
            for i in range(250):  # three batches of at most 100
                await reset(client, f"user-{i % 40}")
            async with aiohttp.ClientSession() as session:
                await dispatcher.run_once(session)
            conn = await asyncpg.connect(database_url)
            try:
                expected = await committed_ids(conn, ["USER_RESET"])
            finally:
                await conn.close()
            assert sorted(r.message_id for r in receiver.received) == sorted(expected)
    finally:
        await db.close()
    assert len(expected) == 250
    assert len(paces) >= 3
    assert paces == [[None]] * len(paces)  # after each batch, the claim was let go
