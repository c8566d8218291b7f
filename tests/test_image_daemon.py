"""The dockgate container image: built offline, non-root, healthy through its own ping.

scripts/build-image builds it (the debootstrap base is cached as an image after the
first run). Every container here runs with ``--network none``: clients reach the
proxy over a unix socket in a bind-mounted directory, never over TCP.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import DOCKER_SOCKET, unique_name

# Building the image (debootstrap when the base is not cached) needs more than the default.
pytestmark = [pytest.mark.daemon, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "dockgate-test/dockgate:image-test"
SOCKET_DIR_IN_CONTAINER = "/run/dockgate"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("dockgate", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self.path))


def call(path: Path, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    connection = UnixConnection(path)
    try:
        connection.request(method, target, body=body,
                           headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_healthy(container: Any, timeout: float = 30.0) -> str:
    """The container's health status once it is no longer 'starting' (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        status: str = container.attrs["State"]["Health"]["Status"]
        if status != "starting" or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


@pytest.fixture(scope="module")
def image(docker_client: docker.DockerClient) -> str:
    """Build the image with the project's own script (the base image is reused if present)."""
    result = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True,
                            text=True, timeout=600, check=False,
                            env={**os.environ, "DOCKGATE_IMAGE": IMAGE,
                                 # The daemon under test, not the machine's default one.
                                 "DOCKER_HOST": f"unix://{DOCKER_SOCKET}"})
    assert result.returncode == 0, result.stdout + result.stderr
    return IMAGE


@pytest.fixture
def proxy(docker_client: docker.DockerClient, image: str, busybox_image: str,
          tmp_path: Path) -> Iterator[tuple[docker.models.containers.Container, Path, str]]:
    """dockgate in the image, restart+inspect of one gateway, listening on a unix socket."""
    gateway = unique_name("relay-imggw")
    docker_client.containers.run(busybox_image, ["sleep", "600"], name=gateway,
                                 network_mode="none", detach=True)
    socket_dir = tmp_path / "sock"
    socket_dir.mkdir()
    os.chown(socket_dir, 10001, 10001)
    container = docker_client.containers.run(
        image, name=unique_name("relay-img"), network_mode="none", detach=True,
        group_add=[str(os.stat(DOCKER_SOCKET).st_gid)],
        # The hardening deploy/compose.yaml applies, so the test proves it is enough.
        read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
        volumes={DOCKER_SOCKET: {"bind": "/var/run/docker.sock", "mode": "ro"},
                 str(socket_dir): {"bind": SOCKET_DIR_IN_CONTAINER, "mode": "rw"}},
        environment={"DOCKGATE_LISTEN": f"unix://{SOCKET_DIR_IN_CONTAINER}/dockgate.sock",
                     "ALLOW_RESTART_CONTAINERS": gateway, "ALLOW_INSPECT_CONTAINERS": gateway},
        healthcheck={"interval": 500_000_000, "start_period": 0})
    path = socket_dir / "dockgate.sock"
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), container.logs().decode()
    yield container, path, gateway
    container.remove(force=True)
    docker_client.containers.get(gateway).remove(force=True)


def test_image_runs_as_non_root_with_a_python_ping_healthcheck(
        docker_client: docker.DockerClient, image: str) -> None:
    """Non-root by default; the HEALTHCHECK pings through the proxy, not the daemon directly."""
    config = docker_client.api.inspect_image(image)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "/opt/dockgate/bin/python",
                                             "/opt/dockgate/healthcheck.py"]
    assert config["Entrypoint"] == ["dockgate"]


def test_dockgate_help_runs_in_a_networkless_container(
        docker_client: docker.DockerClient, image: str) -> None:
    """The installed entry point works with no network at all (everything came from wheels)."""
    output = docker_client.containers.run(image, ["serve", "--help"], network_mode="none",
                                          name=unique_name("relay-help"), remove=True)
    assert b"DOCKGATE_LISTEN" in output


def test_container_serves_the_unix_listener_and_becomes_healthy(
        docker_client: docker.DockerClient,
        proxy: tuple[docker.models.containers.Container, Path, str]) -> None:
    """The proxy answers on the bind-mounted socket and Docker reports it healthy."""
    container, path, _ = proxy
    assert call(path, "GET", "/_ping") == (200, b"OK")
    status, body = call(path, "POST", "/containers/create", b'{"Image": "x"}')
    assert status == 403
    assert b"container.create" in body
    assert wait_healthy(container) == "healthy"
    assert container.attrs["State"]["Health"]["Log"][-1]["ExitCode"] == 0


def test_default_tcp_listener_is_healthy_without_any_network(
        docker_client: docker.DockerClient, image: str) -> None:
    """Without DOCKGATE_LISTEN the HEALTHCHECK finds the default port 2375 on loopback."""
    container = docker_client.containers.run(
        image, name=unique_name("relay-imgtcp"), network_mode="none", detach=True,
        group_add=[str(os.stat(DOCKER_SOCKET).st_gid)],
        volumes={DOCKER_SOCKET: {"bind": "/var/run/docker.sock", "mode": "ro"}},
        healthcheck={"interval": 500_000_000, "start_period": 0})
    try:
        assert wait_healthy(container) == "healthy", container.logs().decode()
    finally:
        container.remove(force=True)


def test_healthcheck_fails_when_the_proxy_does_not_answer(
        proxy: tuple[docker.models.containers.Container, Path, str]) -> None:
    """A healthcheck pointed at a dead listener reports unhealthy and says where it looked."""
    container, _, _ = proxy
    code, output = container.exec_run(
        ["/opt/dockgate/bin/python", "/opt/dockgate/healthcheck.py"],
        environment={"DOCKGATE_LISTEN": f"unix://{SOCKET_DIR_IN_CONTAINER}/none.sock"})
    assert code == 1
    assert b"dockgate unhealthy on unix:///run/dockgate/none.sock" in output


def test_relay_restarts_the_gateway_through_the_containerized_proxy(
        docker_client: docker.DockerClient,
        proxy: tuple[docker.models.containers.Container, Path, str]) -> None:
    """DOCKER_HOST=unix://... through the image: the deployed pair, minus the network."""
    _, path, gateway = proxy
    before = docker_client.api.inspect_container(gateway)["State"]["StartedAt"]
    result = subprocess.run([sys.executable, "-m", "mcprelay", "restart", "--gateway", gateway,
                             "--stop-timeout", "1"], capture_output=True, text=True,
                            env={**os.environ, "DOCKER_HOST": f"unix://{path}"}, check=False)
    assert result.returncode == 0, result.stderr
    state = docker_client.api.inspect_container(gateway)["State"]
    assert state["Running"]
    assert state["StartedAt"] != before
