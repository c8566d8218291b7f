"""The build switch: DOCKGATE_COMPILE picks the pure-Python build or the mypyc one.

The compiled build itself is exercised by scripts/test, which builds it and runs the
data plane's tests against it; these check the switch and the module list.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "build_backend"))
import dockgate_build  # noqa: E402


def setuptools_hook(config_settings: dict[str, str] | None) -> list[str]:
    """Stands in for setuptools' hook: what setup.py would see when it runs."""
    return ["wheel", f"DOCKGATE_COMPILE={dockgate_build.os.environ['DOCKGATE_COMPILE']}"]


@pytest.mark.parametrize(("value", "compiled"), [("", False), ("0", False), ("1", True)])
def test_the_switch_takes_1_or_0_and_defaults_to_pure_python(
        monkeypatch: pytest.MonkeyPatch, value: str, compiled: bool) -> None:
    monkeypatch.setenv("DOCKGATE_COMPILE", value)
    assert dockgate_build.compile_requested() is compiled


def test_an_unknown_value_is_refused_with_what_to_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKGATE_COMPILE", "yes")
    with pytest.raises(SystemExit) as refused:
        dockgate_build.compile_requested()
    assert str(refused.value) == ("DOCKGATE_COMPILE='yes': use 1 for the mypyc-compiled build, "
                                  "0 (or unset) for pure Python")


def test_only_the_compiled_build_asks_for_mypy_and_setup_py_is_asked_as_pure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """setuptools runs setup.py to learn its requirements, before mypy is installed."""
    monkeypatch.setenv("DOCKGATE_COMPILE", "0")
    assert dockgate_build._requires(setuptools_hook, None) == ["wheel", "DOCKGATE_COMPILE=0"]
    monkeypatch.setenv("DOCKGATE_COMPILE", "1")
    assert dockgate_build._requires(setuptools_hook, None) == [
        "wheel", "DOCKGATE_COMPILE=0", "mypy>=1.11"]
    assert dockgate_build.os.environ["DOCKGATE_COMPILE"] == "1"


def _open_to_subclasses(node: ast.ClassDef) -> bool:
    """Whether the class says ``@mypyc_attr(allow_interpreted_subclasses=True)``."""
    return any(isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") ==
               "mypyc_attr" and any(keyword.arg == "allow_interpreted_subclasses"
                                    and isinstance(keyword.value, ast.Constant)
                                    and keyword.value.value is True
                                    for keyword in decorator.keywords)
               for decorator in node.decorator_list)


def test_the_compiled_modules_exist_and_none_is_subclassed_elsewhere() -> None:
    """A compiled class cannot be subclassed by interpreted code (tests, deciders) unless
    it says so: the extension points (decision.AllowAll and DenyAll, which tests
    subclass) are marked ``allow_interpreted_subclasses``; no other compiled class is
    subclassed outside the compiled modules."""
    compiled = [ROOT / path for path in dockgate_build.COMPILED]
    assert all(path.is_file() for path in compiled), compiled
    nodes = [node for path in compiled for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ClassDef)]
    classes = {node.name for node in nodes if not _open_to_subclasses(node)}
    assert {node.name for node in nodes if _open_to_subclasses(node)} == {"AllowAll", "DenyAll"}
    compiled_paths = {path.resolve() for path in compiled}
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("fuzz/*.py"),
                 *ROOT.glob("bench/*.py")]:
        if path.resolve() in compiled_paths:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                         for base in node.bases}
                assert not bases & classes, f"{path.name}: {node.name} subclasses {bases & classes}"
