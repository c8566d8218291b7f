"""Ownership labels and approved-image lists (pure).

Ownership. A policy with ``owner: NAME`` marks what its client creates: every
``container.create`` and ``network.create`` body is forwarded with the label
``dockgate.owner=NAME`` added by dockgate (``owner_body``), and a body that
already carries that label (in any case spelling: dockgate refuses look-alikes
rather than judge them) is refused, so a client cannot forge another's
ownership. Its grants then scope container operations with
``containers: {own: true}``, which is the label scope ``dockgate.owner=NAME``:
resolved through the daemon and forwarded by full ID like every container scope.
(Volumes have their own mark: the ``volumes:`` scope labels what a policy's
``volume.create`` makes, policy_scope.)

The label is added without re-encoding the client's JSON: dockerd decodes the
body with Go's encoding/json, which decodes a repeated map field into the map
the first occurrence filled. So one more top-level ``"Labels": {...}`` member,
appended as the last member of the object, merges the owner label into whatever
labels the client sent (or starts the map when it sent none or ``null``), and
every other byte reaches the daemon exactly as it was inspected.

Approved-image lists. A grant's ``images_from: FILE`` reads one image reference
a line (``#`` comments, blank lines ignored), as the MCP relay writes it from
the approved catalog. A listed reference matches exactly, not as a pattern: a
digest-pinned entry (``mcp/x@sha256:...``) admits only that digest, a tagged
one (``mcp/x:1``) only that tag without a digest; ``docker.io/library/`` and a
missing ``:latest`` are normalized on both sides. A missing file is an empty
list (nothing approved yet), reported by lint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from dockgate import bodies
from dockgate.errors import ConfigError
from dockgate.policy_match import normalize_image

OWNED_BY = "dockgate.owner"
# The create operations whose objects carry the owner label.
# Volumes are marked by the volumes: scope's own label (dockgate.policy, policy_scope).
OWNED_CREATES = frozenset({"container.create", "network.create"})
# Network operations whose body names a container (it must be owned too).
CONNECT_OPERATIONS = frozenset({"network.connect", "network.disconnect"})
# An owner name is a label value the docs can quote without escaping.
OWNER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
# Network drivers an owner may create: a plain bridge network. macvlan/ipvlan
# attach to host interfaces, overlay/ingress are swarm-wide.
_NETWORK_DRIVERS = frozenset({"", "bridge"})
# JSON whitespace (RFC 8259), which may follow the closing brace.
_JSON_SPACE = b" \t\r\n"
# Docker's reference grammar, loosely: lowercase path, optional tag and digest.
_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class OwnershipError(ValueError):
    """The body cannot be marked as owned; the request is refused with this reason."""


def _labels(doc: Mapping[str, object]) -> Mapping[str, object]:
    labels = doc.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise OwnershipError("Labels is not an object")
    return labels


def network_problem(doc: Mapping[str, object]) -> str | None:
    """Why an owner may not create this network (a host-attached or swarm one), or None."""
    driver = doc.get("driver")
    if driver is not None and (not isinstance(driver, str) or driver not in _NETWORK_DRIVERS):
        return f"network driver {driver!r} (owners create bridge networks only)"
    ipam = doc.get("ipam") or {}
    if not isinstance(ipam, dict):
        return "network IPAM that is not an object"
    for what, value in (("options", doc.get("options")), ("configfrom", doc.get("configfrom")),
                        ("IPAM options", ipam.get("options"))):
        if value not in (None, {}):  # driver options can name host interfaces
            return f"network {what} {value!r}"
    if ipam.get("driver") not in (None, "", "default"):
        return f"IPAM driver {ipam.get('driver')!r} (only the default)"
    for flag in ("ingress", "configonly"):
        if doc.get(flag) not in (None, False):
            return f"a {flag} network"
    return None


def owner_body(operation: str, body: bytes, owner: str) -> bytes:
    """``body`` with ``dockgate.owner=owner`` merged into its labels; OwnershipError if refused."""
    try:
        doc = bodies.parse(body)
        labels = _labels(doc)
    except bodies.UnparseableError as error:
        raise OwnershipError(f"the body cannot be inspected: {error}") from None
    if OWNED_BY in labels:  # keys are folded by bodies.parse: any case spelling
        raise OwnershipError(f"the label {OWNED_BY} is set by dockgate, not by clients")
    if operation == "network.create":
        problem = network_problem(doc)
        if problem is not None:
            raise OwnershipError(problem)
    return append_member(body, "Labels", {OWNED_BY: owner}, empty=not doc)


def append_member(body: bytes, key: str, value: object, *, empty: bool = False) -> bytes:
    """``body`` (one JSON object, as ``bodies.parse`` accepted it) with ``key: value`` last.

    Go's decoder lets the last member of a field win (a map member merges into
    the map), so the daemon reads ``value`` whatever the client sent before it.
    """
    text = body.rstrip(_JSON_SPACE)
    member = json.dumps(key).encode() + b":" + json.dumps(value).encode()
    return text[:-1] + (b"" if empty else b",") + member + b"}"


def connect_container(body: bytes) -> str:
    """The container a network connect/disconnect body names; OwnershipError if unclear."""
    try:
        doc = bodies.parse(body)
    except bodies.UnparseableError as error:
        raise OwnershipError(f"the body cannot be inspected: {error}") from None
    container = doc.get("container")
    if not isinstance(container, str) or not container:
        raise OwnershipError("the body names no container")
    return container


# ---------------------------------------------------------------------------
# Approved-image lists


@dataclass(frozen=True)
class Reference:
    """An image reference split as dockerd reads it: repository, tag, digest."""

    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, reference: str) -> Reference:
        name, _, digest = normalize_image(reference).partition("@")
        repository, _, tag = name.rpartition(":")
        if "/" in tag:  # the colon was a registry port: no tag
            repository, tag = name, ""
        return cls(repository, tag or None, digest or None)

    def admits(self, other: Reference) -> bool:
        """Whether a request for ``other`` is this approved image."""
        if self.repository != other.repository:
            return False
        if self.digest is not None:
            return other.digest == self.digest  # dockerd resolves by digest, tag or not
        return other.digest is None and other.tag == self.tag


def pull_reference(query: Mapping[str, list[str]]) -> str | None:
    """The one image ``POST /images/create?fromImage=&tag=`` pulls, or None.

    dockerd replaces the reference's tag with ``tag`` (a ``sha256:`` value is a
    digest); without either it pulls every tag of the repository, and an import
    (``fromSrc``) pulls nothing by name: None for both, and for repeated values.
    """
    names = query.get("fromImage", [])
    tags = query.get("tag", [])
    if len(names) != 1 or len(tags) > 1:
        return None
    name, _, digest = names[0].partition("@")
    tag = tags[0] if tags else ""
    if tag:
        last = name.rsplit("/", 1)
        if ":" in last[-1]:
            name = name[:name.rfind(":")]
        if _DIGEST.fullmatch(tag):
            return f"{name}@{tag}"
        return f"{name}:{tag}" + (f"@{digest}" if digest else "")
    if digest or ":" in name.rsplit("/", 1)[-1]:
        return names[0]
    return None


@dataclass(frozen=True)
class ImageList:
    """The approved images of one list file, read when the policy was loaded."""

    path: str
    entries: tuple[Reference, ...]
    missing: bool = False
    # (inode, size, mtime_ns) of the file as read; None when it did not exist. The
    # shell's watch reloads when the file's status differs (dockgate.watch).
    stamp: tuple[int, int, int] | None = None

    def admits(self, reference: str | None) -> bool:
        if not reference:
            return False
        wanted = Reference.parse(reference)
        return any(entry.admits(wanted) for entry in self.entries)

    def describe(self) -> str:
        return f"the approved images in {self.path} ({len(self.entries)} listed)"


def parse_image_list(text: str, path: str) -> ImageList:
    """One reference a line; ConfigError ``PATH:LINE: ...`` for a line that is not one."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not _REFERENCE.fullmatch(line) or line.count("@") > 1:
            raise ConfigError(f"{path}:{number}: {line!r} is not an image reference; write "
                              "one per line, e.g. mcp/github:latest or "
                              "mcp/github@sha256:<64 hex>")
        entries.append(Reference.parse(line))
    return ImageList(path, tuple(entries))


def stamp_of(status: os.stat_result) -> tuple[int, int, int]:
    """What identifies one version of a file: a rewrite by rename changes the inode."""
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def read_image_list(path: str) -> ImageList:
    """The list in ``path``; a file that does not exist yet approves nothing."""
    try:
        with open(path, encoding="utf-8") as handle:
            stamp = stamp_of(os.fstat(handle.fileno()))
            return dataclasses.replace(parse_image_list(handle.read(), path), stamp=stamp)
    except FileNotFoundError:
        return ImageList(path, (), missing=True)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the image list ({error})") from None
