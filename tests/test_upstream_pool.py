"""The upstream side: keep-alive reuse, tcp:// daemons, and bad upstream settings."""

from __future__ import annotations

import pytest

from dockgate.errors import ConfigError
from dockgate.shell.upstream import Upstream
from fakedaemon import FakeDaemon, connect, read_replies, run_proxy


def ping(port: int) -> int:
    with connect(port) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        reply, = read_replies(sock, [("GET", "/_ping")])
    return reply.status


def test_sequential_clients_reuse_one_daemon_connection(fake: FakeDaemon) -> None:
    """Keep-alive to the daemon: ten short client connections, one upstream connection."""
    with run_proxy(f"unix://{fake.path}") as proxy:
        assert [ping(proxy.port) for _ in range(10)] == [200] * 10
    assert len(fake.requests) == 10
    assert len(fake.raw) == 1


def test_tcp_upstream_is_supported(fake: FakeDaemon) -> None:
    """A daemon on tcp://HOST:PORT (here: a second dockgate in front of the fake) works."""
    with run_proxy(f"unix://{fake.path}") as inner, \
            run_proxy(f"tcp://127.0.0.1:{inner.port}") as outer:
        assert ping(outer.port) == 200
        assert ping(outer.port) == 200
    assert [r.target for r in fake.requests] == ["/_ping", "/_ping"]


@pytest.mark.parametrize("url", ["http://localhost:2375", "unix://", "tcp://host",
                                 "tcp://host:notaport", "npipe:////./pipe/docker"])
def test_bad_upstream_urls_are_config_errors(url: str) -> None:
    """A typo in --upstream is reported at startup, naming the value."""
    with pytest.raises(ConfigError, match="upstream"):
        Upstream(url, 5.0)
