"""The Engine API route table and request classification (pure, no I/O).

INTERFACE CONTRACT (the routes helper fills in the table and the functions;
the names and fields below are used by the shell, policy and compat modules):

- ``parse_target(raw) -> Target`` raises ``errors.BadTarget`` for anything not in
  canonical origin-form (dot segments, ``//``, encoded ``/``, control/non-ASCII
  bytes, absolute/authority form, double-decoding tricks...).
- ``classify(method, target) -> Match | None``; None means no Engine API route.
- ``Match.with_param(name, value) -> str`` rebuilds a raw target with one path
  parameter replaced (percent-encoded), keeping the version prefix and the query.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs


class Stream(enum.Enum):
    PLAIN = "plain"          # ordinary request/response
    STREAM = "stream"        # long-lived response (events, logs -f, stats, pull, wait)
    HIJACK = "hijack"        # attach / exec start: 101 or raw 200, then raw bytes both ways
    UPGRADE = "upgrade"      # /session, /grpc: h2c upgrade
    WEBSOCKET = "websocket"  # attach/ws


class Body(enum.Enum):
    NONE = "none"
    JSON = "json"
    TAR = "tar"
    ANY = "any"


@dataclass(frozen=True)
class Target:
    raw: str               # exactly as received in the request line
    path: str              # percent-decoded once, including any version prefix
    version: str | None    # "1.41" for "/v1.41/...", None when unversioned
    api_path: str          # decoded path without the version prefix: "/containers/gw/restart"
    query: str             # raw query string without "?", "" when absent

    def query_params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)


@dataclass(frozen=True)
class Route:
    method: str
    template: str          # "/containers/{name}/restart"
    operation: str         # "container.restart" (Docker's vocabulary)
    resource: str | None   # "container", "image", "network", "volume", "exec", ... or None
    stream: Stream
    body: Body


@dataclass(frozen=True)
class Match:
    route: Route
    target: Target
    params: Mapping[str, str]  # decoded path parameters, e.g. {"name": "gw"}

    @property
    def operation(self) -> str:
        return self.route.operation
