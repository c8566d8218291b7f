"""One allowed request's trip to the daemon and back: a ``Flight``.

The connection makes a flight once a request is allowed (its body read whole
if it had to be, or framed as far as it was buffered). The flight takes an idle
pooled daemon connection (a task connects a new one when there is none), writes
the head, and the body if it is known, in one write; hands the response to a
``relay.Exchange``; relays a body that is still arriving, at the daemon's pace
(``drain``); and when the exchange has ended and the body is all sent, decides
what is left: retry once on a fresh connection when a pooled one turned out to
be closed before answering, answer 502, abort a half-sent answer, or return the
connection to the pool. It reports to the connection through ``Origin``, so
this module knows nothing of the connection class.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Coroutine
from typing import Any, Final

from mypy_extensions import trait

from dockgate import http1, metrics, routes
from dockgate.decision import Allow
from dockgate.errors import ProtocolError, UpstreamError
from dockgate.shell.feeds import Feeds
from dockgate.shell.relay import Downstream, Exchange, Outcome
from dockgate.shell.upstream import Upstream, UpstreamConnection

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientGoneError(Exception):
    """The client closed its connection while we still needed its bytes."""


@trait
class Origin(Downstream):
    """What a flight needs from the client connection that made it."""

    lost: bool
    eof: bool  # the client has half-closed its side

    @property
    @abstractmethod
    def pool(self) -> Upstream: ...

    @property
    @abstractmethod
    def feeds(self) -> Feeds: ...

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Write to the client (the interim 100 Continue)."""

    @abstractmethod
    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run waiting that is inherent in a task."""

    @abstractmethod
    async def next_body_event(self) -> http1.Data | http1.EndOfMessage:
        """The client's next body bytes, or its end; ClientGoneError or ProtocolError."""

    @abstractmethod
    def attach(self, conn: UpstreamConnection | None, stream: routes.Stream | None) -> None:
        """The daemon connection now carrying a request of this kind (None: none now)."""

    @abstractmethod
    def landed(self, keep: bool, status: int) -> None:
        """Relayed; ``keep``: the connection may carry the client's next request."""

    @abstractmethod
    def refused(self, status: int, message: str, close: bool) -> None:
        """Nothing reached the client yet: answer ``status`` with ``message``."""

    @abstractmethod
    def broken(self, status: int, reason: str | None = None) -> None:
        """Part of an answer (or nothing, the client being gone) went out: abort.

        ``reason``: why the answer broke off, for the audit line."""


def upstream_head(head: http1.RequestHead, allow: Allow, body: bytes | None,
                  upgrade: bytes | None) -> bytes:
    """The request head as the daemon gets it: end-to-end fields, our framing."""
    headers = list(head.end_to_end)
    if not head.has_host:
        headers.insert(0, (b"Host", b"docker"))
    if body is not None:
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif head.chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif head.content_length is not None:
        headers.append((b"Content-Length", b"%d" % head.content_length))
    if upgrade is not None:
        headers.append((b"Connection", b"Upgrade"))
        headers.append((b"Upgrade", upgrade))
    return http1.request_head(head.method, allow.target or head.target, headers)


def write_body(conn: UpstreamConnection, chunked: bool,
               events: list[http1.Data | http1.EndOfMessage]) -> None:
    for event in events:
        if isinstance(event, http1.EndOfMessage):
            if chunked:
                conn.write(http1.LAST_CHUNK)
        elif chunked:
            conn.writelines([http1.chunk_header(len(event.data)), event.data, http1.CRLF])
        else:
            conn.write(event.data)


class Flight:
    """One request on its way to the daemon; see the module docstring."""

    __slots__ = ("allow", "attempt", "body", "body_done", "conn", "exchange", "head",
                 "origin", "outcome", "pool", "raw_head", "shared", "stream", "streamed",
                 "streaming_body", "upgrade")

    def __init__(self, origin: Origin, head: http1.RequestHead, allow: Allow,
                 stream: routes.Stream, *, body: bytes | None, upgrade: bytes | None,
                 raw_head: bytes, streamed: list[http1.Data | http1.EndOfMessage],
                 shared: bool = False) -> None:
        self.origin = origin
        self.pool = origin.pool
        self.head = head
        self.allow = allow
        self.stream = stream
        self.body = body                  # the whole body, when it was read before forwarding
        self.upgrade = upgrade
        self.raw_head = raw_head
        self.streamed = streamed          # body events framed before forwarding
        self.shared = shared              # a live events stream: a tap on the shared feed
        self.attempt = 0
        self.body_done = not head.has_body or body is not None
        self.streaming_body = False
        self.conn: UpstreamConnection | None = None
        self.exchange: Exchange | None = None
        self.outcome: Outcome | None = None

    def start(self) -> None:
        if self.shared:
            self._send(self.origin.feeds.tap(self.allow.target or self.head.target,
                                             self.raw_head))
            return
        conn = self.pool.take_idle()
        if conn is not None:
            self._send(conn)
        else:
            self.origin.spawn(self._connect_new())

    async def _connect_new(self) -> None:
        origin = self.origin
        try:
            conn = await self.pool.acquire()
        except UpstreamError as error:
            metrics.count_upstream_error("connect")
            origin.refused(502, error.message, not self.body_done)
            return
        if origin.lost:
            self.pool.release(conn)
            origin.broken(499)
            return
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        origin = self.origin
        head = self.head
        exchange = Exchange(origin, conn, head, response_filter=self.allow.response_filter,
                            stream=self.stream, upgrade=self.upgrade,
                            error_answer=self.allow.error_answer, decoded=self.shared)
        self.conn = conn
        self.exchange = exchange
        self.outcome = None
        conn.sink = exchange
        conn.reader.expect(head.method, exchange.passthrough)
        if self.body is not None:
            # One write: dockerd hands what follows an upgrade head in a later read to
            # the container's stdin (attach and exec start send JSON with Upgrade: tcp).
            conn.write(self.raw_head + self.body)
        else:
            conn.write(self.raw_head)
        if not self.body_done:
            if head.expect_continue:
                origin.write(CONTINUE)
            streamed = self.streamed
            if streamed and isinstance(streamed[-1], http1.EndOfMessage):
                write_body(conn, head.chunked, streamed)
                self.body_done = True
            else:
                self.streaming_body = True
                origin.spawn(self._stream_body(conn))
        origin.attach(conn, self.stream)

    async def _stream_body(self, conn: UpstreamConnection) -> None:
        """Relay a request body as it arrives (the daemon's pace: ``drain``)."""
        pending = list(self.streamed)
        chunked = self.head.chunked
        try:
            while True:
                event = pending.pop(0) if pending else await self.origin.next_body_event()
                if isinstance(event, http1.EndOfMessage):
                    if chunked:
                        conn.write(http1.LAST_CHUNK)
                    break
                if conn.closed:
                    continue  # the daemon went away; keep reading so the client gets its answer
                write_body(conn, chunked, [event])
                await conn.drain()
        except (ProtocolError, ClientGoneError) as error:
            self.streaming_body = False
            conn.abort()
            self.origin.attach(None, None)
            exchange = self.exchange
            if isinstance(error, ProtocolError) and exchange is not None \
                    and not exchange.started:
                message = (error.message if error.message.startswith("dockgate: ")
                           else f"dockgate: {error.message}")
                self.origin.refused(error.status, message, True)
                return
            self.origin.broken(400 if isinstance(error, ProtocolError) else 499)
            return
        self.streaming_body = False
        self.body_done = True
        if self.origin.eof and self.stream is routes.Stream.PLAIN:
            conn.write_eof()  # the client half-closed after its body: see Origin.attach
        if self.outcome is not None:
            self._settle()

    def ended(self, outcome: Outcome) -> None:
        """The exchange ended (not by a switch to raw bytes)."""
        self.outcome = outcome
        if not self.streaming_body:
            self._settle()

    def _settle(self) -> None:
        """The exchange ended and the request body is all sent: what now."""
        conn, exchange, outcome, origin = self.conn, self.exchange, self.outcome, self.origin
        assert conn is not None
        assert exchange is not None
        head = self.head
        if outcome == "lost" and self.attempt == 0 and conn.reused \
                and not conn.got_response and not origin.lost \
                and (not head.has_body or self.body is not None):
            self.attempt = 1  # the daemon had closed this pooled connection: one fresh try
            conn.abort()
            self.start()
            return
        origin.attach(None, None)
        # A shared feed counts its own daemon connection's failures, once (feeds).
        counted = not self.shared
        if outcome == "lost":
            if counted:
                metrics.count_upstream_error("lost")
            conn.abort()
            origin.refused(502, exchange.error or self.pool.unreachable_message(
                "connection lost"), not self.body_done)
            return
        if outcome == "broken":
            if counted:
                metrics.count_upstream_error("broken")
            conn.abort()
            origin.broken(exchange.status, exchange.error)
            return
        if exchange.upstream_reusable and self.body_done and not origin.eof:
            self.pool.release(conn)  # (after a half-close the daemon got one too)
        else:
            conn.close()
        origin.landed(exchange.keep_alive and self.body_done, exchange.status)
