"""Clients named by container, against the real daemon (issue 12).

End to end over a unix listener: a client process is put into a real
container's cgroups (as the kernel sees ``docker exec``'d processes), so
dockgate finds the container from the peer's ``/proc/PID/cgroup``. Over TCP no
traffic may go to a container address (the machine's rule), so the directory
is driven in-process: containers on an ``--internal`` bridge network get
addresses, and the directory's answer for those addresses is checked; the only
TCP connection made is from 127.0.0.1, which is no container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import DOCKER_SOCKET, StartDockgate, discard, unique_name
from dockgate.decision import Client
from dockgate.shell import containers
from dockgate.shell.containers import ContainerDirectory
from dockgate.shell.upstream import Upstream

pytestmark = pytest.mark.daemon

# A client that joins the cgroups given as arguments, then sends one request to
# dockgate's unix socket; it prints the status and the answer.
CLIENT = textwrap.dedent("""\
    import http.client, os, socket, sys
    method, sock_path, target, *procs = sys.argv[1:]
    for procs_file in procs:
        with open(procs_file, "w") as handle:
            handle.write(str(os.getpid()))
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sock_path)
    sock.sendall(f"{method} {target} HTTP/1.1\\r\\nHost: docker\\r\\nContent-Length: 0\\r\\n"
                 "Connection: close\\r\\n\\r\\n".encode())
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    print(response.status, response.read().decode())
    """)


def cgroup_procs_files(pid: int) -> list[str]:
    """The cgroup.procs file of every hierarchy process ``pid`` is in (v1 and v2)."""
    unified = ""
    hierarchies: list[tuple[set[str], str]] = []   # (mount options, mount point) of v1
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        if fields[3] != "/":
            continue  # a bind mount of a sub-tree: its paths are not the cgroup paths
        if fields[dash + 1] == "cgroup2":
            unified = unified or fields[4]
        elif fields[dash + 1] == "cgroup":
            hierarchies.append((set(fields[dash + 3].split(",")), fields[4]))
    files = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        points = [unified] if not controllers else [
            point for options, point in hierarchies if set(controllers.split(",")) <= options]
        files.extend(f"{point}{path}/cgroup.procs" for point in points[:1] if point)
    assert files, f"no cgroup hierarchy of pid {pid} is mounted here"
    return files


def call_from(cgroups_of: int | None, sock: Path, target: str,
              method: str = "POST") -> tuple[int, str]:
    """Run the client, in the cgroups of process ``cgroups_of`` (None: where the test runs)."""
    procs = cgroup_procs_files(cgroups_of) if cgroups_of is not None else []
    result = subprocess.run([sys.executable, "-c", CLIENT, method, str(sock), target, *procs],
                            capture_output=True, text=True, timeout=60, check=True)
    status, _, body = result.stdout.partition(" ")
    return int(status), body


def wait_for_log(proxy: Any, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{proxy.log()}"
        time.sleep(0.1)


def labelled(docker_client: docker.DockerClient, image: str, stem: str,
             labels: dict[str, str], **options: Any) -> Any:
    options.setdefault("network_mode", "none")
    container = docker_client.containers.run(image, ["sleep", "600"], detach=True,
                                             name=unique_name(stem), labels=labels, **options)
    container.reload()  # run's answer may predate the start: State.Pid 0
    return container


@pytest.fixture
def project() -> str:
    """A compose project name of this test alone (other sessions may share the daemon)."""
    return unique_name("proj")


def test_a_compose_service_rule_applies_to_a_process_of_that_services_container(
        docker_client: docker.DockerClient, busybox_image: str, start_dockgate: StartDockgate,
        sockdir: Path, tmp_path: Path, project: str) -> None:
    """The issue's case over a unix socket: the service's process restarts, others cannot."""
    made = []
    try:
        pocketbase = labelled(docker_client, busybox_image, "pb", {
            "com.docker.compose.service": "pocketbase", "com.docker.compose.project": project})
        made.append(pocketbase)
        web = labelled(docker_client, busybox_image, "web", {
            "com.docker.compose.service": "web", "com.docker.compose.project": project})
        made.append(web)
        target = labelled(docker_client, busybox_image, "target", {})
        made.append(target)
        policy = tmp_path / "policy.yaml"
        policy.write_text(textwrap.dedent(f"""\
            policies:
              restarter:
                grants:
                  - allow: [system.ping]
                  - allow: [container.restart]
                    containers: {{names: [{target.name}]}}
              pinger:
                grants:
                  - allow: [system.ping]
            clients:
              - compose_service: pocketbase
                compose_project: {project}
                policy: restarter
              - compose_service: web
                policy: pinger
            """))
        sock = sockdir / "dg.sock"
        proxy = start_dockgate(args=["--policy", str(policy), "--listen", f"unix://{sock}"])
        wait_for_log(proxy, "container directory in sync")
        restart = f"/containers/{target.name}/restart?t=0"
        started = target.attrs["State"]["StartedAt"]

        status, body = call_from(pocketbase.attrs["State"]["Pid"], sock, restart)
        assert status == 204, body
        target.reload()
        assert target.attrs["State"]["StartedAt"] != started  # it really restarted

        status, body = call_from(web.attrs["State"]["Pid"], sock, restart)
        assert status == 403
        assert "container.restart is not granted by policy 'pinger'" in body

        status, body = call_from(None, sock, restart)
        assert status == 403
        assert "no policy applies to this client" in body

        records = [json.loads(line) for line in proxy.log().splitlines()
                   if line.startswith("{") and '"event":"request"' in line]
        clients = [record["client"] for record in records]
        assert any(c.endswith(f",container={pocketbase.name}") for c in clients), clients
        assert any(c.endswith(f",container={web.name}") for c in clients), clients
        assert not any("container=" in c for c in clients[-1:]), clients
    finally:
        for container in made:
            discard(container)


def test_a_reload_that_adds_a_container_rule_starts_following_containers(
        docker_client: docker.DockerClient, busybox_image: str, start_dockgate: StartDockgate,
        sockdir: Path, tmp_path: Path, project: str) -> None:
    """SIGHUP with a first container rule starts the directory; the rule applies at once."""
    pocketbase = labelled(docker_client, busybox_image, "pb", {
        "com.docker.compose.service": "pocketbase", "com.docker.compose.project": project})
    try:
        policy = tmp_path / "policy.yaml"
        before = "policies:\n  pinger: {grants: [{allow: [system.ping]}]}\n"
        policy.write_text(before + "clients:\n  - {uid: 12345, policy: pinger}\n")
        sock = sockdir / "dg.sock"
        proxy = start_dockgate(args=["--policy", str(policy), "--listen", f"unix://{sock}"])
        pid = pocketbase.attrs["State"]["Pid"]
        assert call_from(pid, sock, "/_ping", "GET")[0] == 403
        assert "container directory" not in proxy.log()  # no rule names a container yet
        policy.write_text(before + f"clients:\n  - {{compose_project: {project}, "
                          "policy: pinger}\n")
        proxy.process.send_signal(signal.SIGHUP)
        wait_for_log(proxy, "container directory in sync")
        status, body = call_from(pid, sock, "/_ping", "GET")
        assert status == 200, body
        assert call_from(None, sock, "/_ping", "GET")[0] == 403
    finally:
        discard(pocketbase)


def test_a_tcp_client_that_is_no_container_is_refused_by_a_container_only_policy(
        docker_client: docker.DockerClient, start_dockgate: StartDockgate,
        tmp_path: Path) -> None:
    """127.0.0.1 maps to no container: with only a container rule, nothing is granted."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent("""\
        policies:
          pinger: {grants: [{allow: [system.ping]}]}
        clients:
          - {compose_service: pocketbase, policy: pinger}
        """))
    proxy = start_dockgate(args=["--policy", str(policy)])
    wait_for_log(proxy, "container directory in sync")
    client = docker.APIClient(base_url=proxy.docker_host, version="1.41", timeout=30)
    try:
        with pytest.raises(docker.errors.APIError) as error:
            client.ping()
    finally:
        client.close()
    assert error.value.status_code == 403
    assert "no policy applies to this client" in str(error.value.explanation)


@contextlib.contextmanager
def internal_network(docker_client: docker.DockerClient) -> Iterator[Any]:
    """An --internal bridge network: containers get addresses no traffic can reach."""
    network = docker_client.networks.create(unique_name("net"), driver="bridge",
                                            internal=True)
    try:
        yield network
    finally:
        for container in docker_client.containers.list(all=True, filters={
                "network": network.id}):
            discard(container)
        network.remove()


def address_of(container: Any, network: Any) -> str:
    container.reload()
    address: str = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    assert address
    return address


def peer(address: str) -> Client:
    return Client("tcp://0.0.0.0:2375", "tcp", address=address, port=40000)


def run_directory(scenario: Callable[[ContainerDirectory], Awaitable[None]],
                  proc: str = "/proc") -> None:
    """Run a directory on the real daemon in an event loop, with ``scenario`` beside it."""
    async def main() -> None:
        upstream = Upstream(f"unix://{DOCKER_SOCKET}", 10.0)
        directory = ContainerDirectory(upstream, proc)
        directory.start()
        try:
            await until(lambda: directory.synced)
            await scenario(directory)
        finally:
            directory.stop()
            upstream.close_all()
    asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Wait (30 s at most) until ``condition()`` holds; the directory's state is polled."""
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in 30 s")


def test_the_directory_resolves_a_container_network_address_and_follows_its_removal(
        docker_client: docker.DockerClient, busybox_image: str, project: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """An address names its container while it runs, nothing once it is removed."""
    with internal_network(docker_client) as network:
        pocketbase = labelled(docker_client, busybox_image, "pb", {
            "com.docker.compose.service": "pocketbase", "com.docker.compose.project": project},
            network_mode=None, network=network.name)
        address = address_of(pocketbase, network)

        async def scenario(directory: ContainerDirectory) -> None:
            found = directory.identify(peer(address))
            assert found.container is not None
            assert found.container.id == pocketbase.id
            assert found.container.name == pocketbase.name
            assert found.container.labels["com.docker.compose.service"] == "pocketbase"
            assert found.unidentified is None
            local = directory.identify(peer("127.0.0.1"))
            assert (local.container, local.unidentified) == (None, None)
            await asyncio.to_thread(pocketbase.remove, force=True)
            await until(lambda: directory.identify(peer(address)).unidentified is None
                        and directory.identify(peer(address)).container is None)
            # Network events that move no container (create, destroy) are no news either.
            other = await asyncio.to_thread(docker_client.networks.create, unique_name("net"),
                                            internal=True)
            await asyncio.to_thread(other.remove)
            await asyncio.to_thread(time.sleep, 0.5)
            assert directory.synced
            assert "container directory:" not in caplog.text  # the stream never broke

        run_directory(scenario)


def test_a_container_started_after_the_sync_is_found_by_its_event(
        docker_client: docker.DockerClient, busybox_image: str) -> None:
    """A start event brings a new container in; until its refresh it is not guessed."""
    with internal_network(docker_client) as network:
        async def scenario(directory: ContainerDirectory) -> None:
            late = await asyncio.to_thread(labelled, docker_client, busybox_image, "late", {},
                                           network_mode=None, network=network.name)
            address = await asyncio.to_thread(address_of, late, network)
            await until(lambda: directory.identify(peer(address)).container is not None)
            found = directory.identify(peer(address)).container
            assert found is not None
            assert found.id == late.id

        run_directory(scenario)


def test_two_containers_sharing_one_network_namespace_are_ambiguous(
        docker_client: docker.DockerClient, busybox_image: str) -> None:
    """--network container:X puts two containers behind one address: it names neither."""
    with internal_network(docker_client) as network:
        first = labelled(docker_client, busybox_image, "netns", {}, network_mode=None,
                         network=network.name)
        address = address_of(first, network)
        sidecar = labelled(docker_client, busybox_image, "sidecar", {},
                           network_mode=f"container:{first.id}")

        async def scenario(directory: ContainerDirectory) -> None:
            found = directory.identify(peer(address))
            assert found.container is None
            assert found.unidentified == containers.SHARED

        try:
            run_directory(scenario)
        finally:
            discard(sidecar)  # not on the network: internal_network would not see it


def test_nothing_resolves_while_the_event_stream_is_cut(
        docker_client: docker.DockerClient, busybox_image: str) -> None:
    """A lost stream means changes may be missed: no answer until a fresh list is in."""
    with internal_network(docker_client) as network:
        pocketbase = labelled(docker_client, busybox_image, "cut", {}, network_mode=None,
                              network=network.name)
        address = address_of(pocketbase, network)

        async def scenario(directory: ContainerDirectory) -> None:
            assert directory.identify(peer(address)).container is not None
            directory.upstream.close_all()  # cuts the events stream (fault injection)
            await until(lambda: not directory.synced)
            cut = directory.identify(peer(address))
            assert cut.container is None
            assert cut.unidentified == containers.NOT_SYNCED
            assert directory.identify(peer("127.0.0.1")).unidentified == containers.NOT_SYNCED
            await until(lambda: directory.synced)  # listed again after RETRY_SECONDS
            assert directory.identify(peer(address)).container is not None

        run_directory(scenario)


def test_a_docker_exec_process_is_a_process_of_its_container(
        docker_client: docker.DockerClient, busybox_image: str) -> None:
    """A unix client started with docker exec is identified as the container it runs in."""
    pocketbase = labelled(docker_client, busybox_image, "exec", {
        "com.docker.compose.service": "pocketbase"})
    try:
        exec_id = docker_client.api.exec_create(pocketbase.id, ["sleep", "30"])["Id"]
        docker_client.api.exec_start(exec_id, detach=True)
        pid = 0
        for _ in range(100):
            pid = docker_client.api.exec_inspect(exec_id)["Pid"]
            if pid:
                break
            time.sleep(0.05)
        assert pid != pocketbase.attrs["State"]["Pid"]

        async def scenario(directory: ContainerDirectory) -> None:
            client = Client("unix:///run/dg.sock", "unix", uid=0, gid=0, pid=pid)
            found = directory.identify(client)
            assert found.container is not None
            assert found.container.id == pocketbase.id
            assert found.container.labels["com.docker.compose.service"] == "pocketbase"

        run_directory(scenario)
    finally:
        discard(pocketbase)


def test_a_process_cgroup_naming_no_or_an_unknown_container_is_told_apart(
        docker_client: docker.DockerClient, busybox_image: str, tmp_path: Path) -> None:
    """No container ID: not a container; an ID the daemon does not run: unidentified."""
    known = labelled(docker_client, busybox_image, "known", {})
    cgroups = {1: f"0::/docker/{known.id}\n", 2: "0::/user.slice/session-1.scope\n",
               3: f"0::/system.slice/docker-{'c3' * 32}.scope\n"}
    for pid, text in cgroups.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(text)

    def unix(pid: int) -> Client:
        return Client("unix:///run/dg.sock", "unix", uid=0, gid=0, pid=pid)

    async def scenario(directory: ContainerDirectory) -> None:
        found = directory.identify(unix(1))
        assert found.container is not None
        assert found.container.id == known.id
        assert directory.identify(unix(2)) == unix(2)
        assert directory.identify(unix(3)).unidentified == containers.UNKNOWN_CGROUP
        assert directory.identify(unix(4)).unidentified == containers.GONE
        assert directory.identify(unix(0)).unidentified == containers.HIDDEN
        # The pidfd pins the peer: pid 1's cgroup read counts only while it is alive.
        assert directory.identify(unix(1), alive).container is not None
        assert directory.identify(unix(1), gone).unidentified == containers.GONE

    alive = os.pidfd_open(os.getpid())
    exited = subprocess.Popen(["true"])
    gone = os.pidfd_open(exited.pid)
    exited.wait()
    try:
        run_directory(scenario, proc=str(tmp_path))
    finally:
        os.close(alive)
        os.close(gone)
        discard(known)
