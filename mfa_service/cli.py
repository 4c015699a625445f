"""The ``mfa-service`` command: serve, migrate, keys generate, keys rotate.

Outside ``--dev`` nothing starts without ``DATABASE_URL``, and ``serve`` checks that its
ports are free before it migrates or makes a key: each refusal is one line on stderr
naming the variable, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable
from importlib import metadata

from mfa_service import config as config_module
from mfa_service import listening, logs
from mfa_service.config import ConfigError
from mfa_service.crypto import KeyRing
from mfa_service.errors import DatabaseUnavailable

MAX_WORKERS = 64
DEV_DATABASE = "an embedded PostgreSQL under MFA_DATA_DIR when DATABASE_URL is unset"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfa-service", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"mfa-service {metadata.version('mfa-service')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve gRPC (migrates first)",
        description="Apply pending migrations, then serve gRPC on MFA_LISTEN_ADDR and\n"
        "the HTTP side port on MFA_METRICS_ADDR.",
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development mode: plaintext on loopback, a generated key ring under "
        f"MFA_DATA_DIR, and {DEV_DATABASE}",
    )
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT), each with its own event "
        "loop and database pool (default 1)",
    )
    deliver = commands.add_parser(
        "deliver",
        help="deliver webhooks only, at a lower CPU priority (serve starts one itself)",
    )
    deliver.add_argument("--dev", action="store_true", help="as serve --dev")
    deliver.add_argument(
        "--parent", type=int, metavar="PID", help="end with this process (serve's own)"
    )
    migrate = commands.add_parser(
        "migrate",
        help="apply pending database migrations and exit",
        description="Apply pending migrations to the database of DATABASE_URL, and exit "
        "(the variables: mfa-service serve --help).",
    )
    migrate.add_argument("--dev", action="store_true", help=f"development mode: {DEV_DATABASE}")
    keys = commands.add_parser("keys", help="key management")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    generate = key_commands.add_parser(
        "generate", help="print a new MFA_ENCRYPTION_KEYS entry (KEY_ID:BASE64)"
    )
    generate.add_argument("--kid", default="k1", help="key id of the new entry")
    rotate = key_commands.add_parser(
        "rotate",
        help="make a new action-token signing key; the old one verifies until its tokens expire",
    )
    rotate.add_argument(
        "--dev",
        action="store_true",
        help=f"development mode: the development key ring, and {DEV_DATABASE}",
    )
    return parser


def environment_help() -> str:
    """Every variable of ``config.VARIABLES`` with the value it takes when unset."""
    lines = ["environment variables [value when unset]:"]
    for variable in config_module.VARIABLES:
        lines.append(f"  {variable.name} [{variable.shown_default}]")
        indent = " " * 6
        lines.extend(
            textwrap.wrap(
                variable.meaning,
                78,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def _worker_count(value: str) -> int:
    if not value.isdecimal() or not 1 <= int(value) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_WORKERS}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys" and args.keys_command == "generate":
        print(KeyRing.generate_entry(args.kid))
        return 0
    dev_mode: bool = args.dev
    try:
        # JSON lines by default; readable text in development (``serve --dev``, make run).
        log_format = config_module.log_format(dev_mode=dev_mode)
    except ConfigError as error:
        return _refused(error)
    logs.configure("INFO", log_format)
    try:
        # migrate needs only the database: a migration job gets no keys and no TLS files.
        database = config_module.load_database(dev_mode=dev_mode)
        if args.command in ("serve", "deliver"):
            # One warning of development mode: the server says it, not its deliveries.
            config = config_module.load(dev_mode=dev_mode, announce=args.command == "serve")
        if args.command == "deliver":
            if database.database_url is None:
                raise ConfigError("DATABASE_URL", "deliver needs the server's database")
            database_url = database.database_url
        elif args.command == "serve":
            if args.workers > 1 and config.listen_port == 0:
                raise ConfigError("MFA_LISTEN_ADDR", "--workers needs a fixed port, not 0")
            if args.workers > 1 and config.metrics_addr is not None:
                # Each worker has its own registry and could not bind the one port; run
                # one worker per container (each with its endpoint) to scrape them all.
                raise ConfigError(
                    "MFA_METRICS_ADDR",
                    "serving metrics needs --workers 1 (scale out with more replicas)",
                )
            _check_ports(config)
        elif args.command == "keys":
            key_ring = config_module.load_key_ring(dev_mode=dev_mode)
            algorithm = config_module.token_algorithm(os.environ)
    except ConfigError as error:
        return _refused(error)
    logging.getLogger().setLevel(database.log_level)
    try:
        if args.command == "migrate":

            async def migrate(url: str) -> int:
                return await _migrate(url, database.db_statement_cache_size)

            return asyncio.run(_with_database(database, migrate))
        if args.command == "keys":

            async def rotate(url: str) -> int:
                from mfa_service.app import rotate_signing_key

                kid = await rotate_signing_key(
                    database_url=url,
                    key_ring=key_ring,
                    algorithm=algorithm,
                    statement_cache_size=database.db_statement_cache_size,
                )
                print(f"new signing key {kid} ({algorithm}); the previous key keeps verifying")
                return 0

            return asyncio.run(_with_database(database, rotate))
        if args.command == "deliver":
            from mfa_service import deliveries

            return deliveries.main(config, database_url, args.parent)
        from mfa_service.app import run

        return run(config, workers=args.workers)
    except ConfigError as error:  # a port taken between the check and the bind
        return _refused(error)
    except DatabaseUnavailable:
        print("mfa-service: the database is unreachable (check DATABASE_URL)", file=sys.stderr)
        return 3


def _refused(error: ConfigError) -> int:
    """One line on stderr naming the variable; exit status 2."""
    what = (
        "cannot listen" if isinstance(error, listening.PortUnavailable) else "configuration error"
    )
    print(f"mfa-service: {what}: {error}", file=sys.stderr)
    return 2


def _check_ports(config: config_module.Config) -> None:
    """Both ports free, before the embedded PostgreSQL, a migration or a key."""
    listening.check("MFA_LISTEN_ADDR", config.listen_host, config.listen_port)
    if config.metrics_addr is not None:
        host, port = config_module.parse_host_port("MFA_METRICS_ADDR", config.metrics_addr)
        listening.check("MFA_METRICS_ADDR", host, port)


async def _migrate(url: str, statement_cache_size: int) -> int:
    from mfa_service.store.db import migrate_url

    applied = await migrate_url(url, statement_cache_size=statement_cache_size)
    print(f"applied {len(applied)} migration(s)" if applied else "database is up to date")
    return 0


async def _with_database(
    config: config_module.DatabaseConfig, command: Callable[[str], Awaitable[int]]
) -> int:
    """Run ``command`` on DATABASE_URL, or on the embedded PostgreSQL when it is unset
    (``--dev`` only: ``config.load_database`` refuses an unset one otherwise)."""
    from mfa_service.embedded_pg import EmbeddedPostgres

    embedded = EmbeddedPostgres(config.data_dir) if config.database_url is None else None
    try:
        return await command(config.database_url or (embedded.url if embedded else ""))
    finally:
        if embedded is not None:
            embedded.stop()
