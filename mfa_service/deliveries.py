"""The webhook delivery process: ``mfa-service serve`` starts one beside the server (or
beside its workers) and keeps it running.

Delivering an event costs about as much CPU as the call that wrote it (building and
signing the message, TLS, HTTP), and a webhook may take every event. In the server's own
process that work would compete with the calls for the one event loop; here it runs in a
process of its own at the lowest CPU priority (``SCHED_IDLE``): on an idle core it delivers
at full speed, on a saturated one it takes what the calls leave and its queue waits, with
nothing lost (the cursor is in the database, and a delivery that waits is delivered
later, in order). ``make bench`` measures the calls with a webhook taking every event.

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
from datetime import timedelta

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
            runtime, webhook_options(config), keys=keys, issuer=config.token_issuer
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
