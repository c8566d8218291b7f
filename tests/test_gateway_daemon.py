"""The Docker MCP gateway behind dockgate, replayed against the real daemon.

The stand-in gateway is a busybox container (``--network none``) with the host's
static docker CLI bind-mounted in and, as its only Docker access, the directory
of dockgate's gateway listener mounted at ``/var/run`` (as deploy/compose.yaml
mounts it), so ``/var/run/docker.sock`` is dockgate: exactly what the real
gateway's ``docker run`` subprocess uses. dockgate serves that listener with the
mcp-gateway policy of deploy/dockgate-policy.yaml (the stand-in's name and the
test's image list in place of the deployment's), and a TCP listener with the
relay's restart-only policy. Checked: the gateway's call sequence works, what it
must not do is denied with the daemon unchanged, and approving or revoking a
server through the relay changes what it may run without restarting dockgate
or dropping its connections.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
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
    BUSYBOX_IMAGE,
    DockgateProcess,
    StartDockgate,
    discard,
    free_port,
    unique_name,
)

pytestmark = pytest.mark.daemon

ROOT = Path(__file__).resolve().parent.parent
DOCKER_CLI = "/usr/local/bin/docker"
APPROVED = "dockgate-test/mcp-echo:1"
NEW_SERVER = "dockgate-test/mcp-new:1"
UNAPPROVED = BUSYBOX_IMAGE
# An approved image on a registry at a closed loopback port: a pull that reaches the
# daemon fails there, with the daemon's own error, without leaving the machine.
REMOTE = "127.0.0.1:9/mcp/remote:1"
OWNER = "mcp-gateway"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("docker", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(self.path))


@dataclass
class Gateway:
    """dockgate with both listeners, the stand-in gateway and its neighbours."""

    proxy: DockgateProcess
    socket: Path
    images_file: Path
    relay_host: str
    standin: Any
    backend: Any
    dockgate_box: Any
    client: docker.DockerClient

    def sh(self, script: str, stdin: str | None = None) -> tuple[int, str]:
        """Run ``script`` in the stand-in; its docker CLI reaches dockgate only."""
        command = ["sh", "-c", script]
        if stdin is not None:
            command = ["sh", "-c", f"printf '%s\\n' {shell_quote(stdin)} | {{ {script}; }}"]
        code, output = self.standin.exec_run(command, demux=False)
        return code, output.decode(errors="replace")

    def docker(self, *args: str) -> tuple[int, str]:
        return self.sh(" ".join([DOCKER_CLI, *(shell_quote(a) for a in args)]))


def allowed_operations(proxy: DockgateProcess) -> list[str]:
    """The operations dockgate's audit log records as allowed, in order."""
    records = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    return [r["operation"] for r in records
            if r.get("event") == "request" and r.get("decision") == "allow"]


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def gateway_policy(standin: str, images_file: Path) -> str:
    """deploy/dockgate-policy.yaml with this test's names, paths and listeners."""
    document = yaml.safe_load((ROOT / "deploy" / "dockgate-policy.yaml").read_text())
    text = json.dumps(document)
    text = text.replace("pocketcoder-mcp-gateway", standin)
    return text.replace("/mcp_config/approved-images.txt", str(images_file))


def snapshot(client: docker.DockerClient, names: list[str]) -> dict[str, Any]:
    """What a denied request could have changed: every container (this daemon's tests run
    one at a time), the neighbours' state and exec instances, networks, volumes, tags."""
    api = client.api
    neighbours = {}
    for name in names:
        attrs = api.inspect_container(name)
        neighbours[name] = (attrs["State"]["Status"], attrs["State"]["StartedAt"],
                            attrs["ExecIDs"])
    return {
        "containers": sorted(c["Id"] for c in api.containers(all=True)),
        "neighbours": neighbours,
        "networks": sorted(n["Id"] for n in api.networks()),
        "volumes": sorted(v["Name"] for v in api.volumes().get("Volumes") or ()),
        "tags": sorted(tag for i in api.images() for tag in i.get("RepoTags") or ()),
    }


@pytest.fixture
def gateway(docker_client: docker.DockerClient, busybox_image: str,
            start_dockgate: StartDockgate, sockdir: Path, tmp_path: Path) -> Iterator[Gateway]:
    for tag in (APPROVED, NEW_SERVER):
        docker_client.images.get(busybox_image).tag(tag)
    images_file = tmp_path / "approved-images.txt"
    images_file.write_text(f"{APPROVED}\n{REMOTE}\n")
    standin_name = unique_name("mcp-gateway")
    # As in deploy/compose.yaml: the listener's directory is the stand-in's /var/run.
    (sockdir / "gateway").mkdir()
    gw_socket = sockdir / "gateway" / "docker.sock"
    policy_path = tmp_path / "policy.yaml"
    text = gateway_policy(standin_name, images_file)
    policy_path.write_text(text.replace("unix:///run/dockgate-gateway/docker.sock",
                                        f"unix://{gw_socket}"))
    relay_port = free_port()
    proxy = start_dockgate(args=["--policy", str(policy_path), "--listen", f"unix://{gw_socket}",
                                 "--listen", f"tcp://127.0.0.1:{relay_port}"])
    # The stand-in: the CLI binary and dockgate's socket, nothing else of the host.
    assert sorted(p.name for p in gw_socket.parent.iterdir()) == ["docker.sock"]
    standin = docker_client.containers.run(
        busybox_image, ["sleep", "3600"], name=standin_name, network_mode="none", detach=True,
        init=True, volumes={DOCKER_CLI: {"bind": DOCKER_CLI, "mode": "ro"},
                            str(gw_socket.parent): {"bind": "/var/run", "mode": "rw"}},
        environment={"HOME": "/tmp"})
    backend = docker_client.containers.run(busybox_image, ["sleep", "3600"],
                                           name=unique_name("backend"), network_mode="none",
                                           detach=True)
    box = docker_client.containers.run(busybox_image, ["sleep", "3600"],
                                       name=unique_name("dockgate"), network_mode="none",
                                       detach=True)
    yield Gateway(proxy, gw_socket, images_file, f"tcp://127.0.0.1:{relay_port}", standin,
                  backend, box, docker_client)
    for container in docker_client.containers.list(all=True,
                                                   filters={"label": f"dockgate.owner={OWNER}"}):
        discard(container)
    for container in (standin, backend, box):
        discard(container)
    for network in docker_client.networks.list(filters={"label": f"dockgate.owner={OWNER}"}):
        network.remove()


def test_the_gateways_docker_run_works_through_the_unix_listener(gateway: Gateway) -> None:
    """docker run --rm -i --init: create, hijacked attach with stdin, start, wait, auto-remove."""
    line = '{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    code, output = gateway.sh(f"{DOCKER_CLI} run --rm -i --init --network none "
                              f"--label docker-mcp=true {APPROVED} cat", stdin=line)
    assert (code, output.strip()) == (0, line)
    allowed = allowed_operations(gateway.proxy)
    for operation in ("container.create", "container.attach", "container.start",
                      "container.wait"):
        assert operation in allowed, allowed
    assert gateway.client.containers.list(all=True, filters={"label": "docker-mcp=true"}) == []


def test_the_gateway_lists_inspects_stops_and_removes_its_servers_by_label(
        gateway: Gateway) -> None:
    """The SDK's long-lived server handling: list by label, inspect, stop, remove."""
    code, cid = gateway.docker("run", "-d", "--init", "--network", "none", "--label",
                               "docker-mcp=true", APPROVED, "sleep", "300")
    assert code == 0, cid
    cid = cid.strip()
    code, listed = gateway.docker("ps", "-a", "-q", "--no-trunc", "--filter",
                                  "label=docker-mcp=true")
    assert (code, listed.split()) == (0, [cid])
    code, labels = gateway.docker("inspect", "-f", "{{json .Config.Labels}}", cid)
    assert code == 0, labels
    assert json.loads(labels) == {"docker-mcp": "true", "dockgate.owner": OWNER}
    code, foreign = gateway.docker("ps", "-a", "-q", "--no-trunc")
    assert (code, foreign.split()) == (0, [cid]), "only owned containers are listed"
    assert gateway.docker("stop", "-t", "1", cid)[0] == 0
    assert gateway.docker("rm", cid)[0] == 0
    assert gateway.client.containers.list(all=True, filters={"id": cid}) == []


def test_the_gateway_inspects_its_own_container_by_hostname(gateway: Gateway) -> None:
    """The gateway finds its networks by inspecting itself (its hostname is its short ID)."""
    code, name = gateway.sh(f"{DOCKER_CLI} inspect -f '{{{{.Name}}}}' $(hostname)")
    assert (code, name.strip()) == (0, f"/{gateway.standin.name}")


def test_pull_of_an_approved_image_reaches_the_daemon_and_others_are_denied(
        gateway: Gateway) -> None:
    """Listed: forwarded (the daemon's own error: no registry); unlisted: dockgate's 403."""
    code, output = gateway.docker("pull", REMOTE)
    assert code != 0
    assert "dockgate" not in output, output
    assert "127.0.0.1:9" in output, output
    assert "image.create" in allowed_operations(gateway.proxy)
    code, output = gateway.docker("pull", UNAPPROVED)
    assert code != 0
    assert "dockgate: POST" in output, output
    assert "denied" in output, output


DENIED = [
    ("an unapproved image", ["run", "--rm", "--network", "none", UNAPPROVED, "true"],
     "is not among the approved images"),
    ("privileged", ["run", "--rm", "--network", "none", "--privileged", APPROVED, "true"],
     "privileged"),
    ("a bind mount of /", ["run", "--rm", "--network", "none", "-v", "/:/host", APPROVED,
                           "true"], "host bind mount"),
    ("host network", ["run", "--rm", "--network", "host", APPROVED, "true"], "network"),
    ("host pid", ["run", "--rm", "--network", "none", "--pid", "host", APPROVED, "true"],
     "shared namespace"),
    ("a syslog log driver", ["run", "--rm", "--network", "none", "--log-driver", "syslog",
                             APPROVED, "true"], "log driver"),
    ("a sysctl", ["run", "--rm", "--network", "none", "--sysctl", "kernel.shm_rmid_forced=1",
                  APPROVED, "true"], "Sysctls"),
    ("a named volume", ["run", "--rm", "--network", "none", "-v", "dgtest-gw-data:/data",
                        APPROVED, "true"], "volume"),
    ("an added capability", ["run", "--rm", "--network", "none", "--cap-add", "SYS_ADMIN",
                             APPROVED, "true"], "capabilities"),
    ("a forged owner label", ["run", "--rm", "--network", "none", "--label",
                              f"dockgate.owner={OWNER}", APPROVED, "true"], "set by dockgate"),
    ("a forged owner label on a network", ["network", "create", "--label",
                                           "dockgate.owner=backend", "dgtest-forged"],
     "set by dockgate"),
    ("pull of an unapproved image", ["pull", UNAPPROVED], "image.create"),
    ("a volume", ["volume", "create", "dgtest-gw-volume"], "volume.create is not granted"),
    ("the image list", ["images"], "image.list is not granted"),
    ("daemon info", ["info"], "system.info is not granted"),
    ("events", ["events", "--since", "1", "--until", "2"], "system.events is not granted"),
    ("swarm", ["swarm", "init"], "swarm.init is not granted"),
    ("plugins", ["plugin", "ls"], "plugin.list is not granted"),
]


@pytest.mark.parametrize(("what", "args", "why"), DENIED, ids=[d[0] for d in DENIED])
def test_what_the_gateway_must_not_do_is_denied_and_changes_nothing(
        gateway: Gateway, what: str, args: list[str], why: str) -> None:
    """Host access, other images and forged ownership never reach the daemon."""
    names = [gateway.backend.name, gateway.dockgate_box.name]
    before = snapshot(gateway.client, names)
    code, output = gateway.docker(*args)
    assert code != 0, output
    assert "dockgate:" in output, output
    assert why in output, output
    assert snapshot(gateway.client, names) == before


@pytest.mark.parametrize("command", [
    ["exec", "{target}", "true"],
    ["stop", "-t", "1", "{target}"],
    ["rm", "-f", "{target}"],
    ["kill", "{target}"],
    ["attach", "{target}"],
    ["logs", "{target}"],
    ["inspect", "{target}"],
])
@pytest.mark.parametrize("neighbour", ["backend", "dockgate"])
def test_containers_the_gateway_does_not_own_are_out_of_reach(
        gateway: Gateway, command: list[str], neighbour: str) -> None:
    """The backend and dockgate itself: no exec, stop, remove, attach, logs or inspect."""
    target = gateway.backend if neighbour == "backend" else gateway.dockgate_box
    names = [gateway.backend.name, gateway.dockgate_box.name]
    before = snapshot(gateway.client, names)
    code, output = gateway.docker(*(part.replace("{target}", target.name) for part in command))
    assert code != 0, output
    assert "dockgate:" in output, output
    assert "denied" in output, output
    assert snapshot(gateway.client, names) == before


def test_the_gateway_connects_its_containers_to_its_networks_only(
        gateway: Gateway, docker_client: docker.DockerClient) -> None:
    """Networks it creates are its own; the backend or a foreign network stay out of reach.

    The container is created, never started, so no interface is set up.
    """
    first, second = unique_name("gwnet"), unique_name("gwnet")
    for name in (first, second):
        code, output = gateway.docker("network", "create", "--internal", name)
        assert code == 0, output
    assert docker_client.networks.get(first).attrs["Labels"] == {"dockgate.owner": OWNER}
    code, cid = gateway.docker("create", "--network", first, "--label", "docker-mcp=true",
                               APPROVED, "true")
    assert code == 0, cid
    cid = cid.strip()
    code, output = gateway.docker("network", "connect", second, cid)
    assert code == 0, output
    attached = docker_client.api.inspect_container(cid)["NetworkSettings"]["Networks"]
    assert sorted(attached) == sorted([first, second])
    foreign = docker_client.networks.create(unique_name("net"), internal=True)
    try:
        names = [gateway.backend.name, gateway.dockgate_box.name]
        before = snapshot(gateway.client, names)
        for network, container in ((second, gateway.backend.name), (foreign.name, cid)):
            code, output = gateway.docker("network", "connect", network, container)
            assert code != 0, output
            assert "dockgate:" in output, output
            assert "not granted" in output, output
        assert snapshot(gateway.client, names) == before
        assert docker_client.api.inspect_container(gateway.backend.id)["NetworkSettings"][
            "Networks"].keys() == {"none"}
    finally:
        foreign.remove()


def relay(gateway: Gateway, tmp_path: Path, servers: list[dict[str, str]]) -> None:
    """dockgate-mcp-relay apply: image list, catalog, then a restart of the stand-in."""
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "mcprelay", "apply", str(tmp_path / "servers.json"),
         "--catalog", str(tmp_path / "docker-mcp.yaml"), "--images-file",
         str(gateway.images_file), "--gateway", gateway.standin.name, "--stop-timeout", "1"],
        capture_output=True, text=True, check=False, timeout=120,
        env={**env, "DOCKER_HOST": gateway.relay_host})
    assert result.returncode == 0, result.stderr


def inspect_on(connection: UnixConnection, image: str) -> int:
    connection.request("GET", f"/v1.41/images/{image}/json")
    response = connection.getresponse()
    response.read()
    return response.status


def wait_for_status(connection: UnixConnection, image: str, status: int) -> int:
    """The list is reloaded within a second or two of the relay's write."""
    deadline = time.monotonic() + 10
    while (found := inspect_on(connection, image)) != status and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def attach(path: Path, container: str) -> socket.socket:
    """A hijacked attach session (stdin and stdout) to ``container`` through ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(path))
    sock.sendall(f"POST /v1.41/containers/{container}/attach?stream=1&stdin=1&stdout=1 "
                 "HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                 "Content-Length: 0\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def echoed(sock: socket.socket, line: bytes) -> bool:
    """Whether ``line`` written to the session comes back (the container runs cat)."""
    sock.sendall(line)
    data = b""
    while line.strip() not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    return True


def test_approving_and_revoking_a_server_changes_what_runs_without_a_restart(
        gateway: Gateway, tmp_path: Path) -> None:
    """The relay rewrites the list; dockgate reloads it and keeps its connections open."""
    pid = gateway.proxy.process.pid
    held = UnixConnection(gateway.socket)  # one keep-alive connection across both changes
    assert inspect_on(held, NEW_SERVER) == 403
    sock = held.sock
    # And a hijacked session to a long-lived server, open across both changes.
    code, server = gateway.docker("run", "-d", "-i", "--init", "--network", "none", "--label",
                                  "docker-mcp=true", APPROVED, "cat")
    assert code == 0, server
    session = attach(gateway.socket, server.strip())
    assert echoed(session, b"before\n")
    relay(gateway, tmp_path, [{"name": "echo", "image": APPROVED},
                              {"name": "new", "image": NEW_SERVER}])
    assert gateway.images_file.read_text().splitlines()[1:] == [APPROVED, NEW_SERVER]
    assert wait_for_status(held, NEW_SERVER, 200) == 200
    code, output = gateway.sh(f"{DOCKER_CLI} run --rm -i --network none --label "
                              f"docker-mcp=true {NEW_SERVER} cat", stdin="ping")
    assert (code, output.strip()) == (0, "ping")
    relay(gateway, tmp_path, [{"name": "echo", "image": APPROVED}])
    assert wait_for_status(held, NEW_SERVER, 403) == 403
    code, output = gateway.docker("run", "--rm", "--network", "none", NEW_SERVER, "true")
    assert code != 0, output
    assert "is not among the approved images" in output, output
    assert held.sock is sock, "the held connection was never reopened"
    assert echoed(session, b"after\n"), "the hijacked session survived both reloads"
    session.close()
    assert gateway.proxy.process.pid == pid
    assert gateway.proxy.process.poll() is None
    assert "reloaded: decisions now by" in gateway.proxy.log()
    held.close()
