"""What a grant can be scoped by, and who a client is (pure).

- ``ContainerScope``: a container's real name (exact), explicit globs, labels.
  It is checked against what the daemon resolved (``ContainerFacts``), never
  against the reference the client typed, so ``/gw``, a full ID or an ID
  prefix are all judged by the container they name.
- Image references, normalized the way the docker CLI shows them
  (``docker.io/library/`` dropped), matched against patterns.
- Query parameters whose value changes what an operation does (a kill
  ``signal``, ``stdin`` on attach, ``follow`` on logs), normalized as dockerd
  parses them before comparison.
- ``ClientRule``: source address or network, unix peer uid/gid, TLS client
  certificate CN/SAN, listener, and the container the peer is (its name, compose
  service and project, labels; resolved by the shell). Every criterion given must
  hold.
"""

from __future__ import annotations

import functools
import ipaddress
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from dockgate.decision import Client

# Docker's own rule for container names (daemon/names: RestrictedNameChars).
# Used with fullmatch: Python's "$" would also match before a trailing newline.
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
GLOB_CHARS = frozenset("*?[")
# The labels docker compose puts on every container it creates.
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_PROJECT = "com.docker.compose.project"


def describe_scope(names: frozenset[str], globs: tuple[str, ...],
                   labels: tuple[tuple[str, str], ...]) -> list[str]:
    """The parts of a scope's human form: ``name gw``, ``name matching gw-*``, ``labels a=b``."""
    parts = []
    if names:
        parts.append("name " + " or ".join(sorted(names)))
    if globs:
        parts.append("name matching " + " or ".join(globs))
    if labels:
        parts.append("labels " + ", ".join(f"{k}={v}" for k, v in labels))
    return parts


@dataclass(frozen=True)
class ContainerScope:
    """Containers a grant covers: any exact name, any glob, or all the labels."""

    names: frozenset[str] = frozenset()
    globs: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether a container with this real name and these labels is in scope."""
        if name in self.names:
            return True
        if any(fnmatchcase(name, glob) for glob in self.globs):
            return True
        return bool(self.labels) and all(labels.get(key) == value
                                         for key, value in self.labels)

    def describe(self) -> str:
        """Human form for reports: ``name gw or labels a=b``."""
        return " or ".join(describe_scope(self.names, self.globs, self.labels))


def primary_name(names: object) -> str | None:
    """The container's own name from a list item's ``Names`` (``["/gw", "/web/gw"]``).

    Names with a second ``/`` are legacy link aliases (``/web/gw`` is how ``web``
    sees ``gw``); they are not the container's name.
    """
    if not isinstance(names, list):
        return None
    for entry in names:
        if isinstance(entry, str) and entry.startswith("/") and "/" not in entry[1:]:
            return entry[1:]
    return None


# How Docker Hub references may be spelled; the docker CLI shows them without.
_HUB_PREFIXES = ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                 "index.docker.io/")


def _without_hub_prefix(name: str) -> str:
    for prefix in _HUB_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def normalize_image(reference: str) -> str:
    """``nginx`` → ``nginx:latest``; ``docker.io/library/x:1`` → ``x:1``; digests kept."""
    ref = reference.strip()
    name, at, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not at:
        name += ":latest"
    return f"{_without_hub_prefix(name)}{at}{digest}"


def image_matches(reference: str, patterns: tuple[str, ...]) -> bool:
    """Whether an image reference matches a pattern.

    A pattern without a tag or digest (``nginx``, ``mcp/*``) covers every tag and
    digest of the repositories it names; with one (``nginx:1.27``) it is matched
    against the whole normalized reference.
    """
    ref = normalize_image(reference)
    repo = re.split(r"[@]|:(?=[^/]*$)", ref, maxsplit=1)[0]
    return any(fnmatchcase(ref, pattern) or fnmatchcase(repo, pattern) for pattern in patterns)


def normalize_pattern(pattern: str) -> str:
    """Image patterns are written like references; drop ``docker.io/library/``."""
    return _without_hub_prefix(pattern)


# Linux signal numbers, for "9" == "KILL" == "SIGKILL" (dockerd's signal.ParseSignal
# accepts a number or a name with or without the SIG prefix, any case).
SIGNALS = {
    "1": "HUP", "2": "INT", "3": "QUIT", "4": "ILL", "5": "TRAP", "6": "ABRT", "7": "BUS",
    "8": "FPE", "9": "KILL", "10": "USR1", "11": "SEGV", "12": "USR2", "13": "PIPE",
    "14": "ALRM", "15": "TERM", "16": "STKFLT", "17": "CHLD", "18": "CONT", "19": "STOP",
    "20": "TSTP", "21": "TTIN", "22": "TTOU", "23": "URG", "24": "XCPU", "25": "XFSZ",
    "26": "VTALRM", "27": "PROF", "28": "WINCH", "29": "IO", "30": "PWR", "31": "SYS",
}
SIGNAL_NAMES = frozenset(SIGNALS.values())
# Query parameters dockerd reads as booleans (httputils.BoolValue).
BOOL_PARAMS = frozenset({"stdin", "stdout", "stderr", "stream", "logs", "follow",
                         "timestamps"})
# What dockerd does when the parameter is absent, per operation.
QUERY_DEFAULTS = {
    ("container.kill", "signal"): "KILL",
    ("container.logs", "follow"): "false",
    ("container.attach", "stdin"): "false",
    ("container.attach.websocket", "stdin"): "false",
    ("container.stats", "stream"): "true",
}


def normalize_query_value(param: str, value: str) -> str:
    """A query value as dockerd understands it: signals by name, booleans as true/false."""
    if param == "signal":
        if re.fullmatch(r"[+-]?[0-9]+", value):  # strconv.Atoi: sign and leading zeros
            return SIGNALS.get(str(int(value, 10)), value)
        return value.upper().removeprefix("SIG")
    if param in BOOL_PARAMS:
        lowered = value.strip().lower()
        return "false" if lowered in ("", "0", "no", "false", "none") else "true"
    return value


@dataclass(frozen=True)
class QueryRule:
    """The values one query parameter may take (after normalization)."""

    param: str
    values: frozenset[str]

    def admits(self, operation: str, params: Mapping[str, list[str]]) -> bool:
        """Every occurrence (or the daemon's default when absent) is an allowed value."""
        given = params.get(self.param)
        if not given:
            default = QUERY_DEFAULTS.get((operation, self.param), "")
            return default in self.values
        return all(normalize_query_value(self.param, v) in self.values for v in given)


@functools.lru_cache(maxsize=64)
def normalize_listener(url: str) -> str:
    """One spelling per listener: ``TCP://[0:0::0]:2375`` and ``tcp://[::]:2375`` are one.

    Scheme and host lower-cased, IP addresses in their short form (IPv6 in brackets,
    as the startup log prints them), unix paths normalised. A host name stays a name:
    ``localhost`` is not rewritten to an address it may or may not resolve to.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "unix":
        return f"unix://{posixpath.normpath(parts.path)}" if parts.path else url
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return url
    if host is None or port is None:
        return url
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        host = host.lower()
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class ClientRule:
    """Binds clients to a policy; every criterion that is set must match."""

    policy: str
    label: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    cert_cns: frozenset[str] = frozenset()
    cert_sans: frozenset[str] = frozenset()
    listeners: frozenset[str] = frozenset()
    name: str | None = field(default=None)
    # The container the peer is (decision.Client.container): its name without "/",
    # its com.docker.compose.service / .project labels, other labels (all must match).
    containers: frozenset[str] = frozenset()
    compose_services: frozenset[str] = frozenset()
    compose_projects: frozenset[str] = frozenset()
    container_labels: tuple[tuple[str, str], ...] = ()

    @property
    def names_container(self) -> bool:
        """Whether the rule needs to know which container the client is."""
        return bool(self.containers or self.compose_services or self.compose_projects
                    or self.container_labels)

    def matches(self, client: Client) -> bool:
        """Whether this client is the one the rule describes."""
        return self.matches_peer(client) and (not self.names_container
                                              or self.container_matches(client))

    def matches_peer(self, client: Client) -> bool:
        """Whether every criterion but the container's holds."""
        if self.listeners and normalize_listener(client.listener) not in self.listeners:
            return False
        if self.networks and not _in_networks(client.address, self.networks):
            return False
        if self.uids and client.uid not in self.uids:
            return False
        if self.gids and client.gid not in self.gids:
            return False
        if self.cert_cns and client.cert_cn not in self.cert_cns:
            return False
        return not self.cert_sans or bool(self.cert_sans.intersection(client.cert_sans))

    def container_matches(self, client: Client) -> bool:
        """Whether the client's resolved container has the name and labels asked for."""
        container = client.container
        if container is None:
            return False
        labels = container.labels
        if self.containers and container.name not in self.containers:
            return False
        if self.compose_services and labels.get(COMPOSE_SERVICE) not in self.compose_services:
            return False
        if self.compose_projects and labels.get(COMPOSE_PROJECT) not in self.compose_projects:
            return False
        return all(labels.get(key) == value for key, value in self.container_labels)


def peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer address as an IP (IPv4-mapped as IPv4, no zone); None if it is not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # A dual-stack [::] listener sees 127.0.0.2 as ::ffff:127.0.0.2.
        return ip.ipv4_mapped
    return ip


def _in_networks(address: str | None,
                 networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    ip = peer_ip(address) if address is not None else None
    return ip is not None and any(ip in network for network in networks)
