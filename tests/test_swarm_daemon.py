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
from urllib.parse import unquote, urlencode

import docker
import pytest
import yaml

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
    try:
        init = docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1")
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
            shutil.rmtree(socket_dir, ignore_errors=True)
            leave = docker_cli("swarm", "leave", "--force")
            for network in docker_client.networks.list():
                if network.name not in networks_before:  # docker_gwbridge
                    network.remove()
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


def test_the_task_is_healthy_through_its_admin_listener(
        docker_client: docker.DockerClient, stack: Stack) -> None:
    """The image's check asks /readyz on the task's own loopback; so does this test."""
    task, = docker_client.containers.list(
        filters={"label": f"com.docker.swarm.service.name={stack.service}"})
    assert task.attrs["State"]["Health"]["Status"] == "healthy"
    code, output = task.exec_run(["/opt/dockgate/bin/python", "-c",
                                  "import urllib.request; print(urllib.request.urlopen("
                                  "'http://127.0.0.1:9102/readyz', timeout=5).status)"])
    assert (code, output.strip()) == (0, b"200"), output


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


def filters(value: dict[str, dict[str, bool]]) -> str:
    """A filters query parameter as the Go client encodes it."""
    return urlencode({"filters": json.dumps(value, separators=(",", ":"))})


# What Traefik's Swarm provider (v3) sends on every refresh, in order, as
# (method, target with {service}/{node} placeholders, the client call).
TRAEFIK_CALLS = (
    ("HEAD", "/_ping", "API version negotiation"),
    ("GET", "/_ping", "API version negotiation"),
    ("GET", "/v1.41/version", "ServerVersion"),
    ("GET", "/v1.41/services", "ServiceList"),
    ("GET", "/v1.41/networks?" + filters({"scope": {"swarm": True}}),
     "NetworkList (swarm scope)"),
    ("GET", "/v1.41/tasks?" + filters({"desired-state": {"running": True},
                                       "service": {"{service}": True}}),
     "TaskList of each service"),
    ("GET", "/v1.41/nodes/{node}", "NodeInspect of each task's node"),
)
# Denied, each shown by a docker CLI command through the socket.
DENIED = (
    ("POST", "/services/create", "service.create",
     ("service", "create", "--name", "{stack}-evil", "--no-resolve-image",
      "--mount", "type=bind,source=/,target=/host", "dockgate-test/busybox")),
    ("GET", "/services/{service}/logs", "service.logs", ("service", "logs", "{service}")),
    ("GET", "/info", "system.info", ("node", "ls")),
)


def docs_tables() -> tuple[str, str]:
    calls = ["| Request | Traefik's call |", "|---|---|"]
    calls += [f"| `{method} {unquote(target)}` | {what} |"
              for method, target, what in TRAEFIK_CALLS]
    denied = ["| Request | docker CLI |", "|---|---|"]
    denied += [f"| `{method} {target}` | `docker {' '.join(args)}` |"
               for method, target, _, args in DENIED]
    return "\n".join(calls) + "\n", "\n".join(denied) + "\n"


def test_the_docs_list_the_replayed_requests() -> None:
    """docs/deploy-swarm.md shows exactly the requests the tests below send."""
    path = ROOT / "docs" / "deploy-swarm.md"
    text = path.read_text()
    for marker, table in zip(("<!-- generated by tests/test_swarm_daemon.py -->",
                              "<!-- generated by tests/test_swarm_daemon.py (denied) -->"),
                             docs_tables(), strict=True):
        start = text.index(marker) + len(marker) + 1
        end = text.index("\n\n", start) + 1
        if os.environ.get("DOCKGATE_REGENERATE") == "1" and text[start:end] != table:
            text = text[:start] + table + text[end:]
            path.write_text(text)
            end = start + len(table)
        assert text[start:end] == table, ("docs/deploy-swarm.md is stale: run "
                                          "DOCKGATE_REGENERATE=1 pytest tests/test_swarm_daemon.py")


def test_the_traefik_example_in_the_docs_points_at_the_stack() -> None:
    """The documented Traefik service joins the stack's network and uses its listener."""
    text = (ROOT / "docs" / "deploy-swarm.md").read_text()
    example = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    stack_file = yaml.safe_load(STACK_FILE.read_text())
    (network,) = stack_file["networks"]
    listen = stack_file["services"]["dockgate"]["environment"]["DOCKGATE_LISTEN"]
    traefik = example["services"]["traefik"]
    assert f"dockgate_{network}" in traefik["networks"]
    assert example["networks"][f"dockgate_{network}"] == {"external": True}
    port = listen.split(",")[0].rsplit(":", 1)[1]
    assert f"--providers.swarm.endpoint=tcp://dockgate:{port}" in traefik["command"]


def test_traefiks_swarm_provider_calls_all_pass(stack: Stack) -> None:
    """The requests Traefik's Swarm provider makes on every refresh, replayed as it sends them."""
    answers = []
    for method, target, _ in TRAEFIK_CALLS:
        # The placeholder inside the filters is URL-encoded like the rest of them.
        real = target.replace("%7Bservice%7D", stack.service).replace("{node}", stack.node)
        status, body = call(stack.socket, method, real)
        assert status == 200, (method, real, body)
        answers.append(body)
    services = json.loads(answers[3])
    assert [s["Spec"]["Name"] for s in services] == [stack.service]
    networks = json.loads(answers[4])
    assert f"{stack.name}_docker-api" in [n["Name"] for n in networks]
    tasks = json.loads(answers[5])
    assert [t["Status"]["State"] for t in tasks] == ["running"]
    assert json.loads(answers[6])["Status"]["Addr"] == "127.0.0.1"


def test_creating_a_service_reading_logs_and_info_are_denied(stack: Stack) -> None:
    """Read-only for Traefik: a create, a log read or /info never reaches the manager."""
    for method, target, operation, args in DENIED:
        real = [a.replace("{stack}", stack.name).replace("{service}", stack.service)
                for a in args]
        result = stack.cli(*real)
        assert result.returncode == 1
        assert (f"dockgate: {method} {target.replace('{service}', stack.service)} denied — "
                f"{operation} is not granted by policy 'traefik-swarm'") in result.stderr
    listing = stack.cli("service", "ls", "--format", "{{.Name}}")
    assert listing.stdout.split() == [stack.service]
