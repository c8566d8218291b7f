"""Container-create body inspection with the daemon's JSON semantics (pure).

Theory of operation. dockerd decodes ``POST /containers/create`` with Go's
``encoding/json``, so this module reads the body the same way before a policy
judges it, or refuses to judge it:

- field names match ignoring ASCII case (``hostconfig`` is ``HostConfig``); Go
  also folds the long s U+017F onto ``s`` and the Kelvin sign U+212A onto ``k``,
  and nothing else onto ASCII (``casefold`` would wrongly fold ligatures: the
  daemon skips a ``HostConﬁg`` key, so it must not override ``HostConfig``);
  a key with a dotless or dotted i is refused (Go >= 1.21 folds it onto ``i``,
  older Go does not, so its meaning depends on the daemon's build); the last
  duplicate wins whatever its case,
  except that a repeated object merges into the first (Go decodes it into the
  same struct) and a repeated array decodes element by element into the first
  one's elements (so an object in it merges too), cut to the new length;
- ``null`` leaves a bool/string field as it was in Go, so a later ``null`` never
  hides an earlier value here (stricter than Go for slices, never looser);
- ``\\uXXXX`` escapes are decoded by the JSON parser before names are compared;
- anything that is not strict UTF-8 JSON with an object at the top, or holds a
  checked field of the wrong type, is unparseable: the caller denies it.

dockerd (runconfig.ContainerConfigWrapper) also reads host-config fields from
the TOP level of the body when ``HostConfig`` is absent (a deprecated embedded
struct), so every host-config check looks at both places.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The constraint names a policy can list under ``create: deny:``.
CHECKS = ("privileged", "host-mounts", "host-namespaces", "capabilities", "devices",
          "security-options", "root-user", "log-drivers", "sysctls", "volumes")
# ... and those that apply to volume.create (a grant's ``create: deny:`` covers both).
VOLUME_CHECKS = ("driver-options", "volume-drivers")
VOLUME_CHECKS_ALL = frozenset(VOLUME_CHECKS)
# The constraint names a policy can list under ``exec: deny:``.
EXEC_CHECKS = ("privileged", "root-user", "env", "tty", "stdin")
# Log drivers that write where the daemon keeps its own files, with the options
# that only shape those files (daemon/logger/jsonfilelog, local). Every other
# driver (syslog, gelf, fluentd, splunk, awslogs...) connects out from the
# daemon, in the HOST's network namespace: a container with --network none
# reaches host-local services through it.
_HARMLESS_LOG_OPTIONS = {
    "": frozenset(),
    "none": frozenset(),
    "json-file": frozenset({"max-size", "max-file", "compress", "labels", "labels-regex",
                            "env", "env-regex", "tag"}),
    "local": frozenset({"max-size", "max-file", "compress"}),
}

# Both used with fullmatch: Python's "$" would also match before a trailing newline.
# Docker's rule for named volumes (volume/local: validName without the length rule).
_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_NUMERIC_USER = re.compile(r"([0-9]+)(:[0-9]+)?")
_NAMESPACE_FIELDS = {
    # field (folded) -> values that keep the container in its own namespace
    "pidmode": frozenset({"", "private"}),
    "ipcmode": frozenset({"", "private", "shareable", "none"}),
    "utsmode": frozenset({"", "private"}),
    "usernsmode": frozenset({"", "private"}),
    "cgroupnsmode": frozenset({"", "private"}),
    "cgroup": frozenset({""}),
}


class UnparseableError(ValueError):
    """The body cannot be judged; the policy denies it."""


# encoding/json: ASCII case, plus U+017F and U+212A (equalFoldRight before Go 1.21,
# unicode.ToUpper(unicode.ToLower(r)) since); no other rune folds onto ASCII.
_GO_FOLD = str.maketrans({**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)},
                          "\u017f": "s", "\u212a": "k"})
# Go >= 1.21 folds these onto "i"; earlier versions keep them apart.
_BUILD_DEPENDENT = frozenset("\u0131\u0130")


def _fold(key: str) -> str:
    if not _BUILD_DEPENDENT.isdisjoint(key):
        raise UnparseableError(f"the field name {key!r} means different fields to "
                               "different Go versions")
    return key.translate(_GO_FOLD)


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is None and key in target:
        return
    target[key] = _merge(target.get(key), value)


def _merge(old: Any, value: Any) -> Any:
    """``value`` decoded over ``old``, the value an earlier duplicate field left."""
    if isinstance(value, dict) and isinstance(old, dict):
        for inner_key, inner_value in value.items():
            _set(old, inner_key, inner_value)
        return old
    if isinstance(value, list) and isinstance(old, list):
        # Go's decoder fills a repeated array INTO the elements the first one left
        # (decodeState.array never zeroes them), then cuts the length: a second
        # "Mounts": [{"Type": "volume"}] keeps the first one's VolumeOptions.
        merged = [_merge(earlier, item) if item is not None else earlier
                  for earlier, item in zip(old, value, strict=False)]
        return merged + value[len(merged):]
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Go decodes a repeated object field into the struct (or map) the first one
    # already filled: {"HostConfig": {"Privileged": true}, "HostConfig": {}} is
    # still privileged. So a repeated object merges into the first; anything
    # else, the last wins (except null, above).
    folded: dict[str, Any] = {}
    for key, value in pairs:
        _set(folded, _fold(key), value)
    return folded


def _reject_constant(name: str) -> Any:
    raise UnparseableError(f"{name} is not JSON")


def parse(body: bytes) -> dict[str, Any]:
    """The body as Go would see it: folded keys, last duplicate wins; UnparseableError otherwise."""
    try:
        text = body.decode("utf-8")
        document = json.loads(text, object_pairs_hook=_object,
                              parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise UnparseableError(f"the body is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise UnparseableError("the body is not a JSON object")
    return document


def _host_configs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    inner = doc.get("hostconfig")
    if inner is not None and not isinstance(inner, dict):
        raise UnparseableError("HostConfig is not an object")
    return [doc] if inner is None else [inner, doc]


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise UnparseableError(f"{field} is not a list")
    return value


def _string(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UnparseableError(f"{field} is not a string")
    return value


def _privileged(hc: dict[str, Any]) -> str | None:
    value = hc.get("privileged")
    if value is None or value is False:
        return None
    if value is True:
        return "privileged mode (HostConfig.Privileged)"
    raise UnparseableError("HostConfig.Privileged is not a boolean")


def _host_mounts(hc: dict[str, Any]) -> str | None:
    for bind in _list(hc.get("binds"), "HostConfig.Binds"):
        source = _string(bind, "HostConfig.Binds[]").split(":", 1)[0]
        if not _VOLUME_NAME.fullmatch(source):
            return f"a host bind mount (HostConfig.Binds {bind!r})"
    for mount in _list(hc.get("mounts"), "HostConfig.Mounts"):
        if not isinstance(mount, dict):
            raise UnparseableError("HostConfig.Mounts[] is not an object")
        kind = _string(mount.get("type"), "HostConfig.Mounts[].Type")
        if kind not in ("volume", "tmpfs"):
            return f"a mount of type {kind!r} (HostConfig.Mounts; only volume and tmpfs)"
        options = mount.get("volumeoptions")
        if isinstance(options, dict) and options.get("driverconfig") is not None:
            return "volume driver options (HostConfig.Mounts[].VolumeOptions.DriverConfig)"
        if options is not None and not isinstance(options, dict):
            raise UnparseableError("HostConfig.Mounts[].VolumeOptions is not an object")
    if _list(hc.get("volumesfrom"), "HostConfig.VolumesFrom"):
        return "another container's volumes (HostConfig.VolumesFrom)"
    if _string(hc.get("volumedriver"), "HostConfig.VolumeDriver") not in ("", "local"):
        return "a volume driver plugin (HostConfig.VolumeDriver)"
    return None


def _host_namespaces(hc: dict[str, Any]) -> str | None:
    network = _string(hc.get("networkmode"), "HostConfig.NetworkMode")
    # Network names cannot contain ':' (container:<id>) and 'host' is the host's stack.
    if network.casefold() == "host" or ":" in network:
        return f"network namespace {network!r} (HostConfig.NetworkMode)"
    for field, allowed in _NAMESPACE_FIELDS.items():
        value = _string(hc.get(field), f"HostConfig.{field}")
        if value not in allowed:
            return f"shared namespace {value!r} (HostConfig.{field})"
    # A legacy link copies the linked container's environment (often its secrets)
    # into the new one: reaching into another container like container:<id> does.
    if _list(hc.get("links"), "HostConfig.Links"):
        return "links to another container (HostConfig.Links copies its environment)"
    return None


def _capabilities(hc: dict[str, Any]) -> str | None:
    if _list(hc.get("capadd"), "HostConfig.CapAdd"):
        return "added capabilities (HostConfig.CapAdd)"
    if _list(hc.get("capabilities"), "HostConfig.Capabilities"):
        return "an explicit capability set (HostConfig.Capabilities)"
    return None


def _devices(hc: dict[str, Any]) -> str | None:
    for field in ("devices", "devicerequests", "devicecgrouprules"):
        if _list(hc.get(field), f"HostConfig.{field}"):
            return f"host devices (HostConfig.{field})"
    return None


def _security_options(hc: dict[str, Any]) -> str | None:
    if _list(hc.get("securityopt"), "HostConfig.SecurityOpt"):
        return "security options (HostConfig.SecurityOpt, e.g. seccomp=unconfined)"
    # An explicit list replaces dockerd's defaults; [] unmasks /proc/kcore and makes
    # /proc/sysrq-trigger writable (the CLI's --security-opt systempaths=unconfined).
    for field in ("maskedpaths", "readonlypaths"):
        if hc.get(field) is not None:
            _list(hc.get(field), f"HostConfig.{field}")
            return f"explicit /proc path masks (HostConfig.{field})"
    return None


def _log_drivers(hc: dict[str, Any]) -> str | None:
    config = hc.get("logconfig")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise UnparseableError("HostConfig.LogConfig is not an object")
    kind = _string(config.get("type"), "HostConfig.LogConfig.Type")
    options = config.get("config")
    if options is not None and not isinstance(options, dict):
        raise UnparseableError("HostConfig.LogConfig.Config is not an object")
    harmless = _HARMLESS_LOG_OPTIONS.get(kind)
    if harmless is None:
        return (f"log driver {kind!r} (HostConfig.LogConfig; it connects out from the "
                "host's network namespace)")
    # Keys are compared as parse() folded them; the daemon rejects a key in
    # another case as an unknown option, so folding never lets one through.
    for key in options or {}:
        if key not in harmless:
            return f"log option {key!r} of the {kind or 'default'} log driver"
    return None


def _sysctls(hc: dict[str, Any]) -> str | None:
    value = hc.get("sysctls")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UnparseableError("HostConfig.Sysctls is not an object")
    if value:
        return f"kernel parameters (HostConfig.Sysctls {', '.join(sorted(value))})"
    return None


_HOST_CONFIG_CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "privileged": _privileged,
    "host-mounts": _host_mounts,
    "host-namespaces": _host_namespaces,
    "capabilities": _capabilities,
    "devices": _devices,
    "security-options": _security_options,
    "log-drivers": _log_drivers,
    "sysctls": _sysctls,
}


def _root_user(doc: dict[str, Any]) -> str | None:
    # A user name could map to uid 0 in the image's /etc/passwd: only a numeric,
    # non-zero uid proves the process is not root ("00", "0:0" are root too).
    user = _string(doc.get("user"), "User")
    numeric = _NUMERIC_USER.fullmatch(user)
    if numeric is None or int(numeric.group(1), 10) == 0:
        return f"running as root or an unverifiable user (User {user!r}; write a numeric uid)"
    return None


def start_problem(body: bytes) -> str | None:
    """Why a container-start body must be refused; None when it is empty or ``{}``.

    Below API 1.24 dockerd applies a HostConfig sent with start (privileged,
    binds...), which would bypass every create constraint. Modern clients (the
    docker CLI, docker-py, the Go SDK) send no body.
    """
    if not body.strip():
        return None
    try:
        doc = parse(body)
    except UnparseableError as error:
        return f"the start body cannot be inspected: {error}"
    if doc:
        return "a start body with a configuration (below API 1.24 it applies a HostConfig)"
    return None


def named_volumes(body: bytes) -> tuple[list[str], bool]:
    """The named volumes a create body mounts, and whether it uses ``VolumesFrom``.

    ``Binds`` entries ``NAME:/path[:mode]`` whose source is a volume name, and
    ``Mounts`` of type ``volume`` with a ``Source``; anonymous volumes (no name:
    ``Config.Volumes``, a volume mount without ``Source``) are not listed. Raises
    UnparseableError when the body cannot be judged.
    """
    doc = parse(body)
    names: list[str] = []
    volumes_from = False
    for hc in _host_configs(doc):
        for bind in _list(hc.get("binds"), "HostConfig.Binds"):
            source = _string(bind, "HostConfig.Binds[]").split(":", 1)[0]
            if _VOLUME_NAME.fullmatch(source) and source not in names:
                names.append(source)
        for mount in _list(hc.get("mounts"), "HostConfig.Mounts"):
            if not isinstance(mount, dict):
                raise UnparseableError("HostConfig.Mounts[] is not an object")
            source = _string(mount.get("source"), "HostConfig.Mounts[].Source")
            if _string(mount.get("type"), "HostConfig.Mounts[].Type") == "volume" \
                    and source and source not in names:
                names.append(source)
        volumes_from = volumes_from or bool(
            _list(hc.get("volumesfrom"), "HostConfig.VolumesFrom"))
    return names, volumes_from


@dataclass(frozen=True)
class DaemonDefaults:
    """What the daemon at hand does for a create body that asks for nothing.

    A body copied from ``docker inspect`` (Watchtower recreates containers that
    way) spells these defaults out; a value equal to the default asks for nothing
    more than an empty field would. The strict value (``cgroupns="private"``)
    applies until the host was checked: ``serve`` reads its cgroup version at start.
    """

    # Engine 20.10+: cgroupns is "host" by default on cgroup v1 hosts, "private" on v2.
    cgroupns: str = "private"


STRICT = DaemonDefaults()

# dockerd's default /proc and /sys masks (oci/defaults.go, Engine 20.10; later engines
# add paths). A list holding all of these masks at least what the default masks.
DEFAULT_MASKED_PATHS = frozenset({
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware"})
DEFAULT_READONLY_PATHS = frozenset({
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"})


def _without_daemon_defaults(hc: dict[str, Any], defaults: DaemonDefaults) -> dict[str, Any]:
    """``hc`` without the fields that only restate what the daemon does anyway."""
    kept = dict(hc)
    if defaults.cgroupns == "host" and kept.get("cgroupnsmode") == "host":
        del kept["cgroupnsmode"]
    for field, base in (("maskedpaths", DEFAULT_MASKED_PATHS),
                        ("readonlypaths", DEFAULT_READONLY_PATHS)):
        value = kept.get(field)
        if isinstance(value, list) and all(isinstance(path, str) for path in value) \
                and base <= set(value):
            del kept[field]  # masks (or protects) at least the defaults: more is safer
    return kept


def create_violations(body: bytes, deny: frozenset[str],
                      defaults: DaemonDefaults = STRICT) -> tuple[list[str], str]:
    """What a container-create body asks for that ``deny`` forbids, and its Image.

    Fields equal to what the daemon does anyway (``defaults``) ask for nothing.
    The ``volumes`` check needs the daemon's facts about each named volume: the
    policy applies it with ``named_volumes``. Raises UnparseableError when the
    body cannot be judged.
    """
    doc = parse(body)
    problems: list[str] = []
    for raw in _host_configs(doc):
        hc = _without_daemon_defaults(raw, defaults)
        for check, function in _HOST_CONFIG_CHECKS.items():
            if check in deny:
                problem = function(hc)
                if problem is not None and problem not in problems:
                    problems.append(problem)
    if "root-user" in deny:
        problem = _root_user(doc)
        if problem is not None:
            problems.append(problem)
    return problems, _string(doc.get("image"), "Image")


def _command(value: Any) -> list[str]:
    """``Cmd`` of an exec: Go's strslice takes a list of strings or one string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [_string(item, "Cmd[]") for item in _list(value, "Cmd")]


def _flag(doc: dict[str, Any], field: str) -> bool:
    value = doc.get(field.lower())
    if value is None or isinstance(value, bool):
        return bool(value)
    raise UnparseableError(f"{field} is not a boolean")


def exec_violations(body: bytes, deny: frozenset[str]) -> tuple[list[str], list[str]]:
    """What an exec-create body asks for that ``deny`` forbids, and its command.

    Read like a create body (Go's field folding, last duplicate wins). An empty
    ``User`` runs as the container's user, root unless the image says otherwise:
    only a numeric non-zero uid counts as not root. Raises UnparseableError when
    the body cannot be judged.
    """
    doc = parse(body)
    problems: list[str] = []
    if "privileged" in deny and _flag(doc, "Privileged"):
        problems.append("privileged mode (Privileged)")
    if "root-user" in deny:
        problem = _root_user(doc)
        if problem is not None:
            problems.append(problem)
    if "env" in deny and _list(doc.get("env"), "Env"):
        problems.append("environment variables (Env)")
    if "tty" in deny and _flag(doc, "Tty"):
        problems.append("a terminal (Tty)")
    if "stdin" in deny and _flag(doc, "AttachStdin"):
        problems.append("the exec's standard input (AttachStdin)")
    return problems, _command(doc.get("cmd"))


def volume_create(body: bytes, labels: dict[str, str]) -> tuple[str, str, bool, bytes]:
    """A volume-create body rebuilt with ``labels`` set: (Name, Driver, has options, body).

    The forwarded body is this function's own (``{"Name", "Driver",
    "DriverOpts", "Labels"}``), so the daemon creates exactly what was judged:
    the client's fields as Go reads them, with ``labels`` over any the client
    sent. Other fields (``ClusterVolumeSpec`` is for swarm) are refused.
    Raises UnparseableError when the body cannot be judged.
    """
    doc = _pairs_document(body) if body.strip() else {}
    name = driver = ""
    options: dict[str, str] = {}
    given: dict[str, str] = {}
    for key, value in doc.items():
        field = _fold(key)
        if field == "name":
            name = _string(value, "Name")
        elif field == "driver":
            driver = _string(value, "Driver")
        elif field in ("driveropts", "labels"):
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str)
                                                      for v in value.values()):
                raise UnparseableError(f"{key} is not an object of strings")
            (options if field == "driveropts" else given).update(value)
        elif value is not None:  # docker/cli omits ClusterVolumeSpec unless swarm
            raise UnparseableError(f"the volume create field {key!r} is not one dockgate "
                                   "judges (Name, Driver, DriverOpts, Labels)")
    rebuilt = {"Name": name, "Driver": driver, "DriverOpts": options,
               "Labels": {**given, **labels}}
    return name, driver, bool(options), json.dumps(rebuilt).encode()


def volume_create_violation(deny: frozenset[str], driver: str, options: bool) -> str | None:
    """What a volume create asks for that ``deny`` forbids, or None."""
    if "volume-drivers" in deny and driver not in ("", "local"):
        return f"the volume driver {driver!r} (a plugin)"
    if "driver-options" in deny and options:
        return ("volume driver options (DriverOpts; with the local driver, "
                "o=bind,device=/ is a host bind mount)")
    return None


def _pairs_document(body: bytes) -> dict[str, Any]:
    """The top-level object with its keys as sent (repeats: the last one kept)."""
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise UnparseableError(f"the body is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise UnparseableError("the body is not a JSON object")
    return document
