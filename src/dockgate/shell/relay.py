"""The response relay: one daemon response to the client, from the upstream callbacks.

Theory of operation. An ``Exchange`` is the ``ResponseSink`` of the upstream
connection carrying one request. The upstream protocol hands it the response
events of each read in one call, and what they make is sent at the end of it,
so a small response leaves in one write and no task wakes up per body chunk
(which is what keeps a 1 GiB stream cheap). The exchange talks back to the
client side only through ``Downstream``, a handful of callbacks, so this module
knows nothing of the connection that uses it.

Framing towards the client is ours: hop-by-hop fields are dropped, the body
is sent with its own Content-Length when the daemon gave one, chunked to an
HTTP/1.1 client when the daemon sent no length, close-delimited to an HTTP/1.0
client. A response filter (the policy's scope on lists and event streams)
reads the body: a JSON list is held whole (bounded) and sent again with a new
length, a JSON-lines stream is filtered line by line. Interim 1xx responses
stay between the proxy and the daemon. A 101, or a 200 with one of Docker's
raw-stream types on a hijack route, leaves HTTP: ``Downstream.switched``
returns the peer that takes the raw bytes from then on.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import Final, Literal

from mypy_extensions import trait

from dockgate import http1, routes
from dockgate.decision import ErrorAnswer, ResponseFilter
from dockgate.errors import UpstreamError
from dockgate.shell.upstream import RawPeer, UpstreamConnection

MAX_FILTERED_BYTES: Final = 32 * 1024 * 1024  # a filtered JSON list is held whole
MAX_JSON_LINE: Final = 1024 * 1024  # one event of a filtered JSON-lines stream
RAW_STREAM_TYPES: Final = (b"application/vnd.docker.raw-stream",
                           b"application/vnd.docker.multiplexed-stream")

# How an exchange ended: done (the response was relayed whole), lost (the daemon
# went away before a byte reached the client: a 502 can still be answered),
# broken (it went away mid-response: only closing is left), switch (raw bytes now).
Outcome = Literal["done", "lost", "broken", "switch"]


@trait
class Downstream:
    """What an exchange needs from the client side of the connection."""

    @property
    @abstractmethod
    def shutting_down(self) -> bool: ...

    @abstractmethod
    def send(self, parts: list[bytes | memoryview]) -> None:
        """Write response bytes to the client (counted as bytes out)."""

    @abstractmethod
    def stream_opened(self, status: int) -> None:
        """A long-lived stream's head is on its way: it no longer holds up shutdown."""

    @abstractmethod
    def switched(self, head: bytes) -> RawPeer:
        """The daemon left HTTP: write ``head``; the returned peer takes the raw bytes."""

    @abstractmethod
    def exchange_done(self, outcome: Outcome) -> None:
        """The exchange ended (called once)."""


class Exchange:
    """Relays one daemon response to the client; see the module docstring."""

    def __init__(self, client: Downstream, conn: UpstreamConnection,
                 head: http1.RequestHead, *, response_filter: ResponseFilter | None,
                 stream: routes.Stream, upgrade: bytes | None,
                 error_answer: ErrorAnswer | None = None, decoded: bool = False) -> None:
        self.client = client
        self.conn = conn
        self.head = head
        self.filter = response_filter
        self.error_answer = error_answer
        self.stream = stream
        self.upgrade = upgrade
        # An HTTP/1.1 client gets a chunked body as the daemon chunked it, unless a
        # filter or an error rewrite must read it (the reader then decodes it), or the
        # body comes decoded anyway (``decoded``: a shared feed, see feeds).
        self.passthrough = (head.version == "1.1" and response_filter is None
                            and error_answer is None and not decoded)
        self.out: list[bytes | memoryview] = []
        self.finished = False
        self.started = False
        self.status = 0
        # none | length | chunked (we chunk) | passthrough (the daemon's chunks) | close
        # | collect | lines | lines-close
        self.mode = "none"
        self.keep_alive = False
        self.upstream_reusable = False
        self.error: str | None = None
        self._headers: http1.Headers = []
        self._collected: list[bytes] = []
        self._collected_size = 0
        self._line = b""

    # upstream.ResponseSink -------------------------------------------------------------------

    def on_events(self, events: list[http1.ResponseEvent]) -> int:
        taken = 0
        for event in events:
            if self.finished:
                break
            taken += 1
            if isinstance(event, http1.Data):
                self._data(event.data)
            elif isinstance(event, http1.ResponseHead):
                self._head(event)
            else:
                self._end()
        if self.out:
            self.flush()
        return taken

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            self.client.send(out)

    def on_lost(self, error: UpstreamError) -> None:
        if self.finished:
            return
        self.error = error.message
        self._finish("broken" if self.started else "lost")

    # relaying ----------------------------------------------------------------------------------

    def _finish(self, outcome: Outcome) -> None:
        self.finished = True
        self.flush()
        self.client.exchange_done(outcome)

    def _fail(self, message: str) -> None:
        self.conn.abort()
        self.error = message
        if not self.finished:
            self._finish("broken" if self.started else "lost")

    def _switch(self, response: http1.ResponseHead, headers: http1.Headers) -> None:
        self.started = True
        self.flush()
        peer = self.client.switched(http1.response_head(response.status, headers,
                                                        response.reason))
        self.conn.go_raw(peer)
        self._finish("switch")

    def _head(self, response: http1.ResponseHead) -> None:
        status = response.status
        if 100 <= status < 200 and status != 101:
            return  # interim responses stay between us and the daemon
        self.status = status
        request = self.head
        if status == 101:
            if self.upgrade is None:
                self._fail("dockgate: the daemon switched protocols for a request that "
                           "did not ask for it")
                return
            switched_to = response.get(b"upgrade")
            if not switched_to:
                # RFC 9110 15.2.2: a 101 names the protocol it switches to. Without it
                # the bytes that follow are of no known protocol: never relay them.
                self._fail("dockgate: the daemon answered 101 Switching Protocols "
                           "without an Upgrade header")
                return
            headers = response.end_to_end  # this response's own list, free to extend
            headers += [(b"Connection", b"Upgrade"), (b"Upgrade", switched_to)]
            self._switch(response, headers)
            return
        if (self.stream == routes.Stream.HIJACK and status == 200
                and response.close_delimited and response.content_type in RAW_STREAM_TYPES):
            # Docker's other hijack form: 200 with a raw stream type, then raw bytes.
            self._switch(response, response.end_to_end)
            return
        client_11 = request.version == "1.1"
        close_after = self.upgrade is not None  # asked for raw, got HTTP: its next bytes are raw
        if not response.has_body:
            self.mode = "none"
        elif status >= 400 and self.error_answer is not None:
            self.mode = "collect"  # rewritten whole at the end (_send_collected)
        elif self.filter is not None and self.filter.mode in ("json-list", "json-object"):
            self.mode = "collect"
        elif self.filter is not None:
            self.mode = "lines" if client_11 else "lines-close"
        elif response.content_length is not None:
            self.mode = "length"
        elif response.chunked and self.passthrough:
            self.mode = "passthrough"
        elif client_11:
            self.mode = "chunked"
        else:
            self.mode = "close"
        if self.mode in ("close", "lines-close"):
            close_after = True
        self.keep_alive = (request.keep_alive and not close_after
                           and not self.client.shutting_down)
        self.upstream_reusable = response.keep_alive
        forward = response.forward
        if forward is not None and (self.mode in ("length", "passthrough") or (
                self.mode == "none" and not response.chunked and (
                    response.content_length is None or request.method == "HEAD"
                    or status == 304))):
            # The daemon's own field lines fit: its framing fields are ours.
            data = response.relayed(b"" if self.keep_alive and client_11
                                    else b"Connection: keep-alive\r\n" if self.keep_alive
                                    else b"Connection: close\r\n")
        elif self.mode == "collect":
            self._headers = self._framing(response)
            return
        else:
            data = http1.response_head(status, self._framing(response), response.reason)
        self.started = True
        if self.stream == routes.Stream.STREAM:
            self.client.stream_opened(status)
        self.out.append(data)

    def _framing(self, response: http1.ResponseHead) -> http1.Headers:
        """The end-to-end fields plus the framing and Connection fields of ours."""
        headers = response.end_to_end
        mode = self.mode
        length = response.content_length
        if length is not None and (mode == "length" or (mode == "none" and (
                self.head.method == "HEAD" or response.status == 304))):
            headers.append((b"Content-Length", b"%d" % length))
        elif mode in ("chunked", "lines", "passthrough"):
            headers.append((b"Transfer-Encoding", b"chunked"))
        if not self.keep_alive:
            headers.append((b"Connection", b"close"))
        elif self.head.version != "1.1":
            headers.append((b"Connection", b"keep-alive"))
        return headers

    def _data(self, data: bytes | memoryview) -> None:
        mode = self.mode
        if mode in ("length", "passthrough", "close"):
            self.out.append(data)
        elif mode == "chunked":
            if data:
                self.out += (http1.chunk_header(len(data)), data, http1.CRLF)
        elif mode == "collect":
            self._collected_size += len(data)
            if self._collected_size > MAX_FILTERED_BYTES:
                self._fail("dockgate: the daemon's answer is too large to filter")
                return
            self._collected.append(bytes(data))
        elif mode in ("lines", "lines-close"):
            self._lines(bytes(data))
        else:
            self._fail("dockgate: the daemon sent a body where none belongs")

    def _lines(self, data: bytes) -> None:
        # Docker's JSON streams (events) are one JSON object per line.
        assert self.filter is not None
        buffer = self._line + data
        *complete, self._line = buffer.split(b"\n")
        if len(self._line) > MAX_JSON_LINE:
            self._fail("dockgate: a streamed JSON item is too large to filter")
            return
        for line in complete:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue  # what cannot be read cannot be shown to be allowed
            if isinstance(item, dict) and self.filter.keep(item):
                piece = line + b"\n"
                if self.mode == "lines":
                    self.out += (http1.chunk_header(len(piece)), piece, http1.CRLF)
                else:
                    self.out.append(piece)

    def _end(self) -> None:
        if self.mode == "collect" and self.status >= 400 and self.error_answer is not None:
            self._send_collected(self.error_answer.rewrite(self.status,
                                                           b"".join(self._collected)))
        elif self.mode == "collect":
            if not self._send_filtered_list():
                return
        elif self.mode in ("lines", "lines-close"):
            if self._line.strip():
                self._lines(b"\n")
            if self.mode == "lines":
                self.out.append(http1.LAST_CHUNK)
        elif self.mode in ("chunked", "passthrough"):
            self.out.append(http1.LAST_CHUNK)
        if not self.finished:
            self._finish("done")

    def _send_filtered_list(self) -> bool:
        assert self.filter is not None
        key = self.filter.list_key
        try:
            document = json.loads(b"".join(self._collected)) if self._collected else []
        except ValueError:
            document = None
        if self.filter.mode == "json-object" and isinstance(document, dict):
            self._send_collected(json.dumps(self.filter.rewrite(document)).encode() + b"\n")
            return True
        items = document
        if key is not None:
            # GET /volumes answers {"Volumes": [...] or null, "Warnings": ...}.
            items = (document.get(key) or []) if isinstance(document, dict) else None
        if not isinstance(items, list):
            self._fail("dockgate: the daemon's answer is not the JSON the policy filters")
            return False
        kept = [item for item in items if isinstance(item, dict) and self.filter.keep(item)]
        if key is not None:
            assert isinstance(document, dict)
            self._send_collected(json.dumps({**document, key: kept}).encode() + b"\n")
        else:
            self._send_collected(json.dumps(kept).encode() + b"\n")
        return True

    def _send_collected(self, body: bytes) -> None:
        headers = [*self._headers, (b"Content-Length", b"%d" % len(body))]
        self.started = True
        self.out += (http1.response_head(self.status, headers), body)
