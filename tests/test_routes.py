"""The route table: every row classifies, the building blocks match what the daemon's
regexes match, and everything the daemon does not route is None.

The expected operations and parameters are written out by hand (not derived from
the table) so a wrong row cannot agree with itself.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockgate import routes
from dockgate.errors import BadTarget
from dockgate.routes import (
    PARAMS,
    ROUTES,
    SHAPES,
    Body,
    Route,
    Stream,
    classify,
    operations,
    parse_target,
    routes_for,
)

ID = "3fa1c0ffee" + "0" * 54
IMAGE_DIGEST = "sha256:" + "ab" * 32

# (method, unversioned target, operation, params). One line per row of the table at
# least; names with "/" and ":", full IDs and ID prefixes where the daemon takes them.
CASES: list[tuple[str, str, str, dict[str, str]]] = [
    ("GET", "/containers/gw/checkpoints", "checkpoint.list", {"container": "gw"}),
    ("POST", "/containers/gw/checkpoints", "checkpoint.create", {"container": "gw"}),
    ("DELETE", "/containers/gw/checkpoints/cp1", "checkpoint.delete",
     {"container": "gw", "checkpoint": "cp1"}),
    ("HEAD", "/containers/gw/archive", "container.archive.stat", {"container": "gw"}),
    ("GET", "/containers/json", "container.list", {}),
    ("GET", f"/containers/{ID}/export", "container.export", {"container": ID}),
    ("GET", "/containers/3fa1/changes", "container.changes", {"container": "3fa1"}),
    ("GET", "/containers/gw/json", "container.inspect", {"container": "gw"}),
    ("GET", "/containers/web/db/json", "container.inspect", {"container": "web/db"}),
    ("GET", "/containers/gw/top", "container.top", {"container": "gw"}),
    ("GET", "/containers/gw/logs", "container.logs", {"container": "gw"}),
    ("GET", "/containers/gw/stats", "container.stats", {"container": "gw"}),
    ("GET", "/containers/gw/attach/ws", "container.attach.websocket", {"container": "gw"}),
    ("GET", "/exec/e1/json", "exec.inspect", {"exec": "e1"}),
    ("GET", "/containers/gw/archive", "container.archive.read", {"container": "gw"}),
    ("POST", "/containers/create", "container.create", {}),
    ("POST", "/containers/gw/kill", "container.kill", {"container": "gw"}),
    ("POST", "/containers/gw/pause", "container.pause", {"container": "gw"}),
    ("POST", "/containers/gw/unpause", "container.unpause", {"container": "gw"}),
    ("POST", "/containers/pocketcoder-mcp-gateway/restart", "container.restart",
     {"container": "pocketcoder-mcp-gateway"}),
    ("POST", f"/containers/{ID}/restart", "container.restart", {"container": ID}),
    ("POST", "/containers/gw/start", "container.start", {"container": "gw"}),
    ("POST", "/containers/gw/stop", "container.stop", {"container": "gw"}),
    ("POST", "/containers/gw/wait", "container.wait", {"container": "gw"}),
    ("POST", "/containers/gw/resize", "container.resize", {"container": "gw"}),
    ("POST", "/containers/gw/attach", "container.attach", {"container": "gw"}),
    ("POST", "/containers/gw/exec", "exec.create", {"container": "gw"}),
    ("POST", "/exec/e1/start", "exec.start", {"exec": "e1"}),
    ("POST", "/exec/e1/resize", "exec.resize", {"exec": "e1"}),
    ("POST", "/containers/gw/rename", "container.rename", {"container": "gw"}),
    ("POST", "/containers/gw/update", "container.update", {"container": "gw"}),
    ("POST", "/containers/prune", "container.prune", {}),
    ("POST", "/commit", "container.commit", {}),
    ("PUT", "/containers/gw/archive", "container.archive.write", {"container": "gw"}),
    ("DELETE", "/containers/gw", "container.delete", {"container": "gw"}),
    ("DELETE", f"/containers/{ID}", "container.delete", {"container": ID}),
    ("DELETE", "/containers/web/db", "container.delete", {"container": "web/db"}),
    ("GET", "/images/json", "image.list", {}),
    ("GET", "/images/search", "image.search", {}),
    ("GET", "/images/get", "image.get.all", {}),
    ("GET", "/images/busybox/get", "image.get", {"image": "busybox"}),
    ("GET", "/images/library/busybox:latest/history", "image.history",
     {"image": "library/busybox:latest"}),
    ("GET", "/images/library/busybox:latest/json", "image.inspect",
     {"image": "library/busybox:latest"}),
    ("GET", f"/images/registry.example:5000/team/app@{IMAGE_DIGEST}/json", "image.inspect",
     {"image": f"registry.example:5000/team/app@{IMAGE_DIGEST}"}),
    ("GET", "/images/busybox/attestations", "image.attestations", {"image": "busybox"}),
    ("POST", "/images/load", "image.load", {}),
    ("POST", "/images/create", "image.create", {}),
    ("POST", "/images/mcp/time:latest/push", "image.push", {"image": "mcp/time:latest"}),
    ("POST", "/images/busybox/tag", "image.tag", {"image": "busybox"}),
    ("POST", "/images/prune", "image.prune", {}),
    ("DELETE", "/images/library/busybox", "image.delete", {"image": "library/busybox"}),
    ("OPTIONS", "/containers/json", "system.options", {"anything": "containers/json"}),
    ("GET", "/_ping", "system.ping", {}),
    ("HEAD", "/_ping", "system.ping", {}),
    ("GET", "/events", "system.events", {}),
    ("GET", "/info", "system.info", {}),
    ("GET", "/version", "system.version", {}),
    ("GET", "/system/df", "system.df", {}),
    ("POST", "/auth", "system.auth", {}),
    ("GET", "/volumes", "volume.list", {}),
    ("GET", "/volumes/data", "volume.inspect", {"volume": "data"}),
    ("POST", "/volumes/create", "volume.create", {}),
    ("POST", "/volumes/prune", "volume.prune", {}),
    ("PUT", "/volumes/data", "volume.update", {"volume": "data"}),
    ("DELETE", "/volumes/data", "volume.delete", {"volume": "data"}),
    ("POST", "/build", "image.build", {}),
    ("POST", "/build/prune", "build.prune", {}),
    ("POST", "/build/cancel", "build.cancel", {}),
    ("POST", "/session", "session", {}),
    ("GET", "/swarm", "swarm.inspect", {}),
    ("GET", "/swarm/unlockkey", "swarm.unlockkey", {}),
    ("GET", "/services", "service.list", {}),
    ("GET", "/services/web", "service.inspect", {"service": "web"}),
    ("GET", "/services/web/logs", "service.logs", {"service": "web"}),
    ("GET", "/nodes", "node.list", {}),
    ("GET", "/nodes/n1", "node.inspect", {"node": "n1"}),
    ("GET", "/tasks", "task.list", {}),
    ("GET", "/tasks/t1", "task.inspect", {"task": "t1"}),
    ("GET", "/tasks/t1/logs", "task.logs", {"task": "t1"}),
    ("GET", "/secrets", "secret.list", {}),
    ("GET", "/secrets/s1", "secret.inspect", {"secret": "s1"}),
    ("GET", "/configs", "config.list", {}),
    ("GET", "/configs/c1", "config.inspect", {"config": "c1"}),
    ("POST", "/swarm/init", "swarm.init", {}),
    ("POST", "/swarm/join", "swarm.join", {}),
    ("POST", "/swarm/leave", "swarm.leave", {}),
    ("POST", "/swarm/update", "swarm.update", {}),
    ("POST", "/swarm/unlock", "swarm.unlock", {}),
    ("POST", "/services/create", "service.create", {}),
    ("POST", "/services/web/update", "service.update", {"service": "web"}),
    ("POST", "/nodes/n1/update", "node.update", {"node": "n1"}),
    ("POST", "/secrets/create", "secret.create", {}),
    ("POST", "/secrets/s1/update", "secret.update", {"secret": "s1"}),
    ("POST", "/configs/create", "config.create", {}),
    ("POST", "/configs/c1/update", "config.update", {"config": "c1"}),
    ("DELETE", "/services/web", "service.delete", {"service": "web"}),
    ("DELETE", "/nodes/n1", "node.delete", {"node": "n1"}),
    ("DELETE", "/secrets/s1", "secret.delete", {"secret": "s1"}),
    ("DELETE", "/configs/c1", "config.delete", {"config": "c1"}),
    ("GET", "/plugins", "plugin.list", {}),
    ("GET", "/plugins/vieux/sshfs:latest/json", "plugin.inspect",
     {"plugin": "vieux/sshfs:latest"}),
    ("GET", "/plugins/privileges", "plugin.privileges", {}),
    ("POST", "/plugins/pull", "plugin.pull", {}),
    ("POST", "/plugins/vieux/sshfs/push", "plugin.push", {"plugin": "vieux/sshfs"}),
    ("POST", "/plugins/sshfs/enable", "plugin.enable", {"plugin": "sshfs"}),
    ("POST", "/plugins/sshfs/disable", "plugin.disable", {"plugin": "sshfs"}),
    ("POST", "/plugins/sshfs/upgrade", "plugin.upgrade", {"plugin": "sshfs"}),
    ("POST", "/plugins/sshfs/set", "plugin.set", {"plugin": "sshfs"}),
    ("POST", "/plugins/create", "plugin.create", {}),
    ("DELETE", "/plugins/sshfs", "plugin.delete", {"plugin": "sshfs"}),
    ("GET", "/distribution/docker.io/library/busybox:1.36/json", "distribution.inspect",
     {"image": "docker.io/library/busybox:1.36"}),
    ("POST", "/grpc", "grpc", {}),
    ("GET", "/networks", "network.list", {}),
    ("GET", "/networks/", "network.list", {}),
    ("GET", "/networks/bridge", "network.inspect", {"network": "bridge"}),
    ("POST", "/networks/create", "network.create", {}),
    ("POST", "/networks/backend/connect", "network.connect", {"network": "backend"}),
    ("POST", "/networks/backend/disconnect", "network.disconnect", {"network": "backend"}),
    ("POST", "/networks/prune", "network.prune", {}),
    ("DELETE", "/networks/backend", "network.delete", {"network": "backend"}),
]

# Debug routes exist unversioned only: /v1.41/debug/vars is the daemon's 404.
DEBUG_CASES: list[tuple[str, str, str, dict[str, str]]] = [
    ("GET", "/debug/vars", "debug.vars", {}),
    ("GET", "/debug/pprof/", "debug.pprof.index", {}),
    ("GET", "/debug/pprof/cmdline", "debug.pprof.cmdline", {}),
    ("GET", "/debug/pprof/profile", "debug.pprof.profile", {}),
    ("GET", "/debug/pprof/symbol", "debug.pprof.symbol", {}),
    ("GET", "/debug/pprof/trace", "debug.pprof.trace", {}),
    ("GET", "/debug/pprof/heap", "debug.pprof.lookup", {"profile": "heap"}),
]


def route_of(method: str, target: str) -> tuple[str, dict[str, str]] | None:
    match = classify(method, parse_target(target))
    return None if match is None else (match.operation, dict(match.params))


@pytest.mark.parametrize("prefix", ["", "/v1.41", "/v1.24", "/v1.56"])
@pytest.mark.parametrize(("method", "target", "operation", "params"), CASES)
def test_every_route_classifies_unversioned_and_versioned(
    prefix: str, method: str, target: str, operation: str, params: dict[str, str],
) -> None:
    """The daemon registers every API route with and without /v{version}: both must agree."""
    assert route_of(method, prefix + target) == (operation, params)


@pytest.mark.parametrize(("method", "target", "operation", "params"), DEBUG_CASES)
def test_debug_routes_classify_unversioned_only(
    method: str, target: str, operation: str, params: dict[str, str],
) -> None:
    """The daemon mounts /debug/* without a version form, so /v1.41/debug/... is no route."""
    assert route_of(method, target) == (operation, params)
    assert route_of(method, "/v1.41" + target) is None


def test_every_row_of_the_table_has_a_classification_case() -> None:
    """A row nobody tested is a row nobody checked against the daemon's router."""
    covered = set()
    for method, target, _operation, _params in CASES + DEBUG_CASES:
        match = classify(method, parse_target(target))
        assert match is not None
        covered.add(match.route)
    assert [r.template for r in ROUTES if r not in covered] == []


def test_operation_names_follow_docker_vocabulary() -> None:
    """Policies and docs name operations as <resource>.<verb> in lower case; typos split rules."""
    for name in operations():
        assert re.fullmatch(r"[a-z]+(\.[a-z]+)*", name), name
    assert len(operations()) == len(set(operations()))
    assert {"container.restart", "container.create", "container.archive.read",
            "container.archive.write", "container.archive.stat", "container.attach",
            "container.attach.websocket", "exec.create", "exec.start", "exec.resize",
            "exec.inspect", "image.create", "image.build", "system.ping", "system.version",
            "system.info", "system.events", "system.df", "system.auth", "system.options",
            "session", "grpc", "distribution.inspect", "container.commit"} <= set(operations())


def test_routes_for_lists_every_row_of_an_operation() -> None:
    """system.ping is GET and HEAD; a policy granting it must grant both rows."""
    assert [r.method for r in routes_for("system.ping")] == ["GET", "HEAD"]
    assert [r.template for r in routes_for("network.list")] == ["/networks", "/networks/"]
    assert routes_for("no.such.operation") == ()


def test_stream_and_body_kinds_of_the_risky_routes() -> None:
    """The shell relays by stream kind and inspects by body kind: these must not be PLAIN/NONE."""
    kinds = {r.operation: (r.stream, r.body) for r in ROUTES}
    assert kinds["container.attach"] == (Stream.HIJACK, Body.NONE)
    assert kinds["exec.start"] == (Stream.HIJACK, Body.JSON)
    assert kinds["container.attach.websocket"] == (Stream.WEBSOCKET, Body.NONE)
    assert kinds["session"] == (Stream.UPGRADE, Body.NONE)
    assert kinds["grpc"] == (Stream.UPGRADE, Body.NONE)
    assert kinds["system.events"][0] is Stream.STREAM
    assert kinds["container.create"][1] is Body.JSON
    # API < 1.24 still reads a HostConfig from the start body: it must be inspected.
    assert kinds["container.start"][1] is Body.JSON
    assert kinds["container.archive.write"][1] is Body.TAR
    assert kinds["image.build"] == (Stream.STREAM, Body.TAR)


def test_routes_newer_than_engine_20_10_carry_their_minimum_api() -> None:
    """The fuzz test must not expect a 1.41 daemon to route what it does not have yet."""
    assert {r.operation: r.min_api for r in ROUTES if r.min_api} == {
        "image.attestations": "1.55", "volume.update": "1.42"}


# --- Building blocks -----------------------------------------------------------------

BLOCK_CASES: dict[str, tuple[list[str], list[str]]] = {
    # name: (values the block matches whole, values it does not)
    "container": (["gw", "3fa1", ID, "web/db", "a.b-c_d"], []),
    "image": (["busybox", "library/busybox:latest", f"app@{IMAGE_DIGEST}",
               "registry.example:5000/team/app:1"], []),
    "exec": (["e1", ID], []),
    "network": (["bridge", "3fa1", "a/b"], []),
    "volume": (["data", "a/b"], []),
    "plugin": (["sshfs", "vieux/sshfs:latest"], []),
    "service": (["web", ID], ["a/b", ""]),
    "node": (["n1"], ["a/b", ""]),
    "task": (["t1"], ["a/b", ""]),
    "secret": (["s1"], ["a/b", ""]),
    "config": (["c1"], ["a/b", ""]),
    "checkpoint": (["cp1"], ["a/b", ""]),
    "profile": (["heap", "goroutine", "cmdlinex"],
                ["cmdline", "profile", "symbol", "trace", "a/b", ""]),
    "anything": (["", "x", "a/b/c"], []),
}


def test_every_building_block_has_a_table() -> None:
    """Each named block is a rule of its own; an untested one could silently widen."""
    assert set(BLOCK_CASES) == set(PARAMS)


@pytest.mark.parametrize("name", sorted(BLOCK_CASES))
def test_building_block_matches_what_the_daemon_regex_matches(name: str) -> None:
    """The block regexes are the daemon's ({name:.*}, {id} = [^/]+): same values, same answer."""
    good, bad = BLOCK_CASES[name]
    for value in good:
        assert re.fullmatch(PARAMS[name].pattern, value), value
    for value in bad:
        assert not re.fullmatch(PARAMS[name].pattern, value), value


@pytest.mark.parametrize(("shape", "good", "bad"), [
    ("segment", ["gw", ID, "a.b"], ["a/b", "", "gw/"]),
    ("nonempty", ["bridge", "a/b", "a/"], [""]),
])
def test_shape_overrides_match_what_the_daemon_regex_matches(
    shape: str, good: list[str], bad: list[str],
) -> None:
    """{name} ([^/]+) and {id:.+} rows differ from their block; each shape is its own rule."""
    for value in good:
        assert re.fullmatch(SHAPES[shape], value), value
    for value in bad:
        assert not re.fullmatch(SHAPES[shape], value), value


def test_rows_using_a_shape_override_are_the_daemon_exceptions() -> None:
    """Only checkpoint delete ({name}) and network inspect ({id:.+}) differ from their block."""
    assert {r.template for r in ROUTES if ":" in r.template} == {
        "/containers/{container:segment}/checkpoints/{checkpoint}",
        "/networks/{network:nonempty}",
    }


@pytest.mark.parametrize(("method", "target", "expected"), [
    # {name:.*} is greedy and anchored: the literal suffix decides, the rest is the name.
    ("GET", "/images/a/push/json", ("image.inspect", {"image": "a/push"})),
    ("POST", "/images/a/json/push", ("image.push", {"image": "a/json"})),
    ("GET", "/images/get/json", ("image.inspect", {"image": "get"})),
    ("GET", "/images/json/get", ("image.get", {"image": "json"})),
    ("GET", "/containers/json/json", ("container.inspect", {"container": "json"})),
    ("POST", "/containers/create/start", ("container.start", {"container": "create"})),
    ("POST", "/containers/a/start/stop", ("container.stop", {"container": "a/start"})),
    ("POST", "/containers/prune/restart", ("container.restart", {"container": "prune"})),
    # Every DELETE under /images/ is an image delete ({name:.*}), suffixes included.
    ("DELETE", "/images/busybox/json", ("image.delete", {"image": "busybox/json"})),
    # Every DELETE under /containers/ is a container delete, except exactly
    # {name}/checkpoints/{checkpoint}, whose router the daemon registers first.
    ("DELETE", "/containers/gw/json", ("container.delete", {"container": "gw/json"})),
    ("DELETE", "/containers/gw/checkpoints/a/b",
     ("container.delete", {"container": "gw/checkpoints/a/b"})),
    ("DELETE", "/containers/a/b/checkpoints/cp",
     ("container.delete", {"container": "a/b/checkpoints/cp"})),
    ("DELETE", "/containers/gw/checkpoints/cp",
     ("checkpoint.delete", {"container": "gw", "checkpoint": "cp"})),
    ("DELETE", "/containers/gw/checkpoints/",
     ("container.delete", {"container": "gw/checkpoints/"})),
    # A trailing slash on a route ending in {name:.*} is part of the name.
    ("DELETE", "/images/busybox/", ("image.delete", {"image": "busybox/"})),
    ("GET", "/volumes/data/", ("volume.inspect", {"volume": "data/"})),
    ("GET", "/networks/bridge/", ("network.inspect", {"network": "bridge/"})),
    ("GET", "/networks/a/b", ("network.inspect", {"network": "a/b"})),
    ("GET", "/volumes/create", ("volume.inspect", {"volume": "create"})),
    # First registered route wins: the fixed pprof names never reach {name}.
    ("GET", "/debug/pprof/symbol", ("debug.pprof.symbol", {})),
])
def test_greedy_names_split_where_the_daemon_splits(
    method: str, target: str, expected: tuple[str, dict[str, str]],
) -> None:
    """A policy must see the object the daemon will act on, not a neighbour's name."""
    assert route_of(method, target) == expected


# --- Negative cases ------------------------------------------------------------------

@pytest.mark.parametrize(("method", "target"), [
    # Wrong method: the daemon answers 404 (it has no 405).
    ("GET", "/containers/gw/restart"),
    ("POST", "/containers/gw/json"),
    ("PUT", "/containers/create"),
    ("PATCH", "/containers/gw/update"),
    ("GET", "/session"),
    ("GET", "/exec/e1/start"),
    ("CONNECT", "/containers/json"),
    # Method names are case-sensitive in gorilla/mux.
    ("post", "/containers/gw/restart"),
    ("Post", "/containers/gw/restart"),
    ("get", "/_ping"),
    ("options", "/containers/json"),
    # Strict trailing slash (only GET /networks/ is registered).
    ("GET", "/containers/json/"),
    ("GET", "/_ping/"),
    ("POST", "/containers/gw/restart/"),
    ("GET", "/version/"),
    ("POST", "/networks/create/"),
    ("GET", "/containers/gw/json/"),
    # HEAD is routed only for /_ping and /containers/{name}/archive.
    ("HEAD", "/containers/json"),
    ("HEAD", "/version"),
    ("HEAD", "/containers/gw/json"),
    ("HEAD", "/images/busybox/get"),
    # Swarm ids are one segment.
    ("GET", "/services/a/b"),
    ("DELETE", "/secrets/a/b"),
    ("GET", "/tasks/a/b/logs"),
    # An empty object name would be looked up as ""; nothing has that name.
    ("GET", "/volumes/"),
    ("DELETE", "/images/"),
    ("DELETE", "/networks/"),
    ("DELETE", "/plugins/"),
    # Unknown paths, case, and paths that only look like routes.
    ("GET", "/containers"),
    ("GET", "/CONTAINERS/json"),
    ("GET", "/containersXYZ/json"),
    ("GET", "/foo"),
    ("GET", "/"),
    ("GET", "/libpod/containers/json"),
    ("GET", "/v1.41"),
    ("GET", "/v1.41/"),
    ("GET", "/v1.41/v1.41/containers/json"),
    ("GET", "/V1.41/containers/json"),
    ("GET", "/images/search/x"),
    ("POST", "/swarm/init/x"),
    ("POST", "/build/x"),
    ("GET", "/debug/pprof"),
    ("GET", "/debug/pprof/a/b"),
    ("POST", "/debug/vars"),
])
def test_what_the_daemon_does_not_route_is_no_route(method: str, target: str) -> None:
    """Deny by default: a target the daemon 404s must never be classified as an operation."""
    assert classify(method, parse_target(target)) is None


def test_options_catch_all_answers_every_path() -> None:
    """OPTIONS /{anyroute:.*} is registered: CORS preflight on any path, versioned or not."""
    assert route_of("OPTIONS", "/") == ("system.options", {"anything": ""})
    assert route_of("OPTIONS", "/v1.41/") == ("system.options", {"anything": ""})
    assert route_of("OPTIONS", "/nope/x") == ("system.options", {"anything": "nope/x"})


def test_rows_overlap_only_where_the_daemon_order_is_declared() -> None:
    """An undeclared overlap means a row whose winner nobody checked against moby's order."""
    overlaps: set[tuple[str, str]] = set()
    for method, target, _op, _params in CASES + DEBUG_CASES:
        target_ = parse_target(target)
        hits = [r for r in ROUTES if r.method == method and r.pattern.match(target_.api_path)]
        assert hits, (method, target)
        overlaps.update((hits[0].operation, other.operation) for other in hits[1:])
        assert all(other.operation in hits[0].precedes for other in hits[1:]), (method, target)
    assert overlaps == {("checkpoint.delete", "container.delete")}


def test_an_overlapping_row_makes_classify_refuse_to_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If a later table edit made two rows match, the answer must be None, not the first row."""
    extra = Route("GET", "/containers/{container}/json", "container.other", "container",
                  Stream.PLAIN, Body.NONE)
    assert classify("GET", parse_target("/containers/gw/json")) is not None
    by_method = dict(routes._BY_METHOD)
    by_method["GET"] = (*by_method["GET"], extra)
    monkeypatch.setattr(routes, "_BY_METHOD", by_method)
    assert classify("GET", parse_target("/containers/gw/json")) is None


NAME_CHARS = st.sampled_from("abcxyz019-_.:@/")


@settings(max_examples=300, deadline=None, database=None)
@given(route=st.sampled_from(ROUTES),
       values=st.lists(st.text(NAME_CHARS, min_size=1, max_size=20), min_size=2, max_size=2))
def test_filled_templates_classify_back_to_their_row(route: Route, values: list[str]) -> None:
    """Any parameter value the daemon's regex admits comes back out whole, on the same row."""
    params = dict(zip(route.param_names, values, strict=False))
    segments = route.path_for(params).split("/")[1:]
    if "" in segments[:-1] or "." in segments or ".." in segments:
        return  # not canonical: parse_target rejects it (tested with the targets)
    if all(re.fullmatch(route.param_pattern(n), v) for n, v in params.items()):
        match = classify(route.method, parse_target(route.path_for(params)))
        assert match is not None
        assert (match.route, dict(match.params)) == (route, params)
    else:
        # A value the daemon's regex refuses ("/" in a one-segment id, a fixed pprof
        # name): percent-encoded it is a BadTarget, never this row with this value.
        try:
            match = classify(route.method, parse_target(route.path_for(params)))
        except BadTarget:
            return
        assert match is None or (match.route, dict(match.params)) != (route, params)


def test_param_pattern_names_only_parameters_of_the_route() -> None:
    """with_param and the fuzz generator rely on it; a typo must fail loudly, not match all."""
    route = routes_for("container.restart")[0]
    assert route.param_pattern("container") == PARAMS["container"].pattern
    with pytest.raises(KeyError, match="no parameter 'image'"):
        route.param_pattern("image")
