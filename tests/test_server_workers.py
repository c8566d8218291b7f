"""`dockgate serve --workers N`: pre-forked workers on listeners the parent bound once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import free_port, wait_for_port
from fakedaemon import FakeDaemon, connect, read_replies

PING_ONLY = "policies:\n  p: {grants: [{allow: [system.ping]}]}\ndefault: p\n"
VERSION_ONLY = "policies:\n  p: {grants: [{allow: [system.version]}]}\ndefault: p\n"


class Workers:
    """A `dockgate serve --workers 2` process with its stderr in a file."""

    def __init__(self, fake: FakeDaemon, sockdir: Path, *args: str) -> None:
        self.port = free_port()
        self.log_path = sockdir / "dockgate.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["LOG_LEVEL"] = "info"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dockgate", "serve", "--workers", "2",
                 "--listen", f"tcp://127.0.0.1:{self.port}",
                 "--listen", f"unix://{sockdir / 'proxy.sock'}",
                 "--upstream", f"unix://{fake.path}", *args],
                env=env, stderr=log)
        wait_for_port(self.port)
        self.wait_serving(2)

    def wait_serving(self, count: int) -> None:
        """Until ``count`` workers have installed their signal handlers and serve."""
        eventually(lambda: self.log().count("worker serving (pid") >= count)

    def log(self) -> str:
        return self.log_path.read_text()

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log().splitlines()
                if line.startswith("{")]

    def children(self) -> set[int]:
        pid = self.process.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return {int(child) for child in text.split()}

    def status(self, target: str) -> int:
        with connect(self.port) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: d\r\n\r\n".encode())
            return read_replies(sock, [("GET", target)])[0].status

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{check} still false after {timeout}s")
        time.sleep(0.05)


def serving_pids(workers: Workers, target: str, want: int) -> set[int]:
    """Open connections until ``want`` distinct workers answered ``target``; their pids."""
    seen_before = len(workers.records())
    pids: set[int] = set()
    for _ in range(200):
        workers.status(target)
        time.sleep(0.005)
        pids = {int(str(r["pid"])) for r in workers.records()[seen_before:]
                if r.get("event") == "request"}
        if len(pids) >= want:
            break
    return pids


def test_two_workers_serve_requests_from_two_processes_and_sigterm_stops_all(
        fake: FakeDaemon, sockdir: Path) -> None:
    """Both forked workers accept on the shared sockets, and one SIGTERM stops the lot."""
    workers = Workers(fake, sockdir)
    try:
        children = workers.children()
        assert len(children) == 2
        assert serving_pids(workers, "/_ping", 2) == children
        assert (sockdir / "proxy.sock").exists()
    finally:
        assert workers.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    assert not (sockdir / "proxy.sock").exists()
    assert "all workers stopped" in workers.log()


def test_sighup_reloads_the_policy_in_every_worker_and_a_bad_one_is_kept_out(
        fake: FakeDaemon, sockdir: Path) -> None:
    """Each worker swaps its decider on SIGHUP; an invalid file keeps the last good one."""
    policy = sockdir / "policy.yaml"
    policy.write_text(PING_ONLY)
    workers = Workers(fake, sockdir, "--policy", str(policy))
    try:
        assert workers.status("/_ping") == 200
        policy.write_text(VERSION_ONLY)
        workers.process.send_signal(signal.SIGHUP)
        eventually(lambda: workers.log().count("reloaded: decisions now by") == 2)
        assert len(serving_pids(workers, "/version", 2)) == 2
        assert {workers.status("/_ping") for _ in range(20)} == {403}
        policy.write_text("policies: [\n")
        workers.process.send_signal(signal.SIGHUP)
        eventually(lambda: workers.log().count("reload failed, keeping") == 2)
        assert {workers.status("/version") for _ in range(20)} == {200}
    finally:
        assert workers.stop() == 0


def test_a_killed_worker_is_replaced(fake: FakeDaemon, sockdir: Path) -> None:
    """A worker that dies unexpectedly is restarted; the proxy keeps serving meanwhile."""
    workers = Workers(fake, sockdir)
    try:
        first = workers.children()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        eventually(lambda: len(workers.children()) == 2 and victim not in workers.children())
        workers.wait_serving(3)
        replacement = workers.children() - first
        assert len(replacement) == 1
        assert serving_pids(workers, "/_ping", 2) == workers.children()
        assert "ended unexpectedly (killed by SIGKILL); replacing it" in workers.log()
    finally:
        assert workers.stop() == 0


def scrape(port: int) -> dict[str, float]:
    """The samples of the admin listener's /metrics, by sample name with labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_with_two_workers_add_up_across_workers(fake: FakeDaemon,
                                                        sockdir: Path) -> None:
    """A scrape answered by either worker counts the requests of both (multiprocess mode)."""
    admin_port = free_port()
    workers = Workers(fake, sockdir, "--admin-listen", f"127.0.0.1:{admin_port}")
    try:
        assert serving_pids(workers, "/_ping", 2) == workers.children()
        pings = sum(1 for r in workers.records()
                    if r.get("event") == "request" and r["target"] == "/_ping")
        ping = 'decision="allow",operation="system.ping"'
        for _ in range(6):  # several scrapes: whichever worker answers, the sum is the same
            samples = scrape(admin_port)
            assert samples[f'dockgate_requests_total{{{ping},status="200"}}'] == pings
            assert samples[f"dockgate_request_duration_seconds_count{{{ping}}}"] == pings
        assert 'dockgate_build_info{python=' in " ".join(samples)
    finally:
        assert workers.stop() == 0
