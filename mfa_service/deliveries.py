"""The webhook delivery process: ``mfa-service serve`` starts one beside the server (or
beside its workers) and keeps it running.

Delivering an event costs CPU (building and signing the message, TLS, HTTP: about a
quarter of a millisecond here), and a webhook may take every event. In the server's own
process that work would compete with the calls for the one event loop; here it runs in a
process of its own, and it gives way to the calls twice over:

- It is scheduled ``SCHED_IDLE`` (the lowest niceness where Linux is not there).
- It paces itself as PostgreSQL's autovacuum does (cost-based delay), by CPU: after each
  batch, while the machine's CPUs were more than three quarters busy with other work, it
  waits long enough to keep itself under 2 % of one CPU (at most 5 s between batches).
  Scheduling alone is not enough: on a 2-CPU virtual machine two busy-looping
  ``SCHED_IDLE`` processes cut ``ValidateActionToken`` to 64 % and ``IssueActionToken``
  to 62 % of their figures (``make bench``), and the deliveries cost nearly as much.

So on a machine with CPU to spare it delivers at full speed, and on a saturated one a
few tens of events a second while its queue waits, with nothing lost (the cursor is in the
database, and a delivery that waits is delivered later, in order). ``make bench``
measures the calls with a webhook taking every event, and how many were delivered.

The process ends with its server: it is told the server's pid (``--parent``) and ends at
once if its parent is another (the server died while it started); Linux then sends it
SIGKILL when the server dies (``prctl(PR_SET_PDEATHSIG)``), and it also checks its
parent once a second (elsewhere, or if that failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from mfa_service.clock import SystemClock
from mfa_service.config import Config
from mfa_service.domain.webhooks import RetryPolicy
from mfa_service.errors import DatabaseUnavailable
from mfa_service.services.keys import TokenKeys
from mfa_service.services.runtime import Runtime
from mfa_service.services.settings import SettingsCache
from mfa_service.services.verification import Verifier
from mfa_service.services.webhooks import Dispatcher, WebhookOptions
from mfa_service.store.db import Database, create_pool

log = logging.getLogger("mfa_service.deliveries")

NICENESS = 19  # where SCHED_IDLE is not to be had: CFS weight 15 against a server's 1024
APPLICATION_NAME = "mfa-service deliver"  # its sessions in pg_stat_activity
POOL_SIZE = 2  # the dispatcher runs one statement at a time; one spare
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESTART_DELAY_SECONDS = 1.0  # after the delivery process died unexpectedly
CLOSE_TIMEOUT_SECONDS = 5.0  # for the pool at the end (its database may be gone)
_PR_SET_PDEATHSIG = 1
# Pacing (``Pacer``): while the machine's CPUs are busier than BUSY with other work, the
# deliveries keep to SHARE_WHILE_BUSY of one CPU, waiting at most MAX_PAUSE_SECONDS.
# Measured with make bench (2 CPUs, 16 calls in flight, a webhook taking every event):
# at 5 % and 1 s, IssueActionToken still fell to 72-84 % of its twin runs; at 2 % and 5 s,
# 83-104 % (median 97 %). Below BUSY the deliveries go at full speed: a backlog cannot
# build up on a machine with a quarter of its CPU to spare.
BUSY = 0.75
SHARE_WHILE_BUSY = 0.02
MAX_PAUSE_SECONDS = 5.0
_PROC_STAT = Path("/proc/stat")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def webhook_options(config: Config) -> WebhookOptions:
    """How webhooks are created (in the server) and delivered (here), from ``config``."""
    return WebhookOptions(
        allow_loopback_http=config.dev_mode,
        timeout=timedelta(seconds=config.webhook_timeout_seconds),
        retry=RetryPolicy(horizon=config.webhook_retry_horizon),
    )


def main(config: Config, database_url: str, parent: int | None) -> int:
    """``mfa-service deliver``: deliver webhooks until SIGTERM, SIGINT or the end of
    ``parent`` (None: run on its own, until a signal)."""
    _lower_priority()
    if parent is not None:
        _die_with_parent()
        if os.getppid() != parent:  # gone before the death signal was asked for
            log.warning("the server process is gone: delivery does not start")
            return 0
    try:
        asyncio.run(_deliver(config, database_url, parent))
    except DatabaseUnavailable:
        log.error("the database is unreachable (check DATABASE_URL)")
        return 3
    return 0


def _lower_priority() -> None:
    """SCHED_IDLE (Linux): run only on CPU time no other process wants, and give way at
    once to any that wakes (a server answering a call); elsewhere, the lowest niceness."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICENESS)


def pause_seconds(*, own_cpu: float, others_busy: float) -> float:
    """How long to wait after a batch that took ``own_cpu`` seconds of this process's CPU,
    the machine's CPUs having been ``others_busy`` (0 to 1) busy with other work: nothing
    below ``BUSY``; else what keeps this process at ``SHARE_WHILE_BUSY`` of one CPU, at most
    ``MAX_PAUSE_SECONDS`` (a batch still goes at least that often)."""
    if others_busy < BUSY:
        return 0.0
    return min(MAX_PAUSE_SECONDS, own_cpu * (1 / SHARE_WHILE_BUSY - 1))


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all the machine's CPUs so far (``/proc/stat``);
    None where there is no such file."""
    try:
        with _PROC_STAT.open() as stat:
            fields = [int(v) for v in stat.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq = fields
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


def own_cpu() -> float:
    """This process's CPU seconds so far."""
    times = os.times()
    return times.user + times.system


class Pacer:
    """Awaited by the dispatcher after each batch: waits ``pause_seconds``, judging the
    machine's load over the time since the last batch ended (the wait included), with
    this process's own CPU left out."""

    def __init__(
        self,
        machine: Callable[[], tuple[int, int] | None] = machine_cpu,
        own: Callable[[], float] = own_cpu,
    ) -> None:
        self._machine, self._own = machine, own
        self._last = machine(), own()

    def pause(self) -> float:
        """The wait due now; the next one is judged from here."""
        (before, own_before), now = self._last, (self._machine(), self._own())
        self._last = now
        after, own_after = now
        if before is None or after is None or after[1] <= before[1]:
            return 0.0  # no /proc/stat, or no tick passed: nothing to judge by
        spent = own_after - own_before
        others = (after[0] - before[0] - spent * _CLOCK_TICKS) / (after[1] - before[1])
        return pause_seconds(own_cpu=spent, others_busy=others)

    async def __call__(self) -> None:
        pause = self.pause()
        if pause > 0:
            await asyncio.sleep(pause)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def _deliver(config: Config, database_url: str, parent: int | None) -> None:
    db = Database(
        await create_pool(
            database_url,
            size=POOL_SIZE,
            statement_cache_size=config.db_statement_cache_size,
            application_name=APPLICATION_NAME,
        )
    )
    try:
        clock = SystemClock()
        keys = TokenKeys(db, clock, config.key_ring, config.token_algorithm)  # CAEP's SETs
        runtime = Runtime(
            db, clock, config.key_ring, SettingsCache(db), Verifier(db, config.key_ring)
        )
        dispatcher = Dispatcher(
            runtime,
            webhook_options(config),
            keys=keys,
            issuer=config.token_issuer,
            pace=Pacer(),
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stopping.set)
        # Started by ``serve --workers``' parent with them blocked: handled from now on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        tasks = [asyncio.create_task(dispatcher.run_forever())]
        if parent is not None:
            tasks.append(asyncio.create_task(_until_orphaned(parent, stopping)))
        log.info("delivering webhooks, at the lowest CPU priority")
        await stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        try:
            await asyncio.wait_for(db.close(), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            db.pool.terminate()


async def _until_orphaned(parent: int, stopping: asyncio.Event) -> None:
    """Set ``stopping`` once the parent is gone (where no death signal says so)."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=1)
        if os.getppid() != parent:
            log.warning("the server process is gone: delivery stops")
            stopping.set()


def _command(dev_mode: bool) -> list[str]:
    """``mfa-service deliver`` for a child of this process."""
    dev = ["--dev"] if dev_mode else []
    return [sys.executable, "-m", "mfa_service", "deliver", *dev, "--parent", str(os.getpid())]


def spawn(database_url: str, *, dev_mode: bool) -> subprocess.Popen[bytes]:
    """Start ``mfa-service deliver`` (for ``serve --workers``' parent, which waits for it
    as for a worker)."""
    # close_fds=False lets Python use posix_spawn: no fork, so none of gRPC's fork
    # handlers run (they print a line to stderr). Nothing leaks: the descriptors Python
    # and gRPC open are not inheritable (PEP 446, SOCK_CLOEXEC).
    return subprocess.Popen(  # noqa: S603 (this interpreter, this package)
        _command(dev_mode), env={**os.environ, "DATABASE_URL": database_url}, close_fds=False
    )


class DeliveryProcess:
    """``mfa-service deliver`` as a child of the server: started with ``start``, started
    again after an unexpected exit, ended by ``stop``. It reads the same environment
    (``DATABASE_URL`` is the server's own, an embedded PostgreSQL's included)."""

    def __init__(self, database_url: str, *, dev_mode: bool) -> None:
        self._database_url = database_url
        self._dev_mode = dev_mode
        self._process: subprocess.Popen[bytes] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._keeper = asyncio.create_task(self._keep_running())

    async def _spawn(self) -> None:
        self._process = spawn(self._database_url, dev_mode=self._dev_mode)

    async def _keep_running(self) -> None:
        while not self._stopping and self._process is not None:
            code = await asyncio.to_thread(self._process.wait)
            if self._stopping:
                return
            log.error("the webhook delivery process exited with status %d: restarting", code)
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            if not self._stopping:
                await self._spawn()

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``: a POST cut short is sent again
        (under the same webhook-id) by whoever claims the webhook next."""
        self._stopping = True
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, grace_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
