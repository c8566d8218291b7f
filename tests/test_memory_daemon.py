"""Memory: thousands of idle ``GET /events`` streams held through one dockgate worker.

Every dashboard, Traefik and Portainer instance keeps an events stream open forever, so
what an idle stream costs the proxy decides how many clients one small process serves.
The test opens ``STREAMS`` streams against the real daemon through one worker, reads the
proxy's resident set size from /proc and prints it with the cost per stream; the
assertion is a generous bound, not a timing.

The test asks for 10,000 streams and holds as many as the open-files limit lets it:
each stream costs the proxy two descriptors (client side and daemon side), and the hard
limit (``RLIMIT_NOFILE`` of this process, which the proxy inherits) is the bound. On
this project's machines it is 20,000 per process and cannot be raised, not even by root
(the sandbox withholds CAP_SYS_RESOURCE), so there the test holds 9,900 and leaves room
for the proxy's own files; where the limit is higher it holds the full 10,000. The
printed figures name the count held.
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
def fd_room() -> Iterator[int]:
    """The soft open-files limit raised to the hard one; how many streams fit in it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    yield min(STREAMS_WANTED, (limit - 200) // 2)
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


def test_idle_event_streams_stay_within_a_bounded_rss(fd_room: int,
                                                      start_dockgate: StartDockgate,
                                                      busybox_image: str) -> None:
    """One worker holds ~10,000 idle /events streams in well under 300 MB."""
    proxy: DockgateProcess = start_dockgate(env=ALL_ON)
    pid = proxy.process.pid
    filters = quote(json.dumps({"label": [f"dockgate.test.memory={uuid.uuid4().hex}"]}))
    target = f"/v1.41/events?filters={filters}".encode()
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
    figures = {"streams": fd_room, "failed": failures, "opened_in_s": round(opened, 1),
               "rss_before_kb": before, "rss_held_kb": held,
               "peak_rss_kb": rss_kb(pid, "VmHWM"), "bytes_per_stream": round(per_stream)}
    print(f"\nmemory: {json.dumps(figures)}")
    assert failures == 0
    assert held < RSS_BOUND_KB
