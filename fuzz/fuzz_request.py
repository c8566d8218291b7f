"""Coverage-guided fuzzer: request framing (dockgate.http1.RequestReader) against h11.

Input: one byte choosing how the rest is split (whole, or N bytes at a time), then
the bytes a client sends. Invariants, checked by ``check`` (a failed one raises
AssertionError, which atheris reports as a finding):

* the reader returns events or raises our ProtocolError: any other exception escapes
  as a finding by itself;
* how the bytes are split does not change what is framed;
* every request the reader accepted, h11 reads identically from the same bytes
  (method, target, end-to-end header fields, body): the two readers never disagree on
  where a request ends. The comparison stops after a request after which the proxy
  reads nothing more as HTTP (Connection: close, HTTP/1.0, an upgrade or CONNECT);
* when h11 finds a whole request where the reader still waits for bytes, that is a
  disagreement too (the reader is allowed to refuse what h11 accepts: it is stricter);
* what the proxy forwards for an accepted request (the end-to-end fields, a Host when
  the client sent none, fresh framing) parses in h11 to the same semantics.

The one difference from h11 allowed: an HTTP/1.1 request without Host, which h11
refuses and dockgate forwards with ``Host: docker`` (the docker CLI sends one anyway).

    python fuzz/fuzz_request.py [libFuzzer flags] [CORPUS...]     (scripts/fuzz runs it)
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
from libfuzzer import fuzz

from dockgate import http1
from dockgate.errors import ProtocolError

MAX_HEAD = 4096
STEPS = (None, 1, 2, 3, 7, 16, 64, 512)


@dataclass
class Framed:
    """What one reader made of the bytes: whole requests, and how it stopped."""

    requests: list[tuple[http1.RequestHead, bytes]]
    error: ProtocolError | None
    waiting: bool        # the last request was still incomplete when the bytes ran out
    as_h11_reads: bytes  # whole feeds: the bytes without the empty lines the reader skipped


def frame(data: bytes, step: int | None) -> Framed:
    """Feed ``data`` whole (``step`` None) or ``step`` bytes at a time."""
    reader = http1.RequestReader(MAX_HEAD)
    requests: list[tuple[http1.RequestHead, bytes]] = []
    head: http1.RequestHead | None = None
    body = bytearray()
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    # RFC 9112 2.2: the reader skips empty lines before a request line, h11 does not.
    # With one feed, where each head starts is known: drop those lines for h11.
    skipped: dict[int, int] = {}
    error: ProtocolError | None = None
    try:
        for piece in pieces:
            reader.feed(piece)
            while True:
                if step is None and head is None and reader.awaiting_head:
                    offset = len(data) - reader.buffered
                    run = offset
                    while data.startswith(b"\r\n", run):
                        run += 2
                    skipped[offset] = run
                event = reader.next_event()
                if isinstance(event, http1.NeedData):
                    break
                if isinstance(event, http1.RequestHead):
                    head, body = event, bytearray()
                elif isinstance(event, http1.Data):
                    body += event.data
                else:
                    assert head is not None, "EndOfMessage before a head"
                    requests.append((head, bytes(body)))
                    head = None
                    reader.start_next()
    except ProtocolError as caught:
        error = caught
    kept = bytearray()
    position = 0
    for offset, run in sorted(skipped.items()):
        kept += data[position:offset]
        position = run
    kept += data[position:]
    waiting = error is None and (head is not None or reader.buffered > 0)
    return Framed(requests, error, waiting, bytes(kept))


def ends_http(head: http1.RequestHead) -> bool:
    """After this request the proxy parses no further HTTP on the connection."""
    return not head.keep_alive or head.upgrade is not None or head.method == "CONNECT"


def lower_fields(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value.strip(b" \t")) for name, value in headers]


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """h11's view of the end-to-end fields, by RFC 9110 7.6.1 (not via dockgate's helper)."""
    named = {token.strip().lower() for name, value in headers if name == b"connection"
             for token in value.split(b",")}
    return [(name, value) for name, value in headers
            if name not in http1.HOP_BY_HOP and not name.startswith(b"proxy-")
            and name not in named]


@dataclass
class Reference:
    requests: list[tuple[str, str, list[tuple[bytes, bytes]], bytes]]
    error: str | None


def h11_read(data: bytes) -> Reference:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    if not data:
        return Reference([], None)  # h11 reads b"" as the end of the connection
    conn.receive_data(data)
    out: list[tuple[str, str, list[tuple[bytes, bytes]], bytes]] = []
    current: tuple[str, str, list[tuple[bytes, bytes]]] | None = None
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return Reference(out, None)
            if event is h11.PAUSED:
                if conn.our_state is not h11.SEND_RESPONSE:
                    return Reference(out, None)
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                    return Reference(out, None)
                conn.start_next_cycle()
            elif isinstance(event, h11.Request):
                current = (event.method.decode("ascii"), event.target.decode("ascii"),
                           list(event.headers))
                body = bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                out.append((*current, bytes(body)))
                current = None
    except h11.RemoteProtocolError as error:
        return Reference(out, str(error))
    except h11.LocalProtocolError:
        return Reference(out, None)  # h11 will not answer this request: it cannot go on


def forwarded(head: http1.RequestHead, body: bytes) -> bytes:
    """The request as the proxy sends it on (as server.ClientConnection builds it)."""
    headers = list(head.end_to_end)
    if not head.has_host:
        headers.insert(0, (b"Host", b"docker"))
    if head.chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
        framed = (http1.chunk_header(len(body)) + body + http1.CRLF if body else b"")
        framed += http1.LAST_CHUNK
    else:
        headers.append((b"Content-Length", b"%d" % len(body)))
        framed = body
    return http1.request_head(head.method, head.target, headers) + framed


def check_forwarded(head: http1.RequestHead, body: bytes) -> None:
    again = h11_read(forwarded(head, body))
    assert again.error is None, f"h11 refuses what the proxy forwards: {again.error}"
    assert len(again.requests) == 1, "the forwarded request is not one request to h11"
    method, target, headers, forwarded_body = again.requests[0]
    assert (method, target, forwarded_body) == (head.method, head.target, body)
    fields = end_to_end(headers)
    if not head.has_host:
        assert fields[:1] == [(b"host", b"docker")], "no Host added to a request without one"
        fields = fields[1:]
    assert fields == lower_fields(head.end_to_end), "forwarded header fields differ"


def check(data: bytes) -> None:
    if not data:
        return
    step = STEPS[data[0] % len(STEPS)]
    data = data[1:]
    whole = frame(data, None)
    split = frame(data, step)
    summary = [(h.method, h.target, h.headers, b) for h, b in whole.requests]
    assert summary == [(h.method, h.target, h.headers, b) for h, b in split.requests], \
        "framing depends on how the bytes are split"
    assert (whole.error is None) == (split.error is None), "split changes acceptance"

    ours = whole.requests
    for index, (head, _) in enumerate(ours):
        if ends_http(head):
            ours = ours[:index + 1]
            break
    reference = h11_read(whole.as_h11_reads)
    for index, (head, body) in enumerate(ours):
        check_forwarded(head, body)
        if index >= len(reference.requests):
            # h11 stopped before this request: only a missing Host may explain it.
            missing_host = not head.has_host and head.version == "1.1"
            assert missing_host, \
                f"h11 does not read request {index} the reader accepted: {reference.error}"
            assert "Host" in str(reference.error), f"h11 stopped: {reference.error}"
            return
        method, target, headers, ref_body = reference.requests[index]
        assert (head.method, head.target, body) == (method, target, ref_body), \
            f"request {index} framed differently from h11"
        assert lower_fields(head.end_to_end) == end_to_end(headers), \
            f"request {index}: header fields differ from h11's"
    cut = bool(ours) and ends_http(ours[-1][0])
    if not cut and whole.error is None:
        assert len(reference.requests) <= len(ours), \
            "h11 found a whole request where the reader still waits for bytes"


if __name__ == "__main__":
    fuzz(check)
