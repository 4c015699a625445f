"""The mfa-client distribution as another service gets it, and its reference.

``python -m build`` makes the sdist and the wheel (with this environment's locked
setuptools, not one fetched unchecked), ``twine check --strict`` passes both, and the
wheel installs into a fresh virtual environment with nothing but its dependencies: the
pins and hashes of requirements/client.txt, from wheels, through pip's configured index.
There tests/wheel_flow.py runs a complete flow against the real in-process server, with
the sync client and with the async one (``python -I``: nothing of the repository on its
path). ``make docs`` writes the reference of every public name.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from packaging.markers import default_environment

import mfa_client
from helpers import FakeClock
from locks import applies, read_lock
from mfa_client import ServiceClient
from mfa_service import app as app_module

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
FLOW = Path(__file__).with_name("wheel_flow.py")
ENV = "env-wheel"
pytestmark = pytest.mark.environments(ENV)


@dataclass(frozen=True)
class Installed:
    sdist: Path
    wheel: Path
    python: Path  # of the fresh virtual environment that holds the wheel


def run(*command: str | Path, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("client-wheel")
    source, dist, venv = work / "source", work / "dist", work / "venv"
    # A copy: building writes egg-info and build/ beside the sources.
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    )
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source)
    [sdist], [wheel] = list(dist.glob("*.tar.gz")), list(dist.glob("*.whl"))
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)

    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    # --require-hashes: the wheel's own dependencies must all be pinned here, or pip stops.
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    requirements = work / "requirements.txt"
    requirements.write_text(
        (ROOT / "requirements" / "client.txt").read_text()
        + f"mfa-client @ {wheel.as_uri()} --hash=sha256:{digest}\n"
    )
    pip = (python, "-m", "pip", "--disable-pip-version-check")
    run(
        *pip, "install", "--quiet", "--require-hashes", "--only-binary", ":all:", "-r", requirements
    )
    run(*pip, "check")
    return Installed(sdist, wheel, python)


def test_the_distributions_hold_the_typed_package_and_the_stubs(installed: Installed) -> None:
    names = run(sys.executable, "-m", "zipfile", "-l", installed.wheel)
    for path in (
        "mfa_client/py.typed",
        "mfa_client/_sync.py",
        "mfa/v1/types_pb2.pyi",
        "mfa/py.typed",
    ):
        assert path in names, path
    assert "tests/" not in names and "mfa_service/" not in names
    assert installed.wheel.name == "mfa_client-0.2.0-py3-none-any.whl"
    size = installed.wheel.stat().st_size
    assert 20_000 < size < 200_000, size  # stubs and client, no stray files


def expected_distributions() -> list[str]:
    """What the fresh environment holds: the wheel, the client lock's pins for this
    machine, and what ``python -m venv`` puts in every environment."""
    environment = cast(dict[str, str], default_environment())
    pins = [pin.name for pin in read_lock("client").values() if applies(pin.marker, environment)]
    return sorted({*pins, "mfa-client", "pip", "setuptools"})


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_installed_wheel_runs_a_whole_flow(
    mode: str,
    installed: Installed,
    app: app_module.Application,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    process = await asyncio.create_subprocess_exec(
        installed.python,
        "-I",  # neither the repository nor PYTHON* variables: the venv alone
        FLOW,
        f"127.0.0.1:{app.port}",
        ENV,
        f"{mode}-user",
        str(clock.now().timestamp()),
        mode,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)
    assert seen.pop("installed") == {"client": True, "distributions": expected_distributions()}
    assert seen == {
        "recovery_codes": 10,
        "wrong_code": ["PERMISSION_DENIED", "ERROR_REASON_VERIFICATION_FAILED"],
        "validations": [
            "DECISION_REASON_TOKEN_VALID",
            "DECISION_REASON_PAYLOAD_MISMATCH",
            "DECISION_REASON_TOKEN_REVOKED",
        ],
        "reset": [1, 1],
        "methods_after_reset": [],
        "create_again": ["ALREADY_EXISTS", "ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS"],
    }


def test_make_docs_writes_the_reference_of_every_public_name(tmp_path: Path) -> None:
    # -o: never reinstall from inside a test.
    done = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "docs", f"DOCS={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Warn" not in done.stderr, done.stderr  # an annotation pdoc could not read
    page = (tmp_path / "mfa_client.html").read_text()
    for name in mfa_client.__all__:
        assert f'id="{name}"' in page, name
    services = [getattr(mfa_client, name) for name in mfa_client.__all__]
    for kind in [s for s in services if isinstance(s, type) and issubclass(s, ServiceClient)]:
        for method in (n for n in vars(kind) if not n.startswith("_")):
            assert f'id="{kind.__name__}.{method}"' in page, f"{kind.__name__}.{method}"
