"""A local highly available mfa-service cluster from Debian packages: up, down, status.

    etcd (1 member)          the DCS where Patroni keeps the leader lock
    Patroni node1, node2     PostgreSQL with synchronous replication (synchronous_mode)
    haproxy                  the replicas' DATABASE_URL: the current primary, as
                             Patroni's GET /primary says
    pgbouncer                transaction pooling in front of haproxy (for comparison;
                             the replicas do not use it)
    mfa-service x 3          replicas on three ports; clients balance over them with
                             gRPC's round_robin (docs/operations.md says why)

Everything runs from this project's virtual environment and Debian's packages, as
background processes with pid files under the cluster directory (``.cluster`` unless
MFA_CLUSTER_DIR says otherwise), on ports from MFA_CLUSTER_PORT_BASE (27400) upwards.
PostgreSQL, Patroni and pgbouncer refuse to run as root: they run as the ``postgres``
user. ``cluster.json`` in the cluster directory tells clients (tests/cluster) where
everything is. ``down`` ends every process of the cluster and removes the directory; it
may be called any number of times.

Usage: python deploy/cluster/cluster.py up|down|status
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
CLUSTER_DIR = Path(os.environ.get("MFA_CLUSTER_DIR") or PROJECT / ".cluster").resolve()
STATE_FILE = "cluster.json"
PORT_BASE = int(os.environ.get("MFA_CLUSTER_PORT_BASE") or 27400)
NODES = ("node1", "node2")
REPLICAS = 3
PG_USER = "postgres"  # the system user PostgreSQL, Patroni and pgbouncer run as
APP_USER = "mfa"
APP_DATABASE = "mfa"


def ports(base: int = PORT_BASE) -> dict[str, Any]:
    return {
        "etcd": base,
        "etcd_peer": base + 1,
        "postgres": [base + 10 + i for i in range(len(NODES))],
        "patroni": [base + 20 + i for i in range(len(NODES))],
        "haproxy": base + 30,
        "pgbouncer": base + 31,
        "replicas": [base + 41 + i for i in range(REPLICAS)],
        "metrics": [base + 51 + i for i in range(REPLICAS)],
    }


def postgres_bin() -> Path:
    """The newest PostgreSQL server of Debian's packages."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    if not found:
        raise SystemExit("cluster: no PostgreSQL server installed (make cluster-deps)")
    return found[-1].parent


def log(message: str) -> None:
    print(f"cluster: {message}", flush=True)


# --- processes -------------------------------------------------------------------------


def as_postgres(argv: list[str]) -> list[str]:
    """Run ``argv`` as the postgres user (setpriv execs it: the pid stays the same)."""
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--", *argv]


def start(name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path) -> int:
    """Start ``argv`` in the background, in a session of its own; output to a log file."""
    logs = CLUSTER_DIR / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"{name}.log").open("ab") as output:
        process = subprocess.Popen(  # noqa: S603 (Debian's programs and our interpreter)
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (CLUSTER_DIR / "pids").mkdir(exist_ok=True)
    (CLUSTER_DIR / "pids" / name).write_text(f"{process.pid}\n")
    return process.pid


# What the cluster runs (/proc/PID/comm), for telling its processes from a shell that
# merely stands in the cluster directory.
PROGRAMS = ("etcd", "patroni", "postgres", "haproxy", "pgbouncer", "python", "mfa-service")


def ours(pid: int) -> bool:
    """Is ``pid`` a live process of this cluster (not a reused pid)? Each was started
    with the cluster directory in its command line or as its working directory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        cwd = os.readlink(f"/proc/{pid}/cwd")
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rpartition(")")[2].split()[0] == "Z" or not comm.startswith(PROGRAMS):
        return False
    where = str(CLUSTER_DIR)
    return where in cmdline or cwd == where or cwd.startswith(where + os.sep)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return ours(pid)


def stop(name: str, *, grace: float) -> None:
    """SIGTERM the process of pid file ``name``, then SIGKILL its group after ``grace``."""
    pid_file = CLUSTER_DIR / "pids" / name
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            log(f"{name} did not stop within {grace:.0f} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pid_file.unlink()


def kill_postmasters() -> None:
    """A PostgreSQL left running (its Patroni was killed) is killed; its backends end
    when they see their postmaster gone."""
    for pid_file in CLUSTER_DIR.glob("node*/data/postmaster.pid"):
        with contextlib.suppress(ValueError, IndexError, OSError):
            pid = int(pid_file.read_text().split()[0])
            if alive(pid):
                log(f"killing PostgreSQL {pid} left by {pid_file.parent.parent.name}")
                os.kill(pid, signal.SIGKILL)


# --- waiting ---------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], bool], *, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except (OSError, ValueError, TypeError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster: {what} not ready within {within:.0f} s (see the logs)")
        time.sleep(0.25)


def http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        # S310: only http://127.0.0.1 URLs of this cluster.
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: a port with connections in TIME_WAIT is free for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def members(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Patroni's view of the cluster (GET /cluster of whichever node answers)."""
    for port in state["ports"]["patroni"]:
        with contextlib.suppress(OSError, ValueError):
            status, body = http_json(f"http://127.0.0.1:{port}/cluster")
            if status == 200:
                return list(body["members"])
    return []


def is_primary(patroni_port: int) -> bool:
    return http_json(f"http://127.0.0.1:{patroni_port}/primary")[0] == 200


def replicated(state: dict[str, Any]) -> bool:
    """A leader running and a synchronous standby running, caught up with it (Patroni
    3.0 says "running" of a standby that streams; later versions say "streaming")."""
    found = members(state)
    leader = any(m["role"] == "leader" and m["state"] == "running" for m in found)
    return leader and any(
        m["role"] == "sync_standby" and m["state"] in ("running", "streaming") and m["lag"] == 0
        for m in found
    )


# --- up --------------------------------------------------------------------------------


def render(template: str, target: Path, **values: object) -> None:
    text = string.Template((HERE / template).read_text()).substitute(values)
    target.write_text(text)


def owned_by_postgres(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, PG_USER, PG_USER)
    path.chmod(mode)
    return path


def up() -> int:
    if CLUSTER_DIR.exists():
        pid_files = list((CLUSTER_DIR / "pids").glob("*"))
        if len(pid_files) == len(NODES) + REPLICAS + 3 and all(
            alive(int(p.read_text())) for p in pid_files
        ):
            log(f"already up ({CLUSTER_DIR / STATE_FILE})")
            return 0
        log("a previous cluster is partly there: removing it first")
        down()
    if os.geteuid() != 0:
        raise SystemExit("cluster: run as root (PostgreSQL runs as the postgres user)")
    p = ports()
    wanted = [
        p["etcd"], p["etcd_peer"], *p["postgres"], *p["patroni"], p["haproxy"],
        p["pgbouncer"], *p["replicas"], *p["metrics"],
    ]  # fmt: skip
    taken = [port for port in wanted if not port_free(port)]
    if taken:
        raise SystemExit(f"cluster: ports {taken} are in use (set MFA_CLUSTER_PORT_BASE)")
    CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    CLUSTER_DIR.chmod(0o755)  # the postgres user reaches its directories inside
    check = subprocess.run(as_postgres(["test", "-x", str(CLUSTER_DIR)]), check=False)  # noqa: S603
    if check.returncode != 0:
        raise SystemExit(
            f"cluster: the postgres user cannot reach {CLUSTER_DIR}; set MFA_CLUSTER_DIR to a "
            "directory it can reach"
        )
    secret = {name: secrets.token_hex(16) for name in ("superuser", "replication", "app")}
    key_file = CLUSTER_DIR / "encryption-keys"
    key_file.touch(mode=0o600)
    key_file.write_text(make_key_ring())
    app_url = f"postgresql://{APP_USER}:{secret['app']}@127.0.0.1:{p['haproxy']}/{APP_DATABASE}"
    state: dict[str, Any] = {
        "dir": str(CLUSTER_DIR),
        "ports": p,
        "postgres_bin": str(postgres_bin()),
        "nodes": [
            {
                "name": name,
                "pg_port": p["postgres"][i],
                "patroni_port": p["patroni"][i],
                "data_dir": str(CLUSTER_DIR / name / "data"),
            }
            for i, name in enumerate(NODES)
        ],
        # target_session_attrs: a new connection that reaches a standby is refused.
        "database_url": f"{app_url}?target_session_attrs=read-write",
        "pgbouncer_url": (
            f"postgresql://{APP_USER}:{secret['app']}@127.0.0.1:{p['pgbouncer']}/{APP_DATABASE}"
        ),
        "superuser_url": (
            f"postgresql://postgres:{secret['superuser']}@127.0.0.1:{p['haproxy']}/postgres"
        ),
        "haproxy_socket": str(CLUSTER_DIR / "haproxy.sock"),
        "replicas": [f"127.0.0.1:{port}" for port in p["replicas"]],
        "metrics": [f"127.0.0.1:{port}" for port in p["metrics"]],
        "grpc_target": "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in p["replicas"]),
        "encryption_keys_file": str(key_file),
    }
    state_file = CLUSTER_DIR / STATE_FILE
    state_file.touch(mode=0o600)
    state_file.write_text(json.dumps(state, indent=2) + "\n")

    started = time.monotonic()
    etcd_dir = CLUSTER_DIR / "etcd"
    etcd_dir.mkdir(mode=0o700, exist_ok=True)
    etcd_client = f"http://127.0.0.1:{p['etcd']}"
    etcd_peer = f"http://127.0.0.1:{p['etcd_peer']}"
    start(
        "etcd",
        [
            "etcd", "--name", "mfa-etcd", "--data-dir", str(etcd_dir),
            "--listen-client-urls", etcd_client, "--advertise-client-urls", etcd_client,
            "--listen-peer-urls", etcd_peer, "--initial-advertise-peer-urls", etcd_peer,
            "--initial-cluster", f"mfa-etcd={etcd_peer}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-level", "warn",
        ],
        cwd=etcd_dir,
    )  # fmt: skip
    wait_for("etcd", lambda: http_json(f"{etcd_client}/health")[1]["health"] == "true", within=30)
    log("etcd is up")

    for i, name in enumerate(NODES):
        node_dir = owned_by_postgres(CLUSTER_DIR / name)
        config = node_dir / "patroni.yml"
        render(
            "patroni.yml.in",
            config,
            name=name,
            rest_port=p["patroni"][i],
            etcd_port=p["etcd"],
            pg_port=p["postgres"][i],
            node_dir=node_dir,
            pg_bin=state["postgres_bin"],
            superuser_password=secret["superuser"],
            replication_password=secret["replication"],
        )
        shutil.chown(config, PG_USER, PG_USER)
        config.chmod(0o600)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(node_dir), "LC_ALL": "C.UTF-8"}
        start(name, as_postgres(["patroni", str(config)]), env=env, cwd=node_dir)
        if i == 0:  # the first node bootstraps the cluster and leads it
            leads = functools.partial(is_primary, p["patroni"][i])
            wait_for(f"{name} as leader", leads, within=120)
            log(f"{name} is the primary")
    wait_for("a synchronous standby", lambda: replicated(state), within=180)
    log(f"{NODES[1]} is the synchronous standby")

    pg_servers = "\n".join(
        f"    server {n['name']} 127.0.0.1:{n['pg_port']} check port {n['patroni_port']}"
        for n in state["nodes"]
    )
    render(
        "haproxy.cfg.in",
        CLUSTER_DIR / "haproxy.cfg",
        cluster_dir=CLUSTER_DIR,
        haproxy_pg_port=p["haproxy"],
        pg_servers=pg_servers,
    )
    start("haproxy", ["haproxy", "-db", "-f", str(CLUSTER_DIR / "haproxy.cfg")], cwd=CLUSTER_DIR)
    asyncio.run(create_database(state, secret["app"]))
    log("haproxy routes to the primary; database and role created")

    bouncer_dir = owned_by_postgres(CLUSTER_DIR / "pgbouncer")
    render(
        "pgbouncer.ini.in",
        bouncer_dir / "pgbouncer.ini",
        bouncer_dir=bouncer_dir,
        haproxy_pg_port=p["haproxy"],
        pgbouncer_port=p["pgbouncer"],
    )
    (bouncer_dir / "userlist.txt").write_text(f'"{APP_USER}" "{secret["app"]}"\n')
    for file in ("pgbouncer.ini", "userlist.txt"):
        shutil.chown(bouncer_dir / file, PG_USER, PG_USER)
        (bouncer_dir / file).chmod(0o600)
    start(
        "pgbouncer",
        as_postgres(["pgbouncer", str(bouncer_dir / "pgbouncer.ini")]),
        env={"PATH": os.environ.get("PATH", "")},
        cwd=bouncer_dir,
    )
    wait_for("pgbouncer", lambda: port_open(p["pgbouncer"]), within=30)

    for i in range(REPLICAS):
        start_replica(state, i)
    for i, target in enumerate(state["replicas"]):
        wait_for(f"replica{i + 1}", functools.partial(serving, target), within=90)
    log(
        f"up in {time.monotonic() - started:.0f} s: gRPC {state['grpc_target']} (round_robin), "
        f"database {p['haproxy']} (haproxy), pgbouncer {p['pgbouncer']}"
    )
    return 0


def make_key_ring() -> str:
    """The replicas' MFA_ENCRYPTION_KEYS: one ring, the same on every replica."""
    sys.path.insert(0, str(PROJECT))
    from mfa_service.crypto import KeyRing

    return KeyRing.generate_entry("cluster1")


async def create_database(state: dict[str, Any], app_password: str) -> None:
    import asyncpg

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = await asyncpg.connect(state["superuser_url"], timeout=2)
            break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
    try:
        await conn.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{app_password}'")
        await conn.execute(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}")
    finally:
        await conn.close()


def replica_env(state: dict[str, Any], index: int) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "HOME")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(
        DATABASE_URL=state["database_url"],
        MFA_ENCRYPTION_KEYS=Path(state["encryption_keys_file"]).read_text().strip(),
        MFA_LISTEN_ADDR=state["replicas"][index],
        MFA_METRICS_ADDR=state["metrics"][index],
        MFA_ALLOW_PLAINTEXT="true",  # loopback only; production serves mutual TLS
        MFA_LOG_LEVEL="WARNING",
        MFA_DB_POOL_SIZE="10",
    )
    return env


def start_replica(state: dict[str, Any], index: int) -> None:
    replica_dir = CLUSTER_DIR / f"replica{index + 1}"
    replica_dir.mkdir(exist_ok=True)
    start(
        f"replica{index + 1}",
        [sys.executable, "-m", "mfa_service", "serve"],
        env=replica_env(state, index),
        cwd=replica_dir,
    )


def serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


# --- down and status -------------------------------------------------------------------


def down() -> int:
    if not CLUSTER_DIR.exists():
        log("nothing to stop")
        return 0
    for i in range(REPLICAS):
        stop(f"replica{i + 1}", grace=15)
    stop("pgbouncer", grace=5)
    stop("haproxy", grace=5)
    for name in reversed(NODES):
        stop(name, grace=40)  # Patroni stops its PostgreSQL first
    kill_postmasters()
    stop("etcd", grace=10)
    leftovers = [
        pid
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
        if pid != os.getpid() and ours(pid)
    ]
    for pid in leftovers:
        log(f"killing leftover process {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(CLUSTER_DIR)
    log("down")
    return 0


def status() -> int:
    if not (CLUSTER_DIR / STATE_FILE).exists():
        log("not up")
        return 1
    state = json.loads((CLUSTER_DIR / STATE_FILE).read_text())
    for member in members(state):
        lag = member.get("lag", "")
        print(f"{member['name']:10} {member['role']:14} {member['state']:10} {lag}")
    for i, target in enumerate(state["replicas"]):
        print(f"replica{i + 1:<3} {target:16} {'SERVING' if serving(target) else 'NOT SERVING'}")
    print(f"DATABASE_URL={state['database_url']}")
    print(f"gRPC target: {state['grpc_target']}")
    return 0


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
