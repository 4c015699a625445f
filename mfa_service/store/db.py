"""Connection pool, transactions, migrations, and database failures as ``MfaError``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

import asyncpg

from mfa_service.errors import DatabaseUnavailable

# A pooled connection or a bare one (migrations); stores accept either.
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
log = logging.getLogger("mfa_service.store")

# pg_advisory_xact_lock key for migrations: crc32("mfa-service migrations").
MIGRATION_LOCK_ID = 0x6D666173
# Every wait on the database is bounded, so that a database that is down, unreachable or
# hung costs a call a few seconds at most, never a hang: opening a connection, waiting
# for a pooled one, and each statement.
CONNECT_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 5.0
ACQUIRE_TIMEOUT_SECONDS = 5.0
# asyncpg's cache of named prepared statements per connection (its default size). A
# pooler in transaction mode (pgbouncer) hands each transaction a different server
# connection, where those names do not exist: there it must be 0 (MFA_DB_STATEMENT_CACHE).
DEFAULT_STATEMENT_CACHE_SIZE = 100
# What pg_stat_activity calls the server's sessions (the delivery process: its own name).
APPLICATION_NAME = "mfa-service"

# SQLSTATE classes that mean "the database is not usable now": connection exception,
# insufficient resources, operator intervention (shutdown, cannot connect now).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
# Serialization failure and deadlock: the transaction was rolled back as a whole. And
# read_only_sql_transaction: the service never opens a read-only transaction, so a write
# refused as read-only reached a standby, i.e. a node that is not (or no longer) the
# primary, during a failover.
_RETRYABLE_SQLSTATES = ("40001", "40P01", "25006")
# InterfaceErrors that are our mistakes or our configuration, not a lost connection.
_NOT_CONNECTION_ERRORS = (
    asyncpg.exceptions._base.ClientConfigurationError,
    asyncpg.exceptions._base.DataError,
    asyncpg.exceptions._base.UnsupportedClientFeatureError,
    asyncpg.exceptions._base.UnsupportedServerFeatureError,
)


class MigrationError(Exception):
    pass


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state.startswith(_UNAVAILABLE_SQLSTATE_CLASSES) or state in _RETRYABLE_SQLSTATES
    if isinstance(exc, _NOT_CONNECTION_ERRORS):
        return False
    # OSError: refused, reset, unreachable (at connect or mid-query); TimeoutError: a
    # bound above; InterfaceError: "connection is closed", "connection has been released
    # back to the pool" (the server dropped it mid-call); InternalClientError: "cannot
    # switch to state 11; another operation (2) is in progress", a pooled connection
    # whose server sent FATAL (shutdown) while it was idle.
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.exceptions._base.InternalClientError,
    )


def _is_unavailable(exc: BaseException) -> bool:
    """Did ``exc``, or the failure it arose from, come of a lost, refused or timed-out
    database? asyncpg's cleanup after a lost connection (the ROLLBACK, the pool's reset)
    can fail again with an error of its own, e.g. ``InternalClientError: cannot switch
    to state 15; another operation (2) is in progress``: the first failure decides."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _is_connection_failure(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


# What a caller may assume when the database failed: nothing, unless it failed before
# a change could be committed. A COMMIT (or a statement outside a transaction) whose
# answer was lost may have taken effect.
NOTHING_CHANGED = "the database is unavailable; nothing was changed, retry later"
OUTCOME_UNKNOWN = (
    "the database became unavailable while committing: the change may have been made; "
    "read the state before retrying, or retry with the same idempotency key"
)


@contextmanager
def unavailable_on_db_failure(message: str | None = None) -> Iterator[None]:
    """Turn a lost, refused or timed-out database into ``DatabaseUnavailable`` (with
    ``message``, or its neutral default)."""
    try:
        yield
    except DatabaseUnavailable:
        raise  # already classified, by an inner phase that knew more
    except Exception as exc:
        if _is_unavailable(exc):
            log.warning("database unavailable: %s", type(exc).__name__)
            raise DatabaseUnavailable(message) from exc
        raise


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset_connection(conn: Connection) -> None:
    """What a connection needs before its next borrower: no open transaction.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release, a second round trip per call (about 100 us of server
    CPU in the validate benchmark). The service never leaves session state behind: its
    advisory locks are transaction scoped, it sets no parameters, listens only on a
    dedicated connection and opens no cursors outside a transaction.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(
    url: str,
    *,
    size: int,
    query_logger: Callable[[Any], None] | None = None,
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
    application_name: str = APPLICATION_NAME,
) -> asyncpg.Pool:
    """``query_logger``: called with asyncpg's ``LoggedQuery`` after each statement of a
    pooled connection (tracing); None, the default, costs the statements nothing.
    ``statement_cache_size`` 0: no named prepared statements (behind pgbouncer in
    transaction mode); each statement is then parsed again on every execution.
    ``application_name``: how ``pg_stat_activity`` names the pool's sessions, unless the
    URL names them itself (``?application_name=``)."""
    init = _init_connection
    if query_logger is not None:
        logger = query_logger

        async def init(conn: Connection) -> None:
            await _init_connection(conn)
            conn.add_query_logger(logger)

    with unavailable_on_db_failure():
        pool = await asyncpg.create_pool(
            url,
            min_size=min(2, size),
            max_size=size,
            timeout=CONNECT_TIMEOUT_SECONDS,
            command_timeout=COMMAND_TIMEOUT_SECONDS,
            init=init,
            reset=_reset_connection,
            statement_cache_size=statement_cache_size,
            server_settings=(
                {}
                if "application_name" in parse_qs(urlsplit(url).query)
                else {"application_name": application_name}
            ),
        )
    if pool is None:  # only when create_pool is not awaited; keeps the type exact
        raise DatabaseUnavailable()
    return pool


class Database:
    """The pool, handing out transactions whose failures become ``MfaError``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._pooled() as conn:
            # Until COMMIT is sent, a lost connection rolls the transaction back.
            with unavailable_on_db_failure(NOTHING_CHANGED):
                transaction = conn.transaction()
                await transaction.start()
                try:
                    yield conn
                except BaseException as exc:
                    # A connection lost, timed out or abandoned mid-statement is dropped
                    # instead, and the server rolls back: a ROLLBACK would first wait for
                    # asyncpg's cancel request to be answered, by a server that may be
                    # hung.
                    if not isinstance(exc, asyncio.CancelledError) and not _is_unavailable(exc):
                        await transaction.rollback()
                    raise
            with unavailable_on_db_failure(OUTCOME_UNKNOWN):
                await transaction.commit()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection without a transaction: for one atomic statement, where
        BEGIN and COMMIT would only add round trips."""
        async with self._pooled() as conn:
            with unavailable_on_db_failure():
                yield conn

    @asynccontextmanager
    async def _pooled(self) -> AsyncIterator[Connection]:
        """A connection from the pool, given back whatever happens.

        The outcome of the call is decided by then (committed, rolled back, or lost with
        the connection), so giving back never fails it. A connection that failed with
        the database, or was abandoned mid-statement (the call was cancelled), is dropped
        at once: resetting it would wait on a dead or hung server. One the pool cannot
        reset is dropped by the pool.
        """
        with unavailable_on_db_failure(NOTHING_CHANGED):  # nothing was sent yet
            conn = await self.pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS)
        try:
            yield conn
        except (DatabaseUnavailable, asyncio.CancelledError):
            # A connection the server closed is already back in the pool (and its
            # proxy refuses every call with an InterfaceError).
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise
        finally:
            try:
                await self.pool.release(conn)
            except Exception as exc:
                log.warning("dropped a database connection: %s", type(exc).__name__)

    async def ping(self) -> bool:
        """Is the database usable now? Any failure, or no answer in time, is a no."""
        try:
            async with asyncio.timeout(ACQUIRE_TIMEOUT_SECONDS), self.connection() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except Exception as exc:
            if not isinstance(exc, DatabaseUnavailable | TimeoutError):
                log.warning("database ping failed: %s", type(exc).__name__)
            return False

    async def close(self) -> None:
        await self.pool.close()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The numbered ``NNNN_name.sql`` files of ``mfa_service/migrations``, in order."""
    found = []
    for entry in resources.files("mfa_service.migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        if not number.isdigit():
            raise MigrationError(f"migration file {entry.name} must start with its number")
        found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


async def migrate(conn: Connection, *, up_to: int | None = None) -> list[int]:
    """Apply the migrations not applied yet, in one transaction; returns their numbers.

    Safe when several replicas start at once: the advisory lock makes them take turns,
    and the later ones find nothing left to do. ``up_to``: stop after that version (the
    schema of an older release, for testing a migration over its data).
    """
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied: dict[int, Any] = {r["version"]: r["checksum"] for r in rows}
        for migration in load_migrations():
            if up_to is not None and migration.version > up_to:
                break
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed "
                        "after it was applied; add a new migration instead"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.version)
    for version in applied_now:
        log.info("applied migration %04d", version)
    return applied_now


async def migrate_url(
    url: str, *, statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE
) -> list[int]:
    with unavailable_on_db_failure():
        conn = await asyncpg.connect(
            url, timeout=ACQUIRE_TIMEOUT_SECONDS, statement_cache_size=statement_cache_size
        )
    try:
        return await migrate(conn)
    finally:
        await conn.close()
