"""Slow and greedy clients are bounded: per request, per connection and per process.

Each test runs a real ``dockgate serve`` process in front of the fake daemon
(tests/fakedaemon.py) and talks to it over plain sockets, so what is checked is what a
client sees: a Docker-style JSON answer, a closed connection, and a daemon that never
received the half-sent request.
"""

from __future__ import annotations

import json
import os
import socket
import time

from conftest import ALL_ON, StartDockgate
from fakedaemon import FakeDaemon, is_closed
from test_faults import quiet_fds


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response, read until its Content-Length is in."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":")
                                                            for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the body"
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def test_a_client_pausing_in_a_streamed_body_gets_408_and_the_daemon_no_request(
        fake: FakeDaemon, start_dockgate: StartDockgate) -> None:
    """A body that stops arriving ties up a connection to the daemon: drop it after the timeout."""
    proxy = start_dockgate(env={**ALL_ON, "DOCKGATE_BODY_TIMEOUT": "0.5"},
                           upstream=f"unix://{fake.path}")
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /images/load HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n"
                     b"Content-Type: application/x-tar\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        status, headers, body = read_answer(sock)
        assert status == 408
        assert 0.4 < time.monotonic() - started < 5
        assert "DOCKGATE_BODY_TIMEOUT" in json.loads(body)["message"]
        assert headers["connection"] == "close"
        assert is_closed(sock)
    assert fake.requests == []  # the daemon saw a head and 10 bytes, never a request


def test_a_client_pausing_in_an_inspected_body_gets_408(
        fake: FakeDaemon, start_dockgate: StartDockgate, tmp_path: os.PathLike[str]) -> None:
    """The body a policy reads whole is under the same inactivity timeout."""
    policy = os.path.join(tmp_path, "policy.yaml")
    with open(policy, "w") as out:
        out.write("policies:\n  p:\n    grants:\n      - allow: [container.create]\n"
                  "        create: {deny: [privileged]}\ndefault: p\n")
    proxy = start_dockgate(env={"DOCKGATE_BODY_TIMEOUT": "0.5"},
                           args=["--policy", policy], upstream=f"unix://{fake.path}")
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 50\r\n"
                     b"Content-Type: application/json\r\n\r\n{\"Image\": ")
        status, _headers, body = read_answer(sock)
        assert status == 408
        assert "no request body bytes" in json.loads(body)["message"]
    assert fake.requests == []


def test_a_body_trickling_faster_than_the_timeout_is_forwarded(
        fake: FakeDaemon, start_dockgate: StartDockgate) -> None:
    """The timeout is for inactivity, not for the whole body: a slow upload still works."""
    proxy = start_dockgate(env={**ALL_ON, "DOCKGATE_BODY_TIMEOUT": "1"},
                           upstream=f"unix://{fake.path}")
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /images/load HTTP/1.1\r\nHost: d\r\nContent-Length: 6\r\n\r\n")
        for byte in b"abcdef":
            time.sleep(0.3)
            sock.sendall(bytes([byte]))
        status, _headers, _body = read_answer(sock)
        assert status == 200
    assert fake.requests[0].body == b"abcdef"


def test_connections_past_the_limit_are_answered_503_and_closed(
        fake: FakeDaemon, start_dockgate: StartDockgate) -> None:
    """Slowloris cannot take every descriptor: one connection past the limit gets a clear no."""
    proxy = start_dockgate(env={**ALL_ON, "DOCKGATE_MAX_CONNECTIONS": "5"},
                           upstream=f"unix://{fake.path}")
    held = [connect(proxy.port) for _ in range(5)]
    for sock in held:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        assert read_answer(sock)[0] == 200  # served, and kept open (keep-alive)
    with connect(proxy.port) as extra:
        extra.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        status, headers, body = read_answer(extra)
        assert status == 503
        assert headers["connection"] == "close"
        assert "DOCKGATE_MAX_CONNECTIONS" in json.loads(body)["message"]
        assert is_closed(extra)
    held.pop().close()
    time.sleep(0.3)  # the proxy notices the close
    with connect(proxy.port) as again:
        again.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        assert read_answer(again)[0] == 200
    for sock in held:
        sock.close()


def test_many_slowloris_heads_are_all_cut_off_and_their_descriptors_freed(
        fake: FakeDaemon, start_dockgate: StartDockgate) -> None:
    """Each trickled head ends in a 408 after the header timeout; nothing stays open."""
    proxy = start_dockgate(env={**ALL_ON, "DOCKGATE_HEADER_TIMEOUT": "0.5"},
                           upstream=f"unix://{fake.path}")
    with connect(proxy.port) as warm:  # what the process opens lazily, opened
        warm.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        assert read_answer(warm)[0] == 200
    baseline = quiet_fds(proxy, fake)
    received = len(fake.received)
    socks = [connect(proxy.port) for _ in range(50)]
    for sock in socks:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Slow: ")
    for sock in socks:
        assert read_answer(sock)[0] == 408
        assert is_closed(sock)
        sock.close()
    assert quiet_fds(proxy, fake) == baseline
    assert len(fake.received) == received  # not a byte of the 50 heads reached the daemon
    assert proxy.process.poll() is None
