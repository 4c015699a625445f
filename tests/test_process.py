"""``mfa-service serve`` as a real process: signals, graceful shutdown, logs, dev mode."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev dependencies
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flows import call
from helpers import eventually, refused
from mfa.v1 import admin_service_pb2, admin_service_pb2_grpc, types_pb2
from mfa_client import Client
from mfa_service.config import DEV_KEY_FILE
from mfa_service.crypto import KeyRing

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
START_TIMEOUT_SECONDS = 60.0
EXIT_TIMEOUT_SECONDS = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait(self, within: float = EXIT_TIMEOUT_SECONDS) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            pytest.fail(f"server did not exit within {within} s; its log:\n{self.stderr}")


async def _health(target: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=1
        )
    status: int = response.status
    return status


@asynccontextmanager
async def serve(
    tmp_path: Path, env: dict[str, str], *args: str, name: str = "server"
) -> AsyncIterator[ServerProcess]:
    """``python -m mfa_service serve`` until SERVING; always ended when the block exits."""
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "DATABASE_"))}
    full_env.update(env, MFA_LISTEN_ADDR=f"127.0.0.1:{port}")
    stdout_path, stderr_path = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mfa_service",
            "serve",
            *args,
            env=full_env,
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
        )
    server = ServerProcess(process, port, stdout_path, stderr_path)
    try:
        await _wait_serving(server)
        yield server
    finally:
        if process.returncode is None:
            # SIGTERM first so an embedded PostgreSQL is stopped too; then make sure.
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_serving(server: ServerProcess) -> None:
    async def serving() -> bool:
        if server.process.returncode is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.output}")
        with suppress(grpc.aio.AioRpcError):
            return bool(await _health(server.target) == SERVING)
        return False

    await eventually(
        serving,
        within=START_TIMEOUT_SECONDS,
        interval=0.1,
        what=lambda: f"server SERVING:\n{server.output}",
    )


def _external_db_env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "MFA_ENCRYPTION_KEYS": KeyRing.generate_entry("k1"),
        "MFA_ALLOW_PLAINTEXT": "true",
        "MFA_SHUTDOWN_GRACE_SECONDS": "10",
    }


def _settings(env: str, **fields: object) -> types_pb2.Settings:
    return types_pb2.Settings(environment_id=env, **fields)  # type: ignore[arg-type]


# --- graceful shutdown -------------------------------------------------------------


async def _wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    """Until some session of this database waits for a lock."""

    async def waiters() -> int:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return count

    await eventually(waiters, what="UpdateSettings waiting for the settings lock")


async def test_sigterm_drains_in_flight_calls_then_exits(tmp_path: Path, database_url: str) -> None:
    env_id = "env-graceful"
    env = {**_external_db_env(database_url), "MFA_LOG_FORMAT": "text"}
    async with serve(tmp_path, env) as server:
        holder = await asyncpg.connect(database_url)
        observer = await asyncpg.connect(database_url)
        try:
            async with (
                grpc.aio.insecure_channel(server.target) as channel,
                Client.connect(server.target, insecure=True, timeout=30) as client,
            ):
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="")
                )
                first = await asyncio.wait_for(watch.read(), 5)
                assert first.status == SERVING
                await client.admin.create_environment(env_id)

                # Hold the lock UpdateSettings takes for this environment: its row's.
                lock = holder.transaction()
                await lock.start()
                await holder.execute(
                    "SELECT 1 FROM environment_settings WHERE environment_id = $1 FOR UPDATE",
                    env_id,
                )
                update = asyncio.create_task(
                    client.admin.update_settings(
                        _settings(env_id, session_mfa_enabled=True), ["session_mfa_enabled"]
                    )
                )
                await _wait_for_lock_waiter(observer)

                server.signal(signal.SIGTERM)
                changed = await asyncio.wait_for(watch.read(), 5)
                assert changed.status == NOT_SERVING
                # Having said so, the Watch ends: it must not hold the drain open.
                assert await asyncio.wait_for(watch.read(), 5) == grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lacks aio.EOF
                assert await watch.code() == grpc.StatusCode.OK

                # Draining: the call in flight is neither failed nor cut off ...
                await asyncio.sleep(0.3)
                assert not update.done()
                assert server.process.returncode is None
                # ... while a new connection is refused.
                async with Client.connect(server.target, insecure=True, timeout=2) as late:
                    # The transport refuses (no ErrorInfo): the service never sees it.
                    await refused(late.admin.get_settings(env_id), grpc.StatusCode.UNAVAILABLE, "")

                await lock.commit()
                updated = await asyncio.wait_for(update, 5)
                assert updated.session_mfa_enabled
                assert updated.revision == 2  # 1 is the creation

                assert await server.wait() == 0

                await refused(client.admin.get_settings(env_id), grpc.StatusCode.UNAVAILABLE, "")
        finally:
            await holder.close()
            await observer.close()

    stored = await _stored_document(database_url, env_id)
    assert stored is not None
    assert stored["session_mfa_enabled"] is True
    assert "shutting down" in server.stderr
    assert "stopped" in server.stderr
    # The held call's log line measures the wait: it was held for at least the 0.3 s above.
    (held,) = [
        match
        for match in map(LOG_LINE.search, server.stderr.splitlines())
        if match and match["method"] == "/mfa.v1.AdminService/UpdateSettings"
    ]
    assert held["status"] == "OK"
    assert float(held["duration"]) >= 300


async def _stored_document(database_url: str, env_id: str) -> dict[str, object] | None:
    conn = await asyncpg.connect(database_url)
    try:
        raw = await conn.fetchval(
            "SELECT document::text FROM environment_settings WHERE environment_id = $1", env_id
        )
    finally:
        await conn.close()
    return None if raw is None else dict(json.loads(raw))


async def test_sigint_shuts_down_cleanly(tmp_path: Path, database_url: str) -> None:
    async with serve(tmp_path, _external_db_env(database_url)) as server:
        server.signal(signal.SIGINT)
        assert await server.wait() == 0
    assert "stopped" in server.stderr
    assert "Traceback" not in server.stderr


# --- logging -------------------------------------------------------------------------

LOG_LINE = re.compile(
    r"rpc method=(?P<method>\S+) caller=(?P<caller>\S+) status=(?P<status>[A-Z_]+) "
    r"duration_ms=(?P<duration>\d+\.\d+) request_id=(?P<request_id>\S+)$"
)


async def _wait_for_log_line(server: ServerProcess, request_id: str) -> None:
    """A cancelled stream's line is written once the server has seen the cancel."""
    await eventually(
        lambda: f"request_id={request_id}" in server.stderr,
        what=lambda: f"a log line for {request_id}:\n{server.stderr}",
    )


async def test_one_log_line_per_call_and_no_secret(tmp_path: Path, database_url: str) -> None:
    # The text format (JSON, the default outside --dev, is tests/test_observability.py).
    env = {**_external_db_env(database_url), "MFA_LOG_FORMAT": "text"}
    async with (
        serve(tmp_path, env) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateEnvironment(
            admin_service_pb2.CreateEnvironmentRequest(settings=_settings("env-log")), timeout=5
        )
        await admin.GetSettings(
            admin_service_pb2.GetSettingsRequest(environment_id="env-log"),
            metadata=(("x-request-id", "req-log-get"),),
            timeout=5,
        )
        await refused(
            call(
                admin.UpdateSettings(
                    admin_service_pb2.UpdateSettingsRequest(
                        settings=_settings("env-log", totp=types_pb2.TotpSettings(issuer="")),
                        update_mask=field_mask_pb2.FieldMask(paths=["totp.issuer"]),
                    ),
                    metadata=(("x-request-id", "req-log-refused"),),
                    timeout=5,
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ERROR_REASON_INVALID_ARGUMENT",
        )

        # Streaming calls are calls too: reflection (an async generator) ...
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=(("x-request-id", "req-log-reflect"),),
            timeout=5,
        )
        listed = [response async for response in reflection]
        assert "mfa.v1.AdminService" in {s.name for s in listed[0].list_services_response.service}
        assert ("x-request-id", "req-log-reflect") in tuple(await reflection.trailing_metadata())
        # ... and a health Watch (a coroutine that writes), which the caller ends.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""),
            metadata=(("x-request-id", "req-log-watch"),),
        )
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        watch.cancel()
        await _wait_for_log_line(server, "req-log-watch")

        server.signal(signal.SIGTERM)
        assert await server.wait() == 0

    lines = {}
    for line in server.stderr.splitlines():
        match = LOG_LINE.search(line)
        if match:
            assert match["request_id"] not in lines, f"two log lines for one call: {line}"
            lines[match["request_id"]] = match
    get, update = lines["req-log-get"], lines["req-log-refused"]
    assert get["method"] == "/mfa.v1.AdminService/GetSettings"
    assert get["status"] == "OK"
    assert update["method"] == "/mfa.v1.AdminService/UpdateSettings"
    assert update["status"] == "INVALID_ARGUMENT"
    for match in (get, update):
        assert match["caller"].startswith("unauthenticated@ipv4:127.0.0.1:")
        assert float(match["duration"]) >= 0
    # The health polls of the test are calls too, each with its own request id.
    assert any(m["method"] == "/grpc.health.v1.Health/Check" for m in lines.values())
    reflect, watched = lines["req-log-reflect"], lines["req-log-watch"]
    assert reflect["method"] == "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert reflect["status"] == "OK"
    assert watched["method"] == "/grpc.health.v1.Health/Watch"
    assert watched["status"] == "CANCELLED"

    secret = env["MFA_ENCRYPTION_KEYS"]
    key_material = secret.split(":", 1)[1]
    assert secret not in server.output
    assert key_material not in server.output


# --- development mode: embedded PostgreSQL -----------------------------------------


def _postgres_processes(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if (
            proc.info["name"] == "postgres"
            and str(pgdata) in cmdline
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc)
    return found


async def test_dev_mode_runs_and_stops_an_embedded_postgres(tmp_path: Path) -> None:
    pgdata = (tmp_path / "postgres").resolve()
    env = {"MFA_DATA_DIR": str(tmp_path), "MFA_SHUTDOWN_GRACE_SECONDS": "2"}
    env_id = "env-dev"
    try:
        async with (
            serve(tmp_path, env, "--dev", name="first") as server,
            Client.connect(server.target, insecure=True) as client,
        ):
            assert (await client.admin.create_environment(env_id)).totp.issuer == "MFA"
            await client.admin.update_settings(
                _settings(env_id, totp=types_pb2.TotpSettings(issuer="Persisted Inc")),
                ["totp.issuer"],
            )
            assert (pgdata / "postmaster.pid").exists()
            assert _postgres_processes(pgdata)
            key_file = tmp_path / DEV_KEY_FILE
            assert key_file.exists()
            assert key_file.stat().st_mode & 0o077 == 0
            dev_key = key_file.read_text().strip()
            # The delivery process has read the same --dev configuration.
            await eventually(
                lambda: "delivering webhooks" in server.stderr, what=lambda: server.stderr
            )

            server.signal(signal.SIGTERM)
            assert await server.wait(15) == 0

        # Said once, by the server (its delivery process, also --dev, keeps quiet).
        assert len(re.findall(r"WARNING .*DEVELOPMENT MODE", server.stderr)) == 1
        assert "starting embedded PostgreSQL" in server.stderr
        assert dev_key.split(":", 1)[1] not in server.output
        assert not (pgdata / "postmaster.pid").exists()
        assert _postgres_processes(pgdata) == []

        # Second start on the same data dir: same key, same database, same settings.
        async with (
            serve(tmp_path, env, "--dev", name="second") as server,
            Client.connect(server.target, insecure=True) as client,
        ):
            assert (await client.admin.get_settings(env_id)).totp.issuer == "Persisted Inc"
            assert key_file.read_text().strip() == dev_key
            server.signal(signal.SIGTERM)
            assert await server.wait(15) == 0
        assert not (pgdata / "postmaster.pid").exists()
        assert _postgres_processes(pgdata) == []
    finally:
        # Should a check above fail with the server killed, stop its PostgreSQL too.
        for proc in _postgres_processes(pgdata):
            with suppress(psutil.Error):
                proc.terminate()
