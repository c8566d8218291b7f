"""Diagnostics: the ``dockgate`` logger tree, as text or JSON lines, on stderr.

Diagnostics are filtered by ``LOG_LEVEL`` and formatted as text or one JSON
object per line (``--log-format``). In JSON they follow the audit trail's
schema (``shell/audit.py``): ``time`` as RFC 3339 UTC with milliseconds,
``level``, ``pid``, ``event`` (always ``"log"`` here), then ``logger``,
``message`` and, for a failure, ``exception``; so one stream of lines has one
schema and every key one type. The audit trail has its own switch
(``DOCKGATE_AUDIT``) and does not go through ``logging``: see ``shell/audit.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from dockgate.shell import audit


class JSONFormatter(logging.Formatter):
    """One JSON object per line, in the audit trail's schema."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": audit.timestamp(record.created),
            "level": record.levelname.lower(),
            "pid": os.getpid(),
            "event": "log",
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"))


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
