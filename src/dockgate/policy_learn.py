"""Learn mode, the recording side: what a policy needs to know of each request (pure).

Theory of operation. ``dockgate serve --learn FILE`` wraps the configured decider
in a ``LearningDecider``. Before the real decider is asked, it asks the shell
(``NeedFacts``) for the two facts a suggested policy is built from and that a
permissive decider would never fetch: the container a path names (its real name,
labels and image, resolved by the daemon exactly as for a scoped grant) and, for
``container.create`` and ``exec.create``, the body. Then the real decider
decides as usual, so learn mode never changes a verdict.

Once decided, the shell hands client, request, facts and decision to
``observation``, which reduces them to one JSON-able record:

- the client's identity (listener, transport, address or uid/gid, certificate
  names; never the ephemeral port or pid);
- the operation, the API path, and only the query parameters a policy can
  constrain (signal, the booleans dockerd reads, the image references of a pull
  or tag);
- the resolved container (name, labels, image) or ``found: false``;
- for bodies, their *features*, never the body: which ``create: deny:``
  constraint classes the body touches (computed by ``bodies.create_violations``,
  the very code a policy runs, so a suggestion cannot disagree with the
  decider), the image, the host paths of bind mounts and whether each is
  read-only, named volumes, capability names, namespace modes, the log driver's
  type and option *names*, sysctl names, the user. Env values, commands, label
  values of the body and option values are never recorded: they may hold
  secrets;
- the decision, its rule and, for a denial, the reason.

``policy_suggest`` turns a list of such records into a policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dockgate import bodies
from dockgate.decision import Client, Decider, Decision, Deny, Facts, NeedFacts, Request
from dockgate.policy_decider import CREATE_OPERATION, operations
from dockgate.policy_match import BOOL_PARAMS, normalize_query_value

SCHEMA = 1
EXEC_CREATE_OPERATION = "exec.create"
BODY_OPERATIONS = frozenset({CREATE_OPERATION, EXEC_CREATE_OPERATION})
# The query parameters a grant's query: can usefully constrain, and the image
# references an images: scope judges on a pull (fromImage, tag) or a tag (repo, tag).
QUERY_PARAMS = frozenset({"signal", *BOOL_PARAMS})
IMAGE_QUERY_PARAMS = ("fromImage", "tag", "repo")
# A recorded string longer than this is cut (and marked): a record stays small
# whatever a client sends, and a suggestion from a cut value fails closed.
MAX_TEXT = 512
MAX_ITEMS = 64


class LearningDecider:
    """Fetches the facts a recording needs, then lets the configured decider decide."""

    def __init__(self, inner: Decider) -> None:
        self.inner = inner
        ops = operations()
        self._container_ref = ops.container_ref
        self._exec_ref = ops.exec_ref

    @property
    def name(self) -> str:
        return f"learn({self.inner.name})"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        match = request.match
        if match is not None:
            param = self._container_ref.get(match.operation)
            reference = match.params.get(param) if param is not None else None
            if match.operation in self._exec_ref:
                # An exec names its container only through the daemon: exec, then container.
                exec_id = match.params.get("exec", "")
                if exec_id not in facts.execs:
                    return NeedFacts(execs=(exec_id,))
                found = facts.execs[exec_id]
                reference = found.container if found is not None else None
            missing = (reference,) if reference is not None and \
                reference not in facts.containers else ()
            body = match.operation in BODY_OPERATIONS and facts.body is None
            if missing or body:
                return NeedFacts(containers=missing, body=body)
        return self.inner.decide(client, request, facts)


def _cut(value: str) -> str:
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "...(cut)"


def client_identity(client: Client) -> dict[str, Any]:
    """Who asked, as a policy's ``clients:`` entry can name it."""
    who: dict[str, Any] = {"listener": client.listener, "transport": client.transport}
    if client.transport == "unix":
        who["uid"] = client.uid
        who["gid"] = client.gid
    else:
        who["address"] = client.address
    if client.cert_cn is not None:
        who["cert_cn"] = client.cert_cn
    if client.cert_sans:
        who["cert_sans"] = list(client.cert_sans[:MAX_ITEMS])
    return who


def _query(query: Mapping[str, list[str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for param in sorted(QUERY_PARAMS.intersection(query)):
        found[param] = [normalize_query_value(param, _cut(v)) for v in query[param][:MAX_ITEMS]]
    for param in IMAGE_QUERY_PARAMS:
        if param in query:
            found[param] = [_cut(v) for v in query[param][:MAX_ITEMS]]
    return found


def observation(client: Client, request: Request, facts: Facts, decision: Decision,
                now: float) -> dict[str, Any]:
    """The learn record of one decided request (``now``: seconds since the epoch)."""
    match = request.match
    record: dict[str, Any] = {
        "v": SCHEMA, "time": round(now, 3), "client": client_identity(client),
        "method": request.method, "path": _cut(request.target.api_path),
        "operation": match.operation if match is not None else None,
    }
    if match is not None:
        query = _query(match.target.query_params())
        if query:
            record["query"] = query
        if match.params:
            record["params"] = {k: _cut(v) for k, v in match.params.items()}
        for reference in facts.containers.values():
            if reference is not None:
                record["container"] = {
                    "name": reference.name, "image": _cut(reference.image),
                    "labels": {_cut(k): _cut(v) for k, v in
                               sorted(reference.labels.items())[:MAX_ITEMS]}}
                break
        else:
            if facts.containers:
                record["container"] = {"found": False}
        if match.operation in BODY_OPERATIONS and facts.body is not None:
            record["body"] = (create_features(facts.body)
                              if match.operation == CREATE_OPERATION
                              else exec_features(facts.body))
    if isinstance(decision, Deny):
        record["decision"] = "deny"
        record["reason"] = _cut(decision.message)
    else:
        record["decision"] = "allow"
    record["rule"] = decision.rule if not isinstance(decision, NeedFacts) else None
    return record


# ---------------------------------------------------------------------------
# Body features (from bodies.parse: the daemon's Go JSON semantics, one decoder)


def create_features(body: bytes) -> dict[str, Any]:
    """What a container-create body touches, without its values; ``error`` if unreadable."""
    try:
        doc = bodies.parse(body)
        classes = sorted(check for check in bodies.CHECKS
                         if bodies.create_violations(body, frozenset({check}))[0])
        volumes, volumes_from = bodies.named_volumes(body)
    except bodies.UnparseableError as error:
        return {"error": _cut(str(error))}
    features = _host_features(doc, frozenset(volumes))
    if volumes:
        features["volumes"] = sorted(_cut(v) for v in volumes)[:MAX_ITEMS]
    if volumes or volumes_from:
        # The volumes check needs the daemon's facts: the policy applies it apart.
        classes = sorted({*classes, "volumes"})
    if volumes_from:
        features["volumes_from"] = True
    image = doc.get("image")
    return {"classes": classes, "image": _cut(image) if isinstance(image, str) else "",
            "user": _user(doc.get("user")), **features}


def exec_features(body: bytes) -> dict[str, Any]:
    """What an exec-create body asks for: privileged, user, tty, stdin (no command, no env)."""
    try:
        doc = bodies.parse(body)
        classes = sorted(check for check in bodies.EXEC_CHECKS
                         if bodies.exec_violations(body, frozenset({check}))[0])
    except bodies.UnparseableError as error:
        return {"error": _cut(str(error))}
    return {"classes": classes, "privileged": doc.get("privileged") is True,
            "user": _user(doc.get("user")), "tty": doc.get("tty") is True,
            "stdin": doc.get("attachstdin") is True}


def _user(value: object) -> str:
    return _cut(value) if isinstance(value, str) else ""


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [_cut(item) for item in value[:MAX_ITEMS] if isinstance(item, str)]


def _host_features(doc: dict[str, Any], volumes: frozenset[str]) -> dict[str, Any]:
    hc = doc.get("hostconfig")
    hc = hc if isinstance(hc, dict) else doc
    binds: list[dict[str, Any]] = []
    for bind in _strings(hc.get("binds")):
        source, _, rest = bind.partition(":")
        options = rest.split(":", 1)[1].split(",") if rest.count(":") else []
        if source not in volumes:  # bodies.named_volumes decides what is a volume name
            binds.append({"source": source, "read_only": "ro" in options})
    mounts = hc.get("mounts")
    for mount in mounts[:MAX_ITEMS] if isinstance(mounts, list) else []:
        if isinstance(mount, dict) and mount.get("type") == "bind":
            raw_source = mount.get("source")
            source = _cut(raw_source) if isinstance(raw_source, str) else ""
            binds.append({"source": source, "read_only": mount.get("readonly") is True})
    features: dict[str, Any] = {}
    if binds:
        features["binds"] = binds
    if hc.get("privileged") is True:
        features["privileged"] = True
    caps = _strings(hc.get("capadd"))
    if caps:
        features["cap_add"] = caps
    namespaces = {field: hc[field] for field in ("networkmode", "pidmode", "ipcmode",
                                                 "utsmode", "usernsmode", "cgroupnsmode")
                  if isinstance(hc.get(field), str) and hc[field]}
    if namespaces:
        features["namespaces"] = {k.removesuffix("mode"): _cut(v) for k, v in namespaces.items()}
    log_config = hc.get("logconfig")
    if isinstance(log_config, dict) and isinstance(log_config.get("type"), str) and \
            log_config["type"]:
        log_options = log_config.get("config")
        features["log_driver"] = {
            "type": _cut(log_config["type"]),
            "options": sorted(_cut(str(k)) for k in log_options)[:MAX_ITEMS]
            if isinstance(log_options, dict) else []}
    sysctls = hc.get("sysctls")
    if isinstance(sysctls, dict) and sysctls:
        features["sysctls"] = sorted(_cut(str(k)) for k in sysctls)[:MAX_ITEMS]
    security = _strings(hc.get("securityopt"))
    if security:
        # The option names only: a seccomp= value may be a whole profile.
        features["security_opt"] = sorted({opt.split("=", 1)[0].split(":", 1)[0]
                                           for opt in security})
    return features
