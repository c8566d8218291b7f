"""The approval hook: a small HTTP endpoint a backend (PocketBase or any) POSTs events to.

    POST /events   {"event": "approved"|"revoked", "server": {...}}
        200 {"status": "ok", "event", "server", "servers", "restarted", ...}
        400 bad JSON · 401 bad token · 411 no Content-Length · 413 too large ·
        415 not JSON · 422 invalid server (nothing written) ·
        500 files not written · 502/504 gateway restart failed (error class in "error")
    GET /healthz   200 {"status": "ok"}

Every error answer is ``{"error": <class>, "message": <text>}``. Bodies are
bounded (``--max-body``) and read only after Content-Length was checked; a
client gets ``READ_TIMEOUT`` seconds per socket read, and the relay's lock
(events are handled one at a time) is taken only once the whole body is in.
"""

from __future__ import annotations

import hmac
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mcprelay.errors import DockerError, InputError, RelayError, RequestTimeoutError, WriteError
from mcprelay.relay import Relay

log = logging.getLogger("mcprelay")

DEFAULT_MAX_BODY = 64 * 1024  # an event is a few hundred bytes; secrets are capped at 8 KB
READ_TIMEOUT = 10.0


class HookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], relay: Relay, *, max_body: int = DEFAULT_MAX_BODY,
                 token: str | None = None) -> None:
        super().__init__(address, HookHandler)
        self.relay = relay
        self.max_body = max_body
        self.token = token


def status_for(error: RelayError) -> int:
    if isinstance(error, InputError):
        return 422
    if isinstance(error, WriteError):
        return 500
    if isinstance(error, RequestTimeoutError):
        return 504
    if isinstance(error, DockerError):
        return 502
    return 500


class HookHandler(BaseHTTPRequestHandler):
    server: HookServer
    timeout = READ_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "dockgate-mcp-relay"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("hook %s %s", self.address_string(), format % args)

    def answer(self, status: int, document: dict[str, Any], *, close: bool = False) -> None:
        body = json.dumps(document).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def fail(self, status: int, kind: str, message: str, *, close: bool = False) -> None:
        self.answer(status, {"error": kind, "message": message}, close=close)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.answer(200, {"status": "ok"})
        else:
            self.fail(404, "not_found", "GET /healthz or POST /events")

    def do_POST(self) -> None:
        if self.path != "/events":
            self.fail(404, "not_found", "POST /events", close=True)
            return
        token = self.server.token
        if token is not None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                self.fail(401, "unauthorized", "missing or wrong bearer token", close=True)
                return
        if self.headers.get("Transfer-Encoding") is not None:
            self.fail(411, "length_required", "send Content-Length, not chunked", close=True)
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.fail(411, "length_required", "Content-Length is required", close=True)
            return
        length = int(length_header)
        if length > self.server.max_body:
            self.fail(413, "too_large", f"body of {length} bytes exceeds the limit of "
                      f"{self.server.max_body}", close=True)
            return
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            self.fail(415, "unsupported_media_type", "Content-Type must be application/json",
                      close=True)
            return
        raw = self.rfile.read(length)
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            self.fail(400, "bad_json", f"body is not JSON: {error}")
            return
        try:
            outcome = self.server.relay.handle_event(event)
        except RelayError as error:
            log.warning("event rejected: %s: %s", error.kind, error)
            self.fail(status_for(error), error.kind, str(error))
            return
        log.info("event %s %s applied", outcome["event"], outcome["server"])
        self.answer(200, outcome)
