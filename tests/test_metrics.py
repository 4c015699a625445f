"""Prometheus metrics: a real server with its endpoint, scraped over HTTP after real calls."""

from __future__ import annotations

import asyncio
import platform
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from importlib import metadata

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from flows import (
    call,
    challenge,
    enroll_totp,
    update_settings,
    validate_unknown_tokens,
    verify_session,
)
from helpers import TEST_KEY_RING, FakeClock, create_environments, eventually, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service import app as app_module

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


def _rpc(method: str, grpc_type: str = "unary") -> dict[str, str]:
    """The labels of ``method``'s series (``/package.Service/Name``), as
    go-grpc-prometheus writes them."""
    service, _, name = method[1:].partition("/")
    return {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": name}


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
    handled = "grpc_server_handled_total"
    assert _value(samples, handled, **_rpc(GET), grpc_code="OK") == 2
    assert _value(samples, handled, **_rpc(UPDATE), grpc_code="INVALID_ARGUMENT") == 1
    assert _value(samples, handled, **_rpc(UPDATE), grpc_code="OK") == 1
    assert _value(samples, handled, **_rpc(VALIDATE), grpc_code="OK") == 2
    assert _value(samples, handled, **_rpc(VERIFY), grpc_code="OK") == 1
    failed_code = failed_verify.code.name
    assert _value(samples, handled, **_rpc(VERIFY), grpc_code=failed_code) == 1
    assert _value(samples, "grpc_server_started_total", **_rpc(UPDATE)) == 2
    # A refused call received its request and sent no response.
    assert _value(samples, "grpc_server_msg_received_total", **_rpc(UPDATE)) == 2
    assert _value(samples, "grpc_server_msg_sent_total", **_rpc(UPDATE)) == 1
    assert _value(samples, "mfa_rpc_in_flight", **_rpc(UPDATE)) == 0

    handling = "grpc_server_handling_seconds"
    ok, invalid = (
        {**_rpc(GET), "grpc_code": "OK"},
        {**_rpc(UPDATE), "grpc_code": "INVALID_ARGUMENT"},
    )
    assert _value(samples, f"{handling}_count", **ok) == 2
    assert _value(samples, f"{handling}_count", **invalid) == 1
    assert _value(samples, f"{handling}_bucket", **ok, le="+Inf") == 2
    assert 0 < _value(samples, f"{handling}_sum", **ok) < 10

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


async def test_concurrent_validations_share_statements(
    metered: app_module.Application, clock: FakeClock
) -> None:
    """Validations arriving together are decided in batches: fewer statements than calls."""
    async with Client.connect(f"127.0.0.1:{metered.port}", insecure=True) as client:
        await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
        calls = 40
        replies = await validate_unknown_tokens(client, ENV, calls)
    assert {r.reason for r in replies} == {types.DECISION_REASON_TOKEN_INVALID}
    samples = await asyncio.to_thread(_scrape, metered.metrics_port)  # served on this loop
    batches = _value(samples, "mfa_token_validation_batch_size_count")
    assert _value(samples, "mfa_token_validation_batch_size_sum") == calls
    assert 1 <= batches < calls


WATCH = "/mfa.v1.AdminService/WatchAuditEvents"


async def test_a_server_stream_is_counted_under_the_grpc_names(
    metered: app_module.Application,
) -> None:
    """WatchAuditEvents: started, in flight while open, a message sent per event, and
    handled with the code it ended with (the client hung up: CANCELLED)."""
    watch = _rpc(WATCH, "server_stream")
    async with Client.connect(f"127.0.0.1:{metered.port}", insecure=True) as client:
        await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
        listed = await client.admin.stub.ListAuditEvents(
            admin_pb.ListAuditEventsRequest(environment_id=ENV, page_size=100)
        )
        events = len(listed.events)
        assert events >= 1  # the settings change, at least
        stream = client.admin.stub.WatchAuditEvents(
            admin_pb.WatchAuditEventsRequest(environment_id=ENV)
        )
        for _ in range(events):
            await stream.read()
        samples = await asyncio.to_thread(_scrape, metered.metrics_port)
        assert _value(samples, "grpc_server_started_total", **watch) == 1
        assert _value(samples, "grpc_server_msg_received_total", **watch) == 1
        assert _value(samples, "grpc_server_msg_sent_total", **watch) == events
        assert _value(samples, "mfa_rpc_in_flight", **watch) == 1
        assert _value(samples, "grpc_server_handled_total", **watch, grpc_code="CANCELLED") == 0
        stream.cancel()

        async def ended() -> bool:  # the side port answers on this event loop
            samples = await asyncio.to_thread(_scrape, metered.metrics_port)
            return _value(samples, "grpc_server_handled_total", **watch, grpc_code="CANCELLED") == 1

        await eventually(ended, what="the stream counted as handled, CANCELLED")
    samples = await asyncio.to_thread(_scrape, metered.metrics_port)
    assert _value(samples, "mfa_rpc_in_flight", **watch) == 0
    assert (
        _value(samples, "grpc_server_handling_seconds_count", **watch, grpc_code="CANCELLED") == 1
    )
    assert _value(samples, "grpc_server_msg_sent_total", **watch) == events
    # The unary calls of the same scrape carry grpc_type "unary".
    assert _value(samples, "grpc_server_handled_total", **_rpc(UPDATE), grpc_code="OK") == 1


async def test_build_info_names_the_running_versions(metered: app_module.Application) -> None:
    samples = await asyncio.to_thread(_scrape, metered.metrics_port)
    builds = [
        (dict(labels), value)
        for (name, labels), value in samples.items()
        if name == "mfa_build_info"
    ]
    assert len(builds) == 1
    labels, value = builds[0]
    assert value == 1
    assert labels == {
        "version": metadata.version("mfa-service"),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


async def test_no_metric_label_holds_a_user_or_a_token(
    metered: app_module.Application, clock: FakeClock
) -> None:
    """After a flow with a user, a code and a token, no label value is one of them."""
    async with Client.connect(f"127.0.0.1:{metered.port}", insecure=True) as client:
        await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
        device = await enroll_totp(client, clock, ENV, "user-label-check")
        clock.advance(timedelta(seconds=30))
        code = device.code(clock.now())
        await verify_session(client, ENV, "user-label-check", "session-label-check", code)
    samples = await asyncio.to_thread(_scrape, metered.metrics_port)
    values = {value for _, labels in samples for _, value in labels}
    for secret in ("user-label-check", "session-label-check", code, ENV):
        assert secret not in values


async def test_a_stream_that_writes_with_its_context_is_counted_too(
    metered: app_module.Application,
) -> None:
    """health Watch is a coroutine that sends with ``context.write``, not a generator."""
    watch = {"grpc_type": "server_stream", "grpc_service": "grpc.health.v1.Health"}
    watch["grpc_method"] = "Watch"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await stream.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        samples = await asyncio.to_thread(_scrape, metered.metrics_port)
        assert _value(samples, "grpc_server_msg_sent_total", **watch) == 1
        assert _value(samples, "mfa_rpc_in_flight", **watch) == 1
        stream.cancel()

        async def ended() -> bool:  # the side port answers on this event loop
            samples = await asyncio.to_thread(_scrape, metered.metrics_port)
            return _value(samples, "grpc_server_handled_total", **watch, grpc_code="CANCELLED") == 1

        await eventually(ended, what="the health Watch counted as handled, CANCELLED")
