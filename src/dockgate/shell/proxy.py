"""The proxy: listeners, the active decider, the upstream pool, the open connections.

``serve`` runs one event loop (one process) until SIGTERM/SIGINT and shuts down
gracefully: stop accepting, close idle connections, let plain requests finish
within the grace, then close the rest. SIGHUP swaps in a new decider. ``run``
is ``dockgate serve``: one process, or with ``--workers N`` a supervisor
(``workers.Supervisor``) that binds every listener once and forks N workers
each running ``serve`` on the inherited sockets. Each worker has its own
decider, upstream pool and audit writer; nothing is shared between them but
the listening sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

import uvloop

from dockgate import admin, learnlog, metrics, systemd, tlsstream, watch
from dockgate.decision import Decider
from dockgate.errors import ConfigError
from dockgate.settings import Settings
from dockgate.shell import audit
from dockgate.shell.connection import ClientConnection, Host
from dockgate.shell.containers import ContainerDirectory, names_containers
from dockgate.shell.feeds import Feeds
from dockgate.shell.listeners import (
    BoundListener,
    Listener,
    bind_listeners,
    close_listeners,
    raise_fd_limit,
    remove_socket_files,
)
from dockgate.shell.upstream import Upstream
from dockgate.shell.workers import SIGNALS, Supervisor

log = logging.getLogger("dockgate.proxy")


class Proxy(Host):
    """Listeners, the active decider, the upstream pool and the open connections."""

    def __init__(self, settings: Settings, decider: Decider) -> None:
        self.settings = settings
        self.decider = decider
        self.upstream = Upstream(settings.upstream_url, settings.connect_timeout)
        self.feeds = Feeds(self.upstream)
        self.listeners = [Listener(url) for url in settings.listeners]
        self.connections: set[ClientConnection] = set()
        self.servers: list[asyncio.Server] = []
        self.shutting_down = False
        self.bound: list[str] = []
        self.owns_files = False
        self.quiet: asyncio.Event | None = None
        self.recorder = learnlog.recorder(settings)
        self._directory: ContainerDirectory | None = None

    @property
    def directory(self) -> ContainerDirectory | None:
        """The directory of running containers, while some client rule names one."""
        return self._directory

    def follow_containers(self) -> None:
        """Keep the directory of running containers while some client rule names one."""
        if names_containers(self.decider):
            if self._directory is None:
                self._directory = ContainerDirectory(self.upstream)
                self._directory.start()
        elif self._directory is not None:
            self._directory.stop()
            self._directory = None

    async def start(self, bound: list[BoundListener] | None = None) -> None:
        """Serve on ``bound`` (sockets a supervisor bound before forking), else bind now.

        OSError if a listener cannot be bound. Whoever binds owns the unix socket files
        and removes them at shutdown.
        """
        if bound is None:
            bound = bind_listeners(self.settings, self.listeners)
            self.owns_files = True
        self.follow_containers()
        loop = asyncio.get_running_loop()
        for entry in bound:
            self.bound.extend(entry.names)

            def factory(listener: Listener = entry.listener) -> ClientConnection:
                return ClientConnection(self, listener)

            serving: Callable[[], asyncio.Protocol] = factory
            if entry.context is not None:
                # dockgate's own TLS transport: it can half-close (see tlsstream).
                serving = tlsstream.server_factory(entry.context, factory,
                                                   self.settings.header_timeout)
            for sock in entry.sockets:
                if entry.listener.kind == "unix":
                    server = await loop.create_unix_server(serving, sock=sock, backlog=1024)
                else:
                    server = await loop.create_server(serving, sock=sock, backlog=1024)
                self.servers.append(server)

    def reload(self, build: Callable[[], Decider]) -> None:
        """SIGHUP: swap in a new decider; an invalid configuration keeps the old one."""
        try:
            decider = build()
        except ConfigError as error:
            log.error("reload failed, keeping the current policy: %s", error)
            metrics.count_reload("failed")
            return
        metrics.count_reload("ok")
        self.decider = decider
        self.follow_containers()
        log.info("reloaded: decisions now by %s", decider.name)

    def check_quiet(self) -> None:
        """During shutdown: note when no plain request is in flight any more."""
        if self.quiet is not None and not any(c.busy_plain for c in self.connections):
            self.quiet.set()

    async def shutdown(self) -> None:
        """Stop accepting; let plain requests finish within the grace; close the rest."""
        self.shutting_down = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        self.quiet = asyncio.Event()
        self.check_quiet()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.quiet.wait(), self.settings.shutdown_grace)
        for conn in list(self.connections):
            conn.close()
        if self._directory is not None:
            self._directory.stop()
        self.upstream.close_all()
        if self.owns_files:
            remove_socket_files(self.listeners)
        await asyncio.sleep(0)


async def serve(settings: Settings, decider: Decider,
                reload: Callable[[], Decider] | None = None,
                bound: list[BoundListener] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; the exit status.

    ``bound``: the sockets a supervisor bound for this worker (None: bind them here).
    """
    proxy = Proxy(settings, decider)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before listening: a client may signal as soon as it can connect (SIGHUP's
    # default action would kill the process).
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, proxy.reload, reload)
    admin_servers = await admin.start(settings)
    try:
        await proxy.start(bound)
    except OSError as error:
        log.error("cannot listen: %s", error)
        return 1
    # Image lists another process rewrites reload the policy as SIGHUP does.
    watcher = asyncio.ensure_future(watch.watch(proxy, reload)) if reload is not None else None
    if bound is None:
        log.info("listening on %s, forwarding to %s, decisions by %s",
                 ", ".join(proxy.bound), settings.upstream_url, decider.name)
        systemd.notify(f"READY=1\nSTATUS=listening on {', '.join(proxy.bound)}")
    else:
        # The supervisor forked us with its signals blocked: what arrived while we
        # started (a SIGHUP right after the fork) is delivered to the handlers now,
        # instead of killing a worker that had none yet.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        _watch_parent(loop, os.getppid(), stop)
        log.info("worker serving (pid %d)", os.getpid())
    await stop.wait()
    log.info("shutting down")
    if watcher is not None:
        watcher.cancel()
    if bound is None:
        systemd.notify("STOPPING=1")
    for server in admin_servers:
        server.close()
    await proxy.shutdown()
    return 0


def _watch_parent(loop: asyncio.AbstractEventLoop, parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL) stops too, instead of serving unsupervised."""
    if os.getppid() != parent:
        stop.set()
        return
    loop.call_later(1.0, _watch_parent, loop, parent, stop)



def _worker(settings: Settings, decider: Decider, reload: Callable[[], Decider] | None,
            bound: list[BoundListener]) -> int:
    try:
        code: int = uvloop.run(serve(settings, decider, reload, bound))
    finally:
        audit.flush()
    return code


def run(settings: Settings, decider: Decider,
        reload: Callable[[], Decider] | None = None) -> int:
    """``dockgate serve``: the event loop is uvloop; ``--workers N`` forks N of them."""
    raise_fd_limit()
    if settings.workers == 1:
        result: int = uvloop.run(serve(settings, decider, reload))
        audit.flush()
        return result
    listeners = [Listener(url) for url in settings.listeners]
    admin.bind(settings)  # before forking: every worker serves the admin sockets too
    try:
        bound = bind_listeners(settings, listeners)
    except OSError as error:
        log.error("cannot listen: %s", error)
        return 1
    log.info("listening on %s, forwarding to %s, decisions by %s, %d workers",
             ", ".join(name for entry in bound for name in entry.names),
             settings.upstream_url, decider.name, settings.workers)
    systemd.notify("READY=1")  # connections queue on the bound sockets until a worker accepts
    try:
        return Supervisor(settings.workers, lambda: _worker(settings, decider, reload, bound),
                          reloads=reload is not None).run()
    finally:
        close_listeners(bound)
        remove_socket_files(listeners)

