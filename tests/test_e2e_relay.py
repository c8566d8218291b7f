"""End to end: approval → catalog → restart through a restart-only dockgate → running again.

The gateway stand-in is a busybox container (``--network none``) whose PID 1
``sleep`` ignores SIGTERM, so a restart really waits for the stop timeout: a relay
that answered early would be caught. dockgate grants restart and inspect of that
one container (ALLOW_RESTART_CONTAINERS / ALLOW_INSPECT_CONTAINERS) and nothing else.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from conftest import (
    DockgateProcess,
    StartDockgate,
    discard,
    free_port,
    unique_name,
    wait_for_port,
)

pytestmark = pytest.mark.daemon

GITHUB = {"name": "github", "image": "mcp/github:latest", "title": "GitHub",
          "secrets": [{"name": "github.personal_access_token",
                       "env": "GITHUB_PERSONAL_ACCESS_TOKEN", "value": "ghp_test"}]}


def run_gateway(client: docker.DockerClient, image: str, name: str,
                command: list[str] | None = None) -> Any:
    return client.containers.run(image, command or ["sleep", "3600"], name=name,
                                 network_mode="none", detach=True)


def relay_env(docker_host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    return {**env, "DOCKER_HOST": docker_host}


def relay(docker_host: str, *args: str, stdin: str = "",
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcprelay", *args], input=stdin,
                          capture_output=True, text=True, check=False, timeout=120,
                          env=relay_env(docker_host))


def started_at(client: docker.DockerClient, name: str) -> tuple[bool, str]:
    state = client.api.inspect_container(name)["State"]
    return state["Running"], state["StartedAt"]


@dataclass
class Hook:
    process: subprocess.Popen[bytes]
    port: int
    catalog: Path
    env_file: Path

    def post(self, event: object) -> tuple[int, dict[str, Any], float]:
        began = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request("POST", "/events", json.dumps(event).encode(),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read()), time.monotonic() - began
        finally:
            connection.close()


@pytest.fixture
def gateway(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    name = unique_name("gw")
    container = run_gateway(docker_client, busybox_image, name)
    yield name
    discard(container)


@pytest.fixture
def proxy(start_dockgate: StartDockgate, gateway: str) -> DockgateProcess:
    """dockgate with the relay's least privilege: restart and inspect of the gateway only."""
    return start_dockgate(env={"ALLOW_RESTART_CONTAINERS": gateway,
                               "ALLOW_INSPECT_CONTAINERS": gateway})


@pytest.fixture
def hook(proxy: DockgateProcess, gateway: str, tmp_path: Path) -> Iterator[Hook]:
    port = free_port()
    log = (tmp_path / "hook.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mcprelay", "-v", "serve-hook", "--listen", f"127.0.0.1:{port}",
         "--state", str(tmp_path / "state.json"), "--catalog", str(tmp_path / "docker-mcp.yaml"),
         "--env-file", str(tmp_path / "secrets.env"), "--gateway", gateway,
         "--stop-timeout", "2"],
        env=relay_env(proxy.docker_host), stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port)
    yield Hook(process, port, tmp_path / "docker-mcp.yaml", tmp_path / "secrets.env")
    process.terminate()
    process.wait(timeout=10)
    log.close()


def test_approval_rewrites_the_catalog_and_succeeds_only_once_the_gateway_runs_again(
        docker_client: docker.DockerClient, gateway: str, proxy: DockgateProcess,
        hook: Hook) -> None:
    """The seed's whole flow through dockgate, with the readiness the seed never awaited."""
    running_before, before = started_at(docker_client, gateway)
    assert running_before
    status, answer, seconds = hook.post({"event": "approved", "server": GITHUB})
    running, after = started_at(docker_client, gateway)
    assert status == 200, answer
    assert answer["restarted"]["started_at"] == after != before
    assert running
    assert seconds >= 2, "the stop timeout (sleep ignores SIGTERM) must have been waited out"
    assert yaml.safe_load(hook.catalog.read_text()) == {
        "name": "docker-mcp", "displayName": "Approved MCP servers",
        "registry": {"github": {
            "title": "GitHub", "description": "", "type": "server",
            "image": "mcp/github:latest", "longLived": False,
            "secrets": [{"name": "github.personal_access_token",
                         "env": "GITHUB_PERSONAL_ACCESS_TOKEN"}]}}}
    assert hook.env_file.read_text() == "github.personal_access_token=ghp_test\n"
    audit = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    calls = [(a["operation"], a["decision"], a["status"]) for a in audit]
    assert calls[:2] == [("container.inspect", "allow", 200),
                         ("container.restart", "allow", 204)]
    # Readiness: inspects until the new start has stayed running for --settle (1 s).
    assert len(calls) >= 3
    assert set(calls[2:]) == {("container.inspect", "allow", 200)}
    assert audit[1]["target"] == f"/containers/{gateway}/restart?t=2"


def test_revocation_restarts_again_and_empties_the_registry(
        docker_client: docker.DockerClient, gateway: str, hook: Hook) -> None:
    """Revoking is the same path: new catalog, restart, readiness."""
    hook.post({"event": "approved", "server": GITHUB})
    _, before = started_at(docker_client, gateway)
    status, answer, _ = hook.post({"event": "revoked", "server": {"name": "github"}})
    assert (status, answer["servers"]) == (200, [])
    assert started_at(docker_client, gateway) == (True, answer["restarted"]["started_at"])
    assert answer["restarted"]["started_at"] != before
    assert yaml.safe_load(hook.catalog.read_text())["registry"] == {}


def test_hostile_approval_is_rejected_without_touching_catalog_or_gateway(
        docker_client: docker.DockerClient, gateway: str, hook: Hook) -> None:
    """Invalid input stops before any write or restart: the gateway keeps the good catalog."""
    hook.post({"event": "approved", "server": GITHUB})
    catalog = hook.catalog.read_bytes()
    state = started_at(docker_client, gateway)
    for server in ({"name": "x\nregistry:\n  evil: {}", "image": "mcp/x"},
                   {"name": "../../etc", "image": "mcp/x"},
                   {"name": "x" * 10240, "image": "mcp/x"},
                   {"name": "spaces", "image": "mcp/x latest"}):
        status, answer, _ = hook.post({"event": "approved", "server": server})
        assert (status, answer["error"]) == (422, "invalid_input")
    assert hook.catalog.read_bytes() == catalog
    assert started_at(docker_client, gateway) == state


def test_gateway_that_dies_after_the_restart_is_reported_not_ready(
        docker_client: docker.DockerClient, busybox_image: str,
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """A 204 is not success: a gateway that exits on start must fail the approval."""
    name = unique_name("gw")
    container = run_gateway(docker_client, busybox_image, name, [
        "sh", "-c", "test -e /started && exit 3; touch /started; exec sleep 3600"])
    proxy = start_dockgate(env={"ALLOW_RESTART_CONTAINERS": name,
                                "ALLOW_INSPECT_CONTAINERS": name})
    result = relay(proxy.docker_host, "apply", "-", "--catalog", str(tmp_path / "c.yaml"),
                   "--gateway", name, "--stop-timeout", "0", "--ready-timeout", "2",
                   stdin=json.dumps([{"name": "fetch", "image": "mcp/fetch"}]))
    discard(container)
    assert result.returncode == 25, result.stderr
    assert "not running again" in result.stderr
    assert "exit code 3" in result.stderr
    assert result.stdout == ""


def test_missing_gateway_through_dockgate_is_reported_missing_not_denied(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """The policy names the gateway, so dockgate may say it is missing: exit 21, not 20."""
    name = unique_name("gw-missing")
    proxy = start_dockgate(env={"ALLOW_RESTART_CONTAINERS": name,
                                "ALLOW_INSPECT_CONTAINERS": name})
    result = relay(proxy.docker_host, "restart", "--gateway", name)
    assert result.returncode == 21, result.stderr
    assert f"gateway container {name} not found" in result.stderr
    assert f"No such container: {name}" in result.stderr
    assert result.stdout == ""


def test_restart_denied_by_policy_shows_dockgates_reason(
        docker_client: docker.DockerClient, gateway: str, start_dockgate: StartDockgate) -> None:
    """A policy for another container: exit 20 and the proxy's own explanation, no restart."""
    proxy = start_dockgate(env={"ALLOW_RESTART_CONTAINERS": "some-other-container"})
    state = started_at(docker_client, gateway)
    result = relay(proxy.docker_host, "restart", "--gateway", gateway, "--readiness", "none")
    assert result.returncode == 20
    assert f"denied restart of {gateway}" in result.stderr
    assert "is not granted by policy" in result.stderr
    assert started_at(docker_client, gateway) == state


def test_proxy_down_is_retried_then_reported_unreachable() -> None:
    """Bounded retries with backoff, each one logged, then a clear 'unreachable'."""
    result = relay(f"tcp://127.0.0.1:{free_port()}", "restart", "--gateway", "gw-x",
                   "--retries", "3", "--backoff", "0.05")
    assert result.returncode == 22
    assert result.stderr.count("retrying in") == 3
    assert "unreachable: cannot connect to tcp://127.0.0.1:" in result.stderr
    assert "gave up after 4 attempts" in result.stderr


def test_proxy_that_comes_up_during_the_retries_is_used(
        docker_client: docker.DockerClient, gateway: str,
        start_dockgate: StartDockgate) -> None:
    """A proxy restarting alongside the backend costs a retry, not a failed approval."""
    port = free_port()
    _, before = started_at(docker_client, gateway)
    process = subprocess.Popen(
        [sys.executable, "-m", "mcprelay", "restart", "--gateway", gateway, "--stop-timeout",
         "1", "--retries", "6", "--backoff", "0.5"],
        env=relay_env(f"tcp://127.0.0.1:{port}"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    start_dockgate(port=port, env={"ALLOW_RESTART_CONTAINERS": gateway,
                                   "ALLOW_INSPECT_CONTAINERS": gateway})
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "retrying in" in stderr
    running, after = started_at(docker_client, gateway)
    assert running
    assert json.loads(stdout)["restarted"]["started_at"] == after != before
