"""The pre-fork worker supervisor (``--workers N``).

It knows nothing of HTTP or of the rest of the shell: it forks ``count``
workers that each run ``work()`` (the proxy's serve loop on sockets bound
before the fork) and keeps them running. Besides ``work`` it only tells systemd
and the metrics when workers stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Final

from dockgate import metrics, systemd

log = logging.getLogger("dockgate.workers")

SIGNALS: Final = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class Supervisor:
    """Pre-fork workers: the parent binds every listener once, each worker serves them all.

    Why a shared accept queue rather than SO_REUSEPORT: it works for every listener
    kind (unix sockets and TLS included), a port bound once cannot be joined by
    another process of the same user, and the socket file has one owner. The kernel
    hands each new connection to one of the workers waiting in accept; Docker clients
    keep connections alive, so accept balance matters less than request cost.

    The parent runs no event loop (a loop must not cross a fork): it blocks in
    ``sigtimedwait`` on SIGCHLD, SIGTERM, SIGINT and SIGHUP. A worker that dies
    unexpectedly is replaced, at most ``MAX_RESTARTS`` per ``RESTART_WINDOW`` seconds
    so that a crash loop does not spin; SIGTERM/SIGINT are forwarded (each worker
    finishes gracefully) and the parent exits 0 once all are gone; SIGHUP is forwarded
    and each worker reloads its own decider (a ConfigError keeps its current one).
    """

    MAX_RESTARTS: Final = 10
    RESTART_WINDOW: Final = 60.0
    SIGNALS: Final = SIGNALS

    def __init__(self, count: int, work: Callable[[], int], reloads: bool) -> None:
        self.count = count
        self.work = work            # runs one worker to its end; its exit status
        self.reloads = reloads      # whether SIGHUP means something to the workers
        self.workers: dict[int, int] = {}        # pid -> slot
        self.waiting: list[int] = []             # slots to restart when the rate allows
        self.restarts: list[float] = []          # monotonic times of recent restarts
        self.stopping = False

    def run(self) -> int:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            for slot in range(self.count):
                self._spawn(slot)
            while self.workers or (self.waiting and not self.stopping):
                timeout = self._restart_due()
                info = signal.sigtimedwait(self.SIGNALS, timeout)
                if info is not None:
                    self._on_signal(info.si_signo)
                self._reap()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.info("all workers stopped")
        return 0

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = slot
            log.info("worker %d started (pid %d)", slot, pid)
            return
        # The worker: signals stay blocked until serve() has its handlers (it unblocks
        # them); its exit code is ours.
        code = 1
        try:
            code = self.work()
        except BaseException:
            log.exception("worker %d failed", slot)
        finally:
            logging.shutdown()
            os._exit(code)

    def _on_signal(self, signo: int) -> None:
        if signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            log.info("shutting down %d workers", len(self.workers))
            systemd.notify("STOPPING=1")
            self.stopping = True
            self.waiting.clear()
            self._send(signal.SIGTERM)
        elif signo == signal.SIGHUP and not self.stopping and self.reloads:
            self._send(signal.SIGHUP)  # without a reload, SIGHUP's default would kill them

    def _send(self, signo: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            metrics.worker_exited(pid)
            if self.stopping:
                continue
            log.error("worker %d (pid %d) ended unexpectedly (%s); replacing it", slot, pid,
                      _describe_status(status))
            self.waiting.append(slot)

    def _restart_due(self) -> float:
        """Restart waiting workers the rate allows; seconds until the next check."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.RESTART_WINDOW]
        while self.waiting and len(self.restarts) < self.MAX_RESTARTS:
            self.restarts.append(now)
            self._spawn(self.waiting.pop(0))
        if self.waiting:
            log.error("workers keep failing: next restart in %.0f s",
                      self.restarts[0] + self.RESTART_WINDOW - now)
            return max(0.1, self.restarts[0] + self.RESTART_WINDOW - now)
        return 1.0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
