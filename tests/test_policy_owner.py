"""Ownership labels and approved-image lists, decided without a daemon (pure core).

An owner policy must label everything its client creates, refuse a label that
forges ownership, and scope container operations to what carries its label; an
``images_from:`` list must admit exactly the references the relay approved.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dockgate import bodies, policy
from dockgate.decision import (
    Allow,
    ContainerFacts,
    Decision,
    Deny,
    Facts,
    NeedFacts,
    NetworkFacts,
)
from dockgate.errors import ConfigError
from dockgate.policy_owner import (
    OWNED_BY,
    OwnershipError,
    Reference,
    owner_body,
    parse_image_list,
    pull_reference,
    read_image_list,
)
from test_policy import GW_ID, LOCAL, OTHER_ID, decide, gw, request

DIGEST = "sha256:" + "c3" * 32
CLEAN_CREATE = b'{"Image": "mcp/echo:1", "HostConfig": {"NetworkMode": "none"}}'


def owner_policy(tmp_path: Path, images: str) -> policy.PolicyDecider:
    (tmp_path / "images.txt").write_text(images)
    (tmp_path / "policy.yaml").write_text(textwrap.dedent("""\
        policies:
          gateway:
            owner: mcp-gateway
            grants:
              - allow: [system.ping]
              - allow: [container.inspect]
                containers: {names: [gw]}
              - allow: [container.create]
                images_from: images.txt
                create: {deny: [privileged, host-mounts, host-namespaces, capabilities]}
              - allow: [image.inspect, image.create]
                images_from: images.txt
              - allow: [container.start, container.delete, container.list, container.inspect]
                containers: {own: true}
              - allow: [network.create]
        default: gateway
        """))
    return policy.load_file(str(tmp_path / "policy.yaml"))


def labels_of(body: bytes) -> dict[str, str]:
    """The labels dockerd ends up with: Go merges a repeated map member into the first."""
    merged: dict[str, str] = {}

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        for key, value in items:
            if key == "Labels" and isinstance(value, dict):
                merged.update(value)
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)
    return merged


@pytest.mark.parametrize(("body", "expected"), [
    (b"{}", {OWNED_BY: "gw"}),
    (b'{"Image": "x"}', {OWNED_BY: "gw"}),
    (b'{"Image": "x", "Labels": {"docker-mcp": "true"}}\n',
     {"docker-mcp": "true", OWNED_BY: "gw"}),
    (b'{"Image": "x", "Labels": null}', {OWNED_BY: "gw"}),
    (b'{ "Labels" : {"a": "1"} , "Image": "x" }  \r\n', {"a": "1", OWNED_BY: "gw"}),
])
def test_the_owner_label_is_appended_as_a_last_labels_member(
        body: bytes, expected: dict[str, str]) -> None:
    """Every byte the client sent is kept; one appended Labels member merges the owner in."""
    out = owner_body("container.create", body, "gw")
    assert out.startswith(body.rstrip()[:-1])
    assert labels_of(out) == expected
    assert bodies.parse(out).get("labels", {}).get(OWNED_BY) == "gw"


@pytest.mark.parametrize("body", [
    b'{"Labels": {"dockgate.owner": "gw"}}',
    b'{"Labels": {"Dockgate.Owner": "backend"}}',
    b'{"labels": {"dockgate.owner": "x"}, "Labels": null}',
    b'{"Labels": {"dockgate.owner": "x"}, "Labels": {}}',
    b'{"\\u004cabels": {"dockgate.\\u006fwner": "x"}}',
])
def test_a_label_under_the_owner_key_is_refused_in_every_spelling(body: bytes) -> None:
    """A client that sets dockgate.owner itself could forge another client's ownership."""
    with pytest.raises(OwnershipError, match="set by dockgate"):
        owner_body("container.create", body, "gw")


@pytest.mark.parametrize("body", [b"", b"[]", b'{"Labels": "a=b"}', b'{"Image": "x"} {}',
                                  b'{"Labels": ["a"]}'])
def test_a_body_that_cannot_be_labelled_safely_is_refused(body: bytes) -> None:
    """Non-objects, trailing JSON and non-map labels cannot be merged as dockerd would."""
    with pytest.raises(OwnershipError):
        owner_body("container.create", body, "gw")


@pytest.mark.parametrize(("body", "refused"), [
    (b'{"Name": "n", "Driver": "bridge", "Options": {}, "IPAM": {"Driver": "default", '
     b'"Options": {}, "Config": [{"Subnet": "10.9.0.0/24"}]}, "Internal": true}', False),
    (b'{"Name": "n"}', False),
    (b'{"Name": "n", "Driver": "macvlan", "Options": {"parent": "eth0"}}', True),
    (b'{"Name": "n", "Options": {"com.docker.network.bridge.name": "docker0"}}', True),
    (b'{"Name": "n", "IPAM": {"Driver": "dhcp"}}', True),
    (b'{"Name": "n", "ConfigFrom": {"Network": "host-config"}}', True),
    (b'{"Name": "n", "Ingress": true}', True),
    (b'{"Name": "n", "ConfigOnly": true}', True),
])
def test_an_owner_creates_plain_bridge_networks_only(body: bytes, refused: bool) -> None:
    """Driver options and other drivers can attach a network to the host's interfaces."""
    if refused:
        with pytest.raises(OwnershipError):
            owner_body("network.create", body, "gw")
    else:
        assert labels_of(owner_body("network.create", body, "gw")) == {OWNED_BY: "gw"}


@pytest.mark.parametrize(("entry", "request_ref", "admitted"), [
    ("mcp/echo:1", "mcp/echo:1", True),
    ("mcp/echo:1", "docker.io/mcp/echo:1", True),
    ("mcp/echo", "mcp/echo:latest", True),
    ("busybox", "docker.io/library/busybox:latest", True),
    ("mcp/echo:1", "mcp/echo:2", False),
    ("mcp/echo:1", "mcp/echo", False),
    ("mcp/echo:1", f"mcp/echo:1@{DIGEST}", False),
    ("mcp/echo:1", "mcp/echo-evil:1", False),
    (f"mcp/echo@{DIGEST}", f"mcp/echo@{DIGEST}", True),
    (f"mcp/echo@{DIGEST}", f"mcp/echo:any@{DIGEST}", True),
    (f"mcp/echo@{DIGEST}", "mcp/echo:latest", False),
    (f"mcp/echo@{DIGEST}", "mcp/echo@sha256:" + "d4" * 32, False),
    ("127.0.0.1:1/mcp/puller:1", "127.0.0.1:1/mcp/puller:1", True),
    ("127.0.0.1:1/mcp/puller", "127.0.0.1:1/mcp/puller:latest", True),
    ("127.0.0.1:1/mcp/puller", "127.0.0.1:2/mcp/puller", False),
])
def test_a_listed_image_admits_exactly_that_reference(entry: str, request_ref: str,
                                                      admitted: bool) -> None:
    """A list entry is a reference, not a pattern: a pinned digest admits only itself."""
    assert Reference.parse(entry).admits(Reference.parse(request_ref)) is admitted


@pytest.mark.parametrize(("query", "expected"), [
    ({"fromImage": ["mcp/echo"], "tag": ["1"]}, "mcp/echo:1"),
    ({"fromImage": ["mcp/echo:old"], "tag": ["1"]}, "mcp/echo:1"),
    ({"fromImage": ["mcp/echo"], "tag": [DIGEST]}, f"mcp/echo@{DIGEST}"),
    ({"fromImage": [f"mcp/echo@{DIGEST}"]}, f"mcp/echo@{DIGEST}"),
    ({"fromImage": ["mcp/echo:1"]}, "mcp/echo:1"),
    ({"fromImage": ["127.0.0.1:1/mcp/p"], "tag": ["1"]}, "127.0.0.1:1/mcp/p:1"),
    ({"fromImage": ["mcp/echo"]}, None),               # every tag of the repository
    ({"fromImage": ["127.0.0.1:1/mcp/p"]}, None),
    ({"fromImage": ["mcp/echo"], "tag": [""]}, None),
    ({"fromImage": ["a", "b"], "tag": ["1"]}, None),
    ({"fromImage": ["a"], "tag": ["1", "2"]}, None),
    ({"fromSrc": ["-"], "repo": ["mcp/echo"], "tag": ["1"]}, None),
])
def test_a_pull_names_one_image_as_dockerd_reads_the_query(
        query: dict[str, list[str]], expected: str | None) -> None:
    """Without a tag dockerd pulls all tags; a sha256 tag is a digest."""
    assert pull_reference(query) == expected


def test_an_image_list_with_a_line_that_is_no_reference_names_the_line() -> None:
    """The relay writes the list; a broken line must be found, not guessed at."""
    with pytest.raises(ConfigError, match=r"list.txt:3: 'Bad Image'"):
        parse_image_list("# approved\nmcp/echo:1\nBad Image\n", "list.txt")
    assert len(parse_image_list("mcp/a:1  # a comment\n\n", "l").entries) == 1


def test_a_missing_image_list_approves_nothing_and_lint_says_so(tmp_path: Path) -> None:
    """Before the relay's first write there is no list: nothing runs, and lint explains."""
    assert read_image_list(str(tmp_path / "none.txt")).missing
    decider = owner_policy(tmp_path, "")
    (tmp_path / "images.txt").unlink()
    problems = policy.lint_file(str(tmp_path / "policy.yaml"))
    assert any("does not exist (yet)" in line for line in problems)
    assert [path for path, _stamp in decider.watched] == [str(tmp_path / "images.txt")]


def test_an_owner_create_forwards_the_body_with_the_owner_label(tmp_path: Path) -> None:
    """The daemon gets the inspected body plus the label, never the client's raw one alone."""
    decider = owner_policy(tmp_path, "mcp/echo:1\n")
    decision = decide(decider, "POST", "/v1.41/containers/create", body=CLEAN_CREATE)
    assert isinstance(decision, Allow)
    assert decision.body is not None
    assert labels_of(decision.body) == {OWNED_BY: "mcp-gateway"}


@pytest.mark.parametrize(("body", "why"), [
    (b'{"Image": "mcp/other:1"}', "is not among the approved images"),
    (b'{"Image": "mcp/echo:1", "HostConfig": {"Privileged": true}}', "privileged"),
    (b'{"Image": "mcp/echo:1", "Labels": {"dockgate.owner": "mcp-gateway"}}',
     "set by dockgate"),
])
def test_an_owner_create_outside_its_grant_is_denied(tmp_path: Path, body: bytes,
                                                      why: str) -> None:
    """Unapproved images, host access and forged ownership are refused before the daemon."""
    decision = decide(owner_policy(tmp_path, "mcp/echo:1\n"), "POST",
                      "/containers/create", body=body)
    assert isinstance(decision, Deny)
    assert why in decision.message


@pytest.mark.parametrize(("target", "allowed"), [
    ("/images/mcp/echo:1/json", True),
    ("/images/mcp/other:1/json", False),
    ("/images/create?fromImage=mcp/echo&tag=1", True),
    ("/images/create?fromImage=mcp/echo", False),
    ("/images/create?fromImage=mcp/other&tag=1", False),
    ("/images/mcp/echo:1/tag?repo=mcp/echo&tag=1", False),
])
def test_image_operations_are_scoped_to_the_list(tmp_path: Path, target: str,
                                                 allowed: bool) -> None:
    """image.pull and inspect name one listed reference, or are denied."""
    method = "GET" if target.endswith("/json") else "POST"
    text = "mcp/echo:1\n"
    decider = owner_policy(tmp_path, text)
    if "/tag" in target:  # a grant of image.tag under the same list
        (tmp_path / "p2.yaml").write_text("policies:\n  p:\n    grants:\n"
                                          "      - allow: [image.tag]\n"
                                          "        images_from: images.txt\ndefault: p\n")
        decider = policy.load_file(str(tmp_path / "p2.yaml"))
    decision = decide(decider, method, target)
    assert isinstance(decision, Allow) is allowed


def test_owned_containers_are_in_scope_and_others_are_not(tmp_path: Path) -> None:
    """own: true is the label scope dockgate.owner=OWNER, pinned to the resolved ID."""
    decider = owner_policy(tmp_path, "mcp/echo:1\n")
    owned = gw("srv", GW_ID, **{OWNED_BY: "mcp-gateway"})
    foreign = gw("backend", OTHER_ID, **{OWNED_BY: "someone-else"})
    allowed = decide(decider, "DELETE", "/containers/srv", containers={"srv": owned})
    assert isinstance(allowed, Allow)
    assert allowed.target == f"/containers/{GW_ID}"
    denied = decide(decider, "DELETE", "/containers/backend", containers={"backend": foreign})
    assert isinstance(denied, Deny)
    own = decide(decider, "GET", "/containers/b2b2/json", containers={"b2b2": gw("gw")})
    assert isinstance(own, Allow)


@pytest.mark.parametrize(("text", "error"), [
    ("""\
        policies:
          p:
            grants:
              - allow: [container.delete]
                containers: {own: true}
        """, "own: true needs the policy's owner"),
    ("""\
        policies:
          p:
            owner: gw
            grants:
              - allow: [container.delete]
        """, "need a containers: scope"),
    ("""\
        policies:
          p:
            owner: "a b"
            grants:
              - allow: [system.ping]
        """, "is not a label value"),
    ("""\
        policies:
          p:
            grants:
              - allow: [image.inspect]
                images: [x]
                images_from: l.txt
        """, "images: or images_from:, not both"),
    ("""\
        policies:
          p:
            owner: gw
            grants:
              - allow: [container.delete]
                containers: {own: yes}
        """, "own: takes true"),
])
def test_ownership_mistakes_in_a_policy_file_are_errors(text: str, error: str) -> None:
    """An owner policy that would leave container operations unscoped must not load."""
    with pytest.raises(ConfigError, match=error):
        policy.compile_text(textwrap.dedent(text), "p.yaml")


NET_ID = "e5" * 32


def network_policy() -> policy.PolicyDecider:
    return policy.compile_text(textwrap.dedent("""\
        policies:
          gateway:
            owner: mcp-gateway
            grants:
              - allow: [network.connect, network.delete]
                networks: {own: true}
        default: gateway
        """), "n.yaml")


def decide_network(body: bytes, network: NetworkFacts | None,
                   container: ContainerFacts | None,
                   target: str = "/networks/net/connect") -> Decision:
    decider = network_policy()
    req = request("POST" if target.endswith("connect") else "DELETE", target)
    facts = Facts()
    for _ in range(4):
        decision = decider.decide(LOCAL, req, facts)
        if not isinstance(decision, NeedFacts):
            return decision
        facts = Facts(body=body if decision.body else facts.body,
                      networks={**facts.networks, **dict.fromkeys(decision.networks, network)},
                      containers={**facts.containers,
                                  **dict.fromkeys(decision.containers, container)})
    raise AssertionError("the decider kept asking for facts")


OWNED = {OWNED_BY: "mcp-gateway"}


def test_an_owner_connects_its_container_to_its_network_by_full_ids() -> None:
    """Both references are resolved and forwarded pinned: path and the body's Container."""
    decision = decide_network(b'{"Container": "srv", "EndpointConfig": {}}',
                              NetworkFacts(NET_ID, "net", OWNED), gw("srv", GW_ID, **OWNED))
    assert isinstance(decision, Allow)
    assert decision.target == f"/networks/{NET_ID}/connect"
    assert decision.body is not None
    assert bodies.parse(decision.body)["container"] == GW_ID


@pytest.mark.parametrize(("network", "container", "why"), [
    (NetworkFacts(NET_ID, "net", {}), gw("srv", GW_ID, **OWNED), "network 'net'"),
    (NetworkFacts(NET_ID, "net", {OWNED_BY: "other"}), gw("srv", GW_ID, **OWNED),
     "network 'net'"),
    (None, gw("srv", GW_ID, **OWNED), "network 'net'"),
    (NetworkFacts("e5", "net", OWNED), gw("srv", GW_ID, **OWNED), "network 'net'"),
    (NetworkFacts(NET_ID, "net", OWNED), gw("backend", GW_ID), "container 'srv'"),
    (NetworkFacts(NET_ID, "net", OWNED), None, "container 'srv'"),
])
def test_a_connect_outside_what_the_owner_created_is_denied(
        network: NetworkFacts | None, container: ContainerFacts | None, why: str) -> None:
    """A foreign network, or a foreign container (the backend) on an owned one: denied."""
    decision = decide_network(b'{"Container": "srv"}', network, container)
    assert isinstance(decision, Deny)
    assert why in decision.message


@pytest.mark.parametrize("body", [b"{}", b'{"Container": 5}', b"[1]"])
def test_a_connect_body_that_names_no_container_is_denied(body: bytes) -> None:
    """What cannot be resolved cannot be checked."""
    decision = decide_network(body, NetworkFacts(NET_ID, "net", OWNED), None)
    assert isinstance(decision, Deny)


def test_deleting_an_owned_network_needs_no_body_and_pins_its_id() -> None:
    """Operations without a container in the body check the network alone."""
    decision = decide_network(b"", NetworkFacts(NET_ID, "net", OWNED), None,
                              target="/networks/net")
    assert isinstance(decision, Allow)
    assert decision.target == f"/networks/{NET_ID}"
    assert decision.body is None


def test_network_scopes_need_an_owner_and_owner_policies_need_network_scopes() -> None:
    """An owner's network.connect unscoped could attach anything anywhere."""
    with pytest.raises(ConfigError, match="need a networks: scope"):
        policy.compile_text("policies:\n  p:\n    owner: gw\n    grants:\n"
                            "      - allow: [network.connect]\n", "p.yaml")
    with pytest.raises(ConfigError, match="needs the policy's owner"):
        policy.compile_text("policies:\n  p:\n    grants:\n      - allow: [network.connect]\n"
                            "        networks: {own: true}\n", "p.yaml")
    with pytest.raises(ConfigError, match="cannot be scoped by networks:"):
        policy.compile_text("policies:\n  p:\n    owner: gw\n    grants:\n"
                            "      - allow: [network.create]\n"
                            "        networks: {own: true}\n", "p.yaml")



def test_a_pull_outside_the_list_is_denied_naming_the_image(tmp_path: Path) -> None:
    """The denial says which image is not approved, not that some query value is wrong."""
    decision = decide(owner_policy(tmp_path, "mcp/echo:1\n"), "POST",
                      "/images/create?fromImage=mcp/other&tag=2")
    assert isinstance(decision, Deny)
    assert "image.create of image 'mcp/other:2' is not granted" in decision.message
    assert "images_from:" in decision.message


def test_lint_flags_an_image_list_as_a_create_grants_only_constraint(tmp_path: Path) -> None:
    """An approved image run privileged is still root on the host: DANGER."""
    (tmp_path / "images.txt").write_text("mcp/echo:1\n")
    (tmp_path / "p.yaml").write_text("policies:\n  p:\n    grants:\n"
                                     "      - allow: [system.ping]\n"
                                     "      - allow: [container.create]\n"
                                     "        images_from: images.txt\ndefault: p\n")
    problems = policy.lint_file(str(tmp_path / "p.yaml"))
    assert len(problems) == 1
    assert "DANGER" in problems[0]
    assert "any body" in problems[0]
