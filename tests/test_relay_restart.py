"""Restarting the gateway: DOCKER_HOST, error classes, retries, timeouts, readiness.

A scripted fake Docker API on loopback produces what a real daemon cannot on
demand (503, slow answers, HTML denials); the real daemon on its unix socket
checks the restart itself.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest

from conftest import DOCKER_SOCKET, free_port, unique_name
from mcprelay.dockerhttp import Endpoint, endpoint_from_env, send
from mcprelay.errors import (
    DaemonError,
    DeniedError,
    GatewayMissingError,
    InputError,
    NotReadyError,
    RequestTimeoutError,
    UnreachableError,
)
from mcprelay.restart import Restarter, RestartOptions, started_at_key

OLD = "2026-01-01T00:00:00.5Z"
NEW = "2026-01-01T00:00:01.25Z"


@dataclass
class Reply:
    status: int
    body: object = b""
    content_type: str = "application/json"
    delay: float = 0.0


@dataclass
class FakeDocker:
    """Answers (METHOD, path without query) from a script; the last reply repeats."""

    script: dict[tuple[str, str], list[Reply]]
    received: list[str] = field(default_factory=list)
    server: FakeServer | None = None

    def reply(self, method: str, target: str) -> Reply:
        self.received.append(f"{method} {target}")
        path = target.partition("?")[0]
        replies = self.script.get((method, path), [Reply(404, {"message": "?"})])
        return replies.pop(0) if len(replies) > 1 else replies[0]

    @property
    def endpoint(self) -> Endpoint:
        assert self.server is not None
        return endpoint_from_env({"DOCKER_HOST": f"tcp://127.0.0.1:{self.server.server_port}"})


def inspect(running: bool, started_at: str) -> Reply:
    return Reply(200, {"State": {"Running": running, "StartedAt": started_at,
                                 "Status": "running" if running else "exited", "ExitCode": 0,
                                 "Error": ""}})


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on ``received`` instead."""

    def handle_one(self) -> None:
        reply = self.server.fake.reply(self.command, self.path)
        time.sleep(reply.delay)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.handle_one()

    def do_POST(self) -> None:
        self.handle_one()


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeDocker, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.fake = fake
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)


@contextlib.contextmanager
def serving(fake: FakeDocker, tls: ssl.SSLContext | None = None) -> Iterator[FakeDocker]:
    server = FakeServer(fake, tls)
    fake.server = server
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeDocker]:
    with serving(FakeDocker({})) as running:
        yield running


def make_certificate(directory: Path, name: str) -> None:
    """A self-signed certificate for 127.0.0.1 (``name``.pem and ``name``-key.pem)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", directory / f"{name}-key.pem", "-out", directory / f"{name}.pem"],
                   check=True, capture_output=True)


def options(**overrides: object) -> RestartOptions:
    values: dict[str, object] = {"gateway": "gw", "stop_timeout": 3, "retries": 3,
                                 "backoff": 0.01, "readiness": "none", "ready_timeout": 2.0,
                                 "poll_interval": 0.01, "settle": 0.0}
    values.update(overrides)
    return RestartOptions(**values)  # type: ignore[arg-type]


def test_restart_request_is_unversioned_with_an_explicit_stop_timeout(fake: FakeDocker) -> None:
    """The seed's request, plus ?t= so the daemon's stop wait is known and bounded."""
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    result = Restarter(fake.endpoint, options()).run()
    assert fake.received == ["POST /containers/gw/restart?t=3"]
    assert result.attempts == 1


def test_http_timeout_is_longer_than_the_stop_timeout() -> None:
    """A restart takes up to t plus the start: a timeout equal to t races the daemon."""
    assert options(stop_timeout=10, start_allowance=20).http_timeout == 30


def test_answer_slower_than_the_stop_timeout_but_within_the_allowance_succeeds(
        fake: FakeDocker) -> None:
    """The allowance is what makes a slow-but-normal restart a success."""
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204, delay=0.6)]
    Restarter(fake.endpoint, options(stop_timeout=0, start_allowance=2)).run()


def test_no_answer_within_the_http_timeout_is_a_timeout_and_not_retried(
        fake: FakeDocker) -> None:
    """Retrying a restart that may still be under way would restart the gateway twice."""
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204, delay=1.5)]
    with pytest.raises(RequestTimeoutError, match=r"within 0.5s"):
        Restarter(fake.endpoint, options(stop_timeout=0, start_allowance=0.5)).run()
    assert len(fake.received) == 1


def test_transient_503_is_retried_with_backoff_then_succeeds(fake: FakeDocker) -> None:
    """A proxy restarting or a daemon hiccup should not fail an approval."""
    fake.script[("POST", "/containers/gw/restart")] = [Reply(503), Reply(502), Reply(204)]
    sleeps: list[float] = []
    result = Restarter(fake.endpoint, options(backoff=0.5), sleep=sleeps.append).run()
    assert result.attempts == 3
    assert sleeps == [0.5, 1.0]


def test_persistent_502_gives_up_after_the_retry_budget(fake: FakeDocker) -> None:
    """Retries are bounded: the relay reports the failure instead of hanging."""
    fake.script[("POST", "/containers/gw/restart")] = [Reply(502, {"message": "bad gateway"})]
    with pytest.raises(DaemonError, match="gave up after 4 attempts"):
        Restarter(fake.endpoint, options(), sleep=lambda _: None).run()
    assert len(fake.received) == 4


def test_daemon_500_is_a_daemon_error_without_retry(fake: FakeDocker) -> None:
    """A 500 is the daemon's answer about the container; repeating it changes nothing."""
    fake.script[("POST", "/containers/gw/restart")] = [
        Reply(500, {"message": "cannot restart container gw: OCI runtime failed"})]
    with pytest.raises(DaemonError, match="OCI runtime failed") as caught:
        Restarter(fake.endpoint, options()).run()
    assert caught.value.exit_code == 23
    assert len(fake.received) == 1


def test_403_shows_the_proxys_json_message(fake: FakeDocker) -> None:
    """The operator must see why the proxy said no (dockgate explains what to set)."""
    message = "dockgate: POST /containers/gw/restart denied — not in policy"
    fake.script[("POST", "/containers/gw/restart")] = [Reply(403, {"message": message})]
    with pytest.raises(DeniedError) as caught:
        Restarter(fake.endpoint, options()).run()
    assert message in str(caught.value)
    assert caught.value.exit_code == 20


def test_403_html_page_is_shown_as_text(fake: FakeDocker) -> None:
    """HAProxy-based proxies answer an HTML page; the relay shows its text, not markup."""
    page = (b"<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules."
            b"\n</body></html>\n")
    fake.script[("POST", "/containers/gw/restart")] = [Reply(403, page, "text/html")]
    with pytest.raises(DeniedError, match="403 Forbidden Request forbidden by administrative"):
        Restarter(fake.endpoint, options()).run()


def test_404_is_gateway_missing_not_success(fake: FakeDocker) -> None:
    """The seed treated 404 as success and announced servers that were never loaded."""
    fake.script[("POST", "/containers/gw/restart")] = [Reply(404, {"message": "No such"})]
    with pytest.raises(GatewayMissingError, match="gw not found"):
        Restarter(fake.endpoint, options()).run()


def test_readiness_waits_for_running_with_a_newer_started_at(fake: FakeDocker) -> None:
    """Success means the gateway runs again, not merely that the daemon answered 204."""
    fake.script[("GET", "/containers/gw/json")] = [
        inspect(True, OLD), inspect(False, OLD), inspect(True, OLD), inspect(True, NEW)]
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    result = Restarter(fake.endpoint, options(readiness="inspect")).run()
    assert result.started_at == NEW
    assert fake.received.count("GET /containers/gw/json") == 4


def test_gateway_that_never_runs_again_is_not_ready(fake: FakeDocker) -> None:
    """A gateway that crashes on the new catalog must not be reported as serving it."""
    fake.script[("GET", "/containers/gw/json")] = [inspect(True, OLD), inspect(False, NEW)]
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    with pytest.raises(NotReadyError, match=r"not running again after 0.2s"):
        Restarter(fake.endpoint, options(readiness="inspect", ready_timeout=0.2)).run()


def test_gateway_seen_running_for_a_moment_is_not_ready(fake: FakeDocker) -> None:
    """A gateway that exits right after its start is caught running by one poll: not ready."""
    fake.script[("GET", "/containers/gw/json")] = [
        inspect(True, OLD), inspect(True, NEW), inspect(False, NEW)]
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    with pytest.raises(NotReadyError, match=r"not running again after 0.3s"):
        Restarter(fake.endpoint, options(readiness="inspect", ready_timeout=0.3,
                                         settle=0.1)).run()


def test_gateway_restarted_again_by_its_policy_must_settle_on_one_start(
        fake: FakeDocker) -> None:
    """A crash loop shows a new StartedAt at every poll: it never stays up, so not ready."""
    starts = [f"2026-12-01T10:00:{second:02d}.000000000Z" for second in range(10, 60)]
    fake.script[("GET", "/containers/gw/json")] = [
        inspect(True, OLD), *(inspect(True, start) for start in starts)]
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    with pytest.raises(NotReadyError, match=r"has not stayed running for 5s"):
        Restarter(fake.endpoint, options(readiness="inspect", ready_timeout=0.3, settle=5,
                                         poll_interval=0.005)).run()


def test_gateway_that_stays_up_for_the_settle_time_is_ready(fake: FakeDocker) -> None:
    """Readiness returns once the same start has been seen running for --settle seconds."""
    fake.script[("GET", "/containers/gw/json")] = [inspect(True, OLD), inspect(True, NEW)]
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    result = Restarter(fake.endpoint, options(readiness="inspect", settle=0.1)).run()
    assert result.started_at == NEW
    assert result.seconds >= 0.1
    assert fake.received.count("GET /containers/gw/json") > 2


def test_inspect_denied_explains_the_readiness_choice(fake: FakeDocker) -> None:
    """With a restart-only policy the operator learns to grant inspect or use --readiness none."""
    fake.script[("GET", "/containers/gw/json")] = [Reply(403, {"message": "no"})]
    with pytest.raises(DeniedError, match="--readiness none"):
        Restarter(fake.endpoint, options(readiness="inspect")).run()
    assert fake.received == ["GET /containers/gw/json"]


def test_health_url_is_awaited_after_the_restart(fake: FakeDocker) -> None:
    """When the gateway has a health endpoint, success waits for it to answer 2xx."""
    assert fake.server is not None
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    fake.script[("GET", "/health")] = [Reply(503), Reply(503), Reply(200)]
    url = f"http://127.0.0.1:{fake.server.server_port}/health"
    Restarter(fake.endpoint, options(health_url=url)).run()
    assert fake.received.count("GET /health") == 3


def test_silent_health_url_is_not_ready(fake: FakeDocker) -> None:
    """A health URL that never answers 2xx ends in not-ready, with the last status."""
    assert fake.server is not None
    fake.script[("POST", "/containers/gw/restart")] = [Reply(204)]
    fake.script[("GET", "/health")] = [Reply(500)]
    url = f"http://127.0.0.1:{fake.server.server_port}/health"
    with pytest.raises(NotReadyError, match="status 500"):
        Restarter(fake.endpoint, options(health_url=url, ready_timeout=0.1)).run()


def test_refused_connection_is_retried_then_unreachable() -> None:
    """Proxy down: bounded retries with growing delays, then a clear 'unreachable'."""
    endpoint = endpoint_from_env({"DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}"})
    sleeps: list[float] = []
    with pytest.raises(UnreachableError, match=r"Connection refused.*gave up after 4"):
        Restarter(endpoint, options(backoff=0.25), sleep=sleeps.append).run()
    assert sleeps == [0.25, 0.5, 1.0]


def test_unresolvable_proxy_host_is_unreachable() -> None:
    """A DNS failure (proxy service missing from the network) names the host problem."""
    endpoint = endpoint_from_env({"DOCKER_HOST": "tcp://dockgate.invalid:2375"})
    with pytest.raises(UnreachableError, match="cannot resolve"):
        Restarter(endpoint, options(retries=0)).run()


def test_missing_unix_socket_is_unreachable(tmp_path: Path) -> None:
    """unix:// DOCKER_HOST is honoured (the seed's client supported tcp:// only)."""
    endpoint = endpoint_from_env({"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    with pytest.raises(UnreachableError, match=r"none.sock"):
        send(endpoint, "GET", "/_ping", 1.0)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("/var/run/docker.sock", "", 0)),
    ({"DOCKER_HOST": "unix:///run/x.sock"}, ("/run/x.sock", "", 0)),
    ({"DOCKER_HOST": "tcp://dockgate:2375"}, (None, "dockgate", 2375)),
    ({"DOCKER_HOST": "tcp://dockgate"}, (None, "dockgate", 2375)),
    ({"DOCKER_HOST": "tcp://[::1]:2400"}, (None, "::1", 2400)),
])
def test_docker_host_forms_map_to_endpoints(env: dict[str, str],
                                            expected: tuple[str | None, str, int]) -> None:
    """DOCKER_HOST is read the way the docker CLI reads it."""
    endpoint = endpoint_from_env(env)
    assert (endpoint.socket_path, endpoint.host, endpoint.port) == expected
    assert endpoint.tls is None


@pytest.mark.parametrize("url", ["ssh://host", "http://h:2375", "tcp://", "unix://",
                                 "tcp://h:99999", "tcp://h:2375/path"])
def test_unsupported_docker_host_is_an_input_error(url: str) -> None:
    """A DOCKER_HOST the relay cannot honour is refused up front, not guessed at."""
    with pytest.raises(InputError, match="DOCKER_HOST"):
        endpoint_from_env({"DOCKER_HOST": url})


def test_tls_verify_uses_the_cert_path_and_port_2376(tmp_path: Path) -> None:
    """DOCKER_TLS_VERIFY/DOCKER_CERT_PATH turn on verified TLS, by default on port 2376."""
    make_certificate(tmp_path, "ca")
    (tmp_path / "ca-key.pem").rename(tmp_path / "key.pem")
    (tmp_path / "cert.pem").write_bytes((tmp_path / "ca.pem").read_bytes())
    endpoint = endpoint_from_env({"DOCKER_HOST": "tcp://dockgate", "DOCKER_TLS_VERIFY": "1",
                                  "DOCKER_CERT_PATH": str(tmp_path)})
    assert endpoint.port == 2376
    assert endpoint.tls is not None
    assert endpoint.tls.check_hostname


def test_restart_over_verified_tls_reaches_the_proxy(tmp_path: Path) -> None:
    """A TLS DOCKER_HOST works end to end: handshake, verification, the restart request."""
    make_certificate(tmp_path, "ca")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    fake = FakeDocker({("POST", "/containers/gw/restart"): [Reply(204)]})
    with serving(fake, server_tls):
        assert fake.server is not None
        env = {"DOCKER_HOST": f"tcp://127.0.0.1:{fake.server.server_port}",
               "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
        Restarter(endpoint_from_env(env), options()).run()
    assert fake.received == ["POST /containers/gw/restart?t=3"]


def test_tls_server_with_an_unknown_certificate_is_refused_without_retry(
        tmp_path: Path) -> None:
    """A proxy whose certificate the CA did not sign is a configuration error, not flakiness."""
    make_certificate(tmp_path, "ca")
    make_certificate(tmp_path, "other")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "other.pem", tmp_path / "other-key.pem")
    fake = FakeDocker({("POST", "/containers/gw/restart"): [Reply(204)]})
    with serving(fake, server_tls):
        assert fake.server is not None
        env = {"DOCKER_HOST": f"tcp://127.0.0.1:{fake.server.server_port}",
               "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
        sleeps: list[float] = []
        with pytest.raises(UnreachableError, match=r"TLS with tcp://127\.0\.0\.1:\d+ failed"):
            Restarter(endpoint_from_env(env), options(), sleep=sleeps.append).run()
    assert sleeps == []
    assert fake.received == []


def test_tls_verify_without_certificates_is_an_input_error(tmp_path: Path) -> None:
    """Silently falling back to plain HTTP would send the request unprotected."""
    with pytest.raises(InputError, match="certificates"):
        endpoint_from_env({"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "1",
                           "DOCKER_CERT_PATH": str(tmp_path)})


@pytest.mark.parametrize(("earlier", "later"), [
    ("2026-01-01T00:00:00.9Z", "2026-01-01T00:00:01Z"),
    ("2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.500000001Z"),
    ("0001-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00.1Z"),
])
def test_started_at_compares_by_time_not_text(earlier: str, later: str) -> None:
    """Docker trims trailing zeros of the nanoseconds, so string order would be wrong."""
    assert started_at_key(earlier) < started_at_key(later)


@pytest.mark.daemon
def test_restart_over_the_daemon_unix_socket_runs_the_gateway_again(
        docker_client: docker.DockerClient, busybox_image: str) -> None:
    """Against the real daemon: a new StartedAt and State.Running before success."""
    name = unique_name("relay-gw")
    container = docker_client.containers.run(busybox_image, ["sleep", "600"], name=name,
                                             network_mode="none", detach=True)
    before = container.attrs["State"]["StartedAt"]
    endpoint = endpoint_from_env({"DOCKER_HOST": f"unix://{DOCKER_SOCKET}"})
    result = Restarter(endpoint, RestartOptions(gateway=name, stop_timeout=1)).run()
    container.reload()
    assert container.attrs["State"]["Running"]
    assert container.attrs["State"]["StartedAt"] == result.started_at != before
    container.remove(force=True)


@pytest.mark.daemon
def test_cli_reports_a_missing_gateway_with_exit_code_21() -> None:
    """Gateway missing is an error with its own exit code, never 'server available'."""
    process = subprocess.run(
        [sys.executable, "-m", "mcprelay", "restart", "--gateway", unique_name("missing")],
        capture_output=True, text=True, env={"DOCKER_HOST": f"unix://{DOCKER_SOCKET}"},
        check=False)
    assert process.returncode == 21
    assert "gateway_missing" in process.stderr
    assert "No such container" in process.stderr
    assert process.stdout == ""
