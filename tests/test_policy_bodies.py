"""Container-create body inspection reads JSON the way dockerd (Go encoding/json) does.

Each row is a body that asks for host access in a spelling a naive check would
miss, or a harmless body that must still pass; anything dockgate cannot judge
must be refused rather than waved through.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket

import docker
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DOCKER_SOCKET, unique_name
from dockgate import bodies

ALL = frozenset(bodies.CHECKS)
CLEAN = b'{"Image": "busybox", "User": "1000:1000", "HostConfig": {"NetworkMode": "none"}}'


@pytest.mark.parametrize(("body", "problem"), [
    (b'{"HostConfig": {"Privileged": true}}', "privileged mode"),
    (b'{"hostconfig": {"privileged": true}}', "privileged mode"),
    (b'{"HOSTCONFIG": {"PrIvIlEgEd": true}}', "privileged mode"),
    (b'{"Privileged": true}', "privileged mode"),
    (b'{"HostConfig": {"Privileged": true, "privileged": null}}', "privileged mode"),
    (b'{"HostConfig": {"Privileged": false, "privileged": true}}', "privileged mode"),
    (b'{"HostConfig": {"\\u0050rivileged": true}}', "privileged mode"),
    (b'{"HostConfig": {"Privileged": true}, "HostConfig": {"Memory": 1}}', "privileged mode"),
    (b'{"HostConfig": {"Privileged": true}, "hostconfig": {"privileged": null}}',
     "privileged mode"),
    (b'{"HostConfig": {"MaskedPaths": [], "ReadonlyPaths": []}}', "explicit /proc path"),
    ('{"HostConfig": {"Privileged": true}}'.replace("s", "\u017f").encode(), "privileged mode"),
    # Go folds no ligature onto ASCII: the daemon skips "HostConﬁg", so it must not
    # override the HostConfig dockerd reads (Python's casefold() would fold it).
    ('{"HostConfig": {"Privileged": true}, "HostCon\ufb01g": {"Privileged": false}}'.encode(),
     "privileged mode"),
    ('{"HostConfig": {"Privileged": true}, "Ho\ufb06Config": {"Privileged": false}}'.encode(),
     "privileged mode"),
    (b'{"HostConfig": {"Binds": ["/:/host"]}}', "host bind mount"),
    (b'{"HostConfig": {"Binds": ["/etc:/etc:ro"]}}', "host bind mount"),
    (b'{"HostConfig": {"Binds": ["data:/data", "/var/run/docker.sock:/s"]}}',
     "host bind mount"),
    (b'{"Binds": ["/:/host"]}', "host bind mount"),
    (b'{"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}}',
     "mount of type 'bind'"),
    (b'{"HostConfig": {"Mounts": [{"type": "BIND", "Source": "/", "Target": "/h"}]}}',
     "mount of type 'BIND'"),
    (b'{"HostConfig": {"Mounts": [{"Source": "/", "Target": "/h"}]}}', "mount of type ''"),
    (b'{"HostConfig": {"Mounts": [{"Type": "volume", "Target": "/h", "VolumeOptions":'
     b' {"DriverConfig": {"Name": "local", "Options": {"o": "bind", "device": "/"}}}}]}}',
     "volume driver options"),
    # Found by fuzz/fuzz_body.py: Go decodes a repeated array into the first one's
    # elements, so the DriverConfig survives the second, harmless-looking Mounts.
    (b'{"HostConfig": {"Mounts": [{"Type": "volume", "Target": "/h", "VolumeOptions":'
     b' {"DriverConfig": {"Name": "local", "Options": {"o": "bind", "device": "/"}}}}],'
     b' "Mounts": [{"Type": "volume", "Target": "/h"}]}}', "volume driver options"),
    (b'{"HostConfig": {"Binds": ["/:/host"], "Binds": [null]}}', "host bind mount"),
    (b'{"HostConfig": {"VolumesFrom": ["other"]}}', "another container's volumes"),
    (b'{"HostConfig": {"VolumeDriver": "sshfs"}}', "volume driver plugin"),
    (b'{"HostConfig": {"NetworkMode": "host"}}', "network namespace 'host'"),
    (b'{"HostConfig": {"NetworkMode": "container:abc"}}', "network namespace"),
    (b'{"HostConfig": {"PidMode": "host"}}', "shared namespace 'host'"),
    (b'{"HostConfig": {"PidMode": "container:abc"}}', "shared namespace"),
    (b'{"HostConfig": {"Links": ["db:db"]}}', "links to another container"),
    (b'{"HostConfig": {"IpcMode": "host"}}', "shared namespace"),
    (b'{"HostConfig": {"UTSMode": "host"}}', "shared namespace"),
    (b'{"HostConfig": {"UsernsMode": "host"}}', "shared namespace"),
    (b'{"HostConfig": {"CgroupnsMode": "host"}}', "shared namespace"),
    (b'{"HostConfig": {"PidMode": "ns:/proc/1/ns/pid"}}', "shared namespace"),
    (b'{"HostConfig": {"CapAdd": ["SYS_ADMIN"]}}', "added capabilities"),
    (b'{"HostConfig": {"Capabilities": ["CAP_SYS_ADMIN"]}}', "explicit capability set"),
    (b'{"HostConfig": {"Devices": [{"PathOnHost": "/dev/sda"}]}}', "host devices"),
    (b'{"HostConfig": {"DeviceRequests": [{"Count": -1}]}}', "host devices"),
    (b'{"HostConfig": {"SecurityOpt": ["seccomp=unconfined"]}}', "security options"),
    (b'{"Image": "busybox"}', "running as root"),
    (b'{"User": "0"}', "running as root"),
    (b'{"User": "00"}', "running as root"),
    (b'{"User": "0:0"}', "running as root"),
    (b'{"User": "root"}', "running as root"),
    (b'{"User": "1000", "user": "0"}', "running as root"),
    # Python's "$" also matches before a final newline; Go's (and the daemon's) does not.
    (b'{"User": "1000\\n"}', "running as root"),
    (b'{"HostConfig": {"Binds": ["data\\n:/data"]}}', "host bind mount"),
])
def test_a_body_asking_for_host_access_is_caught_in_every_spelling(
        body: bytes, problem: str) -> None:
    """Case, duplicates, escapes, nulls and the top-level HostConfig fallback all count."""
    problems, _image = bodies.create_violations(body, ALL)
    assert any(problem in found for found in problems), problems


@pytest.mark.parametrize("body", [
    CLEAN,
    b'{"Image": "busybox", "User": "1000", "HostConfig": {"Binds": ["data:/data"]}}',
    b'{"Image": "busybox", "User": "1000", "HostConfig": {"Mounts":'
    b' [{"Type": "volume", "Source": "data", "Target": "/d"}, {"Type": "tmpfs",'
    b' "Target": "/t"}]}}',
    b'{"Image": "busybox", "User": "1000", "HostConfig": {"NetworkMode": "my-net",'
    b' "IpcMode": "shareable", "Privileged": false, "CapAdd": null, "CapDrop": ["ALL"]}}',
])
def test_a_body_without_host_access_passes_every_check(body: bytes) -> None:
    """The constraints must not break ordinary containers (volumes, tmpfs, own networks)."""
    assert bodies.create_violations(body, ALL) == ([], "busybox")


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b'"text"', b'{"Image": "a"} trailing', b"\xef\xbb\xbf{}",
    b'{"Image": "\xff"}', '{"Image": "a"}'.encode("utf-16"), b'{"A": NaN}',
    b'{"HostConfig": "host"}', b'{"HostConfig": {"Privileged": "true"}}',
    b'{"HostConfig": {"Binds": "/:/host"}}', b'{"HostConfig": {"Binds": [1]}}',
    b'{"HostConfig": {"Mounts": ["bind"]}}', b'{"HostConfig": {"NetworkMode": 1}}',
    b'{"User": 0}', b"[" * 100000,
    # Go >= 1.21 folds the dotless i onto "I" (ToUpper(ToLower(r))), older Go does not:
    # which field this names depends on the daemon's build.
    '{"HostConfig": {"Pr\u0131vileged": true}}'.encode(),
    '{"HostConfig": {"Pr\u0130vileged": true}}'.encode(),
])
def test_a_body_that_cannot_be_judged_is_unparseable(body: bytes) -> None:
    """Deny by default: whatever the parser or the type checks cannot read is refused."""
    with pytest.raises(bodies.UnparseableError):
        bodies.create_violations(body, ALL)


def test_only_the_listed_checks_are_applied() -> None:
    """A policy that denies only privileged mode still allows a host bind mount."""
    body = b'{"Image": "x", "HostConfig": {"Binds": ["/srv:/srv"], "Privileged": true}}'
    problems, image = bodies.create_violations(body, frozenset({"host-mounts"}))
    assert image == "x"
    assert problems == ["a host bind mount (HostConfig.Binds '/srv:/srv')"]
    assert bodies.create_violations(body, frozenset()) == ([], "x")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["HostConfig", "hostconfig", "Binds", "Mounts", "Type", "Privileged",
                         "NetworkMode", "PidMode", "CapAdd", "User", "Image", "VolumesFrom",
                         "VolumeOptions", "DriverConfig", "Devices", "SecurityOpt", "x"]),
        inner, max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_any_json_body_is_judged_or_refused_as_unparseable(value: object) -> None:
    """Whatever shape a body has, inspection answers or says it cannot: it never crashes."""
    body = json.dumps(value).encode()
    try:
        problems, image = bodies.create_violations(body, ALL)
    except bodies.UnparseableError:
        return
    assert isinstance(image, str)
    assert all(isinstance(problem, str) for problem in problems)


@given(st.lists(st.sampled_from(["Privileged", "Binds", "PidMode"]), min_size=1, max_size=3),
       st.randoms(use_true_random=False))
def test_a_dangerous_field_is_caught_in_any_letter_case(fields: list[str],
                                                        rng: random.Random) -> None:
    """Go matches field names case-insensitively, so every casing must be inspected."""
    values = {"Privileged": True, "Binds": ["/:/host"], "PidMode": "host"}

    def scramble(word: str) -> str:
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)

    host_config = {scramble(field): values[field] for field in fields}
    body = json.dumps({scramble("HostConfig"): host_config}).encode()
    problems, _image = bodies.create_violations(body, ALL)
    assert len([p for p in problems if "root" not in p]) == len(set(fields))


DEFAULT_MASKS = sorted(bodies.DEFAULT_MASKED_PATHS)
DEFAULT_READONLY = sorted(bodies.DEFAULT_READONLY_PATHS)
ALL_CHECKS = frozenset(bodies.CHECKS)


def inspected_body(**host_config: object) -> bytes:
    """A body as Watchtower copies it from inspect: the daemon's defaults spelled out."""
    hc = {"CgroupnsMode": "host", "MaskedPaths": DEFAULT_MASKS,
          "ReadonlyPaths": DEFAULT_READONLY, "IpcMode": "private", **host_config}
    return json.dumps({"Image": "x", "User": "1000", "HostConfig": hc}).encode()


def test_a_body_restating_the_daemon_s_defaults_asks_for_nothing() -> None:
    """cgroupns host on a cgroup v1 daemon and the default masks are what it does anyway."""
    v1 = bodies.DaemonDefaults(cgroupns="host")
    assert bodies.create_violations(inspected_body(), ALL_CHECKS, v1) == ([], "x")
    more = inspected_body(MaskedPaths=[*DEFAULT_MASKS, "/proc/extra"])
    assert bodies.create_violations(more, ALL_CHECKS, v1) == ([], "x")


def test_defaults_unknown_or_weakened_are_still_requests() -> None:
    """Strict until the daemon said so; fewer masks than the default unmask /proc."""
    problems, _ = bodies.create_violations(inspected_body(), ALL_CHECKS)
    assert problems == ["shared namespace 'host' (HostConfig.cgroupnsmode)"]
    v1 = bodies.DaemonDefaults(cgroupns="host")
    fewer = inspected_body(MaskedPaths=DEFAULT_MASKS[1:])
    assert bodies.create_violations(fewer, ALL_CHECKS, v1)[0] == [
        "explicit /proc path masks (HostConfig.maskedpaths)"]
    assert bodies.create_violations(inspected_body(ReadonlyPaths=[]), ALL_CHECKS, v1)[0] == [
        "explicit /proc path masks (HostConfig.readonlypaths)"]


class _DaemonConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(DOCKER_SOCKET)


@pytest.mark.daemon
def test_the_daemon_decodes_a_repeated_mounts_array_into_the_first_ones_elements(
        docker_client: docker.DockerClient, busybox_image: str) -> None:
    """The real daemon keeps the first Mounts' DriverConfig: why the inspector merges arrays."""
    name = unique_name("merge")
    body = json.dumps({"Image": busybox_image}).encode()[:-1] + (
        b', "HostConfig": {"NetworkMode": "none", "Mounts": [{"Type": "volume", "Source":'
        b' "' + name.encode() + b'", "Target": "/m", "VolumeOptions": {"DriverConfig":'
        b' {"Name": "local", "Options": {"type": "tmpfs", "device": "tmpfs"}}}}],'
        b' "Mounts": [{"Type": "volume", "Source": "' + name.encode() + b'", "Target": "/m"}]}}')
    connection = _DaemonConnection("docker", timeout=30)
    connection.request("POST", f"/containers/create?name={name}", body,
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 201, response.read()
    response.read()
    connection.close()
    try:
        mounts = docker_client.api.inspect_container(name)["HostConfig"]["Mounts"]
    finally:
        docker_client.api.remove_container(name, force=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_volume(name)
    assert mounts[0]["VolumeOptions"]["DriverConfig"]["Name"] == "local"
    assert bodies.create_violations(body, frozenset({"host-mounts"}))[0] == [
        "volume driver options (HostConfig.Mounts[].VolumeOptions.DriverConfig)"]
