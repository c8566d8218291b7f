"""The daemon probe at start: is the daemon there, may dockgate use it, what are its defaults.

Never fatal: a daemon that is down at start is normal (compose starts services in
any order) and dockgate answers 502 until it is up. But the usual causes of a
proxy that never works are named at once: no socket at that path, or a socket
whose group dockgate's user lacks (the image runs as uid 10001, the socket is
root:docker 0660).

The /info answer also says what the daemon does by default (``bodies.DaemonDefaults``):
cgroup v1 hosts default to cgroupns "host", so a body copied from inspect that
restates it asks for nothing more.
"""

from __future__ import annotations

import errno
import grp
import http.client
import json
import os
import socket
import stat
from urllib.parse import urlsplit

from dockgate.bodies import STRICT, DaemonDefaults
from dockgate.settings import Settings


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


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


def daemon(settings: Settings) -> tuple[list[str], DaemonDefaults]:
    """Startup warnings about the daemon, and its defaults (strict when unknown)."""
    url = urlsplit(settings.upstream_url)
    where = settings.upstream_url
    if url.scheme == "unix":
        if not os.path.exists(url.path):
            return [f"the daemon socket {url.path} does not exist: every request gets 502 "
                    "until it does (is the socket mounted? set SOCKET_PATH or --upstream)"
                    ], STRICT
        connection: http.client.HTTPConnection = _UnixConnection(url.path,
                                                                 settings.connect_timeout)
    else:
        connection = http.client.HTTPConnection(url.hostname or "", url.port,
                                                timeout=settings.connect_timeout)
    try:
        connection.request("GET", "/info")
        response = connection.getresponse()
        body = response.read()
    except PermissionError:
        return [f"cannot connect to the daemon at {where}: permission denied"
                f"{_group_advice(url.path)}"], STRICT
    except OSError as error:
        why = "timed out" if isinstance(error, TimeoutError) else (
            error.strerror or errno.errorcode.get(error.errno or 0) or str(error))
        return [f"the daemon at {where} does not answer ({why}): requests get 502 until it "
                "does"], STRICT
    finally:
        connection.close()
    if response.status != 200:
        return [f"the daemon at {where} answered /info with {response.status}"], STRICT
    try:
        info = json.loads(body)
    except ValueError:
        return [f"the daemon at {where} answered /info with something other than JSON"], STRICT
    cgroup_v1 = isinstance(info, dict) and info.get("CgroupVersion") == "1"
    return [], DaemonDefaults(cgroupns="host" if cgroup_v1 else "private")
