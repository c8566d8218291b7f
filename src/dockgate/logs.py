"""Logging: diagnostics through ``logging`` (text or JSON), and the audit trail.

Two kinds of records, both on stderr:

* diagnostics on the ``dockgate`` logger tree, formatted as text or one JSON
  object per line (``--log-format``), filtered by ``LOG_LEVEL``;
* audit records: always one JSON object per line, one per request (client,
  method, target, operation, decision, rule, reason, status, bytes in and out,
  duration), plus an ``open`` and a ``close`` record for every hijacked session
  or long-lived stream. They count as INFO: ``LOG_LEVEL=warning`` silences
  them, like Tecnativa's HAProxy request log.

Why the audit trail does not go through ``logging.Logger.info``: it is written
once per request on the hot path, and a LogRecord (caller lookup, formatting,
a flush per record) cost about a sixth of the proxy's CPU time per ``/_ping``.
Audit lines are written to the stream directly and flushed once per event-loop
iteration, so a burst of requests costs one write system call, and no line
waits longer than the current iteration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, TextIO

AUDIT = logging.getLogger("dockgate.audit")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


class AuditWriter:
    """Writes audit lines to a stream, flushing at the end of the loop iteration."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._flush_scheduled = False

    def write(self, line: str) -> None:
        self.stream.write(line)
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.stream.flush()  # not on the event loop: nothing to batch with
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        self.stream.flush()


class _Destination:
    """Where audit lines go; one per process, set by ``configure`` or ``audit_to``."""

    writer: AuditWriter | None = None


_destination = _Destination()


def configure(level: str, fmt: str) -> None:
    """Install the handlers once; ``level`` is a Python level name, ``fmt`` text or json."""
    root = logging.getLogger("dockgate")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    AUDIT.setLevel(level)
    _destination.writer = (AuditWriter(sys.stderr) if AUDIT.isEnabledFor(logging.INFO)
                           else None)


def audit_to(writer: AuditWriter | None) -> None:
    """Send audit lines to ``writer`` (None: nowhere), whatever the log level."""
    _destination.writer = writer


def audit(event: str, **fields: Any) -> None:
    """Write one audit record: ``{"time": ..., "event": event, **fields}``."""
    writer = _destination.writer
    if writer is not None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        writer.write(json.dumps(record, separators=(",", ":")) + "\n")
