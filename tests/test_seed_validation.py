"""The seed's claims, checked: what the relay's identity can do through each proxy.

Every operation an attacker holding the relay's DOCKER_HOST would try is sent,
through dockgate with the relay's policy (restart and inspect of the gateway)
and through HAProxy running Tecnativa's rules (tests/haproxy/tecnativa.cfg)
with the seed's ``CONTAINERS=1 POST=1`` and with Tecnativa's tightest restart
setting ``POST=1 ALLOW_RESTARTS=1``, all in front of the real daemon. Each proxy
gets fresh target containers (HAProxy really stops, kills and removes them).
Denied means the proxy answered 403 itself; allowed means the daemon acted.

The table in docs/seed-validation.md is this test's output: the test fails when
the document differs; ``DOCKGATE_REGENERATE=1`` rewrites it.

Everything created is named ``dgtest-seed-<run>-...`` (containers, volumes,
networks) or ``dockgate-test/seed-probe`` (images) and removed afterwards; the
bind-mount "host path" is a temporary directory, never ``/``, and the container
made with it is never started. The before/after snapshot covers exactly what the
probes can reach (those names), so other tests sharing the daemon cannot disturb it.
"""

from __future__ import annotations

import difflib
import http.client
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import DOCKER_SOCKET, discard, free_port, tar_of, wait_for_port

pytestmark = pytest.mark.daemon

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "seed-validation.md"
BEGIN = "<!-- BEGIN GENERATED: tests/test_seed_validation.py -->"
END = "<!-- END GENERATED -->"
HAPROXY = "/usr/sbin/haproxy"
PROBE_IMAGE = "dockgate-test/seed-probe"


@dataclass
class Targets:
    """What one proxy's probes act on, created directly on the daemon."""

    prefix: str
    gateway: str
    victim: str
    doomed: dict[str, str]
    exec_id: str
    host_dir: Path
    image_tag: str

    def fill(self, template: str) -> str:
        return template.format(prefix=self.prefix, gateway=self.gateway, victim=self.victim,
                               exec_id=self.exec_id, host_dir=self.host_dir,
                               image=f"{PROBE_IMAGE}:{self.image_tag}", **self.doomed)


@dataclass(frozen=True)
class Probe:
    label: str
    method: str
    target: str
    body: Callable[[Targets], bytes] | None = None
    content_type: str = "application/json"

    @property
    def shown(self) -> str:
        """The request as the table shows it (placeholders, no run-specific names)."""
        return f"{self.method} {self.target.split('?')[0]}".replace("{prefix}", "")


def create_body(privileged: bool, bind: bool) -> Callable[[Targets], bytes]:
    def body(targets: Targets) -> bytes:
        host: dict[str, Any] = {"NetworkMode": "none", "Privileged": privileged}
        if bind:
            host["Binds"] = [f"{targets.host_dir}:/host"]
        return json.dumps({"Image": "dockgate-test/busybox:latest", "Cmd": ["true"],
                           "HostConfig": host}).encode()
    return body


PROBES = (
    Probe("ping", "GET", "/_ping"),
    Probe("version", "GET", "/version"),
    Probe("restart the gateway (the relay's job)", "POST", "/containers/{gateway}/restart?t=0"),
    Probe("inspect the gateway (relay readiness)", "GET", "/containers/{gateway}/json"),
    Probe("list containers", "GET", "/containers/json?all=1"),
    Probe("inspect another container (env: secrets)", "GET", "/containers/{victim}/json"),
    Probe("read another container's logs", "GET", "/containers/{victim}/logs?stdout=1&stderr=1"),
    Probe("read a file (archive)", "GET", "/containers/{victim}/archive?path=/etc/passwd"),
    Probe("write a file (archive)", "PUT", "/containers/{victim}/archive?path=/tmp",
          lambda _: tar_of({"probe.txt": b"written through the proxy\n"}), "application/x-tar"),
    Probe("export a container's filesystem", "GET", "/containers/{victim}/export"),
    Probe("exec: create", "POST", "/containers/{victim}/exec",
          lambda _: json.dumps({"Cmd": ["true"]}).encode()),
    Probe("exec: start", "POST", "/exec/{exec_id}/start",
          lambda _: json.dumps({"Detach": True}).encode()),
    Probe("create with a host bind mount", "POST", "/containers/create?name={prefix}bind",
          create_body(privileged=False, bind=True)),
    Probe("create a privileged container", "POST", "/containers/create?name={prefix}priv",
          create_body(privileged=True, bind=False)),
    Probe("remove another container", "DELETE", "/containers/{rm}?force=1"),
    Probe("stop another container", "POST", "/containers/{stop}/stop?t=0"),
    Probe("kill another container", "POST", "/containers/{kill}/kill"),
    Probe("restart another container", "POST", "/containers/{restart}/restart?t=0"),
    Probe("list images", "GET", "/images/json"),
    Probe("remove an image", "DELETE", "/images/{image}"),
    Probe("build an image", "POST", "/build?t={image}-built",
          lambda _: tar_of({"Dockerfile": b"FROM dockgate-test/busybox:latest\nRUN true\n"}),
          "application/x-tar"),
    Probe("list volumes", "GET", "/volumes"),
    Probe("create a volume", "POST", "/volumes/create",
          lambda t: json.dumps({"Name": f"{t.prefix}vol"}).encode()),
    Probe("list networks", "GET", "/networks"),
    Probe("create a network", "POST", "/networks/create",
          lambda t: json.dumps({"Name": f"{t.prefix}net", "Internal": True}).encode()),
    Probe("system info", "GET", "/info"),
)

RELAY_ONLY = {"ping", "version", "restart the gateway (the relay's job)",
              "inspect the gateway (relay readiness)"}


@dataclass(frozen=True)
class ProxyKind:
    column: str
    env: dict[str, str]
    haproxy: bool


PROXIES = (
    ProxyKind("dockgate, relay policy", {}, haproxy=False),
    ProxyKind("Tecnativa `CONTAINERS=1 POST=1` (seed)", {"CONTAINERS": "1", "POST": "1"},
              haproxy=True),
    ProxyKind("Tecnativa `POST=1 ALLOW_RESTARTS=1`", {"POST": "1", "ALLOW_RESTARTS": "1"},
              haproxy=True),
)


def make_targets(client: docker.DockerClient, tmp_path: Path, index: int) -> Targets:
    prefix = f"dgtest-seed-{uuid.uuid4().hex[:6]}-"
    names = {"gateway": f"{prefix}gw", "victim": f"{prefix}victim", "rm": f"{prefix}rm",
             "stop": f"{prefix}stop", "kill": f"{prefix}kill", "restart": f"{prefix}restart"}
    for key, name in names.items():
        environment = {"API_TOKEN": "secret-in-env"} if key == "victim" else {}
        client.containers.run("dockgate-test/busybox:latest", ["sleep", "3600"], name=name,
                              network_mode="none", detach=True, environment=environment)
    exec_id = client.api.exec_create(names["victim"], ["true"])["Id"]
    host_dir = tmp_path / f"host-path-{index}"
    host_dir.mkdir()
    tag = prefix.rstrip("-").removeprefix("dgtest-seed-")
    client.api.tag("dockgate-test/busybox:latest", PROBE_IMAGE, tag)
    doomed = {k: names[k] for k in ("rm", "stop", "kill", "restart")}
    return Targets(prefix, names["gateway"], names["victim"], doomed, exec_id, host_dir, tag)


def remove_targets(client: docker.DockerClient, targets: Targets) -> None:
    """Remove everything this run's names could have produced (cleanup, not measured)."""
    for container in client.containers.list(all=True, filters={"name": targets.prefix}):
        discard(container)
    for volume in client.volumes.list(filters={"name": targets.prefix}):
        volume.remove(force=True)
    for network in client.networks.list(names=[f"{targets.prefix}net"]):
        network.remove()
    for tag in (targets.image_tag, f"{targets.image_tag}-built"):
        reference = f"{PROBE_IMAGE}:{tag}"
        if client.images.list(name=reference):
            client.images.remove(reference)


def snapshot(client: docker.DockerClient, targets: Targets) -> dict[str, Any]:
    """The daemon state the probes could change: containers with StartedAt, images, volumes,
    networks, all restricted to this run's names."""
    containers = {}
    for container in client.containers.list(all=True, filters={"name": targets.prefix}):
        state = container.attrs["State"]
        containers[container.name] = (container.id, state["Status"], state["StartedAt"])
    files = client.api.get_archive(targets.victim, "/tmp")[0]
    return {
        "containers": containers,
        "victim /tmp": b"".join(files),
        "images": sorted(tag for image in client.images.list(name=PROBE_IMAGE)
                         for tag in image.tags if targets.image_tag in tag),
        "volumes": sorted(v.name for v in client.volumes.list(filters={"name": targets.prefix})),
        "networks": sorted(n.name for n in client.networks.list(names=[f"{targets.prefix}net"])),
    }


def send(port: int, probe: Probe, targets: Targets) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = probe.body(targets) if probe.body else None
    headers = {"Connection": "close"}
    if body is not None:
        headers["Content-Type"] = probe.content_type
    try:
        connection.request(probe.method, targets.fill(probe.target), body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def verdict(status: int, body: bytes, haproxy: bool) -> str:
    if status == 403:
        marker = b"Request forbidden by administrative rules" if haproxy else b"dockgate: "
        assert marker in body, body[:200]
        return "denied (403)"
    return f"allowed ({status})"


@dataclass
class Run:
    verdicts: dict[str, str]
    before: dict[str, Any]
    after: dict[str, Any]


def start_proxy(kind: ProxyKind, targets: Targets,
                log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER")}
    if kind.haproxy:
        # The image's defaults (EVENTS=1 PING=1 VERSION=1) under the combination.
        env.update({"EVENTS": "1", "PING": "1", "VERSION": "1", **kind.env,
                    "DG_HAPROXY_BIND": f"127.0.0.1:{port}",
                    "DG_HAPROXY_UPSTREAM": DOCKER_SOCKET, "DG_HAPROXY_LOG_LEVEL": "err"})
        command = [HAPROXY, "-db", "-f", str(ROOT / "tests" / "haproxy" / "tecnativa.cfg")]
    else:
        env.update({"ALLOW_RESTART_CONTAINERS": targets.gateway,
                    "ALLOW_INSPECT_CONTAINERS": targets.gateway})
        command = [sys.executable, "-m", "dockgate", "serve",
                   "--listen", f"tcp://127.0.0.1:{port}", "--upstream",
                   f"unix://{DOCKER_SOCKET}"]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.terminate()
        process.wait(timeout=15)
        raise RuntimeError(f"{kind.column} did not start: {log.read_text()}") from None
    return process, port


@pytest.fixture(scope="module")
def runs(docker_client: docker.DockerClient, busybox_image: str,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every probe through every proxy, each proxy with fresh targets."""
    work = tmp_path_factory.mktemp("seed")
    results = {}
    for index, kind in enumerate(PROXIES):
        targets = make_targets(docker_client, work, index)
        process = None
        try:
            process, port = start_proxy(kind, targets, work / f"proxy-{index}.log")
            before = snapshot(docker_client, targets)
            verdicts = {}
            for probe in PROBES:
                status, body = send(port, probe, targets)
                verdicts[probe.label] = verdict(status, body, kind.haproxy)
            results[kind.column] = Run(verdicts, before, snapshot(docker_client, targets))
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=15)
            remove_targets(docker_client, targets)
    return results


def render_table(runs: dict[str, Run]) -> str:
    columns = [kind.column for kind in PROXIES]
    lines = ["| Operation | Request | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for probe in PROBES:
        cells = [runs[column].verdicts[probe.label] for column in columns]
        lines.append(f"| {probe.label} | `{probe.shown}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def relay_column(runs: dict[str, Run]) -> Run:
    return runs[PROXIES[0].column]


def test_relay_identity_through_dockgate_is_denied_everything_but_its_job(
        runs: dict[str, Run]) -> None:
    """Holding the relay's DOCKER_HOST buys ping, version, and restart/inspect of the gateway."""
    for label, result in relay_column(runs).verdicts.items():
        expected = "allowed" if label in RELAY_ONLY else "denied (403)"
        assert result.startswith(expected), (label, result)


def test_denied_operations_leave_the_daemon_unchanged_through_dockgate(
        runs: dict[str, Run]) -> None:
    """Nothing but the gateway's StartedAt moves: no container, file, image, volume, network."""
    run = relay_column(runs)
    before, after = dict(run.before), dict(run.after)
    gateway = next(name for name in before["containers"] if name.endswith("-gw"))
    old_gateway, new_gateway = before["containers"].pop(gateway), after["containers"].pop(gateway)
    assert before == after
    assert new_gateway[1] == "running"
    assert new_gateway[2] != old_gateway[2], "the allowed restart of the gateway happened"


def test_seed_configuration_grants_what_amounts_to_root_on_the_host(
        runs: dict[str, Run]) -> None:
    """CONTAINERS=1 POST=1: host bind mounts, privileged containers, exec, files, removal."""
    seed = runs[PROXIES[1].column].verdicts
    for label in ("create with a host bind mount", "create a privileged container",
                  "exec: create", "read a file (archive)", "write a file (archive)",
                  "inspect another container (env: secrets)", "remove another container",
                  "stop another container", "kill another container"):
        assert seed[label].startswith("allowed"), (label, seed[label])
    assert seed["create with a host bind mount"] == "allowed (201)"


def test_tightest_tecnativa_setting_still_stops_and_kills_any_container(
        runs: dict[str, Run]) -> None:
    """ALLOW_RESTARTS is not scoped to one container, and it denies the readiness inspect."""
    tight = runs[PROXIES[2].column].verdicts
    for label in ("stop another container", "kill another container",
                  "restart another container", "restart the gateway (the relay's job)"):
        assert tight[label].startswith("allowed"), (label, tight[label])
    assert tight["inspect the gateway (relay readiness)"] == "denied (403)"


def test_validation_table_in_the_docs_is_the_generated_one(runs: dict[str, Run]) -> None:
    """docs/seed-validation.md shows this test's output (DOCKGATE_REGENERATE=1 rewrites it)."""
    text = DOC.read_text()
    assert BEGIN in text, f"{DOC} lacks the line {BEGIN}"
    assert END in text, f"{DOC} lacks the line {END}"
    head, _, rest = text.partition(BEGIN + "\n")
    _, _, tail = rest.partition(END)
    expected = f"{head}{BEGIN}\n{render_table(runs)}{END}{tail}"
    if os.environ.get("DOCKGATE_REGENERATE") == "1":
        DOC.write_text(expected)
        text = DOC.read_text()
    changes = "\n".join(difflib.unified_diff(text.splitlines(), expected.splitlines(),
                                             "docs/seed-validation.md", "generated", lineterm=""))
    assert text == expected, f"stale, rerun with DOCKGATE_REGENERATE=1:\n{changes}"
