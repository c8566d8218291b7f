"""The admin listener (``--admin-listen HOST:PORT``) and the metrics port.

Separate from the API listeners on purpose: no policy applies here, and nothing
here reaches the daemon except a ``GET /_ping``. So a health check never
depends on a client policy (with per-client policies and no default, a probe
through an API listener is denied forever), and the API port needs no rule for
probes.

    GET /healthz   200 while the process serves (it answers: it is alive)
    GET /readyz    200 when the daemon answers /_ping with OK within
                   --connect-timeout, else 503 saying what failed
    GET /metrics   Prometheus metrics (see ``metrics``)
    anything else  404

``--metrics-listen HOST:PORT`` is the same server with ``/metrics`` only.

With ``--workers N`` the supervisor binds these sockets before forking (``bind``)
and every worker serves them, as with the API listeners; in multiprocess mode
whichever worker answers a scrape reports the whole proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from urllib.parse import urlsplit

from dockgate import liveview, metrics
from dockgate.errors import ConfigError
from dockgate.settings import Settings

MAX_HEAD = 8192          # an admin request head is a line and a few headers
READ_TIMEOUT = 5.0       # seconds a prober has to send its request head
ALL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# (socket, the paths it serves); bound by ``bind``, served by ``start``.
_bound: list[tuple[socket.socket, frozenset[str]]] = []


def _address(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} {value!r} must be HOST:PORT, e.g. 127.0.0.1:9102")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bind_one(value: str, flag: str) -> socket.socket:
    host, port = _address(value, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            why = "the port is in use by another process; choose another port or stop it"
        elif error.errno == errno.EADDRNOTAVAIL:
            why = "no interface of this machine has that address"
        else:
            why = error.strerror or str(error)
        raise ConfigError(f"cannot listen on {flag} {value}: {why}") from None
    sock.setblocking(False)
    return sock


def bind(settings: Settings) -> None:
    """Bind the admin and metrics sockets the settings ask for (ConfigError if one cannot)."""
    if _bound:
        return
    wanted = []
    if settings.admin_listen:
        wanted.append((settings.admin_listen, "--admin-listen", ALL_PATHS))
    if settings.metrics_listen:
        wanted.append((settings.metrics_listen, "--metrics-listen", frozenset({"/metrics"})))
    if wanted:
        metrics.enable(settings.workers)
    try:
        for value, flag, paths in wanted:
            _bound.append((_bind_one(value, flag), paths))
    except ConfigError:
        close()
        raise


def close() -> None:
    for sock, _paths in _bound:
        sock.close()
    _bound.clear()


async def start(settings: Settings) -> list[asyncio.Server]:
    """Serve the bound admin sockets (binding them first if nobody did)."""
    bind(settings)
    servers = []
    for sock, paths in _bound:
        handler = _Handler(settings, paths)
        servers.append(await asyncio.start_server(handler.serve, sock=sock))
    return servers


class _Handler:
    def __init__(self, settings: Settings, paths: frozenset[str]) -> None:
        self.settings = settings
        self.paths = paths

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            if liveview.enabled() and head.split(b" ", 2)[1:2] and \
                    head.split(b" ", 2)[1].startswith(b"/live"):
                await liveview.serve(head, writer)  # the live view's own answers
                return
            status, kind, body = await self.answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        method = head.split(b" ", 1)[0]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        if method != b"HEAD":
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def answer(self, head: bytes) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or len(head) > MAX_HEAD:
            return 400, text, b"bad request\n"
        method, target = parts[0], parts[1].decode("ascii", "replace")
        path = urlsplit(target).path
        if path not in self.paths:
            return 404, text, f"not found: the admin listener serves " \
                              f"{', '.join(sorted(self.paths))}\n".encode()
        if method not in (b"GET", b"HEAD"):
            return 405, text, b"use GET\n"
        if path == "/healthz":
            return 200, text, b"ok\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()
        problem = await daemon_problem(self.settings)
        if problem is None:
            return 200, text, b"ready: the daemon answers /_ping\n"
        return 503, text, f"not ready: {problem}\n".encode()


async def daemon_problem(settings: Settings) -> str | None:
    """Why the daemon does not answer ``GET /_ping`` with OK, or None when it does."""
    url = urlsplit(settings.upstream_url)
    where = settings.upstream_url
    timeout = settings.connect_timeout
    try:
        if url.scheme == "unix":
            opened = asyncio.open_unix_connection(url.path)
        else:
            opened = asyncio.open_connection(url.hostname, url.port)
        reader, writer = await asyncio.wait_for(opened, timeout)
    except (OSError, TimeoutError) as error:
        why = "timed out" if isinstance(error, TimeoutError) else (error.strerror or error)
        return f"cannot connect to the daemon at {where}: {why}"
    try:
        writer.write(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(4096), timeout)
    except (OSError, TimeoutError) as error:
        return f"the daemon at {where} did not answer /_ping ({error or 'timed out'})"
    finally:
        writer.close()
    status_line, _, rest = reply.partition(b"\r\n")
    if status_line.split(b" ")[1:2] == [b"200"] and rest.endswith(b"OK"):
        return None
    return f"the daemon at {where} answered /_ping with {status_line.decode(errors='replace')!r}"
