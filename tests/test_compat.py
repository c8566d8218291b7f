"""compat: Tecnativa's and linuxserver's variables decide exactly as their HAProxy rules do."""

from __future__ import annotations

import http.client
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from conftest import free_port, wait_for_port
from dockgate import compat
from dockgate.decision import Allow, Client, Deny, Facts, Request
from dockgate.errors import BadTarget, ConfigError
from dockgate.routes import Body, Match, Route, Stream, Target, parse_target

CLIENT = Client(listener="test", transport="tcp", address="127.0.0.1", port=1)

# Measured with Debian's haproxy 2.6.12 (`env(X) -m bool`), see test_truth_values_match_haproxy.
TRUTH = {
    "1": True, "2": True, "-1": True, "01": True, "+1": True, "1 ": True, "1abc": True,
    "1.0": True, "07": True, "08": True, "0001": True, "1e3": True, "1\t": True,
    "99999999999999999999999": True, "-9223372036854775808": True,
    "0": False, "00": False, "-0": False, "+0": False, "": False, " 1": False, "\t1": False,
    "0x1": False, "0.5": False, "true": False, "TRUE": False, "yes": False, "on": False,
    "abc": False, "+": False, "-": False, "+-1": False, "0 1": False, "\u0663": False,
}


def request(method: str, path: str, operation: str | None = "test.op") -> Request:
    """A request as the shell hands it over: decoded path, and a route unless operation=None."""
    version = None
    api_path = path
    if path.startswith("/v") and "/" in path[1:]:
        version, _, rest = path[2:].partition("/")
        api_path = "/" + rest
    target = Target(raw=path, path=path, version=version, api_path=api_path, query="")
    if operation is None:
        return Request(method, target, None)
    route = Route(method, api_path, operation, None, Stream.PLAIN, Body.NONE)
    return Request(method, target, Match(route, target, {}))


def decide(env: Mapping[str, str], method: str, path: str, variant: str = "tecnativa",
           operation: str | None = "test.op") -> Allow | Deny:
    decider, _ = compat.decider_from_env(env, variant)
    decision = decider.decide(CLIENT, request(method, path, operation), Facts())
    assert isinstance(decision, Allow | Deny)
    return decision


def deny(env: Mapping[str, str], method: str, path: str, variant: str = "tecnativa",
         operation: str | None = "test.op") -> Deny:
    """The decision, which must be a denial."""
    decision = decide(env, method, path, variant, operation)
    assert isinstance(decision, Deny), decision
    return decision


@pytest.mark.parametrize(("value", "on"), sorted(TRUTH.items()))
def test_truth_values_are_read_as_haproxy_reads_them(value: str, on: bool) -> None:
    """Only a leading (signed) non-zero integer is on, as HAProxy's env(X) -m bool reads it."""
    assert compat.haproxy_bool(value) is on


def test_an_unset_variable_is_off() -> None:
    """Unset reads as off, except for the image's defaults."""
    assert compat.haproxy_bool(None) is False
    assert compat.grants({}, "tecnativa")["CONTAINERS"] is False


@pytest.fixture
def truth_haproxy(tmp_path: Path) -> Iterator[int]:
    """The real haproxy binary answering 200 at /N when env V_N is true, else 403."""
    port = free_port()
    config = [
        "defaults", "  mode http", "  timeout client 5s", "  timeout server 5s",
        "  timeout connect 5s", "frontend truth", f"  bind 127.0.0.1:{port}",
        *(f"  http-request return status 200 if {{ path /{n} }} {{ env(V_{n}) -m bool }}"
          for n in range(len(TRUTH))),
        "  http-request return status 403",
    ]
    path = tmp_path / "truth.cfg"
    path.write_text("\n".join(config) + "\n")
    env = {"PATH": os.environ.get("PATH", "")}
    env.update({f"V_{n}": value for n, value in enumerate(TRUTH)})
    process = subprocess.Popen(["/usr/sbin/haproxy", "-db", "-f", str(path)], env=env)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_truth_values_match_haproxy(truth_haproxy: int) -> None:
    """The truth table above is what Debian's haproxy 2.6 binary really does."""
    connection = http.client.HTTPConnection("127.0.0.1", truth_haproxy, timeout=5)
    measured = {}
    for number, value in enumerate(TRUTH):
        connection.request("GET", f"/{number}")
        response = connection.getresponse()
        response.read()
        measured[value] = response.status == 200
    connection.close()
    assert measured == TRUTH


def test_defaults_grant_ping_version_and_events_only() -> None:
    """EVENTS, PING and VERSION default to 1, as in Tecnativa's image."""
    assert decide({}, "GET", "/_ping") == Allow(rule="PING")
    assert decide({}, "HEAD", "/v1.41/_ping") == Allow(rule="PING")
    assert decide({}, "GET", "/version") == Allow(rule="VERSION")
    assert decide({}, "GET", "/events") == Allow(rule="EVENTS")
    assert isinstance(decide({}, "GET", "/containers/json"), Deny)
    assert isinstance(decide({"PING": "0"}, "GET", "/_ping"), Deny)


def test_denial_names_the_request_the_operation_and_the_variable_to_set() -> None:
    """A denied docker CLI command prints which variable would allow it."""
    decision = decide({"POST": "1"}, "POST", "/v1.41/containers/create",
                      operation="container.create")
    assert decision == Deny("dockgate: POST /containers/create denied — CONTAINERS is off "
                            "(set CONTAINERS=1 to allow container.create; CONTAINERS=1 also "
                            "allows container.archive.write, container.create, exec.create for "
                            "any container or body: root on the host or close to it; "
                            "narrowest: a policy file (--policy FILE) with a grant allow: "
                            "[container.create] with create: deny: [all])", 403, "CONTAINERS")


def test_post_gate_denial_says_only_get_and_head_are_allowed() -> None:
    """With POST off, the message says so and names POST and the section together."""
    decision = decide({"CONTAINERS": "1"}, "POST", "/containers/create",
                      operation="container.create")
    assert isinstance(decision, Deny)
    assert decision.message == (
        "dockgate: POST /containers/create denied — POST is off: only GET and HEAD are "
        "allowed (set POST=1 and CONTAINERS=1 to allow container.create; CONTAINERS=1 with "
        "POST=1 also allows container.archive.write, container.create, exec.create for any "
        "container or body: root on the host or close to it; narrowest: a policy file "
        "(--policy FILE) with a grant allow: [container.create] with create: deny: [all])")
    assert decision.rule == "POST"


def test_post_gate_comes_before_the_action_flags() -> None:
    """Tecnativa: ALLOW_RESTARTS=1 without POST=1 grants nothing (the gate is first)."""
    decision = decide({"ALLOW_RESTARTS": "1"}, "POST", "/containers/gw/restart",
                      operation="container.restart")
    assert isinstance(decision, Deny)
    assert "POST is off" in decision.message
    assert "set POST=1 and ALLOW_RESTARTS=1 or POST=1 and CONTAINERS=1" in decision.message
    assert "ALLOW_RESTARTS=1 lets every client restart, stop or kill ANY container" in \
        decision.message
    assert decision.message.endswith("narrowest: ALLOW_RESTART_CONTAINERS=NAME restarts only "
                                     "the container NAME)")
    assert decide({"ALLOW_RESTARTS": "1", "POST": "1"}, "POST", "/containers/gw/restart",
                  operation="container.restart") == Allow(rule="ALLOW_RESTARTS")


def test_action_flags_match_any_method_once_post_is_on() -> None:
    """The action patterns are prefixes on the path: the method does not matter."""
    env = {"ALLOW_STOP": "1", "POST": "1"}
    assert decide(env, "DELETE", "/containers/gw/stop") == Allow(rule="ALLOW_STOP")
    assert decide(env, "GET", "/v1.41/containers/gw/stopped") == Allow(rule="ALLOW_STOP")
    assert isinstance(decide(env, "POST", "/containers/gw/start"), Deny)


def test_action_flags_need_a_simple_container_reference() -> None:
    """Tecnativa's reference pattern is [a-zA-Z0-9_.-]+: other names are not matched."""
    env = {"ALLOW_RESTARTS": "1", "POST": "1"}
    assert decide(env, "POST", "/containers/a.b-c_D9/kill") == Allow(rule="ALLOW_RESTARTS")
    assert isinstance(decide(env, "POST", "/containers/a b/kill"), Deny)
    assert isinstance(decide(env, "POST", "/containers//gw/kill"), Deny)


def test_sections_are_case_insensitive_start_anchored_prefixes() -> None:
    """/CONTAINERS/json and /containersXYZ fall under CONTAINERS, /x/containers does not."""
    env = {"CONTAINERS": "1"}
    assert decide(env, "GET", "/CONTAINERS/json") == Allow(rule="CONTAINERS")
    assert decide(env, "GET", "/v1.41/Containers/json") == Allow(rule="CONTAINERS")
    assert decide(env, "GET", "/v./containers/json") == Allow(rule="CONTAINERS")
    assert isinstance(decide(env, "GET", "/x/containers/json"), Deny)
    assert isinstance(decide(env, "GET", "/vx/containers/json"), Deny)


def test_case_folding_is_ascii_only() -> None:
    """HAProxy folds ASCII only: the Kelvin sign is not a 'k' (Python's re would say it is)."""
    env = {"POST": "1", "ALLOW_RESTARTS": "1"}
    assert isinstance(decide(env, "POST", "/containers/gw/\u212aill"), Deny)


def test_unroutable_request_tecnativa_would_forward_gets_404_not_forwarded() -> None:
    """The daemon would answer 404; dockgate answers it and the daemon never sees the request."""
    decision = decide({"CONTAINERS": "1"}, "GET", "/containersXYZ", operation=None)
    assert isinstance(decision, Deny)
    assert decision.status == 404
    assert decision.message.startswith("page not found")


def test_unroutable_request_tecnativa_would_deny_gets_403() -> None:
    """The client-visible status stays HAProxy's: 403 where it denies."""
    decision = decide({}, "GET", "/containersXYZ", operation=None)
    assert isinstance(decision, Deny)
    assert decision.status == 403
    assert decision.message == ("dockgate: GET /containersXYZ denied — CONTAINERS is off "
                                "(set CONTAINERS=1 to allow it)")


def test_path_no_variable_grants_says_so() -> None:
    """/debug/pprof is in no section: nothing to set."""
    decision = decide({"POST": "1"}, "GET", "/debug/vars")
    assert isinstance(decision, Deny)
    assert decision.message.endswith("denied — no Tecnativa variable grants this path")
    decision = decide({}, "POST", "/debug/vars")
    assert isinstance(decision, Deny)
    assert decision.message.endswith("only GET and HEAD are allowed; no Tecnativa variable "
                                     "grants this path")


def test_exec_create_is_under_containers_and_exec_start_under_exec() -> None:
    """EXEC covers /exec/... only; exec create is POST /containers/{id}/exec."""
    env = {"POST": "1", "CONTAINERS": "1"}
    assert decide(env, "POST", "/containers/gw/exec") == Allow(rule="CONTAINERS")
    assert isinstance(decide(env, "POST", "/exec/abc/start"), Deny)
    assert decide({"POST": "1", "EXEC": "1"}, "POST", "/exec/abc/start") == Allow(rule="EXEC")


def test_linuxserver_action_flags_work_with_post_off() -> None:
    """linuxserver checks ALLOW_* before the POST gate, for any method."""
    env = {"ALLOW_START": "1"}
    assert decide(env, "POST", "/containers/gw/start", "linuxserver") == Allow(rule="ALLOW_START")
    assert decide(env, "DELETE", "/v1.41/containers/gw/start",
                  "linuxserver") == Allow(rule="ALLOW_START")
    decision = decide({}, "POST", "/containers/gw/start", "linuxserver")
    assert isinstance(decision, Deny)
    assert "set ALLOW_START=1 or POST=1 and CONTAINERS=1" in decision.message


def test_linuxserver_read_guards_apply_even_with_containers_on() -> None:
    """Logs, archive, export, changes and top need their own flag under linuxserver."""
    env = {"CONTAINERS": "1"}
    for suffix, flag in (("logs", "ALLOW_LOGS"), ("archive", "ALLOW_ARCHIVE"),
                         ("export", "ALLOW_EXPORT"), ("changes", "ALLOW_CHANGES"),
                         ("top", "ALLOW_TOP")):
        decision = decide(env, "GET", f"/containers/gw/{suffix}", "linuxserver")
        assert isinstance(decision, Deny)
        assert decision.message.endswith(f"{flag} is off (set {flag}=1 to allow test.op; "
                                         "narrowest: a policy file (--policy FILE) with a "
                                         "grant allow: [test.op])")
        allowed = decide({**env, flag: "1"}, "GET", f"/containers/gw/{suffix}", "linuxserver")
        assert allowed == Allow(rule="CONTAINERS")
    assert decide(env, "GET", "/containers/gw/logs") == Allow(rule="CONTAINERS")


def test_linuxserver_read_guards_deny_before_action_flags() -> None:
    """The read guards come first: ALLOW_RESTARTS does not open /containers/x/logs."""
    decision = decide({"ALLOW_STOP": "1", "CONTAINERS": "1"}, "GET", "/pods/gw/top",
                      "linuxserver", operation=None)
    assert isinstance(decision, Deny)
    assert decision.status == 403


@pytest.mark.parametrize("env", [{}, {"LIBPOD_PING": "1"}, {"LIBPOD_IMAGES": "1", "IMAGES": "1"},
                                 {"ALLOW_START": "1", "LIBPOD_CONTAINERS": "1", "POST": "1"}])
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/libpod/_ping"), ("GET", "/v1.41/libpod/images/json"),
    ("POST", "/libpod/containers/gw/start"), ("GET", "/libpod"),
])
def test_podmans_libpod_api_is_refused_whatever_the_variables_say(
        env: dict[str, str], method: str, path: str) -> None:
    """dockgate routes only the Docker Engine API: a libpod request is refused and told why."""
    for variant in ("linuxserver", "tecnativa"):
        decision = deny(env, method, path, variant, operation=None)
        assert (decision.status, decision.rule) == (404, "libpod")
        assert "Podman's libpod API, which dockgate does not proxy" in decision.message


def test_libpod_variables_set_on_are_named_in_a_startup_warning() -> None:
    """LIBPOD_IMAGES=1 would look like a grant: serve and audit say it grants nothing."""
    _decider, warnings = compat.decider_from_env(
        {"LIBPOD_IMAGES": "1", "LIBPOD_PING": "0", "IMAGES": "1"}, "linuxserver")
    assert warnings == ["LIBPOD_IMAGES='1' grants nothing: dockgate refuses Podman's libpod "
                        "API (/libpod/...) whatever the variables say; Podman's "
                        "Docker-compatible API is granted by the Docker variables (IMAGES...)"]
    assert compat.decider_from_env({"LIBPOD_IMAGES": "1"}, "tecnativa")[1] == []


def test_a_libpod_target_with_podmans_version_spelling_is_refused_as_libpod() -> None:
    """Podman clients write /v4.3.1/libpod/...: the 400 names libpod, not a loose version."""
    with pytest.raises(BadTarget) as caught:
        parse_target("/v4.3.1/libpod/_ping")
    assert "Podman's libpod API" in caught.value.message
    with pytest.raises(BadTarget) as caught:
        parse_target("/v4.3.1/containers/json")
    assert "loose API version" in caught.value.message


def test_linuxserver_reads_more_variables_than_tecnativa() -> None:
    """The variable lists are what each variant documents."""
    tecnativa = set(compat.variables("tecnativa"))
    linuxserver = set(compat.variables("linuxserver"))
    assert {"POST", "CONTAINERS", "ALLOW_RESTARTS", "ALLOW_PAUSE", "VOLUMES"} <= tecnativa
    assert linuxserver - tecnativa >= {"ALLOW_LOGS", "LIBPOD_CONTAINERS", "LIBPOD_PING"}
    assert compat.defaults("tecnativa") == {"EVENTS", "PING", "VERSION"}
    assert compat.defaults("linuxserver") == {"EVENTS", "PING", "VERSION", "LIBPOD_PING",
                                              "LIBPOD_VERSION"}


@pytest.mark.parametrize("value", ["true", "yes", "on", " 1", "TRUE", "Yes"])
def test_values_meaning_on_but_read_as_off_are_warned_about(value: str) -> None:
    """A compose file's CONTAINERS: true silently disables the section: say so at startup."""
    decider, warnings = compat.decider_from_env({"CONTAINERS": value}, "tecnativa")
    assert decider.on["CONTAINERS"] is False
    assert warnings == [f"CONTAINERS={value!r} is read as OFF, as Tecnativa's HAProxy reads it "
                        "(only a number that is not 0, with nothing before it, is on); "
                        "write CONTAINERS=1"]


def test_odd_values_read_as_on_are_warned_about_too() -> None:
    """1abc is on in HAProxy; a warning suggests the plain form."""
    _, warnings = compat.decider_from_env({"IMAGES": "1abc", "EXEC": "maybe"}, "tecnativa")
    assert warnings[0].startswith("EXEC='maybe' is read as OFF")
    assert warnings[0].endswith("write EXEC=1 to turn it on or EXEC=0 to turn it off")
    assert warnings[1].startswith("IMAGES='1abc' is read as ON")


@pytest.mark.parametrize("value", ["0", "1", "2", "-1", "01", "", "false", "no", "off", "0 "])
def test_plain_and_clearly_off_values_are_not_warned_about(value: str) -> None:
    """No noise for values that mean what they say."""
    assert compat.decider_from_env({"CONTAINERS": value}, "tecnativa")[1] == []


def test_unknown_variant_is_a_config_error() -> None:
    """A typo in --compat is an error naming the value, never a silent fallback."""
    with pytest.raises(ConfigError, match="'haproxy'"):
        compat.decider_from_env({}, "haproxy")


def test_decider_name_says_which_rules_decide() -> None:
    """The audit log names the decider."""
    assert compat.decider_from_env({}, "linuxserver")[0].name == "compat:linuxserver"
