"""Learn mode's recording (``serve --learn FILE``) against the real daemon.

The recording is what ``policy suggest`` builds a policy from, so each fact a
policy can scope by must be in it (client, operation, the resolved container,
constrainable query values, create/exec body features), and nothing that may
be a secret (env values, commands, headers) may be.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import StartDockgate, discard, unique_name
from dockgate import settings
from dockgate.errors import ConfigError

pytestmark = pytest.mark.daemon


def records(path: Path, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The first ``count`` records, waiting for the writer (it writes once per loop turn)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def by_operation(found: list[dict[str, Any]], operation: str) -> list[dict[str, Any]]:
    return [r for r in found if r.get("operation") == operation]


def test_learn_records_container_labels_and_create_features_without_secrets(
        start_dockgate: StartDockgate, busybox_image: str, tmp_path: Path) -> None:
    """A create with a secret env, a read-only bind and a capability: features only."""
    recording = tmp_path / "learn.jsonl"
    proxy = start_dockgate(args=["--learn", str(recording), "--learn-allow-all", "yes"])
    client = docker.DockerClient(base_url=proxy.docker_host, timeout=60)
    name = unique_name("learn-rec")
    container = client.containers.create(
        busybox_image, ["sleep", "30"], name=name, network_mode="none",
        labels={"app": "learn-demo"}, environment={"TOKEN": "hunter2-secret"},
        volumes={str(tmp_path): {"bind": "/data", "mode": "ro"}}, cap_add=["NET_ADMIN"],
        user="1000")
    try:
        container.start()
        client.api.exec_create(name, ["echo", "exec-secret-arg"], privileged=True)
        client.api.logs(name, follow=False)
        found = records(recording, 5)
    finally:
        discard(container)
        client.close()
    text = recording.read_text()
    assert "hunter2-secret" not in text
    assert "TOKEN" not in text
    assert "exec-secret-arg" not in text
    create = by_operation(found, "container.create")[0]
    assert create["body"]["classes"] == ["capabilities", "host-mounts"]
    assert create["body"]["binds"] == [{"source": str(tmp_path), "read_only": True}]
    assert create["body"]["cap_add"] == ["NET_ADMIN"]
    assert create["body"]["image"] == busybox_image
    assert create["body"]["user"] == "1000"
    assert create["decision"] == "allow"
    assert create["rule"] == "allow-all"
    assert create["client"] == {"listener": f"tcp://127.0.0.1:{proxy.port}",
                                "transport": "tcp", "address": "127.0.0.1"}
    start = by_operation(found, "container.start")[0]
    assert start["container"] == {"name": name, "image": busybox_image,
                                  "labels": {"app": "learn-demo"}}
    exec_create = by_operation(found, "exec.create")[0]
    assert exec_create["body"] == {"classes": ["privileged", "root-user"], "privileged": True,
                                   "user": "", "tty": False, "stdin": False}
    logs = by_operation(found, "container.logs")[0]
    assert logs["query"]["follow"] == ["false"]


def test_learn_records_no_header_values(start_dockgate: StartDockgate,
                                       tmp_path: Path) -> None:
    """Registry credentials travel in a header: the recording never holds header values."""
    recording = tmp_path / "headers.jsonl"
    proxy = start_dockgate(args=["--learn", str(recording), "--learn-allow-all", "yes"])
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request("GET", "/_ping", headers={"X-Registry-Auth": "c2VjcmV0LXRva2Vu",
                                                     "Authorization": "Bearer t0ken"})
        assert connection.getresponse().read() == b"OK"
    finally:
        connection.close()
    found = records(recording, 1)
    assert found[0]["operation"] == "system.ping"
    text = recording.read_text()
    assert "c2VjcmV0LXRva2Vu" not in text
    assert "t0ken" not in text


def test_learn_under_a_policy_records_the_denials_with_their_reason(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """Observe mode: an enforcing policy still decides, and the denials are in the recording."""
    recording = tmp_path / "observe.jsonl"
    proxy = start_dockgate(args=["--learn", str(recording), "--policy", "preset:monitoring"])
    client = docker.DockerClient(base_url=proxy.docker_host, timeout=60)
    try:
        client.api.containers()
        with pytest.raises(docker.errors.APIError) as denied:
            client.api.images()
    finally:
        client.close()
    assert denied.value.status_code == 403
    found = records(recording, 3)  # docker-py's GET /version, the list, the denied list
    listing = by_operation(found, "container.list")[0]
    assert listing["decision"] == "allow"
    images = by_operation(found, "image.list")[0]
    assert images["decision"] == "deny"
    assert "image.list is not granted by policy" in images["reason"]


def test_learn_recording_stops_at_its_bound_and_serving_goes_on(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """A full recording gets one learn.full line and then no more; requests still succeed."""
    recording = tmp_path / "small.jsonl"
    proxy = start_dockgate(args=["--learn", str(recording), "--learn-allow-all", "yes",
                                 "--learn-max-bytes", "600"])
    client = docker.DockerClient(base_url=proxy.docker_host, timeout=60)
    try:
        for _ in range(6):
            assert client.api.ping()
    finally:
        client.close()
    found = records(recording, 10, timeout=1.0)
    assert found[-1]["event"] == "learn.full"
    assert all("event" not in r for r in found[:-1])
    assert recording.stat().st_size <= 600 + 100
    assert "reached --learn-max-bytes" in proxy.log()


def test_learn_allow_all_needs_learn_and_excludes_a_policy() -> None:
    """Permissive recording is explicit: without --learn, or beside --policy, it is an error."""
    with pytest.raises(ConfigError, match="add --learn FILE"):
        settings.load(None, {"DOCKGATE_LEARN_ALLOW_ALL": "1"})
    with pytest.raises(ConfigError, match="not both"):
        settings.load(None, {"DOCKGATE_LEARN_ALLOW_ALL": "yes", "DOCKGATE_LEARN": "x",
                             "DOCKGATE_POLICY": "preset:monitoring"})
    with pytest.raises(ConfigError, match="DOCKGATE_LEARN_ALLOW_ALL='maybe' is invalid"):
        settings.load(None, {"DOCKGATE_LEARN_ALLOW_ALL": "maybe", "DOCKGATE_LEARN": "x"})
