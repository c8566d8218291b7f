"""Load: 1,000 held event streams plus 10,000 short requests through one dockgate, with
no errors, and the proxy's descriptors back near their baseline once the streams close.

This is the shape of a real deployment (every dashboard, Traefik and Portainer instance
keeps ``GET /events`` open forever while CI jobs fire short requests), run against the
real daemon. The client is raw asyncio sockets, so what is measured is the proxy, not a
client library. Each stream listens for containers carrying this run's label; two marker
containers, one at the start and one after the hold, prove that every stream still
relays live events, not merely that its socket is open.

Default: streams held 30 s, about 45 s in all. ``DOCKGATE_LONG=1`` turns it into a soak
(streams held 10 minutes, 100,000 short requests). The proxy's peak RSS and descriptor
counts are printed in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import docker
import pytest

from conftest import ALL_ON, DockgateProcess, StartDockgate

pytestmark = [pytest.mark.daemon, pytest.mark.slow]

LONG = os.environ.get("DOCKGATE_LONG") == "1"
EVENT_STREAMS = 1_000
HOLD_SECONDS = 600.0 if LONG else 30.0
SHORT_REQUESTS = 100_000 if LONG else 10_000
KEEPALIVE_CLIENTS = 20          # "a few at a time": each sends its share one after another
CONNECT_CONCURRENCY = 50        # stay within the listen backlog while opening the streams
EVENT_DEADLINE = 30.0           # seconds for a marker event to reach every stream
# Each held stream costs the proxy two descriptors (client side and daemon side).
PROXY_FDS_NEEDED = 2 * EVENT_STREAMS + 2 * KEEPALIVE_CLIENTS + 100
# After the streams close the proxy may keep idle daemon connections for reuse.
FD_SLACK = KEEPALIVE_CLIENTS + 10
LABEL = "dockgate.test.load"


@dataclass
class Tally:
    """Errors seen by the client: all counted, the first few kept verbatim."""

    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.count += 1
        if len(self.samples) < 10:
            self.samples.append(what)


@dataclass
class EventStream:
    """One held ``GET /events`` connection and everything it has received."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray
    ended: bool = False


def proxy_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proxy_status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def proxy_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return 1 << 62 if soft == "unlimited" else int(soft)
    raise KeyError("Max open files")


@pytest.fixture
def raised_fd_limit() -> Iterator[None]:
    """Room for ~2,000 sockets here and in the proxy, which inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16_384
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs root
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    soft_now, hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard_now == resource.RLIM_INFINITY else min(wanted, hard_now)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft_now, target), hard_now))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def proxy(raised_fd_limit: None, start_dockgate: StartDockgate,
          busybox_image: str) -> DockgateProcess:
    """An allow-all dockgate, started after the descriptor limit was raised."""
    return start_dockgate(env=ALL_ON)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return int(status_line.split()[1]), headers, await reader.readexactly(
            int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() != "chunked":
        raise ValueError(f"response without a length: {head!r}")
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")
    return int(status_line.split()[1]), headers, bytes(body)


async def open_event_stream(port: int, target: bytes, gate: asyncio.Semaphore,
                            errors: Tally) -> EventStream | None:
    async with gate:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: dockgate\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            errors.add(f"opening an event stream: {error!r}")
            return None
    if not head.startswith(b"HTTP/1.1 200 "):
        errors.add(f"event stream answered {head[:60]!r}")
    return EventStream(reader, writer, bytearray())


async def watch(stream: EventStream, errors: Tally) -> None:
    """Collect what the stream relays until we close it; an early end is an error."""
    try:
        while chunk := await stream.reader.read(65536):
            stream.received += chunk
    except (OSError, asyncio.IncompleteReadError) as error:
        errors.add(f"event stream failed: {error!r}")
    else:
        errors.add("event stream ended before the client closed it")
    stream.ended = True


async def short_requests(port: int, count: int, errors: Tally) -> None:
    """`count` GET /_ping and GET /version requests, one after another on a kept-alive
    connection (reconnecting after an error so the count stays meaningful)."""
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    for number in range(count):
        ping = number % 2 == 0
        target = b"/_ping" if ping else b"/v1.41/version"
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: dockgate\r\n\r\n")
            status, headers, body = await asyncio.wait_for(read_response(reader), 30)
            if status != 200 or (body != b"OK" if ping else "ApiVersion" not in json.loads(body)):
                errors.add(f"{target.decode()} -> {status} {body[:80]!r}")
            if headers.get("connection", "").lower() == "close":
                errors.add(f"{target.decode()}: the proxy closed a keep-alive connection")
                writer.close()
                connection = None
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as error:
            errors.add(f"{target.decode()}: {error!r}")
            if connection is not None:
                connection[1].close()
            connection = None
    if connection is not None:
        connection[1].close()
        with contextlib.suppress(OSError):
            await connection[1].wait_closed()


async def until_all_saw(streams: list[EventStream], marker: bytes) -> int:
    """Wait for `marker` on every stream; how many never saw it."""
    deadline = time.monotonic() + EVENT_DEADLINE
    while time.monotonic() < deadline:
        if all(marker in stream.received for stream in streams):
            return 0
        await asyncio.sleep(0.2)
    return sum(marker not in stream.received for stream in streams)


def emit_marker(client: docker.DockerClient, image: str, run: str, name: str) -> None:
    """Create and remove a labelled container: a create and a destroy event for the streams."""
    client.containers.create(image, ["true"], name=name, network_mode="none",
                             labels={LABEL: run}).remove()


async def load(proxy: DockgateProcess, client: docker.DockerClient,
               image: str) -> dict[str, object]:
    pid = proxy.process.pid
    errors = Tally()
    warm_reader, warm_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    warm_writer.write(b"GET /_ping HTTP/1.1\r\nHost: dockgate\r\n\r\n")
    await read_response(warm_reader)
    warm_writer.close()
    await warm_writer.wait_closed()
    await asyncio.sleep(0.5)
    fds_before = proxy_fds(pid)

    run = uuid.uuid4().hex[:12]
    filters = quote(json.dumps({"label": [f"{LABEL}={run}"]}))
    target = f"/v1.41/events?filters={filters}".encode()
    started = time.monotonic()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    opened = await asyncio.gather(*(open_event_stream(proxy.port, target, gate, errors)
                                    for _ in range(EVENT_STREAMS)))
    streams = [stream for stream in opened if stream is not None]
    opened_in = time.monotonic() - started
    watchers = [asyncio.create_task(watch(stream, errors)) for stream in streams]

    first, second = (f"dgtest-load-{run}-{n}" for n in (1, 2))
    await asyncio.to_thread(emit_marker, client, image, run, first)
    requests_started = time.monotonic()
    share = SHORT_REQUESTS // KEEPALIVE_CLIENTS
    await asyncio.gather(*(short_requests(proxy.port, share, errors)
                           for _ in range(KEEPALIVE_CLIENTS)))
    requests_took = time.monotonic() - requests_started
    missed_first = await until_all_saw(streams, first.encode())
    fds_during = proxy_fds(pid)

    await asyncio.sleep(max(0.0, started + HOLD_SECONDS - time.monotonic()))
    await asyncio.to_thread(emit_marker, client, image, run, second)
    missed_second = await until_all_saw(streams, second.encode())
    held_for = time.monotonic() - started
    ended_early = sum(stream.ended for stream in streams)

    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    for stream in streams:
        stream.writer.close()
    await asyncio.gather(*(stream.writer.wait_closed() for stream in streams),
                         return_exceptions=True)
    for _ in range(75):  # up to 15 s for the proxy to notice the closes
        if proxy_fds(pid) <= fds_before + FD_SLACK:
            break
        await asyncio.sleep(0.2)
    return {
        "streams": len(streams), "opened_in_s": round(opened_in, 1),
        "held_for_s": round(held_for, 1), "short_requests": share * KEEPALIVE_CLIENTS,
        "requests_took_s": round(requests_took, 1),
        "requests_per_s": round(share * KEEPALIVE_CLIENTS / requests_took),
        "missed_first_event": missed_first, "missed_second_event": missed_second,
        "ended_early": ended_early, "errors": errors.count, "error_samples": errors.samples,
        "fds_before": fds_before, "fds_during": fds_during, "fds_after": proxy_fds(pid),
        "peak_rss": proxy_status(pid, "VmHWM"), "rss_after": proxy_status(pid, "VmRSS"),
    }


@pytest.mark.timeout(HOLD_SECONDS + 240)
def test_thousand_held_event_streams_and_ten_thousand_requests_without_errors(
        proxy: DockgateProcess, docker_client: docker.DockerClient, busybox_image: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every long-lived watcher and every short caller must be served, and closing the
    streams must give their descriptors back (a leak here exhausts a proxy in days)."""
    assert proxy_fd_limit(proxy.process.pid) >= PROXY_FDS_NEEDED
    result = asyncio.run(load(proxy, docker_client, busybox_image))
    with capsys.disabled():
        print(f"\nload: {json.dumps(result)}")
    assert (result["streams"], result["errors"], result["error_samples"]) == \
           (EVENT_STREAMS, 0, [])
    assert (result["missed_first_event"], result["missed_second_event"],
            result["ended_early"]) == (0, 0, 0)
    assert isinstance(result["fds_after"], int)
    assert isinstance(result["fds_before"], int)
    assert result["fds_after"] <= result["fds_before"] + FD_SLACK
