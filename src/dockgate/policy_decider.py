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
are allowed with a ``ContainerFilter`` the shell applies to the response; the
list's ``before``/``since`` filters are resolved against the scope first, so an
out-of-scope container is "no such container" exactly like a missing one.

Execs are scoped by their container: ``exec.start/resize/inspect`` resolve the
exec (``NeedFacts(execs=...)``), then its container, and are pinned to the
exec's full ID. Named volumes are scoped by a grant's ``volumes:`` (for the
volume operations and the volumes a create body mounts); ``volume.create``
forwards a rebuilt body labelled with the policy's name (policy_scope).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from dockgate import bodies, routes
from dockgate.decision import (
    Allow,
    Client,
    ContainerFacts,
    Decision,
    Deny,
    ErrorAnswer,
    Facts,
    NeedFacts,
    Request,
    libpod_refusal,
)
from dockgate.hazards import DANGEROUS
from dockgate.policy_match import (
    ClientRule,
    ContainerScope,
    QueryRule,
    image_matches,
    normalize_listener,
    primary_name,
)
from dockgate.policy_owner import (
    CONNECT_OPERATIONS,
    OWNED_BY,
    OWNED_CREATES,
    ImageList,
    OwnershipError,
    append_member,
    connect_container,
    owner_body,
    pull_reference,
)
from dockgate.policy_scope import (
    OWN_VOLUMES,
    OWNER_LABEL,
    ExecRules,
    FilterError,
    ScopedErrors,
    VolumeFilter,
    VolumeScope,
    no_such_container,
    reference_filters,
    with_filters,
)

LIST_OPERATION = "container.list"
EVENTS_OPERATION = "system.events"
CREATE_OPERATION = "container.create"
START_OPERATION = "container.start"
EXEC_CREATE_OPERATION = "exec.create"
VOLUME_CREATE_OPERATION = "volume.create"
VOLUME_LIST_OPERATION = "volume.list"
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
    # operations on one exec (scoped by its container) and on one named volume
    exec_ref: frozenset[str] = frozenset()
    volume_ref: frozenset[str] = frozenset()
    network_ref: frozenset[str] = frozenset()  # operations on one network in the path

    @classmethod
    def from_routes(cls, table: Iterable[routes.Route]) -> Operations:
        by_op: dict[str, list[routes.Route]] = {}
        for route in table:
            by_op.setdefault(route.operation, []).append(route)
        container_ref: dict[str, str] = {}
        image_ref: dict[str, str | None] = {}
        exec_ref: set[str] = set()
        volume_ref: set[str] = set()
        network_ref: set[str] = set()
        for op, rows in by_op.items():
            if all("network" in r.param_names for r in rows):
                network_ref.add(op)
            if all("container" in r.param_names for r in rows):
                container_ref[op] = "container"
            elif all("image" in r.param_names for r in rows):
                image_ref[op] = "image"
            elif all(r.template == "/images/create" for r in rows):
                image_ref[op] = None
            elif all("exec" in r.param_names for r in rows):
                exec_ref.add(op)
            elif all("volume" in r.param_names for r in rows):
                volume_ref.add(op)
        return cls(frozenset(by_op), container_ref, image_ref, frozenset(exec_ref),
                   frozenset(volume_ref), frozenset(network_ref))

    @property
    def container_scopable(self) -> frozenset[str]:
        return (frozenset(self.container_ref) | self.exec_ref
                | {LIST_OPERATION, EVENTS_OPERATION})

    @property
    def image_scopable(self) -> frozenset[str]:
        return frozenset(self.image_ref) | {CREATE_OPERATION}

    @property
    def volume_scopable(self) -> frozenset[str]:
        return self.volume_ref | {VOLUME_LIST_OPERATION, VOLUME_CREATE_OPERATION,
                                  CREATE_OPERATION}


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
    redact: frozenset[str] = frozenset()  # inspect answers without these (REDACTABLE)
    exec_rules: ExecRules | None = None
    volumes: VolumeScope | None = None
    image_list: ImageList | None = None  # images_from: a file of approved images
    network_owner: str | None = None  # networks: {own: true}: networks with this owner

    @property
    def rule(self) -> str:
        """How the audit log names this grant."""
        return f"policy {self.policy!r} grant {self.number} ({self.where})"

    def admits_query(self, operation: str, params: Mapping[str, list[str]]) -> bool:
        return all(rule.admits(operation, params) for rule in self.query)

    def admits_image_ref(self, match: routes.Match, param: str | None) -> bool:
        """Image scope of an image operation: the path name or ``fromImage`` must match."""
        if match.operation == CREATE_OPERATION:
            return True
        query = match.target.query_params()
        if self.image_list is not None:
            # Exact references only: a pull needs one tag or digest (none pulls them all).
            ref = match.params[param] if param is not None else pull_reference(query)
            tagging = match.route.template.endswith("/tag")
            return not tagging and self.image_list.admits(ref)
        if self.images is None:
            return True
        refs = [match.params[param] if param is not None else _reference(query, "fromImage")]
        if match.route.template.endswith("/tag"):
            refs.append(_reference(query, "repo"))
        return all(ref and image_matches(ref, self.images) for ref in refs)

    def constrains(self, operation: str) -> bool:
        """Whether this grant limits what a body of ``operation`` may ask for.

        container.create: ``create:`` or ``images:``; exec.create: ``exec:``
        denying privileged and root-user; volume.create: ``create:`` denying both
        driver-options and volume-drivers (a local volume with ``o=bind,device=/``
        is a host bind mount).
        """
        if operation == CREATE_OPERATION:
            return self.create_deny is not None or self.images is not None \
                or self.image_list is not None
        if operation == EXEC_CREATE_OPERATION:
            return self.exec_deny is not None
        if operation == VOLUME_CREATE_OPERATION:
            return self.volume_deny is not None
        return False

    # What ``constrains`` reads: None while the body may still ask for what makes the
    # operation host root.
    @property
    def exec_deny(self) -> frozenset[str] | None:
        """The exec: deny: list when it refuses both Privileged and root (else None)."""
        deny = self.exec_rules.deny if self.exec_rules is not None else frozenset()
        return deny if {"privileged", "root-user"} <= deny else None

    @property
    def volume_deny(self) -> frozenset[str] | None:
        """driver-options and volume-drivers when create: deny: lists both (else None)."""
        deny = (self.create_deny or frozenset()) & bodies.VOLUME_CHECKS_ALL
        return deny if deny == bodies.VOLUME_CHECKS_ALL else None

    def needs_body(self, operation: str) -> bool:
        """Whether deciding ``operation`` under this grant reads the request body."""
        if operation == EXEC_CREATE_OPERATION:
            return self.exec_rules is not None
        return operation == CREATE_OPERATION and (
            self.constrains(operation) or self.volume_scope() is not None)

    def volume_scope(self) -> VolumeScope | None:
        """The named volumes a create may mount: the grant's volumes:, or its own when
        ``create: deny:`` lists volumes; None: unconstrained."""
        if self.volumes is not None:
            return self.volumes
        return OWN_VOLUMES if "volumes" in (self.create_deny or ()) else None

    def body_problem(self, operation: str, body: bytes,
                     defaults: bodies.DaemonDefaults = bodies.STRICT) -> str | None:
        """Why a create or exec body breaks this grant's constraints, or None."""
        if operation == EXEC_CREATE_OPERATION:
            return self.exec_rules.problem(body) if self.exec_rules is not None else None
        try:
            problems, image = bodies.create_violations(body, self.create_deny or frozenset(),
                                                       defaults)
        except bodies.UnparseableError as error:
            return f"the create body cannot be inspected: {error}"
        if problems:
            return f"the create body asks for {problems[0]}"
        if self.images is not None and not (image and image_matches(image, self.images)):
            return f"image {image!r} is not among {', '.join(self.images)}"
        if self.image_list is not None and not self.image_list.admits(image):
            return f"image {image!r} is not among {self.image_list.describe()}"
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
    volume_scoped: list[Grant] = field(default_factory=list)  # volume ops with volumes:
    networks: list[Grant] = field(default_factory=list)   # networks: {own: true}

    def add(self, grant: Grant, operation: str) -> None:
        scope = grant.containers
        if grant.network_owner is not None:
            self.networks.append(grant)
            return
        if grant.volumes is not None and operation != CREATE_OPERATION:
            self.volume_scoped.append(grant)
            return
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
    owner: str | None = None  # the dockgate.owner label of what this policy's client creates
    index: dict[str, OperationIndex] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for grant in self.grants:
            for operation in grant.operations:
                self.index.setdefault(operation, OperationIndex()).add(grant, operation)


@dataclass(frozen=True)
class ContainerFilter:
    """Keeps the list items / events of the containers a client may see."""

    mode: Literal["json-list", "json-lines"]
    scopes: tuple[ContainerScope, ...]
    list_key: str | None = None

    def rewrite(self, item: dict[str, Any]) -> dict[str, Any]:
        return item

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


INSPECT_OPERATION = "container.inspect"
# What a grant may redact from container.inspect answers.
REDACTABLE = ("env",)
REDACTED = "<redacted by dockgate>"


@dataclass(frozen=True)
class EnvRedaction:
    """Container inspect without the values of ``Config.Env`` (often secrets).

    The names stay (``DB_PASSWORD=<redacted by dockgate>``), so a dashboard still
    shows which variables are set; state, health, labels, ports and networks are
    untouched.
    """

    mode: Literal["json-object"] = "json-object"
    list_key: str | None = None

    def keep(self, item: Mapping[str, Any]) -> bool:
        return True

    def rewrite(self, item: dict[str, Any]) -> dict[str, Any]:
        config = item.get("Config")
        if isinstance(config, dict) and isinstance(config.get("Env"), list):
            config["Env"] = [f"{entry.split('=', 1)[0]}={REDACTED}" if isinstance(entry, str)
                             else REDACTED for entry in config["Env"]]
        return item


def _allow(grant: Grant, operation: str, target: str | None = None,
           error_answer: ErrorAnswer | None = None) -> Allow:
    redaction = EnvRedaction() if "env" in grant.redact and operation == INSPECT_OPERATION \
        else None
    return Allow(rule=grant.rule, target=target, response_filter=redaction,
                 error_answer=error_answer)


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
                 grant_hint: str | None = None) -> None:
        self.label = label
        self.name = f"policy:{label}"  # read on every request (the audit line's policy)
        # How to grant a missing operation, in the denial; None: the narrowest grant.
        self.grant_hint = grant_hint
        # What the daemon does by default, for create bodies (serve sets it at start).
        self.daemon_defaults = bodies.STRICT
        self.ops = ops
        self.policies = dict(policies)
        self.clients = clients
        # Keyed by normalize_listener, so a key copied from the log matches the --listen URL.
        self.listeners = {normalize_listener(url): policy for url, policy in listeners.items()}
        self.default = default
        self.warnings = warnings

    @property
    def watched(self) -> tuple[tuple[str, tuple[int, int, int] | None], ...]:
        """The image-list files this policy read, each with its stamp when it was read."""
        return tuple(sorted({(grant.image_list.path, grant.image_list.stamp)
                             for policy in self.policies.values()
                             for grant in policy.grants if grant.image_list is not None}))

    @property
    def names_containers(self) -> bool:
        """Whether a ``clients:`` rule names containers (the shell then resolves peers)."""
        return any(rule.names_container for rule in self.clients)

    def policy_for(self, client: Client) -> Policy | None:
        """The first client rule that matches, else the listener's default, else none."""
        return self.select(client)[0]

    def select(self, client: Client) -> tuple[Policy | None, str | None]:
        """``policy_for`` and, when it is None because of it, why the client is unidentified.

        A rule naming containers that the client otherwise matches cannot be judged
        while the shell could not tell which container the client is: the answer is
        then no policy, not a later rule's or the default's (the client may be the
        container that rule names; first match wins).
        """
        for rule in self.clients:
            if not rule.matches_peer(client):
                continue
            if not rule.names_container:
                return self.policies[rule.policy], None
            if client.unidentified is not None:
                return None, client.unidentified
            if rule.container_matches(client):
                return self.policies[rule.policy], None
        chosen = self.listeners.get(normalize_listener(client.listener), self.default)
        return (self.policies[chosen] if chosen is not None else None), None

    def unmatched_listeners(self, listeners: tuple[str, ...]) -> list[str]:
        """The ``listeners:`` keys that name none of ``listeners`` (the --listen URLs)."""
        serving = {normalize_listener(url) for url in listeners}
        return sorted(url for url in self.listeners if url not in serving)

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        match = request.match
        if match is None:
            return libpod_refusal(request) or _denied(
                request, "not a Docker Engine API route", "check the path and method",
                rule="no-route", status=404)
        policy, unidentified = self.select(client)
        operation = match.operation
        if unidentified is not None:
            return _denied(request, f"{operation}: no policy applies to this client: "
                           f"{unidentified}", "see docs/policies.md#clients-named-by-"
                           "container", rule="unidentified")
        if policy is None:
            return _denied(request, f"{operation}: no policy applies to this client",
                           "bind it under clients: or set default:", rule="no-policy")
        index = policy.index.get(operation)
        if index is None:
            return _denied(request, f"{operation} is not granted by policy {policy.name!r}",
                           self.grant_hint or self._narrowest(match),
                           rule=f"policy {policy.name!r}")
        params = match.target.query_params()
        if index.networks and not index.open and "network" in match.params:
            admitted = [g for g in index.networks if g.admits_query(operation, params)]
            if not admitted:
                return _query_denied(request, policy, operation)
            return _owned_network(request, match, admitted, facts)
        if operation in (LIST_OPERATION, EVENTS_OPERATION):
            return self._filtered(request, policy, index, operation, params=params,
                                  facts=facts)
        if operation in self.ops.volume_scopable and operation != CREATE_OPERATION:
            return self._volume(request, policy, index, match, params=params, facts=facts)
        decision = self._decide(request, policy, index, match=match, facts=facts,
                                params=params)
        if policy.owner is not None and operation in OWNED_CREATES \
                and isinstance(decision, Allow):
            return _owned(request, policy.owner, decision, facts)
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

    def _narrowest(self, match: routes.Match) -> str:
        """The smallest grant that would allow this request, and its risk when it has one."""
        operation = match.operation
        grant = f"allow: [{operation}]"
        param = self.ops.container_ref.get(operation)
        if param is not None and param in match.params:
            grant += f", containers: {{names: [{match.params[param]}]}}"
        if operation == CREATE_OPERATION:
            return f"narrowest: a grant {{{grant}, create: {{deny: [all]}}}}; without " \
                   f"create: it {DANGEROUS[operation]}"
        hint = f"narrowest: a grant {{{grant}}}"
        if operation in DANGEROUS:
            hint += f"; it {DANGEROUS[operation]}"
        return hint

    def _filtered(self, request: Request, policy: Policy, index: OperationIndex,
                  operation: str, *, params: Mapping[str, list[str]],
                  facts: Facts) -> Decision:
        open_ok = [g for g in index.open if g.admits_query(operation, params)]
        if open_ok:
            return Allow(rule=open_ok[0].rule)
        scoped = [g for g in index.scoped_grants() if g.admits_query(operation, params)]
        if not scoped:
            return _query_denied(request, policy, operation)
        mode: Literal["json-list", "json-lines"] = (
            "json-list" if operation == LIST_OPERATION else "json-lines")
        scopes = tuple(g.containers for g in scoped if g.containers is not None)
        target = None
        if operation == LIST_OPERATION:
            # before/since name a container: resolved against the scope first, so the
            # answer is the same whether an out-of-scope one exists or not.
            try:
                document, refs = reference_filters(params)
            except FilterError as error:
                return _denied(request, f"{operation}: {error}", "see the Engine API's "
                               "filters parameter", rule=scoped[0].rule, status=400)
            missing = tuple(ref for ref in refs if ref not in facts.containers)
            if missing:
                return NeedFacts(containers=missing)
            resolved: dict[str, str] = {}
            for ref in refs:
                found = facts.containers[ref]
                if found is None or not _FULL_ID.fullmatch(found.id) or not any(
                        scope.matches(found.name, found.labels) for scope in scopes):
                    status, message = no_such_container(ref)
                    return Deny(message, status=status, rule=scoped[0].rule)
                resolved[ref] = found.id
            if document is not None and refs:
                target = with_filters(request.target.raw, document, resolved)
        return Allow(rule=scoped[0].rule, target=target,
                     response_filter=ContainerFilter(mode, scopes),
                     error_answer=ScopedErrors(_sent(request, target)))

    def _volume(self, request: Request, policy: Policy, index: OperationIndex,
                match: routes.Match, *, params: Mapping[str, list[str]],
                facts: Facts) -> Decision:
        """volume.*: open grants, or grants with a volumes: scope (judged by the daemon's facts)."""
        operation = match.operation
        open_ok = [g for g in index.open if g.admits_query(operation, params)]
        scoped = [g for g in index.volume_scoped if g.admits_query(operation, params)]
        if not open_ok and not scoped:
            return _query_denied(request, policy, operation)
        if operation == VOLUME_LIST_OPERATION:
            if open_ok:
                return Allow(rule=open_ok[0].rule)
            scopes = tuple(g.volumes for g in scoped if g.volumes is not None)
            return Allow(rule=scoped[0].rule, response_filter=VolumeFilter(policy.name, scopes),
                         error_answer=ScopedErrors(_sent(request, None)))
        if operation == VOLUME_CREATE_OPERATION:
            return self._volume_create(request, policy, open_ok, scoped, facts)
        name = match.params["volume"]
        if open_ok:
            return Allow(rule=open_ok[0].rule)
        if name not in facts.volumes:
            return NeedFacts(volumes=(name,))
        found = facts.volumes[name]
        for grant in scoped:
            assert grant.volumes is not None
            if found is not None and grant.volumes.matches(policy.name, found.name,
                                                           found.labels):
                return Allow(rule=grant.rule, error_answer=ScopedErrors(_sent(request, None)))
        if found is None and any(g.volumes is not None and g.volumes.by_name(name)
                                 for g in scoped):
            return Deny(f"get {name}: no such volume", status=404, rule=scoped[0].rule)
        return _denied(request, f"{operation} of volume {name!r} is not granted by policy "
                       f"{policy.name!r}", "its volumes: scope does not cover this volume",
                       rule=f"policy {policy.name!r}")

    def _volume_create(self, request: Request, policy: Policy, open_ok: list[Grant],
                       scoped: list[Grant], facts: Facts) -> Decision:
        """Judge the body, then forward it rebuilt with the owner label (policy_scope)."""
        if facts.body is None:
            return NeedFacts(body=True)
        try:
            name, driver, options, body = bodies.volume_create(
                facts.body, {OWNER_LABEL: policy.name})
        except bodies.UnparseableError as error:
            return _denied(request, f"volume.create: the body cannot be inspected: {error}",
                           "send Name, Driver, DriverOpts and Labels only",
                           rule=f"policy {policy.name!r}")
        if name and scoped and name not in facts.volumes:
            return NeedFacts(volumes=(name,))
        existing = facts.volumes.get(name) if name else None
        problem = ""
        for grant in [*open_ok, *scoped]:
            found = bodies.volume_create_violation(grant.create_deny or frozenset(),
                                                   driver, options)
            if found is None and grant.volumes is not None:
                # An existing volume keeps its labels (the daemon returns it as it is);
                # a new one gets the labels forwarded, the owner label among them.
                labels = existing.labels if existing is not None else \
                    json.loads(body)["Labels"]
                if not grant.volumes.matches(policy.name, name, labels):
                    found = (f"volume {name!r} is outside its volumes: scope "
                             f"({grant.volumes.describe()})")
            if found is None:
                return Allow(rule=grant.rule, body=body,
                             error_answer=ScopedErrors(_sent(request, None)))
            problem = problem or found
        return _denied(request, f"volume.create: {problem}", f"policy {policy.name!r} "
                       "constrains what a volume create may ask for",
                       rule=f"policy {policy.name!r}")

    def _decide(self, request: Request, policy: Policy, index: OperationIndex, *,
                match: routes.Match, facts: Facts,
                params: Mapping[str, list[str]]) -> Decision:
        operation = match.operation
        image_param = self.ops.image_ref.get(operation)
        open_ok = [g for g in index.open
                   if g.admits_query(operation, params) and g.admits_image_ref(match, image_param)]
        if open_ok:
            return self._by_body(request, policy, open_ok, match=match, facts=facts,
                                 target=None)
        if not index.scoped and any(g.admits_query(operation, params) for g in index.open):
            # Only the image scope said no: say so, not "query constraints".
            image = match.params[image_param] if image_param is not None else \
                _reference(params, "fromImage")
            return _denied(request, f"{operation} of image {image!r} is not granted by policy "
                           f"{policy.name!r}", "its images: or images_from: scope does not "
                           "cover it", rule=f"policy {policy.name!r}")
        if not index.scoped:
            return _query_denied(request, policy, operation)
        if operation in self.ops.exec_ref:
            param = "exec"
            exec_ref = match.params[param]
            if exec_ref not in facts.execs:
                return NeedFacts(execs=(exec_ref,))
            found_exec = facts.execs[exec_ref]
            if found_exec is None or not _FULL_ID.fullmatch(found_exec.id):
                return _out_of_scope(request, policy, f"exec {exec_ref!r}")
            reference, pinned = found_exec.container, found_exec.id
        else:
            container_param = self.ops.container_ref.get(operation)
            ref = match.params.get(container_param) if container_param is not None else None
            if container_param is None or ref is None:
                return _query_denied(request, policy, operation)
            param, reference, pinned = container_param, ref, ""
        if reference not in facts.containers:
            return NeedFacts(containers=(reference,))
        resolved = facts.containers[reference]
        what = f"exec {match.params[param]!r}" if pinned else f"container {reference!r}"
        out_of_scope = _out_of_scope(request, policy, what)
        if resolved is None and not pinned and index.names_in_scope(reference):
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
        admitted = [g for g in in_scope if g.admits_query(operation, params)]
        if not admitted:
            return _query_denied(request, policy, operation)
        return self._by_body(request, policy, admitted, match=match, facts=facts,
                             target=match.with_param(param, pinned or resolved.id))

    def _by_body(self, request: Request, policy: Policy, grants: list[Grant], *,
                 match: routes.Match, facts: Facts, target: str | None) -> Decision:
        """The first grant whose body constraints (if any) the request meets."""
        operation = match.operation
        scoped = target is not None or operation == CREATE_OPERATION
        name = match.target.query_params().get("name", [""])[0]  # Go's Form.Get: the first
        errors = ScopedErrors(_sent(request, target),
                              name=name if operation == CREATE_OPERATION else None)
        allow = [g for g in grants if not g.needs_body(operation)]
        if allow:
            return _allow(allow[0], operation, target, errors if scoped else None)
        if facts.body is None:
            return NeedFacts(body=True)
        problem = ""
        for grant in grants:
            found = grant.body_problem(operation, facts.body, self.daemon_defaults)
            if found is None and operation == CREATE_OPERATION:
                volumes = self._volume_problem(grant, policy, facts)
                if isinstance(volumes, NeedFacts):
                    return volumes
                found = volumes
            if found is None:
                return _allow(grant, operation, target, errors)
            problem = problem or found
        return _denied(request, f"{operation}: {problem}",
                       f"policy {policy.name!r} constrains what {operation} may ask for",
                       rule=grants[0].rule)

    def _volume_problem(self, grant: Grant, policy: Policy,
                        facts: Facts) -> str | NeedFacts | None:
        """Named volumes of a create body outside the grant's volume scope (facts: the daemon's)."""
        scope = grant.volume_scope()
        if scope is None or facts.body is None:
            return None
        try:
            names, volumes_from = bodies.named_volumes(facts.body)
        except bodies.UnparseableError as error:
            return f"the create body cannot be inspected: {error}"
        if volumes_from:
            return ("the create body asks for another container's volumes (HostConfig."
                    "VolumesFrom), which a volume scope cannot judge")
        missing = tuple(n for n in names if n not in facts.volumes)
        if missing:
            return NeedFacts(volumes=missing)
        for name in names:
            found = facts.volumes[name]
            known = found is not None and scope.matches(policy.name, found.name, found.labels)
            if not known and not (found is None and scope.by_name(name)):
                # The same words whether the volume is someone else's or does not exist.
                return (f"the create body mounts volume {name!r}, which is not among "
                        f"{scope.describe()} (create it with volume.create first)")
        return None


def _out_of_scope(request: Request, policy: Policy, what: str) -> Deny:
    """One denial for out of scope, unknown and ambiguous alike: it tells nothing apart."""
    operation = request.match.operation if request.match is not None else "?"
    return _denied(request, f"{operation} of {what} is not granted by policy {policy.name!r}",
                   "its container scope does not cover this container",
                   rule=f"policy {policy.name!r}")


def _sent(request: Request, target: str | None) -> str:
    """What the client sent and was told, for ScopedErrors: decoded target and query,
    and the forwarded (pinned) target."""
    return " ".join((request.target.path, unquote(request.target.query),
                     unquote(target or "")))


def _owned(request: Request, owner: str, allowed: Allow, facts: Facts) -> Decision:
    """An owner's create: forward the body with the owner label merged in, or deny."""
    if facts.body is None:
        return NeedFacts(body=True)
    operation = request.match.operation if request.match is not None else ""
    try:
        body = owner_body(operation, facts.body, owner)
    except OwnershipError as error:
        return _denied(request, f"{operation}: {error}", "dockgate labels what this client "
                       "creates as its own; send the body without that", rule=allowed.rule)
    return dataclasses.replace(allowed, body=body)


def _owned_network(request: Request, match: routes.Match, grants: list[Grant],
                   facts: Facts) -> Decision:
    """A network operation of an owner: the network, and a connected container, are its own.

    Both are resolved through the daemon and forwarded by full ID (the network in
    the path, the container as the body's last ``Container`` member), so the
    objects checked are the objects the daemon acts on.
    """
    grant = grants[0]
    owner = grant.network_owner
    operation = match.operation
    reference = match.params["network"]
    with_container = operation in CONNECT_OPERATIONS
    if with_container and facts.body is None:
        return NeedFacts(body=True)
    container_ref = None
    if with_container and facts.body is not None:
        try:
            container_ref = connect_container(facts.body)
        except OwnershipError as error:
            return _denied(request, f"{operation}: {error}", "name the container to "
                           "connect in Container", rule=grant.rule)
    missing_network = () if reference in facts.networks else (reference,)
    missing_container = () if container_ref is None or container_ref in facts.containers \
        else (container_ref,)
    if missing_network or missing_container:
        return NeedFacts(networks=missing_network, containers=missing_container,
                         body=with_container)
    network = facts.networks[reference]
    if network is None or not _FULL_ID.fullmatch(network.id) \
            or network.labels.get(OWNED_BY) != owner:
        return _denied(request, f"{operation} of network {reference!r} is not granted",
                       f"only networks this client created (labelled {OWNED_BY}={owner})",
                       rule=grant.rule)
    body = None
    if container_ref is not None and facts.body is not None:
        container = facts.containers[container_ref]
        if container is None or not _FULL_ID.fullmatch(container.id) \
                or container.labels.get(OWNED_BY) != owner:
            return _denied(request, f"{operation} of container {container_ref!r} is not "
                           "granted", f"only containers this client created (labelled "
                           f"{OWNED_BY}={owner})", rule=grant.rule)
        body = append_member(facts.body, "Container", container.id)
    return Allow(rule=grant.rule, target=match.with_param("network", network.id), body=body,
                 error_answer=ScopedErrors(_sent(request, None)))


def _query_denied(request: Request, policy: Policy, operation: str) -> Deny:
    query = f"?{request.target.query}" if request.target.query else " without parameters"
    return _denied(request, f"{operation}{query} is not granted by policy {policy.name!r}",
                   "its query: constraints do not allow these values",
                   rule=f"policy {policy.name!r}")

