"""Restart the MCP gateway through the Docker API and wait until it runs again.

Sequence (each step's failure is its own error class, see errors.py):

1. readiness ``inspect``: ``GET /containers/NAME/json`` records StartedAt (and
   turns a missing gateway into GatewayMissingError before anything happens).
2. ``POST /containers/NAME/restart?t=T`` (unversioned, like the seed's client).
   The daemon answers only after stopping (up to T seconds) and starting the
   container, so the HTTP timeout is T + a start allowance, never T alone.
   Transient failures (unreachable, 502/503/504) are retried with exponential
   backoff; a timeout is not retried, the restart may still be under way.
3. readiness ``inspect``: poll until State.Running and StartedAt is newer than
   in step 1, and it stays so (the same StartedAt, still running) for ``settle``
   seconds: a gateway that exits on start, or that a restart policy keeps
   restarting, is seen running for a moment and is not ready. Readiness
   ``none`` trusts the 204 (the daemon answers it only after the start
   succeeded); use it when the proxy allows restart only.
4. ``--health-url``: poll until it answers 2xx.

Only then is the restart reported as a success.
"""

from __future__ import annotations

import http.client
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from mcprelay.dockerhttp import Endpoint, Response, send
from mcprelay.errors import (
    DaemonError,
    DeniedError,
    DockerError,
    GatewayMissingError,
    InputError,
    NotReadyError,
)

log = logging.getLogger("mcprelay")

DEFAULT_GATEWAY = "pocketcoder-mcp-gateway"
READINESS_MODES = ("inspect", "none")
# Docker's container name grammar ([a-zA-Z0-9][a-zA-Z0-9_.-]+), one optional leading slash.
CONTAINER_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}", re.ASCII)
MAX_BACKOFF = 8.0
HEALTH_REQUEST_TIMEOUT = 2.0


@dataclass(frozen=True)
class RestartOptions:
    gateway: str = DEFAULT_GATEWAY
    stop_timeout: int = 10
    start_allowance: float = 20.0
    retries: int = 4
    backoff: float = 0.5
    readiness: str = "inspect"
    ready_timeout: float = 60.0
    health_url: str | None = None
    poll_interval: float = 0.25
    settle: float = 1.0

    def __post_init__(self) -> None:
        if not CONTAINER_NAME.fullmatch(self.gateway):
            raise InputError(f"invalid gateway container name {self.gateway[:80]!r}")
        if self.readiness not in READINESS_MODES:
            raise InputError(f"readiness must be one of {', '.join(READINESS_MODES)}")
        if self.stop_timeout < 0 or self.retries < 0 or self.backoff < 0 or self.settle < 0:
            raise InputError("stop timeout, retries, backoff and settle must not be negative")
        if self.health_url is not None and urlsplit(self.health_url).scheme not in (
                "http", "https"):
            raise InputError(f"health URL {self.health_url[:80]!r} must be http:// or https://")

    @property
    def http_timeout(self) -> float:
        """The restart request's timeout: the stop timeout plus time to start again."""
        return self.stop_timeout + self.start_allowance


@dataclass(frozen=True)
class RestartResult:
    gateway: str
    attempts: int
    started_at: str | None
    seconds: float


def started_at_key(value: str) -> tuple[int, int]:
    """Docker's RFC 3339 StartedAt (nanoseconds, trailing zeros trimmed) as comparable ints."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)",
                         value)
    if match is None:
        raise DaemonError(f"unexpected StartedAt {value[:60]!r} from the daemon")
    zone = "+00:00" if match[3] == "Z" else match[3]
    seconds = int(datetime.fromisoformat(match[1] + zone).timestamp())
    return seconds, int((match[2] or "0").ljust(9, "0"))


class Restarter:
    """Restarts one gateway container; ``sleep`` and ``clock`` are injectable for tests."""

    def __init__(self, endpoint: Endpoint, options: RestartOptions,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.options = options
        self.sleep = sleep
        self.clock = clock
        self.attempts = 0
        self.path = f"/containers/{quote(options.gateway.lstrip('/'), safe='')}"

    def run(self) -> RestartResult:
        began = self.clock()
        before: dict[str, Any] | None = None
        if self.options.readiness == "inspect":
            before = self.inspect(hint=True)
        options = self.options
        restart_path = f"{self.path}/restart?t={options.stop_timeout}"
        response = self.request("POST", restart_path, options.http_timeout, counted=True)
        self.check(response, "restart")
        log.info("gateway %s restarted (attempt %d)", options.gateway, self.attempts)
        deadline = self.clock() + options.ready_timeout
        started_at = None
        if before is not None:
            started_at = self.wait_running(before, deadline)
        if options.health_url is not None:
            self.wait_healthy(options.health_url, deadline)
        return RestartResult(options.gateway, self.attempts, started_at, self.clock() - began)

    def request(self, method: str, path: str, timeout: float, *,
                counted: bool = False) -> Response:
        """Send with bounded retries and exponential backoff on transient failures."""
        retries = self.options.retries
        attempt = 0
        while True:
            if counted:
                self.attempts += 1
            try:
                response = send(self.endpoint, method, path, timeout)
                if response.status in (502, 503, 504):
                    raise DaemonError(f"{method} {path}: {response.status} from "
                                      f"{self.endpoint.url}: {response.message()}",
                                      transient=True, status=response.status)
            except DockerError as error:
                if not error.transient:
                    raise
                if attempt == retries:
                    if not retries:
                        raise
                    raise type(error)(f"{error} (gave up after {attempt + 1} attempts)",
                                      status=error.status) from None
                delay = min(self.options.backoff * 2 ** attempt, MAX_BACKOFF)
                log.warning("%s; retrying in %.1fs (%d of %d)", error, delay, attempt + 1,
                            retries)
                self.sleep(delay)
                attempt += 1
            else:
                return response

    def check(self, response: Response, action: str, *, hint: bool = False) -> None:
        """Raise the error class the status means (2xx passes)."""
        status = response.status
        if 200 <= status < 300:
            return
        name = self.options.gateway
        message = response.message()
        if status == 403:
            # dockgate answers 404 for a missing container its policy names, but 403
            # for one outside the policy, existing or not: the grant is what to fix.
            extra = (" (readiness 'inspect' needs container.inspect on it: grant it, or "
                     "use --readiness none with --health-url)") if hint else ""
            raise DeniedError(f"the proxy at {self.endpoint.url} denied {action} of {name}: "
                              f"{message}{extra}", status=status)
        if status == 404:
            raise GatewayMissingError(f"gateway container {name} not found ({action}): "
                                      f"{message}", status=status)
        raise DaemonError(f"{action} of {name} failed: {status} {message}", status=status)

    def inspect(self, *, hint: bool = False) -> dict[str, Any]:
        response = self.request("GET", f"{self.path}/json", self.options.http_timeout)
        self.check(response, "inspect", hint=hint)
        try:
            data = response.json()
            state = data["State"]
        except (ValueError, KeyError, TypeError):
            raise DaemonError(f"inspect of {self.options.gateway}: unexpected answer "
                              f"{response.body[:100]!r}") from None
        if not isinstance(state, dict):
            raise DaemonError(f"inspect of {self.options.gateway}: State is not an object")
        return state

    def wait_running(self, before: dict[str, Any], deadline: float) -> str:
        previous = started_at_key(str(before.get("StartedAt", "")))
        running_since: tuple[str, float] | None = None  # (StartedAt, when first seen)
        while True:
            state = self.inspect()
            now = self.clock()
            started_at = str(state.get("StartedAt", ""))
            if state.get("Running") is True and started_at_key(started_at) > previous:
                if running_since is None or running_since[0] != started_at:
                    running_since = (started_at, now)
                if now - running_since[1] >= self.options.settle:
                    return started_at
            else:
                running_since = None
            if now >= deadline:
                if running_since is not None:
                    raise NotReadyError(
                        f"gateway {self.options.gateway} started again but has not stayed "
                        f"running for {self.options.settle:g}s within "
                        f"{self.options.ready_timeout:g}s (--settle)")
                raise NotReadyError(
                    f"gateway {self.options.gateway} is not running again after "
                    f"{self.options.ready_timeout:g}s (status {state.get('Status')!s}, "
                    f"exit code {state.get('ExitCode')!s}, error {state.get('Error')!r})")
            self.sleep(self.options.poll_interval)

    def wait_healthy(self, url: str, deadline: float) -> None:
        while True:
            last = probe_health(url)
            if last == "ok":
                return
            if self.clock() >= deadline:
                raise NotReadyError(f"health URL {url} did not answer 2xx within "
                               f"{self.options.ready_timeout:g}s ({last})")
            self.sleep(self.options.poll_interval)


def probe_health(url: str) -> str:
    """'ok' when ``url`` answers 2xx, else what went wrong (no proxies, no redirects)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(host, parts.port, timeout=HEALTH_REQUEST_TIMEOUT,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=HEALTH_REQUEST_TIMEOUT)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", target)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return "ok" if 200 <= status < 300 else f"status {status}"
