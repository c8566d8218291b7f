"""deploy/compose.yaml: valid for Debian's docker-compose 1.29, with the promised topology."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKER_COMPOSE = "/usr/bin/docker-compose"
GATEWAY = "pocketcoder-mcp-gateway"
SOCKET = "/run/dockgate-gateway/docker.sock"  # dockgate's gateway listener


def compose_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DOCKER_", "COMPOSE_")) and k != "DOCKGATE_IMAGE"}
    return subprocess.run([DOCKER_COMPOSE, "-f", str(path), "config"], capture_output=True,
                          text=True, env={**clean, **env}, check=False, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose_config(COMPOSE, DOCKER_SOCKET_GID="106")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def test_docker_compose_accepts_the_file(config: dict[str, Any]) -> None:
    """`docker-compose config` renders it: the four services of the seed's topology."""
    assert sorted(config["services"]) == ["backend", "dockgate", "mcp-gateway", "mcp-relay"]


@pytest.mark.parametrize(("old", "new"), [
    ("    read_only: true\n    cap_drop: [ALL]\n", "    read_only: true\n    cap_drop: ALL: x\n"),
    ("    networks: [docker-api]\n", "    netwroks: [docker-api]\n"),
    ("restart: unless-stopped", "restart: [unless-stopped"),
])
def test_docker_compose_rejects_a_broken_copy(tmp_path: Path, old: str, new: str) -> None:
    """The validation really validates: a typo, bad syntax or bad value fails the check."""
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    result = compose_config(broken, DOCKER_SOCKET_GID="106")
    assert result.returncode != 0
    assert result.stderr


def test_the_socket_group_must_be_given() -> None:
    """Without DOCKER_SOCKET_GID the non-root proxy could not open the socket: refuse early."""
    result = compose_config(COMPOSE)
    assert result.returncode != 0
    assert "set DOCKER_SOCKET_GID" in result.stderr


def test_dockgate_serves_the_shipped_policy_on_both_listeners_hardened(
        config: dict[str, Any]) -> None:
    """The proxy decides by deploy/dockgate-policy.yaml, for the relay and for the gateway."""
    dockgate = config["services"]["dockgate"]
    assert config["services"]["mcp-gateway"]["container_name"] == GATEWAY
    assert dockgate["environment"]["DOCKGATE_POLICY"] == "/etc/dockgate/policy.yaml"
    assert not {"CONTAINERS", "POST", "ALLOW_RESTARTS", "ALLOW_RESTART_CONTAINERS"} & set(
        dockgate["environment"])
    assert dockgate["environment"]["DOCKGATE_LISTEN"] == f"tcp://0.0.0.0:2375,unix://{SOCKET}"
    assert dockgate["volumes"] == [
        "/var/run/docker.sock:/var/run/docker.sock:ro",
        f"{ROOT}/deploy/dockgate-policy.yaml:/etc/dockgate/policy.yaml:ro",
        f"{ROOT}/deploy/mcp_config:/mcp_config:ro",
        "gateway-socket:/run/dockgate-gateway:rw"]
    assert dockgate["group_add"] == ["106"]
    assert "ports" not in dockgate
    assert dockgate["read_only"] is True
    assert dockgate["cap_drop"] == ["ALL"]
    assert dockgate["security_opt"] == ["no-new-privileges:true"]


def test_the_raw_docker_socket_is_mounted_into_dockgate_alone(config: dict[str, Any]) -> None:
    """Whoever mounts /var/run/docker.sock is root on the host: only the proxy may."""
    mounting = sorted(name for name, service in config["services"].items()
                      for volume in service.get("volumes") or ()
                      if volume.split(":", 1)[0] in ("/var/run/docker.sock", "/run/docker.sock",
                                                     "/var/run", "/run"))
    assert mounting == ["dockgate"]


def test_the_gateway_sees_dockgates_listener_as_its_docker_socket(
        config: dict[str, Any]) -> None:
    """Its SDK client and its docker run subprocess both use /var/run/docker.sock."""
    gateway = config["services"]["mcp-gateway"]
    assert "gateway-socket:/var/run:rw" in gateway["volumes"]
    assert "DOCKER_HOST" not in (gateway.get("environment") or {})
    assert gateway["depends_on"]["dockgate"]["condition"] == "service_healthy"
    assert config["volumes"] == {"gateway-socket": {}}
    policy = yaml.safe_load((ROOT / "deploy" / "dockgate-policy.yaml").read_text())
    assert policy["listeners"] == {f"unix://{SOCKET}": "mcp-gateway"}
    assert policy["default"] == "mcp-relay"
    images = "/mcp_config/approved-images.txt"
    assert f"--images-file={images}" in config["services"]["mcp-relay"]["command"]
    assert all(grant.get("images_from", images) == images
               for grant in policy["policies"]["mcp-gateway"]["grants"])


def test_only_backend_and_proxy_share_the_internal_api_network(config: dict[str, Any]) -> None:
    """The Docker API is reachable from the backend's namespace alone, never from outside."""
    assert config["networks"]["docker-api"]["internal"] is True
    members = sorted(name for name, service in config["services"].items()
                     if "docker-api" in (service.get("networks") or {}))
    assert members == ["backend", "dockgate"]
    relay = config["services"]["mcp-relay"]
    assert relay["network_mode"] == "service:backend"
    assert relay["environment"]["DOCKER_HOST"] == "tcp://dockgate:2375"
    assert config["services"]["backend"]["environment"]["DOCKER_HOST"] == "tcp://dockgate:2375"


def test_relay_writes_what_the_gateway_reads(config: dict[str, Any]) -> None:
    """Catalog and secrets paths agree between the relay's flags and the gateway's."""
    relay = config["services"]["mcp-relay"]
    gateway = config["services"]["mcp-gateway"]
    assert relay["entrypoint"] == ["dockgate-mcp-relay"]
    assert f"--gateway={GATEWAY}" in relay["command"]
    assert "--listen=127.0.0.1:8765" in relay["command"]
    for flag in ("--catalog=/mcp_config/docker-mcp.yaml", "--env-file=/mcp_config/secrets.env"):
        assert flag in relay["command"]
    assert "--catalog=/mcp_config/docker-mcp.yaml" in gateway["command"]
    assert "--secrets=/mcp_config/secrets.env" in gateway["command"]
    assert any(v.endswith(":/mcp_config:ro") for v in gateway["volumes"])
    assert any(v.endswith(":/mcp_config:rw") for v in relay["volumes"])



@pytest.mark.parametrize(("method", "target", "allowed"), [
    ("GET", "/_ping", True),
    ("GET", "/version", True),
    ("POST", f"/containers/{GATEWAY}/restart", True),
    ("GET", f"/containers/{GATEWAY}/json", True),
    ("POST", "/containers/other/restart", False),
    ("GET", "/containers/other/json", False),
    ("POST", f"/containers/{GATEWAY}/stop", False),
    ("POST", f"/containers/{GATEWAY}/exec", False),
    ("POST", "/containers/create", False),
    ("GET", "/containers/json", False),
])
def test_policy_file_form_decides_like_the_environment_form(
        method: str, target: str, allowed: bool) -> None:
    """deploy/dockgate-policy.yaml (the mounted-file alternative) grants the same, no more."""
    policy = str(ROOT / "deploy" / "dockgate-policy.yaml")
    result = subprocess.run([sys.executable, "-m", "dockgate", "check", "--policy", policy,
                             method, target], capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is allowed, result.stdout + result.stderr


def test_policy_file_lints_clean(tmp_path: Path) -> None:
    """`dockgate policy lint` finds nothing suspicious in the shipped policy.

    Its image list is written by the relay at run time; lint reports a missing one,
    so this copy points at an existing (empty) list.
    """
    text = (ROOT / "deploy" / "dockgate-policy.yaml").read_text()
    assert text.count("/mcp_config/approved-images.txt") == 2
    (tmp_path / "approved-images.txt").write_text("")
    policy = tmp_path / "dockgate-policy.yaml"
    policy.write_text(text.replace("/mcp_config/approved-images.txt", "approved-images.txt"))
    result = subprocess.run([sys.executable, "-m", "dockgate", "policy", "lint", str(policy)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == f"{policy}: OK"


@pytest.mark.parametrize(("method", "target", "allowed"), [
    ("GET", "/containers/json", True),
    ("POST", "/containers/pocketcoder-backend/exec", False),
    ("POST", f"/containers/{GATEWAY}/restart", False),
    ("GET", "/info", False),
])
def test_the_gateways_listener_decides_by_the_mcp_gateway_policy(
        method: str, target: str, allowed: bool) -> None:
    """The migration's check (docs/mcp-gateway.md): as the gateway's unix listener sees it."""
    policy = str(ROOT / "deploy" / "dockgate-policy.yaml")
    result = subprocess.run([sys.executable, "-m", "dockgate", "check", "--policy", policy,
                             "--client", f"uid=0,listener=unix://{SOCKET}", method, target],
                            capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is allowed, result.stdout + result.stderr
    assert "policy:    mcp-gateway" in result.stdout
