"""Listeners and peer identity: binding TCP, TLS and unix sockets, and who is calling.

Binding is separate from serving so that the worker supervisor binds every
listener once and its forked workers serve the same sockets. ``client_for``
turns a transport into a ``decision.Client``: SO_PEERCRED on unix sockets, the
peer address on TCP, the certificate's CN and SANs on TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import resource
import socket
import ssl
import stat
import struct
from typing import Any, Protocol
from urllib.parse import urlsplit

from dockgate import startup, systemd
from dockgate.decision import Client
from dockgate.errors import ConfigError
from dockgate.settings import Settings

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5; Python 3.11 lacks the name


class Identifier(Protocol):
    """Tells which container a peer is (``containers.ContainerDirectory``)."""

    def identify(self, client: Client, pidfd: int | None = None) -> Client: ...


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


def client_for(listener: Listener, transport: asyncio.BaseTransport,
               directory: Identifier | None = None) -> Client:
    """What the listener knows about who is on the other end of ``transport``.

    With a ``directory`` (some client rule names containers), also which container
    the peer is: a lookup in memory, plus reading ``/proc/PID/cgroup`` on unix sockets.
    """
    if listener.kind == "unix":
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except (OSError, AttributeError):
            client = Client(listener.url, "unix")
            return directory.identify(client) if directory is not None else client
        pid, uid, gid = struct.unpack("3i", creds)
        client = Client(listener.url, "unix", uid=uid, gid=gid, pid=pid)
        if directory is None:
            return client
        pidfd = peer_pidfd(sock)
        try:
            return directory.identify(client, pidfd)
        finally:
            close_pidfd(pidfd)
    client = _network_client(listener, transport)
    return directory.identify(client) if directory is not None else client


def peer_pidfd(sock: Any) -> int | None:
    """A pidfd of a unix socket's peer (SO_PEERPIDFD), or None where the kernel has none.

    It pins the peer process: a pid alone may name another process once the peer exits.
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    except (OSError, AttributeError):
        return None
    fd = int.from_bytes(raw, "little", signed=True)
    return fd if fd >= 0 else None


def close_pidfd(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _network_client(listener: Listener, transport: asyncio.BaseTransport) -> Client:
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


