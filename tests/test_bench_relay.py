"""bench/relay.py, the floor rows' byte relay, is a correct relay (no timing is checked).

Its docstring and bench/README.md say it passes bytes both ways as they come, relays
half-close and backpressure, and runs as several processes that stop together; a relay
that lost bytes or stalled would make the floor figures meaningless. The upstream is a
small unix-socket server in this process: the relay knows no HTTP, so any bytes do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import free_port, wait_for_port

RELAY = Path(__file__).resolve().parent.parent / "bench" / "relay.py"
BIG = 64 << 20  # far beyond the socket and transport buffers: backpressure must engage

Handler = Callable[[socket.socket], None]
StartRelay = Callable[[Handler], tuple[int, "subprocess.Popen[bytes]"]]


def read_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def pattern(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[StartRelay]:
    """Start an upstream that runs ``handler`` per connection, and the relay (2 workers)
    in front of it; (the relay's port, its process)."""
    started: list[tuple[socket.socket, subprocess.Popen[bytes]]] = []

    def start(handler: Handler) -> tuple[int, subprocess.Popen[bytes]]:
        path = str(tmp_path / "upstream.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(16)

        def handle(conn: socket.socket) -> None:
            with contextlib.suppress(OSError):  # the fixture's probe connection is cut short
                handler(conn)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return  # closed by the fixture
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        port = free_port()
        process = subprocess.Popen([sys.executable, str(RELAY), "--listen", f"127.0.0.1:{port}",
                                    "--upstream", path, "--workers", "2"])
        started.append((server, process))
        wait_for_port(port)
        return port, process

    yield start
    for server, process in started:
        process.terminate()
        process.wait(timeout=10)
        server.close()


def test_bytes_go_both_ways_and_a_half_close_reaches_the_upstream(relay: StartRelay) -> None:
    def answer_after_eof(conn: socket.socket) -> None:
        with conn:
            request = read_all(conn)  # returns at the EOF the relay passed on
            conn.sendall(b"got:" + request)

    port, _ = relay(answer_after_eof)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"hello ")
        client.sendall(b"relay")
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b"got:hello relay"


def test_a_slow_reader_gets_every_byte_in_order(relay: StartRelay) -> None:
    data = pattern(BIG)

    def send_big(conn: socket.socket) -> None:
        with conn:
            conn.sendall(data)

    port, _ = relay(send_big)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"go")
        time.sleep(1)  # the relay's buffers fill meanwhile: it must pause, not drop
        received = read_all(client)
    assert len(received) == BIG
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


def test_sigterm_stops_every_worker(relay: StartRelay) -> None:
    port, process = relay(lambda conn: conn.close())
    children = [int(pid) for pid in
                Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    assert len(children) == 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_what_the_upstream_sends_before_the_pair_is_made_is_not_lost(relay: StartRelay) -> None:
    """The upstream speaks first and closes at once: its bytes and its close can reach the
    relay before the relay has paired the two connections."""
    def greet_and_close(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"hello")

    port, _ = relay(greet_and_close)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert read_all(client) == b"hello"
