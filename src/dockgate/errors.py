"""The one exception tree of dockgate.

Every error that can reach a client knows the HTTP status and the Docker-style
JSON body (``{"message": ...}``) the client gets, so the docker CLI prints one
readable line. Foreign exceptions (OSError, httptools errors, yaml errors) are
translated into this tree at the boundary where they happen.

    DockgateError
    ├── ConfigError                 bad setting, policy file or env value (never sent)
    └── HTTPError                   has .status and .message, rendered by .body()
        ├── ProtocolError      400  malformed HTTP framing; the connection is closed
        │   ├── HeadersTooLarge 431
        │   ├── BodyTooLarge    413
        │   └── RequestTimeout  408  the client stopped sending its request
        ├── Overloaded         503  more client connections than --max-connections
        ├── BadTarget          400  non-canonical or unparseable request target
        ├── Denied             403  the policy said no
        ├── NoRoute            404  not an Engine API route (never forwarded)
        ├── UpstreamError      502  the daemon is unreachable or broke the exchange
        └── UpstreamTimeout    504  the daemon did not answer in time
"""

from __future__ import annotations

import json


class DockgateError(Exception):
    """Base of every error dockgate raises on purpose."""


class ConfigError(DockgateError):
    """A setting, environment value or policy file is invalid; says what to fix."""


class HTTPError(DockgateError):
    """An error answered to the client with a status and a Docker-style JSON body."""

    status = 500
    close_connection = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        """The Docker-style JSON body: ``{"message": "..."}`` and a newline."""
        return json.dumps({"message": self.message}).encode() + b"\n"


class ProtocolError(HTTPError):
    """The client broke HTTP/1.1 framing; answer and close, forward nothing."""

    status = 400
    close_connection = True


class HeadersTooLarge(ProtocolError):
    status = 431


class BodyTooLarge(ProtocolError):
    status = 413


class RequestTimeout(ProtocolError):
    status = 408


class Overloaded(HTTPError):
    status = 503
    close_connection = True


class BadTarget(HTTPError):
    """The request target is not in canonical form (dot segments, ``//``, ``%2F``...)."""

    status = 400
    close_connection = True


class Denied(HTTPError):
    status = 403


class NoRoute(HTTPError):
    status = 404


class UpstreamError(HTTPError):
    status = 502
    close_connection = True


class UpstreamTimeout(HTTPError):
    status = 504
    close_connection = True
