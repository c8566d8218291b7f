"""dockgate vs HAProxy (Tecnativa's rules) vs direct access, in one run.

    python bench/run.py                 # about 5 minutes with the real-daemon section
    python bench/run.py --duration 10   # longer, steadier numbers
    python bench/run.py --daemon /var/run/docker.sock   # also the real-daemon section
    python bench/run.py --rounds 3      # every row three times, interleaved: medians
    python bench/run.py --learn         # the recorder's cost: dockgate --learn on vs off

A fast upstream (nginx on a unix socket, also on a loopback TCP port for the 'direct'
baseline, which wrk needs) serves ``/_ping``, a small ``/containers/json`` and a 1 GiB
response. In front of it: HAProxy 2.6 with tests/haproxy/tecnativa.cfg (the same
configuration the differential test checks dockgate against) and dockgate in Tecnativa
mode, both with ``CONTAINERS=1`` and production logging (``LOG_LEVEL=info``: one line per
request for both). wrk drives keep-alive GETs at 1, 50 and 200 connections; curl
downloads the 1 GiB stream. Each row also gives the CPU time the serving processes used
per request (utime + stime of the process and its descendants, from /proc/PID/stat,
read before and after the wrk run): nginx for direct, HAProxy, dockgate's supervisor
and workers.

With ``--daemon SOCKET`` (default: $DOCKGATE_TEST_SOCKET when set) a second section runs
against a real dockerd: 20 created containers (``--network none``, never started, labels
padding the list to about 16 KB, which dockerd sends chunked), ``GET
/containers/{id}/json`` of one and ``GET /containers/json?all=1`` of the 20, at 1 and 10
connections. Direct there means HAProxy in TCP mode (no HTTP parsing) in front of the
daemon's unix socket, since wrk speaks TCP only. The containers are removed afterwards.

The floor rows (section ``floor``) put two byte relays that parse nothing in front of
the same nginx: HAProxy in TCP mode and bench/relay.py (Python on uvloop, as many
processes as dockgate has workers). They cost what any proxy on this path pays for the
loop, the sockets and the kernel; their table gives dockgate's CPU above the uvloop
relay. With ``--rounds N`` every row runs N times, interleaved round by round, and each
figure is the median of its N runs (the JSON keeps every run).

Results: a table on stdout, and JSON plus Markdown in bench/results/ (gitignored).

With ``--learn`` only dockgate runs, twice side by side (interleaved, ``--rounds`` times):
without and with ``--learn FILE``, on ``/_ping``, ``/containers/json`` and an inspect
``/containers/bench/json`` (a request naming a container, for which learn mode first asks
the daemon which container it is), and the table gives learn-on/learn-off per row.

Nothing here is a pytest test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HAPROXY_CONFIG = ROOT / "tests" / "haproxy" / "tecnativa.cfg"
STREAM_PATH = "/containers/bench/export"
STREAM_BYTES = 1 << 30
STREAM_RUNS = 3
CONTAINERS_JSON = json.dumps([{"Id": "0" * 64, "Names": ["/bench"], "Image": "busybox",
                               "State": "running", "Status": "Up 1 second"}])
INSPECT_JSON = json.dumps({"Id": "0" * 64, "Name": "/bench",
                           "Config": {"Image": "busybox", "Labels": {"app": "bench"}}})
TARGETS = ("direct", "haproxy", "dockgate")
# The floor rows: byte relays that parse nothing, one in C and one in Python on uvloop.
FLOORS = ("tcp-relay", "uvloop-relay")
LEARN_TARGETS = ("learn-off", "learn-on")
LEARN_PATHS = ("/_ping", "/containers/json", "/containers/bench/json")

NGINX_CONFIG = """\
# Upstream for bench/run.py: answers like a fast daemon, on a unix socket and on TCP.
worker_processes 1;
error_log {work}/nginx-error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    sendfile on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen unix:{work}/upstream.sock;
        listen 127.0.0.1:{port};
        location = /_ping {{ default_type text/plain; return 200 "OK"; }}
        location = /containers/json {{
            default_type application/json;
            return 200 '{containers_json}';
        }}
        location = /containers/bench/json {{
            default_type application/json;
            return 200 '{inspect_json}';
        }}
        location = {stream_path} {{
            default_type application/x-tar;
            alias {work}/stream.bin;
        }}
    }}
}}
"""


@dataclass
class Load:
    target: str
    path: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: str
    cpu_us_per_request: float
    kernel_us_per_request: float  # the system (kernel) part of cpu_us_per_request


@dataclass
class Verdict:
    name: str
    wanted: str
    measured: str
    met: bool


@dataclass
class Stream:
    target: str
    megabytes_per_s: float
    seconds: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def version(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0]

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "haproxy": version(["haproxy", "-v"]),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "loadavg_at_start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


@contextmanager
def started(command: list[str], env: dict[str, str], port: int, log: Path
            ) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(port)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def dockgate_command(args: argparse.Namespace, port: int, upstream: str,
                     *extra: str) -> list[str]:
    """``dockgate serve`` in Tecnativa mode on ``port``; with ``--metrics`` its admin
    listener too, which turns the Prometheus metrics on."""
    command = [sys.executable, "-m", "dockgate", "serve", "--listen", f"tcp://127.0.0.1:{port}",
               "--upstream", f"unix://{upstream}", "--workers", str(args.workers), *extra]
    if args.metrics:
        command += ["--admin-listen", f"127.0.0.1:{free_port()}"]
    return command


def compiled_build(work: Path) -> Path:
    """``--compiled``: dockgate built with mypyc (``DOCKGATE_COMPILE=1``) into ``work``."""
    target = work / "compiled"
    print("building dockgate with mypyc (DOCKGATE_COMPILE=1 pip install --target), about a "
          "minute ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(ROOT)],
                   env={**os.environ, "DOCKGATE_COMPILE": "1", "PIP_ROOT_USER_ACTION": "ignore"},
                   check=True, timeout=900)
    return target


def dockgate_build(args: argparse.Namespace, work: Path, env: dict[str, str]) -> str:
    """Point ``env`` at the build to measure (``--compiled``); what ``--version`` says
    (printed too)."""
    if args.compiled:
        env["PYTHONPATH"] = str(compiled_build(work))
    shown = subprocess.run([sys.executable, "-m", "dockgate", "--version"], env=env,
                           capture_output=True, text=True, check=True, timeout=60)
    print(shown.stdout.strip(), flush=True)
    return shown.stdout.strip()


def proxy_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment with Tecnativa's defaults and CONTAINERS=1, as in production."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env.update({"EVENTS": "1", "PING": "1", "VERSION": "1", "CONTAINERS": "1",
                "LOG_LEVEL": "info"})
    env.update(extra)
    return env


def check(port: int, path: str, expected: bytes | None) -> None:
    """One request before measuring: the path must be forwarded and answered in full."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or (expected is not None and body != expected):
        raise SystemExit(f"127.0.0.1:{port}{path} answered {head[:200]!r}: check the setup")


_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of ``pid`` and all its descendants, in seconds."""
    parents: dict[int, int] = {}
    times: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        # After "pid (comm) ": state ppid ... utime (14th field of the line) stime (15th).
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]), int(fields[12]))
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(times.get(member, (0, 0))[0] for member in tree) / tick,
            sum(times.get(member, (0, 0))[1] for member in tree) / tick)


def wrk(target: str, port: int, path: str, connections: int, duration: int,
        pid: int) -> Load:
    threads = min(connections, 2)
    cpu_before = cpu_seconds(pid)
    done = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d",
                           f"{duration}s", "--latency", f"http://127.0.0.1:{port}{path}"],
                          capture_output=True, text=True, check=True,
                          timeout=duration + 30)
    cpu_after = cpu_seconds(pid)
    user, kernel = (cpu_after[0] - cpu_before[0]), (cpu_after[1] - cpu_before[1])
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    total = re.search(r"(\d+) requests in", done.stdout)
    latencies = {p: float(v) * _UNIT_MS[u] for p, v, u in _LATENCY.findall(done.stdout)}
    if rate is None or total is None or set(latencies) != {"50", "99"}:
        raise SystemExit(f"cannot read wrk's output:\n{done.stdout}{done.stderr}")
    errors = " ".join(line.strip() for line in done.stdout.splitlines()
                      if "Non-2xx" in line or "Socket errors" in line)
    requests = max(1, int(total.group(1)))
    return Load(target, path, connections, float(rate.group(1)), latencies["50"],
                latencies["99"], errors, (user + kernel) * 1e6 / requests,
                kernel * 1e6 / requests)


def stream(target: str, port: int) -> Stream:
    done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w",
                           "%{http_code} %{size_download} %{time_total}",
                           f"http://127.0.0.1:{port}{STREAM_PATH}"],
                          capture_output=True, text=True, check=True, timeout=600)
    status, size, seconds = done.stdout.split()
    if status != "200" or int(size) != STREAM_BYTES:
        raise SystemExit(f"{target}: the 1 GiB stream answered {status} with {size} bytes")
    return Stream(target, STREAM_BYTES / float(seconds) / 1e6, float(seconds))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


DIRECT_TCP_CONFIG = """\
# The real daemon's "direct" baseline for bench/run.py: TCP in, its unix socket out,
# bytes passed through without HTTP parsing (wrk speaks TCP only).
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 10s
    timeout client 10m
    timeout server 10m
listen direct
    bind 127.0.0.1:{port}
    server daemon unix@{socket}
"""
DAEMON_CONTAINERS = 20
DAEMON_IMAGE = "dockgate-test/busybox:latest"  # what tests/conftest.py imports
DAEMON_LIST = "/containers/json?all=1"
DAEMON_CONNECTIONS = (1, 10)


def table(loads: list[Load]) -> list[str]:
    by_key = {(load.target, load.path, load.connections): load for load in loads}
    lines = ["| path | conns | direct req/s | HAProxy req/s | dockgate req/s | dockgate/HAProxy "
             "| dockgate/direct | CPU us/req (direct/HAProxy/dockgate) | dockgate/HAProxy "
             "CPU | of which kernel us/req (HAProxy/dockgate) | p50 ms (direct/HAProxy/dockgate) "
             "| p99 ms (direct/HAProxy/dockgate) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|"]
    for path, connections in sorted({(load.path, load.connections) for load in loads}):
        row = [by_key[(target, path, connections)] for target in TARGETS]
        direct, haproxy, dockgate = row
        lines.append(
            f"| {path} | {connections} | {direct.requests_per_s:,.0f} | "
            f"{haproxy.requests_per_s:,.0f} | {dockgate.requests_per_s:,.0f} | "
            f"{ratio(dockgate.requests_per_s, haproxy.requests_per_s):.2f}x | "
            f"{ratio(dockgate.requests_per_s, direct.requests_per_s):.2f}x | "
            f"{' / '.join(f'{load.cpu_us_per_request:.1f}' for load in row)} | "
            f"{ratio(dockgate.cpu_us_per_request, haproxy.cpu_us_per_request):.2f}x | "
            f"{haproxy.kernel_us_per_request:.1f} / {dockgate.kernel_us_per_request:.1f} | "
            f"{' / '.join(f'{load.p50_ms:.2f}' for load in row)} | "
            f"{' / '.join(f'{load.p99_ms:.2f}' for load in row)} |")
    return lines


def floor_table(loads: list[Load]) -> list[str]:
    """The floor rows beside the two HTTP proxies: what relaying bytes alone costs."""
    by_key = {(load.target, load.path, load.connections): load for load in loads}
    lines = ["| path | conns | req/s (TCP relay / uvloop relay) | CPU us/req (TCP relay / "
             "uvloop relay / HAProxy / dockgate) | uvloop relay/HAProxy CPU | dockgate "
             "above the uvloop relay, CPU us/req | of which kernel |",
             "|---|---:|---|---|---:|---:|---:|"]
    for path, connections in sorted({(load.path, load.connections) for load in loads
                                     if load.target in FLOORS}):
        tcp, py, haproxy, dockgate = (by_key[(target, path, connections)]
                                      for target in (*FLOORS, "haproxy", "dockgate"))
        cpu = " / ".join(f"{load.cpu_us_per_request:.1f}" for load in (tcp, py, haproxy, dockgate))
        lines.append(
            f"| {path} | {connections} | {tcp.requests_per_s:,.0f} / {py.requests_per_s:,.0f} | "
            f"{cpu} | {ratio(py.cpu_us_per_request, haproxy.cpu_us_per_request):.2f}x | "
            f"{dockgate.cpu_us_per_request - py.cpu_us_per_request:.1f} | "
            f"{dockgate.kernel_us_per_request - py.kernel_us_per_request:.1f} |")
    return lines


def summarize(loads: list[Load], daemon_loads: list[Load], streams: list[Stream],
              list_note: str) -> tuple[list[str], list[Verdict]]:
    """The Markdown table lines and the target verdicts."""
    lines = ["Fast upstream (nginx):", "", *table(loads)] if loads else []
    if any(load.target in FLOORS for load in loads):
        lines += ["", "Floor: byte relays that parse nothing, HAProxy in TCP mode and "
                  "bench/relay.py on uvloop (as many processes as dockgate has workers):", "",
                  *floor_table(loads)]
    if daemon_loads:
        lines += ["", f"Real dockerd ({list_note}):", "", *table(daemon_loads)]
    mbs = {s.target: s.megabytes_per_s for s in streams}
    if streams:
        lines += ["", "| 1 GiB stream | direct | HAProxy | dockgate | dockgate/HAProxy | "
                  "dockgate/direct |", "|---|---:|---:|---:|---:|---:|",
                  f"| MB/s | {mbs['direct']:,.0f} | {mbs['haproxy']:,.0f} | "
                  f"{mbs['dockgate']:,.0f} | {ratio(mbs['dockgate'], mbs['haproxy']):.2f}x | "
                  f"{ratio(mbs['dockgate'], mbs['direct']):.2f}x |"]
    by_key = {(load.target, load.path, load.connections): load
              for load in loads + daemon_loads}
    verdicts: list[Verdict] = []

    def versus(path: str, connections: int) -> tuple[Load, Load] | None:
        pair = (by_key.get(("dockgate", path, connections)),
                by_key.get(("haproxy", path, connections)))
        return None if pair[0] is None or pair[1] is None else (pair[0], pair[1])

    for path in ("/_ping", "/containers/json"):
        pair = versus(path, 50)
        if pair is not None:
            rate = ratio(pair[0].requests_per_s, pair[1].requests_per_s)
            cpu = ratio(pair[0].cpu_us_per_request, pair[1].cpu_us_per_request)
            verdicts += [Verdict(f"{path} c=50 req/s, dockgate/HAProxy", ">= 1.2",
                                 f"{rate:.2f}x", rate >= 1.2),
                         Verdict(f"{path} c=50 CPU us/request, dockgate/HAProxy", "<= 0.83",
                                 f"{cpu:.2f}x", cpu <= 0.83)]
        pair = versus(path, 1)
        if pair is not None:
            verdicts.append(Verdict(f"{path} c=1 p50, dockgate vs HAProxy",
                                    "dockgate <= HAProxy",
                                    f"{pair[0].p50_ms:.3f} ms vs {pair[1].p50_ms:.3f} ms",
                                    pair[0].p50_ms <= pair[1].p50_ms))
    for name, path in (("inspect", "/containers/bench/json"), ("16 KB chunked list",
                                                                 DAEMON_LIST)):
        pair = versus(path, 10)
        if pair is not None:
            rate = ratio(pair[0].requests_per_s, pair[1].requests_per_s)
            verdicts.append(Verdict(f"real daemon {name} c=10 req/s, dockgate/HAProxy",
                                    ">= 1.0", f"{rate:.2f}x", rate >= 1.0))
    if streams:
        stream_ratio = ratio(mbs["dockgate"], mbs["haproxy"])
        verdicts.append(Verdict("1 GiB stream MB/s, dockgate/HAProxy", ">= 1.0",
                                f"{stream_ratio:.2f}x", stream_ratio >= 1.0))
    lines += ["", "| issue target | wanted | measured | met |", "|---|---|---|---|"]
    lines += [f"| {v.name} | {v.wanted} | {v.measured} | {'yes' if v.met else 'NO'} |"
              for v in verdicts]
    return lines, verdicts


def docker(socket_path: str, *args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "DOCKER_HOST": f"unix://{socket_path}"},
                          timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def bench_containers(socket_path: str) -> Iterator[str]:
    """20 created containers; the id of the first. Removed afterwards."""
    pad = "x" * 170  # a label that makes the list of 20 about 16 KB
    ids: list[str] = []
    try:
        for number in range(DAEMON_CONTAINERS):
            # One at a time into ids, so that a failure still removes the ones made.
            created = docker(socket_path, "create", "--network", "none", "--name",
                             f"dgbench-{os.getpid()}-{number}", "--label",
                             f"bench.pad={pad}", DAEMON_IMAGE, "true")
            ids.append(created)
        yield ids[0]
    finally:
        if ids:
            docker(socket_path, "rm", "-f", *ids)


def measure(paths: list[str], connections: list[int], ports: dict[str, int],
            pids: dict[str, int], duration: int, rounds: int) -> tuple[list[Load], list[Load]]:
    """wrk against every target in ``ports``, interleaved row by row, ``rounds`` times;
    (the median of each figure per row, every run)."""
    runs: list[Load] = []
    for round_ in range(rounds):
        prefix = f"round {round_ + 1}/{rounds} " if rounds > 1 else ""
        for path in paths:
            for count in connections:
                for target, port in ports.items():
                    print(f"{prefix}wrk {target:<12} GET {path:<24} c={count:<3} {duration}s ...",
                          end=" ", flush=True)
                    load = wrk(target, port, path, count, duration, pids[target])
                    runs.append(load)
                    print(f"{load.requests_per_s:>9,.0f} req/s  p50 {load.p50_ms:.2f} ms  "
                          f"p99 {load.p99_ms:.2f} ms  {load.cpu_us_per_request:6.1f} CPU us/req "
                          f"{load.errors}", flush=True)
    return medians(runs), runs


def medians(runs: list[Load]) -> list[Load]:
    """One Load per (target, path, connections): the median of each figure over its runs."""
    rows: dict[tuple[str, str, int], list[Load]] = {}
    for load in runs:
        rows.setdefault((load.target, load.path, load.connections), []).append(load)
    return [Load(target, path, connections,
                 median([load.requests_per_s for load in same]),
                 median([load.p50_ms for load in same]), median([load.p99_ms for load in same]),
                 " ".join(dict.fromkeys(load.errors for load in same if load.errors)),
                 median([load.cpu_us_per_request for load in same]),
                 median([load.kernel_us_per_request for load in same]))
            for (target, path, connections), same in rows.items()]


def response_note(port: int, path: str) -> str:
    """Size and framing of one response (what the 16 KB chunked row really sends)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    framing = "chunked" if b"transfer-encoding: chunked" in head.lower() else "with a length"
    return f"the list of {DAEMON_CONTAINERS} is {len(body):,} bytes on the wire, {framing}"


@contextmanager
def floor_relays(work: Path, upstream: Path, workers: int, env: dict[str, str]
                 ) -> Iterator[dict[str, tuple[int, int]]]:
    """The floor rows' two relays in front of ``upstream``: {target: (port, pid)}."""
    ports = {target: free_port() for target in FLOORS}
    (work / "tcp-relay.cfg").write_text(DIRECT_TCP_CONFIG.format(port=ports["tcp-relay"],
                                                                 socket=upstream))
    relay = [sys.executable, str(ROOT / "bench" / "relay.py"), "--listen",
             f"127.0.0.1:{ports['uvloop-relay']}", "--upstream", str(upstream), "--workers",
             str(workers)]
    with (started(["haproxy", "-db", "-f", str(work / "tcp-relay.cfg")], env,
                  ports["tcp-relay"], work / "tcp-relay.log") as tcp,
          started(relay, env, ports["uvloop-relay"], work / "uvloop-relay.log") as python):
        yield {"tcp-relay": (ports["tcp-relay"], tcp.pid),
               "uvloop-relay": (ports["uvloop-relay"], python.pid)}


def daemon_section(socket_path: str, work: Path, env: dict[str, str],
                   args: argparse.Namespace) -> tuple[list[Load], list[Load], str]:
    """direct (HAProxy TCP mode) / HAProxy (Tecnativa) / dockgate against a real dockerd."""
    ports = {target: free_port() for target in TARGETS}
    (work / "direct-tcp.cfg").write_text(DIRECT_TCP_CONFIG.format(port=ports["direct"],
                                                                  socket=socket_path))
    haproxy_env = {**env, "DG_HAPROXY_BIND": f"127.0.0.1:{ports['haproxy']}",
                   "DG_HAPROXY_UPSTREAM": socket_path, "DG_HAPROXY_LOG_LEVEL": args.log_level}
    dockgate = dockgate_command(args, ports["dockgate"], socket_path)
    with (bench_containers(socket_path) as first,
          started(["haproxy", "-db", "-f", str(work / "direct-tcp.cfg")], env, ports["direct"],
                  work / "direct-tcp.log") as direct,
          started(["haproxy", "-db", "-f", str(HAPROXY_CONFIG)], haproxy_env,
                  ports["haproxy"], work / "haproxy-daemon.log") as haproxy,
          started(dockgate, env, ports["dockgate"], work / "dockgate-daemon.log") as proxy):
        inspect = f"/containers/{first[:12]}/json"
        for target in TARGETS:
            check(ports[target], inspect, None)
            check(ports[target], DAEMON_LIST, None)
        note = response_note(ports["dockgate"], DAEMON_LIST)
        pids = {"direct": direct.pid, "haproxy": haproxy.pid, "dockgate": proxy.pid}
        loads, runs = measure([inspect, DAEMON_LIST], list(DAEMON_CONNECTIONS), ports, pids,
                              args.duration, args.rounds)
    for load in loads + runs:
        if load.path == inspect:
            load.path = "/containers/bench/json"  # one name across runs
    return loads, runs, note


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def learn_table(loads: list[Load]) -> list[str]:
    """learn-on vs learn-off per path and connection count (medians over the rounds)."""
    by_key = {(load.target, load.path, load.connections): load for load in loads}
    lines = ["| path | conns | learn off req/s | learn on req/s | on/off | p50 ms off/on | "
             "p99 ms off/on |", "|---|---:|---:|---:|---:|---|---|"]
    for path, connections in sorted({(load.path, load.connections) for load in loads}):
        off, on = (by_key[(target, path, connections)] for target in LEARN_TARGETS)
        lines.append(f"| {path} | {connections} | {off.requests_per_s:,.0f} | "
                     f"{on.requests_per_s:,.0f} | "
                     f"{ratio(on.requests_per_s, off.requests_per_s):.2f}x | "
                     f"{off.p50_ms:.2f} / {on.p50_ms:.2f} | {off.p99_ms:.2f} / {on.p99_ms:.2f} |")
    return lines


def learn_main(args: argparse.Namespace, connections: list[int], info: dict[str, str],
               argv: list[str] | None) -> int:
    """``--learn``: dockgate with and without --learn, interleaved, same upstream."""
    with tempfile.TemporaryDirectory(prefix="dockgate-bench-") as tmp:
        work = Path(tmp)
        (work / "stream.bin").touch()
        os.chmod(work, 0o755)
        ports = {target: free_port() for target in ("direct", *LEARN_TARGETS)}
        (work / "nginx.conf").write_text(NGINX_CONFIG.format(
            work=work, port=ports["direct"], containers_json=CONTAINERS_JSON,
            inspect_json=INSPECT_JSON, stream_path=STREAM_PATH))
        env = proxy_env({"LOG_LEVEL": args.log_level})
        info["dockgate"] = dockgate_build(args, work, env)
        nginx = ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g",
                 "daemon off;"]

        def dockgate(target: str) -> list[str]:
            return dockgate_command(args, ports[target], str(work / "upstream.sock"),
                                    *(["--learn", str(work / "learn.jsonl")]
                                      if target == "learn-on" else []))

        with (started(nginx, env, ports["direct"], work / "nginx.log"),
              started(dockgate("learn-off"), env, ports["learn-off"], work / "off.log") as off,
              started(dockgate("learn-on"), env, ports["learn-on"], work / "on.log") as on):
            pids = {"learn-off": off.pid, "learn-on": on.pid}
            for target in LEARN_TARGETS:
                check(ports[target], "/containers/bench/json", INSPECT_JSON.encode())
            loads, runs = measure(list(LEARN_PATHS), connections,
                                  {target: ports[target] for target in LEARN_TARGETS}, pids,
                                  args.duration, args.rounds)
        recorded = sum(1 for _ in (work / "learn.jsonl").open())
    table = learn_table(loads)
    print("\n" + "\n".join(table) + f"\n\n{recorded:,} learn records written")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    document = {"time": stamp, "command": command.strip(), "machine": info,
                "duration_s": args.duration, "rounds": args.rounds,
                "dockgate_workers": args.workers, "loads": [asdict(load) for load in loads],
                "runs": [asdict(load) for load in runs], "learn_records": recorded}
    (RESULTS / f"learn-{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS / f"learn-{stamp}.md").write_text("\n".join(
        [f"# dockgate --learn cost {stamp}", "", f"`{command.strip()}` on {info['nproc']} "
         f"CPUs ({info['cpu']}); {info['dockgate']}; load average {info['loadavg_at_start']} at "
         "start.", "",
         *table]) + "\n")
    print(f"wrote {RESULTS / f'learn-{stamp}.json'} and .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,50,200",
                        help="comma-separated wrk connection counts for the fast upstream (the "
                        "real-daemon section uses 1 and 10)")
    parser.add_argument("--log-level", default="info",
                        help="LOG_LEVEL for both proxies (info is production's default)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="dockgate --workers; the default, one per CPU, matches HAProxy's "
                        "default of one thread per CPU")
    parser.add_argument("--daemon", default=os.environ.get("DOCKGATE_TEST_SOCKET"),
                        help="a real dockerd's unix socket for the real-daemon section "
                        "(needs the tests' busybox image; default $DOCKGATE_TEST_SOCKET, "
                        "skipped when unset)")
    parser.add_argument("--sections", default="fast,floor,daemon,stream",
                        help="comma-separated: fast (nginx upstream), floor (byte relays in "
                        "front of the same nginx, measured with fast), daemon, stream")
    parser.add_argument("--metrics", action="store_true",
                        help="dockgate with its admin listener, so that every request is "
                        "also counted in the Prometheus metrics (off in a Tecnativa drop-in, "
                        "as there)")
    parser.add_argument("--compiled", action="store_true",
                        help="measure dockgate built with mypyc (DOCKGATE_COMPILE=1), built "
                        "into the run's temporary directory first (about a minute; pip "
                        "fetches mypy); without it, the build this Python imports")
    parser.add_argument("--learn", action="store_true",
                        help="measure the learn recorder instead: dockgate with and without "
                        "--learn, interleaved")
    parser.add_argument("--rounds", type=int, default=None,
                        help="run every row this many times, interleaved, and report the "
                        "median of each figure (default 1; 2 with --learn); 3 or more "
                        "steadies a noisy machine")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.learn else 1
    elif args.rounds < 1:
        parser.error("--rounds must be at least 1")
    connections = [int(c) for c in args.connections.split(",")]
    sections = set(args.sections.split(","))
    for tool in ("nginx", "haproxy", "wrk", "curl", "docker"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is not installed")
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, "
          f"Python {info['python']}, load average {info['loadavg_at_start']}; "
          f"dockgate --workers {args.workers}", flush=True)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy; numbers will be noisy", flush=True)
    if args.learn:
        return learn_main(args, connections, info, argv)
    loads: list[Load] = []
    daemon_loads: list[Load] = []
    runs: list[Load] = []
    daemon_runs: list[Load] = []
    streams: list[Stream] = []
    list_note = ""
    with tempfile.TemporaryDirectory(prefix="dockgate-bench-") as tmp:
        work = Path(tmp)
        with (work / "stream.bin").open("wb") as big:
            big.truncate(STREAM_BYTES)
        os.chmod(work, 0o755)
        ports = {target: free_port() for target in TARGETS}
        (work / "nginx.conf").write_text(NGINX_CONFIG.format(
            work=work, port=ports["direct"], containers_json=CONTAINERS_JSON,
            inspect_json=INSPECT_JSON, stream_path=STREAM_PATH))
        upstream = work / "upstream.sock"
        env = proxy_env({"LOG_LEVEL": args.log_level})
        info["dockgate"] = dockgate_build(args, work, env)
        nginx = ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g",
                 "daemon off;"]
        haproxy = ["haproxy", "-db", "-f", str(HAPROXY_CONFIG)]
        haproxy_env = {**env, "DG_HAPROXY_BIND": f"127.0.0.1:{ports['haproxy']}",
                       "DG_HAPROXY_UPSTREAM": str(upstream),
                       "DG_HAPROXY_LOG_LEVEL": args.log_level}
        dockgate = dockgate_command(args, ports["dockgate"], str(upstream))
        if sections & {"fast", "stream"}:
            with (started(nginx, env, ports["direct"], work / "nginx.log") as nginx_process,
                  started(haproxy, haproxy_env, ports["haproxy"],
                          work / "haproxy.log") as haproxy_process,
                  started(dockgate, env, ports["dockgate"],
                          work / "dockgate.log") as dockgate_process,
                  ExitStack() as more):
                pids = {"direct": nginx_process.pid, "haproxy": haproxy_process.pid,
                        "dockgate": dockgate_process.pid}
                fast_ports = dict(ports)
                if {"fast", "floor"} <= sections:
                    for target, (port, pid) in more.enter_context(
                            floor_relays(work, upstream, args.workers, env)).items():
                        fast_ports[target], pids[target] = port, pid
                for port in fast_ports.values():
                    check(port, "/_ping", b"OK")
                    check(port, "/containers/json", CONTAINERS_JSON.encode())
                if "fast" in sections:
                    loads, runs = measure(["/_ping", "/containers/json"], connections,
                                          fast_ports, pids, args.duration, args.rounds)
                if "stream" in sections:
                    streams = stream_section(ports)
        if "daemon" in sections:
            if args.daemon:
                daemon_loads, daemon_runs, list_note = daemon_section(args.daemon, work, env,
                                                                      args)
            else:
                print("no --daemon (or DOCKGATE_TEST_SOCKET): real-daemon section skipped")
    lines, verdicts = summarize(loads, daemon_loads, streams, list_note)
    print("\n" + "\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    document = {"time": stamp, "command": command.strip(), "machine": info,
                "duration_s": args.duration, "rounds": args.rounds,
                "log_level": args.log_level, "dockgate_workers": args.workers,
                "loads": [asdict(load) for load in loads],
                "daemon_loads": [asdict(load) for load in daemon_loads],
                "runs": [asdict(load) for load in runs + daemon_runs],
                "streams": [asdict(s) for s in streams],
                "targets": [asdict(v) for v in verdicts]}
    rounds_note = (f"the median of {args.rounds} interleaved rounds per row; "
                   if args.rounds > 1 else "")
    markdown = [f"# dockgate benchmark {stamp}", "",
                f"`{command.strip()}` on {info['nproc']} CPUs ({info['cpu']}), Linux "
                f"{info['kernel']}, Python {info['python']}; {info['haproxy']}; "
                f"{info['nginx']}; {info['dockgate']}, --workers {args.workers}"
                f"{' with metrics (--admin-listen)' if args.metrics else ''}; "
                f"LOG_LEVEL={args.log_level} for both proxies; {rounds_note}load average "
                f"{info['loadavg_at_start']} at start.", "", *lines]
    for name in (f"bench-{stamp}", "latest"):
        (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text("\n".join(markdown) + "\n")
    print(f"\nwrote {RESULTS / f'bench-{stamp}.json'} and .md (also latest.json, latest.md)")
    return 0


def stream_section(ports: dict[str, int]) -> list[Stream]:
    # The first read of the sparse file fills the page cache: keep it out of the numbers.
    stream("warm-up", ports["direct"])
    streams: list[Stream] = []
    for target in TARGETS:
        print(f"curl {target:<8} GET {STREAM_PATH} (1 GiB) x{STREAM_RUNS} ...", end=" ",
              flush=True)
        runs = sorted((stream(target, ports[target]) for _ in range(STREAM_RUNS)),
                      key=lambda run: run.megabytes_per_s)
        streams.append(runs[len(runs) // 2])
        print(" ".join(f"{run.megabytes_per_s:,.0f}" for run in runs)
              + " MB/s (median kept)", flush=True)
    return streams


if __name__ == "__main__":
    raise SystemExit(main())
