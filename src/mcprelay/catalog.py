"""Approved MCP servers: validation, the gateway's catalog, the secrets env file.

Theory of operation: every value that reaches a file is validated first
(``parse_server``), the catalog is built as a Python document and emitted by
``yaml.safe_dump`` (no string concatenation, so a name or image can never inject
YAML), and each file is replaced atomically (temporary file in the same
directory, fsync, rename, fsync of the directory) with mode 0600. Secret values
go only into the env file; the catalog names the secret and its variable.

Catalog format (the gateway's, see docs/mcp-gateway.md)::

    name: docker-mcp
    displayName: ...
    registry:
      <server>: {title, description, type: server, image, longLived: false,
                 secrets: [{name, env}]}
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcprelay.errors import InputError, WriteError

# A server name becomes a YAML key, a log field and often a container name
# suffix: lowercase DNS-label-like, at most 63 characters.
SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.ASCII)
# Secret names follow the gateway's dotted style (github.personal_access_token).
SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
# POSIX-style environment variable names (the env-file format has no quoting).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)

# The Docker reference grammar (distribution/reference):
#   reference := name [":" tag] ["@" digest]; name := [domain "/"] path
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}))?",
    re.ASCII,
)
MAX_IMAGE_NAME = 255  # distribution/reference's NameTotalLengthMax

MAX_TITLE = 200
MAX_DESCRIPTION = 2000
MAX_SECRETS = 32
MAX_SECRET_VALUE = 8192
MAX_SERVERS = 1000

SERVER_KEYS = frozenset({"name", "image", "title", "description", "secrets"})
SECRET_KEYS = frozenset({"name", "env", "value"})


@dataclass(frozen=True)
class Secret:
    name: str
    env: str
    value: str


@dataclass(frozen=True)
class Server:
    name: str
    image: str
    title: str
    description: str = ""
    secrets: tuple[Secret, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The input form of this server (what the state file stores)."""
        return {
            "name": self.name,
            "image": self.image,
            "title": self.title,
            "description": self.description,
            "secrets": [{"name": s.name, "env": s.env, "value": s.value} for s in self.secrets],
        }


def shown(value: object, limit: int = 60) -> str:
    """A value for an error message: repr'd (newlines visible) and truncated."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _string(data: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    if key not in data:
        if required:
            raise InputError(f"{where}: '{key}' is required")
        return ""
    value = data[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: '{key}' must be a string, not {type(value).__name__}")
    return value


def _no_controls(value: str, key: str, where: str, limit: int) -> str:
    if len(value) > limit:
        raise InputError(f"{where}: '{key}' is longer than {limit} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise InputError(f"{where}: '{key}' contains control characters: {shown(value)}")
    return value


def validate_server_name(name: str) -> str:
    if not SERVER_NAME.fullmatch(name):
        raise InputError(f"invalid server name {shown(name)}: use 1-63 characters a-z, 0-9 "
                         "and '-', starting with a letter or digit")
    return name


def validate_image(image: str, where: str = "image") -> str:
    match = IMAGE_REFERENCE.fullmatch(image)
    if match is None:
        raise InputError(f"{where}: invalid image reference {shown(image)} (expected "
                         "[registry[:port]/]path[:tag][@sha256:<64 hex>])")
    if len(match["name"]) > MAX_IMAGE_NAME:
        raise InputError(f"{where}: image name is longer than {MAX_IMAGE_NAME} characters")
    return image


def parse_secret(data: object, where: str) -> Secret:
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: a secret must be an object with name, env and value")
    unknown = set(data) - SECRET_KEYS
    if unknown:
        raise InputError(f"{where}: unknown secret field(s) {shown(sorted(map(str, unknown)))}")
    name = _string(data, "name", where)
    env = _string(data, "env", where)
    value = _string(data, "value", where)
    if not SECRET_NAME.fullmatch(name):
        raise InputError(f"{where}: invalid secret name {shown(name)}")
    if not ENV_NAME.fullmatch(env):
        raise InputError(f"{where}: invalid environment variable name {shown(env)}")
    if len(value) > MAX_SECRET_VALUE:
        raise InputError(f"{where}: secret value is longer than {MAX_SECRET_VALUE} characters")
    if any(char in value for char in "\r\n\0"):
        # The env-file format is one NAME=value per line, without quoting.
        raise InputError(f"{where}: secret value must not contain newlines or NUL")
    return Secret(name, env, value)


def parse_server(data: object) -> Server:
    """Validate one approved server given as a mapping; InputError says what is wrong."""
    if not isinstance(data, Mapping):
        raise InputError("a server must be an object with at least 'name' and 'image'")
    unknown = set(data) - SERVER_KEYS
    if unknown:
        raise InputError(f"unknown server field(s) {shown(sorted(map(str, unknown)))}; "
                         f"allowed: {', '.join(sorted(SERVER_KEYS))}")
    name = validate_server_name(_string(data, "name", "server"))
    where = f"server {name}"
    image = validate_image(_string(data, "image", where), where)
    title = _no_controls(_string(data, "title", where, required=False) or name, "title", where,
                         MAX_TITLE)
    description = _no_controls(_string(data, "description", where, required=False),
                               "description", where, MAX_DESCRIPTION)
    raw_secrets = data.get("secrets") or []
    if not isinstance(raw_secrets, list):
        raise InputError(f"{where}: 'secrets' must be a list")
    if len(raw_secrets) > MAX_SECRETS:
        raise InputError(f"{where}: more than {MAX_SECRETS} secrets")
    secrets = tuple(parse_secret(item, f"{where} secret #{index + 1}")
                    for index, item in enumerate(raw_secrets))
    return Server(name, image, title, description, secrets)


def parse_servers(data: object) -> list[Server]:
    """Validate a whole approved set: a list of servers or ``{"servers": [...]}``."""
    if isinstance(data, Mapping) and set(data) == {"servers"}:
        data = data["servers"]
    if not isinstance(data, list):
        raise InputError("expected a list of servers or an object {\"servers\": [...]}")
    if len(data) > MAX_SERVERS:
        raise InputError(f"more than {MAX_SERVERS} servers")
    servers = [parse_server(item) for item in data]
    seen: set[str] = set()
    for server in servers:
        if server.name in seen:
            raise InputError(f"server {server.name} is listed twice")
        seen.add(server.name)
    check_secrets(servers)
    return servers


def check_secrets(servers: Iterable[Server]) -> None:
    """Two servers may share a secret name only with the same value (one env file)."""
    values: dict[str, str] = {}
    for server in servers:
        for secret in server.secrets:
            if values.setdefault(secret.name, secret.value) != secret.value:
                raise InputError(f"secret {secret.name} has different values in two servers")


def catalog_document(servers: Sequence[Server], display_name: str) -> dict[str, Any]:
    registry: dict[str, Any] = {}
    for server in sorted(servers, key=lambda s: s.name):
        entry: dict[str, Any] = {
            "title": server.title,
            "description": server.description,
            "type": "server",
            "image": server.image,
            "longLived": False,
        }
        if server.secrets:
            entry["secrets"] = [{"name": s.name, "env": s.env} for s in server.secrets]
        registry[server.name] = entry
    return {"name": "docker-mcp", "displayName": display_name, "registry": registry}


def render_catalog(servers: Sequence[Server], display_name: str) -> str:
    """The catalog YAML, emitted by a real YAML emitter, deterministic (sorted by name)."""
    return yaml.safe_dump(catalog_document(servers, display_name), sort_keys=False,
                          default_flow_style=False, allow_unicode=False)


def render_env(servers: Sequence[Server]) -> str:
    """The secrets env file: one ``secret-name=value`` line per secret, sorted."""
    check_secrets(servers)
    values = {secret.name: secret.value for server in servers for secret in server.secrets}
    return "".join(f"{name}={values[name]}\n" for name in sorted(values))


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never a mix."""
    directory = path.parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise WriteError(f"cannot create a temporary file in {directory}: {error}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise WriteError(f"cannot write {path}: {error}") from None
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def render_images(servers: Sequence[Server]) -> str:
    """The approved-image list dockgate reads (``images_from:``): one reference a line.

    Each image exactly as the catalog names it, so a digest-pinned server is
    approved by its digest only.
    """
    images = sorted({server.image for server in servers})
    return ("# Written by dockgate-mcp-relay: the images of the approved MCP servers.\n"
            + "".join(f"{image}\n" for image in images))


def write_outputs(servers: Sequence[Server], catalog_path: Path, env_path: Path | None,
                  display_name: str, images_path: Path | None = None) -> None:
    """Write the env file and image list (if configured), then the catalog; all validated first."""
    catalog = render_catalog(servers, display_name)
    env_text = render_env(servers)
    if env_path is None and env_text:
        raise InputError("servers declare secrets but no --env-file is configured")
    if env_path is not None:
        atomic_write(env_path, env_text)
    if images_path is not None:
        atomic_write(images_path, render_images(servers), mode=0o644)  # no secrets in it
    atomic_write(catalog_path, catalog)
