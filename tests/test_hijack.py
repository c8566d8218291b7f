"""Hijacked connections against the fake daemon: upgrades, raw streams, half-close, cleanup."""

from __future__ import annotations

import json
import socket
import threading
import time

from fakedaemon import (
    FakeConnection,
    FakeDaemon,
    Received,
    RunningProxy,
    answer_forever,
    answer_hijack,
    answer_quiet_stream,
    answer_upgrade_websocket,
    connect,
    is_closed,
    open_fds,
    read_replies,
    run_proxy,
    wait_for,
)

EXEC_BODY = b'{"Detach":false,"Tty":false}'


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read a response head; (head, bytes received after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def read_until_eof(sock: socket.socket, already: bytes = b"") -> bytes:
    data = already
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_exactly(sock: socket.socket, size: int, already: bytes = b"") -> bytes:
    data = already
    while len(data) < size:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def exec_start(body: bytes = EXEC_BODY, extra: bytes = b"") -> bytes:
    return (b"POST /v1.41/exec/abc123/start HTTP/1.1\r\nHost: docker\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body + extra


def test_exec_start_upgrade_with_body_delivers_the_body_then_relays_raw(
        fake: FakeDaemon) -> None:
    """httptools hides an upgrade request's body: the daemon must still get it, exactly."""
    fake.on("POST", "/v1.41/exec/abc123/start", answer_hijack())
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(exec_start())
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: tcp" in head.lower()
        sock.sendall(b"stdin-1")
        assert read_exactly(sock, 12, rest) == b"echo:stdin-1"
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == b"EOF-SEEN"
    request = fake.requests[0]
    assert request.body == EXEC_BODY
    assert request.header("Upgrade") == "tcp"
    assert request.header("Connection") == "Upgrade"
    assert request.header("Content-Length") == str(len(EXEC_BODY))


def test_stdin_sent_with_the_upgrade_request_is_relayed_after_the_switch(
        fake: FakeDaemon) -> None:
    """Raw bytes in the same packet as the request are stdin, not a next request."""
    fake.on("POST", "/v1.41/exec/abc123/start", answer_hijack())
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(exec_start(extra=b"early"))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        assert read_exactly(sock, 10, rest) == b"echo:early"
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == b"EOF-SEEN"
    assert fake.requests[0].body == EXEC_BODY


def test_raw_200_hijack_without_upgrade_relays_both_ways(fake: FakeDaemon) -> None:
    """Docker's other form: 200 with a raw-stream type, then raw bytes in both directions."""
    fake.on("POST", "/containers/c1/attach", answer_hijack(upgrade=False, greeting=b"hello"))
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /containers/c1/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
                     b"Host: docker\r\nContent-Length: 0\r\n\r\n")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"application/vnd.docker.raw-stream" in head
        assert b"chunked" not in head.lower()
        assert read_exactly(sock, 5, rest) == b"hello"
        sock.sendall(b"input")
        assert read_exactly(sock, 10) == b"echo:input"
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == b"EOF-SEEN"


def test_daemon_half_close_reaches_the_client_which_can_still_send(fake: FakeDaemon) -> None:
    """EOF from the daemon is a half-close: the client's later bytes still reach the daemon."""
    got_after_eof: list[bytes] = []

    def output_then_listen(request: Received, conn: FakeConnection) -> bool:
        conn.send(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nout")
        conn.sock.shutdown(socket.SHUT_WR)
        while data := conn.recv():
            got_after_eof.append(data)
        return False

    fake.on("POST", "/containers/c1/attach", output_then_listen)
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /containers/c1/attach?stdin=1 HTTP/1.1\r\nHost: d\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        _, rest = read_head(sock)
        assert read_until_eof(sock, rest) == b"out"
        sock.sendall(b"late-input")
        sock.shutdown(socket.SHUT_WR)
        assert is_closed(sock)
        # The fake's thread may read a moment after the proxy closed its side.
        assert wait_for(lambda: b"".join(got_after_eof) == b"late-input")


def test_websocket_attach_is_relayed_after_101(fake: FakeDaemon) -> None:
    """GET attach/ws upgrades to websocket; frames pass through untouched."""
    fake.on("GET", "/containers/c1/attach/ws", answer_upgrade_websocket())
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /containers/c1/attach/ws?stream=1 HTTP/1.1\r\nHost: d\r\n"
                     b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in head.lower()
        assert b"Sec-WebSocket-Accept: fake" in head
        sock.sendall(b"\x81\x02hi")
        assert read_exactly(sock, 4, rest) == b"\x81\x02hi"
    assert fake.requests[0].header("Sec-WebSocket-Key") == "dGhlIHNhbXBsZSBub25jZQ=="


def test_session_upgrade_to_h2c_is_relayed(fake: FakeDaemon) -> None:
    """/session (BuildKit) upgrades to h2c once allowed; the bytes after 101 are opaque."""
    def upgrade_h2c(request: Received, conn: FakeConnection) -> bool:
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                  b"Upgrade: h2c\r\n\r\n")
        while data := conn.recv():
            conn.send(data.upper())
        return False

    fake.on("POST", "/session", upgrade_h2c)
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /session HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                     b"Upgrade: h2c\r\nX-Docker-Expose-Session-Uuid: u1\r\n\r\n")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: h2c" in head.lower()
        sock.sendall(b"prism")
        assert read_exactly(sock, 5, rest) == b"PRISM"
    assert fake.requests[0].header("Upgrade") == "h2c"


def test_upgrade_on_a_plain_route_is_not_forwarded(fake: FakeDaemon) -> None:
    """Only hijack routes may leave HTTP; elsewhere the Upgrade request header is dropped."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                     b"Upgrade: tcp\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/version")])
    assert reply.status == 200
    assert fake.requests[0].header("Upgrade") is None


def test_unrequested_101_from_the_daemon_is_a_502(fake: FakeDaemon) -> None:
    """The daemon switching protocols on a plain request must not open a raw tunnel."""
    fake.on("GET", "/version", answer_hijack())
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: d\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/version")])
    assert reply.status == 502


def test_refused_upgrade_answers_and_closes(fake: FakeDaemon) -> None:
    """When the daemon answers an upgrade with plain HTTP, the client's next bytes are not HTTP."""
    fake.on("POST", "/v1.41/exec/abc123/start",
            lambda request, conn: conn.json({"message": "no such exec"}, 404) or True)
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(exec_start())
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 404")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {"message": "no such exec"}


def test_client_leaving_a_stream_closes_the_daemon_side(fake: FakeDaemon) -> None:
    """A client dropping `logs -f` must not leave a daemon connection (or an fd) behind."""
    fake.on("GET", "/containers/c1/logs", answer_forever())
    with run_proxy(f"unix://{fake.path}") as proxy:
        before = open_fds()
        for _ in range(5):
            sock = connect(proxy.port)
            sock.sendall(b"GET /containers/c1/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: d\r\n\r\n")
            head, _ = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"chunked" in head.lower()
            sock.recv(65536)
            sock.close()
        assert wait_for(lambda: fake.open_connections == 0)
        assert wait_for(lambda: proxy.call(lambda: proxy.proxy.upstream.open_connections) == 0)
        assert wait_for(lambda: open_fds() <= before)


def test_client_leaving_a_quiet_stream_closes_the_daemon_side(fake: FakeDaemon) -> None:
    """`docker events` with no events: the client's close alone must free both connections."""
    fake.on("GET", "/events", answer_quiet_stream())
    with run_proxy(f"unix://{fake.path}") as proxy:
        before = open_fds()
        clients = [connect(proxy.port) for _ in range(20)]
        for n, sock in enumerate(clients):
            # Each its own question: the same one would share a daemon stream (feeds).
            sock.sendall(b"GET /events?filters=%d HTTP/1.1\r\nHost: d\r\n\r\n" % n)
            assert read_head(sock)[0].startswith(b"HTTP/1.1 200")
        assert wait_for(lambda: fake.open_connections == 20)
        for sock in clients:
            sock.close()
        assert wait_for(lambda: fake.open_connections == 0)
        assert wait_for(lambda: open_fds() <= before)


def test_client_leaving_a_hijacked_session_closes_the_daemon_side(fake: FakeDaemon) -> None:
    """An abandoned attach session is torn down on both sides."""
    fake.on("POST", "/v1.41/exec/abc123/start", answer_hijack())
    with run_proxy(f"unix://{fake.path}") as proxy:
        before = open_fds()
        sock = connect(proxy.port)
        sock.sendall(exec_start())
        read_head(sock)
        sock.close()
        assert wait_for(lambda: fake.open_connections == 0)
        assert wait_for(lambda: open_fds() <= before)


def test_hijacked_session_applies_backpressure_both_ways(fake: FakeDaemon) -> None:
    """Raw relaying pauses the faster side: neither direction buffers a whole stream."""
    size = 32 << 20

    def flood_then_drain(request: Received, conn: FakeConnection) -> bool:
        conn.send(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        conn.send(b"o" * size)
        time.sleep(1.0)  # the client floods meanwhile; the proxy must pause it
        received = 0
        while data := conn.recv():
            received += len(data)
        conn.send(b"%d" % received)
        return False

    fake.on("POST", "/containers/c1/attach", flood_then_drain)

    def held(proxy: RunningProxy) -> int:
        total = 0
        for conn in proxy.proxy.connections:
            if conn.transport is not None:
                total += conn.transport.get_write_buffer_size()
            if conn.upstream is not None and conn.upstream.transport is not None:
                total += conn.upstream.transport.get_write_buffer_size()
        return total

    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port, timeout=60) as sock:
        sock.sendall(b"POST /containers/c1/attach?stdin=1 HTTP/1.1\r\nHost: d\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        _, rest = read_head(sock)
        time.sleep(0.5)  # the daemon floods, the client does not read yet
        assert proxy.call(lambda: held(proxy)) < 4 << 20
        got = len(rest)
        while got < size:
            got += len(sock.recv(1 << 20))
        sender = threading.Thread(target=sock.sendall, args=(b"i" * size,))
        sender.start()
        time.sleep(0.5)
        assert proxy.call(lambda: held(proxy)) < 4 << 20
        sender.join(60)
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == b"%d" % size
