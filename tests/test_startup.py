"""The command line (issue 21): ``--version``; ``serve --help`` lists every variable with
its default.

(No ``DATABASE_URL`` outside ``--dev``: tests/test_config.py's one-line table.)
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from test_config import run_command

from mfa_service.config import VARIABLES


def test_version(tmp_path: Path) -> None:
    result = run_command(["--version"], {}, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"mfa-service {metadata.version('mfa-service')}\n"
    assert re.fullmatch(r"mfa-service \d+\.\d+\.\d+\S*\n", result.stdout)


def test_serve_help_lists_every_variable_with_its_default(tmp_path: Path) -> None:
    result = run_command(["serve", "--help"], {}, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    listed = dict(re.findall(r"^  ([A-Z][A-Z_]+) \[(.*)\]$", result.stdout, flags=re.MULTILINE))
    assert listed == {variable.name: variable.shown_default for variable in VARIABLES}
    assert listed["MFA_LISTEN_ADDR"] == "127.0.0.1:50051"
    assert listed["DATABASE_URL"] == "required"
    assert listed["MFA_ALLOW_PLAINTEXT"] == "false; --dev: true"
