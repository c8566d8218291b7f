"""Shared event subscriptions against the real daemon: one stream, the same bytes, each scope.

Followers of the same live ``/events`` query share one daemon stream through
dockgate (shell/feeds.py). The proxy's sockets are counted from /proc: N followers
cost N + 1, not 2N. Each follower gets the daemon's events byte for byte, a late
one from the moment it joined, and a client whose policy scopes events sees only
its containers even when it shares the stream with one that sees everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import pytest

from conftest import ALL_ON, DockgateProcess, StartDockgate, unique_name
from fakedaemon import followers

pytestmark = pytest.mark.daemon


def sockets(proxy: DockgateProcess) -> int:
    """Sockets the proxy process holds (listeners, clients, the daemon's side)."""
    count = 0
    for fd in Path(f"/proc/{proxy.process.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            count += os.readlink(fd).startswith("socket:")
    return count


@pytest.fixture
def label() -> str:
    return f"dockgate.test.feed={uuid.uuid4().hex}"


def events_target(label: str) -> str:
    return "/v1.41/events?filters=" + quote(json.dumps({"label": [label]}))


def created(docker_client: docker.DockerClient, image: str, label: str,
            name: str | None = None) -> Any:
    key, value = label.split("=")
    return docker_client.containers.create(image, ["true"], name=name or unique_name("feed"),
                                           labels={key: value}, network_mode="none")


def actions(lines: list[bytes]) -> list[tuple[str, str]]:
    """(Action, container name) of each event line."""
    return [(event["Action"], event["Actor"]["Attributes"]["name"])
            for event in map(json.loads, lines)]


def test_followers_of_the_same_events_share_one_daemon_stream_byte_for_byte(
        docker_client: docker.DockerClient, busybox_image: str,
        start_dockgate: StartDockgate, label: str) -> None:
    proxy = start_dockgate(env=ALL_ON)
    target = events_target(label)
    before = sockets(proxy)
    with followers(proxy.port, target, 20) as clients:
        assert sockets(proxy) - before <= 20 + 1  # unshared, it would be 40
        container = created(docker_client, busybox_image, label)
        first = clients[0].lines(1)
        assert actions(first) == [("create", container.name)]
        for client in clients:
            assert client.lines(1) == first
        with followers(proxy.port, target, 1) as (late,):
            container.remove()
            (destroy,) = late.lines(1)
            assert actions([destroy]) == [("destroy", container.name)]
            for client in clients:
                assert client.lines(2) == [*first, destroy]


def test_a_scoped_client_sharing_the_stream_sees_only_its_containers(
        docker_client: docker.DockerClient, busybox_image: str,
        start_dockgate: StartDockgate, label: str, tmp_path: Path) -> None:
    """Scoped (127.0.0.2) and unscoped followers on one daemon stream, each filtered apart."""
    mine = unique_name("feed-mine")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""\
policies:
  scoped:
    grants:
      - allow: [system.events]
        containers: {{names: [{mine}]}}
  everything:
    grants:
      - allow: [system.events]
clients:
  - {{address: 127.0.0.2, policy: scoped}}
default: everything
""")
    proxy = start_dockgate(args=["--policy", str(policy)])
    target = events_target(label)
    before = sockets(proxy)
    with followers(proxy.port, target, 5, source="127.0.0.2") as scoped, \
            followers(proxy.port, target, 5) as unscoped:
        assert sockets(proxy) - before <= 10 + 1  # unshared, it would be 20
        theirs = created(docker_client, busybox_image, label)
        own = created(docker_client, busybox_image, label, name=mine)
        theirs.remove()
        own.remove()
        for client in unscoped:
            assert actions(client.lines(4)) == [("create", theirs.name), ("create", mine),
                                                ("destroy", theirs.name), ("destroy", mine)]
        for client in scoped:
            assert actions(client.lines(2)) == [("create", mine), ("destroy", mine)]
