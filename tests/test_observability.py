"""``mfa-service serve`` as a real process: JSON log lines, and OpenTelemetry spans."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
from test_process import _external_db_env, serve

from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client

ENV = "env-observed"
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
RPC_FIELDS = {"request_id", "caller", "method", "status", "duration_ms"}


async def test_json_log_lines_without_secrets_after_a_full_flow(
    tmp_path: Path, database_url: str
) -> None:
    env = _external_db_env(database_url)  # no --dev: JSON by default
    async with (
        serve(tmp_path, env) as server,
        Client.connect(server.target, insecure=True) as client,
    ):
        await client.admin.create_environment(ENV)
        admin = client.admin.stub
        settings = types.Settings(environment_id=ENV, protected_actions=[types.ACTION_WAAS_SIGN])
        await admin.UpdateSettings(
            admin_pb.UpdateSettingsRequest(
                settings=settings,
                update_mask={"paths": ["protected_actions"]},  # type: ignore[arg-type]
            )
        )
        started = await client.mfa_stub.Enroll(
            pb.EnrollRequest(environment_id=ENV, user_id="alice", method=types.METHOD_TOTP)
        )
        secret = started.totp.secret
        totp = pyotp.TOTP(secret)
        now = datetime.now(UTC)
        first_code = totp.at(now)
        done = await client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id="alice",
                enrollment_id=started.enrollment_id,
                totp_code=first_code,
            )
        )
        challenge = await client.mfa_stub.Challenge(
            pb.ChallengeRequest(environment_id=ENV, user_id="alice", method=types.METHOD_TOTP)
        )
        # The next step's code (one step of skew is allowed): the first one is spent.
        second_code = totp.at(now, counter_offset=1)
        issued = await client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="alice",
                challenge_id=challenge.challenge_id,
                proof=types.Proof(totp_code=second_code),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
        validated = await client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV,
                user_id="alice",
                action=types.ACTION_WAAS_SIGN,
                token=issued.token,
                idempotency_key="idem-1",
            )
        )
        assert validated.decision == types.DECISION_ALLOW
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0

    lines = server.stderr.splitlines()
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    rpcs = {r["method"]: r for r in records if r["logger"] == "mfa_service.rpc"}
    for method in ("Enroll", "CompleteEnrollment", "IssueActionToken"):
        record = rpcs[f"/mfa.v1.MfaService/{method}"]
        assert record.keys() >= RPC_FIELDS
        assert record["status"] == "OK"
        assert record["caller"].startswith("unauthenticated@")
        assert isinstance(record["duration_ms"], float | int)
    assert rpcs["/mfa.v1.ActionTokenService/ValidateActionToken"]["status"] == "OK"
    assert any(r["message"] == "stopped" for r in records)

    output = server.output
    secrets = {
        "TOTP secret": secret,
        "first code": first_code,
        "second code": second_code,
        "action token": issued.token,
        "token signature": issued.token.rsplit(".", 1)[1],
        "encryption key": env["MFA_ENCRYPTION_KEYS"].split(":", 1)[1],
        **{f"recovery code {i}": code for i, code in enumerate(done.recovery_codes)},
    }
    for name, value in secrets.items():
        assert value, name
        assert value not in output, f"the log holds the {name}"


async def test_console_tracing_gives_a_span_per_call_and_per_statement(
    tmp_path: Path, database_url: str
) -> None:
    env = {**_external_db_env(database_url), "OTEL_TRACES_EXPORTER": "console"}
    async with (
        serve(tmp_path, env) as server,
        Client.connect(server.target, insecure=True) as client,
    ):
        await client.admin.create_environment(ENV)
        await client.admin.stub.GetSettings(
            admin_pb.GetSettingsRequest(environment_id=ENV),
            metadata=(("x-request-id", "req-traced"), ("traceparent", TRACEPARENT)),
        )
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0

    spans = _console_spans(server.stdout_path.read_text())
    rpc = [s for s in spans if s["attributes"].get("mfa.request_id") == "req-traced"]
    assert len(rpc) == 1, spans
    call = rpc[0]
    assert call["name"] == "mfa.v1.AdminService/GetSettings"
    assert call["kind"] == "SpanKind.SERVER"
    assert call["attributes"]["rpc.system"] == "grpc"
    assert call["attributes"]["rpc.grpc.status_code"] == 0
    # The caller's trace, continued (the console exporter writes ids as 0x-prefixed hex).
    assert call["context"]["trace_id"] == f"0x{CALLER_TRACE_ID}"
    assert call["parent_id"] == f"0x{CALLER_SPAN_ID}"
    # The call's JSON log line names the trace and the server span.
    records = [json.loads(line) for line in server.stderr.splitlines()]
    logged = [r for r in records if r.get("request_id") == "req-traced"]
    assert len(logged) == 1, records
    assert logged[0]["trace_id"] == CALLER_TRACE_ID
    assert f"0x{logged[0]['span_id']}" == call["context"]["span_id"]
    assert all("trace_id" not in r for r in records if r.get("message") == "stopped")
    queries = [s for s in spans if s["parent_id"] == call["context"]["span_id"]]
    assert queries, "no span for the call's query"
    for query in queries:
        assert query["kind"] == "SpanKind.CLIENT"
        assert query["context"]["trace_id"] == call["context"]["trace_id"]
        assert query["attributes"]["db.system"] == "postgresql"
        assert query["start_time"] >= call["start_time"]
        assert query["end_time"] <= call["end_time"]
    statements = [q["attributes"]["db.statement"] for q in queries]
    assert any("environment_settings" in s for s in statements), statements


async def test_tracing_is_off_unless_configured(tmp_path: Path, database_url: str) -> None:
    async with serve(tmp_path, _external_db_env(database_url)) as server:
        async with Client.connect(server.target, insecure=True) as client:
            await client.admin.create_environment(ENV)
            await client.admin.get_settings(ENV)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    assert server.stdout_path.read_text() == ""


def _console_spans(text: str) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter printed: indented JSON objects, one after another."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    index = 0
    while True:
        index = text.find("{", index)
        if index < 0:
            return spans
        span, index = decoder.raw_decode(text, index)
        spans.append(span)
