"""The fake daemon itself: the helper other tests trust must do what it says."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE = Path(__file__).with_name("fakedaemon.py")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory for the fake's socket and record file."""
    path = Path(tempfile.mkdtemp(prefix="dg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_record_mode_answers_200_and_writes_one_json_line_per_request(workdir: Path) -> None:
    """The separate-process mode the differential tests use: answer 200, record method+target."""
    sock_path, record = workdir / "fake.sock", workdir / "requests.jsonl"
    with subprocess.Popen([sys.executable, str(FAKE), "--socket", str(sock_path),
                           "--record", str(record)], stderr=subprocess.PIPE) as process:
        deadline = time.monotonic() + 10
        while not sock_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(sock_path))
            sock.sendall(b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: d\r\n\r\n"
                         b"POST /containers/create HTTP/1.1\r\nHost: d\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
            data = b""
            while data.count(b"HTTP/1.1 200") < 2:
                data += sock.recv(65536)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        process.stderr.read()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["method"], r["target"], r["body"]) for r in lines] == [
        ("GET", "/v1.41/containers/json?all=1", ""), ("POST", "/containers/create", "{}")]
    assert not sock_path.exists()
