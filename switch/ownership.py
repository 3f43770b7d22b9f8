"""Multi-instance bookkeeping for a PostgreSQL ledger (docs/scaleout.md): which terminals this instance
owns, when it may give one back, and numbers drawn from blocks no other instance can draw.

``switch.ledger.Ledger`` in multi-instance mode holds one ``Ownership`` (over the lock connection,
``switch.ledger_backends.pg_control.PostgresControl``) and two ``NumberBlocks`` (ledger sequences and
unposted RRNs). The ledger's public methods say which thread may call what; this module keeps the
state transitions consistent between those threads:

    (absent) --lock (worker)--> LOCKED --install (loop)--> OWNED --release (loop)--> RELEASING
    RELEASING --unlock (worker)--> (absent);  RELEASING --lock (worker)--> LOCKED (release undone)

A PostgreSQL session-level advisory lock is re-entrant for its session, so taking a lock this
instance already holds would stack a second hold that one unlock never drops: every transition that
touches the database happens with the state checked under ``_lock`` (``_cond``), never blindly.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from switch.ledger_backends.base import LedgerError, RowSource
from switch.ledger_backends.pg_control import PostgresControl, TerminalBusy

__all__ = ["NumberBlocks", "Ownership", "TerminalBusy", "TerminalRows", "TerminalState", "UnflushedTerminal"]


class UnflushedTerminal(LedgerError):
    """A terminal cannot be given up yet: some of its rows are not committed."""


class TerminalState(enum.Enum):
    ACQUIRING = "acquiring"  # a worker thread is waiting for the lock
    LOCKED = "locked"  # lock held, rows read or being read, not yet installed: not decided for
    OWNED = "owned"  # installed: this instance decides for the terminal
    RELEASING = "releasing"  # forgotten in memory, lock not yet dropped in the database


@dataclass(frozen=True, slots=True)
class TerminalRows:
    """A terminal's committed rows, read after its lock was taken (``Ledger.fetch_terminal_rows``)
    and applied by ``Ledger.install_terminal_rows``."""

    terminal: str
    rows: dict[str, list[tuple[Any, ...]]]
    fresh_block: int | None = None
    """Start of a sequence block claimed after these rows were read, when this instance's current block
    is not above them (see ``NumberBlocks.move_past``)."""

    def source(self) -> RowSource:
        return lambda table: self.rows.get(table, [])

    @property
    def count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    @property
    def last_seq(self) -> int:
        """The highest sequence among the rows (0: none)."""
        return max((rows[-1][0] for rows in self.rows.values() if rows), default=0)


class Ownership:
    """Terminal states, last rows and activity of one multi-instance ledger."""

    def __init__(self, control: PostgresControl) -> None:
        self.control = control
        self._cond = threading.Condition()
        self._states: dict[str, TerminalState] = {}
        self._owned: set[str] = set()  # OWNED terminals: read on the hot path, changed on the loop thread only
        self._last_row: dict[str, int] = {}  # terminal -> highest seq appended for it (loop thread)
        self._last_seen: dict[str, float] = {}  # terminal -> caller's clock at its last request (loop thread)

    # -- hot path (loop thread) -----------------------------------------------------------------

    def owns(self, terminal: str) -> bool:
        if self.control.lost is not None:
            raise LedgerError(f"{self.control.name}: the ledger's lock connection is lost ({self.control.lost}); "
                              "this instance must stop deciding")
        return terminal in self._owned

    def note_row(self, terminal: str, seq: int) -> None:
        """A row of ``terminal`` was queued: refused unless the terminal is owned (and the lock alive)."""
        if not self.owns(terminal):
            raise LedgerError(f"{self.control.name}: terminal {terminal!r} is not owned by this instance; "
                              "acquire it before deciding for it")
        self._last_row[terminal] = seq

    def touch(self, terminal: str, now: float) -> None:
        self._last_seen[terminal] = now

    # -- worker thread ----------------------------------------------------------------------------

    def lock(self, terminal: str, timeout: float) -> None:
        """Hold the terminal's lock (already held: nothing to take; being taken by another thread:
        wait for it, within ``timeout``). TerminalBusy when another instance keeps it."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._states.get(terminal) is not TerminalState.ACQUIRING,
                                       timeout=max(0.0, timeout)):
                raise TerminalBusy(f"{self.control.name}: terminal {terminal!r} is still being acquired")
            state = self._states.get(terminal)
            if state is TerminalState.RELEASING:
                self._states[terminal] = TerminalState.LOCKED  # the release is undone: the lock never went
            if state is not None:
                return
            self._states[terminal] = TerminalState.ACQUIRING
        try:
            self.control.lock_terminal(terminal, timeout)
        except BaseException:
            with self._cond:
                del self._states[terminal]
                self._cond.notify_all()
            raise
        with self._cond:
            self._states[terminal] = TerminalState.LOCKED
            self._cond.notify_all()

    def unlock_released(self) -> list[str]:
        """Drop in the database the lock of every RELEASING terminal; the terminals unlocked."""
        done = []
        with self._cond:
            for terminal in [t for t, s in self._states.items() if s is TerminalState.RELEASING]:
                self.control.unlock_terminal(terminal)
                del self._states[terminal]
                done.append(terminal)
        return done

    # -- loop thread ------------------------------------------------------------------------------

    def begin_install(self, terminal: str) -> bool:
        """May this terminal's rows be installed now? False: it is already OWNED (a second fetch of
        the same terminal; installing would drop decisions not yet committed)."""
        with self._cond:
            state = self._states.get(terminal)
            if state is TerminalState.OWNED:
                return False
            if state is not TerminalState.LOCKED:
                raise LedgerError(f"{self.control.name}: terminal {terminal!r} is not locked by this instance "
                                  f"({'not acquired' if state is None else state.value}); fetch its rows again")
            return True

    def finish_install(self, terminal: str, now: float | None) -> None:
        with self._cond:
            self._states[terminal] = TerminalState.OWNED
        self._owned.add(terminal)
        if now is not None:
            self._last_seen[terminal] = now

    def release(self, terminal: str, committed_seq: int) -> None:
        """OWNED -> RELEASING when every row of the terminal is committed; else UnflushedTerminal."""
        with self._cond:
            if self._states.get(terminal) is not TerminalState.OWNED:
                raise LedgerError(f"{self.control.name}: terminal {terminal!r} is not owned by this instance")
            last = self._last_row.get(terminal, 0)
            if last > committed_seq:
                raise UnflushedTerminal(f"{self.control.name}: terminal {terminal!r} has rows up to sequence "
                                        f"{last} not yet committed (committed: {committed_seq})")
            self._states[terminal] = TerminalState.RELEASING
        self._owned.discard(terminal)
        self._last_row.pop(terminal, None)
        self._last_seen.pop(terminal, None)

    def idle(self, idle_seconds: float, now: float, committed_seq: int) -> list[str]:
        """Owned terminals not seen for ``idle_seconds`` (never seen counts as idle) whose rows are all
        committed, sorted."""
        never = float("-inf")
        return sorted(t for t in self._owned if now - self._last_seen.get(t, never) >= idle_seconds
                      and self._last_row.get(t, 0) <= committed_seq)

    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)


class NumberBlocks:
    """Numbers handed out from blocks claimed durably and atomically in the database, so no other
    instance can ever hand out the same number (ledger sequences, and so RRNs; unposted RRNs).

    ``take`` (loop thread) never waits for the database while the current block lasts; once half of it
    is used, ``want`` asks the group committer to claim the next block (``prefetch``, worker thread,
    on the write connection). Only if that spare block has not arrived when the current one runs out
    does ``take`` claim one itself (``claim_now``, a round trip on the lock connection). Blocks come
    back in increasing order from the database, so the numbers one instance hands out only grow; a
    spare claimed before a block claimed in a hurry is dropped (a gap, never a reuse).
    """

    def __init__(self, block: int, claim_now: Callable[[int], int]) -> None:
        self.block = block
        self._claim_now = claim_now
        self._lock = threading.Lock()
        start = claim_now(block)
        self._next, self._end = start, start + block
        self._spare: int | None = None
        self.want = False

    def take(self) -> int:
        number = self._next
        if number >= self._end:
            number = self._new_block()
        self._next = number + 1
        if not self.want and self._spare is None and self._end - self._next < self.block // 2:
            self.want = True
        return number

    def _new_block(self) -> int:
        with self._lock:
            spare, self._spare = self._spare, None
            self.want = False
        if spare is None or spare < self._end:
            spare = self._claim_now(self.block)
        self._end = spare + self.block
        return spare

    @property
    def next_number(self) -> int:
        return self._next

    def move_past(self, number: int, fresh_block: int | None) -> None:
        """Hand out only numbers above ``number`` from now on (loop thread).

        A terminal's rows replay in sequence order, so the rows this instance adds to a terminal it
        took over must number above the previous owner's; but this instance's block may have been
        claimed before the previous owner's. A block claimed after those rows were committed starts
        above them (claims only grow); ``fresh_block`` is one the worker thread claimed already, else
        one is claimed here."""
        if self._next > number:
            return
        with self._lock:
            self._spare = None  # claimed before the fresh block: below it
            self.want = False
        start = fresh_block if fresh_block is not None and fresh_block > number else self._claim_now(self.block)
        if start <= number:  # cannot happen while claims only grow; never hand out a number twice
            raise LedgerError(f"sequence block {start} is not above sequence {number}")
        self._next, self._end = start, start + self.block

    def prefetch(self, claim: Callable[[int], int]) -> None:
        """Claim the next block if ``take`` asked for one (worker thread, any time)."""
        if not self.want:
            return
        start = claim(self.block)
        with self._lock:
            if self._spare is None and start >= self._end:
                self._spare = start
            self.want = False

    @property
    def last(self) -> int:
        """The last number handed out (one below the block start before any)."""
        return self._next - 1
