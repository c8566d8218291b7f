"""The shipped presets: they load, grant what docs/policies.md says, and nothing more."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dockgate import policy, routes
from dockgate.decision import Allow, Client, ContainerFacts, Deny, Facts, NeedFacts, Request

DOC = Path(__file__).resolve().parent.parent / "docs" / "policies.md"
LOCAL = Client("tcp://127.0.0.1:2375", "tcp", address="127.0.0.1", port=1)


def grant_text(grant: policy.Grant) -> str:
    """One grant as a table cell fragment: operations, then any scope."""
    text = ", ".join(f"`{op}`" for op in sorted(grant.operations))
    if grant.containers is not None:
        text += f" (containers with {grant.containers.describe()})"
    if grant.images is not None:
        text += f" (images {', '.join(grant.images)})"
    if grant.create_deny is not None:
        text += f" (create denies {', '.join(sorted(grant.create_deny))})"
    return text


def preset_table() -> str:
    """The markdown table docs/policies.md must contain, generated from the preset files."""
    rows = ["| Preset | Grants |", "|---|---|"]
    for name in policy.preset_names():
        decider = policy.load_file(f"preset:{name}")
        grants = "; ".join(grant_text(g) for p in decider.policies.values() for g in p.grants)
        rows.append(f"| `preset:{name}` | {grants} |")
    return "\n".join(rows) + "\n"


def test_the_preset_table_in_the_docs_matches_the_preset_files() -> None:
    """Docs that list grants nobody checks drift; this table is generated, then compared."""
    table = preset_table()
    assert table in DOC.read_text(), f"update docs/policies.md with:\n{table}"


@pytest.mark.parametrize("name", policy.preset_names())
def test_every_preset_loads_cleanly_and_applies_to_every_client(name: str) -> None:
    """A preset has no client rules: its one policy is the default for everyone."""
    decider = policy.load_file(f"preset:{name}")
    assert decider.warnings == ()
    assert decider.default == name
    assert decider.policy_for(LOCAL) is decider.policies[name]


def test_the_restart_only_preset_restarts_labelled_containers_only() -> None:
    """Only a container carrying dockgate.restart=allow may be restarted."""
    decider = policy.load_file("preset:restart-only")
    target = routes.parse_target("/containers/gw/restart")
    req = Request("POST", target, routes.classify("POST", target))
    assert decider.decide(LOCAL, req, Facts()) == NeedFacts(containers=("gw",))
    labelled = ContainerFacts("c" * 64, "gw", {"dockgate.restart": "allow"})
    plain = ContainerFacts("c" * 64, "gw", {})
    assert isinstance(decider.decide(LOCAL, req, Facts(containers={"gw": labelled})), Allow)
    assert isinstance(decider.decide(LOCAL, req, Facts(containers={"gw": plain})), Deny)


def test_the_watchtower_preset_refuses_a_privileged_recreate() -> None:
    """The updater may create containers, but not ones that own the host."""
    decider = policy.load_file("preset:watchtower")
    target = routes.parse_target("/containers/create")
    req = Request("POST", target, routes.classify("POST", target))
    bad = Facts(body=b'{"Image": "x", "HostConfig": {"Privileged": true}}')
    good = Facts(body=b'{"Image": "x", "HostConfig": {"NetworkMode": "none"}}')
    assert isinstance(decider.decide(LOCAL, req, bad), Deny)
    assert isinstance(decider.decide(LOCAL, req, good), Allow)


def test_the_full_example_in_the_docs_compiles_and_explains_as_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented example is a real file: it loads, lints clean, and check prints the doc."""
    text = DOC.read_text()
    example = re.search(r"## A full example\n\n```yaml\n(.*?)```", text, re.S)
    console = re.search(r"```console\n\$ dockgate (check .*?)\n(.*?)```", text, re.S)
    assert example is not None
    assert console is not None
    (tmp_path / "policy.yaml").write_text(example.group(1))
    monkeypatch.chdir(tmp_path)
    assert policy.lint_file("policy.yaml") == []
    args = shlex.split(console.group(1))
    report, allowed = policy.explain(policy.load_file(args[2]), args[5], args[6],
                                     client=args[4])
    assert allowed
    assert report + "\n" == console.group(2)
