"""Process configuration (mfa_service.config): defaults, every malformed variable, dev mode."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mfa_service import config as config_module
from mfa_service.api.authorization import ROLE_SERVICES
from mfa_service.config import (
    CALLER_ROLES,
    DEV_KEY_FILE,
    VARIABLES,
    ConfigError,
    load,
    load_database,
    log_format,
)
from mfa_service.crypto import KeyRing

KEY_ENTRY = KeyRing.generate_entry("k1")
KEY_MATERIAL = KEY_ENTRY.partition(":")[2]
DATABASE_URL = "postgresql://mfa@db.internal:5432/mfa"  # never connected to here
# The smallest valid production-like environment: a database, keys, plaintext on loopback.
BASE = {
    "DATABASE_URL": DATABASE_URL,
    "MFA_ENCRYPTION_KEYS": KEY_ENTRY,
    "MFA_ALLOW_PLAINTEXT": "true",
}


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """Paths of files standing in for the TLS certificate, key and client CA."""
    files = {}
    for name in ("cert", "key", "ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text(f"-----BEGIN {name.upper()}-----\n")
        files[name] = str(path)
    files["missing"] = str(tmp_path / "nope.pem")
    return files


def test_defaults() -> None:
    config = load(BASE)
    assert config.database_url == DATABASE_URL
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 50051)
    assert config.listen_addr == "127.0.0.1:50051"
    assert config.key_ring == KeyRing.parse(KEY_ENTRY)
    assert config.tls is None
    assert config.data_dir == Path(".data")
    assert config.db_pool_size == 10
    assert config.shutdown_grace_seconds == 10.0
    assert config.log_level == "INFO"
    assert config.dev_mode is False
    assert config.db_statement_cache_size == 100  # asyncpg's default
    assert config.db_listen_url is None  # the listener uses DATABASE_URL


def test_variables_is_the_one_list_of_what_config_reads() -> None:
    """Every variable the code of mfa_service/config.py names is in VARIABLES (what
    ``serve --help`` and the README list), and every one listed is read there."""
    source = Path(config_module.__file__).read_text()
    start = source.index("\nVARIABLES = (")
    end = source.index("\n)", start)
    code = source[:start] + source[end:]
    named = set(re.findall(r'"((?:MFA|OTEL|DATABASE)_[A-Z_]+)"', code))
    assert {"DATABASE_URL", "MFA_ENCRYPTION_KEYS", "MFA_TOKEN_ALGORITHM"} <= named
    assert sorted(named) == sorted(variable.name for variable in VARIABLES)


def test_every_variable_is_read() -> None:
    config = load(
        {
            **BASE,
            "DATABASE_URL": "postgresql://mfa@db-primary.internal:5432/mfa",
            "MFA_LISTEN_ADDR": "[::1]:6000",
            "MFA_DB_POOL_SIZE": "25",
            "MFA_SHUTDOWN_GRACE_SECONDS": "0",
            "MFA_LOG_LEVEL": "debug",
            "MFA_DATA_DIR": "/var/lib/mfa",
            "MFA_DB_STATEMENT_CACHE": "0",
            "MFA_DB_LISTEN_URL": "postgresql://mfa@db-direct.internal:5432/mfa",
        }
    )
    assert config.database_url == "postgresql://mfa@db-primary.internal:5432/mfa"
    assert (config.listen_host, config.listen_port) == ("::1", 6000)
    assert config.listen_addr == "[::1]:6000"
    assert config.db_pool_size == 25
    assert config.shutdown_grace_seconds == 0.0
    assert config.log_level == "DEBUG"
    assert config.data_dir == Path("/var/lib/mfa")
    assert config.db_statement_cache_size == 0
    assert config.db_listen_url == "postgresql://mfa@db-direct.internal:5432/mfa"


def test_tls_configuration(tls_files: dict[str, str]) -> None:
    env = {
        "DATABASE_URL": DATABASE_URL,
        "MFA_ENCRYPTION_KEYS": KEY_ENTRY,
        "MFA_LISTEN_ADDR": "0.0.0.0:443",
        "MFA_TLS_CERT_FILE": tls_files["cert"],
        "MFA_TLS_KEY_FILE": tls_files["key"],
        "MFA_TLS_CLIENT_CA_FILE": tls_files["ca"],
        "MFA_CALLER_ROLES": "spiffe://corp/signer=action_tokens",
    }
    config = load(env)
    assert config.tls is not None
    assert config.tls.cert_file == Path(tls_files["cert"])
    assert config.tls.key_file == Path(tls_files["key"])
    assert config.tls.client_ca_file == Path(tls_files["ca"])
    assert config.tls.caller_roles == {"spiffe://corp/signer": {"action_tokens"}}


def test_tls_without_client_certificates_needs_the_explicit_opt_in(
    tls_files: dict[str, str],
) -> None:
    env = {
        "DATABASE_URL": DATABASE_URL,
        "MFA_ENCRYPTION_KEYS": KEY_ENTRY,
        "MFA_LISTEN_ADDR": "0.0.0.0:443",
        "MFA_TLS_CERT_FILE": tls_files["cert"],
        "MFA_TLS_KEY_FILE": tls_files["key"],
    }
    with pytest.raises(ConfigError) as refused:
        load(env)
    assert refused.value.variable == "MFA_TLS_CLIENT_CA_FILE"
    assert "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH=true" in refused.value.problem
    with pytest.raises(ConfigError):
        load({**env, "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH": "false"})

    tls = load({**env, "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH": "true"}).tls
    assert tls is not None
    assert tls.client_ca_file is None
    assert tls.caller_roles == {}


def test_caller_roles(tls_files: dict[str, str]) -> None:
    roles = (
        " spiffe://corp/api-backend=mfa, spiffe://corp/signer=action_tokens,"
        "dashboard.corp.internal=admin,spiffe://corp/ops=mfa+action_tokens+admin,"
    )
    tls = load(
        {
            **BASE,
            "MFA_TLS_CERT_FILE": tls_files["cert"],
            "MFA_TLS_KEY_FILE": tls_files["key"],
            "MFA_TLS_CLIENT_CA_FILE": tls_files["ca"],
            "MFA_CALLER_ROLES": roles,
        }
    ).tls
    assert tls is not None
    assert tls.caller_roles == {
        "spiffe://corp/api-backend": {"mfa"},
        "spiffe://corp/signer": {"action_tokens"},
        "dashboard.corp.internal": {"admin"},
        "spiffe://corp/ops": {"mfa", "action_tokens", "admin"},
    }


def test_every_role_opens_one_service() -> None:
    assert set(ROLE_SERVICES) == set(CALLER_ROLES)
    assert len(set(ROLE_SERVICES.values())) == len(ROLE_SERVICES)


def test_plaintext_on_any_host_needs_the_explicit_opt_in() -> None:
    config = load({**BASE, "MFA_LISTEN_ADDR": "0.0.0.0:50051", "MFA_PLAINTEXT_ANY_HOST": "yes"})
    assert config.listen_addr == "0.0.0.0:50051"


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:50051", True),  # all of 127.0.0.0/8
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("127.evil.example.com:50051", False),  # a name, whatever its first label
        ("localhost.evil.com:50051", False),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.1:50051", False),
        ("[::ffff:127.0.0.1]:50051", False),  # IPv4-mapped: not ::1
        ("127.0.0.256:50051", False),  # not an address, so a name
    ],
)
def test_plaintext_only_on_a_loopback_address(listen: str, loopback: bool) -> None:
    """The listen host is parsed as an address, never matched as text."""
    if loopback:
        assert load({**BASE, "MFA_LISTEN_ADDR": listen}).tls is None
        return
    with pytest.raises(ConfigError) as refused:
        load({**BASE, "MFA_LISTEN_ADDR": listen})
    assert refused.value.variable == "MFA_LISTEN_ADDR"
    assert "limited to loopback" in refused.value.problem
    # The explicit opt-in still serves there.
    assert load({**BASE, "MFA_LISTEN_ADDR": listen, "MFA_PLAINTEXT_ANY_HOST": "true"}).tls is None


MTLS_ROLES = {"MFA_CALLER_ROLES": "spiffe://corp/signer=action_tokens"}
MTLS = {
    "MFA_TLS_CERT_FILE": "{cert}",
    "MFA_TLS_KEY_FILE": "{key}",
    "MFA_TLS_CLIENT_CA_FILE": "{ca}",
    **MTLS_ROLES,
}

# (changes to BASE, with None deleting a variable; the variable the error must name).
# "{cert}", "{key}", "{ca}" and "{missing}" stand for files of the tls_files fixture.
MALFORMED: list[object] = [
    pytest.param({"DATABASE_URL": None}, "DATABASE_URL", id="db-url-missing"),
    pytest.param({"DATABASE_URL": ""}, "DATABASE_URL", id="db-url-empty"),
    pytest.param({"DATABASE_URL": "mysql://db/mfa"}, "DATABASE_URL", id="db-url-mysql"),
    pytest.param({"DATABASE_URL": "db.internal:5432"}, "DATABASE_URL", id="db-url-no-scheme"),
    pytest.param({"MFA_LISTEN_ADDR": "localhost"}, "MFA_LISTEN_ADDR", id="listen-no-port"),
    pytest.param({"MFA_LISTEN_ADDR": "127.0.0.1:70000"}, "MFA_LISTEN_ADDR", id="listen-port-70000"),
    pytest.param({"MFA_LISTEN_ADDR": "127.0.0.1:-1"}, "MFA_LISTEN_ADDR", id="listen-port-negative"),
    pytest.param({"MFA_LISTEN_ADDR": "127.0.0.1:http"}, "MFA_LISTEN_ADDR", id="listen-port-name"),
    pytest.param(
        {"MFA_LISTEN_ADDR": "127.0.0.1:²"}, "MFA_LISTEN_ADDR", id="listen-port-superscript"
    ),
    pytest.param({"MFA_LISTEN_ADDR": ":50051"}, "MFA_LISTEN_ADDR", id="listen-no-host"),
    pytest.param({"MFA_ENCRYPTION_KEYS": None}, "MFA_ENCRYPTION_KEYS", id="keys-missing"),
    pytest.param({"MFA_ENCRYPTION_KEYS": "  "}, "MFA_ENCRYPTION_KEYS", id="keys-blank"),
    pytest.param({"MFA_ENCRYPTION_KEYS": KEY_MATERIAL}, "MFA_ENCRYPTION_KEYS", id="keys-no-kid"),
    pytest.param(
        {"MFA_ENCRYPTION_KEYS": KEY_ENTRY[:-8]}, "MFA_ENCRYPTION_KEYS", id="keys-truncated"
    ),
    pytest.param(
        {"MFA_ENCRYPTION_KEYS": f"{KEY_ENTRY},{KEY_ENTRY}"},
        "MFA_ENCRYPTION_KEYS",
        id="keys-duplicate",
    ),
    pytest.param({"MFA_TLS_CERT_FILE": "{cert}"}, "MFA_TLS_KEY_FILE", id="tls-cert-without-key"),
    pytest.param({"MFA_TLS_KEY_FILE": "{key}"}, "MFA_TLS_CERT_FILE", id="tls-key-without-cert"),
    pytest.param({"MFA_TLS_CLIENT_CA_FILE": "{ca}"}, "MFA_TLS_CERT_FILE", id="tls-ca-without-cert"),
    pytest.param(
        {"MFA_TLS_CERT_FILE": "{missing}", "MFA_TLS_KEY_FILE": "{key}"},
        "MFA_TLS_CERT_FILE",
        id="tls-cert-file-missing",
    ),
    pytest.param(
        {"MFA_TLS_CERT_FILE": "{cert}", "MFA_TLS_KEY_FILE": "{missing}"},
        "MFA_TLS_KEY_FILE",
        id="tls-key-file-missing",
    ),
    pytest.param(
        {
            "MFA_TLS_CERT_FILE": "{cert}",
            "MFA_TLS_KEY_FILE": "{key}",
            "MFA_TLS_CLIENT_CA_FILE": "{missing}",
        },
        "MFA_TLS_CLIENT_CA_FILE",
        id="tls-ca-file-missing",
    ),
    pytest.param(
        {
            "MFA_TLS_CERT_FILE": "{cert}",
            "MFA_TLS_KEY_FILE": "{key}",
            "MFA_TLS_CLIENT_CA_FILE": "{ca}",
        },
        "MFA_CALLER_ROLES",
        id="mtls-without-roles",
    ),
    pytest.param(
        {"MFA_TLS_CERT_FILE": "{cert}", "MFA_TLS_KEY_FILE": "{key}", **MTLS_ROLES},
        "MFA_TLS_CLIENT_CA_FILE",
        id="roles-without-client-ca",
    ),
    pytest.param(MTLS_ROLES, "MFA_TLS_CLIENT_CA_FILE", id="roles-over-plaintext"),
    pytest.param(
        {"MFA_TLS_CERT_FILE": "{cert}", "MFA_TLS_KEY_FILE": "{key}"},
        "MFA_TLS_CLIENT_CA_FILE",
        id="tls-without-client-ca",
    ),
    pytest.param(
        {
            "MFA_TLS_CERT_FILE": "{cert}",
            "MFA_TLS_KEY_FILE": "{key}",
            "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH": "perhaps",
        },
        "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH",
        id="tls-without-client-auth-malformed",
    ),
    *(
        pytest.param({**MTLS, "MFA_CALLER_ROLES": roles}, "MFA_CALLER_ROLES", id=case)
        for case, roles in [
            ("roles-no-equals", "spiffe://corp/signer"),
            ("roles-no-identity", "=admin"),
            ("roles-no-role", "spiffe://corp/signer="),
            ("roles-empty-role", "spiffe://corp/signer=mfa+"),
            ("roles-unknown-role", "spiffe://corp/signer=signer"),
            ("roles-service-name", "spiffe://corp/signer=mfa.v1.AdminService"),
            ("roles-role-case", "spiffe://corp/signer=Admin"),
            ("roles-space-in-identity", "spiffe://corp/my signer=admin"),
            ("roles-non-ascii-identity", "spiffe://corp/signér=admin"),
            ("roles-twice", "a.corp=mfa,b.corp=admin,a.corp=admin"),
            ("roles-only-commas", " , ,"),
        ]
    ),
    pytest.param({"MFA_ALLOW_PLAINTEXT": "maybe"}, "MFA_ALLOW_PLAINTEXT", id="plaintext-maybe"),
    pytest.param({"MFA_ALLOW_PLAINTEXT": None}, "MFA_TLS_CERT_FILE", id="no-tls-no-plaintext"),
    pytest.param({"MFA_ALLOW_PLAINTEXT": "false"}, "MFA_TLS_CERT_FILE", id="plaintext-false"),
    pytest.param(
        {"MFA_LISTEN_ADDR": "0.0.0.0:50051"}, "MFA_LISTEN_ADDR", id="plaintext-on-all-interfaces"
    ),
    pytest.param(
        {"MFA_LISTEN_ADDR": "10.1.2.3:50051"}, "MFA_LISTEN_ADDR", id="plaintext-on-private-ip"
    ),
    pytest.param({"MFA_LISTEN_ADDR": "[::]:50051"}, "MFA_LISTEN_ADDR", id="plaintext-on-ipv6-any"),
    pytest.param(
        {"MFA_LISTEN_ADDR": "0.0.0.0:50051", "MFA_PLAINTEXT_ANY_HOST": "perhaps"},
        "MFA_PLAINTEXT_ANY_HOST",
        id="plaintext-any-host-malformed",
    ),
    pytest.param({"MFA_DB_POOL_SIZE": "0"}, "MFA_DB_POOL_SIZE", id="pool-0"),
    pytest.param({"MFA_DB_POOL_SIZE": "201"}, "MFA_DB_POOL_SIZE", id="pool-201"),
    pytest.param({"MFA_DB_POOL_SIZE": "-1"}, "MFA_DB_POOL_SIZE", id="pool-negative"),
    pytest.param({"MFA_DB_POOL_SIZE": "ten"}, "MFA_DB_POOL_SIZE", id="pool-word"),
    pytest.param({"MFA_DB_POOL_SIZE": "²"}, "MFA_DB_POOL_SIZE", id="pool-superscript"),
    pytest.param(
        {"MFA_SHUTDOWN_GRACE_SECONDS": "601"}, "MFA_SHUTDOWN_GRACE_SECONDS", id="grace-601"
    ),
    pytest.param({"MFA_LOG_LEVEL": "LOUD"}, "MFA_LOG_LEVEL", id="log-level-loud"),
    pytest.param({"MFA_DB_STATEMENT_CACHE": "-1"}, "MFA_DB_STATEMENT_CACHE", id="cache-neg"),
    pytest.param({"MFA_DB_STATEMENT_CACHE": "off"}, "MFA_DB_STATEMENT_CACHE", id="cache-word"),
    pytest.param({"MFA_DB_LISTEN_URL": "mysql://db/mfa"}, "MFA_DB_LISTEN_URL", id="listen-url"),
]


@pytest.mark.parametrize(("changes", "variable"), MALFORMED)
def test_malformed_variable_is_named(
    changes: dict[str, str | None], variable: str, tls_files: dict[str, str]
) -> None:
    env = dict(BASE)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value.format(**tls_files)
    with pytest.raises(ConfigError) as raised:
        load(env)
    assert raised.value.variable == variable
    message = str(raised.value)
    assert message.startswith(f"{variable}: ")
    assert KEY_MATERIAL[:12] not in message


def test_encryption_keys_are_required_outside_dev_mode(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": DATABASE_URL,
        "MFA_ALLOW_PLAINTEXT": "true",
        "MFA_DATA_DIR": str(tmp_path),
    }
    with pytest.raises(ConfigError) as raised:
        load(env, dev_mode=False)
    assert raised.value.variable == "MFA_ENCRYPTION_KEYS"
    assert list(tmp_path.iterdir()) == []


def test_dev_mode_generates_a_private_key_file_and_reuses_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load({"MFA_DATA_DIR": str(data_dir)}, dev_mode=True)
    key_file = data_dir / DEV_KEY_FILE
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.key_ring == KeyRing.parse(key_file.read_text().strip())
    assert first.dev_mode is True
    assert first.tls is None  # dev mode allows plaintext on loopback by default

    second = load({"MFA_DATA_DIR": str(data_dir)}, dev_mode=True)
    assert second.key_ring == first.key_ring
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_dev_mode_uses_given_keys_and_writes_nothing(tmp_path: Path) -> None:
    config = load({"MFA_DATA_DIR": str(tmp_path), "MFA_ENCRYPTION_KEYS": KEY_ENTRY}, dev_mode=True)
    assert config.key_ring == KeyRing.parse(KEY_ENTRY)
    assert config.database_url is None  # the embedded PostgreSQL, in dev mode only
    assert list(tmp_path.iterdir()) == []


def test_the_database_url_is_required_outside_dev_mode() -> None:
    """Never a database of its own by omission (issue 21): only --dev goes without."""
    for loader in (load, load_database):
        with pytest.raises(ConfigError) as raised:
            loader({k: v for k, v in BASE.items() if k != "DATABASE_URL"})
        assert raised.value.variable == "DATABASE_URL"
        assert raised.value.problem.startswith("not set")
    assert load_database({}, dev_mode=True).database_url is None
    assert load_database(BASE).database_url == DATABASE_URL


def test_dev_mode_writes_no_key_file_when_another_variable_is_bad(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load({"MFA_DATA_DIR": str(tmp_path), "MFA_LOG_LEVEL": "LOUD"}, dev_mode=True)
    assert not (tmp_path / DEV_KEY_FILE).exists()


# --- the command line: one line on stderr, exit status 2 ---------------------------


def run_command(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """``mfa-service ARGS`` in a process of its own, with only ``env`` (and PATH) set."""
    return subprocess.run(
        [sys.executable, "-m", "mfa_service", *args],
        env={"PATH": os.environ.get("PATH", ""), "MFA_DATA_DIR": str(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        pytest.param(
            ["serve"],
            {**BASE, "MFA_LISTEN_ADDR": "127.0.0.1:70000"},
            "MFA_LISTEN_ADDR",
            id="bad-port",
        ),
        pytest.param(
            ["serve"],
            {**BASE, "MFA_ENCRYPTION_KEYS": f"k1:{KEY_MATERIAL[:-4]}"},
            "MFA_ENCRYPTION_KEYS",
            id="bad-keys",
        ),
        pytest.param(
            ["serve"],
            {"DATABASE_URL": DATABASE_URL, "MFA_ALLOW_PLAINTEXT": "true"},
            "MFA_ENCRYPTION_KEYS",
            id="no-keys-outside-dev",
        ),
        # Outside --dev, never an embedded PostgreSQL by omission (issue 21).
        pytest.param(
            ["serve"],
            {k: v for k, v in BASE.items() if k != "DATABASE_URL"},
            "DATABASE_URL",
            id="serve-without-database-url",
        ),
        pytest.param(["migrate"], {}, "DATABASE_URL", id="migrate-without-database-url"),
        pytest.param(
            ["keys", "rotate"],
            {"MFA_ENCRYPTION_KEYS": KEY_ENTRY},
            "DATABASE_URL",
            id="rotate-without-database-url",
        ),
        pytest.param(
            ["serve", "--dev"], {"MFA_LOG_LEVEL": "LOUD"}, "MFA_LOG_LEVEL", id="dev-bad-log-level"
        ),
        pytest.param(
            ["serve"], {**BASE, "DATABASE_URL": "mysql://db/mfa"}, "DATABASE_URL", id="bad-db-url"
        ),
        pytest.param(
            ["serve"],
            {**BASE, "MFA_LISTEN_ADDR": "127.evil.example.com:50051"},
            "MFA_LISTEN_ADDR",
            id="plaintext-on-a-name-starting-127",
        ),
    ],
)
def test_serve_stops_with_one_line_naming_the_variable(
    args: list[str], env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    result = run_command(args, env, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert KEY_MATERIAL[:12] not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / DEV_KEY_FILE).exists()
    assert not (tmp_path / "postgres").exists()  # no embedded PostgreSQL was started


def test_serve_refuses_client_ca_without_roles_in_one_line(
    tls_files: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **BASE,
        "MFA_TLS_CERT_FILE": tls_files["cert"],
        "MFA_TLS_KEY_FILE": tls_files["key"],
        "MFA_TLS_CLIENT_CA_FILE": tls_files["ca"],
    }
    result = run_command(["serve"], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "mfa-service: configuration error: MFA_CALLER_ROLES: required with "
        "MFA_TLS_CLIENT_CA_FILE: map each calling service's certificate identity to its "
        "roles, e.g. spiffe://corp/signer=action_tokens (roles: mfa, action_tokens, admin)"
    ]


def test_serve_refuses_tls_without_client_certificates_in_one_line(
    tls_files: dict[str, str], tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": DATABASE_URL,
        "MFA_ENCRYPTION_KEYS": KEY_ENTRY,
        "MFA_LISTEN_ADDR": "0.0.0.0:443",
        "MFA_TLS_CERT_FILE": tls_files["cert"],
        "MFA_TLS_KEY_FILE": tls_files["key"],
    }
    result = run_command(["serve"], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "mfa-service: configuration error: MFA_TLS_CLIENT_CA_FILE: required with "
        "MFA_TLS_CERT_FILE: without client certificates no caller is authenticated or "
        "authorized; set it and MFA_CALLER_ROLES (mutual TLS), or "
        "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH=true to open every service to anyone who "
        "reaches the port"
    ]
    assert result.stdout == ""


# --- observability: metrics endpoint, log format, tracing --------------------------


def test_observability_is_off_by_default() -> None:
    config = load(BASE)
    assert config.metrics_addr is None
    assert config.traces_exporter is None
    assert log_format(BASE) == "json"
    assert log_format(BASE, dev_mode=True) == "text"


def test_observability_settings() -> None:
    config = load({**BASE, "MFA_METRICS_ADDR": "0.0.0.0:9464", "OTEL_TRACES_EXPORTER": "console"})
    assert config.metrics_addr == "0.0.0.0:9464"
    assert config.traces_exporter == "console"
    assert load({**BASE, "OTEL_TRACES_EXPORTER": "none"}).traces_exporter is None
    assert log_format({"MFA_LOG_FORMAT": "text"}) == "text"
    assert log_format({"MFA_LOG_FORMAT": "JSON"}, dev_mode=True) == "json"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MFA_METRICS_ADDR", "9464"),
        ("MFA_METRICS_ADDR", "host:99999"),
        ("MFA_METRICS_ADDR", ":9464"),
        ("OTEL_TRACES_EXPORTER", "jaeger"),
    ],
)
def test_malformed_observability_settings(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load({**BASE, variable: value})
    assert error.value.variable == variable


def test_malformed_log_format() -> None:
    with pytest.raises(ConfigError) as error:
        log_format({"MFA_LOG_FORMAT": "xml"})
    assert error.value.variable == "MFA_LOG_FORMAT"


def test_metrics_need_a_single_worker() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "DATABASE_", "OTEL_"))}
    env.update(BASE, MFA_METRICS_ADDR="127.0.0.1:9464", MFA_LISTEN_ADDR="127.0.0.1:50999")
    result = subprocess.run(
        [sys.executable, "-m", "mfa_service", "serve", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "MFA_METRICS_ADDR" in result.stderr
