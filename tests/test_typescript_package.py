"""The TypeScript client as another project gets it: ``npm pack`` of clients/typescript,
the tarball installed by ``npm install`` into a new Node project outside the repository
(its dependencies from npm's configured registry, at the package's exact versions), a
TypeScript program compiled there by that project's own ``tsc``, and run against the real
in-process server: a whole flow, the service's refusals read from ``google.rpc.Status``
details, and a validation whose first answer a proxy loses.

node runs as a subprocess awaited with asyncio, so the server keeps serving on this event
loop while the program talks to it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_signer_example import LossyProxy

from flows import call
from helpers import FakeClock
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa_client import Client
from mfa_service.app import Application
from typescript_client import CLIENT_DIR, ROOT, node_binary, run_process

ENV = "env-ts-package"
pytestmark = pytest.mark.environments(ENV)
CONSUMER_SOURCES = Path(__file__).resolve().parent / "typescript_consumer"
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout


@dataclass(frozen=True)
class Consumer:
    project: Path  # a Node project of its own, outside the repository
    tarball: Path  # what `npm pack` made of clients/typescript
    manifest: dict[str, Any]  # clients/typescript/package.json


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Consumer:
    npm = shutil.which("npm")
    assert npm is not None, "npm is not on PATH"
    project = tmp_path_factory.mktemp("node-consumer")
    assert not project.resolve().is_relative_to(ROOT)
    run(npm, "pack", "--pack-destination", str(project), cwd=CLIENT_DIR)  # prepack builds dist/
    (tarball,) = project.glob("*.tgz")
    manifest = json.loads((CLIENT_DIR / "package.json").read_text())
    tools = {name: manifest["devDependencies"][name] for name in ("typescript", "@types/node")}
    package = {
        "name": "mfa-client-consumer",
        "private": True,
        "dependencies": {manifest["name"]: f"file:{tarball.name}"},
        "devDependencies": tools,
    }
    (project / "package.json").write_text(json.dumps(package, indent=2))
    shutil.copytree(CONSUMER_SOURCES, project, dirs_exist_ok=True)
    run(npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", cwd=project)
    run(str(project / "node_modules" / ".bin" / "tsc"), "-p", str(project), cwd=project)
    return Consumer(project=project, tarball=tarball, manifest=manifest)


def test_the_tarball_is_the_built_package_with_exact_dependencies(consumer: Consumer) -> None:
    with tarfile.open(consumer.tarball) as tar:
        names = {name.removeprefix("package/") for name in tar.getnames()}
        packed = tar.extractfile("package/package.json")
        assert packed is not None
        manifest = json.load(packed)
    assert "private" not in manifest
    assert manifest["exports"]["."] == {"types": "./dist/index.d.ts", "default": "./dist/index.js"}
    assert {"dist/index.js", "dist/index.d.ts", "dist/validate.js"} <= names
    modules = {name.removesuffix(".js") for name in names if name.endswith(".js")}
    assert modules == {name.removesuffix(".d.ts") for name in names if name.endswith(".d.ts")}
    assert {name for name in names if not name.startswith("dist/")} == {"package.json", "README.md"}
    dependencies = manifest["dependencies"]
    assert {"@connectrpc/connect", "@connectrpc/connect-node", "@bufbuild/protobuf"} <= set(
        dependencies
    )
    assert [v for v in dependencies.values() if not EXACT_VERSION.match(v)] == []


def test_the_project_gets_one_copy_of_each_dependency_at_its_pinned_version(
    consumer: Consumer,
) -> None:
    """Nested copies are what broke the ts-proto client (two @grpc/grpc-js)."""
    modules = consumer.project / "node_modules"
    installed = modules / consumer.manifest["name"]
    assert not installed.is_symlink()  # the tarball's files, not a link into the repository
    assert not (installed / "node_modules").exists()
    for name, version in consumer.manifest["dependencies"].items():
        assert json.loads((modules / name / "package.json").read_text())["version"] == version


async def test_a_node_project_runs_the_whole_flow_with_the_packed_client(
    app: Application, client: Client, clock: FakeClock, consumer: Consumer
) -> None:
    async with LossyProxy(f"127.0.0.1:{app.port}", lose=1, how="deadline") as proxy:
        config = {
            "address": f"127.0.0.1:{app.port}",
            "lossyAddress": f"127.0.0.1:{proxy.port}",
            "environmentId": ENV,
            "userId": "alice",
            "now": clock.now().timestamp(),
        }
        flow = consumer.project / "dist" / "flow.js"
        code, stdout, stderr = await run_process(
            node_binary(), str(flow), json.dumps(config), env={}
        )
    assert code == 0, stderr
    seen = json.loads(stdout)
    key_ids = [key["kid"] for key in (await client.action_tokens.jwks())["keys"]]
    listed = await call(
        client.admin.stub.ListAuditEvents(
            admin_pb.ListAuditEventsRequest(environment_id=ENV, page_size=100)
        )
    )
    newest_first = [admin_pb.AuditEventType.Name(event.type) for event in listed.events]

    def refusal(code: str, reason: str, **more: object) -> dict[str, object]:
        errors: dict[str, object] = {
            "fieldViolations": [],
            "retryAfterMs": None,
            "hasRequestId": True,
        }
        short = reason.removeprefix("ERROR_REASON_")
        return {"code": code, "reason": reason, "errorReason": short, **errors, **more}

    assert seen == {
        "protectedActions": ["WAAS_SIGN"],
        "recoveryCodes": 10,
        "wrongCode": refusal("PERMISSION_DENIED", "ERROR_REASON_VERIFICATION_FAILED"),
        # The first attempt consumed the token, its answer lost past the deadline; the
        # retry under the same idempotency key got that first decision.
        "validated": {"allowed": True, "reason": "DECISION_REASON_TOKEN_VALID", "keyed": True},
        "again": "DECISION_REASON_TOKEN_ALREADY_USED",
        "badDigest": refusal(
            "INVALID_ARGUMENT", "ERROR_REASON_INVALID_ARGUMENT", fieldViolations=["payload_digest"]
        ),
        "failures": ["ERROR_REASON_VERIFICATION_FAILED"] * 2,
        "lockedOut": refusal(
            "RESOURCE_EXHAUSTED", "ERROR_REASON_LOCKED_OUT", retryAfterMs=15 * 60 * 1000
        ),
        "devicesRemoved": 1,
        "afterReset": "DECISION_REASON_MFA_NOT_REQUIRED",
        "jwksKeyIds": key_ids,
        # The stream from the start, in commit order, until the reset it stopped at.
        "events": [name.removeprefix("AUDIT_EVENT_TYPE_") for name in reversed(newest_first)],
        "unknownEnvironment": refusal("NOT_FOUND", "ERROR_REASON_ENVIRONMENT_NOT_FOUND"),
    }
    assert newest_first[0] == "AUDIT_EVENT_TYPE_USER_RESET"
    assert proxy.calls == 2


def test_the_error_details_come_from_the_locked_googleapis_proto() -> None:
    """ErrorInfo, BadRequest and RetryInfo (src/gen/google/rpc) are generated from a copy
    of googleapis' error_details.proto: the one the locked googleapis-common-protos ships."""
    from google.rpc import error_details_pb2

    shipped = Path(error_details_pb2.__file__).with_name("error_details.proto")
    copy = CLIENT_DIR / "proto" / "google" / "rpc" / "error_details.proto"
    assert copy.read_bytes() == shipped.read_bytes()
