"""Differential conformance: dockgate's Tecnativa mode against HAProxy running the same rules.

Both proxies sit in front of their own fake daemon (tests/fakedaemon.py: answers 200 to
everything and records each request it receives), get the same environment and the same
corpus: every Engine API route with sample parameters, versioned and unversioned, under
every method, plus case variants, percent-encodings, query strings, trailing slashes,
prefix look-alikes and non-canonical forms. A request was forwarded when the fake daemon
answered it (200) and recorded it.

What must hold, per environment combination:

* canonical target with an Engine API route: dockgate forwards exactly what HAProxy
  forwards and denies (403) exactly what it denies - zero disagreements;
* canonical target without a route (``/containersXYZ``, ``/CONTAINERS/json``, ``HEAD
  /version``): where HAProxy forwards, the real daemon answers 404; dockgate answers that
  404 itself and forwards nothing. Same client-visible outcome, one fewer request reaching
  the daemon. Where HAProxy denies, dockgate denies too;
* non-canonical target (dot segments, ``//``, encoded ``/``, double encoding, an encoded
  space or non-ASCII outside a network name): dockgate forwards nothing (400), including
  what HAProxy would forward.

The HAProxy configurations in tests/haproxy/ encode the documented rules; they are the
reference implementation here, run by Debian's haproxy 2.6 binary.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import free_port, wait_for_port
from dockgate import compat, routes

HERE = Path(__file__).resolve().parent
HAPROXY = "/usr/sbin/haproxy"
FAKE_DAEMON = HERE / "fakedaemon.py"
PROBE_HEADER = "X-Dgtest-Probe"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
VERSIONS = ("", "/v1.41")
LOOSE_VERSIONS = ("/v1.44.0.0", "/v.", "/v01.41")


@dataclass(frozen=True)
class Combination:
    label: str
    variant: str
    env: Mapping[str, str]


EVERYTHING = dict.fromkeys(compat.variables("linuxserver"), "1")

COMBINATIONS = (
    Combination("defaults", "tecnativa", {}),
    Combination("CONTAINERS=1", "tecnativa", {"CONTAINERS": "1"}),
    Combination("CONTAINERS=1 POST=1", "tecnativa", {"CONTAINERS": "1", "POST": "1"}),
    Combination("POST=1 ALLOW_RESTARTS=1", "tecnativa", {"POST": "1", "ALLOW_RESTARTS": "1"}),
    Combination("IMAGES INFO NETWORKS VOLUMES=1", "tecnativa",
                {"IMAGES": "1", "INFO": "1", "NETWORKS": "1", "VOLUMES": "1"}),
    Combination("everything=1", "tecnativa", EVERYTHING),
    Combination("odd truth values", "tecnativa",
                {"CONTAINERS": "true", "IMAGES": " 1", "NETWORKS": "01", "VOLUMES": "1abc",
                 "INFO": "+1", "EXEC": "0x1", "POST": "yes", "EVENTS": "", "PING": "-1",
                 "VERSION": "0"}),
    Combination("linuxserver CONTAINERS=1 ALLOW_START ALLOW_LOGS", "linuxserver",
                {"CONTAINERS": "1", "ALLOW_START": "1", "ALLOW_RESTARTS": "1",
                 "ALLOW_LOGS": "1", "LIBPOD_CONTAINERS": "1"}),
    Combination("linuxserver everything=1 but reads", "linuxserver",
                {**EVERYTHING, "ALLOW_ARCHIVE": "0", "ALLOW_EXPORT": "0", "ALLOW_TOP": "0"}),
)


@dataclass(frozen=True)
class Probe:
    method: str
    target: str


def route_probes() -> list[Probe]:
    """Every route's sample path under every method, unversioned and versioned; the loose
    version spellings the daemon also accepts (``/v1.44.0.0/``, ``/v./``) with the route's
    own method."""
    probes = []
    for path in sorted({compat.sample_path(route) for route in routes.ROUTES}):
        probes += [Probe(method, version + path) for version in VERSIONS for method in METHODS]
    for route in routes.ROUTES:
        probes += [Probe(route.method, version + compat.sample_path(route))
                   for version in LOOSE_VERSIONS]
    return probes


# Non-canonical: dockgate answers 400 and forwards nothing. Listed here, not
# derived from routes.parse_target, so that the test checks the code rather than
# asking it which targets to check.
NONCANONICAL_TARGETS = (
    "//containers/json", "/containers//json", "/containers/../_ping", "/_ping/.",
    "/./_ping", "/v1.41/../containers/json", "/containers/dgtest-x/../../images/json",
    "/containers%2Fjson", "/containers%2fdgtest-x%2frestart", "/%2e%2e/containers/json",
    "/containers/dgtest-x/%2e%2e/%2e%2e/_ping", "/%2F..%2Fcontainers/json",
    "/containers%252Fjson", "/containers/dgtest-x/%252e%252e/%252e%252e/_ping",
    "/_ping%00", "/_ping%",
    "/_ping%zz", "/containers/json%23x", "/v1.41/containers/json#frag", "_ping",
    "*", "http://127.0.0.1/_ping",
    # Encoded space, non-ASCII, "?", "#", "\\" in a parameter whose objects cannot
    # have such names (the daemon refuses to create such containers, images, volumes).
    # (OPTIONS routes any path, so "/%C3%A9" is refused as such; other methods 404.)
    "/%C3%A9", "/containers/a%20b/stop", "/containers/a%3Fb/json", "/images/caf%C3%A9/json",
    "/volumes/a%5Cb",
    # A network name may hold them, but not double-encoded (a second decoding would
    # turn %253F into "?"), nor a control character, nor bytes that are not UTF-8.
    "/networks/a%253Fb", "/networks/a%0Ab", "/networks/a%FFb",
)


ODD_TARGETS = (
    # Prefix look-alikes and case: canonical, no route.
    "/containersXYZ", "/CONTAINERS/json", "/Containers/json", "/v1.41/IMAGES/json",
    "/_pingpong", "/versions", "/eventsfoo", "/infos", "/containers", "/images",
    "/containers/dgtest-x/restartnow", "/containers/dgtest-x/STOP",
    "/containers/dgtest-x/kill/extra", "/containers/a.b-c_d/start", "/containers/a+b/start",
    "/vX/containers/json", "/v/containers/json", "/v1a/_ping",
    "/debug/vars", "/debug/pprof/", "/", "/x", "/%5Fping", "/%76ersion",
    # Percent-encodings decoded once: the same route as the plain form.
    "/%63ontainers/json", "/v1.41/%63ontainers/create", "/containers/dgtest-x/%61rchive",
    "/containers/dgtest-x/%72estart", "/%43ONTAINERS/json", "/containers/%64gtest-x/json",
    # Double encoding: decoded once, a literal "%63" that no route or name matches.
    "/%2563ontainers/json", "/containers/%2561rchive",
    # ";" in the path is data (a {name:.*} route takes it), unlike in the query.
    "/containers/dgtest-x/restart;x",
    # Query strings: never part of the decision.
    "/containers/json?all=1", "/_ping?x=/start", "/images/json?x=/containers",
    "/containers/dgtest-x/kill?signal=SIGKILL", "/containers/json?", "/events?since=0&until=1",
    # Trailing slashes.
    "/containers/json/", "/networks/", "/_ping/", "/version/", "/containers/dgtest-x/",
    # libpod (Podman) paths, granted by linuxserver's LIBPOD_* and (/libpod)? rules.
    "/libpod/_ping", "/v4.0.0/libpod/version", "/libpod/containers/json",
    "/v4.0.0/libpod/containers/dgtest-x/start", "/libpod/containers/dgtest-x/logs",
    "/libpod/pods/dgtest-x/top", "/pods/dgtest-x/logs", "/libpod/pods/json",
    *NONCANONICAL_TARGETS,
)


# Network names the daemon creates and routes (docker-py's own suite uses 'peer dg';
# docker network inspect 'a b' sends these): canonical, forwarded as sent. Not probed
# with OPTIONS: its catch-all {anything} is no network name, so there they are 400.
NETWORK_NAME_TARGETS = (
    "/networks/peer%20dg%2001", "/v1.41/networks/caf%C3%A9", "/networks/a%3Fb",
    "/networks/a%23b/connect", "/networks/a%5Cb/disconnect", "/networks/50%25%20off",
)


def build_corpus() -> list[Probe]:
    """The requests sent to both proxies, in a fixed order."""
    probes = route_probes()
    probes += [Probe(method, target) for target in ODD_TARGETS for method in METHODS]
    probes += [Probe(method, target) for target in NETWORK_NAME_TARGETS
               for method in METHODS if method != "OPTIONS"]
    probes += [Probe(method, "/_ping") for method in ("get", "Get", "head", "post", "PURGE")]
    probes += [Probe(method, "/containers/dgtest-x/restart") for method in ("post", "POst")]
    return probes


@dataclass
class Observed:
    status: int
    forwarded: bool


@dataclass
class Run:
    combination: Combination
    haproxy: list[Observed]
    dockgate: list[Observed]
    dockgate_records: list[dict[str, object]]
    dockgate_log: str


@dataclass
class Counts:
    routable: int = 0
    routable_forwarded: int = 0
    unroutable_answered_404: int = 0
    unroutable_both_denied: int = 0
    noncanonical: int = 0
    noncanonical_haproxy_forwarded: int = 0
    disagreements: list[str] = field(default_factory=list)


class KeepAliveClient:
    """Sends raw request heads over one TCP connection, reconnecting when the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def send(self, probe: Probe, number: int) -> int:
        for attempt in range(2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            head = (f"{probe.method} {probe.target} HTTP/1.1\r\nHost: docker\r\n"
                    f"{PROBE_HEADER}: {number}\r\nContent-Length: 0\r\n\r\n")
            try:
                self.sock.sendall(head.encode("latin-1"))
                response = http.client.HTTPResponse(self.sock, method=probe.method)
                response.begin()
                response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
                continue
            if response.will_close:
                self.close()
            return response.status
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def wait_for_socket(path: Path, timeout: float = 60.0) -> None:
    # Generous: four combinations start Python processes at once, and on a loaded
    # machine one took more than 10 s to listen.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect(str(path))
                except OSError:
                    pass
                else:
                    return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {path}")


@dataclass
class Stack:
    """A fake daemon and a proxy (HAProxy or dockgate) in front of it."""

    port: int
    record: Path
    processes: list[subprocess.Popen[bytes]]
    log: Path

    def records(self) -> list[dict[str, object]]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def proxy_env(combination: Combination, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment both proxies get: the combination over the image's defaults."""
    env = {k: v for k, v in os.environ.items()
           if k not in compat.variables("linuxserver") and not k.startswith("DOCKER")}
    env.update(dict.fromkeys(compat.defaults(combination.variant), "1"))
    env.update(combination.env)
    env.update(extra)
    return env


_PORTS_LOCK = threading.Lock()
_PORTS_USED: set[int] = set()


def distinct_free_port() -> int:
    """A free port no other stack of this run was given (stacks start in parallel)."""
    with _PORTS_LOCK:
        port = free_port()
        while port in _PORTS_USED:
            port = free_port()
        _PORTS_USED.add(port)
        return port


def start_stack(kind: str, combination: Combination, work: Path) -> Stack:
    """Start a fake daemon and, in front of it, HAProxy or dockgate with the combination's env."""
    socket_path = work / f"{kind}-daemon.sock"
    record = work / f"{kind}-records.jsonl"
    log = work / f"{kind}.log"
    port = distinct_free_port()
    processes = []
    with log.open("ab") as out:
        processes.append(subprocess.Popen(
            [sys.executable, str(FAKE_DAEMON), "--socket", str(socket_path),
             "--record", str(record)], stdout=out, stderr=subprocess.STDOUT))
        stack = Stack(port, record, processes, log)
        try:
            wait_for_socket(socket_path)
            if kind == "haproxy":
                env = proxy_env(combination, {
                    "DG_HAPROXY_BIND": f"127.0.0.1:{port}",
                    "DG_HAPROXY_UPSTREAM": str(socket_path),
                    "DG_HAPROXY_LOG_LEVEL": "err"})
                command = [HAPROXY, "-db", "-f", str(HERE / "haproxy" /
                                                     f"{combination.variant}.cfg")]
            else:
                env = proxy_env(combination, {"LOG_LEVEL": "err"})
                command = [sys.executable, "-m", "dockgate", "serve", "--compat",
                           combination.variant, "--listen", f"tcp://127.0.0.1:{port}",
                           "--upstream", f"unix://{socket_path}"]
            processes.append(subprocess.Popen(command, env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
            wait_for_port(port, timeout=60)  # a loaded CI machine starts it slowly
        except BaseException:
            stack.stop()
            raise
    return stack


def is_probe(record: Mapping[str, object]) -> bool:
    """Whether a fake-daemon record is one of the corpus's requests (it carries the header)."""
    headers = record["headers"]
    assert isinstance(headers, list), record
    return any(name.lower() == PROBE_HEADER.lower() for name, _ in headers)


def probe_number(record: Mapping[str, object]) -> int:
    """The probe number a fake-daemon record carries in its headers."""
    headers = record["headers"]
    assert isinstance(headers, list), record
    for name, value in headers:
        if name.lower() == PROBE_HEADER.lower():
            return int(value)
    raise AssertionError(f"record without {PROBE_HEADER}: {record}")


def run_corpus(kind: str, combination: Combination, corpus: list[Probe],
               work: Path) -> tuple[list[Observed], list[dict[str, object]], str]:
    stack = start_stack(kind, combination, work)
    client = KeepAliveClient(stack.port)
    try:
        statuses = [client.send(probe, number) for number, probe in enumerate(corpus)]
    finally:
        client.close()
        stack.stop()
    records = stack.records()
    if kind == "dockgate":
        # serve's start probe (dockgate/probe.py) asks GET /info once, before any client.
        start_probes = [r for r in records if not is_probe(r)]
        assert [record_method_target(r) for r in start_probes] in ([], [("GET", "/info")])
        records = [r for r in records if is_probe(r)]
    forwarded = {probe_number(record) for record in records}
    observed = [Observed(status, number in forwarded) for number, status in enumerate(statuses)]
    return observed, records, stack.log.read_text(errors="replace")


def classify(probe: Probe) -> str:
    """'routable', 'unroutable' (canonical, no Engine API route) or 'noncanonical'.

    Non-canonical comes from the corpus's own lists; a target parse_target refuses
    that they do not list is an error of the corpus, not a pass.
    """
    # Podman's /v4.0.0/ is a loose version to dockerd too.
    if probe.target in NONCANONICAL_TARGETS or probe.target.startswith(
            (*LOOSE_VERSIONS, "/v4.0.0/")):
        return "noncanonical"
    target = routes.parse_target(probe.target)
    return "routable" if routes.classify(probe.method, target) is not None else "unroutable"


def compare(run: Run, corpus: list[Probe]) -> Counts:
    counts = Counts()
    for probe, ha, dg in zip(corpus, run.haproxy, run.dockgate, strict=True):
        kind = classify(probe)
        where = f"{run.combination.label}: {probe.method} {probe.target}"
        problem = None
        if kind == "routable":
            counts.routable += 1
            counts.routable_forwarded += ha.forwarded
            if ha.forwarded != dg.forwarded or (not ha.forwarded and ha.status != dg.status):
                problem = f"HAProxy {ha.status}/{ha.forwarded}, dockgate {dg.status}/{dg.forwarded}"
        elif kind == "unroutable":
            if dg.forwarded:
                problem = f"dockgate forwarded an unroutable target ({dg.status})"
            elif ha.forwarded:
                counts.unroutable_answered_404 += 1
                if dg.status not in (400, 404):
                    problem = f"HAProxy forwarded (daemon: 404), dockgate answered {dg.status}"
            else:
                counts.unroutable_both_denied += 1
        else:
            counts.noncanonical += 1
            counts.noncanonical_haproxy_forwarded += ha.forwarded
            if dg.forwarded or dg.status < 400:
                problem = f"dockgate forwarded a non-canonical target ({dg.status})"
        if (ha.forwarded and ha.status != 200) or (dg.forwarded and dg.status != 200):
            problem = f"forwarded but not answered by the fake daemon: {ha}, {dg}"
        if problem:
            counts.disagreements.append(f"{where}: {problem}")
    return counts


@pytest.fixture(scope="module")
def corpus() -> list[Probe]:
    return build_corpus()


@pytest.fixture(scope="module")
def runs(corpus: list[Probe], tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    """Every combination run once through HAProxy and once through dockgate."""
    # mktemp is not thread-safe on first use: make the directories before the pool.
    works = [tmp_path_factory.mktemp(f"diff{index}") for index in range(len(COMBINATIONS))]

    def run(index: int, combination: Combination) -> Run:
        work = works[index]
        ha, _, _ = run_corpus("haproxy", combination, corpus, work)
        dg, dg_records, log = run_corpus("dockgate", combination, corpus, work)
        return Run(combination, ha, dg, dg_records, log)

    # Combinations are independent (own daemons, ports and proxies): run a few at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(run, range(len(COMBINATIONS)), COMBINATIONS))


def test_corpus_covers_every_route_versioned_and_unversioned(corpus: list[Probe]) -> None:
    """Every Engine API route is probed with its own method, with and without a version."""
    sent = {(probe.method, probe.target) for probe in corpus}
    for route in routes.ROUTES:
        path = compat.sample_path(route)
        assert (route.method, path) in sent
        assert (route.method, "/v1.41" + path) in sent
    kinds = Counter(classify(probe) for probe in corpus)
    assert min(kinds.values()) > 50, kinds


def test_dockgate_forwards_exactly_what_haproxy_forwards(corpus: list[Probe],
                                                         runs: list[Run]) -> None:
    """Zero disagreements: dockgate decides as Tecnativa's HAProxy rules on every combination."""
    for run in runs:
        problems = compare(run, corpus).disagreements
        assert not problems, "\n".join([*problems[:40], "dockgate's log ends with:",
                                        run.dockgate_log[-3000:]])


def test_unroutable_targets_haproxy_forwards_get_404_without_reaching_the_daemon(
        corpus: list[Probe], runs: list[Run]) -> None:
    """HAProxy passes /containersXYZ on to a daemon that 404s; dockgate answers 404 itself."""
    answered = 0
    for run in runs:
        for probe, ha, dg in zip(corpus, run.haproxy, run.dockgate, strict=True):
            if classify(probe) == "unroutable" and ha.forwarded:
                assert not dg.forwarded, (run.combination.label, probe)
                assert dg.status in (400, 404), (run.combination.label, probe, dg)
                answered += 1
    assert answered > 100


def test_non_canonical_targets_never_reach_the_daemon_through_dockgate(
        corpus: list[Probe], runs: list[Run]) -> None:
    """Dot segments and encoded slashes are refused even where HAProxy would forward them."""
    haproxy_forwarded = 0
    for run in runs:
        for probe, ha, dg in zip(corpus, run.haproxy, run.dockgate, strict=True):
            if classify(probe) == "noncanonical":
                assert not dg.forwarded, (run.combination.label, probe)
                haproxy_forwarded += ha.forwarded
    assert haproxy_forwarded > 0, "the corpus should include forms HAProxy lets through"


def test_dockgate_forwards_the_target_unchanged(corpus: list[Probe], runs: list[Run]) -> None:
    """What reaches the daemon is the client's own method and target, once per allowed request."""
    for run in runs:
        numbers = [probe_number(record) for record in run.dockgate_records]
        assert len(numbers) == len(set(numbers))
        for record in run.dockgate_records:
            probe = corpus[probe_number(record)]
            assert record_method_target(record) == (probe.method, probe.target)


def record_method_target(record: Mapping[str, object]) -> tuple[str, str]:
    return str(record["method"]), str(record["target"])


def test_summary_table(corpus: list[Probe], runs: list[Run],
                       capsys: pytest.CaptureFixture[str]) -> None:
    """Prints combination x counts; every disagreement column is zero."""
    header = (f"{'combination':<48} {'routable':>8} {'fwd':>5} {'404 self':>8} "
              f"{'both 403':>8} {'non-canon':>9} {'HA fwd':>6} {'disagree':>8}")
    lines = [f"differential corpus: {len(corpus)} requests per proxy and combination", header]
    total = 0
    for run in runs:
        counts = compare(run, corpus)
        total += len(counts.disagreements)
        lines.append(
            f"{run.combination.label:<48} {counts.routable:>8} {counts.routable_forwarded:>5} "
            f"{counts.unroutable_answered_404:>8} {counts.unroutable_both_denied:>8} "
            f"{counts.noncanonical:>9} {counts.noncanonical_haproxy_forwarded:>6} "
            f"{len(counts.disagreements):>8}")
    lines.append("routable: canonical with an Engine API route, fwd: forwarded by both; "
                 "404 self: HAProxy forwards to a daemon that 404s, dockgate answers 404 "
                 "without forwarding; non-canon: refused by dockgate (400), HA fwd: of those, "
                 "forwarded by HAProxy")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert total == 0
