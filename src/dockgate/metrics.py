"""Prometheus metrics, served on ``--metrics-listen`` when it is set.

Kept small on purpose: a request counter labelled by operation, decision and
status (bounded label sets: operations come from the route table, never from
client input), and a gauge of open client connections.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server

from dockgate.errors import ConfigError

REQUESTS = Counter("dockgate_requests", "Requests answered, by operation, decision and status",
                   ["operation", "decision", "status"], registry=REGISTRY)
ACTIVE_CONNECTIONS = Gauge("dockgate_active_connections", "Open client connections",
                           registry=REGISTRY)


# labels() costs a lock and a tuple per call; the label sets are few, so keep the children.
_children: dict[tuple[str, str, int], Any] = {}


def count_request(operation: str, decision: str, status: int) -> None:
    key = (operation, decision, status)
    child = _children.get(key)
    if child is None:
        child = _children[key] = REQUESTS.labels(operation, decision, str(status))
    child.inc()


def serve(listen: str) -> None:
    """Serve /metrics on ``HOST:PORT`` from a background thread."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--metrics-listen {listen!r} must be HOST:PORT")
    start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
