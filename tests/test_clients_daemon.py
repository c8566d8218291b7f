"""Two clients on one proxy get different policies, against the real daemon.

One ``dockgate serve`` listens on TCP, on a unix socket and on TLS. The policy
binds the restart grant to source address 127.0.0.2, to unix peer uid 0 and to
the client certificate CN ``relay`` (from a test CA made with the openssl CLI);
everyone else gets the default policy, which only pings. Each pair of clients
differs in exactly one identity.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import DockgateProcess, StartDockgate, free_port, unique_name, wait_for_port

pytestmark = pytest.mark.daemon

NOBODY = 65534


@dataclass
class Setup:
    proxy: DockgateProcess
    gw: Any
    socket_path: str
    tls_port: int
    certs: Path


def policy_text(gw: str, socket_url: str) -> str:
    return f"""\
policies:
  restarter:
    grants:
      - allow: [system.ping, system.version]
      - allow: [container.restart]
        containers: {{names: [{gw}]}}
  pinger:
    grants:
      - allow: [system.ping]
clients:
  - {{address: 127.0.0.2, policy: restarter}}
  - {{uid: 0, listener: "{socket_url}", policy: restarter}}
  - {{cert_cn: relay, policy: restarter}}
default: pinger
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, and client certificates CN=relay/other."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=dockgate-test-ca", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n"
                                       "basicConstraints=CA:FALSE\n")
    (folder / "client.ext").write_text("basicConstraints=CA:FALSE\n")
    for name, ext in (("server", "server.ext"), ("relay", "client.ext"),
                      ("other", "client.ext")):
        openssl("req", *key, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", f"{name}.pem",
                cwd=folder)


@pytest.fixture
def setup(docker_client: docker.DockerClient, busybox_image: str,
          start_dockgate: StartDockgate, tmp_path: Path) -> Iterator[Setup]:
    """The proxy with three listeners, and the container only 'restarter' clients may restart."""
    gw = docker_client.containers.run(busybox_image, ["sleep", "600"], detach=True,
                                      name=unique_name("pol-cli-gw"), network_mode="none")
    # The socket's directory must be reachable by 'nobody' (pytest's tmp_path is not).
    folder = Path(tempfile.mkdtemp(prefix="dgtest-pol-"))
    folder.chmod(0o755)
    socket_path = str(folder / "dockgate.sock")
    make_pki(tmp_path)
    tls_port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(gw.name, f"unix://{socket_path}"))
    proxy = start_dockgate(args=[
        "--policy", str(policy), "--listen", f"unix://{socket_path}",
        "--listen", f"tls://127.0.0.1:{tls_port}", "--socket-mode", "666",
        "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server-key.pem"),
        "--tls-ca", str(tmp_path / "ca.pem")])
    wait_for_port(tls_port)
    yield Setup(proxy, gw, socket_path, tls_port, tmp_path)
    with contextlib.suppress(docker.errors.NotFound):  # a concurrent run's cleanup may win
        gw.remove(force=True)
    shutil.rmtree(folder)


def exchange(sock: socket.socket, method: str, target: str) -> int:
    """Send one request on a connected socket; the response status."""
    sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n"
                 "Connection: close\r\n\r\n".encode())
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    response.read()
    return response.status


def over_tcp(setup: Setup, source: str, method: str, target: str) -> int:
    with socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=30,
                                  source_address=(source, 0)) as sock:
        return exchange(sock, method, target)


def over_unix(setup: Setup, method: str, target: str, uid: int | None = None) -> int:
    """A request on the unix listener, from a forked child that became ``uid`` first."""
    if uid is None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(setup.socket_path)
            return exchange(sock, method, target)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(30)
                sock.connect(setup.socket_path)
                os.write(write_end, str(exchange(sock, method, target)).encode())
        except BaseException:  # the child must never return into pytest's own code
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        status = result.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    return int(status)


def over_tls(setup: Setup, cert: str, method: str, target: str) -> int:
    context = ssl.create_default_context(cafile=str(setup.certs / "ca.pem"))
    context.load_cert_chain(setup.certs / f"{cert}.pem", setup.certs / f"{cert}-key.pem")
    with socket.create_connection(("127.0.0.1", setup.tls_port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        return exchange(sock, method, target)


def restarted(client: docker.DockerClient, container: Any, before: str) -> bool:
    return str(client.api.inspect_container(container.id)["State"]["StartedAt"]) != before


def started(client: docker.DockerClient, container: Any) -> str:
    return str(client.api.inspect_container(container.id)["State"]["StartedAt"])


def test_two_source_addresses_on_one_listener_get_different_policies(
        setup: Setup, docker_client: docker.DockerClient) -> None:
    """127.0.0.2 may restart gw; 127.0.0.1 (the default policy) may only ping."""
    restart = f"/containers/{setup.gw.name}/restart?t=0"
    before = started(docker_client, setup.gw)
    assert over_tcp(setup, "127.0.0.1", "GET", "/_ping") == 200
    assert over_tcp(setup, "127.0.0.1", "POST", restart) == 403
    assert not restarted(docker_client, setup.gw, before)
    assert over_tcp(setup, "127.0.0.2", "POST", restart) == 204
    assert restarted(docker_client, setup.gw, before)


def test_two_unix_socket_uids_get_different_policies(
        setup: Setup, docker_client: docker.DockerClient) -> None:
    """uid 0 may restart gw through the socket; nobody, on the same socket, may only ping."""
    restart = f"/containers/{setup.gw.name}/restart?t=0"
    before = started(docker_client, setup.gw)
    assert over_unix(setup, "GET", "/_ping", uid=NOBODY) == 200
    assert over_unix(setup, "POST", restart, uid=NOBODY) == 403
    assert not restarted(docker_client, setup.gw, before)
    assert over_unix(setup, "POST", restart) == 204
    assert restarted(docker_client, setup.gw, before)


def test_two_client_certificates_get_different_policies(
        setup: Setup, docker_client: docker.DockerClient) -> None:
    """CN=relay may restart gw over TLS; CN=other, signed by the same CA, may only ping."""
    restart = f"/containers/{setup.gw.name}/restart?t=0"
    before = started(docker_client, setup.gw)
    assert over_tls(setup, "other", "GET", "/_ping") == 200
    assert over_tls(setup, "other", "POST", restart) == 403
    assert not restarted(docker_client, setup.gw, before)
    assert over_tls(setup, "relay", "POST", restart) == 204
    assert restarted(docker_client, setup.gw, before)
    # The audit line is written once the answer has gone out (batched per loop turn):
    # the client can read its 204 before the line reaches the log.
    deadline = time.monotonic() + 5
    while True:
        audit = [json.loads(line) for line in setup.proxy.log().splitlines()
                 if line.startswith("{") and '"event":"request"' in line]
        found = any(r["status"] == 204 and "cn=relay" in r["client"] for r in audit)
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found


def test_the_docker_cli_restarts_with_its_own_tls_settings(
        setup: Setup, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    """DOCKER_TLS_VERIFY + DOCKER_CERT_PATH (ca/cert/key.pem) work as against a TLS daemon."""
    cert_path = tmp_path / "docker-certs"
    cert_path.mkdir()
    for source, target in (("ca.pem", "ca.pem"), ("relay.pem", "cert.pem"),
                           ("relay-key.pem", "key.pem")):
        shutil.copy(setup.certs / source, cert_path / target)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "DOCKER_HOST": f"tcp://127.0.0.1:{setup.tls_port}", "DOCKER_TLS_VERIFY": "1",
           "DOCKER_CERT_PATH": str(cert_path)}
    before = started(docker_client, setup.gw)
    done = subprocess.run(["docker", "restart", "-t", "0", setup.gw.name], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, setup.gw.name), done.stderr
    assert restarted(docker_client, setup.gw, before)
    denied = subprocess.run(["docker", "ps"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert denied.returncode != 0
    assert "dockgate: GET /containers/json denied" in denied.stderr
