"""The lock files pin every dependency with hashes and match what pyproject.toml declares;
`make install` installed exactly them; `make sbom` writes valid CycloneDX of the runtime."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path
from typing import cast

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from locks import applies, read_lock

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("lock", "build", "runtime", "client")
LOCAL_PACKAGES = {"mfa-client", "mfa-service"}  # installed from the tree, never locked

# Environments a universal lock must serve: this machine, newer Pythons, other systems.
# Every marker variable is a string (packaging types the environment as a TypedDict).
_DEFAULT = cast(dict[str, str], default_environment())
ENVIRONMENTS: list[dict[str, str]] = [
    _DEFAULT,
    {**_DEFAULT, "python_version": "3.13", "python_full_version": "3.13.1"},
    {**_DEFAULT, "sys_platform": "win32", "platform_system": "Windows"},
    {**_DEFAULT, "sys_platform": "darwin", "platform_system": "Darwin"},
]


def _pyproject(path: str) -> dict[str, object]:
    with (ROOT / path).open("rb") as file:
        return tomllib.load(file)


def declared(*, dev: bool) -> list[Requirement]:
    """The dependencies both pyproject.toml files declare (and the dev extra's)."""
    found = []
    for path in ("pyproject.toml", "clients/python/pyproject.toml"):
        project = _pyproject(path)["project"]
        assert isinstance(project, dict)
        names = list(project["dependencies"])
        if dev:
            names += project.get("optional-dependencies", {}).get("dev", [])
        found += [Requirement(name) for name in names]
    return [r for r in found if canonicalize_name(r.name) not in LOCAL_PACKAGES]


@pytest.mark.parametrize("name", LOCKS)
def test_every_locked_requirement_is_pinned_with_sha256_hashes(name: str) -> None:
    pins = read_lock(name)
    assert len(pins) >= 2
    assert all(len(pin.hashes) >= 1 for pin in pins.values())


@pytest.mark.parametrize("name", LOCKS)
def test_a_lock_names_no_index_host_or_path(name: str) -> None:
    """pip would follow an option in the file; the project's files name no host or path."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    options = [
        line.strip()
        for line in text.splitlines()
        if line.lstrip().startswith("-") and not line.lstrip().startswith("--hash=sha256:")
    ]
    assert options == []  # no -e, --index-url, --find-links, --trusted-host, -r ...
    assert "://" not in text and "file:" not in text
    assert not re.search(r"(^|\s)(/|~)\w", text), "an absolute path in the lock"


@pytest.mark.parametrize(("name", "dev"), [("lock", True), ("runtime", False)])
def test_the_lock_covers_every_declared_dependency(name: str, dev: bool) -> None:
    pins = read_lock(name)
    requirements = declared(dev=dev)
    assert {"grpcio", "uvloop"} <= {canonicalize_name(r.name) for r in requirements}
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is declared but not in {name}.txt: make lock"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{name}.txt pins {pin.name}=={pin.version}, the declaration wants {requirement}"
        )
        for environment in ENVIRONMENTS:
            if applies(requirement.marker, environment):
                assert applies(pin.marker, environment), f"{pin.name} {pin.marker}: {environment}"


def test_generated_code_pins_are_kept_and_uvloop_stays_off_windows() -> None:
    pins = read_lock("lock")
    assert pins["grpcio-tools"].version == Version("1.85.1")
    assert pins["mypy-protobuf"].version == Version("5.1.0")
    windows = ENVIRONMENTS[2]
    assert not applies(pins["uvloop"].marker, windows)
    assert applies(pins["uvloop"].marker, ENVIRONMENTS[0])


def test_build_runtime_and_client_locks_are_the_main_lock_s_pins() -> None:
    lock = read_lock("lock")
    for name in ("build", "runtime", "client"):
        for key, pin in read_lock(name).items():
            assert lock.get(key) == pin, f"{name}.txt: {key} differs from lock.txt"


def test_the_runtime_lock_leaves_the_tools_out() -> None:
    """A production image gets the service's dependencies, not the test, lint or build tools
    (a dev dependency that the service also needs, like cbor2 for webauthn, stays)."""
    tools = {"pytest", "ruff", "mypy", "grpcio-tools", "playwright", "pip-audit", "uv"}
    tools |= {"cyclonedx-bom", "pip", "setuptools"}
    assert tools <= read_lock("lock").keys()
    assert tools & read_lock("runtime").keys() == set()


def test_the_client_lock_holds_the_client_s_dependencies_alone() -> None:
    """What the mfa-client wheel installs with (tests/test_client_wheel.py): each of its
    declared dependencies in range, and nothing of the service or the tools."""
    pins = read_lock("client")
    project = _pyproject("clients/python/pyproject.toml")["project"]
    assert isinstance(project, dict)
    for text in project["dependencies"]:
        requirement = Requirement(text)
        pin = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pin.version), f"client.txt: {requirement}"
    service_only = {"asyncpg", "webauthn", "pgserver", "pytest", "pip", "setuptools"}
    assert service_only & pins.keys() == set()


def test_the_build_lock_satisfies_both_build_systems() -> None:
    build = read_lock("build")
    assert "pip" in build
    for path in ("pyproject.toml", "clients/python/pyproject.toml"):
        build_system = _pyproject(path)["build-system"]
        assert isinstance(build_system, dict)
        for text in build_system["requires"]:
            requirement = Requirement(text)
            pin = build[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(pin.version), f"{path}: {requirement}"


def test_the_environment_holds_exactly_the_locked_versions() -> None:
    """What `make install` put in this virtual environment is the lock, version for version."""
    pins = [pin for pin in read_lock("lock").values() if applies(pin.marker, ENVIRONMENTS[0])]
    assert len(pins) > 50
    wrong = {}
    for pin in pins:
        try:
            installed = Version(metadata.version(pin.name))
        except metadata.PackageNotFoundError:
            wrong[pin.name] = "missing"
            continue
        if installed != pin.version:
            wrong[pin.name] = f"{installed} installed, {pin.version} locked"
    assert wrong == {}


def test_make_sbom_writes_valid_cyclonedx_listing_the_runtime_lock(tmp_path: Path) -> None:
    output = tmp_path / "sbom" / "mfa-service.cdx.json"
    # -o: never reinstall from inside a test; the environment is checked above.
    subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "sbom", f"SBOM={output}"],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    text = output.read_text()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, str(error)[:500]
    sbom = json.loads(text)
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    root = sbom["metadata"]["component"]
    project = _pyproject("pyproject.toml")["project"]
    assert isinstance(project, dict)
    assert (root["name"], root["version"]) == ("mfa-service", project["version"])
    runtime = read_lock("runtime")
    components = {canonicalize_name(c["name"]): c for c in sbom["components"]}
    assert components.keys() == runtime.keys()
    for key, component in components.items():
        pin = runtime[key]
        assert Version(component["version"]) == pin.version
        assert component["purl"] == f"pkg:pypi/{key}@{component['version']}"
        hashes = {
            h["content"]
            for reference in component.get("externalReferences", [])
            for h in reference.get("hashes", [])
            if h["alg"] == "SHA-256"
        }
        assert hashes == pin.hashes, key
    assert "timestamp" not in sbom["metadata"]  # reproducible: the same lock, the same file
