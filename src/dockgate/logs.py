"""Logging: diagnostics through ``logging`` (text or JSON), and the audit trail.

Two kinds of records, both on stderr:

* diagnostics on the ``dockgate`` logger tree, formatted as text or one JSON
  object per line (``--log-format``), filtered by ``LOG_LEVEL``;
* audit records on ``dockgate.audit``: always one JSON object per line, one per
  request (client, method, target, operation, decision, rule, reason, status,
  bytes in and out, duration), plus an ``open`` and a ``close`` record for every
  hijacked session or long-lived stream. They are logged at INFO, so
  ``LOG_LEVEL=warning`` silences them like Tecnativa's HAProxy request log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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


class _AuditFormatter(logging.Formatter):
    # The message already is the JSON record.
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


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
    AUDIT.handlers.clear()
    audit_handler = logging.StreamHandler(sys.stderr)
    audit_handler.setFormatter(_AuditFormatter())
    AUDIT.addHandler(audit_handler)
    AUDIT.propagate = False
    AUDIT.setLevel(level)


def audit_enabled() -> bool:
    return AUDIT.isEnabledFor(logging.INFO)


def audit(event: str, **fields: Any) -> None:
    """Write one audit record: ``{"time": ..., "event": event, **fields}``."""
    if AUDIT.isEnabledFor(logging.INFO):
        record = {"time": round(time.time(), 3), "event": event, **fields}
        AUDIT.info("%s", json.dumps(record, separators=(",", ":")))
