"""The lock files of requirements/ read as pins (name, version, marker, hashes), for the
tests that hold them to the declarations and install from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"
HASH = re.compile(r"\s--hash=sha256:([0-9a-f]{64})(?=\s|$)")


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: frozenset[str]


def _entries(text: str) -> list[str]:
    """The lock's logical lines: continuations joined, comments dropped."""
    entries, current = [], ""
    for line in text.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        current += line.rstrip("\\").rstrip() + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                entries.append(current.strip())
            current = ""
    return entries


def read_lock(name: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for entry in _entries((REQUIREMENTS / f"{name}.txt").read_text()):
        hashes = frozenset(HASH.findall(" " + entry))
        requirement = Requirement(HASH.sub("", " " + entry).strip())
        (specifier,) = requirement.specifier  # exactly one: the pin
        assert specifier.operator == "==" and "*" not in specifier.version, entry[:80]
        assert requirement.url is None and not requirement.extras, entry[:80]
        assert hashes, f"{requirement.name} has no --hash=sha256: in {name}.txt"
        key = canonicalize_name(requirement.name)
        assert key not in pins, f"{key} twice in {name}.txt"
        pins[key] = Pin(key, Version(specifier.version), requirement.marker, hashes)
    return pins


def applies(marker: Marker | None, environment: dict[str, str]) -> bool:
    return marker is None or marker.evaluate(environment)
