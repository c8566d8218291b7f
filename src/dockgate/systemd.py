"""systemd integration: inherited listening sockets and readiness notification.

Socket activation (sd_listen_fds(3)): a ``.socket`` unit binds the sockets, then
starts the service with them open as descriptors 3, 4, ... and sets
``LISTEN_PID`` (the pid they are meant for: a variable inherited by some other
process is ignored), ``LISTEN_FDS`` (how many) and ``LISTEN_FDNAMES``
(colon-separated, one name per descriptor, from ``FileDescriptorName=``; the
socket unit's name when unset).

dockgate uses them through ``fd://`` listener URLs, as dockerd's ``-H fd://``:

- ``fd://`` takes every inherited socket;
- ``fd://NAME`` takes those named NAME.

Each inherited socket becomes a listener named by its own address
(``unix:///run/dockgate/dockgate.sock``, ``tcp://127.0.0.1:2375``), so client
identification and a policy file's ``listeners:`` keys work exactly as for a
socket dockgate bound itself. The socket unit owns the socket files (mode,
owner and group are its ``SocketMode=``/``SocketUser=``/``SocketGroup=``):
dockgate neither changes nor removes them. An inherited socket that no
``fd://`` listener takes is an error, as is an ``fd://`` listener with nothing
to take: either would leave clients waiting on a socket nobody accepts on.

Readiness (sd_notify(3)): with ``Type=notify`` systemd waits for ``READY=1`` on
the unix datagram socket named by ``NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace). dockgate sends it once its listeners accept connections,
and ``STOPPING=1`` when it begins a graceful shutdown. The protocol is one
datagram of newline-separated ``KEY=VALUE`` lines; writing it here costs a few
lines, a library would cost a dependency.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from urllib.parse import urlsplit

from dockgate.errors import ConfigError

log = logging.getLogger("dockgate")

FIRST_FD = 3  # SD_LISTEN_FDS_START: descriptors 0-2 are stdin, stdout and stderr
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class Inherited:
    """The listening sockets systemd passed to this process, claimed by ``fd://`` listeners."""

    def __init__(self, sockets: list[tuple[str, socket.socket]]) -> None:
        self.unclaimed = sockets

    @classmethod
    def from_env(cls, env: MutableMapping[str, str], pid: int) -> Inherited:
        """Take the sockets ``env`` describes for ``pid``; the variables are removed from it.

        Removing them (sd_listen_fds' ``unset_environment``) keeps a process started
        later from believing the descriptors are its own. ConfigError on values
        systemd would never set.
        """
        values = {name: env.pop(name, None) for name in VARIABLES}
        if values["LISTEN_PID"] is None or values["LISTEN_FDS"] is None:
            return cls([])
        try:
            meant_for = int(values["LISTEN_PID"])
            count = int(values["LISTEN_FDS"])
        except ValueError:
            raise ConfigError(f"LISTEN_PID={values['LISTEN_PID']!r} and LISTEN_FDS="
                              f"{values['LISTEN_FDS']!r} must be numbers (systemd sets "
                              "them for socket activation)") from None
        if meant_for != pid:
            return cls([])  # inherited from a parent that was socket-activated itself
        if count < 0:
            raise ConfigError(f"LISTEN_FDS={count} must not be negative")
        raw_names = values["LISTEN_FDNAMES"]
        # Without LISTEN_FDNAMES every descriptor is "unknown", as sd_listen_fds_with_names says.
        names = raw_names.split(":") if raw_names is not None and count else ["unknown"] * count
        if len(names) != count:
            raise ConfigError(f"LISTEN_FDNAMES names {len(names)} descriptors but "
                              f"LISTEN_FDS={count}")
        sockets = []
        for offset, name in enumerate(names):
            sockets.append((name, _listening_socket(FIRST_FD + offset, name)))
        return cls(sockets)

    def claim(self, url: str) -> list[tuple[str, socket.socket]]:
        """The sockets ``fd://`` or ``fd://NAME`` takes, each with its own address as a URL."""
        name = urlsplit(url).netloc
        taken = [(n, s) for n, s in self.unclaimed if not name or n == name]
        if not taken:
            available = ", ".join(sorted({n for n, _ in self.unclaimed})) or "none"
            raise ConfigError(f"listener {url!r}: no inherited socket to take (unclaimed "
                              f"names: {available}); fd:// listeners need socket "
                              "activation: start dockgate from a systemd .socket unit "
                              "(deploy/systemd/)")
        self.unclaimed = [(n, s) for n, s in self.unclaimed if (n, s) not in taken]
        return [(address_url(sock), sock) for _, sock in taken]

    def check_all_claimed(self) -> None:
        """ConfigError if a socket was passed but no listener takes it."""
        if self.unclaimed:
            names = ", ".join(f"{name} ({address_url(sock)})" for name, sock in self.unclaimed)
            raise ConfigError(f"systemd passed sockets no listener takes: {names}; add "
                              "--listen fd:// (every inherited socket) or fd://NAME")

    def close(self) -> None:
        for _, sock in self.unclaimed:
            sock.close()
        self.unclaimed = []


def _listening_socket(fd: int, name: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    except OSError as error:
        raise ConfigError(f"inherited descriptor {fd} ({name}) is not a socket: "
                          f"{error}") from None
    accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if (sock.type != socket.SOCK_STREAM or not accepting
            or sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
            # Python gives an abstract-namespace address as bytes, a path as str.
            or (sock.family == socket.AF_UNIX and not _is_path(sock.getsockname()))):
        sock.detach()
        raise ConfigError(f"inherited descriptor {fd} ({name}) is not a listening TCP or "
                          "unix stream socket with a path; use ListenStream=PORT, "
                          "ADDRESS:PORT or /PATH in the socket unit")
    sock.set_inheritable(False)  # systemd passes them inheritable: not to our children
    sock.setblocking(False)
    return sock


def _is_path(address: object) -> bool:
    return isinstance(address, str) and address.startswith("/")


def address_url(sock: socket.socket) -> str:
    """The listener URL of a bound socket: unix:///PATH or tcp://HOST:PORT."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix://{address}"
    host, port = address[0], address[1]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to the service manager; False when there is none.

    A failure to notify is logged, never raised: the proxy serves either way, and
    systemd reports a unit that never became ready.
    """
    target = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        target = "\0" + target[1:]
    elif not target.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), target)
    except OSError as error:
        log.warning("cannot notify the service manager at NOTIFY_SOCKET=%r: %s",
                    target.replace("\0", "@"), error)
        return False
    return True
