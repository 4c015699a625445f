"""``make bench``: throughput, latency and server CPU of the hot RPCs, in one run.

Starts PostgreSQL (embedded, in a temporary directory, unless BENCH_DATABASE_URL or
DATABASE_URL names one), then the server as a separate process (``python -m mfa_service
serve --workers N``, plaintext on a free loopback port), seeds data straight into
PostgreSQL with the service's own store functions and key ring, and drives each scenario
from load-generator processes (grpc.aio, several channels each, a fixed number of calls
in flight, a warm-up, a fixed duration):

  baseline_health_check    grpc.health.v1 Check: the empty-RPC ceiling of this server
  validate_action_token    ValidateActionToken, a fresh pre-issued single-use token per call
  issue_action_token_totp  IssueActionToken with a valid TOTP code, a distinct user per call
  issue_action_token_totp_approval
                           Challenge bound to an approval (DESIGN 3d), then IssueActionToken
                           with a TOTP code: two calls, a distinct user per pair
  get_status               GetStatus of an enrolled user

Then the same scenarios again with one webhook subscribed to every event type, POSTing
over HTTPS to a receiver process on loopback (``--no-webhook``: skip): the figures side
by side show what delivering every event costs the calls that write them, and how many
events the dispatcher delivered while they were written.

Server CPU per call is the utime+stime of the server process and its workers
(/proc/PID/stat) over the measured window divided by the calls; with the embedded
PostgreSQL its CPU per call is reported too, and results.json has the WAL bytes, WAL
full-page images and commits per call (pg_stat_wal, pg_stat_database: the whole server).
The results go to .bench/results.json (DESIGN.md §3b) and one table is printed.
``--preload-tokens N`` then loads a day's history of N consumed tokens and N/10 users
with TOTP devices (generated in SQL) and measures again, to show whether the cost stays
flat as the data grows.

Each scenario runs in ``--rounds`` interleaved rounds (default 3) and each figure is the
median over them, the ratios taken within a round: a shared machine's speed drifts.

Usage: python tools/bench.py [--duration S] [--rounds R] [--concurrency C] [--workers N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mfa.v1 import (
    action_token_service_pb2,
    action_token_service_pb2_grpc,
    admin_service_pb2,
    admin_service_pb2_grpc,
    mfa_service_pb2,
    mfa_service_pb2_grpc,
    types_pb2,
)
from mfa_client import Client, MfaServiceError
from mfa_service.app import run_loop
from mfa_service.clock import SystemClock
from mfa_service.crypto import KeyRing
from mfa_service.domain import tokens, totp
from mfa_service.domain.devices import Challenge, Enrollment, secret_context
from mfa_service.domain.model import Action, EnvironmentId, Method, UserId
from mfa_service.services.action_tokens import AUDIENCE, DEFAULT_ISSUER
from mfa_service.services.keys import TokenKeys
from mfa_service.store import action_tokens as token_store
from mfa_service.store import challenges as challenge_store
from mfa_service.store import devices as device_store
from mfa_service.store import users as user_store
from mfa_service.store.db import Connection, Database, create_pool

ROOT = Path(__file__).resolve().parent.parent
ENV = EnvironmentId("bench")
ALGORITHM = "ES256"
SCENARIOS = (
    "baseline_health_check",
    "validate_action_token",
    "issue_action_token_totp",
    "issue_action_token_totp_approval",
    "get_status",
)
# Seeded per measurement round for the most calls/s a scenario could reach here, so the
# load never runs dry (checked: a generator that does says so).
TOKENS_PER_SECOND = 5000
TOTP_USERS_PER_SECOND = 2600  # two thirds for the plain issue, a third with approvals
LIVE = timedelta(hours=2)  # seeded tokens and challenges outlive any run
CALL_TIMEOUT_SECONDS = 10.0
START_TIMEOUT_SECONDS = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- PostgreSQL and the server under test ----------------------------------------------


class Postgres:
    """The database of the run: given by URL, or an embedded one in a temporary directory."""

    def __init__(self, url: str | None) -> None:
        self._server: Any = None
        self.pgdata: Path | None = None
        if url:
            self.url = url
            return
        # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset; harmless.
        warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
        import pgserver

        self.pgdata = Path(tempfile.mkdtemp(prefix="mfa-bench-pg-"))
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            self.pgdata, cleanup_mode="delete"
        )
        self.url = self._server.get_uri()

    def postmaster_pid(self) -> int | None:
        """Embedded only: the postmaster, whose process tree's CPU we can read."""
        if self.pgdata is None:
            return None
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            if self.pgdata is not None:
                shutil.rmtree(self.pgdata, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the webhook receiver -------------------------------------------------------------


def _certificates(out: Path) -> tuple[Path, Path, Path]:
    """A CA (its file is the server's SSL_CERT_FILE) and the receiver's certificate for
    127.0.0.1 that it issues: the dispatcher verifies the receiver as it would any other."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, ca_key: Any
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("mfa-service bench CA", ca_key, None, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue("127.0.0.1", key, ca, ca_key)
    paths = out / "webhook-ca.pem", out / "webhook-receiver.pem", out / "webhook-receiver.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


RECEIVER = Path(__file__).with_name("bench_receiver.mjs")


class WebhookReceiver:
    """The HTTPS receiver (``bench_receiver.mjs``, under Node) in its own process; ``ca``
    is what the server must trust. It stands for another machine: scheduled SCHED_IDLE,
    as the delivery process is, it takes only the CPU that the server, its database and
    the load leave (at niceness 19, a Python receiver still took enough for
    IssueActionToken with the webhook to fall to 70 % of its twin run, against 91 %)."""

    def __init__(self, out: Path) -> None:
        self.ca, cert, key = _certificates(out)
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}/hook"
        self._count_url = f"https://127.0.0.1:{self.port}/count"
        self._tls = ssl.create_default_context(cafile=str(self.ca))
        node = shutil.which("node")
        if node is None:
            raise SystemExit("the webhook round needs Node.js (or run with --no-webhook)")
        self.process = subprocess.Popen(  # noqa: S603 (Node and our own script)
            [node, str(RECEIVER), str(self.port), str(cert), str(key)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            with contextlib.suppress(AttributeError, OSError):  # Linux only
                os.sched_setscheduler(self.process.pid, os.SCHED_IDLE, os.sched_param(0))
            if self.process.stdout is None or self.process.stdout.readline().strip() != "listening":
                raise SystemExit("the webhook receiver did not start")
        except BaseException:
            self.stop()
            raise

    @property
    def received(self) -> int:
        with urllib.request.urlopen(  # noqa: S310 (our https URL)
            self._count_url, timeout=5, context=self._tls
        ) as answer:
            return int(answer.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class ServerUnderTest:
    """``python -m mfa_service serve`` in its own process, logging to .bench/server.log."""

    def __init__(
        self,
        database_url: str,
        key_ring_spec: str,
        *,
        workers: int,
        log_level: str,
        out: Path,
        trust: Path | None = None,
    ) -> None:
        """``trust``: a CA file the server's outgoing TLS (webhooks) trusts."""
        self.port = _free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "DATABASE_"))}
        env.update(
            DATABASE_URL=database_url,
            MFA_ENCRYPTION_KEYS=key_ring_spec,
            MFA_ALLOW_PLAINTEXT="true",
            MFA_LISTEN_ADDR=self.target,
            MFA_LOG_LEVEL=log_level,
        )
        if trust is not None:
            env["SSL_CERT_FILE"] = str(trust)
        # The metrics endpoint (one worker only) tells how many validations shared a statement.
        self.metrics_port = _free_port() if workers == 1 else 0
        if self.metrics_port:
            env["MFA_METRICS_ADDR"] = f"127.0.0.1:{self.metrics_port}"
        self.log_path = out / "server.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "mfa_service", "serve", "--workers", str(workers)],
                env=env,
                cwd=out,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_serving(workers)
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self, workers: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        request = health_pb2.HealthCheckRequest()
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited; see {self.log_path}")
            serving = False
            try:
                with grpc.insecure_channel(self.target) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1)
                    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                pass
            # With workers, wait until every one of them listens.
            if serving and _listening_sockets(self.port) >= workers:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {self.log_path}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        return cpu_seconds(process_tree(self.process.pid))

    def validation_batches(self) -> tuple[float, float]:
        """(validations, statements) so far, from the batch-size histogram; (0, 0) without
        the metrics endpoint."""
        if not self.metrics_port:
            return 0.0, 0.0
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        found = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            for part in found:
                if line.startswith(f"mfa_token_validation_batch_size_{part} "):
                    found[part] = float(line.split()[1])
        return found["sum"], found["count"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _listening_sockets(port: int) -> int:
    """TCP sockets listening on ``port``: one per worker with SO_REUSEPORT."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                count += 1
    return count


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (the server's workers, PostgreSQL's backends)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (proc(5) fields 14 and 15)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


# --- seeding ---------------------------------------------------------------------------


class Batch:
    """Stands in for a connection to store functions that only ``execute``: it collects
    their statements, and ``send`` runs each with executemany (one round trip a batch)."""

    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[Any, ...]]] = {}

    @property
    def conn(self) -> Connection:
        return cast(Connection, self)

    async def execute(self, query: str, *args: Any) -> str:
        self._rows.setdefault(query, []).append(args)
        return ""

    async def send(self, conn: Connection, *, chunk: int = 10_000) -> None:
        for query, rows in self._rows.items():
            for start in range(0, len(rows), chunk):
                await conn.executemany(query, rows[start : start + chunk])
        self._rows.clear()


@dataclass
class Seeded:
    """What the load generators need: tokens to validate, users to verify and query."""

    tokens: list[tuple[str, str]] = field(default_factory=list)  # (user, token)
    totp_users: list[tuple[str, str, str]] = field(default_factory=list)  # (user, chall., secret)


async def create_environment(target: str) -> None:
    """The bench environment, protecting ACTION_WAAS_SIGN, created as an operator would
    (a database kept from an earlier run has it already: then it is updated)."""
    settings = types_pb2.Settings(
        environment_id=ENV, protected_actions=[types_pb2.ACTION_WAAS_SIGN]
    )
    async with Client.connect(target, insecure=True) as client:
        try:
            await client.admin.create_environment(settings)
        except MfaServiceError as error:
            if error.reason != "ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS":
                raise
            await client.admin.update_settings(settings, ["protected_actions"])


async def create_webhook(target: str, url: str) -> str:
    """One webhook of the bench environment, subscribed to every event type."""
    every = [
        value
        for value in admin_service_pb2.AuditEventType.values()
        if value != admin_service_pb2.AUDIT_EVENT_TYPE_UNSPECIFIED
    ]
    request = admin_service_pb2.CreateWebhookRequest(environment_id=ENV, url=url, event_types=every)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        created = await stub.CreateWebhook(request, timeout=CALL_TIMEOUT_SECONDS)
        return created.webhook.webhook_id


async def delete_webhook(target: str, webhook_id: str) -> None:
    request = admin_service_pb2.DeleteWebhookRequest(environment_id=ENV, webhook_id=webhook_id)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        await stub.DeleteWebhook(request, timeout=CALL_TIMEOUT_SECONDS)


async def count_events(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM audit_events WHERE environment_id = $1", ENV
        )
        return count
    finally:
        await connection.close()


async def seed(
    database_url: str, key_ring: KeyRing, *, label: str, n_tokens: int, n_users: int
) -> Seeded:
    """Single-use tokens signed with the server's key, and TOTP users with a challenge each."""
    seeded = Seeded()
    db = Database(await create_pool(database_url, size=4))
    try:
        now = datetime.now(UTC)
        key = await TokenKeys(db, SystemClock(), key_ring, ALGORITHM).signing_key()
        batch = Batch()
        for i in range(n_tokens):
            user = UserId(f"signer-{i % 1000}")
            claims = tokens.ActionClaims(
                jti=uuid.uuid4(),
                environment_id=ENV,
                user_id=user,
                actions=(Action.WAAS_SIGN,),
                single_use=True,
                issued_at=now,
                expires_at=now + LIVE,
                method=Method.TOTP,
            )
            token = tokens.encode(claims, key, issuer=DEFAULT_ISSUER, audience=AUDIENCE)
            await token_store.insert(batch.conn, claims, token_hash=tokens.token_hash(token))
            seeded.tokens.append((user, token))
        async with db.transaction() as conn:
            await batch.send(conn)

        devices = []
        challenges: list[Challenge] = []
        for i in range(n_users):
            user = UserId(f"totp-{label}-{i}")
            device_id = uuid.uuid4()
            secret = totp.new_secret()
            sealed = key_ring.encrypt(
                secret.encode(), context=secret_context("totp", ENV, user, device_id)
            )
            devices.append((user, device_id, sealed))
            await user_store.ensure(batch.conn, ENV, user, now=now)
            challenge = Challenge(
                id=uuid.uuid4(),
                environment_id=ENV,
                user_id=user,
                method=Method.TOTP,
                device_id=None,
                created_at=now,
                expires_at=now + LIVE,
            )
            challenges.append(challenge)
            seeded.totp_users.append((user, str(challenge.id), secret))
        async with db.transaction() as conn:
            await batch.send(conn)

        async def insert_devices(
            part: list[tuple[tuple[UserId, uuid.UUID, bytes], Challenge]],
        ) -> None:
            async with db.transaction() as conn:
                for (user, device_id, sealed), challenge in part:
                    # A statement that returns a row: not for ``Batch``.
                    await challenge_store.insert(conn, challenge, limit=2**31 - 1)
                    enrollment = Enrollment(
                        id=device_id,
                        environment_id=ENV,
                        user_id=user,
                        method=Method.TOTP,
                        created_at=now,
                        expires_at=now + LIVE,
                        totp_secret_sealed=sealed,
                    )
                    await device_store.insert_totp(
                        conn,
                        enrollment,
                        alias="bench",
                        accepted_step=0,  # far in the past: every current code is fresh
                        now=now,
                    )

        paired = list(zip(devices, challenges, strict=True))
        await asyncio.gather(*(insert_devices(paired[i::4]) for i in range(4)))
        # What the seeding leaves for later (autovacuum of the new rows, their dirty pages
        # in the next checkpoint) is done now, not while a scenario is measured.
        async with db.connection() as conn:
            await conn.execute("VACUUM ANALYZE action_tokens, challenges, devices, mfa_users")
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CHECKPOINT")
    finally:
        await db.close()
    return seeded


async def preload(database_url: str, *, n_tokens: int, n_users: int) -> None:
    """A day's history in SQL: consumed tokens (kept: within the purge's one-day margin)
    and users with a TOTP device each; then VACUUM ANALYZE, as autovacuum would."""
    conn = await asyncpg.connect(database_url)
    try:
        step = 1_000_000
        for start in range(0, n_tokens, step):
            end = min(start + step, n_tokens) - 1
            await conn.execute(
                """
                INSERT INTO action_tokens (jti, environment_id, user_id, actions, single_use,
                                           method, issued_at, expires_at, consumed_at,
                                           token_hash)
                SELECT gen_random_uuid(), $1, 'history-' || (i % $4), ARRAY['WAAS_SIGN'], true,
                       'TOTP', t, t + interval '5 minutes', t + interval '2 seconds',
                       sha256(('history-' || i)::bytea)
                FROM generate_series($2::bigint, $3::bigint) AS i,
                     LATERAL (SELECT now() - (i % 82800) * interval '1 second') AS h(t)
                """,
                ENV,
                start,
                end,
                max(n_users, 1),
            )
            print(f"  preloaded {end + 1:,} tokens", flush=True)
        for start in range(0, n_users, step):
            end = min(start + step, n_users) - 1
            await conn.execute(
                """
                INSERT INTO mfa_users (environment_id, user_id, created_at)
                SELECT $1, 'history-' || i, now() - interval '30 days'
                FROM generate_series($2::bigint, $3::bigint) AS i
                """,
                ENV,
                start,
                end,
            )
            await conn.execute(
                """
                INSERT INTO devices (id, environment_id, user_id, method, alias, is_default,
                                     created_at, last_used_at, totp_secret, totp_last_step)
                SELECT gen_random_uuid(), $1, 'history-' || i, 'TOTP', 'Authenticator app',
                       true, now() - interval '30 days', now() - interval '1 day',
                       sha256(('secret-' || i)::bytea), 0
                FROM generate_series($2::bigint, $3::bigint) AS i
                """,
                ENV,
                start,
                end,
            )
            print(f"  preloaded {end + 1:,} users with devices", flush=True)
        await conn.execute("VACUUM ANALYZE action_tokens, mfa_users, devices")
        # Flush the load's dirty pages now rather than in a checkpoint during measuring.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# --- the load generator (one process of several) ---------------------------------------


@dataclass(frozen=True)
class Job:
    scenario: str
    target: str
    channels: int
    concurrency: int
    warmup: float
    duration: float
    items: Sequence[Any]


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    ran_dry: bool = False
    cpu_seconds: float = 0.0  # of this load-generator process, over the measured window


Caller = Callable[[Any], Awaitable[str | None]]  # an item -> None, or what went wrong


def _health_check(channel: grpc.aio.Channel) -> Caller:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()

    async def call(_item: Any) -> str | None:
        reply = await stub.Check(request, timeout=CALL_TIMEOUT_SECONDS)
        return None if reply.status == health_pb2.HealthCheckResponse.SERVING else "NOT_SERVING"

    return call


def _validate(channel: grpc.aio.Channel) -> Caller:
    stub = action_token_service_pb2_grpc.ActionTokenServiceStub(channel)

    async def call(item: tuple[str, str]) -> str | None:
        user, token = item
        reply = await stub.ValidateActionToken(
            action_token_service_pb2.ValidateActionTokenRequest(
                environment_id=ENV, user_id=user, action=types_pb2.ACTION_WAAS_SIGN, token=token
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        if (
            reply.decision == types_pb2.DECISION_ALLOW
            and reply.reason == types_pb2.DECISION_REASON_TOKEN_VALID
        ):
            return None
        return types_pb2.DecisionReason.Name(reply.reason)

    return call


def _issue(channel: grpc.aio.Channel) -> Caller:
    stub = mfa_service_pb2_grpc.MfaServiceStub(channel)

    async def call(item: tuple[str, str, str]) -> str | None:
        user, challenge_id, secret = item
        code = totp.code_at_step(secret, totp.time_step(datetime.now(UTC)))
        reply = await stub.IssueActionToken(
            mfa_service_pb2.IssueActionTokenRequest(
                environment_id=ENV,
                user_id=user,
                challenge_id=challenge_id,
                proof=types_pb2.Proof(totp_code=code),
                actions=[types_pb2.ACTION_WAAS_SIGN],
                single_use=True,
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return None if reply.token else "no token"

    return call


def _issue_with_approval(channel: grpc.aio.Channel) -> Caller:
    stub = mfa_service_pb2_grpc.MfaServiceStub(channel)

    async def call(item: tuple[str, str, str]) -> str | None:
        user, _, secret = item
        challenge = await stub.Challenge(
            mfa_service_pb2.ChallengeRequest(
                environment_id=ENV,
                user_id=user,
                method=types_pb2.METHOD_TOTP,
                approval=types_pb2.Approval(
                    actions=[types_pb2.ACTION_WAAS_SIGN],
                    payload_digest=hashlib.sha256(f"transfer for {user}".encode()).digest(),
                    display_text=f"Send 1.5 ETH to 0x12\u2026ab for {user}",
                    single_use=True,
                ),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        code = totp.code_at_step(secret, totp.time_step(datetime.now(UTC)))
        reply = await stub.IssueActionToken(
            mfa_service_pb2.IssueActionTokenRequest(
                environment_id=ENV,
                user_id=user,
                challenge_id=challenge.challenge_id,
                proof=types_pb2.Proof(totp_code=code),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return None if reply.token else "no token"

    return call


def _get_status(channel: grpc.aio.Channel) -> Caller:
    stub = mfa_service_pb2_grpc.MfaServiceStub(channel)

    async def call(user: str) -> str | None:
        reply = await stub.GetStatus(
            mfa_service_pb2.GetStatusRequest(environment_id=ENV, user_id=user),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return None if types_pb2.METHOD_TOTP in reply.enrolled_methods else "not enrolled"

    return call


CALLERS: dict[str, Callable[[grpc.aio.Channel], Caller]] = {
    "baseline_health_check": _health_check,
    "validate_action_token": _validate,
    "issue_action_token_totp": _issue,
    "issue_action_token_totp_approval": _issue_with_approval,
    "get_status": _get_status,
}
SINGLE_USE = {
    "validate_action_token",
    "issue_action_token_totp",
    "issue_action_token_totp_approval",
}


def load_process(job: Job, barrier: Barrier, results: Any) -> None:
    """Entry point of a load-generator process: report a Tally on ``results``."""
    results.put(run_loop(_drive(job, barrier)))


async def _drive(job: Job, barrier: Barrier) -> Tally:
    # A local subchannel pool: each channel its own TCP connection, so SO_REUSEPORT can
    # spread them over the workers (it balances connections, not calls).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(job.target, options=options) for _ in range(job.channels)]
    tally = Tally()
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), START_TIMEOUT_SECONDS)
        callers = [CALLERS[job.scenario](channel) for channel in channels]
        items: Iterator[Any] = (
            iter(job.items) if job.scenario in SINGLE_USE else itertools.cycle(job.items)
        )
        dry = object()
        await asyncio.to_thread(barrier.wait)  # every generator connected: go
        measure_from = time.monotonic() + job.warmup
        measure_to = measure_from + job.duration

        async def worker(call: Caller) -> None:
            while (started := time.monotonic()) < measure_to:
                item = next(items, dry)
                if item is dry:
                    tally.ran_dry = True
                    return
                try:
                    problem = await call(item)
                except grpc.aio.AioRpcError as error:
                    problem = f"{error.code().name}: {error.details()}"
                ended = time.monotonic()
                if started < measure_from:
                    continue
                if problem is not None:
                    tally.errors += 1
                    if len(tally.error_samples) < 5:
                        tally.error_samples.append(problem)
                elif ended <= measure_to:
                    tally.latencies_ms.append((ended - started) * 1000)

        async def own_cpu() -> None:
            await asyncio.sleep(measure_from - time.monotonic())
            before = time.process_time()
            await asyncio.sleep(measure_to - time.monotonic())
            tally.cpu_seconds = time.process_time() - before

        await asyncio.gather(
            own_cpu(), *(worker(callers[i % len(callers)]) for i in range(job.concurrency))
        )
    finally:
        for channel in channels:
            await channel.close(None)
    return tally


# --- running scenarios -----------------------------------------------------------------


@dataclass(frozen=True)
class LoadShape:
    processes: int
    channels: int
    concurrency: int
    warmup: float
    duration: float
    rounds: int = 1


def run_scenario(
    name: str,
    items: Sequence[Any],
    shape: LoadShape,
    server: ServerUnderTest,
    postgres: Postgres,
) -> dict[str, Any]:
    """One scenario: load from ``shape.processes`` processes; server CPU over the window."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(shape.processes + 1)
    results = context.Queue()
    processes = []
    for i in range(shape.processes):
        share = shape.concurrency // shape.processes + (i < shape.concurrency % shape.processes)
        job = Job(
            scenario=name,
            target=server.target,
            channels=shape.channels,
            concurrency=share,
            warmup=shape.warmup,
            duration=shape.duration,
            # Single-use items are dealt out; the others each generator cycles through.
            items=items[i :: shape.processes] if name in SINGLE_USE else items,
        )
        process = context.Process(target=load_process, args=(job, barrier, results))
        process.start()
        processes.append(process)
    barrier.wait(START_TIMEOUT_SECONDS)
    started = time.monotonic()
    _sleep_until(started + shape.warmup)
    postmaster = postgres.postmaster_pid()
    wal_before = wal_counters(postgres.url)
    server_cpu = server.cpu_seconds()
    db_cpu = cpu_seconds(process_tree(postmaster)) if postmaster else 0.0
    validations, statements = server.validation_batches()
    _sleep_until(started + shape.warmup + shape.duration)
    server_cpu = server.cpu_seconds() - server_cpu
    wal = [b - a for a, b in zip(wal_before, wal_counters(postgres.url), strict=True)]
    after = server.validation_batches()
    validations, statements = after[0] - validations, after[1] - statements
    db_cpu = (cpu_seconds(process_tree(postmaster)) if postmaster else 0.0) - db_cpu
    tallies: list[Tally] = [results.get(timeout=START_TIMEOUT_SECONDS) for _ in processes]
    for process in processes:
        process.join()
    latencies = sorted(ms for t in tallies for ms in t.latencies_ms)
    calls = len(latencies)
    result: dict[str, Any] = {
        "rps": round(calls / shape.duration, 1),
        "p50_ms": round(_percentile(latencies, 0.50), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
        "errors": sum(t.errors for t in tallies),
        "server_cpu_us_per_call": round(server_cpu / calls * 1e6, 1) if calls else 0.0,
    }
    if statements:
        result["validations_per_statement"] = round(validations / statements, 1)
    if postmaster:
        result["db_cpu_us_per_call"] = round(db_cpu / calls * 1e6, 1) if calls else 0.0
    if calls:
        result["wal_bytes_per_call"] = round(wal[0] / calls)
        result["wal_full_page_images_per_call"] = round(wal[1] / calls, 3)
        result["commits_per_call"] = round(wal[2] / calls, 2)
    client_cpu = sum(t.cpu_seconds for t in tallies)
    result["client_cpu_us_per_call"] = round(client_cpu / calls * 1e6, 1) if calls else 0.0
    samples = [s for t in tallies for s in t.error_samples]
    if samples:
        result["error_samples"] = samples[:5]
    if any(t.ran_dry for t in tallies):
        result["ran_out_of_seeded_data"] = True
    return result


def wal_counters(url: str) -> tuple[int, int, int]:
    """PostgreSQL's WAL bytes and full-page images written, and transactions committed,
    so far (the whole server: the service's writes, its dispatcher's, checkpoints')."""

    async def read() -> tuple[int, int, int]:
        conn = await asyncpg.connect(url)
        try:
            [row] = await conn.fetch(  # one row: the GROUP BY has one group
                "SELECT w.wal_bytes::bigint AS bytes, w.wal_fpi AS fpi, "
                "sum(d.xact_commit)::bigint AS commits FROM pg_stat_wal w, pg_stat_database d "
                "GROUP BY w.wal_bytes, w.wal_fpi"
            )
        finally:
            await conn.close()
        return int(row["bytes"]), int(row["fpi"]), int(row["commits"])

    return asyncio.run(read())


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass
class Hooked:
    """The runs with a webhook taking every event, and what it delivered during them."""

    scenarios: dict[str, dict[str, Any]]
    events_written: int = 0
    events_delivered: int = 0
    seconds: float = 0.0
    # Then, the load stopped: how long until every event of a run had been delivered
    # (the longest), and how many were not within DRAIN_TIMEOUT_SECONDS.
    drain_seconds: float = 0.0
    undelivered: int = 0


DRAIN_TIMEOUT_SECONDS = 120.0


def drain(receiver: WebhookReceiver, expected: int) -> float | None:
    """Wait until ``receiver`` has ``expected`` deliveries; the seconds it took, or None
    after DRAIN_TIMEOUT_SECONDS."""
    began = time.monotonic()
    while receiver.received < expected:
        if time.monotonic() - began > DRAIN_TIMEOUT_SECONDS:
            return None
        time.sleep(0.1)
    return time.monotonic() - began


def run_round(
    label: str,
    names: Sequence[str],
    shape: LoadShape,
    server: ServerUnderTest,
    postgres: Postgres,
    key_ring: KeyRing,
    receiver: WebhookReceiver | None = None,
) -> tuple[dict[str, dict[str, Any]], Hooked | None]:
    """Seed this round's data, then every scenario in turn, ``shape.rounds`` times over.

    The scenarios are interleaved (baseline, validate, issue, status, baseline, ...) and
    each figure is the median over the rounds; a ratio to the baseline is taken within a
    round and then the median. The speed of a shared machine drifts by tens of percent
    over a minute; interleaving lets that drift cancel out of the ratios.

    With a ``receiver``, each scenario runs twice in a row: as it is, then with a webhook
    subscribed to every event type (created before, deleted once every event of the run
    has been delivered, so nothing spills into the next run), in ABBA order. The two runs
    are a minute apart at most, on the same data: neither drift nor the data the first
    one wrote favours either.
    """
    variants = (False, True) if receiver is not None else (False,)
    seconds = (shape.warmup + shape.duration) * shape.rounds * len(variants)
    n_tokens = int(TOKENS_PER_SECOND * seconds)
    n_users = int(TOTP_USERS_PER_SECOND * seconds)
    began = time.monotonic()
    seeded = asyncio.run(
        seed(postgres.url, key_ring, label=label, n_tokens=n_tokens, n_users=n_users)
    )
    print(
        f"  seeded {n_tokens:,} tokens and {n_users:,} TOTP users "
        f"in {time.monotonic() - began:.1f} s",
        flush=True,
    )
    items: dict[str, Sequence[Any]] = {
        "baseline_health_check": [None],
        "validate_action_token": seeded.tokens,
        "issue_action_token_totp": [u for i, u in enumerate(seeded.totp_users) if i % 3],
        "issue_action_token_totp_approval": seeded.totp_users[::3],
        "get_status": [user for user, _, _ in seeded.totp_users[:1000]],
    }
    runs: dict[bool, dict[str, list[dict[str, Any]]]] = {
        hooked: {name: [] for name in names} for hooked in variants
    }
    hooked_totals = Hooked({})
    parts = shape.rounds * len(variants)
    for round_index in range(shape.rounds):
        for name in names:
            # ABBA: the twin with the webhook runs second in odd rounds and first in even
            # ones, so whatever favours a run's place in the pair (the machine's drift,
            # a checkpoint, autovacuum after the first) favours neither.
            order = list(enumerate(variants))
            if round_index % 2:
                order.reverse()
            for v, hooked in order:
                time.sleep(1)  # let the previous scenario's tail settle
                share = items[name]
                if name in SINGLE_USE:  # each run its own unused part
                    share = share[round_index * len(variants) + v :: parts]
                if hooked and receiver is not None:
                    webhook_id = asyncio.run(create_webhook(server.target, receiver.url))
                    written, delivered = asyncio.run(count_events(postgres.url)), receiver.received
                    began = time.monotonic()
                result = run_scenario(name, share, shape, server, postgres)
                after = ""
                if hooked and receiver is not None:
                    hooked_totals.seconds += time.monotonic() - began
                    hooked_totals.events_delivered += receiver.received - delivered
                    written = asyncio.run(count_events(postgres.url)) - written
                    hooked_totals.events_written += written
                    # The queue the run left, delivered before the next run starts.
                    took = drain(receiver, delivered + written)
                    if took is None:
                        hooked_totals.undelivered += delivered + written - receiver.received
                        after = f", {written:,} events, not all delivered after the run"
                    else:
                        hooked_totals.drain_seconds = max(hooked_totals.drain_seconds, took)
                        after = f", {written:,} events, all delivered {took:.1f} s after"
                    asyncio.run(delete_webhook(server.target, webhook_id))
                runs[hooked][name].append(result)
                print(
                    f"  round {round_index + 1} {name}{' (webhook)' if hooked else ''}: "
                    f"{result['rps']:.0f} calls/s{after}",
                    flush=True,
                )
    plain = _scenarios(runs[False])
    if receiver is None:
        return plain, None
    hooked_totals.scenarios = _scenarios(runs[True])
    return plain, hooked_totals


def _scenarios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    scenarios = {name: _median_of(results) for name, results in runs.items()}
    if "baseline_health_check" in runs:
        baselines = [r["rps"] or 1.0 for r in runs["baseline_health_check"]]
        for name, results in runs.items():
            ratios = [r["rps"] / b for r, b in zip(results, baselines, strict=True)]
            scenarios[name]["ratio_to_baseline"] = round(statistics.median(ratios), 3)
            scenarios[name]["ratio_to_baseline_by_round"] = [round(x, 3) for x in ratios]
    return scenarios


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """A scenario's rounds in one: the median of each figure, errors summed, rounds kept."""
    merged: dict[str, Any] = {}
    for key, value in results[0].items():
        values = [r[key] for r in results if key in r]
        if key == "errors":
            merged[key] = sum(values)
        elif key == "error_samples":
            merged[key] = [s for v in values for s in v][:5]
        elif isinstance(value, bool):
            merged[key] = any(values)
        elif isinstance(value, int | float):
            merged[key] = round(statistics.median(values), 3)
    merged["rps_by_round"] = [r["rps"] for r in results]
    merged["rounds"] = results
    return merged


# --- output ----------------------------------------------------------------------------


def table(
    scenarios: dict[str, dict[str, Any]],
    compare: dict[str, dict[str, Any]] | None,
    compare_label: str = "vs empty",
) -> str:
    db = any("db_cpu_us_per_call" in r for r in scenarios.values())
    w = max(25, *(len(name) + 2 for name in scenarios))  # the name column
    head = f"{'scenario':<{w}}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    head += f"{'server CPU':>12}" + (f"{'db CPU':>9}" if db else "") + f"{'load CPU':>10}"
    head += f"{'vs baseline':>13}"
    if compare is not None:
        head += f"{compare_label:>14}"
    lines = [head, f"{'':<{w}}{'':>9}{'':>9}{'':>9}{'':>8}{'µs/call':>12}"]
    lines[-1] += (f"{'µs/call':>9}" if db else "") + f"{'µs/call':>10}"
    for name, r in scenarios.items():
        line = (
            f"{name:<{w}}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
            f"{r['server_cpu_us_per_call']:>12.0f}"
        )
        if db:
            line += f"{r.get('db_cpu_us_per_call', 0):>9.0f}"
        line += f"{r['client_cpu_us_per_call']:>10.0f}"
        ratio = r.get("ratio_to_baseline")
        line += f"{ratio:>12.0%} " if ratio is not None else f"{'-':>12} "
        if compare is not None:
            before = compare[name]["rps"] or 1.0  # the same scenario without the change
            line += f"{r['rps'] / before:>13.0%} "
        if "validations_per_statement" in r:
            line += f"  ({r['validations_per_statement']:g} validations a statement)"
        if r.get("ran_out_of_seeded_data"):
            line += "  (ran out of seeded data: raise TOKENS_PER_SECOND)"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per scenario and round"
    )
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds first")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of every scenario (median)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight in all")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--channels", type=int, default=4, help="channels per generator")
    parser.add_argument(
        "--preload-tokens",
        type=int,
        default=0,
        metavar="N",
        help="then load N consumed tokens (and N/10 users) and measure again",
    )
    parser.add_argument("--preload-users", type=int, default=None, metavar="M")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset to run (default: all; the ratio needs the baseline)",
    )
    parser.add_argument(
        "--no-webhook",
        dest="webhook",
        action="store_false",
        help="skip the round with a webhook subscribed to every event",
    )
    parser.add_argument("--log-level", default="INFO", help="the server's MFA_LOG_LEVEL")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench")
    args = parser.parse_args(argv)
    names = [n for n in args.scenarios.split(",") if n]
    if unknown := set(names) - set(SCENARIOS):
        parser.error(f"unknown scenario {sorted(unknown)[0]}; known: {', '.join(SCENARIOS)}")
    shape = LoadShape(
        processes=args.processes,
        channels=args.channels,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
        rounds=args.rounds,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server.log").unlink(missing_ok=True)
    key_ring_spec = KeyRing.generate_entry("bench1")
    key_ring = KeyRing.parse(key_ring_spec)
    config = {
        "workers": args.workers,
        "load_processes": args.processes,
        "channels_per_process": args.channels,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "server_log_level": args.log_level,
    }
    print(
        f"mfa-service bench: {args.workers} server worker(s), {args.processes} load processes "
        f"x {args.channels} channels, {args.concurrency} calls in flight, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per scenario, {args.rounds} "
        f"interleaved round(s), {os.cpu_count()} CPUs",
        flush=True,
    )
    postgres = Postgres(os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL"))
    server = None
    receiver = WebhookReceiver(args.out) if args.webhook else None
    hooked = None
    try:
        server = ServerUnderTest(
            postgres.url,
            key_ring_spec,
            workers=args.workers,
            log_level=args.log_level,
            out=args.out,
            trust=receiver.ca if receiver is not None else None,
        )
        asyncio.run(create_environment(server.target))
        if receiver is not None:
            print(
                "each scenario again with one webhook subscribed to every event type, "
                f"to {receiver.url}",
                flush=True,
            )
        scenarios, hooked = run_round(
            "empty", names, shape, server, postgres, key_ring, receiver=receiver
        )
        output: dict[str, Any] = {"scenarios": scenarios, "config": config}
        if hooked is not None:
            output["webhook"] = {
                "scenarios": hooked.scenarios,
                "events_written": hooked.events_written,
                "events_delivered": hooked.events_delivered,
                "seconds": round(hooked.seconds, 1),
                "drained_within_s": round(hooked.drain_seconds, 1),
                "undelivered": hooked.undelivered,
            }
        preloaded = None
        if args.preload_tokens:
            users = args.preload_users
            users = args.preload_tokens // 10 if users is None else users
            print(f"preloading {args.preload_tokens:,} tokens and {users:,} users", flush=True)
            began = time.monotonic()
            asyncio.run(preload(postgres.url, n_tokens=args.preload_tokens, n_users=users))
            print(f"  preloaded in {time.monotonic() - began:.0f} s", flush=True)
            preloaded, _ = run_round("preloaded", names, shape, server, postgres, key_ring)
            output["preloaded"] = {
                "tokens": args.preload_tokens,
                "users": users,
                "scenarios": preloaded,
            }
    finally:
        if server is not None:
            server.stop()
        if receiver is not None:
            receiver.stop()
        postgres.stop()
    (args.out / "results.json").write_text(json.dumps(output, indent=2) + "\n")
    print()
    print(table(scenarios, None))
    if hooked is not None:
        print("\nwith one webhook subscribed to every event type (each run beside its twin, ABBA):")
        print(table(hooked.scenarios, scenarios, "vs no webhook"))
        print(
            f"{hooked.events_delivered:,} of the {hooked.events_written:,} events written "
            f"during those runs were delivered within them "
            f"({hooked.events_delivered / max(hooked.seconds, 1e-9):,.0f}/s: the delivery "
            f"process paces itself while the machine is busy), the rest at most "
            f"{hooked.drain_seconds:.1f} s after each run"
            + (
                f"; {hooked.undelivered:,} not within {DRAIN_TIMEOUT_SECONDS:.0f} s"
                if hooked.undelivered
                else ""
            )
        )
    if preloaded is not None:
        print(f"\nwith {args.preload_tokens:,} stored tokens and {users:,} users:")
        print(table(preloaded, scenarios))
    print(f"\nwritten to {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
