"""The daemon probe at start: warnings that name the cause, and the daemon's defaults."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from conftest import DOCKER_SOCKET, StartDockgate
from dockgate import bodies, probe, settings


def test_a_missing_socket_is_a_warning_naming_the_path(start_dockgate: StartDockgate,
                                                         sockdir: Path) -> None:
    """Not fatal (compose starts services in any order), but said at once."""
    missing = sockdir / "none.sock"
    proxy = start_dockgate(upstream=f"unix://{missing}")
    assert (f"WARNING dockgate: the daemon socket {missing} does not exist: every request "
            "gets 502 until it does") in proxy.log()


def test_a_permission_error_names_the_socket_s_group(sockdir: Path) -> None:
    """The usual cause with the uid-10001 image: the socket's group is missing."""
    path = sockdir / "daemon.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        os.chown(path, 4242, 4243)
        path.chmod(0o660)
        # Root without CAP_DAC_OVERRIDE is refused like any other user.
        code = ("from dockgate import probe, settings; "
                f"print(probe.daemon(settings.load(None, {{'SOCKET_PATH': '{path}'}}))[0][0])")
        result = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
             code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == (
        f"cannot connect to the daemon at unix://{path}: permission denied; the socket "
        "belongs to group 4243 (gid 4243, mode 660): run dockgate with that group (compose: "
        'group_add: ["4243"]; docker run --group-add 4243)')


@pytest.mark.daemon
def test_the_daemon_s_cgroupns_default_comes_from_its_cgroup_version(
        docker_client: docker.DockerClient) -> None:
    """cgroup v1 hosts default to cgroupns host: the probe agrees with the daemon's /info."""
    problems, defaults = probe.daemon(settings.load(None, {"SOCKET_PATH": DOCKER_SOCKET}))
    assert problems == []
    version = docker_client.info()["CgroupVersion"]
    assert defaults == bodies.DaemonDefaults(cgroupns="host" if version == "1" else "private")
