"""Framing tests for the sans-IO HTTP/1.1 layer (dockgate.http1).

Every valid input is fed whole and then one byte at a time: framing must not
depend on how TCP happens to split the bytes. h11 serves as the reference
parser for valid requests; a Hypothesis test mutates and re-chunks valid
requests and checks the only two outcomes allowed: it parses, or it raises
our ProtocolError.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockgate import http1
from dockgate.errors import HeadersTooLarge, ProtocolError, UpstreamError

MAX_HEAD = 8192


def parse_requests(data: bytes, step: int | None = None) -> list[tuple[http1.RequestHead, bytes]]:
    """Feed ``data`` (whole, or ``step`` bytes at a time); every complete request and its body."""
    reader = http1.RequestReader(MAX_HEAD)
    out: list[tuple[http1.RequestHead, bytes]] = []
    head: http1.RequestHead | None = None
    body = b""
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        reader.feed(piece)
        while True:
            event = reader.next_event()
            if isinstance(event, http1.NeedData):
                break
            if isinstance(event, http1.RequestHead):
                head, body = event, b""
            elif isinstance(event, http1.Data):
                body += bytes(event.data)
            else:
                assert head is not None
                out.append((head, body))
                reader.start_next()
    return out


def both_ways(data: bytes) -> list[tuple[http1.RequestHead, bytes]]:
    """Parse whole and byte by byte; the results must agree."""
    whole = parse_requests(data)
    by_byte = parse_requests(data, 1)
    assert [(h.method, h.target, h.headers, b) for h, b in whole] == \
        [(h.method, h.target, h.headers, b) for h, b in by_byte]
    return whole


def reference(data: bytes) -> list[tuple[str, str, bytes]]:
    """What h11 makes of the same bytes: (method, target, body) per request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    out: list[tuple[str, str, bytes]] = []
    current: list[object] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            if event is h11.PAUSED and conn.our_state is h11.SEND_RESPONSE:
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
                continue
            return out
        if isinstance(event, h11.Request):
            current = [event.method.decode(), event.target.decode(), b""]
        elif isinstance(event, h11.Data):
            current[2] += event.data  # type: ignore[operator]
        elif isinstance(event, h11.EndOfMessage):
            out.append((str(current[0]), str(current[1]), bytes(current[2])))  # type: ignore[arg-type]


VALID = [
    b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n",
    b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n",
    b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
    b"Content-Length: 13\r\n\r\n{\"Image\":\"x\"}",
    b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
    b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: d\r\n\r\nGET /b HTTP/1.1\r\nHost: d\r\n\r\n"
    b"POST /c HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\nhi"
    b"DELETE /d HTTP/1.1\r\nHost: d\r\n\r\n",
]


@pytest.mark.parametrize("data", VALID)
def test_valid_requests_frame_like_h11_whole_and_byte_by_byte(data: bytes) -> None:
    """Our framing must agree with a reference parser however the bytes are split."""
    ours = [(h.method, h.target, b) for h, b in both_ways(data)]
    assert ours == reference(data)


def test_request_head_exposes_keep_alive_upgrade_and_expect() -> None:
    """The shell relies on these flags to route, relay and answer 100-continue."""
    (head, body), = both_ways(
        b"POST /exec/abc/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b"Content-Type: application/json\r\nContent-Length: 27\r\n\r\n"
        b'{"Detach":false,"Tty":true}')
    assert head.upgrade == b"tcp"
    assert head.keep_alive
    assert body == b'{"Detach":false,"Tty":true}'
    (head, _), = both_ways(b"GET / HTTP/1.0\r\n\r\n")
    assert not head.keep_alive
    (head, _), = both_ways(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert head.keep_alive
    (head, _), = both_ways(b"PUT /x HTTP/1.1\r\nHost: d\r\nExpect: 100-continue\r\n"
                           b"Content-Length: 1\r\n\r\nz")
    assert head.expect_continue


def test_upgrade_request_body_is_framed_before_the_raw_stream() -> None:
    """httptools stops at an upgrade head; we read the declared body, then hand over raw bytes."""
    reader = http1.RequestReader(MAX_HEAD)
    reader.feed(b"POST /exec/e/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                b"Upgrade: tcp\r\nContent-Length: 2\r\n\r\n{}RAW-STDIN")
    head = reader.next_event()
    assert isinstance(head, http1.RequestHead)
    assert head.upgrade == b"tcp"
    data = reader.next_event()
    assert isinstance(data, http1.Data)
    assert bytes(data.data) == b"{}"
    assert isinstance(reader.next_event(), http1.EndOfMessage)
    assert isinstance(reader.next_event(), http1.NeedData)
    assert reader.take_rest() == b"RAW-STDIN"


def test_next_request_waits_for_start_next() -> None:
    """Pipelined bytes are not parsed until the shell has finished the current request."""
    reader = http1.RequestReader(MAX_HEAD)
    reader.feed(b"GET /a HTTP/1.1\r\nHost: d\r\n\r\nGET /b HTTP/1.1\r\nHost: d\r\n\r\n")
    assert isinstance(reader.next_event(), http1.RequestHead)
    assert isinstance(reader.next_event(), http1.EndOfMessage)
    assert isinstance(reader.next_event(), http1.NeedData)
    reader.start_next()
    second = reader.next_event()
    assert isinstance(second, http1.RequestHead)
    assert second.target == "/b"


BAD = {
    "bare LF": b"GET / HTTP/1.1\nHost: d\n\n",
    "bare LF in a header": b"GET / HTTP/1.1\r\nHost: d\nX: y\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: d\r\nX: a\r\n b\r\n\r\n",
    "CL and TE": b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate CL": b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 1\r\n"
                    b"Content-Length: 1\r\n\r\nx",
    "negative CL": b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: -1\r\n\r\n",
    "CL with plus": b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: +1\r\n\r\nx",
    "CL list": b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 1, 1\r\n\r\nx",
    "gzip TE": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "identity TE": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: identity\r\n\r\n",
    "chunked on HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two TE headers": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nhi\r\n0\r\n\r\n",
    "chunk size with space": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"2 \r\nhi\r\n0\r\n\r\n",
    "chunk without CRLF": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"2\r\nhiXX0\r\n\r\n",
    "chunk size bare LF": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"2\nhi\r\n0\r\n\r\n",
    "huge chunk size": b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"fffffffffffffffff\r\n",
    "absolute-form": b"GET http://docker/_ping HTTP/1.1\r\nHost: d\r\n\r\n",
    "authority-form": b"CONNECT docker:2375 HTTP/1.1\r\nHost: d\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: d\r\n\r\n",
    "control byte in target": b"GET /a\x01b HTTP/1.1\r\nHost: d\r\n\r\n",
    "non-ASCII target": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: d\r\n\r\n",
    "DEL in target": b"GET /a\x7f HTTP/1.1\r\nHost: d\r\n\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: d\r\n\r\n",
    "HTTP/0.9 style": b"GET /\r\n\r\n",
    "lowercase method": b"get / HTTP/1.1\r\nHost: d\r\n\r\n",
    "unknown method": b"FROB / HTTP/1.1\r\nHost: d\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : d\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    # Found by fuzz/fuzz_request.py: llhttp accepts it, h11 and Go's net/http do not.
    "two spaces in the request line": b"GET  / HTTP/1.1\r\nHost: d\r\n\r\n",
    "space after the version": b"GET / HTTP/1.1 \r\nHost: d\r\n\r\n",
    "trailer name not a token": b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: "
    b"chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Tr\xe1iler: 1\r\n\r\n",
    "bare LF after a body ending in CR": b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 1\r\n"
    b"\r\n\r\nGET / HTTP/1.1",
    "bare CR before the request line": b"\r\rGET / HTTP/1.1\r\nHost: d\r\n\r\n",
    "framing field in the trailer": b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: "
    b"chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n",
    "CR in header value": b"GET / HTTP/1.1\r\nHost: d\r\nX: a\rb\r\n\r\n",
    "NUL in header": b"GET / HTTP/1.1\r\nHost: d\r\nX: a\x00b\r\n\r\n",
    "unknown expectation": b"GET / HTTP/1.1\r\nHost: d\r\nExpect: magic\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_raise_protocol_error_whole_and_byte_by_byte(name: str) -> None:
    """Each smuggling or malformed case is refused however it is split."""
    for step in (None, 1):
        with pytest.raises(ProtocolError):
            parse_requests(BAD[name], step)


def test_chunk_size_lines_are_limited_to_4096_bytes_both_ways() -> None:
    """The size line read in place (the fast path) keeps the line-by-line limit:
    4,096 bytes with its extensions pass, one more is refused, whole or byte by byte,
    in requests and in the daemon's responses."""
    def body(line_length: int) -> bytes:
        line = b"2;x=" + b"a" * (line_length - 4)
        assert len(line) == line_length
        return line + b"\r\nhi\r\n0\r\n\r\n"

    request = b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for step in (None, 1):
        assert [b for _, b in parse_requests(request + body(4096), step)] == [b"hi"]
        with pytest.raises(ProtocolError):
            parse_requests(request + body(4097), step)
        assert read_response(response + body(4096), step=step)[1] == b"hi"
        with pytest.raises(UpstreamError):
            read_response(response + body(4097), step=step)


def test_head_over_the_limit_is_431() -> None:
    """An oversized head is refused before its end arrives, so memory stays bounded."""
    reader = http1.RequestReader(1024)
    reader.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000)
    with pytest.raises(HeadersTooLarge):
        reader.next_event()
    reader = http1.RequestReader(1024)
    reader.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 1100 + b"\r\n\r\n")
    with pytest.raises(HeadersTooLarge) as caught:
        reader.next_event()
    assert caught.value.status == 431


def test_bare_lf_is_refused_before_the_head_ends() -> None:
    """A client speaking bare LF would otherwise wait for a CRLFCRLF that never comes."""
    reader = http1.RequestReader(MAX_HEAD)
    reader.feed(b"GET / HTTP/1.1\nHost")
    with pytest.raises(ProtocolError):
        reader.next_event()


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[bytes, int]:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] = draw(st.sampled_from(b"\r\n \t:;0aZ\x00\x7f\xff-,"))
        elif action == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b" ", b"Content-Length: 5\r\n",
                                                b"Transfer-Encoding: chunked\r\n", b"0"]))
        elif action == "delete":
            del data[at]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 20))]
    return bytes(data), draw(st.integers(1, 64))


@settings(max_examples=400, deadline=None)
@given(mutated_requests())
def test_mutated_requests_parse_or_raise_protocol_error(case: tuple[bytes, int]) -> None:
    """Whatever the bytes, the reader parses them or raises our ProtocolError, nothing else."""
    data, step = case
    try:
        whole = parse_requests(data)
    except ProtocolError:
        whole = None
    try:
        chunked = parse_requests(data, step)
    except ProtocolError:
        chunked = None
    if whole is not None and chunked is not None:
        assert [(h.method, h.target, b) for h, b in whole] == \
            [(h.method, h.target, b) for h, b in chunked]


def read_response(data: bytes, method: str = "GET",
                  step: int | None = None) -> tuple[list[http1.ResponseEvent], bytes]:
    reader = http1.ResponseReader()
    reader.expect(method)
    events: list[http1.ResponseEvent] = []
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        events += reader.feed(piece)
    body = b"".join(bytes(e.data) for e in events if isinstance(e, http1.Data))
    return events, body


@pytest.mark.parametrize("step", [None, 1, 7])
def test_response_bodies_frame_by_length_and_chunks(step: int | None) -> None:
    """The daemon's Content-Length and chunked bodies come out whole however split."""
    events, body = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", step=step)
    assert body == b"hello"
    assert isinstance(events[-1], http1.EndOfMessage)
    events, body = read_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", step=step)
    assert body == b"abcde"
    assert isinstance(events[-1], http1.EndOfMessage)


def test_responses_without_body_end_at_the_head() -> None:
    """HEAD, 204 and 304 have no body whatever Content-Length says (RFC 9112 6.3)."""
    for data, method in [(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "HEAD"),
                         (b"HTTP/1.1 204 No Content\r\n\r\n", "DELETE"),
                         (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", "GET")]:
        events, body = read_response(data, method)
        assert body == b""
        assert isinstance(events[-1], http1.EndOfMessage)


def test_upgrade_response_leaves_the_raw_bytes_to_the_caller() -> None:
    """After 101 nothing is parsed: the bytes that followed are handed over untouched."""
    reader = http1.ResponseReader()
    reader.expect("POST")
    events = reader.feed(b"HTTP/1.1 101 UPGRADED\r\nUpgrade: tcp\r\n\r\n\x01\x00\x00\x00raw")
    assert isinstance(events[0], http1.ResponseHead)
    assert events[0].status == 101
    assert len(events) == 1
    assert reader.take_rest() == b"\x01\x00\x00\x00raw"


def test_close_delimited_response_ends_at_eof() -> None:
    """A body without length runs to the daemon's EOF (Docker's raw 200 streams)."""
    reader = http1.ResponseReader()
    reader.expect("POST")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream"
                         b"\r\n\r\nabc")
    head = events[0]
    assert isinstance(head, http1.ResponseHead)
    assert head.close_delimited
    assert not head.keep_alive
    assert isinstance(reader.feed_eof()[-1], http1.EndOfMessage)


def test_daemon_dying_mid_body_is_an_upstream_error() -> None:
    """A truncated response must not look complete to the client."""
    reader = http1.ResponseReader()
    reader.expect("GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(UpstreamError):
        reader.feed_eof()


def test_malformed_daemon_output_is_an_upstream_error() -> None:
    """Garbage from the daemon becomes a 502, never a crash."""
    for data in [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n",
                 # Found by fuzz/fuzz_response.py (h11 refuses them, Python's int() did not).
                 b"HTTP/1.1 033 OK\r\n\r\n", b"HTTP/1.1 2_00 OK\r\n\r\n",
                 b"HTTP/1.1 +200 OK\r\n\r\n", b"HTTP/1.1 200 O\x01K\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Len/th: 5\r\n\r\nhello",
                 b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 05\r\nContent-Length: 5\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                 # Found by tests/test_faults.py: a whole oversized head in one read.
                 b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n"]:
        reader = http1.ResponseReader()
        reader.expect("GET")
        with pytest.raises(UpstreamError):
            reader.feed(data)


def test_hop_by_hop_headers_are_stripped() -> None:
    """Connection, the fields it names, Keep-Alive, TE, Trailer and Proxy-* stay on their hop."""
    reader = http1.RequestReader(65536)
    reader.feed(b"POST /x HTTP/1.1\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n"
                b"Keep-Alive: 5\r\nTE: trailers\r\nTrailer: X\r\nProxy-Authorization: x\r\n"
                b"Proxy-Foo: y\r\nUpgrade: tcp\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\nHost: docker\r\n\r\n")
    head = reader.next_event()
    assert isinstance(head, http1.RequestHead)
    assert head.end_to_end == [(b"Content-Type", b"application/json"), (b"Host", b"docker")]


def test_the_head_carries_its_first_user_agent_as_text() -> None:
    """What the audit line's user_agent says: the first User-Agent, as Latin-1 text."""
    reader = http1.RequestReader(65536)
    reader.feed(b"GET /_ping HTTP/1.1\r\nHost: d\r\nuser-AGENT: docker/28.0 \xe9\r\n"
                b"User-Agent: second\r\n\r\nGET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    first = reader.next_event()
    assert isinstance(first, http1.RequestHead)
    assert first.user_agent == "docker/28.0 \u00e9"
    assert first.user_agent.encode("latin-1") == first.get(b"user-agent")
    assert reader.next_event() is http1.END
    reader.start_next()
    second = reader.next_event()
    assert isinstance(second, http1.RequestHead)
    assert second.user_agent is None


def test_serialized_heads_round_trip_through_h11() -> None:
    """What we write upstream is valid HTTP/1.1 to an independent parser."""
    data = http1.request_head("POST", "/v1.41/containers/x/start?a=b",
                              [(b"Host", b"docker"), (b"Content-Length", b"0")])
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    assert event.target == b"/v1.41/containers/x/start?a=b"
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "d")]))
    client.receive_data(http1.response_head(404, [(b"Content-Length", b"0")]))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 404
    assert response.reason == b"Not Found"


def test_empty_lines_before_a_request_line_are_skipped() -> None:
    """RFC 9112 2.2: CRLFs before a request line are ignored, however the bytes split."""
    data = (b"\r\n\r\nGET /a HTTP/1.1\r\nHost: d\r\n\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: d\r\n\r\n")
    assert [(h.method, h.target, b) for h, b in both_ways(data)] == [
        ("GET", "/a", b""), ("GET", "/b", b"")]


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"x", b"x" * 3000]),
                max_size=8), st.integers(0, 12))
@settings(max_examples=300)
def test_head_end_agrees_with_find(pieces: list[bytes], pos: int) -> None:
    """The cheaper search for a head's end finds what bytes.find finds, on either side of
    the size where it switches from partition to find."""
    buf = b"".join(pieces)
    assert http1._head_end(buf, pos) == buf.find(b"\r\n\r\n", pos)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 70000])
def test_a_body_in_the_same_read_as_its_head_comes_out_whole(size: int) -> None:
    """Below a few KiB the body is copied out of the read, above it is viewed: the
    bytes are the same either way, and so is the end of the message."""
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    reader = http1.ResponseReader()
    reader.expect("GET")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body)
    assert b"".join(bytes(e.data) for e in events if isinstance(e, http1.Data)) == body
    assert isinstance(events[-1], http1.EndOfMessage)
    assert reader.idle


def test_a_repeated_head_is_relayed_with_the_connection_field_asked_for() -> None:
    """The relayed form is kept per head object: asking again with another Connection
    line must not hand back the first one."""
    reader = http1.ResponseReader()
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nOK"
    heads = []
    for _ in range(2):
        reader.expect("GET")
        heads.append(reader.feed(raw)[0])
    first, second = heads
    assert isinstance(first, http1.ResponseHead)
    assert first is second  # the same bytes: the same head, parsed once
    assert first.relayed(b"") == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert second.relayed(b"Connection: close\r\n") == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
    assert first.relayed(b"") == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
