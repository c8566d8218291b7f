"""Reload the policy when a file it read changes (a small hook of the shell).

A policy's image lists (``images_from:``) are rewritten by another process, the
MCP relay, which runs in another container and cannot signal dockgate. So every
serving process polls the status of those files every ``WATCH_SECONDS`` and,
when one changed (size, mtime or inode: the relay's atomic rename makes a new
inode), reloads exactly as SIGHUP does: the new decider is swapped in for the
next request, and open connections, streams and hijacked sessions go on as
they were. An invalid new file keeps the current policy (``Proxy.reload`` logs
why). One ``stat`` per file a second costs nothing measurable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Protocol

from dockgate.decision import Decider
from dockgate.policy_decider import PolicyDecider

WATCH_SECONDS = 1.0

Signature = tuple[tuple[str, int, int, int] | tuple[str], ...]


class Reloadable(Protocol):
    @property
    def decider(self) -> Decider: ...

    def reload(self, build: Callable[[], Decider]) -> None: ...


def watched(decider: Decider) -> tuple[str, ...]:
    """The files whose change reloads this decider."""
    return decider.watched if isinstance(decider, PolicyDecider) else ()


def signature(paths: tuple[str, ...]) -> Signature:
    """What identifies the current content of each file (a missing one included)."""
    found: list[tuple[str, int, int, int] | tuple[str]] = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            found.append((path,))
            continue
        found.append((path, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(found)


async def watch(proxy: Reloadable, build: Callable[[], Decider],
                interval: float = WATCH_SECONDS) -> None:
    """Reload ``proxy`` with ``build`` whenever a watched file changes; runs until cancelled."""
    seen = signature(watched(proxy.decider))
    while True:
        await asyncio.sleep(interval)
        paths = watched(proxy.decider)
        now = signature(paths)
        if now != seen and paths:
            proxy.reload(build)
            now = signature(watched(proxy.decider))
        seen = now
