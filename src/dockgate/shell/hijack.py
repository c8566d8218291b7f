"""Hijacked sessions: raw bytes both ways once the daemon left HTTP.

After a 101 (attach, exec start, /session, /grpc, attach/ws) or Docker's raw
200 stream, a ``Session`` joins the client transport and the upstream
connection: bytes go transport to transport from the protocol callbacks, and
an EOF on one side becomes a half-close on the other (``write_eof`` where the
transport can; TLS cannot, so it is closed), which is what lets
``echo hi | docker run -i ... cat`` end properly. Flow control is wired across:
the upstream's write buffer passing its high-water mark pauses reading from
the client, the client's pauses reading from the daemon (the connection does
the latter, as for plain responses). The session ends when both sides sent
EOF or either connection is lost; then ``on_end`` runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from dockgate.shell.upstream import UpstreamConnection, half_close


class Session:
    """One hijacked session; implements ``upstream.RawPeer`` for the daemon side."""

    def __init__(self, client: asyncio.Transport, conn: UpstreamConnection,
                 pause_client: Callable[[bool], None], on_end: Callable[[], None]) -> None:
        self.client = client
        self.conn = conn
        self.pause_client = pause_client
        self.on_end = on_end
        self.bytes_in = 0
        self.bytes_out = 0
        self.eofs: set[str] = set()
        self.ended = False

    # the client side ---------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.conn.write(data)

    def client_eof(self) -> None:
        self.eofs.add("client")
        self.conn.write_eof()
        self._check()

    def client_lost(self) -> None:
        self._end()

    # upstream.RawPeer ------------------------------------------------------------------------

    def raw_data(self, data: bytes | memoryview) -> None:
        self.bytes_out += len(data)
        if not self.client.is_closing():
            self.client.write(data)

    def raw_eof(self) -> None:
        self.eofs.add("daemon")
        half_close(self.client)
        self._check()

    def raw_lost(self) -> None:
        self.client.close()
        self._end()

    def peer_paused(self, paused: bool) -> None:
        self.pause_client(paused)

    # ending --------------------------------------------------------------------------------

    def _check(self) -> None:
        if len(self.eofs) == 2:
            self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        with contextlib.suppress(RuntimeError):
            self.conn.close()
        self.on_end()
