"""The real daemon's router is the oracle: dockgate never classifies a target as an
operation unless dockerd routes that target there.

How a probe tells "routed" from "not routed" without doing anything:

- Version gate. The daemon routes first and checks the API version in a middleware
  before any handler runs. Sent with a version above the daemon's maximum
  (``/v9.99/...``), a routed request answers 400 "client version 9.99 is too new"
  and an unrouted one 404 "page not found". Every API route is registered in the
  versioned form too, so this tells routing for any method, and no handler runs.
- Missing objects. Read routes sent as the client sent them, with names that
  cannot exist (they contain ``dgnx``: "n" and "x" are not hex, so no ID prefix
  matches), answer the resource's own 404 ("No such container: NAME"), which also
  shows where the daemon split a greedy ``{name:.*}``.

Safety rules, on top of the version gate: mutating methods are probed only on
routes whose every path parameter is such a missing name; mutating operations
without a parameter (create, prune, swarm init/leave, pull, build, load, auth...)
are never sent; nothing is sent unversioned except reads of missing objects and
cheap system reads; pprof profile and trace (30 s of CPU) are never sent.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dockgate.errors import BadTarget
from dockgate.routes import ANY, NONEMPTY, PARAMS, ROUTES, Match, Route, classify, parse_target

pytestmark = pytest.mark.daemon

SOCKET_PATH = os.environ.get("DOCKGATE_TEST_SOCKET", "/var/run/docker.sock")
MARKER = "dgnx"
TOO_NEW = "9.99"


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the daemon's unix socket (no dependency beyond the stdlib)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@dataclass(frozen=True)
class Answer:
    method: str
    status: int
    body: bytes

    @property
    def routed(self) -> bool:
        """Anything but the router's own 404 means a route took the request.

        A HEAD answer has no body: only its status tells, so HEAD is only asked with
        the version gate (400 routed, 404 not).
        """
        if self.method == "HEAD":
            return self.status != 404
        return not (self.status == 404 and b"page not found" in self.body)

    @property
    def message(self) -> str:
        try:
            decoded = json.loads(self.body)
        except ValueError:
            return self.body.decode(errors="replace").strip()
        return str(decoded.get("message", "")) if isinstance(decoded, dict) else ""


def ask(method: str, target: str) -> Answer:
    """Send one bodiless request with exactly this method and target, read the answer."""
    conn = UnixHTTPConnection(SOCKET_PATH)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        if method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        response = conn.getresponse()
        return Answer(method, response.status, response.read())
    finally:
        conn.close()


def gated(target_raw: str, version: str | None) -> str:
    """The same raw target with the version prefix replaced by one the daemon refuses."""
    path, sep, query = target_raw.partition("?")
    rest = path.split("/", 2)[2] if version is not None else path[1:]
    return f"/v{TOO_NEW}/{rest}{sep}{query}"


def daemon_api() -> tuple[int, int]:
    version = json.loads(ask("GET", "/version").body)["ApiVersion"]
    major, minor = version.split(".")
    return int(major), int(minor)


def exists_in_daemon(route: Route, api: tuple[int, int]) -> bool:
    if route.min_api is None:
        return True
    major, minor = route.min_api.split(".")
    return (int(major), int(minor)) <= api


# Reads that are cheap and harmless whatever the target names.
CHEAP_READS = frozenset({
    "container.list", "image.list", "system.ping", "system.version", "system.info",
    "system.df", "volume.list", "network.list", "plugin.list", "swarm.inspect",
    "service.list", "node.list", "task.list", "secret.list", "config.list", "system.options",
    "debug.vars", "debug.pprof.index", "debug.pprof.cmdline", "debug.pprof.symbol",
    "debug.pprof.lookup",
})
# Reads of one object that fail fast with the object's own 404 when it does not exist.
MISSING_OBJECT_READS = frozenset({
    "container.inspect", "container.top", "container.changes", "container.logs",
    "container.stats", "container.export", "container.archive.read",
    "container.attach.websocket", "checkpoint.list", "exec.inspect", "image.inspect",
    "image.history", "network.inspect", "volume.inspect", "plugin.inspect",
    "service.inspect", "service.logs", "node.inspect", "task.inspect", "task.logs",
    "secret.inspect", "config.inspect",
})
# Deletes of one object: a missing name answers the object's 404, and shows which
# route (checkpoint.delete answers 501 on this daemon) and which name the daemon took.
MISSING_OBJECT_DELETES = frozenset({
    "container.delete", "checkpoint.delete", "image.delete", "volume.delete",
    "network.delete", "plugin.delete",
})
NEVER_SENT = frozenset({"debug.pprof.profile", "debug.pprof.trace"})
# The daemon's "no such object" messages, with the name as the daemon parsed it.
NOT_FOUND = {
    "container": re.compile(r"No such container: (.+)$"),
    "exec": re.compile(r"No such exec instance: (.+)$"),
    "image": re.compile(r"No such image: (.+)$"),
    "network": re.compile(r"^network (.+) not found$"),
    "volume": re.compile(r"^get (.+): no such volume$"),
    "plugin": re.compile(r'^plugin "(.+)" not found$'),
}


def all_params_missing(match: Match) -> bool:
    return bool(match.params) and all(MARKER in v for v in match.params.values())


def check_against_daemon(method: str, raw: str, match: Match) -> str:
    """Probe the daemon for a classified request; assert it routes it. Returns how."""
    route, operation = match.route, match.operation
    if operation in NEVER_SENT:
        return "not sent (expensive)"
    read = method in ("GET", "HEAD", "OPTIONS")
    if not read and not all_params_missing(match):
        return "not sent (mutating without a missing-object parameter)"
    exact = (method == "GET" and (
        operation in CHEAP_READS
        or (operation in MISSING_OBJECT_READS and all_params_missing(match)))) or (
        operation in MISSING_OBJECT_DELETES and all_params_missing(match))
    if exact:
        answer = ask(method, raw)
        assert answer.routed, f"{method} {raw} is {operation} to dockgate, unrouted by dockerd"
        found = NOT_FOUND.get(route.resource or "")
        parsed = found.search(answer.message) if found and answer.status == 404 else None
        if parsed is not None:
            name = next(iter(match.params.values()))
            assert parsed.group(1) in (name, f"{name}:latest"), (raw, answer.message)
            return "exact, name checked"
        return "exact"
    if not route.versioned:
        return "not sent (unversioned-only route, not a cheap read)"
    answer = ask(method, gated(raw, match.target.version))
    assert answer.status == 400, f"{method} {raw} is {operation} to dockgate, unrouted by dockerd"
    return "version-gated"


# --- Generation: route templates, then mutations --------------------------------------

NAME_TAIL = st.text(st.sampled_from("abz09-_."), min_size=1, max_size=6)
VOCAB = ["json", "start", "restart", "archive", "attach", "ws", "exec", "get", "push", "tag",
         "logs", "create", "prune", "update", "checkpoints", "connect", "containers",
         "images", "v1.41", "_ping", "debug", "pprof", "networks", "volumes", "x"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "post", "Head"]


@st.composite
def missing_name(draw: st.DrawFn, pattern: str) -> str:
    """A name that cannot exist, shaped like the parameter (with "/" where it may have one)."""
    name = MARKER + draw(NAME_TAIL)
    if pattern in (ANY, NONEMPTY) and draw(st.booleans()):
        name += "/" + draw(NAME_TAIL).strip(".") + "x"
    if draw(st.booleans()):
        name += ":" + draw(NAME_TAIL).strip(".") + "1"
    return name


Mutation = Callable[[st.DrawFn, str, str], tuple[str, str]]


def _pick_index(draw: st.DrawFn, path: str, wanted: Callable[[str], bool]) -> int | None:
    indexes = [i for i, c in enumerate(path) if wanted(c)]
    return draw(st.sampled_from(indexes)) if indexes else None


def _on_path(change: Callable[[st.DrawFn, str], str]) -> Mutation:
    def mutate(draw: st.DrawFn, method: str, raw: str) -> tuple[str, str]:
        path, sep, query = raw.partition("?")
        return method, change(draw, path) + sep + query
    return mutate


def _encode_char(draw: st.DrawFn, path: str, prefix: str = "%") -> str:
    i = _pick_index(draw, path, lambda c: c not in "/%")
    if i is None:
        return path
    code = f"{ord(path[i]):02X}"
    return path[:i] + prefix + draw(st.sampled_from([code, code.lower()])) + path[i + 1:]


def _insert_at_slash(draw: st.DrawFn, path: str, text: str) -> str:
    i = _pick_index(draw, path, lambda c: c == "/")
    return path if i is None else path[:i] + text + path[i:]


MUTATIONS: list[Mutation] = [
    _on_path(_encode_char),
    _on_path(lambda d, p: _encode_char(d, p, "%25")),
    _on_path(lambda d, p: p[:1] + p[1:].replace("/", "%2F", 1)),
    _on_path(lambda d, p: _insert_at_slash(d, p, d(st.sampled_from(["/.", "/..", "/"])))),
    _on_path(lambda d, p: _insert_at_slash(d, p, "/" + d(st.sampled_from(VOCAB)))),
    _on_path(lambda d, p: p + "/"),
    _on_path(lambda d, p: p.rstrip("/").rsplit("/", 1)[0] or "/"),
    _on_path(lambda d, p: p.rstrip("/") + "/" + d(st.sampled_from(VOCAB))),
    _on_path(lambda d, p: p.swapcase() if d(st.booleans()) else p.upper()),
    lambda d, m, r: (d(st.sampled_from(METHODS)), r),
    lambda d, m, r: (m, r + d(st.sampled_from(["?x=/start", "?t=5", "?x=/../containers/json",
                                              "?", "?a=%2F"]))),
]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    route = draw(st.sampled_from(ROUTES))
    params = {}
    for name in route.param_names:
        if name == "anything":
            params[name] = "/".join(draw(st.lists(st.sampled_from(VOCAB), max_size=3)))
        else:
            params[name] = draw(missing_name(route.param_pattern(name)))
    prefix = draw(st.sampled_from(["", "", "/v1.41", "/v1.40", "/v1.24", "/v1.12", "/v1.11",
                                   f"/v{TOO_NEW}", "/v1.41.0", "/v.", "/v01.41"]))
    method, raw = route.method, prefix + route.path_for(params)
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        method, raw = mutation(draw, method, raw)
    return method, raw


@pytest.fixture(scope="module")
def api() -> tuple[int, int]:
    return daemon_api()


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_nothing_is_classified_where_the_daemon_does_not_route_it(
    api: tuple[int, int], request: tuple[str, str],
) -> None:
    """The whole point of classification: an operation name is only as true as dockerd's router."""
    method, raw = request
    try:
        target = parse_target(raw)
    except BadTarget:
        event("rejected by parse_target")
        return
    match = classify(method, target)
    if match is None:
        event("no route")
        return
    if not exists_in_daemon(match.route, api):
        event("route newer than this daemon")
        return
    event(check_against_daemon(method, raw, match))


# --- Deterministic checks: the oracle itself, and every row of the table -------------

@pytest.mark.parametrize(("method", "target", "routed"), [
    ("GET", f"/v{TOO_NEW}/_ping", True),
    ("HEAD", f"/v{TOO_NEW}/_ping", True),
    ("GET", f"/v{TOO_NEW}/nope", False),
    ("HEAD", f"/v{TOO_NEW}/containers/json", False),
    ("get", f"/v{TOO_NEW}/_ping", False),
    ("GET", f"/v{TOO_NEW}/containers/json/", False),
    ("GET", f"/v{TOO_NEW}/debug/vars", False),
    ("GET", f"/containers/{MARKER}/json", True),
    ("GET", f"/containers/{MARKER}/json/", False),
])
def test_the_oracle_tells_routed_from_unrouted(method: str, target: str, routed: bool) -> None:
    """If the probe could not tell the two apart, the fuzz test would prove nothing."""
    answer = ask(method, target)
    assert answer.routed is routed


def _example(route: Route) -> str:
    params = {name: ("containers/json" if name == "anything" else f"{MARKER}a/b"
                     if route.param_pattern(name) in (ANY, NONEMPTY) else f"{MARKER}ab")
              for name in route.param_names}
    return route.path_for(params)


def _probed_rows() -> list[Route]:
    return [r for r in ROUTES if r.operation not in NEVER_SENT]


@pytest.mark.parametrize("route", _probed_rows(), ids=lambda r: f"{r.method} {r.template}")
def test_every_row_with_safe_probes_is_routed_by_the_daemon(
    api: tuple[int, int], route: Route,
) -> None:
    """A row dockerd does not have would let a policy allow a name that means nothing, or worse."""
    raw = _example(route)
    match = classify(route.method, parse_target(raw))
    assert match is not None
    assert match.route == route
    if not exists_in_daemon(route, api):
        # Newer than this daemon: it must not route it (and nothing runs: version gate).
        assert not ask(route.method, gated(raw, None)).routed
        return
    outcome = check_against_daemon(route.method, raw, match)
    # Only parameterless mutating rows (create, prune, init...) are never sent.
    assert not outcome.startswith("not sent") or (
        route.method not in ("GET", "HEAD", "OPTIONS") and not route.param_names), outcome


def test_every_parameter_block_is_exercised_against_the_daemon() -> None:
    """Each building block must appear in some row the daemon test probes."""
    probed = {name for r in _probed_rows() for name in r.param_names}
    assert probed == set(PARAMS)


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/containers/json/"),
    ("post", "/containers/dgnx/restart"),
    ("HEAD", "/version"),
    ("GET", "/containers/dgnx/restart"),
    ("DELETE", "/services/dgnx/x"),
    ("GET", "/services/dgnx/x"),
    ("GET", "/%2563ontainers/json"),
])
def test_targets_without_a_route_are_unrouted_by_the_daemon_too(method: str, target: str) -> None:
    """The negative table agrees with dockerd; None is never stricter by accident on these."""
    parsed = parse_target(target)
    assert classify(method, parsed) is None
    assert not ask(method, gated(target, parsed.version)).routed
