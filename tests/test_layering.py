"""The pure core stays pure: framing, routes, decisions, policies, compat, bodies,
settings and errors import no I/O machinery, so they can be tested byte by byte and
audited without reading the asyncio shell.

Imports are read with ``ast`` (nothing is executed), including imports nested in
functions or under ``TYPE_CHECKING``, and a pure module may import only other pure
dockgate modules, so I/O cannot creep in through a helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "dockgate"
PURE_PATTERNS = ("errors.py", "settings.py", "routes.py", "decision.py", "http1.py",
                 "compat.py", "policy*.py", "bodies.py", "danger.py", "hazards.py")
# The modules of the skeleton commit: the pure set can grow, never lose these.
ALWAYS_PURE = {"errors", "settings", "routes", "decision"}
FORBIDDEN = frozenset({"asyncio", "socket", "ssl", "uvloop", "selectors", "subprocess",
                       "threading"})
DYNAMIC_IMPORTERS = frozenset({"__import__", "import_module"})


def pure_modules() -> dict[str, Path]:
    """The pure modules present in the tree, by module name."""
    return {path.stem: path for pattern in PURE_PATTERNS
            for path in sorted(PACKAGE.glob(pattern))}


def imported_modules(source: str, package: str = "dockgate") -> set[str]:
    """Every module name a source imports, anywhere in it, relative imports resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def dynamic_imports(source: str) -> set[str]:
    """Calls that import by name at run time, which the static check cannot see through."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in DYNAMIC_IMPORTERS:
                found.add(name)
    return found


def package_modules() -> set[str]:
    """Every module and subpackage of dockgate, by name."""
    return {path.stem for path in PACKAGE.glob("*.py")} | \
           {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}


def violations(source: str, pure: set[str], modules: set[str]) -> list[str]:
    """Why a module's source breaks the layering rule (empty when it does not), given the
    pure modules and all of the package's modules."""
    problems: list[str] = []
    for name in sorted(imported_modules(source)):
        top, _, rest = name.partition(".")
        sub = rest.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"imports {name}")
        elif top == "dockgate" and sub in modules - pure:
            problems.append(f"imports the impure dockgate.{sub}")
    problems.extend(f"calls {call}()" for call in sorted(dynamic_imports(source)))
    return problems


def test_the_pure_set_is_found_in_the_tree() -> None:
    """An empty glob would let the layering test pass while checking nothing."""
    assert set(pure_modules()) >= ALWAYS_PURE


def test_pure_modules_import_no_io_machinery() -> None:
    """The decision logic must be testable and auditable without sockets or an event loop."""
    modules = pure_modules()
    assert modules
    report = {name: problems for name, path in modules.items()
              if (problems := violations(path.read_text(), set(modules), package_modules()))}
    assert report == {}


def test_checker_sees_plain_dotted_and_from_imports() -> None:
    """Every spelling of an import of a forbidden module must be caught."""
    source = "import asyncio.events\nfrom socket import socket\nimport ssl as tls\n"
    assert violations(source, set(), set()) == ["imports asyncio.events", "imports socket",
                                         "imports socket.socket", "imports ssl"]


def test_checker_sees_imports_hidden_in_functions_and_type_checking() -> None:
    """A lazy import inside a function still ties the module to I/O at run time."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import selectors\n"
              "def later():\n    import subprocess\n    import threading\n")
    assert violations(source, set(), set()) == ["imports selectors", "imports subprocess",
                                         "imports threading"]


def test_checker_follows_imports_of_impure_dockgate_modules() -> None:
    """Importing the asyncio shell from a pure module would smuggle asyncio in indirectly."""
    source = ("from dockgate import server\nfrom . import cli\nfrom dockgate.errors import X\n"
              "from dockgate import __version__\n")
    modules = {"errors", "server", "cli"}
    assert violations(source, {"errors"}, modules) == ["imports the impure dockgate.cli",
                                                       "imports the impure dockgate.server"]


def test_checker_flags_imports_by_name_at_run_time() -> None:
    """importlib.import_module('asyncio') would slip past a purely static import check."""
    source = "import importlib\nloop = importlib.import_module('asyncio')\n__import__('ssl')\n"
    assert violations(source, set(), set()) == ["calls __import__()", "calls import_module()"]


def test_checker_accepts_stdlib_modules_without_io() -> None:
    """The rule must not forbid what pure code legitimately needs."""
    source = "import json, re\nfrom dataclasses import dataclass\nfrom urllib.parse import quote\n"
    assert violations(source, set(), set()) == []
