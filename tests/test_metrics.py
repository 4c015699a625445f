"""Prometheus metrics: a real server with its endpoint, scraped over HTTP after real calls."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows import call, challenge, enroll_totp, update_settings, verify_session
from helpers import TEST_KEY_RING, FakeClock, create_environments, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service import app as app_module
from mfa_service.domain import tokens

ENV = "env-metrics"
pytestmark = pytest.mark.environments(ENV)
GET = "/mfa.v1.AdminService/GetSettings"
UPDATE = "/mfa.v1.AdminService/UpdateSettings"
VALIDATE = "/mfa.v1.ActionTokenService/ValidateActionToken"
VERIFY = "/mfa.v1.MfaService/VerifySession"


@pytest.fixture
async def metered(database_url: str, clock: FakeClock) -> AsyncIterator[app_module.Application]:
    application = await app_module.start(
        database_url=database_url,
        key_ring=TEST_KEY_RING,
        clock=clock,
        pool_size=4,
        metrics_addr="127.0.0.1:0",
    )
    await create_environments(f"127.0.0.1:{application.port}", [ENV])
    yield application
    await application.stop()


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_calls_are_counted_and_timed_by_method_and_code(
    metered: app_module.Application, clock: FakeClock
) -> None:
    async with Client.connect(f"127.0.0.1:{metered.port}", insecure=True) as client:
        for _ in range(2):
            await client.admin.get_settings(ENV)
        # Refused: an empty issuer is invalid.
        await refused(
            call(
                client.admin.stub.UpdateSettings(
                    admin_pb.UpdateSettingsRequest(
                        settings=types.Settings(
                            environment_id=ENV, totp=types.TotpSettings(issuer="")
                        ),
                        update_mask={"paths": ["totp.issuer"]},  # type: ignore[arg-type]
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ERROR_REASON_INVALID_ARGUMENT",
        )

        await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
        device = await enroll_totp(client, clock, ENV, "alice")
        for action, expected in (
            (types.ACTION_WAAS_SIGN, types.DECISION_DENY),
            (types.ACTION_WAAS_REFRESH, types.DECISION_ALLOW),
        ):
            validated = await call(
                client.action_tokens_stub.ValidateActionToken(
                    at_pb.ValidateActionTokenRequest(
                        environment_id=ENV, user_id="alice", action=action, idempotency_key=""
                    )
                )
            )
            assert validated.decision == expected

        # One wrong code, then the right one.
        wrong = "000000" if device.code(clock.now()) != "000000" else "111111"
        challenge_id = await challenge(client, ENV, "alice")
        failed_verify = await refused(
            verify_session(client, ENV, "alice", "s1", wrong, challenge_id),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
        clock.advance(timedelta(seconds=30))  # a new step: the enrollment code is spent
        await verify_session(client, ENV, "alice", "s1", device.code(clock.now()))

    samples = await asyncio.to_thread(_scrape, metered.metrics_port)
    requests = "mfa_rpc_requests_total"
    assert _value(samples, requests, method=GET, code="OK") == 2
    assert _value(samples, requests, method=UPDATE, code="INVALID_ARGUMENT") == 1
    assert _value(samples, requests, method=UPDATE, code="OK") == 1
    assert _value(samples, requests, method=VALIDATE, code="OK") == 2
    assert _value(samples, requests, method=VERIFY, code="OK") == 1
    failed_code = failed_verify.code.name
    assert _value(samples, requests, method=VERIFY, code=failed_code) == 1

    assert _value(samples, "mfa_rpc_duration_seconds_count", method=GET) == 2
    assert _value(samples, "mfa_rpc_duration_seconds_count", method=UPDATE) == 2
    assert _value(samples, "mfa_rpc_duration_seconds_bucket", method=GET, le="+Inf") == 2
    assert 0 < _value(samples, "mfa_rpc_duration_seconds_sum", method=GET) < 10

    validations = "mfa_token_validations_total"
    assert _value(samples, validations, decision="deny", reason="mfa_required") == 1
    assert _value(samples, validations, decision="allow", reason="mfa_not_required") == 1

    verifications = "mfa_verifications_total"
    assert _value(samples, verifications, method="totp", outcome="success") == 1
    failed = {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == verifications and dict(labels)["outcome"] != "success"
    }
    assert failed == {failed_verify.reason.removeprefix("ERROR_REASON_").lower(): 1}
    assert _value(samples, "mfa_lockouts_total") == 0

    assert _value(samples, "mfa_db_pool_max_size") == 4
    assert 1 <= _value(samples, "mfa_db_pool_size") <= 4
    assert 0 <= _value(samples, "mfa_db_pool_idle") <= _value(samples, "mfa_db_pool_size")


async def test_no_metrics_endpoint_unless_asked(app: app_module.Application) -> None:
    assert app.metrics_port == 0
    assert app.side_port is None


def _unknown_token() -> str:
    """Shaped like one of ours (algorithm, type, a jti), so only the database says no."""

    def part(value: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    header = part({"alg": "ES256", "typ": tokens.TOKEN_TYPE})
    return f"{header}.{part({'jti': str(uuid.uuid4())})}.{part({'sig': 'none'})}"


async def test_concurrent_validations_share_statements(
    metered: app_module.Application, clock: FakeClock
) -> None:
    """Validations arriving together are decided in batches: fewer statements than calls."""
    async with Client.connect(f"127.0.0.1:{metered.port}", insecure=True) as client:
        await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
        calls = 40
        replies = await asyncio.gather(
            *(
                call(
                    client.action_tokens_stub.ValidateActionToken(
                        at_pb.ValidateActionTokenRequest(
                            environment_id=ENV,
                            user_id=f"user-{i}",
                            action=types.ACTION_WAAS_SIGN,
                            token=_unknown_token(),
                        )
                    )
                )
                for i in range(calls)
            )
        )
    assert {r.reason for r in replies} == {types.DECISION_REASON_TOKEN_INVALID}
    samples = await asyncio.to_thread(_scrape, metered.metrics_port)  # served on this loop
    batches = _value(samples, "mfa_token_validation_batch_size_count")
    assert _value(samples, "mfa_token_validation_batch_size_sum") == calls
    assert 1 <= batches < calls
