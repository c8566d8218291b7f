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
Audit lines are collected and written once per event-loop iteration, so a burst
of requests costs one write system call, and no line waits longer than the
current iteration. Each write holds whole lines and at most ``PIPE_BUF`` bytes
(unless one line is longer): with ``--workers`` several processes share stderr,
and writes that size to a pipe are atomic, so their lines never interleave.
Every record carries the ``pid`` of the process that wrote it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

AUDIT = logging.getLogger("dockgate.audit")
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic (Linux: 4096)


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
    """Writes audit lines to a stream, batched per event-loop iteration."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []

    def write(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) > 1:
            return  # a flush is already scheduled
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # not on the event loop: nothing to batch with
            return
        loop.call_soon(self.flush)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        batch: list[str] = []
        size = 0
        for line in lines:
            if batch and size + len(line) > PIPE_BUF:
                self._emit(batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._emit(batch)

    def _emit(self, batch: list[str]) -> None:
        self.stream.write("".join(batch))
        self.stream.flush()


class _Destination:
    """Where audit lines go; one per process, set by ``configure`` or ``audit_to``."""

    writer: AuditWriter | None = None
    pid: int = os.getpid()


_destination = _Destination()


def _forked() -> None:
    # A forked worker starts with its parent's pending lines, which the parent writes.
    _destination.pid = os.getpid()
    if _destination.writer is not None:
        _destination.writer = AuditWriter(_destination.writer.stream)


os.register_at_fork(after_in_child=_forked)


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


def flush() -> None:
    """Write the pending audit lines now: the process is about to exit."""
    if _destination.writer is not None:
        _destination.writer.flush()


def audit_to(writer: AuditWriter | None) -> None:
    """Send audit lines to ``writer`` (None: nowhere), whatever the log level."""
    _destination.writer = writer


def _unsupported(value: object) -> object:
    raise TypeError(f"cannot write {type(value).__name__} to the audit trail")


# json.dumps with non-default separators builds a JSONEncoder, and JSONEncoder.encode
# builds a C encoder, on every call; one C encoder made once saves both on each
# request (a quarter of the audit line's cost). ASCII output also makes a line's
# length in characters its length in bytes, which PIPE_BUF counts.
def _make_encoder() -> Callable[[dict[str, Any]], str]:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # CPython without the _json accelerator
        return json.JSONEncoder(separators=(",", ":"), default=_unsupported).encode
    # Arguments: markers (None: no cycle check, records are flat), default, string
    # encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan.
    iterencode = make(None, _unsupported, json.encoder.encode_basestring_ascii, None,
                      ":", ",", False, False, True)

    def encode(record: dict[str, Any]) -> str:
        return "".join(iterencode(record, 0))

    return encode


_encode = _make_encoder()


def audit(event: str, **fields: Any) -> None:
    """Write one audit record: ``{"time": ..., "pid": ..., "event": event, **fields}``."""
    writer = _destination.writer
    if writer is not None:
        record = {"time": round(time.time(), 3), "pid": _destination.pid, "event": event,
                  **fields}
        writer.write(_encode(record) + "\n")
