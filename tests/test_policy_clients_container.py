"""Clients named by container, without a daemon: the policy keys, matching, cgroup parsing.

The shell resolves which container a peer is (tests/test_container_identity_daemon.py
does it against the real daemon); here the decider is given hand-made
``Client.container`` / ``Client.unidentified`` values and the file compiler its
keys, and the cgroup and container-list parsers their inputs.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from dockgate import policy, routes
from dockgate.decision import Allow, Client, ContainerFacts, Deny, Facts, Request
from dockgate.errors import ConfigError
from dockgate.policy_learn import LearningDecider
from dockgate.shell.containers import (
    NOT_SYNCED,
    SHARED,
    container_ids,
    entry_of,
    names_containers,
    normalize_address,
)

ID_A = "a1" * 32
ID_B = "b2" * 32
POCKETBASE = ContainerFacts(ID_A, "x-pocketbase-1", {"com.docker.compose.service": "pocketbase",
                                                      "com.docker.compose.project": "x",
                                                      "tier": "back"})
OTHER = ContainerFacts(ID_B, "x-web-1", {"com.docker.compose.service": "web",
                                          "com.docker.compose.project": "x"})
TCP = Client("tcp://0.0.0.0:2375", "tcp", address="172.20.0.5", port=4000)

POLICY = """\
policies:
  restarter:
    grants:
      - allow: [system.ping, container.restart]
  pinger:
    grants:
      - allow: [system.ping]
clients:
  - compose_service: pocketbase
    compose_project: x
    policy: restarter
  - address: 172.20.0.0/16
    policy: pinger
"""


def compile_(text: str) -> policy.PolicyDecider:
    return policy.compile_text(textwrap.dedent(text), "test.yaml")


def restart(decider: policy.PolicyDecider, client: Client) -> Allow | Deny:
    parsed = routes.parse_target("/containers/gw/restart")
    decision = decider.decide(client, Request("POST", parsed, routes.classify("POST", parsed)),
                              Facts())
    assert isinstance(decision, Allow | Deny)
    return decision


def test_a_rule_naming_a_compose_service_binds_that_services_container() -> None:
    """The issue's case: the policy follows the compose service, not an address."""
    decider = compile_(POLICY)
    assert isinstance(restart(decider, replace(TCP, container=POCKETBASE)),
                      Allow)


def test_another_container_on_the_same_network_falls_to_the_next_rule() -> None:
    """Every criterion must hold: another service's container is not the one named."""
    decision = restart(compile_(POLICY), replace(TCP, container=OTHER))
    assert isinstance(decision, Deny)
    assert "not granted by policy 'pinger'" in decision.message


def test_a_client_that_is_no_container_gets_only_what_other_rules_give() -> None:
    """An address that maps to no container never matches a container rule."""
    decider = compile_(POLICY)
    assert decider.policy_for(TCP) is decider.policies["pinger"]
    loopback = Client("tcp://0.0.0.0:2375", "tcp", address="127.0.0.1", port=4000)
    decision = restart(decider, loopback)
    assert isinstance(decision, Deny)
    assert decision.rule == "no-policy"
    assert "no policy applies to this client" in decision.message


@pytest.mark.parametrize("why", [NOT_SYNCED, SHARED])
def test_an_unidentified_client_gets_no_policy_rather_than_a_later_rule(why: str) -> None:
    """It may be the container the first rule names: no later rule or default decides."""
    decider = compile_(POLICY + "default: pinger\n")
    decision = restart(decider, replace(TCP, unidentified=why))
    assert isinstance(decision, Deny)
    assert decision.rule == "unidentified"
    assert why in decision.message
    assert "172.20.0.5" not in decision.message  # denials never name the client


def test_an_unidentified_client_is_judged_by_rules_before_any_container_rule() -> None:
    """Only a container rule the client could match stops the walk, not one before it."""
    decider = compile_("""\
        policies:
          a: {grants: [{allow: [system.ping]}]}
          b: {grants: [{allow: [container.restart]}]}
        clients:
          - {uid: 0, policy: b}
          - {container: gw, listener: "unix:///elsewhere.sock", policy: a}
          - {container: gw, policy: a}
        """)
    unix = Client("unix:///run/dg.sock", "unix", uid=0, gid=0, pid=1, unidentified=NOT_SYNCED)
    assert decider.policy_for(unix) is decider.policies["b"]
    assert isinstance(restart(decider, replace(unix, uid=1000)), Deny)


def test_container_names_and_labels_must_all_match() -> None:
    """container:, compose_service:, compose_project: and container_labels: combine."""
    decider = compile_("""\
        policies:
          p: {grants: [{allow: [system.ping]}]}
        clients:
          - container: [x-pocketbase-1, x-pocketbase-2]
            container_labels: {tier: back}
            policy: p
        """)
    assert decider.policy_for(replace(TCP, container=POCKETBASE)) is not None
    renamed = ContainerFacts(ID_A, "x-pocketbase-3", POCKETBASE.labels)
    assert decider.policy_for(replace(TCP, container=renamed)) is None
    unlabelled = ContainerFacts(ID_A, "x-pocketbase-1", {})
    assert decider.policy_for(replace(TCP, container=unlabelled)) is None
    assert decider.names_containers
    assert not compile_(POLICY.replace("compose_service: pocketbase\n    compose_project: x",
                                       "uid: 0")).names_containers


def test_describe_names_the_clients_container() -> None:
    """Audit lines say which container asked, not only its address."""
    client = Client("unix:///run/dg.sock", "unix", uid=0, gid=0, pid=42, container=POCKETBASE)
    assert client.describe() == "unix:uid=0,gid=0,pid=42,container=x-pocketbase-1"
    assert replace(TCP, container=OTHER).describe() == (
        "tcp:172.20.0.5:4000,container=x-web-1")


@pytest.mark.parametrize(("entry", "message"), [
    ("{compose_servce: pocketbase, policy: p}", "did you mean 'compose_service'?"),
    ("{container: /gw, policy: p}", "write the name without the leading /, e.g. "
                                    "container: gw"),
    ("{container: 'gw-*', policy: p}", "exact names only"),
    ("{container_labels: {}, policy: p}", "container_labels: is empty"),
    ("{container_labels: [a], policy: p}", "container_labels must be a mapping"),
    ("{name: only, policy: p}", "compose_service:, compose_project:, container_labels:"),
])
def test_a_wrong_container_key_is_an_error_that_says_what_to_write(entry: str,
                                                                   message: str) -> None:
    """Typos and leading slashes are refused at load, with the line and the fix."""
    with pytest.raises(ConfigError) as error:
        compile_(f"""\
            policies:
              p: {{grants: [{{allow: [system.ping]}}]}}
            clients:
              - {entry}
            """)
    assert str(error.value).startswith("test.yaml:4: ")
    assert message in str(error.value)


def test_lint_flags_a_container_rule_that_only_loopback_listeners_can_reach(
        tmp_path: Path) -> None:
    """A loopback peer is never a container's address: such an entry can never match."""
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent("""\
        policies:
          p: {grants: [{allow: [system.ping]}]}
        clients:
          - {compose_service: relay, listener: "tcp://127.0.0.1:2375", policy: p}
          - {compose_service: relay, listener: "unix:///run/dg.sock", policy: p}
        """))
    problems = policy.lint_file(str(path))
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:4: ")
    assert "never matches" in problems[0]


@pytest.mark.parametrize("text", [
    # cgroup v1, cgroupfs driver (and v2's line of a hybrid host)
    f"4:memory:/docker/{ID_A}\n1:cpu:/docker/{ID_A}\n0::/docker/{ID_A}\n",
    # cgroup v2, systemd driver, a nested scope inside the container
    f"0::/system.slice/docker-{ID_A}.scope/init.scope\n",
    # seen from inside a cgroup namespace
    f"0::/../../docker-{ID_A}.scope\n",
    # Podman, cgroupfs and systemd managers
    f"8:pids:/libpod_parent/libpod-{ID_A}\n",
    f"0::/machine.slice/libpod-{ID_A}.scope/container\n",
])
def test_a_process_cgroup_names_its_container(text: str) -> None:
    """The cgroupfs and systemd layouts of v1 and v2 all yield the container ID."""
    assert container_ids(text) == {ID_A}


def test_a_process_in_no_container_has_no_container_id() -> None:
    """Host processes and non-container 64-character names yield nothing."""
    assert container_ids("0::/user.slice/user-1000.slice/session-2.scope\n"
                         "4:memory:/process_api/f1b9b313467a7e2a3e55b014be08e1f4\n") == set()
    assert container_ids(f"0::/docker/{ID_A}/docker/{ID_B}\n") == {ID_A, ID_B}


def test_a_list_item_and_an_inspect_answer_give_the_same_entry() -> None:
    """The sync lists, an event refresh inspects: both must read the same container."""
    listed = entry_of({"Id": ID_A, "Names": ["/x-pocketbase-1", "/web/pb"],
                       "Labels": {"a": "b"}, "Image": "pb:1",
                       "HostConfig": {"NetworkMode": "x_default"},
                       "NetworkSettings": {"Networks": {
                           "x_default": {"IPAddress": "172.20.0.5", "GlobalIPv6Address": ""},
                           "y": {"IPAddress": "", "GlobalIPv6Address": "fd00::0:5"}}}})
    inspected = entry_of({"Id": ID_A, "Name": "/x-pocketbase-1",
                          "Config": {"Labels": {"a": "b"}, "Image": "pb:1"},
                          "HostConfig": {"NetworkMode": "x_default"},
                          "NetworkSettings": {"Networks": {
                              "x_default": {"IPAddress": "172.20.0.5"},
                              "y": {"GlobalIPv6Address": "fd00::5"}}}})
    assert listed == inspected
    assert listed.addresses == {"172.20.0.5", "fd00::5"}
    shared = entry_of({"Id": ID_B, "Names": ["/side"], "HostConfig": {
        "NetworkMode": f"container:{ID_A}"}, "NetworkSettings": {"Networks": {}}})
    assert shared.network_of == ID_A
    assert shared.addresses == frozenset()


def test_addresses_are_compared_in_one_spelling() -> None:
    """A dual-stack listener's ::ffff:a.b.c.d and a zone suffix are the plain address."""
    assert normalize_address("::ffff:172.20.0.5") == "172.20.0.5"
    assert normalize_address("fe80::1%eth0") == "fe80::1"
    assert normalize_address("") is None


@pytest.mark.parametrize(("spec", "chosen"), [
    ("service=pocketbase,project=x", "restarter"),
    ("172.20.0.5,service=pocketbase,project=x", "restarter"),
    ("uid=0,service=pocketbase,project=x,container=x-pocketbase-1", "restarter"),
    ("172.20.0.5,service=pocketbase", "pinger"),
    ("172.20.0.5", "pinger"),
])
def test_check_explains_a_decision_for_a_client_assumed_to_be_a_container(
        spec: str, chosen: str) -> None:
    """dockgate check --client service=NAME shows which rule a container's client gets."""
    report, _ = policy.explain(compile_(POLICY), "POST", "/_ping", client=spec)
    assert f"policy:    {chosen}" in report


def test_observe_mode_still_follows_containers() -> None:
    """--learn beside --policy wraps the decider; its container rules must still resolve."""
    decider = compile_(POLICY)
    assert names_containers(decider)
    assert names_containers(LearningDecider(decider))
    assert not names_containers(LearningDecider(compile_(POLICY.replace(
        "compose_service: pocketbase\n    compose_project: x", "uid: 0"))))
