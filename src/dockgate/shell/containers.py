"""The directory of running containers: which container a client is.

Theory of operation. When a ``clients:`` rule names containers (``container:``,
``compose_service:``, ``compose_project:``, ``container_labels:``), each serving
process keeps a ``ContainerDirectory``: the daemon's running containers by ID
and by address, kept current by following ``GET /events``. A connection is
identified when it is accepted, by an in-memory lookup (``identify``): a TCP or
TLS peer by its address, a unix peer by the 64-hex container ID in its
process's cgroup (``/proc/PID/cgroup``, from SO_PEERCRED's pid).

It never trusts a stale mapping:

- Sync order: the events stream is opened first, then the containers are
  listed, so no change falls between the two. Until both are done, and from the
  moment the stream breaks until a new stream and a fresh list are in, nothing
  resolves: every client is *unidentified*, and a rule naming containers gives
  it no policy (``decision.Client.unidentified``).
- An event about a container (start, restart, die, destroy or remove, rename,
  network connect and disconnect) takes it out of the directory at once, in the data callback; it
  comes back when a ``GET /containers/{id}/json`` made after the event says it
  runs. While such a refresh is pending, an address that maps to no container
  is unidentified rather than "no container".
- An address held by more than one container (one network namespace shared
  with ``--network container:X``, or the same address on two networks) and a
  process whose cgroups name more than one known container are ambiguous, and a
  cgroup naming a container ID the directory does not know (a container that
  just started, another daemon's) is unknown: both are unidentified too.
- A unix peer's pid may be reused once the peer exits: on kernels with
  SO_PEERPIDFD (Linux 6.5) the cgroup read is confirmed by the pidfd still
  being alive afterwards; a peer already gone is unidentified.

On TCP the peer address is the container's only when the client reaches
dockgate directly on a container network; through a published port the peer is
docker-proxy or the host's gateway address, which names no container.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from dockgate import http1
from dockgate.decision import Client, ContainerFacts, Decider
from dockgate.errors import UpstreamError
from dockgate.policy_decider import PolicyDecider
from dockgate.policy_learn import LearningDecider
from dockgate.policy_match import peer_ip
from dockgate.shell.upstream import Upstream, UpstreamConnection

log = logging.getLogger("dockgate.containers")

# The events that change which container holds which address, name or process
# (Podman says remove for destroy). Selected here, not by an "event" filter:
# Podman 4.3 matches only one of several values given for one filter key.
EVENT_FILTERS = json.dumps({"type": ["container", "network"]}, separators=(",", ":"))
CHANGES = frozenset({"start", "restart", "die", "destroy", "remove", "rename"})
NETWORK_CHANGES = frozenset({"connect", "disconnect"})  # Actor.Attributes.container moved
RETRY_SECONDS = 1.0
MAX_EVENT_LINE = 1 << 20   # an event is a few hundred bytes; a longer line is a broken stream

NOT_SYNCED = ("dockgate's list of running containers is not in sync with the daemon (it "
              "is starting, or lost the daemon's events and is listing again)")
CHANGING = ("a container changed a moment ago and dockgate has not yet asked the daemon "
            "about it")
SHARED = "its address is held by more than one container (a shared network namespace)"
NESTED = "its process belongs to more than one container the daemon runs"
UNKNOWN_CGROUP = "its process is in a container this daemon does not (yet) run"
GONE = "its process exited before dockgate could tell which container it was"
HIDDEN = ("its process is not visible to dockgate (another pid namespace; run dockgate "
          "in the host's pid namespace to name unix clients by container)")

# Docker's cgroup layouts: cgroupfs ".../docker/<id>" (v1 and v2), systemd
# ".../docker-<id>.scope"; Podman's "libpod-<id>" and "libpod-<id>.scope". A
# path component is one of them.
_CGROUP_ID = re.compile(r"(?:docker-|libpod-)?([0-9a-f]{64})(?:\.scope)?")


def names_containers(decider: Decider) -> bool:
    """Whether the decider has client rules naming containers (then a directory is kept)."""
    if isinstance(decider, LearningDecider):  # observe mode: --learn beside --policy
        decider = decider.inner
    return isinstance(decider, PolicyDecider) and decider.names_containers


def container_ids(cgroup: str) -> frozenset[str]:
    """The container IDs named in a ``/proc/PID/cgroup`` text (v1 and v2 lines)."""
    found = set()
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        for part in path.split("/"):
            matched = _CGROUP_ID.fullmatch(part)
            if matched:
                found.add(matched.group(1))
    return frozenset(found)


def normalize_address(address: str) -> str | None:
    """An IP address in one spelling (IPv4-mapped as IPv4, no zone); None if it is not one."""
    ip = peer_ip(address)
    return ip.compressed if ip is not None else None


@dataclass(frozen=True)
class Entry:
    """One running container: its facts, its own addresses, whose netns it joined."""

    facts: ContainerFacts
    addresses: frozenset[str]
    network_of: str | None = None   # NetworkMode container:REF


def entry_of(item: Mapping[str, Any]) -> Entry:
    """A ``GET /containers/json`` item or a ``GET /containers/{id}/json`` answer as an Entry."""
    config = item.get("Config") or {}
    if "Names" in item:
        names = [n for n in item.get("Names") or [] if isinstance(n, str)]
        own = [n[1:] for n in names if n.startswith("/") and "/" not in n[1:]]
        name = own[0] if own else ""
        labels = item.get("Labels") or {}
        image = str(item.get("Image", ""))
    else:
        name = str(item.get("Name", "")).lstrip("/")
        labels = config.get("Labels") or {}
        image = str(config.get("Image", ""))
    mode = str((item.get("HostConfig") or {}).get("NetworkMode", ""))
    networks = (item.get("NetworkSettings") or {}).get("Networks") or {}
    addresses = set()
    for network in networks.values():
        if not isinstance(network, dict):
            continue
        for key in ("IPAddress", "GlobalIPv6Address"):
            address = normalize_address(str(network.get(key) or ""))
            if address is not None:
                addresses.add(address)
    facts = ContainerFacts(id=str(item.get("Id", "")), name=name,
                           labels={str(k): str(v) for k, v in labels.items()}, image=image)
    return Entry(facts, frozenset(addresses),
                 mode.removeprefix("container:") if mode.startswith("container:") else None)


class ContainerDirectory:
    """Running containers by ID and address, following the daemon's events."""

    def __init__(self, upstream: Upstream, proc: str = "/proc") -> None:
        self.upstream = upstream
        self.proc = proc
        self.synced = False
        self._entries: dict[str, Entry] = {}
        self._by_address: dict[str, tuple[str, ...]] = {}
        self._pending: dict[str, int] = {}          # id -> refreshes queued after an event
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stream: UpstreamConnection | None = None
        self._sink: _EventStream | None = None
        self._reached = False   # this attempt got in sync

    # lookups: in memory, from the connection's accept callback ---------------------------

    def identify(self, client: Client, pidfd: int | None = None) -> Client:
        """``client`` with the container it is, or with why that cannot be told."""
        if not self.synced:
            return replace(client, unidentified=NOT_SYNCED)
        if client.transport == "unix":
            return self._identify_process(client, pidfd)
        address = normalize_address(client.address or "")
        holders = self._by_address.get(address or "", ())
        if len(holders) > 1:
            return replace(client, unidentified=SHARED)
        if holders:
            return replace(client, container=self._entries[holders[0]].facts)
        return replace(client, unidentified=CHANGING) if self._pending else client

    def _identify_process(self, client: Client, pidfd: int | None) -> Client:
        if not client.pid:
            return replace(client, unidentified=HIDDEN)
        try:
            with open(f"{self.proc}/{client.pid}/cgroup", encoding="ascii",
                      errors="replace") as handle:
                ids = container_ids(handle.read())
        except OSError:
            return replace(client, unidentified=GONE)
        if pidfd is not None and not _alive(pidfd):
            return replace(client, unidentified=GONE)  # the pid may be someone else's now
        if not ids:
            return client  # a process in no container
        known = [self._entries[i] for i in ids if i in self._entries and i not in self._pending]
        if len(known) > 1:
            return replace(client, unidentified=NESTED)
        if not known:
            return replace(client, unidentified=UNKNOWN_CGROUP)
        return replace(client, container=known[0].facts)

    # following the daemon -------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._lose()

    async def _run(self) -> None:
        quiet = False   # a retry that fails again before any sync warns at debug level only
        while True:
            self._reached = False
            try:
                await self._follow()
            except UpstreamError as error:
                log.log(logging.DEBUG if quiet and not self._reached else logging.WARNING,
                        "container directory: %s; clients named by container get no policy "
                        "until it is back in sync (retrying every %ss)", error.message,
                        RETRY_SECONDS)
            except Exception:
                log.exception("container directory: internal error; listing again")
            quiet = not self._reached
            self._lose()
            await asyncio.sleep(RETRY_SECONDS)

    async def _follow(self) -> None:
        """Open the events stream, list the running containers, then apply events."""
        conn = await self.upstream.acquire()
        self._stream = conn
        self._sink = stream = _EventStream(self)
        conn.sink = stream
        conn.reader.expect("GET")
        conn.write(http1.request_head("GET", f"/events?filters={quote(EVENT_FILTERS)}",
                                      [(b"Host", b"docker")]))
        await stream.opened
        status, items = await self.upstream.get_json("/containers/json")
        if status != 200 or not isinstance(items, list):
            raise UpstreamError(f"dockgate: the daemon answered {status} to the container "
                                "list")
        self._entries = {entry.facts.id: entry for entry in
                         (entry_of(item) for item in items if isinstance(item, dict))}
        self._reindex()
        if stream.done:
            raise UpstreamError(stream.ended)
        self.synced = self._reached = True
        log.info("container directory in sync: %d running containers", len(self._entries))
        while True:
            ident = await self._queue.get()
            if ident is None:
                raise UpstreamError(stream.ended)
            await self._refresh(ident)

    async def _refresh(self, ident: str) -> None:
        status, data = await self.upstream.get_json(f"/containers/{quote(ident, safe='')}/json")
        message = str(data.get("message", "")) if isinstance(data, dict) else ""
        if status == 200 and isinstance(data, dict) and (data.get("State") or {}).get(
                "Running"):
            self._entries[ident] = entry_of(data)
        elif status in (200, 404) or (status == 500 and message.endswith("no such container")):
            # Podman 4.3 answers 500 "... does not exist in database: no such container"
            # while it removes one, then 404.
            self._entries.pop(ident, None)
        else:
            raise UpstreamError(f"dockgate: the daemon answered {status} when asked about "
                                f"container {ident!r}")
        left = self._pending.get(ident, 1) - 1
        if left > 0:
            self._pending[ident] = left
        else:
            self._pending.pop(ident, None)
        self._reindex()

    def changed(self, ident: str) -> None:
        """An event named this container: out of every lookup until it is refreshed."""
        self._pending[ident] = self._pending.get(ident, 0) + 1
        self._reindex()
        self._queue.put_nowait(ident)

    def ended(self) -> None:
        """The events stream ended or broke: nothing resolves from now on."""
        self.synced = False
        self._queue.put_nowait(None)

    def _lose(self) -> None:
        self.synced = False
        self._entries = {}
        self._by_address = {}
        self._pending = {}
        self._queue = asyncio.Queue()
        if self._sink is not None:
            self._sink.done = True   # what the old stream still reports is not news
            self._sink = None
        if self._stream is not None:
            self._stream.abort()
            self._stream = None

    def _reindex(self) -> None:
        live = {ident: entry for ident, entry in self._entries.items()
                if ident not in self._pending}
        holders: defaultdict[str, list[str]] = defaultdict(list)
        for ident, entry in live.items():
            addresses: Iterable[str] = entry.addresses
            if entry.network_of is not None:
                owner = _find(entry.network_of, live)
                addresses = owner.addresses if owner is not None else ()
            for address in addresses:
                holders[address].append(ident)
        self._by_address = {address: tuple(ids) for address, ids in holders.items()}


def _find(ref: str, entries: Mapping[str, Entry]) -> Entry | None:
    """The container a ``container:REF`` network mode names: full ID, name or ID prefix."""
    if ref in entries:
        return entries[ref]
    found = [e for e in entries.values() if e.facts.name == ref] or [
        e for ident, e in entries.items() if ident.startswith(ref)]
    return found[0] if len(found) == 1 else None


def _alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process, alive
    return True


class _EventStream:
    """The sink of the ``GET /events`` response: each event invalidates its container."""

    def __init__(self, directory: ContainerDirectory) -> None:
        self.directory = directory
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.ended = "dockgate: the daemon's events stream ended"
        self.done = False

    def on_events(self, events: list[http1.ResponseEvent]) -> int:
        for event in events:
            if self.done:
                break
            self._event(event)
        return len(events)

    def _event(self, event: http1.ResponseEvent) -> None:
        if isinstance(event, http1.ResponseHead):
            if event.status < 200:
                return
            if event.status != 200:
                self._fail(f"dockgate: the daemon answered {event.status} to GET /events")
            elif not self.opened.done():
                self.opened.set_result(None)
        elif isinstance(event, http1.Data):
            self.buffer += bytes(event.data)
            *lines, self.buffer = self.buffer.split(b"\n")
            if len(self.buffer) > MAX_EVENT_LINE:
                self._fail("dockgate: the daemon's events stream sent an overlong line")
                return
            for line in lines:
                if line.strip() and not self._apply(line):
                    return
        else:
            self._fail(self.ended)

    def _apply(self, line: bytes) -> bool:
        try:
            event = json.loads(line)
            network = event["Type"] == "network"
            if event["Action"] not in (NETWORK_CHANGES if network else CHANGES):
                return True  # exec_start, health_status, a network created...: nothing moved
            actor = event["Actor"]
            ident = actor["Attributes"]["container"] if network else actor["ID"]
        except (ValueError, KeyError, TypeError):
            self._fail("dockgate: the daemon's events stream sent an event dockgate cannot "
                       "read")
            return False
        if isinstance(ident, str) and ident:
            self.directory.changed(ident)
        return True

    def on_lost(self, error: UpstreamError) -> None:
        self._fail(error.message)

    def _fail(self, why: str) -> None:
        if self.done:
            return
        self.done = True
        self.ended = why
        if not self.opened.done():
            self.opened.set_exception(UpstreamError(why))
        else:
            self.directory.ended()
