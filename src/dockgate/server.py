"""The asyncio shell: listeners, the request pipeline, relaying.

Theory of operation. Each client connection is a ``ClientConnection``
(an asyncio Protocol) plus one task running ``_serve``. The protocol callbacks
only move bytes: received bytes go into the connection's
``http1.RequestReader`` and wake the task. The task walks the pipeline of
docs/architecture.md for one request at a time, which is what answers
pipelined requests in order:

    head -> routes.parse_target -> routes.classify -> decider.decide
         -> NeedFacts: fetch facts, decide again (bounded)
         -> Deny: answer, forward nothing
         -> Allow: forward, relay the response -> one audit record

The response is relayed from the upstream protocol's callbacks through an
``Exchange`` (no task wake-up per chunk); flow control is wired transport to
transport: when the client's write buffer passes its high-water mark,
``pause_writing`` pauses reading from the daemon, and the other way round for
request bodies and hijacked sessions. So memory stays bounded by the transport
buffers whatever the speeds of the two ends.

A hijacked connection (attach, exec start, /session, /grpc, attach/ws) leaves
HTTP once the daemon agreed (101, or 200 with a Docker raw-stream type): from
then on bytes go transport to transport, and an EOF on one side becomes a
half-close on the other, so ``echo hi | docker run -i ... cat`` ends properly.

Bad framing is answered 400 (413, 431, 408 where they fit) and the connection
is closed. Request bytes already buffered are framed before anything is sent
upstream, so a malformed request in one packet never reaches the daemon; a
framing error found later in a streamed body aborts the upstream connection so
the daemon never sees a complete request.

With ``--workers N`` (N > 1) the process binds every listener, then forks N
workers that each run this whole shell on the inherited sockets; the parent only
supervises them (``Supervisor``). Each worker has its own decider, upstream pool
and audit writer; nothing is shared between them but the listening sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import resource
import signal
import socket
import ssl
import stat
import struct
import time
from collections.abc import Callable
from typing import Any, Final, cast
from urllib.parse import urlsplit

import uvloop

from dockgate import admin, http1, learnlog, logs, metrics, routes, startup, systemd, tlsstream
from dockgate.decision import (
    NO_FACTS,
    Allow,
    Client,
    Decider,
    Decision,
    Deny,
    ErrorAnswer,
    Facts,
    NeedFacts,
    Request,
    ResponseFilter,
)
from dockgate.errors import (
    BodyTooLarge,
    ConfigError,
    HTTPError,
    Overloaded,
    ProtocolError,
    RequestTimeout,
    UpstreamError,
)
from dockgate.settings import Settings
from dockgate.upstream import Upstream, UpstreamConnection

log = logging.getLogger("dockgate.server")

HIGH_WATER: Final = 1 << 20        # request bytes buffered before the client is paused
MAX_DECIDE_ROUNDS: Final = 4       # container facts, then body: two rounds suffice today
MAX_FILTERED_BYTES: Final = 32 * 1024 * 1024  # a filtered JSON list is held whole
MAX_JSON_LINE: Final = 1024 * 1024  # one event of a filtered JSON-lines stream
RAW_STREAM_TYPES: Final = (b"application/vnd.docker.raw-stream",
                           b"application/vnd.docker.multiplexed-stream")
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS: Final = 2.0  # how long a refused client may go on sending its body
_RAW_KINDS: Final = (routes.Stream.HIJACK, routes.Stream.UPGRADE, routes.Stream.WEBSOCKET)


_ROUTE_CACHE: dict[tuple[str, str], tuple[routes.Target, routes.Match | None]] = {}
_ROUTE_CACHE_SIZE: Final = 4096
_ROUTE_CACHE_TARGET: Final = 256  # longer targets are rare and would let clients fill memory


def route(method: str, raw_target: str) -> tuple[routes.Target, routes.Match | None]:
    """``routes.parse_target`` then ``routes.classify``, memoized.

    Both are pure functions of (method, target) returning frozen values, and
    clients repeat the same few targets (``/_ping``, ``/containers/json``, one
    container's ``logs``), so a bounded memo saves their cost on the hot path.
    Refused targets (BadTarget) are not cached: they raise every time.
    """
    key = (method, raw_target)
    cached = _ROUTE_CACHE.get(key)
    if cached is None:
        target = routes.parse_target(raw_target)
        cached = (target, routes.classify(method, target))
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


class _ClientGoneError(Exception):
    """The client closed its connection while we still needed its bytes."""


class _HeaderTimeoutError(Exception):
    """The client did not send a whole request head in time."""


class Listener:
    """One listening endpoint from ``Settings.listeners``."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.kind = parts.scheme
        self.path = parts.path if self.kind == "unix" else ""
        if self.kind == "fd":  # sockets inherited from systemd; see systemd.py
            self.host, self.port = "", 0
            return
        if self.kind == "unix":
            self.host = ""
            self.port = 0
            if not self.path:
                raise ConfigError(f"listener {url!r} names no socket path")
            return
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"listener {url!r} has an invalid port") from None
        if parts.hostname is None or port is None:
            raise ConfigError(f"listener {url!r} must be {self.kind}://HOST:PORT")
        self.host = parts.hostname
        self.port = port


def client_for(listener: Listener, transport: asyncio.BaseTransport) -> Client:
    """What the listener knows about who is on the other end of ``transport``."""
    if listener.kind == "unix":
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except (OSError, AttributeError):
            return Client(listener.url, "unix")
        pid, uid, gid = struct.unpack("3i", creds)
        return Client(listener.url, "unix", uid=uid, gid=gid, pid=pid)
    peer = transport.get_extra_info("peername") or ("", None)
    address = str(peer[0])
    if address.startswith("::ffff:") and "." in address:
        address = address[7:]  # a v4 client on a dual-stack socket is a v4 client
    if listener.kind != "tls":
        return Client(listener.url, "tcp", address=address, port=peer[1])
    cert = transport.get_extra_info("peercert") or {}
    cn = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
    sans = tuple(f"{kind}:{value}" if kind != "DNS" else value
                 for kind, value in cert.get("subjectAltName", ()))
    return Client(listener.url, "tls", address=address, port=peer[1], cert_cn=cn,
                  cert_sans=sans)


class BoundListener:
    """A listener's bound, listening sockets (one per address), and its TLS context."""

    def __init__(self, listener: Listener, sockets: list[socket.socket],
                 context: ssl.SSLContext | None, names: list[str]) -> None:
        self.listener = listener
        self.sockets = sockets
        self.context = context
        self.names = names


def bind_listeners(settings: Settings, listeners: list[Listener]) -> list[BoundListener]:
    """Bind and listen on every listener, synchronously (OSError or ConfigError).

    Separate from serving so that a supervisor binds once and its forked workers
    serve the same sockets (see ``Supervisor``).
    """
    bound: list[BoundListener] = []
    inherited = systemd.Inherited.from_env(os.environ, os.getpid())
    try:
        for listener in listeners:
            if listener.kind == "fd":
                bound.extend(BoundListener(Listener(url), [sock], None, [url])
                             for url, sock in inherited.claim(listener.url))
                continue
            context = _tls_context(settings) if listener.kind == "tls" else None
            if listener.kind == "unix":
                sockets = [_bind_unix(settings, listener.path)]
                names = [f"unix://{listener.path}"]
            else:
                host = listener.host
                if host == "::" and settings.disable_ipv6:
                    host = "0.0.0.0"
                sockets = _bind_tcp(host, listener.port)
                names = [f"{listener.kind}://{startup.host_form(name[0])}:{name[1]}"
                         for name in (sock.getsockname() for sock in sockets)]
            bound.append(BoundListener(listener, sockets, context, names))
        inherited.check_all_claimed()
    except OSError as error:
        inherited.close()
        close_listeners(bound)
        raise startup.ListenError(startup.bind_problem(
            listener.url, listener.kind, listener.port, listener.path, error)) from None
    except BaseException:
        inherited.close()
        close_listeners(bound)
        raise
    return bound


def close_listeners(bound: list[BoundListener]) -> None:
    for entry in bound:
        for sock in entry.sockets:
            sock.close()


def remove_socket_files(listeners: list[Listener]) -> None:
    for listener in listeners:
        if listener.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(listener.path)


def _listening(sock: socket.socket) -> socket.socket:
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _bind_tcp(host: str, port: int) -> list[socket.socket]:
    if host == "::":
        # [::] is dual-stack: one socket for v6 and v4-mapped clients.
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
            return [_listening(sock)]
        except BaseException:
            sock.close()
            raise
    # Like asyncio's create_server: one socket per address the name resolves to.
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            _listening(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_unix(settings: Settings, path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        _own_socket_file(settings, path)
        return _listening(sock)
    except BaseException:
        sock.close()
        raise


def _own_socket_file(settings: Settings, path: str) -> None:
    os.chmod(path, settings.socket_mode)
    if settings.socket_owner is None and settings.socket_group is None:
        return
    try:
        uid = (-1 if settings.socket_owner is None else
               int(settings.socket_owner) if settings.socket_owner.isdigit() else
               pwd.getpwnam(settings.socket_owner).pw_uid)
        gid = (-1 if settings.socket_group is None else
               int(settings.socket_group) if settings.socket_group.isdigit() else
               grp.getgrnam(settings.socket_group).gr_gid)
    except KeyError as error:
        raise ConfigError(f"unknown socket owner or group: {error}") from None
    os.chown(path, uid, gid)


def _tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        if settings.tls_ca:
            context.load_verify_locations(settings.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load the TLS certificate, key or CA: {error}") from None
    return context


class Proxy:
    """Listeners, the active decider, the upstream pool and the open connections."""

    def __init__(self, settings: Settings, decider: Decider) -> None:
        self.settings = settings
        self.decider = decider
        self.upstream = Upstream(settings.upstream_url, settings.connect_timeout)
        self.listeners = [Listener(url) for url in settings.listeners]
        self.connections: set[ClientConnection] = set()
        self.servers: list[asyncio.Server] = []
        self.shutting_down = False
        self.bound: list[str] = []
        self.owns_files = False
        self.quiet: asyncio.Event | None = None
        self.recorder = learnlog.recorder(settings)

    async def start(self, bound: list[BoundListener] | None = None) -> None:
        """Serve on ``bound`` (sockets a supervisor bound before forking), else bind now.

        OSError if a listener cannot be bound. Whoever binds owns the unix socket files
        and removes them at shutdown.
        """
        if bound is None:
            bound = bind_listeners(self.settings, self.listeners)
            self.owns_files = True
        loop = asyncio.get_running_loop()
        for entry in bound:
            self.bound.extend(entry.names)

            def factory(listener: Listener = entry.listener) -> ClientConnection:
                return ClientConnection(self, listener)

            serving: Callable[[], asyncio.Protocol] = factory
            if entry.context is not None:
                # dockgate's own TLS transport: it can half-close (see tlsstream).
                serving = tlsstream.server_factory(entry.context, factory,
                                                   self.settings.header_timeout)
            for sock in entry.sockets:
                if entry.listener.kind == "unix":
                    server = await loop.create_unix_server(serving, sock=sock, backlog=1024)
                else:
                    server = await loop.create_server(serving, sock=sock, backlog=1024)
                self.servers.append(server)

    def reload(self, build: Callable[[], Decider]) -> None:
        """SIGHUP: swap in a new decider; an invalid configuration keeps the old one."""
        try:
            decider = build()
        except ConfigError as error:
            log.error("reload failed, keeping the current policy: %s", error)
            metrics.count_reload("failed")
            return
        metrics.count_reload("ok")
        self.decider = decider
        log.info("reloaded: decisions now by %s", decider.name)

    def check_quiet(self) -> None:
        """During shutdown: note when no plain request is in flight any more."""
        if self.quiet is not None and not any(c.busy_plain for c in self.connections):
            self.quiet.set()

    async def shutdown(self) -> None:
        """Stop accepting; let plain requests finish within the grace; close the rest."""
        self.shutting_down = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        self.quiet = asyncio.Event()
        self.check_quiet()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.quiet.wait(), self.settings.shutdown_grace)
        for conn in list(self.connections):
            conn.close()
        self.upstream.close_all()
        if self.owns_files:
            remove_socket_files(self.listeners)
        await asyncio.sleep(0)


class ClientConnection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, proxy: Proxy, listener: Listener) -> None:
        self.proxy = proxy
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.client = Client(listener.url, "tcp")
        self.client_name = ""
        self.reader = http1.RequestReader(proxy.settings.max_header_bytes)
        self.upstream: UpstreamConnection | None = None   # the daemon side of the exchange
        self.raw = False
        self.eof = False
        self.lost = False
        self.busy_plain = False
        self.stream_opened = False
        self.streaming = False
        self.relays_eof = False  # a plain request is waiting for its answer: see _forward
        self.bytes_in = 0
        self.bytes_out = 0
        self._paused_for: set[str] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._timed_out = False
        self._deadline: float | None = None     # when the head being awaited is overdue
        self._timer: asyncio.TimerHandle | None = None
        self._raw_done: asyncio.Future[None] | None = None
        self._raw_eofs: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.linger = False      # answered a request without reading its body: see _linger
        self.lingering = False   # discarding what the client still sends, before closing
        self.refused = False     # past --max-connections: answered 503, never served

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)
        self.client = client_for(self.listener, transport)
        self.client_name = self.client.describe()
        if len(self.proxy.connections) >= self.proxy.settings.max_connections:
            self._refuse_overloaded(transport)
            return
        self.proxy.connections.add(self)
        metrics.ACTIVE_CONNECTIONS.inc()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self.raw:
            self.bytes_in += len(data)
            if self.upstream is not None:
                self.upstream.write(data)
            return
        if self.lingering:
            return
        self.reader.feed(data)
        if self.reader.buffered > HIGH_WATER:
            self._pause("buffer")
        self._wake()

    def _refuse_overloaded(self, transport: asyncio.Transport) -> None:
        """Past --max-connections: a 503 at once, a gentle close, and no task spent on it.

        The answer goes out before the request arrives (clients read it as the answer to
        their first request); what the client sends is discarded until it closes, or
        LINGER_SECONDS at the most, so it reads the 503 instead of a reset.
        """
        self.refused = True
        self.lingering = True
        error = Overloaded(f"dockgate: more than {self.proxy.settings.max_connections} "
                           "client connections at once; try again later, or raise "
                           "DOCKGATE_MAX_CONNECTIONS")
        transport.write(http1.closing_answer(error.status, error.body()))
        if transport.can_write_eof():
            with contextlib.suppress(RuntimeError, OSError):
                transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
        logs.audit("connection.refused", client=self.client_name, status=error.status,
                   reason=error.message)

    def eof_received(self) -> bool:
        if self.refused:
            return False
        if self.raw:
            self._raw_eof("client")
        else:
            self.eof = True
            self._wake()
            if self.streaming:
                # A client that stops sending while it follows an endless stream (events,
                # logs -f) has gone away: without this its daemon connection would stay
                # open until the next event fails to be written.
                self.abort()
                return False
            if self.relays_eof and self.upstream is not None:
                self.upstream.write_eof()  # see _forward
        # Keep our write side open for the response (tls:// too: see tlsstream).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
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
        if self._raw_done is not None and not self._raw_done.done():
            self._raw_done.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    # upstream.RawPeer ------------------------------------------------------------------------

    def raw_data(self, data: bytes | memoryview) -> None:
        self.bytes_out += len(data)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def raw_eof(self) -> None:
        self._raw_eof("daemon")

    def raw_lost(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._raw_done is not None and not self._raw_done.done():
            self._raw_done.set_result(None)

    def peer_paused(self, paused: bool) -> None:
        if paused:
            self._pause("peer")
        else:
            self._resume("peer")

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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self._paused_for:
            self._resume("buffer")
        self._waiter = asyncio.get_running_loop().create_future()
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
        if not self.busy_plain and not self.raw and self.reader.awaiting_head \
                and self.reader.buffered == 0 and self.upstream is None:
            self._wake()

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

    # the pipeline ------------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while not self.lost:
                try:
                    head = await self._read_head()
                except _HeaderTimeoutError:
                    self._refuse_framing(408, "request head not received in time")
                    break
                except ProtocolError as error:
                    self._refuse_framing(error.status, error.message)
                    break
                if head is None:
                    break
                if not await self._handle(head):
                    break
                self.reader.start_next()
            if self.linger and not self.lost:
                await self._linger()
        except Exception:
            log.exception("internal error on a connection from %s", self.client.describe())
            self.abort()
        finally:
            if self.transport is not None:
                self.transport.close()

    async def _linger(self) -> None:
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
        if transport is not None and transport.can_write_eof():
            # uvloop raises RuntimeError from write_eof on a closing transport.
            with contextlib.suppress(RuntimeError, OSError):
                transport.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        while not (self.eof or self.lost):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait(), remaining)

    async def _read_head(self) -> http1.RequestHead | None:
        settings = self.proxy.settings
        kind = ""
        self._timed_out = False
        try:
            while True:
                event = self.reader.next_event()
                if isinstance(event, http1.RequestHead):
                    return event
                if self.lost or self.eof:
                    return None
                idle = self.reader.buffered == 0
                if idle and self.proxy.shutting_down:
                    return None
                if self._timed_out:
                    if kind == "header":
                        raise _HeaderTimeoutError
                    return None
                want = "idle" if idle else "header"
                if want != kind:
                    kind = want
                    self._set_deadline(settings.idle_timeout if idle
                                       else settings.header_timeout)
                await self._wait()
        finally:
            self._deadline = None

    def _set_deadline(self, delay: float) -> None:
        # One timer per connection, not one per request: moving the deadline is a
        # float store, and the timer is re-armed only when it fires early or must fire
        # sooner. A keep-alive client sending thousands of requests a second would
        # otherwise create and cancel a TimerHandle for each of them.
        loop = asyncio.get_running_loop()
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
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self._timed_out = True
            self._wake()
        else:
            self._timer = loop.call_at(deadline, self._on_timer)

    async def _next_body_event(self) -> http1.Data | http1.EndOfMessage:
        while True:
            event = self.reader.next_event()
            if isinstance(event, http1.Data | http1.EndOfMessage):
                if isinstance(event, http1.Data):
                    self.bytes_in += len(event.data)
                # The inactivity deadline runs only while waiting for the client: time
                # the daemon takes to read (drain) is not the client's.
                self._deadline = None
                self._timed_out = False
                return event
            if self.lost or self.eof:
                raise _ClientGoneError
            if self._timed_out:
                raise RequestTimeout(
                    f"dockgate: no request body bytes for {self.proxy.settings.body_timeout:g} "
                    "s; the request was dropped (DOCKGATE_BODY_TIMEOUT)")
            self._set_deadline(self.proxy.settings.body_timeout)
            await self._wait()

    async def _handle(self, head: http1.RequestHead) -> bool:
        """Run one request through the pipeline; True if the connection stays open."""
        started = time.monotonic()
        self.bytes_in = head.size
        self.bytes_out = 0
        record: dict[str, Any] = {"client": self.client_name, "method": head.method,
                                  "target": head.target, "operation": None,
                                  "decision": "error", "rule": None}
        self.busy_plain = True
        try:
            keep, status = await self._decide_and_forward(head, record)
        finally:
            self.busy_plain = False
            self.proxy.check_quiet()
        if self.stream_opened:
            self.stream_opened = False
            metrics.stream_closed("stream")
            logs.audit("stream.close", client=record["client"], target=record["target"],
                       status=status, bytes_out=self.bytes_out,
                       duration_ms=round((time.monotonic() - started) * 1000, 3))
        record["status"] = status
        record["bytes_in"] = self.bytes_in
        record["bytes_out"] = self.bytes_out
        record["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
        logs.audit("request", **record)
        metrics.count_request(record["operation"] or "none", record["decision"], status,
                              time.monotonic() - started)
        return keep and not self.proxy.shutting_down

    async def _decide_and_forward(self, head: http1.RequestHead,
                                  record: dict[str, Any]) -> tuple[bool, int]:
        try:
            target, match = route(head.method, head.target)
        except HTTPError as error:
            record["reason"] = error.message
            return self._answer_error(error.status, f"dockgate: {error.message}", head,
                                      close=True), error.status
        request = Request(head.method, target, match)
        record["operation"] = match.operation if match is not None else None
        if match is not None and match.params:
            record["resource"] = dict(match.params)
        facts = NO_FACTS
        body: bytes | None = None
        decider = self.proxy.decider
        try:
            for _ in range(MAX_DECIDE_ROUNDS):
                decision = self._decide(decider, request, facts)
                if not isinstance(decision, NeedFacts):
                    break
                upstream = self.proxy.upstream
                containers = dict(facts.containers)
                for ref in decision.containers:
                    if ref not in containers:
                        containers[ref] = await upstream.container_facts(ref)
                execs = dict(facts.execs)
                for ref in decision.execs:
                    if ref not in execs:
                        execs[ref] = await upstream.exec_facts(ref)
                volumes = dict(facts.volumes)
                for ref in decision.volumes:
                    if ref not in volumes:
                        volumes[ref] = await upstream.volume_facts(ref)
                if decision.body and body is None:
                    body = await self._read_whole_body(head)
                facts = Facts(containers=containers, body=body, execs=execs, volumes=volumes)
            else:
                decision = Deny(f"dockgate: {head.method} {target.api_path} denied — the "
                                "policy could not decide it", rule="undecidable")
        except (HTTPError, _ClientGoneError) as error:
            if isinstance(error, _ClientGoneError):
                return False, 499
            record["reason"] = error.message
            close = error.close_connection or (head.has_body and body is None)
            return self._answer_error(error.status, error.message, head, close), error.status
        record["rule"] = decision.rule
        if self.proxy.recorder is not None:  # learn mode: the same facts, for the recording
            self.proxy.recorder.observe(self.client, request, facts, decision)
        unread_body = head.has_body and body is None
        if isinstance(decision, Deny):
            record["decision"] = "deny"
            record["reason"] = decision.message
            return self._answer_error(decision.status, decision.message, head,
                                      close=unread_body), decision.status
        record["decision"] = "allow"
        if decision.target is not None:
            record["forwarded"] = decision.target  # the pinned target (resolved full ID)
        if decision.body is not None and head.has_body and body is None:
            log.error("decider %s replaced a body it never read", decider.name)
            record["decision"] = "error"
            return self._answer_error(500, "dockgate: internal error deciding this "
                                      "request", head, close=True), 500
        if decision.target is not None and not _valid_target(decision.target):
            # Deciders are ours, but a rewritten target is a header line: never trust it blind.
            log.error("decider %s returned an invalid target %r", decider.name,
                      decision.target)
            record["decision"] = "error"
            return self._answer_error(500, "dockgate: internal error deciding this "
                                      "request", head, close=True), 500
        stream = match.route.stream if match is not None else routes.Stream.PLAIN
        if decision.body is not None:
            body = decision.body  # e.g. a volume create with the owner label added
        return await self._forward(head, decision, stream, body, record)

    def _decide(self, decider: Decider, request: Request, facts: Facts) -> Decision:
        """Ask the decider; a failing decider denies (500), it never lets a request through."""
        try:
            return decider.decide(self.client, request, facts)
        except Exception:
            log.exception("decider %s failed on %s %s", decider.name, request.method,
                          request.target.raw)
            return Deny("dockgate: internal error deciding this request", status=500,
                        rule="decider-error")

    async def _read_whole_body(self, head: http1.RequestHead) -> bytes:
        limit = self.proxy.settings.max_inspect_bytes
        if head.content_length is not None and head.content_length > limit:
            raise BodyTooLarge(f"dockgate: request body larger than {limit} bytes cannot be "
                               "inspected (DOCKGATE_MAX_INSPECT_BYTES)")
        if head.expect_continue:
            self.write(CONTINUE)
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self._next_body_event()
            if isinstance(event, http1.EndOfMessage):
                return b"".join(parts)
            size += len(event.data)
            if size > limit:
                raise BodyTooLarge(f"dockgate: request body larger than {limit} bytes cannot "
                                   "be inspected (DOCKGATE_MAX_INSPECT_BYTES)")
            parts.append(bytes(event.data))

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

    def _upstream_head(self, head: http1.RequestHead, allow: Allow, body: bytes | None,
                       upgrade: bytes | None) -> bytes:
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

    async def _forward(self, head: http1.RequestHead, allow: Allow, stream: routes.Stream,
                       body: bytes | None, record: dict[str, Any]) -> tuple[bool, int]:
        upgrade = head.upgrade if stream in _RAW_KINDS else None
        streamed: list[http1.Data | http1.EndOfMessage] = []
        if body is None and head.has_body:
            try:
                streamed = self._prefetch_body()
            except ProtocolError as error:
                record["decision"] = "error"
                record["reason"] = error.message
                return self._answer_error(error.status, f"dockgate: {error.message}", head,
                                          close=True), error.status
        raw_head = self._upstream_head(head, allow, body, upgrade)
        pool = self.proxy.upstream
        for attempt in range(2):
            try:
                conn = pool.take_idle() or await pool.acquire()
            except UpstreamError as error:
                metrics.count_upstream_error("connect")
                record["reason"] = error.message
                return self._answer_error(502, error.message, head,
                                          close=head.has_body and body is None), 502
            exchange = Exchange(self, conn, head, response_filter=allow.response_filter,
                                stream=stream, upgrade=upgrade,
                                error_answer=allow.error_answer)
            conn.sink = exchange
            conn.reader.expect(head.method)
            self.upstream = conn
            if self._write_paused:
                conn.pause_reading()  # the client is still behind on an earlier response
            if body is not None:
                conn.writelines([raw_head, body])
            else:
                conn.write(raw_head)
            body_done = not head.has_body or body is not None
            if not body_done:
                if head.expect_continue:
                    self.write(CONTINUE)
                try:
                    body_done = await self._stream_body(conn, head.chunked, streamed)
                except (ProtocolError, _ClientGoneError) as error:
                    conn.abort()
                    self.upstream = None
                    if isinstance(error, ProtocolError) and not exchange.started:
                        message = (error.message if error.message.startswith("dockgate: ")
                                   else f"dockgate: {error.message}")
                        record["reason"] = message
                        return self._answer_error(error.status, message, head,
                                                  close=True), error.status
                    self.abort()
                    return False, 400 if isinstance(error, ProtocolError) else 499
            self.streaming = stream == routes.Stream.STREAM
            # A client that half-closes while it waits for a plain answer: the daemon
            # gets the same half-close (Go's server then cancels the request; a fast
            # answer still comes back). A client that left for good thus frees the
            # daemon connection too, instead of holding it for a stalled daemon.
            self.relays_eof = stream == routes.Stream.PLAIN
            if self.streaming and self.eof:
                self.abort()  # see eof_received: the follower already left
            elif self.relays_eof and self.eof:
                conn.write_eof()
            outcome = await exchange.done
            self.streaming = self.relays_eof = False
            if outcome == "lost" and attempt == 0 and conn.reused and not conn.got_response \
                    and (not head.has_body or body is not None):
                continue  # the daemon had closed this pooled connection: one fresh try
            break
        self.upstream = None
        if outcome == "lost":
            metrics.count_upstream_error("lost")
            conn.abort()
            message = exchange.error or pool.unreachable_message("connection lost")
            record["reason"] = message
            return self._answer_error(502, message, head, close=not body_done), 502
        if outcome == "broken":
            metrics.count_upstream_error("broken")
            conn.abort()
            self.abort()
            return False, exchange.status
        if outcome == "switch":
            await self._relay_raw(conn, exchange, record)
            return False, exchange.status
        if exchange.upstream_reusable and body_done and not self.eof:
            pool.release(conn)
        else:
            conn.close()
        return exchange.keep_alive and body_done, exchange.status

    async def _stream_body(self, conn: UpstreamConnection, chunked: bool,
                           prefetched: list[http1.Data | http1.EndOfMessage]) -> bool:
        """Relay the request body as it arrives; True when all of it was read."""
        pending = list(prefetched)
        while True:
            event = pending.pop(0) if pending else await self._next_body_event()
            if isinstance(event, http1.EndOfMessage):
                if chunked:
                    conn.write(http1.LAST_CHUNK)
                return True
            if conn.closed:
                continue  # the daemon went away; keep reading so the client gets its answer
            if chunked:
                conn.writelines([http1.chunk_header(len(event.data)), event.data, http1.CRLF])
            else:
                conn.write(event.data)
            await conn.drain()

    async def _relay_raw(self, conn: UpstreamConnection, exchange: Exchange,
                         record: dict[str, Any]) -> None:
        """Bytes both ways until both sides ended; EOFs become half-closes."""
        self.raw = True
        self.busy_plain = False
        self.upstream = conn
        loop = asyncio.get_running_loop()
        self._raw_done = loop.create_future()
        opened = time.monotonic()
        metrics.stream_opened("session")
        logs.audit("session.open", client=record["client"], method=record["method"],
                   target=record["target"], operation=record["operation"],
                   status=exchange.status)
        rest = self.reader.take_rest()
        if rest:
            conn.write(rest)
        # Either side may have ended between the daemon's switch and now.
        if self.eof and "client" not in self._raw_eofs:
            self._raw_eof("client")
        if conn.closed or self.lost:
            self.raw_lost()
        elif len(self._raw_eofs) == 2:
            self._raw_done.set_result(None)
        self._resume("buffer")
        await self._raw_done
        conn.close()
        self.upstream = None
        metrics.stream_closed("session")
        logs.audit("session.close", client=record["client"], target=record["target"],
                   bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                   duration_ms=round((time.monotonic() - opened) * 1000, 3))

    def _raw_eof(self, side: str) -> None:
        self._raw_eofs.add(side)
        if side == "client":
            if self.upstream is not None:
                self.upstream.write_eof()
        elif self.transport is not None and not self.transport.is_closing():
            try:
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                else:
                    self.transport.close()
            except (RuntimeError, OSError):
                # uvloop raises RuntimeError from write_eof on a closing transport.
                self.transport.close()
        if len(self._raw_eofs) == 2 and self._raw_done is not None \
                and not self._raw_done.done():
            self._raw_done.set_result(None)

    def _refuse_framing(self, status: int, why: str) -> None:
        """Answer a request that could not be framed, close, and audit it."""
        message = f"dockgate: {why}"
        self._answer_error(status, message, None, close=True)
        logs.audit("request", client=self.client_name, method=None, target=None,
                   operation=None, decision="error", rule=None, reason=message,
                   status=status, bytes_in=self.reader.buffered, bytes_out=self.bytes_out,
                   duration_ms=0.0)
        metrics.count_request("none", "error", status)

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


class Exchange:
    """Relays one daemon response to the client, from the upstream protocol's callbacks."""

    def __init__(self, client: ClientConnection, conn: UpstreamConnection,
                 head: http1.RequestHead, *, response_filter: ResponseFilter | None,
                 stream: routes.Stream, upgrade: bytes | None,
                 error_answer: ErrorAnswer | None = None) -> None:
        self.client = client
        self.conn = conn
        self.head = head
        self.filter = response_filter
        self.error_answer = error_answer
        self.stream = stream
        self.upgrade = upgrade
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.out: list[bytes | memoryview] = []
        self.started = False
        self.status = 0
        self.mode = "none"           # none | length | chunked | close | collect | lines
        self.keep_alive = False
        self.upstream_reusable = False
        self.error: str | None = None
        self._headers: http1.Headers = []
        self._collected: list[bytes] = []
        self._collected_size = 0
        self._line = b""

    # upstream.ResponseSink -------------------------------------------------------------------

    def on_event(self, event: http1.ResponseEvent) -> None:
        if self.done.done():
            return
        if isinstance(event, http1.Data):
            self._data(event.data)
        elif isinstance(event, http1.ResponseHead):
            self._head(event)
        else:
            self._end()

    def flush(self) -> None:
        out = self.out
        if out:
            self.client.bytes_out += sum(map(len, out))
            transport = self.client.transport
            if transport is not None and not transport.is_closing():
                # writelines, not write(b"".join(...)): uvloop queues it and sends once at
                # the end of the loop iteration; measured cheaper than an immediate send.
                transport.writelines(out)
            self.out = []

    def on_lost(self, error: UpstreamError) -> None:
        if self.done.done():
            return
        self.error = error.message
        self.done.set_result("broken" if self.started else "lost")

    # relaying ----------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        self.conn.abort()
        self.error = message
        if not self.done.done():
            self.done.set_result("broken" if self.started else "lost")

    def _switch(self, response: http1.ResponseHead, headers: http1.Headers) -> None:
        self.started = True
        self.client.write(http1.response_head(response.status, headers, response.reason))
        self.conn.go_raw(self.client)
        self.done.set_result("switch")

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
        headers = response.end_to_end
        close_after = self.upgrade is not None  # asked for raw, got HTTP: its next bytes are raw
        if not response.has_body:
            self.mode = "none"
            if response.content_length is not None and (request.method == "HEAD"
                                                        or status == 304):
                headers.append((b"Content-Length", b"%d" % response.content_length))
        elif status >= 400 and self.error_answer is not None:
            self.mode = "collect"  # rewritten whole at the end (_send_collected)
        elif self.filter is not None and self.filter.mode in ("json-list", "json-object"):
            self.mode = "collect"
        elif self.filter is not None:
            self.mode = "lines" if client_11 else "lines-close"
        elif response.content_length is not None:
            self.mode = "length"
            headers.append((b"Content-Length", b"%d" % response.content_length))
        elif client_11:
            self.mode = "chunked"
        else:
            self.mode = "close"
        if self.mode in ("close", "lines-close"):
            close_after = True
        elif self.mode in ("chunked", "lines"):
            headers.append((b"Transfer-Encoding", b"chunked"))
        self.keep_alive = (request.keep_alive and not close_after
                           and not self.client.proxy.shutting_down)
        if not self.keep_alive:
            headers.append((b"Connection", b"close"))
        elif not client_11:
            headers.append((b"Connection", b"keep-alive"))
        self.upstream_reusable = response.keep_alive
        if self.mode == "collect":
            self._headers = headers
            return
        self.started = True
        if self.stream == routes.Stream.STREAM:
            # A long-lived stream is not an in-flight request that shutdown waits for.
            self.client.busy_plain = False
            self.client.proxy.check_quiet()
            self.client.stream_opened = True
            metrics.stream_opened("stream")
            logs.audit("stream.open", client=self.client.client_name,
                       method=request.method, target=request.target, status=status)
        self.out.append(http1.response_head(status, headers, response.reason))

    def _data(self, data: bytes | memoryview) -> None:
        mode = self.mode
        if mode in ("length", "close"):
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
            self._send_filtered_list()
        elif self.mode in ("lines", "lines-close"):
            if self._line.strip():
                self._lines(b"\n")
            if self.mode == "lines":
                self.out.append(http1.LAST_CHUNK)
        elif self.mode == "chunked":
            self.out.append(http1.LAST_CHUNK)
        if not self.done.done():
            self.done.set_result("done")

    def _send_filtered_list(self) -> None:
        assert self.filter is not None
        key = self.filter.list_key
        try:
            document = json.loads(b"".join(self._collected)) if self._collected else []
        except ValueError:
            document = None
        if self.filter.mode == "json-object" and isinstance(document, dict):
            self._send_collected(json.dumps(self.filter.rewrite(document)).encode() + b"\n")
            return
        items = document
        if key is not None:
            # GET /volumes answers {"Volumes": [...] or null, "Warnings": ...}.
            items = (document.get(key) or []) if isinstance(document, dict) else None
        if not isinstance(items, list):
            self._fail("dockgate: the daemon's answer is not the JSON the policy filters")
            return
        kept = [item for item in items if isinstance(item, dict) and self.filter.keep(item)]
        if key is not None:
            assert isinstance(document, dict)
            self._send_collected(json.dumps({**document, key: kept}).encode() + b"\n")
        else:
            self._send_collected(json.dumps(kept).encode() + b"\n")

    def _send_collected(self, body: bytes) -> None:
        headers = [*self._headers, (b"Content-Length", b"%d" % len(body))]
        self.started = True
        self.out += (http1.response_head(self.status, headers), body)


async def serve(settings: Settings, decider: Decider,
                reload: Callable[[], Decider] | None = None,
                bound: list[BoundListener] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; the exit status.

    ``bound``: the sockets a supervisor bound for this worker (None: bind them here).
    """
    proxy = Proxy(settings, decider)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before listening: a client may signal as soon as it can connect (SIGHUP's
    # default action would kill the process).
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, proxy.reload, reload)
    admin_servers = await admin.start(settings)
    try:
        await proxy.start(bound)
    except OSError as error:
        log.error("cannot listen: %s", error)
        return 1
    if bound is None:
        log.info("listening on %s, forwarding to %s, decisions by %s",
                 ", ".join(proxy.bound), settings.upstream_url, decider.name)
        systemd.notify(f"READY=1\nSTATUS=listening on {', '.join(proxy.bound)}")
    else:
        # The supervisor forked us with its signals blocked: what arrived while we
        # started (a SIGHUP right after the fork) is delivered to the handlers now,
        # instead of killing a worker that had none yet.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, Supervisor.SIGNALS)
        _watch_parent(loop, os.getppid(), stop)
        log.info("worker serving (pid %d)", os.getpid())
    await stop.wait()
    log.info("shutting down")
    if bound is None:
        systemd.notify("STOPPING=1")
    for server in admin_servers:
        server.close()
    await proxy.shutdown()
    return 0


def _watch_parent(loop: asyncio.AbstractEventLoop, parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL) stops too, instead of serving unsupervised."""
    if os.getppid() != parent:
        stop.set()
        return
    loop.call_later(1.0, _watch_parent, loop, parent, stop)


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one.

    Every proxied client costs two descriptors (client and daemon side); the
    usual soft limit of 1024 would refuse connections long before the proxy is busy.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(settings: Settings, decider: Decider,
        reload: Callable[[], Decider] | None = None) -> int:
    """``dockgate serve``: the event loop is uvloop; ``--workers N`` forks N of them."""
    raise_fd_limit()
    if settings.workers == 1:
        result: int = uvloop.run(serve(settings, decider, reload))
        logs.flush()
        return result
    listeners = [Listener(url) for url in settings.listeners]
    admin.bind(settings)  # before forking: every worker serves the admin sockets too
    try:
        bound = bind_listeners(settings, listeners)
    except OSError as error:
        log.error("cannot listen: %s", error)
        return 1
    log.info("listening on %s, forwarding to %s, decisions by %s, %d workers",
             ", ".join(name for entry in bound for name in entry.names),
             settings.upstream_url, decider.name, settings.workers)
    systemd.notify("READY=1")  # connections queue on the bound sockets until a worker accepts
    try:
        return Supervisor(settings, decider, reload, bound).run()
    finally:
        close_listeners(bound)
        remove_socket_files(listeners)


class Supervisor:
    """Pre-fork workers: the parent binds every listener once, each worker serves them all.

    Why a shared accept queue rather than SO_REUSEPORT: it works for every listener
    kind (unix sockets and TLS included), a port bound once cannot be joined by
    another process of the same user, and the socket file has one owner. The kernel
    hands each new connection to one of the workers waiting in accept; Docker clients
    keep connections alive, so accept balance matters less than request cost.

    The parent runs no event loop (a loop must not cross a fork): it blocks in
    ``sigtimedwait`` on SIGCHLD, SIGTERM, SIGINT and SIGHUP. A worker that dies
    unexpectedly is replaced, at most ``MAX_RESTARTS`` per ``RESTART_WINDOW`` seconds
    so that a crash loop does not spin; SIGTERM/SIGINT are forwarded (each worker
    finishes gracefully) and the parent exits 0 once all are gone; SIGHUP is forwarded
    and each worker reloads its own decider (a ConfigError keeps its current one).
    """

    MAX_RESTARTS: Final = 10
    RESTART_WINDOW: Final = 60.0
    SIGNALS: Final = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT,
                                signal.SIGHUP})

    def __init__(self, settings: Settings, decider: Decider,
                 reload: Callable[[], Decider] | None, bound: list[BoundListener]) -> None:
        self.settings = settings
        self.decider = decider
        self.reload = reload
        self.bound = bound
        self.workers: dict[int, int] = {}        # pid -> slot
        self.waiting: list[int] = []             # slots to restart when the rate allows
        self.restarts: list[float] = []          # monotonic times of recent restarts
        self.stopping = False

    def run(self) -> int:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            for slot in range(self.settings.workers):
                self._spawn(slot)
            while self.workers or (self.waiting and not self.stopping):
                timeout = self._restart_due()
                info = signal.sigtimedwait(self.SIGNALS, timeout)
                if info is not None:
                    self._on_signal(info.si_signo)
                self._reap()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.info("all workers stopped")
        return 0

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = slot
            log.info("worker %d started (pid %d)", slot, pid)
            return
        # The worker: signals stay blocked until serve() has its handlers (it unblocks
        # them); its exit code is ours.
        code = 1
        try:
            code = uvloop.run(serve(self.settings, self.decider, self.reload, self.bound))
        except BaseException:
            log.exception("worker %d failed", slot)
        finally:
            logs.flush()
            logging.shutdown()
            os._exit(code)

    def _on_signal(self, signo: int) -> None:
        if signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            log.info("shutting down %d workers", len(self.workers))
            systemd.notify("STOPPING=1")
            self.stopping = True
            self.waiting.clear()
            self._send(signal.SIGTERM)
        elif signo == signal.SIGHUP and not self.stopping and self.reload is not None:
            self._send(signal.SIGHUP)  # without a reload, SIGHUP's default would kill them

    def _send(self, signo: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            metrics.worker_exited(pid)
            if self.stopping:
                continue
            log.error("worker %d (pid %d) ended unexpectedly (%s); replacing it", slot, pid,
                      _describe_status(status))
            self.waiting.append(slot)

    def _restart_due(self) -> float:
        """Restart waiting workers the rate allows; seconds until the next check."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.RESTART_WINDOW]
        while self.waiting and len(self.restarts) < self.MAX_RESTARTS:
            self.restarts.append(now)
            self._spawn(self.waiting.pop(0))
        if self.waiting:
            log.error("workers keep failing: next restart in %.0f s",
                      self.restarts[0] + self.RESTART_WINDOW - now)
            return max(0.1, self.restarts[0] + self.RESTART_WINDOW - now)
        return 1.0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
