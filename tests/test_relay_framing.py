"""How responses are framed towards the client: as the daemon framed them where that is
safe, re-framed where the client or a filter needs it, hop-by-hop fields never passed on.

Scripted against the fake daemon, which can send exactly the chunk boundaries, trailers
and hop-by-hop fields a case needs, with raw sockets on the client side so the bytes the
client receives are compared as they are.
"""

from __future__ import annotations

from fakedaemon import FakeConnection, FakeDaemon, Handler, Received, connect, run_proxy


def raw_answer(data: bytes) -> Handler:
    """A handler that sends ``data`` as the whole response."""
    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.send(data)
        return True
    return handler


def exchange(fake: FakeDaemon, request: bytes) -> bytes:
    """Send ``request`` (which asks to close) through the proxy; every byte it answers."""
    with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


CLOSE_11 = b"GET /containers/json HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"


def test_chunks_pass_through_as_the_daemon_sent_them_without_trailers(
        fake: FakeDaemon) -> None:
    """No decoding and re-encoding: the client gets the daemon's chunks, trailers dropped."""
    fake.on("GET", "/containers/json", raw_answer(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n1;x=y\r\n[\r\n4\r\n1, 2\r\n1\r\n]\r\n0\r\nX-Trailer: secret\r\n\r\n"))
    head, _, body = exchange(fake, CLOSE_11).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"1;x=y\r\n[\r\n4\r\n1, 2\r\n1\r\n]\r\n0\r\n\r\n"


def test_an_http10_client_gets_a_chunked_body_decoded_until_close(fake: FakeDaemon) -> None:
    """HTTP/1.0 has no chunked encoding: the body is sent as it is, ended by closing."""
    fake.on("GET", "/containers/json", raw_answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))
    head, _, body = exchange(fake, b"GET /containers/json HTTP/1.0\r\n\r\n").partition(
        b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"abcde"


def test_the_daemons_fields_are_kept_and_its_connection_field_is_not(
        fake: FakeDaemon) -> None:
    """End-to-end fields arrive unchanged, in order; Connection is the proxy's own."""
    fake.on("GET", "/containers/json", raw_answer(
        b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nConnection: keep-alive\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"))
    head, _, body = exchange(fake, CLOSE_11).partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"HTTP/1.1 200 OK", b"Api-Version: 1.41",
                                   b"Content-Type: application/json", b"Content-Length: 2",
                                   b"Connection: close"]
    assert body == b"[]"


def test_fields_named_by_the_daemons_connection_field_are_dropped(fake: FakeDaemon) -> None:
    """Connection: X-Hop and Keep-Alive describe the daemon's hop, not the client's."""
    fake.on("GET", "/containers/json", raw_answer(
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 2\r\n\r\n[]"))
    head, _, body = exchange(fake, CLOSE_11).partition(b"\r\n\r\n")
    assert b"x-hop" not in head.lower()
    assert b"keep-alive" not in head.lower()
    assert body == b"[]"


def test_a_response_with_both_framings_is_sent_with_one(fake: FakeDaemon) -> None:
    """Content-Length beside chunked must never reach a client as both."""
    fake.on("GET", "/containers/json", raw_answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n[]\r\n0\r\n\r\n"))
    head, _, body = exchange(fake, CLOSE_11).partition(b"\r\n\r\n")
    assert b"content-length" not in head.lower()
    assert body == b"2\r\n[]\r\n0\r\n\r\n"
