"""Each preset replays its client's real call sequence against the real daemon.

The sequences are written down from each client's source (facts only, no code):

Traefik (Docker provider, Go SDK with API version negotiation)
    HEAD /_ping (negotiation), GET /version (logged at connect), GET /containers/json
    (running containers), GET /containers/{id}/json for each, GET /events with a
    container filter (to reconfigure on start/stop/die).
Dozzle (Go SDK with negotiation)
    HEAD /_ping, GET /info and GET /version (host card), GET /containers/json?all=1,
    GET /containers/{id}/json for every container that has not exited (at start and
    on each start event), GET /events, GET /containers/{id}/stats (stream) and
    GET /containers/{id}/logs?follow=1 for the container being viewed.
Homepage (dockerode, no version prefix) under preset:monitoring
    GET /containers/json?all=1, then for its status widget
    GET /containers/{id}/json (State, Health) and GET /containers/{id}/stats?stream=false.
Watchtower (Go SDK from the environment, DOCKER_API_VERSION 1.25 by its default flag)
    GET /containers/json?filters={"status":["running"]}; per container
    GET /containers/{id}/json and GET /images/{image id}/json; GET /images/{name}/json
    (is there a newer image?); to update: POST /containers/{id}/kill?signal=SIGTERM,
    GET /containers/{id}/json until stopped, DELETE /containers/{id}?force=1, then
    POST /containers/create?name={name} with a body built from the old inspect
    (Config with the image's defaults cleared, HostConfig as inspected, one
    endpoint of NetworkSettings.Networks), POST /networks/{net}/disconnect and
    /connect, POST /containers/{new id}/start. Not replayed: the registry pull
    (no registry here; Watchtower's no-pull mode skips it) and --cleanup's
    DELETE /images/{old id}?force=1 (it would remove the shared test image).
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote

import docker
import pytest

from conftest import StartDockgate, discard, unique_name

pytestmark = pytest.mark.daemon

STREAMING = ("/events", "/stats", "/logs")


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One request: its status and body; for a stream, its status only (it never ends)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        streaming = any(part in path.split("?", maxsplit=1)[0] for part in STREAMING) and \
            "stream=false" not in path
        data = b"" if streaming and response.status == 200 else response.read()
        return response.status, data
    finally:
        connection.close()


def replay(port: int, calls: list[tuple[str, str, Any]]) -> list[tuple[str, str, int, bytes]]:
    return [(method, path, *call(port, method, path, body)) for method, path, body in calls]


def refused(results: list[tuple[str, str, int, bytes]]) -> list[str]:
    """The calls dockgate refused (its denials name themselves 'dockgate:')."""
    return [f"{method} {path}: {data[:300]!r}" for method, path, status, data in results
            if status == 403 or b"dockgate:" in data]


@pytest.fixture
def app(docker_client: docker.DockerClient, busybox_image: str) -> Any:
    """A harmless running container, as a user runs it, with a secret in its Env."""
    container = docker_client.containers.run(
        busybox_image, ["sleep", "600"], name=unique_name("preset-app"), network_mode="none",
        detach=True, environment={"DB_PASSWORD": "hunter2"}, labels={"traefik.enable": "true"})
    yield container
    discard(container)


def test_traefik_preset_allows_every_call_of_traefik_s_docker_provider(
        start_dockgate: StartDockgate, app: Any) -> None:
    """Discovery by labels: all of it allowed, and inspect answers without Env values."""
    proxy = start_dockgate(args=["--policy", "preset:traefik"])
    filters = quote(json.dumps({"type": ["container"]}))
    results = replay(proxy.port, [
        ("HEAD", "/_ping", None), ("GET", "/v1.41/version", None),
        ("GET", "/v1.41/containers/json", None),
        ("GET", f"/v1.41/containers/{app.id}/json", None),
        ("GET", f"/v1.41/events?filters={filters}", None),
    ])
    assert refused(results) == []
    inspect = json.loads(results[3][3])
    assert inspect["Config"]["Labels"]["traefik.enable"] == "true"
    assert "DB_PASSWORD=<redacted by dockgate>" in inspect["Config"]["Env"]
    assert b"hunter2" not in results[3][3]


def test_dozzle_preset_allows_its_startup_inspects_and_the_log_view(
        start_dockgate: StartDockgate, app: Any) -> None:
    """Dozzle inspects every non-exited container at start: that used to be denied."""
    proxy = start_dockgate(args=["--policy", "preset:dozzle"])
    results = replay(proxy.port, [
        ("HEAD", "/_ping", None), ("GET", "/v1.41/info", None),
        ("GET", "/v1.41/version", None), ("GET", "/v1.41/containers/json?all=1", None),
        ("GET", f"/v1.41/containers/{app.id}/json", None), ("GET", "/v1.41/events", None),
        ("GET", f"/v1.41/containers/{app.id}/stats?stream=1", None),
        ("GET", f"/v1.41/containers/{app.id}/logs?follow=1&stdout=1&stderr=1&tail=300"
                "&timestamps=1", None),
    ])
    assert refused(results) == []
    assert [status for _, _, status, _ in results] == [200] * len(results)
    assert b"hunter2" not in results[4][3]


def test_monitoring_preset_allows_homepage_s_status_widget(
        start_dockgate: StartDockgate, app: Any) -> None:
    """Homepage's widget inspects for State and Health; Env values stay behind dockgate."""
    proxy = start_dockgate(args=["--policy", "preset:monitoring"])
    results = replay(proxy.port, [
        ("GET", "/containers/json?all=1", None),
        ("GET", f"/containers/{app.id}/json", None),
        ("GET", f"/containers/{app.id}/stats?stream=false", None),
    ])
    assert refused(results) == []
    inspect = json.loads(results[1][3])
    assert inspect["State"]["Running"] is True
    assert inspect["Config"]["Env"][0] == "DB_PASSWORD=<redacted by dockgate>"


def watchtower_body(old: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """The create body Watchtower builds from an inspect, as its source describes it."""
    config = dict(old["Config"])
    image_config = image["Config"]
    for field in ("WorkingDir", "User"):
        if config.get(field) == image_config.get(field):
            config[field] = ""
    if config.get("Entrypoint") == image_config.get("Entrypoint"):
        config["Entrypoint"] = None
        if config.get("Cmd") == image_config.get("Cmd"):
            config["Cmd"] = None
    config["Image"] = old["Config"]["Image"]
    networks = old["NetworkSettings"]["Networks"]
    first = next(iter(networks))
    return {**config, "HostConfig": old["HostConfig"],
            "NetworkingConfig": {"EndpointsConfig": {first: networks[first]}}}


def test_watchtower_preset_recreates_a_harmless_container_from_its_inspect(
        start_dockgate: StartDockgate, docker_client: docker.DockerClient, app: Any) -> None:
    """The copied body restates the daemon's defaults (cgroupns, masked paths): no request."""
    proxy = start_dockgate(args=["--policy", "preset:watchtower"])
    v = "/v1.25"
    old = docker_client.api.inspect_container(app.id)
    image = docker_client.api.inspect_image(old["Image"])
    assert old["HostConfig"]["MaskedPaths"]  # the daemon's defaults, spelled out
    running = quote(json.dumps({"status": ["running"]}))
    first = replay(proxy.port, [
        ("GET", f"{v}/containers/json?filters={running}", None),
        ("GET", f"{v}/containers/{app.id}/json", None),
        ("GET", f"{v}/images/{old['Image']}/json", None),
        ("GET", f"{v}/images/{old['Config']['Image']}/json", None),  # Go sends '/' as is
        ("POST", f"{v}/containers/{app.id}/kill?signal=SIGTERM", None),
        ("GET", f"{v}/containers/{app.id}/json", None),
        ("DELETE", f"{v}/containers/{app.id}?force=1", None),
        ("GET", f"{v}/containers/{app.id}/json", None),
    ])
    assert refused(first) == []
    assert first[-1][2] == 404  # gone, as Watchtower waits for
    name = old["Name"].lstrip("/")
    status, data = call(proxy.port, "POST", f"{v}/containers/create?name={name}",
                        watchtower_body(old, image))
    assert status == 201, data
    new_id = json.loads(data)["Id"]
    try:
        network = next(iter(old["NetworkSettings"]["Networks"]))
        rest = replay(proxy.port, [
            ("POST", f"{v}/networks/{network}/disconnect", {"Container": new_id,
                                                            "Force": True}),
            ("POST", f"{v}/networks/{network}/connect", {"Container": new_id}),
            ("POST", f"{v}/containers/{new_id}/start", None),
        ])
        assert refused(rest) == []
        assert rest[-1][2] == 204
    finally:
        docker_client.api.remove_container(new_id, force=True)


def test_watchtower_preset_still_refuses_to_recreate_a_privileged_container(
        start_dockgate: StartDockgate, docker_client: docker.DockerClient,
        busybox_image: str) -> None:
    """Restating defaults passes; a body that really asks for the host does not."""
    container = docker_client.containers.create(
        busybox_image, ["true"], name=unique_name("preset-priv"), network_mode="none",
        privileged=True)
    try:
        proxy = start_dockgate(args=["--policy", "preset:watchtower"])
        old = docker_client.api.inspect_container(container.id)
        image = docker_client.api.inspect_image(old["Image"])
        status, data = call(proxy.port, "POST", "/v1.25/containers/create",
                            watchtower_body(old, image))
        assert status == 403
        assert b"privileged mode" in data
    finally:
        discard(container)
