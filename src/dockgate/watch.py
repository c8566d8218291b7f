"""Reload the policy when a file it read changes (a small hook of the shell).

A policy's image lists (``images_from:``) are rewritten by another process, the
MCP relay, which runs in another container and cannot signal dockgate. So every
serving process compares, every ``WATCH_SECONDS``, the status of those files
(inode, size, mtime: the relay's atomic rename makes a new inode) with the
stamps recorded when the current policy read them, and on a difference reloads
exactly as SIGHUP does: the new decider is swapped in for the next request, and
open connections, streams and hijacked sessions go on as they were. Comparing
with what the policy read, not with the previous poll, means a rewrite between
loading and the first poll is not missed. A new file that does not load keeps
the current policy (``Proxy.reload`` logs why) and is not retried until it
changes again. One ``stat`` per file a second costs nothing measurable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Protocol

from dockgate.decision import Decider
from dockgate.policy_decider import PolicyDecider
from dockgate.policy_owner import stamp_of

WATCH_SECONDS = 1.0

Stamps = tuple[tuple[str, tuple[int, int, int] | None], ...]


class Reloadable(Protocol):
    @property
    def decider(self) -> Decider: ...

    def reload(self, build: Callable[[], Decider]) -> None: ...


def watched(decider: Decider) -> Stamps:
    """The files whose change reloads this decider, with their stamps as it read them."""
    return decider.watched if isinstance(decider, PolicyDecider) else ()


def current(files: Stamps) -> Stamps:
    """The same files' stamps now (None for a file that does not exist)."""
    found: list[tuple[str, tuple[int, int, int] | None]] = []
    for path, _ in files:
        try:
            found.append((path, stamp_of(os.stat(path))))
        except OSError:
            found.append((path, None))
    return tuple(found)


async def watch(proxy: Reloadable, build: Callable[[], Decider],
                interval: float = WATCH_SECONDS) -> None:
    """Reload ``proxy`` with ``build`` whenever a watched file changes; runs until cancelled."""
    failed: Stamps | None = None
    while True:
        await asyncio.sleep(interval)
        read = watched(proxy.decider)
        now = current(read)
        if now not in (read, failed):
            proxy.reload(build)
            failed = now if watched(proxy.decider) != now else None
