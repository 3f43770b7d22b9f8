"""Counts of counted fault rules (``when.nth`` / ``every`` / ``first``) shared by every instance in the
PostgreSQL ledger, so ``serve --multi-instance`` / ``--workers`` instances count matches as one host.

One row per (scope, rule id) in ``fault_counters`` (ledger schema v3); a match is one atomic statement::

    INSERT INTO fault_counters VALUES (scope, rule_id, 1)
    ON CONFLICT (scope, rule_id) DO UPDATE SET matched = fault_counters.matched + 1 RETURNING matched

PostgreSQL serialises concurrent upserts of one row, so no match is lost or counted twice, whichever
instance (or thread) sends it. The scope says which plan a count belongs to (``switch.faults.shared``).

The hot path never blocks the Trio loop: ``count`` runs the statement in a worker thread under a
limiter of its own (one thread, one connection of its own, never the ledger's). While ``run`` serves
(the switch starts it beside its listeners), the counts of every frame waiting at once go in ONE
statement (``matched + n``) and each frame gets its own consecutive number, so a busy counted rule
costs one round trip per batch, not per frame; without ``run`` each ``count`` is its own statement. When the database
cannot be reached the matches of that frame are *not counted* (the counted rules do not fire on it),
one error line says so and one more when the database answers again; reconnecting is tried at most
once per ``RETRY_SECONDS``, so an outage costs frames no waiting beyond the first failed try.
"""

from __future__ import annotations

import contextlib
import logging
import math
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
_UPSERT_TAIL = (" ON CONFLICT (scope, rule_id) DO UPDATE SET matched = fault_counters.matched + excluded.matched"
                " RETURNING scope, rule_id, matched")
MAX_BATCH = 1_000
"""Frames counted in one statement at most (each waits for its count: at most one per connection)."""

Key = tuple[str, str]  # (scope, rule id)


class _Request:
    """One frame's counted rules, waiting for ``run`` to count them."""

    __slots__ = ("done", "keys", "result")

    def __init__(self, keys: Sequence[Key]) -> None:
        self.keys = keys
        self.done = trio.Event()
        self.result: dict[str, int] | None = None


class FaultCounters:
    """The shared counts, on a connection of their own. ``count`` from Trio, ``count_blocking`` from a thread."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name  # the URL without its password, for messages
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # one statement at a time on the connection (threads from tests too)
        self._limiter = trio.CapacityLimiter(1)
        self._send: trio.MemorySendChannel[_Request] | None = None  # set while ``run`` batches counts
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

    def count_blocking(self, keys: Sequence[Key]) -> dict[str, int] | None:
        """One match of each (scope, rule id), in one statement: rule id -> its count now (from 1).
        None when the database could not count them (the caller treats the frame as not counted)."""
        return self.count_many_blocking([keys])[0]

    def count_many_blocking(self, frames: Sequence[Sequence[Key]]) -> list[dict[str, int] | None]:
        """``count_blocking`` for several frames in ONE statement: each (scope, rule) is added the number
        of frames that matched it, and the frames get consecutive counts in the order given."""
        totals: dict[Key, int] = {}
        for keys in frames:
            for key in keys:
                totals[key] = totals.get(key, 0) + 1
        if not totals:
            return [{} for _ in frames]
        with self._lock:
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
                self.failures += len(frames)
                return [None] * len(frames)
            placeholders = ", ".join(["(%s, %s, %s)"] * len(totals))
            params = [value for (scope, rule_id), n in totals.items() for value in (scope, rule_id, n)]
            try:
                rows = self._connect().execute(_UPSERT_HEAD + placeholders + _UPSERT_TAIL, params).fetchall()
            except psycopg.Error as exc:
                self._broken(exc, len(frames))
                return [None] * len(frames)
            if self._failed_at is not None:
                log.warning("fault counters: %s answers again; counted rules count again", self.name)
                self._failed_at = None
        following = {(str(scope), str(rule_id)): int(matched) - totals[(str(scope), str(rule_id))] + 1
                     for scope, rule_id, matched in rows}
        results: list[dict[str, int] | None] = []
        for keys in frames:
            counts: dict[str, int] = {}
            for key in keys:
                counts[key[1]] = following[key]
                following[key] += 1
            results.append(counts)
        return results

    def _broken(self, exc: psycopg.Error, frames: int = 1) -> None:
        self.failures += frames
        if self._failed_at is None:
            log.error("fault counters: %s: %s; counted fault rules (nth/every/first) do not fire until the "
                      "database answers again", self.name, reason(exc))
        self._failed_at = time.monotonic()
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self.close()

    async def count(self, keys: Sequence[Key]) -> dict[str, int] | None:
        """``count_blocking`` in a worker thread of the counters' own limiter (the loop keeps running);
        batched with the other frames waiting at the same time while ``run`` serves."""
        send = self._send
        if send is None or not keys:
            return await trio.to_thread.run_sync(self.count_blocking, keys, limiter=self._limiter)
        request = _Request(keys)
        send.send_nowait(request)  # never full: each waiting frame holds one place (see MAX_BATCH)
        await request.done.wait()
        return request.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Count waiting frames in batches until cancelled (start it in the switch's nursery). A frame
        still waiting when it stops is answered "not counted"."""
        send, receive = trio.open_memory_channel[_Request](math.inf)  # bounded by the frames waiting
        self._send = send
        task_status.started()
        batch: list[_Request] = []
        try:
            while True:
                batch = [await receive.receive()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                results = await trio.to_thread.run_sync(self.count_many_blocking, [r.keys for r in batch],
                                                        limiter=self._limiter)
                for request, result in zip(batch, results, strict=True):
                    request.result = result
                    request.done.set()
                batch = []
        finally:
            self._send = None
            send.close()
            for request in batch:  # the statement's thread was abandoned only if the loop is going away
                request.done.set()
            while True:
                try:
                    receive.receive_nowait().done.set()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

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

