"""TLS for client connections, with half-close: the shell's tls:// listeners.

Why not ``loop.create_server(ssl=...)``: asyncio's and uvloop's TLS transports take
the client's end of input (a TCP FIN, or a close_notify alert) as the end of the
connection and stop writing; ``eof_received`` returning True "has no effect when using
ssl". But ``docker attach`` and ``docker exec -i`` over TLS end stdin with exactly
that (the CLI's hijacked TLS connection half-closes its TCP socket, and TLS 1.3 allows
a close_notify to end one direction only, RFC 8446 6.1) and then read the container's
output to its end. So dockgate runs TLS itself: an ``ssl.SSLObject`` on memory BIOs
over a plain TCP transport. The peer's end of input reaches the application protocol
as ``eof_received`` and the write side stays open; ``write_eof`` sends our close_notify
and then half-closes TCP.

The application protocol (``server.ClientConnection``) sees an ordinary
``asyncio.Transport`` (``TLSTransport``), made only once the handshake is done, with
``peercert`` in ``get_extra_info`` as asyncio's has it. A handshake that does not
finish within ``handshake_timeout`` seconds, or fails, closes the TCP connection
without the application ever seeing it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, cast

log = logging.getLogger("dockgate.tls")

_READ_SIZE = 256 * 1024


class TLSServerProtocol(asyncio.Protocol):
    """The TCP side of one TLS client connection; see the module docstring."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol,
                 handshake_timeout: float) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.app = app
        self.handshake_timeout = handshake_timeout
        self.tcp: asyncio.Transport | None = None
        self._transport: TLSTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer_done = False    # the client ended its direction (close_notify or FIN)
        self._shut = False         # our close_notify is sent: nothing more to write

    # the TCP transport's protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self.handshake_timeout,
                                                            self._handshake_overdue)

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._transport is None and not self._handshake():
            return
        self._read()

    def eof_received(self) -> bool:
        if self._transport is None:
            return False  # ended during the handshake: close
        # A FIN without close_notify: the docker CLI's half-close of a hijacked session.
        self._peer_ended()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._transport is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self.app.resume_writing()

    # TLS ----------------------------------------------------------------------------------

    def _handshake(self) -> bool:
        try:
            self.ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS handshake failed: %s", error)
            self._flush()
            self._abort_tcp()
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush()
        self._transport = TLSTransport(self)
        self.app.connection_made(self._transport)
        return True

    def _handshake_overdue(self) -> None:
        self._timer = None
        if self._transport is None:
            log.debug("TLS handshake not finished in %g s", self.handshake_timeout)
            self._abort_tcp()

    def _read(self) -> None:
        while not self._peer_done:
            try:
                chunk = self.ssl.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client's direction ended
                self._peer_ended()
                break
            except (ssl.SSLError, OSError) as error:
                log.debug("TLS error from the client: %s", error)
                self._abort_tcp()
                return
            if not chunk:
                self._peer_ended()
                break
            self.app.data_received(chunk)
        self._flush()  # TLS 1.3 may answer (key updates)

    def _peer_ended(self) -> None:
        if self._peer_done:
            return
        self._peer_done = True
        if not self.app.eof_received() and self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.tcp is not None and not self.tcp.is_closing():
            self.tcp.write(data)

    def _abort_tcp(self) -> None:
        if self.tcp is not None:
            self.tcp.abort()

    # used by TLSTransport -------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._shut or self.tcp is None or self.tcp.is_closing():
            return
        view = memoryview(data)
        try:
            while view:
                view = view[self.ssl.write(view):]
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS error writing to the client: %s", error)
            self._abort_tcp()
            return
        self._flush()

    def shutdown(self) -> None:
        """Send our close_notify once (the end of our direction)."""
        if self._shut or self._transport is None:
            return
        self._shut = True
        try:
            self.ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # the client's close_notify may come later, or never: both are fine
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS error closing: %s", error)
        self._flush()


class TLSTransport(asyncio.Transport):
    """What the application protocol writes to: plaintext in, TLS records out."""

    def __init__(self, owner: TLSServerProtocol) -> None:
        super().__init__()
        self._owner = owner
        assert owner.tcp is not None
        self._tcp = owner.tcp

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self._owner.ssl.getpeercert()
        if name == "ssl_object":
            return self._owner.ssl
        if name == "cipher":
            return self._owner.ssl.cipher()
        return self._tcp.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._owner.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._owner.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._tcp.is_closing():
            return
        self._owner.shutdown()
        self._tcp.write_eof()

    def close(self) -> None:
        if not self._tcp.is_closing():
            self._owner.shutdown()
            self._tcp.close()

    def abort(self) -> None:
        self._tcp.abort()

    def is_closing(self) -> bool:
        return self._tcp.is_closing()

    def pause_reading(self) -> None:
        self._tcp.pause_reading()

    def resume_reading(self) -> None:
        self._tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._tcp.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("a TLS client connection keeps its protocol")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._owner.app


def server_factory(context: ssl.SSLContext, factory: Callable[[], asyncio.Protocol],
                   handshake_timeout: float) -> Callable[[], TLSServerProtocol]:
    """A protocol factory for ``loop.create_server`` serving ``factory``'s protocols over TLS."""
    def make() -> TLSServerProtocol:
        return TLSServerProtocol(context, factory(), handshake_timeout)
    return make
