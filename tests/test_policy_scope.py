"""What a scope hides, without a daemon: exec rules, volume scopes, list filters, error answers.

The decider is driven like the shell drives it: every NeedFacts is answered from
hand-made facts (containers, execs, volumes, the body), accumulated over rounds.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from urllib.parse import quote

import pytest

from dockgate import bodies, danger, policy, routes
from dockgate.decision import (
    Allow,
    Client,
    ContainerFacts,
    Decision,
    Deny,
    ExecFacts,
    Facts,
    NeedFacts,
    Request,
    VolumeFacts,
)
from dockgate.errors import ConfigError
from dockgate.policy_scope import (
    OWNER_LABEL,
    FilterError,
    ScopedErrors,
    VolumeScope,
    reference_filters,
    with_filters,
)

LOCAL = Client("tcp://127.0.0.1:2375", "tcp", address="127.0.0.1", port=40000)
CI_ID = "c1" * 32
OTHER_ID = "d2" * 32
EXEC_ID = "e3" * 32
CI = ContainerFacts(id=CI_ID, name="job-1", labels={"ci": "1"})
OTHER = ContainerFacts(id=OTHER_ID, name="db", labels={})


def compile_policy(text: str) -> policy.PolicyDecider:
    return policy.compile_text(textwrap.dedent(text), "test.yaml")


def decide(decider: policy.PolicyDecider, method: str, target: str, *,
           containers: Mapping[str, ContainerFacts | None] | None = None,
           execs: Mapping[str, ExecFacts | None] | None = None,
           volumes: Mapping[str, VolumeFacts | None] | None = None,
           body: bytes | None = None) -> Decision:
    """Answer NeedFacts the way the shell does (facts accumulate) until a decision."""
    parsed = routes.parse_target(target)
    req = Request(method, parsed, routes.classify(method, parsed))
    facts = Facts()
    for _ in range(4):
        decision = decider.decide(LOCAL, req, facts)
        if not isinstance(decision, NeedFacts):
            return decision
        facts = Facts(
            containers={**facts.containers,
                        **{r: (containers or {}).get(r) for r in decision.containers}},
            execs={**facts.execs, **{r: (execs or {}).get(r) for r in decision.execs}},
            volumes={**facts.volumes, **{r: (volumes or {}).get(r) for r in decision.volumes}},
            body=(body or b"") if decision.body else facts.body)
    raise AssertionError("the decider kept asking for facts")


CI_POLICY = """\
    policies:
      ci:
        grants:
          - allow: [container.list, container.inspect, container.start, exec.*]
            containers: {labels: {ci: "1"}}
            exec: {deny: [all]}
          - allow: [container.create]
            create: {deny: [all]}
          - allow: [volume.create, volume.inspect, volume.list, volume.delete]
            volumes: {own: true}
            create: {deny: [all]}
    default: ci
"""


@pytest.fixture
def ci() -> policy.PolicyDecider:
    return compile_policy(CI_POLICY)


# --- exec.create bodies ------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"Cmd": ["id"], "Privileged": True, "User": "1000"},
    {"Cmd": ["id"], "privileged": True, "User": "1000"},
    {"Cmd": ["id"], "User": "0"},
    {"Cmd": ["id"], "User": "00"},
    {"Cmd": ["id"], "User": "0:0"},
    {"Cmd": ["id"], "User": "root"},
    {"Cmd": ["id"], "User": ""},
    {"Cmd": ["id"]},
    {"Cmd": ["id"], "User": "1000", "Env": ["A=1"]},
    {"Cmd": ["id"], "User": "1000", "Tty": True},
    {"Cmd": ["id"], "User": "1000", "AttachStdin": True},
])
def test_exec_asking_for_privilege_root_env_tty_or_stdin_is_denied(
        ci: policy.PolicyDecider, body: dict[str, object]) -> None:
    """exec: deny: [all] leaves only a plain command as a numeric non-root user."""
    decision = decide(ci, "POST", "/containers/job-1/exec", containers={"job-1": CI},
                      body=json.dumps(body).encode())
    assert isinstance(decision, Deny), body
    assert "the exec asks for" in decision.message


@pytest.mark.parametrize("raw", [
    b'{"Cmd":["id"],"User":"1000","User":"0"}',           # the last duplicate wins
    b'{"Cmd":["id"],"User":"1000","USER":"0"}',           # whatever its case
    b'{"Cmd":["id"],"User":"1000","us\\u0065r":"0"}',     # \u escapes are names too
    b'{"Cmd":["id"],"User":"1000","Privileged":false,"PRIVILEGED":true}',
])
def test_exec_body_tricks_are_read_as_go_reads_them(ci: policy.PolicyDecider,
                                                    raw: bytes) -> None:
    """The daemon decodes exec bodies with encoding/json: case-insensitive, last wins."""
    decision = decide(ci, "POST", "/containers/job-1/exec", containers={"job-1": CI},
                      body=raw)
    assert isinstance(decision, Deny)


def test_plain_exec_as_a_numeric_user_in_scope_is_allowed_and_pinned(
        ci: policy.PolicyDecider) -> None:
    """The container checked is the container the exec is created in."""
    decision = decide(ci, "POST", "/containers/job-1/exec", containers={"job-1": CI},
                      body=b'{"Cmd":["id"],"User":"1000","AttachStdout":true}')
    assert isinstance(decision, Allow)
    assert decision.target == f"/containers/{CI_ID}/exec"


def test_exec_commands_match_argument_by_argument() -> None:
    """commands: [[cat, /etc/*]] allows cat of one file under /etc and nothing else."""
    decider = compile_policy("""\
        policies:
          p:
            grants:
              - allow: [exec.create]
                exec: {commands: [[cat, "/etc/*"]]}
        default: p
    """)

    def run(cmd: object) -> Decision:
        return decide(decider, "POST", "/containers/x/exec",
                      body=json.dumps({"Cmd": cmd}).encode())
    assert isinstance(run(["cat", "/etc/hostname"]), Allow)
    assert isinstance(run("cat"), Deny)
    assert isinstance(run(["cat", "/etc/hostname", "/root/x"]), Deny)
    assert isinstance(run(["sh", "-c", "cat /etc/hostname"]), Deny)


def test_unconstrained_and_constrained_exec_grants_tell_themselves_apart(
        ci: policy.PolicyDecider) -> None:
    """What lint needs: exec.create without privileged and root-user denied is flagged."""
    grants = {g.number: g for g in ci.policies["ci"].grants}
    assert grants[1].constrains("exec.create")
    assert grants[2].constrains("container.create")
    assert grants[3].constrains("volume.create")
    loose = compile_policy("policies:\n  p:\n    grants:\n      - allow: [exec.create, "
                           "volume.create]\n        exec: {deny: [env]}\n"
                           "        create: {deny: [driver-options]}\n"
                           "default: p\n").policies["p"].grants[0]
    assert not loose.constrains("exec.create")
    assert not loose.constrains("volume.create")
    assert danger.grant_dangers(grants[1]) == []
    assert [op for op, _ in danger.grant_dangers(loose)] == ["exec.create", "volume.create"]


# --- exec.start/resize/inspect scoped by the exec's container --------------------

@pytest.mark.parametrize(("method", "target"), [
    ("POST", "/exec/e1/start"), ("POST", "/exec/e1/resize?h=1&w=1"), ("GET", "/exec/e1/json"),
])
def test_exec_in_scope_is_allowed_and_pinned_to_its_full_id(
        ci: policy.PolicyDecider, method: str, target: str) -> None:
    """The exec is judged by the container it runs in."""
    decision = decide(ci, method, target, execs={"e1": ExecFacts(EXEC_ID, CI_ID)},
                      containers={CI_ID: CI})
    assert isinstance(decision, Allow)
    assert decision.target is not None
    assert f"/exec/{EXEC_ID}/" in decision.target


def test_exec_out_of_scope_and_unknown_exec_get_the_same_denial(
        ci: policy.PolicyDecider) -> None:
    """No oracle: another container's exec and no exec at all read the same."""
    out = decide(ci, "POST", "/exec/e1/start", execs={"e1": ExecFacts(EXEC_ID, OTHER_ID)},
                 containers={OTHER_ID: OTHER})
    unknown = decide(ci, "POST", "/exec/e1/start", execs={"e1": None})
    gone = decide(ci, "POST", "/exec/e1/start", execs={"e1": ExecFacts(EXEC_ID, OTHER_ID)},
                  containers={OTHER_ID: None})
    assert isinstance(out, Deny)
    assert out == unknown == gone


# --- create: log drivers, sysctls, named volumes -----------------------------------

@pytest.mark.parametrize(("host_config", "allowed"), [
    ({}, True),
    ({"LogConfig": None}, True),
    ({"LogConfig": {"Type": "", "Config": {}}}, True),
    ({"LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}},
     True),
    ({"LogConfig": {"Type": "local", "Config": {"compress": "true"}}}, True),
    ({"LogConfig": {"Type": "none"}}, True),
    ({"LogConfig": {"Type": "syslog",
                    "Config": {"syslog-address": "tcp://127.0.0.1:514"}}}, False),
    ({"logconfig": {"type": "gelf"}}, False),
    ({"LogConfig": {"Type": "json-file", "Config": {"syslog-address": "x"}}}, False),
    ({"LogConfig": {"Type": "none", "Config": {"max-size": "1m"}}}, False),
    ({"Sysctls": {}}, True),
    ({"Sysctls": {"net.ipv4.ip_forward": "1"}}, False),
])
def test_log_drivers_and_sysctls_are_denied_unless_harmless(
        ci: policy.PolicyDecider, host_config: dict[str, object], allowed: bool) -> None:
    """Only the daemon's own log files; a syslog driver connects out from the host."""
    body = json.dumps({"Image": "busybox", "User": "1000", "HostConfig": host_config})
    decision = decide(ci, "POST", "/containers/create", body=body.encode())
    assert isinstance(decision, Allow) is allowed, decision


def test_log_drivers_are_allowed_when_the_grant_does_not_deny_them() -> None:
    """create: deny: lists classes; log-drivers is one of them, part of all."""
    decider = compile_policy("""\
        policies:
          p:
            grants:
              - allow: [container.create]
                create: {deny: [privileged, host-mounts]}
        default: p
    """)
    body = {"Image": "busybox", "HostConfig": {"LogConfig": {"Type": "syslog"}}}
    assert isinstance(decide(decider, "POST", "/containers/create",
                             body=json.dumps(body).encode()), Allow)


def create_body(**host_config: object) -> bytes:
    return json.dumps({"Image": "busybox", "User": "1000",
                       "HostConfig": host_config}).encode()


MINE = VolumeFacts("mine", "local", {OWNER_LABEL: "ci"})
THEIRS = VolumeFacts("theirs", "local", {OWNER_LABEL: "other"})


@pytest.mark.parametrize(("body", "allowed"), [
    (create_body(Binds=["mine:/data"]), True),
    (create_body(Mounts=[{"Type": "volume", "Source": "mine", "Target": "/d"}]), True),
    (create_body(Mounts=[{"Type": "volume", "Target": "/d"}]), True),    # anonymous
    (json.dumps({"Image": "busybox", "User": "1000", "Volumes": {"/d": {}}}).encode(), True),
    (create_body(Binds=["theirs:/steal:ro"]), False),
    (create_body(Mounts=[{"Type": "volume", "Source": "theirs", "Target": "/d"}]), False),
    (create_body(Binds=["missing:/d"]), False),
    (create_body(VolumesFrom=["db"]), False),
])
def test_restricted_create_mounts_only_its_own_named_volumes(
        ci: policy.PolicyDecider, body: bytes, allowed: bool) -> None:
    """Another client's named volume is out of scope; anonymous volumes stay allowed."""
    decision = decide(ci, "POST", "/containers/create", body=body,
                      volumes={"mine": MINE, "theirs": THEIRS, "missing": None})
    assert isinstance(decision, Allow) is allowed, decision


def test_someone_elses_volume_and_a_missing_one_are_denied_in_the_same_words(
        ci: policy.PolicyDecider) -> None:
    """No oracle on volume names through a create."""
    theirs = decide(ci, "POST", "/containers/create", body=create_body(Binds=["v:/d"]),
                    volumes={"v": THEIRS})
    missing = decide(ci, "POST", "/containers/create", body=create_body(Binds=["v:/d"]),
                     volumes={"v": None})
    assert isinstance(theirs, Deny)
    assert theirs == missing


def test_volume_create_is_forwarded_with_the_owner_label(ci: policy.PolicyDecider) -> None:
    """The label marks the volume as this policy's; a client cannot forge another's."""
    body = b'{"Name":"mine","Labels":{"dockgate.policy":"other","a":"b"}}'
    decision = decide(ci, "POST", "/volumes/create", body=body, volumes={"mine": None})
    assert isinstance(decision, Allow)
    assert decision.body is not None
    assert json.loads(decision.body) == {"Name": "mine", "Driver": "", "DriverOpts": {},
                                         "Labels": {"a": "b", OWNER_LABEL: "ci"}}


@pytest.mark.parametrize("body", [
    b'{"Name":"x","DriverOpts":{"type":"none","o":"bind","device":"/"}}',
    b'{"Name":"x","Driver":"some-plugin"}',
    b'{"Name":"x","ClusterVolumeSpec":{}}',
    b'{"Name":"theirs"}',
])
def test_volume_create_with_options_a_plugin_or_someone_elses_name_is_denied(
        ci: policy.PolicyDecider, body: bytes) -> None:
    """o=bind,device=/ is a host bind mount; an existing name would hand out another's volume."""
    decision = decide(ci, "POST", "/volumes/create", body=body,
                      volumes={"x": None, "theirs": THEIRS})
    assert isinstance(decision, Deny)


def test_volume_operations_and_list_are_scoped(ci: policy.PolicyDecider) -> None:
    """Inspect/delete judge the daemon's volume; the list keeps only what is in scope."""
    assert isinstance(decide(ci, "GET", "/volumes/mine", volumes={"mine": MINE}), Allow)
    theirs = decide(ci, "DELETE", "/volumes/theirs", volumes={"theirs": THEIRS})
    missing = decide(ci, "DELETE", "/volumes/theirs", volumes={"theirs": None})
    assert isinstance(theirs, Deny)
    assert theirs == missing
    listed = decide(ci, "GET", "/volumes")
    assert isinstance(listed, Allow)
    assert listed.response_filter is not None
    assert listed.response_filter.list_key == "Volumes"
    assert listed.response_filter.keep({"Name": "mine", "Labels": {OWNER_LABEL: "ci"}})
    assert not listed.response_filter.keep({"Name": "theirs", "Labels": None})


def test_volume_scope_by_name_and_label() -> None:
    """names/globs match the name; labels must all match; own matches the owner label."""
    scope = VolumeScope(frozenset({"cache"}), ("ci-*",), (("team", "a"),), own=False)
    assert scope.matches("p", "cache", {})
    assert scope.matches("p", "ci-1", {})
    assert scope.matches("p", "x", {"team": "a"})
    assert not scope.matches("p", "x", {OWNER_LABEL: "p"})
    assert VolumeScope(own=True).matches("p", "x", {OWNER_LABEL: "p"})


@pytest.mark.parametrize(("text", "says"), [
    ("volumes: {}", "selects nothing"),
    ("volumes: {own: yes}", "own is true or false"),
    ("exec: {}", "exec: constrains nothing"),
    ("exec: {deny: [privilegd]}", "did you mean 'privileged'"),
    ("exec: {commands: [cat]}", "each command is a list"),
])
def test_bad_volume_and_exec_sections_are_errors(text: str, says: str) -> None:
    """A policy that cannot mean what it says is refused with the line and a fix."""
    allow = "[exec.create]" if text.startswith("exec") else "[volume.inspect]"
    with pytest.raises(ConfigError, match=says):
        compile_policy(f"policies:\n  p:\n    grants:\n      - allow: {allow}\n"
                       f"        {text}\ndefault: p\n")


# --- reference filters on scoped lists ---------------------------------------------

def list_target(filters: object) -> str:
    return "/v1.41/containers/json?all=1&filters=" + quote(json.dumps(filters))


@pytest.mark.parametrize("filters", [{"before": ["db"]}, {"since": {"db": True}},
                                     {"before": ["job-1", "db"]}])
def test_reference_filters_out_of_scope_read_as_no_such_container(
        ci: policy.PolicyDecider, filters: object) -> None:
    """Out of scope and missing give one answer: the daemon's own for a missing container."""
    present = decide(ci, "GET", list_target(filters), containers={"db": OTHER, "job-1": CI})
    absent = decide(ci, "GET", list_target(filters), containers={"db": None, "job-1": CI})
    assert present == absent == Deny("no such container db", status=500,
                                     rule="policy 'ci' grant 1 (test.yaml:4)")


def test_reference_filters_in_scope_are_forwarded_as_full_ids(
        ci: policy.PolicyDecider) -> None:
    """What the daemon compares is the container that was checked."""
    decision = decide(ci, "GET", list_target({"before": ["job-1"], "status": ["exited"]}),
                      containers={"job-1": CI})
    assert isinstance(decision, Allow)
    assert decision.target == "/v1.41/containers/json?all=1&filters=" + quote(
        '{"before":["' + CI_ID + '"],"status":["exited"]}', safe="")


@pytest.mark.parametrize("raw", ["filters=%7B", "filters=1", "filters=%7B%7D&filters=%7B%7D",
                                 "filters=" + quote('{"before":[1]}')])
def test_unreadable_filters_are_refused(raw: str) -> None:
    """Deny by default: a filter the daemon might read differently is never forwarded."""
    with pytest.raises(FilterError):
        reference_filters(routes.parse_target(f"/containers/json?{raw}").query_params())


def test_with_filters_keeps_the_other_parameters_raw() -> None:
    """Only the filters value changes; the rest of the query is forwarded as sent."""
    assert with_filters("/containers/json?all=1&filters=x&size=1", {"since": {"a": True}},
                        {"a": "f" * 64}) == (
        "/containers/json?all=1&filters=" + quote('{"since":{"' + "f" * 64 + '":true}}',
                                                  safe="") + "&size=1")


# --- error answers -----------------------------------------------------------------

CONFLICT = (b'{"message":"Conflict. The container name \\"/db\\" is already in use by container '
            b'\\"' + OTHER_ID.encode() + b'\\". You have to remove (or rename) that container '
            b'to be able to reuse that name."}\n')


def test_create_conflict_names_no_container(ci: policy.PolicyDecider) -> None:
    """The 409 of a taken name tells the name is taken, never who holds it."""
    decision = decide(ci, "POST", "/containers/create?name=db",
                      body=b'{"Image":"busybox","User":"1000"}')
    assert isinstance(decision, Allow)
    assert decision.error_answer is not None
    answer = decision.error_answer.rewrite(409, CONFLICT)
    assert OTHER_ID[:12].encode() not in answer
    assert json.loads(answer)["message"].startswith('Conflict. The container name "/db" is '
                                                    "already in use. ")


def test_daemon_errors_pass_unless_they_name_an_id_the_client_did_not_send() -> None:
    """The daemon's own words reach the client when they reveal nothing."""
    errors = ScopedErrors(f"/containers/json before={CI_ID}")
    harmless = b'{"message":"Invalid filter \'foo\'"}\n'
    assert errors.rewrite(400, harmless) == harmless
    own = b'{"message":"no such container ' + CI_ID.encode() + b'"}'
    assert errors.rewrite(500, own) == own
    revealing = b'{"message":"in use by ' + OTHER_ID[:12].encode() + b'"}'
    assert OTHER_ID[:12].encode() not in errors.rewrite(409, revealing)


def test_create_classes_are_listed_for_policies() -> None:
    """The documented names of the new classes are the module's."""
    assert {"log-drivers", "sysctls", "volumes"} <= set(bodies.CHECKS)
    assert set(bodies.EXEC_CHECKS) == {"privileged", "root-user", "env", "tty", "stdin"}


@pytest.mark.parametrize(("method", "target", "says"), [
    ("POST", "/exec/abc/start", "about exec 'abc' (the verdict depends on its container)"),
    ("GET", "/volumes/v1", "about volume 'v1' (the verdict depends on its labels)"),
    ("POST", "/volumes/create", "the verdict depends on the body"),
])
def test_explain_says_which_daemon_facts_an_exec_or_volume_verdict_needs(
        ci: policy.PolicyDecider, method: str, target: str, says: str) -> None:
    """explain asks the daemon nothing, so it says what the verdict would hinge on."""
    report, allowed = policy.explain(ci, method, target)
    assert not allowed
    assert report.splitlines()[-1].endswith(says)


def test_explain_rejects_a_space_in_a_container_reference_before_any_policy(
        ci: policy.PolicyDecider) -> None:
    """classify refuses it (no container can have such a name); check says so, not a crash."""
    report, allowed = policy.explain(ci, "GET", "/containers/a%20b/json")
    assert not allowed
    assert "rejected before any policy" in report
    assert "U+0020 in the container parameter" in report
