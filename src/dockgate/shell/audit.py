"""The audit trail: one JSON line per decision, cheap enough for every request.

Schema. Every line dockgate writes to its log stream in JSON form shares one
schema (diagnostics from ``logs.JSONFormatter`` included): ``time`` (RFC 3339,
UTC, milliseconds: ``2026-12-01T21:40:17.123Z``), ``level``, ``pid`` and
``event``, then the event's own fields. A key always has the same JSON type;
a field with no value is left out rather than written as null. Request records
(``event: "request"``) carry ``request_id``, ``listener``, ``client``,
``user_agent``, ``method``, ``target``, ``operation``, ``resource``,
``decision``, ``policy`` (the decider), ``grant`` (what allowed it), ``rule``
(what decided it, allowed or denied), ``reason``, ``forwarded``, ``status``,
``bytes_in``, ``bytes_out`` and ``duration_ms``. Streams and hijacked sessions
add an open and a close record (``stream.open``/``stream.close``,
``session.open``/``session.close``) with the same request id.

Cost. A line is built by string concatenation, not by a dict and an encoder:
the per-connection part (pid, listener, client) is escaped once when the
connection opens, the time prefix once per second, and the rest is a few C
escapes and integer formats. Lines are collected and written once per
event-loop iteration, so a burst of requests costs one write system call and no
line waits longer than the current iteration. Batches go to the stream's file
descriptor with ``os.write``, past Python's text and buffer layers. To a pipe or a
socket each write holds whole lines and at most ``PIPE_BUF`` bytes (unless one
line is longer): with ``--workers`` several processes share stderr, and writes
that size to a pipe are atomic, so their lines never interleave. A regular file
or a terminal takes each write whole, so there a batch may hold up to 64 KiB.

Switch. ``DOCKGATE_AUDIT`` decides what is recorded, independently of
``LOG_LEVEL``: ``on`` (every request), ``denials`` (denied and failed requests
only), ``off``; unset, allowed requests follow ``LOG_LEVEL`` (silenced above
info, as Tecnativa's HAProxy request log is) and denials are always recorded.
``--audit-file`` sends the lines to a file instead of stderr.
"""

from __future__ import annotations

import asyncio
import os
import select
import stat
import sys
import time
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii as quote
from typing import Any, Final, TextIO

PIPE_BUF: Final = 4096  # POSIX: writes up to this size to a pipe are atomic (Linux: 4096)
BATCH: Final = 1 << 16  # to a file or a terminal, which take a write whole
MODES: Final = ("on", "denials", "off")


class AuditWriter:
    """Writes audit lines to a stream, batched per event-loop iteration.

    A stream with a file descriptor is written with ``os.write`` (after flushing
    what was written through the stream itself, so the order holds); one without
    (a ``StringIO``) through its ``write``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            fd = -1
        self._fd = fd
        self._limit = PIPE_BUF
        if fd >= 0:
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode) or stat.S_ISCHR(mode):
                self._limit = BATCH

    def write(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) > 1:
            return  # a flush is already scheduled
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # not on the event loop: nothing to batch with
            return
        loop.call_soon(self.flush)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        limit = self._limit
        batch: list[str] = []
        size = 0
        for line in lines:
            if batch and size + len(line) > limit:
                self._emit(batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._emit(batch)

    def _emit(self, batch: list[str]) -> None:
        text = "".join(batch)
        fd = self._fd
        if fd < 0:
            self.stream.write(text)
            self.stream.flush()
            return
        self.stream.flush()
        data = text.encode()
        while data:
            try:
                written = os.write(fd, data)
            except BlockingIOError:  # a non-blocking descriptor that is full: wait
                select.select([], [fd], [])
                continue
            data = data[written:]


class _Destination:
    """Where audit lines go and which of them; one per process."""

    writer: AuditWriter | None = None
    allowed: bool = True          # record allowed requests too, not only denials
    pid: int = os.getpid()
    last_id = 0                   # request ids: the pid in hex, a dash, a counter
    id_prefix = f"{os.getpid():x}-"


_destination: Final = _Destination()


def _forked() -> None:
    # A forked worker starts with its parent's pending lines, which the parent writes.
    _destination.pid = os.getpid()
    _destination.last_id = 0
    _destination.id_prefix = f"{os.getpid():x}-"
    if _destination.writer is not None:
        _destination.writer = AuditWriter(_destination.writer.stream)


os.register_at_fork(after_in_child=_forked)


def configure(mode: str | None, path: str | None, verbose: bool) -> None:
    """``mode``: on, denials, off, or None (allowed requests only when ``verbose``,
    i.e. LOG_LEVEL is info or debug). ``path``: a file to append to, else stderr."""
    if mode == "off":
        _destination.writer = None
        return
    stream: TextIO = sys.stderr
    if path is not None:
        # Line-buffered appends: each batch is one write, whole lines only.
        stream = open(path, "a", encoding="ascii", buffering=1)  # noqa: SIM115
    _destination.writer = AuditWriter(stream)
    _destination.allowed = mode == "on" or (mode is None and verbose)


def audit_to(writer: AuditWriter | None, allowed: bool = True) -> None:
    """Send audit lines to ``writer`` (None: nowhere), whatever the settings."""
    _destination.writer = writer
    _destination.allowed = allowed


def flush() -> None:
    """Write the pending audit lines now: the process is about to exit."""
    if _destination.writer is not None:
        _destination.writer.flush()


def enabled() -> bool:
    return _destination.writer is not None


def records_allowed() -> bool:
    """Whether allowed requests (and stream and session records) are written."""
    return _destination.writer is not None and _destination.allowed


_monotonic: Final = time.monotonic  # bound once: no module lookup per call
_hex: Final = hex  # likewise: the compiled build looks a builtin up in its module per call


class _Clock:
    """RFC 3339 UTC with milliseconds: the seconds part is formatted once per second,
    the whole stamp once per millisecond (a busy proxy writes many lines in one).

    Requests are timed on the monotonic clock; the wall clock is read once a second
    (``offset``), so a request's line costs no clock read of its own and a change of
    the system time shows within a second."""

    second = -1
    prefix = ""
    millisecond = -1
    stamp = ""
    offset = 0.0     # wall clock minus monotonic clock
    refresh = -1.0   # the monotonic time after which ``offset`` is read again

    def now(self, monotonic: float) -> str:
        """The stamp for ``monotonic`` (a ``time.monotonic()`` reading of now)."""
        if monotonic >= self.refresh:
            self.offset = time.time() - _monotonic()
            self.refresh = monotonic + 1.0
        millisecond = int((monotonic + self.offset) * 1000)
        if millisecond != self.millisecond:
            self.millisecond = millisecond
            second = millisecond // 1000
            if second != self.second:
                self.second = second
                self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            # Three digits without a format spec (see RequestRecord.write).
            fraction = str(1000 + millisecond % 1000)[1:]
            self.stamp = f'{{"time":"{self.prefix}.{fraction}Z"'
        return self.stamp


_clock: Final = _Clock()


def timestamp(seconds: float) -> str:
    """``seconds`` since the epoch in the audit trail's time format."""
    whole = int(seconds)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            + f".{int((seconds - whole) * 1000):03d}Z")


def connection_prefix(listener: str, client: str) -> str:
    """The fields every record of one connection shares, escaped once."""
    return f',"pid":{_destination.pid},"listener":{quote(listener)},"client":{quote(client)}'


def _value(value: Any) -> str:
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{quote(str(k))}:{_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to the audit trail")


def write(event: str, connection: str, level: str = "info", **fields: Any) -> None:
    """One record: time, level, the connection's fields, ``event``, then ``fields``
    (None values are left out)."""
    writer = _destination.writer
    if writer is None:
        return
    parts = [_clock.now(_monotonic()), f',"level":"{level}"', connection, f',"event":"{event}"']
    parts.extend(f",{quote(key)}:{_value(value)}" for key, value in fields.items()
                 if value is not None)
    parts.append("}\n")
    writer.write("".join(parts))


# The escaped middle of request lines, by the values it is made of: clients repeat
# the same few requests. The resource follows from method and target. Bounded, and
# long lines (long targets, long reasons) are not kept.
_MIDDLES: Final[dict[tuple[str | None, ...], str]] = {}
_MIDDLE_CACHE_SIZE: Final = 4096
_MIDDLE_CACHE_LINE: Final = 1024


class RequestRecord:
    """What one request's audit line says, filled in as the pipeline goes."""

    __slots__ = ("bytes_in", "bytes_out", "decision", "forwarded", "grant", "method",
                 "number", "operation", "policy", "reason", "resource", "rule",
                 "started", "status", "target", "user_agent")

    def __init__(self, method: str | None, target: str | None,
                 user_agent: str | None) -> None:
        # A counter of our own, not itertools.count: next() is a generic call.
        self.number = number = _destination.last_id + 1  # formatted only when written
        _destination.last_id = number
        self.method = method
        self.target = target
        self.user_agent = user_agent
        self.operation: str | None = None
        self.resource: Mapping[str, str] | None = None
        self.decision = "error"
        self.policy: str | None = None
        self.grant: str | None = None
        self.rule: str | None = None
        self.reason: str | None = None
        self.forwarded: str | None = None
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = _monotonic()

    def _middle(self) -> str:
        """The fields that repeat from one request to the next, escaped."""
        line = ""
        if self.user_agent is not None:
            line += f',"user_agent":{quote(self.user_agent)}'
        if self.method is not None:
            line += f',"method":"{self.method}","target":{quote(self.target or "")}'
        if self.operation is not None:
            line += f',"operation":"{self.operation}"'
        if self.resource:
            line += f',"resource":{_value(self.resource)}'
        line += f',"decision":"{self.decision}"'
        if self.policy is not None:
            line += f',"policy":{quote(self.policy)}'
        if self.grant is not None:
            line += f',"grant":{quote(self.grant)}'
        if self.rule is not None:
            line += f',"rule":{quote(self.rule)}'
        if self.reason is not None:
            line += f',"reason":{quote(self.reason)}'
        if self.forwarded is not None:
            line += f',"forwarded":{quote(self.forwarded)}'
        return line

    @property
    def request_id(self) -> str:
        # hex(), not an f-string format spec: see write.
        return _destination.id_prefix + _hex(self.number)[2:]

    def elapsed(self) -> float:
        """Seconds since the request's head was read."""
        return _monotonic() - self.started

    def elapsed_ms(self) -> float:
        return self.elapsed() * 1000

    def write(self, connection: str, seconds: float) -> None:
        """The request line (``seconds`` it took); allowed requests only when the switch
        records them."""
        writer = _destination.writer
        if writer is None or (self.decision == "allow" and not _destination.allowed):
            return
        key = (self.user_agent, self.method, self.target, self.operation, self.decision,
               self.policy, self.grant, self.rule, self.reason, self.forwarded)
        middle = _MIDDLES.get(key)
        if middle is None:
            middle = self._middle()
            if len(middle) <= _MIDDLE_CACHE_LINE:
                if len(_MIDDLES) >= _MIDDLE_CACHE_SIZE:
                    _MIDDLES.clear()
                _MIDDLES[key] = middle
        # The numbers formatted apart: the compiled build turns an f-string with a
        # format spec into a str.format call that parses the whole template each time
        # (and hex() parses no spec at all).
        request_id = self.request_id
        # Milliseconds with three decimals from whole microseconds: integer formatting
        # costs a fraction of a float's.
        micro = int(seconds * 1_000_000 + 0.5)
        digits = str(micro)
        if micro < 1000:
            digits = ("000" + digits)[-4:]
        stamp = _clock.now(self.started + seconds)
        writer.write(f'{stamp},"level":"info"{connection},"event":"request",'
                     f'"request_id":"{request_id}"{middle},'
                     f'"status":{self.status},"bytes_in":{self.bytes_in},'
                     f'"bytes_out":{self.bytes_out},'
                     f'"duration_ms":{digits[:-3]}.{digits[-3:]}}}\n')
