"""Policy evaluation without a daemon: grants, scoping, filters, clients, files, env.

The decider is pure, so every case here builds a Request from a raw target (the
same ``routes.parse_target``/``classify`` the shell uses), plays the shell's part
by answering NeedFacts with hand-made ContainerFacts, and checks the decision.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from dockgate import policy, routes
from dockgate.decision import (
    Allow,
    Client,
    ContainerFacts,
    Decision,
    Deny,
    Facts,
    NeedFacts,
    Request,
)
from dockgate.errors import ConfigError

GW_ID = "a1" * 32
OTHER_ID = "b2" * 32
LOCAL = Client("tcp://127.0.0.1:2375", "tcp", address="127.0.0.1", port=40000)
SAMPLE_PARAMS = {"container": "gw", "image": "busybox:latest", "profile": "heap"}


def sample_target(operation: str) -> tuple[str, str]:
    """A request (method, raw target) that classifies as ``operation``."""
    route = routes.routes_for(operation)[0]
    values = {name: SAMPLE_PARAMS.get(name, "x1") for name in route.param_names}
    return route.method, route.path_for(values)


def request(method: str, target: str) -> Request:
    parsed = routes.parse_target(target)
    return Request(method, parsed, routes.classify(method, parsed))


def decide(decider: policy.PolicyDecider, method: str, target: str,
           client: Client = LOCAL, containers: Mapping[str, ContainerFacts | None] | None = None,
           body: bytes | None = None) -> Decision:
    """Decide like the shell: answer NeedFacts from ``containers``/``body``, decide again."""
    req = request(method, target)
    facts = Facts()
    for _ in range(3):
        decision = decider.decide(client, req, facts)
        if not isinstance(decision, NeedFacts):
            return decision
        known = containers or {}
        body_given = b"" if body is None else body
        facts = Facts(containers={ref: known.get(ref) for ref in decision.containers},
                      body=body_given if decision.body else facts.body)
    raise AssertionError("the decider kept asking for facts")


def compile_policy(text: str) -> policy.PolicyDecider:
    return policy.compile_text(textwrap.dedent(text), "test.yaml")


def gw(name: str = "gw", cid: str = GW_ID, **labels: str) -> ContainerFacts:
    return ContainerFacts(id=cid, name=name, labels=labels, image="busybox")


RESTART_GW = """\
    policies:
      gw:
        grants:
          - allow: [system.ping, system.version]
          - allow: [container.restart]
            containers: {names: [gw]}
    default: gw
"""


# --- every operation, table-driven ------------------------------------------------------


@pytest.mark.parametrize("operation", routes.operations())
def test_a_grant_of_one_operation_allows_that_operation_and_nothing_else(operation: str) -> None:
    """An allow: list is exact: granting one operation must not leak any other."""
    decider = compile_policy(f"""\
        policies:
          one:
            grants:
              - allow: [{operation}]
        default: one
    """)
    for other in routes.operations():
        method, target = sample_target(other)
        decision = decide(decider, method, target)
        if other == operation:
            assert isinstance(decision, Allow), (other, decision)
        else:
            assert isinstance(decision, Deny), (other, decision)
            assert decision.status == 403
            assert f"{other} is not granted by policy 'one'" in decision.message


@pytest.mark.parametrize("operation", routes.operations())
def test_restart_only_environment_allows_ping_version_and_restart_of_gw_only(
        operation: str) -> None:
    """The seed's case: every operation but ping, version and restart of gw is refused."""
    decider = policy.from_env({"ALLOW_RESTART_CONTAINERS": "gw"})
    assert decider is not None
    method, target = sample_target(operation)
    decision = decide(decider, method, target, containers={"gw": gw()})
    if operation in ("system.ping", "system.version", "container.restart"):
        assert isinstance(decision, Allow), decision
    else:
        assert isinstance(decision, Deny), decision
        assert decision.status == 403


# --- scoping that cannot be fooled -------------------------------------------------------


def test_restart_asks_the_daemon_to_resolve_the_reference_before_deciding() -> None:
    """The decider must never judge the reference the client typed, only what it resolves to."""
    decider = compile_policy(RESTART_GW)
    decision = decider.decide(LOCAL, request("POST", "/containers/gw/restart"), Facts())
    assert decision == NeedFacts(containers=("gw",))


@pytest.mark.parametrize("reference", ["gw", GW_ID, GW_ID[:12], GW_ID[:3]])
def test_restart_by_any_reference_forwards_the_resolved_full_id(reference: str) -> None:
    """Name, full ID and ID prefix all name gw; the daemon must act on the checked ID.

    (``/gw`` makes the path ``/containers//gw/restart``, refused by parse_target.)
    """
    decider = compile_policy(RESTART_GW)
    decision = decide(decider, "POST", f"/v1.41/containers/{reference}/restart?t=1",
                      containers={reference: gw()})
    assert isinstance(decision, Allow)
    assert decision.target == f"/v1.41/containers/{GW_ID}/restart?t=1"


@pytest.mark.parametrize("name", ["gw2", "xgw", "GW", "gw-", "g", "gw.old"])
def test_a_container_with_a_similar_name_never_matches_the_exact_rule(name: str) -> None:
    """Exact names are exact: prefixes, suffixes and case variants are other containers."""
    decider = compile_policy(RESTART_GW)
    decision = decide(decider, "POST", f"/containers/{name}/restart",
                      containers={name: gw(name=name, cid=OTHER_ID)})
    assert isinstance(decision, Deny)
    assert decision.status == 403


def test_a_reference_to_gw_that_resolves_to_another_container_is_denied() -> None:
    """What counts is the resolved name: 'gw' naming an ID prefix of another container fails."""
    decider = compile_policy(RESTART_GW)
    decision = decide(decider, "POST", "/containers/b2b2/restart",
                      containers={"b2b2": gw(name="db", cid=OTHER_ID)})
    assert isinstance(decision, Deny)


def test_unknown_and_out_of_scope_containers_get_the_same_denial() -> None:
    """A client must not learn which containers exist by comparing denials."""
    decider = compile_policy(RESTART_GW)
    unknown = decide(decider, "POST", "/containers/db/restart", containers={"db": None})
    other = decide(decider, "POST", "/containers/db/restart",
                   containers={"db": gw(name="db", cid=OTHER_ID)})
    assert isinstance(unknown, Deny)
    assert isinstance(other, Deny)
    assert unknown == other


def test_a_missing_container_the_grant_names_is_reported_missing() -> None:
    """'gw' is the client's own grant: a 404 tells 'gateway missing' from 'not allowed'."""
    decider = compile_policy(RESTART_GW)
    decision = decide(decider, "POST", "/containers/gw/restart", containers={"gw": None})
    assert isinstance(decision, Deny)
    assert (decision.status, decision.message) == (404, "No such container: gw")


def test_a_resolution_without_a_full_id_is_denied_rather_than_forwarded() -> None:
    """Only a 64-hex ID may replace the reference; anything else cannot be pinned."""
    decider = compile_policy(RESTART_GW)
    for bad_id in ("", "a1a1", "../x", GW_ID.upper()):
        decision = decide(decider, "POST", "/containers/gw/restart",
                          containers={"gw": gw(cid=bad_id)})
        assert isinstance(decision, Deny), bad_id


def test_a_container_renamed_to_gw_is_in_scope_of_a_name_rule() -> None:
    """Documented: name rules follow the name, so a new container called gw is covered."""
    decider = compile_policy(RESTART_GW)
    decision = decide(decider, "POST", "/containers/gw/restart",
                      containers={"gw": gw(cid=OTHER_ID)})
    assert isinstance(decision, Allow)
    assert decision.target == f"/containers/{OTHER_ID}/restart"


def test_a_label_rule_needs_every_label_with_its_exact_value() -> None:
    """Labels pin more strongly than names; a partial or different label set is out of scope."""
    decider = compile_policy("""\
        policies:
          lab:
            grants:
              - allow: [container.restart]
                containers:
                  labels: {role: gateway, team: mcp}
        default: lab
    """)
    target = "/containers/c/restart"
    assert isinstance(decide(decider, "POST", target,
                             containers={"c": gw("c", role="gateway", team="mcp")}), Allow)
    assert isinstance(decide(decider, "POST", target,
                             containers={"c": gw("c", role="gateway")}), Deny)
    assert isinstance(decide(decider, "POST", target,
                             containers={"c": gw("c", role="gateway", team="web")}), Deny)


def test_a_glob_rule_matches_names_only_as_written() -> None:
    """Globs are explicit: 'web-*' covers web-1 but not xweb-1 or web."""
    decider = compile_policy("""\
        policies:
          web:
            grants:
              - allow: [container.restart]
                containers: {globs: ["web-*"]}
        default: web
    """)
    for name, allowed in (("web-1", True), ("xweb-1", False), ("web", False)):
        decision = decide(decider, "POST", f"/containers/{name}/restart",
                          containers={name: gw(name=name)})
        assert isinstance(decision, Allow) is allowed, name


def test_an_unscoped_grant_needs_no_daemon_lookup_and_keeps_the_target() -> None:
    """Without a scope there is nothing to pin: forward the client's own target."""
    decider = compile_policy("""\
        policies:
          any:
            grants:
              - allow: [container.restart]
        default: any
    """)
    decision = decider.decide(LOCAL, request("POST", "/containers/x/restart"), Facts())
    assert isinstance(decision, Allow)
    assert decision.target is None


# --- query values that change meaning ------------------------------------------------------

KILL_HUP = """\
    policies:
      hup:
        grants:
          - allow: [container.kill]
            containers: {names: [gw]}
            query: {signal: [SIGHUP]}
    default: hup
"""


@pytest.mark.parametrize(("query", "allowed"), [
    ("?signal=HUP", True), ("?signal=SIGHUP", True), ("?signal=hup", True),
    ("?signal=1", True), ("?signal=01", True), ("", False), ("?signal=KILL", False),
    ("?signal=9", False), ("?signal=HUP&signal=KILL", False), ("?signal=", False),
])
def test_kill_is_allowed_only_with_the_granted_signal(query: str, allowed: bool) -> None:
    """A kill without signal is SIGKILL; every spelling dockerd accepts is normalized."""
    decider = compile_policy(KILL_HUP)
    decision = decide(decider, "POST", f"/containers/gw/kill{query}",
                      containers={"gw": gw()})
    assert isinstance(decision, Allow) is allowed, decision


@pytest.mark.parametrize(("query", "allowed"), [
    ("", True), ("?follow=0", True), ("?follow=false", True), ("?follow=no", True),
    ("?follow=1", False), ("?follow=true", False), ("?follow=yes", False),
])
def test_logs_without_follow_reads_booleans_like_dockerd(query: str, allowed: bool) -> None:
    """dockerd treats anything but 0/false/no/none/empty as true; so must the policy."""
    decider = compile_policy("""\
        policies:
          logs:
            grants:
              - allow: [container.logs]
                query: {follow: false}
        default: logs
    """)
    decision = decide(decider, "GET", f"/containers/gw/logs{query}")
    assert isinstance(decision, Allow) is allowed


# --- scoped reads ----------------------------------------------------------------------------

SCOPED_READS = """\
    policies:
      see-gw:
        grants:
          - allow: [container.list, system.events]
            containers: {names: [gw], labels: {team: mcp}}
    default: see-gw
"""


def test_a_scoped_list_keeps_only_the_containers_in_scope() -> None:
    """GET /containers/json must not reveal containers the client may not touch."""
    decision = decide(compile_policy(SCOPED_READS), "GET", "/containers/json?all=1")
    assert isinstance(decision, Allow)
    assert decision.response_filter is not None
    keep = decision.response_filter
    assert keep.mode == "json-list"
    assert keep.keep({"Id": GW_ID, "Names": ["/gw"], "Labels": {}})
    assert keep.keep({"Id": OTHER_ID, "Names": ["/other"], "Labels": {"team": "mcp"}})
    assert not keep.keep({"Id": OTHER_ID, "Names": ["/gw2"], "Labels": {}})
    assert not keep.keep({"Id": OTHER_ID, "Names": ["/web/gw"], "Labels": None})
    assert not keep.keep({"Id": OTHER_ID})


def test_scoped_events_keep_container_events_in_scope_and_drop_the_rest() -> None:
    """Events of other containers and non-container events (images, networks) are dropped."""
    decision = decide(compile_policy(SCOPED_READS), "GET", "/events")
    assert isinstance(decision, Allow)
    assert decision.response_filter is not None
    keep = decision.response_filter
    assert keep.mode == "json-lines"
    assert keep.keep({"Type": "container", "Actor": {"ID": GW_ID,
                                                     "Attributes": {"name": "gw"}}})
    assert keep.keep({"Type": "container", "Actor": {"ID": OTHER_ID,
                                                     "Attributes": {"name": "x",
                                                                    "team": "mcp"}}})
    assert not keep.keep({"Type": "container", "Actor": {"ID": OTHER_ID,
                                                         "Attributes": {"name": "gw2"}}})
    assert not keep.keep({"Type": "network", "Actor": {"ID": "n",
                                                       "Attributes": {"name": "gw"}}})
    assert not keep.keep({"status": "start", "id": GW_ID})


def test_an_unscoped_list_grant_forwards_the_whole_list() -> None:
    """A monitoring policy that may see everything gets no filter."""
    decision = decide(policy.load_file("preset:monitoring"), "GET", "/containers/json")
    assert isinstance(decision, Allow)
    assert decision.response_filter is None


# --- clients and listeners -------------------------------------------------------------------

CLIENTS = """\
    policies:
      admin: {grants: [{allow: ["*"]}]}
      relay: {grants: [{allow: [container.restart]}]}
      ping: {grants: [{allow: [system.ping]}]}
      cert: {grants: [{allow: [system.info]}]}
    clients:
      - {name: relay, address: [127.0.0.2, 10.1.0.0/16], policy: relay}
      - {uid: 0, policy: admin}
      - {cert_cn: monitor, policy: cert}
      - {cert_san: dash.internal, policy: cert}
      - {uid: 65534, listener: "unix:///run/dg-nobody.sock", policy: ping}
    listeners:
      "tcp://127.0.0.1:2375": ping
"""


@pytest.mark.parametrize(("client", "expected"), [
    (Client("tcp://0.0.0.0:2375", "tcp", address="127.0.0.2", port=1), "relay"),
    (Client("tcp://[::]:2375", "tcp", address="::ffff:127.0.0.2", port=1), "relay"),
    (Client("tcp://0.0.0.0:2375", "tcp", address="10.1.200.3", port=1), "relay"),
    (Client("unix:///run/dg.sock", "unix", uid=0, gid=0), "admin"),
    (Client("tls://0.0.0.0:2376", "tls", address="10.9.0.1", port=1, cert_cn="monitor"),
     "cert"),
    (Client("tls://0.0.0.0:2376", "tls", address="10.9.0.1", port=1,
            cert_sans=("x", "dash.internal")), "cert"),
    (Client("unix:///run/dg-nobody.sock", "unix", uid=65534, gid=65534), "ping"),
    (Client("unix:///run/dg.sock", "unix", uid=65534, gid=65534), None),
    (Client("tcp://127.0.0.1:2375", "tcp", address="127.0.0.1", port=1), "ping"),
    (Client("tcp://0.0.0.0:2375", "tcp", address="127.0.0.3", port=1), None),
])
def test_clients_are_bound_by_address_uid_certificate_and_listener(
        client: Client, expected: str | None) -> None:
    """First matching rule wins; then the listener's default; unmatched clients get nothing."""
    chosen = compile_policy(CLIENTS).policy_for(client)
    assert (chosen.name if chosen else None) == expected


def test_a_client_no_rule_names_is_denied_everything_without_a_default() -> None:
    """Deny-all is the default: a forgotten client must not fall into someone's policy."""
    decision = decide(compile_policy(CLIENTS), "GET", "/_ping",
                      client=Client("tcp://0.0.0.0:2375", "tcp", address="127.0.0.9", port=1))
    assert isinstance(decision, Deny)
    assert "no policy applies to this client" in decision.message


def test_deny_messages_name_operation_and_resource_but_not_the_client() -> None:
    """The shell logs who asked; the message returned must not echo addresses or uids."""
    client = Client("tcp://0.0.0.0:2375", "tcp", address="10.1.2.3", port=55555,
                    cert_cn="secret-cn")
    decider = policy.compile_text(textwrap.dedent(RESTART_GW).replace(
        "default: gw", "clients: [{address: 10.1.2.3, policy: gw}]"), "test.yaml")
    for target in ("/containers/db/restart", "/containers/create", "/images/json"):
        decision = decide(decider, "POST" if "json" not in target else "GET", target,
                          client=client, containers={"db": None})
        assert isinstance(decision, Deny)
        assert "10.1.2.3" not in decision.message
        assert "55555" not in decision.message
        assert "secret-cn" not in decision.message
        assert decision.message.startswith("dockgate: ")


# --- create bodies and images --------------------------------------------------------------

CREATE = """\
    policies:
      builder:
        grants:
          - allow: [container.create]
            images: ["dockgate-test/*"]
            create:
              deny: [all]
    default: builder
"""


def test_a_constrained_create_reads_the_body_before_deciding() -> None:
    """Create constraints are judged on the body, so the decider must ask for it."""
    decision = compile_policy(CREATE).decide(LOCAL, request("POST", "/containers/create"),
                                             Facts())
    assert decision == NeedFacts(body=True)


@pytest.mark.parametrize(("body", "allowed"), [
    (b'{"Image": "dockgate-test/busybox", "User": "1000"}', True),
    (b'{"Image": "busybox", "User": "1000"}', False),
    (b'{"Image": "dockgate-test/busybox", "User": "0"}', False),
    (b'{"Image": "dockgate-test/busybox", "User": "1000",'
     b' "HostConfig": {"Binds": ["/:/host"]}}', False),
    (b'{"Image": "dockgate-test/busybox", "User": "1000",'
     b' "hostconfig": {"PRIVILEGED": true}}', False),
    (b"not json", False),
])
def test_a_constrained_create_allows_only_clean_bodies_of_allowed_images(
        body: bytes, allowed: bool) -> None:
    """Image allowlist and body constraints both hold; anything unparseable is denied."""
    decision = decide(compile_policy(CREATE), "POST", "/containers/create", body=body)
    assert isinstance(decision, Allow) is allowed, decision


@pytest.mark.parametrize(("method", "target", "allowed"), [
    ("GET", "/images/busybox/json", True),
    ("GET", "/images/docker.io/library/busybox:1.36/json", True),
    ("GET", "/images/nginx/json", False),
    ("POST", "/images/create?fromImage=busybox&tag=latest", True),
    ("POST", "/images/create?fromImage=nginx&tag=latest", False),
    ("POST", "/images/create?fromSrc=-&repo=busybox", False),
    ("POST", "/images/busybox/tag?repo=busybox&tag=mine", True),
    ("POST", "/images/busybox/tag?repo=nginx&tag=latest", False),
])
def test_image_scopes_match_the_reference_in_the_path_or_query(
        method: str, target: str, allowed: bool) -> None:
    """Pull, inspect and tag are judged by the image they name (tag: source and new name)."""
    decider = compile_policy("""\
        policies:
          bb:
            grants:
              - allow: [image.inspect, image.create, image.tag]
                images: [busybox]
        default: bb
    """)
    assert isinstance(decide(decider, method, target), Allow) is allowed


@pytest.mark.parametrize(("body", "allowed"), [
    (b"", True), (b"{}", True), (b" {} ", True),
    (b'{"HostConfig": {"Privileged": true}}', False),
    (b'{"Binds": ["/:/host"]}', False), (b"garbage", False),
])
def test_a_start_is_allowed_only_without_a_configuration_body(body: bytes,
                                                              allowed: bool) -> None:
    """Below API 1.24 a start body carries a HostConfig, which would bypass create checks."""
    decider = compile_policy("""\
        policies:
          starter:
            grants:
              - allow: [container.start]
                containers: {names: [gw]}
        default: starter
    """)
    target = "/v1.23/containers/gw/start"
    first = decider.decide(LOCAL, request("POST", target), Facts())
    assert first == NeedFacts(containers=("gw",), body=True)
    decision = decide(decider, "POST", target, containers={"gw": gw()}, body=body)
    assert isinstance(decision, Allow) is allowed, decision


# --- files, errors and lint ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("policies:\n  p:\n    grants:\n      - allow: [container.restrat]\n",
     "test.yaml:4: unknown operation 'container.restrat' (did you mean 'container.restart'?)"),
    ("policies:\n  p:\n    grants:\n      - allow: [contaner.*]\n",
     "test.yaml:4: 'contaner.*' matches no operation"),
    ("policies:\n  p:\n    grantz: []\n", "test.yaml:3: unknown key 'grantz' in policy 'p' "
     "(did you mean 'grants'?)"),
    ("policies:\n  p:\n    grants:\n      - allow: [system.ping]\n  p:\n    grants: []\n",
     "test.yaml:5: 'p' appears twice in policies (first on line 2)"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        containers: {names: [gw*]}\n", "test.yaml:5: container name 'gw*' contains a "
     "pattern character; names match exactly, put patterns under globs:"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.create]\n"
     "        containers: {names: [gw]}\n", "test.yaml:4: container.create cannot be scoped "
     "by containers:"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.kill]\n"
     "        query: {signal: [SIGFOO]}\n", "test.yaml:5: 'SIGFOO' is not a Linux signal"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        create: {deny: [privileged]}\n", "test.yaml:5: create: constrains "
     "container.create"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.create]\n"
     "        create: {deny: [privilegd]}\n", "test.yaml:5: unknown create constraint "
     "'privilegd' (did you mean 'privileged'?)"),
    ("policies:\n  p: {grants: [{allow: [system.ping]}]}\nclients:\n"
     "  - {address: 10.0.0.1/8, policy: p}\n", "test.yaml:4: '10.0.0.1/8' is not an IP "
     "address or network"),
    ("policies:\n  p: {grants: [{allow: [system.ping]}]}\nclients:\n"
     "  - {uid: root, policy: p}\n", "test.yaml:4: uid must be a whole number"),
    ("policies:\n  p: {grants: [{allow: [system.ping]}]}\ndefault: q\n",
     "test.yaml:3: default names no policy 'q'"),
    ("policies:\n  p: {grants: [{allow: [system.ping]}]}\nclients:\n  - {policy: p}\n",
     "test.yaml:4: a clients: entry needs at least one of address:"),
    ("version: 2\npolicies: {}\n", "test.yaml:1: only 'version: 1' exists"),
    ("", "test.yaml:1: the file is empty"),
    ("policies: {}\n---\npolicies: {}\n", "test.yaml:3: a policy file holds one YAML document"),
    ("policies:\n  p: [\n", "test.yaml:3: not valid YAML"),
    ("clients: []\n", "test.yaml:1: no 'policies:' section"),
    ("policies: {p: {grants: [{allow: [system.ping]}]}}\nlisteners: {"
     "'0.0.0.0:2375': p}\n", "test.yaml:2: listener '0.0.0.0:2375' must be a URL"),
    ("policies:\n  p:\n    description: nothing\n", "test.yaml:2: policy 'p' has no grants"),
    ("policies: {}\n", "test.yaml:1: policies: is empty"),
    ("policies:\n  p:\n    grants:\n      - containers: {names: [gw]}\n",
     "test.yaml:4: policy 'p' grant 1 has no 'allow:'"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        containers: {names: [gw]}\n        images: [x]\n",
     "test.yaml:6: a grant is scoped by containers: or by images:, not both"),
    ("policies:\n  p:\n    grants:\n      - allow: [volume.*]\n        images: [x]\n",
     "test.yaml:4: no operation of this grant can be scoped by images:"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        containers: {names: [/gw]}\n", "test.yaml:5: '/gw' is not a container name"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        containers: {names: [\"gw\\n\"]}\n",
     "test.yaml:5: 'gw\\n' is not a container name"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        containers: {}\n", "test.yaml:5: containers: selects nothing"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.create]\n"
     "        create: {}\n", "test.yaml:5: create: constrains nothing"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.logs]\n"
     "        query: {follow: maybe}\n", "test.yaml:5: follow is a boolean parameter"),
    ("policies:\n  p: {grants: [{allow: [system.ping]}]}\nclients:\n  - {uid: 0}\n",
     "test.yaml:4: a clients: entry needs 'policy: NAME'"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        containers: {names: []}\n", "test.yaml:5: names is an empty list"),
    ("policies:\n  p:\n    grants:\n      - allow: [container.restart]\n"
     "        containers: {names: [~]}\n", "test.yaml:5: names must be a single value"),
])
def test_invalid_policy_files_are_refused_with_the_line_and_a_fix(
        text: str, expected: str) -> None:
    """Every error points at the offending line and says what to write instead."""
    with pytest.raises(ConfigError) as caught:
        policy.compile_text(text, "test.yaml")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_yaml_scalars_keep_the_text_as_written() -> None:
    """YAML 1.1 would read a container named yes as true and 0755 as 493; names are text."""
    decider = compile_policy("""\
        policies:
          p:
            grants:
              - allow: [container.restart]
                containers: {names: [yes, "0755"]}
        default: p
    """)
    for name in ("yes", "0755"):
        assert isinstance(decide(decider, "POST", f"/containers/{name}/restart",
                                 containers={name: gw(name=name)}), Allow)


def test_load_file_reports_the_path_and_is_deterministic(tmp_path: Path) -> None:
    """SIGHUP reloads call load_file again: same file, same decisions; bad file, ConfigError."""
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(RESTART_GW))
    first, second = policy.load_file(str(path)), policy.load_file(str(path))
    for operation in routes.operations():
        method, target = sample_target(operation)
        assert decide(first, method, target, containers={"gw": gw()}) == decide(
            second, method, target, containers={"gw": gw()})
    path.write_text("policies:\n  p:\n    grants: nope\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: policy 'p' grants must be a list"):
        policy.load_file(str(path))
    with pytest.raises(ConfigError, match="cannot read the policy file"):
        policy.load_file(str(tmp_path / "missing.yaml"))


def test_lint_reports_unused_policies_and_unconstrained_create_with_lines(
        tmp_path: Path) -> None:
    """Lint catches what is valid but almost certainly a mistake."""
    path = tmp_path / "p.yaml"
    path.write_text("policies:\n  used: {grants: [{allow: [container.create]}]}\n"
                    "  spare: {grants: [{allow: [system.ping]}]}\ndefault: used\n")
    assert policy.lint_file(str(path)) == [
        f"{path}:3: policy 'spare' is bound to no client, listener or default; nothing uses it",
        f"{path}:2: policy 'used' does not allow system.ping: the docker CLI pings first to "
        "pick the API version, so its allowed calls fail too; add system.ping to a grant",
        f"{path}:2: DANGER: policy 'used' grant 1 allows container.create: creates containers "
        "with any body: a bind mount of / or privileged mode is root on the host",
    ]
    path.write_text(textwrap.dedent(RESTART_GW))
    assert policy.lint_file(str(path)) == []
    path.write_text("policies: [\n")
    assert policy.lint_file(str(path))[0].startswith(f"{path}:")


def test_a_glob_under_a_container_scope_leaves_out_what_it_cannot_scope() -> None:
    """container.* scoped to gw cannot cover create or prune; lint says so."""
    decider = compile_policy("""\
        policies:
          p:
            grants:
              - allow: [container.*]
                containers: {names: [gw]}
        default: p
    """)
    assert "container.create" in decider.warnings[0]
    assert isinstance(decide(decider, "POST", "/containers/create"), Deny)
    assert isinstance(decide(decider, "POST", "/containers/gw/stop",
                             containers={"gw": gw()}), Allow)


# --- environment, presets, explain, index ------------------------------------------------


def test_from_env_is_none_without_its_variables() -> None:
    """Without ALLOW_RESTART_CONTAINERS/ALLOW_INSPECT_CONTAINERS the Tecnativa variables decide."""
    assert policy.from_env({"CONTAINERS": "1", "POST": "1"}) is None


@pytest.mark.parametrize("value", ["", " , ", "/gw", "gw*", "a b"])
def test_from_env_refuses_values_that_are_not_container_names(value: str) -> None:
    """A typo must stop the proxy, not grant nothing (or everything) silently."""
    with pytest.raises(ConfigError, match="ALLOW_RESTART_CONTAINERS="):
        policy.from_env({"ALLOW_RESTART_CONTAINERS": value})


def test_from_env_grants_inspect_only_when_asked() -> None:
    """Inspect returns Env (often secrets): only ALLOW_INSPECT_CONTAINERS grants it."""
    restart = policy.from_env({"ALLOW_RESTART_CONTAINERS": "gw,db"})
    both = policy.from_env({"ALLOW_RESTART_CONTAINERS": "gw",
                            "ALLOW_INSPECT_CONTAINERS": "gw"})
    assert restart is not None
    assert both is not None
    assert isinstance(decide(restart, "GET", "/containers/gw/json",
                             containers={"gw": gw()}), Deny)
    assert isinstance(decide(restart, "POST", "/containers/db/restart",
                             containers={"db": gw("db")}), Allow)
    assert isinstance(decide(both, "GET", "/containers/gw/json",
                             containers={"gw": gw()}), Allow)
    assert isinstance(decide(both, "GET", "/containers/db/json",
                             containers={"db": gw("db")}), Deny)


def test_an_unknown_preset_is_refused_with_the_list_of_presets() -> None:
    """--policy preset:NAME must fail loudly on a typo."""
    with pytest.raises(ConfigError, match=r"preset:restart: no such preset \(did you mean "
                                          r"'restart-only'\?\); presets: dozzle, monitoring"):
        policy.load_file("preset:restart")


def test_explain_shows_the_unresolved_reference_and_the_required_name() -> None:
    """Without a daemon, check says what would be resolved and what it must be."""
    report, allowed = policy.explain(compile_policy(RESTART_GW), "POST",
                                     "/v1.41/containers/gw/restart")
    assert allowed
    assert "operation: container.restart" in report
    assert "would resolve 'gw' via the daemon and require container name gw" in report
    report, allowed = policy.explain(compile_policy(RESTART_GW), "POST",
                                     "/containers/create", client="uid=1000")
    assert not allowed
    assert "container.create is not granted by policy 'gw'" in report


def test_explain_reports_a_rejected_target_and_a_body_dependent_verdict() -> None:
    """Dot segments never reach a policy; a create verdict depends on the body."""
    report, allowed = policy.explain(compile_policy(RESTART_GW), "POST",
                                     "/containers/../create")
    assert not allowed
    assert "rejected before any policy" in report
    report, allowed = policy.explain(compile_policy(CREATE), "POST", "/containers/create")
    assert not allowed
    assert "depends on the body" in report


@pytest.mark.parametrize(("spec", "expected"), [
    ("127.0.0.2", "policy:    relay"), ("uid=0", "policy:    admin"),
    ("gid=5", "policy:    (none"), ("cn=monitor", "policy:    cert"),
    ("san=dash.internal", "policy:    cert"), ("10.9.9.9,cn=monitor", "policy:    cert"),
    ("127.0.0.1,listener=tcp://127.0.0.1:2375", "policy:    ping"),
    ("uid=65534,gid=65534,listener=unix:///run/dg-nobody.sock", "policy:    ping"),
])
def test_explain_selects_the_policy_of_the_client_given(spec: str, expected: str) -> None:
    """dockgate check --client must pick the same policy the proxy would."""
    report, _allowed = policy.explain(compile_policy(CLIENTS), "GET", "/_ping", client=spec)
    assert expected in report


def test_explain_mentions_a_response_filter_and_a_route_that_does_not_exist() -> None:
    """A scoped list is allowed but filtered; an unknown path is no route at all."""
    report, allowed = policy.explain(compile_policy(SCOPED_READS), "GET", "/containers/json")
    assert allowed
    assert "the response is filtered" in report
    report, allowed = policy.explain(compile_policy(SCOPED_READS), "GET", "/nothing")
    assert not allowed
    assert "not a Docker Engine API route" in report


def test_explain_assumes_no_body_for_a_start() -> None:
    """A start is judged as the CLI sends it (no body); only create depends on its body."""
    decider = compile_policy("""\
        policies:
          s: {grants: [{allow: [container.start], containers: {names: [gw]}}]}
        default: s
    """)
    report, allowed = policy.explain(decider, "POST", "/containers/gw/start")
    assert allowed
    assert "assuming no request body" in report


def test_explain_refuses_a_client_it_cannot_read() -> None:
    """--client takes an address, uid=, gid=, cn= or san=; anything else is an error."""
    for spec in ("nobody", "uid=root", "pid=1", "uid=1,uid=2"):
        with pytest.raises(ConfigError, match=f"--client '{spec}' is invalid"):
            policy.explain(compile_policy(RESTART_GW), "GET", "/_ping", client=spec)


def test_grants_are_indexed_by_operation_and_exact_name() -> None:
    """Decision cost must not grow with the number of rules: dict lookups, not scans."""
    lines = ["policies:", "  many:", "    grants:"]
    for number in range(1000):
        lines += ["      - allow: [container.restart]",
                  f"        containers: {{names: [c{number}]}}"]
    lines.append("default: many")
    decider = policy.compile_text("\n".join(lines) + "\n", "many.yaml")
    index = decider.policies["many"].index
    assert list(index) == ["container.restart"]
    assert len(index["container.restart"].by_name) == 1000
    assert index["container.restart"].patterns == []
    assert index["container.restart"].open == []


def test_redact_env_makes_inspect_answers_lose_env_values_only() -> None:
    """A dashboard sees state and labels; the values of Env (often secrets) are replaced."""
    decider = compile_policy("""\
        policies:
          p:
            grants:
              - allow: [container.inspect, container.list]
                redact: [env]
        default: p
    """)
    allowed = decide(decider, "GET", "/containers/gw/json")
    assert isinstance(allowed, Allow)
    assert allowed.response_filter is not None
    assert allowed.response_filter.mode == "json-object"
    answer = {"State": {"Running": True}, "Config": {"Env": ["A=secret", "PATH=/bin"],
                                                     "Labels": {"x": "y"}}}
    assert allowed.response_filter.rewrite(answer) == {
        "State": {"Running": True},
        "Config": {"Env": ["A=<redacted by dockgate>", "PATH=<redacted by dockgate>"],
                   "Labels": {"x": "y"}}}
    listed = decide(decider, "GET", "/containers/json")
    assert isinstance(listed, Allow)
    assert listed.response_filter is None


def test_redact_needs_inspect_and_a_known_field(tmp_path: Path) -> None:
    """redact: on a grant without inspect, or of an unknown field, names the line."""
    path = tmp_path / "p.yaml"
    path.write_text("policies:\n  p:\n    grants:\n      - allow: [container.list]\n"
                    "        redact: [env]\n")
    with pytest.raises(ConfigError, match=rf"^{path}:5: redact: applies to container.inspect"):
        policy.load_file(str(path))
    path.write_text("policies:\n  p:\n    grants:\n      - allow: [container.inspect]\n"
                    "        redact: [evn]\n")
    with pytest.raises(ConfigError, match=r"cannot redact 'evn' \(did you mean 'env'\?\)"):
        policy.load_file(str(path))
