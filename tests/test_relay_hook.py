"""The approval hook: events in, files and JSON answers out, hostile requests refused."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import free_port
from dockgate.policy_owner import read_image_list
from mcprelay.dockerhttp import endpoint_from_env
from mcprelay.hook import HookServer
from mcprelay.relay import Relay, RelayConfig
from mcprelay.restart import RestartOptions

GITHUB = {"name": "github", "image": "mcp/github:latest",
          "secrets": [{"name": "github.token", "env": "GITHUB_TOKEN", "value": "s3cret"}]}

@contextlib.contextmanager
def start_hook(config: RelayConfig, **kwargs: Any) -> Iterator[HookServer]:
    server = HookServer(("127.0.0.1", 0), Relay(config), **kwargs)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def files(tmp_path: Path) -> RelayConfig:
    return RelayConfig(catalog=tmp_path / "docker-mcp.yaml", env_file=tmp_path / "secrets.env",
                       state=tmp_path / "state.json")


@pytest.fixture
def hook(files: RelayConfig) -> Iterator[HookServer]:
    with start_hook(files, token="t0ken") as server:
        yield server


def request(server: HookServer, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post_event(server: HookServer, event: object,
               token: str = "t0ken") -> tuple[int, dict[str, Any]]:
    return request(server, "POST", "/events", json.dumps(event).encode(),
                   {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})


def test_approved_then_revoked_events_update_catalog_env_and_state(
        hook: HookServer, files: RelayConfig) -> None:
    """The hook keeps the approved set across events and rewrites both files each time."""
    status, answer = post_event(hook, {"event": "approved", "server": GITHUB})
    assert (status, answer["status"], answer["servers"]) == (200, "ok", ["github"])
    catalog = yaml.safe_load(files.catalog.read_text())
    assert catalog["registry"]["github"]["secrets"] == [{"name": "github.token",
                                                         "env": "GITHUB_TOKEN"}]
    assert files.env_file is not None
    assert files.env_file.read_text() == "github.token=s3cret\n"
    status, answer = post_event(hook, {"event": "revoked", "server": {"name": "github"}})
    assert (status, answer["servers"]) == (200, [])
    assert yaml.safe_load(files.catalog.read_text())["registry"] == {}
    assert files.env_file.read_text() == ""


@pytest.mark.parametrize("name", ["evil\nregistry: {}", "../../etc", "x" * 10240])
def test_hostile_event_is_422_and_leaves_the_previous_catalog(
        hook: HookServer, files: RelayConfig, name: str) -> None:
    """Nothing is written for invalid input: the gateway keeps serving the last good set."""
    post_event(hook, {"event": "approved", "server": GITHUB})
    before = files.catalog.read_bytes()
    status, answer = post_event(hook, {"event": "approved",
                                       "server": {"name": name, "image": "mcp/x"}})
    assert (status, answer["error"]) == (422, "invalid_input")
    assert files.catalog.read_bytes() == before
    assert sorted(p.name for p in files.catalog.parent.iterdir()) == [
        "docker-mcp.yaml", "secrets.env", "state.json"]


def test_image_with_spaces_is_422(hook: HookServer) -> None:
    """An image reference with spaces is not a reference; the answer says which field."""
    status, answer = post_event(hook, {"event": "approved",
                                       "server": {"name": "x", "image": "mcp/x latest"}})
    assert status == 422
    assert "invalid image reference" in answer["message"]


def test_body_over_the_limit_is_413_without_being_read(files: RelayConfig) -> None:
    """Request size is bounded before the body is read or parsed."""
    with start_hook(files, max_body=1024) as server:
        status, answer = request(server, "POST", "/events", b"{" + b" " * 2000 + b"}",
                                 {"Content-Type": "application/json"})
        assert (status, answer["error"]) == (413, "too_large")
    assert not files.catalog.exists()


@pytest.mark.parametrize(("headers", "body", "status", "error"), [
    ({"Content-Type": "text/plain"}, b"{}", 415, "unsupported_media_type"),
    ({"Content-Type": "application/json"}, b"{nope", 400, "bad_json"),
    ({"Content-Type": "application/json"}, b"[1]", 422, "invalid_input"),
    ({"Content-Type": "application/json; charset=utf-8"}, b'{"event": "x", "server": {}}',
     422, "invalid_input"),
])
def test_malformed_requests_get_clear_json_errors(
        hook: HookServer, headers: dict[str, str], body: bytes, status: int,
        error: str) -> None:
    """Each way a request can be wrong has its own status and error class."""
    got_status, answer = request(hook, "POST", "/events", body,
                                 {**headers, "Authorization": "Bearer t0ken"})
    assert (got_status, answer["error"]) == (status, error)
    assert answer["message"]


def test_missing_or_wrong_token_is_401(hook: HookServer, files: RelayConfig) -> None:
    """With --token-file only the backend holding the token can change the catalog."""
    status, answer = post_event(hook, {"event": "approved", "server": GITHUB}, token="wrong")
    assert (status, answer["error"]) == (401, "unauthorized")
    assert not files.catalog.exists()


def test_chunked_body_is_refused_with_411(hook: HookServer) -> None:
    """Only Content-Length bodies are accepted, so the size check happens before reading."""
    # Only the head is sent: the hook answers before reading any chunk, and a client
    # still writing the body when the hook closes would see a broken pipe instead.
    connection = http.client.HTTPConnection("127.0.0.1", hook.server_port, timeout=10)
    connection.putrequest("POST", "/events")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Authorization", "Bearer t0ken")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())["error"]) == (411, "length_required")
    connection.close()


def test_unknown_path_is_404_and_healthz_answers(hook: HookServer) -> None:
    """Only the documented endpoints exist."""
    assert request(hook, "POST", "/other")[0] == 404
    assert request(hook, "GET", "/healthz") == (200, {"status": "ok"})


def test_failed_restart_is_502_with_the_error_class(files: RelayConfig) -> None:
    """The backend must not mark a server available when the gateway was not restarted."""
    endpoint = endpoint_from_env({"DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}"})
    config = RelayConfig(catalog=files.catalog, env_file=files.env_file, state=files.state,
                         endpoint=endpoint, restart=RestartOptions(gateway="gw", retries=0))
    with start_hook(config) as server:
        status, answer = post_event(server, {"event": "approved", "server": GITHUB})
        assert (status, answer["error"]) == (502, "unreachable")
        assert "Connection refused" in answer["message"]


def test_events_rewrite_the_approved_image_list_dockgate_reads(tmp_path: Path) -> None:
    """Approve adds the server's image (by digest when pinned), revoke removes it."""
    images = tmp_path / "approved-images.txt"
    config = RelayConfig(catalog=tmp_path / "docker-mcp.yaml", env_file=tmp_path / "s.env",
                         state=tmp_path / "state.json", images_file=images)
    pinned = {"name": "fetch", "image": "mcp/fetch@sha256:" + "ab" * 32}
    with start_hook(config) as server:
        assert post_event(server, {"event": "approved", "server": GITHUB})[0] == 200
        assert post_event(server, {"event": "approved", "server": pinned})[0] == 200
        listed = read_image_list(str(images))
        assert listed.admits("mcp/github:latest")
        assert listed.admits(pinned["image"])
        assert not listed.admits("mcp/fetch:latest"), "a pinned server is approved by digest"
        assert images.stat().st_mode & 0o777 == 0o644
        status, _ = post_event(server, {"event": "approved",
                                        "server": {"name": "Bad", "image": "mcp/x"}})
        assert status == 422
        assert len(read_image_list(str(images)).entries) == 2
        assert post_event(server, {"event": "revoked", "server": {"name": "github"}})[0] == 200
    listed = read_image_list(str(images))
    assert not listed.admits("mcp/github:latest")
    assert listed.admits(pinned["image"])
