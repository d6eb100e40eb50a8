"""What many tests share: the paths of the shared data and one way to run a command."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mobilegen.cli import export_cli, main_cli

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_V2 = SHARED / "models" / "mobilegen_v2_student.pt"


def run(*args, cli=export_cli):
    """A command as a user types it, in this process; returns the Result (exit code, output)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_main(*args):
    return run(*args, cli=main_cli)


def run_export(*args):
    """A command that must succeed."""
    res = run(*args)
    assert res.exit_code == 0, res.output + res.stderr
    return res


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())
