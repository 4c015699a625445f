"""Migrations: each applied once, recorded with its checksum, safe under concurrent starts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from datetime import datetime

import asyncpg
import grpc
import pyotp
import pytest

from flows import call, challenge, verify_session
from helpers import TEST_KEY_RING, FakeClock, venv_binary
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service import app as app_module
from mfa_service.domain import recovery
from mfa_service.domain.devices import secret_context
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.store.db import MigrationError, load_migrations, migrate, migrate_url

TABLES = ("schema_migrations", "environment_settings", "audit_events")


async def _recorded(url: str) -> list[tuple[int, str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
    finally:
        await conn.close()
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


async def _missing_tables(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [t for t in TABLES if await conn.fetchval("SELECT to_regclass($1)", t) is None]
    finally:
        await conn.close()


def _expected() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in load_migrations()]


def test_migration_files_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions, "no migration files found in mfa_service/migrations"
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_applies_each_migration_once_and_records_it(
    fresh_database_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        applied = await migrate(conn)
        assert applied == [m.version for m in load_migrations()]
        first = await conn.fetch("SELECT version, applied_at FROM schema_migrations")

        assert await migrate(conn) == []
        again = await conn.fetch("SELECT version, applied_at FROM schema_migrations")
    finally:
        await conn.close()

    assert await _recorded(fresh_database_url) == _expected()
    assert all(len(checksum) == 64 for _, _, checksum in _expected())
    assert again == first  # nothing re-applied, nothing re-recorded
    assert await _missing_tables(fresh_database_url) == []


async def test_concurrent_migrations_apply_everything_exactly_once(
    fresh_database_url: str,
) -> None:
    # Four replicas starting at once, each with its own connection.
    results = await asyncio.gather(*(migrate_url(fresh_database_url) for _ in range(4)))

    all_versions = [m.version for m in load_migrations()]
    assert sorted(results, key=len) == [[], [], [], all_versions]
    assert await _recorded(fresh_database_url) == _expected()
    assert await _missing_tables(fresh_database_url) == []


async def test_changed_checksum_of_an_applied_migration_is_refused(
    fresh_database_url: str,
) -> None:
    await migrate_url(fresh_database_url)
    first = load_migrations()[0]
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(
            "UPDATE schema_migrations SET checksum = $1 WHERE version = $2",
            "0" * 64,
            first.version,
        )
        with pytest.raises(MigrationError, match=f"{first.version:04d}_{first.name}"):
            await migrate(conn)
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate_url(fresh_database_url)


async def test_migrate_command_applies_then_finds_nothing_to_do(fresh_database_url: str) -> None:
    # Only DATABASE_URL: a migration job needs no encryption keys and no TLS settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFA_")}
    env["DATABASE_URL"] = fresh_database_url
    command = [venv_binary("mfa-service"), "migrate"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stderr
    assert f"applied {len(load_migrations())} migration(s)" in first.stdout

    second = await asyncio.to_thread(run)
    assert second.returncode == 0, second.stderr
    assert "database is up to date" in second.stdout

    assert await _recorded(fresh_database_url) == _expected()


# --- 0007: environments exist once created --------------------------------------------


# One environment per place data can be: each must exist after the migration.
DATA_ONLY_IN = {
    "mfa_users": "env-users",
    "challenges": "env-challenge",
    "action_tokens": "env-token",
    "token_validations": "env-validation",
    "audit_events": "env-audit",
}
FULL = "env-full"  # a user with a device, recovery codes, an enrollment and a session
CONFIGURED = "env-configured"  # had settings: kept as they were


async def _write_data_at_0006(conn: asyncpg.Connection, now: datetime, secret: str) -> str:
    """Data of every kind at the schema of 0006, in environments never created (there was
    no such thing); returns a recovery code of FULL's user."""
    await conn.execute(
        "INSERT INTO environment_settings VALUES ($1, $2::jsonb, 3, $3)",
        CONFIGURED,
        json.dumps({"totp": {"issuer": "Kept"}}),
        now,
    )
    for env in (DATA_ONLY_IN["mfa_users"], FULL):
        await conn.execute("INSERT INTO mfa_users VALUES ($1, 'alice', 0, NULL, $2)", env, now)
    device_id = uuid.uuid4()
    sealed = TEST_KEY_RING.encrypt(
        secret.encode(),
        context=secret_context("totp", EnvironmentId(FULL), UserId("alice"), device_id),
    )
    await conn.execute(
        "INSERT INTO devices (id, environment_id, user_id, method, is_default, created_at, "
        "totp_secret) VALUES ($1, $2, 'alice', 'TOTP', true, $3, $4)",
        device_id,
        FULL,
        now,
        sealed,
    )
    code = recovery.generate()[0]
    hashed = recovery.hash_code(code)
    await conn.execute(
        "INSERT INTO recovery_codes VALUES ($1, 'alice', $2, $3, $4, $5, NULL)",
        FULL,
        hashed.code_id,
        hashed.salt,
        hashed.hash,
        now,
    )
    await conn.execute(
        "INSERT INTO enrollments (id, environment_id, user_id, method, created_at, expires_at) "
        "VALUES ($1, $2, 'alice', 'PASSKEY', $3::timestamptz, $3 + interval '5 minutes')",
        uuid.uuid4(),
        FULL,
        now,
    )
    await conn.execute(
        "INSERT INTO verified_sessions VALUES ($1, 'alice', 's-old', $2, 'TOTP', $3)",
        FULL,
        now,
        device_id,
    )
    await conn.execute(
        "INSERT INTO challenges (id, environment_id, user_id, method, created_at, expires_at) "
        "VALUES ($1, $2, 'alice', 'TOTP', $3::timestamptz, $3 + interval '5 minutes')",
        uuid.uuid4(),
        DATA_ONLY_IN["challenges"],
        now,
    )
    await conn.execute(
        "INSERT INTO action_tokens (jti, environment_id, user_id, actions, single_use, method, "
        "issued_at, expires_at) VALUES ($1, $2, 'alice', '{WAAS_SIGN}', true, 'TOTP', $3, $3)",
        uuid.uuid4(),
        DATA_ONLY_IN["action_tokens"],
        now,
    )
    await conn.execute(
        "INSERT INTO token_validations VALUES ($1, 'key-1', '\\x00', 'DENY', 'TOKEN_INVALID', $2)",
        DATA_ONLY_IN["token_validations"],
        now,
    )
    await conn.execute(
        "INSERT INTO audit_events (event_id, environment_id, user_id, type, occurred_at, "
        "caller, request_id) VALUES ($1, $2, 'alice', 'USER_RESET', $3, 'op', 'req-old')",
        uuid.uuid4(),
        DATA_ONLY_IN["audit_events"],
        now,
    )
    return code


async def test_0007_creates_every_environment_that_has_data(fresh_database_url: str) -> None:
    clock = FakeClock()
    secret = pyotp.random_base32()
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await migrate(conn, up_to=6)
        code = await _write_data_at_0006(conn, clock.now(), secret)
    finally:
        await conn.close()

    application = await app_module.start(  # migrates to the end first
        database_url=fresh_database_url, key_ring=TEST_KEY_RING, clock=clock, pool_size=2
    )
    try:
        async with Client.connect(f"127.0.0.1:{application.port}", insecure=True) as client:
            listed, _ = await client.admin.list_environments(page_size=500)
            created = sorted([*DATA_ONLY_IN.values(), FULL])
            assert [e.environment_id for e in listed] == sorted([*created, CONFIGURED])
            defaults = await client.admin.create_environment("env-created-now")
            for settings in listed:
                if settings.environment_id == CONFIGURED:
                    assert (settings.totp.issuer, settings.revision) == ("Kept", 3)
                    continue
                assert settings.revision == 1
                for output_only in ("environment_id", "update_time"):
                    settings.ClearField(output_only)
                    defaults.ClearField(output_only)
                assert settings == defaults  # the settings these environments were using

            # The data still works: the device verifies, a recovery code too, the log reads.
            status = await call(
                client.mfa_stub.GetStatus(
                    pb.GetStatusRequest(environment_id=FULL, user_id="alice", session_id="s-old")
                )
            )
            assert list(status.enrolled_methods) == [types.METHOD_TOTP]
            assert status.recovery_codes_remaining == 1
            code_now = pyotp.TOTP(secret).at(clock.now())
            await verify_session(client, FULL, "alice", "s-new", code_now)
            recovery_challenge = await challenge(client, FULL, "alice", types.METHOD_RECOVERY_CODE)
            await call(
                client.mfa_stub.VerifySession(
                    pb.VerifySessionRequest(
                        environment_id=FULL,
                        user_id="alice",
                        session_id="s-other",
                        challenge_id=recovery_challenge,
                        proof=types.Proof(recovery_code=code),
                    )
                )
            )
            events = await call(
                client.admin.stub.ListAuditEvents(
                    admin_pb.ListAuditEventsRequest(environment_id=DATA_ONLY_IN["audit_events"])
                )
            )
            assert [e.request_id for e in events.events] == ["req-old"]
            with pytest.raises(MfaServiceError) as unknown:
                await client.admin.get_settings("env-never-had-data")
            assert (unknown.value.code, unknown.value.reason) == (
                grpc.StatusCode.NOT_FOUND,
                "ERROR_REASON_ENVIRONMENT_NOT_FOUND",
            )
    finally:
        await application.stop()
