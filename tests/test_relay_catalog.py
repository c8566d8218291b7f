"""The relay's catalog: validation, the gateway's YAML format, atomic writes, secrets."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mcprelay.catalog import (
    atomic_write,
    parse_server,
    parse_servers,
    render_catalog,
    render_env,
    validate_image,
    write_outputs,
)
from mcprelay.errors import InputError, WriteError
from mcprelay.state import apply_event, load_state, save_state

DIGEST = "sha256:" + "0123456789abcdef" * 4
GITHUB: dict[str, Any] = {
    "name": "github",
    "image": "mcp/github:latest",
    "title": "GitHub",
    "description": "Issues and pull requests",
    "secrets": [{"name": "github.personal_access_token", "env": "GITHUB_TOKEN",
                 "value": "ghp_not-a-real-token"}],
}
FETCH: dict[str, Any] = {"name": "fetch", "image": f"registry.example.com:5000/mcp/fetch@{DIGEST}"}


def test_catalog_parses_to_the_gateway_document() -> None:
    """The gateway reads exactly this shape (facts §6): name, displayName, registry entries."""
    text = render_catalog(parse_servers([GITHUB, FETCH]), "Approved")
    assert yaml.safe_load(text) == {
        "name": "docker-mcp",
        "displayName": "Approved",
        "registry": {
            "fetch": {"title": "fetch", "description": "", "type": "server",
                      "image": FETCH["image"], "longLived": False},
            "github": {"title": "GitHub", "description": "Issues and pull requests",
                       "type": "server", "image": "mcp/github:latest", "longLived": False,
                       "secrets": [{"name": "github.personal_access_token",
                                    "env": "GITHUB_TOKEN"}]},
        },
    }


def test_catalog_never_contains_secret_values() -> None:
    """Secret values belong in the env file only; the catalog may be read more widely."""
    servers = parse_servers([GITHUB])
    assert "ghp_not-a-real-token" not in render_catalog(servers, "x")
    assert render_env(servers) == "github.personal_access_token=ghp_not-a-real-token\n"


def test_catalog_is_the_same_whatever_the_input_order() -> None:
    """Sorted output means an unchanged approved set gives a byte-identical catalog."""
    assert render_catalog(parse_servers([GITHUB, FETCH]), "x") == render_catalog(
        parse_servers([FETCH, GITHUB]), "x")


@pytest.mark.parametrize("name", [
    "evil\nregistry:\n  pwned: {image: attacker/x}",
    "github\n",
    "../../etc",
    "x" * 10240,
    "GitHub",
    "-leading-dash",
    "",
    "a" * 64,
    "name with space",
    "caf\u00e9",
])
def test_hostile_server_names_are_rejected(name: str) -> None:
    """Names become YAML keys and log fields: only a strict DNS-label-like set passes."""
    with pytest.raises(InputError) as caught:
        parse_server({"name": name, "image": "mcp/x:latest"})
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("image", [
    "mcp/github",
    "mcp/github:latest",
    "busybox",
    "localhost:5000/mcp/fetch:1.2.3",
    "registry.example.com/team/mcp-server_x.y:v1",
    f"mcp/github@{DIGEST}",
    f"registry.example.com:443/mcp/github:1.0@{DIGEST}",
    "MCP.example.com/a/b",
])
def test_docker_references_are_accepted(image: str) -> None:
    """Registry with port, tag and digest are all part of Docker's reference grammar."""
    assert validate_image(image) == image


@pytest.mark.parametrize("image", [
    "mcp/github:latest with spaces",
    "mcp/git hub",
    "mcp/GitHub",
    "mcp//github",
    "mcp/github:",
    ":latest",
    "mcp/github@sha256:abc",
    "mcp/github@md5:" + "0" * 32,
    "mcp/github:" + "t" * 129,
    "mcp/github\n",
    "mcp/github:latest\nregistry: {}",
    "-mcp/github",
    "",
    "a/" * 130 + "b",
])
def test_invalid_image_references_are_rejected(image: str) -> None:
    """An image is written into the catalog verbatim, so it must be a well-formed reference."""
    with pytest.raises(InputError):
        validate_image(image)


@pytest.mark.parametrize(("field", "value"), [
    ("title", "line\nbreak"),
    ("title", "t" * 201),
    ("description", "bell\x07"),
    ("secrets", {"name": "x"}),
    ("secrets", [{"name": "ok", "env": "BAD-ENV", "value": "v"}]),
    ("secrets", [{"name": "ok", "env": "OK", "value": "two\nlines"}]),
    ("secrets", [{"name": "../x", "env": "OK", "value": "v"}]),
    ("secrets", [{"name": "ok", "env": "OK", "value": "v", "extra": 1}]),
    ("image", 42),
    ("colour", "blue"),
])
def test_invalid_server_fields_are_rejected(field: str, value: object) -> None:
    """Every field is checked; unknown fields are an error, not silently dropped."""
    with pytest.raises(InputError):
        parse_server({"name": "ok", "image": "mcp/ok", field: value})


def test_duplicate_server_names_are_rejected() -> None:
    """Two entries for one name would make the catalog depend on input order."""
    with pytest.raises(InputError, match="listed twice"):
        parse_servers([FETCH, FETCH])


def test_one_secret_name_with_two_values_is_rejected() -> None:
    """The env file has one line per secret name: two values cannot both be honoured."""
    other = {"name": "other", "image": "mcp/other",
             "secrets": [{**GITHUB["secrets"][0], "value": "different"}]}
    with pytest.raises(InputError, match="different values"):
        parse_servers([GITHUB, other])


def test_servers_object_form_is_accepted() -> None:
    """A file may hold {"servers": [...]} as well as a bare list."""
    assert [s.name for s in parse_servers({"servers": [FETCH]})] == ["fetch"]


@given(st.text(max_size=80))
def test_any_accepted_name_round_trips_as_the_only_registry_key(name: str) -> None:
    """Whatever text arrives, it is rejected or becomes exactly one key: no injection."""
    try:
        servers = parse_servers([{"name": name, "image": "mcp/x"}])
    except InputError:
        return
    assert list(yaml.safe_load(render_catalog(servers, "x"))["registry"]) == [name]


@given(st.text(max_size=200))
def test_any_accepted_title_round_trips_through_the_yaml_emitter(title: str) -> None:
    """Free text goes through yaml.safe_dump, so quotes, colons and '#' survive exactly."""
    try:
        servers = parse_servers([{"name": "x", "image": "mcp/x", "title": title}])
    except InputError:
        return
    document = yaml.safe_load(render_catalog(servers, "x"))
    assert document["registry"]["x"]["title"] == (title or "x")


def test_atomic_write_creates_a_0600_file_and_no_leftovers(tmp_path: Path) -> None:
    """Readers see the old or the new file; secrets are never world-readable."""
    target = tmp_path / "docker-mcp.yaml"
    target.write_text("old\n")
    os.chmod(target, 0o644)
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docker-mcp.yaml"]


def test_failed_write_removes_its_temporary_file(tmp_path: Path) -> None:
    """A rename that fails (target is a directory) leaves the directory as it was."""
    target = tmp_path / "catalog"
    target.mkdir()
    with pytest.raises(WriteError, match="cannot write"):
        atomic_write(target, "text")
    assert [p.name for p in tmp_path.iterdir()] == ["catalog"]


def test_write_into_a_missing_directory_is_a_write_error(tmp_path: Path) -> None:
    """A misconfigured path is reported as such, with the directory named."""
    with pytest.raises(WriteError, match="missing"):
        atomic_write(tmp_path / "missing" / "catalog.yaml", "text")


def test_secrets_without_an_env_file_are_refused_before_writing(tmp_path: Path) -> None:
    """Dropping secrets silently would start servers without their credentials."""
    catalog = tmp_path / "catalog.yaml"
    with pytest.raises(InputError, match="--env-file"):
        write_outputs(parse_servers([GITHUB]), catalog, None, "x")
    assert not catalog.exists()


def test_outputs_are_catalog_and_env_file_both_0600(tmp_path: Path) -> None:
    """Both files are written with owner-only permissions."""
    catalog, env = tmp_path / "catalog.yaml", tmp_path / "secrets.env"
    write_outputs(parse_servers([GITHUB]), catalog, env, "x")
    assert yaml.safe_load(catalog.read_text())["registry"]["github"]["image"] == GITHUB["image"]
    assert env.read_text() == "github.personal_access_token=ghp_not-a-real-token\n"
    assert {stat.S_IMODE(p.stat().st_mode) for p in (catalog, env)} == {0o600}


def test_state_round_trips_and_a_missing_state_is_empty(tmp_path: Path) -> None:
    """The hook starts from nothing and keeps the approved set between events."""
    path = tmp_path / "state.json"
    assert load_state(path) == []
    servers = parse_servers([GITHUB, FETCH])
    save_state(path, servers)
    assert sorted(load_state(path), key=lambda s: s.name) == sorted(servers, key=lambda s: s.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_state_file_is_an_input_error(tmp_path: Path) -> None:
    """A hand-edited state file that is not JSON stops the relay instead of emptying it."""
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        load_state(path)


def test_approved_event_adds_or_replaces_and_revoked_removes() -> None:
    """Events are idempotent: approving twice keeps one entry, revoking twice is harmless."""
    servers = parse_servers([FETCH])
    _, _, servers = apply_event(servers, {"event": "approved", "server": GITHUB})
    _, _, servers = apply_event(servers, {"event": "approved",
                                          "server": {**GITHUB, "title": "GH"}})
    assert sorted((s.name, s.title) for s in servers) == [("fetch", "fetch"), ("github", "GH")]
    _, name, servers = apply_event(servers, {"event": "revoked", "server": {"name": "github"}})
    _, _, servers = apply_event(servers, {"event": "revoked", "server": {"name": "github"}})
    assert name == "github"
    assert [s.name for s in servers] == ["fetch"]


@pytest.mark.parametrize("event", [
    {"event": "deleted", "server": {"name": "x"}},
    {"event": "approved"},
    {"event": "approved", "server": {"name": "x", "image": "mcp/x"}, "extra": 1},
    {"event": "revoked", "server": {"name": "../../etc"}},
    {"event": "revoked", "server": {}},
    {"event": "revoked", "server": {"name": "x", "colour": "red"}},
    ["approved"],
])
def test_malformed_events_are_rejected(event: object) -> None:
    """The hook accepts exactly the documented event shape."""
    with pytest.raises(InputError):
        apply_event([], event)
