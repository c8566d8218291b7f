"""Startup errors that name the address or path and say what to do.

``bind_problem`` turns the OSError of binding a listener into one line: the
listener URL, what is wrong in words (not ``[Errno 98]``) and the fix. The shell
raises it as a ``ListenError`` (an OSError, so the callers that report "cannot
listen" need not change).
"""

from __future__ import annotations

import errno
import os
import stat


class ListenError(OSError):
    """A listener cannot be bound; ``str()`` is the whole explanation."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _what_is_at(path: str) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    return "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(
        mode) else "a file that is not a socket"


def bind_problem(url: str, kind: str, port: int, path: str, error: OSError) -> str:
    """``url: what is wrong; what to do``."""
    code = error.errno
    if kind == "unix":
        occupant = _what_is_at(path)
        if occupant is not None:
            return (f"{url}: {path} is {occupant}, not a socket: dockgate replaces only "
                    "stale sockets; remove it or choose another path")
        directory = os.path.dirname(path) or "."
        if code == errno.ENOENT:
            return f"{url}: the directory {directory} does not exist; create it first"
        if code == errno.EACCES:
            return (f"{url}: permission denied creating the socket in {directory}; run "
                    "dockgate as a user that may write there, or choose another path")
    elif code == errno.EADDRINUSE:
        return (f"{url}: port {port} is already in use by another process (EADDRINUSE); "
                "stop it, or choose another port with --listen / DOCKGATE_LISTEN")
    elif code == errno.EADDRNOTAVAIL:
        return (f"{url}: no interface of this machine has that address (EADDRNOTAVAIL); "
                "listen on one of its addresses, 0.0.0.0 or [::]")
    elif code == errno.EACCES and port < 1024:
        return (f"{url}: port {port} is below 1024, which needs root or "
                "CAP_NET_BIND_SERVICE; choose a port of 1024 or more")
    why = error.strerror or str(error)
    return f"{url}: {why} ({errno.errorcode.get(code or 0, 'error')})"


def host_form(host: str) -> str:
    """An address as a URL writes it: IPv6 in brackets (``[::]``, not ``::``)."""
    return f"[{host}]" if ":" in host else host
