"""deploy/kubernetes: the DaemonSet and its Helm chart, validated offline and run as a pod would.

kubernetes-validate ships the Kubernetes JSON schemas inside its wheel, so validation needs
no cluster and no network. Helm is not installable here: tests/chartrender.py renders the
chart's template subset (see its docstring).
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chartrender import TemplateError, manifests, render_chart, render_template
from conftest import DOCKER_SOCKET, ROOT, unique_name
from dockgate import policy

CHART = ROOT / "deploy" / "kubernetes" / "chart" / "dockgate"
PLAIN = ROOT / "deploy" / "kubernetes" / "dockgate.yaml"
HEADER = """\
# dockgate as a DaemonSet: one proxy per node. docs/deploy-kubernetes.md explains it.
# Generated from the Helm chart in chart/dockgate with its default values (release and
# namespace "dockgate") by tests/test_kubernetes.py; edit the chart, then regenerate
# with DOCKGATE_REGENERATE=1.
#
#   kubectl create namespace dockgate
#   kubectl apply -n dockgate -f deploy/kubernetes/dockgate.yaml
"""
# The oldest and the newest Kubernetes the installed kubernetes-validate has schemas for
# (internalTrafficPolicy, used by the tcp listener's Service, is GA since 1.26).
VERSIONS = ["1.26.0", kubernetes_validate.latest_version()]
TCP = {"listener": {"kind": "tcp", "port": 2380}, "admin": {"port": 9200},
       "dockerSocketGroup": 0, "image": {"tag": "0.1.0"},
       "resources": {"limits": {"memory": "64Mi"}},
       "nodeSelector": {"kubernetes.io/os": "linux"},
       "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
       "policy": "version: 1\npolicies:\n  p: {grants: [{allow: [system.ping]}]}\ndefault: p\n"}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def container_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = by_kind(objects)["DaemonSet"]["spec"]["template"]["spec"][
        "containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_the_plain_manifests_are_the_chart_with_default_values() -> None:
    """One source of truth: deploy/kubernetes/dockgate.yaml is generated from the chart."""
    expected = HEADER + render_chart(CHART)
    if os.environ.get("DOCKGATE_REGENERATE") == "1" and PLAIN.read_text() != expected:
        PLAIN.write_text(expected)
    assert PLAIN.read_text() == expected, ("deploy/kubernetes/dockgate.yaml is stale: run "
                                           "DOCKGATE_REGENERATE=1 pytest tests/test_kubernetes.py")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", [None, TCP], ids=["defaults", "tcp-custom"])
def test_the_rendered_chart_validates_against_the_kubernetes_schemas(
        version: str, values: dict[str, Any] | None) -> None:
    """Strict schemas: an unknown field (a typo in a security setting) is an error too."""
    objects = manifests(render_chart(CHART, values))
    assert sorted(obj["kind"] for obj in objects) == (
        ["ConfigMap", "DaemonSet"] if values is None else ["ConfigMap", "DaemonSet", "Service"])
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(("path", "value"), [
    (["spec", "template", "spec", "containers", 0, "securityContext",
      "readOnlyRootFilesytem"], True),
    (["spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"], "admin"),
    (["spec", "template", "spec", "securityContext", "runAsUser"], "dockgate"),
])
def test_the_validation_rejects_a_broken_daemonset(path: list[Any], value: Any) -> None:
    """The check really checks: a misspelt field or a wrong type fails it."""
    daemonset = copy.deepcopy(by_kind(manifests(PLAIN.read_text()))["DaemonSet"])
    node = daemonset
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def test_the_daemonset_is_non_root_read_only_and_without_capabilities() -> None:
    """The pod gets the socket's group, not root; nothing on it may write or escalate."""
    pod = by_kind(manifests(PLAIN.read_text()))["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
        "supplementalGroups": [999], "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["docker-socket"] == {"name": "docker-socket",
                                       "mountPath": "/var/run/docker.sock", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["docker-socket"]["hostPath"] == {"path": "/var/run/docker.sock",
                                                    "type": "Socket"}
    assert volumes["listener"]["hostPath"] == {"path": "/run/dockgate", "type": "Directory"}


def test_the_probes_use_the_admin_listener() -> None:
    """Liveness is /healthz, readiness /readyz, on the port DOCKGATE_ADMIN_LISTEN opens."""
    container = container_of(manifests(PLAIN.read_text()))
    assert env_of(container)["DOCKGATE_ADMIN_LISTEN"] == "0.0.0.0:9102"
    assert container["ports"] == [{"name": "admin", "containerPort": 9102}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


def test_custom_values_switch_to_a_node_local_tcp_service() -> None:
    """listener.kind=tcp: a Service whose traffic stays on the client's node, no hostPath."""
    objects = manifests(render_chart(CHART, TCP, release="gate", namespace="infra"))
    kinds = by_kind(objects)
    service = kinds["Service"]
    assert service["metadata"] == {"name": "gate", "namespace": "infra", "labels": {
        "app.kubernetes.io/name": "dockgate", "app.kubernetes.io/instance": "gate"}}
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert service["spec"]["ports"] == [{"name": "docker-api", "port": 2380,
                                         "targetPort": "docker-api"}]
    container = container_of(objects)
    assert env_of(container)["DOCKGATE_LISTEN"] == "tcp://0.0.0.0:2380"
    assert env_of(container)["DOCKGATE_ADMIN_LISTEN"] == "0.0.0.0:9200"
    assert {"name": "docker-api", "containerPort": 2380} in container["ports"]
    assert container["image"] == "dockgate-test/dockgate:0.1.0"
    # Maps merge key by key over values.yaml, as in Helm.
    assert container["resources"] == {"limits": {"cpu": "500m", "memory": "64Mi"},
                                      "requests": {"cpu": "10m", "memory": "32Mi"}}
    assert "listener" not in {m["name"] for m in container["volumeMounts"]}
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["supplementalGroups"] == [0]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"operator": "Exists", "effect": "NoSchedule"}]
    assert kinds["ConfigMap"]["data"]["policy.yaml"] == TCP["policy"]


def test_a_changed_policy_changes_the_pod_template() -> None:
    """The policy's hash is a pod annotation, so a new policy rolls the DaemonSet."""
    def annotation(values: dict[str, Any] | None) -> str:
        pod = by_kind(manifests(render_chart(CHART, values)))["DaemonSet"]["spec"]["template"]
        value: str = pod["metadata"]["annotations"]["dockgate/policy-sha256"]
        return value
    assert annotation(None) != annotation({"policy": TCP["policy"]})
    assert len(annotation(None)) == 64


@pytest.mark.parametrize("values", [
    {"listener": {"kind": "udp"}}, {"dockerSocketGroup": "docker"}, {"replicas": 2},
])
def test_values_outside_the_chart_schema_are_refused(values: dict[str, Any]) -> None:
    """values.schema.json catches a wrong kind, a group name instead of a gid, a typo."""
    with pytest.raises(jsonschema.ValidationError):
        render_chart(CHART, values)


def test_the_default_policy_lints_clean(tmp_path: Path) -> None:
    """The ConfigMap's policy is a valid dockgate policy file."""
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_load((CHART / "values.yaml").read_text())["policy"])
    assert policy.lint_file(str(path)) == []


@pytest.mark.parametrize(("template", "expected"), [
    ("a\n  {{- .x }}\nb", "a1\nb"),
    ("a {{ .x -}}\n\n b", "a 1b"),
    ('{{ if eq .s "t" }}yes{{ else }}no{{ end }}', "no"),
    ("{{ if .m }}full{{ else }}empty{{ end }}|{{ if not .z }}zero{{ end }}", "empty|zero"),
    ("{{ if .x }}{{ if .z }}in{{ else }}out{{ end }}{{ end }}", "out"),
    ("k:{{ .l | toYaml | nindent 2 }}", "k:\n  - 1\n  - two"),
    ("{{ .s | quote }} {{ .n | indent 2 }}", '"u"   u\n  v'),
])
def test_the_renderer_follows_go_template_semantics(template: str, expected: str) -> None:
    """Trimming, truth, nesting and the Sprig functions behave as in Helm."""
    context = {"x": 1, "s": "u", "n": "u\nv", "z": 0, "m": {}, "l": [1, "two"]}
    assert render_template(template, context) == expected


@pytest.mark.parametrize("template", [
    "{{ range .l }}x{{ end }}", '{{ include "x" . }}', "{{ .l }}", "{{ .missing }}",
    "{{ if .x }}open", "{{ end }}", "{{ .x | default 2 }}",
])
def test_the_renderer_refuses_what_it_does_not_implement(template: str) -> None:
    """Outside the subset the renderer stops, so the chart cannot rely on a wrong guess."""
    with pytest.raises(TemplateError):
        render_template(template, {"x": 1, "l": [1]})


@pytest.fixture
def pod_dirs() -> Iterator[tuple[Path, Path]]:
    """The ConfigMap's mount and the listener's hostPath, as host directories."""
    root = Path(tempfile.mkdtemp(prefix="dg-k8s-", dir="/tmp"))
    config, listener = root / "config", root / "listener"
    config.mkdir()
    listener.mkdir()
    os.chown(listener, 10001, 10001)
    yield config, listener
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.daemon
@pytest.mark.timeout(600)
def test_the_pod_spec_serves_its_policy_in_the_real_image(
        docker_client: docker.DockerClient, dockgate_image: str,
        pod_dirs: tuple[Path, Path]) -> None:
    """The DaemonSet's container, as docker run: its user, groups, mounts, env and policy."""
    objects = manifests(render_chart(CHART, {"dockerSocketGroup":
                                             os.stat(DOCKER_SOCKET).st_gid}))
    pod = by_kind(objects)["DaemonSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config, listener = pod_dirs
    (config / "policy.yaml").write_text(by_kind(objects)["ConfigMap"]["data"]["policy.yaml"])
    sources = {"docker-socket": DOCKER_SOCKET, "policy": str(config), "listener": str(listener)}
    context, security = pod["securityContext"], container["securityContext"]
    assert not security["allowPrivilegeEscalation"]
    run = docker_client.containers.run(
        dockgate_image, container["args"], name=unique_name("k8s-pod"), detach=True,
        network_mode="none", environment=env_of(container),
        user=f"{context['runAsUser']}:{context['runAsGroup']}",
        group_add=[str(gid) for gid in context["supplementalGroups"]],
        read_only=security["readOnlyRootFilesystem"],
        cap_drop=security["capabilities"]["drop"], security_opt=["no-new-privileges:true"],
        volumes={sources[m["name"]]: {"bind": m["mountPath"],
                                      "mode": "ro" if m.get("readOnly") else "rw"}
                 for m in container["volumeMounts"]})
    try:
        path = listener / "dockgate.sock"
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.exists(), run.logs().decode()
        assert request(path, "GET /containers/json").startswith(b"HTTP/1.1 200 ")
        denied = request(path, "POST /containers/create")
        assert denied.startswith(b"HTTP/1.1 403 ")
        assert b"container.create is not granted by policy 'node-agent'" in denied
        # The probes, asked where the kubelet would, on the admin port (here through the
        # container's own loopback: it has no other network).
        port = env_of(container)["DOCKGATE_ADMIN_LISTEN"].rsplit(":", 1)[1]
        for probe in ("livenessProbe", "readinessProbe"):
            url = f"http://127.0.0.1:{port}{container[probe]['httpGet']['path']}"
            code, output = run.exec_run(["/opt/dockgate/bin/python", "-c",
                                         "import sys, urllib.request; print(urllib.request."
                                         "urlopen(sys.argv[1], timeout=5).status)", url])
            assert (code, output.strip()) == (0, b"200"), output
    finally:
        run.remove(force=True)


def request(path: Path, line: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        body = b"{}" if line.startswith("POST") else b""
        sock.sendall(f"{line} HTTP/1.0\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer
