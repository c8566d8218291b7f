"""Prometheus metrics, served on the admin listener (``/metrics``) or ``--metrics-listen``.

What is measured (label sets are bounded: operations come from the route table,
never from client input; kinds and results are fixed words):

    dockgate_requests_total{operation,decision,status}        requests answered
    dockgate_request_duration_seconds{operation,decision}     latency histogram
    dockgate_upstream_errors_total{kind}   connect, lost (before the answer), broken (mid-answer)
    dockgate_reloads_total{result}                           SIGHUP reloads: ok, failed
    dockgate_open_streams{kind}           stream (logs/events follow), session (hijacked)
    dockgate_active_connections                               open client connections
    dockgate_build_info{version,python}                       always 1

Nothing is created until ``enable`` runs (``serve`` calls it when a listener
serves metrics), so a proxy without metrics pays one attribute test per call.
With ``--workers N`` (N > 1) ``enable`` switches prometheus_client to its
multiprocess mode before importing it: every worker writes its values to files
in a private directory, and whichever worker answers a scrape adds them up, so
counts are those of the whole proxy. The mode is chosen when prometheus_client
is first imported, which is why this module imports it only inside ``enable``.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from typing import Any

from dockgate import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets: a decision alone is tens of microseconds; a restart takes seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0)


class _State:
    """The metric objects once enabled (None before)."""

    def __init__(self) -> None:
        self.enabled = False
        self.directory: str | None = None  # the multiprocess directory this process made
        self.requests: Any = None
        self.latency: Any = None
        self.upstream_errors: Any = None
        self.reloads: Any = None
        self.streams: Any = None
        self.connections: Any = None
        # labels() costs a lock and a tuple per call; the label sets are few: keep them.
        self.children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


_state = _State()


class _ConnectionGauge:
    """``ACTIVE_CONNECTIONS.inc()``/``.dec()`` for the shell; counts once enabled."""

    def inc(self) -> None:
        if _state.enabled:
            _state.connections.inc()

    def dec(self) -> None:
        if _state.enabled:
            _state.connections.dec()


ACTIVE_CONNECTIONS = _ConnectionGauge()


def enable(workers: int) -> None:
    """Create the metrics; before forking workers, and only once per process."""
    if _state.enabled:
        return
    if workers > 1:
        _state.directory = tempfile.mkdtemp(prefix="dockgate-metrics-")
        os.environ[MULTIPROC_ENV] = _state.directory
    # The mode is read when prometheus_client is first imported: hence here, not above.
    from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

    _state.requests = Counter("dockgate_requests", "Requests answered, by operation, "
                              "decision and status", ["operation", "decision", "status"])
    _state.latency = Histogram("dockgate_request_duration_seconds", "Time from the request "
                               "head to the end of the answer, by operation and decision",
                               ["operation", "decision"], buckets=BUCKETS)
    _state.upstream_errors = Counter("dockgate_upstream_errors", "Failures talking to the "
                                     "daemon: connect, lost (before an answer), broken "
                                     "(during one)", ["kind"])
    _state.reloads = Counter("dockgate_reloads", "SIGHUP reloads, by result (ok, failed)",
                             ["result"])
    _state.streams = Gauge("dockgate_open_streams", "Open long-lived streams (stream) and "
                           "hijacked sessions (session)", ["kind"], multiprocess_mode="livesum")
    _state.connections = Gauge("dockgate_active_connections", "Open client connections",
                               multiprocess_mode="livesum")
    build = Gauge("dockgate_build_info", "dockgate's version and Python, always 1",
                  ["version", "python"], multiprocess_mode="max")
    build.labels(__version__, platform.python_version()).set(1)
    for kind in ("connect", "lost", "broken"):
        _state.upstream_errors.labels(kind)
    for result in ("ok", "failed"):
        _state.reloads.labels(result)
    for kind in ("stream", "session"):
        _state.streams.labels(kind)
    _state.enabled = True


def count_request(operation: str, decision: str, status: int,
                  seconds: float | None = None) -> None:
    if not _state.enabled:
        return
    key = (operation, decision, status)
    children = _state.children.get(key)
    if children is None:
        children = _state.children[key] = (
            _state.requests.labels(operation, decision, str(status)),
            _state.latency.labels(operation, decision))
    children[0].inc()
    if seconds is not None:
        children[1].observe(seconds)


def count_upstream_error(kind: str) -> None:
    """``kind``: connect, lost or broken."""
    if _state.enabled:
        _state.upstream_errors.labels(kind).inc()


def count_reload(result: str) -> None:
    """``result``: ok or failed."""
    if _state.enabled:
        _state.reloads.labels(result).inc()


def stream_opened(kind: str) -> None:
    """``kind``: stream or session."""
    if _state.enabled:
        _state.streams.labels(kind).inc()


def stream_closed(kind: str) -> None:
    if _state.enabled:
        _state.streams.labels(kind).dec()


def worker_exited(pid: int) -> None:
    """A worker is gone: drop its live gauges (its counters keep counting in the sum)."""
    if _state.directory is not None:
        from prometheus_client import multiprocess  # noqa: PLC0415 (see enable)

        multiprocess.mark_process_dead(pid, _state.directory)  # type: ignore[no-untyped-call]


def render() -> bytes:
    """The exposition text of every metric (every worker's, in multiprocess mode)."""
    from prometheus_client import (  # noqa: PLC0415 (see enable)
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def cleanup() -> None:
    """Remove the multiprocess directory this process made (at exit)."""
    if _state.directory is not None:
        shutil.rmtree(_state.directory, ignore_errors=True)
