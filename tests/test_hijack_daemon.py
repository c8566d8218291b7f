"""The proxy core against the real daemon: plain requests, streams, exec and attach.

The broad docker CLI / docker-py parity suite lives elsewhere; these cover the
core behaviours a real daemon exercises better than any fake: the CLI's own
hijack, half-close and streaming code.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import docker
import pytest

from conftest import DOCKER_SOCKET, unique_name
from fakedaemon import RunningProxy, connect, read_replies, run_proxy

pytestmark = pytest.mark.daemon

DOCKER = "/usr/local/bin/docker"


@pytest.fixture
def proxy() -> Iterator[RunningProxy]:
    """dockgate (AllowAll) in front of the real daemon."""
    with run_proxy(f"unix://{DOCKER_SOCKET}") as running:
        yield running


def cli(proxy: RunningProxy, *args: str, stdin: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the docker CLI through the proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = f"tcp://127.0.0.1:{proxy.port}"
    return subprocess.run([DOCKER, *args], input=stdin, capture_output=True, env=env,
                          timeout=timeout, check=False)


def test_plain_requests_reach_the_real_daemon(proxy: RunningProxy) -> None:
    """Ping, version and a container list come back as the daemon sent them."""
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{proxy.port}", timeout=30)
    try:
        assert client.ping()
        assert client.version()["ApiVersion"]
        assert isinstance(client.containers.list(all=True), list)
    finally:
        client.close()
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
                     b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        replies = read_replies(sock, [("GET", "/_ping"), ("HEAD", "/_ping")])
    assert [(r.status, r.body) for r in replies] == [(200, b"OK"), (200, b"")]


def test_attach_with_stdin_half_close_returns_the_input(proxy: RunningProxy,
                                                         busybox_image: str) -> None:
    """`echo hi | docker run -i ... cat`: stdin EOF must half-close, output must come back."""
    name = unique_name("core-attach")
    result = cli(proxy, "run", "-i", "--rm", "--network", "none", "--name", name,
                 busybox_image, "cat", stdin=b"hi\nthere\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi\nthere\n"


def test_docker_exec_runs_through_the_upgrade(proxy: RunningProxy, busybox_image: str,
                                              docker_client: docker.DockerClient) -> None:
    """exec start is an upgrade request with a JSON body: output and stdin both work."""
    name = unique_name("core-exec")
    docker_client.containers.run(busybox_image, ["sleep", "300"], name=name, detach=True,
                                 network_mode="none")
    result = cli(proxy, "exec", name, "echo", "exec-ok")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"exec-ok\n"
    result = cli(proxy, "exec", "-i", name, "cat", stdin=b"through stdin\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"through stdin\n"
    result = cli(proxy, "exec", name, "sh", "-c", "exit 3")
    assert result.returncode == 3


def test_logs_follow_streams_as_lines_are_written(proxy: RunningProxy, busybox_image: str,
                                                  docker_client: docker.DockerClient) -> None:
    """`docker logs -f` delivers lines while the container runs, with no total timeout."""
    name = unique_name("core-logs")
    docker_client.containers.run(
        busybox_image, ["sh", "-c", "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done"],
        name=name, detach=True, network_mode="none")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = f"tcp://127.0.0.1:{proxy.port}"
    with subprocess.Popen([DOCKER, "logs", "-f", name], stdout=subprocess.PIPE,
                          env=env) as follower:
        assert follower.stdout is not None
        started = time.monotonic()
        lines = [follower.stdout.readline() for _ in range(8)]
        follower.kill()
    assert lines[-1].startswith(b"tick")
    assert time.monotonic() - started > 0.8  # they came one by one, not at the end
    deadline = time.monotonic() + 5
    while proxy.call(lambda: proxy.proxy.upstream.open_connections) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.call(lambda: proxy.proxy.upstream.open_connections) <= 1


def read_stdout(sock: socket.socket, size: int) -> bytes:
    """Demultiplex Docker's attach stream until ``size`` bytes of stdout arrived."""
    data = b""
    out = b""
    while len(out) < size:
        while len(data) >= 8 and len(data) >= 8 + struct.unpack(">I", data[4:8])[0]:
            length = struct.unpack(">I", data[4:8])[0]
            if data[0] == 1:
                out += data[8:8 + length]
            data = data[8 + length:]
        if len(out) >= size:
            break
        chunk = sock.recv(65536)
        assert chunk, f"closed after stdout {out!r}"
        data += chunk
    return out


@pytest.mark.parametrize("split", [False, True], ids=["same-packet", "later-packet"])
def test_attach_upgrade_body_never_reaches_the_containers_stdin(
        proxy: RunningProxy, busybox_image: str, docker_client: docker.DockerClient,
        split: bool) -> None:
    """dockerode sends JSON with the attach upgrade; dockerd hands a late body to stdin."""
    name = unique_name("core-attach-body")
    container = docker_client.containers.run(busybox_image, ["cat"], name=name, detach=True,
                                             stdin_open=True, network_mode="none")
    body = b'{"stream":true,"stdin":true,"stdout":true,"stderr":true,"hijack":true}'
    head = (f"POST /v1.41/containers/{container.id}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
            f"HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
    for run in range(20):
        with connect(proxy.port) as sock:
            if split:
                sock.sendall(head)
                time.sleep(0.02)
                sock.sendall(body)
            else:
                sock.sendall(head + body)
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
            answer, rest = reply.split(b"\r\n\r\n", 1)
            assert answer.startswith(b"HTTP/1.1 101"), answer
            assert rest == b""
            line = b"stdin line %d\n" % run
            sock.sendall(line)
            assert read_stdout(sock, len(line)) == line
