"""Least-privilege policies: files, presets and environment variables -> a Decider (pure).

The public face of the policy modules, as ``cli`` calls it: ``load_file`` (a
YAML file or ``preset:NAME``), ``from_env`` (``ALLOW_RESTART_CONTAINERS``...),
``explain`` (``dockgate check``) and ``lint_file`` (``dockgate policy lint``).

    policy_yaml     YAML nodes with line numbers -> values or ConfigError
    policy_match    container scopes, image references, query values, client rules
    policy_decider  Grant, Policy (indexed by operation), PolicyDecider.decide
    policy_file     the schema: a YAML document -> PolicyDecider
    bodies          container-create bodies read the way dockerd reads them

A policy file names policies; each policy is a list of grants; each grant allows
operations (routes' names, ``container.*`` globs), optionally scoped to
containers (exact name, explicit glob, labels), images (reference patterns),
query values (a kill ``signal``...) or create-body constraints. Clients are bound
to policies by source address, unix peer uid/gid, TLS certificate CN/SAN or
listener; a client no rule names gets its listener's default policy, and without
one, nothing. docs/policies.md is the user's guide.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from importlib import resources

from dockgate import danger, routes
from dockgate.decision import Allow, Client, ContainerFacts, Decider, Facts, NeedFacts, Request
from dockgate.errors import BadTarget, ConfigError
from dockgate.policy_decider import (
    CREATE_OPERATION,
    EXEC_CREATE_OPERATION,
    VOLUME_CREATE_OPERATION,
    Grant,
    Policy,
    PolicyDecider,
    operations,
)
from dockgate.policy_file import compile_text
from dockgate.policy_match import (
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    CONTAINER_NAME,
    ContainerScope,
    normalize_listener,
)
from dockgate.policy_yaml import suggest

__all__ = ["Grant", "Policy", "PolicyDecider", "compile_text", "explain", "from_env",
           "lint_file", "load_file", "normalize_listener", "parse_client", "preset_names"]

PRESET_PREFIX = "preset:"
DEFAULT_CLIENT = "127.0.0.1"
# Operations whose verdict may depend on the body: explain does not assume it empty.
BODY_OPERATIONS = frozenset({CREATE_OPERATION, EXEC_CREATE_OPERATION, VOLUME_CREATE_OPERATION})


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


def read_text(path: str) -> tuple[str, str]:
    """The text of a policy file or of ``preset:NAME``, and its label for messages."""
    return _read(path)


def load_file(path: str) -> PolicyDecider:
    """The decider of a policy file or of ``preset:NAME``; ConfigError if invalid."""
    content, label = _read(path)
    return compile_text(content, label)


def lint_file(path: str) -> list[str]:
    """Problems of a policy file, each ``FILE:LINE: ...``; empty when it is clean.

    Besides what the compiler warns about: policies without ``system.ping`` and
    every grant ``danger`` classifies as root on the host or close to it.
    """
    try:
        decider = load_file(path)
    except ConfigError as error:
        return [str(error)]
    return [*decider.warnings, *danger.ping_warnings(decider), *danger.policy_dangers(decider)]


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
        if not CONTAINER_NAME.fullmatch(name):
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
                         default=ENV_POLICY,
                         grant_hint=f"{RESTART_VARIABLE} and {INSPECT_VARIABLE} grant only "
                         "restart and inspect; use --policy FILE to grant more")


# ---------------------------------------------------------------------------
# Explaining a decision without a daemon


CLIENT_FORMS = ("an IP address, uid=N, gid=N, cn=NAME, san=NAME, listener=URL, container=NAME, "
                "service=NAME, project=NAME")


def parse_client(spec: str | None) -> Client:
    """``127.0.0.2``, ``uid=1000,gid=1000``, ``cn=relay,listener=tls://0.0.0.0:2376`` -> Client.

    Comma-separated parts; uid/gid make a unix client, cn/san a TLS client, an
    address alone a TCP client. The listener defaults to ``check``, which names
    no real listener (so only ``clients:`` rules and ``default:`` apply).
    """
    fields: dict[str, str] = {}
    for part in (spec or DEFAULT_CLIENT).split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            key, value = "address", key
        if key not in ("address", "uid", "gid", "cn", "san", "listener", "container",
                       "service", "project") or key in fields:
            raise ConfigError(f"--client {spec!r} is invalid: write {CLIENT_FORMS}, "
                              "comma-separated")
        fields[key] = value
    if "address" in fields:
        try:
            ipaddress.ip_address(fields["address"])
        except ValueError:
            raise ConfigError(f"--client {spec!r} is invalid: {fields['address']!r} is not "
                              f"an IP address (write {CLIENT_FORMS})") from None
    ids: dict[str, int | None] = {}
    for key in ("uid", "gid"):
        raw = fields.get(key)
        if raw is not None and not raw.isdigit():
            raise ConfigError(f"--client {spec!r} is invalid: {key} must be a number")
        ids[key] = int(raw, 10) if raw is not None else None
    listener = fields.get("listener", "check")
    container = _assumed_container(fields)
    if ids["uid"] is not None or ids["gid"] is not None:
        return Client(listener, "unix", uid=ids["uid"], gid=ids["gid"], container=container)
    address = fields.get("address", DEFAULT_CLIENT)
    if "cn" in fields or "san" in fields:
        sans = (fields["san"],) if "san" in fields else ()
        return Client(listener, "tls", address=address, port=0, cert_cn=fields.get("cn"),
                      cert_sans=sans, container=container)
    return Client(listener, "tcp", address=address, port=0, container=container)


def _assumed_container(fields: Mapping[str, str]) -> ContainerFacts | None:
    """``container=``, ``service=``, ``project=``: the container the client is assumed to be."""
    if not {"container", "service", "project"} & set(fields):
        return None
    labels = {label: fields[key] for key, label in (("service", COMPOSE_SERVICE),
                                                    ("project", COMPOSE_PROJECT))
              if key in fields}
    return ContainerFacts(id="0" * 64, name=fields.get("container", ""), labels=labels)


def explain(decider: Decider, method: str, target: str,
            client: str | Client | None = None) -> tuple[str, bool]:
    """How ``method target`` would be decided for ``client``; (report, allowed).

    Nothing asks the daemon: a container reference is shown unresolved, and the
    verdict assumes it names the container of that name.
    """
    who = client if isinstance(client, Client) else parse_client(client)
    try:
        parsed = routes.parse_target(target)
        request = Request(method, parsed, routes.classify(method, parsed))
    except BadTarget as error:
        return f"{method} {target}: rejected before any policy: {error.message}", False
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
    facts = Facts()
    decision = decider.decide(who, request, facts)
    if isinstance(decision, NeedFacts) and decision.containers:
        reference = decision.containers[0]
        lines.append(f"would resolve {reference!r} via the daemon and require "
                     f"{_scope_text(decider, who, request)}")
        # A stand-in ID: only the name (and no labels) is assumed, nothing is forwarded.
        assumed = ContainerFacts(id="0" * 64, name=reference.lstrip("/"), labels={})
        facts = Facts(containers={reference: assumed})
        decision = decider.decide(who, request, facts)
        lines.append(f"if {reference!r} is the container named {reference.lstrip('/')!r} "
                     "(no labels):")
    if isinstance(decision, NeedFacts) and (decision.execs or decision.volumes):
        what = (f"exec {decision.execs[0]!r} (the verdict depends on its container)"
                if decision.execs else
                f"volume {decision.volumes[0]!r} (the verdict depends on its labels)")
        lines.append(f"would ask the daemon about {what}")
        return "\n".join(lines), False
    creating = request.match is not None and request.match.operation in BODY_OPERATIONS
    if isinstance(decision, NeedFacts) and decision.body and not creating:
        lines.append("assuming no request body (what the docker CLI sends):")
        decision = decider.decide(who, request, Facts(containers=facts.containers, body=b""))
    if isinstance(decision, NeedFacts):
        lines.append("would read the request body and check the grant's constraints on it; "
                     "the verdict depends on the body")
        return "\n".join(lines), False
    if isinstance(decision, Allow):
        lines.append(f"ALLOWED by {decision.rule}")
        note = danger.allowed_note(decider, request.match.operation, decision.rule) if (
            request.match is not None) else None
        if note is not None:
            lines.append(f"  {note}")
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
