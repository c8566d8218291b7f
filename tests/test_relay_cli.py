"""The dockgate-mcp-relay command line: help, render, apply, exit codes, hostile input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcprelay.cli import main, parse_listen
from mcprelay.errors import InputError

SERVERS_YAML = """\
servers:
  - name: github
    image: mcp/github:latest
    title: GitHub
    secrets:
      - {name: github.personal_access_token, env: GITHUB_PERSONAL_ACCESS_TOKEN, value: ghp_x}
  - name: fetch
    image: mcp/fetch@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"""


def relay(*args: str, stdin: str = "", env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcprelay", *args], input=stdin,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})


def test_help_names_every_command_the_environment_and_the_exit_codes() -> None:
    """--help is the operator's manual: commands, DOCKER_HOST and what each exit code means."""
    result = relay("--help")
    assert result.returncode == 0
    for word in ("render", "apply", "restart", "serve-hook", "DOCKER_HOST", "DOCKER_TLS_VERIFY",
                 "20 denied by the proxy", "21 gateway container missing"):
        assert word in result.stdout
    apply_help = relay("apply", "--help").stdout
    for flag in ("--catalog", "--env-file", "--stop-timeout", "--readiness", "--health-url",
                 "--no-restart", "--retries"):
        assert flag in apply_help


def test_render_prints_the_catalog_from_stdin() -> None:
    """render validates and prints without touching any file or the Docker API."""
    result = relay("render", "-", stdin=SERVERS_YAML)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert sorted(document["registry"]) == ["fetch", "github"]
    assert "ghp_x" not in result.stdout


def test_apply_without_restart_writes_catalog_env_and_state(tmp_path: Path) -> None:
    """apply with --no-restart is the offline half of the relay (files only)."""
    servers = tmp_path / "servers.yaml"
    servers.write_text(SERVERS_YAML)
    result = relay("apply", str(servers), "--catalog", str(tmp_path / "docker-mcp.yaml"),
                   "--env-file", str(tmp_path / "secrets.env"), "--state",
                   str(tmp_path / "state.json"), "--no-restart")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["servers"] == ["fetch", "github"]
    assert (tmp_path / "secrets.env").read_text() == "github.personal_access_token=ghp_x\n"
    assert json.loads((tmp_path / "state.json").read_text())["servers"][0]["name"] == "fetch"


def test_json_input_is_accepted_like_yaml(tmp_path: Path) -> None:
    """The backend may hand over JSON; both formats go through the same validation."""
    result = relay("apply", "-", "--catalog", str(tmp_path / "c.yaml"), "--no-restart",
                   stdin=json.dumps([{"name": "fetch", "image": "mcp/fetch"}]))
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load((tmp_path / "c.yaml").read_text())["registry"]) == ["fetch"]


@pytest.mark.parametrize("server", [
    {"name": "evil\nregistry:\n  pwned:\n    image: attacker/x", "image": "mcp/x"},
    {"name": "../../etc", "image": "mcp/x"},
    {"name": "n" * 10240, "image": "mcp/x"},
    {"name": "ok", "image": "mcp/x latest"},
    {"name": "ok", "image": "mcp/x\nregistry: {}"},
])
def test_hostile_input_exits_10_and_leaves_the_previous_catalog(
        tmp_path: Path, server: dict[str, str]) -> None:
    """Rejected before any write: same bytes, same mtime, no stray temporary files."""
    catalog = tmp_path / "docker-mcp.yaml"
    good = relay("apply", "-", "--catalog", str(catalog), "--no-restart",
                 stdin=json.dumps([{"name": "fetch", "image": "mcp/fetch"}]))
    assert good.returncode == 0, good.stderr
    before = (catalog.read_bytes(), catalog.stat().st_mtime_ns)
    result = relay("apply", "-", "--catalog", str(catalog), "--no-restart",
                   stdin=json.dumps([server]))
    assert result.returncode == 10
    assert result.stderr.startswith("dockgate-mcp-relay: invalid_input: ")
    assert len(result.stderr) < 400
    assert result.stdout == ""
    assert (catalog.read_bytes(), catalog.stat().st_mtime_ns) == before
    assert [p.name for p in tmp_path.iterdir()] == ["docker-mcp.yaml"]


def test_input_that_is_neither_json_nor_yaml_exits_10(tmp_path: Path) -> None:
    """A parse error names the source instead of printing a traceback."""
    result = relay("render", "-", stdin="servers: [unclosed")
    assert result.returncode == 10
    assert "stdin is neither JSON nor YAML" in result.stderr


def test_missing_input_file_exits_10(tmp_path: Path) -> None:
    """A wrong path is an input error with the path in the message."""
    result = relay("render", str(tmp_path / "none.yaml"))
    assert result.returncode == 10
    assert "none.yaml" in result.stderr


def test_usage_errors_exit_2() -> None:
    """argparse's usage errors keep their conventional code, distinct from the relay's."""
    assert relay("apply").returncode == 2
    assert relay("restart", "--readiness", "maybe").returncode == 2


def test_main_in_process_renders_and_reports_input_errors(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The entry point itself (not only `python -m`): output on stdout, errors on stderr."""
    servers = tmp_path / "servers.yaml"
    servers.write_text(SERVERS_YAML)
    assert main(["render", str(servers), "--display-name", "Mine"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["displayName"] == "Mine"
    servers.write_text("- name: Bad\n  image: mcp/x\n")
    assert main(["render", str(servers)]) == 10
    assert "invalid server name 'Bad'" in capsys.readouterr().err


def test_main_in_process_applies_without_restart(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """apply's JSON outcome names the catalog and says nothing was restarted."""
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"servers": [{"name": "fetch", "image": "mcp/fetch"}]}))
    catalog = tmp_path / "catalog.yaml"
    assert main(["apply", str(servers), "--catalog", str(catalog), "--no-restart"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome == {"status": "ok", "catalog": str(catalog), "servers": ["fetch"],
                       "restarted": None}


def test_invalid_docker_host_is_refused_before_writing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DOCKER_HOST the relay cannot use stops it before the catalog changes."""
    monkeypatch.setenv("DOCKER_HOST", "ssh://user@host")
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps([{"name": "fetch", "image": "mcp/fetch"}]))
    catalog = tmp_path / "catalog.yaml"
    assert main(["apply", str(servers), "--catalog", str(catalog)]) == 10
    assert "DOCKER_HOST='ssh://user@host' is not supported" in capsys.readouterr().err
    assert not catalog.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--gateway", "bad name"], "invalid gateway container name"),
    (["--stop-timeout", "-1"], "must not be negative"),
    (["--settle", "-0.5"], "settle must not be negative"),
    (["--health-url", "ftp://gw/health"], "must be http:// or https://"),
])
def test_invalid_restart_options_exit_10(capsys: pytest.CaptureFixture[str], args: list[str],
                                         message: str) -> None:
    """Restart settings are validated up front, each with a message naming the problem."""
    assert main(["restart", *args]) == 10
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:8765", ("127.0.0.1", 8765)),
    ("[::1]:8765", ("::1", 8765)),
])
def test_listen_addresses_parse(value: str, expected: tuple[str, int]) -> None:
    """--listen takes HOST:PORT, IPv6 in brackets."""
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8765", ":8765", "127.0.0.1:", "127.0.0.1:0",
                                   "127.0.0.1:70000", "127.0.0.1:http"])
def test_bad_listen_addresses_are_input_errors(value: str) -> None:
    """A listen address without a host or with a bad port is refused with an example."""
    with pytest.raises(InputError, match="expected HOST:PORT"):
        parse_listen(value)


def test_empty_token_file_is_refused(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    """An empty token would make every request 'authorized': refuse to start."""
    token = tmp_path / "token"
    token.write_text("\n")
    assert main(["serve-hook", "--listen", "127.0.0.1:1", "--state", str(tmp_path / "s.json"),
                 "--catalog", str(tmp_path / "c.yaml"), "--token-file", str(token)]) == 10
    assert "--token-file is empty" in capsys.readouterr().err
