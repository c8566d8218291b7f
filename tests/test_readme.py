"""README.md opens with the two commands a newcomer needs, and both are real: the install
command starts the proxy this package defines, and the test command is exactly what CI
runs (.ci/run), so "works on my machine" and "passes in CI" mean the same thing.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_AND_RUN = "pip install . && dockgate serve"
TEST_COMMAND = "scripts/test"
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def first_code_block(markdown: str) -> tuple[str, list[str]]:
    """The language tag and the non-blank lines of the first fenced code block."""
    found = FENCE.search(markdown)
    assert found is not None, "README.md has no fenced code block"
    return found["lang"], [line.strip() for line in found["body"].splitlines() if line.strip()]


def exec_commands(script: str) -> list[list[str]]:
    """The commands a shell script hands itself over to with `exec`."""
    return [shlex.split(line)[1:] for line in script.splitlines()
            if line.strip().startswith("exec ")]


def test_readme_opens_with_the_install_and_the_test_command() -> None:
    """The first code block is the quick start; anything else there is noise or a stale step."""
    lang, lines = first_code_block((ROOT / "README.md").read_text())
    assert (lang, lines) == ("sh", [INSTALL_AND_RUN, TEST_COMMAND])


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """If CI ran something else, a green CI would say nothing about the documented command."""
    _, lines = first_code_block((ROOT / "README.md").read_text())
    assert exec_commands((ROOT / ".ci" / "run").read_text()) == [shlex.split(lines[-1])]


def test_the_test_scripts_are_executable_and_parse() -> None:
    """`scripts/test` is run by path, so a lost executable bit or a syntax error breaks CI."""
    for script in (ROOT / TEST_COMMAND, ROOT / ".ci" / "run"):
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                                 check=False)
        assert (checked.returncode, checked.stderr) == (0, "")


def test_install_command_provides_the_dockgate_serve_command() -> None:
    """`pip install . && dockgate serve` must name a console script that has `serve`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["dockgate"] == "dockgate.cli:main"
    helped = subprocess.run([sys.executable, "-m", "dockgate", "serve", "--help"],
                            capture_output=True, text=True, check=False, timeout=30)
    assert (helped.returncode, helped.stderr) == (0, "")
    assert "--listen" in helped.stdout


def test_exec_commands_finds_only_exec_lines() -> None:
    """The helper must not mistake a comment or another command for what the script runs."""
    script = "#!/bin/sh\n# exec is how we hand over\ncd /x\nexec scripts/test --flag\n"
    assert exec_commands(script) == [["scripts/test", "--flag"]]


def test_first_code_block_ignores_later_blocks_and_blank_lines() -> None:
    """Only the opening block is the quick start; later examples may show anything."""
    markdown = "# t\n\ntext\n\n```sh\n\nfirst\n  second  \n```\n\n```python\nother\n```\n"
    assert first_code_block(markdown) == ("sh", ["first", "second"])


def console_examples(markdown: str) -> list[tuple[str, list[str]]]:
    """Each ``$ command`` of the README's ``console`` blocks with the output lines shown."""
    examples: list[tuple[str, list[str]]] = []
    for block in FENCE.finditer(markdown):
        if block["lang"] != "console":
            continue
        for line in block["body"].splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            elif line.strip():
                examples[-1][1].append(line)
    return examples


def run_example(command: str) -> str:
    """Run ``VAR=value dockgate ...`` with this interpreter and only the variables shown."""
    words = shlex.split(command)
    env_words = words[: words.index("dockgate")]
    env = {"PATH": "/usr/bin:/bin", **dict(w.split("=", 1) for w in env_words)}
    argv = [sys.executable, "-m", "dockgate", *words[len(env_words) + 1:]]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)
    return done.stdout


def test_readme_console_examples_print_what_the_readme_shows() -> None:
    """Every example's shown lines appear, in order, in what the command really prints."""
    examples = console_examples((ROOT / "README.md").read_text())
    assert len(examples) >= 5
    for command, shown in examples:
        printed = run_example(command).splitlines()
        position = 0
        for line in shown:
            assert line in printed[position:], f"{command!r} does not print {line!r}"
            position = printed.index(line, position) + 1


def test_console_examples_pair_commands_with_their_output() -> None:
    """The helper keeps each command's lines apart and ignores other languages' blocks."""
    markdown = "```console\n$ a\nx\n\n$ b\ny\nz\n```\n```sh\n$ c\n```\n"
    assert console_examples(markdown) == [("a", ["x"]), ("b", ["y", "z"])]
