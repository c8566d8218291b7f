"""The relay's state (the approved set) and the hook's approved/revoked events.

The state file is JSON ``{"servers": [...]}`` in the input format, written
atomically with mode 0600 (it holds secret values, like the env file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import yaml

from mcprelay.catalog import (
    SERVER_KEYS,
    Server,
    atomic_write,
    check_secrets,
    parse_server,
    parse_servers,
    validate_server_name,
)
from mcprelay.errors import InputError, WriteError

EVENTS = ("approved", "revoked")


def load_state(path: Path) -> list[Server]:
    """The approved set stored at ``path``; an absent file is the empty set."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise WriteError(f"cannot read state file {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"state file {path} is not JSON: {error}") from None
    return parse_servers(data)


def save_state(path: Path, servers: list[Server]) -> None:
    document = {"servers": [server.to_json() for server in sorted(servers, key=lambda s: s.name)]}
    atomic_write(path, json.dumps(document, indent=2) + "\n")


def parse_document(text: str, source: str) -> object:
    """JSON, else YAML (a safe loader: plain data only)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"{source} is neither JSON nor YAML: {error}") from None


def apply_event(servers: list[Server], event: object) -> tuple[str, str, list[Server]]:
    """(event, server name, new approved set) for one hook event; InputError if invalid."""
    if not isinstance(event, Mapping) or set(event) != {"event", "server"}:
        raise InputError('expected {"event": "approved"|"revoked", "server": {...}}')
    kind = event["event"]
    if kind not in EVENTS:
        raise InputError(f"unknown event {str(kind)[:40]!r}: expected approved or revoked")
    data = event["server"]
    if kind == "approved":
        server = parse_server(data)
        updated = [s for s in servers if s.name != server.name] + [server]
        check_secrets(updated)
        return kind, server.name, updated
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise InputError("a revoked event needs server.name")
    unknown = set(data) - SERVER_KEYS
    if unknown:
        raise InputError(f"unknown server field(s) {sorted(map(str, unknown))!r:.80}")
    name = validate_server_name(data["name"])
    return kind, name, [s for s in servers if s.name != name]
