"""The dockgate container image: built offline for the base image's Python, non-root, healthy.

scripts/build-image builds it (the debootstrap base is cached as an image after the
first run). Every container here runs with ``--network none``: clients reach the
proxy over a unix socket in a bind-mounted directory, never over TCP.
"""

from __future__ import annotations

import glob
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import DOCKER_SOCKET, discard, unique_name
from dockgate import __version__
from test_gateway_daemon import APPROVED, DOCKER_CLI, OWNER, gateway_policy, shell_quote

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


def other_python() -> str:
    """A host Python of another minor version than the base image's 3.11, when there is one.

    The wheelhouse must fit the base image's Python whatever the host runs; without a
    second interpreter on the machine the build uses the test's own.
    """
    names = [shutil.which(f"python3.{minor}") for minor in (13, 12)]
    names += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[23]*/bin/python")))
    for name in names:
        # A pyenv shim exists but may refuse to run: try it.
        if name and subprocess.run([name, "-m", "pip", "--version"], capture_output=True,
                                   check=False).returncode == 0:
            return name
    return sys.executable


BUILD_LOG: list[str] = []


@pytest.fixture(scope="module")
def image(docker_client: docker.DockerClient) -> str:
    """Build the image with the project's own script (the base image is reused if present)."""
    result = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True,
                            text=True, timeout=600, check=False,
                            env={**os.environ, "DOCKGATE_IMAGE": IMAGE, "PYTHON": other_python(),
                                 "DOCKER_HOST": f"unix://{DOCKER_SOCKET}"})
    assert result.returncode == 0, result.stdout + result.stderr
    BUILD_LOG.append(result.stdout)
    return IMAGE


def test_the_wheelhouse_fits_the_base_image_s_python_not_the_host_s(
        docker_client: docker.DockerClient, image: str) -> None:
    """build-image asks the base image for its Python and downloads wheels for it."""
    inside = docker_client.containers.run(
        image, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        entrypoint="/opt/dockgate/bin/python", network_mode="none",
        name=unique_name("relay-imgpy"), remove=True).decode().strip()
    host = subprocess.run([other_python(), "-V"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert f"build-image: wheels for CPython {inside} (cp{inside.replace('.', '')}" in \
        BUILD_LOG[0]
    assert f"host {host}" in BUILD_LOG[0]


def test_the_image_carries_oci_labels_and_the_license(
        docker_client: docker.DockerClient, image: str) -> None:
    """Registries and scanners read these; the license text travels with the image."""
    labels = docker_client.api.inspect_image(image)["Config"]["Labels"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.title"] == "dockgate"
    assert labels["org.opencontainers.image.version"] == __version__
    text = docker_client.containers.run(image, ["/opt/dockgate/LICENSE"], entrypoint="cat",
                                        network_mode="none", name=unique_name("relay-imglic"),
                                        remove=True)
    assert b"Apache License" in text


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


def test_image_runs_as_non_root_with_a_readiness_healthcheck(
        docker_client: docker.DockerClient, image: str) -> None:
    """Non-root; the HEALTHCHECK asks the admin listener, early enough for compose."""
    config = docker_client.api.inspect_image(image)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "/opt/dockgate/bin/python",
                                             "/opt/dockgate/healthcheck.py"]
    assert config["Healthcheck"]["Interval"] <= 5_000_000_000
    assert "DOCKGATE_ADMIN_LISTEN=127.0.0.1:9102" in config["Env"]
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
        environment={"DOCKGATE_LISTEN": f"unix://{SOCKET_DIR_IN_CONTAINER}/none.sock",
                     "DOCKGATE_ADMIN_LISTEN": ""})
    assert code == 1
    assert b"dockgate unhealthy on unix:///run/dockgate/none.sock/_ping" in output
    code, output = container.exec_run(
        ["/opt/dockgate/bin/python", "/opt/dockgate/healthcheck.py"],
        environment={"DOCKGATE_ADMIN_LISTEN": "127.0.0.1:9"})
    assert code == 1
    assert b"dockgate unhealthy on tcp://127.0.0.1:9/readyz" in output


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


def test_a_per_client_policy_without_default_is_still_healthy(
        docker_client: docker.DockerClient, image: str, tmp_path: Path) -> None:
    """The probe goes to the admin listener, so no client policy can make it fail forever."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("policies:\n  p: {grants: [{allow: [system.ping]}]}\n"
                      "clients:\n  - uid: 4242\n    policy: p\n")
    policy.chmod(0o644)
    container = docker_client.containers.run(
        image, name=unique_name("relay-imgpol"), network_mode="none", detach=True,
        group_add=[str(os.stat(DOCKER_SOCKET).st_gid)],
        volumes={DOCKER_SOCKET: {"bind": "/var/run/docker.sock", "mode": "ro"},
                 str(policy): {"bind": "/etc/dockgate/policy.yaml", "mode": "ro"}},
        environment={"DOCKGATE_POLICY": "/etc/dockgate/policy.yaml"},
        healthcheck={"interval": 500_000_000, "start_period": 0})
    try:
        assert wait_healthy(container) == "healthy", container.logs().decode()
    finally:
        container.remove(force=True)


def test_the_compose_wiring_runs_the_gateways_docker_run_through_the_image(
        docker_client: docker.DockerClient, image: str, busybox_image: str,
        tmp_path: Path) -> None:
    """deploy/compose.yaml's gateway wiring with the real image and the shipped policy.

    A new named volume (as compose makes it) holds dockgate's gateway listener;
    the stand-in gateway mounts it at /var/run and has no other Docker access.
    """
    docker_client.images.get(busybox_image).tag(APPROVED)
    config = tmp_path / "mcp_config"
    config.mkdir()
    (config / "approved-images.txt").write_text(f"{APPROVED}\n")
    policy = tmp_path / "dockgate-policy.yaml"
    standin_name = unique_name("relay-imgmcp")
    policy.write_text(gateway_policy(standin_name, Path("/mcp_config/approved-images.txt")))
    for path in (tmp_path, config):
        path.chmod(0o755)
    for path in (policy, config / "approved-images.txt"):
        path.chmod(0o644)
    volume = docker_client.volumes.create(unique_name("relay-gwsock"))
    started: list[Any] = []
    try:
        started.append(docker_client.containers.run(
            image, name=unique_name("relay-imgdg"), network_mode="none", detach=True,
            group_add=[str(os.stat(DOCKER_SOCKET).st_gid)],
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
            volumes={DOCKER_SOCKET: {"bind": "/var/run/docker.sock", "mode": "ro"},
                     str(policy): {"bind": "/etc/dockgate/policy.yaml", "mode": "ro"},
                     str(config): {"bind": "/mcp_config", "mode": "ro"},
                     volume.name: {"bind": "/run/dockgate-gateway", "mode": "rw"}},
            environment={"DOCKGATE_POLICY": "/etc/dockgate/policy.yaml",
                         "DOCKGATE_LISTEN": "tcp://0.0.0.0:2375,"
                                            "unix:///run/dockgate-gateway/docker.sock"}))
        standin = docker_client.containers.run(
            busybox_image, ["sleep", "600"], name=standin_name, network_mode="none",
            detach=True, environment={"HOME": "/tmp"},
            volumes={volume.name: {"bind": "/var/run", "mode": "rw"},
                     DOCKER_CLI: {"bind": DOCKER_CLI, "mode": "ro"}})
        started.append(standin)
        deadline = time.monotonic() + 30
        while standin.exec_run(["test", "-S", "/var/run/docker.sock"])[0] != 0:
            assert time.monotonic() < deadline, started[0].logs().decode()
            time.sleep(0.2)
        line = '{"jsonrpc": "2.0", "id": 1}'
        code, output = standin.exec_run(["sh", "-c", f"printf '%s\\n' {shell_quote(line)} | "
                                         f"{DOCKER_CLI} run --rm -i --init --network none "
                                         f"--label docker-mcp=true {APPROVED} cat"])
        assert (code, output.decode().strip()) == (0, line), started[0].logs().decode()
        code, output = standin.exec_run([DOCKER_CLI, "run", "--rm", "--network", "none",
                                         "--privileged", APPROVED, "true"])
        assert code != 0
        assert b"dockgate: POST /containers/create denied" in output
    finally:
        for container in docker_client.containers.list(
                all=True, filters={"label": f"dockgate.owner={OWNER}"}):
            discard(container)
        for container in started:
            discard(container)
        volume.remove(force=True)
