"""Sans-IO HTTP/1.1 framing: bytes in, events out, no networking.

Theory of operation. Everything that decides where one HTTP message ends and
the next begins lives in this file, for both directions:

* ``RequestReader`` frames what clients send. It is deliberately stricter
  than RFC 9112 allows a server to be, because a proxy that frames a request
  differently from the daemon behind it is a request-smuggling hole. The
  request line and header fields are parsed by httptools (llhttp); this module
  finds the end of the head itself (so it can bound its size and refuse bare LF
  and obs-fold before llhttp sees them), then frames the body itself
  (Content-Length counting and a strict chunked decoder). Owning body framing
  gives exact byte offsets: after one message the reader stops until
  ``start_next()``, so the shell can switch a hijacked connection to raw bytes
  with ``take_rest()`` knowing nothing of the raw stream was parsed as HTTP.
  That is also how the body of ``POST /exec/{id}/start`` with ``Upgrade: tcp``
  is read: httptools 0.9.0 stops at the head of an upgrade request and would
  leave the JSON body mixed into the raw stream.
* ``ResponseReader`` frames what the daemon answers, knowing the request
  method (a HEAD response has no body whatever its Content-Length says). It is
  push-based and zero-copy on the hot path: body bytes are handed on as
  memoryviews of the received buffers.

Every framing problem raises ``errors.ProtocolError`` (or a subclass) for
client input and ``errors.UpstreamError`` for daemon output; nothing else
escapes.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from http import HTTPStatus
from typing import Final

import httptools

from dockgate.errors import HeadersTooLarge, ProtocolError, UpstreamError

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1: fields that describe one connection, never forwarded.
# Transfer-Encoding and Content-Length are re-derived from our own framing;
# Expect is answered by the proxy itself.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
    b"content-length", b"expect",
})

# A chunk-size line: 1-16 hex digits (more would overflow 64 bits), optional
# token-only extensions, no whitespace (RFC 9112 7.1.1 allows BWS before ';',
# which is a known smuggling vector, and no Docker client sends extensions).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHUNK_SIZE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb'(?:=(?:' + _TOKEN + rb'|"[^"\r\n]*"))?)*'
)
# The same with its CRLF, matched in place: no other CR or LF can be in the line, so a
# match is exactly a well-formed size line (the fast path of _size_line).
_CHUNK_SIZE_LINE: Final = re.compile(_CHUNK_SIZE.pattern + rb"\r\n")
# A trailer field: a token name, a value without control bytes but HTAB (RFC 9110 5.5).
_TRAILER_FIELD: Final = re.compile(_TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*")
# Response heads from the daemon: a token name, a value (and a reason phrase) without
# control bytes but HTAB; the status three digits from 100 to 599 (RFC 9112 4, 5;
# RFC 9110 15).
_FIELD_NAME: Final = re.compile(_TOKEN)
_FIELD_VALUE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_FRAMING_FIELDS: Final = frozenset({b"transfer-encoding", b"content-length", b"trailer"})
_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
_NOT_PRINTABLE: Final = re.compile(rb"[^\x21-\x7e]")  # a target is visible ASCII only
_MAX_CHUNK_LINE: Final = 4096  # a size line longer than this is not a Docker client


# Up to this size a copy costs less than avoiding it: a head's end is found with
# partition (which copies), and a body that came in the same read as its head is
# sliced out of the read instead of viewed (a memoryview slice costs about four
# times a small bytes slice).
_SMALL_COPY: Final = 4096


def _head_end(buf: bytes, pos: int) -> int:
    """``buf.find(b"\r\n\r\n", pos)``, cheaper for a small buffer that starts with the
    head: find parses its arguments the slow way (PyArg_ParseTuple), partition takes
    one."""
    if pos or len(buf) > _SMALL_COPY:
        return buf.find(b"\r\n\r\n", pos)
    before, separator, _ = buf.partition(b"\r\n\r\n")
    return len(before) if separator else -1


def _digits(value: bytes) -> bool:
    """1-18 ASCII digits (bytes.isdigit knows no other digits); more would overflow."""
    return value.isdigit() and len(value) <= 18


class NeedData:
    """Sentinel event: feed more bytes before asking again."""

    __slots__ = ()


NEED_DATA: Final = NeedData()


class RequestHead:
    """A parsed, validated request head.

    A plain class, not a dataclass, as are ``Data`` and ``EndOfMessage``: the compiled
    build runs a dataclass's generated ``__init__`` as Python, several times slower,
    and these are made for every request."""

    __slots__ = ("chunked", "content_length", "end_to_end", "expect_continue", "has_body",
                 "has_host", "headers", "keep_alive", "method", "size", "target", "upgrade",
                 "user_agent", "version")

    def __init__(self, method: str, target: str, version: str, headers: Headers, *,
                 keep_alive: bool, content_length: int | None, chunked: bool,
                 upgrade: bytes | None, expect_continue: bool, size: int,
                 end_to_end: Headers, has_host: bool, has_body: bool,
                 user_agent: str | None) -> None:
        self.method = method
        self.target = target
        self.version = version                # "1.1" or "1.0"
        self.headers = headers                # as received, original case
        self.keep_alive = keep_alive
        self.content_length = content_length  # None when chunked or no body
        self.chunked = chunked
        # The Upgrade value when Connection: upgrade asks for one.
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.size = size                      # bytes of the head on the wire
        self.end_to_end = end_to_end          # ``headers`` without the hop-by-hop fields
        self.has_host = has_host
        self.has_body = has_body              # a field: read several times a request
        self.user_agent = user_agent          # the first User-Agent, for the audit line

    def __repr__(self) -> str:
        return f"RequestHead({self.method} {self.target!r} HTTP/{self.version})"

    def get(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class ResponseHead:
    """A parsed response head from the daemon.

    The framing facts are read on arrival; the field list (``headers``,
    ``end_to_end``) only when someone asks, since relaying a plain response
    needs ``forward`` alone.
    """

    __slots__ = ("_end_to_end", "_headers", "_relayed", "_relayed_with", "chunked",
                 "content_length", "content_type", "fields", "forward", "has_body",
                 "keep_alive", "reason", "status", "version")

    def __init__(self, status: int, reason: bytes, version: str, fields: bytes, *,
                 content_length: int | None, chunked: bool, keep_alive: bool,
                 has_body: bool, content_type: bytes, forward: bytes | None) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.fields = fields                  # the field lines as received, CRLF-terminated
        self.content_length = content_length  # None when chunked or no length
        self.chunked = chunked
        self.keep_alive = keep_alive          # may the upstream connection carry another request?
        self.has_body = has_body
        self.content_type = content_type      # media type, lowercase, parameters dropped
        # ``fields`` without the Connection field, when that and the framing fields
        # (Content-Length, Transfer-Encoding: chunked) are the only hop-by-hop ones:
        # then the client may get these lines as they are. None otherwise.
        self.forward = forward
        self._headers: Headers | None = None
        self._end_to_end: Headers | None = None
        self._relayed = b""
        self._relayed_with = b""

    def relayed(self, connection: bytes) -> bytes:
        """The head as a proxy relays it when ``forward`` fits: the status line, the
        ``forward`` lines and ``connection`` (a Connection field line, or nothing).
        Kept for the last ``connection``: a repeated head is the same object (see
        ``ResponseReader._parse_head``), so a poller's answers are formatted once."""
        if not self._relayed or connection != self._relayed_with:
            assert self.forward is not None
            self._relayed = b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (self.status, self.reason,
                                                              self.forward, connection)
            self._relayed_with = connection
        return self._relayed

    def copy(self) -> ResponseHead:
        """The same head with field lists of its own (callers extend ``end_to_end``)."""
        return ResponseHead(self.status, self.reason, self.version, self.fields,
                            content_length=self.content_length, chunked=self.chunked,
                            keep_alive=self.keep_alive, has_body=self.has_body,
                            content_type=self.content_type, forward=self.forward)

    @property
    def headers(self) -> Headers:
        """The fields as received, original case."""
        if self._headers is None:
            self._headers = [(name, value.strip(b" \t")) for name, _, value in
                             (line.partition(b":") for line in self.fields.split(b"\r\n")[:-1])]
        return self._headers

    @property
    def end_to_end(self) -> Headers:
        """``headers`` without the hop-by-hop fields; the caller may extend this list."""
        if self._end_to_end is None:
            connection: set[bytes] = set()
            kept: list[tuple[bytes, bytes, bytes]] = []
            for name, value in self.headers:
                key = name.lower()
                if key not in HOP_BY_HOP and not key.startswith(b"proxy-"):
                    kept.append((key, name, value))
                elif key == b"connection":
                    connection |= _tokens(value)
            self._end_to_end = _end_to_end(kept, connection)
        return self._end_to_end

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def close_delimited(self) -> bool:
        return self.has_body and not self.chunked and self.content_length is None


class Data:
    """A piece of a message's body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({bytes(self.data)!r})"


class EndOfMessage:
    """The message's body is complete."""

    __slots__ = ()


END: Final = EndOfMessage()

RequestEvent = RequestHead | Data | EndOfMessage | NeedData


class _HeadCollector:
    """httptools callbacks: collect the URL and header fields of one head."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: Headers = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


_COMMON_TOKENS: Final = {b"keep-alive": frozenset({b"keep-alive"}),
                         b"close": frozenset({b"close"}), b"upgrade": frozenset({b"upgrade"})}


def _tokens(value: bytes) -> set[bytes] | frozenset[bytes]:
    common = _COMMON_TOKENS.get(value.lower())
    if common is not None:
        return common  # the usual single token, without splitting
    return {part.strip().lower() for part in value.split(b",") if part.strip()}


class _ChunkedDecoder:
    """Strict incremental chunked body decoder shared by both directions."""

    __slots__ = ("_error", "_max_trailer", "_remaining", "_state", "_trailer_bytes",
                 "last_chunk_at")

    def __init__(self, error: type[Exception], max_trailer: int) -> None:
        self._error = error
        self._max_trailer = max_trailer
        self._state = "size"   # size | data | data-crlf | trailer | done
        self._remaining = 0
        self._trailer_bytes = 0
        self.last_chunk_at = 0  # where the last chunk's size line began, in the last buffer

    @property
    def in_trailer(self) -> bool:
        """The last chunk was read: what follows is the trailer section, or nothing."""
        return self._state in ("trailer", "done")

    def step(self, buf: bytes, pos: int) -> tuple[Data | EndOfMessage | None, int]:
        """Decode one event from ``buf[pos:]``; (None, pos) means more bytes are needed."""
        state = self._state
        if state == "data":
            take = min(self._remaining, len(buf) - pos)
            if take == 0:
                return None, pos
            self._remaining -= take
            if self._remaining == 0:
                self._state = "data-crlf"
            return Data(memoryview(buf)[pos:pos + take]), pos + take
        if state == "data-crlf":
            if len(buf) - pos < 2:
                return None, pos
            if buf[pos:pos + 2] != b"\r\n":
                raise self._error("invalid chunked body: chunk data not followed by CRLF")
            self._state = "size"
            return self._next_size(buf, pos + 2)
        if state == "size":
            return self._next_size(buf, pos)
        if state == "trailer":
            return self._trailer(buf, pos)
        return None, pos

    def _line(self, buf: bytes, pos: int, limit: int) -> bytes | None:
        # find, not "in": bytes.__contains__ first tries its argument as an integer,
        # and the TypeError it raises and clears costs more than the search.
        end = buf.find(b"\r\n", pos)
        if end < 0:
            # limit + 1: a line of ``limit`` bytes may be buffered with its CR, its LF
            # still to come (it passes when it comes whole).
            if buf.find(b"\n", pos) >= 0 or len(buf) - pos > limit + 1:
                raise self._error("invalid chunked body: bad line framing")
            return None
        if buf.find(b"\n", pos, end) >= 0 or buf.find(b"\r", pos, end) >= 0 \
                or end - pos > limit:
            raise self._error("invalid chunked body: bad line framing")
        return buf[pos:end]

    def _next_size(self, buf: bytes, pos: int) -> tuple[Data | EndOfMessage | None, int]:
        after = self._size_line(buf, pos)
        if after is None:
            return None, pos
        if self._state == "trailer":
            return self._trailer(buf, after)
        return self.step(buf, after)

    def _size_line(self, buf: bytes, pos: int) -> int | None:
        """Read the chunk size line at ``pos``: the position after it, None if incomplete."""
        # endpos: a match is within the limit, and the search never runs past it.
        match = _CHUNK_SIZE_LINE.match(buf, pos, pos + _MAX_CHUNK_LINE + 2)
        if match is not None:
            after = match.end()
        else:
            # Incomplete, too long or malformed: the line-by-line checks say which.
            line = self._line(buf, pos, _MAX_CHUNK_LINE)
            if line is None:
                return None
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise self._error(f"invalid chunked body: bad chunk size line {line[:40]!r}")
            after = pos + len(line) + 2
        size = int(match.group(1), 16)
        if size == 0:
            self.last_chunk_at = pos
            self._state = "trailer"
        else:
            self._state = "data"
            self._remaining = size
        return after

    def skip(self, buf: bytes, pos: int) -> tuple[bool, int]:
        """Frame as much of ``buf[pos:]`` as is there, without an event per piece (a
        relay passing the encoded bytes on needs only where they end): (ended, pos)."""
        while True:
            state = self._state
            if state == "data":
                take = min(self._remaining, len(buf) - pos)
                pos += take
                self._remaining -= take
                if self._remaining:
                    return False, pos
                self._state = "data-crlf"
            elif state == "data-crlf":
                if len(buf) - pos < 2:
                    return False, pos
                if buf[pos:pos + 2] != b"\r\n":
                    raise self._error("invalid chunked body: chunk data not followed by CRLF")
                self._state = "size"
                pos += 2
            elif state == "size":
                after = self._size_line(buf, pos)
                if after is None:
                    return False, pos
                pos = after
            elif state == "trailer":
                event, pos = self._trailer(buf, pos)
                return event is not None, pos
            else:
                return True, pos

    def _trailer(self, buf: bytes, pos: int) -> tuple[Data | EndOfMessage | None, int]:
        # Trailer fields are read (bounded) and dropped: Docker uses none, and
        # forwarding them would let a client add headers after the decision.
        if buf.startswith(b"\r\n", pos):
            self._state = "done"  # the empty line that ends it, at once: the usual case
            return END, pos + 2
        while True:
            line = self._line(buf, pos, self._max_trailer)
            if line is None:
                return None, pos
            pos += len(line) + 2
            if not line:
                self._state = "done"
                return END, pos
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > self._max_trailer or not _TRAILER_FIELD.fullmatch(line):
                raise self._error("invalid chunked body: bad trailer section")
            # Framing fields in a trailer: Go's net/http refuses them, so does h11.
            if line.split(b":", 1)[0].lower() in _FRAMING_FIELDS:
                raise self._error("invalid chunked body: framing field in the trailer")


class RequestReader:
    """Frames client requests one at a time; see the module docstring."""

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self._buf = b""
        self._pos = 0
        self._state = "head"          # head | length | chunked | done
        self._remaining = 0
        self._chunked: _ChunkedDecoder | None = None
        self._last_raw = b""
        self._last_head: RequestHead | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events."""
        return len(self._buf) - self._pos

    @property
    def awaiting_head(self) -> bool:
        return self._state == "head"

    def feed(self, data: bytes) -> None:
        if self._pos:
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
        elif self._buf:
            self._buf += data
        else:
            self._buf = data

    def start_next(self) -> None:
        """Allow the next pipelined request to be parsed (its END may stay unread)."""
        if self._state not in ("done", "body-end"):
            raise RuntimeError("start_next() before the end of the current message")
        self._state = "head"

    def take_rest(self) -> bytes:
        """Hand over the unparsed bytes (the connection leaves HTTP for raw bytes)."""
        rest = self._buf[self._pos:]
        self._buf = b""
        self._pos = 0
        return rest

    def next_event(self) -> RequestEvent:
        state = self._state
        if state == "length":
            available = len(self._buf) - self._pos
            if available == 0:
                return NEED_DATA
            take = min(available, self._remaining)
            start = self._pos
            self._pos += take
            self._remaining -= take
            if self._remaining == 0:
                self._state = "body-end"
            if start == 0 and take == len(self._buf):
                return Data(self._buf)
            return Data(memoryview(self._buf)[start:start + take])
        if state == "body-end":
            self._state = "done"
            return END
        if state == "chunked":
            assert self._chunked is not None
            event, self._pos = self._chunked.step(self._buf, self._pos)
            if event is None:
                return NEED_DATA
            if isinstance(event, EndOfMessage):
                self._state = "done"
            return event
        if state == "head":
            if self._pos == len(self._buf):
                return NEED_DATA  # between requests: nothing buffered
            return self._head()
        return NEED_DATA

    def _head(self) -> RequestHead | NeedData:
        buf = self._buf
        # RFC 9112 2.2: a server SHOULD ignore empty lines before a request line.
        # (Bytes compared one by one: startswith parses its arguments the slow way.)
        pos = self._pos
        length = len(buf)
        while pos + 1 < length and buf[pos] == 13 and buf[pos + 1] == 10:
            pos += 2
        self._pos = pos
        if pos == length:
            return NEED_DATA  # between requests: nothing buffered
        end = _head_end(buf, pos)
        if end < 0:
            # (The look-behind must not see the byte before pos: the last body's.)
            if buf.startswith(b"\n", pos) or _BARE_LF.search(buf, pos):
                raise ProtocolError("malformed request: bare LF line ending")
            if len(buf) - pos > self.max_header_bytes:
                raise HeadersTooLarge(
                    f"request head larger than {self.max_header_bytes} bytes")
            return NEED_DATA
        size = end + 4 - pos
        if size > self.max_header_bytes:
            raise HeadersTooLarge(f"request head larger than {self.max_header_bytes} bytes")
        raw = buf[pos:end + 4]
        if raw == self._last_raw and self._last_head is not None:
            # A keep-alive client repeating itself (a poller, a health check): the
            # head is a pure function of its bytes, checked and parsed once.
            head = self._last_head
        else:
            # Substring counts instead of the regexes: same tests, half the cost. Every
            # LF belongs to a CRLF exactly when there are as many CRLFs as LFs.
            crlf = raw.count(b"\r\n")
            if raw.count(b"\n") != crlf:
                raise ProtocolError("malformed request: bare LF line ending")
            if raw.count(b"\r") != crlf:
                # llhttp skips a bare CR before the request line; nothing after it would.
                raise ProtocolError("malformed request: bare CR in the head")
            if raw.find(b"\r\n ") >= 0 or raw.find(b"\r\n\t") >= 0:  # find: see _line
                raise ProtocolError("malformed request: obsolete line folding in a header")
            # RFC 9112 3: method SP request-target SP HTTP-version, one space each. llhttp
            # lets "GET  / HTTP/1.1" through; Go's net/http reads it as another target.
            if raw.count(b" ", 0, raw.find(b"\r\n")) != 2:
                raise ProtocolError("malformed request line: expected METHOD SP TARGET SP "
                                    "HTTP/1.1 with single spaces")
            head = self._parse_head(raw)
            self._last_raw, self._last_head = raw, head
        self._pos = end + 4
        if head.chunked:
            self._state = "chunked"
            self._chunked = _ChunkedDecoder(ProtocolError, self.max_header_bytes)
        elif head.content_length:
            self._state = "length"
            self._remaining = head.content_length
        else:
            self._state = "body-end"  # the next event is EndOfMessage
        return head

    def _parse_head(self, raw: bytes) -> RequestHead:
        collector = _HeadCollector()
        parser = httptools.HttpRequestParser(collector)
        try:
            parser.feed_data(raw)
        except httptools.HttpParserUpgrade:
            pass  # an upgrade request: its head is complete, the body is framed below
        except httptools.HttpParserError as error:
            raise ProtocolError(f"malformed request: {error}") from None
        if not collector.complete:
            raise ProtocolError("malformed request head")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ProtocolError(f"unsupported HTTP version {version}")
        method = parser.get_method().decode("ascii")
        target = check_target(collector.url)
        return _frame(method, target, version, collector.headers, len(raw))


def check_target(url: bytes) -> str:
    """The target as text if it is origin-form printable ASCII; ProtocolError otherwise."""
    # Only origin-form ("/path?query") reaches the daemon; absolute-form and
    # authority-form would let the proxy and the daemon disagree about the path.
    if not url.startswith(b"/"):
        raise ProtocolError("request target must be in origin-form (start with '/')")
    if _NOT_PRINTABLE.search(url) is not None:
        raise ProtocolError("request target contains control or non-ASCII bytes")
    return url.decode("ascii")


def _frame(method: str, target: str, version: str, headers: Headers, size: int) -> RequestHead:
    content_length: int | None = None
    transfer_encoding: list[bytes] = []
    connection: set[bytes] = set()
    upgrade: bytes | None = None
    hosts = 0
    expect_continue = False
    # The end-to-end fields are gathered in the same pass that validates framing,
    # so the forwarded head costs no second walk over the fields (one per request).
    kept: list[tuple[bytes, bytes, bytes]] = []
    user_agent: str | None = None
    for name, value in headers:
        key = name.lower()
        if key not in HOP_BY_HOP and not key.startswith(b"proxy-"):
            kept.append((key, name, value))
            if key == b"host":
                hosts += 1
            elif key == b"user-agent" and user_agent is None:
                user_agent = value.decode("latin-1")
            continue
        if key == b"content-length":
            if content_length is not None:
                raise ProtocolError("duplicate Content-Length")
            if not _digits(value):
                raise ProtocolError("invalid Content-Length")
            content_length = int(value)
        elif key == b"transfer-encoding":
            transfer_encoding.append(value)
        elif key == b"connection":
            connection |= _tokens(value)
        elif key == b"upgrade":
            upgrade = value
        elif key == b"expect":
            if value.strip().lower() != b"100-continue":
                raise ProtocolError("unsupported Expect")
            expect_continue = True
    if hosts > 1:
        raise ProtocolError("more than one Host header")
    chunked = False
    if transfer_encoding:
        if content_length is not None:
            raise ProtocolError("Content-Length together with Transfer-Encoding")
        codings = [c for value in transfer_encoding for c in value.lower().split(b",")]
        if [c.strip() for c in codings] != [b"chunked"] or version == "1.0":
            raise ProtocolError("unsupported Transfer-Encoding (only 'chunked' on HTTP/1.1)")
        chunked = True
    # RFC 9112 9.3: HTTP/1.1 persists unless closed; HTTP/1.0 only when asked.
    keep_alive = (b"close" not in connection if version == "1.1"
                  else b"keep-alive" in connection)
    if b"upgrade" not in connection:
        upgrade = None
    return RequestHead(method, target, version, headers, keep_alive=keep_alive,
                       content_length=content_length, chunked=chunked, upgrade=upgrade,
                       expect_continue=expect_continue, size=size,
                       end_to_end=_end_to_end(kept, connection), has_host=hosts > 0,
                       has_body=chunked or bool(content_length), user_agent=user_agent)


def _end_to_end(kept: list[tuple[bytes, bytes, bytes]], named: set[bytes]) -> Headers:
    """``kept`` without the fields the Connection header names (RFC 9110 7.6.1)."""
    if named:
        return [(name, value) for key, name, value in kept if key not in named]
    return [(name, value) for _, name, value in kept]


ResponseEvent = ResponseHead | Data | EndOfMessage


class _UpstreamFramingError(UpstreamError):
    """Bad chunked framing from the daemon (the decoder's messages name the problem)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"dockgate: the daemon sent an {message}")


# A field block whose every line is ``token: value`` with no control bytes but HTAB
# in the value: what the fast head path accepts. Anything else takes the
# field-by-field path, which names the problem.
_FIELD_LINES: Final = re.compile(rb"(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
# The hop-by-hop field names at the start of a line of the lowercased field block
# (with a line break prepended), for the fast head path.
_HOP_NAMES: Final = re.compile(rb"\n(connection|content-length|keep-alive|proxy-[^:]*|te|"
                               rb"trailer|transfer-encoding|upgrade):")


class ResponseReader:
    """Frames daemon responses, push-based; see the module docstring.

    With ``expect(method, passthrough=True)`` a chunked body comes out as the chunked
    encoding itself (size lines and CRLFs included, validated all the same), minus
    the last chunk and the trailer section, which the caller replaces by
    ``LAST_CHUNK``: a proxy forwards chunks as they came instead of decoding and
    encoding them again.
    """

    MAX_HEAD: Final = 65536  # Docker's response heads are a few hundred bytes

    def __init__(self) -> None:
        self._buf = b""
        self._state = "idle"     # idle | head | length | chunked | close | switched
        self._remaining = 0
        self._method = "GET"
        self._passthrough = False
        self._chunked: _ChunkedDecoder | None = None
        self._last_raw = b""
        self._last_method = ""
        self._last_head = ResponseHead(0, b"", "", b"", content_length=None, chunked=False,
                                       keep_alive=False, has_body=False, content_type=b"",
                                       forward=None)

    @property
    def idle(self) -> bool:
        return self._state == "idle" and not self._buf

    def expect(self, method: str, passthrough: bool = False) -> None:
        """Prepare for the response to a request made with ``method``."""
        self._method = method
        self._passthrough = passthrough
        self._state = "head"

    def take_rest(self) -> bytes:
        rest = self._buf
        self._buf = b""
        return rest

    def feed(self, data: bytes) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        state = self._state
        if not self._buf:
            # Hot path: body bytes arriving with nothing buffered go out as they came.
            if state == "length":
                size = len(data)
                if size < self._remaining:
                    self._remaining -= size
                    events.append(Data(data))
                    return events
            elif state == "close":
                events.append(Data(data))
                return events
            buf = data
        else:
            buf = self._buf + data
        pos = 0
        while pos < len(buf):
            state = self._state
            if state == "head":
                end = _head_end(buf, pos)
                if (end if end >= 0 else len(buf)) - pos > self.MAX_HEAD:
                    # Also when the whole head came in one read (found by tests/test_faults).
                    raise UpstreamError("dockgate: the daemon sent an oversized response head")
                if end < 0:
                    break
                head = self._parse_head(buf[pos:end + 2])
                pos = end + 4
                events.append(head)
                self._start_body(head)
                if self._state == "idle" or (self._state == "length" and not self._remaining):
                    self._state = "idle"
                    events.append(END)
            elif state == "length":
                take = min(self._remaining, len(buf) - pos)
                events.append(Data(buf[pos:pos + take] if take <= _SMALL_COPY
                                   else memoryview(buf)[pos:pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    events.append(END)
                    self._state = "idle"
            elif state == "chunked":
                decoder = self._chunked
                assert decoder is not None
                if self._passthrough:
                    # The encoded bytes, up to the last chunk (the relay ends the body
                    # with its own last chunk: trailers are dropped).
                    start = pos
                    trailer = decoder.in_trailer
                    ended, pos = decoder.skip(buf, pos)
                    end = start if trailer else decoder.last_chunk_at if \
                        decoder.in_trailer else pos
                    if end > start:
                        events.append(Data(buf if start == 0 and end == len(buf)
                                           else memoryview(buf)[start:end]))
                    if not ended:
                        break
                    events.append(END)
                    self._state = "idle"
                    continue
                event, pos = decoder.step(buf, pos)
                if event is None:
                    break
                events.append(event)
                if isinstance(event, EndOfMessage):
                    self._state = "idle"
            elif state == "close":
                events.append(Data(memoryview(buf)[pos:]))
                pos = len(buf)
            elif state == "switched":
                break
            else:
                raise UpstreamError("dockgate: the daemon sent bytes outside of a response")
        self._buf = buf[pos:] if pos < len(buf) else b""
        return events

    def feed_eof(self) -> list[ResponseEvent]:
        """The daemon closed its side: ends a close-delimited body, else an error."""
        if self._state == "close":
            self._state = "idle"
            return [END]
        if self._state in ("idle", "switched") and not self._buf:
            return []
        if self._state == "head" and not self._buf:
            raise UpstreamError("dockgate: the daemon closed the connection without answering")
        raise UpstreamError("dockgate: the daemon closed the connection in the middle of a "
                            "response")

    def _start_body(self, head: ResponseHead) -> None:
        if head.status == 101:
            self._state = "switched"
        elif 100 <= head.status < 200:
            self._state = "head"   # interim response; the final one follows
        elif not head.has_body:
            self._state = "idle"
        elif head.chunked:
            self._state = "chunked"
            self._chunked = _ChunkedDecoder(_UpstreamFramingError, self.MAX_HEAD)
        elif head.content_length is not None:
            self._state = "length"
            self._remaining = head.content_length
        else:
            self._state = "close"

    def _parse_head(self, raw: bytes) -> ResponseHead:
        if raw == self._last_raw and self._method == self._last_method:
            head = self._last_head
            # The same bytes frame the same way (a daemon's heads differ by their Date
            # at most once a second). The same object while nobody has asked for its
            # field lists (relaying needs ``forward`` alone); a fresh one once they
            # exist, since callers extend them.
            if head._headers is None and head._end_to_end is None:
                return head
            return head.copy()
        head = self._parse_new_head(raw)
        self._last_raw, self._last_method, self._last_head = raw, self._method, head
        return head

    def _parse_new_head(self, raw: bytes) -> ResponseHead:
        line_end = raw.find(b"\r\n")
        status_line = raw[:line_end].split(b" ", 2)
        if len(status_line) < 2 or status_line[0] not in (b"HTTP/1.1", b"HTTP/1.0") \
                or len(status_line[1]) != 3 or not status_line[1].isdigit():
            raise UpstreamError("dockgate: the daemon sent a malformed status line")
        status = int(status_line[1])
        reason = status_line[2] if len(status_line) > 2 else b""
        if not 100 <= status <= 599 or not _FIELD_VALUE.fullmatch(reason):
            raise UpstreamError("dockgate: the daemon sent a malformed status line")
        version = status_line[0][5:].decode()
        fields = raw[line_end + 2:]
        facts = _fast_fields(fields) if _FIELD_LINES.fullmatch(fields) else None
        if facts is None:
            facts = _slow_fields(fields)
        content_length, chunked, connection, content_type, forward = facts
        if chunked:
            content_length = None
        no_body = (self._method == "HEAD" or 100 <= status < 200 or status in (204, 304))
        keep_alive = (b"close" not in connection if version == "1.1"
                      else b"keep-alive" in connection)
        has_body = not no_body
        if has_body and not chunked and content_length is None:
            keep_alive = False
        return ResponseHead(status, reason, version, fields, content_length=content_length,
                            chunked=chunked, keep_alive=keep_alive, has_body=has_body,
                            content_type=content_type, forward=forward)


_Facts = tuple[int | None, bool, AbstractSet[bytes], bytes, bytes | None]


def _content_length(value: bytes, previous: bytes | None) -> int:
    # A repeated Content-Length must repeat the same bytes ("05" then "5" is a
    # conflict to h11 and Go; found by fuzz/fuzz_response.py).
    if not _digits(value) or (previous is not None and previous != value):
        raise UpstreamError("dockgate: the daemon sent an invalid Content-Length")
    return int(value)


def _transfer_chunked(value: bytes, repeated: bool = False) -> bool:
    # One field, exactly "chunked", as Go's client insists (and h11: a second field
    # was found by fuzz/fuzz_response.py's long campaign).
    if repeated or value.lower() != b"chunked":
        raise UpstreamError("dockgate: the daemon sent an unsupported Transfer-Encoding")
    return True


def _fast_fields(fields: bytes) -> _Facts | None:
    """The framing facts of well-formed field lines, found with one search of the
    lowercased block for the hop-by-hop names instead of a loop over every line;
    None when the field-by-field path must decide (another hop-by-hop field, a
    repeated framing field, a Connection naming fields, both framings)."""
    lower = b"\n" + fields.lower()
    content_length: int | None = None
    chunked = False
    connection: AbstractSet[bytes] = frozenset()
    forward = fields
    seen: set[bytes] = set()
    for match in _HOP_NAMES.finditer(lower):
        name = match.group(1)
        if name in seen:
            return None
        seen.add(name)
        start = match.start()
        end = lower.index(b"\r", start)
        value = lower[match.end():end].strip()
        if name == b"content-length":
            content_length = _content_length(value, None)
        elif name == b"transfer-encoding":
            chunked = _transfer_chunked(value)
            if value != b"chunked":
                return None
        elif name == b"connection":
            connection = _tokens(value)
            if connection - {b"close", b"keep-alive"}:
                return None
            forward = fields[:start] + fields[end + 1:]
        else:
            return None
    if chunked and content_length is not None:
        return None
    content_type = b""
    at = lower.find(b"\ncontent-type:")
    if at >= 0:
        content_type = lower[at + 14:lower.index(b"\r", at)].split(b";")[0].strip()
    return content_length, chunked, connection, content_type, forward


def _slow_fields(fields: bytes) -> _Facts:
    content_length: int | None = None
    length_value: bytes | None = None
    chunked = False
    connection: set[bytes] = set()
    content_type = b""
    for line in fields.split(b"\r\n")[:-1]:
        name, sep, value = line.partition(b":")
        value = value.strip(b" \t")
        if not sep or not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise UpstreamError("dockgate: the daemon sent a malformed header")
        key = name.lower()
        if key not in HOP_BY_HOP and not key.startswith(b"proxy-"):
            if key == b"content-type" and not content_type:
                content_type = value.split(b";")[0].strip().lower()
        elif key == b"content-length":
            content_length = _content_length(value, length_value)
            length_value = value
        elif key == b"transfer-encoding":
            chunked = _transfer_chunked(value, repeated=chunked)
        elif key == b"connection":
            connection |= _tokens(value)
    return content_length, chunked, connection, content_type, None


def request_head(method: str, target: str, headers: Headers) -> bytes:
    """Serialize an HTTP/1.1 request head."""
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def response_head(status: int, headers: Headers, reason: bytes | None = None) -> bytes:
    """Serialize an HTTP/1.1 status line and header fields."""
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def closing_answer(status: int, body: bytes) -> bytes:
    """A whole response that ends the connection (an error answered before any request)."""
    return response_head(status, [(b"Content-Type", b"application/json"),
                                  (b"Content-Length", b"%d" % len(body)),
                                  (b"Connection", b"close")]) + body


def chunk_header(size: int) -> bytes:
    return b"%x\r\n" % size


LAST_CHUNK: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"
