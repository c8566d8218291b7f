"""docs/mcp-gateway.md: the quickstart block and the migration checks, run as written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import docker
import pytest
import yaml

from conftest import DOCKER_SOCKET, free_port, unique_name

pytestmark = pytest.mark.daemon

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "mcp-gateway.md"
MARKER = "<!-- quickstart: tests/test_e2e_docs.py runs this block -->"
DOC_LISTEN = "127.0.0.1:2375"
DOC_GATEWAY = "export GATEWAY=pocketcoder-mcp-gateway"
BACKGROUND = "    dockgate serve --listen tcp://127.0.0.1:2375 &\n"


def quickstart() -> str:
    text = DOC.read_text()
    assert MARKER in text
    match = re.search(r"```sh\n(.*?)```", text.split(MARKER, 1)[1], re.DOTALL)
    assert match is not None
    return match.group(1)


def shell_env() -> dict[str, str]:
    """The test's environment, with the doc's dockgate forwarding to the test daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["SOCKET_PATH"] = DOCKER_SOCKET
    return env


def test_quickstart_block_sets_up_a_working_restart_only_relay(
        docker_client: docker.DockerClient, busybox_image: str, tmp_path: Path) -> None:
    """From nothing to a restarted gateway and a refused 'docker rm', with the doc's commands."""
    script = quickstart()
    first, rest = script.split("\n", 1)
    assert first == "pip install ."  # the test environment has the package installed
    assert DOC_GATEWAY in rest
    assert BACKGROUND in rest
    gateway = unique_name("relay-docgw")
    # A gateway that stops on SIGTERM, so the doc's default 10 s stop timeout is not waited.
    container = docker_client.containers.run(
        busybox_image, ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"],
        name=gateway, network_mode="none", detach=True)
    before = container.attrs["State"]["StartedAt"]
    port = free_port()
    rest = rest.replace(DOC_GATEWAY, f"export GATEWAY={gateway}")
    rest = rest.replace(BACKGROUND, BACKGROUND + "echo $! > dockgate.pid\n")
    rest = rest.replace(DOC_LISTEN, f"127.0.0.1:{port}")
    # Files, not pipes: the backgrounded dockgate keeps its inherited outputs open.
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    try:
        with out.open("w") as stdout, err.open("w") as stderr:
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", rest], cwd=tmp_path,
                                    stdout=stdout, stderr=stderr, timeout=120,
                                    env=shell_env(), check=False)
    finally:
        pid_file = tmp_path / "dockgate.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
    lines = out.read_text().splitlines()
    assert result.returncode == 0, out.read_text() + err.read_text()
    outcome = json.loads(lines[0])
    assert (outcome["status"], outcome["servers"]) == ("ok", ["github"])
    assert lines[-1] == "refused, as it should be"
    assert f"dockgate: DELETE /containers/{gateway} denied" in err.read_text()
    container.reload()
    assert container.attrs["State"]["Running"]
    assert container.attrs["State"]["StartedAt"] == outcome["restarted"]["started_at"] != before
    catalog = yaml.safe_load((tmp_path / "mcp_config" / "docker-mcp.yaml").read_text())
    assert catalog["registry"]["github"]["image"] == "mcp/github:latest"
    assert (tmp_path / "mcp_config" / "secrets.env").read_text() == (
        "github.personal_access_token=ghp_example\n")
    container.remove(force=True)


def test_migration_check_commands_decide_as_the_doc_says() -> None:
    """The migration steps' `dockgate audit` and `dockgate check` lines do what is claimed."""
    text = DOC.read_text()
    check = ("ALLOW_RESTART_CONTAINERS=pocketcoder-mcp-gateway dockgate check "
             "POST /containers/pocketcoder-mcp-gateway/restart")
    assert check in text
    assert "CONTAINERS=1 POST=1 dockgate audit" in text
    env = {**shell_env(), "ALLOW_RESTART_CONTAINERS": "pocketcoder-mcp-gateway"}
    allowed = subprocess.run(["dockgate", "check", "POST",
                              "/containers/pocketcoder-mcp-gateway/restart"],
                             capture_output=True, text=True, env=env, check=False)
    denied = subprocess.run(["dockgate", "check", "POST", "/containers/create"],
                            capture_output=True, text=True, env=env, check=False)
    assert (allowed.returncode, denied.returncode) == (0, 1)
    assert "ALLOWED" in allowed.stdout
    assert "container.create is not granted" in denied.stdout
    audit = subprocess.run(["dockgate", "audit"], capture_output=True, text=True, check=False,
                           env={**shell_env(), "CONTAINERS": "1", "POST": "1"})
    assert audit.returncode == 0
    assert "CONTAINERS='1', POST='1'" in audit.stdout
