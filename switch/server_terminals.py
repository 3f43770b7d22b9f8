"""Multi-instance serving (docs/scaleout.md): own a terminal before deciding for it, give idle ones back.

Several switch instances share one PostgreSQL ledger; at any moment at most one of them decides for a
given terminal (``Ledger.owns``). This module is the Trio side of that protocol, shared by every
listener of one switch:

* ``TerminalOwner.acquire`` runs before the host decides a request of a terminal not owned yet. One
  ``trio.Lock`` per terminal makes concurrent requests of that terminal share one fetch; the fetch
  (lock, fence, committed rows: ``Ledger.fetch_terminal_rows``) runs on a thread limiter of its own,
  so it never takes the group committer's thread. What was fetched is ALWAYS installed, even if the
  request that asked is gone (the fetch is shielded): a fetched-but-not-installed terminal would keep
  its database lock and never be released. ``TerminalBusy`` (another instance keeps it past the wait)
  means the request is answered "issuer unavailable" (91) without deciding.
* ``TerminalOwner.run`` (in the server's root nursery, beside the committer) releases terminals idle
  for ``idle_seconds``, drops their database locks and checks the lock session every ``sweep_every``
  seconds. A ``LedgerError`` (the lock session is gone: our locks may be too) stops the switch, as a
  failed commit does: no further decision may be made.
* Sign-on sessions are ledger rows of the terminal (``Ledger.session``): every session change a host
  makes is a row committed before its answer leaves. On every install (take-over) each listener's host
  restores the terminal's session and working keys from the rows just installed (exactly what the
  database says, or none), so a terminal signed on at another instance transacts here without signing
  on again; on every release the hosts drop their memory of it (the database is the truth).

In single-instance mode no ``TerminalOwner`` exists and the server's hot path pays one ``is None`` test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from switch.ledger import Ledger, LedgerError, TerminalBusy, UnflushedTerminal

__all__ = ["DEFAULT_IDLE_SECONDS", "DEFAULT_SWEEP_EVERY", "DEFAULT_WAIT", "OwnerStats", "SessionMemory",
           "TerminalOwner"]

log = logging.getLogger("switch.server")

DEFAULT_WAIT = 2.0
"""Seconds a request waits for a terminal another instance owns before it is answered 91."""
DEFAULT_IDLE_SECONDS = 30.0
"""A terminal with no request for this long (and all its rows committed) is given back."""
DEFAULT_SWEEP_EVERY = 2.0
"""Seconds between idle releases and lock-session checks."""
FETCH_THREADS = 4
"""Fetches running at once (each mostly waits on a try-lock poll or one snapshot read)."""


class SessionMemory(Protocol):
    """What a listener's host does when a terminal moves in or out (``switch.host.Host``)."""

    def restore_terminal(self, terminal: str) -> None: ...

    def forget_terminal(self, terminal: str) -> None: ...


@dataclass
class OwnerStats:
    """What ``/health`` and the tests read: how often terminals moved in and out."""

    acquired: int = 0  # terminals installed (taken over) by this instance
    busy: int = 0  # requests answered 91 because another instance kept the terminal
    released: int = 0  # terminals given back (idle)


class _TerminalLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0


class TerminalOwner:
    """Acquires terminals for one multi-instance ledger and releases idle ones (see the module docstring).

    Each listener's host registers with ``add_host``: its ``restore`` (``Host.restore_terminal``) runs
    after every install of a terminal, its ``forget`` (``Host.forget_terminal``) after every release.
    ``clock`` is the time fed to ``touch_terminal`` and idle release (``trio.current_time`` by default,
    so tests can use a virtual clock).
    """

    def __init__(self, ledger: Ledger, hosts: Iterable[SessionMemory] = (), *, wait: float = DEFAULT_WAIT,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS, sweep_every: float = DEFAULT_SWEEP_EVERY,
                 clock: Callable[[], float] = trio.current_time) -> None:
        if not ledger.multi_instance:
            raise ValueError(f"{ledger.path}: terminal ownership needs a ledger opened in multi-instance mode")
        if wait < 0 or idle_seconds <= 0 or sweep_every <= 0:
            raise ValueError("wait must be >= 0 s, idle_seconds and sweep_every > 0 s")
        self.ledger = ledger
        self.wait = wait
        self.idle_seconds = idle_seconds
        self.sweep_every = sweep_every
        self.clock = clock
        self.stats = OwnerStats()
        self._hosts: list[SessionMemory] = list(hosts)
        self._locks: dict[str, _TerminalLock] = {}
        self._limiter = trio.CapacityLimiter(FETCH_THREADS)
        self._failure: LedgerError | None = None
        self._failed = trio.Event()

    def add_host(self, host: SessionMemory) -> None:
        """A listener's host: its memory of sessions follows the terminals this instance owns."""
        self._hosts.append(host)

    @property
    def failure(self) -> LedgerError | None:
        return self._failure

    # -- per request (loop) ---------------------------------------------------------------------------

    def owned(self, terminal: str) -> bool:
        """The hot path: True (and the terminal's activity noted) when this instance decides for it now.
        Raises LedgerError once the lock session is lost (and stops the switch through ``run``)."""
        try:
            if not self.ledger.owns(terminal):
                return False
        except LedgerError as exc:
            self._fail(exc)
            raise
        self.ledger.touch_terminal(terminal, self.clock())
        return True

    async def acquire(self, terminal: str, *, wait: float | None = None) -> bool:
        """Own ``terminal`` before deciding for it: True when owned now, False when another instance
        kept it past the wait (answer 91, decide nothing; ``wait`` None: the owner's). LedgerError: the
        lock session failed."""
        if self.owned(terminal):
            return True
        entry = self._locks.get(terminal)
        if entry is None:
            entry = self._locks[terminal] = _TerminalLock()
        entry.users += 1
        try:
            async with entry.lock:
                if self.owned(terminal):  # a concurrent request of the terminal fetched it meanwhile
                    return True
                owned = False
                with trio.CancelScope(shield=True):  # always install what is fetched: see the module docstring
                    owned = await self._fetch_and_install(terminal, self.wait if wait is None else wait)
                return owned
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[terminal]

    async def _fetch_and_install(self, terminal: str, wait: float) -> bool:
        ledger = self.ledger
        try:
            rows = await trio.to_thread.run_sync(ledger.fetch_terminal_rows, terminal, wait, limiter=self._limiter)
        except TerminalBusy as exc:
            self.stats.busy += 1
            log.info("terminal %s: not taken over: %s", terminal, exc)
            return False
        except LedgerError as exc:
            self._fail(exc)
            raise
        if ledger.install_terminal_rows(rows, self.clock()):
            self.stats.acquired += 1
            for host in self._hosts:
                host.restore_terminal(terminal)
            session = ledger.session(terminal)
            log.info("terminal %s: taken over with %d committed rows (%s)", terminal, rows.count,
                     "signed on" if session is not None and session.signed_on else "no session")
        return True

    def _fail(self, exc: LedgerError) -> None:
        if self._failure is None:
            self._failure = exc
            log.error("multi-instance ledger: %s; this instance stops deciding", exc)
        self._failed.set()

    # -- the periodic task ------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Loop thread, no I/O: give back every idle, fully committed terminal; the terminals released."""
        released = self.ledger.release_idle_terminals(self.idle_seconds, self.clock())
        for terminal in released:
            for host in self._hosts:
                host.forget_terminal(terminal)
        self.stats.released += len(released)
        return released

    async def give_back(self, terminals: Iterable[str]) -> list[str]:
        """Release these terminals now (not when idle) and drop their database locks: for an operator's
        action that took terminals over only to change them (a sessions reset). Terminals not owned, or
        with a row still uncommitted, are skipped; returns the ones given back."""
        given: list[str] = []
        for terminal in terminals:
            if not self.ledger.owns(terminal):
                continue
            try:
                self.ledger.release_terminal(terminal)
            except UnflushedTerminal:  # a request of it is being decided: the idle sweep gives it back later
                continue
            for host in self._hosts:
                host.forget_terminal(terminal)
            given.append(terminal)
        self.stats.released += len(given)
        if given:
            try:
                await trio.to_thread.run_sync(self.ledger.unlock_released_terminals, limiter=self._limiter)
            except LedgerError as exc:
                self._fail(exc)
                raise
        return given

    def _unlock_and_check(self) -> None:
        self.ledger.unlock_released_terminals()
        self.ledger.check_locks()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Release idle terminals and check the lock session every ``sweep_every`` s until cancelled;
        raises the LedgerError that stops the switch (the lock session is gone)."""
        task_status.started()
        while True:
            with trio.move_on_after(self.sweep_every):
                await self._failed.wait()
            if self._failure is not None:
                raise self._failure
            released = self.sweep()
            if released:
                log.info("released %d idle terminal(s): %s", len(released), ", ".join(released[:10]))
            try:
                await trio.to_thread.run_sync(self._unlock_and_check, limiter=self._limiter)
            except LedgerError as exc:
                self._fail(exc)
                raise
