"""The terminal's durable memory: STAN, batch, pending reversals and advices, the batch journal.

Everything a careful terminal must not forget when it is killed lives here, in one SQLite file
(stdlib ``sqlite3``, WAL, ``synchronous=FULL``: a method that returned has reached the disk).

``deferred_sync=True`` (the load runner's stores) trades when, not whether. Each ``transaction()``
is a savepoint (atomic: a failed step is undone, the steps before it stand) inside one open SQLite
transaction — the first step after a sync begins that transaction instead, as undoing it is
rolling back (two statements fewer per request) —, and ``sync()`` commits it: with
``synchronous=FULL`` that commit writes the WAL and fsyncs it before it returns. The driver
calls ``sync()`` before every request it writes, so whatever a request depends on (its STAN,
journal entry and reversal) is on disk before the request leaves, exactly as with FULL. What waits
for the next request (or ``close``) is only what an answer changed; a terminal killed before then
has its last entry in flight again on restart, and its stored reversal goes out: conservative, no
money moves the terminal does not know about. One commit and one fsync per request instead of one
per step, and both can run in a worker thread.

What a commit costs is what it writes: every page a request touched goes into the WAL and is
fsynced. So an existing meta key is UPDATEd (``INSERT OR REPLACE`` also rewrote its index page), a
new file gets 2048-byte pages (about half the bytes per commit for one more page; the page size is
in the file's header, so older files keep theirs and every release opens both), and in deferred
mode ``sync()`` checkpoints every 32 commits: the next commit then writes the WAL from its start
again, over blocks the file already has, where a growing WAL made every fdatasync write the
file's new size too (measured: ~25 % less kernel time per sync). None of this changes what is on
disk when, only how many bytes it takes: the schema is the same ("1"), and SQLite's WAL keeps each
commit all-or-nothing across a crash, checkpoint included.

Reads of the meta row, the pending reversals and advices and recently written journal entries are
served from memory (one process per store file, so the copy cannot go stale; a rolled-back
transaction drops it). Writes go through one long-lived cursor (``Connection.execute`` makes a
cursor, and a weak reference to it, per statement).

Each public method is one transaction. ``transaction()`` groups several into one, and the policy
uses it for every step that must be atomic: allocating a STAN, journalling a request and storing
its pending reversal commit together, *before* the request may be sent; recording the answer and
deleting the reversal commit together too. So whatever instant the process dies at, the file holds
either the state before a step or the state after it, never half of one.

Secrets are never at rest: track data (35, 36, 45), PIN data (52, 53) and ICC data (55) are removed
from every message before it is stored. The PAN is kept (a reversal copies the original's fields
and a batch upload names each card, as real terminals must), and shown masked in the journal.

Sign-on state is recorded for ``status`` only and is not trusted after a restart: the host forgets
sessions when it restarts, so a terminal signs on again at start.

One process per store file, like the host's ledger; ``check_same_thread=False`` lets a driver run
calls in a worker thread, one at a time.

The records themselves (``JournalEntry``, the pending reversal, advice and settlement, STAN and
batch numbering) are values in ``terminal.records``; this module persists them and re-exports them.
The pending reversal and advice queues, and the stored form of a message, are in
``terminal.store_queues`` (``TerminalStore`` inherits the queues).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from typing import Any

from switch.codec.composite import mask_pan
from switch.codec.message import Message
from terminal.records import (
    JOURNAL_KINDS,
    JOURNAL_STATES,
    JournalEntry,
    PendingAdvice,
    PendingReversal,
    PendingSettlement,
    next_batch_number,
    next_stan,
)
from terminal.store_queues import (
    SECRET_FIELDS,
    PendingQueues,
    StoreError,
    _check_code_like,
    _copy,
    _json_and_stored,
    _message_from,
    _message_json,
    fsync_directory,
)
from terminal.store_sql import (
    _INSERT_ENTRY,
    _SCHEMA,
    _SELECT_ENTRY,
    _UPDATED_AT,
    _Transaction,
    _update_plan,
)

__all__ = [
    "FIRST_BATCH",
    "JOURNAL_KINDS",
    "JOURNAL_STATES",
    "SCHEMA_VERSION",
    "SECRET_FIELDS",
    "JournalEntry",
    "PendingAdvice",
    "PendingReversal",
    "PendingSettlement",
    "StoreError",
    "TerminalStore",
    "next_batch_number",
    "next_stan",
]

SCHEMA_VERSION = "1"
_CHECKPOINT_EVERY = 32  # commits between WAL checkpoints in deferred mode (run by sync(), off the event loop)
_ENTRY_CACHE = 8  # journal entries kept in memory (the ones a running transaction reads back)
_PAGE_SIZE = 2048  # for new files; a file keeps the page size it was made with
FIRST_BATCH = "000001"


class TerminalStore(PendingQueues):
    """The durable store of one terminal; see the module docstring. Build with ``TerminalStore.open``."""

    def __init__(self, connection: sqlite3.Connection, path: str, terminal_id: str, *,
                 deferred_sync: bool = False) -> None:
        self._conn: sqlite3.Connection | None = connection
        self._cur: sqlite3.Cursor | None = connection.cursor()  # every write: no new cursor (and weakref) each
        self._tx = _Transaction(self)
        self.path = path
        self.terminal_id = terminal_id
        self._depth = 0
        self._whole_step = False  # deferred mode: the open step began the transaction (no savepoint)
        self.deferred_sync = deferred_sync and path != ":memory:"
        self._unsynced = False
        self._commits = 0  # since the last checkpoint (deferred mode)
        self._meta_cache: dict[str, str] | None = None
        self._reversal_cache: dict[int, PendingReversal] | None = None
        self._advice_cache: dict[int, PendingAdvice] | None = None
        # recently written journal rows, in _JOURNAL_COLUMNS order (the request is the stored Message, never
        # handed out): a list changed in place by update_entry, one JournalEntry made per read
        self._entry_rows: dict[int, list[Any]] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], terminal_id: str, *, deferred_sync: bool = False) -> TerminalStore:
        """Open (creating if new) the store of terminal ``terminal_id`` (field 41, padding ignored).

        A store belongs to one terminal: opening it for another is an error, because STANs and
        pending reversals are per terminal. ``":memory:"`` gives a throw-away store (tests, and
        ``iso-terminal load --store-dir :memory:``). ``deferred_sync``: see the module docstring.
        """
        name = os.fspath(path)
        owner = terminal_id.rstrip(" ") if isinstance(terminal_id, str) else ""
        if not owner:
            raise StoreError(f"terminal id must be a non-blank string, got {terminal_id!r}")
        if name != ":memory:":
            parent = os.path.dirname(os.path.abspath(name))
            if not os.path.isdir(parent):
                raise StoreError(f"cannot create terminal store {name}: directory {parent} does not exist")
        try:
            conn = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open terminal store {name}: {exc}") from None
        try:
            if name != ":memory:":
                conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # a no-op unless the file is new (see below)
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"{name}: SQLite refused WAL journal mode (got {mode})")
            deferred = deferred_sync and name != ":memory:"
            conn.execute("PRAGMA synchronous=FULL")  # deferred: its only commits are sync()'s (write + fsync)
            if deferred:  # one process per store anyway; no shared-memory locking on every commit
                conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA foreign_keys=ON")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("schema_version", SCHEMA_VERSION),
                        ("terminal_id", owner),
                        ("stan", "000000"),
                        ("batch", FIRST_BATCH),
                    ],
                )
                conn.execute("COMMIT")
            elif "meta" not in tables:
                raise StoreError(f"{name} is an SQLite file but not a terminal store")
            else:
                meta = dict(conn.execute("SELECT key, value FROM meta"))
                if meta.get("schema_version") != SCHEMA_VERSION:
                    raise StoreError(
                        f"{name} has store schema {meta.get('schema_version')!r}; this version "
                        f"reads schema {SCHEMA_VERSION}"
                    )
                if meta.get("terminal_id") != owner:
                    raise StoreError(f"{name} is the store of terminal {meta.get('terminal_id')!r}, not {owner!r}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{name} is not a terminal store: {exc}") from None
        except StoreError:
            conn.close()
            raise
        if deferred:
            fsync_directory(os.path.dirname(os.path.abspath(name)))  # the file names, once: sync() covers the rest
        return cls(conn, name, owner, deferred_sync=deferred)

    def close(self) -> None:
        """Close the store; in deferred mode the last writes are made durable first."""
        if self._conn is not None:
            try:
                self.sync()
            finally:
                self._cur = None
                self._conn.close()
                self._conn = None

    @property
    def needs_sync(self) -> bool:
        """Whether writes were committed since the last ``sync`` (deferred mode only; never with FULL)."""
        return self._unsynced

    def sync(self) -> None:
        """Make every committed write durable (the commit writes and syncs the WAL; a checkpoint now and then).

        Deferred mode only (a no-op otherwise). Blocking: a driver with many terminals on one event
        loop runs it in a worker thread, while this terminal makes no other call.
        """
        if not self._unsynced:
            return
        conn = self._db()
        if conn.in_transaction:
            try:
                # synchronous=FULL: SQLite writes the WAL and fsyncs it inside this one call, with the GIL
                # released throughout (an explicit fdatasync after it was one more GIL round trip per store
                # for the syncer's threads, which contend with the event loop)
                self._exec("COMMIT")
            except sqlite3.Error as exc:
                self._forget()
                raise StoreError(f"terminal store {self.path}: cannot write: {exc}") from None
            self._commits += 1
        if self._commits >= _CHECKPOINT_EVERY:
            self._exec("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # syncs the WAL, copies, syncs the database
            # (its result row read, so the shared cursor holds no pending statement)
            self._commits = 0
        self._unsynced = False

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> TerminalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"terminal store {self.path} is closed")
        return self._conn

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run a statement that returns no rows on the store's one cursor (reads use their own)."""
        cursor = self._cur
        if cursor is None:
            raise StoreError(f"terminal store {self.path} is closed")
        return cursor.execute(sql, params)

    def transaction(self) -> _Transaction:
        """Group the calls inside into one atomic, durable transaction (nesting joins the outer one)."""
        return self._tx

    def _forget(self) -> None:
        """Drop the in-memory copies (a rolled-back transaction may have changed them)."""
        self._meta_cache = None
        self._reversal_cache = None
        self._advice_cache = None
        self._entry_rows = {}

    def _metas(self) -> dict[str, str]:
        if self._meta_cache is None:
            self._meta_cache = dict(self._db().execute("SELECT key, value FROM meta"))
        return self._meta_cache

    def _meta(self, key: str) -> str | None:
        self._db()
        return self._metas().get(key)

    def _set_meta(self, key: str, value: str | None) -> None:
        with self._tx:
            metas = self._metas()
            if value is None:
                self._exec("DELETE FROM meta WHERE key = ?", (key,))
                metas.pop(key, None)
            else:
                self._put_meta(metas, key, value)

    def _put_meta(self, metas: dict[str, str], key: str, value: str) -> None:
        # an existing key is UPDATEd: INSERT OR REPLACE deletes and re-inserts the row, which also
        # rewrites the key's index page, one more page in every commit's WAL write and fsync
        if key in metas and self._exec("UPDATE meta SET value = ? WHERE key = ?", (value, key)).rowcount == 1:
            metas[key] = value
            return
        self._exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        metas[key] = value

    # -- counters -------------------------------------------------------------------------------

    @property
    def last_stan(self) -> str:
        """The STAN most recently handed out ("000000" before the first)."""
        return self._meta("stan") or "000000"

    def next_stan(self) -> str:
        """Hand out the next STAN; it is durable before this returns (or with the enclosing transaction)."""
        with self._tx:
            metas = self._metas()
            stan = next_stan(metas.get("stan") or "000000")
            self._put_meta(metas, "stan", stan)
        return stan

    @property
    def batch(self) -> str:
        """The open batch's number (n6)."""
        return self._meta("batch") or FIRST_BATCH

    def close_batch(self) -> str:
        """Close the open batch (settled) and open the next; returns the new number."""
        with self.transaction():
            new = next_batch_number(self.batch)
            self._set_meta("batch", new)
            self._set_meta("pending_settlement", None)
        return new

    # -- session (informational) -----------------------------------------------------------------

    @property
    def signed_on_at(self) -> float | None:
        """When the terminal last signed on (None: signed off or never). Not trusted after a restart."""
        value = self._meta("signed_on_at")
        return None if value is None else float(value)

    def record_signon(self, at: float | None) -> None:
        self._set_meta("signed_on_at", None if at is None else repr(float(at)))

    @property
    def clock_offset(self) -> tuple[float, float] | None:
        """(seconds to add to the terminal's clock to get the host's, when it was learnt) from the
        last sign-on reply that carried the host's date/time (fields 12/13); None: never synced.
        Kept across restarts: a terminal clock's error does not change when the process does."""
        value = self._meta("clock_offset")
        if value is None:
            return None
        offset, at = value.split(" ")
        return float(offset), float(at)

    def record_clock_offset(self, offset: float, at: float) -> None:
        self._set_meta("clock_offset", f"{float(offset)!r} {float(at)!r}")

    # -- journal --------------------------------------------------------------------------------

    def add_entry(
        self,
        *,
        kind: str,
        direction: str,
        request: Message,
        amount: int,
        currency: str,
        pan: str,
        state: str,
        now: float,
        batch: str | None = None,
        auth_code: str = "",
        reason: str = "",
    ) -> JournalEntry:
        """Journal a financial request (STAN and field 7 are read from it). Returns the entry."""
        if kind not in JOURNAL_KINDS:
            raise StoreError(f"journal kind must be one of {', '.join(JOURNAL_KINDS)}, got {kind!r}")
        if direction not in ("debit", "credit"):
            raise StoreError(f"direction must be debit or credit, got {direction!r}")
        if state not in JOURNAL_STATES:
            raise StoreError(f"journal state must be one of {', '.join(JOURNAL_STATES)}, got {state!r}")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise StoreError(f"amount must be an integer >= 0 (minor units), got {amount!r}")
        stan = request.fields.get(11)
        if stan is None:
            raise StoreError("a journalled request must carry field 11 (STAN)")
        masked = mask_pan(pan) if pan else ""
        text, stored = _json_and_stored(request)
        transmission_time = request.fields.get(7) or ""
        with self._tx:
            entry_batch = batch or self.batch
            cursor = self._exec(_INSERT_ENTRY, (entry_batch, kind, direction, request.mti, stan, transmission_time,
                                                amount, currency, masked, state, "", "", auth_code, reason, text,
                                                now, now))
            entry_id = cursor.lastrowid
            assert entry_id is not None
            row = [entry_id, entry_batch, kind, direction, request.mti, stan, transmission_time, amount, currency,
                   masked, state, "", "", auth_code, reason, stored, float(now), float(now)]
            self._remember(row)
        return self._fresh(row)

    def update_entry(self, entry_id: int, *, now: float, **changes: Any) -> JournalEntry:
        """Change an entry's state/response/RRN/auth code/reason/amount/batch; returns the new entry."""
        plan = _update_plan(tuple(changes))
        if isinstance(plan, str):
            raise StoreError(plan)
        values = tuple(changes.values())
        if plan.state >= 0 and values[plan.state] not in JOURNAL_STATES:
            raise StoreError(f"journal state must be one of {', '.join(JOURNAL_STATES)}, got {values[plan.state]!r}")
        for index, name, width in plan.codes:
            _check_code_like(name, values[index], width)
        with self._tx:
            if self._exec(plan.sql, (*values, now, entry_id)).rowcount != 1:
                raise StoreError(f"no journal entry {entry_id}")
            row = self._entry_rows.get(entry_id)
            if row is not None:
                changed = tuple(zip(plan.positions, values, strict=True))
                if isinstance(now, int | float) and all(type(value) is type(row[at]) for at, value in changed):
                    for at, value in changed:
                        row[at] = value  # (a failed step drops every row: see _forget)
                    row[_UPDATED_AT] = float(now)
                    return self._fresh(row)
                del self._entry_rows[entry_id]  # read back what SQLite made of the values
        return self.entry(entry_id)

    def _remember(self, row: list[Any]) -> None:
        rows = self._entry_rows
        if len(rows) >= _ENTRY_CACHE:
            del rows[next(iter(rows))]  # the oldest written
        rows[row[0]] = row

    @staticmethod
    def _fresh(row: list[Any]) -> JournalEntry:
        """The entry of a remembered row, with a request the caller may change without changing the store's."""
        r = row
        return JournalEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
                            r[14], _copy(r[15]), r[16], r[17])

    def entry(self, entry_id: int) -> JournalEntry:
        row = self._entry_rows.get(entry_id)
        if row is not None:
            self._db()
            return self._fresh(row)
        found = self._db().execute(_SELECT_ENTRY + " WHERE id = ?", (entry_id,)).fetchone()
        if found is None:
            raise StoreError(f"no journal entry {entry_id}")
        row = list(found)
        row[15] = _message_from(row[15])
        self._remember(row)
        return self._fresh(row)

    @staticmethod
    def _entry(row: tuple[Any, ...]) -> JournalEntry:
        # positional, in _JOURNAL_COLUMNS order (the order of JournalEntry's fields): a whole journal is
        # read at the end of every load run, so no dict per row
        (entry_id, batch, kind, direction, mti, stan, transmission_time, amount, currency, pan, state, response_code,
         rrn, auth_code, reason, request, created_at, updated_at) = row
        return JournalEntry(entry_id, batch, kind, direction, mti, stan, transmission_time, amount, currency, pan,
                            state, response_code, rrn, auth_code, reason, _message_from(request), created_at,
                            updated_at)

    def entries(self, *, batch: str | None = None, states: Iterable[str] | None = None) -> list[JournalEntry]:
        """Journal entries in the order they were made, optionally of one batch and some states."""
        sql = _SELECT_ENTRY
        clauses, params = [], []
        if batch is not None:
            clauses.append("batch = ?")
            params.append(batch)
        if states is not None:
            wanted = list(states)
            clauses.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return [self._entry(row) for row in self._db().execute(sql + " ORDER BY id", params)]

    def recover_in_flight(self, now: float) -> list[JournalEntry]:
        """After a restart: every "in-flight" entry becomes "unknown" (its stored reversal will go out)."""
        with self.transaction():
            stranded = self.entries(states=("in-flight",))
            for entry in stranded:
                self.update_entry(
                    entry.id,
                    now=now,
                    state="unknown",
                    reason="the terminal stopped before the answer was processed",
                )
        return [self.entry(entry.id) for entry in stranded]

    # -- pending settlement ---------------------------------------------------------------------

    @property
    def pending_settlement(self) -> PendingSettlement | None:
        value = self._meta("pending_settlement")
        if value is None:
            return None
        raw = json.loads(value)
        return PendingSettlement(raw["batch"], _message_from(raw["message"]), raw["attempts"])

    def set_pending_settlement(self, pending: PendingSettlement) -> None:
        self._set_meta(
            "pending_settlement",
            json.dumps(
                {
                    "batch": pending.batch,
                    "message": _message_json(pending.message),
                    "attempts": pending.attempts,
                }
            ),
        )

    def clear_pending_settlement(self) -> None:
        self._set_meta("pending_settlement", None)

    # -- overview -------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What ``iso-terminal status`` shows: counters, queues and the open batch's journal states."""
        open_batch = self.entries(batch=self.batch)
        states: dict[str, int] = {}
        for entry in open_batch:
            states[entry.state] = states.get(entry.state, 0) + 1
        pending = self.pending_settlement
        return {
            "terminal_id": self.terminal_id,
            "last_stan": self.last_stan,
            "batch": self.batch,
            "signed_on_at": self.signed_on_at,
            "clock_offset": None if self.clock_offset is None else self.clock_offset[0],
            "pending_reversals": len(self.reversals()),
            "pending_advices": len(self.advices()),
            "pending_settlement": None if pending is None else pending.message.get(11),
            "open_batch_entries": len(open_batch),
            "open_batch_states": states,
        }
