"""Compiled policies and the decider that evaluates them (pure).

Theory of operation. A ``Policy`` is a list of ``Grant``s indexed by operation
name (``Policy.index``), and within one operation by exact container name, so
deciding costs a couple of dict lookups however many rules a policy has (the
globs and label selectors of the one operation asked for are the only scan).

Scoping that cannot be fooled: a grant scoped to containers never looks at the
reference the client typed. The decider answers ``NeedFacts(containers=(ref,))``,
the shell resolves the reference through the daemon's inspect, and the decider
judges the real container's name and labels, then returns ``Allow(target=...)``
with the resolved full ID so the daemon acts on exactly the container checked.
An unknown or ambiguous reference gets the same denial as an out-of-scope one,
so a client cannot probe which containers exist.

Scoped reads: ``container.list`` and ``system.events`` under a container scope
are allowed with a ``ContainerFilter`` the shell applies to the response.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dockgate import bodies, routes
from dockgate.decision import (
    Allow,
    Client,
    ContainerFacts,
    Decision,
    Deny,
    Facts,
    NeedFacts,
    Request,
    libpod_refusal,
)
from dockgate.policy_match import ClientRule, ContainerScope, QueryRule, image_matches, primary_name

LIST_OPERATION = "container.list"
EVENTS_OPERATION = "system.events"
CREATE_OPERATION = "container.create"
START_OPERATION = "container.start"
# What the shell forwards instead of the client's reference: the daemon's full ID.
_FULL_ID = re.compile(r"[0-9a-f]{64}")


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

    def names_in_scope(self, name: str) -> bool:
        """Whether some grant covers a container called ``name`` by its name alone."""
        return name in self.by_name or any(
            g.containers is not None and g.containers.matches(name, {})
            for g in self.patterns)

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
                 default: str | None, warnings: tuple[str, ...] = (),
                 grant_hint: str = "add it to a grant's allow: list") -> None:
        self.label = label
        self.grant_hint = grant_hint  # how to grant a missing operation, in the denial
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
            return libpod_refusal(request) or _denied(
                request, "not a Docker Engine API route", "check the path and method",
                rule="no-route", status=404)
        policy = self.policy_for(client)
        operation = match.operation
        if policy is None:
            return _denied(request, f"{operation}: no policy applies to this client",
                           "bind it under clients: or set default:", rule="no-policy")
        index = policy.index.get(operation)
        if index is None:
            return _denied(request, f"{operation} is not granted by policy {policy.name!r}",
                           self.grant_hint, rule=f"policy {policy.name!r}")
        params = match.target.query_params()
        if operation in (LIST_OPERATION, EVENTS_OPERATION):
            return self._filtered(request, policy, index, operation, params)
        decision = self._decide(request, policy, index, match=match, facts=facts,
                                params=params)
        if operation != START_OPERATION or isinstance(decision, Deny):
            return decision
        if facts.body is None:
            needed = decision.containers if isinstance(decision, NeedFacts) else ()
            return NeedFacts(containers=needed, body=True)
        problem = bodies.start_problem(facts.body)
        if problem is not None:
            return _denied(request, f"{operation}: {problem}", "create the container with its "
                           "configuration and start it without a body",
                           rule=f"policy {policy.name!r}")
        return decision

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
        if resolved is None and index.names_in_scope(reference):
            # The client named a container its own grant lists by name (or glob):
            # saying it does not exist reveals nothing outside its scope, and lets a
            # client tell "gateway missing" from "not allowed" (the daemon's 404).
            return Deny(f"No such container: {reference}", status=404,
                        rule=f"policy {policy.name!r}")
        if resolved is None or not _FULL_ID.fullmatch(resolved.id):
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

