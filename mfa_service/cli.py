"""The ``mfa-service`` command: serve, migrate, keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from mfa_service import config as config_module
from mfa_service.config import ConfigError
from mfa_service.crypto import KeyRing
from mfa_service.errors import DatabaseUnavailable


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfa-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve gRPC (migrates first)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development mode: plaintext on loopback and a generated key ring under .data/",
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    keys = commands.add_parser("keys", help="key management")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    generate = key_commands.add_parser(
        "generate", help="print a new MFA_ENCRYPTION_KEYS entry (KEY_ID:BASE64)"
    )
    generate.add_argument("--kid", default="k1", help="key id of the new entry")
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # pgserver narrates every pg_ctl call at INFO; its warnings and errors still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":
        print(KeyRing.generate_entry(args.kid))
        return 0
    _configure_logging("INFO")
    try:
        # migrate needs only the database: a migration job gets no keys and no TLS files.
        config: config_module.Config | config_module.DatabaseConfig = (
            config_module.load_database()
            if args.command == "migrate"
            else config_module.load(dev_mode=getattr(args, "dev", False))
        )
    except ConfigError as error:
        print(f"mfa-service: configuration error: {error}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(config.log_level)
    try:
        if isinstance(config, config_module.DatabaseConfig):
            return asyncio.run(_migrate(config))
        asyncio.run(_serve(config))
    except DatabaseUnavailable:
        print("mfa-service: the database is unreachable (check DATABASE_URL)", file=sys.stderr)
        return 3
    return 0


async def _serve(config: config_module.Config) -> None:
    from mfa_service.app import serve

    await serve(config)


async def _migrate(config: config_module.DatabaseConfig) -> int:
    from mfa_service.embedded_pg import EmbeddedPostgres
    from mfa_service.store.db import migrate_url

    embedded = EmbeddedPostgres(config.data_dir) if config.database_url is None else None
    try:
        url = config.database_url or (embedded.url if embedded else "")
        applied = await migrate_url(url)
        print(f"applied {len(applied)} migration(s)" if applied else "database is up to date")
        return 0
    finally:
        if embedded is not None:
            embedded.stop()
