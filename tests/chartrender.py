"""A small renderer for the subset of Helm templates deploy/kubernetes/chart uses.

Helm itself cannot be installed here: Debian 12 does not package it, and the PyPI and
npm packages named after it either wrap a helm binary that must already be installed or
download one at run time (this machine reaches no download site). So the chart keeps to a
small part of Helm's template language (Go text/template plus Sprig), and this module
renders exactly that part with the same semantics. Anything outside it is an error, not
a guess, so the chart cannot drift into syntax this renderer would get wrong:

- actions ``{{ X }}``, with ``{{-`` / ``-}}`` trimming the whitespace before / after;
- ``{{ if PIPELINE }}`` ... ``{{ else }}`` ... ``{{ end }}`` (Go's truth: false, 0, nil,
  and empty strings, maps and lists are false);
- pipelines ``A | f N | g``: the value on the left becomes the last argument;
- terms: ``.Values.a.b``, ``.Release.Name``, ``.Release.Namespace``,
  ``.Chart.AppVersion`` (any dotted path into the context), "strings" (without ``|``,
  which always separates commands here), integers;
- functions: ``eq``, ``not``, ``quote``, ``toYaml``, ``indent``, ``nindent``,
  ``sha256sum``, as Helm defines them (``toYaml`` drops the trailing newline;
  ``indent N`` pads every line, ``nindent N`` starts with a newline).

Values are checked against the chart's values.schema.json first, as ``helm install``
and ``helm template`` do. Templates are rendered in file-name order; one whose output
is only whitespace produces no document, as in Helm.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
SPACE = re.compile(r"\s*")


class TemplateError(Exception):
    """The template uses something outside the supported subset, or a value is missing."""


def _indent(spaces: int, text: str) -> str:
    pad = " " * spaces
    return pad + text.replace("\n", "\n" + pad)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, b: a == b,
    "not": lambda a: not truthy(a),
    "quote": lambda a: json.dumps(text_of(a)),
    "toYaml": lambda a: yaml.safe_dump(a, default_flow_style=False, sort_keys=True).rstrip("\n"),
    "indent": _indent,
    "nindent": lambda spaces, text: "\n" + _indent(spaces, text),
    "sha256sum": lambda a: hashlib.sha256(text_of(a).encode()).hexdigest(),
}


def truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, maps and lists are false."""
    return value not in (None, False, 0, "") and value != {} and value != []


def text_of(value: Any) -> str:
    """How an action prints a value; maps and lists need toYaml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise TemplateError(f"cannot print {type(value).__name__} {value!r}: use toYaml")


def lookup(context: Mapping[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.strip(".").split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise TemplateError(f"no value at {path}")
        value = value[part]
    return value


def term(context: Mapping[str, Any], word: str) -> Any:
    if word.startswith("."):
        return lookup(context, word)
    if word.startswith('"'):
        value: str = json.loads(word)
        return value
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    raise TemplateError(f"unsupported term {word!r}")


def pipeline(context: Mapping[str, Any], text: str) -> Any:
    value: Any = None
    for position, command in enumerate(text.split("|")):
        words = shlex.split(command, posix=False)
        if not words:
            raise TemplateError(f"empty command in {text!r}")
        name, args = words[0], [term(context, word) for word in words[1:]]
        if position:
            args.append(value)
        if name in FUNCTIONS:
            value = FUNCTIONS[name](*args)
        elif len(words) == 1 and not position:
            value = term(context, name)
        else:
            raise TemplateError(f"unsupported function {name!r} in {text!r}")
    return value


def render_template(source: str, context: Mapping[str, Any]) -> str:
    """One template file rendered with ``context`` (Values, Release, Chart)."""
    out: list[str] = []
    # Each open if: [is this branch the one rendered?, was any branch taken?]
    stack: list[list[bool]] = []
    position = 0
    while match := ACTION.search(source, position):
        trim_left, action, trim_right = match.groups()
        emitting = all(frame[0] for frame in stack)
        text = source[position:match.start()]
        if emitting:
            out.append(text.rstrip() if trim_left else text)
        position = match.end()
        if trim_right:
            position = SPACE.match(source, position).end()  # type: ignore[union-attr]
        keyword = action.split(maxsplit=1)[0] if action else ""
        if keyword == "if":
            condition = emitting and truthy(pipeline(context, action[2:]))
            stack.append([condition, condition])
        elif action == "else":
            if not stack:
                raise TemplateError("else without if")
            stack[-1] = [not stack[-1][1], True]
        elif action == "end":
            if not stack:
                raise TemplateError("end without if")
            stack.pop()
        elif keyword in ("range", "with", "define", "template", "include", "block") or \
                action.startswith("/*"):
            raise TemplateError(f"unsupported action {{{{ {action} }}}}")
        elif emitting:
            out.append(text_of(pipeline(context, action)))
    if stack:
        raise TemplateError("if without end")
    out.append(source[position:])
    return "".join(out)


def render_chart(chart: Path, values: Mapping[str, Any] | None = None, *,
                 release: str = "dockgate", namespace: str = "dockgate") -> str:
    """The chart's manifests for ``values`` merged over values.yaml, like `helm template`.

    A YAML stream: one document per template that rendered to more than whitespace,
    each headed by a ``# Source:`` comment as Helm writes it.
    """
    merged = merge(yaml.safe_load((chart / "values.yaml").read_text()), values or {})
    schema = json.loads((chart / "values.schema.json").read_text())
    jsonschema.validate(merged, schema)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    context = {"Values": merged, "Release": {"Name": release, "Namespace": namespace},
               "Chart": {"Name": meta["name"], "Version": meta["version"],
                         "AppVersion": meta["appVersion"]}}
    documents = []
    for path in sorted((chart / "templates").glob("*.yaml")):
        text = render_template(path.read_text(), context).strip("\n")
        if text.strip():
            documents.append(f"---\n# Source: {chart.name}/templates/{path.name}\n{text}\n")
    return "".join(documents)


def manifests(stream: str) -> list[dict[str, Any]]:
    """The objects of a YAML stream (comment-only documents dropped)."""
    return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def merge(base: Any, override: Any) -> Any:
    """Helm's values merge: maps merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, Mapping):
        result = dict(base)
        for key, value in override.items():
            result[key] = merge(base.get(key), value)
        return result
    return override
