"""Start-up fails closed (issue 21): a port in use stops ``serve`` with one line naming
its variable before anything is migrated or written, in a real process against a fresh
database; ``--version``; ``serve --help`` lists every variable with its default.

(No ``DATABASE_URL`` outside ``--dev``: tests/test_config.py's one-line table.)
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import asyncpg
import pytest
from test_config import run_command

from helpers import TEST_KEY_RING, FakeClock
from mfa_service import app as app_module
from mfa_service import listening
from mfa_service.config import VARIABLES
from mfa_service.crypto import KeyRing

KEY_ENTRY = KeyRing.generate_entry("k1")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another socket listens on for the test's duration."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield int(holder.getsockname()[1])


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


async def written(database_url: str) -> list[str]:
    """The tables of the database (a migration's or a signing key's trace)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert await conn.fetchval("SELECT to_regclass('public.signing_keys')") is None
    finally:
        await conn.close()
    return sorted(row["tablename"] for row in rows)


@pytest.mark.parametrize(
    ("variable", "workers"),
    [("MFA_LISTEN_ADDR", 1), ("MFA_METRICS_ADDR", 1), ("MFA_LISTEN_ADDR", 2)],
    ids=["grpc-port", "side-port", "grpc-port-workers"],
)
async def test_a_port_in_use_stops_serve_with_one_line_before_anything_is_written(
    variable: str, workers: int, held_port: int, fresh_database_url: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": fresh_database_url,
        "MFA_ENCRYPTION_KEYS": KEY_ENTRY,
        "MFA_ALLOW_PLAINTEXT": "true",
        "MFA_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        variable: f"127.0.0.1:{held_port}",
    }
    if workers == 1:
        env.setdefault("MFA_METRICS_ADDR", "127.0.0.1:0")
    args = ["serve", "--workers", str(workers)]
    result = await asyncio.to_thread(run_command, args, env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"mfa-service: cannot listen: {variable}: 127.0.0.1:{held_port} is already in use"
    ]
    assert result.stdout == ""
    assert await written(fresh_database_url) == []  # no migration, no signing key


@pytest.mark.parametrize("variable", ["MFA_LISTEN_ADDR", "MFA_METRICS_ADDR"])
async def test_start_binds_both_ports_before_it_migrates_and_lets_them_go_on_failure(
    variable: str, held_port: int, fresh_database_url: str
) -> None:
    """``app.start`` itself (a port taken after ``serve`` checked it): refused naming the
    variable, nothing written, and the other port given back."""
    ports = {"MFA_LISTEN_ADDR": free_port(), "MFA_METRICS_ADDR": free_port(), variable: held_port}
    with pytest.raises(listening.PortUnavailable) as refused:
        await app_module.start(
            database_url=fresh_database_url,
            key_ring=TEST_KEY_RING,
            clock=FakeClock(),
            listen_addr=f"127.0.0.1:{ports['MFA_LISTEN_ADDR']}",
            metrics_addr=f"127.0.0.1:{ports['MFA_METRICS_ADDR']}",
        )
    assert refused.value.variable == variable
    assert await written(fresh_database_url) == []
    for name, port in ports.items():
        if name != variable:
            listening.check(name, "127.0.0.1", port)  # free again


def test_version(tmp_path: Path) -> None:
    result = run_command(["--version"], {}, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"mfa-service {metadata.version('mfa-service')}\n"
    assert re.fullmatch(r"mfa-service \d+\.\d+\.\d+\S*\n", result.stdout)


def test_serve_help_lists_every_variable_with_its_default(tmp_path: Path) -> None:
    result = run_command(["serve", "--help"], {}, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    listed = dict(re.findall(r"^  ([A-Z][A-Z_]+) \[(.*)\]$", result.stdout, flags=re.MULTILINE))
    assert listed == {variable.name: variable.shown_default for variable in VARIABLES}
    assert listed["MFA_LISTEN_ADDR"] == "127.0.0.1:50051"
    assert listed["DATABASE_URL"] == "required"
    assert listed["MFA_ALLOW_PLAINTEXT"] == "false; --dev: true"
