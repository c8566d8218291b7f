"""The Python cost of dockgate's plain request path, without sockets.

    python bench/inprocess.py                    # /_ping, us of Python per request
    python bench/inprocess.py --answer chunked   # a dockerd-like chunked inspect answer
    python bench/inprocess.py --profile          # where it goes (cProfile, by own time)

One client connection and one daemon connection of the real shell
(``connection.ClientConnection``, ``upstream.UpstreamConnection``, Tecnativa mode
with ``CONTAINERS=1``, the audit line on) get transports that only count what is
written to them; each round feeds the connection a request and the daemon side
its answer, which walks the whole plain path: framing, routing, the decision,
the flight to the pooled connection, the relay of the answer, the audit record.
The loop, the system calls and the kernel are left out: that is what this
measures against what bench/run.py measures (everything, in CPU us per request).
Timed with ``time.process_time``, the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time
from typing import Any

import uvloop

from dockgate import compat
from dockgate.settings import load
from dockgate.shell import audit
from dockgate.shell.connection import ClientConnection
from dockgate.shell.proxy import Proxy
from dockgate.shell.upstream import UpstreamConnection

REQUESTS = {
    "ping": b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1:2375\r\nUser-Agent: bench\r\n\r\n",
    "chunked": b"GET /containers/bench/json HTTP/1.1\r\nHost: 127.0.0.1:2375\r\n"
               b"User-Agent: bench\r\n\r\n",
}
_DAEMON_HEAD = (b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
                b"Docker-Experimental: false\r\nOstype: linux\r\n"
                b"Server: Docker/20.10.24+dfsg1 (linux)\r\n"
                b"Date: Wed, 02 Dec 2026 00:58:46 GMT\r\n")
_INSPECT = b'{"Id":"' + b"0" * 64 + b'","Name":"/bench","Pad":"' + b"x" * 3700 + b'"}\n'
# What the daemon sends, read by read: dockerd writes the last chunk on its own.
ANSWERS = {
    "ping": [b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 "
             b"00:58:46 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
             b"Connection: keep-alive\r\n\r\nOK"],
    "chunked": [_DAEMON_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n" % len(_INSPECT) + _INSPECT + b"\r\n", b"0\r\n\r\n"],
}


class CountingTransport:
    """A transport that accepts every write and counts it."""

    def __init__(self) -> None:
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, data: list[bytes]) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def measure(args: argparse.Namespace) -> None:
    settings = load(None, {"DOCKGATE_LISTEN": "tcp://127.0.0.1:0",
                           "DOCKGATE_UPSTREAM": "unix:///nonexistent"})
    decider, _ = compat.decider_from_env({"CONTAINERS": "1"}, "tecnativa")
    proxy = Proxy(settings, decider)
    lines = io.StringIO()
    audit.audit_to(audit.AuditWriter(lines))
    daemon = UpstreamConnection(proxy.upstream)
    daemon.connection_made(CountingTransport())  # type: ignore[arg-type]
    proxy.upstream.release(daemon)  # idle in the pool: the first request takes it
    client_side = CountingTransport()
    connection = ClientConnection(proxy, proxy.listeners[0])
    connection.connection_made(client_side)  # type: ignore[arg-type]
    request, answer = REQUESTS[args.answer], ANSWERS[args.answer]

    def rounds(count: int) -> None:
        for _ in range(count):
            connection.data_received(request)
            for piece in answer:
                daemon.data_received(piece)

    rounds(1000)  # warm the memos
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        rounds(args.requests)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    best = float("inf")
    for _ in range(args.repeat):
        started = time.process_time()
        rounds(args.requests)
        best = min(best, time.process_time() - started)
        await asyncio.sleep(0)  # let the batched audit lines be written
    await asyncio.sleep(0)
    if client_side.writes < args.requests:
        raise SystemExit("the answers did not reach the client: the harness is broken")
    print(f"{args.answer}: {best / args.requests * 1e6:.2f} us of Python per request "
          f"(best of {args.repeat} x {args.requests:,}; {len(lines.getvalue().splitlines()):,}"
          " audit lines written)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answer", choices=sorted(REQUESTS), default="ping",
                        help="ping: nginx's 2-byte /_ping answer; chunked: a 3.8 KB inspect "
                        "answer chunked as dockerd sends it, in two reads")
    parser.add_argument("--requests", type=int, default=20000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs (the best is kept)")
    parser.add_argument("--profile", action="store_true",
                        help="one run under cProfile, the top 25 by own time")
    uvloop.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
