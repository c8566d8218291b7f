"""The decision point: the values every decider takes and returns.

Theory of operation. The asyncio shell reads a request head, parses its target
(``routes.parse_target``), classifies it (``routes.classify``) and asks the
active ``Decider``. A decider is pure: no I/O, no awaiting. When it needs facts
only the daemon has (which container does ``3fa1`` mean? what does the create
body say?), it returns ``NeedFacts``; the shell fetches them and asks again with
the filled ``Facts``. The answer is ``Allow`` or ``Deny``. ``Allow.target``
lets a decider pin the object it checked: the shell forwards that target (the
resolved full ID) instead of the client's reference, so the object checked is
the object acted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from mypy_extensions import mypyc_attr

from dockgate.errors import UpstreamError
from dockgate.routes import LIBPOD_REFUSED, Match, Target, is_libpod


@dataclass(frozen=True)
class ContainerFacts:
    """A container as the daemon resolved a reference to it."""

    id: str
    name: str  # without the leading "/"
    labels: Mapping[str, str]
    image: str = ""


@dataclass(frozen=True)
class Client:
    """Who is asking: the listener it came through and what that listener knows of it.

    ``container`` is the container the peer is, when the shell's directory of running
    containers resolved it (only while some ``clients:`` rule names containers).
    ``unidentified`` says why the shell could not tell whether the peer is a container
    (the directory is not in sync with the daemon, the address is shared by several
    containers): rules naming containers then give no policy at all, instead of
    letting a later rule or the default decide for a client that may be one of them.
    """

    listener: str
    transport: Literal["tcp", "unix", "tls"]
    address: str | None = None
    port: int | None = None
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    cert_cn: str | None = None
    cert_sans: tuple[str, ...] = ()
    container: ContainerFacts | None = None
    unidentified: str | None = None

    def describe(self) -> str:
        """A short human form for logs: ``tcp:127.0.0.1:5123`` or ``unix:uid=1000``.

        A resolved container is named: ``unix:uid=0,gid=0,pid=42,container=relay``.
        """
        if self.transport == "unix":
            who = f"unix:uid={self.uid},gid={self.gid},pid={self.pid}"
        else:
            who = f"{self.transport}:{self.address}:{self.port}"
            if self.cert_cn is not None:
                who += f",cn={self.cert_cn}"
        if self.container is not None:
            who += f",container={self.container.name}"
        return who


@dataclass(frozen=True)
class Request:
    """What a decider sees of a request: the method, the parsed target, its route."""

    method: str
    target: Target
    match: Match | None  # None: no Engine API route has this method and path


@dataclass(frozen=True)
class ExecFacts:
    """An exec instance as the daemon knows it (``GET /exec/{id}/json``)."""

    id: str
    container: str  # the full ID of the container it runs in


@dataclass(frozen=True)
class VolumeFacts:
    """A named volume as the daemon knows it (``GET /volumes/{name}``)."""

    name: str
    driver: str
    labels: Mapping[str, str]


def _failed(status: int, what: str) -> UpstreamError:
    return UpstreamError(f"dockgate: the daemon answered {status} when asked about {what}")


def exec_facts(ref: str, status: int, data: Any) -> ExecFacts | None:
    """The daemon's answer to ``GET /exec/REF/json`` as facts; None when it knows no such exec."""
    if status == 404:
        return None
    if status != 200 or not isinstance(data, dict):
        raise _failed(status, f"exec {ref!r}")
    return ExecFacts(id=str(data.get("ID", "")), container=str(data.get("ContainerID", "")))


def volume_facts(ref: str, status: int, data: Any) -> VolumeFacts | None:
    """The daemon's answer to ``GET /volumes/REF`` as facts; None when there is no such volume."""
    if status == 404:
        return None
    if status != 200 or not isinstance(data, dict):
        raise _failed(status, f"volume {ref!r}")
    labels = data.get("Labels") or {}
    return VolumeFacts(name=str(data.get("Name", "")), driver=str(data.get("Driver", "")),
                       labels={str(k): str(v) for k, v in labels.items()})


@dataclass(frozen=True)
class NetworkFacts:
    """A network as the daemon resolved a reference to it (``GET /networks/{ref}``)."""

    id: str
    name: str
    labels: Mapping[str, str]


def network_facts(ref: str, status: int, data: Any) -> NetworkFacts | None:
    """The daemon's answer about network REF as facts; None when unknown or ambiguous."""
    message = str(data.get("message", "")) if isinstance(data, dict) else ""
    if status == 404 or (status == 400 and "ambiguous" in message):
        return None
    if status != 200 or not isinstance(data, dict):
        raise _failed(status, f"network {ref!r}")
    labels = data.get("Labels") or {}
    return NetworkFacts(id=str(data.get("Id", "")), name=str(data.get("Name", "")),
                        labels={str(k): str(v) for k, v in labels.items()})


@dataclass(frozen=True)
class Facts:
    """Facts the shell fetched because a decider asked for them."""

    # Keyed by the reference exactly as the client gave it; None means the daemon
    # knows no such container (or the prefix is ambiguous).
    containers: Mapping[str, ContainerFacts | None] = field(default_factory=dict)
    # The whole request body, when a decider asked for it (bounded by the shell).
    body: bytes | None = None
    # Keyed by the exec ID / volume name as asked; None: the daemon knows no such one.
    execs: Mapping[str, ExecFacts | None] = field(default_factory=dict)
    volumes: Mapping[str, VolumeFacts | None] = field(default_factory=dict)
    networks: Mapping[str, NetworkFacts | None] = field(default_factory=dict)


NO_FACTS: Final = Facts()  # Final: a C static in the compiled build, not a dict lookup


@dataclass(frozen=True)
class NeedFacts:
    """Ask the shell to resolve references (containers, execs, volumes, networks) and/or
    read the body."""

    containers: tuple[str, ...] = ()
    body: bool = False
    execs: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()


class ResponseFilter(Protocol):
    """Drops the items of a JSON list response or of a JSON-lines stream a client may not see;
    in ``json-object`` mode, rewrites the one object a response holds (``rewrite``)."""

    @property
    def mode(self) -> Literal["json-list", "json-lines", "json-object"]: ...

    # For a json-list: None when the answer is the list itself, else the key of the
    # list inside the answer's object ("Volumes" for GET /volumes).
    @property
    def list_key(self) -> str | None: ...

    def keep(self, item: Mapping[str, Any]) -> bool: ...

    def rewrite(self, item: dict[str, Any]) -> dict[str, Any]: ...


class ErrorAnswer(Protocol):
    """Rewrites a daemon error (status >= 400) before the client sees it.

    For answers that would name or reveal what the client may not see: the shell
    holds the whole (bounded) error body and sends ``rewrite``'s bytes instead.
    """

    def rewrite(self, status: int, body: bytes) -> bytes: ...


@dataclass(frozen=True)
class Allow:
    """Forward the request. ``rule`` names what allowed it (for the audit log)."""

    rule: str
    target: str | None = None  # forward this raw target instead of the client's
    response_filter: ResponseFilter | None = None
    # Forward this body instead of the client's (only after asking for the body).
    body: bytes | None = None
    error_answer: ErrorAnswer | None = None


@dataclass(frozen=True)
class Deny:
    """Answer ``status`` with ``{"message": message}``; forward nothing."""

    message: str
    status: int = 403
    rule: str | None = None


Decision = Allow | Deny | NeedFacts


class Decider(Protocol):
    """Decides requests. Implementations are pure and cheap; the shell sequences them."""

    @property
    def name(self) -> str: ...

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision: ...


def libpod_refusal(request: Request) -> Deny | None:
    """The answer every decider gives Podman's libpod API (see routes.LIBPOD_REFUSED)."""
    if not is_libpod(request.target):
        return None
    return Deny(f"dockgate: {request.method} {request.target.api_path} {LIBPOD_REFUSED}",
                status=404, rule="libpod")


@mypyc_attr(allow_interpreted_subclasses=True)
class AllowAll:
    """Forwards every routable request. For tests and explicit ``--allow-all`` only."""

    name = "allow-all"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        if request.match is None:
            return libpod_refusal(request) or Deny(
                f"dockgate: {request.method} {request.target.path} is not a Docker Engine "
                "API route", status=404, rule="no-route")
        return Allow(rule="allow-all")


@mypyc_attr(allow_interpreted_subclasses=True)
class DenyAll:
    """Denies everything: the default for a client no policy names."""

    name = "deny-all"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        return Deny(f"dockgate: {request.method} {request.target.path} denied — no policy "
                    f"grants anything to {client.describe()}", rule="deny-all")
