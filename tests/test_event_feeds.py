"""Shared event subscriptions (shell/feeds.py), against a scripted fake daemon.

Live ``GET /events`` streams with the same forwarded target share one daemon
stream. The fake daemon counts the requests that reach it and sends events when
a test says so, split where a test needs them split, which the real daemon cannot
be made to do; tests/test_event_feeds_daemon.py checks the same against dockerd.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import select
import threading
import time

import pytest

from dockgate.shell import audit, feeds
from fakedaemon import (
    EventClient,
    FakeConnection,
    FakeDaemon,
    Received,
    connect,
    followers,
    run_proxy,
    wait_for,
)

LIVE = "/v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D"


class EventSource:
    """The fake's /events handler: a chunked head, then what ``send`` is given, per stream."""

    def __init__(self) -> None:
        self.streams: list[queue.Queue[bytes | None]] = []
        self.targets: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: Received, conn: FakeConnection) -> bool:
        pending: queue.Queue[bytes | None] = queue.Queue()
        with self.lock:
            self.streams.append(pending)
            self.targets.append(request.target)
        conn.chunked_head()
        while True:
            readable, _, _ = select.select([conn.sock], [], [], 0.02)
            if readable and not conn.sock.recv(1):
                return False  # the proxy closed this stream
            with contextlib.suppress(queue.Empty):
                piece = pending.get_nowait()
                if piece is None:
                    conn.end_chunks()
                    return True
                conn.chunk(piece)

    def send(self, piece: bytes | None) -> None:
        """Send ``piece`` as one chunk on every stream (None: end them)."""
        with self.lock:
            for pending in self.streams:
                pending.put(piece)

    def wait_for_streams(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.streams) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.streams) == count


@pytest.fixture
def source(fake: FakeDaemon) -> EventSource:
    handler = EventSource()
    fake.on("GET", "/v1.41/events", handler)
    return handler


def test_clients_asking_the_same_live_events_share_one_daemon_stream(
        fake: FakeDaemon, source: EventSource) -> None:
    """Three clients, one daemon request; a fourth joining later gets what follows."""
    with run_proxy(f"unix://{fake.path}") as proxy, followers(proxy.port, LIVE, 3) as clients:
        source.wait_for_streams(1)
        source.send(b'{"n":1}\n')
        for client in clients:
            assert client.lines(1) == [b'{"n":1}\n']
            assert client.headers["transfer-encoding"] == "chunked"
        late = EventClient(proxy.port, LIVE)
        assert late.head() == 200
        source.send(b'{"n":2}\n')
        assert late.lines(1) == [b'{"n":2}\n']
        for client in clients:
            assert client.lines(2) == [b'{"n":1}\n', b'{"n":2}\n']
        assert len(source.streams) == 1
        assert [r.target for r in fake.requests] == [LIVE]
        for client in [*clients, late]:
            client.close()
        # The last client gone, the daemon stream is closed too.
        assert wait_for(lambda: fake.open_connections == 0)
        # and the next follower opens a new one.
        with followers(proxy.port, LIVE, 1):
            source.wait_for_streams(2)


@pytest.mark.parametrize("query", ["since=1700000000", "until=4102444800",
                                   "filters=%7B%22until%22%3A%5B%5D%7D", "SINCE=1"])
def test_streams_that_replay_or_end_get_a_daemon_stream_each(
        fake: FakeDaemon, source: EventSource, query: str) -> None:
    """since/until (any spelling, even inside a filter) belong to one client."""
    with run_proxy(f"unix://{fake.path}") as proxy, \
            followers(proxy.port, f"/v1.41/events?{query}", 2):
        source.wait_for_streams(2)


def test_different_targets_get_different_daemon_streams(fake: FakeDaemon,
                                                        source: EventSource) -> None:
    with run_proxy(f"unix://{fake.path}") as proxy, followers(proxy.port, LIVE, 2), \
            followers(proxy.port, "/v1.41/events", 2):
        source.wait_for_streams(2)
        assert sorted(source.targets) == sorted([LIVE, "/v1.41/events"])


def test_a_client_joining_mid_event_starts_at_the_next_one(fake: FakeDaemon,
                                                           source: EventSource) -> None:
    """An event split across reads: a client joining in between never sees half of it."""
    with run_proxy(f"unix://{fake.path}") as proxy, followers(proxy.port, LIVE, 1) as (first,):
        source.wait_for_streams(1)
        source.send(b'{"n":1,')
        first.read_until(b'{"n":1,')  # relayed: the proxy read it, so the join is mid-event
        late = EventClient(proxy.port, LIVE)
        assert late.head() == 200
        source.send(b'"x":true}\n{"n":2}\n')
        source.send(b'{"n":3}\n')
        assert first.lines(3) == [b'{"n":1,"x":true}\n', b'{"n":2}\n', b'{"n":3}\n']
        assert late.lines(2) == [b'{"n":2}\n', b'{"n":3}\n']
        late.close()


def test_an_http_1_0_client_gets_the_shared_events_close_delimited(
        fake: FakeDaemon, source: EventSource) -> None:
    with run_proxy(f"unix://{fake.path}") as proxy, followers(proxy.port, LIVE, 1) as (modern,):
        with connect(proxy.port) as old:
            old.sendall(f"GET {LIVE} HTTP/1.0\r\n\r\n".encode())
            received = old.recv(65536)
            source.send(b'{"n":1}\n')
            source.send(None)
            while chunk := old.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding" not in head.lower()
        assert body == b'{"n":1}\n'
        assert modern.until_end() == b'{"n":1}\n'
        assert len(source.streams) == 1


def test_the_daemon_ending_the_stream_ends_every_client_and_each_may_go_on(
        fake: FakeDaemon, source: EventSource) -> None:
    """The last chunk reaches everyone; each connection then carries its next request."""
    with run_proxy(f"unix://{fake.path}") as proxy, followers(proxy.port, LIVE, 2) as clients:
        source.send(b'{"n":1}\n')
        source.send(None)
        for client in clients:
            assert client.until_end() == b'{"n":1}\n'
            client.sock.sendall(b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            assert client.sock.recv(65536).startswith(b"HTTP/1.1 200")
        # A new follower opens a new daemon stream: the ended feed is gone.
        with followers(proxy.port, LIVE, 1):
            source.wait_for_streams(2)


def test_a_client_that_stops_reading_is_cut_off_and_the_others_go_on(
        fake: FakeDaemon, source: EventSource) -> None:
    """One stalled follower never holds the feed back, nor more than MAX_LAG for itself."""
    event = b'{"pad":"' + b"x" * 1000 + b'"}\n'
    # Well past the lag allowed plus what the sockets' buffers take on loopback.
    count = (feeds.MAX_LAG + 32 * (1 << 20)) // len(event)
    lines = io.StringIO()
    audit.audit_to(audit.AuditWriter(lines))
    with contextlib.ExitStack() as stack:
        stack.callback(audit.audit_to, None)
        proxy = stack.enter_context(run_proxy(f"unix://{fake.path}"))
        reader, stalled = stack.enter_context(followers(proxy.port, LIVE, 2))
        sent = 0
        while sent < count:
            batch = min(256, count - sent)
            source.send(event * batch)
            sent += batch
            assert len(reader.lines(sent)) == sent
        assert reader.lines(count) == [event] * count
        # The stalled client, reading at last, finds its stream cut short and closed.
        held = 0
        stalled.sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while chunk := stalled.sock.recv(1 << 20):
                held += len(chunk)
        assert 0 < held < count * len(event)
        assert len(source.streams) == 1
        assert fake.open_connections == 1
    # The audit line of the cut-off stream says why it ended.
    reasons = [r.get("reason", "") for r in map(json.loads, lines.getvalue().splitlines())
               if r["event"] == "request"]
    assert any("fell more than 4 MiB behind the shared event stream" in reason
               for reason in reasons), reasons


def test_a_daemon_that_cannot_be_reached_answers_each_waiting_client_502() -> None:
    with run_proxy("unix:///nonexistent/docker.sock") as proxy:
        clients = [EventClient(proxy.port, LIVE) for _ in range(2)]
        for client in clients:
            assert client.head() == 502
            assert b"cannot reach the Docker daemon" in client.until_end()
            client.close()


def test_an_error_answer_is_not_shared(fake: FakeDaemon) -> None:
    """A 400 (a bad filter, say) is one client's answer; the next asks the daemon again."""
    def refuse(request: Received, conn: FakeConnection) -> bool:
        conn.json({"message": "invalid filter"}, status=400)
        return True

    fake.on("GET", "/v1.41/events", refuse)
    with run_proxy(f"unix://{fake.path}") as proxy:
        for _ in range(2):
            client = EventClient(proxy.port, LIVE)
            assert client.head() == 400
            assert b"invalid filter" in client.until_end()
            client.close()
        assert len([r for r in fake.requests if r.target == LIVE]) == 2


def test_a_pooled_connection_the_daemon_had_closed_is_retried_once(
        fake: FakeDaemon, source: EventSource) -> None:
    """The feed's first try on a pooled connection meets a close: a fresh one answers."""
    closed: list[str] = []

    def close_the_first(request: Received, conn: FakeConnection) -> bool:
        if not closed:
            closed.append(request.target)
            return False  # closes the connection without an answer
        return source(request, conn)

    fake.on("GET", "/v1.41/events", close_the_first)
    with run_proxy(f"unix://{fake.path}") as proxy:
        with connect(proxy.port) as sock:  # leaves an idle connection in the pool
            sock.sendall(b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with followers(proxy.port, LIVE, 1) as (client,):
            source.send(b'{"n":1}\n')
            assert client.lines(1) == [b'{"n":1}\n']
        assert closed == [LIVE]
        assert len(fake.raw) == 2  # the pooled connection, then the fresh one
