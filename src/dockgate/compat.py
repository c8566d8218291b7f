"""Tecnativa's (and linuxserver's) docker-socket-proxy variables as a Decider.

Theory of operation. Tecnativa's proxy is an HAProxy configuration driven by
environment variables. Its decision, for a request it forwards, is:

1. the POST gate: deny (403) unless the method is GET or HEAD or ``POST`` is on.
   It comes FIRST, so with POST off the ``ALLOW_*`` flags below grant nothing;
2. the action flags (``ALLOW_RESTARTS``, ``ALLOW_START``, ``ALLOW_STOP``,
   ``ALLOW_PAUSE``, ``ALLOW_UNPAUSE``), then one rule per section variable
   (``CONTAINERS``, ``IMAGES``...): the first rule whose variable is on and whose
   pattern matches allows;
3. deny (403) everything else.

Every pattern is a case-insensitive regex anchored at the start only, matched
against the path (no query) percent-decoded once, with an optional version
prefix: ``^(/v[0-9.]+)?/containers`` also matches ``/containersXYZ`` and
``/CONTAINERS/json``. dockgate decides on ``request.target.path``, which is that
same decoded path, and differs from HAProxy in one way only: where Tecnativa
would forward a request that has no Engine API route, dockgate answers 404
itself ("page not found", what the daemon would answer) and forwards nothing.

A variable is on exactly when HAProxy's ``env(X) -m bool`` says so: the value,
read like ``strtoll`` with no leading blanks, starts with an optional sign and
digits that are not all zero (checked against haproxy 2.6: ``1``, ``2``,
``-1``, ``01``, ``+1``, ``1 ``, ``1abc``, ``1.0`` are on; ``true``, ``yes``,
``on``, `` 1``, ``0x1``, ``0``, ``00``, empty and unset are off). Values people
write meaning "on" but read as off (``true``...) produce a startup warning.

The linuxserver variant adds, before everything, deny rules for reading a
container's archive/changes/export/logs/top unless ``ALLOW_ARCHIVE`` ...
``ALLOW_TOP`` (they apply even with ``CONTAINERS=1``), evaluates the action
flags BEFORE the POST gate (so they work with POST off, for any method), allows
an optional ``/libpod`` in those patterns, and has ``LIBPOD_<SECTION>``
variables for Podman's ``/libpod/<section>`` paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from dockgate import routes
from dockgate.decision import Allow, Client, Decision, Deny, Facts, Request, libpod_refusal
from dockgate.errors import ConfigError
from dockgate.hazards import DANGEROUS

VARIANTS = ("tecnativa", "linuxserver")

_VERSION = r"^(/v[0-9.]+)?"
_LIBPOD = r"(/libpod)?"
# The container reference in the action and read-deny patterns (not a full name grammar:
# Tecnativa's pattern, so a reference with other characters is not matched by these rules).
_REFERENCE = r"[a-zA-Z0-9_.-]+"
# ASCII: HAProxy's -i folds ASCII letters only (U+017F, the long s, is not an 's').
_FLAGS = re.IGNORECASE | re.ASCII

# HAProxy's string -> integer cast (as ``env(X) -m bool`` applies it): an optional sign,
# then digits up to the first non-digit; no leading blanks; overflow saturates.
_HAPROXY_TRUE = re.compile(r"[+-]?0*[1-9]", re.ASCII)
_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_MEANS_ON = {"true", "yes", "on", "y", "t", "enable", "enabled"}
_MEANS_OFF = {"", "0", "false", "no", "off", "n", "f", "disable", "disabled"}


def haproxy_bool(value: str | None) -> bool:
    """Whether HAProxy's ``env(X) -m bool`` reads ``value`` as true (None: unset)."""
    return value is not None and _HAPROXY_TRUE.match(value) is not None


@dataclass(frozen=True)
class Section:
    """A section variable and the path prefix it opens."""

    variable: str
    prefix: str
    default: bool = False


SECTIONS: tuple[Section, ...] = (
    Section("AUTH", "/auth"),
    Section("BUILD", "/build"),
    Section("COMMIT", "/commit"),
    Section("CONFIGS", "/configs"),
    Section("CONTAINERS", "/containers"),
    Section("DISTRIBUTION", "/distribution"),
    Section("EVENTS", "/events", default=True),
    Section("EXEC", "/exec"),
    Section("GRPC", "/grpc"),
    Section("IMAGES", "/images"),
    Section("INFO", "/info"),
    Section("NETWORKS", "/networks"),
    Section("NODES", "/nodes"),
    Section("PING", "/_ping", default=True),
    Section("PLUGINS", "/plugins"),
    Section("SECRETS", "/secrets"),
    Section("SERVICES", "/services"),
    Section("SESSION", "/session"),
    Section("SWARM", "/swarm"),
    Section("SYSTEM", "/system"),
    Section("TASKS", "/tasks"),
    Section("VERSION", "/version", default=True),
    Section("VOLUMES", "/volumes"),
)

# Action flags: variable -> the container actions (path suffixes) it allows.
ACTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ALLOW_RESTARTS", ("stop", "restart", "kill")),
    ("ALLOW_START", ("start",)),
    ("ALLOW_STOP", ("stop",)),
    ("ALLOW_PAUSE", ("pause",)),
    ("ALLOW_UNPAUSE", ("unpause",)),
)

# linuxserver's read-deny layer: variable -> the container sub-path it guards. "change" is
# a prefix of the route's "changes", as in linuxserver's documented rule.
READ_GUARDS: tuple[tuple[str, str], ...] = (
    ("ALLOW_ARCHIVE", "archive"),
    ("ALLOW_CHANGES", "change"),
    ("ALLOW_EXPORT", "export"),
    ("ALLOW_LOGS", "logs"),
    ("ALLOW_TOP", "top"),
)

LIBPOD_DEFAULTS = frozenset({"LIBPOD_PING", "LIBPOD_VERSION"})


@dataclass(frozen=True)
class Rule:
    """One allow (or, for the read guards, deny) rule: a variable and its pattern."""

    variable: str
    pattern: re.Pattern[str]


def _section_rules(variant: str) -> tuple[Rule, ...]:
    rules = [Rule(s.variable, re.compile(_VERSION + re.escape(s.prefix), _FLAGS))
             for s in SECTIONS]
    if variant == "linuxserver":
        rules += [Rule(f"LIBPOD_{s.variable}",
                       re.compile(_VERSION + "/libpod" + re.escape(s.prefix), _FLAGS))
                  for s in SECTIONS]
    return tuple(rules)


def _action_rules(variant: str) -> tuple[Rule, ...]:
    libpod = _LIBPOD if variant == "linuxserver" else ""
    return tuple(
        Rule(variable, re.compile(
            f"{_VERSION}{libpod}/containers/{_REFERENCE}/({'|'.join(actions)})", _FLAGS))
        for variable, actions in ACTIONS)


def _guard_rules() -> tuple[Rule, ...]:
    return tuple(
        Rule(variable, re.compile(
            f"{_VERSION}{_LIBPOD}/(containers|pods)/{_REFERENCE}/{suffix}", _FLAGS))
        for variable, suffix in READ_GUARDS)


def variables(variant: str) -> tuple[str, ...]:
    """Every access variable the variant reads, in documentation order."""
    _check_variant(variant)
    names = ["POST", *(name for name, _ in ACTIONS), *(s.variable for s in SECTIONS)]
    if variant == "linuxserver":
        names += [name for name, _ in READ_GUARDS]
        names += [f"LIBPOD_{s.variable}" for s in SECTIONS]
    return tuple(names)


def defaults(variant: str) -> frozenset[str]:
    """The variables that are on when unset (the proxy image's own ENV defaults)."""
    _check_variant(variant)
    on = {s.variable for s in SECTIONS if s.default}
    if variant == "linuxserver":
        on |= LIBPOD_DEFAULTS
    return frozenset(on)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"compat variant {variant!r} is unknown: use one of "
                          f"{', '.join(VARIANTS)}")


def _effective_value(env: Mapping[str, str], name: str, variant: str) -> str | None:
    if name in env:
        return env[name]
    return "1" if name in defaults(variant) else None


def grants(env: Mapping[str, str], variant: str) -> dict[str, bool]:
    """Each access variable of the variant -> on/off, as the proxy being replaced reads it."""
    return {name: haproxy_bool(_effective_value(env, name, variant))
            for name in variables(variant)}


def truth_warnings(env: Mapping[str, str], variant: str) -> list[str]:
    """One warning per variable whose value is not a plain integer and may not mean what it says."""
    warnings = []
    for name in variables(variant):
        if name not in env:
            continue
        value = env[name]
        if _PLAIN_INTEGER.fullmatch(value):
            continue
        on = haproxy_bool(value)
        word = value.strip().lower()
        if not on and word in _MEANS_OFF:
            continue
        how = "ON" if on else "OFF"
        advice = f"write {name}=1" if on or word in _MEANS_ON or haproxy_bool(word) else (
            f"write {name}=1 to turn it on or {name}=0 to turn it off")
        warnings.append(f"{name}={value!r} is read as {how}, as Tecnativa's HAProxy reads it "
                        f"(only a number that is not 0, with nothing before it, is on); "
                        f"{advice}")
    return warnings


def libpod_warnings(env: Mapping[str, str], variant: str) -> list[str]:
    """One warning per LIBPOD_* variable set on: it grants nothing (libpod is refused)."""
    if variant != "linuxserver":
        return []
    return [f"{name}={env[name]!r} grants nothing: dockgate refuses Podman's libpod API "
            "(/libpod/...) whatever the variables say; Podman's Docker-compatible API is "
            f"granted by the Docker variables ({name.removeprefix('LIBPOD_')}...)"
            for name in variables(variant)
            if name.startswith("LIBPOD_") and name in env and haproxy_bool(env[name])]


_MEMO_SIZE: Final = 4096  # as many as connection.route keeps


class TecnativaDecider:
    """Decides exactly as Tecnativa's (or linuxserver's) HAProxy rules, with readable denials."""

    def __init__(self, on: Mapping[str, bool], variant: str = "tecnativa", *,
                 hints: bool = True) -> None:
        _check_variant(variant)
        self.hints = hints  # False: denials without the how-to-allow hint (see _hint)
        self.variant = variant
        self.name = f"compat:{variant}"  # read on every request (the audit line's policy)
        self.on = dict(on)
        self._actions = _action_rules(variant)
        self._sections = _section_rules(variant)
        self._guards = _guard_rules() if variant == "linuxserver" else ()
        self._hints: dict[tuple[str, tuple[tuple[str, ...], ...]], str] = {}
        # Decisions by request, which is all they depend on. Keyed by identity: the
        # shell hands the same Request object for a repeated target (connection.route),
        # and the entry keeps it alive, so an id is never reused while it is here.
        self._memo: dict[int, tuple[Request, Decision]] = {}

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        memo = self._memo.get(id(request))
        if memo is not None and memo[0] is request:
            return memo[1]
        decision = self._decide(request)
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[id(request)] = (request, decision)
        return decision

    def _decide(self, request: Request) -> Decision:
        refusal = libpod_refusal(request) if request.match is None else None
        if refusal is not None:
            return refusal  # whatever LIBPOD_* says: see libpod_warnings
        # (OPTIONS /libpod/... is the Engine API's catch-all route: decided as such.)
        path = request.target.path
        for rule in self._guards:
            if rule.pattern.match(path) and not self.on[rule.variable]:
                return self._deny(request, f"{rule.variable} is off", rule.variable,
                                  [(rule.variable,)])
        if self.variant == "linuxserver":
            allowed = self._first_allowing(self._actions, path)
            if allowed is not None:
                return self._allow(request, allowed)
        if request.method not in ("GET", "HEAD") and not self.on["POST"]:
            return self._deny(request, "POST is off: only GET and HEAD are allowed", "POST",
                              self._fixes(path, post_gate_closed=True))
        rules = self._sections if self.variant == "linuxserver" else (
            self._actions + self._sections)
        allowed = self._first_allowing(rules, path)
        if allowed is not None:
            return self._allow(request, allowed)
        fixes = self._fixes(path, post_gate_closed=False)
        if not fixes:
            return self._deny(request, "no Tecnativa variable grants this path",
                              "default-deny", [])
        off = [fix[-1] for fix in fixes]
        verb = "is" if len(off) == 1 else "are"
        return self._deny(request, f"{_join(off, 'and')} {verb} off", off[-1], fixes)

    def _first_allowing(self, rules: Iterable[Rule], path: str) -> str | None:
        for rule in rules:
            if self.on[rule.variable] and rule.pattern.match(path):
                return rule.variable
        return None

    def _fixes(self, path: str, *, post_gate_closed: bool) -> list[tuple[str, ...]]:
        """The alternative sets of variables that would allow ``path``, narrowest first."""
        fixes: list[tuple[str, ...]] = []
        for rule in self._actions + self._sections:
            if not rule.pattern.match(path):
                continue
            needs_post = post_gate_closed and not (
                self.variant == "linuxserver" and rule in self._actions)
            fixes.append(("POST", rule.variable) if needs_post else (rule.variable,))
        return fixes

    def _allow(self, request: Request, variable: str) -> Decision:
        if request.match is None:
            return Deny(f"page not found (dockgate: {request.method} {request.target.api_path} "
                        f"is not a Docker Engine API route; {variable} would let it through to "
                        "the daemon, which answers 404)", status=404, rule="no-route")
        return Allow(rule=variable)

    def _deny(self, request: Request, why: str, rule: str,
              fixes: list[tuple[str, ...]]) -> Deny:
        what = request.match.operation if request.match is not None else "it"
        if fixes and (not self.hints or request.match is None):
            options = [" and ".join(f"{name}=1" for name in fix) for fix in fixes]
            hint = f" (set {_join(options, 'or')} to allow {what})" if self.hints else ""
        elif fixes:
            key = (what, tuple(fixes))
            if key not in self._hints:
                self._hints[key] = self._hint(what, fixes)
            hint = self._hints[key]
        elif rule == "POST":
            hint = "; no Tecnativa variable grants this path"
        else:
            hint = ""
        return Deny(f"dockgate: {request.method} {request.target.api_path} denied — {why}{hint}",
                    status=403, rule=rule)


    def _hint(self, operation: str, fixes: list[tuple[str, ...]]) -> str:
        """How to allow ``operation``: the variables, what else they open, the narrowest way.

        Computed once per operation and set of fixes (denials stay cheap): each fix is
        tried on a copy of this decider, and what it would newly allow that is root
        on the host or close to it is named.
        """
        options = [" and ".join(f"{name}=1" for name in fix) for fix in fixes]
        notes = []
        before = {route.operation for route, _ in granted_routes(self)}
        for fix in fixes:
            trial = TecnativaDecider({**self.on, **dict.fromkeys(fix, True)}, self.variant)
            opened = {route.operation for route, _ in granted_routes(trial)} - before
            risky = sorted(opened & DANGEROUS.keys())
            setting = " with ".join(f"{name}=1" for name in reversed(fix))
            if risky:
                notes.append(f"{setting} also allows {', '.join(risky)} for any container "
                             "or body: root on the host or close to it")
            elif fix[-1] in _ACTION_WORDS:
                notes.append(f"{fix[-1]}=1 lets every client {_ACTION_WORDS[fix[-1]]}")
        notes.append(f"narrowest: {_narrowest(operation)}")
        return f" (set {_join(options, 'or')} to allow {operation}; {'; '.join(notes)})"


def _narrowest(operation: str) -> str:
    """The smallest setting that grants ``operation`` alone."""
    # policy.RESTART_VARIABLE and INSPECT_VARIABLE (policy imports nothing from here).
    if operation == "container.restart":
        return "ALLOW_RESTART_CONTAINERS=NAME restarts only the container NAME"
    if operation == "container.inspect":
        return "ALLOW_INSPECT_CONTAINERS=NAME inspects only the container NAME"
    grant = f"allow: [{operation}]"
    if operation == "container.create":
        grant += " with create: deny: [all]"
    return f"a policy file (--policy FILE) with a grant {grant}"


def _join(items: list[str], word: str) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {word} " + items[-1]


def decider_from_env(env: Mapping[str, str], variant: str = "tecnativa"
                     ) -> tuple[TecnativaDecider, list[str]]:
    """The decider the variables describe, and the startup warnings about their values."""
    return (TecnativaDecider(grants(env, variant), variant),
            truth_warnings(env, variant) + libpod_warnings(env, variant))


# --- The risk report: derived by running the decider over the route table. -------------

SAMPLE_PARAM = "dgtest-x"
_AUDIT_CLIENT = Client(listener="audit", transport="unix")

# Plain words for what an action flag grants.
_ACTION_WORDS = {
    "ALLOW_RESTARTS": "restart, stop or kill ANY container (kill takes any signal)",
    "ALLOW_START": "start ANY container",
    "ALLOW_STOP": "stop ANY container",
    "ALLOW_PAUSE": "pause ANY container",
    "ALLOW_UNPAUSE": "unpause ANY container",
}

ROOT = "equivalent to root on the host"

# Operations worth a warning, with what they let a client do. tests/test_compat_report.py
# checks every key against the route table, so a renamed operation cannot drop its warning.
RISKS: dict[str, str] = {
    "container.create": "can create containers with host mounts: equivalent to root on the "
                        "host (Binds /:/host, privileged mode, host namespaces)",
    "container.update": "can change any container's resource limits and restart policy",
    "container.archive.write": "can write files into any container",
    "container.archive.read": "can read any file of any container (archive read)",
    "container.export": "can read any container's whole filesystem (export)",
    "container.inspect": "can read every container's configuration, including environment "
                         "variables (env vars, secrets)",
    "container.logs": "can read the logs of any container",
    "container.attach": "can attach to any container's stdin and output",
    "container.attach.websocket": "can attach to any container over a websocket GET; "
                                  "stdin=1 writes into it",
    "container.kill": "can kill ANY container, with any signal",
    "container.restart": "can restart ANY container",
    "container.stop": "can stop ANY container",
    "container.start": "can start ANY container",
    "container.delete": "can delete any container",
    "container.prune": "can delete every stopped container",
    "container.commit": "can snapshot any container's filesystem into an image",
    "exec.create": "can create exec sessions in any container (EXEC create): any command, "
                   "any user, privileged",
    "exec.start": "can start exec sessions (EXEC): runs commands inside containers",
    "image.build": "can build images (BUILD): runs arbitrary build steps on the daemon, "
                   "with host networking when asked",
    "image.create": "can pull any image from any registry, or import one from a URL",
    "image.push": "can push images to registries with the credentials it sends",
    "image.load": "can load arbitrary images from a tar",
    "image.get": "can export images (layers may hold secrets)",
    "image.get.all": "can export images (layers may hold secrets)",
    "image.delete": "can delete images",
    "volume.create": "can create volumes with driver options (o=bind,device=/ exposes host "
                     "paths to containers)",
    "plugin.pull": f"can install plugins, which run with host privileges: {ROOT}",
    "plugin.create": f"can create plugins, which run with host privileges: {ROOT}",
    "plugin.enable": f"can enable plugins, which run with host privileges: {ROOT}",
    "plugin.upgrade": f"can upgrade plugins, which run with host privileges: {ROOT}",
    "plugin.set": "can change plugin settings (mounts, devices)",
    "config.inspect": "can read swarm configs, including their data",
    "swarm.unlockkey": "can read the swarm unlock key",
    "swarm.init": "can create a swarm (this node becomes a manager)",
    "swarm.join": "can join this node to another swarm",
    "swarm.leave": "can take this node out of its swarm",
    "service.create": f"can create swarm services (containers with host mounts): {ROOT}",
    "service.update": f"can change swarm services (containers with host mounts): {ROOT}",
    "service.logs": "can read the logs of any service",
    "task.logs": "can read the logs of any task",
    "session": "can open BuildKit sessions (h2c upgrade)",
    "grpc": "can speak gRPC to the daemon (h2c upgrade), bypassing its HTTP router",
    "system.auth": "can check registry credentials through the daemon",
}


def sample_path(route: routes.Route) -> str:
    """The route's path with every parameter set to a sample reference (``dgtest-x``)."""
    return route.path_for(dict.fromkeys(route.param_names, SAMPLE_PARAM))


def granted_routes(decider: TecnativaDecider) -> list[tuple[routes.Route, str]]:
    """Each route the decider allows (with sample parameters), and the variable that allows it."""
    granted = []
    decider = TecnativaDecider(decider.on, decider.variant, hints=False)  # no hints: faster
    for route in routes.ROUTES:
        params = dict.fromkeys(route.param_names, SAMPLE_PARAM)
        target = routes.parse_target(route.path_for(params))
        request = Request(route.method, target, routes.Match(route, target, params))
        decision = decider.decide(_AUDIT_CLIENT, request, Facts())
        if isinstance(decision, Allow):
            granted.append((route, decision.rule))
    return granted


def risk_report(env: Mapping[str, str], variant: str = "tecnativa", *,
                warnings: bool = True) -> str:
    """What the variables really grant, in plain words, dangerous grants flagged.

    ``warnings=False`` leaves out the truth-value warnings (``serve`` logs them already).
    """
    decider, found = decider_from_env(env, variant)
    on = decider.on
    given = sorted(name for name in on if on[name] and name in env)
    defaulted = sorted(name for name in on if on[name] and name not in env)
    granted = granted_routes(decider)
    lines = [f"dockgate audit: what these {variant} variables grant", ""]
    lines.append("On: " + (", ".join([*(f"{n}={env[n]!r}" for n in given),
                                      *(f"{n} (default)" for n in defaulted)]) or "nothing"))
    lines.append("Everything else is off.")
    if warnings:
        lines.extend(f"WARNING: {warning}" for warning in found)
    lines += ["", f"Granted ({len(granted)} of {len(routes.ROUTES)} Engine API routes, "
              "on any API version, for ANY container/object, any request body):"]
    by_variable: dict[str, list[routes.Route]] = {}
    for route, variable in granted:
        by_variable.setdefault(variable, []).append(route)
    for variable, granted_by in by_variable.items():
        words = _ACTION_WORDS.get(variable) or f"{_section_prefix(variable)} endpoints"
        lines.append(f"  {variable}: {words}")
        lines.extend(f"      {route.method:<7} {route.template:<42} {route.operation}"
                     for route in granted_by)
    if not granted:
        lines.append("  nothing")
    idle = [name for name in (*given, *defaulted) if name not in by_variable and name != "POST"]
    if idle:
        lines += ["", f"On but granting nothing here: {', '.join(idle)}"
                  + ("" if on["POST"] else " (their endpoints need POST=1)")]
    risks = _risks(granted, on)
    lines += ["", "Risks:" if risks else "Risks: none of the granted operations is flagged."]
    lines.extend(f"  DANGER: {risk}" for risk in risks)
    lines += ["", "Denied requests get 403 with a message naming the variable to set. "
              "Requests under a granted prefix that are no Engine API route (e.g. "
              "/containersXYZ) get 404 from dockgate and never reach the daemon."]
    return "\n".join(lines) + "\n"


def _section_prefix(variable: str) -> str:
    name = variable.removeprefix("LIBPOD_")
    prefix = next(s.prefix for s in SECTIONS if s.variable == name)
    return ("/libpod" if variable.startswith("LIBPOD_") else "") + prefix


def _risks(granted: list[tuple[routes.Route, str]], on: Mapping[str, bool]) -> list[str]:
    risks: dict[str, list[str]] = {}
    for route, variable in granted:
        risk = RISKS.get(route.operation)
        if risk is None:
            continue
        read_only = route.method in ("GET", "HEAD") and not on["POST"]
        note = f"{variable}, even with POST off" if read_only else variable
        notes = risks.setdefault(risk, [])
        if note not in notes:
            notes.append(note)
    ordered = sorted(risks.items(), key=lambda item: ROOT not in item[0])
    return [f"{risk} ({'; '.join(notes)})" for risk, notes in ordered]
