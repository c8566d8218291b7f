"""Fault injection: a daemon that misbehaves on cue, and one killed under load.

Each case runs a real ``dockgate serve`` process in front of the fake daemon
(tests/fakedaemon.py), so what is checked is what a client and the operator see:

* a Docker-style JSON 502 whenever no byte of the daemon's answer reached the client
  yet; once a response is under way, the client connection is closed, so the client
  sees a truncated message, never a complete-looking wrong one;
* no leaked descriptor: the proxy's /proc/PID/fd count returns to where it was;
* no stuck connection: what the client gives up, the proxy gives up towards the
  daemon too;
* the proxy process never restarts (same pid, still serving).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import ALL_ON, DockgateProcess, StartDockgate
from fakedaemon import (
    FakeDaemon,
    answer_forever,
    answer_quiet_stream,
    answer_raw,
    answer_reset,
    answer_stall,
    is_closed,
)

LONG = os.environ.get("DOCKGATE_LONG") == "1"


def proxy_fds(proxy: DockgateProcess) -> int:
    return len(os.listdir(f"/proc/{proxy.process.pid}/fd"))


def quiet_fds(proxy: DockgateProcess, fake: FakeDaemon, timeout: float = 10.0) -> int:
    """The proxy's descriptors with no daemon connection open (pooled ones included).

    The fake is killed (which ends every connection the pool keeps) and restarted;
    the count is taken once it stops falling.
    """
    fake.kill()
    deadline = time.monotonic() + timeout
    count = proxy_fds(proxy)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = proxy_fds(proxy)
        if again == count:
            break
        count = again
    fake.start()
    return count


def connect(proxy: DockgateProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.settimeout(10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def ask(proxy: DockgateProcess, request: bytes) -> bytes:
    """Send one request (Connection: close is added), read everything until EOF."""
    with connect(proxy) as sock:
        sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        return read_all(sock)


def answer_502(raw: bytes) -> str:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), raw[:300]
    assert b"content-type: application/json" in head.lower()
    message: str = json.loads(body)["message"]
    assert message.startswith("dockgate: ")
    return message


@pytest.fixture
def proxy(fake: FakeDaemon, start_dockgate: StartDockgate) -> Iterator[DockgateProcess]:
    """dockgate (every Tecnativa section on) in front of the fake daemon."""
    running = start_dockgate(env=ALL_ON, upstream=f"unix://{fake.path}")
    # Warm up: the first request loads what the process loads lazily (fds included).
    assert ask(running, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n").startswith(b"HTTP/1.1 200")
    yield running
    assert running.process.poll() is None, "the proxy exited"


GET = b"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n"
MALFORMED = {
    # A reset reads as EOF or as ECONNRESET, depending on timing: either message is clear.
    "reset before answering": (answer_reset(), "without answering|cannot reach the Docker"),
    "malformed status line": (answer_raw(b"HTTP/1.1 abc OK\r\n\r\n"), "malformed status line"),
    "not HTTP at all": (answer_raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "malformed status line"),
    "oversized headers": (answer_raw(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000
                                     + b"\r\n\r\n"), "oversized response head"),
    "101 for a request that did not ask": (
        answer_raw(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                   b"Upgrade: tcp\r\n\r\nraw"), "did not ask for it"),
    "header line without a colon": (answer_raw(b"HTTP/1.1 200 OK\r\nnonsense\r\n\r\n"),
                                    "malformed header"),
    "closed before answering": (answer_raw(b""), "closed the connection without answering"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_daemon_failing_before_its_answer_is_a_json_502(
        case: str, fake: FakeDaemon, proxy: DockgateProcess) -> None:
    """Nothing of the answer reached the client yet: it gets a 502 that says what happened."""
    handler, says = MALFORMED[case]
    baseline = quiet_fds(proxy, fake)
    fake.on("GET", "/containers/json", handler)
    message = answer_502(ask(proxy, GET))
    assert any(part in message for part in says.split("|")), message
    del fake.handlers[("GET", "/containers/json")]
    assert ask(proxy, GET).startswith(b"HTTP/1.1 200")  # and the proxy goes on serving
    assert quiet_fds(proxy, fake) == baseline


def test_a_101_without_upgrade_header_to_an_attach_is_a_json_502(
        fake: FakeDaemon, proxy: DockgateProcess) -> None:
    """A switch to no named protocol is not relayed: the bytes after it mean nothing known."""
    fake.on("POST", "/containers/gw/attach",
            answer_raw(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\n\r\nraw"))
    raw = ask(proxy, b"POST /containers/gw/attach?stream=1 HTTP/1.1\r\nHost: d\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    assert "without an Upgrade header" in answer_502(raw)


@pytest.mark.parametrize(("case", "sent"), [
    ("reset after the head", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100\r\n\r\n[{\"Id\""),
    ("reset mid-chunk", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n5\r\n[{\"Id\r\n10\r\n\"abc"),
])
def test_a_daemon_reset_in_the_middle_of_an_answer_closes_the_client_connection(
        case: str, sent: bytes, fake: FakeDaemon, proxy: DockgateProcess) -> None:
    """The head is already out: the client must see a truncated answer and a closed socket."""
    baseline = quiet_fds(proxy, fake)
    fake.on("GET", "/containers/json", answer_reset(sent))
    with connect(proxy) as sock:
        sock.sendall(GET)  # keep-alive: only the proxy can end this connection
        raw = read_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    if b"content-length: 100" in head.lower():
        assert len(body) < 100
    else:
        assert not body.endswith(b"0\r\n\r\n")  # no last chunk: visibly incomplete
    assert quiet_fds(proxy, fake) == baseline


def test_a_stalled_daemon_holds_only_the_request_the_client_still_waits_for(
        fake: FakeDaemon, proxy: DockgateProcess) -> None:
    """A daemon that never answers: others are served; when the client leaves, so does the proxy."""
    baseline = quiet_fds(proxy, fake)
    fake.on("GET", "/containers/json", answer_stall())
    stalled = [connect(proxy) for _ in range(5)]
    for sock in stalled:
        sock.sendall(GET)
    assert ask(proxy, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n").startswith(b"HTTP/1.1 200")
    for sock in stalled:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # no answer: dockgate sets no time limit on a daemon's work
        sock.close()
    deadline = time.monotonic() + 10
    while fake.stalls_ended < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.stalls_ended == 5  # each daemon connection was closed behind its client
    assert quiet_fds(proxy, fake) == baseline


def test_an_endless_chunked_answer_ends_when_its_client_leaves(
        fake: FakeDaemon, proxy: DockgateProcess) -> None:
    """A chunked response that never ends is relayed as it comes, and released on close."""
    baseline = quiet_fds(proxy, fake)
    fake.on("GET", "/containers/gw/logs", answer_forever(0.01))
    with connect(proxy) as sock:
        sock.sendall(b"GET /containers/gw/logs?follow=1 HTTP/1.1\r\nHost: d\r\n\r\n")
        seen = b""
        while seen.count(b"tick") < 20:
            seen += sock.recv(65536)
        assert seen.startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 10
    while fake.open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.open_connections == 0
    assert quiet_fds(proxy, fake) == baseline


@dataclass
class Load:
    """Short requests in threads, counting each answer by status (0: no answer)."""

    proxy: DockgateProcess
    stop: threading.Event
    counts: dict[int, int]
    bad: list[bytes]
    lock: threading.Lock

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                raw = ask(self.proxy, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            except OSError:
                raw = b""
            status = int(raw[9:12]) if raw.startswith(b"HTTP/1.1 ") else 0
            with self.lock:
                self.counts[status] = self.counts.get(status, 0) + 1
                if status == 502:
                    try:
                        answer_502(raw)
                    except (AssertionError, ValueError):
                        self.bad.append(raw)
                elif status != 200:
                    self.bad.append(raw)


def test_a_daemon_killed_and_restarted_under_load_costs_502s_and_nothing_else(
        fake: FakeDaemon, proxy: DockgateProcess) -> None:
    """Held event streams end, short requests get JSON 502s while it is down, then all recovers."""
    streams = 1000 if LONG else 200
    baseline = quiet_fds(proxy, fake)
    pid = proxy.process.pid
    fake.on("GET", "/events", answer_quiet_stream())
    held = []
    for _ in range(streams):
        sock = connect(proxy)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: d\r\n\r\n")
        held.append(sock)
    for sock in held:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    load = Load(proxy, threading.Event(), {}, [], threading.Lock())
    workers = [threading.Thread(target=load.run) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    fake.kill()
    for sock in held:  # every stream ends: the daemon's side of it is gone
        assert is_closed(sock, timeout=10)
        sock.close()
    time.sleep(1.0)
    with load.lock:
        during = dict(load.counts)
    fake.start()
    time.sleep(1.0)
    load.stop.set()
    for worker in workers:
        worker.join(30)
    after = ask(proxy, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    assert after.startswith(b"HTTP/1.1 200")
    assert load.bad == []
    assert during.get(502, 0) > 0  # it was down, and said so
    assert load.counts.get(200, 0) > during.get(200, 0)  # and it came back
    assert load.counts.get(0, 0) == 0  # no request went unanswered
    assert proxy.process.pid == pid
    assert proxy.process.poll() is None
    assert quiet_fds(proxy, fake) == baseline


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(
        fake: FakeDaemon, proxy: DockgateProcess) -> None:
    """`printf 'GET ...' | nc -N`: the half-close reaches the daemon, the answer the client."""
    with connect(proxy) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b'{"message": "fake"}\n')
