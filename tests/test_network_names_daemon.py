"""Network names with spaces, UTF-8, ``? # \\`` through dockgate, against the real daemon.

docker-py's own suite creates ``peer dg`` and the docker CLI sends such names
percent-encoded (``docker network inspect 'a b'`` is ``GET /networks/a%20b``). The
daemon routes them, so dockgate must too: a client that can create a network by
name must be able to inspect, connect and remove it by that name. Other object
kinds cannot have such names: the daemon refuses to create them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from conftest import DockgateProcess, StartDockgate, unique_name

pytestmark = pytest.mark.daemon

DOCKER_CLI = "/usr/local/bin/docker"
NETWORKS_POLICY = """\
policies:
  net:
    grants:
      - allow: [system.ping, system.version, network.*, container.create,
                container.inspect, container.delete]
default: net
"""


def odd_names() -> list[str]:
    """Fresh names with a space, UTF-8 and the delimiters, unique to this run."""
    tag = uuid.uuid4().hex[:6]
    return [f"peer dg 01 {tag}", f"caf\u00e9-dg-{tag}", f"dg?a#b\\c {tag}"]


@pytest.fixture
def proxy(start_dockgate: StartDockgate, tmp_path: Path) -> DockgateProcess:
    path = tmp_path / "policy.yaml"
    path.write_text(NETWORKS_POLICY)
    return start_dockgate(args=["--policy", str(path)])


@pytest.fixture
def plain_network(docker_client: docker.DockerClient) -> Iterator[str]:
    """An internal network the test container is created on (it is never started)."""
    name = f"dgtest-net-{uuid.uuid4().hex[:8]}"
    docker_client.networks.create(name, internal=True)
    yield name
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.api.remove_network(name)


def cleanup(docker_client: docker.DockerClient, names: list[str]) -> None:
    for name in names:
        for found in docker_client.networks.list(names=[name]):
            if found.name == name:
                found.remove()


def test_docker_py_creates_inspects_connects_and_removes_odd_network_names(
        proxy: DockgateProcess, docker_client: docker.DockerClient, busybox_image: str,
        plain_network: str) -> None:
    """Each name works by name through dockgate, as it does straight to the daemon."""
    client = docker.DockerClient(base_url=proxy.url, version="1.41", timeout=60)
    names = odd_names()
    container = client.containers.create(busybox_image, ["true"],
                                         name=unique_name("net"), network=plain_network)
    try:
        for name in names:
            created = client.networks.create(name, internal=True)
            assert client.api.inspect_network(name)["Id"] == created.id
            client.api.connect_container_to_network(container.id, name)
            attached = client.api.inspect_container(container.id)["NetworkSettings"]
            assert name in attached["Networks"]
            client.api.disconnect_container_from_network(container.id, name)
            client.api.remove_network(name)
            with pytest.raises(docker.errors.NotFound):
                client.api.inspect_network(name)
    finally:
        container.remove(force=True)
        cleanup(docker_client, names)
        client.close()


def test_docker_cli_creates_inspects_connects_and_removes_odd_network_names(
        proxy: DockgateProcess, docker_client: docker.DockerClient, busybox_image: str,
        plain_network: str) -> None:
    """The CLI percent-encodes the name in the path; every step answers as the daemon does."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
           "DOCKER_HOST": proxy.docker_host}

    def docker_cli(*args: str) -> str:
        done = subprocess.run([DOCKER_CLI, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, (args, done.stderr, proxy.log()[-2000:])
        return done.stdout.strip()

    names = odd_names()
    container = unique_name("netcli")
    docker_cli("create", "--name", container, "--network", plain_network, busybox_image,
               "true")
    try:
        for name in names:
            docker_cli("network", "create", "--internal", name)
            assert docker_cli("network", "inspect", "-f", "{{.Name}}", name) == name
            docker_cli("network", "connect", name, container)
            docker_cli("network", "disconnect", name, container)
            assert docker_cli("network", "rm", name) == name
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(container, force=True)
        cleanup(docker_client, names)


@pytest.mark.parametrize("name", ["a b", "caf\u00e9", "a?b"])
def test_the_daemon_refuses_such_names_for_containers_volumes_and_images(
        docker_client: docker.DockerClient, busybox_image: str, name: str) -> None:
    """Why dockgate refuses (400) these characters in container, volume, image references."""
    with pytest.raises(docker.errors.APIError, match="Invalid container name"):
        docker_client.api.create_container(busybox_image, ["true"], name=name)
    with pytest.raises(docker.errors.APIError, match="invalid characters for a local volume"):
        docker_client.api.create_volume(name)
    with pytest.raises(docker.errors.APIError, match="invalid"):
        docker_client.api.tag(busybox_image, f"dgtest-{name}", tag="x")
