"""One client connection: the request pipeline, run from protocol callbacks.

Theory of operation. ``ClientConnection`` is an asyncio Protocol whose
callbacks drive everything on the common path; no task, future or coroutine is
created for a plain request. Received bytes go into the connection's
``http1.RequestReader`` (strict framing, one request at a time, which is what
answers pipelined requests in order), and each complete head walks the
pipeline of docs/architecture.md right there, in ``data_received``:

    head -> routes.parse_target -> routes.classify -> decider.decide
         -> Deny: answer, forward nothing
         -> Allow: head (and body) written to a pooled upstream connection
         -> the response relayed by a ``relay.Exchange`` from the upstream's
            callbacks -> ``exchange_done`` -> one audit record -> next request

Waiting that is inherent runs in a task, one per such request: fetching facts
for a scoped decision (``NeedFacts``), reading a body to inspect it (or the body
of an upgrade request, see ``_forward``), connecting a new upstream connection
when the pool has none idle, and relaying a request body that has not arrived
yet (flow control). Each of them ends by handing back to the same synchronous
steps.

Flow control is wired transport to transport: when the client's write buffer
passes its high-water mark, ``pause_writing`` pauses reading from the daemon,
and request bytes buffered above ``HIGH_WATER`` pause reading from the client.
So memory stays bounded by the transport buffers whatever the speeds of the
two ends.

Bad framing is answered 400 (413, 431, 408 where they fit) and the connection
is closed. Request bytes already buffered are framed before anything is sent
upstream, so a malformed request in one packet never reaches the daemon; a
framing error found later in a streamed body aborts the upstream connection so
the daemon never sees a complete request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from abc import abstractmethod
from collections.abc import Coroutine
from typing import Any, Final, cast

from mypy_extensions import trait

from dockgate import http1, learnlog, metrics, routes
from dockgate.decision import (
    NO_FACTS,
    Allow,
    Client,
    Decider,
    Decision,
    Deny,
    Facts,
    NeedFacts,
    Request,
)
from dockgate.errors import BodyTooLarge, HTTPError, Overloaded, ProtocolError, RequestTimeout
from dockgate.settings import Settings
from dockgate.shell import audit
from dockgate.shell.feeds import Feeds, shareable
from dockgate.shell.forward import CONTINUE, ClientGoneError, Flight, Origin, upstream_head
from dockgate.shell.hijack import Session
from dockgate.shell.listeners import Identifier, Listener, client_for
from dockgate.shell.relay import Outcome
from dockgate.shell.upstream import RawPeer, Upstream, UpstreamConnection

log = logging.getLogger("dockgate.connection")

HIGH_WATER: Final = 1 << 20        # request bytes buffered before the client is paused
MAX_DECIDE_ROUNDS: Final = 4       # container facts, then body: two rounds suffice today
LINGER_SECONDS: Final = 2.0  # how long a refused client may go on sending its body
_RAW_KINDS: Final = (routes.Stream.HIJACK, routes.Stream.UPGRADE, routes.Stream.WEBSOCKET)
EVENTS: Final = "system.events"  # live ones share a daemon subscription: see feeds

_ROUTE_CACHE: Final[dict[tuple[str, str], Request]] = {}
_ROUTE_CACHE_SIZE: Final = 4096
_ROUTE_CACHE_TARGET: Final = 256  # longer targets are rare and would let clients fill memory


def route(method: str, raw_target: str) -> Request:
    """``routes.parse_target`` then ``routes.classify``, as the decider's Request, memoized.

    Both are pure functions of (method, target) returning frozen values, and
    clients repeat the same few targets (``/_ping``, ``/containers/json``, one
    container's ``logs``), so a bounded memo saves their cost on the hot path.
    Refused targets (BadTarget) are not cached: they raise every time.
    """
    key = (method, raw_target)
    cached = _ROUTE_CACHE.get(key)
    if cached is None:
        target = routes.parse_target(raw_target)
        cached = Request(method, target, routes.classify(method, target))
        if len(raw_target) <= _ROUTE_CACHE_TARGET:
            if len(_ROUTE_CACHE) >= _ROUTE_CACHE_SIZE:
                _ROUTE_CACHE.clear()
            _ROUTE_CACHE[key] = cached
    return cached


def _valid_target(target: str) -> bool:
    try:
        http1.check_target(target.encode())
    except ProtocolError:
        return False
    return True


@trait
class Host:
    """What a connection needs from the proxy that accepted it (``proxy.Proxy``)."""

    settings: Settings
    decider: Decider
    upstream: Upstream
    feeds: Feeds
    shutting_down: bool
    recorder: learnlog.Observer | None

    connections: set[ClientConnection]

    @property
    @abstractmethod
    def directory(self) -> Identifier | None:
        """Which container a client is, while some clients: rule names containers."""

    @abstractmethod
    def check_quiet(self) -> None:
        """During shutdown: note when no plain request is in flight any more."""


class ClientConnection(asyncio.Protocol, Origin):
    """One client connection; see the module docstring."""

    def __init__(self, proxy: Host, listener: Listener) -> None:
        self.proxy = proxy
        self.settings = proxy.settings
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.client = Client(listener.url, "tcp")
        self.tag = ""                                      # the audit fields of the connection
        self._identified_by: Identifier | None = None      # the directory that identified it
        self.reader = http1.RequestReader(proxy.settings.max_header_bytes)
        self.upstream: UpstreamConnection | None = None   # the daemon side of the exchange
        self.session: Session | None = None               # set once hijacked
        self.eof = False
        self.lost = False
        self.busy = False          # a request is in the pipeline (head read, not finished)
        self.busy_plain = False    # ... and it is one that shutdown waits for
        self.stream_opened_status = 0
        self.streaming = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.relays_eof = False    # a plain request is waiting for its answer: see attach
        self.overloaded = False    # past --max-connections: answered 503, never served
        self._timed_out = False    # the body inactivity deadline passed
        self.linger = False        # answered a request without reading its body: see _linger
        self.lingering = False     # discarding what the client still sends, before closing
        self._record: audit.RequestRecord | None = None
        self._flight: Flight | None = None
        self._paused_for: set[str] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._advancing = False
        self._waiting_for = ""     # "", "idle" or "header": what the deadline is about
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # The last upstream head built, by (request head, target, upgrade): the reader
        # hands back the same RequestHead for a repeated head, so a poller's requests
        # are serialized once.
        self._last_forward: tuple[http1.RequestHead | None, str | None, bytes | None,
                                  bytes] = (None, None, None, b"")
        # Looked up once: asyncio.get_running_loop() costs a getpid() system call.
        self._loop = asyncio.get_running_loop()

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)
        self._identify(transport)
        if len(self.proxy.connections) >= self.settings.max_connections:
            self._refuse_overloaded(transport)
            return
        self.proxy.connections.add(self)
        metrics.ACTIVE_CONNECTIONS.inc()
        self._advance()

    def _identify(self, transport: asyncio.BaseTransport) -> None:
        self._identified_by = self.proxy.directory
        self.client = client_for(self.listener, transport, self._identified_by)
        self.tag = audit.connection_prefix(self.listener.url, self.client.describe())

    def _refuse_overloaded(self, transport: asyncio.Transport) -> None:
        """Past --max-connections: a 503 at once, a gentle close, and no task spent on it.

        The answer goes out before the request arrives (clients read it as the answer to
        their first request); what the client sends is discarded until it closes, or
        LINGER_SECONDS at the most, so it reads the 503 instead of a reset.
        """
        self.overloaded = True
        self.lingering = True
        error = Overloaded(f"dockgate: more than {self.settings.max_connections} client "
                           "connections at once; try again later, or raise "
                           "DOCKGATE_MAX_CONNECTIONS")
        transport.write(http1.closing_answer(error.status, error.body()))
        if transport.can_write_eof():
            with contextlib.suppress(RuntimeError, OSError):
                transport.write_eof()
        self._loop.call_later(LINGER_SECONDS, transport.close)
        audit.write("connection.refused", self.tag, status=error.status, reason=error.message)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.from_client(data)
            return
        if self.lingering:
            return
        self.reader.feed(data)
        if self.busy:
            if self.reader.buffered > HIGH_WATER:
                self._pause("buffer")
            self._wake()
            return
        self._advance()

    def eof_received(self) -> bool:
        if self.overloaded:
            return False
        if self.session is not None:
            self.session.client_eof()
            return True
        self.eof = True
        if self.lingering:
            self._close()
            return False
        self._wake()
        if self.streaming:
            # A client that stops sending while it follows an endless stream (events,
            # logs -f) has gone away: without this its daemon connection would stay
            # open until the next event fails to be written.
            self.abort()
            return False
        flight = self._flight
        if self.relays_eof and self.upstream is not None and flight is not None \
                and flight.body_done:
            self.upstream.write_eof()  # see attach
        if not self.busy:
            self._advance()
        # Keep our write side open for the response (tls:// too: see tlsstream).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.overloaded:
            return
        self.lost = True
        self.busy_plain = False
        self.proxy.connections.discard(self)
        self.proxy.check_quiet()
        metrics.ACTIVE_CONNECTIONS.dec()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.upstream is not None:
            # The client is gone: whatever the daemon still sends has no reader.
            self.upstream.abort()
        self._wake()
        if self.session is not None:
            self.session.client_lost()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    # relay.Downstream ------------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self.proxy.shutting_down

    def send(self, parts: list[bytes | memoryview]) -> None:
        size = 0
        for part in parts:  # not sum(map(len, parts)): a map object costs more than 1-3 parts
            size += len(part)
        self.bytes_out += size
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # writelines, not write(b"".join(...)): uvloop queues it and sends once at
            # the end of the loop iteration; measured cheaper than an immediate send.
            transport.writelines(parts)

    def stream_opened(self, status: int) -> None:
        # A long-lived stream is not an in-flight request that shutdown waits for.
        self.busy_plain = False
        self.proxy.check_quiet()
        self.stream_opened_status = status
        metrics.stream_opened("stream")
        record = self._record
        if record is not None and audit.records_allowed():
            audit.write("stream.open", self.tag, request_id=record.request_id,
                        method=record.method, target=record.target, status=status)

    def switched(self, head: bytes) -> RawPeer:
        flight = self._flight
        assert flight is not None
        assert flight.conn is not None
        assert self.transport is not None
        self.write(head)
        conn = flight.conn
        self.session = session = Session(self.transport, conn, self._peer_paused,
                                         self._session_ended)
        self.busy_plain = False
        self.proxy.check_quiet()
        metrics.stream_opened("session")
        record = self._record
        if record is not None and audit.records_allowed():
            audit.write("session.open", self.tag, request_id=record.request_id,
                        method=record.method, target=record.target,
                        operation=record.operation, status=flight.exchange.status
                        if flight.exchange is not None else 0)
        rest = self.reader.take_rest()
        if rest:
            session.from_client(rest)
        self._resume("buffer")
        return session

    def exchange_done(self, outcome: Outcome) -> None:
        flight = self._flight
        if flight is None:
            return
        if outcome == "switch":
            flight.outcome = outcome
            # Either side may have ended between the daemon's switch and now.
            session = self.session
            assert session is not None
            if self.eof and "client" not in session.eofs:
                session.client_eof()
            if (flight.conn is not None and flight.conn.closed) or self.lost:
                session.raw_lost()
            return
        try:
            flight.ended(outcome)
        except Exception:  # a bug ends this connection, never the whole proxy
            log.exception("internal error on a connection from %s", self.client.describe())
            self.abort()

    # flow control helpers --------------------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self._paused_for and self.transport is not None and not self.lost:
            self.transport.pause_reading()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for and self.transport is not None and not self.lost:
                self.transport.resume_reading()

    def _peer_paused(self, paused: bool) -> None:
        if paused:
            self._pause("peer")
        else:
            self._resume("peer")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self._paused_for:
            self._resume("buffer")
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close_if_idle(self) -> None:
        """Shutdown: a connection waiting for its next request is closed now."""
        if not self.busy and self.session is None and not self.lingering \
                and self.reader.awaiting_head and self.reader.buffered == 0 \
                and self.upstream is None:
            self._close()

    def close(self) -> None:
        """Shutdown: flush what is buffered for the client, then close both sides."""
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run the inherent waiting of this request in a task."""
        self._task = self._loop.create_task(self._run(work))

    async def _run(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            log.exception("internal error on a connection from %s", self.client.describe())
            self.abort()
        finally:
            self._task = None

    # reading heads -------------------------------------------------------------------------

    def _advance(self) -> None:
        """Start every request whose head is complete, until one has to wait."""
        if self._advancing:
            return  # a caller up the stack is in the loop below and goes on
        self._advancing = True
        try:
            while not self.busy and not self.lost and not self.lingering \
                    and self.transport is not None and not self.transport.is_closing():
                try:
                    event = self.reader.next_event()
                except ProtocolError as error:
                    self._refuse_framing(error.status, error.message)
                    return
                if isinstance(event, http1.RequestHead):
                    self._waiting_for = ""
                    self._deadline = None
                    self._begin(event)
                    continue
                idle = self.reader.buffered == 0
                if self.eof or (idle and self.proxy.shutting_down):
                    self._close()
                    return
                if self._paused_for:
                    self._resume("buffer")  # paused while pipelined bytes piled up
                self._await_head("idle" if idle else "header")
                return
        except Exception:
            log.exception("internal error on a connection from %s", self.client.describe())
            self.abort()
        finally:
            self._advancing = False

    def _await_head(self, kind: str) -> None:
        if self._waiting_for == kind:
            return
        self._waiting_for = kind
        self._arm(self.settings.idle_timeout if kind == "idle"
                  else self.settings.header_timeout)

    def _arm(self, delay: float) -> None:
        """Move the deadline of what is being waited for to ``delay`` from now."""
        # One timer per connection, not one per request: moving the deadline is a
        # float store, and the timer is re-armed only when it fires early or must fire
        # sooner. A keep-alive client sending thousands of requests a second would
        # otherwise create and cancel a TimerHandle for each of them.
        loop = self._loop
        deadline = loop.time() + delay
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() <= deadline:
            return
        if timer is not None:
            timer.cancel()
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.lost:
            return
        loop = self._loop
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._on_timer)
        elif self._waiting_for == "body":
            self._timed_out = True
            self._wake()
        elif self.busy:
            return
        elif self._waiting_for == "header":
            self._refuse_framing(408, "request head not received in time")
        else:
            self._close()

    # the pipeline ------------------------------------------------------------------------------

    def _begin(self, head: http1.RequestHead) -> None:
        """Route and decide one request; forward or answer it, or start its waiting."""
        self.busy = self.busy_plain = True
        self.bytes_in = head.size
        self.bytes_out = 0
        if (self.client.unidentified is not None or self.proxy.directory
                is not self._identified_by) and self.transport is not None:
            # Accepted while the container directory could not tell (not in sync yet,
            # a container changing), or before a reload started or stopped it: ask
            # again, in memory, before each request.
            self._identify(self.transport)
        self._record = record = audit.RequestRecord(head.method, head.target, head.user_agent)
        try:
            request = route(head.method, head.target)
        except HTTPError as error:
            record.reason = error.message
            self._finish(self._answer_error(error.status, f"dockgate: {error.message}", head,
                                            close=True), error.status)
            return
        match = request.match
        if match is not None:
            record.operation = match.operation
            if match.params:
                record.resource = match.params
        decider = self.proxy.decider
        record.policy = decider.name
        decision = self._decide(decider, request, NO_FACTS)
        stream = match.route.stream if match is not None else routes.Stream.PLAIN
        if isinstance(decision, NeedFacts):
            self.spawn(self._gather(head, request, decider, decision, stream))
        elif (isinstance(decision, Allow) and stream in _RAW_KINDS and head.has_body):
            self.spawn(self._upgrade_body(head, request, decider, decision, stream))
        else:
            self._decided(head, request, decider, decision, stream, body=None, facts=NO_FACTS)

    async def _gather(self, head: http1.RequestHead, request: Request, decider: Decider,
                      decision: Decision, stream: routes.Stream) -> None:
        """NeedFacts: fetch what the decider asked for and ask again (bounded)."""
        facts = NO_FACTS
        body: bytes | None = None
        try:
            for _ in range(MAX_DECIDE_ROUNDS):
                if not isinstance(decision, NeedFacts):
                    break
                facts = await self.proxy.upstream.fetch_facts(decision, facts)
                if decision.body and body is None:
                    body = await self._read_whole_body(head)
                    facts = dataclasses.replace(facts, body=body)
                decision = self._decide(decider, request, facts)
            else:
                decision = Deny(f"dockgate: {head.method} {request.target.api_path} denied "
                                "— the policy could not decide it", rule="undecidable")
            if isinstance(decision, Allow) and stream in _RAW_KINDS and head.has_body \
                    and body is None:
                body = await self._read_whole_body(head)
        except (HTTPError, ClientGoneError) as error:
            self._failed(head, error, body is None)
            return
        self._decided(head, request, decider, decision, stream, body=body, facts=facts)

    async def _upgrade_body(self, head: http1.RequestHead, request: Request,
                            decider: Decider, decision: Decision,
                            stream: routes.Stream) -> None:
        """An allowed upgrade request with a body: read the body before forwarding."""
        try:
            body = await self._read_whole_body(head)
        except (HTTPError, ClientGoneError) as error:
            self._failed(head, error, True)
            return
        self._decided(head, request, decider, decision, stream, body=body, facts=NO_FACTS)

    def _failed(self, head: http1.RequestHead, error: HTTPError | ClientGoneError,
                body_unread: bool) -> None:
        if isinstance(error, ClientGoneError):
            self._finish(False, 499)
            return
        assert self._record is not None
        self._record.reason = error.message
        close = error.close_connection or (head.has_body and body_unread)
        self._finish(self._answer_error(error.status, error.message, head, close),
                     error.status)

    def _decide(self, decider: Decider, request: Request, facts: Facts) -> Decision:
        """Ask the decider; a failing decider denies (500), it never lets a request through."""
        try:
            return decider.decide(self.client, request, facts)
        except Exception:
            log.exception("decider %s failed on %s %s", decider.name, request.method,
                          request.target.raw)
            return Deny("dockgate: internal error deciding this request", status=500,
                        rule="decider-error")

    def _decided(self, head: http1.RequestHead, request: Request, decider: Decider,
                 decision: Decision, stream: routes.Stream, *, body: bytes | None,
                 facts: Facts) -> None:
        record = self._record
        assert record is not None
        assert not isinstance(decision, NeedFacts)
        record.rule = decision.rule
        if self.proxy.recorder is not None:  # learn mode: the same facts, for the recording
            self.proxy.recorder.observe(self.client, request, facts, decision)
        if isinstance(decision, Deny):
            record.decision = "deny"
            record.reason = decision.message
            self._finish(self._answer_error(decision.status, decision.message, head,
                                            close=head.has_body and body is None),
                         decision.status)
            return
        record.decision = "allow"
        record.grant = decision.rule
        if decision.target is not None:
            record.forwarded = decision.target  # the pinned target (resolved full ID)
            if not _valid_target(decision.target):
                # Deciders are ours, but a rewritten target is a header line: never
                # trust it blind.
                log.error("decider %s returned an invalid target %r", decider.name,
                          decision.target)
                record.decision = "error"
                self._finish(self._answer_error(500, "dockgate: internal error deciding "
                                                "this request", head, close=True), 500)
                return
        if decision.body is not None:
            if head.has_body and body is None:
                log.error("decider %s replaced a body it never read", decider.name)
                record.decision = "error"
                self._finish(self._answer_error(500, "dockgate: internal error deciding "
                                                "this request", head, close=True), 500)
                return
            body = decision.body  # e.g. a volume create with the owner label added
        self._forward(head, decision, stream, body)

    def _read_buffered_body(self, parts: list[bytes], limit: int) -> bool:
        """Move the body bytes already received into ``parts``; True at its end."""
        size = sum(map(len, parts))
        while True:
            event = self.reader.next_event()
            if isinstance(event, http1.EndOfMessage):
                return True
            if not isinstance(event, http1.Data):
                return False
            self.bytes_in += len(event.data)
            size += len(event.data)
            if size > limit:
                raise BodyTooLarge(f"dockgate: request body larger than {limit} bytes cannot "
                                   "be inspected (DOCKGATE_MAX_INSPECT_BYTES)")
            parts.append(bytes(event.data))

    async def _read_whole_body(self, head: http1.RequestHead) -> bytes:
        limit = self.settings.max_inspect_bytes
        if head.content_length is not None and head.content_length > limit:
            raise BodyTooLarge(f"dockgate: request body larger than {limit} bytes cannot be "
                               "inspected (DOCKGATE_MAX_INSPECT_BYTES)")
        if head.expect_continue:
            self.write(CONTINUE)
        parts: list[bytes] = []
        while not self._read_buffered_body(parts, limit):
            await self._more_body()
        self._body_arrived()
        return b"".join(parts)

    async def _more_body(self) -> None:
        """Wait for more of the request body: at most ``body_timeout`` of silence."""
        if self.lost or self.eof:
            raise ClientGoneError
        if self._timed_out:
            self._body_arrived()
            raise RequestTimeout(
                f"dockgate: no request body bytes for {self.settings.body_timeout:g} s; "
                "the request was dropped (DOCKGATE_BODY_TIMEOUT)")
        # The inactivity deadline runs only while waiting for the client: time the
        # daemon takes to read (drain) is not the client's.
        self._waiting_for = "body"
        self._arm(self.settings.body_timeout)
        await self._wait()

    def _body_arrived(self) -> None:
        self._waiting_for = ""
        self._deadline = None
        self._timed_out = False

    def _prefetch_body(self) -> list[http1.Data | http1.EndOfMessage]:
        """Frame the body bytes already received, so bad framing is refused before forwarding."""
        events: list[http1.Data | http1.EndOfMessage] = []
        while True:
            event = self.reader.next_event()
            if not isinstance(event, http1.Data | http1.EndOfMessage):
                return events
            if isinstance(event, http1.Data):
                self.bytes_in += len(event.data)
            events.append(event)
            if isinstance(event, http1.EndOfMessage):
                return events

    def _forward(self, head: http1.RequestHead, allow: Allow, stream: routes.Stream,
                 body: bytes | None) -> None:
        """Write the request to a pooled daemon connection (a task connects a new one).

        The body of an upgrade request (attach and exec start send JSON with
        ``Upgrade: tcp``) was read whole before this, and goes in the same write as
        the head: dockerd hands whatever follows the head in a later read to the
        container's stdin.
        """
        upgrade = head.upgrade if stream in _RAW_KINDS else None
        streamed: list[http1.Data | http1.EndOfMessage] = []
        if body is None and head.has_body:
            try:
                streamed = self._prefetch_body()
            except ProtocolError as error:
                assert self._record is not None
                self._record.decision = "error"
                self._record.reason = error.message
                self._finish(self._answer_error(error.status, f"dockgate: {error.message}",
                                                head, close=True), error.status)
                return
        last_head, last_target, last_upgrade, raw_head = self._last_forward
        if body is not None or head is not last_head or allow.target != last_target \
                or upgrade != last_upgrade:
            raw_head = upstream_head(head, allow, body, upgrade)
            if body is None:
                self._last_forward = (head, allow.target, upgrade, raw_head)
        assert self._record is not None
        shared = (self._record.operation == EVENTS and not head.has_body
                  and shareable(allow.target or head.target))
        self._flight = flight = Flight(self, head, allow, stream, body=body, upgrade=upgrade,
                                       raw_head=raw_head, streamed=streamed, shared=shared)
        flight.start()

    # forward.Origin --------------------------------------------------------------------------

    @property
    def pool(self) -> Upstream:
        return self.proxy.upstream

    @property
    def feeds(self) -> Feeds:
        return self.proxy.feeds

    async def next_body_event(self) -> http1.Data | http1.EndOfMessage:
        while True:
            event = self.reader.next_event()
            if isinstance(event, http1.Data | http1.EndOfMessage):
                if isinstance(event, http1.Data):
                    self.bytes_in += len(event.data)
                self._body_arrived()
                return event
            await self._more_body()

    def attach(self, conn: UpstreamConnection | None, stream: routes.Stream | None) -> None:
        self.upstream = conn
        self.streaming = stream is routes.Stream.STREAM
        # A client that half-closes while it waits for a plain answer: the daemon gets
        # the same half-close once the body is all sent (Go's server then cancels the
        # request; a fast answer still comes back). A client that left for good thus
        # frees the daemon connection too, instead of holding it for a stalled daemon.
        self.relays_eof = stream is routes.Stream.PLAIN
        if conn is not None and self._write_paused:
            conn.pause_reading()  # the client is still behind on an earlier response
        if self.streaming and self.eof:
            self.abort()  # see eof_received: the follower already left
        elif self.relays_eof and self.eof and conn is not None and self._flight is not None \
                and self._flight.body_done:
            conn.write_eof()

    def landed(self, keep: bool, status: int) -> None:
        self._flight = None
        self._finish(keep, status)

    def refused(self, status: int, message: str, close: bool) -> None:
        flight = self._flight
        assert flight is not None
        assert self._record is not None
        self._flight = None
        self._record.reason = message
        self._finish(self._answer_error(status, message, flight.head, close), status)

    def broken(self, status: int, reason: str | None = None) -> None:
        self._flight = None
        record = self._record
        if reason is not None and record is not None and record.reason is None:
            record.reason = reason
        self.abort()
        self._finish(False, status)

    def _session_ended(self) -> None:
        session, flight = self.session, self._flight
        assert session is not None
        assert flight is not None
        self.upstream = None
        self._flight = None
        self.bytes_in += session.bytes_in
        self.bytes_out += session.bytes_out
        metrics.stream_closed("session")
        record = self._record
        if record is not None and audit.records_allowed():
            audit.write("session.close", self.tag, request_id=record.request_id,
                        target=record.target, bytes_in=self.bytes_in,
                        bytes_out=self.bytes_out, duration_ms=record.elapsed_ms())
        status = flight.exchange.status if flight.exchange is not None else 0
        self._finish(False, status)
        self._close()

    def _finish(self, keep: bool, status: int) -> None:
        """One request is over: audit it, then read the next one or close."""
        self.busy_plain = False
        self.proxy.check_quiet()
        record = self._record
        if record is not None:
            if self.stream_opened_status:
                self.stream_opened_status = 0
                metrics.stream_closed("stream")
                if audit.records_allowed():
                    audit.write("stream.close", self.tag, request_id=record.request_id,
                                target=record.target, status=status,
                                bytes_out=self.bytes_out, duration_ms=record.elapsed_ms())
            record.status = status
            record.bytes_in = self.bytes_in
            record.bytes_out = self.bytes_out
            seconds = record.elapsed()
            record.write(self.tag, seconds)
            metrics.count_request(record.operation or "none", record.decision, status,
                                  seconds)
            self._record = None
        self.busy = False
        if self.session is not None:
            return
        if not keep or self.proxy.shutting_down:
            if self.linger and not self.lost:
                self._linger()
            else:
                self._close()
            return
        self.reader.start_next()
        self._advance()

    def _linger(self) -> None:
        """Close gently after answering a request whose body was never read.

        Closing a socket with unread data makes the kernel send RST, and a client
        still sending its body (a denied ``docker build`` streams its context) then
        gets "connection reset" instead of the 403 that says why. So: half-close our
        side after the answer, discard what the client still sends, and close when it
        closes, or after LINGER_SECONDS at the most.
        """
        self.lingering = True
        for reason in tuple(self._paused_for):
            self._resume(reason)
        transport = self.transport
        if transport is None:
            return
        if self.eof:
            self._close()
            return
        if transport.can_write_eof():
            # uvloop raises RuntimeError from write_eof on a closing transport.
            with contextlib.suppress(RuntimeError, OSError):
                transport.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._deadline = None
        self._timer = self._loop.call_later(LINGER_SECONDS, self._close)

    def _refuse_framing(self, status: int, why: str) -> None:
        """Answer a request that could not be framed, close, and audit it."""
        message = f"dockgate: {why}"
        self._answer_error(status, message, None, close=True)
        record = audit.RequestRecord(None, None, None)
        record.reason = message
        record.status = status
        record.bytes_in = self.reader.buffered
        record.bytes_out = self.bytes_out
        record.write(self.tag, 0.0)
        metrics.count_request("none", "error", status)
        self._close()

    def _answer_error(self, status: int, message: str, head: http1.RequestHead | None,
                      close: bool) -> bool:
        """Answer ``status`` with a Docker-style JSON body; True to keep the connection."""
        body = json.dumps({"message": message}).encode() + b"\n"
        keep = (head is not None and head.keep_alive and not close
                and not self.proxy.shutting_down)
        headers = [(b"Content-Type", b"application/json"),
                   (b"Content-Length", b"%d" % len(body))]
        if not keep:
            headers.append((b"Connection", b"close"))
        elif head is not None and head.version == "1.0":
            headers.append((b"Connection", b"keep-alive"))
        data = http1.response_head(status, headers)
        if head is None or head.method != "HEAD":
            data += body
        self.write(data)
        # A request with a body answered before it was all read: close gently.
        self.linger = not keep and head is not None and head.has_body
        return keep
