"""Settings of the process, from environment variables, validated before anything starts.

``VARIABLES`` is the one list of them, with the value each takes when unset: the loaders
read every variable through it, and ``mfa-service serve --help`` prints it. A missing or
malformed value raises ``ConfigError`` naming the variable; the command line turns it
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from mfa_service.crypto import KeyRing, KeyRingError
from mfa_service.domain.webhooks import is_loopback_host
from mfa_service.store.db import DEFAULT_STATEMENT_CACHE_SIZE

DEV_KEY_FILE = "dev-encryption-keys"
# What a calling service may be granted in MFA_CALLER_ROLES; each role is one mfa.v1
# service (the table is mfa_service.api.authorization.ROLE_SERVICES).
CALLER_ROLES = ("mfa", "action_tokens", "admin")


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: what it takes when unset, and what it is for.

    ``default``: the value an unset (or empty) variable takes; None: no value, which
    ``required`` makes an error. ``dev_default``: the value under ``--dev`` instead.
    """

    name: str
    default: str | None
    meaning: str
    dev_default: str | None = None
    required: bool = False

    @property
    def shown_default(self) -> str:
        """The default as ``serve --help`` shows it."""
        text = "required" if self.required else self.default or "unset"
        return text if self.dev_default is None else f"{text}; --dev: {self.dev_default}"


VARIABLES = (
    Variable(
        "DATABASE_URL", None, "the service's PostgreSQL (postgresql://...); with --dev and "
        "unset, an embedded PostgreSQL in MFA_DATA_DIR/postgres", required=True,
    ),
    Variable("MFA_LISTEN_ADDR", "127.0.0.1:50051", "gRPC listen address, HOST:PORT"),
    Variable(
        "MFA_ENCRYPTION_KEYS", None, "key ring sealing secrets at rest, "
        "KEY_ID:BASE64_32_BYTES[,...] (mfa-service keys generate); with --dev and unset, "
        "one generated in MFA_DATA_DIR", required=True,
    ),
    Variable("MFA_TLS_CERT_FILE", None, "server certificate (PEM)"),
    Variable("MFA_TLS_KEY_FILE", None, "server private key (PEM)"),
    Variable(
        "MFA_TLS_CLIENT_CA_FILE", None, "CA of client certificates: mutual TLS (required "
        "with MFA_TLS_CERT_FILE unless MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH)",
    ),
    Variable(
        "MFA_CALLER_ROLES", None, "roles of each client certificate identity, "
        f"IDENTITY=ROLE[+ROLE...][,...]; roles: {', '.join(CALLER_ROLES)}",
    ),
    Variable(
        "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH", "false",
        "TLS without client certificates: every service open to anyone who connects",
    ),
    Variable(
        "MFA_ALLOW_PLAINTEXT", "false", "serve without TLS, on loopback only (development)",
        dev_default="true",
    ),
    Variable(
        "MFA_PLAINTEXT_ANY_HOST", "false",
        "with MFA_ALLOW_PLAINTEXT, plaintext on a non-loopback address (behind a proxy)",
    ),
    Variable("MFA_DATA_DIR", ".data", "embedded PostgreSQL and the development key ring"),
    Variable("MFA_DB_POOL_SIZE", "10", "most database connections of the process, 1 to 200"),
    Variable(
        "MFA_DB_STATEMENT_CACHE", str(DEFAULT_STATEMENT_CACHE_SIZE),
        "prepared statements per connection, 0 to 10000 (0 behind pgbouncer's transaction mode)",
    ),
    Variable(
        "MFA_DB_LISTEN_URL", None, "where the LISTEN session connects (unset: DATABASE_URL); "
        "a session of its own, past a transaction-mode pooler",
    ),
    Variable(
        "MFA_WEBHOOK_TIMEOUT_SECONDS", "10", "how long one webhook POST may take, 1 to 60"
    ),
    Variable(
        "MFA_WEBHOOK_RETRY_HORIZON_HOURS", "72",
        "how long an event's delivery is retried before it is dropped, 1 to 720",
    ),
    Variable(
        "MFA_TOKEN_ALGORITHM", "ES256",
        "JWS algorithm of new action-token signing keys, ES256 or EdDSA",
    ),
    Variable("MFA_TOKEN_ISSUER", "mfa-service", "the iss claim of action tokens"),
    Variable(
        "MFA_SHUTDOWN_GRACE_SECONDS", "10",
        "on SIGTERM/SIGINT, how long in-flight calls may finish, 0 to 600",
    ),
    Variable("MFA_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Variable("MFA_LOG_FORMAT", "json", "json or text", dev_default="text"),
    Variable(
        "MFA_METRICS_ADDR", None, "HOST:PORT of the HTTP side port: /metrics, /healthz, "
        "/readyz, /.well-known/jwks.json (unset: none)",
    ),
    Variable(
        "OTEL_TRACES_EXPORTER", "none", "console, otlp or none: a span per RPC and per SQL "
        "statement",
    ),
)  # fmt: skip
_VARIABLES = {variable.name: variable for variable in VARIABLES}


def _value(env: Mapping[str, str], name: str, *, dev_mode: bool = False) -> str | None:
    """The variable's value, or the one it takes when unset (VARIABLES); None: none."""
    variable = _VARIABLES[name]  # a KeyError: a variable read without being listed
    given = env.get(name)
    if given:
        return given
    return variable.dev_default if dev_mode and variable.dev_default else variable.default


class ConfigError(Exception):
    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server certificate, and for mutual TLS the client CA with the callers' roles.

    ``caller_roles`` maps a client certificate identity (its first URI SAN, else its
    first DNS SAN) to the roles of ``CALLER_ROLES`` it holds. It is given exactly when
    ``client_ca_file`` is: authentication without authorization is refused. Without a
    client CA nothing is authorized; ``load`` allows that only with
    ``MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH=true``.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    caller_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.client_ca_file is None) != (not self.caller_roles):
            raise ValueError("a client CA and caller roles go together (mutual TLS)")
        for identity, roles in self.caller_roles.items():
            if not roles or not roles <= set(CALLER_ROLES):
                raise ValueError(f"bad roles {sorted(roles)} for {identity!r}")


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str | None
    listen_host: str
    listen_port: int
    key_ring: KeyRing
    tls: TlsConfig | None
    data_dir: Path
    db_pool_size: int
    shutdown_grace_seconds: float
    log_level: str
    dev_mode: bool
    token_algorithm: str = "ES256"
    token_issuer: str = "mfa-service"
    # MFA_METRICS_ADDR: where Prometheus scrapes /metrics; None: no metrics endpoint.
    metrics_addr: str | None = None
    # OTEL_TRACES_EXPORTER: console or otlp; None: no tracing.
    traces_exporter: str | None = None
    # MFA_DB_STATEMENT_CACHE: asyncpg's prepared statements per connection; 0 behind
    # pgbouncer in transaction mode.
    db_statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE
    # MFA_DB_LISTEN_URL: where the listener of settings changes and new signing keys
    # LISTENs (a session of its own, which a transaction-mode pooler cannot give); None:
    # DATABASE_URL.
    db_listen_url: str | None = None
    # MFA_WEBHOOK_TIMEOUT_SECONDS: how long one webhook POST may take.
    webhook_timeout_seconds: float = 10.0
    # MFA_WEBHOOK_RETRY_HORIZON_HOURS: how long an event is retried before it is dropped.
    webhook_retry_horizon: timedelta = timedelta(days=3)

    @property
    def listen_addr(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


def load(
    env: Mapping[str, str] | None = None, *, dev_mode: bool = False, announce: bool = True
) -> Config:
    """Read and check every setting. ``dev_mode`` is ``serve --dev`` (``make run``);
    ``announce=False`` leaves its warning to another process (the delivery process
    ``serve`` starts, whose log is the server's)."""
    env = os.environ if env is None else env
    database_url = _service_database_url(env, dev_mode=dev_mode)
    data_dir = _data_dir(env)
    host, port = parse_host_port("MFA_LISTEN_ADDR", _value(env, "MFA_LISTEN_ADDR") or "")
    tls = _tls(env)
    plaintext = _bool(env, "MFA_ALLOW_PLAINTEXT", dev_mode=dev_mode)
    if tls is None and not plaintext:
        raise ConfigError(
            "MFA_TLS_CERT_FILE",
            "not set: set MFA_TLS_CERT_FILE and MFA_TLS_KEY_FILE, or MFA_ALLOW_PLAINTEXT=true "
            "for local development only",
        )
    if tls is None and not is_loopback_host(host) and not _bool(env, "MFA_PLAINTEXT_ANY_HOST"):
        raise ConfigError(
            "MFA_LISTEN_ADDR",
            f"plaintext serving is limited to loopback (127.0.0.0/8, ::1, localhost), not "
            f"{host!r}: configure TLS, or set MFA_PLAINTEXT_ANY_HOST=true behind a proxy",
        )
    return Config(
        database_url=database_url,
        listen_host=host,
        listen_port=port,
        tls=tls,
        data_dir=data_dir,
        db_pool_size=_int(env, "MFA_DB_POOL_SIZE", low=1, high=200),
        shutdown_grace_seconds=float(_int(env, "MFA_SHUTDOWN_GRACE_SECONDS", low=0, high=600)),
        log_level=_log_level(env),
        dev_mode=dev_mode,
        token_algorithm=token_algorithm(env),
        token_issuer=_token_issuer(env),
        metrics_addr=_metrics_addr(env),
        traces_exporter=traces_exporter(env),
        db_statement_cache_size=_statement_cache_size(env),
        db_listen_url=_database_url(env, "MFA_DB_LISTEN_URL"),
        webhook_timeout_seconds=float(_int(env, "MFA_WEBHOOK_TIMEOUT_SECONDS", low=1, high=60)),
        webhook_retry_horizon=timedelta(
            hours=_int(env, "MFA_WEBHOOK_RETRY_HORIZON_HOURS", low=1, high=720)
        ),
        # Last: in dev mode it writes a key file and logs, only for an otherwise valid config.
        key_ring=_key_ring(env, data_dir, dev_mode=dev_mode, announce=announce),
    )


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """What ``migrate`` needs: no key ring, no TLS, no listen address."""

    database_url: str | None
    data_dir: Path
    log_level: str
    db_statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE


def load_database(
    env: Mapping[str, str] | None = None, *, dev_mode: bool = False
) -> DatabaseConfig:
    """Read and check only the database settings (``mfa-service migrate``)."""
    env = os.environ if env is None else env
    return DatabaseConfig(
        database_url=_service_database_url(env, dev_mode=dev_mode),
        data_dir=_data_dir(env),
        log_level=_log_level(env),
        db_statement_cache_size=_statement_cache_size(env),
    )


def parse_host_port(variable: str, value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdecimal() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(variable, f"must be HOST:PORT with a port 0-65535, not {value!r}")
    return host, int(port_text)


def _metrics_addr(env: Mapping[str, str]) -> str | None:
    value = _value(env, "MFA_METRICS_ADDR")
    if value is not None:
        parse_host_port("MFA_METRICS_ADDR", value)
    return value


LOG_FORMATS = ("json", "text")


def log_format(env: Mapping[str, str] | None = None, *, dev_mode: bool = False) -> str:
    """``MFA_LOG_FORMAT``: json (one object a line), or text; text by default in dev mode."""
    env = os.environ if env is None else env
    value = (_value(env, "MFA_LOG_FORMAT", dev_mode=dev_mode) or "").lower()
    if value not in LOG_FORMATS:
        raise ConfigError("MFA_LOG_FORMAT", f"must be json or text, not {value!r}")
    return value


OTLP_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"


def traces_exporter(env: Mapping[str, str]) -> str | None:
    """The standard ``OTEL_TRACES_EXPORTER``: console or otlp; unset or none: off."""
    value = (_value(env, "OTEL_TRACES_EXPORTER") or "").strip().lower()
    if value == "none":
        return None
    if value not in ("console", "otlp"):
        raise ConfigError("OTEL_TRACES_EXPORTER", f"must be console, otlp or none, not {value!r}")
    if value == "otlp":
        try:
            found = importlib.util.find_spec(OTLP_EXPORTER_MODULE) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER",
                "otlp needs the opentelemetry-exporter-otlp-proto-grpc package",
            )
    return value


def _database_url(env: Mapping[str, str], variable: str = "DATABASE_URL") -> str | None:
    url = _value(env, variable)
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(variable, "must be a postgresql:// URL")
    return url


def _service_database_url(env: Mapping[str, str], *, dev_mode: bool) -> str | None:
    """``DATABASE_URL``, required outside development mode. Never a database of one's
    own by omission: a deploy job that forgot the variable must fail, not start
    replicas that each have an empty database (None: ``--dev``'s embedded one)."""
    url = _database_url(env)
    if url is None and not dev_mode:
        raise ConfigError(
            "DATABASE_URL",
            "not set: give the postgresql:// URL of the service's database (only --dev, "
            "for development, runs an embedded PostgreSQL without it)",
        )
    return url


def _data_dir(env: Mapping[str, str]) -> Path:
    return Path(_value(env, "MFA_DATA_DIR") or "")


def _statement_cache_size(env: Mapping[str, str]) -> int:
    return _int(env, "MFA_DB_STATEMENT_CACHE", low=0, high=10000)


def _key_ring(
    env: Mapping[str, str], data_dir: Path, *, dev_mode: bool, announce: bool = True
) -> KeyRing:
    spec = (_value(env, "MFA_ENCRYPTION_KEYS") or "").strip()
    if not spec and dev_mode:
        spec = _dev_keys(data_dir, announce=announce)
    if not spec:
        raise ConfigError(
            "MFA_ENCRYPTION_KEYS",
            "not set: give KEY_ID:BASE64_32_BYTES[,...] "
            "(make one with 'mfa-service keys generate')",
        )
    try:
        return KeyRing.parse(spec)
    except KeyRingError as exc:
        raise ConfigError("MFA_ENCRYPTION_KEYS", str(exc)) from None


def _dev_keys(data_dir: Path, *, announce: bool) -> str:
    """Development only: a key ring kept in the data directory, made on first use."""
    path = data_dir / DEV_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Created 0600 in one step: never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(KeyRing.generate_entry("dev1") + "\n")
    if announce:
        logging.getLogger("mfa_service").warning(
            "DEVELOPMENT MODE: secrets are encrypted with a key stored in %s; never use "
            "this in production (set MFA_ENCRYPTION_KEYS)",
            path,
        )
    return path.read_text().strip()


def _tls(env: Mapping[str, str]) -> TlsConfig | None:
    cert, key = _value(env, "MFA_TLS_CERT_FILE"), _value(env, "MFA_TLS_KEY_FILE")
    ca = _value(env, "MFA_TLS_CLIENT_CA_FILE")
    roles = caller_roles(_value(env, "MFA_CALLER_ROLES") or "")
    if not cert and not key:
        if ca:
            raise ConfigError("MFA_TLS_CERT_FILE", "required with MFA_TLS_CLIENT_CA_FILE")
        if roles:
            raise ConfigError(
                "MFA_TLS_CLIENT_CA_FILE",
                "required with MFA_CALLER_ROLES: caller identities come from client "
                "certificates (mutual TLS), so it also needs MFA_TLS_CERT_FILE and "
                "MFA_TLS_KEY_FILE",
            )
        return None
    if not cert:
        raise ConfigError("MFA_TLS_CERT_FILE", "required with MFA_TLS_KEY_FILE")
    if not key:
        raise ConfigError("MFA_TLS_KEY_FILE", "required with MFA_TLS_CERT_FILE")
    for variable, value in (
        ("MFA_TLS_CERT_FILE", cert),
        ("MFA_TLS_KEY_FILE", key),
        ("MFA_TLS_CLIENT_CA_FILE", ca),
    ):
        if value and not Path(value).is_file():
            raise ConfigError(variable, f"no readable file at {value}")
    if ca and not roles:
        raise ConfigError(
            "MFA_CALLER_ROLES",
            "required with MFA_TLS_CLIENT_CA_FILE: map each calling service's certificate "
            "identity to its roles, e.g. spiffe://corp/signer=action_tokens "
            f"(roles: {', '.join(CALLER_ROLES)})",
        )
    if roles and not ca:
        raise ConfigError(
            "MFA_TLS_CLIENT_CA_FILE",
            "required with MFA_CALLER_ROLES: caller identities come from client certificates",
        )
    if not ca and not _bool(env, "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH"):
        # Server-only TLS authenticates no caller, so nothing could be authorized: every
        # service would be open to anyone who reaches the port.
        raise ConfigError(
            "MFA_TLS_CLIENT_CA_FILE",
            "required with MFA_TLS_CERT_FILE: without client certificates no caller is "
            "authenticated or authorized; set it and MFA_CALLER_ROLES (mutual TLS), or "
            "MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH=true to open every service to anyone who "
            "reaches the port",
        )
    return TlsConfig(Path(cert), Path(key), Path(ca) if ca else None, roles)


def caller_roles(value: str) -> dict[str, frozenset[str]]:
    """Parse ``MFA_CALLER_ROLES``: ``IDENTITY=ROLE[+ROLE...]``, comma separated.

    An identity is written exactly as the client certificate carries it: a URI SAN
    (``spiffe://corp/signer``) or a DNS SAN (``signer.corp.internal``).
    """
    variable = "MFA_CALLER_ROLES"
    roles: dict[str, frozenset[str]] = {}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        identity, sep, names = entry.rpartition("=")
        identity = identity.strip()
        if not sep or not identity:
            raise ConfigError(variable, f"entry {entry!r} must be IDENTITY=ROLE[+ROLE...]")
        if not identity.isascii() or not identity.isprintable() or " " in identity:
            raise ConfigError(
                variable, f"identity {identity!r} must be printable ASCII without spaces"
            )
        if identity in roles:
            raise ConfigError(variable, f"identity {identity!r} is listed twice")
        if not names.strip():
            raise ConfigError(variable, f"entry {entry!r} names no role")
        granted = frozenset(name.strip() for name in names.split("+"))
        unknown = sorted(granted - set(CALLER_ROLES))
        if unknown:
            raise ConfigError(
                variable,
                f"unknown role {unknown[0]!r} for {identity!r} (roles: {', '.join(CALLER_ROLES)})",
            )
        roles[identity] = granted
    return roles


def _bool(env: Mapping[str, str], variable: str, *, dev_mode: bool = False) -> bool:
    value = _value(env, variable, dev_mode=dev_mode) or ""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(variable, f"must be true or false, not {value!r}")


def _int(env: Mapping[str, str], variable: str, *, low: int, high: int) -> int:
    value = _value(env, variable) or ""
    if not value.strip().isdecimal() or not low <= int(value) <= high:
        raise ConfigError(variable, f"must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


def _log_level(env: Mapping[str, str]) -> str:
    level = (_value(env, "MFA_LOG_LEVEL") or "").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("MFA_LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR")
    return level


TOKEN_ALGORITHMS = ("ES256", "EdDSA")


def token_algorithm(env: Mapping[str, str]) -> str:
    """The JWS algorithm of the signing keys this deployment makes (RFC 8725 §3.1: a
    token is accepted only under the algorithm of one of the service's keys).

    ES256 by default: with pyjwt 2.15 and OpenSSL 4.0 on the 2-core development machine
    (``tools/token_algorithms.py``, README "Token algorithm"), the bare signature check
    measured 84-94 us against 122-135 us for EdDSA (Ed25519); through ``jwt.decode``
    both verify in 165-205 us, and signing costs 55-70 us either way. Verifying is the
    offline verifiers' cost: the service itself only signs (it recognises its tokens by
    their SHA-256).
    """
    value = _value(env, "MFA_TOKEN_ALGORITHM") or ""
    if value not in TOKEN_ALGORITHMS:
        raise ConfigError("MFA_TOKEN_ALGORITHM", f"must be one of {', '.join(TOKEN_ALGORITHMS)}")
    return value


def _token_issuer(env: Mapping[str, str]) -> str:
    value = _value(env, "MFA_TOKEN_ISSUER") or ""
    if len(value) > 128 or not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigError("MFA_TOKEN_ISSUER", "must be up to 128 printable ASCII characters")
    return value


def load_key_ring(env: Mapping[str, str] | None = None, *, dev_mode: bool = False) -> KeyRing:
    """The key ring alone (``mfa-service keys rotate`` needs it and the database)."""
    env = os.environ if env is None else env
    return _key_ring(env, _data_dir(env), dev_mode=dev_mode)
