"""Learn mode, the shell side: appends one JSON line per decided request to ``--learn FILE``.

The record itself is built by the pure ``policy_learn.observation``; this module
only writes it. Lines are collected and written once per event-loop iteration
(like the audit trail), with ``O_APPEND`` so the workers of ``--workers N``
append whole lines to the same file without overwriting each other.

The file is bounded (``--learn-max-bytes``): before each write the file's size
is read; a write that would pass the bound is not made, one last
``{"event": "learn.full"}`` line is appended instead, a warning is logged, and
recording stops (serving goes on). ``dockgate policy suggest`` says so when it
reads such a file: the policy covers only what was recorded before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Protocol

from dockgate import liveview, policy_learn
from dockgate.decision import Client, Decision, Facts, Request
from dockgate.errors import ConfigError
from dockgate.settings import Settings

log = logging.getLogger("dockgate.learn")

FULL_EVENT = "learn.full"


class Recorder:
    """Appends learn records to one file, up to ``max_bytes``."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.full = False
        self._lines: list[str] = []
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        except OSError as error:
            raise ConfigError(f"--learn {path}: cannot open the recording ({error})") from None

    def observe(self, client: Client, request: Request, facts: Facts,
                decision: Decision) -> None:
        """Record one decided request (written at the end of this loop iteration)."""
        if self.full:
            return
        record = policy_learn.observation(client, request, facts, decision, time.time())
        self._lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        if len(self._lines) > 1:
            return  # a flush is already scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        """Write the pending lines, unless they would pass the bound."""
        lines, self._lines = self._lines, []
        if not lines or self.full:
            return
        data = "".join(lines).encode()
        try:
            size = os.fstat(self._fd).st_size
            if size + len(data) > self.max_bytes:
                self.full = True
                log.warning("learn recording %s reached --learn-max-bytes (%d bytes): "
                            "recording stopped, serving goes on", self.path, self.max_bytes)
                data = (json.dumps({"event": FULL_EVENT, "time": round(time.time(), 3),
                                    "max_bytes": self.max_bytes}) + "\n").encode()
            os.write(self._fd, data)
        except OSError as error:
            self.full = True
            log.error("learn recording %s failed, recording stopped: %s", self.path, error)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


class Observer(Protocol):
    """Receives every decided request: the learn recorder, the live view's feed."""

    def observe(self, client: Client, request: Request, facts: Facts,
                decision: Decision) -> None: ...


class _Both:
    def __init__(self, observers: list[Observer]) -> None:
        self.observers = observers

    def observe(self, client: Client, request: Request, facts: Facts,
                decision: Decision) -> None:
        for observer in self.observers:
            observer.observe(client, request, facts, decision)


def recorder(settings: Settings) -> Observer | None:
    """What the shell hands each decision to: ``--learn``'s file and/or the live view."""
    found: list[Observer] = []
    if settings.learn:
        found.append(Recorder(settings.learn, settings.learn_max_bytes))
    if settings.admin_live:
        found.append(liveview.FEED)
    if not found:
        return None
    return found[0] if len(found) == 1 else _Both(found)
