"""A daemon restart while the proxy runs: 502s during the outage, recovery without a restart.

The shared daemon on /var/run/docker.sock is never touched: the test starts its
own second dockerd on a private socket, stops it and starts it again.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakedaemon import connect, read_replies, run_proxy

pytestmark = pytest.mark.daemon


class SecondDaemon:
    """A private dockerd (no networking of its own) under a short /tmp directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"),
             "-H", f"unix://{self.socket}", "--bridge=none", "--iptables=false",
             "--ip6tables=false"], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = subprocess.run(["curl", "-s", "--unix-socket", str(self.socket),
                                     "http://d/_ping"], capture_output=True, check=False)
            if result.stdout == b"OK":
                return
            time.sleep(0.2)
        raise RuntimeError("the second dockerd did not come up: "
                           + (self.root / "dockerd.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def second_daemon() -> Iterator[SecondDaemon]:
    """A second dockerd, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dg-", dir="/tmp"))
    daemon = SecondDaemon(root)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        subprocess.run(["umount", "-R", str(root / "exec")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def ping(port: int) -> tuple[int, dict[str, str] | bytes]:
    with connect(port) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/_ping")])
    return reply.status, reply.json() if reply.status == 502 else reply.body


def test_daemon_restart_gives_502_then_recovers_without_proxy_restart(
        second_daemon: SecondDaemon) -> None:
    """Requests fail with a JSON 502 naming the socket while dockerd is down, then succeed."""
    with run_proxy(f"unix://{second_daemon.socket}") as proxy:
        assert ping(proxy.port) == (200, b"OK")
        assert ping(proxy.port) == (200, b"OK")  # a pooled connection is now idle
        second_daemon.stop()
        status, body = ping(proxy.port)
        assert status == 502
        assert isinstance(body, dict)
        assert str(second_daemon.socket) in body["message"]
        second_daemon.start()
        assert ping(proxy.port) == (200, b"OK")
        assert proxy.thread.is_alive()
