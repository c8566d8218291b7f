"""What a scope hides: volume scopes, exec rules, reference filters and error answers (pure).

A client under a scoped policy must not learn whether an object outside its
scope exists. Three places of the Engine API would tell it:

- ``before``/``since`` filters of ``GET /containers/json`` name a container: the
  daemon answers ``[]`` when it exists and 500 "no such container" when it does
  not. ``reference_filters`` finds them; the decider resolves each against the
  scope first and answers "no such container" itself for anything out of scope
  or unknown, and forwards the in-scope ones as full IDs (``with_filters``).
- A create whose name is taken answers 409 with the full ID of the container
  holding it. ``ScopedErrors`` rewrites it to the same message without the ID.
- Any other daemon error to a scoped client passes with the daemon's status and
  message when the message names no ID the client did not send itself
  (``ScopedErrors``), else it is replaced by a message that names nothing.

Named volumes are a shared namespace too: ``VolumeScope`` says which a grant
covers (names, globs, labels, or ``own``: created through a grant of the same
policy, which dockgate marks with the ``OWNER_LABEL`` label on volume.create).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal
from urllib.parse import quote, unquote_plus

from dockgate import bodies
from dockgate.policy_match import describe_scope

# Set by dockgate on every volume.create it forwards for a policy: the policy's name.
OWNER_LABEL = "dockgate.policy"
# The container-list filters whose values are container references (moby:
# daemon/list.go resolves them with GetContainer and fails when there is none).
REFERENCE_FILTERS = ("before", "since")
# An ID in a daemon message: 12 hex digits (the short form) or more.
_HEX_ID = re.compile(r"[0-9a-f]{12,}")


@dataclass(frozen=True)
class VolumeScope:
    """Named volumes a grant covers: any exact name, any glob, all the labels, or its own."""

    names: frozenset[str] = frozenset()
    globs: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    own: bool = False

    def matches(self, policy: str, name: str, labels: Mapping[str, str]) -> bool:
        """Whether a volume with this name and these labels is in scope for ``policy``."""
        if self.by_name(name):
            return True
        if self.own and labels.get(OWNER_LABEL) == policy:
            return True
        return bool(self.labels) and all(labels.get(key) == value
                                         for key, value in self.labels)

    def by_name(self, name: str) -> bool:
        """Whether the name alone puts a volume in scope (so it may be created on first use)."""
        return name in self.names or any(fnmatchcase(name, glob) for glob in self.globs)

    def describe(self) -> str:
        """Human form for denials: ``name cache or own volumes``."""
        parts = describe_scope(self.names, self.globs, self.labels)
        if self.own:
            parts.append("volumes created through this policy")
        return " or ".join(parts)


# A restricted create (create: deny: [volumes] or [all]) without a volumes: scope.
OWN_VOLUMES = VolumeScope(own=True)


@dataclass(frozen=True)
class VolumeFilter:
    """Keeps the volumes of ``GET /volumes`` that one of the scopes covers."""

    policy: str
    scopes: tuple[VolumeScope, ...]
    mode: Literal["json-list", "json-lines", "json-object"] = "json-list"
    list_key: str | None = "Volumes"

    def rewrite(self, item: dict[str, Any]) -> dict[str, Any]:
        return item

    def keep(self, item: Mapping[str, Any]) -> bool:
        name = item.get("Name")
        labels = item.get("Labels") or {}
        if not isinstance(name, str) or not isinstance(labels, dict):
            return False
        return any(scope.matches(self.policy, name, labels) for scope in self.scopes)


@dataclass(frozen=True)
class ExecRules:
    """What an exec.create body may ask for: ``exec: {deny: [...], commands: [...]}``."""

    deny: frozenset[str]
    # Each command is a list of globs matched element by element against Cmd, same length.
    commands: tuple[tuple[str, ...], ...] = ()

    def problem(self, body: bytes) -> str | None:
        """Why this exec body breaks the rules, or None."""
        try:
            problems, command = bodies.exec_violations(body, self.deny)
        except bodies.UnparseableError as error:
            return f"the exec body cannot be inspected: {error}"
        if problems:
            return f"the exec asks for {problems[0]}"
        if self.commands and not any(
                len(pattern) == len(command)
                and all(fnmatchcase(arg, glob) for arg, glob in zip(command, pattern,
                                                                    strict=True))
                for pattern in self.commands):
            return f"the command {command!r} matches none of the grant's exec commands"
        return None


# ---------------------------------------------------------------------------
# Reference filters of container lists


class FilterError(ValueError):
    """The ``filters`` parameter cannot be judged."""


def reference_filters(params: Mapping[str, list[str]]) -> tuple[dict[str, Any] | None,
                                                                list[str]]:
    """The decoded ``filters`` of a list (None when absent) and the container references in it.

    Read as the daemon reads it (filters.FromJSON: an object of lists or of
    ``{value: true}`` maps; keys exact, the last duplicate wins). Raises
    FilterError when it cannot be read that way or is given twice.
    """
    given = params.get("filters", [])
    if not given or given == [""]:
        return None, []
    if len(given) > 1:
        raise FilterError("filters is given more than once; send one JSON object")
    try:
        document = json.loads(given[0], parse_constant=_no_constant)
    except ValueError as error:
        raise FilterError(f"filters is not JSON ({error})") from None
    if not isinstance(document, dict):
        raise FilterError("filters is not a JSON object")
    refs: list[str] = []
    for key in REFERENCE_FILTERS:
        for value in _filter_values(document.get(key), key):
            if value not in refs:
                refs.append(value)
    return document, refs


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _filter_values(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict) and all(v is True for v in value.values()):
        return list(value)
    raise FilterError(f"filter {key!r} is neither a list of strings nor a map of true")


def with_filters(raw_target: str, document: Mapping[str, Any],
                 resolved: Mapping[str, str]) -> str:
    """``raw_target`` with the reference filters' values replaced by ``resolved`` (full IDs)."""
    fixed = dict(document)
    for key in REFERENCE_FILTERS:
        value = fixed.get(key)
        if isinstance(value, list):
            fixed[key] = [resolved[v] for v in value]
        elif isinstance(value, dict):
            fixed[key] = {resolved[v]: True for v in value}
    path, _, query = raw_target.partition("?")
    encoded = quote(json.dumps(fixed, separators=(",", ":")), safe="")
    pieces = [f"filters={encoded}" if unquote_plus(piece.partition("=")[0]) == "filters"
              else piece for piece in query.split("&")]
    return f"{path}?{'&'.join(pieces)}"


def no_such_container(ref: str) -> tuple[int, str]:
    """What the daemon answers a list filter naming a container it does not know."""
    return 500, f"no such container {ref}"


# ---------------------------------------------------------------------------
# Error answers


@dataclass(frozen=True)
class ScopedErrors:
    """Daemon errors to a scoped client: passed when they name nothing it did not send.

    ``sent`` is what the client sent (the decoded target and query). ``name`` is
    the container name of a create: a 409 then says the name is taken, without
    the ID of the container that holds it.
    """

    sent: str
    name: str | None = None

    def rewrite(self, status: int, body: bytes) -> bytes:
        if self.name is not None and status == 409:
            return _message(f"Conflict. The container name \"/{self.name}\" is already in "
                            "use. You have to remove (or rename) that container to be able "
                            "to reuse that name.")
        text = body.decode("utf-8", "replace")
        if all(found in self.sent for found in _HEX_ID.findall(text)):
            return body
        return _message(f"dockgate: the daemon refused this request ({status}); its answer "
                        "named an object outside this policy's scope, so it is not shown")


def _message(message: str) -> bytes:
    return json.dumps({"message": message}).encode() + b"\n"
