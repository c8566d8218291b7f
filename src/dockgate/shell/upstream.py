"""Connections to the Docker daemon: one asyncio Protocol per connection, a keep-alive pool.

Theory of operation. An ``UpstreamConnection`` carries one exchange at a time.
Whoever sends a request sets ``sink`` first; the protocol feeds received bytes
to its ``http1.ResponseReader`` and hands the events of each read straight to the
sink from the ``data_received`` callback, in one ``sink.on_events`` call, so a
small response leaves in one write. No task wakes up per body chunk: that is
what keeps the relay of a 1 GiB stream cheap. After a hijack (101, or a raw
200 stream) the sink calls ``go_raw(peer)`` and received bytes go to the peer
transport unparsed.

The pool keeps idle connections that finished a response with keep-alive. A
pooled connection the daemon closed in the meantime notices it through
``connection_lost`` and leaves the pool by itself; a daemon restart therefore
costs nothing but 502s while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any, Protocol, cast
from urllib.parse import quote, urlsplit

from dockgate import http1
from dockgate.decision import (
    ContainerFacts,
    ExecFacts,
    Facts,
    NeedFacts,
    NetworkFacts,
    VolumeFacts,
    exec_facts,
    network_facts,
    volume_facts,
)
from dockgate.errors import ConfigError, UpstreamError

log = logging.getLogger("dockgate.upstream")

MAX_IDLE = 256          # idle keep-alive connections kept; dockerd serves each with a goroutine
MAX_FACTS_BYTES = 8 * 1024 * 1024  # a container inspect is a few KiB; bound it anyway


def half_close(transport: asyncio.Transport) -> None:
    """Send EOF on ``transport`` if it can (TLS cannot: it is closed instead)."""
    if transport.is_closing():
        return
    try:
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
    except (RuntimeError, OSError):
        # uvloop raises RuntimeError from write_eof on a closing transport.
        transport.close()


class ResponseSink(Protocol):
    """Receives the events of one response (relay.Exchange, or the facts fetcher)."""

    def on_events(self, events: list[http1.ResponseEvent]) -> int:
        """The events of one read, in order, and out with what they make at once; how
        many it took (an exchange that switched to raw bytes leaves the rest to the
        session, one that ended ignores them)."""

    def on_lost(self, error: UpstreamError) -> None: ...


class RawPeer(Protocol):
    """The other side of a hijacked session (hijack.Session)."""

    def raw_data(self, data: bytes | memoryview) -> None: ...

    def raw_eof(self) -> None: ...

    def raw_lost(self) -> None: ...

    def peer_paused(self, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to the daemon; see the module docstring."""

    def __init__(self, pool: Upstream) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.reader = http1.ResponseReader()
        self.sink: ResponseSink | None = None
        self.raw_peer: RawPeer | None = None
        self.closed = False
        self.reused = False
        self.got_response = False
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False

    # asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)

    def data_received(self, data: bytes) -> None:
        if self.raw_peer is not None:
            self.raw_peer.raw_data(data)
        else:
            self._response_data(data)

    def _response_data(self, data: bytes) -> None:
        # A method of its own: the sink may switch this connection to raw bytes
        # (go_raw) while it reads these events, and a ``raw_peer is None`` test
        # earlier in the same function would have narrowed that away for mypy, and
        # for the mypyc build, which trusts the narrowing.
        sink = self.sink
        if sink is None:
            # Nobody asked: a pooled connection must be silent.
            self.abort()
            return
        self.got_response = True
        try:
            events = self.reader.feed(data)
        except UpstreamError as error:
            self.abort()
            sink.on_lost(error)
            return
        try:
            taken = sink.on_events(events)
        except Exception:
            # A bug (say, in a response filter) must end this exchange, not hang it.
            log.exception("internal error relaying a response from %s", self.pool.url)
            self.abort()
            sink.on_lost(UpstreamError("dockgate: internal error relaying the response"))
            return
        if self.raw_peer is not None:
            # A raw 200 stream: body bytes after the switch are the session's.
            raw = [event.data for event in events[taken:] if isinstance(event, http1.Data)]
            raw.append(self.reader.take_rest())
            for piece in raw:
                if piece:
                    self.raw_peer.raw_data(piece)

    def eof_received(self) -> bool:
        if self.raw_peer is not None:
            self.raw_peer.raw_eof()
            return True  # keep our write side open: the half-close goes on
        sink = self.sink
        if sink is not None:
            try:
                events = self.reader.feed_eof()
            except UpstreamError as error:
                sink.on_lost(error)
                return False
            sink.on_events(events)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.raw_peer is not None:
            self.raw_peer.raw_lost()
        elif self.sink is not None:
            self.sink.on_lost(UpstreamError(self.pool.unreachable_message(
                exc or "connection closed")))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.raw_peer is not None:
            self.raw_peer.peer_paused(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.raw_peer is not None:
            self.raw_peer.peer_paused(False)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # used by the server ------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, data: list[bytes | memoryview]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(data)

    async def drain(self) -> None:
        """Wait until the daemon has taken the bytes written so far (request bodies)."""
        if self._write_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
            self._drain = None

    def go_raw(self, peer: RawPeer) -> None:
        """Leave HTTP: every byte from now on goes to ``peer`` unparsed."""
        self.raw_peer = peer
        self.sink = None

    def write_eof(self) -> None:
        if self.transport is not None:
            half_close(self.transport)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """The daemon endpoint and its keep-alive pool."""

    def __init__(self, url: str, connect_timeout: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.connect_timeout = connect_timeout
        if parts.scheme == "unix":
            self.path: str | None = parts.path
            self.host: str | None = None
            self.port: int | None = None
            if not self.path:
                raise ConfigError(f"upstream {url!r} names no socket path")
        elif parts.scheme == "tcp":
            self.path = None
            self.host = parts.hostname
            try:
                self.port = parts.port
            except ValueError:
                raise ConfigError(f"upstream {url!r} has an invalid port") from None
            if not self.host or self.port is None:
                raise ConfigError(f"upstream {url!r} must be tcp://HOST:PORT")
        else:
            raise ConfigError(f"upstream {url!r} must be unix:///PATH or tcp://HOST:PORT")
        self._idle: deque[UpstreamConnection] = deque()
        self._all: set[UpstreamConnection] = set()

    def unreachable_message(self, why: object) -> str:
        hint = ("check that dockerd is running and that SOCKET_PATH/--upstream names its "
                "socket" if self.path else
                "check that dockerd listens there and that --upstream is right")
        return f"dockgate: cannot reach the Docker daemon at {self.url} ({why}); {hint}"

    def take_idle(self) -> UpstreamConnection | None:
        """An idle pooled connection, or None; no await, so no coroutine on the hot path."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle pooled connection, else a new one (UpstreamError when unreachable)."""
        conn = self.take_idle()
        return conn if conn is not None else await self._connect()

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self)
        try:
            async with asyncio.timeout(self.connect_timeout):
                while True:
                    try:
                        if self.path is not None:
                            await loop.create_unix_connection(lambda: conn, self.path)
                        else:
                            await loop.create_connection(lambda: conn, str(self.host),
                                                         self.port or 0)
                        break
                    except BlockingIOError:
                        # EAGAIN: the daemon's unix socket backlog is full during a burst
                        # of new connections; it drains in moments.
                        await asyncio.sleep(0.01)
        except TimeoutError:
            raise UpstreamError(self.unreachable_message(
                f"no connection after {self.connect_timeout}s")) from None
        except OSError as error:
            raise UpstreamError(self.unreachable_message(error.strerror or error)) from None
        self._all.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose exchange ended cleanly with keep-alive."""
        conn.sink = None
        conn.got_response = False
        conn.resume_reading()  # it may have been paused for a slow client; it is idle now
        if conn.closed or not conn.reader.idle or len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close_all(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def get_json(self, target: str) -> tuple[int, Any]:
        """``GET target`` on the daemon; (status, decoded JSON or None)."""
        for attempt in range(2):
            conn = await self.acquire()
            collector = _Collector(MAX_FACTS_BYTES)
            conn.sink = collector
            conn.reader.expect("GET")
            conn.write(http1.request_head("GET", target, [(b"Host", b"docker")]))
            try:
                status, body, keep_alive = await collector.done
            except UpstreamError:
                conn.abort()
                if conn.reused and not conn.got_response and attempt == 0:
                    continue  # the daemon had closed this idle connection: try a fresh one
                raise
            if keep_alive:
                self.release(conn)
            else:
                conn.close()
            try:
                return status, json.loads(body) if body else None
            except ValueError:
                raise UpstreamError(f"dockgate: the daemon answered {target} with "
                                    "invalid JSON") from None
        raise AssertionError("unreachable")

    async def container_facts(self, ref: str) -> ContainerFacts | None:
        """Resolve a container reference the way the daemon does; None when unknown."""
        status, data = await self.get_json(f"/containers/{quote(ref, safe='')}/json")
        if status == 404:
            return None
        message = str(data.get("message", "")) if isinstance(data, dict) else ""
        if status in (400, 500) and "multiple ids found" in message.lower():
            # An ambiguous ID prefix (500 on Engine 20.10, 400 later) names no one container.
            return None
        if status != 200 or not isinstance(data, dict):
            raise UpstreamError(f"dockgate: the daemon answered {status} when asked about "
                                f"container {ref!r}")
        config = data.get("Config") or {}
        labels = config.get("Labels") or {}
        return ContainerFacts(id=str(data.get("Id", "")),
                              name=str(data.get("Name", "")).lstrip("/"),
                              labels={str(k): str(v) for k, v in labels.items()},
                              image=str(config.get("Image", "")))

    async def exec_facts(self, ref: str) -> ExecFacts | None:
        """Which container an exec instance runs in; None when the daemon knows no such exec."""
        status, data = await self.get_json(f"/exec/{quote(ref, safe='')}/json")
        return exec_facts(ref, status, data)

    async def volume_facts(self, ref: str) -> VolumeFacts | None:
        """A named volume's driver and labels; None when there is no such volume."""
        status, data = await self.get_json(f"/volumes/{quote(ref, safe='')}")
        return volume_facts(ref, status, data)

    async def network_facts(self, ref: str) -> NetworkFacts | None:
        """A network's full ID, name and labels; None when unknown or an ambiguous prefix."""
        status, data = await self.get_json(f"/networks/{quote(ref, safe='')}")
        return network_facts(ref, status, data)

    async def fetch_facts(self, need: NeedFacts, facts: Facts) -> Facts:
        """``facts`` and what ``need`` asks of the daemon that they lack (the body is
        not the daemon's: the caller reads it)."""
        kinds: dict[str, Any] = {}
        for kind, fetch in (("containers", self.container_facts), ("execs", self.exec_facts),
                            ("volumes", self.volume_facts),
                            ("networks", self.network_facts)):
            known = dict(getattr(facts, kind))
            for ref in getattr(need, kind):
                if ref not in known:
                    known[ref] = await fetch(ref)
            kinds[kind] = known
        return Facts(body=facts.body, **kinds)


class _Collector:
    """A sink that gathers a whole (bounded) response body."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.keep_alive = False
        self.parts: list[bytes] = []
        self.size = 0
        self.done: asyncio.Future[tuple[int, bytes, bool]] = (
            asyncio.get_running_loop().create_future())

    def on_events(self, events: list[http1.ResponseEvent]) -> int:
        for event in events:
            if self.done.done():
                break
            if isinstance(event, http1.ResponseHead):
                if event.status >= 200:
                    self.status = event.status
                    self.keep_alive = event.keep_alive
            elif isinstance(event, http1.Data):
                self.size += len(event.data)
                if self.size > self.limit:
                    self.done.set_exception(UpstreamError("dockgate: the daemon's answer is "
                                                          "too large"))
                    break
                self.parts.append(bytes(event.data))
            else:
                self.done.set_result((self.status, b"".join(self.parts), self.keep_alive))
        return len(events)

    def on_lost(self, error: UpstreamError) -> None:
        if not self.done.done():
            self.done.set_exception(error)
