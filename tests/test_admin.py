"""The admin listener: health, readiness and metrics outside every policy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import SecondDaemon, StartDockgate, free_port, wait_for_port

pytestmark = pytest.mark.daemon

NOTHING_FOR_ANYONE = "policies:\n  p: {grants: [{allow: [system.ping]}]}\nclients:\n" \
                     "  - uid: 4242\n    policy: p\n"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_and_metrics_answer_where_the_api_policy_denies_everything(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """A per-client policy with no default denies the API probe; the admin port still answers."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(NOTHING_FOR_ANYONE)
    admin = free_port()
    proxy = start_dockgate(args=["--policy", str(policy), "--admin-listen", f"127.0.0.1:{admin}"])
    wait_for_port(admin)
    assert get(proxy.port, "/_ping")[0] == 403
    assert get(admin, "/healthz") == (200, "ok\n")
    assert get(admin, "/readyz") == (200, "ready: the daemon answers /_ping\n")
    status, text = get(admin, "/metrics")
    assert status == 200
    assert 'dockgate_requests_total{decision="deny",operation="system.ping",status="403"} 1.0' \
        in text
    assert 'dockgate_upstream_errors_total{kind="connect"} 0.0' in text
    assert 'dockgate_reloads_total{result="ok"} 0.0' in text
    assert 'dockgate_open_streams{kind="stream"} 0.0' in text
    assert get(admin, "/") == (404, "not found: the admin listener serves /healthz, "
                                    "/metrics, /readyz\n")
    assert get(admin, "/healthz/x")[0] == 404


def test_readyz_flips_when_the_daemon_goes_away_and_comes_back(
        start_dockgate: StartDockgate, second_daemon: SecondDaemon) -> None:
    """Readiness is the daemon answering /_ping; liveness stays up while it is gone."""
    admin = free_port()
    start_dockgate(upstream=f"unix://{second_daemon.socket}",
                   args=["--admin-listen", f"127.0.0.1:{admin}"])
    wait_for_port(admin)
    assert get(admin, "/readyz")[0] == 200
    second_daemon.stop()
    status, text = get(admin, "/readyz")
    assert status == 503
    assert text.startswith(f"not ready: cannot connect to the daemon at "
                           f"unix://{second_daemon.socket}")
    assert get(admin, "/healthz")[0] == 200
    second_daemon.start()
    assert get(admin, "/readyz")[0] == 200


def test_a_busy_admin_port_is_a_clear_error_naming_it() -> None:
    """No traceback: the flag, the address and what to do."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        done = subprocess.run(
            [sys.executable, "-m", "dockgate", "serve", "--listen",
             f"tcp://127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30, check=False, env=env)
    assert done.returncode == 2
    assert done.stderr.endswith(f"dockgate: cannot listen on --admin-listen 127.0.0.1:{port}: "
                                "the port is in use by another process; choose another port "
                                "or stop it\n")
    assert "Traceback" not in done.stderr


def test_the_metrics_port_serves_metrics_only(start_dockgate: StartDockgate) -> None:
    """--metrics-listen answers 404 on every other path (it used to answer 200 everywhere)."""
    port = free_port()
    start_dockgate(args=["--metrics-listen", f"127.0.0.1:{port}"])
    wait_for_port(port)
    deadline = time.monotonic() + 5
    while get(port, "/metrics")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "dockgate_build_info" in get(port, "/metrics")[1]
    assert get(port, "/healthz")[0] == 404
    assert get(port, "/anything")[0] == 404
