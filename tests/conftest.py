"""Shared fixtures: the real daemon, locally built test images, and dockgate processes.

Tests talk to the real dockerd on /var/run/docker.sock (started by scripts/test or
.ci/run). Nothing is pulled: the busybox test image is imported from Debian's
busybox-static. Every container a test creates is named with the ``dgtest-``
prefix, runs with ``--network none`` and is removed at the end of the session.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import docker
import hypothesis
import pytest

from fakedaemon import FakeDaemon

# Hypothesis' per-example deadline (200 ms) is a timing used as pass/fail: on a loaded
# machine it fails correct code (and its failure report then trips -W error).
hypothesis.settings.register_profile("dockgate", deadline=None)
hypothesis.settings.load_profile("dockgate")

DOCKER_SOCKET = os.environ.get("DOCKGATE_TEST_SOCKET", "/var/run/docker.sock")
BUSYBOX_IMAGE = "dockgate-test/busybox:latest"
DOCKGATE_IMAGE = "dockgate-test/dockgate:image-test"
ROOT = Path(__file__).resolve().parent.parent
NAME_PREFIX = "dgtest-"
# Every Tecnativa section on: the proxy forwards every Engine API route, for the
# parity and load tests that compare it with direct access.
ALL_ON = dict.fromkeys(["CONTAINERS", "IMAGES", "EXEC", "BUILD", "POST", "INFO", "NETWORKS",
                        "VOLUMES", "EVENTS", "VERSION", "PING", "SYSTEM", "DISTRIBUTION",
                        "AUTH", "SESSION"], "1")


@functools.cache
def daemon_is_podman() -> bool:
    """True when DOCKGATE_TEST_SOCKET is Podman's Docker-compatible service, not dockerd.

    The parity and scoping suites run against both (scripts/test); where Podman 4.3
    answers differently from dockerd whatever the proxy does, a test says so by
    name, and docs/podman.md lists each difference.
    """
    client = docker.APIClient(base_url=f"unix://{DOCKER_SOCKET}", timeout=30)
    try:
        components = client.version().get("Components") or []
    finally:
        client.close()
    return any(c.get("Name") == "Podman Engine" for c in components)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Names handed out by this test session: the cleanup removes these only, so that
# concurrent sessions on the same daemon do not remove each other's containers.
SESSION_NAMES: set[str] = set()


def unique_name(stem: str) -> str:
    """A container name unique to this run, with the prefix the cleanup looks for."""
    name = f"{NAME_PREFIX}{stem}-{uuid.uuid4().hex[:8]}"
    SESSION_NAMES.add(name)
    return name


def discard(container: docker.models.containers.Container) -> None:
    """Remove a test container that may already be gone (--rm, or removal under way)."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        if error.status_code != 409:  # "removal ... is already in progress"
            raise


def tar_of(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar holding ``files`` (name -> content), for archive and build bodies."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def build_busybox_image(client: docker.DockerClient) -> None:
    """Import a one-binary busybox rootfs as BUSYBOX_IMAGE (no registry needed)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise RuntimeError("busybox-static is not installed: apt-get install busybox-static")
    with tempfile.TemporaryDirectory() as root:
        rootfs = Path(root) / "rootfs"
        for sub in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            (rootfs / sub).mkdir(parents=True)
        shutil.copy(busybox, rootfs / "bin" / "busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                               "nobody:x:65534:65534::/:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                             check=True).stdout
        client.api.import_image_from_data(tar, repository="dockgate-test/busybox", tag="latest",
                                          changes=['CMD ["/bin/sh"]', "ENV PATH=/bin"])


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """docker-py straight to the daemon's socket (the 'direct access' side of every comparison)."""
    client = docker.DockerClient(base_url=f"unix://{DOCKER_SOCKET}", timeout=120)
    try:
        client.ping()
    except Exception as error:
        pytest.fail(f"no Docker daemon on {DOCKER_SOCKET} ({error}); "
                    "start it with scripts/test or: dockerd --bridge=none --iptables=false "
                    "--ip6tables=false &")
    yield client
    for container in client.containers.list(all=True, filters={"name": NAME_PREFIX}):
        if container.name not in SESSION_NAMES:
            continue  # another test session's, maybe still in use
        # It may be gone meanwhile (--rm).
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """The busybox test image, imported once per machine."""
    try:
        docker_client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        build_busybox_image(docker_client)
    return BUSYBOX_IMAGE


def other_python() -> str:
    """A host Python of another minor version than the base image's 3.11, when there is one.

    The wheelhouse must fit the base image's Python whatever the host runs; without a
    second interpreter on the machine the build uses the test's own.
    """
    names = [shutil.which(f"python3.{minor}") for minor in (13, 12)]
    names += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[23]*/bin/python")))
    for name in names:
        # A pyenv shim exists but may refuse to run: try it.
        if name and subprocess.run([name, "-m", "pip", "--version"], capture_output=True,
                                   check=False).returncode == 0:
            return name
    return sys.executable


BUILD_LOG: list[str] = []



@pytest.fixture(scope="session")
def dockgate_image(docker_client: docker.DockerClient) -> str:
    """The dockgate image, built once per session by scripts/build-image on the test daemon.

    Shared by the image and the Swarm tests; the debootstrap base image is reused when
    the daemon has it. A test using this needs a timeout of several minutes.
    """
    env = {**os.environ, "DOCKGATE_IMAGE": DOCKGATE_IMAGE, "PYTHON": other_python(),
           "DOCKER_HOST": f"unix://{DOCKER_SOCKET}"}
    result = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True,
                            text=True, timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    BUILD_LOG.append(result.stdout)
    return DOCKGATE_IMAGE


@dataclass
class DockgateProcess:
    """A `dockgate serve` subprocess listening on a loopback TCP port."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def docker_host(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


StartDockgate = Callable[..., DockgateProcess]


@pytest.fixture
def start_dockgate(tmp_path: Path) -> Iterator[StartDockgate]:
    """Factory: start dockgate with the given env and extra args; stopped after the test.

    ``start_dockgate(env={"CONTAINERS": "1"}, args=["--policy", path])`` returns a
    DockgateProcess whose ``docker_host`` is ready for DOCKER_HOST. By default it
    listens on a free 127.0.0.1 port and forwards to the real daemon.
    """
    started: list[DockgateProcess] = []

    def start(env: Mapping[str, str] | None = None, args: list[str] | None = None,
              port: int | None = None, upstream: str | None = None,
              wait: bool = True) -> DockgateProcess:
        port = port or free_port()
        log_path = tmp_path / f"dockgate-{port}.log"
        # DOCKGATE_TEST_SOCKET is the tests' setting, not dockgate's (which would warn).
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DOCKER_") and k != "DOCKGATE_TEST_SOCKET"}
        full_env.update(env or {})
        command = [sys.executable, "-m", "dockgate", "serve",
                   "--listen", f"tcp://127.0.0.1:{port}",
                   "--upstream", upstream or f"unix://{DOCKER_SOCKET}", *(args or [])]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=full_env, stdout=log,
                                       stderr=subprocess.STDOUT)
        proxy = DockgateProcess(port, process, log_path)
        started.append(proxy)
        if wait:
            try:
                wait_for_port(port)
            except TimeoutError:
                proxy.stop()
                raise RuntimeError(f"dockgate did not start:\n{proxy.log()}") from None
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(sockdir: Path) -> Iterator[FakeDaemon]:
    """A fake daemon on a unix socket in ``sockdir``, answering 200 JSON unless told otherwise."""
    with FakeDaemon(sockdir / "fake.sock") as daemon:
        yield daemon


class SecondDaemon:
    """A private dockerd (no networking of its own) under a short /tmp directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"),
             "-H", f"unix://{self.socket}", "--bridge=none", "--iptables=false",
             "--ip6tables=false"], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = subprocess.run(["curl", "-s", "--unix-socket", str(self.socket),
                                     "http://d/_ping"], capture_output=True, check=False)
            if result.stdout == b"OK":
                return
            time.sleep(0.2)
        raise RuntimeError("the second dockerd did not come up: "
                           + (self.root / "dockerd.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def second_daemon() -> Iterator[SecondDaemon]:
    """A second dockerd, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dg-", dir="/tmp"))
    daemon = SecondDaemon(root)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        subprocess.run(["umount", "-R", str(root / "exec")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
