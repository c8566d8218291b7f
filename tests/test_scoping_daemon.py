"""Container-scoped policies against the real daemon, through ``python -m dockgate serve``.

The restart-only policy must let the docker CLI and docker-py restart exactly one
container by any reference to it, refuse everything else with 403, and leave the
daemon as it was: checked by a snapshot of containers, images, volumes and
networks before and after.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import (
    BUSYBOX_IMAGE,
    DockgateProcess,
    StartDockgate,
    daemon_is_podman,
    tar_of,
    unique_name,
)

pytestmark = pytest.mark.daemon

DOCKER_CLI = "/usr/local/bin/docker"


@dataclass
class Reply:
    status: int
    body: bytes

    @property
    def message(self) -> str:
        return str(json.loads(self.body)["message"])


def call(proxy: DockgateProcess, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    """One request through the proxy on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.read())
    finally:
        connection.close()


def run_container(client: docker.DockerClient, image: str, name: str) -> Any:
    return client.containers.run(image, ["sleep", "600"], name=name, detach=True,
                                 network_mode="none")


def remove(container: Any) -> None:
    """Remove a test container and wait until it is gone.

    The session-wide cleanup of a concurrent test run (conftest removes every
    ``dgtest-`` container) may be removing it already: that is not a failure.
    """
    with contextlib.suppress(docker.errors.NotFound):
        try:
            container.remove(force=True)
        except docker.errors.APIError as error:
            if error.status_code != 409:
                raise
        container.wait(condition="removed", timeout=30)


def write_policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def restart_only(gw: str) -> str:
    return (f"policies:\n  gw:\n    grants:\n      - allow: [system.ping, system.version]\n"
            f"      - allow: [container.restart]\n        containers: {{names: [{gw}]}}\n"
            "default: gw\n")


def started_at(client: docker.DockerClient, name: str) -> str:
    return str(client.api.inspect_container(name)["State"]["StartedAt"])


def snapshot(client: docker.DockerClient) -> dict[str, Any]:
    """What a denied request of these tests could have changed on the daemon.

    The daemon is shared with other test sessions, so only the objects these
    requests name are compared: this module's containers (state and StartedAt),
    the busybox test image, any image a denied pull or build would have tagged,
    volumes and networks named like ours, the swarm state and the plugins.
    """
    api = client.api
    return {
        "containers": sorted((c["Id"], tuple(c["Names"]), c["State"],
                              api.inspect_container(c["Id"])["State"]["StartedAt"])
                             for c in api.containers(all=True, filters={"name": "dgtest-pol-"})),
        "images": (api.inspect_image(BUSYBOX_IMAGE)["Id"],
                   sorted(tag for i in api.images() for tag in i.get("RepoTags") or ()
                          if tag.startswith(("busybox:", "dgtest-pol")))),
        "volumes": sorted(v["Name"] for v in api.volumes().get("Volumes") or ()
                          if v["Name"].startswith("dgtest-pol")),
        "networks": sorted(n["Id"] for n in api.networks(names=["dgtest-pol-net"])),
        "swarm": client.info()["Swarm"]["LocalNodeState"],
        "plugins": None if daemon_is_podman() else api.plugins(),  # Podman has no plugins
    }


@pytest.fixture
def gw_and_other(docker_client: docker.DockerClient,
                 busybox_image: str) -> Iterator[tuple[Any, Any]]:
    """Two running containers: the one the policy names, and one it must not touch."""
    gw = run_container(docker_client, busybox_image, unique_name("pol-gw"))
    other = run_container(docker_client, busybox_image, unique_name("pol-other"))
    yield gw, other
    for container in (gw, other):
        remove(container)


def denied_requests(gw: str, other: str, other_id: str,
                    image: str) -> list[tuple[str, str, bytes | None]]:
    """Everything a restart-only client might try besides restarting gw."""
    create = json.dumps({"Image": image, "Cmd": ["true"],
                         "HostConfig": {"NetworkMode": "none"}}).encode()
    create_bind = json.dumps({"Image": image, "Cmd": ["true"],
                              "HostConfig": {"NetworkMode": "none",
                                             "Binds": ["/:/host"]}}).encode()
    return [
        ("POST", f"/containers/{other}/restart", None),
        ("POST", f"/v1.41/containers/{other_id[:12]}/restart", None),
        ("POST", f"/containers/{other_id}/restart", None),
        ("POST", f"/containers/create?name={gw}-new", create),
        ("POST", f"/containers/create?name={gw}-bind", create_bind),
        ("DELETE", f"/containers/{gw}?force=1", None),
        ("GET", f"/containers/{gw}/json", None),
        ("POST", f"/containers/{gw}/exec", b'{"Cmd": ["true"]}'),
        ("GET", f"/containers/{gw}/logs?stdout=1", None),
        ("POST", f"/containers/{gw}/attach?stream=1&stdout=1", None),
        ("GET", f"/containers/{gw}/attach/ws?stream=1&stdin=1", None),
        ("GET", f"/containers/{gw}/archive?path=/etc", None),
        ("PUT", f"/containers/{gw}/archive?path=/tmp", tar_of({"x": b"x"})),
        ("GET", f"/containers/{gw}/export", None),
        ("POST", f"/containers/{gw}/stop", None),
        ("POST", f"/containers/{gw}/kill", None),
        ("POST", f"/containers/{gw}/rename?name={gw}-renamed", None),
        ("POST", "/containers/prune", None),
        ("GET", "/containers/json", None),
        ("GET", "/images/json", None),
        ("POST", "/images/create?fromImage=busybox&tag=latest", None),
        ("DELETE", f"/images/{image}", None),
        ("GET", "/volumes", None),
        ("POST", "/volumes/create", b'{"Name": "dgtest-pol-vol"}'),
        ("GET", "/networks", None),
        ("POST", "/networks/create", b'{"Name": "dgtest-pol-net"}'),
        ("POST", "/build?t=dgtest-pol-build", tar_of({"Dockerfile": b"FROM scratch\n"})),
        ("GET", "/swarm", None),
        ("POST", "/swarm/init", b'{"ListenAddr": "127.0.0.1"}'),
        ("GET", "/plugins", None),
        ("POST", "/plugins/pull?remote=x", b"[]"),
        ("GET", "/info", None),
        ("GET", "/events", None),
    ]


def test_restart_only_policy_restarts_gw_by_every_reference_and_refuses_everything_else(
        docker_client: docker.DockerClient, busybox_image: str, start_dockgate: StartDockgate,
        gw_and_other: tuple[Any, Any], tmp_path: Path) -> None:
    """The issue's acceptance case: one container restartable, nothing else, state unchanged."""
    gw, other = gw_and_other
    proxy = start_dockgate(args=["--policy", write_policy(tmp_path, restart_only(gw.name))])
    env = {**os.environ, "DOCKER_HOST": proxy.docker_host}

    before = started_at(docker_client, gw.name)
    cli = subprocess.run([DOCKER_CLI, "restart", "-t", "0", gw.name], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    api = docker.APIClient(base_url=proxy.url, version="auto", timeout=60)
    for reference in (gw.name, gw.id, gw.id[:12]):
        after = started_at(docker_client, gw.name)
        assert after != before
        before = after
        api.restart(reference, timeout=0)
    assert started_at(docker_client, gw.name) != before
    # The audit log shows what each reference was pinned to: gw's full ID, every time.
    restarts = [json.loads(line) for line in proxy.log().splitlines()
                if line.startswith("{") and '"operation":"container.restart"' in line]
    assert [r["resource"]["container"] for r in restarts] == [gw.name, gw.name, gw.id,
                                                               gw.id[:12]]
    assert {r["forwarded"].split("/containers/")[1].split("/")[0] for r in restarts} == {gw.id}

    state = snapshot(docker_client)
    out_of_scope = None
    for method, target, body in denied_requests(gw.name, other.name, other.id, busybox_image):
        headers = {"Content-Type": "application/json"} if body and body[:1] in b"{[" else {}
        reply = call(proxy, method, target, body, headers)
        assert reply.status == 403, (method, target, reply)
        assert reply.message.startswith(f"dockgate: {method} "), reply.message
        if target == f"/containers/{other.name}/restart":
            out_of_scope = reply.message
    for command in (["rm", "-f", gw.name], ["exec", gw.name, "true"],
                    ["run", "--rm", "--network", "none", "-v", "/:/host", busybox_image, "true"],
                    ["inspect", gw.name], ["logs", gw.name], ["images"]):
        cli = subprocess.run([DOCKER_CLI, *command], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
        assert cli.returncode != 0, command
        assert "dockgate:" in cli.stderr, (command, cli.stderr)
    assert snapshot(docker_client) == state
    assert out_of_scope == (f"dockgate: POST /containers/{other.name}/restart denied — "
                            f"container.restart of container {other.name!r} is not granted "
                            "by policy 'gw' (its container scope does not cover this "
                            "container)")
    api.close()


def test_similar_names_never_match_and_a_container_renamed_to_gw_takes_over(
        docker_client: docker.DockerClient, busybox_image: str, start_dockgate: StartDockgate,
        tmp_path: Path) -> None:
    """gw2 and xgw are other containers; after gw is gone, the new gw is in scope (documented)."""
    gw_name = unique_name("pol-gw")
    gw = run_container(docker_client, busybox_image, gw_name)
    gw2 = run_container(docker_client, busybox_image, gw_name + "2")
    # "xgw": gw's name with a prefix (kept inside the dgtest-pol- namespace).
    xgw = run_container(docker_client, busybox_image, "dgtest-pol-" + gw_name)
    proxy = start_dockgate(args=["--policy", write_policy(tmp_path, restart_only(gw_name))])
    try:
        for container in (gw2, xgw):
            before = started_at(docker_client, container.name)
            reply = call(proxy, "POST", f"/containers/{container.name}/restart?t=0")
            assert reply.status == 403
            assert started_at(docker_client, container.name) == before
        unknown = call(proxy, "POST", "/containers/dgtest-pol-nothing-here/restart")
        assert unknown.status == 403
        assert unknown.message == (
            "dockgate: POST /containers/dgtest-pol-nothing-here/restart denied — "
            "container.restart of container 'dgtest-pol-nothing-here' is not granted by "
            "policy 'gw' (its container scope does not cover this container)")

        remove(gw)
        missing = call(proxy, "POST", f"/containers/{gw_name}/restart?t=0")
        assert (missing.status, missing.message) == (404, f"No such container: {gw_name}")
        gw2.rename(gw_name)
        before = started_at(docker_client, gw2.id)
        assert call(proxy, "POST", f"/containers/{gw_name}/restart?t=0").status == 204
        assert started_at(docker_client, gw2.id) != before
    finally:
        for container in (gw2, xgw):
            remove(container)


def test_an_ambiguous_id_prefix_is_denied_like_an_out_of_scope_container(
        docker_client: docker.DockerClient, busybox_image: str, start_dockgate: StartDockgate,
        tmp_path: Path) -> None:
    """A prefix that names two containers must not reveal that they exist."""
    created = []
    try:
        while True:
            ids = [c["Id"] for c in docker_client.api.containers(all=True)]
            firsts = [i[0] for i in ids]
            shared = sorted({f for f in firsts if firsts.count(f) > 1})
            if shared:
                break
            created.append(docker_client.containers.create(
                busybox_image, ["true"], name=unique_name("pol-amb"), network_mode="none"))
        proxy = start_dockgate(args=["--policy", write_policy(tmp_path,
                                                              restart_only("dgtest-none"))])
        reply = call(proxy, "POST", f"/containers/{shared[0]}/restart")
        assert reply.status == 403
        assert reply.message == (
            f"dockgate: POST /containers/{shared[0]}/restart denied — container.restart of "
            f"container {shared[0]!r} is not granted by policy 'gw' (its container scope does "
            "not cover this container)")
    finally:
        for container in created:
            remove(container)


def read_until_started(stream: Iterator[Any], container_id: str) -> list[dict[str, Any]]:
    """Events of ``stream`` up to the start of ``container_id`` (bounded: 1,000 events)."""
    events: list[dict[str, Any]] = []
    for event in stream:
        events.append(event)
        if ((event.get("Action") == "start" and event.get("Actor", {}).get("ID") == container_id)
                or len(events) >= 1000):
            break
    return events


def test_a_scoped_list_and_event_stream_show_only_the_containers_in_scope(
        docker_client: docker.DockerClient, start_dockgate: StartDockgate,
        gw_and_other: tuple[Any, Any], tmp_path: Path) -> None:
    """GET /containers/json and /events must not reveal containers outside the scope."""
    gw, other = gw_and_other
    policy_text = (f"policies:\n  see:\n    grants:\n      - allow: [container.list, "
                   f"system.events]\n        containers: {{names: [{gw.name}]}}\n"
                   "default: see\n")
    proxy = start_dockgate(args=["--policy", write_policy(tmp_path, policy_text)])
    listed = json.loads(call(proxy, "GET", "/containers/json?all=1").body)
    assert [c["Id"] for c in listed] == [gw.id]

    # Live streams, through the proxy and straight from the daemon, opened before the
    # restarts (Podman replays no past events; dockerd and Podman both stream live).
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request("GET", "/events")
    stream = connection.getresponse()
    assert stream.status == 200
    direct = docker_client.api.events(decode=True)
    try:
        docker_client.api.restart(other.id, timeout=0)
        docker_client.api.restart(gw.id, timeout=0)
        # other restarted first: its events would come before gw's last start.
        events = read_until_started(map(json.loads, iter(stream.readline, b"")), gw.id)
        seen_direct = read_until_started(direct, gw.id)
    finally:
        direct.close()
        connection.close()
    assert {e["Actor"]["ID"] for e in events} == {gw.id}
    assert {e["Type"] for e in events} == {"container"}
    assert {e["Actor"]["ID"] for e in seen_direct} >= {gw.id, other.id}


def test_the_environment_grant_serves_docker_py_and_inspect_needs_its_own_variable(
        docker_client: docker.DockerClient, start_dockgate: StartDockgate,
        gw_and_other: tuple[Any, Any]) -> None:
    """ALLOW_RESTART_CONTAINERS alone suits api.restart; containers.get() also needs inspect."""
    gw, other = gw_and_other
    restart_only_proxy = start_dockgate(env={"ALLOW_RESTART_CONTAINERS": gw.name})
    client = docker.DockerClient(base_url=restart_only_proxy.url, version="auto", timeout=60)
    before = started_at(docker_client, gw.name)
    client.api.restart(gw.name, timeout=0)
    assert started_at(docker_client, gw.name) != before
    with pytest.raises(docker.errors.APIError) as caught:
        client.containers.get(gw.name)
    assert caught.value.status_code == 403
    client.close()

    both = start_dockgate(env={"ALLOW_RESTART_CONTAINERS": gw.name,
                               "ALLOW_INSPECT_CONTAINERS": gw.name})
    client = docker.DockerClient(base_url=both.url, version="auto", timeout=60)
    before = started_at(docker_client, gw.name)
    client.containers.get(gw.name).restart(timeout=0)
    assert started_at(docker_client, gw.name) != before
    with pytest.raises(docker.errors.APIError) as caught:
        client.containers.get(other.name)
    assert caught.value.status_code == 403
    client.close()


def test_create_constraints_and_start_bodies_are_enforced_through_the_proxy(
        docker_client: docker.DockerClient, busybox_image: str, start_dockgate: StartDockgate,
        tmp_path: Path) -> None:
    """docker create with host access is refused; a clean one runs; start bodies are refused."""
    policy_text = ("policies:\n  ci:\n    grants:\n      - allow: [system.ping, system.version]\n"
                   "      - allow: [container.create]\n        images: [dockgate-test/*]\n"
                   "        create: {deny: [all]}\n      - allow: [container.start]\n"
                   "        containers: {globs: [dgtest-pol-ci-*]}\ndefault: ci\n")
    proxy = start_dockgate(args=["--policy", write_policy(tmp_path, policy_text)])
    env = {**os.environ, "DOCKER_HOST": proxy.docker_host}
    name = unique_name("pol-ci")
    base = [DOCKER_CLI, "create", "--network", "none", "--user", "1000"]
    for extra in (["-v", "/:/host"], ["--privileged"], ["--pid", "host"],
                  ["--cap-add", "SYS_ADMIN"], ["--security-opt", "seccomp=unconfined"]):
        cli = subprocess.run([*base, "--name", f"{name}-bad", *extra, busybox_image, "true"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        assert cli.returncode != 0, extra
        assert "container.create: the create body asks for" in cli.stderr, cli.stderr
    root = subprocess.run([DOCKER_CLI, "create", "--network", "none", "--name", f"{name}-root",
                           busybox_image, "true"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert "running as root" in root.stderr
    cli = subprocess.run([*base, "--name", name, busybox_image, "sleep", "600"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    try:
        configured = call(proxy, "POST", f"/v1.23/containers/{name}/start",
                          b'{"Binds": ["/:/host"], "Privileged": true}',
                          {"Content-Type": "application/json"})
        assert configured.status == 403
        assert docker_client.api.inspect_container(name)["State"]["Status"] == "created"
        start = subprocess.run([DOCKER_CLI, "start", name], env=env, capture_output=True,
                               text=True, timeout=60, check=False)
        assert start.returncode == 0, start.stderr
        state = docker_client.api.inspect_container(name)
        assert state["State"]["Running"]
        assert not state["HostConfig"]["Binds"]  # None from dockerd, [] from Podman
        assert state["HostConfig"]["Privileged"] is False
        assert docker_client.containers.list(all=True, filters={"name": f"{name}-"}) == []
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(name, force=True)


@pytest.mark.parametrize("shadow", ["HostCon\ufb01g", "Ho\ufb06Config"])
def test_a_create_body_the_daemon_reads_as_privileged_is_refused_in_any_key_spelling(
        docker_client: docker.DockerClient, busybox_image: str, start_dockgate: StartDockgate,
        tmp_path: Path, shadow: str) -> None:
    """A key dockerd skips (a ligature) must not hide the HostConfig it reads."""
    body = json.dumps({"Image": busybox_image, "User": "1000", "HostConfig": {"Privileged": True},
                       shadow: {"Privileged": False}}).encode()
    direct = unique_name("pol-shadow")
    # The daemon itself, sent the same bytes, creates a privileged container.
    created = docker_client.api.post(f"{docker_client.api.base_url}/containers/create",
                                     data=body, params={"name": direct},
                                     headers={"Content-Type": "application/json"})
    try:
        assert created.status_code == 201, created.text
        assert docker_client.api.inspect_container(direct)["HostConfig"]["Privileged"] is True
    finally:
        docker_client.api.remove_container(direct, force=True)
    policy_text = ("policies:\n  ci:\n    grants:\n      - allow: [container.create]\n"
                   "        create: {deny: [all]}\ndefault: ci\n")
    proxy = start_dockgate(args=["--policy", write_policy(tmp_path, policy_text)])
    name = unique_name("pol-shadow")
    reply = call(proxy, "POST", f"/containers/create?name={name}", body,
                 {"Content-Type": "application/json"})
    assert reply.status == 403, reply.body
    assert "privileged mode" in reply.message
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


def test_a_policy_file_beats_the_restart_variable_which_beats_tecnativa_variables(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """The documented precedence: --policy, then ALLOW_RESTART_CONTAINERS, then Tecnativa's."""
    absent = unique_name("pol-absent")  # never created: nothing on the daemon changes
    restart = f"/containers/{absent}/restart"
    variables = start_dockgate(env={"ALLOW_RESTART_CONTAINERS": absent, "CONTAINERS": "1",
                                    "POST": "1"})
    listing = call(variables, "GET", "/containers/json")
    assert listing.status == 403, "CONTAINERS=1 must be ignored under ALLOW_RESTART_CONTAINERS"
    assert "ALLOW_RESTART_CONTAINERS" in listing.message
    missing = call(variables, "POST", restart)
    assert (missing.status, missing.message) == (404, f"No such container: {absent}")

    ping_only = ("policies:\n  p:\n    grants:\n      - allow: [system.ping]\n"
                 "default: p\n")
    file_first = start_dockgate(env={"ALLOW_RESTART_CONTAINERS": absent},
                                args=["--policy", write_policy(tmp_path, ping_only)])
    assert call(file_first, "GET", "/_ping").status == 200
    denied = call(file_first, "POST", restart)
    assert denied.status == 403
    assert "is not granted by policy 'p'" in denied.message


def wait_for_status(proxy: DockgateProcess, target: str, status: int) -> int:
    """Poll a restart through the proxy until it answers ``status`` (a reload is async)."""
    deadline = time.monotonic() + 10
    while True:
        got = call(proxy, "POST", target).status
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_sighup_reloads_the_policy_file_and_an_invalid_file_keeps_the_old_policy(
        start_dockgate: StartDockgate, gw_and_other: tuple[Any, Any], tmp_path: Path) -> None:
    """Reloading re-reads the same file; a broken edit must not open or close anything."""
    gw, other = gw_and_other
    path = write_policy(tmp_path, restart_only(gw.name))
    proxy = start_dockgate(args=["--policy", path])
    assert call(proxy, "POST", f"/containers/{other.name}/restart?t=0").status == 403

    Path(path).write_text(restart_only(other.name))
    proxy.process.send_signal(signal.SIGHUP)
    assert wait_for_status(proxy, f"/containers/{other.name}/restart?t=0", 204) == 204
    assert call(proxy, "POST", f"/containers/{gw.name}/restart?t=0").status == 403

    Path(path).write_text(restart_only(gw.name).replace("container.restart",
                                                        "container.restat"))
    proxy.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "container.restat" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"{path}:5: unknown operation 'container.restat'" in proxy.log()
    assert call(proxy, "POST", f"/containers/{other.name}/restart?t=0").status == 204
    assert call(proxy, "POST", f"/containers/{gw.name}/restart?t=0").status == 403
