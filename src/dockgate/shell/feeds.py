"""Shared event subscriptions: one daemon ``/events`` stream for every client asking the same.

Theory of operation. Every dashboard, Traefik and Portainer instance keeps an
events stream open for as long as it runs, and most of them ask the same
question. ``Feeds`` keeps one daemon connection (a ``Feed``) per forwarded target
of a live ``GET /events`` and gives each client stream on it a ``Tap``. Live means
no ``since`` or ``until`` in the query: those replay the past or end at a time, so
such a stream belongs to its client alone (``shareable``). N clients thus cost the
daemon one subscription and the proxy N + 1 descriptors instead of 2N.

A tap is the daemon connection its flight sees. The flight sets the tap's sink
(the client's ``relay.Exchange``) and writes the request head, which joins the
feed: the feed has sent its own request, the first client's head. The feed reads
the daemon's answer decoded and hands every tap a copy of the head, then each
event; each exchange frames them for its own client (chunked, or close-delimited
for HTTP/1.0) and through that client's response filter where its policy scopes
events. So a client sees what a stream of its own would have shown from the
moment it joined: the daemon's head (its Date is the feed's), then every event
after. A client joining while an event is half received starts at the next one
(Docker's events are JSON lines).

No client slows the others down: the feed never pauses for one. A client whose
writes are paused (its socket buffer is full) and that falls more than
``MAX_LAG`` bytes further behind is cut off, its stream ended as a broken one, so
that it reconnects instead of the proxy holding an unbounded backlog for it. When
the daemon ends the stream or the connection breaks, every tap ends as its own
stream would have, and a tap is closed before it ends, so that its flight never
returns it to the pool. When the last tap leaves, the daemon connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final
from urllib.parse import unquote_plus

from dockgate import http1, metrics
from dockgate.errors import UpstreamError
from dockgate.shell.upstream import Upstream, UpstreamConnection

log = logging.getLogger("dockgate.feeds")

MAX_LAG: Final = 4 * 1024 * 1024   # bytes a paused client may fall behind before it is cut off
_PRIVATE_WORDS: Final = ("since", "until")


def shareable(target: str) -> bool:
    """Whether an events target asks only for live events: no ``since``/``until``.

    Conservative: the decoded, lowercased query must not contain either word
    anywhere (a filter value that does only costs that stream its sharing).
    """
    _, _, query = target.partition("?")
    plain = unquote_plus(query).lower()
    return not any(word in plain for word in _PRIVATE_WORDS)


class Tap(UpstreamConnection):
    """One client stream on a feed: the daemon connection its flight and exchange see."""

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed.feeds.pool)
        self.feed = feed
        self.paused = False   # the client's writes are paused: count what it gets
        self.lag = 0          # bytes handed over since its writes paused
        self.skip = False     # joined mid-event: drop bytes up to the next newline

    def write(self, data: bytes | memoryview) -> None:
        # The request head (an events request has no body): the feed sent its own.
        self.feed.join(self)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self.lag = 0

    def abort(self) -> None:
        self.closed = True
        self.feed.leave(self)

    def close(self) -> None:
        self.abort()


class Feed:
    """One daemon events stream and the taps on it; see the module docstring."""

    def __init__(self, feeds: Feeds, key: str, request: bytes) -> None:
        self.feeds = feeds
        self.key = key
        self.request = request
        self.taps: dict[Tap, None] = {}   # insertion-ordered, and leaving is O(1)
        self.head: http1.ResponseHead | None = None
        self.mid_event = False            # the last bytes read did not end an event
        self.conn: UpstreamConnection | None = None
        self.retried = False
        self.over = False
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        conn = self.feeds.pool.take_idle()
        if conn is not None:
            self._send(conn)
        else:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.feeds.pool.acquire()
        except UpstreamError as error:
            metrics.count_upstream_error("connect")
            self._fail(error)
            return
        finally:
            self._task = None
        if self.over:
            self.feeds.pool.release(conn)  # everyone left while it connected; still fresh
            return
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.sink = self
        conn.reader.expect("GET")
        conn.write(self.request)

    def join(self, tap: Tap) -> None:
        self.taps[tap] = None
        if self.head is not None:
            self._welcome(tap)

    def leave(self, tap: Tap) -> None:
        """A tap is gone; the daemon connection closes with the last one."""
        if tap not in self.taps:
            return
        del self.taps[tap]
        if not self.taps and not self.over:
            self.over = True
            self.feeds.forget(self)
            if self.conn is not None:
                self.conn.abort()

    def _cut(self, tap: Tap, error: UpstreamError) -> None:
        """End one tap's stream as broken, the others going on."""
        tap.closed = True
        self.leave(tap)
        sink = tap.sink
        if sink is not None:
            sink.on_lost(error)

    # upstream.ResponseSink ------------------------------------------------------------------

    def on_events(self, events: list[http1.ResponseEvent]) -> int:
        for event in events:
            if isinstance(event, http1.Data):
                self._data(event)
            elif isinstance(event, http1.ResponseHead):
                self._head(event)
            else:
                self._end()
        return len(events)

    def on_lost(self, error: UpstreamError) -> None:
        if self.over:
            return
        conn = self.conn
        if self.head is None and conn is not None and conn.reused \
                and not conn.got_response and not self.retried:
            self.retried = True  # the daemon had closed this pooled connection: one fresh try
            conn.sink = None     # what it still reports (its connection_lost) is not ours
            conn.abort()
            self.conn = None
            self.open()
            return
        metrics.count_upstream_error("lost" if self.head is None else "broken")
        self._fail(error)

    def _fail(self, error: UpstreamError) -> None:
        for tap in self._close_taps():
            sink = tap.sink
            if sink is not None:
                sink.on_lost(error)

    # relaying ---------------------------------------------------------------------------------

    def _head(self, head: http1.ResponseHead) -> None:
        if head.status < 200:
            return  # interim responses stay between us and the daemon
        self.head = head
        if head.status != 200 or not head.chunked:
            self.feeds.forget(self)  # an answer, not a live stream: nobody else joins it
        for tap in list(self.taps):
            self._welcome(tap)

    def _welcome(self, tap: Tap) -> None:
        assert self.head is not None
        tap.skip = self.mid_event
        self._hand(tap, [self.head.copy()])

    def _data(self, event: http1.Data) -> None:
        data = event.data
        if not data:
            return
        for tap in list(self.taps):
            if tap.closed:
                continue  # cut off while this event went to the taps before it
            if tap.skip:
                self._skip_into(tap, bytes(data))
            elif tap.paused and not self._within_lag(tap, len(data)):
                continue
            else:
                self._hand(tap, [event])
        self.mid_event = data[-1] != 0x0A

    def _skip_into(self, tap: Tap, data: bytes) -> None:
        """A tap that joined mid-event gets what follows the end of that event."""
        cut = data.find(b"\n") + 1
        if cut == 0:
            return
        tap.skip = False
        if cut < len(data) and (not tap.paused or self._within_lag(tap, len(data) - cut)):
            self._hand(tap, [http1.Data(data[cut:])])

    def _within_lag(self, tap: Tap, size: int) -> bool:
        """Count bytes handed to a paused tap: True within MAX_LAG, else it is cut off."""
        tap.lag += size
        if tap.lag <= MAX_LAG:
            return True
        self._cut(tap, UpstreamError(
            f"dockgate: the client fell more than {MAX_LAG // (1024 * 1024)} MiB behind the "
            "shared event stream and was cut off; it may reconnect"))
        return False

    def _end(self) -> None:
        if self.conn is not None:
            self.conn.close()
        for tap in self._close_taps():
            self._hand(tap, [http1.END])

    def _close_taps(self) -> list[Tap]:
        """The feed is over: every tap, closed (so no flight pools it), and none left."""
        self.over = True
        self.feeds.forget(self)
        taps = list(self.taps)
        self.taps.clear()
        for tap in taps:
            tap.closed = True
        return taps

    def _hand(self, tap: Tap, events: list[http1.ResponseEvent]) -> None:
        sink = tap.sink
        if sink is None:
            return
        try:
            sink.on_events(events)
        except Exception:
            # A bug (say, in one client's response filter) ends that stream, not the feed.
            log.exception("internal error relaying a shared event stream from %s",
                          self.feeds.pool.url)
            self._cut(tap, UpstreamError("dockgate: internal error relaying the response"))


class Feeds:
    """The open feeds of one upstream, by forwarded target."""

    def __init__(self, pool: Upstream) -> None:
        self.pool = pool
        self._open: dict[str, Feed] = {}

    def tap(self, target: str, request: bytes) -> Tap:
        """A tap on the feed of ``target``, opened with ``request`` if there is none yet."""
        feed = self._open.get(target)
        if feed is None:
            feed = self._open[target] = Feed(self, target, request)
            feed.open()
        return Tap(feed)

    def forget(self, feed: Feed) -> None:
        if self._open.get(feed.key) is feed:
            del self._open[feed.key]
