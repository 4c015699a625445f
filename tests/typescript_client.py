"""The TypeScript client (clients/typescript) in the tests: compiled with the repository's
own tsc (`make node-deps` installs it with `npm ci`), and its ``approvalHash`` run by node
over a batch of bindings in one process (JSON in on stdin, JSON out).
tests/test_typescript_package.py installs it as another project does, from `npm pack`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / "clients" / "typescript"
DIST = CLIENT_DIR / "dist"
TSC = ROOT / "node_modules" / ".bin" / "tsc"

# Reads the bindings (JSON) on stdin, writes one {"encoding", "hash"} or {"error"} each.
NODE_APPROVAL_RUNNER = """
const { approvalEncoding, approvalHash, ApprovalSchema } = require(process.argv[1]);
// The client's own copy of @bufbuild/protobuf: proto3 JSON and Timestamps.
const from = [require("node:path").dirname(process.argv[1])];
const own = (name) => require(require.resolve(name, { paths: from }));
const { create, fromJson } = own("@bufbuild/protobuf");
const { TimestampSchema } = own("@bufbuild/protobuf/wkt");
const expiry = (v) =>
  v.asDate ? new Date(v.expiresAt * 1000)
  : v.asTimestamp ? create(TimestampSchema, { seconds: BigInt(v.expiresAt), nanos: v.nanos ?? 0 })
  : v.expiresAt;
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const out = JSON.parse(input).map((v) => {
    const binding = {
      environmentId: v.environmentId,
      userId: v.userId,
      challengeId: v.challengeId,
      expiresAt: expiry(v),
      approval: fromJson(ApprovalSchema, v.approval),
    };
    try {
      return { encoding: approvalEncoding(binding), hash: approvalHash(binding).toString("hex") };
    } catch (error) {
      return { error: String(error.message) };
    }
  });
  process.stdout.write(JSON.stringify(out));
});
"""


def compile_client() -> Path:
    """Compile the client (dist/); a missing node_modules fails the test, never skips it."""
    if not TSC.exists():
        pytest.fail("node_modules is missing: run `make node-deps` (npm ci)")
    subprocess.run([str(TSC), "-p", str(CLIENT_DIR)], check=True, timeout=120)
    return DIST


def node_binary() -> str:
    """The node on PATH; its absence fails the test, never skips it."""
    node = shutil.which("node")
    assert node is not None, "node is not on PATH"
    return node


async def run_process(*command: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``command`` (node, or a shell running it) with this environment and ``env``, awaited
    with asyncio so that a server on this event loop keeps serving: its exit code, stdout
    and stderr."""
    process = await asyncio.create_subprocess_exec(
        *command, env={**os.environ, **env}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def node_approval_hashes(bindings: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``approvalEncoding`` and ``approvalHash`` (hex) of each binding, by node, from the
    compiled client. A binding: ``environmentId``, ``userId``, ``challengeId``,
    ``expiresAt`` (seconds), ``asDate`` (pass it as a ``Date``) or ``asTimestamp`` (as a
    ``google.protobuf.Timestamp``, with ``nanos`` if given) and ``approval`` (the proto3
    JSON of an ``mfa.v1.Approval``)."""
    done = subprocess.run(
        [node_binary(), "-e", NODE_APPROVAL_RUNNER, str(DIST / "index.js")],
        input=json.dumps(bindings),
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
        timeout=60,
    )
    results: list[dict[str, str]] = json.loads(done.stdout)
    assert len(results) == len(bindings)
    return results
