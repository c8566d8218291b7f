"""The docker CLI, through dockgate in Tecnativa mode, in front of the real daemon.

What users see: a denied command prints dockgate's one-line reason (not HAProxy's HTML
page), and ``dockgate audit`` says in plain words what the variables grant.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import docker
import pytest

from conftest import StartDockgate, unique_name
from dockgate import compat

DOCKER = "/usr/local/bin/docker"

pytestmark = pytest.mark.daemon


def docker_cli(docker_host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = docker_host
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def audit(env: Mapping[str, str]) -> str:
    access = set(compat.variables("linuxserver"))
    clean = {k: v for k, v in os.environ.items()
             if k not in access and not k.startswith("DOCKGATE_")}
    result = subprocess.run([sys.executable, "-m", "dockgate", "audit"], env={**clean, **env},
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def granted_operations(report: str) -> set[str]:
    """The operation names of the report's route lines ("      POST  /path  operation")."""
    return {line.split()[-1] for line in report.splitlines()
            if line.startswith("      ") and line.split()[0].isupper()}


def test_docker_run_denied_prints_which_variables_to_set(start_dockgate: StartDockgate,
                                                          busybox_image: str) -> None:
    """With Tecnativa's defaults, `docker run` fails with a line naming POST and CONTAINERS."""
    proxy = start_dockgate()
    result = docker_cli(proxy.docker_host, "run", "--rm", "--network", "none", "--name",
                        unique_name("compat-run"), busybox_image, "true")
    assert result.returncode != 0
    assert ("dockgate: POST /containers/create denied — POST is off: only GET and HEAD are "
            "allowed (set POST=1 and CONTAINERS=1 to allow container.create; CONTAINERS=1 with "
            "POST=1 also allows container.archive.write, container.create, exec.create for any "
            "container or body: root on the host or close to it; narrowest: a policy file "
            "(--policy FILE) with a grant allow: [container.create] with create: deny: [all])"
            ) in result.stderr
    assert "<html>" not in result.stderr


def test_docker_images_denied_prints_the_missing_section(start_dockgate: StartDockgate) -> None:
    """`docker images` with IMAGES off says IMAGES is off and how to turn it on."""
    proxy = start_dockgate(env={"CONTAINERS": "1"})
    result = docker_cli(proxy.docker_host, "images")
    assert result.returncode != 0
    assert ("dockgate: GET /images/json denied — IMAGES is off (set IMAGES=1 to allow "
            "image.list;") in result.stderr


def test_docker_restart_denied_points_to_the_one_container_setting(
        start_dockgate: StartDockgate) -> None:
    """The hint says ALLOW_RESTARTS restarts everything and names ALLOW_RESTART_CONTAINERS."""
    proxy = start_dockgate(env={"POST": "1"})
    result = docker_cli(proxy.docker_host, "restart", "gw")
    assert result.returncode != 0
    assert "ALLOW_RESTARTS=1 lets every client restart, stop or kill ANY container" in \
        result.stderr
    assert "narrowest: ALLOW_RESTART_CONTAINERS=NAME restarts only the container NAME" in \
        result.stderr


def test_restart_only_setting_restarts_but_cannot_list(start_dockgate: StartDockgate,
                                                        busybox_image: str,
                                                        docker_client: docker.DockerClient
                                                        ) -> None:
    """POST=1 ALLOW_RESTARTS=1: `docker restart` works, `docker ps` is denied with a reason."""
    name = unique_name("compat-restart")
    container = docker_client.containers.run(busybox_image, ["sleep", "300"], name=name,
                                             network_mode="none", detach=True)
    try:
        proxy = start_dockgate(env={"POST": "1", "ALLOW_RESTARTS": "1"})
        before = docker_client.api.inspect_container(name)["State"]["StartedAt"]
        restarted = docker_cli(proxy.docker_host, "restart", "-t", "0", name)
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.strip() == name
        assert docker_client.api.inspect_container(name)["State"]["StartedAt"] != before
        listed = docker_cli(proxy.docker_host, "ps")
        assert "dockgate: GET /containers/json denied — CONTAINERS is off" in listed.stderr
    finally:
        container.remove(force=True)


def test_truth_value_warning_is_logged_at_startup(start_dockgate: StartDockgate) -> None:
    """CONTAINERS=true is off, as in Tecnativa; dockgate says so in its log."""
    proxy = start_dockgate(env={"CONTAINERS": "true"})
    result = docker_cli(proxy.docker_host, "ps")
    assert "CONTAINERS is off" in result.stderr
    assert "CONTAINERS='true' is read as OFF" in proxy.log()


def test_serve_logs_what_the_variables_grant_at_startup(start_dockgate: StartDockgate) -> None:
    """The operator sees the audit in the startup log, dangerous grants included."""
    proxy = start_dockgate(env={"CONTAINERS": "1", "POST": "1"})
    assert docker_cli(proxy.docker_host, "version").returncode == 0
    log = proxy.log()
    assert "dockgate audit: what these tecnativa variables grant" in log
    assert "DANGER: can create containers with host mounts: equivalent to root on the host" in log


def test_audit_names_the_host_root_risk_of_containers_and_post() -> None:
    """CONTAINERS=1 POST=1 is root on the host; the audit says it first."""
    report = audit({"CONTAINERS": "1", "POST": "1"})
    risks = report.split("Risks:")[1]
    assert risks.strip().startswith("DANGER: can create containers with host mounts: "
                                    "equivalent to root on the host")


def test_audit_of_restart_only_setting_lists_restart_stop_kill_and_nothing_else() -> None:
    """POST=1 ALLOW_RESTARTS=1: restart, stop, kill of ANY container, plus the defaults."""
    report = audit({"POST": "1", "ALLOW_RESTARTS": "1"})
    assert "ALLOW_RESTARTS: restart, stop or kill ANY container (kill takes any signal)" in report
    assert granted_operations(report) == {"container.restart", "container.stop",
                                          "container.kill", "system.ping", "system.version",
                                          "system.events"}
    assert "DANGER: can kill ANY container, with any signal (ALLOW_RESTARTS)" in report
