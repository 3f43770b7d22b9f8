"""Counts of counted fault rules (``when.nth`` / ``every`` / ``first``) shared by every instance in the
PostgreSQL ledger, so ``serve --multi-instance`` / ``--workers`` instances count matches as one host.

One row per (scope, rule id) in ``fault_counters`` (ledger schema v3); a match is one atomic statement::

    INSERT INTO fault_counters VALUES (scope, rule_id, 1)
    ON CONFLICT (scope, rule_id) DO UPDATE SET matched = fault_counters.matched + 1 RETURNING matched

PostgreSQL serialises concurrent upserts of one row, so no match is lost or counted twice, whichever
instance (or thread) sends it. The scope says which plan a count belongs to (``switch.faults.shared``).

The hot path never blocks the Trio loop: ``count`` runs the statement in a worker thread under a
limiter of its own (one thread, one connection of its own, never the ledger's). When the database
cannot be reached the matches of that frame are *not counted* (the counted rules do not fire on it),
one error line says so and one more when the database answers again; reconnecting is tried at most
once per ``RETRY_SECONDS``, so an outage costs frames no waiting beyond the first failed try.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import trio

from switch.ledger_backends.base import LedgerError
from switch.ledger_backends.postgresql import display_url, reason

__all__ = ["RETRY_SECONDS", "STATEMENT_TIMEOUT_MS", "FaultCounters"]

log = logging.getLogger("switch.faults")

RETRY_SECONDS = 1.0
"""After a failure, frames within this long are not counted without trying the database again."""
STATEMENT_TIMEOUT_MS = 2000
"""A count that takes longer is given up (the frame is not counted): a stuck database must not hold
every connection whose frame matched a counted rule."""
CONNECT_TIMEOUT = 2  # seconds (libpq counts whole seconds)

_UPSERT_HEAD = "INSERT INTO fault_counters (scope, rule_id, matched) VALUES "
_UPSERT_TAIL = (" ON CONFLICT (scope, rule_id) DO UPDATE SET matched = fault_counters.matched + 1"
                " RETURNING rule_id, matched")


class FaultCounters:
    """The shared counts, on a connection of their own. ``count`` from Trio, ``count_blocking`` from a thread."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name  # the URL without its password, for messages
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # one statement at a time on the connection (threads from tests too)
        self._limiter = trio.CapacityLimiter(1)
        self._failed_at: float | None = None  # monotonic time of the last failure; None while healthy
        self.failures = 0
        """Counts that failed (database unreachable or too slow): frames whose counted rules did not fire."""

    @classmethod
    def open(cls, url: str) -> FaultCounters:
        """Connect and check the table is there; LedgerError (one line) if not."""
        counters = cls(url, display_url(url))
        try:
            conn = counters._connect()
            found = conn.execute("SELECT to_regclass('fault_counters') IS NOT NULL").fetchone()
        except psycopg.Error as exc:
            counters.close()
            raise LedgerError(f"{counters.name}: cannot open the fault counters: {reason(exc)}") from None
        if not found or not found[0]:
            counters.close()
            raise LedgerError(f"{counters.name}: the ledger has no fault_counters table (ledger schema 3 adds it; "
                              "open the ledger with this version once to migrate it)")
        return counters

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            # the statement timeout bounds a slow server; TCP timeouts bound one that vanished mid-count
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                         application_name="iso-switch fault counters",
                                         options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                                         tcp_user_timeout=STATEMENT_TIMEOUT_MS + 1000, keepalives=1,
                                         keepalives_idle=5, keepalives_interval=2, keepalives_count=2)
        return self._conn

    def count_blocking(self, keys: Sequence[tuple[str, str]]) -> dict[str, int] | None:
        """One match of each (scope, rule id), in one statement: rule id -> its count now (from 1).
        None when the database could not count them (the caller treats the frame as not counted)."""
        if not keys:
            return {}
        with self._lock:
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
                self.failures += 1
                return None
            placeholders = ", ".join(["(%s, %s, 1)"] * len(keys))
            params = [value for key in keys for value in key]
            try:
                rows = self._connect().execute(_UPSERT_HEAD + placeholders + _UPSERT_TAIL, params).fetchall()
            except psycopg.Error as exc:
                self._broken(exc)
                return None
            if self._failed_at is not None:
                log.warning("fault counters: %s answers again; counted rules count again", self.name)
                self._failed_at = None
            return {str(rule_id): int(matched) for rule_id, matched in rows}

    def _broken(self, exc: psycopg.Error) -> None:
        self.failures += 1
        if self._failed_at is None:
            log.error("fault counters: %s: %s; counted fault rules (nth/every/first) do not fire until the "
                      "database answers again", self.name, reason(exc))
        self._failed_at = time.monotonic()
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self.close()

    async def count(self, keys: Sequence[tuple[str, str]]) -> dict[str, int] | None:
        """``count_blocking`` in a worker thread of the counters' own limiter (the loop keeps running)."""
        return await trio.to_thread.run_sync(self.count_blocking, keys, limiter=self._limiter)

    def current(self, keys: Sequence[tuple[str, str]]) -> dict[str, int]:
        """The counts now, without counting (blocking; for tests and tools): rule id -> count."""
        with self._lock:
            rows = self._connect().execute(
                "SELECT rule_id, matched FROM fault_counters WHERE (scope, rule_id) IN (SELECT * FROM unnest("
                "%s::text[], %s::text[]))", ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
        return {str(rule_id): int(matched) for rule_id, matched in rows}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

