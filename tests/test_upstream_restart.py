"""A daemon restart while the proxy runs: 502s during the outage, recovery without a restart.

The shared daemon on /var/run/docker.sock is never touched: the test starts its
own second dockerd on a private socket, stops it and starts it again.
"""

from __future__ import annotations

import pytest

from conftest import SecondDaemon
from fakedaemon import connect, read_replies, run_proxy

pytestmark = pytest.mark.daemon


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
