"""docs/compat.md's tables are generated from compat itself; these tests keep them equal.

Regenerate after changing compat: ``python tests/test_compat_docs.py --write``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from dockgate import compat
from test_compat import deny

DOC = Path(__file__).resolve().parent.parent / "docs" / "compat.md"
DEFAULT_OPERATIONS = ("system.ping", "system.version", "system.events")

# (variant, environment) rows of the grants table, in the order the guide discusses them.
GRANT_ROWS: tuple[tuple[str, Mapping[str, str]], ...] = (
    ("tecnativa", {}),
    ("tecnativa", {"CONTAINERS": "1"}),
    ("tecnativa", {"CONTAINERS": "1", "POST": "1"}),
    ("tecnativa", {"POST": "1", "ALLOW_RESTARTS": "1"}),
    ("tecnativa", {"ALLOW_RESTARTS": "1"}),
    ("tecnativa", {"POST": "1", "ALLOW_START": "1", "ALLOW_STOP": "1"}),
    ("tecnativa", {"IMAGES": "1", "INFO": "1", "NETWORKS": "1", "VOLUMES": "1"}),
    ("tecnativa", {"CONTAINERS": "1", "EXEC": "1", "POST": "1"}),
    ("tecnativa", {"CONTAINERS": "true"}),
    ("linuxserver", {"CONTAINERS": "1"}),
    ("linuxserver", {"ALLOW_RESTARTS": "1"}),
)

TRUTH_VALUES = ("1", "2", "-1", "01", "+1", "1 ", "1abc", "0", "00", "", " 1", "true",
                "yes", "on", "0x1")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def variables_table() -> str:
    """Every access variable, which variants read it, and its default."""
    lines = ["| Variable | Tecnativa | linuxserver | Default |", "|---|---|---|---|"]
    tecnativa = set(compat.variables("tecnativa"))
    defaults = compat.defaults("linuxserver")
    lines.extend(f"| `{name}` | {'yes' if name in tecnativa else '-'} | yes | "
                 f"{'1' if name in defaults else '0 (unset)'} |"
                 for name in compat.variables("linuxserver"))
    return "\n".join(lines)


def truth_table() -> str:
    """How values are read, as HAProxy's env(X) -m bool reads them."""
    lines = ["| Value | Read as | Startup warning |", "|---|---|---|"]
    for value in TRUTH_VALUES:
        warned = compat.truth_warnings({"CONTAINERS": value}, "tecnativa")
        lines.append(f"| `{value!r}` | {'on' if compat.haproxy_bool(value) else 'off'} | "
                     f"{'yes' if warned else '-'} |")
    return "\n".join(lines)


def grants_table() -> str:
    """What each example setting grants, by running the decider over the route table."""
    lines = ["| Variant | Variables | Granted besides ping/version/events | Flagged | "
             "Root on the host |", "|---|---|---|---|---|"]
    for variant, env in GRANT_ROWS:
        decider, _ = compat.decider_from_env(env, variant)
        granted = compat.granted_routes(decider)
        operations = [op for op in dict.fromkeys(route.operation for route, _ in granted)
                      if op not in DEFAULT_OPERATIONS]
        flagged = {route.operation for route, _ in granted if route.operation in compat.RISKS}
        root = any(compat.ROOT in compat.RISKS[op] for op in flagged)
        shown = " ".join(f"{k}={v}" for k, v in env.items()) or "(defaults)"
        lines.append(f"| {variant} | `{_cell(shown)}` | {', '.join(operations) or 'nothing'} | "
                     f"{len(flagged)} | {'**yes**' if root else 'no'} |")
    return "\n".join(lines)


GENERATED: Mapping[str, Callable[[], str]] = {
    "variables": variables_table,
    "truth": truth_table,
    "grants": grants_table,
}


def block(name: str, text: str) -> re.Match[str] | None:
    return re.search(rf"<!-- generated:{name} -->\n(.*?)\n<!-- /generated:{name} -->", text,
                     re.DOTALL)


def test_variables_table_in_the_guide_is_generated_from_compat() -> None:
    """The guide lists exactly the variables compat reads, with their defaults."""
    found = block("variables", DOC.read_text())
    assert found is not None
    assert found.group(1) == variables_table()


def test_truth_value_table_in_the_guide_is_generated_from_compat() -> None:
    """The guide's truth values are compat's (which test_compat checks against haproxy)."""
    found = block("truth", DOC.read_text())
    assert found is not None
    assert found.group(1) == truth_table()


def test_grants_table_in_the_guide_is_generated_from_the_decider() -> None:
    """What the guide says each setting grants is what the decider allows."""
    found = block("grants", DOC.read_text())
    assert found is not None
    assert found.group(1) == grants_table()


def test_guide_examples_of_denials_are_the_decider_s_own_messages() -> None:
    """The denial lines quoted in the guide are produced verbatim by compat."""
    text = DOC.read_text()
    for message in re.findall(r"^Error response from daemon: (dockgate: .*)$", text,
                              re.MULTILINE):
        assert message in denial_examples(), message


def denial_examples() -> set[str]:
    examples = {
        deny({}, "POST", "/v1.41/containers/create", operation="container.create"),
        deny({"CONTAINERS": "1"}, "GET", "/v1.41/images/json", operation="image.list"),
        deny({"POST": "1"}, "POST", "/v1.41/containers/gw/restart",
             operation="container.restart"),
    }
    return {decision.message for decision in examples}


def write() -> None:
    text = DOC.read_text()
    for name, make in GENERATED.items():
        found = block(name, text)
        if found is None:
            raise SystemExit(f"{DOC}: no <!-- generated:{name} --> block")
        text = text[:found.start(1)] + make() + text[found.end(1):]
    DOC.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(__doc__)
    write()
