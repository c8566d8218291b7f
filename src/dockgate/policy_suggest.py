"""Learn mode, the suggesting side: a recording -> the least-privilege policy (pure).

``dockgate policy suggest FILE`` reads the records ``policy_learn.observation``
wrote and writes a policy that allows what was recorded and nothing more:

- one policy per client identity seen (listener plus uid, address or
  certificate CN), bound to it by a ``clients:`` entry;
- operations that name a container are scoped to the containers recorded. A
  client that always named its containers by name gets ``names:``; one that
  also used IDs (it found them by listing or creating) gets the labels every
  container it touched shares, and ``names:`` only when they share none. Never
  all containers;
- requests are grouped by operation and by the values of the query parameters
  a grant can constrain (a kill's signal, logs' follow...), each group its own
  grant with exactly the values recorded, so values seen on one container are
  not granted on another;
- ``container.list`` and ``system.events`` are scoped like the client's other
  container operations (the client sees only what it acts on); a client that
  acted on no container sees everything it listed;
- image operations and ``container.create`` are scoped to the exact image
  references used (with their tag); every create grant denies each ``create:``
  constraint class no recorded body of that grant touched, one grant per set of
  classes, so features recorded in two bodies are never combined in one;
- everything else (ping, version, exec.start...) in one grant without scope.

Each grant carries a comment: how many requests it covers, first and last seen,
and, where the workload itself needed something dangerous (a host bind mount,
privileged mode, an exec whose body dockgate does not inspect), a DANGER line
that says so. The result is compiled before it is returned, and lint's findings
become comments at the top.

``--from POLICY`` (observe mode) starts from an existing policy and adds grants
only for the requests it denied, to the policy each client is bound to.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from dockgate import bodies, danger
from dockgate.decision import Client
from dockgate.errors import ConfigError
from dockgate.policy_decider import (
    CREATE_OPERATION,
    EVENTS_OPERATION,
    LIST_OPERATION,
    Operations,
    PolicyDecider,
    operations,
)
from dockgate.policy_file import compile_text
from dockgate.policy_learn import EXEC_CREATE_OPERATION, SCHEMA
from dockgate.policy_match import CONTAINER_NAME, QUERY_DEFAULTS, normalize_image
from dockgate.policy_yaml import Source, compose

# What a grant cannot express yet, said next to the grant that needed it.
DANGER = {
    "privileged": "privileged mode: root on the host",
    "host-mounts": "host bind mounts: any host path (the policy cannot limit which)",
    "host-namespaces": "a host or another container's namespace",
    "capabilities": "added capabilities",
    "devices": "host devices",
    "security-options": "security options (seccomp/apparmor profiles, /proc masks)",
    "log-drivers": "a log driver that connects out from the host's network namespace",
    "sysctls": "kernel parameters (sysctls)",
}
NOTES = {"root-user": "runs as root (or a named user) inside the container"}
PING = "system.ping"
_HEX_ID = re.compile(r"[0-9a-f]{12,64}")
_PLAIN = re.compile(r"[A-Za-z0-9_/.][A-Za-z0-9_./:@+=-]*")


# ---------------------------------------------------------------------------
# Reading a recording


@dataclass
class Recording:
    """The records of a learn file, and what the reader noticed about it."""

    records: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def read_recording(lines: Iterable[str], label: str) -> Recording:
    """Parse a learn file; a line that is not a record is an error naming its number."""
    recording = Recording([])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{label}:{number}: not a learn record (JSON lines written by "
                              "dockgate serve --learn)") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{label}:{number}: not a learn record")
        if record.get("event") == "learn.full":
            recording.notes.append(f"{label} reached its size bound: requests after line "
                                   f"{number} were not recorded")
            continue
        if record.get("v") != SCHEMA or not isinstance(record.get("client"), dict):
            raise ConfigError(f"{label}:{number}: a learn record of another version (this "
                              f"dockgate reads version {SCHEMA}); record again")
        recording.records.append(record)
    return recording


# ---------------------------------------------------------------------------
# Client identities


def identity_key(who: Mapping[str, Any]) -> tuple[str, ...]:
    """A client identity as a hashable, ordered key."""
    return tuple(f"{k}={who[k]}" for k in ("listener", "transport", "uid", "address",
                                           "cert_cn") if who.get(k) is not None)


def client_of(who: Mapping[str, Any]) -> Client:
    """The ``Client`` a recorded identity describes (for policy_for)."""
    transport = who.get("transport")
    if transport not in ("tcp", "unix", "tls"):
        raise ConfigError(f"a learn record names an unknown transport {transport!r}")
    return Client(str(who.get("listener")), transport, address=who.get("address"),
                  uid=who.get("uid"), gid=who.get("gid"), cert_cn=who.get("cert_cn"),
                  cert_sans=tuple(who.get("cert_sans") or ()))


def select_client(records: Sequence[dict[str, Any]], spec: str) -> list[dict[str, Any]]:
    """The records of the client ``spec`` describes: ``uid=0,listener=unix:///x`` etc."""
    wanted: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            key, value = "address", key
        key = {"cn": "cert_cn"}.get(key, key)
        if key not in ("address", "uid", "gid", "cert_cn", "listener") or not value:
            raise ConfigError(f"--client {spec!r} is invalid: write an IP address, uid=N, "
                              "gid=N, cn=NAME, listener=URL, comma-separated")
        wanted[key] = value
    chosen = [r for r in records
              if all(str(r["client"].get(k)) == v for k, v in wanted.items())]
    if not chosen:
        seen = sorted({", ".join(identity_key(r["client"])) for r in records})
        raise ConfigError(f"--client {spec!r} matches no recorded client; recorded: "
                          f"{'; '.join(seen) or 'none'}")
    return chosen


def policy_name(who: Mapping[str, Any]) -> str:
    """A readable, stable policy name for an identity: ``uid0-relay.sock``, ``127.0.0.1-2375``."""
    listener = str(who.get("listener", ""))
    short = listener.rsplit("/", 1)[-1].rsplit(":", 1)[-1] or "listener"
    if who.get("cert_cn"):
        person = f"cn-{who['cert_cn']}"
    elif who.get("transport") == "unix":
        person = f"uid{who.get('uid')}"
    else:
        person = str(who.get("address"))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{person}-{short}").strip("-")


def client_entry(who: Mapping[str, Any], policy: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"listener": str(who["listener"])}
    if who.get("cert_cn"):
        entry["cert_cn"] = str(who["cert_cn"])
    elif who.get("transport") == "unix" and who.get("uid") is not None:
        entry["uid"] = int(who["uid"])
    elif who.get("address"):
        entry["address"] = str(who["address"])
    entry["policy"] = policy
    return entry


# ---------------------------------------------------------------------------
# Grants from records


@dataclass
class Draft:
    """One grant being built: its YAML mapping, the records it covers, its comments."""

    body: dict[str, Any]
    records: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def comments(self) -> list[str]:
        if not self.records:
            return self.notes
        times = [r["time"] for r in self.records if isinstance(r.get("time"), int | float)]
        count = len(self.records)
        seen = (f", first {_stamp(min(times))}, last {_stamp(max(times))}" if times else "")
        ops: dict[str, int] = {}
        for record in self.records:
            ops[record["operation"]] = ops.get(record["operation"], 0) + 1
        per_op = ", ".join(f"{op} {n}" for op, n in sorted(ops.items()))
        lines = [f"{count} request{'s' if count != 1 else ''}{seen} ({per_op})"]
        return lines + self.notes


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _effective_query(record: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    operation = record["operation"]
    query = record.get("query") or {}
    found = []
    for (op, param), default in sorted(QUERY_DEFAULTS.items()):
        if op == operation:
            found.append((param, tuple(sorted(set(query.get(param) or [default])))))
    return tuple(found)


def _container_ref(record: Mapping[str, Any]) -> str | None:
    params = record.get("params") or {}
    ref = params.get("container")
    return ref if isinstance(ref, str) else None


def _by_name(records: Sequence[dict[str, Any]]) -> bool:
    """Whether the client named every container it touched by its name (not an ID).

    Exec operations name an exec instance, never a container: they do not count.
    """
    for record in records:
        if _container_ref(record) is None:
            continue
        found = record.get("container") or {}
        ref = _container_ref(record)
        if found.get("name") is not None and ref != found["name"]:
            return False
    return True


def _shared_labels(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    shared: dict[str, str] | None = None
    for record in records:
        found = record.get("container") or {}
        if found.get("name") is None:
            continue  # no such container: the daemon answered 404, nothing to scope by
        labels = found.get("labels")
        if not isinstance(labels, dict):
            return {}
        current = {k: v for k, v in labels.items() if isinstance(v, str) and
                   not v.endswith("...(cut)") and not k.endswith("...(cut)")}
        shared = current if shared is None else {
            k: v for k, v in shared.items() if current.get(k) == v}
    return shared or {}


class _Builder:
    """The grants of one client, from its records."""

    def __init__(self, records: Sequence[dict[str, Any]], ops: Operations) -> None:
        self.records = records
        self.ops = ops
        self.skipped: list[str] = []
        self.container_ops = frozenset(ops.container_ref) | ops.exec_ref
        scoped = [r for r in records if r["operation"] in self.container_ops]
        self.use_labels = bool(scoped) and not _by_name(scoped)

    def container_scope(self, records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        if self.use_labels:
            labels = _shared_labels(records)
            if labels:
                return {"labels": labels}
        names: set[str] = set()
        for record in records:
            found = record.get("container") or {}
            name = found.get("name")
            if name is None:
                # A container that did not exist: grant it by the name the client used,
                # never by an ID (the next container with that ID prefix is another one).
                name = _container_ref(record)
                if name is None or _HEX_ID.fullmatch(name):
                    continue
            if CONTAINER_NAME.fullmatch(name):
                names.add(name)
        return {"names": sorted(names)} if names else None

    def drafts(self) -> list[Draft]:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for record in self.records:
            operation = record.get("operation")
            if not isinstance(operation, str) or operation not in self.ops.all:
                self.skipped.append(f"{record.get('method')} {record.get('path')}: no "
                                    "Engine API route, not granted")
                continue
            groups.setdefault(self._kind(record), []).append(record)
        open_records: list[dict[str, Any]] = []
        self.scopes: dict[str, dict[str, Any]] = {}
        by_scope: dict[str, Draft] = {}
        drafts: list[Draft] = []
        listing: list[dict[str, Any]] = []
        for key, records in sorted(groups.items(), key=lambda item: repr(item[0])):
            kind = key[0]
            if kind == "open":
                open_records.extend(records)
            elif kind == "list":
                listing.extend(records)
            elif kind == "container":
                self._scoped(key, records, by_scope, drafts)
            elif kind == "image":
                drafts.extend(self._images(records))
            elif kind == "volume":
                drafts.extend(self._volumes(records))
            else:
                drafts.extend(self._creates(records))
        if listing:
            self._listing(listing, by_scope, drafts)
        if open_records:
            ops = sorted({r["operation"] for r in open_records})
            drafts.insert(0, Draft({"allow": ops}, open_records))
        return drafts

    def _kind(self, record: dict[str, Any]) -> tuple[Any, ...]:
        operation = record["operation"]
        if operation in (LIST_OPERATION, EVENTS_OPERATION):
            return ("list",)
        if operation in self.container_ops:
            return ("container", operation, _effective_query(record), _exec_classes(record))
        if operation == CREATE_OPERATION:
            return ("create",)
        if operation in self.ops.image_ref:
            return ("image", operation)
        if operation in self.ops.volume_ref:
            return ("volume", operation)
        return ("open",)

    def _scoped(self, key: tuple[Any, ...], records: list[dict[str, Any]],
                by_scope: dict[str, Draft], drafts: list[Draft]) -> None:
        _kind, operation, query, exec_classes = key
        scope = self.container_scope(records)
        if scope is None:
            self.skipped.append(f"{operation}: {len(records)} requests named containers "
                                "that did not exist by ID only; not granted")
            return
        self.scopes[json.dumps(scope, sort_keys=True)] = scope
        notes = self._exec_notes(records) if operation == EXEC_CREATE_OPERATION else []
        body: dict[str, Any] = {"allow": [operation], "containers": scope}
        if query:
            body["query"] = {param: list(values) for param, values in query}
        if operation == EXEC_CREATE_OPERATION:
            deny = [c for c in bodies.EXEC_CHECKS if c not in exec_classes]
            if deny:
                body["exec"] = {"deny": deny}
        if query or operation == EXEC_CREATE_OPERATION:
            drafts.append(Draft(body, list(records), notes))
            return
        merged = by_scope.get(json.dumps(scope, sort_keys=True))
        if merged is not None:
            merged.body["allow"] = sorted({*merged.body["allow"], operation})
            merged.records.extend(records)
            merged.notes.extend(notes)
            return
        draft = Draft(body, list(records), notes)
        by_scope[json.dumps(scope, sort_keys=True)] = draft
        drafts.append(draft)

    def _listing(self, records: list[dict[str, Any]], by_scope: dict[str, Draft],
                 drafts: list[Draft]) -> None:
        ops = sorted({r["operation"] for r in records})
        if not self.scopes:
            # It acted on no container: what it listed was everything.
            drafts.append(Draft({"allow": ops}, records,
                                ["unscoped: the client acted on no container, so it sees "
                                 "every container and event it listed"]))
            return
        # Scoped like its other container operations: it sees what it acts on.
        for key, scope in self.scopes.items():
            draft = by_scope.get(key)
            if draft is None:
                drafts.append(Draft({"allow": ops, "containers": scope}, list(records)))
            else:
                draft.body["allow"] = sorted({*draft.body["allow"], *ops})
                draft.records.extend(records)

    def _exec_notes(self, records: list[dict[str, Any]]) -> list[str]:
        features = [r.get("body") or {} for r in records]
        users = sorted({f.get("user") or "(image default)" for f in features})
        notes = [f"exec users seen: {', '.join(users)}"]
        if any(f.get("privileged") for f in features):
            notes.append("DANGER: the workload ran a privileged exec")
        return notes

    def _volumes(self, records: list[dict[str, Any]]) -> list[Draft]:
        operation = records[0]["operation"]
        names = sorted({str((r.get("params") or {}).get("volume", "")) for r in records})
        if not all(CONTAINER_NAME.fullmatch(name) for name in names):
            self.skipped.append(f"{operation} of a volume without a plain name: not granted")
            return []
        return [Draft({"allow": [operation], "volumes": {"names": names}}, records)]

    def _images(self, records: list[dict[str, Any]]) -> list[Draft]:
        operation = records[0]["operation"]
        refs: set[str] = set()
        used: list[dict[str, Any]] = []
        for record in records:
            found = _image_refs(record, self.ops.image_ref[operation])
            if not found:
                self.skipped.append(f"{operation} without an image reference (e.g. an import "
                                    "with fromSrc): not granted")
                continue
            refs.update(found)
            used.append(record)
        if not refs:
            return []
        return [Draft({"allow": [operation], "images": sorted(refs)}, used)]

    def _creates(self, records: list[dict[str, Any]]) -> list[Draft]:
        by_classes: dict[tuple[tuple[str, ...], tuple[str, ...], bool],
                         list[dict[str, Any]]] = {}
        for record in records:
            features = record.get("body") or {}
            image = features.get("image")
            if "error" in features or not isinstance(image, str) or not image or \
                    image.endswith("...(cut)"):
                self.skipped.append("container.create with a body that could not be read or "
                                    "no image: not granted")
                continue
            volumes = tuple(features.get("volumes", ()))
            if not all(CONTAINER_NAME.fullmatch(v) for v in volumes):
                self.skipped.append("container.create mounting a volume whose name was cut: "
                                    "not granted")
                continue
            classes = tuple(sorted(c for c in features.get("classes", ()) if c in bodies.CHECKS))
            key = (classes, volumes, bool(features.get("volumes_from")))
            by_classes.setdefault(key, []).append(record)
        drafts = []
        for (classes, volumes, volumes_from), group in sorted(by_classes.items()):
            images = sorted({normalize_image(r["body"]["image"]) for r in group})
            body: dict[str, Any] = {"allow": [CREATE_OPERATION], "images": images}
            # Named volumes by exact name; VolumesFrom cannot be scoped: then no volumes check.
            granted = set(classes) - ({"volumes"} if volumes and not volumes_from else set())
            deny = [c for c in bodies.CHECKS if c not in granted]
            if volumes and not volumes_from:
                body["volumes"] = {"names": list(volumes)}
            if deny:
                body["create"] = {"deny": deny}
            notes = _create_notes(classes, group)
            if volumes_from:
                notes.append("DANGER: the workload mounted another container's volumes "
                             "(VolumesFrom): any named volume is allowed")
            drafts.append(Draft(body, group, notes))
        return drafts


def _create_notes(classes: tuple[str, ...], records: list[dict[str, Any]]) -> list[str]:
    notes = [f"DANGER: the workload needed {DANGER[c]}" if c in DANGER else
             f"the workload {NOTES.get(c, 'needed ' + c)}" for c in classes]
    binds = sorted({(b.get("source", ""), bool(b.get("read_only")))
                    for r in records for b in r["body"].get("binds", ())})
    if binds:
        notes.append("host paths mounted: " + ", ".join(
            f"{source} ({'read-only' if ro else 'read-write'})" for source, ro in binds))
    return notes


def _exec_classes(record: Mapping[str, Any]) -> tuple[str, ...]:
    if record["operation"] != EXEC_CREATE_OPERATION:
        return ()
    features = record.get("body") or {}
    # An unreadable body (no classes) grants no class: such a body is denied anyway.
    return tuple(sorted(c for c in features.get("classes", ()) if c in bodies.EXEC_CHECKS))


def _image_refs(record: Mapping[str, Any], param: str | None) -> list[str]:
    query = record.get("query") or {}
    params = record.get("params") or {}

    def reference(key: str) -> str:
        names, tags = query.get(key) or [], query.get("tag") or []
        if len(names) != 1 or len(tags) > 1:
            return ""
        return str(names[0]) + (f":{tags[0]}" if tags and tags[0] else "")

    refs = [params.get(param, "") if param is not None else reference("fromImage")]
    if str(record.get("path", "")).endswith("/tag"):
        refs.append(reference("repo"))
    if not all(refs):
        return []
    return [normalize_image(ref) for ref in refs]


# ---------------------------------------------------------------------------
# The document


@dataclass
class Suggestion:
    """A suggested policy file: its text, and the decider it compiles to."""

    text: str
    decider: PolicyDecider


def suggest(recording: Recording, *, label: str, client: str | None = None,
            base: tuple[str, str] | None = None, ops: Operations | None = None) -> Suggestion:
    """The policy allowing what ``recording`` shows; ``base``: (text, label) to add to."""
    ops = ops or operations()
    records = recording.records
    if client is not None:
        records = select_client(records, client)
    base_decider = compile_text(*base, ops) if base is not None else None
    if base_decider is not None:
        records = [r for r in records if r.get("decision") == "deny"]
    tree: dict[str, Any] = _tree(base[0], base[1]) if base is not None else {}
    tree.setdefault("policies", {})
    identities: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        identities.setdefault(identity_key(record["client"]), []).append(record)
    header = _header(recording, records, label, base)
    skipped: list[str] = []
    for group in identities.values():
        who = group[0]["client"]
        builder = _Builder(group, ops)
        drafts = builder.drafts()
        skipped.extend(builder.skipped)
        if not drafts:
            continue
        bound = base_decider.policy_for(client_of(who)) if base_decider else None
        if bound is None:
            _with_ping(drafts)
        if bound is not None:
            policy = tree["policies"][bound.name]
            policy.setdefault("grants", []).extend(drafts)
            continue
        name = _free_name(policy_name(who), tree["policies"])
        tree["policies"][name] = {"description": "learned from " + ", ".join(
            identity_key(who)), "grants": drafts}
        tree.setdefault("clients", []).append(client_entry(who, name))
    if not identities:
        header.append("nothing to add: the recording holds no request to grant" if base
                      else "the recording holds no request")
    header.extend(f"not granted: {line}" for line in sorted(set(skipped)))
    if not tree["policies"]:
        raise ConfigError(f"{label}: no request in the recording can be granted; nothing "
                          "to suggest")
    head = "\n".join(f"# {line}" for line in header) + "\n"
    decider = compile_text(head + emit(tree), "suggested policy", ops)
    # lint's DANGER findings on the grants made here become their comments; what lint
    # says of anything else (the --from policy's own grants) goes to the top.
    others = [*decider.warnings, *danger.ping_warnings(decider)]
    for name, body in tree["policies"].items():
        for entry, grant in zip(body.get("grants", []), decider.policies[name].grants,
                                strict=True):
            found = danger.grant_dangers(grant)
            if isinstance(entry, Draft):
                entry.notes.extend(f"DANGER (lint): allows {op}: {why}" for op, why in found)
            else:
                others.extend(f"{grant.where}: DANGER: allows {op}: {why}"
                              for op, why in found)
    text = "".join(f"# lint: {line}\n" for line in others) + head + emit(tree)
    return Suggestion(text, compile_text(text, "suggested policy", ops))


def _with_ping(drafts: list[Draft]) -> None:
    """Every suggested policy allows system.ping (lint asks for it: the docker CLI pings
    first to pick the API version); it reveals nothing but that the daemon answers."""
    if any(PING in draft.body["allow"] for draft in drafts):
        return
    note = (f"{PING} was not recorded: added because the docker CLI pings first to pick "
            "the API version (it reveals nothing)")
    for draft in drafts:
        if set(draft.body) == {"allow"}:
            draft.body["allow"] = sorted({*draft.body["allow"], PING})
            draft.notes.append(note)
            return
    drafts.insert(0, Draft({"allow": [PING]}, [], [note]))


def _free_name(name: str, taken: Mapping[str, Any]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def _header(recording: Recording, records: Sequence[dict[str, Any]], label: str,
            base: tuple[str, str] | None) -> list[str]:
    times = [r["time"] for r in records if isinstance(r.get("time"), int | float)]
    span = f", {_stamp(min(times))} to {_stamp(max(times))}" if times else ""
    lines = [f"Suggested by `dockgate policy suggest` from {label} ({len(records)} "
             f"requests{span}).",
             "It allows what was recorded and nothing more; review it before use."]
    if base is not None:
        lines.append(f"Based on {base[1]}, with grants added only for what it denied "
                     "(the original's comments are not kept).")
    return lines + recording.notes


def _tree(text: str, label: str) -> dict[str, Any]:
    """A policy document as dicts, lists and strings, every scalar as written."""

    def convert(node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return {key.value: convert(value) for key, value in node.value}
        if isinstance(node, yaml.SequenceNode):
            return [convert(item) for item in node.value]
        return str(node.value)

    tree = convert(compose(text, Source(label)))
    if not isinstance(tree, dict):
        raise ConfigError(f"{label}: not a policy document")
    return tree


# ---------------------------------------------------------------------------
# A small YAML emitter: plain scalars where YAML reads them back as the same
# string, double-quoted (JSON) otherwise; lists of scalars in flow style; a
# grant's comments above it.


def scalar(value: object) -> str:
    """A YAML scalar read back as exactly ``value``, by dockgate and by any YAML reader.

    Plain when YAML resolves it as that string (so ``0755``, ``yes`` and ``1e3``
    are quoted), double-quoted (JSON) otherwise; integers plain.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and not text.endswith(":") and \
            yaml.safe_load(text) == text:
        return text
    return json.dumps(text)


def emit(node: Any, indent: int = 0) -> str:
    """Block YAML for a tree of dicts, lists, strings and ``Draft`` grants."""
    pad = " " * indent
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list) and value and not _flow(value):
                out.append(f"{pad}{scalar(key)}:\n{emit(value, indent + 2)}")
            else:
                out.append(f"{pad}{scalar(key)}: {_inline(value)}\n")
    elif isinstance(node, list):
        for entry in node:
            if isinstance(entry, Draft):
                out.extend(f"{pad}# {line}\n" for line in entry.comments())
            item = entry.body if isinstance(entry, Draft) else entry
            if isinstance(item, dict) and item:
                inner = emit(item, indent + 2)
                out.append(f"{pad}- {inner[indent + 2:]}")
            else:
                out.append(f"{pad}- {_inline(item)}\n")
    return "".join(out)


def _flow(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _inline(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{scalar(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    return scalar(value)
