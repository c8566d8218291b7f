"""The live decision view: a page on the admin listener (``--admin-live yes``).

Served only by the admin listener (``admin`` hands it every ``/live`` path), never
by an API listener: the API listeners route Docker Engine API paths and nothing
else. What it shows comes from the same hook as learn mode: every decided request
becomes a ``policy_learn.observation`` record, kept in a ring of the last
``RING`` decisions of this process (so ``--workers 1`` only) and pushed to the
open pages.

    GET /live                 the page (HTML; its script and style below)
    GET /live/app.js, /live/app.css
    GET /live/events          server-sent events: the ring, then each new decision
    GET /live/grant?id=N      the grant that would allow denial N (YAML, from suggest)
    GET /live/suggest?client=KEY
                              the suggested policy of one client's decisions in the
                              ring, as a YAML download

Access: the admin address is loopback unless the operator says otherwise, and
then a bearer token is required (``--admin-token-file``). With a token, a
request must carry ``Authorization: Bearer TOKEN`` or the cookie the page sets
when opened as ``/live?token=TOKEN`` (an EventSource cannot send headers). The
Host header must name a loopback address or the admin address itself, so a web
page elsewhere cannot reach the view by DNS rebinding. Everything that came
from a request is inserted into the page as text (``textContent``), never as
HTML, and the page's Content-Security-Policy allows only its own script.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import json
import time
from collections import deque
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dockgate import policy_learn, policy_suggest
from dockgate.decision import Client, Decision, Facts, Request
from dockgate.errors import ConfigError
from dockgate.settings import Settings

RING = 1000            # decisions kept for new pages and suggestions
QUEUE = 1000           # decisions a slow page may fall behind before it is dropped
KEEPALIVE = 15.0       # seconds between SSE comments on a quiet proxy
COOKIE = "dockgate_live"
FILES = {"/live": ("index.html", "text/html; charset=utf-8"),
         "/live/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/live/app.css": ("app.css", "text/css; charset=utf-8")}
HEADERS = ("Content-Security-Policy: default-src 'none'; script-src 'self'; "
           "style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; "
           "base-uri 'none'; form-action 'none'\r\n"
           "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
           "Cache-Control: no-store\r\n")


def client_key(who: dict[str, Any]) -> str:
    """A client identity as one string, for filters and ``/live/suggest?client=``."""
    return ", ".join(policy_suggest.identity_key(who))


class Feed:
    """The last decisions, per-client counts, and the pages listening."""

    def __init__(self) -> None:
        self.ring: deque[dict[str, Any]] = deque(maxlen=RING)
        self.counts: dict[str, dict[str, int]] = {}
        self.pages: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._ids = itertools.count(1)

    def observe(self, client: Client, request: Request, facts: Facts,
                decision: Decision) -> None:
        record = policy_learn.observation(client, request, facts, decision, time.time())
        record["id"] = next(self._ids)
        record["key"] = client_key(record["client"])
        counts = self.counts.setdefault(record["key"], {"allow": 0, "deny": 0})
        counts[record["decision"]] += 1
        self.ring.append(record)
        for page in list(self.pages):
            try:
                page.put_nowait(record)
            except asyncio.QueueFull:
                # A page that stopped reading is closed rather than buffered for ever.
                self.pages.discard(page)
                while not page.empty():
                    page.get_nowait()
                page.put_nowait(None)

    def record(self, number: int) -> dict[str, Any] | None:
        return next((r for r in self.ring if r["id"] == number), None)

    def grant_for(self, number: int) -> str:
        """The smallest grant that would allow decision ``number`` (suggest's own)."""
        record = self.record(number)
        if record is None:
            return "# that decision is no longer among the last ones kept\n"
        try:
            return policy_suggest.suggest(policy_suggest.Recording([record]),
                                          label=f"decision {number}").text
        except ConfigError as error:
            return f"# no grant can allow it: {error}\n"

    def suggestion(self, key: str) -> str:
        records = [r for r in self.ring if r["key"] == key]
        if not records:
            return "# no decision of that client among the last ones kept\n"
        return policy_suggest.suggest(policy_suggest.Recording(records),
                                      label="the live view's last decisions").text


FEED = Feed()


class Access:
    """Who may open the view: the Host header, and the bearer token when one is set."""

    def __init__(self, settings: Settings) -> None:
        self.token = _read_token(settings.admin_token_file)
        host, _, port = (settings.admin_listen or "").rpartition(":")
        self.host = host.strip("[]")
        self.port = port
        if not _loopback(self.host) and self.token is None:
            raise ConfigError(f"--admin-live on {settings.admin_listen}, which is not a "
                              "loopback address, needs --admin-token-file: the view shows "
                              "who does what on the daemon")

    def allows(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        host = headers.get("host", "")
        name = host[1:host.find("]")] if host.startswith("[") else host.split(":", 1)[0]
        if not (_loopback(name) or name == self.host):
            return False
        if self.token is None:
            return True
        offered = [value.removeprefix("Bearer ").strip()
                   for value in [headers.get("authorization", "")] if value]
        offered += query.get("token", [])
        cookies = headers.get("cookie", "")
        offered += [part.split("=", 1)[1] for part in cookies.split(";")
                    if part.strip().startswith(f"{COOKIE}=")]
        return any(hmac.compare_digest(value.strip().encode(), self.token.encode())
                   for value in offered)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--admin-token-file {path}: cannot read it ({error})") from None
    if len(token) < 16:
        raise ConfigError(f"--admin-token-file {path}: the token must be at least 16 "
                          "characters (e.g. openssl rand -hex 32)")
    return token


_access: list[Access] = []


def configure(settings: Settings) -> None:
    """Check the settings and read the token once, before serving (ConfigError if wrong)."""
    _access[:] = [Access(settings)] if settings.admin_live else []


def enabled() -> bool:
    return bool(_access)


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, sep, value in
            (line.partition(":") for line in lines) if sep}


async def serve(head: bytes, writer: asyncio.StreamWriter) -> None:
    """Answer one admin request for a ``/live`` path (the admin handler calls this)."""
    method, target = head.split(b" ", 2)[:2]
    split = urlsplit(target.decode("ascii", "replace"))
    query = parse_qs(split.query)
    headers = _headers(head)
    if not _access or not _access[0].allows(headers, query):
        await _send(writer, 403, "text/plain; charset=utf-8",
                    b"forbidden: open /live?token=TOKEN (--admin-token-file) from a "
                    b"loopback address\n")
        return
    if method not in (b"GET", b"HEAD"):
        await _send(writer, 405, "text/plain; charset=utf-8", b"use GET\n")
        return
    extra = ""
    if "token" in query and _access[0].token is not None:
        extra = f"Set-Cookie: {COOKIE}={_access[0].token}; HttpOnly; SameSite=Strict; " \
                "Path=/live\r\n"
    if split.path in FILES:
        name, kind = FILES[split.path]
        body = resources.files("dockgate").joinpath("live", name).read_bytes()
        await _send(writer, 200, kind, body, extra)
    elif split.path == "/live/events":
        await _stream(writer)
    elif split.path == "/live/grant":
        number = query.get("id", [""])[0]
        text = FEED.grant_for(int(number)) if number.isdigit() else "# ?id=N\n"
        await _send(writer, 200, "text/yaml; charset=utf-8", text.encode())
    elif split.path == "/live/suggest":
        key = query.get("client", [""])[0]
        await _send(writer, 200, "text/yaml; charset=utf-8", FEED.suggestion(key).encode(),
                    'Content-Disposition: attachment; filename="suggested-policy.yaml"\r\n')
    else:
        await _send(writer, 404, "text/plain; charset=utf-8",
                    b"not found: /live, /live/events, /live/grant, /live/suggest\n")


async def _send(writer: asyncio.StreamWriter, status: int, kind: str, body: bytes,
                extra: str = "") -> None:
    reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}
    writer.write(f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {kind}\r\n"
                 f"Content-Length: {len(body)}\r\n{HEADERS}{extra}Connection: close\r\n\r\n"
                 .encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


def _event(record: dict[str, Any]) -> bytes:
    data = dict(record, counts=FEED.counts.get(record["key"], {}))
    # json.dumps escapes no "<", but the page inserts text only; one line per event.
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def _stream(writer: asyncio.StreamWriter) -> None:
    page: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
    FEED.pages.add(page)
    try:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" +
                     HEADERS.encode() + b"Connection: close\r\n\r\n")
        writer.write(b"".join(_event(r) for r in list(FEED.ring)))
        await writer.drain()
        while True:
            try:
                record = await asyncio.wait_for(page.get(), KEEPALIVE)
            except TimeoutError:
                writer.write(b": keep-alive\n\n")
            else:
                if record is None:
                    return
                writer.write(_event(record))
            await writer.drain()
    except ConnectionError:
        return
    finally:
        FEED.pages.discard(page)
        writer.close()
