"""The attack corpus's findings against a label-scoped "CI runner" policy, on the real daemon.

The policy creates from one image under ``create: deny: [all]``, manages only
containers carrying the run's label, runs execs in them as a non-root user, and
keeps its own named volumes. Beside it, an out-of-scope container and an
out-of-scope volume ("another client's") hold a secret. Each test is one class
of the corpus: the out-of-scope objects must stay invisible (the answer is the
same whether they exist or not) and out of reach, while the daemon's own errors
for in-scope requests still come through.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import pytest

from conftest import BUSYBOX_IMAGE, DockgateProcess, StartDockgate, unique_name

pytestmark = pytest.mark.daemon

DOCKER_CLI = "/usr/local/bin/docker"


@dataclass(frozen=True)
class Answer:
    """Everything a client reads: status line, headers, body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def message(self) -> str:
        return str(json.loads(self.body)["message"])


def call(proxy: DockgateProcess, method: str, target: str, body: object = None) -> Answer:
    """One request through the proxy; a dict body is sent as JSON, bytes as they are."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json"} if data is not None else {}
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    try:
        connection.request(method, target, body=data, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, response.reason,
                      tuple((k, v) for k, v in response.getheaders() if k != "Date"),
                      response.read())
    finally:
        connection.close()


@dataclass
class Setup:
    proxy: DockgateProcess
    label: str
    inside: Any      # a running container with the label: in scope
    outside: Any     # a running container without it, holding a secret in its volume
    their_volume: str
    client: docker.DockerClient

    def create_body(self, **host_config: object) -> dict[str, object]:
        return {"Image": BUSYBOX_IMAGE, "User": "1000", "Cmd": ["sleep", "60"],
                "Labels": {"dgtest.ci": self.label},
                "HostConfig": {"NetworkMode": "none", **host_config}}


def ci_policy(label: str) -> str:
    return f"""\
policies:
  ci:
    grants:
      - allow: [system.ping, system.version, image.inspect]
      - allow: [container.create]
        images: [{BUSYBOX_IMAGE}]
        create: {{deny: [all]}}
      - allow: [container.list, container.inspect, container.start, container.wait,
                container.delete, container.kill, container.attach, exec.*]
        containers: {{labels: {{dgtest.ci: "{label}"}}}}
        exec: {{deny: [privileged, root-user]}}
      - allow: [volume.create, volume.inspect, volume.list, volume.delete]
        volumes: {{own: true}}
        create: {{deny: [all]}}
default: ci
"""


def remove_volume(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_volume(name, force=True)


@pytest.fixture
def setup(docker_client: docker.DockerClient, busybox_image: str,
          start_dockgate: StartDockgate, tmp_path: Path) -> Iterator[Setup]:
    label = uuid.uuid4().hex[:8]
    their_volume = f"dgtest-theirs-{label}"
    docker_client.api.create_volume(their_volume, labels={"dockgate.policy": "other"})
    outside = docker_client.containers.run(
        busybox_image, ["sh", "-c", "echo s3cret > /v/secret; sleep 600"],
        name=unique_name("outside"), detach=True, network_mode="none",
        volumes={their_volume: {"bind": "/v", "mode": "rw"}})
    inside = docker_client.containers.run(
        busybox_image, ["sleep", "600"], name=unique_name("inside"), detach=True,
        network_mode="none", user="1000", labels={"dgtest.ci": label})
    path = tmp_path / "policy.yaml"
    path.write_text(ci_policy(label))
    proxy = start_dockgate(args=["--policy", str(path)])
    yield Setup(proxy, label, inside, outside, their_volume, docker_client)
    for container in docker_client.containers.list(all=True,
                                                   filters={"label": f"dgtest.ci={label}"}):
        container.remove(force=True)
    for container in (inside, outside):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    remove_volume(docker_client, their_volume)


def without(setup: Setup, container: Any, request: tuple[str, str]) -> tuple[Answer, Answer]:
    """The same request while ``container`` exists, and after it is gone."""
    present = call(setup.proxy, *request)
    container.remove(force=True)
    absent = call(setup.proxy, *request)
    return present, absent


def list_target(**filters: object) -> str:
    return "/v1.41/containers/json?all=1&filters=" + quote(json.dumps(filters))


# --- Scope disclosure ----------------------------------------------------------------

@pytest.mark.parametrize("how", ["before-name", "since-id", "before-map-form", "since-prefix"])
def test_reference_filters_answer_alike_whether_the_out_of_scope_container_exists(
        setup: Setup, how: str) -> None:
    """before/since probed which containers exist (200 [] vs 502); now one answer for both."""
    outside = setup.outside
    ref = {"before-name": outside.name, "since-id": outside.id,
           "before-map-form": outside.name, "since-prefix": outside.id[:12]}[how]
    key = "since" if how.startswith("since") else "before"
    value: object = {ref: True} if how == "before-map-form" else [ref]
    present, absent = without(setup, outside, ("GET", list_target(**{key: value})))
    assert present == absent
    assert (absent.status, absent.message) == (500, f"no such container {ref}")


def test_reference_filters_in_scope_and_the_daemons_own_errors_come_through(
        setup: Setup) -> None:
    """In scope the filter works; a bad filter gets the daemon's status and message."""
    newer = setup.client.containers.create(
        BUSYBOX_IMAGE, ["true"], name=unique_name("newer"), network_disabled=True,
        labels={"dgtest.ci": setup.label})
    listed = call(setup.proxy, "GET", list_target(before=[newer.name]))
    assert listed.status == 200
    assert [c["Id"] for c in json.loads(listed.body)] == [setup.inside.id]
    bad = call(setup.proxy, "GET", list_target(foo=["x"]))
    assert (bad.status, bad.body) == (400, b'{"message":"Invalid filter \'foo\'"}\n')
    unreadable = call(setup.proxy, "GET", "/v1.41/containers/json?filters=" + quote("{"))
    assert unreadable.status == 400


@pytest.mark.parametrize("holder", ["name", "id-prefix-name"])
def test_create_colliding_with_an_out_of_scope_name_gets_a_409_naming_nothing(
        setup: Setup, holder: str) -> None:
    """The daemon's 409 named the holder's full ID; dockgate's says only what was sent."""
    if holder == "name":
        name = setup.outside.name
    else:  # a container whose name is a 12-hex ID prefix, as in the corpus
        name = uuid.uuid4().hex[:12]
        setup.client.containers.create(BUSYBOX_IMAGE, ["true"], name=name,
                                       network_disabled=True)
    try:
        holder_id = setup.client.api.inspect_container(name)["Id"]
        answer = call(setup.proxy, "POST", f"/v1.41/containers/create?name={name}",
                      setup.create_body())
    finally:
        if holder != "name":
            setup.client.api.remove_container(name, force=True)
    assert answer.status == 409
    assert holder_id[:12].encode() not in answer.body
    assert answer.body == json.dumps({"message": (
        f'Conflict. The container name "/{name}" is already in use. You have to remove '
        "(or rename) that container to be able to reuse that name.")}).encode() + b"\n"


@pytest.mark.parametrize("request_", [
    ("GET", "/containers/{name}/json"), ("POST", "/containers/{id12}/start"),
    ("DELETE", "/containers/{id}?force=1"), ("POST", "/containers/{name}/exec"),
])
def test_out_of_scope_operations_answer_alike_whether_the_container_exists(
        setup: Setup, request_: tuple[str, str]) -> None:
    """By name, ID or prefix: one denial for someone else's container and for none."""
    outside = setup.outside
    method, template = request_
    target = template.format(name=outside.name, id=outside.id, id12=outside.id[:12])
    present, absent = without(setup, outside, (method, target))
    assert present == absent
    assert present.status == 403


# --- Another client's data through named volumes --------------------------------------

def test_restricted_create_naming_another_clients_volume_is_denied(setup: Setup) -> None:
    """Binds their-volume:/steal:ro read another client's secret; now it is refused."""
    for host_config in ({"Binds": [f"{setup.their_volume}:/steal:ro"]},
                        {"Mounts": [{"Type": "volume", "Source": setup.their_volume,
                                     "Target": "/steal", "ReadOnly": True}]}):
        answer = call(setup.proxy, "POST", "/containers/create",
                      setup.create_body(**host_config))
        assert answer.status == 403, answer
        assert setup.their_volume in answer.message
    missing = call(setup.proxy, "POST", "/containers/create",
                   setup.create_body(Binds=[f"dgtest-nobody-{setup.label}:/d"]))
    theirs = call(setup.proxy, "POST", "/containers/create",
                  setup.create_body(Binds=[f"{setup.their_volume}:/d"]))
    assert missing.message.replace(f"dgtest-nobody-{setup.label}", "V") == \
        theirs.message.replace(setup.their_volume, "V")
    volumes_from = call(setup.proxy, "POST", "/containers/create",
                        setup.create_body(VolumesFrom=[setup.outside.name]))
    assert volumes_from.status == 403
    assert call(setup.proxy, "GET", f"/volumes/{setup.their_volume}").status == 403
    assert call(setup.proxy, "DELETE", f"/volumes/{setup.their_volume}").status == 403
    assert setup.client.api.inspect_volume(setup.their_volume)["Name"] == setup.their_volume
    listed = json.loads(call(setup.proxy, "GET", "/volumes").body)
    assert setup.their_volume not in [v["Name"] for v in listed["Volumes"] or ()]


def test_own_and_anonymous_volumes_work_and_are_labelled_as_the_policys(
        setup: Setup) -> None:
    """volume.create marks the volume; a create mounting it, or anonymous ones, is allowed."""
    mine = f"dgtest-mine-{setup.label}"
    try:
        created = call(setup.proxy, "POST", "/volumes/create",
                       {"Name": mine, "Labels": {"dockgate.policy": "other"}})
        assert created.status == 201, created
        labels = setup.client.api.inspect_volume(mine)["Labels"]
        assert labels["dockgate.policy"] == "ci"
        for host_config in ({"Binds": [f"{mine}:/data"]},
                            {"Mounts": [{"Type": "volume", "Target": "/anon"}]}):
            answer = call(setup.proxy, "POST", "/containers/create",
                          setup.create_body(**host_config))
            assert answer.status == 201, answer
        listed = json.loads(call(setup.proxy, "GET", "/volumes").body)
        assert mine in [v["Name"] for v in listed["Volumes"]]
        taken = call(setup.proxy, "POST", "/volumes/create", {"Name": setup.their_volume})
        assert taken.status == 403
        unjudged = call(setup.proxy, "POST", "/volumes/create",
                        {"Name": f"{mine}-x", "ClusterVolumeSpec": {}})
        assert unjudged.status == 403
        assert "ClusterVolumeSpec" in unjudged.message
        bind = call(setup.proxy, "POST", "/volumes/create",
                    {"Name": f"{mine}-y", "DriverOpts": {"type": "none", "o": "bind",
                                                         "device": "/"}})
        assert bind.status == 403
        assert "DriverOpts" in bind.message
    finally:
        for container in setup.client.containers.list(
                all=True, filters={"label": f"dgtest.ci={setup.label}"}):
            if container.id != setup.inside.id:
                container.remove(force=True, v=True)
        remove_volume(setup.client, mine)


def test_docker_volume_create_then_docker_run_with_it_works(setup: Setup) -> None:
    """The CLI flow: docker volume create myvol; docker run -v myvol:/data; docker exec."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
           "DOCKER_HOST": setup.proxy.docker_host}
    volume = f"dgtest-myvol-{setup.label}"
    name = unique_name("run")

    def docker_cli(*args: str) -> str:
        done = subprocess.run([DOCKER_CLI, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, (args, done.stderr, setup.proxy.log()[-3000:])
        return done.stdout.strip()

    try:
        docker_cli("volume", "create", volume)
        docker_cli("run", "-d", "--name", name, "--network", "none", "--user", "1000",
                   "--label", f"dgtest.ci={setup.label}", "-v", f"{volume}:/data",
                   BUSYBOX_IMAGE, "sleep", "60")
        assert docker_cli("exec", "-u", "1000", name, "sh", "-c",
                          "ls -d /data && id -u") == "/data\n1000"
        denied = subprocess.run([DOCKER_CLI, "exec", name, "id"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert denied.returncode != 0
        assert "running as root" in denied.stderr
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            setup.client.api.remove_container(name, force=True)
        remove_volume(setup.client, volume)


# --- Log drivers ------------------------------------------------------------------------

SYSLOG = {"Type": "syslog", "Config": {"syslog-address": "udp://127.0.0.1:9"}}


def test_syslog_log_driver_is_denied_under_deny_all(setup: Setup) -> None:
    """The daemon would connect from the host's network namespace; the create is refused."""
    answer = call(setup.proxy, "POST", "/containers/create", setup.create_body(LogConfig=SYSLOG))
    assert answer.status == 403
    assert "log driver 'syslog'" in answer.message
    default = call(setup.proxy, "POST", "/containers/create",
                   setup.create_body(LogConfig={"Type": "json-file",
                                                "Config": {"max-size": "1m"}}))
    assert default.status == 201, default
    sysctl = call(setup.proxy, "POST", "/containers/create",
                  setup.create_body(Sysctls={"net.ipv4.ip_unprivileged_port_start": "0"}))
    assert sysctl.status == 403
    assert "HostConfig.Sysctls" in sysctl.message


def test_syslog_log_driver_is_allowed_when_the_grant_allows_it(
        docker_client: docker.DockerClient, busybox_image: str,
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """Granted explicitly (create: deny: without log-drivers), the create goes through."""
    path = tmp_path / "policy.yaml"
    path.write_text(f"policies:\n  p:\n    grants:\n      - allow: [container.create]\n"
                    f"        images: [{busybox_image}]\n"
                    "        create: {deny: [privileged, host-mounts, host-namespaces, "
                    "capabilities, devices, security-options, root-user, sysctls]}\n"
                    "default: p\n")
    proxy = start_dockgate(args=["--policy", str(path)])
    name = unique_name("syslog")
    answer = call(proxy, "POST", f"/containers/create?name={name}",
                  {"Image": busybox_image, "User": "1000", "Cmd": ["true"],
                   "HostConfig": {"NetworkMode": "none", "LogConfig": SYSLOG}})
    try:
        assert answer.status == 201, answer
        assert docker_client.api.inspect_container(name)["HostConfig"]["LogConfig"] == SYSLOG
    finally:
        docker_client.api.remove_container(name, force=True)


# --- Exec ---------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"Cmd":["id"],"User":"1000","Privileged":true}',
    b'{"Cmd":["id"],"User":"0"}',
    b'{"Cmd":["id"]}',
    b'{"Cmd":["id"],"User":"1000","user":"0"}',
    b'{"Cmd":["id"],"User":"1000","privileged":false,"PRIVILEGED":true}',
    b'{"Cmd":["id"],"User":"1000","Us\\u0065r":"0:0"}',
])
def test_exec_create_as_root_or_privileged_is_denied_in_every_spelling(
        setup: Setup, body: bytes) -> None:
    """dockgate forwarded {"Privileged": true, "User": "0"}; the exec grant now refuses it."""
    answer = call(setup.proxy, "POST", f"/containers/{setup.inside.name}/exec", body)
    assert answer.status == 403, answer
    assert "the exec asks for" in answer.message
    assert setup.client.api.inspect_container(setup.inside.id)["ExecIDs"] is None


def test_exec_start_follows_the_exec_to_its_container_and_is_pinned(setup: Setup) -> None:
    """Someone else's exec is denied like no exec at all; an in-scope one runs, by full ID."""
    foreign = setup.client.api.exec_create(setup.outside.id, ["true"])["Id"]
    own = setup.client.api.exec_create(setup.inside.id, ["true"], user="1000")["Id"]
    start = {"Detach": True, "Tty": False}
    denied = call(setup.proxy, "POST", f"/exec/{foreign}/start", start)
    unknown = call(setup.proxy, "POST", f"/exec/{'0' * 64}/start", start)
    assert denied.status == 403
    assert denied.body.replace(foreign.encode(), b"X") == unknown.body.replace(b"0" * 64, b"X")
    assert call(setup.proxy, "GET", f"/exec/{foreign}/json").status == 403
    assert not setup.client.api.exec_inspect(foreign)["Running"]
    assert setup.client.api.exec_inspect(foreign)["Pid"] == 0
    allowed = call(setup.proxy, "POST", f"/exec/{own}/start", start)
    assert allowed.status == 200, allowed
    inspected = call(setup.proxy, "GET", f"/exec/{own}/json")
    assert json.loads(inspected.body)["ContainerID"] == setup.inside.id
    records = [json.loads(line) for line in setup.proxy.log().splitlines()
               if line.startswith("{") and '"operation":"exec.start"' in line]
    assert [r["decision"] for r in records] == ["deny", "deny", "allow"]
    assert records[-1]["forwarded"] == f"/exec/{own}/start"


def test_daemon_errors_for_in_scope_execs_still_come_through(setup: Setup) -> None:
    """An exec in a stopped in-scope container: the daemon's own 409 and message."""
    stopped = setup.client.containers.create(
        BUSYBOX_IMAGE, ["true"], name=unique_name("stopped"), network_disabled=True,
        labels={"dgtest.ci": setup.label})
    answer = call(setup.proxy, "POST", f"/containers/{stopped.name}/exec",
                  {"Cmd": ["id"], "User": "1000"})
    assert answer.status == 409
    assert answer.message == f"Container {stopped.id} is not running"


def test_exec_deny_all_and_commands_leave_only_the_listed_commands(
        setup: Setup, start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """exec: deny: [all] with commands: refuses Env, Tty, stdin and any other command."""
    path = tmp_path / "exec-policy.yaml"
    path.write_text(f"""\
policies:
  p:
    grants:
      - allow: [exec.create, exec.start]
        containers: {{labels: {{dgtest.ci: "{setup.label}"}}}}
        exec: {{deny: [all], commands: [[cat, "/etc/*"]]}}
default: p
""")
    proxy = start_dockgate(args=["--policy", str(path)])
    target = f"/containers/{setup.inside.name}/exec"
    plain = {"Cmd": ["cat", "/etc/passwd"], "User": "1000", "AttachStdout": True}
    for extra, says in (({"Env": ["A=1"]}, "Env"), ({"Tty": True}, "Tty"),
                        ({"AttachStdin": True}, "AttachStdin"),
                        ({"Cmd": ["sh", "-c", "cat /etc/passwd"]}, "matches none")):
        answer = call(proxy, "POST", target, {**plain, **extra})
        assert answer.status == 403, (extra, answer)
        assert says in answer.message
    created = call(proxy, "POST", target, plain)
    assert created.status == 201, created
    exec_id = json.loads(created.body)["Id"]
    started = call(proxy, "POST", f"/exec/{exec_id}/start", {"Detach": True})
    assert started.status == 200, started
