"""The proxy's HTTP/1.1 behaviour against the scripted fake daemon.

Bad input: the expected status, the connection closed, and nothing of the
request recorded by the fake. Good input: pipelining, HTTP/1.0, HEAD, 204/304,
chunked request bodies, big bodies both ways, backpressure and timeouts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from dockgate.decision import DenyAll
from fakedaemon import (
    FakeConnection,
    FakeDaemon,
    Received,
    answer_big,
    answer_broken,
    answer_chunks,
    answer_json,
    answer_status,
    connect,
    is_closed,
    read_replies,
    run_proxy,
)


def echo_target(request: Received, conn: FakeConnection) -> bool:
    """Answer with the method, target and body the fake received."""
    conn.json({"method": request.method, "target": request.target,
               "body": request.body.decode("latin-1")})
    return True


BAD_INPUT = {
    "bare LF": (b"GET /_ping HTTP/1.1\nHost: d\n\n", 400),
    "obs-fold": (b"GET /_ping HTTP/1.1\r\nHost: d\r\nX: a\r\n b\r\n\r\n", 400),
    "CL and TE": (b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "duplicate CL": (b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n"
                     b"Content-Length: 2\r\n\r\n{}", 400),
    "invalid CL": (b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 0x2\r\n\r\n{}",
                   400),
    "bad chunk size": (b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"g\r\nx\r\n0\r\n\r\n", 400),
    "chunk data overrun": (b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"1\r\nxy\r\n0\r\n\r\n", 400),
    "unsupported TE": (b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    "absolute-form": (b"GET http://docker/_ping HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    "authority-form": (b"CONNECT docker:2375 HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    "control byte in target": (b"GET /_pi\x01ng HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    "non-ASCII target": (b"GET /containers/\xc3\xa9/json HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    "dot segment": (b"GET /containers/x/../../_ping HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    "encoded dot segment": (b"GET /containers/x%2F..%2F_ping HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    "double slash": (b"GET //containers/json HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    "malformed request line": (b"GET /_ping\r\n\r\n", 400),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "head too large": (b"GET /_ping HTTP/1.1\r\nHost: d\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_refused_closed_and_never_forwarded(fake: FakeDaemon, name: str) -> None:
    """Each malformed or smuggling request: its status, a closed connection, no upstream byte."""
    data, status = BAD_INPUT[name]
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(data)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 %d " % status), reply
        body = reply.split(b"\r\n\r\n", 1)[1]
        assert "message" in json.loads(body)
        assert is_closed(sock)
    assert fake.received == b""
    assert fake.requests == []


def test_bad_request_after_good_ones_still_answers_the_good_ones_first(fake: FakeDaemon) -> None:
    """A pipelined good request is answered, then the bad one closes the connection."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\nGET /_ping HTTP/1.1\nHost: d\n\n")
        first, second = read_replies(sock, [("GET", "/_ping"), ("GET", "/_ping")])
        assert first.status == 200
        assert second.status == 400
        assert is_closed(sock)
    assert [r.target for r in fake.requests] == ["/_ping"]


def test_pipelined_requests_are_answered_in_order(fake: FakeDaemon) -> None:
    """Responses to requests sent back to back come back in request order."""
    fake.default = echo_target
    targets = ["/containers/json?n=1", "/images/json", "/version", "/containers/a/json",
               "/info"]
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: d\r\n\r\n" % t.encode()
                              for t in targets))
        replies = read_replies(sock, [("GET", t) for t in targets])
    assert [r.json()["target"] for r in replies] == targets
    assert [r.target for r in fake.requests] == targets


def test_http10_client_gets_an_unchunked_body_and_a_close(fake: FakeDaemon) -> None:
    """An HTTP/1.0 client cannot read chunked encoding: the body comes raw, ended by close."""
    fake.on("GET", "/events", answer_chunks([b'{"a":1}\n', b'{"b":2}\n']))
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /events HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"chunked" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b'{"a":1}\n{"b":2}\n'
    assert fake.requests[0].header("Host") == "docker"


def test_http10_keep_alive_is_honoured_when_the_length_is_known(fake: FakeDaemon) -> None:
    """HTTP/1.0 with Connection: keep-alive keeps the connection for a Content-Length reply."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        for _ in range(2):
            sock.sendall(b"GET /version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"keep-alive" in head.lower()
    assert len(fake.requests) == 2


def test_connection_close_is_honoured_after_the_response(fake: FakeDaemon) -> None:
    """A client asking to close gets its answer, a Connection: close, then the close."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
                     b"GET /version HTTP/1.1\r\nHost: d\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/version")])
        assert reply.status == 200
        assert reply.headers["connection"] == "close"
        assert is_closed(sock)
    assert len(fake.requests) == 1


def test_pipelined_request_after_a_chunked_body_is_framed_correctly(fake: FakeDaemon) -> None:
    """The byte after a chunked body's last CRLF starts the next request, nothing else."""
    fake.default = echo_target
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n"
                     b"POST /images/load HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n\r\nxyz"
                     b"GET /version HTTP/1.1\r\nHost: d\r\n\r\n")
        replies = read_replies(sock, [("POST", "/build"), ("POST", "/images/load"),
                                      ("GET", "/version")])
    assert [(r.json()["target"], r.json()["body"]) for r in replies] == [
        ("/build", "abc"), ("/images/load", "xyz"), ("/version", "")]


def test_head_and_bodiless_statuses_keep_the_connection_usable(fake: FakeDaemon) -> None:
    """HEAD, 204 and 304 carry no body; the next request on the connection still works."""
    fake.on("HEAD", "/_ping", answer_json("OK"))
    fake.on("DELETE", "/containers/x", answer_status(204))
    fake.on("GET", "/containers/y/json", answer_status(304))
    requests = [("HEAD", "/_ping"), ("DELETE", "/containers/x"), ("GET", "/containers/y/json"),
                ("GET", "/version")]
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"".join(b"%s %s HTTP/1.1\r\nHost: d\r\n\r\n" % (m.encode(), t.encode())
                              for m, t in requests))
        replies = read_replies(sock, requests)
    assert [r.status for r in replies] == [200, 204, 304, 200]
    assert replies[0].body == b""
    assert replies[0].headers["content-length"] == "5"
    assert replies[3].json() == {"message": "fake"}


def test_chunked_request_body_is_streamed_to_the_daemon(fake: FakeDaemon) -> None:
    """A chunked upload arrives whole and correctly framed at the daemon."""
    fake.default = echo_target
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        time.sleep(0.2)
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        reply, = read_replies(sock, [("POST", "/build")])
    assert reply.json()["body"] == "hello world"
    assert fake.requests[0].header("Transfer-Encoding") == "chunked"


def test_bad_chunk_framing_mid_stream_never_completes_a_request_upstream(
        fake: FakeDaemon) -> None:
    """Once a streamed body was partly forwarded, bad framing aborts the daemon connection."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        deadline = time.monotonic() + 5
        while b"hello" not in fake.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b"hello" in fake.received  # forwarding had begun
        sock.sendall(b"5\r\nworldXX0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: d\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    deadline = time.monotonic() + 5
    while fake.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.requests == []
    assert b"smuggled" not in fake.received


def test_client_leaving_mid_upload_aborts_the_daemon_side(fake: FakeDaemon) -> None:
    """An upload cut short by the client is never completed towards the daemon."""
    with run_proxy(f"unix://{fake.path}") as proxy:
        with connect(proxy.port) as sock:
            sock.sendall(b"POST /images/load HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n\r\n"
                         b"only-part")
            deadline = time.monotonic() + 5
            while b"only-part" not in fake.received and time.monotonic() < deadline:
                time.sleep(0.02)
        deadline = time.monotonic() + 5
        while fake.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.open_connections == 0
    assert fake.requests == []


def test_content_length_body_and_expect_continue(fake: FakeDaemon) -> None:
    """Expect: 100-continue is answered by the proxy and never forwarded."""
    fake.default = echo_target
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"PUT /containers/x/archive?path=/tmp HTTP/1.1\r\nHost: d\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        reply, = read_replies(sock, [("PUT", "/containers/x/archive")])
    assert reply.json()["body"] == "data"
    assert fake.requests[0].header("Expect") is None


def test_hop_by_hop_request_headers_do_not_reach_the_daemon(fake: FakeDaemon) -> None:
    """Connection-named fields, Keep-Alive, TE and Proxy-* stay between client and proxy."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: d\r\nConnection: keep-alive, X-Private\r\n"
                     b"X-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\n"
                     b"X-Registry-Auth: kept\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/version")])
    assert reply.status == 200
    names = {name.lower() for name, _ in fake.requests[0].headers}
    assert names == {"host", "x-registry-auth"}


@pytest.mark.parametrize("chunked", [False, True])
def test_big_response_streams_through_completely(fake: FakeDaemon, chunked: bool) -> None:
    """A 64 MiB body arrives byte-complete, by length or chunked."""
    size = 64 << 20
    fake.on("GET", "/containers/x/export", answer_big(size, chunked=chunked))
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /containers/x/export HTTP/1.1\r\nHost: d\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/containers/x/export")])
    assert len(reply.body) == size
    assert reply.body.count(b"x") == size


def test_big_request_body_streams_to_the_daemon(fake: FakeDaemon) -> None:
    """A 32 MiB upload is relayed, not refused and not truncated."""
    size = 32 << 20
    seen: list[int] = []

    def count(request: Received, conn: FakeConnection) -> bool:
        seen.append(len(request.body))
        conn.json({})
        return True

    fake.on("POST", "/images/load", count)
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /images/load HTTP/1.1\r\nHost: d\r\nContent-Length: %d\r\n\r\n" % size)
        sock.sendall(b"y" * size)
        reply, = read_replies(sock, [("POST", "/images/load")])
    assert reply.status == 200
    assert seen == [size]


def test_slow_client_pauses_the_daemon_instead_of_buffering(fake: FakeDaemon) -> None:
    """With a client that does not read, the proxy holds only about its buffer limits."""
    size = 256 << 20
    fake.on("GET", "/containers/x/export", answer_big(size))
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /containers/x/export HTTP/1.1\r\nHost: d\r\n\r\n")
        time.sleep(1.0)

        def buffered() -> int:
            return sum(c.transport.get_write_buffer_size() for c in proxy.proxy.connections
                       if c.transport is not None)

        held = proxy.call(buffered)
        assert held < 4 << 20
        total = 0
        while total < size:
            data = sock.recv(1 << 20)
            assert data
            total += len(data)
    assert total >= size


def test_slow_daemon_pauses_the_uploading_client_instead_of_buffering(fake: FakeDaemon) -> None:
    """A fast client and a slow daemon: the proxy holds about its buffer limits, not the body."""
    size = 48 << 20
    fake.read_delay = 0.002
    fake.on("POST", "/images/load", answer_json({}))
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port, timeout=120) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"POST /images/load HTTP/1.1\r\nHost: d\r\nContent-Length: %d\r\n\r\n"
                     % size)
        sender = threading.Thread(target=sock.sendall, args=(b"z" * size,))
        sender.start()

        def held() -> int:
            total = 0
            for conn in proxy.proxy.connections:
                total += conn.reader.buffered
                if conn.upstream is not None and conn.upstream.transport is not None:
                    total += conn.upstream.transport.get_write_buffer_size()
            return total

        peak = 0
        while sender.is_alive():
            peak = max(peak, proxy.call(held))
            time.sleep(0.05)
        sender.join()
        reply, = read_replies(sock, [("POST", "/images/load")])
    assert reply.status == 200
    assert len(fake.requests[0].body) == size
    assert peak < 6 << 20


def test_header_timeout_answers_408_and_closes(fake: FakeDaemon) -> None:
    """A client trickling a head (slowloris) is cut off after the header timeout."""
    with run_proxy(f"unix://{fake.path}", DOCKGATE_HEADER_TIMEOUT="0.3") as proxy, \
            connect(proxy.port) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\n")
        started = time.monotonic()
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 3
        assert is_closed(sock)
    assert fake.received == b""


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(fake: FakeDaemon) -> None:
    """An idle client does not hold a connection forever."""
    with run_proxy(f"unix://{fake.path}", DOCKGATE_IDLE_TIMEOUT="0.3") as proxy, \
            connect(proxy.port) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/_ping")])
        assert reply.status == 200
        assert is_closed(sock, timeout=3)


def test_denied_request_reaches_nothing_and_keeps_the_connection(fake: FakeDaemon) -> None:
    """A denial is a Docker-style JSON 403 and the daemon sees nothing."""
    with run_proxy(f"unix://{fake.path}", decider=DenyAll()) as proxy, \
            connect(proxy.port) as sock:
        sock.sendall(b"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n" * 2)
        replies = read_replies(sock, [("GET", "/containers/json")] * 2)
    assert [r.status for r in replies] == [403, 403]
    assert "denied" in replies[0].json()["message"]
    assert fake.received == b""


def test_unknown_route_is_404_and_never_forwarded(fake: FakeDaemon) -> None:
    """Deny by default: what the route table does not know never reaches the daemon."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /containers/json/ HTTP/1.1\r\nHost: d\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/containers/json/")])
    assert reply.status == 404
    assert fake.received == b""


def test_daemon_down_answers_502_and_recovers_without_restart(sockdir: Path) -> None:
    """No daemon: 502 naming the socket; once it is back, requests succeed again."""
    path = sockdir / "late.sock"
    with run_proxy(f"unix://{path}") as proxy:
        with connect(proxy.port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            reply, = read_replies(sock, [("GET", "/_ping")])
        assert reply.status == 502
        assert str(path) in reply.json()["message"]
        with FakeDaemon(path), connect(proxy.port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            reply, = read_replies(sock, [("GET", "/_ping")])
        assert reply.status == 200


def test_daemon_breaking_mid_response_closes_the_client(fake: FakeDaemon) -> None:
    """A truncated response must not look complete: the client connection is cut."""
    fake.on("GET", "/containers/x/json", answer_broken())
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"GET /containers/x/json HTTP/1.1\r\nHost: d\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b'{"part')


def test_many_concurrent_clients_are_served(fake: FakeDaemon) -> None:
    """Concurrent keep-alive clients share the upstream pool without mixing responses."""
    fake.default = echo_target
    errors: list[str] = []

    def worker(index: int, port: int) -> None:
        with connect(port) as sock:
            for n in range(20):
                target = f"/containers/c{index}-{n}/json"
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: d\r\n\r\n".encode())
                reply, = read_replies(sock, [("GET", target)])
                if reply.json()["target"] != target:
                    errors.append(f"{target} got {reply.body!r}")

    with run_proxy(f"unix://{fake.path}") as proxy:
        threads = [threading.Thread(target=worker, args=(i, proxy.port)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        pooled = proxy.call(lambda: proxy.proxy.upstream.open_connections)
    assert errors == []
    assert len(fake.requests) == 400
    assert pooled <= 20
