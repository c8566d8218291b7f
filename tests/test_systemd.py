"""Socket activation and readiness, the way systemd does them, without systemd.

The test plays the service manager: it binds the listening sockets itself, puts them
on descriptors 3, 4, ... with LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES set for the exec'd
dockgate, and listens on a NOTIFY_SOCKET datagram socket for READY=1 and STOPPING=1.
Requests go to the real daemon behind it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conftest import DOCKER_SOCKET, free_port
from dockgate import systemd
from dockgate.errors import ConfigError

# Runs as the service manager's child: moves the given descriptors to 3, 4, ..., sets
# LISTEN_PID to its own pid (which exec keeps) and execs the command after "--".
LAUNCHER = """
import fcntl, os, sys
split = sys.argv.index("--")
given = [int(fd) for fd in sys.argv[1:split]]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
for offset, fd in enumerate(moved):
    os.dup2(fd, 3 + offset)
for fd in set(given + moved) - set(range(3, 3 + len(given))):
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[split + 1], sys.argv[split + 1:])
"""


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


def tcp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(16)
    return sock


class Manager:
    """The service manager's side: the notify socket and the started dockgate."""

    def __init__(self, sockdir: Path) -> None:
        self.notify_path = sockdir / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(20)
        self.log = sockdir / "dockgate.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, sockets: Sequence[tuple[str, socket.socket]], *args: str,
              listen_pid: str | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DOCKER_", "LISTEN_", "NOTIFY_"))}
        env.update(LISTEN_FDS=str(len(sockets)), NOTIFY_SOCKET=str(self.notify_path),
                   LISTEN_FDNAMES=":".join(name for name, _ in sockets), LOG_LEVEL="info")
        fds = [str(sock.fileno()) for _, sock in sockets]
        command = [sys.executable, "-m", "dockgate", "serve",
                   "--upstream", f"unix://{DOCKER_SOCKET}", *args]
        if listen_pid is not None:  # a value meant for another process: exec directly
            env["LISTEN_PID"] = listen_pid
            launch = command
        else:
            launch = [sys.executable, "-c", LAUNCHER, *fds, "--", *command]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(launch, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            pass_fds=[sock.fileno() for _, sock in sockets])
        return self.process

    def message(self) -> dict[str, str]:
        """The next notification, as KEY=VALUE pairs (socket.timeout if none arrives)."""
        data = self.notify.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def manager(sockdir: Path) -> Iterator[Manager]:
    manager = Manager(sockdir)
    yield manager
    if manager.process is not None and manager.process.poll() is None:
        manager.process.kill()
        manager.process.wait()
    manager.notify.close()


def ping_unix(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        return exchange(sock, b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")


def request_tcp(address: tuple[str, int], head: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        return exchange(sock, head)


def exchange(sock: socket.socket, head: bytes) -> bytes:
    sock.sendall(head)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.daemon
def test_inherited_unix_and_tcp_sockets_are_served_and_readiness_is_notified(
        manager: Manager, sockdir: Path) -> None:
    """fd:// takes every socket systemd passed, READY=1 follows, STOPPING=1 on SIGTERM."""
    path = sockdir / "api.sock"
    with unix_listener(path) as unix, tcp_listener() as tcp:
        tcp_url = f"tcp://127.0.0.1:{tcp.getsockname()[1]}"
        # Each socket is a listener named by its address, as if dockgate had bound it:
        # a policy file's listeners: keys select by that name.
        policy = sockdir / "policy.yaml"
        policy.write_text(f"""
policies:
  pinger: {{grants: [{{allow: [system.ping]}}]}}
  versions: {{grants: [{{allow: [system.version]}}]}}
listeners:
  "unix://{path}": pinger
  "{tcp_url}": versions
""")
        process = manager.start([("api", unix), ("api-tcp", tcp)], "--listen", "fd://",
                                "--policy", str(policy))
        ready = manager.message()
        assert ready == {"READY": "1", "STATUS": f"listening on unix://{path}, {tcp_url}"}
        assert ping_unix(path).endswith(b"\r\n\r\nOK")
        address = tcp.getsockname()
        assert request_tcp(address, b"GET /version HTTP/1.0\r\n\r\n").startswith(
            b"HTTP/1.1 200 ")
        assert request_tcp(address, b"GET /_ping HTTP/1.0\r\n\r\n").startswith(
            b"HTTP/1.1 403 ")
        assert manager.stop() == 0
        assert manager.message() == {"STOPPING": "1"}
        # The socket file is the socket unit's: it outlives the service.
        assert path.is_socket()
    assert process.returncode == 0


@pytest.mark.daemon
def test_a_restarted_service_serves_the_same_socket_with_two_workers(
        manager: Manager, sockdir: Path) -> None:
    """The socket unit keeps the socket across restarts; pre-forked workers share it."""
    path = sockdir / "api.sock"
    with unix_listener(path) as unix:
        manager.start([("dockgate", unix)], "--listen", "fd://dockgate")
        assert manager.message()["READY"] == "1"
        assert manager.stop() == 0
        assert manager.message() == {"STOPPING": "1"}
        manager.start([("dockgate", unix)], "--listen", "fd://dockgate", "--workers", "2")
        assert manager.message() == {"READY": "1"}
        assert ping_unix(path).endswith(b"OK")
        assert manager.stop() == 0
        assert manager.message() == {"STOPPING": "1"}


def test_a_socket_no_listener_takes_is_refused(manager: Manager, sockdir: Path) -> None:
    """An unclaimed socket would leave its clients waiting forever: refuse to start."""
    with unix_listener(sockdir / "a.sock") as first, unix_listener(sockdir / "b.sock") as other:
        process = manager.start([("api", first), ("admin", other)], "--listen", "fd://api")
        assert process.wait(timeout=20) == 2
    assert (f"dockgate: systemd passed sockets no listener takes: admin "
            f"(unix://{sockdir}/b.sock); add --listen fd:// (every inherited socket) or "
            "fd://NAME") in manager.output()


def test_an_fd_listener_without_socket_activation_says_how_to_get_one(
        manager: Manager, sockdir: Path) -> None:
    """LISTEN_PID of another process (a parent's leftovers) means nothing was passed to us."""
    with unix_listener(sockdir / "a.sock") as sock:
        process = manager.start([("api", sock)], "--listen", "fd://api", listen_pid="1")
        assert process.wait(timeout=20) == 2
    assert ("dockgate: listener 'fd://api': no inherited socket to take (unclaimed names: "
            "none); fd:// listeners need socket activation: start dockgate from a systemd "
            ".socket unit (deploy/systemd/)") in manager.output()


def test_an_inherited_socket_that_does_not_listen_is_refused(
        manager: Manager, sockdir: Path) -> None:
    """A datagram socket (ListenDatagram=) cannot carry HTTP: say which directive to use."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sockdir / "dgram.sock"))
        process = manager.start([("api", sock)], "--listen", "fd://")
        assert process.wait(timeout=20) == 2
    assert ("dockgate: inherited descriptor 3 (api) is not a listening TCP or unix stream "
            "socket with a path; use ListenStream=PORT, ADDRESS:PORT or /PATH in the socket "
            "unit") in manager.output()


@pytest.mark.parametrize(("env", "message"), [
    ({"LISTEN_PID": "x", "LISTEN_FDS": "1"},
     "LISTEN_PID='x' and LISTEN_FDS='1' must be numbers"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"}, "LISTEN_FDS=-1 must not be negative"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"},
     "LISTEN_FDNAMES names 1 descriptors but LISTEN_FDS=2"),
])
def test_values_systemd_never_sets_are_errors(env: dict[str, str], message: str) -> None:
    """Malformed LISTEN_* variables are refused before any descriptor is touched."""
    values = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    with pytest.raises(ConfigError, match=message):
        systemd.Inherited.from_env(values, os.getpid())
    assert values == {}  # removed, so that no child process takes them for its own


def test_no_activation_variables_mean_no_inherited_sockets() -> None:
    """Outside systemd there is nothing to take, and an fd:// listener says so."""
    inherited = systemd.Inherited.from_env({}, os.getpid())
    inherited.check_all_claimed()
    with pytest.raises(ConfigError, match="no inherited socket to take"):
        inherited.claim("fd://")


def test_notify_reaches_an_abstract_socket_and_is_a_no_op_without_one() -> None:
    """'@name' is the abstract namespace; no NOTIFY_SOCKET means no service manager."""
    name = f"dockgate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert receiver.recv(64) == b"READY=1"
    assert not systemd.notify("READY=1", {})


def test_a_notify_socket_that_cannot_be_reached_is_logged_not_raised(
        sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The proxy serves whether or not systemd hears it; the failure is one warning."""
    missing = sockdir / "gone"
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(missing)})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})
    assert [record.getMessage() for record in caplog.records] == [
        f"cannot notify the service manager at NOTIFY_SOCKET='{missing}': "
        "[Errno 2] No such file or directory",
        "NOTIFY_SOCKET='vsock:2:1234' is not a unix socket path; not notifying"]
