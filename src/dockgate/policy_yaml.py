"""Reading a YAML policy document with the line of every value (pure).

The policy file is composed, not loaded: ``yaml.compose`` keeps each node's
``start_mark``, so every error can say ``FILE:LINE: what is wrong; what to write
instead``. Scalars are read from their source text, never resolved by YAML 1.1's
implicit typing: a container named ``yes`` or ``0755`` stays that string (the
"Norway problem" cannot turn a name into a boolean or an octal number).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import yaml

from dockgate.errors import ConfigError

_NULL = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class Source:
    """Where a document came from, for error messages: a path or ``preset:NAME``."""

    label: str

    def error(self, node: yaml.Node | None, message: str) -> ConfigError:
        """A ConfigError located at ``node`` (or at the document when None)."""
        line = node.start_mark.line + 1 if node is not None else 1
        return ConfigError(f"{self.label}:{line}: {message}")


def compose(text: str, source: Source) -> yaml.MappingNode:
    """The document's top-level mapping node; one document, no custom tags."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"{source.label}:{line}: not valid YAML: {error.problem}; "
                          "check the indentation and quoting on this line") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source.label}:1: not valid YAML: {error}") from None
    if not nodes:
        raise ConfigError(f"{source.label}:1: the file is empty; write at least "
                          "'policies:' and 'clients:' (see docs/policies.md)")
    if len(nodes) > 1:
        raise source.error(nodes[1], "a policy file holds one YAML document; remove the "
                           "second '---' document")
    root = nodes[0]
    if not isinstance(root, yaml.MappingNode):
        raise source.error(root, "the file must be a mapping with 'policies:' and 'clients:'")
    return root


def mapping(node: yaml.Node, source: Source, what: str,
            allowed: Iterable[str] | None = None) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    """(key, key node, value node) of a mapping; rejects duplicate and unknown keys."""
    if not isinstance(node, yaml.MappingNode):
        raise source.error(node, f"{what} must be a mapping (KEY: VALUE lines)")
    known = tuple(allowed) if allowed is not None else None
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise source.error(key_node, f"keys in {what} must be plain strings")
        key = key_node.value
        if key in seen:
            raise source.error(key_node, f"{key!r} appears twice in {what} (first on line "
                               f"{seen[key]}); keep one")
        seen[key] = key_node.start_mark.line + 1
        if known is not None and key not in known:
            raise source.error(key_node, f"unknown key {key!r} in {what}"
                               f"{suggest(key, known)}; allowed: {', '.join(known)}")
        yield key, key_node, value_node


def text(node: yaml.Node, source: Source, what: str) -> str:
    """A non-empty scalar, as written (quoted or not)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
        raise source.error(node, f"{what} must be a single value, e.g. {what}: NAME")
    if not node.value.strip():
        raise source.error(node, f"{what} is empty; write a value or remove the line")
    return str(node.value)


def integer(node: yaml.Node, source: Source, what: str) -> int:
    """A non-negative integer written in decimal."""
    raw = text(node, source, what)
    if not raw.isdigit():
        raise source.error(node, f"{what} must be a whole number such as 1000, not {raw!r}")
    return int(raw, 10)


def texts(node: yaml.Node, source: Source, what: str) -> list[tuple[str, yaml.Node]]:
    """One value or a list of values, each with its node (for its line)."""
    if isinstance(node, yaml.ScalarNode):
        return [(text(node, source, what), node)]
    if not isinstance(node, yaml.SequenceNode):
        raise source.error(node, f"{what} must be a value or a list of values")
    if not node.value:
        raise source.error(node, f"{what} is an empty list; list at least one value or "
                           "remove the key")
    return [(text(item, source, what), item) for item in node.value]


def sequence(node: yaml.Node, source: Source, what: str) -> list[yaml.Node]:
    """The items of a YAML list."""
    if not isinstance(node, yaml.SequenceNode):
        raise source.error(node, f"{what} must be a list ('- ' items)")
    return list(node.value)


def suggest(word: str, choices: Iterable[str]) -> str:
    """``; did you mean 'x'?`` when a close match exists, else empty."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
