"""The PostgreSQL side of per-terminal ownership (docs/scaleout.md): the connection an instance keeps
for its locks, the advisory-lock keys, and the fence every group commit passes.

Three session-level advisory locks per terminal, all 63-bit keys from a keyed hash of the terminal id
(so every instance, of any version that keeps the namespace, derives the same key):

* **owner** ``(terminal)``: exclusive; at most one instance decides for the terminal.
* **tag** ``(terminal, instance)``: exclusive, taken with the owner lock and released with it. Only
  this instance's control session can hold it, so a commit can ask "does MY control session still
  hold this terminal?" with a try-lock that must fail (``fence_check``), without reading
  ``pg_locks`` (which materialises the whole lock table).
* **fence** ``(terminal)``: each group commit takes it SHARED for its transaction (for every
  terminal in the batch) before checking its tags; a new owner takes it EXCLUSIVE for a moment after
  winning the owner lock and before reading the terminal's rows. So a commit that passed its check
  before the previous owner's session died is waited for (its rows are in the reload), and one that
  starts after finds its tag gone and fails as a whole. That makes "a lost lock connection never
  commits a decision" a property of the database, not of how fast the instance notices.

Lock-table note: session advisory locks live in PostgreSQL's shared lock table
(``max_locks_per_transaction`` x connections entries); each owned terminal holds two. Instances give
idle terminals back (``Ledger.release_idle_terminals``), and a server owning thousands of terminals
at once needs ``max_locks_per_transaction`` raised accordingly.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from switch.ledger_backends.base import LedgerError
from switch.ledger_backends.postgresql import (
    WRITER_LOCK_KEY,
    claim_sequences_on,
    claim_unposted_on,
    reason,
    terminal_rows_on,
)

__all__ = ["LOCK_POLL", "PostgresControl", "TerminalBusy", "lock_key"]

_NAMESPACE = b"iso8583-switch-emulator/ledger-ownership/v1"
LOCK_POLL = 0.02
"""Seconds between two tries of a taken owner lock (try-locks keep every statement short, so the
control connection is never blocked for a whole wait)."""
_KEY_MASK = (1 << 63) - 1  # non-negative bigints: pg_locks' classid/objid halves read back unambiguously


class TerminalBusy(LedgerError):
    """Another instance owns the terminal and did not give it up within the wait."""


@functools.lru_cache(maxsize=1 << 16)  # every group commit asks again for the same few terminals
def lock_key(kind: str, terminal: str, instance: int = 0) -> int:
    """The advisory-lock key of ``kind`` ("owner", "tag", "fence") for ``terminal`` (and ``instance``
    for tags): stable across processes and versions, in a namespace of this program's own."""
    digest = hashlib.blake2b(f"{kind}\x00{terminal}\x00{instance}".encode(), key=_NAMESPACE, digest_size=8).digest()
    return int.from_bytes(digest, "big") & _KEY_MASK


class PostgresControl:
    """The lock connection of one instance in multi-instance mode (thread-safe: one statement at a time
    under ``self._lock``). Any failure of it marks it ``lost`` for good: the caller must stop deciding."""

    def __init__(self, url: str, name: str, instance: int, *, connect_timeout: float = 10.0) -> None:
        self.name = name
        self.instance = instance
        self.lost: str | None = None  # why the connection is unusable; None while it is fine
        self._lock = threading.Lock()
        try:
            self._conn: psycopg.Connection[Any] | None = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, round(connect_timeout)),
                application_name="iso-switch-locks")
        except psycopg.Error as exc:
            raise LedgerError(f"{name}: cannot open the ledger's lock connection: {reason(exc)}") from None
        try:
            row = self._run("SELECT pg_try_advisory_lock_shared(%s)", (WRITER_LOCK_KEY,))
        except BaseException:
            self.close()
            raise
        if not (row and row[0]):
            self.close()
            raise LedgerError(f"{name}: a single-instance switch is serving from this ledger; stop it before "
                              "starting instances in multi-instance mode")

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._lock, self._failing():
            return self._connection().execute(sql, params).fetchone()

    def _connection(self) -> psycopg.Connection[Any]:
        if self.lost is not None:
            raise LedgerError(f"{self.name}: the ledger's lock connection is lost ({self.lost}); "
                              "this instance must stop deciding")
        if self._conn is None:
            raise LedgerError(f"{self.name}: ledger is closed")
        return self._conn

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """A database error on this connection means its locks may be gone: mark it lost, fail-stop."""
        try:
            yield
        except psycopg.Error as exc:
            self.lost = reason(exc)
            raise LedgerError(f"{self.name}: the ledger's lock connection failed ({self.lost}); "
                              "this instance must stop deciding") from None

    # -- ownership ------------------------------------------------------------------------------

    def lock_terminal(self, terminal: str, timeout: float) -> None:
        """Take the owner lock (polling a try-lock until ``timeout``: TerminalBusy), then pass the fence
        (wait for a commit of the previous owner that is still in flight), then take this instance's tag."""
        owner = lock_key("owner", terminal)
        deadline = time.monotonic() + max(0.0, timeout)
        for _ in range(int(max(0.0, timeout) / LOCK_POLL) + 2):  # bounded by count and by the deadline
            row = self._run("SELECT pg_try_advisory_lock(%s)", (owner,))
            if row and row[0]:
                break
            if time.monotonic() >= deadline:
                raise TerminalBusy(f"{self.name}: terminal {terminal!r} is owned by another instance "
                                   f"(waited {timeout:g}s)")
            time.sleep(LOCK_POLL)
        else:
            raise TerminalBusy(f"{self.name}: terminal {terminal!r} is owned by another instance "
                               f"(waited {timeout:g}s)")
        fence, tag = lock_key("fence", terminal), lock_key("tag", terminal, self.instance)
        with self._lock, self._failing():
            conn = self._connection()
            wait_ms = max(1, round(max(deadline - time.monotonic(), 1.0) * 1000))
            try:
                with conn.transaction():  # lock_timeout for this wait only
                    conn.execute(f"SET LOCAL lock_timeout = {wait_ms}")
                    conn.execute("SELECT pg_advisory_lock(%s)", (fence,))
            except psycopg.errors.LockNotAvailable:
                conn.execute("SELECT pg_advisory_unlock(%s)", (owner,))
                raise TerminalBusy(f"{self.name}: terminal {terminal!r}: the previous owner's commit did not "
                                   "finish in time") from None
            conn.execute("SELECT pg_advisory_unlock(%s), pg_advisory_lock(%s)", (fence, tag))

    def unlock_terminal(self, terminal: str) -> None:
        """Give the terminal up (tag first, so no commit of ours can pass the fence check after)."""
        self._run("SELECT pg_advisory_unlock(%s), pg_advisory_unlock(%s)",
                  (lock_key("tag", terminal, self.instance), lock_key("owner", terminal)))

    def terminal_rows(self, terminal: str) -> dict[str, list[tuple[Any, ...]]]:
        """The terminal's committed rows per table, seq ascending, from one snapshot."""
        with self._lock, self._failing():
            return terminal_rows_on(self._connection(), terminal)

    def claim_sequences(self, block: int) -> int:
        """A fresh block of ``block`` ledger sequences (its first number): see ``claim_sequences_on``."""
        with self._lock, self._failing():
            return claim_sequences_on(self._connection(), block)

    def claim_unposted(self, block: int) -> int:
        """A fresh block of unposted RRN numbers (its first): an atomic increment, as at every open."""
        with self._lock, self._failing():
            return claim_unposted_on(self._connection(), block)

    def ping(self) -> None:
        """Raise LedgerError (and stay lost) if the lock session is gone."""
        self._run("SELECT 1")

    # -- the fence, run inside the writer's transaction -----------------------------------------

    def fence_check(self, cursor: psycopg.Cursor[Any], terminals: Collection[str]) -> None:
        """In the group commit's transaction (``cursor`` of the WRITE connection): hold every terminal's
        fence shared until COMMIT, then make sure this instance's control session still holds every
        tag; raise LedgerError (rolling the whole batch back) if one is gone."""
        if self.lost is not None:
            raise LedgerError(f"{self.name}: the ledger's lock connection is lost ({self.lost}); not committing")
        names = sorted(terminals)
        cursor.execute("SELECT pg_advisory_xact_lock_shared(f) FROM unnest(%s::bigint[]) AS f",
                       ([lock_key("fence", t) for t in names],))
        cursor.execute("SELECT array_agg(n) FROM unnest(%s::bigint[], %s::text[]) AS u(k, n) "
                       "WHERE pg_try_advisory_xact_lock_shared(k)",
                       ([lock_key("tag", t, self.instance) for t in names], names))
        row = cursor.fetchone()
        if row and row[0]:
            self.lost = f"terminal lock(s) of {', '.join(row[0][:5])} no longer held"
            raise LedgerError(f"{self.name}: {self.lost}; the lock session is gone, not committing")

    def close(self) -> None:
        """Close the connection: PostgreSQL drops every lock it held (what a crash does too)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

