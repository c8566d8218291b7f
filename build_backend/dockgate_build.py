"""dockgate's build backend: setuptools', asking for mypy when the compiled build is wanted.

``DOCKGATE_COMPILE=1 pip install .`` builds the data plane (``COMPILED``, the
modules every plain request runs through) with mypyc, which comes with mypy:
this backend adds mypy to what pip installs into the isolated build environment,
and setup.py hands the modules to mypyc. The default, pure-Python build needs
nothing but setuptools. Everything else is setuptools' own backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from setuptools import build_meta
from setuptools.build_meta import (
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

__all__ = ["COMPILED", "build_editable", "build_sdist", "build_wheel", "compile_requested",
           "get_requires_for_build_editable", "get_requires_for_build_sdist",
           "get_requires_for_build_wheel", "prepare_metadata_for_build_editable",
           "prepare_metadata_for_build_wheel"]

# The request path: framing, routing, the decision values, the Tecnativa and policy
# deciders, the audit line, the metrics and the shell's connection, flight, relay,
# upstream pool and proxy (whose Host trait the connection calls natively).
COMPILED = [f"src/dockgate/{name}.py" for name in (
    "http1", "routes", "decision", "compat", "policy_decider", "policy_match", "metrics",
    "shell/audit", "shell/connection", "shell/feeds", "shell/forward", "shell/relay",
    "shell/upstream", "shell/proxy")]


def compile_requested() -> bool:
    """DOCKGATE_COMPILE=1: compile with mypyc; unset, empty or 0: the pure-Python build."""
    value = os.environ.get("DOCKGATE_COMPILE", "")
    if value not in ("", "0", "1"):
        raise SystemExit(f"DOCKGATE_COMPILE={value!r}: use 1 for the mypyc-compiled build, "
                         "0 (or unset) for pure Python")
    return value == "1"


def _requires(hook: Callable[[dict[str, str] | None], list[str]],
              config_settings: dict[str, str] | None) -> list[str]:
    """setuptools' requirements, plus mypy (whose mypyc compiles) for the compiled build."""
    if not compile_requested():
        return hook(config_settings)
    # setuptools runs setup.py to learn its requirements, before mypy is installed: it
    # is asked as the pure build, which needs no mypyc (each hook is its own process).
    os.environ["DOCKGATE_COMPILE"] = "0"
    try:
        requires = hook(config_settings)
    finally:
        os.environ["DOCKGATE_COMPILE"] = "1"
    return [*requires, "mypy>=1.11"]


def get_requires_for_build_wheel(config_settings: dict[str, str] | None = None) -> list[str]:
    return _requires(build_meta.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, str] | None = None
                                    ) -> list[str]:
    return _requires(build_meta.get_requires_for_build_editable, config_settings)
