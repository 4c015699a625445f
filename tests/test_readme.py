"""Every grpcurl block of the README runs, in order, against a freshly started
`mfa-service serve --dev` (what `make run` starts)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import eventually
from mfa_service.config import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_ADDR = "127.0.0.1:50051"


def grpcurl_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
    return [b for b in blocks if "grpcurl -plaintext" in b]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_serving(addr: str, process: asyncio.subprocess.Process) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            assert process.returncode is None, "the server exited"
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        await eventually(serving, within=60, interval=0.1, what="the server SERVING")


async def test_every_grpcurl_block_of_the_readme_runs(tmp_path: Path) -> None:
    blocks = grpcurl_blocks()
    assert len(blocks) >= 6
    addr = f"127.0.0.1:{free_port()}"  # the documented port, moved so tests never collide
    script = "set -euo pipefail\n" + "\n".join(b.replace(DOCUMENTED_ADDR, addr) for b in blocks)
    env = {
        **os.environ,
        "MFA_DATA_DIR": str(tmp_path / "data"),
        "MFA_LISTEN_ADDR": addr,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("DATABASE_URL", None)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mfa_service", "serve", "--dev",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_serving(addr, server)
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", script, env=env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(shell.communicate(), timeout=120)
        output = stdout.decode()
        assert shell.returncode == 0, stderr.decode()[-2000:]
        assert "mfa.v1.AdminService" in output  # list
        assert '"status": "SERVING"' in output  # health
        assert "DECISION_ALLOW" in output and "DECISION_REASON_TOKEN_VALID" in output
        assert "jwks_json" in output
        assert '"session_mfa_pending": true' in output  # before VerifySession
        assert '"method": "METHOD_RECOVERY_CODE"' in output  # a recovery code as a proof
        assert '"excludeCredentials"' in output  # passkey options
        assert '"AUDIT_EVENT_TYPE_DEVICE_DELETED"' in output
        assert '"devices_removed": 1' in output  # ResetUserMfa of alice
        # Where carol's Enroll came from, on its event.
        assert '"client_ip":"203.0.113.7","client_user_agent":"Mozilla/5.0 (demo)"' in output
        # WatchAuditEvents, stopped by grpcurl's -max-time: events with their cursors.
        assert '{"type":"AUDIT_EVENT_TYPE_ENVIRONMENT_CREATED","cursor":"djE6' in output
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=30)


def test_the_configuration_reference_is_config_variables() -> None:
    """The README's table has a row for each variable of ``config.VARIABLES`` (the one
    list, which ``serve --help`` prints) and no other, each with the same default."""
    readme = (ROOT / "README.md").read_text()
    reference = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    cells: dict[str, str] = {}
    for names, default in re.findall(
        r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)*) \| ([^|]*) \|", reference, re.M
    ):
        for name in re.findall(r"`([A-Z_]+)`", names):
            cells[name] = default.strip()
    assert sorted(cells) == sorted(v.name for v in VARIABLES)
    for variable in VARIABLES:
        cell = cells[variable.name]
        if variable.required:
            assert cell.startswith("required"), variable.name
        elif variable.default is None:
            assert cell.startswith("unset"), variable.name
        else:
            assert cell.startswith(f"`{variable.default}`"), variable.name
        if variable.dev_default is not None:
            assert f"`{variable.dev_default}` with `--dev`" in cell, variable.name


def test_the_opening_names_every_system_package_make_test_installs() -> None:
    """A newcomer reads what a fresh machine needs before the first command fails."""
    makefile = (ROOT / "Makefile").read_text()
    (tools,) = re.findall(r"^SYSTEM_DEPS := (.+)$", makefile, flags=re.MULTILINE)
    opening = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    assert tools.split()
    assert [tool for tool in tools.split() if f"`{tool}`" not in opening] == []
    assert "npm" in opening
