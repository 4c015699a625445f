"""The TypeScript client's example, ``validate.js`` (clients/typescript/src/validate.ts), as
the wallet signer would run it: a Node script validates an action token for a payload
against the real in-process server, and the documented command line does what the docs say.

The client is compiled with the repository's own tsc (`make node-deps` installs it with
`npm ci`), then node runs as a subprocess awaited with asyncio, so the server keeps
serving on this event loop while the script talks to it. The packed package, installed
into another project, is tests/test_typescript_package.py's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from flows import TotpDevice, challenge, enroll_totp, issue_action_token, update_settings
from helpers import FakeClock
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service import app as app_module
from typescript_client import ROOT, compile_client, node_binary, run_process

ENV = "env-node"
pytestmark = pytest.mark.environments(ENV)
MESSAGE = b"hello"
DOCUMENTED_ADDR, DOCUMENTED_ENV = "127.0.0.1:50051", "env-1"


@pytest.fixture(scope="module")
def validate_script() -> Path:
    """dist/validate.js, compiled from the committed generated code."""
    return compile_client() / "validate.js"


def documented_recipe() -> tuple[str, dict[str, str]]:
    """The one command line of the docs (README.md, docs/) that runs validate.js, and
    the JSON line the comment below it says it prints."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    found = [
        match
        for page in pages
        for match in re.finditer(
            r"^(MFA_ACTION_TOKEN=.*dist/validate\.js.*)\n# (\{.*\})$",
            page.read_text(),
            flags=re.MULTILINE,
        )
    ]
    assert len(found) == 1, [match.group(1) for match in found]
    command, printed = found[0].groups()
    return command, json.loads(printed)


async def node_validate(
    app: app_module.Application,
    script: Path,
    token: str,
    *digest: str,
    env: str = ENV,
) -> dict[str, str]:
    address = f"127.0.0.1:{app.port}"
    args = (address, env, "alice", "ACTION_WAAS_SIGN", *digest)
    code, stdout, stderr = await run_process(
        node_binary(), str(script), *args, env={"MFA_ACTION_TOKEN": token}
    )
    assert code == 0, stderr
    result: dict[str, str] = json.loads(stdout)
    return result


@pytest.fixture
async def token(client: Client, clock: FakeClock) -> str:
    """A single-use ACTION_WAAS_SIGN token of alice for the payload MESSAGE."""
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    alice: TotpDevice = await enroll_totp(client, clock, ENV, "alice")
    clock.advance(timedelta(seconds=30))  # a fresh time step: the enrollment code is spent
    issued = await issue_action_token(
        client,
        ENV,
        "alice",
        alice.code(clock.now()),
        await challenge(client, ENV, "alice"),
        payload_digest=hashlib.sha256(MESSAGE).digest(),
    )
    return str(issued.token)


async def test_the_script_validates_a_token_for_its_payload_once(
    app: app_module.Application, token: str, validate_script: Path
) -> None:
    other = hashlib.sha256(b"hello?").hexdigest()
    assert await node_validate(app, validate_script, token, other) == {
        "decision": "DECISION_DENY",
        "reason": "DECISION_REASON_PAYLOAD_MISMATCH",
    }
    assert await node_validate(app, validate_script, token) == {
        "decision": "DECISION_DENY",
        "reason": "DECISION_REASON_PAYLOAD_MISMATCH",
    }
    # A refusal consumed nothing: the right digest (hex here) is allowed, once.
    digest = hashlib.sha256(MESSAGE).hexdigest()
    assert await node_validate(app, validate_script, token, digest) == {
        "decision": "DECISION_ALLOW",
        "reason": "DECISION_REASON_TOKEN_VALID",
    }
    assert await node_validate(app, validate_script, token, digest) == {
        "decision": "DECISION_DENY",
        "reason": "DECISION_REASON_TOKEN_ALREADY_USED",
    }
    # An environment never created (here ENV in capitals): the generated code knows it.
    assert await node_validate(app, validate_script, "", env=ENV.upper()) == {
        "decision": "DECISION_DENY",
        "reason": "DECISION_REASON_ENVIRONMENT_UNKNOWN",
    }


async def test_the_documented_command_line_sends_the_digest(
    app: app_module.Application, token: str, validate_script: Path
) -> None:
    """Run as written, with $TOKEN and $DIGEST (base64, as grpcurl's JSON has it) as the
    README's session leaves them, it prints what the docs say it prints."""
    command, printed = documented_recipe()
    assert "$DIGEST" in command
    command = command.replace(DOCUMENTED_ADDR, f"127.0.0.1:{app.port}")
    command = command.replace(f" {DOCUMENTED_ENV} ", f" {ENV} ")
    digest = base64.b64encode(hashlib.sha256(MESSAGE).digest()).decode()
    code, stdout, stderr = await run_process(
        "bash", "-c", command, env={"TOKEN": token, "DIGEST": digest}
    )
    assert code == 0, stderr
    assert (
        json.loads(stdout)
        == printed
        == {
            "decision": "DECISION_ALLOW",
            "reason": "DECISION_REASON_TOKEN_VALID",
        }
    )


@pytest.mark.parametrize("digest", ["abc", hashlib.sha256(MESSAGE).hexdigest()[:-2]])
async def test_a_digest_that_is_no_sha256_stops_the_script(
    validate_script: Path, digest: str
) -> None:
    args = (DOCUMENTED_ADDR, ENV, "alice", "ACTION_WAAS_SIGN", digest)  # never reached
    code, stdout, stderr = await run_process(node_binary(), str(validate_script), *args, env={})
    assert (code, stdout) == (2, "")
    assert stderr.startswith("PAYLOAD_DIGEST: a SHA-256 (32 bytes) in hex or base64, not ")
