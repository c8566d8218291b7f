"""Attach and exec output after the client's end of input arrives over tls:// too.

The docker CLI ends stdin of a hijacked TLS session with a TCP half-close (no
close_notify), another client may send a TLS 1.3 close_notify for the same: either way
the container's output that follows must still reach the client, as it does over
plain TCP. The real CLI runs against the real daemon; a memory-BIO client sends the
close_notify form to the fake daemon's echoing hijack.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from conftest import ALL_ON, DOCKER_SOCKET, StartDockgate, free_port, unique_name, wait_for_port
from fakedaemon import FakeDaemon, answer_hijack
from test_clients_daemon import make_pki

DOCKER = "/usr/local/bin/docker"


def start_tls_proxy(start_dockgate: StartDockgate, certs: Path, upstream: str) -> int:
    make_pki(certs)
    port = free_port()
    start_dockgate(env=ALL_ON, upstream=upstream, args=[
        "--listen", f"tls://127.0.0.1:{port}", "--tls-cert", str(certs / "server.pem"),
        "--tls-key", str(certs / "server-key.pem"), "--tls-ca", str(certs / "ca.pem")])
    wait_for_port(port)
    return port


@pytest.mark.daemon
def test_docker_run_i_over_tls_returns_the_output_after_stdin_ends(
        start_dockgate: StartDockgate, tmp_path: Path, busybox_image: str) -> None:
    """`echo hi | docker --tlsverify run -i ... cat` prints hi through a tls:// listener."""
    port = start_tls_proxy(start_dockgate, tmp_path, f"unix://{DOCKER_SOCKET}")
    certs = tmp_path / "cli"
    certs.mkdir()
    for source, target in (("ca.pem", "ca.pem"), ("relay.pem", "cert.pem"),
                           ("relay-key.pem", "key.pem")):
        (certs / target).write_bytes((tmp_path / source).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"tcp://127.0.0.1:{port}", DOCKER_TLS_VERIFY="1",
               DOCKER_CERT_PATH=str(certs))
    result = subprocess.run(
        [DOCKER, "run", "-i", "--rm", "--network", "none", "--name", unique_name("tls-i"),
         busybox_image, "sh", "-c", "cat; echo after-eof"],
        input=b"hi\n", capture_output=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi\nafter-eof\n"


class MemoryTLSClient:
    """A TLS client on memory BIOs over a plain socket, to send exactly what a test wants."""

    def __init__(self, port: int, certs: Path) -> None:
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        context.load_cert_chain(str(certs / "relay.pem"), str(certs / "relay-key.pem"))
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump()
        self._send_pending()

    def _send_pending(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _pump(self) -> bool:
        self._send_pending()
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return bool(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._send_pending()

    def close_notify(self) -> None:
        """End our direction with a TLS close_notify, and keep reading."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._send_pending()

    def read_all(self) -> bytes:
        """Plaintext until the server's close_notify or EOF."""
        out = bytearray()
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not self._pump():
                    return bytes(out)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


def test_a_close_notify_ends_only_the_clients_direction_of_a_hijacked_session(
        start_dockgate: StartDockgate, fake: FakeDaemon, tmp_path: Path) -> None:
    """TLS 1.3 close_notify is a half-close: the daemon sees EOF, its answer still comes back."""
    fake.on("POST", "/containers/gw/attach", answer_hijack())
    port = start_tls_proxy(start_dockgate, tmp_path, f"unix://{fake.path}")
    client = MemoryTLSClient(port, tmp_path)
    assert client.tls.version() == "TLSv1.3"
    client.send(b"POST /containers/gw/attach?stdin=1&stream=1 HTTP/1.1\r\nHost: d\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        try:
            head += client.tls.read(65536)
        except ssl.SSLWantReadError:
            client._pump()
    assert head.startswith(b"HTTP/1.1 101")
    client.send(b"hi")
    client.close_notify()
    rest = head.split(b"\r\n\r\n", 1)[1] + client.read_all()
    assert rest == b"echo:hiEOF-SEEN"
    assert fake.hijack_eofs == 1
    client.sock.close()


def test_a_tls_client_that_never_finishes_its_handshake_is_dropped(
        start_dockgate: StartDockgate, fake: FakeDaemon, tmp_path: Path) -> None:
    """The handshake is bounded by the header timeout: a silent TCP client does not stay."""
    make_pki(tmp_path)
    port = free_port()
    start_dockgate(env={"DOCKGATE_HEADER_TIMEOUT": "0.5"}, upstream=f"unix://{fake.path}",
                   args=["--listen", f"tls://127.0.0.1:{port}",
                         "--tls-cert", str(tmp_path / "server.pem"),
                         "--tls-key", str(tmp_path / "server-key.pem")])
    wait_for_port(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        assert sock.recv(1) == b""
