"""Coverage-guided fuzzer: response framing (dockgate.http1.ResponseReader) against h11.

Input: one byte choosing the request method and how the rest is split, then what the
daemon answers (its EOF follows the last byte). Invariants, checked by ``check``:

* the reader returns events or raises our UpstreamError (a 502 for the client),
  nothing else; how the bytes are split changes neither what is framed nor whether
  it is refused;
* a response the reader reads to its end, h11 (as the client of the same request)
  reads identically: status, end-to-end header fields, body, and where it ends;
* what the proxy sends on for it (the end-to-end fields, fresh framing) parses in h11
  to the same status, fields and body;
* passthrough (the daemon's chunks relayed as they came, the relay adding the last
  chunk) frames the same responses, refuses the same, ends at the same place, and
  its bytes are the body: the encoded chunks decode to it, a plain body is itself.

A 101 switch ends the comparison (the bytes after it are not HTTP), and so does a
response the reader refuses: it may be stricter than h11, never looser.

    python fuzz/fuzz_response.py [libFuzzer flags] [CORPUS...]    (scripts/fuzz runs it)
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
from libfuzzer import fuzz

from dockgate import http1
from dockgate.errors import UpstreamError

METHODS = ("GET", "HEAD", "POST")
STEPS = (None, 1, 3, 16)


@dataclass
class Framed:
    heads: list[http1.ResponseHead]
    body: bytes
    ended: bool
    error: UpstreamError | None


def frame(data: bytes, method: str, step: int | None, passthrough: bool = False) -> Framed:
    reader = http1.ResponseReader()
    reader.expect(method, passthrough)
    heads: list[http1.ResponseHead] = []
    body = bytearray()
    ended = False
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    try:
        for piece in pieces:
            events = reader.feed(piece)
            for event in events:
                assert not ended, "events after the end of the response"
                if isinstance(event, http1.ResponseHead):
                    heads.append(event)
                elif isinstance(event, http1.Data):
                    body += event.data
                else:
                    ended = True
            if heads and heads[-1].status == 101:
                return Framed(heads, bytes(body), ended, None)
        for event in reader.feed_eof():
            assert isinstance(event, http1.EndOfMessage), "feed_eof returned a non-end event"
            ended = True
    except UpstreamError as error:
        return Framed(heads, bytes(body), ended, error)
    return Framed(heads, bytes(body), ended, None)


@dataclass
class Reference:
    status: int | None
    headers: list[tuple[bytes, bytes]]
    body: bytes
    ended: bool
    error: str | None


def h11_read(data: bytes, method: str, eof: bool = True) -> Reference:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "docker")]))
    conn.send(h11.EndOfMessage())
    result = Reference(None, [], b"", False, None)
    body = bytearray()
    if data:
        conn.receive_data(data)
    closed = False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if closed or not eof:
                    break
                conn.receive_data(b"")
                closed = True
            elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                break
            elif isinstance(event, h11.Response):
                result.status = event.status_code
                result.headers = list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                result.ended = True
                break
    except h11.RemoteProtocolError as error:
        result.error = str(error)
    result.body = bytes(body)
    return result


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = {token.strip().lower() for name, value in headers if name == b"connection"
             for token in value.split(b",")}
    return [(name, value) for name, value in headers
            if name not in http1.HOP_BY_HOP and not name.startswith(b"proxy-")
            and name not in named]


def lower_fields(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value.strip(b" \t")) for name, value in headers]


def relayed(head: http1.ResponseHead, body: bytes) -> bytes:
    """The response as the proxy sends it to an HTTP/1.1 client (server.Exchange)."""
    headers = list(head.end_to_end)
    if head.has_body:
        headers.append((b"Content-Length", b"%d" % len(body)))
    return http1.response_head(head.status, headers, head.reason) + body


def check(data: bytes) -> None:
    if not data:
        return
    method = METHODS[data[0] % len(METHODS)]
    step = STEPS[(data[0] // len(METHODS)) % len(STEPS)]
    data = data[1:]
    whole = frame(data, method, None)
    split = frame(data, method, step)
    assert (whole.error is None) == (split.error is None), "split changes acceptance"
    if whole.error is not None:
        return
    assert [(h.status, h.headers) for h in whole.heads] == \
        [(h.status, h.headers) for h in split.heads], "split changes the heads"
    assert (whole.body, whole.ended) == (split.body, split.ended), "split changes the body"
    check_passthrough(data, method, step, whole)
    final = [h for h in whole.heads if not 100 <= h.status < 200]
    if any(h.status == 101 for h in whole.heads) or not final or not whole.ended:
        return
    head = final[0]
    reference = h11_read(data, method)
    assert reference.error is None, f"h11 refuses a response the reader accepted: " \
        f"{reference.error}"
    assert reference.ended, "h11 has not seen the end of a response the reader ended"
    assert (reference.status, reference.body) == (head.status, whole.body), \
        "status or body differ from h11's"
    assert end_to_end(reference.headers) == lower_fields(head.end_to_end), \
        "header fields differ from h11's"
    again = h11_read(relayed(head, whole.body), method, eof=False)
    assert again.error is None, f"h11 refuses what the proxy relays: {again.error}"
    assert (again.status, again.body, again.ended) == (head.status, whole.body, True), \
        "the relayed response differs"
    assert end_to_end(again.headers) == lower_fields(head.end_to_end), \
        "relayed header fields differ"


def check_passthrough(data: bytes, method: str, step: int | None, whole: Framed) -> None:
    """Relaying the daemon's own chunks frames exactly what decoding them does."""
    passed = frame(data, method, step, passthrough=True)
    assert passed.error is None, f"passthrough refuses what decoding accepts: {passed.error}"
    assert [(h.status, h.headers) for h in passed.heads] == \
        [(h.status, h.headers) for h in whole.heads], "passthrough changes the heads"
    assert passed.ended == whole.ended, "passthrough ends elsewhere"
    final = [h for h in whole.heads if not 100 <= h.status < 200]
    if not final or not final[0].chunked or final[0].status == 101:
        assert passed.body == whole.body, "passthrough changes a body that is not chunked"
        return
    if not whole.ended:
        return
    # What the client gets: the chunks as they came, then the relay's own last chunk.
    relayed_chunks = frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + passed.body + http1.LAST_CHUNK, "GET", None)
    assert relayed_chunks.error is None, "the relayed chunks do not frame"
    assert relayed_chunks.ended, "the relayed chunks do not end"
    assert relayed_chunks.body == whole.body, "the relayed chunks decode to another body"


if __name__ == "__main__":
    fuzz(check)
