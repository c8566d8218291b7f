"""``policy suggest``: a learn recording -> the least-privilege policy, without a daemon.

Recordings are made with the recorder's own pure half (``policy_learn``): a
request is built from a raw target, the shell's part (resolving containers,
reading the body) is played by hand, and ``observation`` writes the record, so
these tests see exactly the records ``serve --learn`` writes. The property
test at the end is the contract: whatever the recording, every request the
suggested policy allows is covered by a recorded request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockgate import bodies, danger, policy, policy_learn, policy_suggest, routes
from dockgate.decision import (
    Allow,
    AllowAll,
    Client,
    ContainerFacts,
    Decider,
    Decision,
    Deny,
    ExecFacts,
    Facts,
    NeedFacts,
    Request,
    VolumeFacts,
)
from dockgate.errors import ConfigError
from dockgate.policy_match import QUERY_DEFAULTS, normalize_image

UNIX = Client("unix:///run/dg/cli.sock", "unix", uid=1000, gid=1000, pid=42)
TCP = Client("tcp://127.0.0.1:2375", "tcp", address="127.0.0.1", port=40000)
WEB = ContainerFacts("a1" * 32, "web-1", {"app": "demo", "tier": "web"}, "busybox:latest")
WEB2 = ContainerFacts("b2" * 32, "web-2", {"app": "demo", "tier": "db"}, "busybox:latest")
OTHER = ContainerFacts("c3" * 32, "other", {"app": "else"}, "nginx:1.27")
POOL = (WEB, WEB2, OTHER)
EXECS = {"e1" * 32: ExecFacts("e1" * 32, WEB.id), "e2" * 32: ExecFacts("e2" * 32, OTHER.id)}
VOLUMES = {"vol": VolumeFacts("vol", "local", {}),
           "their-vol": VolumeFacts("their-vol", "local", {"owner": "else"})}


def request(method: str, target: str) -> Request:
    parsed = routes.parse_target(target)
    return Request(method, parsed, routes.classify(method, parsed))


def resolve(reference: str) -> ContainerFacts | None:
    """What the daemon answers for a reference: exact name, full ID or unique prefix."""
    for container in POOL:
        if reference == container.name:
            return container
    found = [c for c in POOL if c.id.startswith(reference)]
    return found[0] if len(found) == 1 else None


def decide(decider: Decider, client: Client, method: str, target: str,
           body: bytes = b"") -> tuple[Decision, Facts]:
    """Decide like the shell does: answer NeedFacts (containers from POOL, the body)."""
    req = request(method, target)
    facts = Facts()
    for _ in range(4):
        decision = decider.decide(client, req, facts)
        if not isinstance(decision, NeedFacts):
            return decision, facts
        containers = dict(facts.containers)
        for ref in decision.containers:
            containers.setdefault(ref, resolve(ref))
        execs = {**facts.execs, **{ref: EXECS.get(ref) for ref in decision.execs}}
        volumes = {**facts.volumes, **{ref: VOLUMES.get(ref) for ref in decision.volumes}}
        facts = Facts(containers=containers, execs=execs, volumes=volumes,
                      body=body if decision.body or facts.body is not None else None)
    raise AssertionError("undecided")


def record(client: Client, method: str, target: str, body: bytes = b"",
           decider: Decider | None = None, now: float = 1_800_000_000.0) -> dict[str, Any]:
    """The learn record of one request, as ``serve --learn`` writes it."""
    learning = policy_learn.LearningDecider(decider or AllowAll())
    decision, facts = decide(learning, client, method, target, body)
    line = json.dumps(policy_learn.observation(client, request(method, target), facts,
                                               decision, now))
    loaded: dict[str, Any] = json.loads(line)
    return loaded


def suggested(records: list[dict[str, Any]], **options: Any) -> policy_suggest.Suggestion:
    recording = policy_suggest.Recording(records)
    return policy_suggest.suggest(recording, label="rec.jsonl", **options)


def create_body(image: str = "busybox:latest", **fields: Any) -> bytes:
    host = {k: v for k, v in fields.items() if k != "User"}
    return json.dumps({"Image": image, "User": fields.get("User", "1000"),
                       "Env": ["TOKEN=hunter2"], "Cmd": ["sh", "-c", "echo secret-arg"],
                       "HostConfig": host}).encode()


def allowed(suggestion: policy_suggest.Suggestion, client: Client, method: str, target: str,
            body: bytes = b"") -> bool:
    return isinstance(decide(suggestion.decider, client, method, target, body)[0], Allow)


def test_containers_named_by_name_are_granted_by_exact_name() -> None:
    """A client that always names its container (a relay) gets names:, which also keeps its 404."""
    records = [record(UNIX, "GET", "/v1.41/containers/web-1/json"),
               record(UNIX, "POST", "/v1.41/containers/web-1/restart?t=1")]
    result = suggested(records)
    assert allowed(result, UNIX, "POST", "/containers/web-1/restart")
    assert not allowed(result, UNIX, "POST", "/containers/web-2/restart")
    assert not allowed(result, UNIX, "POST", "/containers/web-1/stop")
    assert not allowed(result, TCP, "POST", "/containers/web-1/restart")
    assert "names: [web-1]" in result.text
    assert "2 requests, first 2027-01-15T08:00:00Z, last 2027-01-15T08:00:00Z" in result.text


def test_containers_reached_by_id_are_granted_by_the_labels_they_share() -> None:
    """A client that found its containers (by ID) gets the labels all of them carry, not all."""
    records = [record(UNIX, "POST", f"/containers/{WEB.id}/stop"),
               record(UNIX, "POST", f"/containers/{WEB2.id[:12]}/stop")]
    result = suggested(records)
    grants = yaml.safe_load(result.text)["policies"]["uid1000-cli.sock"]["grants"]
    assert grants == [{"allow": ["system.ping"]},
                      {"allow": ["container.stop"], "containers": {"labels": {"app": "demo"}}}]
    assert "system.ping was not recorded: added because the docker CLI pings" in result.text
    assert allowed(result, UNIX, "POST", "/containers/web-2/stop")
    assert not allowed(result, UNIX, "POST", "/containers/other/stop")


def test_query_values_are_granted_per_recorded_group_only() -> None:
    """A kill with HUP on one container does not grant KILL, nor HUP on another."""
    records = [record(UNIX, "POST", "/containers/web-1/kill?signal=SIGHUP"),
               record(UNIX, "GET", "/containers/web-1/logs?stdout=1")]
    result = suggested(records)
    assert allowed(result, UNIX, "POST", "/containers/web-1/kill?signal=1")
    assert not allowed(result, UNIX, "POST", "/containers/web-1/kill")
    assert allowed(result, UNIX, "GET", "/containers/web-1/logs?stdout=1&follow=0")
    assert not allowed(result, UNIX, "GET", "/containers/web-1/logs?follow=1")


def test_create_grants_deny_every_class_no_recorded_body_needed() -> None:
    """A read-only bind of one path: host-mounts is granted (with DANGER), privileged is not."""
    bind = create_body(Binds=["/srv/data:/data:ro"])
    records = [record(UNIX, "POST", "/containers/create?name=job", bind),
               record(UNIX, "POST", "/containers/create", create_body())]
    result = suggested(records)
    assert allowed(result, UNIX, "POST", "/containers/create", bind)
    assert not allowed(result, UNIX, "POST", "/containers/create",
                       create_body(Privileged=True))
    assert not allowed(result, UNIX, "POST", "/containers/create",
                       create_body(image="nginx:1.27"))
    assert not allowed(result, UNIX, "POST", "/containers/create",
                       create_body(Binds=["/srv/data:/data:ro"], CapAdd=["SYS_ADMIN"]))
    assert "DANGER: the workload needed host bind mounts" in result.text
    assert "host paths mounted: /srv/data (read-only)" in result.text
    assert "hunter2" not in json.dumps(records)
    assert "secret-arg" not in json.dumps(records)


def test_lint_dangers_of_what_the_workload_needed_are_comments_on_their_grant() -> None:
    """A privileged create is root on the host: lint's DANGER line sits above that grant."""
    result = suggested([record(UNIX, "POST", "/containers/create",
                               create_body(Privileged=True))])
    lines = result.text.splitlines()
    danger_line = next(i for i, line in enumerate(lines)
                       if "DANGER (lint): allows container.create" in line)
    assert lines[danger_line + 1].strip() == "- allow: [container.create]"
    assert "leaves out privileged" in lines[danger_line]
    assert not result.text.startswith("# lint:")


def test_exec_grants_deny_what_no_recorded_exec_asked_for() -> None:
    """An exec as uid 1000 without a terminal: root, privileged, tty, env and stdin stay denied."""
    result = suggested([record(UNIX, "POST", "/containers/web-1/exec",
                               b'{"Cmd": ["id"], "User": "1000"}')])
    grant = yaml.safe_load(result.text)["policies"]["uid1000-cli.sock"]["grants"][1]
    assert grant == {"allow": ["exec.create"], "containers": {"names": ["web-1"]},
                     "exec": {"deny": ["privileged", "root-user", "env", "tty", "stdin"]}}
    assert allowed(result, UNIX, "POST", "/containers/web-1/exec", b'{"User": "1000"}')
    assert not allowed(result, UNIX, "POST", "/containers/web-1/exec",
                       b'{"User": "1000", "Privileged": true}')
    assert not allowed(result, UNIX, "POST", "/containers/web-1/exec", b'{"User": "0"}')
    assert danger.policy_dangers(result.decider) == []


def test_features_of_two_bodies_are_never_combined_in_one_grant() -> None:
    """One body privileged, another with a bind: a body with both is not allowed."""
    records = [record(UNIX, "POST", "/containers/create", create_body(Privileged=True)),
               record(UNIX, "POST", "/containers/create", create_body(Binds=["/srv:/srv"]))]
    result = suggested(records)
    both = create_body(Privileged=True, Binds=["/srv:/srv"])
    assert not allowed(result, UNIX, "POST", "/containers/create", both)
    assert allowed(result, UNIX, "POST", "/containers/create", create_body(Privileged=True))


def test_a_suggested_policy_lints_clean_and_binds_each_client_seen() -> None:
    """Two clients, two policies, each bound by listener plus uid or address; lint finds nothing."""
    records = [record(UNIX, "GET", "/_ping"), record(TCP, "GET", "/containers/json"),
               record(TCP, "GET", "/events")]
    result = suggested(records)
    doc = yaml.safe_load(result.text)
    assert doc["clients"] == [
        {"listener": "unix:///run/dg/cli.sock", "uid": 1000, "policy": "uid1000-cli.sock"},
        {"listener": "tcp://127.0.0.1:2375", "address": "127.0.0.1",
         "policy": "127.0.0.1-2375"}]
    assert result.decider.warnings == ()
    assert danger.ping_warnings(result.decider) == []
    assert danger.policy_dangers(result.decider) == []
    assert not result.text.startswith("# lint:")
    assert "sees every container and event it listed" in result.text


def test_suggest_for_one_client_and_an_unknown_client_says_who_was_recorded() -> None:
    """--client picks one identity; a spec nobody matches lists the identities recorded."""
    records = [record(UNIX, "GET", "/_ping"), record(TCP, "GET", "/version")]
    result = suggested(records, client="uid=1000")
    assert list(yaml.safe_load(result.text)["policies"]) == ["uid1000-cli.sock"]
    with pytest.raises(ConfigError, match=r"matches no recorded client; recorded: .*uid=1000"):
        suggested(records, client="uid=5")
    with pytest.raises(ConfigError, match="is invalid"):
        suggested(records, client="port=5")


def test_from_policy_adds_only_what_it_denied_to_the_clients_policy() -> None:
    """Observe mode: the denied restart becomes one added grant in the policy the client has."""
    base = ("policies:\n  mon:\n    grants:\n      - allow: [system.ping, container.list]\n"
            "default: mon\n")
    enforcing = policy.compile_text(base, "base.yaml")
    records = [record(TCP, "GET", "/_ping", decider=enforcing),
               record(TCP, "POST", "/containers/web-1/restart", decider=enforcing)]
    assert [r["decision"] for r in records] == ["allow", "deny"]
    result = suggested(records, base=(base, "base.yaml"))
    grants = yaml.safe_load(result.text)["policies"]["mon"]["grants"]
    assert grants == [{"allow": ["system.ping", "container.list"]},
                      {"allow": ["container.restart"], "containers": {"names": ["web-1"]}}]
    assert allowed(result, TCP, "POST", "/containers/web-1/restart")


def test_scalars_are_read_back_as_written() -> None:
    """A label value 'yes' or '0755' stays a string through the emitter and the reader."""
    for value in ("yes", "0755", "a: b", "#x", "-", "", "x\ny", "{a}"):
        doc = policy_suggest.emit({"k": [value], "m": {"v": value}})
        assert yaml.safe_load(doc) == {"k": [value], "m": {"v": value}}


def test_a_full_recording_is_noted_and_bad_lines_are_errors(tmp_path: Path) -> None:
    """The learn.full marker becomes a header note; a broken line names its number."""
    lines = [json.dumps(record(UNIX, "GET", "/_ping")), json.dumps({"event": "learn.full"})]
    recording = policy_suggest.read_recording(lines, "rec.jsonl")
    result = policy_suggest.suggest(recording, label="rec.jsonl")
    assert "rec.jsonl reached its size bound" in result.text
    with pytest.raises(ConfigError, match=r"rec.jsonl:2: not a learn record"):
        policy_suggest.read_recording(["", "{oops"], "rec.jsonl")
    with pytest.raises(ConfigError, match="another version"):
        policy_suggest.read_recording(['{"v": 99, "client": {}}'], "rec.jsonl")


def test_suggest_command_writes_a_file_that_policy_lint_accepts(tmp_path: Path) -> None:
    """`dockgate policy suggest FILE -o OUT` then `dockgate policy lint OUT` says OK."""
    source = tmp_path / "rec.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in [
        record(UNIX, "POST", "/containers/web-1/restart"), record(UNIX, "GET", "/_ping")]))
    out = tmp_path / "policy.yaml"
    run = [sys.executable, "-m", "dockgate", "policy"]
    written = subprocess.run([*run, "suggest", str(source), "-o", str(out)],
                             capture_output=True, text=True, check=False)
    assert written.returncode == 0, written.stderr
    lint = subprocess.run([*run, "lint", str(out)], capture_output=True, text=True,
                          check=False)
    assert lint.stdout == f"{out}: OK\n"
    missing = subprocess.run([*run, "suggest", str(tmp_path / "none.jsonl")],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 2
    assert "cannot read the recording" in missing.stderr


# ---------------------------------------------------------------------------
# The property: the suggestion is never wider than the recording


@dataclass(frozen=True)
class Probe:
    client: Client
    method: str
    target: str
    body: bytes = b""


REFS = st.sampled_from(["web-1", "web-2", "other", "gone", WEB.id, WEB2.id[:12], OTHER.id])
IMAGES = st.sampled_from(["busybox:latest", "busybox", "docker.io/library/busybox:1.36",
                          "nginx:1.27", "alpine"])


@st.composite
def create_bodies(draw: st.DrawFn) -> bytes:
    host: dict[str, Any] = {}
    if draw(st.booleans()):
        host["Privileged"] = True
    if draw(st.booleans()):
        host["Binds"] = [draw(st.sampled_from(["/srv:/srv:ro", "/:/host", "vol:/data",
                                               "their-vol:/x", "newvol:/y"]))]
    if draw(st.booleans()):
        host["CapAdd"] = ["NET_ADMIN"]
    if draw(st.booleans()):
        host["NetworkMode"] = draw(st.sampled_from(["host", "none"]))
    return json.dumps({"Image": draw(IMAGES), "User": draw(st.sampled_from(["", "1000", "0"])),
                       "HostConfig": host}).encode()


def test_neighbours_are_probed() -> None:
    """The property's probes reach other containers, clients and body combinations."""
    recorded = [Probe(UNIX, "POST", "/containers/web-1/restart"),
                Probe(UNIX, "POST", "/containers/create", create_body(Privileged=True)),
                Probe(UNIX, "POST", "/containers/create", create_body(image="nginx:1.27"))]
    targets = {(p.client, p.target) for p in neighbours(recorded)}
    assert (TCP, f"/containers/{OTHER.id}/restart") in targets
    bodies_tried = {p.body for p in neighbours(recorded)}
    assert len(bodies_tried - {b""}) == 4


@st.composite
def exec_bodies(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {"Cmd": ["id"], "User": draw(st.sampled_from(["", "0", "1000"]))}
    for field in ("Privileged", "Tty", "AttachStdin"):
        if draw(st.booleans()):
            body[field] = True
    if draw(st.booleans()):
        body["Env"] = ["A=1"]
    return json.dumps(body).encode()


@st.composite
def probes(draw: st.DrawFn) -> Probe:
    client = draw(st.sampled_from([UNIX, TCP]))
    ref = draw(REFS)
    kind = draw(st.integers(0, 12))  # creates (5, 10, 11) weigh most: bodies combine
    if kind == 0:
        return Probe(client, "POST", f"/containers/{ref}/restart")
    if kind == 1:
        return Probe(client, "GET", f"/containers/{ref}/json")
    if kind == 2:
        signal = draw(st.sampled_from(["", "?signal=HUP", "?signal=KILL", "?signal=1"]))
        return Probe(client, "POST", f"/containers/{ref}/kill{signal}")
    if kind == 3:
        follow = draw(st.sampled_from(["", "&follow=1", "&follow=0"]))
        return Probe(client, "GET", f"/containers/{ref}/logs?stdout=1{follow}")
    if kind == 4:
        return Probe(client, "POST", f"/containers/{ref}/exec", draw(exec_bodies()))
    if kind == 12:
        exec_id = draw(st.sampled_from([*EXECS, "e9" * 32]))
        return Probe(client, "POST", f"/exec/{exec_id}/start", b'{"Detach": true}')
    if kind in (5, 10, 11):
        return Probe(client, "POST", "/containers/create", draw(create_bodies()))
    if kind == 6:
        return Probe(client, "GET", f"/images/{draw(IMAGES)}/json")
    if kind == 7:
        return Probe(client, "GET", draw(st.sampled_from(["/_ping", "/version", "/info"])))
    if kind == 8:
        return Probe(client, "GET", draw(st.sampled_from(["/containers/json", "/events"])))
    return Probe(client, "POST", f"/containers/{ref}/start")


def _effective(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    query = rec.get("query") or {}
    return tuple(sorted(set(query.get(param) or [default]))
                 for (op, param), default in sorted(QUERY_DEFAULTS.items())
                 if op == rec["operation"])


def _name(rec: Mapping[str, Any]) -> str | None:
    found = rec.get("container") or {}
    if found.get("name") is not None:
        return str(found["name"])
    ref = (rec.get("params") or {}).get("container")
    return None if ref is None or all(c in "0123456789abcdef" for c in ref) else str(ref)


def covered(probe: dict[str, Any], recorded: list[dict[str, Any]]) -> bool:
    """Same client and operation, the object in the recorded set, body features a subset.

    One exception: system.ping, which every suggested policy allows.

    The recorded set of containers of a group (client, operation, query values) is
    its containers' names, and the containers that carry every label all of them
    carry. exec.create bodies are not part of it: this dockgate does not inspect
    them, and the suggested grant says so (DANGER).
    """
    if probe["operation"] == "system.ping":
        return True  # every suggested policy allows ping (lint asks for it): it reveals nothing
    same = [r for r in recorded if r["client"] == probe["client"]
            and r["operation"] == probe["operation"] and _effective(r) == _effective(probe)]
    if not same:
        return False
    operation = probe["operation"]
    if operation == "container.create":
        features = probe["body"]
        return any(normalize_image(r["body"]["image"]) == normalize_image(features["image"])
                   and set(features["classes"]) <= set(r["body"]["classes"])
                   and set(features.get("volumes", ())) <= set(r["body"].get("volumes", ()))
                   for r in same)
    if operation == "image.inspect":
        ref = normalize_image(probe["params"]["image"])
        return any(normalize_image(r["params"]["image"]) == ref for r in same)
    if "container" not in probe:
        return True
    wanted = set((probe.get("body") or {}).get("classes", ()))
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in same:
        groups.setdefault(tuple((r.get("body") or {}).get("classes", ())), []).append(r)
    return any(wanted <= set(classes) and container_covered(probe, group)
               for classes, group in groups.items())


def container_covered(probe: dict[str, Any], group: list[dict[str, Any]]) -> bool:
    """By one of the group's names, or by carrying every label all its containers carry."""
    if _name(probe) in {_name(r) for r in group}:
        return True
    found = [r["container"] for r in group if (r.get("container") or {}).get("name")]
    common = set.intersection(*(set(c["labels"].items()) for c in found)) if found else set()
    return bool(common) and common <= set(probe["container"].get("labels", {}).items())


def neighbours(recorded: list[Probe]) -> list[Probe]:
    """Requests next to the recorded ones: each on every container, each client, and
    every recorded create's image with every other recorded create's host config."""
    found: list[Probe] = []
    for probe in recorded:
        for client in (UNIX, TCP):
            found.append(Probe(client, probe.method, probe.target, probe.body))
            for container in POOL:
                for ref in (container.name, container.id):
                    path = probe.target.split("/")
                    if len(path) > 3 and path[1] == "containers" and path[2] != "create":
                        path[2] = ref
                        found.append(Probe(client, probe.method, "/".join(path), probe.body))
    creates = [json.loads(p.body) for p in recorded if p.target == "/containers/create"]
    found.extend(Probe(UNIX, "POST", "/containers/create",
                       json.dumps({**one, "HostConfig": other["HostConfig"]}).encode())
                 for one in creates for other in creates)
    return found


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(probes(), min_size=1, max_size=10), st.lists(probes(), min_size=1,
                                                              max_size=10))
def test_every_request_the_suggestion_allows_is_covered_by_the_recording(
        recorded: list[Probe], tried: list[Probe]) -> None:
    """Random recordings: the suggested policy never allows what no recorded request covers."""
    records = [record(p.client, p.method, p.target, p.body) for p in recorded]
    try:
        result = suggested(records)
    except ConfigError as error:
        if "nothing to suggest" not in str(error):
            raise
        return  # e.g. only requests by ID to containers that did not exist
    assert result.decider.warnings == ()
    assert danger.ping_warnings(result.decider) == []
    for probe in [*recorded, *tried, *neighbours(recorded)]:
        decision, _facts = decide(result.decider, probe.client, probe.method, probe.target,
                                  probe.body)
        if isinstance(decision, Deny):
            continue
        seen = record(probe.client, probe.method, probe.target, probe.body)
        assert covered(seen, records), (probe, result.text)


def test_long_values_are_cut_and_never_scoped_by() -> None:
    """A 600-character image is recorded cut; the create it came from is not granted."""
    long_image = "a" * 600
    rec = record(UNIX, "POST", "/containers/create", create_body(image=long_image))
    assert rec["body"]["image"] == "a" * 512 + "...(cut)"
    result = suggested([rec, record(UNIX, "GET", "/_ping")])
    assert "container.create with a body that could not be read or no image" in result.text
    assert not allowed(result, UNIX, "POST", "/containers/create", create_body(long_image))


def test_body_classes_come_from_the_decider_code() -> None:
    """The recorded classes are exactly what create_violations finds per constraint."""
    body = create_body(Privileged=True, Binds=["/:/host"], User="0")
    features = policy_learn.create_features(body)
    assert features["classes"] == sorted(
        c for c in bodies.CHECKS if bodies.create_violations(body, frozenset({c}))[0])
    assert features["classes"] == ["host-mounts", "privileged", "root-user"]
    assert policy_learn.create_features(b"{nope")["error"].startswith("the body is not")
