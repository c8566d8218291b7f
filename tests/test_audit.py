"""The audit trail: its own switch beside LOG_LEVEL, one JSON schema for every line, a file.

Each test runs `python -m dockgate serve` in front of the fake daemon and reads what it
wrote, as an operator's log shipper would.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, wait_for_port
from dockgate.shell import audit
from fakedaemon import FakeDaemon, answer_chunks, connect

RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def run(fake: FakeDaemon, requests: list[bytes], *args: str, **env: str) -> list[str]:
    """Serve, send each raw request on its own connection and read until the proxy
    closes it (the requests say Connection: close), stop; the lines of stderr."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("DOCKER_", "DOCKGATE_", "LOG_LEVEL"))}
    full_env.update(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "dockgate", "serve", "--listen", f"tcp://127.0.0.1:{port}",
         "--upstream", f"unix://{fake.path}", *args],
        env=full_env, stderr=subprocess.PIPE)
    with process:
        wait_for_port(port)
        for raw in requests:
            with connect(port) as sock:
                sock.sendall(raw)
                while sock.recv(65536):
                    pass
        process.send_signal(signal.SIGHUP)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        return process.stderr.read().decode().splitlines()


PING = b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
DENIED = (b"GET /containers/json HTTP/1.1\r\nHost: d\r\nUser-Agent: probe/1.0\r\n"
          b"Connection: close\r\n\r\n")


def requests_in(lines: list[str]) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r["event"] == "request"]


def test_denials_are_recorded_with_log_level_error(fake: FakeDaemon) -> None:
    """LOG_LEVEL silences diagnostics, not the record of what was refused."""
    records = requests_in(run(fake, [PING, DENIED], LOG_LEVEL="error"))
    assert [(r["target"], r["decision"], r["status"]) for r in records] == [
        ("/containers/json", "deny", 403)]
    denial = records[0]
    assert denial["user_agent"] == "probe/1.0"
    assert denial["listener"].startswith("tcp://127.0.0.1:")
    assert denial["policy"] == "compat:tecnativa"
    assert denial["rule"] == "CONTAINERS"
    assert RFC3339_MS.fullmatch(denial["time"])


def test_audit_on_records_allowed_requests_whatever_the_log_level(fake: FakeDaemon) -> None:
    """DOCKGATE_AUDIT=on keeps the full trail while diagnostics are at error."""
    records = requests_in(run(fake, [PING, DENIED], LOG_LEVEL="error", DOCKGATE_AUDIT="on"))
    assert [(r["target"], r["decision"]) for r in records] == [
        ("/_ping", "allow"), ("/containers/json", "deny")]
    assert records[0]["grant"] == "PING"
    assert records[0]["request_id"] != records[1]["request_id"]


def test_audit_off_records_nothing_and_denials_mode_only_refusals(fake: FakeDaemon) -> None:
    """Turning the trail off is explicit; 'denials' keeps only what was refused."""
    assert requests_in(run(fake, [PING, DENIED], DOCKGATE_AUDIT="off")) == []
    records = requests_in(run(fake, [PING, DENIED], DOCKGATE_AUDIT="denials"))
    assert [r["decision"] for r in records] == ["deny"]


def test_audit_file_receives_the_trail_instead_of_stderr(fake: FakeDaemon,
                                                         tmp_path: Path) -> None:
    """--audit-file: the records go to the file, diagnostics stay on stderr."""
    path = tmp_path / "audit.jsonl"
    lines = run(fake, [PING, DENIED], "--audit-file", str(path))
    assert requests_in(lines) == []
    assert any("listening on" in line for line in lines)
    records = requests_in(path.read_text().splitlines())
    assert [r["target"] for r in records] == ["/_ping", "/containers/json"]


def test_every_line_of_a_json_run_parses_with_one_type_per_key(fake: FakeDaemon) -> None:
    """One schema for the whole stream: Loki or Elasticsearch map each key to one type."""
    fake.on("GET", "/events", answer_chunks([b'{"a":1}\n']))
    follow = b"GET /events HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
    lines = run(fake, [PING, DENIED, follow,
                       b"GET /_ping HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                       b"GET /nope HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"],
                DOCKGATE_LOG_FORMAT="json", LOG_LEVEL="debug")
    records = [json.loads(line) for line in lines]
    types: dict[str, set[str]] = {}
    for record in records:
        for key, value in record.items():
            types.setdefault(key, set()).add(type(value).__name__)
    assert {key: kinds for key, kinds in types.items() if len(kinds) > 1} == {}
    assert all(RFC3339_MS.fullmatch(r["time"]) for r in records)
    events = {r["event"] for r in records}
    assert {"log", "request", "stream.open", "stream.close"} <= events
    assert types["time"] == {"str"}
    assert types["status"] == {"int"}
    assert types["duration_ms"] == {"float"}


def test_the_time_format_is_utc_with_milliseconds() -> None:
    """The exact form the schema promises, checked on a known instant."""
    assert audit.timestamp(1796161217.1239) == "2026-12-01T21:40:17.123Z"


def test_request_durations_are_milliseconds_with_three_decimals() -> None:
    lines = io.StringIO()
    audit.audit_to(audit.AuditWriter(lines))
    try:
        for seconds in (0.0, 0.0000004, 0.0000006, 0.000999, 0.0123456, 1.5):
            audit.RequestRecord("GET", "/_ping", None).write("", seconds)
    finally:
        audit.audit_to(None)
    durations = [re.search(r'"duration_ms":([0-9.]+)}', line).group(1)  # type: ignore[union-attr]
                 for line in lines.getvalue().splitlines()]
    assert durations == ["0.000", "0.000", "0.001", "0.999", "12.346", "1500.000"]


def burst(writer: audit.AuditWriter, lines: list[str]) -> None:
    """Write ``lines`` within one event-loop iteration, as a busy proxy does."""
    async def main() -> None:
        for line in lines:
            writer.write(line)
        await asyncio.sleep(0)
    asyncio.run(main())


def test_writes_to_a_socket_hold_whole_lines_and_at_most_pipe_buf_bytes() -> None:
    """A seqpacket socket keeps each write one message, so the writes can be seen."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lines = [f'{{"n":{n},"pad":"{"x" * (n % 300)}"}}\n' for n in range(200)]
    with ours, theirs, os.fdopen(ours.detach(), "w", encoding="ascii") as stream:
        burst(audit.AuditWriter(stream), lines)
        theirs.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(theirs.recv(1 << 17).decode())
            except BlockingIOError:
                break
    assert "".join(messages) == "".join(lines)
    assert len(messages) > 1
    assert all(len(m) <= audit.PIPE_BUF and m.endswith("\n") for m in messages)


def test_a_file_takes_a_burst_in_one_write_after_what_the_stream_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real_write = os.write

    def counted(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    path = tmp_path / "audit.log"
    lines = [f'{{"n":{n}}}\n' for n in range(2000)]
    with open(path, "a", encoding="ascii") as stream:
        stream.write("written through the stream first\n")
        monkeypatch.setattr(os, "write", counted)
        burst(audit.AuditWriter(stream), lines)
        monkeypatch.undo()
    assert path.read_text() == "written through the stream first\n" + "".join(lines)
    assert writes == [len("".join(lines))]  # one write for the whole burst


def test_request_lines_carry_the_wall_clock_time_they_end_at() -> None:
    """Requests are timed on the monotonic clock; the stamp is still the wall clock's."""
    lines = io.StringIO()
    audit.audit_to(audit.AuditWriter(lines))
    try:
        before = time.time()
        audit.RequestRecord("GET", "/_ping", None).write("", 0.25)
        after = time.time()
    finally:
        audit.audit_to(None)
    stamp = datetime.fromisoformat(json.loads(lines.getvalue())["time"]).timestamp()
    assert before + 0.25 - 0.002 <= stamp <= after + 0.25  # milliseconds, truncated
