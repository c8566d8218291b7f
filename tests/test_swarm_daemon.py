"""deploy/swarm/dockgate-stack.yaml on a real single-node swarm, with Traefik's policy.

The module initialises a swarm on the test daemon (``docker swarm init --advertise-addr
127.0.0.1``), deploys the stack with the image conftest builds, and talks to the service
only through its unix-socket listener, bind-mounted to a host directory: no request goes
to a container or overlay address. At the end it removes the stack, leaves the swarm and
removes the bridge network the swarm created, whatever happened.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import docker
import pytest

from conftest import DOCKER_SOCKET, ROOT

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(600)]

STACK_FILE = ROOT / "deploy" / "swarm" / "dockgate-stack.yaml"
DOCKGATE_UID = 10001  # the image's user


@dataclass
class Stack:
    name: str
    service: str
    socket: Path
    node: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The docker CLI, as a client of the proxy's unix socket."""
        return docker_cli(*args, host=f"unix://{self.socket}")


def docker_cli(*args: str, host: str = f"unix://{DOCKER_SOCKET}",
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**clean, **(env or {}), "DOCKER_HOST": host})


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("api.moby.localhost", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self.socket_path))


def call(path: Path, method: str, target: str) -> tuple[int, bytes]:
    connection = UnixConnection(path)
    try:
        connection.request(method, target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def eventually(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f} s")
        time.sleep(0.5)


def ping_ok(path: Path) -> bool:
    try:
        return call(path, "GET", "/_ping") == (200, b"OK")
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(docker_client: docker.DockerClient, dockgate_image: str) -> Iterator[Stack]:
    """The stack deployed on a swarm made for this module; everything removed afterwards."""
    state = docker_client.info()["Swarm"]["LocalNodeState"]
    assert state == "inactive", (f"the test daemon at {DOCKER_SOCKET} is in a swarm "
                                 f"({state}): this test makes and leaves its own")
    networks_before = {network.name for network in docker_client.networks.list()}
    name = f"dgtest-{uuid.uuid4().hex[:8]}"
    socket_dir = Path(tempfile.mkdtemp(prefix="dg-swarm-", dir="/tmp"))
    gid = os.stat(DOCKER_SOCKET).st_gid
    os.chown(socket_dir, DOCKGATE_UID, gid)
    socket_dir.chmod(0o750)
    init = docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        assert init.returncode == 0, init.stderr
        deploy = docker_cli(
            "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), name,
            env={"DOCKER_SOCKET": DOCKER_SOCKET, "DOCKER_SOCKET_GID": str(gid),
                 "DOCKGATE_IMAGE": dockgate_image, "DOCKGATE_SOCKET_DIR": str(socket_dir),
                 # Traefik's provider reads a manager's API: the managers-only form.
                 "DOCKGATE_PLACEMENT": "node.role == manager",
                 "DOCKGATE_POLICY_VERSION": name})
        assert deploy.returncode == 0, deploy.stderr
        service = docker_client.services.get(f"{name}_dockgate")
        path = socket_dir / "dockgate.sock"
        eventually(lambda: ping_ok(path), f"no ping through {path}")
        eventually(lambda: [t["Status"]["State"] for t in service.tasks()] == ["running"],
                   "the task is not running (healthy)")
        yield Stack(name, service.name, path, docker_client.info()["Swarm"]["NodeID"])
    finally:
        try:
            docker_cli("stack", "rm", name)
            with_label = {"label": f"com.docker.stack.namespace={name}"}
            eventually(lambda: not docker_client.containers.list(all=True, filters=with_label),
                       "the stack's containers are still there", timeout=60)
        finally:
            leave = docker_cli("swarm", "leave", "--force")
            for network in docker_client.networks.list():
                if network.name not in networks_before:  # docker_gwbridge
                    network.remove()
            shutil.rmtree(socket_dir, ignore_errors=True)
    assert leave.returncode == 0, leave.stderr
    assert docker_client.info()["Swarm"]["LocalNodeState"] == "inactive"


def test_the_stack_runs_one_hardened_proxy_per_manager_on_an_internal_overlay(
        docker_client: docker.DockerClient, stack: Stack) -> None:
    """Global mode, read-only and capability-free, the policy from a Swarm config."""
    spec = docker_client.services.get(stack.service).attrs["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert "Global" in spec["Mode"]
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.role == manager"]
    assert container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["User"] == f"10001:{os.stat(DOCKER_SOCKET).st_gid}"
    config, = container["Configs"]
    assert (config["File"]["Name"], config["ConfigName"]) == (
        "/etc/dockgate/policy.yaml", f"dockgate-policy-{stack.name}")
    network = docker_client.networks.get(f"{stack.name}_docker-api").attrs
    assert (network["Driver"], network["Internal"], network["Attachable"]) == (
        "overlay", True, True)


def test_the_docker_cli_reads_the_swarm_through_the_unix_listener(stack: Stack) -> None:
    """Services, tasks, networks and nodes are readable: what `docker service ...` shows."""
    services = stack.cli("service", "ls", "--format", "{{.Name}} {{.Mode}}")
    assert services.returncode == 0, services.stderr
    assert services.stdout.split("\n")[0] == f"{stack.service} global"
    tasks = stack.cli("service", "ps", stack.service, "--format", "{{.Node}} {{.CurrentState}}")
    assert tasks.returncode == 0, tasks.stderr
    assert tasks.stdout.split()[1] == "Running"
    networks = stack.cli("network", "ls", "--filter", "scope=swarm", "--format", "{{.Name}}")
    assert f"{stack.name}_docker-api" in networks.stdout.split()
    node = stack.cli("node", "inspect", stack.node, "--format", "{{.Status.Addr}}")
    assert node.stdout.strip() == "127.0.0.1"


def test_traefiks_swarm_provider_calls_all_pass(stack: Stack) -> None:
    """The requests Traefik's Swarm provider makes on every refresh, replayed as it sends them."""
    service_filter = {"service": {stack.service: True}, "desired-state": {"running": True}}
    replay = [
        ("HEAD", "/_ping"), ("GET", "/_ping"),            # API version negotiation
        ("GET", "/v1.41/version"),                        # ServerVersion
        ("GET", "/v1.41/services"),                       # ServiceList
        ("GET", "/v1.41/networks?" + urlencode(            # NetworkList, swarm scope
            {"filters": json.dumps({"scope": {"swarm": True}})})),
        ("GET", "/v1.41/tasks?" + urlencode(               # TaskList per service
            {"filters": json.dumps(service_filter)})),
        ("GET", f"/v1.41/nodes/{stack.node}"),            # NodeInspect per task
    ]
    answers = {target: call(stack.socket, method, target) for method, target in replay}
    assert {target: status for target, (status, _) in answers.items()} == dict.fromkeys(
        answers, 200)
    services = json.loads(answers["/v1.41/services"][1])
    assert [s["Spec"]["Name"] for s in services] == [stack.service]
    tasks = json.loads(answers[replay[5][1]][1])
    assert [t["Status"]["State"] for t in tasks] == ["running"]
    node = json.loads(answers[replay[6][1]][1])
    assert node["Status"]["Addr"] == "127.0.0.1"


def test_creating_a_service_and_reading_logs_are_denied(stack: Stack) -> None:
    """Read-only for Traefik: a create (or a log read) never reaches the manager."""
    create = stack.cli("service", "create", "--name", f"{stack.name}-evil",
                       "--no-resolve-image", "--mount", "type=bind,source=/,target=/host",
                       "dockgate-test/busybox")
    assert create.returncode == 1
    assert ("dockgate: POST /services/create denied — service.create is not granted by policy "
            "'traefik-swarm'") in create.stderr
    logs = stack.cli("service", "logs", stack.service)
    assert "service.logs is not granted" in logs.stderr
    listing = stack.cli("service", "ls", "--format", "{{.Name}}")
    assert listing.stdout.split() == [stack.service]
