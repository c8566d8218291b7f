"""Listeners, client identity, signals, the audit log and metrics of `dockgate serve`."""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import free_port, wait_for_port
from dockgate.decision import AllowAll, Client, Decision, Deny, Facts, Request
from dockgate.errors import ConfigError
from dockgate.shell import audit
from fakedaemon import (
    FakeDaemon,
    answer_chunks,
    answer_forever,
    answer_hijack,
    answer_slow,
    connect,
    is_closed,
    read_replies,
    run_proxy,
)


class Recorder(AllowAll):
    """AllowAll that remembers who asked."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        self.clients.append(client)
        return super().decide(client, request, facts)


def test_unix_listener_reports_peer_credentials_and_sets_the_mode(
        fake: FakeDaemon, sockdir: Path) -> None:
    """A unix client is identified by SO_PEERCRED; the socket file gets the configured mode."""
    recorder = Recorder()
    path = sockdir / "proxy.sock"
    with run_proxy(f"unix://{fake.path}", recorder, listen=f"unix://{path}",
                   DOCKGATE_SOCKET_MODE="640", DOCKGATE_SOCKET_OWNER=str(os.getuid()),
                   DOCKGATE_SOCKET_GROUP="65534"):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert (info.st_uid, info.st_gid) == (os.getuid(), 65534)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            reply, = read_replies(sock, [("GET", "/_ping")])
    assert reply.status == 200
    client = recorder.clients[0]
    assert (client.transport, client.uid, client.gid, client.pid) == (
        "unix", os.getuid(), os.getgid(), os.getpid())
    assert not path.exists()


def test_dual_stack_listener_serves_v4_and_v6_clients(fake: FakeDaemon) -> None:
    """tcp://[::]:PORT accepts both families and reports a v4 client as plain v4."""
    recorder = Recorder()
    port = free_port()
    with run_proxy(f"unix://{fake.path}", recorder, listen=f"tcp://[::]:{port}"):
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as sock:
                sock.settimeout(10)
                sock.connect((host, port))
                sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
                reply, = read_replies(sock, [("GET", "/_ping")])
                assert reply.status == 200
    assert [c.address for c in recorder.clients] == ["127.0.0.1", "::1"]


def test_disable_ipv6_turns_the_any_address_into_ipv4_only(fake: FakeDaemon) -> None:
    """DISABLE_IPV6 with tcp://[::]:PORT listens on 0.0.0.0: v4 served, v6 refused."""
    port = free_port()
    with run_proxy(f"unix://{fake.path}", listen=f"tcp://[::]:{port}", DISABLE_IPV6="1"):
        with connect(port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            assert read_replies(sock, [("GET", "/_ping")])[0].status == 200
        with socket.socket(socket.AF_INET6) as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("::1", port))


def _cert(name: str, issuer_key: ec.EllipticCurvePrivateKey | None,
          issuer: x509.Name | None, ca: bool,
          sans: list[x509.GeneralName]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _tls_ping(port: int, context: ssl.SSLContext) -> bytes:
    """Send a ping over TLS; what came back (b"" when the handshake was refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            return sock.recv(65536)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_tls_listener_requires_a_client_cert_and_reports_its_names(
        fake: FakeDaemon, sockdir: Path) -> None:
    """With a CA set only clients with a signed certificate get in; the decider sees CN, SANs."""
    ca_key, ca = _cert("dockgate-test-ca", None, None, True, [])
    server_key, server = _cert("localhost", ca_key, ca.subject, False,
                               [x509.DNSName("localhost")])
    client_key, client = _cert("client-1", ca_key, ca.subject, False,
                               [x509.DNSName("client-1.example")])
    _write(sockdir / "ca", ca_key, ca)
    _write(sockdir / "server", server_key, server)
    _write(sockdir / "client", client_key, client)
    recorder = Recorder()
    port = free_port()
    with run_proxy(f"unix://{fake.path}", recorder, listen=f"tls://127.0.0.1:{port}",
                   DOCKGATE_TLS_CERT=str(sockdir / "server.crt"),
                   DOCKGATE_TLS_KEY=str(sockdir / "server.key"),
                   DOCKGATE_TLS_CA=str(sockdir / "ca.crt")):
        context = ssl.create_default_context(cafile=str(sockdir / "ca.crt"))
        assert _tls_ping(port, context) == b""  # no client certificate: refused
        context.load_cert_chain(str(sockdir / "client.crt"), str(sockdir / "client.key"))
        assert _tls_ping(port, context).startswith(b"HTTP/1.1 200")
    assert len(recorder.clients) == 1
    assert recorder.clients[0].transport == "tls"
    assert recorder.clients[0].cert_cn == "client-1"
    assert recorder.clients[0].cert_sans == ("client-1.example",)


def test_reload_keeps_the_old_decider_when_the_new_one_is_invalid(fake: FakeDaemon) -> None:
    """SIGHUP with a broken policy must not leave the proxy without one."""
    def broken() -> AllowAll:
        raise ConfigError("policy.yaml line 3: unknown key")

    class DenyEverything(AllowAll):
        name = "deny-everything"

        def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
            return Deny("no", rule="test")

    with run_proxy(f"unix://{fake.path}") as proxy:
        proxy.call(lambda: proxy.proxy.reload(broken))
        assert proxy.proxy.decider.name == "allow-all"
        proxy.call(lambda: proxy.proxy.reload(DenyEverything))
        with connect(proxy.port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            reply, = read_replies(sock, [("GET", "/_ping")])
    assert reply.status == 403


def serve(fake: FakeDaemon, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m dockgate serve` on a free port in front of the fake (Tecnativa defaults)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    full_env.update(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "dockgate", "serve", "--listen", f"tcp://127.0.0.1:{port}",
         "--upstream", f"unix://{fake.path}", *args],
        env=full_env, stderr=subprocess.PIPE)
    wait_for_port(port)
    return process, port


def test_sigterm_lets_a_plain_request_finish_then_exits_zero(fake: FakeDaemon) -> None:
    """A graceful stop: the request in flight is answered, then the process exits 0."""
    fake.on("GET", "/version", answer_slow(1.0))
    process, port = serve(fake)
    with process, connect(port) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: d\r\n\r\n")
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        reply, = read_replies(sock, [("GET", "/version")])
        assert reply.status == 200
        assert reply.headers["connection"] == "close"
        assert process.wait(10) == 0
        assert process.stderr is not None
        log = process.stderr.read().decode()
    assert "shutting down" in log


def test_sigterm_does_not_wait_for_endless_streams(fake: FakeDaemon) -> None:
    """An endless stream (events) is not an in-flight request: it is closed at once."""
    fake.on("GET", "/events", answer_forever())
    process, port = serve(fake)
    with process, connect(port) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: d\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - started < 5  # the grace is 10 s by default
        assert is_closed(sock)
        assert process.stderr is not None
        process.stderr.read()


def test_each_request_writes_one_json_audit_line(fake: FakeDaemon) -> None:
    """The audit trail: one parseable record per request, allowed or denied."""
    process, port = serve(fake)
    with process:
        with connect(port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
                         b"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n")
            replies = read_replies(sock, [("GET", "/_ping"), ("GET", "/containers/json")])
        assert [r.status for r in replies] == [200, 403]
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        lines = process.stderr.read().decode().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    requests = [r for r in records if r["event"] == "request"]
    assert [(r["target"], r["decision"], r["status"]) for r in requests] == [
        ("/_ping", "allow", 200), ("/containers/json", "deny", 403)]
    first = requests[0]
    assert first["operation"] == "system.ping"
    assert first["client"].startswith("tcp:127.0.0.1:")
    assert {"rule", "bytes_in", "bytes_out", "duration_ms", "method"} <= set(first)
    assert "CONTAINERS" in requests[1]["reason"]


def test_metrics_count_requests_by_operation_decision_and_status(fake: FakeDaemon) -> None:
    """Prometheus sees the request counter and the open-connections gauge."""
    metrics_port = free_port()
    process, port = serve(fake, "--metrics-listen", f"127.0.0.1:{metrics_port}")
    with process:
        with connect(port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            read_replies(sock, [("GET", "/_ping")])
        wait_for_port(metrics_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as response:
            text = response.read().decode()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        process.stderr.read()
    assert ('dockgate_requests_total{decision="allow",operation="system.ping",status="200"} 1.0'
            in text)
    assert "dockgate_active_connections" in text


def test_streams_and_hijacked_sessions_get_open_and_close_records(fake: FakeDaemon) -> None:
    """Long-lived exchanges are visible in the audit trail when they start, not only at the end."""
    fake.on("GET", "/events", answer_chunks([b'{"a":1}\n']))
    fake.on("POST", "/containers/c1/attach", answer_hijack())
    lines = io.StringIO()
    audit.audit_to(audit.AuditWriter(lines))
    try:
        with run_proxy(f"unix://{fake.path}") as proxy, connect(proxy.port) as sock:
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: d\r\n\r\n")
            read_replies(sock, [("GET", "/events")])
            sock.sendall(b"POST /containers/c1/attach?stdin=1 HTTP/1.1\r\nHost: d\r\n"
                         b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 101")
            sock.shutdown(socket.SHUT_WR)
            assert is_closed(sock)
    finally:
        audit.audit_to(None)
    events = [(r["event"], r.get("target")) for r in map(json.loads, lines.getvalue().splitlines())]
    assert events == [
        ("stream.open", "/events"), ("stream.close", "/events"), ("request", "/events"),
        ("session.open", "/containers/c1/attach?stdin=1"),
        ("session.close", "/containers/c1/attach?stdin=1"),
        ("request", "/containers/c1/attach?stdin=1")]


def test_sighup_reloads_and_log_level_warning_silences_the_audit_trail(
        fake: FakeDaemon) -> None:
    """SIGHUP reaches reload(); LOG_LEVEL=warning keeps only warnings and errors."""
    process, port = serve(fake, LOG_LEVEL="warning")
    with process:
        with connect(port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            assert read_replies(sock, [("GET", "/_ping")])[0].status == 200
        process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        with connect(port) as sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            assert read_replies(sock, [("GET", "/_ping")])[0].status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        quiet = process.stderr.read().decode()
    assert '"event"' not in quiet
    assert "reloaded" not in quiet  # INFO
    process, port = serve(fake, LOG_LEVEL="info")
    with process:
        process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        log = process.stderr.read().decode()
    assert "reloaded: decisions now by" in log
