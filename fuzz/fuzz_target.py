"""Coverage-guided fuzzer: request-target parsing and route classification.

Input: one byte choosing the method, then the request target as the client sends it.
Invariants, checked by ``check``:

* ``routes.parse_target`` returns a Target or raises BadTarget, nothing else;
* nothing accepted contains a dot segment ("." or "..") after any number of
  percent-decodings, nor an empty segment, nor a decoded "/" that was not one;
* an accepted target classifies as a model of the daemon's router (gorilla/mux) says:
  the model, written here from the route table's rows (method, template, versioned)
  with its own regexes, tries every row in registration order, the /v{version:[0-9.]+}
  form before the plain one, on the path decoded once, and takes the first match.
  ``classify`` must return that row with the same parameters, or None only where it
  documents refusing to guess: an object parameter that would be empty, or a path
  that more than one row matches;
* a match's ``with_param`` with its own values rebuilds the same target.

    python fuzz/fuzz_target.py [libFuzzer flags] [CORPUS...]      (scripts/fuzz runs it)
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from libfuzzer import fuzz

from dockgate import routes
from dockgate.errors import BadTarget

METHODS = ("GET", "POST", "DELETE", "HEAD", "PUT", "OPTIONS", "PATCH", "get")

# moby's variables: {name:.*} for the objects addressed by name or ID, gorilla/mux's
# default [^/]+ for a bare {id} (swarm objects, checkpoints, pprof profiles).
ONE_SEGMENT = {"service", "node", "task", "secret", "config", "checkpoint", "profile"}
SHAPE = {"segment": "[^/]+", "nonempty": ".+"}
OBJECTS = {"container", "image", "exec", "network", "volume", "plugin"} | ONE_SEGMENT
VERSION = "/v[0-9.]+"


def _regex(template: str) -> re.Pattern[str]:
    out = "^"
    for literal, name, shape in re.findall(r"([^{]*)(?:\{(\w+)(?::(\w+))?\})?", template):
        out += re.escape(literal)
        if name:
            pattern = SHAPE[shape] if shape else "[^/]+" if name in ONE_SEGMENT else ".*"
            out += f"(?P<{name}>{pattern})"
    return re.compile(out + "$")


# Registration order: each row as /v{version}/PATH, then /PATH (moby's router setup).
MODEL: list[tuple[str, re.Pattern[str], routes.Route]] = []
for row in routes.ROUTES:
    if row.versioned:
        MODEL.append((row.method, re.compile(VERSION + _regex(row.template).pattern[1:]), row))
    MODEL.append((row.method, _regex(row.template), row))


def mux(method: str, path: str) -> list[tuple[routes.Route, dict[str, str]]]:
    """Every row the model matches, in the daemon's order (the first one runs)."""
    found = []
    for row_method, pattern, row in MODEL:
        matched = pattern.match(path) if row_method == method else None
        if matched is not None:
            found.append((row, matched.groupdict()))
    return found


def decodings(path: str) -> list[str]:
    """The path, decoded again and again until nothing changes (bounded by its length)."""
    stages = [path]
    while "%" in stages[-1] and len(stages) <= len(path):
        decoded = unquote(stages[-1], errors="surrogateescape")
        if decoded == stages[-1]:
            break
        stages.append(decoded)
    return stages


def check(data: bytes) -> None:
    if not data:
        return
    method = METHODS[data[0] % len(METHODS)]
    raw = data[1:].decode("latin-1")
    try:
        target = routes.parse_target(raw)
    except BadTarget:
        return
    path = target.raw_path
    for stage in decodings(path):
        segments = stage.split("/")[1:]
        assert not {".", ".."} & set(segments), \
            f"accepted {raw!r}: a decoding has a dot segment: {stage!r}"
        assert "" not in segments[:-1], f"accepted {raw!r}: a decoding has '//': {stage!r}"
        assert stage.count("/") == path.count("/"), \
            f"accepted {raw!r}: a decoding adds a '/': {stage!r}"
    assert target.path == unquote(path, errors="strict")

    try:
        match = routes.classify(method, target)
    except BadTarget:
        # Spaces, non-ASCII and ? # \ are routed only inside a network name: outside
        # one, classify refuses them (routes.Param.free_text). That is a refusal.
        assert target.free_text, f"{method} {raw!r}: classify refused a plain target"
        return
    found = mux(method, unquote(path))
    if match is None:
        if found:
            row, params = found[0]
            empty = any(params.get(name) == "" for name in OBJECTS)
            assert empty or len({r for r, _ in found}) > 1, \
                f"{method} {raw!r}: the daemon runs {row.operation}, classify says no route"
        return
    assert found, f"{method} {raw!r}: classify says {match.operation}, the daemon has no route"
    row, params = found[0]
    assert match.route == row, \
        f"{method} {raw!r}: classify says {match.operation}, the daemon runs {row.operation}"
    assert dict(match.params) == params, f"{method} {raw!r}: parameters differ"
    for name, value in params.items():
        # Setting a parameter to its own value must rebuild a target of the same meaning
        # (with_param raises ValueError when it cannot: a finding here).
        again = routes.parse_target(match.with_param(name, value))
        assert (again.version, again.query) == (target.version, target.query)


if __name__ == "__main__":
    fuzz(check)
