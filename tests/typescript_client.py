"""The TypeScript client (clients/typescript) in the tests: compiled with the repository's
own tsc (`make node-deps` installs it with `npm ci`), and its ``approvalHash`` run by node
over a batch of bindings in one process (JSON in on stdin, JSON out)."""

from __future__ import annotations

import json
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
const { approvalEncoding, approvalHash, types } = require(process.argv[1]);
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const out = JSON.parse(input).map((v) => {
    const binding = {
      environmentId: v.environmentId,
      userId: v.userId,
      challengeId: v.challengeId,
      expiresAt: v.asDate ? new Date(v.expiresAt * 1000) : v.expiresAt,
      approval: types.Approval.fromJSON(v.approval),
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


def node_approval_hashes(bindings: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``approvalEncoding`` and ``approvalHash`` (hex) of each binding, by node, from the
    compiled client. A binding: ``environmentId``, ``userId``, ``challengeId``,
    ``expiresAt`` (seconds), ``asDate`` (pass it as a ``Date``) and ``approval`` (the
    proto3 JSON of an ``mfa.v1.Approval``)."""
    node = shutil.which("node")
    assert node is not None, "node is not on PATH"
    done = subprocess.run(
        [node, "-e", NODE_APPROVAL_RUNNER, str(DIST / "index.js")],
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
