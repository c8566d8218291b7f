"""The Engine API route table and request classification (pure, no I/O).

INTERFACE CONTRACT (the routes helper fills in the table and the functions;
the names and fields below are used by the shell, policy and compat modules):

- ``parse_target(raw) -> Target`` raises ``errors.BadTarget`` for anything not in
  canonical origin-form (dot segments, ``//``, encoded ``/``, control/non-ASCII
  bytes, absolute/authority form, double-decoding tricks...).
- ``classify(method, target) -> Match | None``; None means no Engine API route.
  It raises ``errors.BadTarget`` when an encoded space, non-ASCII, ``?``, ``#`` or
  ``\\`` sits in a parameter that cannot hold one (anything but a network name).
- ``Match.with_param(name, value) -> str`` rebuilds a raw target with one path
  parameter replaced (percent-encoded), keeping the version prefix and the query.

Theory of operation. dockerd routes with gorilla/mux: it percent-decodes the
path once, answers 301 (without running anything) when the decoded path is not
clean, then tries its routes in registration order; a route matches when the
method is equal (case-sensitive) and the anchored path regex matches. Every API
route is registered twice, as ``/PATH`` and ``/v{version:[0-9.]+}/PATH``; the
debug routes only unversioned. Anything else gets 404 "page not found" (also a
wrong method: the daemon has no 405).

dockgate mirrors that in two steps. ``parse_target`` accepts only targets the
daemon routes without redirecting and that mean the same thing to every
component that might look at them (decoded once or twice): it rejects rather
than normalises, because a normalised target is not the one the client sent and
the daemon would answer it differently. ``classify`` then applies the same
regexes to the decoded path. Rows with the same method rarely overlap; where they
do, the daemon runs the first registered one, and a row says which operations it
is known to win over (``Route.precedes``: checkpoint.delete over container.delete,
because moby registers the checkpoint router first on purpose). Any other
overlap, e.g. from a future edit of the table, makes ``classify`` return None
rather than guess. A path parameter the daemon would route as empty
(``GET /volumes/``) is also None: no object has an empty name, and "deny by
default" is always a safe answer for a proxy.

Where dockgate is stricter than the daemon (each rule is next to its code):

- Loose versions. The router takes ``/v[0-9.]+/`` and the version middleware
  compares numerically, so ``/v1.41.0/`` and ``/v01.41/`` run as 1.41 and
  ``/v./`` as 0 (then "too old"). dockgate accepts only ``MAJOR.MINOR`` without
  leading zeros: one spelling per version, so a rule keyed on the version cannot
  be dodged by respelling it; the error names the canonical spelling.
- Characters. Only RFC 3986 path/query characters, valid escapes, and no ``;``
  in the query (Go refuses it as a separator, Python keeps it as data). Decoded,
  the path holds no control character, and a space, non-ASCII (UTF-8), ``?``,
  ``#`` or ``\\`` only inside a parameter whose objects can have such names:
  network names (``docker network create 'peer dg 01'``). Container, volume and
  image names cannot (the daemon refuses to create them), so a reference holding
  one is refused (400) rather than looked up.
- Debug routes. The daemon serves ``/debug/*`` for every method; only GET is
  classified.

Path parameters are named after what they refer to (``container``, ``image``,
``exec``, ``network``...), whatever the daemon calls its variable, so a policy
finds a container reference under ``params["container"]`` on every route.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote_to_bytes, urlsplit

from dockgate.errors import BadTarget


class Stream(enum.Enum):
    PLAIN = "plain"          # ordinary request/response
    STREAM = "stream"        # long-lived response (events, logs -f, stats, pull, wait)
    HIJACK = "hijack"        # attach / exec start: 101 or raw 200, then raw bytes both ways
    UPGRADE = "upgrade"      # /session, /grpc: h2c upgrade
    WEBSOCKET = "websocket"  # attach/ws


class Body(enum.Enum):
    NONE = "none"
    JSON = "json"
    TAR = "tar"
    ANY = "any"


@dataclass(frozen=True)
class Target:
    raw: str               # exactly as received in the request line
    path: str              # percent-decoded once, including any version prefix
    version: str | None    # "1.41" for "/v1.41/...", None when unversioned
    api_path: str          # decoded path without the version prefix: "/containers/gw/restart"
    query: str             # raw query string without "?", "" when absent
    # The decoded path holds a space, non-ASCII, "?", "#" or "\\" (sent percent-encoded):
    # classify accepts that only inside a free-text parameter (a network name).
    free_text: bool = False

    def query_params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    @property
    def raw_path(self) -> str:
        """The raw (still encoded) path, without the query."""
        return self.raw.partition("?")[0]


# --- Named building blocks for path parameters --------------------------------------
#
# Each block is the regex the daemon registers for that parameter. ``{name:.*}`` is
# greedy and may contain "/": image names do (``library/busybox``), container names
# may (legacy link aliases), and a trailing slash on a route that ends with such a
# parameter becomes part of it (``DELETE /images/busybox/`` deletes "busybox/").
# gorilla/mux's default for a bare ``{id}`` is ``[^/]+``: one segment.

_SUB_DELIMS = "!$&'()*+,;="
ANY = ".*"
NONEMPTY = ".+"
SEGMENT = "[^/]+"
# ``/debug/pprof/{name}`` is registered after ``/debug/pprof/cmdline`` (and profile,
# symbol, trace), so those four names never reach it: first registered route wins.
PPROF_LOOKUP = r"(?!(?:cmdline|profile|symbol|trace)$)[^/]+"

# Overrides for the rows where the daemon uses another regex than the block's own.
SHAPES: Mapping[str, str] = {
    "nonempty": NONEMPTY,
    "segment": SEGMENT,
}


@dataclass(frozen=True)
class Param:
    """A named path parameter: what it refers to and the daemon's regex for it."""

    name: str
    pattern: str
    doc: str
    # True where the daemon lets an object's name hold any character (network
    # names: checked against Engine 20.10): a space, non-ASCII, "?", "#" or "\\"
    # may then arrive percent-encoded inside this parameter, and nowhere else.
    free_text: bool = False


PARAMS: Mapping[str, Param] = {p.name: p for p in (
    # A leading "/" (the daemon accepts "/gw") cannot reach it: "//" and %2F are refused.
    Param("container", ANY,
          "container name, full ID or unique ID prefix; the daemon's {name:.*}, so it may "
          "contain / (legacy link aliases: parent/alias)"),
    Param("image", ANY, "image reference: name[:tag][@digest] or ID; contains / "
          "(library/busybox) and : (busybox:latest)"),
    Param("exec", ANY, "exec instance ID; the daemon's {id:.*} / {name:.*}"),
    Param("network", ANY, "network name, ID or ID prefix; the daemon's {id:.*}; a name may "
          "hold spaces, non-ASCII, ? # \\ (percent-encoded)", free_text=True),
    Param("volume", ANY, "volume name; the daemon's {name:.*}"),
    Param("plugin", ANY, "plugin reference (name[:tag]), contains / for remote names"),
    Param("service", SEGMENT, "swarm service name or ID, one segment ({id})"),
    Param("node", SEGMENT, "swarm node name or ID, one segment ({id})"),
    Param("task", SEGMENT, "swarm task ID, one segment ({id})"),
    Param("secret", SEGMENT, "swarm secret name or ID, one segment ({id})"),
    Param("config", SEGMENT, "swarm config name or ID, one segment ({id})"),
    Param("checkpoint", SEGMENT, "checkpoint name, one segment"),
    Param("profile", PPROF_LOOKUP, "a runtime/pprof profile name (heap, goroutine...)"),
    Param("anything", ANY, "any path: the OPTIONS catch-all {anyroute:.*}"),
)}

# Parameters that name an object: the daemon would look up an empty one and fail,
# so a route matched with an empty value is treated as no route.
_OBJECT_PARAMS = frozenset(PARAMS) - {"anything"}

_PLACEHOLDER = re.compile(r"\{([a-z]+)(?::([a-z]+))?\}")


def _placeholder_pattern(placeholder: re.Match[str]) -> str:
    """The regex of ``{name}`` (the block's) or ``{name:shape}`` (the shape's)."""
    name, shape = placeholder.group(1), placeholder.group(2)
    return SHAPES[shape] if shape is not None else PARAMS[name].pattern


def _compile(template: str) -> re.Pattern[str]:
    """``/containers/{container}/json`` -> ``^/containers/(?P<container>.*)/json$``."""
    out: list[str] = []
    pos = 0
    for placeholder in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos:placeholder.start()]))
        out.append(f"(?P<{placeholder.group(1)}>{_placeholder_pattern(placeholder)})")
        pos = placeholder.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


@dataclass(frozen=True)
class Route:
    method: str
    template: str          # "/containers/{container}/restart"; "{name:shape}" overrides a block
    operation: str         # "container.restart" (Docker's vocabulary)
    resource: str | None   # "container", "image", "network", "volume", "exec", ... or None
    stream: Stream
    body: Body
    # First API version whose daemon registers the route (None: all of them). The
    # router itself ignores the version: a route either exists in a daemon or not.
    min_api: str | None = None
    # False for the debug routes, registered without the /v{version} form.
    versioned: bool = True
    # Operations whose rows also match some paths of this one, and which this row
    # wins over because the daemon registers it first.
    precedes: tuple[str, ...] = ()
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.template))

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(m.group(1) for m in _PLACEHOLDER.finditer(self.template))

    def param_pattern(self, name: str) -> str:
        """The regex this route applies to parameter ``name`` (its block or shape)."""
        for placeholder in _PLACEHOLDER.finditer(self.template):
            if placeholder.group(1) == name:
                return _placeholder_pattern(placeholder)
        raise KeyError(f"route {self.template} has no parameter {name!r}")

    def path_for(self, params: Mapping[str, str]) -> str:
        """The encoded api path of this route with ``params`` filled in."""
        def fill(placeholder: re.Match[str]) -> str:
            name = placeholder.group(1)
            # "/" stays literal in multi-segment parameters: the daemon routes on the
            # decoded path, and dockgate rejects %2F anyway.
            safe = "/" if self.param_pattern(name) in (ANY, NONEMPTY) else ""
            return quote(params[name], safe=safe + _SUB_DELIMS + ":@")
        return _PLACEHOLDER.sub(fill, self.template)


@dataclass(frozen=True)
class Match:
    route: Route
    target: Target
    params: Mapping[str, str]  # decoded path parameters, e.g. {"container": "gw"}

    @property
    def operation(self) -> str:
        return self.route.operation

    def with_param(self, name: str, value: str) -> str:
        """The raw target with path parameter ``name`` set to ``value``.

        The version prefix is kept exactly as the client sent it, the query raw;
        literal parts come from the template. Raises ValueError when the result
        would not classify as the same route with that value (for example a
        one-segment parameter given a value with "/", or a value with dot segments).
        """
        if name not in self.params:
            raise ValueError(f"route {self.route.template} has no parameter {name!r}")
        params = {**self.params, name: value}
        path = self.route.path_for(params)
        if self.target.version is not None:
            version_segment = self.target.raw_path.split("/", 2)[1]
            path = "/" + version_segment + path
        raw = path + ("?" + self.target.query if "?" in self.target.raw else "")
        try:
            again = classify(self.route.method, parse_target(raw))
        except BadTarget as exc:
            raise ValueError(f"{value!r} cannot be a {name} reference: {exc.message}") from exc
        if again is None or again.route != self.route or dict(again.params) != params:
            raise ValueError(f"{value!r} cannot be a {name} reference on {self.route.template}")
        return raw


# --- The route table -----------------------------------------------------------------
#
# Rows follow the daemon's registration order (moby's initRouter: checkpoint,
# container, image, system, volume, build, session, swarm, plugin, distribution,
# grpc, network; debug last), so reading the table side by side with moby is easy.

P, S, H, U, W = Stream.PLAIN, Stream.STREAM, Stream.HIJACK, Stream.UPGRADE, Stream.WEBSOCKET
NB, JB, TB = Body.NONE, Body.JSON, Body.TAR

ROUTES: tuple[Route, ...] = (
    # Checkpoint: registered on every daemon; without --experimental the handler
    # answers 501, but the route exists.
    Route("GET", "/containers/{container}/checkpoints", "checkpoint.list", "container", P, NB),
    Route("POST", "/containers/{container}/checkpoints", "checkpoint.create", "container",
          P, JB),
    # Both are one segment here (moby registers "{name}/checkpoints/{checkpoint}").
    # DELETE /containers/{name:.*} matches these paths too; the checkpoint router is
    # registered first ("or the DELETE gets masked", says moby), so it wins.
    Route("DELETE", "/containers/{container:segment}/checkpoints/{checkpoint}",
          "checkpoint.delete", "container", P, NB, precedes=("container.delete",)),
    # Container.
    Route("HEAD", "/containers/{container}/archive", "container.archive.stat", "container",
          P, NB),
    Route("GET", "/containers/json", "container.list", "container", P, NB),
    Route("GET", "/containers/{container}/export", "container.export", "container", S, NB),
    Route("GET", "/containers/{container}/changes", "container.changes", "container", P, NB),
    Route("GET", "/containers/{container}/json", "container.inspect", "container", P, NB),
    Route("GET", "/containers/{container}/top", "container.top", "container", P, NB),
    Route("GET", "/containers/{container}/logs", "container.logs", "container", S, NB),
    Route("GET", "/containers/{container}/stats", "container.stats", "container", S, NB),
    # A GET that writes: with stdin=1 the websocket feeds the container's stdin.
    Route("GET", "/containers/{container}/attach/ws", "container.attach.websocket",
          "container", W, NB),
    Route("GET", "/exec/{exec}/json", "exec.inspect", "exec", P, NB),
    Route("GET", "/containers/{container}/archive", "container.archive.read", "container",
          S, NB),
    Route("POST", "/containers/create", "container.create", "container", P, JB),
    Route("POST", "/containers/{container}/kill", "container.kill", "container", P, NB),
    Route("POST", "/containers/{container}/pause", "container.pause", "container", P, NB),
    Route("POST", "/containers/{container}/unpause", "container.unpause", "container", P, NB),
    Route("POST", "/containers/{container}/restart", "container.restart", "container", P, NB),
    # JSON: below API 1.24 the daemon still reads a HostConfig from the start body.
    Route("POST", "/containers/{container}/start", "container.start", "container", P, JB),
    Route("POST", "/containers/{container}/stop", "container.stop", "container", P, NB),
    Route("POST", "/containers/{container}/wait", "container.wait", "container", S, NB),
    Route("POST", "/containers/{container}/resize", "container.resize", "container", P, NB),
    Route("POST", "/containers/{container}/attach", "container.attach", "container", H, NB),
    Route("POST", "/containers/{container}/exec", "exec.create", "container", P, JB),
    Route("POST", "/exec/{exec}/start", "exec.start", "exec", H, JB),
    Route("POST", "/exec/{exec}/resize", "exec.resize", "exec", P, NB),
    Route("POST", "/containers/{container}/rename", "container.rename", "container", P, NB),
    Route("POST", "/containers/{container}/update", "container.update", "container", P, JB),
    Route("POST", "/containers/prune", "container.prune", "container", P, NB),
    # The container to commit is in the query (?container=), the config in the body.
    Route("POST", "/commit", "container.commit", "container", P, JB),
    Route("PUT", "/containers/{container}/archive", "container.archive.write", "container",
          P, TB),
    # {name:.*} like the other container routes (checked against Engine 20.10): a
    # legacy link is removed as DELETE /containers/parent/alias?link=1.
    Route("DELETE", "/containers/{container}", "container.delete", "container", P, NB),
    # Image.
    Route("GET", "/images/json", "image.list", "image", P, NB),
    Route("GET", "/images/search", "image.search", "image", P, NB),
    Route("GET", "/images/get", "image.get.all", "image", S, NB),
    Route("GET", "/images/{image}/get", "image.get", "image", S, NB),
    Route("GET", "/images/{image}/history", "image.history", "image", P, NB),
    Route("GET", "/images/{image}/json", "image.inspect", "image", P, NB),
    Route("GET", "/images/{image}/attestations", "image.attestations", "image", P, NB,
          min_api="1.55"),
    Route("POST", "/images/load", "image.load", "image", S, TB),
    # Pull (?fromImage=) or import (?fromSrc=, the tar in the body): one route.
    Route("POST", "/images/create", "image.create", "image", S, TB),
    Route("POST", "/images/{image}/push", "image.push", "image", S, NB),
    Route("POST", "/images/{image}/tag", "image.tag", "image", P, NB),
    Route("POST", "/images/prune", "image.prune", "image", P, NB),
    # {name:.*}: every DELETE under /images/ is an image delete, /images/x/json included.
    Route("DELETE", "/images/{image}", "image.delete", "image", P, NB),
    # System. OPTIONS answers 200 for any path (a CORS catch-all).
    Route("OPTIONS", "/{anything}", "system.options", "system", P, NB),
    Route("GET", "/_ping", "system.ping", "system", P, NB),
    Route("HEAD", "/_ping", "system.ping", "system", P, NB),
    Route("GET", "/events", "system.events", "system", S, NB),
    Route("GET", "/info", "system.info", "system", P, NB),
    Route("GET", "/version", "system.version", "system", P, NB),
    Route("GET", "/system/df", "system.df", "system", P, NB),
    Route("POST", "/auth", "system.auth", "system", P, JB),
    # Volume.
    Route("GET", "/volumes", "volume.list", "volume", P, NB),
    Route("GET", "/volumes/{volume}", "volume.inspect", "volume", P, NB),
    Route("POST", "/volumes/create", "volume.create", "volume", P, JB),
    Route("POST", "/volumes/prune", "volume.prune", "volume", P, NB),
    Route("PUT", "/volumes/{volume}", "volume.update", "volume", P, JB, min_api="1.42"),
    Route("DELETE", "/volumes/{volume}", "volume.delete", "volume", P, NB),
    # Build.
    Route("POST", "/build", "image.build", "image", S, TB),
    Route("POST", "/build/prune", "build.prune", "build", P, NB),
    Route("POST", "/build/cancel", "build.cancel", "build", P, NB),
    # Session (BuildKit, h2c upgrade).
    Route("POST", "/session", "session", "session", U, NB),
    # Swarm.
    Route("GET", "/swarm", "swarm.inspect", "swarm", P, NB),
    Route("GET", "/swarm/unlockkey", "swarm.unlockkey", "swarm", P, NB),
    Route("GET", "/services", "service.list", "service", P, NB),
    Route("GET", "/services/{service}", "service.inspect", "service", P, NB),
    Route("GET", "/services/{service}/logs", "service.logs", "service", S, NB),
    Route("GET", "/nodes", "node.list", "node", P, NB),
    Route("GET", "/nodes/{node}", "node.inspect", "node", P, NB),
    Route("GET", "/tasks", "task.list", "task", P, NB),
    Route("GET", "/tasks/{task}", "task.inspect", "task", P, NB),
    Route("GET", "/tasks/{task}/logs", "task.logs", "task", S, NB),
    Route("GET", "/secrets", "secret.list", "secret", P, NB),
    Route("GET", "/secrets/{secret}", "secret.inspect", "secret", P, NB),
    Route("GET", "/configs", "config.list", "config", P, NB),
    # Returns the config's Data: a read that discloses content.
    Route("GET", "/configs/{config}", "config.inspect", "config", P, NB),
    Route("POST", "/swarm/init", "swarm.init", "swarm", P, JB),
    Route("POST", "/swarm/join", "swarm.join", "swarm", P, JB),
    Route("POST", "/swarm/leave", "swarm.leave", "swarm", P, NB),
    Route("POST", "/swarm/update", "swarm.update", "swarm", P, JB),
    Route("POST", "/swarm/unlock", "swarm.unlock", "swarm", P, JB),
    Route("POST", "/services/create", "service.create", "service", P, JB),
    Route("POST", "/services/{service}/update", "service.update", "service", P, JB),
    Route("POST", "/nodes/{node}/update", "node.update", "node", P, JB),
    Route("POST", "/secrets/create", "secret.create", "secret", P, JB),
    Route("POST", "/secrets/{secret}/update", "secret.update", "secret", P, JB),
    Route("POST", "/configs/create", "config.create", "config", P, JB),
    Route("POST", "/configs/{config}/update", "config.update", "config", P, JB),
    Route("DELETE", "/services/{service}", "service.delete", "service", P, NB),
    Route("DELETE", "/nodes/{node}", "node.delete", "node", P, NB),
    Route("DELETE", "/secrets/{secret}", "secret.delete", "secret", P, NB),
    Route("DELETE", "/configs/{config}", "config.delete", "config", P, NB),
    # Plugin.
    Route("GET", "/plugins", "plugin.list", "plugin", P, NB),
    Route("GET", "/plugins/{plugin}/json", "plugin.inspect", "plugin", P, NB),
    Route("GET", "/plugins/privileges", "plugin.privileges", "plugin", P, NB),
    Route("POST", "/plugins/pull", "plugin.pull", "plugin", S, JB),
    Route("POST", "/plugins/{plugin}/push", "plugin.push", "plugin", S, NB),
    Route("POST", "/plugins/{plugin}/enable", "plugin.enable", "plugin", P, NB),
    Route("POST", "/plugins/{plugin}/disable", "plugin.disable", "plugin", P, NB),
    Route("POST", "/plugins/{plugin}/upgrade", "plugin.upgrade", "plugin", S, JB),
    Route("POST", "/plugins/{plugin}/set", "plugin.set", "plugin", P, JB),
    Route("POST", "/plugins/create", "plugin.create", "plugin", P, TB),
    Route("DELETE", "/plugins/{plugin}", "plugin.delete", "plugin", P, NB),
    # Distribution: asks the registry for the manifest of an image reference.
    Route("GET", "/distribution/{image}/json", "distribution.inspect", "image", P, NB),
    # gRPC (BuildKit, h2c upgrade; deprecated in API 1.53 but still registered).
    Route("POST", "/grpc", "grpc", "session", U, NB),
    # Network: registered last among the API routers. "/networks/" is the one
    # trailing-slash route of the API; inspect is {id:.+}, the others {id:.*}.
    Route("GET", "/networks", "network.list", "network", P, NB),
    Route("GET", "/networks/", "network.list", "network", P, NB),
    Route("GET", "/networks/{network:nonempty}", "network.inspect", "network", P, NB),
    Route("POST", "/networks/create", "network.create", "network", P, JB),
    Route("POST", "/networks/{network}/connect", "network.connect", "network", P, JB),
    Route("POST", "/networks/{network}/disconnect", "network.disconnect", "network", P, JB),
    Route("POST", "/networks/prune", "network.prune", "network", P, NB),
    Route("DELETE", "/networks/{network}", "network.delete", "network", P, NB),
    # Debug: always on, unversioned only. The daemon registers these for every
    # method; dockgate classifies GET only (other methods are None: denied).
    Route("GET", "/debug/vars", "debug.vars", "debug", P, NB, versioned=False),
    Route("GET", "/debug/pprof/", "debug.pprof.index", "debug", P, NB, versioned=False),
    Route("GET", "/debug/pprof/cmdline", "debug.pprof.cmdline", "debug", P, NB,
          versioned=False),
    # Burns CPU for ?seconds= (30 by default) and streams the result.
    Route("GET", "/debug/pprof/profile", "debug.pprof.profile", "debug", S, NB,
          versioned=False),
    Route("GET", "/debug/pprof/symbol", "debug.pprof.symbol", "debug", P, NB, versioned=False),
    Route("GET", "/debug/pprof/trace", "debug.pprof.trace", "debug", S, NB, versioned=False),
    Route("GET", "/debug/pprof/{profile}", "debug.pprof.lookup", "debug", P, NB,
          versioned=False),
)

_BY_METHOD: Mapping[str, tuple[Route, ...]] = {
    method: tuple(r for r in ROUTES if r.method == method)
    for method in dict.fromkeys(r.method for r in ROUTES)
}


def operations() -> tuple[str, ...]:
    """Every operation name of the table, once each, in table order."""
    return tuple(dict.fromkeys(r.operation for r in ROUTES))


def routes_for(operation: str) -> tuple[Route, ...]:
    """The rows of one operation (``system.ping`` has two: GET and HEAD)."""
    return tuple(r for r in ROUTES if r.operation == operation)


def classify(method: str, target: Target) -> Match | None:
    """The route the daemon would run for ``method`` and ``target``, or None.

    ``method`` is compared exactly: gorilla/mux is case-sensitive, so ``get`` is
    no route. None also when two rows match and the first is not known to win
    (ambiguous), or when an object parameter would be empty.
    """
    found: list[Match] = []
    for route in _BY_METHOD.get(method, ()):
        if target.version is not None and not route.versioned:
            continue
        matched = route.pattern.match(target.api_path)
        if matched is not None:
            found.append(Match(route, target, matched.groupdict()))
    if not found:
        return None
    match = found[0]
    if any(other.operation not in match.route.precedes for other in found[1:]):
        return None
    if any(value == "" for name, value in match.params.items() if name in _OBJECT_PARAMS):
        return None
    if target.free_text:
        for name, value in match.params.items():
            if not PARAMS[name].free_text and any(map(_is_free_char, value)):
                char = next(c for c in value if _is_free_char(c))
                raise BadTarget(f"request target {target.raw!r}: decoded path contains "
                                f"{_char_name(char)} in the {name} parameter; only network "
                                "names may hold spaces, non-ASCII, ? # \\ (the daemon allows "
                                "them in no other name)")
    return match


# --- parse_target -------------------------------------------------------------------

# RFC 3986: the characters a path or query may carry unencoded. Everything else
# (space, controls, non-ASCII, backslash, "{", "|", "^"...) must be percent-encoded;
# components disagree on what they do with such bytes, so dockgate refuses them.
_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_PATH_CHARS = frozenset(_UNRESERVED + _SUB_DELIMS + ":@/%")
_QUERY_CHARS = _PATH_CHARS | {"?"}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# The daemon's router accepts /v{version:[0-9.]+}/ and checks the value later, so
# "/v1.41.0/" and "/v01.41/" run as API 1.41 and "/v./" as 0. dockgate accepts one
# spelling per version: MAJOR.MINOR without leading zeros.
_VERSION_SEGMENT = re.compile(r"v[0-9.]+")
_CANONICAL_VERSION = re.compile(r"(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)")


# Podman's own API. dockgate routes and checks only the Docker Engine API (which
# Podman serves as well); /libpod/... that no Engine API route matches (all of it
# but OPTIONS, the Engine API's catch-all) is refused with this explanation, by
# every decider, whatever a variable or a policy says.
LIBPOD_REFUSED = ("is Podman's libpod API, which dockgate does not proxy: only the Docker "
                  "Engine API is routed and checked, and Podman serves that too (use a "
                  "Docker API client: the docker CLI, docker-py, podman-docker)")


def is_libpod(target: Target) -> bool:
    """True for Podman's libpod API paths (``/libpod/...``, any version prefix)."""
    return target.api_path == "/libpod" or target.api_path.startswith("/libpod/")


def _char_name(char: str) -> str:
    return repr(char) if char.isprintable() and char != " " else f"U+{ord(char):04X}"


def _is_free_char(char: str) -> bool:
    """A character only a free-text parameter may hold: space, ? # \\, printable non-ASCII."""
    return char in " ?#\\" or (ord(char) >= 0x80 and char.isprintable())


def _check_decoded(path: str, raw: str, stage: str, *, free: bool = False) -> None:
    """Rules every decoding stage of the path must pass.

    ``free``: the characters of ``_is_free_char`` are let through (classify then
    checks that they sit inside a free-text parameter).
    """
    for char in path:
        if free and _is_free_char(char):
            continue
        if ord(char) < 0x21 or ord(char) >= 0x7F:
            raise BadTarget(f"request target {raw!r}: {stage} path contains "
                            f"{_char_name(char)} (control, space or non-ASCII)")
        if char in "\\?#":
            raise BadTarget(f"request target {raw!r}: {stage} path contains {char!r} "
                            "(backslash, query or fragment delimiter inside the path)")
    segments = path.split("/")[1:]
    # A trailing slash (last segment empty) is allowed: the daemon routes GET
    # /networks/ and {name:.*} routes take it as part of the name.
    if "" in segments[:-1]:
        raise BadTarget(f"request target {raw!r}: {stage} path has an empty segment (//); "
                        f"canonical form: {_collapse(path)}")
    if "." in segments or ".." in segments:
        # The daemon answers 301 to the cleaned path; a proxy must not forward it.
        raise BadTarget(f"request target {raw!r}: {stage} path has a dot segment "
                        f"(. or ..); canonical form: {_clean(path)}")


def _collapse(path: str) -> str:
    return re.sub("/{2,}", "/", path)


def _clean(path: str) -> str:
    """What the daemon's 301 points to: path.Clean, keeping a trailing "/" (gorilla/mux)."""
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    trailing = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing


def _decode(path: str, raw: str, stage: str) -> str:
    try:
        return unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget(f"request target {raw!r}: {stage} path contains bytes that are not "
                        "UTF-8") from None


def _canonical_version(version: str) -> str | None:
    """``1.41.0`` / ``01.41`` -> ``1.41`` when it is that version to the daemon."""
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts) or any(int(p) for p in parts[2:]):
        return None
    return f"{int(parts[0])}.{int(parts[1])}"


def parse_target(raw: str) -> Target:
    """Parse an origin-form request target, or raise BadTarget saying what is wrong.

    The path is percent-decoded once (as UTF-8), like the daemon. The same
    structural rules (no dot segment, no empty segment, no encoded "/", no
    controls) hold for the raw path, the path decoded once, twice, and again until
    decoding changes nothing: the daemon decodes once, but a component that decodes
    again must not see a different path either. ``%2563`` stays allowed: once
    decoded it is the literal ``%63``, which no route matches. Encoded spaces,
    non-ASCII, "?", "#" and "\\" are let through the decoded path
    (``Target.free_text``) unless a second decoding would change the path;
    ``classify`` decides whether the parameter they sit in may hold them.
    """
    if raw == "":
        raise BadTarget("empty request target; expected an origin-form path like /version")
    if raw == "*":
        raise BadTarget("asterisk-form request target '*' is not an Engine API path; "
                        "expected an origin-form path like /_ping")
    if not raw.startswith("/"):
        if "://" in raw:
            try:
                parts = urlsplit(raw)
            except ValueError:  # "Invalid IPv6 URL" (found by fuzz/fuzz_target.py)
                raise BadTarget(f"absolute-form request target {raw!r}: send the origin "
                                "form, a path starting with /") from None
            canonical = (parts.path or "/") + ("?" + parts.query if parts.query else "")
            raise BadTarget(f"absolute-form request target {raw!r}: send the origin form "
                            f"{canonical!r}")
        raise BadTarget(f"request target {raw!r} is not origin-form (authority-form or "
                        "relative); expected a path starting with /")
    for char in raw:
        if ord(char) < 0x21 or ord(char) >= 0x7F:
            raise BadTarget(f"request target {raw!r} contains {_char_name(char)} "
                            "(control, space or non-ASCII): percent-encode it")
    if "#" in raw:
        raise BadTarget(f"request target {raw!r} has a fragment (#): clients never send one")
    path, sep, query = raw.partition("?")
    for char in path:
        if char not in _PATH_CHARS:
            raise BadTarget(f"request target {raw!r}: {char!r} must be percent-encoded "
                            "in the path")
    for char in query:
        if char not in _QUERY_CHARS:
            raise BadTarget(f"request target {raw!r}: {char!r} must be percent-encoded "
                            "in the query")
    if _BAD_ESCAPE.search(raw):
        raise BadTarget(f"request target {raw!r} has an invalid percent-escape "
                        "(% must be followed by two hex digits)")
    if ";" in query:
        # Go's query parser rejects ";" separators; Python's treats them as data. A
        # policy must not read a parameter the daemon reads differently.
        raise BadTarget(f"request target {raw!r}: ';' in the query must be "
                        "percent-encoded (%3B)")
    _check_decoded(path, raw, "raw")
    once = _decode(path, raw, "decoded")
    if once.count("/") != path.count("/"):
        raise BadTarget(f"request target {raw!r} encodes '/' (%2F) in the path; the daemon "
                        "routes the decoded slash: send it literally")
    _check_decoded(once, raw, "decoded", free=True)
    twice = _decode(once, raw, "twice-decoded")
    if twice.count("/") != once.count("/"):
        raise BadTarget(f"request target {raw!r} double-encodes '/' (%252F) in the path")
    # A path that a second decoding changes may not carry the free-text characters
    # (no double-decoding games: %253F is the literal "%3F", never a "?").
    _check_decoded(twice, raw, "twice-decoded", free=twice == once)
    # And so on, however often a component decodes: %25252e is "." to the third one.
    # Each decoding that changes the path shortens it, so this ends.
    stage = twice
    while "%" in stage:
        again = _decode(stage, raw, "repeatedly decoded")
        if again == stage:
            break
        if again.count("/") != stage.count("/"):
            raise BadTarget(f"request target {raw!r} encodes '/' in the path (decoded "
                            "repeatedly it is a '/')")
        _check_decoded(again, raw, "repeatedly decoded")
        stage = again
    free_text = any(map(_is_free_char, once))

    version: str | None = None
    api_path = once
    segments = once.split("/")
    # Same shape as the daemon's versionMatcher: a whole first segment, then "/".
    if len(segments) > 2 and _VERSION_SEGMENT.fullmatch(segments[1]):
        candidate = segments[1][1:]
        if segments[2] == "libpod" and not _CANONICAL_VERSION.fullmatch(candidate):
            # Podman's clients write /v4.3.1/libpod/...: say why, not "loose version".
            raise BadTarget(f"request target {raw!r} {LIBPOD_REFUSED}")
        if not _CANONICAL_VERSION.fullmatch(candidate):
            fixed = _canonical_version(candidate)
            hint = (f"canonical form: /v{fixed}/{'/'.join(segments[2:])}"
                    if fixed else "expected /v<major>.<minor>/ like /v1.41/")
            raise BadTarget(f"request target {raw!r}: loose API version {candidate!r}; {hint}")
        version = candidate
        api_path = "/" + "/".join(segments[2:])
    return Target(raw=raw, path=once, version=version, api_path=api_path,
                  query=query if sep else "", free_text=free_text)
