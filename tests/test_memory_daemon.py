"""Memory: thousands of idle ``GET /events`` streams held through one dockgate worker.

Every dashboard, Traefik and Portainer instance keeps an events stream open forever, so
what an idle stream costs the proxy decides how many clients one small process serves.
The test opens ``STREAMS`` streams against the real daemon through one worker, reads the
proxy's resident set size from /proc and prints it with the cost per stream; the
assertion is a generous bound, not a timing.

The streams ask the same live question (one label filter, no ``since``), as a
fleet of dashboards does, so they share one daemon stream (shell/feeds.py): each
costs the proxy one descriptor, the client's, and 10,000 fit under this project's
machines' open-files limit of 20,000 per process (a hard limit the sandbox does not
let even root raise: it withholds CAP_SYS_RESOURCE). The fixture still sizes the
count to the limit, leaving room for the proxy's own files, and the printed figures
name the count held.

A second case asks each stream for events ``since`` the start, which only its own
daemon stream can answer: there each costs two descriptors (client and daemon side),
and under the same limit the test holds 9,900.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import ALL_ON, DockgateProcess, StartDockgate

pytestmark = [pytest.mark.daemon, pytest.mark.slow]

STREAMS_WANTED = 10_000
RSS_BOUND_KB = 300 * 1024
CONNECT_CONCURRENCY = 100   # within the listen backlog of the proxy and the daemon


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture
def fd_limit() -> Iterator[int]:
    """The soft open-files limit raised to the hard one (the proxy inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def hold_streams(port: int, count: int, target: bytes) -> tuple[list[asyncio.StreamWriter],
                                                                      int]:
    """Open ``count`` event streams (each answered with its 200 head); (writers, failures)."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    request = b"GET " + target + b" HTTP/1.1\r\nHost: docker\r\n\r\n"

    async def one() -> asyncio.StreamWriter | None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                return None
            if not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                return None
            return writer

    results = await asyncio.gather(*(one() for _ in range(count)))
    writers = [w for w in results if w is not None]
    return writers, count - len(writers)


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_idle_event_streams_stay_within_a_bounded_rss(fd_limit: int, kind: str,
                                                      start_dockgate: StartDockgate,
                                                      busybox_image: str) -> None:
    """One worker holds ~10,000 idle /events streams in well under 300 MB."""
    proxy: DockgateProcess = start_dockgate(env=ALL_ON)
    pid = proxy.process.pid
    filters = quote(json.dumps({"label": [f"dockgate.test.memory={uuid.uuid4().hex}"]}))
    target = f"/v1.41/events?filters={filters}".encode()
    descriptors = 1
    if kind == "private":
        target += b"&since=%d" % time.time()
        descriptors = 2
    fd_room = min(STREAMS_WANTED, (fd_limit - 200) // descriptors)
    before = rss_kb(pid)

    async def run() -> tuple[int, int, float]:
        started = time.monotonic()
        writers, failures = await hold_streams(proxy.port, fd_room, target)
        opened = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the proxy settle before reading its memory
        held = rss_kb(pid)
        for writer in writers:
            with contextlib.suppress(OSError):
                writer.close()
        return failures, held, opened

    failures, held, opened = asyncio.run(run())
    per_stream = (held - before) * 1024 / max(1, fd_room - failures)
    figures = {"kind": kind, "streams": fd_room, "failed": failures,
               "opened_in_s": round(opened, 1), "rss_before_kb": before, "rss_held_kb": held,
               "peak_rss_kb": rss_kb(pid, "VmHWM"), "bytes_per_stream": round(per_stream)}
    print(f"\nmemory: {json.dumps(figures)}")
    assert failures == 0
    assert held < RSS_BOUND_KB
