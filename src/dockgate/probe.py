"""The daemon probe at start: is the daemon there, may dockgate use it, what are its defaults.

Never fatal: a daemon that is down at start is normal (compose starts services in
any order) and dockgate answers 502 until it is up. But the usual causes of a
proxy that never works are named at once: no socket at that path, or a socket
whose group dockgate's user lacks (the image runs as uid 10001, the socket is
root:docker 0660).

It also says what the daemon does by default (``bodies.DaemonDefaults``): cgroup
v1 hosts default to cgroupns "host", so a body copied from inspect that restates it
asks for nothing more. The probe sends no request (it connects and closes), so the
daemon sees only what clients send.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from urllib.parse import urlsplit

from dockgate.bodies import STRICT, DaemonDefaults
from dockgate.settings import Settings


def _group_advice(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return ""
    try:
        name = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        name = str(info.st_gid)
    mode = stat.S_IMODE(info.st_mode)
    return (f"; the socket belongs to group {name} (gid {info.st_gid}, mode {mode:o}): run "
            f"dockgate with that group (compose: group_add: [\"{info.st_gid}\"]; docker run "
            f"--group-add {info.st_gid})")


def _cgroup_defaults() -> DaemonDefaults:
    """The daemon's cgroupns default, from this host's cgroup version.

    A unix-socket daemon runs on this kernel, and a container sees the host's cgroup
    version too: /sys/fs/cgroup/cgroup.controllers exists only on cgroup v2 (where
    the default is "private"); a v1 (or hybrid) hierarchy defaults to "host".
    """
    root = "/sys/fs/cgroup"
    if not os.path.isdir(root) or os.path.exists(os.path.join(root, "cgroup.controllers")):
        return STRICT
    return DaemonDefaults(cgroupns="host")


def daemon(settings: Settings) -> tuple[list[str], DaemonDefaults]:
    """Startup warnings about the daemon, and its defaults (strict when unknown).

    It only connects (and closes): no request reaches the daemon, so what it
    records, and the audit trail, hold the clients' requests alone.
    """
    url = urlsplit(settings.upstream_url)
    where = settings.upstream_url
    if url.scheme == "unix" and not os.path.exists(url.path):
        return [f"the daemon socket {url.path} does not exist: every request gets 502 "
                "until it does (is the socket mounted? set SOCKET_PATH or --upstream)"], STRICT
    try:
        if url.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(settings.connect_timeout)
                sock.connect(url.path)
        else:
            socket.create_connection((url.hostname or "", url.port or 0),
                                     settings.connect_timeout).close()
    except PermissionError:
        return [f"cannot connect to the daemon at {where}: permission denied"
                f"{_group_advice(url.path)}"], STRICT
    except OSError as error:
        why = "timed out" if isinstance(error, TimeoutError) else (
            error.strerror or errno.errorcode.get(error.errno or 0) or str(error))
        return [f"the daemon at {where} does not answer ({why}): requests get 502 until it "
                "does"], STRICT
    # Over TCP the daemon may run on another kernel: its defaults are unknown.
    return [], _cgroup_defaults() if url.scheme == "unix" else STRICT
