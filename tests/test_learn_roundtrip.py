"""Learn mode end to end against the real daemon: record, suggest, enforce, replay.

Three real clients, each on its own unix listener of one dockgate (so each is its
own identity: listener plus uid):

- the docker CLI runs, reads the logs of, execs in, stops and removes a
  container of the busybox test image with a label;
- the MCP relay (``dockgate-mcp-relay restart``) restarts its gateway and waits
  for it to run again;
- a monitoring client (docker-py) lists the containers it watches, inspects
  them by ID and reads events.

The recording (``--learn-allow-all``) is turned into one policy per client
(``policy suggest --client listener=...``); dockgate is restarted with those
policies merged; the same workloads pass again, and what none of them did is
denied. The generated policies are checked in as docs/examples/learned/*.yaml
(socket directory, timestamps and request counts normalised);
``DOCKGATE_REGENERATE=1`` rewrites them, otherwise a difference fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml

from conftest import SESSION_NAMES, StartDockgate
from dockgate import policy

pytestmark = pytest.mark.daemon

DOCKER = "/usr/local/bin/docker"
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "learned"
CLIENTS = ("cli", "relay", "monitor")
WEB = "dgtest-learn-web"
GATEWAY = "dgtest-learn-gateway"
WATCHED = "dgtest-learn-watched"
CLI_LABEL = "dgtest.learn=cli"
WATCH_LABEL = "dgtest.learn.watch=yes"
OTHER_IMAGE = "dockgate-test/learn-other:latest"


def env_for(socket_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    return {**env, "DOCKER_HOST": f"unix://{socket_path}"}


def docker_cli(socket_path: Path, *args: str,
               api: str | None = None) -> subprocess.CompletedProcess[str]:
    """The docker CLI; ``api`` pins the API version (a policy without ping refuses the
    CLI's version negotiation, and the CLI would then send its own newer version)."""
    env = env_for(socket_path)
    if api is not None:
        env["DOCKER_API_VERSION"] = api
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def cli_workload(socket_path: Path, image: str) -> None:
    """run, logs, exec, stop, rm of one labelled container."""
    steps = [("run", "-d", "--name", WEB, "--network", "none", "--label", CLI_LABEL, image,
              "sh", "-c", "echo ready; exec sleep 300"),
             ("logs", WEB), ("exec", WEB, "true"), ("stop", "-t", "1", WEB), ("rm", WEB)]
    for step in steps:
        result = docker_cli(socket_path, *step)
        assert result.returncode == 0, (step, result.stderr)


def relay_workload(socket_path: Path) -> None:
    """The relay's restart sequence: inspect, restart, inspect until running again."""
    result = subprocess.run([sys.executable, "-m", "mcprelay", "restart", "--gateway", GATEWAY,
                             "--stop-timeout", "1"], env=env_for(socket_path),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def monitor_workload(socket_path: Path) -> None:
    """A dashboard: list the watched containers, inspect each by ID, read recent events."""
    client = docker.APIClient(base_url=f"unix://{socket_path}", timeout=60)
    try:
        watched = client.containers(all=True, filters={"label": WATCH_LABEL})
        assert [c["Names"] for c in watched] == [[f"/{WATCHED}"]]
        for item in watched:
            assert client.inspect_container(item["Id"])["Name"] == f"/{WATCHED}"
        now = int(time.time())
        list(client.events(since=now - 60, until=now, decode=True))
    finally:
        client.close()


def normalise(text: str, sockdir: Path) -> str:
    """What differs between runs: the socket directory, times, how often a client polled."""
    text = text.replace(str(sockdir), "/run/dockgate")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "2026-01-01T00:00:00Z", text)
    text = re.sub(r"from \S+ \(\d+ requests", "from learn.jsonl (N requests", text)
    return re.sub(r"^(\s*# )\d+ requests?, (first .*) \((.*)\)$",
                  lambda m: f"{m[1]}N requests, {m[2]} ({re.sub(r' [0-9]+', '', m[3])})",
                  text, flags=re.MULTILINE)


def assert_lints_clean_but_for_commented_dangers(path: Path) -> None:
    """lint finds nothing but DANGER, and each DANGER is a comment on its grant in the file."""
    text = path.read_text()
    for finding in policy.lint_file(str(path)):
        assert ": DANGER: " in finding, finding
        operation = re.search(r"allows (\S+)", finding)
        assert operation is not None
        assert f"# DANGER (lint): allows {operation[1]}:" in text, finding


def suggest(recording: Path, client: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dockgate", "policy", "suggest",
                             str(recording), "--client", client], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def merged(policies: dict[str, str]) -> str:
    """The three suggested files as one policy file (each keeps its own policy and client)."""
    out: dict[str, dict[str, object]] = {"policies": {}}
    clients: list[object] = []
    for text in policies.values():
        doc = yaml.safe_load(text)
        out["policies"].update(doc["policies"])
        clients.extend(doc["clients"])
    return yaml.safe_dump({**out, "clients": clients}, sort_keys=False)


@pytest.fixture
def learn_containers(docker_client: docker.DockerClient,
                     busybox_image: str) -> Iterator[None]:
    """The relay's gateway and the monitored container (made directly on the daemon)."""
    names = (WEB, GATEWAY, WATCHED)
    SESSION_NAMES.update(names)

    def clean() -> None:
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.containers.get(name).remove(force=True)

    clean()
    docker_client.images.get(busybox_image).tag(OTHER_IMAGE)
    docker_client.containers.run(busybox_image, ["sleep", "3600"], name=GATEWAY,
                                 network_mode="none", detach=True)
    docker_client.containers.run(busybox_image, ["sleep", "3600"], name=WATCHED,
                                 network_mode="none", detach=True,
                                 labels={"dgtest.learn.watch": "yes"})
    yield
    clean()
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(OTHER_IMAGE)


def test_learned_policies_replay_their_workloads_and_deny_everything_else(
        start_dockgate: StartDockgate, sockdir: Path, tmp_path: Path, busybox_image: str,
        learn_containers: None) -> None:
    """Record three clients, suggest their policies, enforce: replays pass, the rest is denied."""
    sockets = {name: sockdir / f"{name}.sock" for name in CLIENTS}
    listen = [arg for path in sockets.values() for arg in ("--listen", f"unix://{path}")]
    recording = tmp_path / "learn.jsonl"
    learning = start_dockgate(args=[*listen, "--learn", str(recording),
                                    "--learn-allow-all", "yes"])
    cli_workload(sockets["cli"], busybox_image)
    relay_workload(sockets["relay"])
    monitor_workload(sockets["monitor"])
    learning.stop()

    policies = {name: suggest(recording, f"listener=unix://{sockets[name]}")
                for name in CLIENTS}
    for name, text in policies.items():
        example = EXAMPLES / f"{name}.yaml"
        normal = normalise(text, sockdir)
        if os.environ.get("DOCKGATE_REGENERATE") == "1":
            EXAMPLES.mkdir(parents=True, exist_ok=True)
            example.write_text(normal)
        assert example.read_text() == normal, (
            f"{example} is stale: run DOCKGATE_REGENERATE=1 pytest "
            "tests/test_learn_roundtrip.py")
        assert_lints_clean_but_for_commented_dangers(example)
    policy_file = tmp_path / "learned.yaml"
    policy_file.write_text(merged(policies))

    start_dockgate(args=[*listen, "--policy", str(policy_file)])
    cli_workload(sockets["cli"], busybox_image)
    relay_workload(sockets["relay"])
    monitor_workload(sockets["monitor"])

    denied = [
        docker_cli(sockets["cli"], "run", "--rm", "--privileged", "--network", "none",
                   "--label", CLI_LABEL, busybox_image, "true"),
        docker_cli(sockets["cli"], "run", "--rm", "--network", "none", "--label", CLI_LABEL,
                   OTHER_IMAGE, "true"),
        docker_cli(sockets["cli"], "exec", WATCHED, "true"),
        docker_cli(sockets["cli"], "restart", GATEWAY),
        docker_cli(sockets["relay"], "restart", WATCHED, api="1.41"),
        docker_cli(sockets["relay"], "exec", GATEWAY, "true", api="1.41"),
        docker_cli(sockets["monitor"], "restart", WATCHED, api="1.41"),
        docker_cli(sockets["monitor"], "images", api="1.41"),
    ]
    for result in denied:
        assert result.returncode != 0, result.args
        assert "dockgate:" in result.stderr, (result.args, result.stderr)
        assert "denied" in result.stderr, (result.args, result.stderr)
