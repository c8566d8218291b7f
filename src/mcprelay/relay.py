"""The relay's one sequence: validate → write env file, image list, catalog → save state → restart.

Validation happens before any write, so invalid input leaves every file as it
was. The restart comes last: when it fails the new catalog is already in place
(the gateway reads it on its next start) and the caller gets the restart's error
class, never a success.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcprelay.catalog import Server, write_outputs
from mcprelay.dockerhttp import Endpoint
from mcprelay.restart import Restarter, RestartOptions
from mcprelay.state import apply_event, load_state, save_state

DEFAULT_DISPLAY_NAME = "Approved MCP servers"


@dataclass(frozen=True)
class RelayConfig:
    catalog: Path
    env_file: Path | None = None
    state: Path | None = None
    images_file: Path | None = None  # dockgate's approved-image list (images_from:)
    display_name: str = DEFAULT_DISPLAY_NAME
    endpoint: Endpoint | None = None
    restart: RestartOptions | None = None  # None: write files only (--no-restart)


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.lock = threading.Lock()  # one event at a time: files and restarts never interleave

    def apply(self, servers: Sequence[Server]) -> dict[str, Any]:
        """Make ``servers`` the approved set; the outcome as a JSON-ready dict."""
        with self.lock:
            return self._apply(list(servers))

    def handle_event(self, event: object) -> dict[str, Any]:
        """Apply one hook event to the stored approved set."""
        with self.lock:
            current = load_state(self.config.state) if self.config.state else []
            kind, name, servers = apply_event(current, event)
            outcome = self._apply(servers)
            return {"event": kind, "server": name, **outcome}

    def _apply(self, servers: list[Server]) -> dict[str, Any]:
        config = self.config
        write_outputs(servers, config.catalog, config.env_file, config.display_name,
                      config.images_file)
        if config.state is not None:
            save_state(config.state, servers)
        outcome: dict[str, Any] = {
            "status": "ok",
            "catalog": str(config.catalog),
            "servers": sorted(server.name for server in servers),
            "restarted": None,
        }
        if config.restart is not None and config.endpoint is not None:
            result = Restarter(config.endpoint, config.restart).run()
            outcome["restarted"] = {"gateway": result.gateway, "attempts": result.attempts,
                                    "started_at": result.started_at,
                                    "seconds": round(result.seconds, 3)}
        return outcome
