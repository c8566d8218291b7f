"""Compiling a YAML policy document into a PolicyDecider (pure).

Every check here raises ``ConfigError("FILE:LINE: what is wrong; what to write
instead")`` at the node that is wrong; what is valid but suspicious (a policy
nothing uses, an unconstrained create, a glob a scope had to trim) becomes a
warning that ``dockgate policy lint`` prints.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import yaml

from dockgate import bodies
from dockgate.policy_decider import (
    CREATE_OPERATION,
    EXEC_CREATE_OPERATION,
    INSPECT_OPERATION,
    REDACTABLE,
    VOLUME_CREATE_OPERATION,
    Grant,
    Operations,
    Policy,
    PolicyDecider,
    operations,
)
from dockgate.policy_match import (
    BOOL_PARAMS,
    CONTAINER_NAME,
    GLOB_CHARS,
    SIGNAL_NAMES,
    ClientRule,
    ContainerScope,
    QueryRule,
    normalize_listener,
    normalize_pattern,
    normalize_query_value,
)
from dockgate.policy_owner import OWNED_BY, OWNER_NAME, ImageList, read_image_list
from dockgate.policy_scope import ExecRules, VolumeScope
from dockgate.policy_yaml import Source, compose, integer, mapping, sequence, suggest, text, texts

_TOP_KEYS = ("version", "policies", "clients", "listeners", "default")
_POLICY_KEYS = ("description", "owner", "grants")
_GRANT_KEYS = ("allow", "containers", "networks", "images", "images_from", "volumes", "query",
               "create", "exec", "redact")
_CONTAINER_KEYS = ("names", "globs", "labels", "own")
_VOLUME_KEYS = ("names", "globs", "labels", "own")
_CREATE_KEYS = ("deny",)
_EXEC_KEYS = ("deny", "commands")
_CLIENT_KEYS = ("name", "policy", "address", "uid", "gid", "cert_cn", "cert_san", "listener",
                "container", "compose_service", "compose_project", "container_labels")
_CONTAINER_CLIENT_KEYS = ("container", "compose_service", "compose_project", "container_labels")


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
                if not normalize_listener(url).startswith(("tcp://", "tls://", "unix://")):
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
            parts = {key: value for key, _key_node, value
                     in mapping(body, self.source, f"policy {name!r}", _POLICY_KEYS)}
            if "description" in parts:
                text(parts["description"], self.source, "description")
            owner = self.owner(parts["owner"]) if "owner" in parts else None
            grants: list[Grant] = []
            if "grants" in parts:
                items = sequence(parts["grants"], self.source, f"policy {name!r} grants")
                grants = [self.grant(name, number, item, owner)
                          for number, item in enumerate(items, start=1)]
            if not grants:
                raise self.source.error(key_node, f"policy {name!r} has no grants; list them "
                                        "under grants: (a policy that allows nothing needs no "
                                        "definition: unbound clients get nothing)")
            policies[name] = Policy(name, grants, owner=owner)
            lines[name] = key_node.start_mark.line + 1
        if not policies:
            raise self.source.error(node, "policies: is empty; define at least one policy")
        return policies, lines

    def owner(self, node: yaml.Node) -> str:
        owner = text(node, self.source, "owner")
        if not OWNER_NAME.fullmatch(owner):
            raise self.source.error(node, f"owner {owner!r} is not a label value dockgate "
                                    "can use: letters, digits, _ . - (at most 63)")
        return owner

    def grant(self, policy: str, number: int, node: yaml.Node, owner: str | None) -> Grant:
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
        image_list: ImageList | None = None
        if "images" in parts and "images_from" in parts:
            raise self.source.error(parts["images_from"][0], "a grant takes images: or "
                                    "images_from:, not both; split it into two grants")
        if "containers" in parts and "images_from" in parts:
            raise self.source.error(parts["images_from"][0], "a grant is scoped by "
                                    "containers: or by images_from:, not both; split it into "
                                    "two grants")
        network_owner = None
        if "networks" in parts:
            others = sorted({"containers", "images", "images_from", "volumes"} & set(parts))
            if others:
                raise self.source.error(parts["networks"][0], f"a grant is scoped by networks:"
                                        f" or by {others[0]}:, not both; split it into two "
                                        "grants")
            network_owner = self.network_scope(parts["networks"][1], owner)
            explicit, from_globs = self.applicable(
                parts["allow"][1], explicit, from_globs=from_globs,
                scopable=self.ops.network_ref, scope="networks:",
                why="names no existing network")
        if "containers" in parts:
            containers = self.container_scope(parts["containers"][1], owner)
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
        if "images_from" in parts:
            # A relative path is read beside the policy file (a preset has no folder).
            folder = "" if self.source.label.startswith("preset:") else os.path.dirname(
                self.source.label)
            image_list = read_image_list(os.path.join(folder, text(
                parts["images_from"][1], self.source, "images_from")))
            if image_list.missing:
                self.warnings.append(f"{self.at(parts['images_from'][1])}: {image_list.path} "
                                     "does not exist (yet): no image is approved until it "
                                     "does")
            explicit, from_globs = self.applicable(
                parts["allow"][1], explicit, from_globs=from_globs,
                scopable=self.ops.image_scopable, scope="images_from:", why="names no image")
        volumes = None
        if "volumes" in parts:
            volumes = self.volume_scope(parts["volumes"][1])
            explicit, from_globs = self.applicable(
                parts["allow"][1], explicit, from_globs=from_globs,
                scopable=self.ops.volume_scopable, scope="volumes:",
                why="names no volume")
        query = self.query(parts["query"][1]) if "query" in parts else ()
        granted = {op for op, _ in explicit} | from_globs
        create_deny = None
        if "create" in parts:
            create_deny = self.create(parts["create"][1])
            if not {CREATE_OPERATION, VOLUME_CREATE_OPERATION} & granted:
                raise self.source.error(parts["create"][0], "create: constrains "
                                        "container.create and volume.create, which this grant "
                                        "does not allow; add one to allow: or remove create:")
        exec_rules = None
        if "exec" in parts:
            exec_rules = self.exec_rules(parts["exec"][1])
            if EXEC_CREATE_OPERATION not in granted:
                raise self.source.error(parts["exec"][0], "exec: constrains exec.create, "
                                        "which this grant does not allow; add it to allow: or "
                                        "remove exec:")
        operations_ = frozenset(granted)
        for kind, scoped, scopable in (("container", containers, self.ops.container_scopable),
                                       ("network", network_owner, self.ops.network_ref)):
            unscoped = sorted(operations_ & scopable) if owner is not None and scoped is None \
                else []
            if unscoped:
                raise self.source.error(node, f"policy {policy!r} has owner: {owner}, so its "
                                        f"{kind} operations need a {kind}s: scope "
                                        f"({', '.join(unscoped)}); write {kind}s: "
                                        "{own: true}")
        redact: frozenset[str] = frozenset()
        if "redact" in parts:
            if INSPECT_OPERATION not in operations_:
                raise self.source.error(parts["redact"][0], "redact: applies to "
                                        "container.inspect answers, which this grant does not "
                                        "allow; add it to allow: or remove redact:")
            for item, item_node in texts(parts["redact"][1], self.source, "redact"):
                if item not in REDACTABLE:
                    raise self.source.error(item_node, f"cannot redact {item!r}"
                                            f"{suggest(item, REDACTABLE)}; known: "
                                            f"{', '.join(REDACTABLE)}")
            redact = frozenset(item for item, _ in texts(parts["redact"][1], self.source,
                                                         "redact"))
        return Grant(policy, number, where, operations_, containers, images, query,
                     create_deny, redact=redact, exec_rules=exec_rules, volumes=volumes,
                     image_list=image_list, network_owner=network_owner)

    def volume_scope(self, node: yaml.Node) -> VolumeScope:
        names: set[str] = set()
        globs: list[str] = []
        labels: list[tuple[str, str]] = []
        own = False
        for key, _key_node, value in mapping(node, self.source, "volumes", _VOLUME_KEYS):
            if key == "names":
                for name, item in texts(value, self.source, "names"):
                    if GLOB_CHARS.intersection(name):
                        raise self.source.error(item, f"volume name {name!r} contains a "
                                                "pattern character; names match exactly, put "
                                                "patterns under globs:")
                    if not CONTAINER_NAME.fullmatch(name):
                        raise self.source.error(item, f"{name!r} is not a volume name "
                                                "(letters, digits, _ . -)")
                    names.add(name)
            elif key == "globs":
                globs.extend(glob for glob, _ in texts(value, self.source, "globs"))
            elif key == "labels":
                for label, _label_node, label_value in mapping(value, self.source, "labels"):
                    labels.append((label, text(label_value, self.source, f"label {label}")))
            else:
                flag = text(value, self.source, "own")
                if flag not in ("true", "false"):
                    raise self.source.error(value, "own is true or false (true: the volumes "
                                            "created through this policy)")
                own = flag == "true"
        if not (names or globs or labels or own):
            raise self.source.error(node, "volumes: selects nothing; give names:, globs:, "
                                    "labels: or own: true")
        return VolumeScope(frozenset(names), tuple(globs), tuple(labels), own)

    def exec_rules(self, node: yaml.Node) -> ExecRules:
        deny: set[str] = set()
        commands: list[tuple[str, ...]] = []
        for key, _key_node, value in mapping(node, self.source, "exec", _EXEC_KEYS):
            if key == "deny":
                for check, item in texts(value, self.source, "deny"):
                    if check == "all":
                        deny.update(bodies.EXEC_CHECKS)
                    elif check in bodies.EXEC_CHECKS:
                        deny.add(check)
                    else:
                        raise self.source.error(item, f"unknown exec constraint {check!r}"
                                                f"{suggest(check, bodies.EXEC_CHECKS)}; known: "
                                                f"all, {', '.join(bodies.EXEC_CHECKS)}")
            else:
                for item in sequence(value, self.source, "commands"):
                    if not isinstance(item, yaml.SequenceNode):
                        raise self.source.error(item, "each command is a list of arguments "
                                                "(globs), e.g. [cat, /etc/*]")
                    commands.append(tuple(arg for arg, _ in
                                          texts(item, self.source, "a command")))
        if not (deny or commands):
            raise self.source.error(node, "exec: constrains nothing; write deny: [all] "
                                    "(or a list of constraints) and/or commands:")
        return ExecRules(frozenset(deny), tuple(commands))

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

    def network_scope(self, node: yaml.Node, owner: str | None) -> str:
        """``networks: {own: true}``: the networks this policy's client created."""
        parts = {key: value for key, _key_node, value
                 in mapping(node, self.source, "networks", ("own",))}
        if "own" not in parts or text(parts["own"], self.source, "own") != "true":
            raise self.source.error(node, "networks: takes own: true (the networks this "
                                    "client created)")
        if owner is None:
            raise self.source.error(node, "networks: {own: true} needs the policy's owner: "
                                    "NAME (the dockgate.owner label dockgate adds)")
        return owner

    def container_scope(self, node: yaml.Node, owner: str | None) -> ContainerScope:
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
                    if not CONTAINER_NAME.fullmatch(name):
                        raise self.source.error(item, f"{name!r} is not a container name "
                                                "(letters, digits, _ . -; no leading /)")
                    names.add(name)
            elif key == "globs":
                globs.extend(glob for glob, _ in texts(value, self.source, "globs"))
            elif key == "own":
                if text(value, self.source, "own") != "true":
                    raise self.source.error(value, "own: takes true (leave it out otherwise)")
                if owner is None:
                    raise self.source.error(value, "own: true needs the policy's owner: NAME "
                                            "(the dockgate.owner label dockgate adds)")
                labels.append((OWNED_BY, owner))
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
                known = (*bodies.CHECKS, *bodies.VOLUME_CHECKS)
                if check == "all":
                    deny.update(known)
                elif check in known:
                    deny.add(check)
                else:
                    raise self.source.error(item, f"unknown create constraint {check!r}"
                                            f"{suggest(check, known)}; known: all, "
                                            f"{', '.join(known)}")
        if not deny:
            # An empty create: would pass for a constrained grant while allowing any body.
            raise self.source.error(node, "create: constrains nothing; write deny: [all] "
                                    "(or a list of constraints)")
        return frozenset(deny)

    def client(self, node: yaml.Node, policies: Mapping[str, Policy]) -> ClientRule:
        parts = {key: (key_node, value) for key, key_node, value
                 in mapping(node, self.source, "a clients: entry", _CLIENT_KEYS)}
        if "policy" not in parts:
            raise self.source.error(node, "a clients: entry needs 'policy: NAME'")
        policy = self.policy_ref(parts["policy"][1], policies, "policy")
        if set(parts) <= {"policy", "name"}:
            raise self.source.error(node, "a clients: entry needs at least one of address:, "
                                    "uid:, gid:, cert_cn:, cert_san:, listener:, container:, "
                                    "compose_service:, compose_project:, container_labels: "
                                    "(use default: for everyone else)")
        rule: dict[str, Any] = {}
        for key, (_key_node, value) in parts.items():
            if key in ("address",):
                rule["networks"] = tuple(self.network(raw, item)
                                         for raw, item in texts(value, self.source, key))
            elif key in ("uid", "gid"):
                values = value.value if isinstance(value, yaml.SequenceNode) else [value]
                rule[f"{key}s"] = frozenset(integer(v, self.source, key) for v in values)
            elif key in ("cert_cn", "cert_san"):
                rule[f"{key}s"] = frozenset(v for v, _ in texts(value, self.source, key))
            elif key == "listener":
                rule["listeners"] = frozenset(normalize_listener(v) for v, _
                                              in texts(value, self.source, key))
            elif key == "container":
                rule["containers"] = frozenset(self.client_container(v, item)
                                               for v, item in texts(value, self.source, key))
            elif key in ("compose_service", "compose_project"):
                rule[f"{key}s"] = frozenset(v for v, _ in texts(value, self.source, key))
            elif key == "container_labels":
                labels = [(label, text(label_value, self.source, f"label {label}"))
                          for label, _label_node, label_value
                          in mapping(value, self.source, "container_labels")]
                if not labels:
                    raise self.source.error(value, "container_labels: is empty; list the "
                                            "labels the client's container must carry")
                rule["container_labels"] = tuple(labels)
        if set(_CONTAINER_CLIENT_KEYS) & set(parts) and rule.get("listeners") and all(
                _loopback_listener(url) for url in rule["listeners"]):
            self.warnings.append(f"{self.at(node)}: this clients: entry names a container but "
                                 "only loopback TCP listeners: a peer there has a loopback "
                                 "address, never a container's, so the entry never matches; "
                                 "give the container a unix socket or a listener on its "
                                 "network (docs/policies.md#clients-named-by-container)")
        name = text(parts["name"][1], self.source, "name") if "name" in parts else None
        return ClientRule(policy=policy, label=self.at(node), name=name, **rule)

    def client_container(self, name: str, node: yaml.Node) -> str:
        """A ``container:`` value: an exact container name, as the daemon spells it."""
        if name.startswith("/"):
            raise self.source.error(node, f"container: {name!r}: write the name without "
                                    f"the leading /, e.g. container: {name.lstrip('/')}")
        if GLOB_CHARS.intersection(name) or not CONTAINER_NAME.fullmatch(name):
            raise self.source.error(node, f"container: {name!r} is not a container name "
                                    "(exact names only: letters, digits, _ . -); to name "
                                    "several containers use compose_service: or "
                                    "container_labels:")
        return name

    def network(self, raw: str, node: yaml.Node) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(raw, strict=True)
        except ValueError as error:
            raise self.source.error(node, f"{raw!r} is not an IP address or network ({error});"
                                    " write e.g. 127.0.0.1 or 10.0.0.0/8") from None


def _loopback_listener(url: str) -> bool:
    """A tcp:// or tls:// listener on a loopback address (127.0.0.0/8, ::1)."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tls"):
        return False
    try:
        return ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return parts.hostname == "localhost"


def compile_text(text_: str, label: str, ops: Operations | None = None) -> PolicyDecider:
    """Compile a policy document; ConfigError ``LABEL:LINE: ...`` when it is invalid."""
    source = Source(label)
    return _Compiler(source, ops or operations()).document(compose(text_, source))

