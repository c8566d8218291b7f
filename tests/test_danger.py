"""Silent danger made loud: lint, serve (start and reload), audit and check classify alike."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import DOCKER_SOCKET, StartDockgate, free_port
from dockgate import compat, danger, policy
from dockgate.policy_decider import Grant

UNCONSTRAINED_CREATE = """\
    policies:
      builder:
        grants:
          - allow: [system.ping, container.create, container.start]
    default: builder
"""


def run_dockgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    access = set(compat.variables("linuxserver")) | {policy.RESTART_VARIABLE,
                                                     policy.INSPECT_VARIABLE}
    clean = {k: v for k, v in os.environ.items()
             if k not in access and not k.startswith(("DOCKGATE_", "DOCKER_"))}
    return subprocess.run([sys.executable, "-m", "dockgate", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize(("url", "is_exposed"), [
    ("tcp://[::]:2375", True), ("tcp://0.0.0.0:2375", True), ("tcp://192.0.2.7:2375", True),
    ("tcp://proxy.example:2375", True), ("tcp://127.0.0.1:2375", False),
    ("tcp://[::1]:2375", False), ("tcp://localhost:2375", False),
    ("unix:///run/dockgate.sock", False), ("tls://0.0.0.0:2376", False),
])
def test_only_plain_tcp_on_a_network_address_counts_as_exposed(url: str,
                                                               is_exposed: bool) -> None:
    """Loopback, unix sockets and TLS are the documented safe forms; everything else is not."""
    assert danger.exposed(url) is is_exposed


def test_a_create_constraint_list_missing_one_root_check_is_still_root() -> None:
    """deny: [privileged] alone still lets a body bind-mount /; the line names what is missing."""
    grant = Grant("p", 1, "f:3", frozenset({"container.create"}),
                  create_deny=frozenset({"privileged"}))
    [(operation, why)] = danger.grant_dangers(grant)
    assert operation == "container.create"
    assert "leaves out capabilities, devices, host-mounts, host-namespaces, security-options" in why
    safe = Grant("p", 1, "f:3", frozenset({"container.create"}),
                 create_deny=danger.ROOT_CREATE_CHECKS)
    assert danger.grant_dangers(safe) == []


def test_lint_flags_exec_create_and_a_policy_without_ping(tmp_path: Path) -> None:
    """exec.create runs anything in a container; a policy without ping breaks the docker CLI."""
    path = write(tmp_path, """\
        policies:
          ops:
            grants:
              - allow: [exec.create]
                containers: {names: [web]}
        default: ops
    """)
    linted = run_dockgate("policy", "lint", path)
    assert linted.returncode == 1
    assert (f"{path}:4: DANGER: policy 'ops' grant 1 allows exec.create of containers with "
            "name web: runs any command as any user, privileged when asked") in linted.stdout
    assert f"{path}:4: policy 'ops' does not allow system.ping" in linted.stdout


def test_audit_of_the_watchtower_preset_describes_its_grants() -> None:
    """audit --policy reports the policy serve would enforce, not the Tecnativa defaults."""
    audited = run_dockgate("audit", "--policy", "preset:watchtower",
                           "--listen", "tcp://127.0.0.1:2375")
    assert audited.returncode == 0
    report = audited.stdout
    assert report.startswith("dockgate audit: what policy:preset:watchtower grants\n")
    assert "policy 'watchtower', for every other client (default):" in report
    assert ("container.create; create denies capabilities, devices, host-mounts, "
            "host-namespaces, privileged, security-options") in report
    assert "image.create, image.delete, image.inspect, image.list" in report
    assert "Risks: no grant is flagged." in report
    assert "tecnativa" not in report
    assert "DANGER" not in report


def test_audit_of_allow_restart_containers_describes_that_env_policy() -> None:
    """ALLOW_RESTART_CONTAINERS=gw: restart of gw plus ping and version, and nothing flagged."""
    report = run_dockgate("audit", "--listen", "unix:///run/dg.sock",
                          env={"ALLOW_RESTART_CONTAINERS": "gw"}).stdout
    assert "grant 2 (ALLOW_RESTART_CONTAINERS): container.restart of containers with name gw" \
        in report
    assert "grant 1 (environment): system.ping, system.version" in report
    assert "unix:///run/dg.sock: not reachable in plain HTTP from other hosts" in report


def test_audit_names_an_exposed_listener_and_what_it_grants() -> None:
    """The Tecnativa default port on every address, with CONTAINERS=1 POST=1: DANGER, root."""
    report = run_dockgate("audit", env={"CONTAINERS": "1", "POST": "1"}).stdout
    listeners = report.split("Listeners:")[1]
    assert listeners.strip().startswith(
        "DANGER: listener tcp://[::]:2375 serves the Docker API in plain HTTP, without "
        "authentication, to every host that can reach this port: it grants "
        "container.archive.write, container.create, exec.create (root on the host")
    assert "Safe forms: a unix:///PATH socket, tcp://127.0.0.1:PORT" in listeners


def test_check_notes_that_an_allowed_create_is_root(tmp_path: Path) -> None:
    """check's ALLOWED verdict for an unconstrained create carries the DANGER note."""
    path = write(tmp_path, UNCONSTRAINED_CREATE)
    checked = run_dockgate("check", "--policy", path, "POST", "/containers/create")
    assert checked.returncode == 0
    assert "DANGER: creates containers with any body: a bind mount of / or privileged mode " \
           "is root on the host" in checked.stdout
    compat_check = run_dockgate("check", "POST", "/containers/create",
                                env={"CONTAINERS": "1", "POST": "1"})
    assert "DANGER: CONTAINERS allows it for any container or body" in compat_check.stdout
    plain = run_dockgate("check", "--policy", path, "GET", "/_ping")
    assert "DANGER" not in plain.stdout


@pytest.mark.daemon
def test_serve_warns_about_an_unconstrained_create_at_start_and_after_reload(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """The operator sees DANGER as a WARNING when the policy loads and when SIGHUP reloads it."""
    path = write(tmp_path, UNCONSTRAINED_CREATE)
    proxy = start_dockgate(args=["--policy", path])
    line = "WARNING dockgate: " + f"{path}:4: DANGER: policy 'builder' grant 1 allows " \
           "container.create"
    assert proxy.log().count(line) == 1
    proxy.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proxy.log().count(line) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.log().count(line) == 2
    assert "reloaded: decisions now by policy:" in proxy.log()


def test_serve_warns_at_start_about_a_plain_tcp_listener_on_a_network_address() -> None:
    """The warning comes before binding (192.0.2.7 is no local address, so serve stops there)."""
    url = f"tcp://192.0.2.7:{free_port()}"
    served = run_dockgate("serve", "--listen", url, "--upstream", f"unix://{DOCKER_SOCKET}",
                          env={"CONTAINERS": "1", "POST": "1"})
    assert served.returncode == 1
    assert (f"WARNING dockgate: listener {url} serves the Docker API in plain HTTP, without "
            "authentication, to every host that can reach this port: it grants "
            "container.archive.write, container.create, exec.create (root on the host or close "
            "to it, for anyone who can connect)") in served.stderr


@pytest.mark.parametrize(("typo", "meant"), [
    ("CONTAINER", "CONTAINERS"), ("ALLOW_RESTART_CONTAINER", "ALLOW_RESTART_CONTAINERS"),
    ("DOCKGATE_POLCY", "DOCKGATE_POLICY"), ("containers", "CONTAINERS"),
])
def test_a_misspelt_variable_gets_a_did_you_mean_warning(typo: str, meant: str) -> None:
    """A typo used to fall back to the Tecnativa defaults without a word."""
    report = run_dockgate("audit", env={typo: "1"}).stdout
    assert (f"WARNING: {typo} is not a variable dockgate reads (did you mean {meant}?); it is "
            "ignored") in report.splitlines()


def test_ordinary_variables_and_correct_names_stay_quiet() -> None:
    """HOME, PATH, HOSTNAME and the real names give no warning."""
    report = run_dockgate("audit", env={"HOSTNAME": "x", "CONTAINERS": "1", "TZ": "UTC"}).stdout
    assert "WARNING" not in report


def test_tecnativa_variables_beside_a_policy_are_named_as_ignored(tmp_path: Path) -> None:
    """CONTAINERS=1 next to ALLOW_RESTART_CONTAINERS or --policy grants nothing: say so."""
    report = run_dockgate("audit", env={"ALLOW_RESTART_CONTAINERS": "gw", "CONTAINERS": "1",
                                        "POST": "1"}).stdout
    assert ("WARNING: POST, CONTAINERS are set but ignored: ALLOW_RESTART_CONTAINERS decides"
            in report)
    path = write(tmp_path, UNCONSTRAINED_CREATE)
    report = run_dockgate("audit", "--policy", path, env={"EXEC": "1"}).stdout
    assert f"WARNING: EXEC is set but ignored: --policy {path} decides" in report


LISTENER_POLICY = """\
    policies:
      p: {grants: [{allow: [system.ping]}]}
    listeners:
      "%s": p
"""


def test_a_listeners_key_that_names_no_listener_stops_serve(tmp_path: Path) -> None:
    """A key copied in another spelling used to deny everything without a word."""
    path = write(tmp_path, LISTENER_POLICY % "tcp://127.0.0.1:9")
    url = f"tcp://127.0.0.1:{free_port()}"
    served = run_dockgate("serve", "--listen", url, "--policy", path)
    assert served.returncode == 2
    assert served.stderr.strip().endswith(
        f"{path}: listeners: tcp://127.0.0.1:9 matches no listener; dockgate listens on "
        f"{url} (--listen / DOCKGATE_LISTEN): write the key as one of these")


@pytest.mark.daemon
def test_a_listeners_key_in_another_spelling_of_the_same_url_applies(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """Keys are compared normalised: case, IPv6 forms and the log's bracketed form match."""
    port = free_port()
    path = write(tmp_path, LISTENER_POLICY % f"TCP://127.0.0.1:{port}")
    proxy = start_dockgate(port=port, args=["--policy", path])
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request("GET", "/_ping")
    assert connection.getresponse().status == 200
    connection.close()
    assert policy.normalize_listener("tcp://[0:0::0]:2375") == "tcp://[::]:2375"


def test_bind_errors_name_the_listener_and_the_fix(tmp_path: Path) -> None:
    """errno 98 with the address; a regular file at the unix path is named as such."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        served = run_dockgate("serve", "--listen", f"tcp://127.0.0.1:{port}",
                              "--upstream", f"unix://{DOCKER_SOCKET}")
    assert served.returncode == 1
    assert (f"cannot listen: tcp://127.0.0.1:{port}: port {port} is already in use by "
            "another process (EADDRINUSE); stop it, or choose another port") in served.stderr
    regular = tmp_path / "dockgate.sock"
    regular.write_text("")
    served = run_dockgate("serve", "--listen", f"unix://{regular}",
                          "--upstream", f"unix://{DOCKER_SOCKET}")
    assert served.returncode == 1
    assert (f"cannot listen: unix://{regular}: {regular} is a regular file, not a socket: "
            "dockgate replaces only stale sockets; remove it or choose another path"
            ) in served.stderr
