"""The command line teaches: help that names every variable, errors that say what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dockgate import __version__, compat, policy
from dockgate.cli import build


def dockgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dockgate", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env or {"PATH": "/usr/bin"})


def test_serve_help_names_every_access_variable() -> None:
    """A Tecnativa user looking for CONTAINERS or ALLOW_RESTARTS finds it in --help."""
    shown = dockgate("serve", "--help")
    assert shown.returncode == 0
    words = shown.stdout.split()
    for name in (*compat.variables("linuxserver"), policy.RESTART_VARIABLE + "=a,b",
                 policy.INSPECT_VARIABLE + "=a,b", "preset:NAME"):
        assert name in words, name


def test_a_bad_setting_exits_2_with_one_line_naming_it() -> None:
    """No traceback: the variable, its value and what is expected."""
    failed = dockgate("serve", env={"PATH": "/usr/bin", "DOCKGATE_WORKERS": "two"})
    assert failed.returncode == 2
    assert failed.stderr == ("dockgate: DOCKGATE_WORKERS='two' is invalid: must be a whole "
                             "number greater than 0\n")


def test_policy_lint_names_the_line_and_the_fix(tmp_path: Path) -> None:
    """lint reports FILE:LINE and a suggestion for a bad policy, exit 1; a good one is OK."""
    assert dockgate("policy", "lint", "preset:restart-only").stdout == "preset:restart-only: OK\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  p:\n    grants:\n      - allow: [container.restrat]\n")
    linted = dockgate("policy", "lint", str(bad))
    assert linted.returncode == 1
    assert linted.stdout.startswith(f"{bad}:4: unknown operation 'container.restrat' (did you "
                                    "mean 'container.restart'?)")


def test_both_commands_print_their_version() -> None:
    """dockgate and dockgate-mcp-relay say which release they are (bug reports need it),
    dockgate also which build (the pure-Python default, or compiled with mypyc)."""
    shown = dockgate("--version")
    assert shown.stdout == f"dockgate {__version__} ({build()})\n"
    assert shown.stdout.endswith(("(pure Python)\n", "(compiled with mypyc)\n"))
    relay = subprocess.run([sys.executable, "-m", "mcprelay", "--version"], capture_output=True,
                           text=True, timeout=60, check=False)
    assert relay.stdout == f"dockgate-mcp-relay {__version__}\n"


def test_the_license_file_is_the_apache_license_pyproject_names() -> None:
    """pyproject says Apache-2.0; the distribution carries the text."""
    text = (Path(__file__).resolve().parent.parent / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
