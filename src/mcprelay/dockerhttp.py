"""A minimal Docker Engine API client: DOCKER_HOST, TLS, one request, typed failures.

Why not docker-py: the relay needs one unversioned request (the seed's
``POST /containers/NAME/restart``, which a restart-only policy can match
exactly), no ``GET /version`` probe at start-up (docker-py's ``version='auto'``),
separate connect and response timeouts, and a precise translation of socket
errors into the relay's error classes. http.client + ssl do that with no
dependency.

DOCKER_HOST as the docker CLI reads it: ``unix:///path`` (default
``unix:///var/run/docker.sock``) or ``tcp://host[:port]``. A non-empty
``DOCKER_TLS_VERIFY`` turns on TLS with server verification against
``$DOCKER_CERT_PATH/ca.pem`` (default ``~/.docker``), presenting
``cert.pem``/``key.pem`` when both exist.
"""

from __future__ import annotations

import errno
import http.client
import json
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mcprelay.errors import InputError, RequestTimeoutError, UnreachableError

DEFAULT_HOST = "unix:///var/run/docker.sock"
MAX_RESPONSE_BYTES = 1024 * 1024  # inspect answers are a few KB; never buffer a stream
CONNECT_TIMEOUT = 5.0


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the Host header stays 'docker', like the docker CLI)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Endpoint:
    """Where the Docker API is: a unix socket path or a TCP host and port (maybe TLS)."""

    url: str
    socket_path: str | None = None
    host: str = ""
    port: int = 0
    tls: ssl.SSLContext | None = None

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return _UnixConnection(self.socket_path, timeout)
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def endpoint_from_env(env: Mapping[str, str]) -> Endpoint:
    """The endpoint DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH describe."""
    url = env.get("DOCKER_HOST") or DEFAULT_HOST
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise InputError(f"DOCKER_HOST={url!r}: a unix:// URL needs a socket path")
        return Endpoint(url, socket_path=parts.path)
    if parts.scheme != "tcp" or not parts.hostname or parts.path not in ("", "/"):
        raise InputError(f"DOCKER_HOST={url!r} is not supported: use unix:///PATH or "
                         "tcp://HOST:PORT")
    tls = _tls_context(env) if env.get("DOCKER_TLS_VERIFY") else None
    try:
        port = parts.port or (2376 if tls else 2375)
    except ValueError:
        raise InputError(f"DOCKER_HOST={url!r} has an invalid port") from None
    return Endpoint(url, host=parts.hostname, port=port, tls=tls)


def _tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
    cert_path = Path(env.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    ca = cert_path / "ca.pem"
    try:
        context = ssl.create_default_context(cafile=str(ca))
        cert, key = cert_path / "cert.pem", cert_path / "key.pem"
        if cert.exists() and key.exists():
            context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as error:
        raise InputError(f"DOCKER_TLS_VERIFY is set but the certificates in {cert_path} "
                         f"cannot be loaded: {error}") from None
    return context


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def message(self) -> str:
        """What the daemon or proxy said: Docker's JSON ``message``, else the text (no HTML)."""
        if "json" in self.content_type:
            try:
                data = self.json()
            except ValueError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("message"), str):
                return str(data["message"])
        text = self.body.decode("utf-8", errors="replace")
        text = re.sub(r"<[^>]*>", " ", text)
        text = " ".join(text.split())
        return (text[:300] + "...") if len(text) > 300 else (text or self.reason)


_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ENETUNREACH,
                     errno.EHOSTUNREACH, errno.ENOENT, errno.EPIPE, errno.ECONNABORTED}


def send(endpoint: Endpoint, method: str, path: str, timeout: float) -> Response:
    """One request with no body; socket failures become UnreachableError or RequestTimeoutError."""
    connection = endpoint.connection(min(timeout, CONNECT_TIMEOUT))
    try:
        try:
            connection.connect()
        except ssl.SSLError as error:
            raise UnreachableError(f"TLS with {endpoint.url} failed: {error}") from None
        except socket.gaierror as error:
            raise UnreachableError(f"cannot resolve the host of DOCKER_HOST={endpoint.url}: "
                              f"{error.strerror}", transient=True) from None
        except TimeoutError:
            raise UnreachableError(f"connecting to {endpoint.url} timed out",
                              transient=True) from None
        except OSError as error:
            raise UnreachableError(f"cannot connect to {endpoint.url}: {error.strerror or error}",
                              transient=error.errno in _TRANSIENT_ERRNOS) from None
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        try:
            # A POST without a body still says so (some proxies require a length).
            headers = {"Content-Length": "0"} if method == "POST" else {}
            connection.request(method, path, headers=headers)
            answer = connection.getresponse()
            body = answer.read(MAX_RESPONSE_BYTES)
        except TimeoutError:
            raise RequestTimeoutError(f"{method} {path}: no answer from {endpoint.url} within "
                                 f"{timeout:g}s") from None
        except (http.client.HTTPException, OSError) as error:
            raise UnreachableError(f"{method} {path}: connection to {endpoint.url} failed: "
                              f"{error!r}", transient=True) from None
        return Response(answer.status, answer.reason,
                        answer.getheader("Content-Type", "") or "", body)
    finally:
        connection.close()
