"""Composition root: configuration -> database -> stores and services -> gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from opentelemetry import trace

from mfa_service import deliveries, listening, tracing
from mfa_service.api.action_token import ActionTokenServicer
from mfa_service.api.admin import AdminServicer
from mfa_service.api.metrics import Metrics, PoolCollector
from mfa_service.api.mfa import MfaServicer
from mfa_service.api.side_port import SidePort
from mfa_service.clock import Clock, SystemClock
from mfa_service.config import Config, TlsConfig, parse_host_port
from mfa_service.crypto import KeyRing
from mfa_service.embedded_pg import EmbeddedPostgres
from mfa_service.errors import DatabaseUnavailable
from mfa_service.server import Server, Servicers
from mfa_service.services.action_tokens import ActionTokenService
from mfa_service.services.admin import AdminService
from mfa_service.services.audit_log import AuditLogService
from mfa_service.services.audit_stream import (
    WAKE_INTERVAL_SECONDS,
    AuditStreamService,
    Wakeups,
)
from mfa_service.services.devices import DeviceService
from mfa_service.services.enrollment import EnrollmentService
from mfa_service.services.keys import TokenKeys
from mfa_service.services.purge import Purger
from mfa_service.services.recovery import RecoveryService
from mfa_service.services.runtime import Runtime
from mfa_service.services.settings import SettingsCache, SettingsService
from mfa_service.services.status import StatusService
from mfa_service.services.verification import VerificationService, Verifier
from mfa_service.services.webhooks import Dispatcher, WebhookOptions, WebhookService
from mfa_service.store import audit_stream
from mfa_service.store.db import (
    DEFAULT_STATEMENT_CACHE_SIZE,
    Database,
    create_pool,
    migrate_url,
)
from mfa_service.store.notifications import SettingsListener
from mfa_service.store.signing_keys import KEYS_CHANNEL

log = logging.getLogger("mfa_service")
T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class Application:
    db: Database
    server: Server
    settings_cache: SettingsCache
    background: list[asyncio.Task[None]]
    audit_stream: AuditStreamService
    metrics: Metrics | None = None
    side_port: SidePort | None = None  # MFA_METRICS_ADDR: /metrics, /readyz, JWKS...

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int:
        """The bound port of the HTTP side port (0: none)."""
        return self.side_port.port if self.side_port is not None else 0

    async def stop(self, grace_seconds: float = 0) -> None:
        if self.side_port is not None:
            self.side_port.stopping()  # /readyz 503 while in-flight calls finish
        # WatchAuditEvents streams never end on their own: ended first, they do not hold
        # the graceful stop for its whole grace period (clients resume elsewhere).
        self.audit_stream.close()
        await self.server.stop(grace_seconds)
        if self.side_port is not None:
            await self.side_port.close()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.settings_cache.listener is not None:
            await self.settings_cache.listener.close()
        await self.db.close()


async def _keep_listening(listener: SettingsListener, interval: float) -> None:
    """Reconnect the settings listener after a database outage."""
    while True:
        await asyncio.sleep(interval)
        await listener.ensure()


async def start(
    *,
    database_url: str,
    key_ring: KeyRing,
    listen_addr: str = "127.0.0.1:0",
    tls: TlsConfig | None = None,
    clock: Clock | None = None,
    pool_size: int = 10,
    health_interval_seconds: float = 2.0,
    token_algorithm: str = "ES256",
    token_issuer: str = "mfa-service",
    purge_interval: timedelta = timedelta(minutes=5),
    reuse_port: bool = False,
    metrics_addr: str | None = None,
    tracer: trace.Tracer | None = None,
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
    listen_url: str | None = None,
    webhooks: WebhookOptions | None = None,
    audit_wake_interval_seconds: float = WAKE_INTERVAL_SECONDS,
    deliver_webhooks: bool = True,
) -> Application:
    """Bind the ports, then migrate, connect and serve; the returned application knows
    its bound ports. A port that cannot be bound raises ``listening.PortUnavailable``
    before anything is written.

    ``reuse_port``: share the listening port with the other workers (``serve --workers``).
    ``metrics_addr``: HOST:PORT of the HTTP side port, /metrics, /healthz, /readyz and
    /.well-known/jwks.json (``api.side_port``; port 0: any free one, see
    ``Application.metrics_port``); None: none, and no metrics. ``tracer``: trace every call and
    statement (see ``mfa_service.tracing``); None: no tracing. ``statement_cache_size``:
    0 behind pgbouncer in transaction mode. ``listen_url``: where the listener of settings
    changes and new signing keys connects (a session of its own); None: ``database_url``.
    ``webhooks``: how webhooks are created and delivered; None: the defaults (https only).
    ``deliver_webhooks``: run the webhook dispatcher in this process (``serve`` runs it in
    a process of its own instead: ``mfa_service.deliveries``).
    ``audit_wake_interval_seconds``: how long a WatchAuditEvents stream waits for a
    notification before it reads again anyway (services.audit_stream).
    """
    clock = clock or SystemClock()
    webhooks = webhooks or WebhookOptions()
    metrics = Metrics() if metrics_addr is not None else None
    # The ports first: one in use stops start-up before a migration or a key is written.
    server = Server(
        listen_addr=listen_addr,
        tls=tls,
        health_interval_seconds=health_interval_seconds,
        reuse_port=reuse_port,
        metrics=metrics,
        tracer=tracer,
    )
    side_port = None
    try:
        if metrics is not None and metrics_addr is not None:
            host, side_port_number = parse_host_port("MFA_METRICS_ADDR", metrics_addr)
            sockets = listening.bind("MFA_METRICS_ADDR", host, side_port_number)
            side_port = await SidePort.open(sockets, metrics.registry)
        await migrate_url(database_url, statement_cache_size=statement_cache_size)
        query_logger = tracing.query_logger(tracer) if tracer is not None else None
        db = Database(
            await create_pool(
                database_url,
                size=pool_size,
                query_logger=query_logger,
                statement_cache_size=statement_cache_size,
            )
        )
    except BaseException:
        await _close_ports(server, side_port)
        raise
    if metrics is not None:
        pool = db.pool
        metrics.add_pool(PoolCollector(pool.get_size, pool.get_idle_size, pool_size))
    keys = TokenKeys(db, clock, key_ring, token_algorithm)
    try:
        await keys.ensure()
    except BaseException:
        await db.close()
        await _close_ports(server, side_port)
        raise
    settings_cache = SettingsCache(db)
    wakeups = Wakeups()
    # One listening session for all: settings changes, new signing keys (a rotation by
    # ``mfa-service keys rotate`` or another replica reaches this one at once), and new
    # audit events for the WatchAuditEvents streams of this process.
    settings_cache.listener = SettingsListener(
        listen_url or database_url,
        settings_cache.invalidate,
        other_channels={KEYS_CHANNEL: keys.invalidate, audit_stream.CHANNEL: wakeups.notified},
    )
    await settings_cache.listener.ensure()
    runtime = Runtime(db, clock, key_ring, settings_cache, Verifier(db, key_ring), tracer)
    tokens = ActionTokenService(
        runtime,
        keys,
        issuer=token_issuer,
        on_validation_batch=metrics.observe_validation_batch if metrics is not None else None,
    )
    watch = AuditStreamService(runtime, wakeups, wake_interval_seconds=audit_wake_interval_seconds)
    servicers = Servicers(
        mfa=MfaServicer(
            status=StatusService(runtime),
            enrollment=EnrollmentService(runtime, tokens),
            verification=VerificationService(runtime),
            tokens=tokens,
            devices=DeviceService(runtime, tokens),
            recovery=RecoveryService(runtime, tokens),
        ),
        action_tokens=ActionTokenServicer(tokens),
        admin=AdminServicer(
            SettingsService(runtime),
            AdminService(runtime),
            AuditLogService(runtime),
            WebhookService(runtime, webhooks),
            watch,
        ),
    )
    try:
        await server.start(servicers, db.ping)
    except BaseException:
        if side_port is not None:
            await side_port.close()
        await settings_cache.listener.close()
        await db.close()
        raise
    if side_port is not None:
        side_port.serve(database_ready=db.ping, jwks=tokens.jwks)
    background = [
        asyncio.create_task(_keep_listening(settings_cache.listener, health_interval_seconds)),
        asyncio.create_task(Purger(db, clock, tracer=tracer).run_forever(purge_interval)),
    ]
    if deliver_webhooks:
        dispatcher = Dispatcher(runtime, webhooks, keys=keys, issuer=token_issuer)
        background.append(asyncio.create_task(dispatcher.run_forever()))
    return Application(
        db=db,
        server=server,
        settings_cache=settings_cache,
        background=background,
        audit_stream=watch,
        metrics=metrics,
        side_port=side_port,
    )


async def _close_ports(server: Server, side_port: SidePort | None) -> None:
    """Start-up failed before serving: let the ports go."""
    if side_port is not None:
        await side_port.close()
    await server.close()


def run(config: Config, *, workers: int = 1) -> int:
    """``mfa-service serve``: one server process, or ``workers`` sharing the port.

    With several, this parent process starts the embedded PostgreSQL (if there is no
    DATABASE_URL), migrates and makes the signing key once, forks the workers (each with
    its own event loop, pool and health), forwards SIGTERM and SIGINT to them and returns
    when all have exited: 0, or the exit status of a worker that failed.
    """
    if workers == 1:
        run_loop(serve(config))
        return 0
    embedded = EmbeddedPostgres(config.data_dir) if config.database_url is None else None
    database_url = embedded.url if embedded is not None else config.database_url or ""
    try:
        asyncio.run(
            prepare(
                database_url,
                config.key_ring,
                config.token_algorithm,
                statement_cache_size=config.db_statement_cache_size,
            )
        )
        return _supervise(config, database_url, workers)
    finally:
        if embedded is not None:
            embedded.stop()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop when it is installed (measured +13-25 % calls/s)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return None
    return uvloop.new_event_loop


async def prepare(
    database_url: str,
    key_ring: KeyRing,
    algorithm: str,
    *,
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
) -> None:
    """What every server does at start, done once before the workers fork: migrate and
    make sure a signing key exists (each worker checks again, finding nothing to do)."""
    await migrate_url(database_url, statement_cache_size=statement_cache_size)
    db = Database(
        await create_pool(database_url, size=1, statement_cache_size=statement_cache_size)
    )
    try:
        await TokenKeys(db, SystemClock(), key_ring, algorithm).ensure()
    finally:
        await db.close()


def _supervise(config: Config, database_url: str, workers: int) -> int:
    """Fork the workers, forward stop signals to them, and wait for all of them."""
    pids: set[int] = set()
    stopping = False

    def stop_workers(sig: int, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop_workers)
    # Blocked while forking, so no signal slips between a fork and its pid being known;
    # a worker unblocks them once its event loop handles them (in ``serve``).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:
                _worker(config, database_url)
            pids.add(pid)
        # One delivery process for all the workers (it unblocks the signals itself).
        pids.add(deliveries.spawn(database_url, dev_mode=config.dev_mode).pid)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    log.info("serving with %d worker processes and a delivery process %s", workers, sorted(pids))
    status = 0
    while pids:
        pid, wait_status = os.wait()
        pids.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0:
            status = status or (code if code > 0 else 1)
            if not stopping:
                log.error("worker %d exited with status %d: stopping the others", pid, code)
                stop_workers(signal.SIGTERM)
    return status


def _worker(config: Config, database_url: str) -> NoReturn:
    """A forked worker: serve until told to stop, then end the process (never return)."""
    code = 1
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        run_loop(serve(config, database_url=database_url, reuse_port=True, with_deliveries=False))
        code = 0
    except DatabaseUnavailable:
        log.error("the database is unreachable (check DATABASE_URL)")
        code = 3
    except listening.PortUnavailable as error:
        log.error("cannot listen: %s", error)
        code = 2
    except BaseException:
        log.exception("worker %d failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


async def serve(
    config: Config,
    *,
    database_url: str | None = None,
    reuse_port: bool = False,
    with_deliveries: bool = True,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    ``database_url`` (a worker's, from its parent) takes the place of the configured one;
    with neither, an embedded PostgreSQL runs for as long as this does.
    ``with_deliveries``: start the webhook delivery process (a worker's parent starts it
    instead).
    """
    embedded = None
    database_url = database_url or config.database_url
    if database_url is None:
        embedded = EmbeddedPostgres(config.data_dir)
        database_url = embedded.url
    traces = tracing.start(config.traces_exporter)
    delivery = None
    try:
        app = await start(
            database_url=database_url,
            key_ring=config.key_ring,
            listen_addr=config.listen_addr,
            tls=config.tls,
            pool_size=config.db_pool_size,
            token_algorithm=config.token_algorithm,
            token_issuer=config.token_issuer,
            reuse_port=reuse_port,
            metrics_addr=config.metrics_addr,
            tracer=traces.tracer if traces is not None else None,
            statement_cache_size=config.db_statement_cache_size,
            listen_url=config.db_listen_url,
            webhooks=deliveries.webhook_options(config),
            deliver_webhooks=False,
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stopping.set)
        # A forked worker starts with them blocked (see _supervise): handled from now on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if with_deliveries:  # after the handlers: a stop signal now never finds none
            delivery = deliveries.DeliveryProcess(database_url, dev_mode=config.dev_mode)
            await delivery.start()
        log.info(
            "mfa-service serving on %s:%d (%s)", config.listen_host, app.port, _transport(config)
        )
        if app.side_port is not None:
            log.info(
                "HTTP side port on %s (port %d): /metrics /healthz /readyz /.well-known/jwks.json",
                config.metrics_addr,
                app.metrics_port,
            )
        if config.tls is not None and config.tls.client_ca_file is None:
            log.warning(
                "TLS without client certificates: callers are neither authenticated nor "
                "authorized (set MFA_TLS_CLIENT_CA_FILE and MFA_CALLER_ROLES)"
            )
        await stopping.wait()
        log.info("shutting down: health NOT_SERVING, letting in-flight calls finish")
        await app.stop(config.shutdown_grace_seconds)
        log.info("stopped")
    finally:
        if delivery is not None:
            await delivery.stop(config.shutdown_grace_seconds)
        if traces is not None:
            traces.shutdown()
        if embedded is not None:
            embedded.stop()


def _transport(config: Config) -> str:
    if config.tls is None:
        return "plaintext, development only"
    if config.tls.client_ca_file is None:
        return "TLS"
    return f"mutual TLS, {len(config.tls.caller_roles)} caller identities with roles"


async def rotate_signing_key(
    *,
    database_url: str,
    key_ring: KeyRing,
    algorithm: str,
    clock: Clock | None = None,
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
) -> str:
    """``mfa-service keys rotate``: a new signing key; returns its kid."""
    await migrate_url(database_url, statement_cache_size=statement_cache_size)
    db = Database(
        await create_pool(database_url, size=1, statement_cache_size=statement_cache_size)
    )
    try:
        keys = TokenKeys(db, clock or SystemClock(), key_ring, algorithm)
        return (await keys.rotate()).kid
    finally:
        await db.close()
