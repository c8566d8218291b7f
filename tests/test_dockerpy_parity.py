"""docker-py, the library most Python tooling (and the MCP relay's ecosystem) uses, works
through an allow-all dockgate as it does on the daemon's socket.

docker-py differs from the Go CLI where proxies break: it sends an unversioned
``GET /version`` first, uses its own hijack code for attach and exec (an HTTP/1.1
connection it takes over), chunked streaming reads for logs and events, and in-memory
tar bodies for archives.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import tarfile
import threading
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from conftest import ALL_ON, DockgateProcess, StartDockgate, tar_of, unique_name

pytestmark = pytest.mark.daemon

STDOUT, STDERR = 1, 2


@pytest.fixture
def proxy(start_dockgate: StartDockgate, busybox_image: str) -> DockgateProcess:
    """An allow-all dockgate (every Tecnativa section on) in front of the real daemon."""
    return start_dockgate(env=ALL_ON)


@pytest.fixture
def client(proxy: DockgateProcess) -> Iterator[docker.DockerClient]:
    """docker-py through the proxy, API version negotiated as docker-py does by default."""
    proxied = docker.DockerClient(base_url=proxy.docker_host, timeout=60)
    yield proxied
    proxied.close()


@pytest.fixture
def sleeper(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[Any]:
    """A running container that just sleeps, seen through the proxied client."""
    name = unique_name("py-sleeper")
    container = docker_client.containers.run(busybox_image, ["sleep", "600"], name=name,
                                             network_mode="none", detach=True)
    yield container
    with contextlib.suppress(docker.errors.APIError):  # another session's cleanup may win
        container.remove(force=True)


def read_frames(sock: socket.socket) -> dict[int, bytes]:
    """Demultiplex a non-TTY attach stream (8-byte headers) until the daemon ends it."""
    buffered = bytearray()
    while chunk := sock.recv(65536):
        buffered += chunk
    streams: dict[int, bytes] = {}
    offset = 0
    while offset < len(buffered):
        kind, size = struct.unpack_from(">BxxxL", buffered, offset)
        offset += 8
        streams[kind] = streams.get(kind, b"") + bytes(buffered[offset:offset + size])
        offset += size
    return streams


def test_containers_run_returns_the_same_output_through_the_proxy(
        client: docker.DockerClient, docker_client: docker.DockerClient,
        busybox_image: str) -> None:
    """containers.run is create + start + wait + logs: four routes that must all pass."""
    script = "echo hello; sleep 0.2; echo oops >&2"
    outputs = [each.containers.run(busybox_image, ["sh", "-c", script],
                                   name=unique_name("py-run"), network_mode="none",
                                   stderr=True, remove=True)
               for each in (docker_client, client)]
    assert outputs == [b"hello\noops\n"] * 2


def test_streamed_logs_arrive_line_by_line_and_end_with_the_container(
        client: docker.DockerClient, docker_client: docker.DockerClient,
        busybox_image: str) -> None:
    """logs(stream=True, follow=True) is a chunked response read while it is produced."""
    name = unique_name("py-logs")
    script = "sleep 1; for i in 1 2 3; do echo line$i; sleep 0.2; done"
    docker_client.containers.run(busybox_image, ["sh", "-c", script], name=name,
                                 network_mode="none", detach=True)
    received = b"".join(client.containers.get(name).logs(stream=True, follow=True))
    assert received == b"line1\nline2\nline3\n"


def test_exec_run_keeps_the_exit_code_and_separates_the_streams(
        client: docker.DockerClient, sleeper: Any) -> None:
    """exec_run hijacks the connection after a JSON body; demux needs intact frame headers."""
    proxied = client.containers.get(sleeper.id)
    result = proxied.exec_run(["sh", "-c", "echo out; echo err >&2; exit 4"], demux=True)
    assert (result.exit_code, result.output) == (4, (b"out\n", b"err\n"))


def test_attach_socket_relays_stdin_and_the_half_close(
        client: docker.DockerClient, docker_client: docker.DockerClient,
        busybox_image: str) -> None:
    """Attached stdin must reach the process, and shutting our write side must end its input."""
    name = unique_name("py-attach")
    # docker-py sets StdinOnce with stdin_open: stdin closes when the attached client's does.
    container = docker_client.containers.create(
        busybox_image, ["sh", "-c", "cat; echo stdin-closed >&2"], name=name,
        network_mode="none", stdin_open=True)
    attached = client.api.attach_socket(name, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                      "stream": 1})
    raw: socket.socket = attached._sock
    raw.settimeout(30)
    try:
        container.start()
        payload = os.urandom(256 * 1024)
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        streams = read_frames(raw)
    finally:
        attached.close()  # the file object docker-py made holds the descriptor open too
        raw.close()
    assert streams == {STDOUT: payload, STDERR: b"stdin-closed\n"}
    assert container.wait(timeout=30)["StatusCode"] == 0


def test_put_and_get_archive_round_trip_a_file(
        client: docker.DockerClient, sleeper: Any) -> None:
    """Archive bodies are binary tar both ways; one altered byte breaks the round trip."""
    content = os.urandom(3 * 1024 * 1024)
    proxied = client.containers.get(sleeper.id)
    assert proxied.put_archive("/tmp", tar_of({"payload.bin": content})) is True
    chunks, stat = proxied.get_archive("/tmp/payload.bin")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        extracted = tar.extractfile("payload.bin")
        assert extracted is not None
        assert extracted.read() == content
    assert (stat["name"], stat["size"]) == ("payload.bin", len(content))


def test_events_stream_delivers_an_event_triggered_while_it_is_open(
        client: docker.DockerClient, docker_client: docker.DockerClient,
        busybox_image: str) -> None:
    """A live events stream must be relayed as it happens, not when the response ends."""
    name = unique_name("py-events")
    events = client.events(decode=True, filters={"container": name})
    received: list[dict[str, Any]] = []

    def collect() -> None:
        with contextlib.suppress(Exception):  # closing the stream below ends the read
            for event in events:
                received.append(event)
                if event.get("Action") == "destroy":
                    return

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    container = docker_client.containers.create(busybox_image, ["true"], name=name,
                                                network_mode="none")
    container.remove()
    reader.join(timeout=30)
    events.close()
    assert [(event["Action"], event["Actor"]["ID"]) for event in received] == \
           [("create", container.id), ("destroy", container.id)]
