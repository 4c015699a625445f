"""PostgreSQL goes away under load and comes back (DESIGN §6).

The test runs a PostgreSQL cluster of its own (the ``pgserver`` wheel's binaries, over
TCP) so that it can stop and start it, starts the real service on it, and keeps it busy
with concurrent token validations (several at once per single-use token) and TOTP
enrollments while a health watcher polls. Midway the database goes away, in one of
three ways, and comes back:

* ``fast``: stopped with ``pg_ctl -m fast`` (sessions terminated), started again;
* ``immediate``: stopped with ``pg_ctl -m immediate`` (the server dies as in a crash;
  crash recovery at the start);
* ``freeze``: every server process SIGSTOPped, then SIGCONTed: connections stay open and
  nothing answers, as with a hung server or a network that drops packets. This is what
  the timeouts of ``mfa_service.store.db`` are for.

Then:

* every call was answered: success, or UNAVAILABLE with ERROR_REASON_DATABASE_UNAVAILABLE
  (never INTERNAL, never a deadline);
* calls during the outage failed fast (at once when refused; within their bound when
  hung), and no call at all took longer than that bound;
* no single-use token was allowed twice, and every ALLOW was committed;
* nothing is half written: each enrollment is all there or not there at all, and every
  one the client saw succeed exists;
* health went NOT_SERVING during the outage and SERVING after it;
* the same service process serves again within seconds of the database's return.

The measured figures are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev dependencies
import pyotp
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flows import call, challenge, enroll_totp, update_settings
from helpers import TEST_KEY_RING, FakeClock, create_database, create_environments
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service import app as app_module
from mfa_service.store import db

ENV = "env-outage"
SIGN = types.ACTION_WAAS_SIGN
TOKENS = 40
VALIDATORS_PER_TOKEN = 3
ENROLLERS = 4
CALL_DEADLINE = 20.0  # far beyond any bound below: a hang shows as DEADLINE_EXCEEDED
WARM_UP = 1.5
OUTAGE = 3.0
AFTER_RECOVERY = 1.5
# What "fail fast" and "serves again within seconds" mean here. With the database gone,
# a call fails at once (connection refused). With it hung, a call waits at most for a
# pooled connection (nothing frees one while the server is frozen, so it then fails) or
# for one statement; then the connection is dropped, without waiting on the server.
# Durations are measured by the client, on the event loop the service and ~150 busy
# callers share: SLACK is what a loaded 2-core machine adds to them (1.5 s was seen
# exceeded by 0.4 s). It is not slack in the claim: each bound stays well apart from the
# failure it exists to catch (asserted below).
SLACK = 3.0
TIMEOUT = max(db.ACQUIRE_TIMEOUT_SECONDS, db.COMMAND_TIMEOUT_SECONDS)
MAX_FAILURE_SECONDS = SLACK
MAX_HUNG_SECONDS = TIMEOUT + SLACK
MAX_RECOVERY_SECONDS = 5.0
# Frozen long enough for the calls in flight to reach their bound, and the next ones too.
FROZEN = 2 * TIMEOUT + SLACK
# "At once" must be told from "after a timeout", and a call cut by the timeout from one
# left hanging until the thaw (which takes FROZEN for a call made as the freeze began).
assert MAX_FAILURE_SECONDS < TIMEOUT
assert FROZEN - MAX_HUNG_SECONDS >= TIMEOUT
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --- a PostgreSQL the test can stop and start ---------------------------------------------


class Postgres:
    """A cluster of the pgserver wheel's binaries in ``pgdata``, on 127.0.0.1:``port``.

    Not pgserver's own handle: that runs ``pg_ctl`` with ``subprocess.run(user=...)``,
    i.e. a plain fork(), which segfaults now and then in a process where gRPC's
    threads are busy. Here every command is spawned (``runuser`` changes the user when
    running as root: PostgreSQL refuses to run as root).
    """

    def __init__(self, pgdata: Path) -> None:
        from pgserver import _commands, utils

        self.pgdata = pgdata
        self._bin = Path(_commands.POSTGRES_BIN_PATH)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = utils.ensure_user_exists("pgserver")
            assert user is not None
            utils.ensure_prefix_permissions(pgdata)
            utils.ensure_prefix_permissions(self._bin)
            utils.ensure_folder_permissions(self._bin, stat.S_IXGRP | stat.S_IXOTH)
            utils.ensure_folder_permissions(self._bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            os.chown(pgdata, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "pgserver", "--"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(pgdata))
        self.running = False
        self.frozen = False
        self.start()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        # Output to a file: a pipe would be inherited by the postmaster and never close.
        with tempfile.TemporaryFile() as output:
            done = subprocess.run(
                [*self._as_user, str(self._bin / program), *args],
                stdout=output,
                stderr=output,
                timeout=60,
                check=False,
            )
            output.seek(0)
            if done.returncode != 0:
                raise RuntimeError(f"{program} failed: {output.read().decode(errors='replace')}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop")
        self.running = False

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}"
        log = str(self.pgdata / "log")
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-o", options, "-l", log, "start")
        self.running = True

    def _processes(self) -> list[psutil.Process]:
        postmaster = psutil.Process(int((self.pgdata / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP the server and its backends: connections stay open, nothing answers
        (a hung server, or packets dropped on the way)."""
        for process in self._processes():
            process.suspend()
        self.frozen = True

    def thaw(self) -> None:
        for process in self._processes():
            process.resume()
        self.frozen = False

    def close(self) -> None:
        if self.frozen:
            self.thaw()
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.pgdata, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = Postgres(Path(tempfile.mkdtemp(prefix="mfa-outage-pg-")))
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True)
class Service:
    app: app_module.Application
    database_url: str


@pytest.fixture
async def service(postgres: Postgres, clock: FakeClock) -> AsyncIterator[Service]:
    url = await create_database(postgres.url)
    application = await app_module.start(
        database_url=url,
        key_ring=TEST_KEY_RING,
        clock=clock,
        health_interval_seconds=0.2,
    )
    try:
        await create_environments(f"127.0.0.1:{application.port}", [ENV])
        yield Service(application, url)
    finally:
        if postgres.frozen:
            postgres.thaw()
        if not postgres.running:
            await asyncio.to_thread(postgres.start)
        await application.stop()


# --- what happened during the run -----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    kind: str  # "validate", "enroll", "complete"
    started: float
    ended: float
    code: grpc.StatusCode
    reason: str = ""
    message: str = ""
    decision: str = ""  # validate: ALLOW_TOKEN_VALID, DENY_TOKEN_ALREADY_USED, ...
    token: int = -1
    user: str = ""
    ids: tuple[str, ...] = ()  # enroll: the enrollment id; complete: the device id

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Timeline:
    """When the database began to go away, was gone, began to return, was back."""

    stop_began: float = 0.0
    stopped: float = 0.0
    start_began: float = 0.0
    started: float = 0.0


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    health: list[tuple[float, int | str]] = field(default_factory=list)
    stopping: bool = False

    async def timed(
        self,
        kind: str,
        rpc: Awaitable[Any],
        describe: Callable[[Any], dict[str, Any]] = lambda response: {},
        **facts: Any,
    ) -> Any:
        """The response, or None if the call failed; either way, recorded."""
        started = time.monotonic()
        try:
            response = await rpc
        except grpc.aio.AioRpcError as error:
            refusal = MfaServiceError.from_rpc_error(error)
            self.outcomes.append(
                Outcome(
                    kind,
                    started,
                    time.monotonic(),
                    error.code(),
                    reason=refusal.reason,
                    message=refusal.message,
                    **facts,
                )
            )
            return None
        self.outcomes.append(
            Outcome(
                kind, started, time.monotonic(), grpc.StatusCode.OK, **facts, **describe(response)
            )
        )
        return response


def _decision(response: at_pb.ValidateActionTokenResponse) -> dict[str, Any]:
    decision = types.Decision.Name(response.decision).removeprefix("DECISION_")
    reason = types.DecisionReason.Name(response.reason).removeprefix("DECISION_REASON_")
    return {"decision": f"{decision}_{reason}"}


async def validations(client: Client, run: Run, tokens: list[str]) -> None:
    """Round after round, one token validated by several callers at once."""
    round_number = 0
    while not run.stopping:
        index = round_number % len(tokens)
        round_number += 1

        request = at_pb.ValidateActionTokenRequest(
            environment_id=ENV, user_id=token_user(index), action=SIGN, token=tokens[index]
        )
        await asyncio.gather(
            *(
                run.timed(
                    "validate",
                    client.action_tokens_stub.ValidateActionToken(request, timeout=CALL_DEADLINE),
                    _decision,
                    token=index,
                )
                for _ in range(VALIDATORS_PER_TOKEN)
            )
        )
        await asyncio.sleep(0.01)


async def enrollments(client: Client, clock: FakeClock, run: Run, worker: int) -> None:
    """New users enrolling an authenticator app, start to finish."""
    number = 0
    while not run.stopping:
        user = f"user-{worker}-{number}"
        number += 1
        enroll = pb.EnrollRequest(environment_id=ENV, user_id=user, method=types.METHOD_TOTP)
        started = await run.timed(
            "enroll",
            client.mfa_stub.Enroll(enroll, timeout=CALL_DEADLINE),
            lambda response: {"ids": (response.enrollment_id,)},
            user=user,
        )
        if started is None:
            await asyncio.sleep(0.05)
            continue
        complete = pb.CompleteEnrollmentRequest(
            environment_id=ENV,
            user_id=user,
            enrollment_id=started.enrollment_id,
            totp_code=pyotp.TOTP(started.totp.secret).at(clock.now()),
        )
        await run.timed(
            "complete",
            client.mfa_stub.CompleteEnrollment(complete, timeout=CALL_DEADLINE),
            lambda response: {"ids": (response.device.device_id,)},
            user=user,
        )


async def watch_health(target: str, run: Run) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not run.stopping:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                run.health.append((time.monotonic(), response.status))
            except grpc.aio.AioRpcError as error:
                run.health.append((time.monotonic(), error.code().name))
            await asyncio.sleep(0.05)


# --- the test ---------------------------------------------------------------------------------


async def issue_tokens(client: Client, clock: FakeClock, count: int) -> list[str]:
    """One single-use token for each of ``count`` users (token i is user i's), all
    issued at the same moment: a device accepts one code per time step."""
    await update_settings(client, ENV, protected_actions=[SIGN])
    devices = await asyncio.gather(
        *(enroll_totp(client, clock, ENV, token_user(i)) for i in range(count))
    )
    clock.advance(timedelta(seconds=30))

    async def issue(i: int) -> str:
        issued = await call(
            client.mfa_stub.IssueActionToken(
                pb.IssueActionTokenRequest(
                    environment_id=ENV,
                    user_id=token_user(i),
                    challenge_id=await challenge(client, ENV, token_user(i)),
                    proof=types.Proof(totp_code=devices[i].code(clock.now())),
                    actions=[SIGN],
                    single_use=True,
                )
            )
        )
        return str(issued.token)

    return list(await asyncio.gather(*(issue(i) for i in range(count))))


def token_user(index: int) -> str:
    return f"signer-{index}"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@pytest.mark.parametrize("mode", ["fast", "immediate", "freeze"])
async def test_database_outage_under_load(
    postgres: Postgres, service: Service, clock: FakeClock, mode: str
) -> None:
    target = f"127.0.0.1:{service.app.port}"
    async with Client.connect(target, insecure=True) as client:
        tokens = await issue_tokens(client, clock, TOKENS)
        run = Run()
        load = [
            asyncio.create_task(validations(client, run, tokens)),
            *(
                asyncio.create_task(enrollments(client, clock, run, worker))
                for worker in range(ENROLLERS)
            ),
            asyncio.create_task(watch_health(target, run)),
        ]
        try:
            await asyncio.sleep(WARM_UP)
            when = Timeline(stop_began=time.monotonic())
            if mode == "freeze":
                postgres.freeze()
            else:
                await asyncio.to_thread(postgres.stop, mode)
            when.stopped = time.monotonic()
            await asyncio.sleep(FROZEN if mode == "freeze" else OUTAGE)
            when.start_began = time.monotonic()
            if mode == "freeze":
                postgres.thaw()
            else:
                await asyncio.to_thread(postgres.start)
            when.started = time.monotonic()
            # Serving again: a call succeeds and health says so, without a restart.
            deadline = when.started + 30
            while time.monotonic() < deadline:
                ok_after = [
                    o
                    for o in run.outcomes
                    if o.started >= when.started and o.code == grpc.StatusCode.OK
                ]
                serving_after = [t for t, s in run.health if t >= when.started and s == SERVING]
                if ok_after and serving_after:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(AFTER_RECOVERY)
        finally:
            run.stopping = True
            await asyncio.gather(*load)

        check_run(run, when, mode)
        await check_database(service.database_url, run)
        # And the same process keeps serving.
        response = await client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV, user_id=token_user(0), action=SIGN, token=tokens[0]
            ),
            timeout=5,
        )
        assert response.decision == types.DECISION_DENY


def check_run(run: Run, when: Timeline, mode: str) -> None:
    outcomes = run.outcomes
    stop_began, stopped, start_began, started = (
        when.stop_began,
        when.stopped,
        when.start_began,
        when.started,
    )
    codes = Counter((o.kind, o.code.name, o.reason) for o in outcomes)
    # Every call was answered, and only with success or "database unavailable".
    unexpected = [
        o
        for o in outcomes
        if o.code != grpc.StatusCode.OK
        and (
            o.code != grpc.StatusCode.UNAVAILABLE or o.reason != "ERROR_REASON_DATABASE_UNAVAILABLE"
        )
    ]
    assert not unexpected, (unexpected[:5], codes)

    # Failing fast: calls made while the database was down, and every call at all.
    longest = max(outcomes, key=lambda o: o.seconds)
    assert longest.seconds <= MAX_HUNG_SECONDS, longest
    during = [o for o in outcomes if o.started >= stopped and o.ended <= start_began]
    assert during, "no call ran during the outage"
    succeeded = [o for o in during if o.code != grpc.StatusCode.UNAVAILABLE]
    assert not succeeded, (succeeded, stopped, start_began)
    slowest = max(o.seconds for o in during)
    assert slowest <= (MAX_HUNG_SECONDS if mode == "freeze" else MAX_FAILURE_SECONDS), slowest
    # Calls in flight when the database went away (they may have succeeded).
    in_flight = [o for o in outcomes if o.started < stopped and o.ended > stop_began]
    # No ALLOW twice for one single-use token.
    allows: dict[int, int] = defaultdict(int)
    for o in outcomes:
        if o.decision.startswith("ALLOW"):
            allows[o.token] += 1
    assert all(n == 1 for n in allows.values()), dict(allows)
    decisions = Counter(o.decision for o in outcomes if o.kind == "validate" and o.decision)
    assert allows, f"no token was ever allowed: {decisions}"

    # Health: NOT_SERVING while down, SERVING again after.
    down = [t for t, s in run.health if stopped <= t <= start_began and s == NOT_SERVING]
    assert down, run.health
    first_not_serving = min(down) - stopped
    serving_again = [t for t, s in run.health if t >= started and s == SERVING]
    assert serving_again, "health never said SERVING again"
    health_back = min(serving_again) - started
    ok_again = [o.ended for o in outcomes if o.started >= started and o.code == grpc.StatusCode.OK]
    assert ok_again, "no call succeeded after the database came back"
    calls_back = min(ok_again) - started
    assert health_back <= MAX_RECOVERY_SECONDS, health_back
    assert calls_back <= MAX_RECOVERY_SECONDS, calls_back
    assert [s for t, s in run.health if t >= min(serving_again)] == [SERVING] * len(
        [t for t, s in run.health if t >= min(serving_again)]
    ), "health flapped after the recovery"

    failed = [o.seconds for o in during]
    print(
        f"\n[{mode}] {len(outcomes)} calls: {dict(codes)}"
        f"\n[{mode}] decisions: {dict(decisions)}; {len(allows)} of {TOKENS} tokens allowed"
        f"\n[{mode}] stop took {stopped - stop_began:.2f}s, start {started - start_began:.2f}s;"
        f" {len(in_flight)} calls in flight at the stop,"
        f" slowest {max((o.seconds for o in in_flight), default=0):.3f}s;"
        f" slowest call of the run {longest.seconds:.3f}s ({longest.kind})"
        f"\n[{mode}] during the outage: {len(during)} calls, all UNAVAILABLE,"
        f" p50 {_percentile(failed, 0.5) * 1000:.1f} ms, p99 {_percentile(failed, 0.99) * 1000:.1f}"
        f" ms, max {slowest * 1000:.1f} ms"
        f"\n[{mode}] health NOT_SERVING {first_not_serving:.2f}s after the stop;"
        f" SERVING {health_back:.2f}s and first successful call {calls_back:.2f}s after"
        " the database was back"
    )


async def check_database(url: str, run: Run) -> None:
    conn = await asyncpg.connect(url)
    try:
        # Every ALLOW was committed: its token is consumed.
        allowed = {o.token for o in run.outcomes if o.decision.startswith("ALLOW")}
        consumed = await conn.fetchval(
            "SELECT count(*) FROM action_tokens WHERE environment_id = $1 AND single_use"
            " AND consumed_at IS NOT NULL",
            ENV,
        )
        assert consumed >= len(allowed)
        allow_events = await conn.fetchval(
            "SELECT count(*) FROM audit_events WHERE environment_id = $1"
            " AND type = 'TOKEN_VALIDATED' AND details->>'decision' = 'ALLOW'",
            ENV,
        )
        assert allow_events == consumed, (allow_events, consumed)

        # Enrollments: all there or not at all.
        rows = await conn.fetch(
            """
            SELECT u.user_id,
                   (SELECT count(*) FROM devices d
                     WHERE d.environment_id = u.environment_id AND d.user_id = u.user_id)
                       AS devices,
                   (SELECT count(*) FROM recovery_codes r
                     WHERE r.environment_id = u.environment_id AND r.user_id = u.user_id)
                       AS codes,
                   (SELECT count(*) FROM enrollments e
                     WHERE e.environment_id = u.environment_id AND e.user_id = u.user_id)
                       AS pending,
                   (SELECT count(*) FROM audit_events a
                     WHERE a.environment_id = u.environment_id AND a.user_id = u.user_id
                       AND a.type = 'ENROLLMENT_STARTED') AS started_events,
                   (SELECT count(*) FROM audit_events a
                     WHERE a.environment_id = u.environment_id AND a.user_id = u.user_id
                       AND a.type = 'ENROLLMENT_COMPLETED') AS completed_events,
                   (SELECT count(*) FROM audit_events a
                     WHERE a.environment_id = u.environment_id AND a.user_id = u.user_id
                       AND a.type = 'RECOVERY_CODES_GENERATED') AS codes_events,
                   u.recovery_codes_pending_ack AS pending_ack
            FROM mfa_users u
            WHERE u.environment_id = $1 AND u.user_id LIKE 'user-%'
            """,
            ENV,
        )
        stored = {r["user_id"]: r for r in rows}
        for row in rows:
            completed = row["devices"] == 1
            assert row["started_events"] == 1, dict(row)  # one Enroll per user
            if completed:
                assert (
                    row["codes"],
                    row["pending"],
                    row["completed_events"],
                    row["codes_events"],
                    row["pending_ack"],
                ) == (10, 0, 1, 1, True), dict(row)
            else:
                assert row["devices"] == 0, dict(row)
                assert (
                    row["codes"],
                    row["pending"],
                    row["completed_events"],
                    row["codes_events"],
                    row["pending_ack"],
                ) == (0, 1, 0, 0, False), dict(row)
        seen_enrolled = {o.user for o in run.outcomes if o.kind == "enroll" and o.ids}
        seen_completed = {o.user: o.ids[0] for o in run.outcomes if o.kind == "complete" and o.ids}
        # Every enrollment the client saw started or completed exists, as it saw it.
        assert seen_enrolled <= set(stored)
        for user, device_id in seen_completed.items():
            assert stored[user]["devices"] == 1, user
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM devices WHERE id = $1::uuid AND user_id = $2",
                    device_id,
                    user,
                )
                == 1
            )
        completed_count = sum(1 for r in rows if r["devices"] == 1)
        print(
            f"enrollments: {len(seen_enrolled)} started and {len(seen_completed)} completed"
            f" as seen by the client; {len(rows)} users and {completed_count} devices stored"
        )
    finally:
        await conn.close()
