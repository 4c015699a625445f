"""The TypeScript client (clients/typescript, ts-proto + @grpc/grpc-js) as a Node service
uses it: a Node script validates an action token against the real in-process server.

The stubs are compiled with the repository's own tsc (`make node-deps` installs it with
`npm ci`), then node runs as a subprocess awaited with asyncio, so the server keeps
serving on this event loop while the script talks to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from flows import TotpDevice, call, challenge, enroll_totp, update_settings
from helpers import FakeClock
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service import app as app_module
from typescript_client import compile_client

ENV = "env-node"
pytestmark = pytest.mark.environments(ENV)


@pytest.fixture(scope="module")
def validate_script() -> Path:
    """dist/validate.js, compiled from the committed generated code."""
    return compile_client() / "validate.js"


async def node_validate(
    app: app_module.Application,
    script: Path,
    token: str,
    action: str = "ACTION_WAAS_SIGN",
    env: str = ENV,
) -> dict[str, str]:
    node = shutil.which("node")
    assert node is not None, "node is not on PATH"
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        f"127.0.0.1:{app.port}",
        env,
        "alice",
        action,
        env={**os.environ, "MFA_ACTION_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    result: dict[str, str] = json.loads(stdout)
    return result


async def test_node_script_validates_a_single_use_token_once(
    app: app_module.Application, client: Client, clock: FakeClock, validate_script: Path
) -> None:
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    alice: TotpDevice = await enroll_totp(client, clock, ENV, "alice")
    clock.advance(timedelta(seconds=30))  # a fresh time step: the enrollment code is spent
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="alice",
                challenge_id=await challenge(client, ENV, "alice"),
                proof=types.Proof(totp_code=alice.code(clock.now())),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
    )

    assert await node_validate(app, validate_script, issued.token) == {
        "decision": "DECISION_ALLOW",
        "reason": "DECISION_REASON_TOKEN_VALID",
    }
    assert await node_validate(app, validate_script, issued.token) == {
        "decision": "DECISION_DENY",
        "reason": "DECISION_REASON_TOKEN_ALREADY_USED",
    }
    # An environment never created (here ENV in capitals): the generated code knows it.
    assert await node_validate(app, validate_script, "", env=ENV.upper()) == {
        "decision": "DECISION_DENY",
        "reason": "DECISION_REASON_ENVIRONMENT_UNKNOWN",
    }
