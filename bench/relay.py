"""A byte relay that parses nothing: the floor under any proxy on this path, in Python.

    python bench/relay.py --listen 127.0.0.1:2380 --upstream /tmp/upstream.sock --workers 2

bench/run.py starts it for its floor rows. Each client connection gets its own
connection to the unix socket, and bytes go both ways as they come, through uvloop's
transports: no HTTP framing, no policy, no audit line. What it costs per request is
what the loop, the transports and the kernel cost, the part of dockgate's CPU time
that no change to dockgate can remove. Backpressure and half-close are relayed, so it
is a correct relay, not only a fast one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import cast

import uvloop


class _Side(asyncio.Protocol):
    """One end of a relayed pair; ``out`` is the other end's transport once both are
    connected."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.out: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # what came before the pair was made
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        out = self.out
        if out is None:
            self.pending.append(data)
        elif not out.is_closing():  # the other end is gone: nobody reads this
            out.write(data)

    def eof_received(self) -> bool:
        out = self.out
        if out is None:
            self.eof = True
        elif not out.is_closing() and out.can_write_eof():
            out.write_eof()
        return True

    def paired(self, peer: _Side) -> None:
        """Both ends are connected: pass on what came before that."""
        assert peer.transport is not None
        self.out = out = peer.transport
        out.writelines(self.pending)
        self.pending.clear()
        if self.lost:
            out.close()  # after what was written: close flushes first
        elif self.eof:
            out.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.out is not None:
            self.out.close()

    def pause_writing(self) -> None:
        if self.out is not None:
            self.out.pause_reading()

    def resume_writing(self) -> None:
        if self.out is not None:
            self.out.resume_reading()


class _Client(_Side):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            transport, daemon = await asyncio.get_running_loop().create_unix_connection(
                _Side, self.upstream)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():
            transport.close()
            return
        # The daemon's side may have read bytes (or its EOF) before this await returned.
        self.paired(daemon)
        daemon.paired(self)


async def _serve(listener: socket.socket, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # held since before the fork
    server = await loop.create_server(lambda: _Client(upstream), sock=listener)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept clients on")
    parser.add_argument("--upstream", required=True, help="the unix socket to relay to")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the listening socket")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen {args.listen!r}: write HOST:PORT, e.g. 127.0.0.1:2380")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(1024)
    children = []
    # SIGTERM waits (blocked) until each process has its handler: one arriving while
    # the workers start still stops them all.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            uvloop.run(_serve(listener, args.upstream))
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
