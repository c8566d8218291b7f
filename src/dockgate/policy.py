"""Least-privilege policies: YAML files, presets and environment variables -> a Decider (pure).

Theory of operation. A policy file names policies; each policy is a list of
grants; each grant allows operations (routes' names, ``container.*`` globs),
optionally scoped to containers (exact name, explicit glob, labels), images
(reference patterns), query values (a kill ``signal``...) or create-body
constraints. Clients are bound to policies by source address, unix peer
uid/gid, TLS certificate CN/SAN or listener; a client no rule names gets its
listener's default policy, and without one, nothing.

Deciding is a dict lookup by operation (``Policy.index``), then by exact
container name, so its cost does not grow with the number of rules (globs and
label selectors of that one operation are the only scan).

Scoping that cannot be fooled: a grant scoped to containers never looks at the
reference the client typed. The decider answers ``NeedFacts(containers=(ref,))``,
the shell resolves the reference through the daemon's inspect, and the decider
judges the real container's name and labels, then returns ``Allow(target=...)``
with the resolved full ID so the daemon acts on exactly the container checked.
An unknown or ambiguous reference gets the same denial as an out-of-scope one,
so a client cannot probe which containers exist.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import resources
from typing import Any, Literal

import yaml

from dockgate import bodies, routes
from dockgate.decision import (
    Allow,
    Client,
    ContainerFacts,
    Decider,
    Decision,
    Deny,
    Facts,
    NeedFacts,
    Request,
)
from dockgate.errors import BadTarget, ConfigError
from dockgate.policy_match import (
    BOOL_PARAMS,
    CONTAINER_NAME,
    GLOB_CHARS,
    SIGNAL_NAMES,
    ClientRule,
    ContainerScope,
    QueryRule,
    image_matches,
    normalize_pattern,
    normalize_query_value,
    primary_name,
)
from dockgate.policy_yaml import Source, compose, integer, mapping, sequence, suggest, text, texts

LIST_OPERATION = "container.list"
EVENTS_OPERATION = "system.events"
CREATE_OPERATION = "container.create"
PRESET_PREFIX = "preset:"
DEFAULT_CLIENT = "127.0.0.1"


# ---------------------------------------------------------------------------
# What the route table says about each operation


@dataclass(frozen=True)
class Operations:
    """Operation names from routes, and which of them each kind of scope applies to."""

    all: frozenset[str]
    # operation -> the path parameter naming the one container or image it acts on
    container_ref: Mapping[str, str]
    image_ref: Mapping[str, str | None]  # None: the image is in ?fromImage= (pull)

    @classmethod
    def from_routes(cls, table: Iterable[routes.Route]) -> Operations:
        by_op: dict[str, list[routes.Route]] = {}
        for route in table:
            by_op.setdefault(route.operation, []).append(route)
        container_ref: dict[str, str] = {}
        image_ref: dict[str, str | None] = {}
        for op, rows in by_op.items():
            if all("container" in r.param_names for r in rows):
                container_ref[op] = "container"
            elif all("image" in r.param_names for r in rows):
                image_ref[op] = "image"
            elif all(r.template == "/images/create" for r in rows):
                image_ref[op] = None
        return cls(frozenset(by_op), container_ref, image_ref)

    @property
    def container_scopable(self) -> frozenset[str]:
        return frozenset(self.container_ref) | {LIST_OPERATION, EVENTS_OPERATION}

    @property
    def image_scopable(self) -> frozenset[str]:
        return frozenset(self.image_ref) | {CREATE_OPERATION}


def operations() -> Operations:
    """The operations of the route table in this build."""
    return Operations.from_routes(routes.ROUTES)


# ---------------------------------------------------------------------------
# Compiled policies


@dataclass(frozen=True)
class Grant:
    """One ``grants:`` item, compiled."""

    policy: str
    number: int
    where: str
    operations: frozenset[str]
    containers: ContainerScope | None = None
    images: tuple[str, ...] | None = None
    query: tuple[QueryRule, ...] = ()
    create_deny: frozenset[str] | None = None

    @property
    def rule(self) -> str:
        """How the audit log names this grant."""
        return f"policy {self.policy!r} grant {self.number} ({self.where})"

    def admits_query(self, operation: str, params: Mapping[str, list[str]]) -> bool:
        return all(rule.admits(operation, params) for rule in self.query)

    def admits_image_ref(self, match: routes.Match, param: str | None) -> bool:
        """Image scope of an image operation: the path name or ``fromImage`` must match."""
        if self.images is None or match.operation == CREATE_OPERATION:
            return True
        query = match.target.query_params()
        refs = [match.params[param] if param is not None else _reference(query, "fromImage")]
        if match.route.template.endswith("/tag"):
            refs.append(_reference(query, "repo"))
        return all(ref and image_matches(ref, self.images) for ref in refs)

    @property
    def needs_body(self) -> bool:
        return CREATE_OPERATION in self.operations and (
            self.create_deny is not None or self.images is not None)

    def body_problem(self, body: bytes) -> str | None:
        """Why a create body breaks this grant's constraints, or None."""
        try:
            problems, image = bodies.create_violations(body, self.create_deny or frozenset())
        except bodies.UnparseableError as error:
            return f"the create body cannot be inspected: {error}"
        if problems:
            return f"the create body asks for {problems[0]}"
        if self.images is not None and not (image and image_matches(image, self.images)):
            return f"image {image!r} is not among {', '.join(self.images)}"
        return None


def _reference(query: Mapping[str, list[str]], key: str) -> str:
    """``?fromImage=x&tag=y`` -> ``x:y``; empty when absent or given twice."""
    names = query.get(key, [])
    tags = query.get("tag", [])
    if len(names) != 1 or len(tags) > 1:
        return ""
    return names[0] + (f":{tags[0]}" if tags and tags[0] else "")


@dataclass
class OperationIndex:
    """The grants of one operation in one policy, arranged for lookup without scans."""

    open: list[Grant] = field(default_factory=list)       # no container scope
    by_name: dict[str, list[Grant]] = field(default_factory=dict)
    patterns: list[Grant] = field(default_factory=list)   # globs or labels

    def add(self, grant: Grant) -> None:
        scope = grant.containers
        if scope is None:
            self.open.append(grant)
            return
        for name in scope.names:
            self.by_name.setdefault(name, []).append(grant)
        if scope.globs or scope.labels:
            self.patterns.append(grant)

    @property
    def scoped(self) -> bool:
        return bool(self.by_name or self.patterns)

    def for_container(self, facts: ContainerFacts) -> list[Grant]:
        found = list(self.by_name.get(facts.name, ()))
        found.extend(g for g in self.patterns
                     if g.containers is not None and g.containers.matches(facts.name,
                                                                             facts.labels))
        return found

    def scoped_grants(self) -> list[Grant]:
        seen: dict[int, Grant] = {}
        for grants in self.by_name.values():
            for grant in grants:
                seen.setdefault(id(grant), grant)
        for grant in self.patterns:
            seen.setdefault(id(grant), grant)
        return list(seen.values())


@dataclass
class Policy:
    """A named set of grants, indexed by operation."""

    name: str
    grants: list[Grant]
    index: dict[str, OperationIndex] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for grant in self.grants:
            for operation in grant.operations:
                self.index.setdefault(operation, OperationIndex()).add(grant)


@dataclass(frozen=True)
class ContainerFilter:
    """Keeps the list items / events of the containers a client may see."""

    mode: Literal["json-list", "json-lines"]
    scopes: tuple[ContainerScope, ...]

    def keep(self, item: Mapping[str, Any]) -> bool:
        """List items by ``Names``/``Labels``; events by ``Actor``; other events dropped."""
        if self.mode == "json-list":
            name = primary_name(item.get("Names"))
            labels = item.get("Labels") or {}
        else:
            if item.get("Type") != "container":
                return False
            actor = item.get("Actor")
            labels = actor.get("Attributes") if isinstance(actor, dict) else None
            name = labels.get("name") if isinstance(labels, dict) else None
        if not isinstance(name, str) or not isinstance(labels, dict):
            return False
        return any(scope.matches(name, labels) for scope in self.scopes)


# ---------------------------------------------------------------------------
# The decider


def _denied(request: Request, why: str, fix: str, rule: str | None = None,
            status: int = 403) -> Deny:
    return Deny(f"dockgate: {request.method} {request.target.api_path} denied — {why} ({fix})",
                status=status, rule=rule)


class PolicyDecider:
    """Selects the client's policy, then decides by the grants of the operation."""

    def __init__(self, label: str, ops: Operations, policies: Mapping[str, Policy], *,
                 clients: tuple[ClientRule, ...], listeners: Mapping[str, str],
                 default: str | None, warnings: tuple[str, ...] = ()) -> None:
        self.label = label
        self.ops = ops
        self.policies = dict(policies)
        self.clients = clients
        self.listeners = dict(listeners)
        self.default = default
        self.warnings = warnings

    @property
    def name(self) -> str:
        return f"policy:{self.label}"

    def policy_for(self, client: Client) -> Policy | None:
        """The first client rule that matches, else the listener's default, else none."""
        for rule in self.clients:
            if rule.matches(client):
                return self.policies[rule.policy]
        chosen = self.listeners.get(client.listener, self.default)
        return self.policies[chosen] if chosen is not None else None

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        match = request.match
        if match is None:
            return _denied(request, "not a Docker Engine API route", "check the path and "
                           "method", rule="no-route", status=404)
        policy = self.policy_for(client)
        operation = match.operation
        if policy is None:
            return _denied(request, f"{operation}: no policy applies to this client",
                           "bind it under clients: or set default:", rule="no-policy")
        index = policy.index.get(operation)
        if index is None:
            return _denied(request, f"{operation} is not granted by policy {policy.name!r}",
                           "add it to a grant's allow: list", rule=f"policy {policy.name!r}")
        params = match.target.query_params()
        if operation in (LIST_OPERATION, EVENTS_OPERATION):
            return self._filtered(request, policy, index, operation, params)
        return self._decide(request, policy, index, match=match, facts=facts, params=params)

    def _filtered(self, request: Request, policy: Policy, index: OperationIndex,
                  operation: str, params: Mapping[str, list[str]]) -> Decision:
        open_ok = [g for g in index.open if g.admits_query(operation, params)]
        if open_ok:
            return Allow(rule=open_ok[0].rule)
        scoped = [g for g in index.scoped_grants() if g.admits_query(operation, params)]
        if not scoped:
            return _query_denied(request, policy, operation)
        mode: Literal["json-list", "json-lines"] = (
            "json-list" if operation == LIST_OPERATION else "json-lines")
        scopes = tuple(g.containers for g in scoped if g.containers is not None)
        return Allow(rule=scoped[0].rule, response_filter=ContainerFilter(mode, scopes))

    def _decide(self, request: Request, policy: Policy, index: OperationIndex, *,
                match: routes.Match, facts: Facts,
                params: Mapping[str, list[str]]) -> Decision:
        operation = match.operation
        image_param = self.ops.image_ref.get(operation)
        open_ok = [g for g in index.open
                   if g.admits_query(operation, params) and g.admits_image_ref(match, image_param)]
        if open_ok:
            plain = [g for g in open_ok if not g.needs_body]
            if plain:
                return Allow(rule=plain[0].rule)
            if facts.body is None:
                return NeedFacts(body=True)
            problem = ""
            for grant in open_ok:
                found = grant.body_problem(facts.body)
                if found is None:
                    return Allow(rule=grant.rule)
                problem = problem or found
            return _denied(request, f"{operation}: {problem}",
                           f"policy {policy.name!r} constrains what a create may ask for",
                           rule=open_ok[0].rule)
        if not index.scoped:
            return _query_denied(request, policy, operation)
        param = self.ops.container_ref.get(operation)
        reference = match.params.get(param) if param is not None else None
        if param is None or reference is None:
            return _query_denied(request, policy, operation)
        if reference not in facts.containers:
            return NeedFacts(containers=(reference,))
        resolved = facts.containers[reference]
        out_of_scope = _denied(
            request, f"{operation} of container {reference!r} is not granted by policy "
            f"{policy.name!r}", "its container scope does not cover this container",
            rule=f"policy {policy.name!r}")
        if resolved is None:
            return out_of_scope
        in_scope = index.for_container(resolved)
        if not in_scope:
            return out_of_scope
        for grant in in_scope:
            if grant.admits_query(operation, params):
                return Allow(rule=grant.rule,
                             target=match.with_param(param, resolved.id))
        return _query_denied(request, policy, operation)


def _query_denied(request: Request, policy: Policy, operation: str) -> Deny:
    query = f"?{request.target.query}" if request.target.query else " without parameters"
    return _denied(request, f"{operation}{query} is not granted by policy {policy.name!r}",
                   "its query: constraints do not allow these values",
                   rule=f"policy {policy.name!r}")


# ---------------------------------------------------------------------------
# Compiling a policy document

_TOP_KEYS = ("version", "policies", "clients", "listeners", "default")
_POLICY_KEYS = ("description", "grants")
_GRANT_KEYS = ("allow", "containers", "images", "query", "create")
_CONTAINER_KEYS = ("names", "globs", "labels")
_CREATE_KEYS = ("deny",)
_CLIENT_KEYS = ("name", "policy", "address", "uid", "gid", "cert_cn", "cert_san", "listener")


class _Compiler:
    def __init__(self, source: Source, ops: Operations) -> None:
        self.source = source
        self.ops = ops
        self.warnings: list[str] = []

    def at(self, node: yaml.Node) -> str:
        return f"{self.source.label}:{node.start_mark.line + 1}"

    def document(self, root: yaml.MappingNode) -> PolicyDecider:
        parts = {key: (key_node, value) for key, key_node, value
                 in mapping(root, self.source, "the policy file", _TOP_KEYS)}
        if "version" in parts and text(parts["version"][1], self.source, "version") != "1":
            raise self.source.error(parts["version"][1], "only 'version: 1' exists; write "
                                    "version: 1")
        if "policies" not in parts:
            raise self.source.error(root, "no 'policies:' section; name at least one policy "
                                    "(see docs/policies.md)")
        policies, policy_lines = self.policies(parts["policies"][1])
        used: set[str] = set()
        clients: list[ClientRule] = []
        if "clients" in parts:
            for item in sequence(parts["clients"][1], self.source, "clients"):
                rule = self.client(item, policies)
                clients.append(rule)
                used.add(rule.policy)
        listeners: dict[str, str] = {}
        if "listeners" in parts:
            for url, key_node, value in mapping(parts["listeners"][1], self.source,
                                                "listeners"):
                if not url.startswith(("tcp://", "tls://", "unix://")):
                    raise self.source.error(key_node, f"listener {url!r} must be a URL as "
                                            "given to --listen: tcp://HOST:PORT, tls://... or "
                                            "unix:///PATH")
                listeners[url] = self.policy_ref(value, policies, f"listeners {url}")
                used.add(listeners[url])
        default = None
        if "default" in parts:
            default = self.policy_ref(parts["default"][1], policies, "default")
            used.add(default)
        for name, line in policy_lines.items():
            if name not in used:
                self.warnings.append(f"{self.source.label}:{line}: policy {name!r} is bound "
                                     "to no client, listener or default; nothing uses it")
        return PolicyDecider(self.source.label, self.ops, policies, clients=tuple(clients),
                             listeners=listeners, default=default,
                             warnings=tuple(self.warnings))

    def policy_ref(self, node: yaml.Node, policies: Mapping[str, Policy], what: str) -> str:
        name = text(node, self.source, what)
        if name not in policies:
            raise self.source.error(node, f"{what} names no policy {name!r}"
                                    f"{suggest(name, policies)}; defined: "
                                    f"{', '.join(sorted(policies))}")
        return name

    def policies(self, node: yaml.Node) -> tuple[dict[str, Policy], dict[str, int]]:
        policies: dict[str, Policy] = {}
        lines: dict[str, int] = {}
        for name, key_node, body in mapping(node, self.source, "policies"):
            grants: list[Grant] = []
            for key, _key_node, value in mapping(body, self.source, f"policy {name!r}",
                                                 _POLICY_KEYS):
                if key == "grants":
                    items = sequence(value, self.source, f"policy {name!r} grants")
                    grants = [self.grant(name, number, item)
                              for number, item in enumerate(items, start=1)]
            if not grants:
                raise self.source.error(key_node, f"policy {name!r} has no grants; list them "
                                        "under grants: (a policy that allows nothing needs no "
                                        "definition: unbound clients get nothing)")
            policies[name] = Policy(name, grants)
            lines[name] = key_node.start_mark.line + 1
        if not policies:
            raise self.source.error(node, "policies: is empty; define at least one policy")
        return policies, lines

    def grant(self, policy: str, number: int, node: yaml.Node) -> Grant:
        parts = {key: (key_node, value) for key, key_node, value
                 in mapping(node, self.source, f"policy {policy!r} grant {number}", _GRANT_KEYS)}
        if "allow" not in parts:
            raise self.source.error(node, f"policy {policy!r} grant {number} has no 'allow:' "
                                    "list of operations, e.g. allow: [container.restart]")
        explicit, from_globs = self.operation_names(parts["allow"][1])
        where = self.at(node)
        containers = None
        images = None
        if "containers" in parts and "images" in parts:
            raise self.source.error(parts["images"][0], "a grant is scoped by containers: or "
                                    "by images:, not both; split it into two grants")
        if "containers" in parts:
            containers = self.container_scope(parts["containers"][1])
            explicit, from_globs = self.applicable(
                parts["allow"][1], explicit, from_globs=from_globs,
                scopable=self.ops.container_scopable, scope="containers:",
                why="names no existing container")
        if "images" in parts:
            images = tuple(normalize_pattern(p) for p, _ in
                           texts(parts["images"][1], self.source, "images"))
            explicit, from_globs = self.applicable(
                parts["allow"][1], explicit, from_globs=from_globs,
                scopable=self.ops.image_scopable, scope="images:", why="names no image")
        query = self.query(parts["query"][1]) if "query" in parts else ()
        create_deny = None
        if "create" in parts:
            create_deny = self.create(parts["create"][1])
            if CREATE_OPERATION not in {op for op, _ in explicit} | from_globs:
                raise self.source.error(parts["create"][0], "create: constrains "
                                        "container.create, which this grant does not allow; "
                                        "add it to allow: or remove create:")
        operations_ = frozenset({op for op, _ in explicit} | from_globs)
        if CREATE_OPERATION in operations_ and create_deny is None and images is None:
            self.warnings.append(f"{where}: grants container.create without create: or "
                                 "images: constraints; that is root on the host (a bind mount "
                                 "of / or privileged mode)")
        return Grant(policy, number, where, operations_, containers, images, query,
                     create_deny)

    def operation_names(self, node: yaml.Node) -> tuple[list[tuple[str, yaml.Node]],
                                                         set[str]]:
        explicit: list[tuple[str, yaml.Node]] = []
        from_globs: set[str] = set()
        for name, item in texts(node, self.source, "allow"):
            if GLOB_CHARS.intersection(name):
                found = {op for op in self.ops.all if fnmatchcase(op, name)}
                if not found:
                    raise self.source.error(item, f"{name!r} matches no operation"
                                            f"{suggest(name, self.ops.all)}")
                from_globs |= found
            elif name in self.ops.all:
                explicit.append((name, item))
            else:
                raise self.source.error(item, f"unknown operation {name!r}"
                                        f"{suggest(name, self.ops.all)}; operations are "
                                        "named like container.restart (see docs/policies.md)")
        return explicit, from_globs

    def applicable(self, allow: yaml.Node, explicit: list[tuple[str, yaml.Node]], *,
                   from_globs: set[str], scopable: frozenset[str], scope: str,
                   why: str) -> tuple[list[tuple[str, yaml.Node]], set[str]]:
        for name, item in explicit:
            if name not in scopable:
                raise self.source.error(item, f"{name} cannot be scoped by {scope} (it {why});"
                                        " move it to a grant without that scope")
        dropped = from_globs - scopable
        if dropped:
            self.warnings.append(f"{self.at(allow)}: the {scope} scope leaves out "
                                 f"{', '.join(sorted(dropped))} (they name no object it can "
                                 "scope); grant them separately")
        kept = from_globs & scopable
        if not explicit and not kept:
            raise self.source.error(allow, f"no operation of this grant can be scoped by "
                                    f"{scope}; grant them without it")
        return explicit, kept

    def container_scope(self, node: yaml.Node) -> ContainerScope:
        names: set[str] = set()
        globs: list[str] = []
        labels: list[tuple[str, str]] = []
        for key, _key_node, value in mapping(node, self.source, "containers",
                                             _CONTAINER_KEYS):
            if key == "names":
                for name, item in texts(value, self.source, "names"):
                    if GLOB_CHARS.intersection(name):
                        raise self.source.error(item, f"container name {name!r} contains a "
                                                "pattern character; names match exactly, put "
                                                "patterns under globs:")
                    if not CONTAINER_NAME.match(name):
                        raise self.source.error(item, f"{name!r} is not a container name "
                                                "(letters, digits, _ . -; no leading /)")
                    names.add(name)
            elif key == "globs":
                globs.extend(glob for glob, _ in texts(value, self.source, "globs"))
            else:
                for label, _label_node, label_value in mapping(value, self.source, "labels"):
                    labels.append((label, text(label_value, self.source, f"label {label}")))
        if not (names or globs or labels):
            raise self.source.error(node, "containers: selects nothing; give names:, globs: "
                                    "or labels:")
        return ContainerScope(frozenset(names), tuple(globs), tuple(labels))

    def query(self, node: yaml.Node) -> tuple[QueryRule, ...]:
        rules = []
        for param, _key_node, value in mapping(node, self.source, "query"):
            values = set()
            for raw, item in texts(value, self.source, f"query {param}"):
                normalized = normalize_query_value(param, raw)
                if param == "signal" and normalized not in SIGNAL_NAMES:
                    raise self.source.error(item, f"{raw!r} is not a Linux signal; write a "
                                            "name such as HUP or SIGTERM, or a number")
                if param in BOOL_PARAMS and raw.lower() not in ("true", "false", "1", "0"):
                    raise self.source.error(item, f"{param} is a boolean parameter; write "
                                            "true or false")
                values.add(normalized)
            rules.append(QueryRule(param, frozenset(values)))
        return tuple(rules)

    def create(self, node: yaml.Node) -> frozenset[str]:
        deny: set[str] = set()
        for _key, _key_node, value in mapping(node, self.source, "create", _CREATE_KEYS):
            for check, item in texts(value, self.source, "deny"):
                if check == "all":
                    deny.update(bodies.CHECKS)
                elif check in bodies.CHECKS:
                    deny.add(check)
                else:
                    raise self.source.error(item, f"unknown create constraint {check!r}"
                                            f"{suggest(check, bodies.CHECKS)}; known: all, "
                                            f"{', '.join(bodies.CHECKS)}")
        return frozenset(deny)

    def client(self, node: yaml.Node, policies: Mapping[str, Policy]) -> ClientRule:
        parts = {key: (key_node, value) for key, key_node, value
                 in mapping(node, self.source, "a clients: entry", _CLIENT_KEYS)}
        if "policy" not in parts:
            raise self.source.error(node, "a clients: entry needs 'policy: NAME'")
        policy = self.policy_ref(parts["policy"][1], policies, "policy")
        if set(parts) <= {"policy", "name"}:
            raise self.source.error(node, "a clients: entry needs at least one of address:, "
                                    "uid:, gid:, cert_cn:, cert_san:, listener: (use "
                                    "default: for everyone else)")
        rule: dict[str, Any] = {}
        for key, (_key_node, value) in parts.items():
            if key in ("address",):
                rule["networks"] = tuple(self.network(raw, item)
                                         for raw, item in texts(value, self.source, key))
            elif key in ("uid", "gid"):
                values = value.value if isinstance(value, yaml.SequenceNode) else [value]
                rule[f"{key}s"] = frozenset(integer(v, self.source, key) for v in values)
            elif key in ("cert_cn", "cert_san", "listener"):
                rule[f"{key}s"] = frozenset(v for v, _ in texts(value, self.source, key))
        name = text(parts["name"][1], self.source, "name") if "name" in parts else None
        return ClientRule(policy=policy, label=self.at(node), name=name, **rule)

    def network(self, raw: str, node: yaml.Node) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(raw, strict=True)
        except ValueError as error:
            raise self.source.error(node, f"{raw!r} is not an IP address or network ({error});"
                                    " write e.g. 127.0.0.1 or 10.0.0.0/8") from None


def compile_text(text_: str, label: str, ops: Operations | None = None) -> PolicyDecider:
    """Compile a policy document; ConfigError ``LABEL:LINE: ...`` when it is invalid."""
    source = Source(label)
    return _Compiler(source, ops or operations()).document(compose(text_, source))


def preset_names() -> list[str]:
    """The presets shipped in dockgate/presets, by name."""
    folder = resources.files("dockgate").joinpath("presets")
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir()
                  if entry.name.endswith(".yaml"))


def _read(path: str) -> tuple[str, str]:
    if path.startswith(PRESET_PREFIX):
        name = path[len(PRESET_PREFIX):]
        if name not in preset_names():
            raise ConfigError(f"{path}: no such preset{suggest(name, preset_names())}; "
                              f"presets: {', '.join(preset_names())}")
        entry = resources.files("dockgate").joinpath("presets", f"{name}.yaml")
        return entry.read_text(encoding="utf-8"), path
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), path
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the policy file ({error})") from None


def load_file(path: str) -> PolicyDecider:
    """The decider of a policy file or of ``preset:NAME``; ConfigError if invalid."""
    content, label = _read(path)
    return compile_text(content, label)


def lint_file(path: str) -> list[str]:
    """Problems of a policy file, each ``FILE:LINE: ...``; empty when it is clean."""
    try:
        decider = load_file(path)
    except ConfigError as error:
        return [str(error)]
    return list(decider.warnings)


# ---------------------------------------------------------------------------
# Least-privilege variables, for the seed's case without a file

RESTART_VARIABLE = "ALLOW_RESTART_CONTAINERS"
INSPECT_VARIABLE = "ALLOW_INSPECT_CONTAINERS"
ENV_POLICY = "env"
# docker-py sends GET /version at creation; every client pings.
ENV_BASICS = frozenset({"system.ping", "system.version"})


def _env_names(env: Mapping[str, str], variable: str) -> frozenset[str]:
    raw = env[variable]
    names = [part.strip() for part in raw.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"{variable}={raw!r} is invalid: name at least one container, "
                          f"comma-separated")
    for name in names:
        if not CONTAINER_NAME.match(name):
            raise ConfigError(f"{variable}={raw!r} is invalid: {name!r} is not a container "
                              "name (exact names only: letters, digits, _ . -; no leading /, "
                              "no patterns)")
    return frozenset(names)


def from_env(env: Mapping[str, str]) -> PolicyDecider | None:
    """``ALLOW_RESTART_CONTAINERS=a,b`` (and ``ALLOW_INSPECT_CONTAINERS``) -> a decider.

    Grants ``system.ping`` and ``system.version`` plus restart (and inspect) of
    exactly the named containers, to every client. None when neither is set.
    """
    if RESTART_VARIABLE not in env and INSPECT_VARIABLE not in env:
        return None
    ops = operations()
    basics = ENV_BASICS & ops.all
    grants = [Grant(ENV_POLICY, 1, "environment", frozenset(basics))]
    for variable, operation in ((RESTART_VARIABLE, "container.restart"),
                                (INSPECT_VARIABLE, "container.inspect")):
        if variable in env:
            scope = ContainerScope(names=_env_names(env, variable))
            grants.append(Grant(ENV_POLICY, len(grants) + 1, variable,
                                frozenset({operation}), containers=scope))
    policy = Policy(ENV_POLICY, grants)
    return PolicyDecider("environment", ops, {ENV_POLICY: policy}, clients=(), listeners={},
                         default=ENV_POLICY)


# ---------------------------------------------------------------------------
# Explaining a decision without a daemon


def parse_client(spec: str | None, listener: str = "check") -> Client:
    """``127.0.0.2``, ``uid=1000``, ``gid=N``, ``cn=NAME`` or ``san=NAME`` -> a Client."""
    spec = spec or DEFAULT_CLIENT
    key, sep, value = spec.partition("=")
    if not sep:
        try:
            ipaddress.ip_address(spec)
        except ValueError:
            raise ConfigError(f"--client {spec!r} is invalid: write an IP address, uid=N, "
                              "gid=N, cn=NAME or san=NAME") from None
        return Client(listener, "tcp", address=spec, port=0)
    if key in ("uid", "gid"):
        if not value.isdigit():
            raise ConfigError(f"--client {spec!r} is invalid: {key} must be a number")
        number = int(value, 10)
        return Client(listener, "unix", uid=number if key == "uid" else None,
                      gid=number if key == "gid" else None)
    if key == "cn":
        return Client(listener, "tls", address=DEFAULT_CLIENT, port=0, cert_cn=value)
    if key == "san":
        return Client(listener, "tls", address=DEFAULT_CLIENT, port=0, cert_sans=(value,))
    raise ConfigError(f"--client {spec!r} is invalid: write an IP address, uid=N, gid=N, "
                      "cn=NAME or san=NAME")


def explain(decider: Decider, method: str, target: str,
            client: str | Client | None = None) -> tuple[str, bool]:
    """How ``method target`` would be decided for ``client``; (report, allowed).

    Nothing asks the daemon: a container reference is shown unresolved, and the
    verdict assumes it names the container of that name.
    """
    who = client if isinstance(client, Client) else parse_client(client)
    try:
        parsed = routes.parse_target(target)
    except BadTarget as error:
        return f"{method} {target}: rejected before any policy: {error.message}", False
    request = Request(method, parsed, routes.classify(method, parsed))
    lines = [f"request:   {method} {parsed.api_path}",
             f"operation: {request.match.operation if request.match else '(no route)'}"]
    if request.match is not None and request.match.params:
        resource = ", ".join(f"{k}={v}" for k, v in request.match.params.items())
        lines.append(f"resource:  {request.match.route.resource} {resource}")
    lines.append(f"decider:   {decider.name}")
    if isinstance(decider, PolicyDecider):
        policy = decider.policy_for(who)
        chosen = policy.name if policy else "(none: no client rule and no default applies)"
        lines.append(f"policy:    {chosen}")
    decision = decider.decide(who, request, Facts())
    if isinstance(decision, NeedFacts) and decision.containers:
        reference = decision.containers[0]
        lines.append(f"would resolve {reference!r} via the daemon and require "
                     f"{_scope_text(decider, who, request)}")
        assumed = ContainerFacts(id=reference, name=reference.lstrip("/"), labels={})
        decision = decider.decide(who, request, Facts(containers={reference: assumed}))
        lines.append(f"if {reference!r} is the container named {reference.lstrip('/')!r} "
                     "(no labels):")
    if isinstance(decision, NeedFacts):
        lines.append("would read the request body and check the grant's create constraints; "
                     "the verdict depends on the body")
        return "\n".join(lines), False
    if isinstance(decision, Allow):
        lines.append(f"ALLOWED by {decision.rule}")
        if decision.response_filter is not None:
            lines.append("  (the response is filtered to the containers the grant covers)")
        return "\n".join(lines), True
    lines.append(f"DENIED: {decision.message}")
    return "\n".join(lines), False


def _scope_text(decider: Decider, client: Client, request: Request) -> str:
    if not isinstance(decider, PolicyDecider) or request.match is None:
        return "what the decider checks"
    policy = decider.policy_for(client)
    index = policy.index.get(request.match.operation) if policy else None
    if index is None:
        return "a grant"
    scopes = [g.containers.describe() for g in index.scoped_grants() if g.containers]
    return "container " + " or ".join(scopes)
