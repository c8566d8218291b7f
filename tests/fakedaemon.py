"""A scripted fake Docker daemon on a real unix socket, and an in-process proxy runner.

The fake records exactly what it receives (the raw bytes of every connection,
and each request it could frame) and answers from a script: a handler per
``(METHOD, path)``, else the default handler, which answers 200 with a small
JSON body. Handlers cover what a real daemon cannot be made to do on demand:
101 hijacks and raw 200 streams that echo, chunked streams, slow or broken
responses.

Used from a separate process (the compat engineer's differential tests)::

    python tests/fakedaemon.py --socket /tmp/fake.sock --record /tmp/requests.jsonl

answers every request 200 ``{"message": "fake"}`` and writes one JSON line per
request received: ``{"method", "target", "headers", "body"}`` (body as latin-1
text).

``run_proxy`` starts dockgate's ``server.Proxy`` on a uvloop loop in a thread,
so tests can look at file descriptors and use plain blocking sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import uvloop

from dockgate import settings as settings_module
from dockgate.decision import AllowAll, Decider
from dockgate.shell.proxy import Proxy


@dataclass
class Received:
    """One request as the fake framed it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class FakeConnection:
    """What a handler gets: the socket, a reader of what is left, response helpers."""

    def __init__(self, sock: socket.socket, daemon: FakeDaemon, record: bytearray) -> None:
        self.sock = sock
        self.daemon = daemon
        self.record = record
        self.buffer = b""

    def recv(self, size: int = 65536) -> bytes:
        if self.buffer:
            data, self.buffer = self.buffer, b""
            return data
        data = self.sock.recv(size)
        self.record.extend(data)
        return data

    def read_exactly(self, size: int) -> bytes:
        collected = bytearray(self.buffer)
        while len(collected) < size:
            if self.daemon.read_delay:
                time.sleep(self.daemon.read_delay)  # a daemon slower than the client
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("peer closed")
            self.record.extend(data)
            collected += data
        self.buffer = bytes(collected[size:])
        return bytes(collected[:size])

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("peer closed")
            self.record.extend(data)
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def respond(self, status: int, body: bytes = b"", content_type: str = "application/json",
                headers: Mapping[str, str] | None = None, reason: str = "OK",
                send_body: bool = True) -> None:
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
                "Api-Version: 1.41"]
        if status not in (204, 304) and not 100 <= status < 200:
            head.append(f"Content-Length: {len(body)}")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send(("\r\n".join(head) + "\r\n\r\n").encode() + (body if send_body else b""))

    def json(self, data: Any, status: int = 200, send_body: bool = True) -> None:
        self.respond(status, json.dumps(data).encode() + b"\n", send_body=send_body)

    def chunked_head(self, status: int = 200, content_type: str = "application/json") -> None:
        self.send((f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n").encode())

    def chunk(self, data: bytes) -> None:
        self.send(b"%x\r\n" % len(data) + data + b"\r\n")

    def end_chunks(self) -> None:
        self.send(b"0\r\n\r\n")


# A handler answers one request; it returns False to close the connection.
Handler = Callable[[Received, FakeConnection], bool]


def answer_json(data: Any = None, status: int = 200) -> Handler:
    """A handler answering ``status`` with ``data`` as JSON (default ``{"message": "fake"}``)."""
    payload = {"message": "fake"} if data is None else data

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.json(payload, status, send_body=request.method != "HEAD")
        return True

    return handler


def answer_status(status: int) -> Handler:
    """A handler answering a body-less status (204, 304)."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.respond(status, reason="No Content" if status == 204 else "Not Modified")
        return True

    return handler


def answer_chunks(chunks: list[bytes], delay: float = 0.0,
                  content_type: str = "application/json") -> Handler:
    """A chunked streaming response, one chunk per item, ``delay`` seconds apart."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.chunked_head(content_type=content_type)
        for item in chunks:
            conn.chunk(item)
            if delay:
                time.sleep(delay)
        conn.end_chunks()
        return True

    return handler


def answer_big(size: int, chunked: bool = False, block: int = 1 << 20) -> Handler:
    """``size`` bytes of 'x', by Content-Length or chunked, written ``block`` at a time."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        data = b"x" * block
        if chunked:
            conn.chunked_head(content_type="application/octet-stream")
        else:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: %d\r\n\r\n" % size)
        left = size
        while left:
            piece = data[:min(block, left)]
            if chunked:
                conn.chunk(piece)
            else:
                conn.send(piece)
            left -= len(piece)
        if chunked:
            conn.end_chunks()
        return True

    return handler


def answer_forever(interval: float = 0.05) -> Handler:
    """A chunked stream that never ends (``logs -f``); ends when the peer goes away."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.chunked_head()
        try:
            while True:
                conn.chunk(b'{"status":"tick"}\n')
                time.sleep(interval)
        except OSError:
            return False

    return handler


def answer_quiet_stream(first: bytes = b'{"status":"start"}\n') -> Handler:
    """A chunked stream that sends one item, then nothing until the peer goes away (events)."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.chunked_head()
        conn.chunk(first)
        while conn.recv():
            pass
        return False

    return handler


def answer_broken(partial: bytes = b'{"part') -> Handler:
    """Promise 100 bytes, send a few, close: a daemon dying mid-response."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n" + partial)
        return False

    return handler


def answer_slow(delay: float, then: Handler | None = None) -> Handler:
    """Wait ``delay`` seconds, then answer like ``then`` (default JSON)."""
    after = then or answer_json()

    def handler(request: Received, conn: FakeConnection) -> bool:
        time.sleep(delay)
        return after(request, conn)

    return handler


def answer_hijack(upgrade: bool = True,
                  content_type: str = "application/vnd.docker.raw-stream",
                  greeting: bytes = b"") -> Handler:
    """Hijack like attach/exec start: 101 (or raw 200), then echo until the client's EOF.

    Every chunk read is sent back prefixed with ``echo:``; after the client's
    half-close the fake writes ``EOF-SEEN`` and half-closes itself, which is
    exactly the order `echo hi | docker run -i ... cat` needs.
    """

    def handler(request: Received, conn: FakeConnection) -> bool:
        if upgrade:
            conn.send((f"HTTP/1.1 101 UPGRADED\r\nContent-Type: {content_type}\r\n"
                       "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n").encode())
        else:
            conn.send(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\r\n".encode())
        if greeting:
            conn.send(greeting)
        while True:
            data = conn.recv()
            if not data:
                break
            conn.send(b"echo:" + data)
        conn.send(b"EOF-SEEN")
        conn.sock.shutdown(socket.SHUT_WR)
        conn.daemon.hijack_eofs += 1
        return False

    return handler


def answer_reset(sent: bytes = b"") -> Handler:
    """Send ``sent`` (maybe nothing, maybe part of a response), then reset the connection."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        if sent:
            conn.send(sent)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()  # with a zero linger: RST, like a daemon that crashed
        return False

    return handler


def answer_stall() -> Handler:
    """Never answer: hold the connection until the peer closes it (then count it)."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        try:
            while conn.recv():
                pass
        finally:  # EOF or reset: either way the peer went away
            with conn.daemon._lock:
                conn.daemon.stalls_ended += 1
        return False

    return handler


def answer_raw(data: bytes) -> Handler:
    """Send ``data`` as it is (a malformed or hostile response), then close."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.send(data)
        return False

    return handler


def answer_upgrade_websocket() -> Handler:
    """101 Switching Protocols for websocket attach, then echo raw bytes until EOF."""

    def handler(request: Received, conn: FakeConnection) -> bool:
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: fake\r\n\r\n")
        while data := conn.recv():
            conn.send(data)
        return False

    return handler


def _read_request(conn: FakeConnection) -> Received | None:
    head = b""
    while b"\r\n\r\n" not in conn.buffer:
        data = conn.sock.recv(65536)
        if not data:
            return None
        conn.record.extend(data)
        conn.buffer += data
    head, conn.buffer = conn.buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    request = Received(method, target, version, headers, b"", head + b"\r\n\r\n")
    length = request.header("content-length")
    if (request.header("transfer-encoding") or "").lower() == "chunked":
        body = b""
        while True:
            size = int(conn.read_line().split(b";")[0], 16)
            if size == 0:
                while conn.read_line():
                    pass
                break
            body += conn.read_exactly(size)
            conn.read_exactly(2)
        request.body = body
    elif length is not None:
        request.body = conn.read_exactly(int(length))
    return request


class FakeDaemon:
    """The fake; start it with ``with FakeDaemon(path) as daemon:``."""

    def __init__(self, path: str | Path, record_file: str | Path | None = None) -> None:
        self.path = str(path)
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.default: Handler = answer_json()
        self.requests: list[Received] = []
        self.raw: list[bytearray] = []
        self.open_connections = 0
        self.hijack_eofs = 0
        self.stalls_ended = 0  # answer_stall connections whose peer went away
        self.read_delay = 0.0  # seconds to wait before each read of a request body
        self.record_file = record_file
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        self._live: set[socket.socket] = set()

    def on(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` (path without query) with ``handler``."""
        self.handlers[(method, path)] = handler

    @property
    def received(self) -> bytes:
        """Every byte every connection sent, in connection order."""
        with self._lock:
            return b"".join(bytes(chunk) for chunk in self.raw)

    def _serve_connection(self, sock: socket.socket) -> None:
        record = bytearray()
        with self._lock:
            self.raw.append(record)
            self.open_connections += 1
        conn = FakeConnection(sock, self, record)
        with self._lock:
            self._live.add(sock)
        try:
            while True:
                request = _read_request(conn)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                self._record(request)
                path = request.target.split("?", 1)[0]
                handler = self.handlers.get((request.method, path), self.default)
                if not handler(request, conn):
                    return
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            with self._lock:
                self.open_connections -= 1
                self._live.discard(sock)

    def _record(self, request: Received) -> None:
        if self.record_file is None:
            return
        line = json.dumps({"method": request.method, "target": request.target,
                           "headers": request.headers,
                           "body": request.body.decode("latin-1")})
        with self._lock, open(self.record_file, "a") as out:
            out.write(line + "\n")

    def start(self) -> FakeDaemon:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        daemon = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                daemon._serve_connection(self.request)

        class Server(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 1024  # a proxy opens many connections at once

        self._server = Server(self.path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def kill(self) -> None:
        """Die like a killed daemon: stop listening, end every open connection at once."""
        self.stop()
        with self._lock:
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RunningProxy:
    """A dockgate Proxy on its own uvloop thread."""

    proxy: Proxy
    loop: asyncio.AbstractEventLoop
    port: int
    thread: threading.Thread
    addresses: list[str] = field(default_factory=list)

    def call(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on the proxy's loop and return its result."""
        async def run() -> Any:
            return func()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


def make_settings(upstream: str, listen: str = "tcp://127.0.0.1:0",
                  **env: str) -> settings_module.Settings:
    """Settings as ``dockgate serve`` would build them from these environment values."""
    values = {"DOCKGATE_LISTEN": listen, "DOCKGATE_UPSTREAM": upstream, **env}
    return settings_module.load(None, values)


@contextlib.contextmanager
def run_proxy(upstream: str, decider: Decider | None = None, listen: str = "tcp://127.0.0.1:0",
              **env: str) -> Iterator[RunningProxy]:
    """Run ``server.Proxy`` (AllowAll by default) in a thread; shut it down afterwards."""
    config = make_settings(upstream, listen, **env)
    proxy = Proxy(config, decider or AllowAll())
    loop = uvloop.new_event_loop()
    started = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            try:
                await proxy.start()
            except BaseException as error:  # reported to the test thread below
                errors.append(error)
            started.set()

        loop.run_until_complete(start())
        if not errors:
            loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(10)
    if errors:
        thread.join(5)
        raise errors[0]
    tcp = [a for a in proxy.bound if a.startswith("tcp://")]
    port = int(tcp[0].rsplit(":", 1)[1]) if tcp else 0
    running = RunningProxy(proxy, loop, port, thread, list(proxy.bound))
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(proxy.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@dataclass
class Reply:
    """One response as an independent parser (h11) read it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A blocking TCP connection to the proxy on 127.0.0.1."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_replies(sock: socket.socket, requests: list[tuple[str, str]]) -> list[Reply]:
    """Read the responses to ``requests`` ((method, target) sent on ``sock``), in order."""
    conn = h11.Connection(h11.CLIENT)
    replies: list[Reply] = []
    for method, target in requests:
        conn.send(h11.Request(method=method, target=target, headers=[("Host", "docker")]))
        conn.send(h11.EndOfMessage())
        reply = Reply(0, {}, b"")
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(1 << 20))
            elif isinstance(event, h11.Response):
                reply.status = event.status_code
                reply.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        reply.body = bytes(body)
        replies.append(reply)
        if conn.their_state is not h11.DONE or conn.our_state is not h11.DONE:
            break
        conn.start_next_cycle()
    return replies


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closes (after any unread bytes) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def open_fds() -> int:
    """File descriptors this process holds (the in-process proxy's included)."""
    return len(os.listdir("/proc/self/fd"))


class EventClient:
    """A client following one events stream (``GET target``) on a raw socket, read with h11.

    ``source``: the local address to connect from (a policy may tell clients by it).
    """

    def __init__(self, port: int, target: str, source: str | None = None) -> None:
        if source is None:
            self.sock = connect(port)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                                 source_address=(source, 0))
        self.sock.settimeout(10)
        self.h11 = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=target, headers=[("Host", "docker")])
        self.sock.sendall(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.newlines = 0
        self.ended = False

    def _next(self) -> None:
        event = self.h11.next_event()
        if event is h11.NEED_DATA:
            self.h11.receive_data(self.sock.recv(65536))
        elif isinstance(event, h11.Response):
            self.status = event.status_code
            self.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            self.body += event.data
            self.newlines += event.data.count(b"\n")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            self.ended = True

    def head(self) -> int:
        while not self.status:
            self._next()
        return self.status

    def lines(self, count: int) -> list[bytes]:
        """The first ``count`` lines of the body (waiting for them)."""
        while self.newlines < count and not self.ended:
            self._next()
        return bytes(self.body).splitlines(keepends=True)[:count]

    def read_until(self, data: bytes) -> None:
        while data not in self.body and not self.ended:
            self._next()
        assert data in self.body

    def until_end(self) -> bytes:
        while not self.ended:
            self._next()
        return bytes(self.body)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def followers(port: int, target: str, count: int,
              source: str | None = None) -> Iterator[list[EventClient]]:
    """``count`` clients following ``GET target``, each past its 200 head; closed after."""
    clients = [EventClient(port, target, source) for _ in range(count)]
    try:
        for client in clients:
            assert client.head() == 200
        yield clients
    finally:
        for client in clients:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake Docker daemon that records requests.")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--record", required=True, help="file to append one JSON line per "
                        "request to")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    daemon = FakeDaemon(args.socket, record_file=args.record).start()
    print(f"fake daemon listening on {args.socket}", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
