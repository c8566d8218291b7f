"""compat.risk_report: what the variables grant, derived from the decider and the route table."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from dockgate import compat, routes
from dockgate.decision import Allow, Client, Facts, Request

CLIENT = Client(listener="test", transport="unix")

ENVS: tuple[Mapping[str, str], ...] = (
    {}, {"CONTAINERS": "1"}, {"CONTAINERS": "1", "POST": "1"},
    {"POST": "1", "ALLOW_RESTARTS": "1"}, {"IMAGES": "1", "EXEC": "1", "POST": "1"},
    dict.fromkeys(compat.variables("linuxserver"), "1"),
)


def listed_operations(report: str) -> set[str]:
    return {line.split()[-1] for line in report.splitlines()
            if line.startswith("      ") and line.split()[0].isupper()}


def risk_lines(report: str) -> list[str]:
    return [line.strip() for line in report.splitlines() if line.startswith("  DANGER: ")]


def test_every_flagged_operation_is_in_the_route_table() -> None:
    """A renamed operation would silently lose its warning: the names must exist."""
    assert set(compat.RISKS) <= set(routes.operations())


def test_sample_paths_classify_as_their_own_route() -> None:
    """The report probes each route with a sample path; that path must be that route."""
    for route in routes.ROUTES:
        path = compat.sample_path(route)
        for prefix in ("", "/v1.41") if route.versioned else ("",):
            match = routes.classify(route.method, routes.parse_target(prefix + path))
            assert match is not None, (route, prefix)
            assert match.route == route


@pytest.mark.parametrize("variant", compat.VARIANTS)
@pytest.mark.parametrize("env", ENVS)
def test_report_lists_exactly_what_the_decider_allows(env: Mapping[str, str],
                                                      variant: str) -> None:
    """The report cannot drift from the decisions: it is the decider run over every route."""
    decider, _ = compat.decider_from_env(env, variant)
    allowed = set()
    for route in routes.ROUTES:
        for prefix in ("", "/v1.41") if route.versioned else ("",):
            target = routes.parse_target(prefix + compat.sample_path(route))
            match = routes.classify(route.method, target)
            decision = decider.decide(CLIENT, Request(route.method, target, match), Facts())
            if isinstance(decision, Allow):
                allowed.add(route.operation)
    assert listed_operations(compat.risk_report(env, variant)) == allowed


def test_containers_and_post_is_flagged_as_root_on_the_host_first() -> None:
    """The one risk that matters most comes first."""
    risks = risk_lines(compat.risk_report({"CONTAINERS": "1", "POST": "1"}))
    assert risks[0].startswith("DANGER: can create containers with host mounts: equivalent "
                               "to root on the host")
    assert any("exec sessions in any container" in risk for risk in risks)


def test_containers_without_post_still_flags_reads_that_leak_or_write() -> None:
    """Inspect (env vars), archive, export and attach/ws are GETs: POST=0 does not stop them."""
    risks = risk_lines(compat.risk_report({"CONTAINERS": "1"}))
    for words in ("environment variables (env vars, secrets)", "archive read",
                  "whole filesystem (export)", "websocket GET; stdin=1 writes"):
        assert any(words in risk and "even with POST off" in risk for risk in risks), words
    assert not any("root on the host" in risk for risk in risks)


def test_restart_flag_says_kill_with_any_signal_of_any_container() -> None:
    """ALLOW_RESTARTS reads as 'restarts' but includes kill, of every container."""
    report = compat.risk_report({"POST": "1", "ALLOW_RESTARTS": "1"})
    assert listed_operations(report) == {"container.restart", "container.stop",
                                         "container.kill", "system.ping", "system.version",
                                         "system.events"}
    assert risk_lines(report) == [
        "DANGER: can kill ANY container, with any signal (ALLOW_RESTARTS)",
        "DANGER: can restart ANY container (ALLOW_RESTARTS)",
        "DANGER: can stop ANY container (ALLOW_RESTARTS)",
    ]


def test_exec_and_build_are_flagged() -> None:
    """EXEC runs commands in containers; BUILD runs build steps on the daemon."""
    risks = risk_lines(compat.risk_report({"EXEC": "1", "BUILD": "1", "POST": "1"}))
    assert any(risk.startswith("DANGER: can start exec sessions (EXEC)") for risk in risks)
    assert any(risk.startswith("DANGER: can build images (BUILD)") for risk in risks)


def test_variables_that_grant_nothing_are_pointed_out() -> None:
    """ALLOW_RESTARTS=1 without POST=1 does nothing in Tecnativa: the report says so."""
    report = compat.risk_report({"ALLOW_RESTARTS": "1", "BUILD": "1"})
    assert "On but granting nothing here: ALLOW_RESTARTS, BUILD (their endpoints need POST=1)" \
        in report
    assert "Risks: none of the granted operations is flagged." in report


def test_report_repeats_the_truth_value_warnings() -> None:
    """`dockgate audit` is where a CONTAINERS=true typo is noticed."""
    report = compat.risk_report({"CONTAINERS": "true"})
    assert "WARNING: CONTAINERS='true' is read as OFF" in report
    assert listed_operations(report) == {"system.ping", "system.version", "system.events"}


def test_linuxserver_report_shows_reads_guarded_and_actions_without_post() -> None:
    """linuxserver: CONTAINERS=1 does not grant logs; ALLOW_START works without POST."""
    report = compat.risk_report({"CONTAINERS": "1", "ALLOW_START": "1"}, "linuxserver")
    operations = listed_operations(report)
    assert "container.start" in operations
    assert not {"container.logs", "container.archive.read", "container.export",
                "container.top", "container.changes"} & operations
    assert report.startswith("dockgate audit: what these linuxserver variables grant")
