"""Coverage-guided fuzzer: container-create body inspection against a Go-semantics model.

Input: the body of ``POST /containers/create``. ``check`` decodes it twice:

* with ``dockgate.bodies.parse`` (what every create check reads), and
* with a reference decoder written here, independently, after Go's encoding/json as
  dockerd runs it: the JSON object kept as ordered (key, value) pairs (``json``'s
  object_pairs_hook, duplicates and all), each key matched to a Go struct field of the
  types below by Go's case folding (ASCII, plus U+017F for s and U+212A for k); a
  repeated field decodes into the value the earlier one left, so a repeated struct
  merges and a repeated slice decodes element by element INTO the earlier elements
  (Go's decodeState.array never zeroes them); invalid UTF-8 and lone surrogates in
  strings become U+FFFD; a value of the wrong type for its field makes the daemon refuse
  the request (400).

Invariant: whenever the daemon would accept the body and the inspector can read it,
both see the same values in every field a check reads (privileged, binds, mounts with
their type and driver config, volumes-from, volume driver, the namespace modes, links,
capabilities, devices, security options, masked paths, image, user), at the top level
and under HostConfig. Deliberate, documented differences are modelled, not
tolerated: ``null`` keeps an earlier value (dockgate is stricter than Go there), and a
key with a dotless or dotted i is build-dependent (the inspector refuses the body,
the reference claims nothing).

    python fuzz/fuzz_body.py [libFuzzer flags] [CORPUS...]        (scripts/fuzz runs it)
"""

from __future__ import annotations

import json
import re
from typing import Any

from libfuzzer import fuzz

from dockgate import bodies

# Go types, as far as the checks look: "bool", "string", ("list", T), ("struct", {...}),
# ("map", T); a struct field's Go name is its JSON name (no tags rename them here).
STRINGS = ("list", "string")
DRIVER = ("struct", {"Name": "string", "Options": ("map", "string")})
MOUNT = ("struct", {"Type": "string", "Source": "string", "Target": "string",
                    "VolumeOptions": ("struct", {"DriverConfig": DRIVER})})
OBJECT: tuple[str, dict[str, Any]] = ("struct", {})  # a struct none of whose fields a check reads
HOST_CONFIG_FIELDS: dict[str, Any] = {
    "Privileged": "bool", "Binds": STRINGS, "Mounts": ("list", MOUNT),
    "VolumesFrom": STRINGS, "VolumeDriver": "string", "NetworkMode": "string",
    "PidMode": "string", "IpcMode": "string", "UTSMode": "string", "UsernsMode": "string",
    "CgroupnsMode": "string", "Cgroup": "string", "Links": STRINGS, "CapAdd": STRINGS,
    "Capabilities": STRINGS, "Devices": ("list", OBJECT), "DeviceRequests": ("list", OBJECT),
    "DeviceCgroupRules": STRINGS, "SecurityOpt": STRINGS, "MaskedPaths": STRINGS,
    "ReadonlyPaths": STRINGS,
}
HOST_CONFIG = ("struct", HOST_CONFIG_FIELDS)
# ContainerConfigWrapper: Config's fields, HostConfig, and (deprecated) HostConfig's
# fields embedded at the top level.
WRAPPER = ("struct", {"Image": "string", "User": "string", "HostConfig": HOST_CONFIG,
                      **HOST_CONFIG_FIELDS})


class DaemonRefusesError(Exception):
    """The daemon would answer 400: nothing to compare."""


class BuildDependentError(Exception):
    """Go versions disagree about this body: the inspector must refuse it, that is all."""


class Pairs(list[tuple[str, Any]]):
    """A JSON object as Go's decoder walks it: keys in order, duplicates kept."""


def _go_string(text: str) -> str:
    # Python keeps lone surrogates from \ud800 escapes; Go writes U+FFFD instead.
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def go_matches(key: str, field: str) -> bool:
    """encoding/json's case-insensitive field match (equalFold / foldName)."""
    if len(key) != len(field):
        return False
    for rune, letter in zip(key, field, strict=True):
        if rune == letter or (rune.isascii() and rune.lower() == letter.lower()):
            continue
        if (rune, letter.lower()) in (("\u017f", "s"), ("\u212a", "k")):
            continue
        return False
    return True


def _decode(value: Any, kind: Any, old: Any) -> Any:
    if value is None:
        return old  # null: Go keeps bools and strings; dockgate keeps everything
    if kind == "bool":
        if not isinstance(value, bool):
            raise DaemonRefusesError
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise DaemonRefusesError
        return _go_string(value)
    tag, inner = kind
    if tag == "list":
        if not isinstance(value, list) or isinstance(value, Pairs):  # Pairs is an object
            raise DaemonRefusesError
        previous = old or []
        return [_decode(item, inner, previous[i] if i < len(previous) else None)
                for i, item in enumerate(value)]
    if tag == "map":
        if not isinstance(value, Pairs):
            raise DaemonRefusesError
        merged = dict(old or {})
        for key, item in value:
            merged[_go_string(key)] = _decode(item, inner, merged.get(key))
        return merged
    if not isinstance(value, Pairs):
        raise DaemonRefusesError
    result = dict(old or {})
    for key, item in value:
        for field, field_kind in inner.items():
            if go_matches(_go_string(key), field):
                result[field] = _decode(item, field_kind, result.get(field))
                break
    return result


def _has_build_dependent_key(value: Any) -> bool:
    if isinstance(value, Pairs):
        return any("\u0130" in k or "\u0131" in k or _has_build_dependent_key(v)
                   for k, v in value)
    if isinstance(value, list):
        return any(_has_build_dependent_key(v) for v in value)
    return False


def _no_constants(name: str) -> Any:
    raise DaemonRefusesError(name)


def reference(body: bytes) -> dict[str, Any]:
    """The body decoded as dockerd decodes it, restricted to the fields the checks read."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    decoder = json.JSONDecoder(object_pairs_hook=Pairs, parse_constant=_no_constants)
    try:
        document, _ = decoder.raw_decode(text)  # Go's Decoder reads one value
    except (json.JSONDecodeError, RecursionError):
        raise DaemonRefusesError from None
    if _has_build_dependent_key(document):
        raise BuildDependentError
    decoded: dict[str, Any] = _decode(document, WRAPPER, None)
    if decoded is None:  # a top-level null
        raise DaemonRefusesError
    return decoded


# --- The inspector's view, in the same shape -------------------------------------------

def _project(value: Any, kind: Any) -> Any:
    """``bodies.parse`` output (folded keys, raw JSON values) in the reference's shape."""
    if value is None:
        return None
    if kind in ("bool", "string"):
        assert isinstance(value, bool if kind == "bool" else str), \
            f"the inspector reads {value!r} where the daemon reads a {kind}"
        return value
    tag, inner = kind
    if tag == "list":
        assert isinstance(value, list), f"the inspector reads {value!r}, the daemon a list"
        return [_project(item, inner) for item in value]
    assert isinstance(value, dict), f"the inspector reads {value!r}, the daemon an object"
    if tag == "map":
        return "map"
    return {field: _project(value[field.lower()], field_kind)
            for field, field_kind in inner.items() if field.lower() in value}


def _shape(value: Any, kind: Any) -> Any:
    """The reference's values with zero values spelled as the projection spells them."""
    if value is None or kind in ("bool", "string"):
        return value
    tag, inner = kind
    if tag == "list":
        return [_shape(item, inner) for item in value]
    if tag == "map":
        return "map"
    return {field: _shape(value[field], field_kind) for field, field_kind in inner.items()
            if field in value and value[field] is not None}


def _drop_nulls(view: Any) -> Any:
    if isinstance(view, dict):
        return {k: _drop_nulls(v) for k, v in view.items() if v is not None}
    if isinstance(view, list):
        return [_drop_nulls(v) for v in view]
    return view


def check(data: bytes) -> None:
    try:
        doc = bodies.parse(data)
    except bodies.UnparseableError:
        return  # refused: the policy denies, whatever the daemon would do
    try:
        expected = reference(data)
    except DaemonRefusesError:
        return
    except BuildDependentError as error:
        raise AssertionError("the inspector read a body with a build-dependent key") from error
    ours = _drop_nulls(_project(doc, WRAPPER))
    theirs = _drop_nulls(_shape(expected, WRAPPER))
    assert ours == theirs, f"the inspector reads {ours!r}, the daemon {theirs!r}"


if __name__ == "__main__":
    fuzz(check)
