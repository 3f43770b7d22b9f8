"""The acquirer host's durable ledger: postings, reversals, advices, batch uploads, settlements.

Two layers with one rule between them:

* **In memory**, a set of indexes answers every question the host asks on the hot path (is this
  terminal + STAN + field 7 known? which reversal answered this original? what are this batch's
  totals?) in O(1). A mutation is applied to the indexes *at once*, so the very next decision sees it.
  Postings, one per financial request, are kept as their table rows (plain tuples, the very tuple
  the INSERT binds) and become ``Posting`` objects only when read: building a frozen dataclass costs
  more than the rest of recording one, and most postings are never read back.
* **On disk**, SQLite (stdlib ``sqlite3``; WAL and ``synchronous=FULL`` for files) holds an
  append-only log of typed rows: every mutation is also queued as one ``INSERT``, and ``flush()``
  writes everything queued in ONE transaction. That is the group commit: a burst of approvals costs
  one fsync, and ``committed_seq`` tells the caller which of them are durable. The host never sends
  an answer whose row is not yet committed (``Decision.commit_seq`` + ``switch.commit``).

Every row carries a sequence number from one counter (``next_sequence``), which is also what RRNs
are made from, so RRNs stay unique across restarts. A reply that posts nothing but must carry an RRN
(a fault's or maintenance's approval code) takes one from a range of its own, ``unposted_rrn`` (RRNs
starting with 9), claimed durably in blocks, so it is unique across restarts too without a row that
would pretend something was posted. State is a pure function of the rows in sequence
order, so ``Ledger.open`` on an existing file replays them into the same indexes: a host killed with
SIGKILL restarts with every approval it flushed (and therefore every approval it sent).

Threading: the Trio thread reads and mutates; ``flush`` may run in a worker thread at the same time.
Only ``flush`` (and ``close``) touch the sqlite connection, and the queue of rows is a deque that
the owner only appends to and ``flush`` only takes from the front of (each operation atomic), so
the two never need a lock on the hot path.

One process per ledger file: a second writer would not see the first one's in-memory indexes.
Reading a ledger another process is serving (``iso-switch ledger``) is fine: it replays what has
been committed so far.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from typing import Any

from switch.ledger_records import (
    DISCREPANCY_KINDS,
    REVERSAL_EFFECTS,
    SETTLEMENT_RESULTS,
    BatchSummary,
    Discrepancy,
    Posting,
    Reversal,
    Settlement,
    UploadRecord,
)

__all__ = [
    "DISCREPANCY_KINDS",
    "FIRST_BATCH",
    "REVERSAL_EFFECTS",
    "SCHEMA_VERSION",
    "SETTLEMENT_RESULTS",
    "UNPOSTED_RRN_BASE",
    "BatchSummary",
    "Discrepancy",
    "Ledger",
    "LedgerError",
    "Posting",
    "Reversal",
    "Settlement",
    "UploadRecord",
    "next_batch_number",
]

SCHEMA_VERSION = "2"
FIRST_BATCH = "000001"

UNPOSTED_RRN_BASE = 9 * 10**11
"""RRNs of replies that post nothing are 9xxxxxxxxxxx: ledger sequences (the posted RRNs) would need
900 billion rows to reach this range."""
UNPOSTED_RRN_SPAN = 10**11
UNPOSTED_BLOCK = 1_000_000
"""How many unposted RRNs one durable claim covers (see ``Ledger.unposted_rrn_number``)."""
_UNPOSTED_KEY = "unposted_rrn_next"
_CLAIM_UNPOSTED = ("INSERT INTO meta VALUES ('unposted_rrn_next', ?) ON CONFLICT(key) DO UPDATE SET "
                   "value = CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)")


class LedgerError(RuntimeError):
    """The ledger cannot be opened or used (not a ledger file, other schema, used after close)."""


def next_batch_number(batch: str) -> str:
    """The batch after ``batch``: n6, 999999 wraps to 000001 (as terminal batch counters do)."""
    return f"{int(batch) % 999999 + 1:06d}"


class _Batch:
    """Mutable batch state behind the indexes (snapshotted as ``BatchSummary``)."""

    __slots__ = ("batch", "closed_at", "closed_seq", "credit_amount", "credit_count",
                 "credit_reversal_amount", "credit_reversal_count", "debit_amount", "debit_count",
                 "debit_reversal_amount", "debit_reversal_count", "discrepancies", "posting_seqs",
                 "terminal", "upload_ended", "uploads")

    def __init__(self, terminal: str, batch: str):
        self.terminal = terminal
        self.batch = batch
        self.debit_count = self.debit_amount = self.credit_count = self.credit_amount = 0
        self.debit_reversal_count = self.debit_reversal_amount = 0
        self.credit_reversal_count = self.credit_reversal_amount = 0
        self.posting_seqs: list[int] = []
        self.uploads: dict[str, UploadRecord] = {}  # by STAN: a re-uploaded record replaces the first
        self.upload_ended = False
        self.discrepancies = 0
        self.closed_seq: int | None = None
        self.closed_at: float | None = None

    def add(self, direction: str, amount: int, sign: int) -> None:
        if direction == "credit":
            self.credit_count += sign
            self.credit_amount += sign * amount
        else:
            self.debit_count += sign
            self.debit_amount += sign * amount

    def summary(self) -> BatchSummary:
        return BatchSummary(
            self.terminal, self.batch, "open" if self.closed_seq is None else "closed",
            self.debit_count, self.debit_amount, self.credit_count, self.credit_amount,
            self.debit_reversal_count, self.debit_reversal_amount,
            self.credit_reversal_count, self.credit_reversal_amount,
            len(self.posting_seqs), len(self.uploads), self.upload_ended, self.discrepancies,
            self.closed_seq, self.closed_at)


# ---------------------------------------------------------------------------------------------
# Schema: one append-only table per record type; state = replay of all rows in seq order.

_TABLES: dict[str, tuple[type, tuple[str, ...]]] = {
    "postings": (Posting, ("seq INTEGER PRIMARY KEY", "received_at REAL NOT NULL", "terminal TEXT NOT NULL",
                           "stan TEXT NOT NULL", "transmission_time TEXT NOT NULL", "mti TEXT NOT NULL",
                           "kind TEXT NOT NULL", "direction TEXT NOT NULL", "amount INTEGER NOT NULL",
                           "currency TEXT NOT NULL", "pan TEXT NOT NULL", "batch TEXT NOT NULL",
                           "response_code TEXT NOT NULL", "approved INTEGER NOT NULL", "rrn TEXT NOT NULL",
                           "auth_code TEXT NOT NULL", "identity TEXT NOT NULL", "requested_amount INTEGER")),
    "reversals": (Reversal, ("seq INTEGER PRIMARY KEY", "received_at REAL NOT NULL", "terminal TEXT NOT NULL",
                             "stan TEXT NOT NULL", "transmission_time TEXT NOT NULL", "mti TEXT NOT NULL",
                             "original_seq INTEGER", "original_stan TEXT NOT NULL",
                             "original_time TEXT NOT NULL", "response_code TEXT NOT NULL",
                             "effect TEXT NOT NULL", "amount INTEGER NOT NULL")),
    "uploads": (UploadRecord, ("seq INTEGER PRIMARY KEY", "received_at REAL NOT NULL",
                               "terminal TEXT NOT NULL",
                               "batch TEXT NOT NULL", "stan TEXT NOT NULL", "processing_code TEXT NOT NULL",
                               "direction TEXT NOT NULL", "amount INTEGER NOT NULL", "rrn TEXT NOT NULL",
                               "pan TEXT NOT NULL")),
    "upload_ends": (tuple, ("seq INTEGER PRIMARY KEY", "received_at REAL NOT NULL", "terminal TEXT NOT NULL",
                            "batch TEXT NOT NULL")),
    "settlements": (Settlement, ("seq INTEGER PRIMARY KEY", "received_at REAL NOT NULL",
                                 "terminal TEXT NOT NULL", "batch TEXT NOT NULL", "stan TEXT NOT NULL",
                                 "transmission_time TEXT NOT NULL", "result TEXT NOT NULL",
                                 "response_code TEXT NOT NULL", "closed INTEGER NOT NULL",
                                 "debit_count INTEGER NOT NULL", "debit_amount INTEGER NOT NULL",
                                 "credit_count INTEGER NOT NULL", "credit_amount INTEGER NOT NULL")),
    "discrepancies": (Discrepancy, ("seq INTEGER PRIMARY KEY", "received_at REAL NOT NULL",
                                    "terminal TEXT NOT NULL", "batch TEXT NOT NULL", "kind TEXT NOT NULL",
                                    "stan TEXT NOT NULL", "rrn TEXT NOT NULL", "ledger_amount INTEGER",
                                    "upload_amount INTEGER", "detail TEXT NOT NULL")),
}


def _insert_sql(table: str) -> str:
    columns = _TABLES[table][1]
    return f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})"


_INSERT = {table: _insert_sql(table) for table in _TABLES}
_SQL, _PARAMS = itemgetter(1), itemgetter(2)  # of a queued (seq, sql, params)
_INSERT_POSTING = _INSERT["postings"]
_INSERT_REVERSAL = _INSERT["reversals"]
_INSERT_UPLOAD = _INSERT["uploads"]
_INSERT_UPLOAD_END = _INSERT["upload_ends"]
_INSERT_SETTLEMENT = _INSERT["settlements"]
_INSERT_DISCREPANCY = _INSERT["discrepancies"]


_PostingRow = tuple[Any, ...]
"""A posting as the postings table stores it: ``Posting``'s fields but ``reversal_seq``, in order, with
``approved`` as 0/1 (what SQLite stores; a bool would go through sqlite3's adapter lookup)."""

_POSTING_COLUMNS = tuple(column.split()[0] for column in _TABLES["postings"][1])
assert tuple(f for f in Posting.__dataclass_fields__ if f != "reversal_seq") == _POSTING_COLUMNS, \
    "posting rows are Posting minus reversal_seq"
(_P_TERMINAL, _P_STAN, _P_TIME, _P_KIND, _P_DIRECTION, _P_AMOUNT, _P_BATCH, _P_APPROVED, _P_AUTH,
 _P_IDENTITY) = (
    _POSTING_COLUMNS.index(name)
    for name in ("terminal", "stan", "transmission_time", "kind", "direction", "amount", "batch", "approved",
                 "auth_code", "identity"))


def _posting_row(p: Posting) -> _PostingRow:
    return (p.seq, p.received_at, p.terminal, p.stan, p.transmission_time, p.mti, p.kind, p.direction,
            p.amount, p.currency, p.pan, p.batch, p.response_code, int(p.approved), p.rrn, p.auth_code,
            p.identity, p.requested_amount)


class Ledger:
    """The durable ledger; see the module docstring. Build with ``Ledger.open(path)``."""

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = connection
        self._flush_lock = threading.Lock()  # flush() vs close() from different threads
        self._pending: deque[tuple[int, str, tuple[Any, ...]]] = deque()  # (seq, sql, params), seq ascending
        self._sequence = 0
        self._pending_seq = 0
        self._committed_seq = 0
        # indexes
        self._postings: dict[int, _PostingRow] = {}  # seq -> row, see _PostingRow
        self._reversed_by: dict[int, int] = {}  # posting seq -> the reversal that undid it ("reversed")
        self._posting_by_key: dict[tuple[str, str, str], int] = {}  # (terminal, stan, identity) -> seq
        self._partial: dict[int, int] = {}  # posting seq -> amount undone by partial reversals
        self._posting_by_stan: dict[tuple[str, str], int] = {}  # (terminal, stan) -> latest seq
        self._advice_by_stan: dict[tuple[str, str], int] = {}  # (terminal, stan) -> latest advice seq
        self._reversals: dict[int, Reversal] = {}
        self._reversal_by_original: dict[int, int] = {}  # posting seq -> reversal seq
        self._reversal_by_target: dict[tuple[str, str, str], int] = {}  # what it asked for -> seq
        self._reversal_by_stan: dict[tuple[str, str], int] = {}  # (terminal, original STAN) -> latest seq
        self._batches: dict[tuple[str, str], _Batch] = {}
        self._current_batch: dict[str, str] = {}  # terminal -> host-kept open batch number (ISO)
        self._last_closed: dict[str, str] = {}  # terminal -> last closed batch number
        self._settlements: dict[int, Settlement] = {}
        self._settlement_by_stan: dict[tuple[str, str], int] = {}
        self._discrepancies: list[Discrepancy] = []
        self._unposted_next = 0  # next unposted RRN number; numbers below _unposted_claimed are claimed
        self._unposted_claimed = 0

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> Ledger:
        """Open (creating if needed) the ledger at ``path``; ``":memory:"`` for a throwaway one.

        An existing file is replayed into the in-memory indexes, so a restarted host continues
        exactly where the last flush left it. ``busy_timeout``: how long a flush waits for a lock
        another connection holds (a reader's checkpoint) before failing.
        """
        name = os.fspath(path)
        try:
            conn = sqlite3.connect(name, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"{name}: cannot open ledger: {exc}") from None
        try:
            if name != ":memory:":
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise LedgerError(f"{name}: cannot switch the ledger to WAL mode (got {mode!r})")
                conn.execute("PRAGMA synchronous=FULL")
            cls._create_schema(conn, name)
            ledger = cls(conn, name)
            ledger._load()
            ledger._unposted_next = cls._claim_unposted_at_open(conn)
            ledger._unposted_claimed = ledger._unposted_next + UNPOSTED_BLOCK
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{name}: not a usable ledger database: {exc}") from None
        except LedgerError:
            conn.close()
            raise
        return ledger

    @staticmethod
    def _create_schema(conn: sqlite3.Connection, name: str) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise LedgerError(f"{name}: ledger schema version {row[0]}, "
                                  f"this program uses {SCHEMA_VERSION}")
            for table, (_, columns) in _TABLES.items():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(columns)})")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _claim_unposted_at_open(conn: sqlite3.Connection) -> int:
        """Claim, durably and before anything is answered, the next block of unposted RRN numbers;
        return its first number. Every open claims a fresh block, so no restart reuses a number."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_UNPOSTED_KEY,)).fetchone()
            start = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            conn.execute(_CLAIM_UNPOSTED, (str(start + UNPOSTED_BLOCK),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return start

    def _load(self) -> None:
        """Replay every committed row, in sequence order, through the same code live writes use."""
        assert self._conn is not None
        conn = self._conn

        def rows(table: str, build: Callable[[tuple[Any, ...]], Any], apply: Callable[[Any], None]
                 ) -> Iterator[tuple[int, Callable[[Any], None], Any]]:
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY seq"):
                yield row[0], apply, build(row)

        streams = [
            rows("postings", tuple, self._apply_posting),
            rows("reversals", lambda r: Reversal(*r), self._apply_reversal),
            rows("uploads", lambda r: UploadRecord(*r), self._apply_upload),
            rows("upload_ends", tuple, self._apply_upload_end),
            rows("settlements", lambda r: Settlement(*r[:8], bool(r[8]), *r[9:]),  # type: ignore[call-arg]  # row = fields
                 self._apply_settlement),
            rows("discrepancies", lambda r: Discrepancy(*r), self._apply_discrepancy),
        ]
        last = 0
        for seq, apply, record in heapq.merge(*streams, key=itemgetter(0)):
            apply(record)
            last = seq
        self._sequence = self._pending_seq = self._committed_seq = last

    def close(self) -> None:
        """Flush what is pending, then close the database. Idempotent."""
        with self._flush_lock:
            if self._conn is None:
                return
            self._flush_locked()
            self._conn.close()
            self._conn = None

    @property
    def closed(self) -> bool:
        return self._conn is None

    # -- sequence and durability --------------------------------------------------------------

    def next_sequence(self) -> int:
        """A new sequence number (monotonic, never reused after a restart: RRNs are made from it)."""
        self._sequence += 1
        return self._sequence

    def unposted_rrn_number(self) -> int:
        """A number for the RRN (and auth code) of a reply that posts nothing (``Host.unprocessed_reply``
        with an approval code): ``UNPOSTED_RRN_BASE`` + a counter, never a ledger sequence, so no row
        pretends something was posted and no posted RRN is shadowed.

        Unique across restarts without waiting for a commit: each ``open`` durably claims a block of
        ``UNPOSTED_BLOCK`` numbers before the host answers anything, and once half a block is used the
        next block is claimed through the normal group commit, long before it is needed (only a
        committer stalled for half a block of such replies, which ``/health`` reports long before,
        could leave that claim unwritten). After ``UNPOSTED_RRN_SPAN`` numbers the range wraps, as RRN
        counters do; every open uses up a block, so that is 100,000 opens of one ledger file.
        """
        number = self._unposted_next
        if number >= self._unposted_claimed:  # the claim ahead cannot have been skipped; never reuse
            self._claim_unposted()
        self._unposted_next = number + 1
        if self._unposted_claimed - self._unposted_next < UNPOSTED_BLOCK // 2:
            self._claim_unposted()
        return UNPOSTED_RRN_BASE + number % UNPOSTED_RRN_SPAN

    def _claim_unposted(self) -> None:
        self._unposted_claimed += UNPOSTED_BLOCK
        self._append(self.next_sequence(), _CLAIM_UNPOSTED, (str(self._unposted_claimed),))

    @property
    def pending_seq(self) -> int:
        """Highest sequence whose row has been appended (visible to decisions, maybe not durable)."""
        return self._pending_seq

    @property
    def committed_seq(self) -> int:
        """Highest sequence whose row is durable on disk."""
        return self._committed_seq

    def is_committed(self, seq: int) -> bool:
        return seq <= self._committed_seq

    def _append(self, seq: int, sql: str, params: tuple[Any, ...]) -> None:
        if self._conn is None:
            raise LedgerError(f"{self.path}: ledger is closed")
        if seq <= self._pending_seq:
            raise ValueError(f"sequence {seq} appended after {self._pending_seq}: take a new next_sequence()")
        self._pending.append((seq, sql, params))
        self._pending_seq = seq

    def flush(self) -> int:
        """Write everything appended so far in ONE transaction; return ``committed_seq``.

        Safe from a worker thread while the owning thread keeps appending: an append lands either in
        this transaction or in the next (see ``_flush_locked``). If the
        write fails, the rows go back to the front of the queue and the error propagates.
        """
        with self._flush_lock:
            if self._conn is None:
                raise LedgerError(f"{self.path}: ledger is closed")
            return self._flush_locked()

    def _flush_locked(self) -> int:
        assert self._conn is not None
        # Take the rows queued right now, oldest first. Each popleft and each of the owner's appends is
        # atomic, so a row appended meanwhile simply waits for the next flush. (Swapping the queue for
        # a new list is not enough: an append that had already fetched the old list would land in it
        # after this flush copied it, and be lost while committed_seq claimed it.)
        pending = self._pending
        batch = [pending.popleft() for _ in range(len(pending))]
        if not batch:
            return self._committed_seq
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, group in groupby(batch, key=_SQL):
                conn.executemany(sql, map(_PARAMS, group))  # no per-row Python code: this holds the GIL
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            pending.extendleft(reversed(batch))  # back to the front, in order, ahead of later appends
            raise
        self._committed_seq = batch[-1][0]
        return self._committed_seq

    # -- postings -----------------------------------------------------------------------------

    def record_posting(self, posting: Posting) -> None:
        """Record a decided 0100/0200/0220 (its ``seq`` from ``next_sequence``)."""
        if posting.reversal_seq is not None:  # recorded as already reversed: in memory only, as ever
            self._reversed_by[posting.seq] = posting.reversal_seq
        row = _posting_row(posting)
        self._apply_posting(row)
        self._append(posting.seq, _INSERT_POSTING, row)

    def append_posting(self, seq: int, received_at: float, terminal: str, stan: str, transmission_time: str,
                       mti: str, kind: str, direction: str, amount: int, currency: str, pan: str, batch: str,
                       response_code: str, approved: bool, rrn: str, auth_code: str, identity: str = "",
                       requested_amount: int | None = None) -> None:
        """``record_posting`` from the values themselves: the host's per-request path, which has no
        use for a ``Posting`` object (arguments as ``Posting``'s fields, in order)."""
        row = (seq, received_at, terminal, stan, transmission_time, mti, kind, direction, amount, currency,
               pan, batch, response_code, 1 if approved else 0, rrn, auth_code, identity, requested_amount)
        self._apply_posting(row)
        self._append(seq, _INSERT_POSTING, row)

    def _apply_posting(self, row: _PostingRow) -> None:
        seq, terminal, stan = row[0], row[_P_TERMINAL], row[_P_STAN]
        self._postings[seq] = row
        self._posting_by_key[(terminal, stan, row[_P_IDENTITY] or row[_P_TIME])] = seq
        self._posting_by_stan[(terminal, stan)] = seq
        kind = row[_P_KIND]
        if kind == "advice":
            self._advice_by_stan[(terminal, stan)] = seq
        batch = self._batch(terminal, row[_P_BATCH])
        batch.posting_seqs.append(seq)
        if row[_P_APPROVED] and kind != "authorization" and seq not in self._reversed_by:  # captured
            batch.add(row[_P_DIRECTION], row[_P_AMOUNT], 1)

    def _as_posting(self, row: _PostingRow) -> Posting:
        """The ``Posting`` a stored row stands for (a new object each time; postings compare by value)."""
        return Posting(*row[:_P_APPROVED], bool(row[_P_APPROVED]),  # type: ignore[call-arg]  # row = fields
                       *row[_P_APPROVED + 1:_P_IDENTITY], self._reversed_by.get(row[0]), row[_P_IDENTITY],
                       row[_P_IDENTITY + 1])

    def posting(self, seq: int) -> Posting | None:
        row = self._postings.get(seq)
        return None if row is None else self._as_posting(row)

    def find_posting(self, terminal: str, stan: str, identity: str) -> Posting | None:
        """The posting with exactly this terminal + STAN + identity (the duplicate key; rows written
        without an identity are keyed by their field 7)."""
        seq = self._posting_by_key.get((terminal, stan, identity))
        return None if seq is None else self._as_posting(self._postings[seq])

    def latest_posting(self, terminal: str, stan: str) -> Posting | None:
        """The most recent posting of this terminal with this STAN (reversal fallback match)."""
        seq = self._posting_by_stan.get((terminal, stan))
        return None if seq is None else self._as_posting(self._postings[seq])

    def latest_advice(self, terminal: str, stan: str) -> Posting | None:
        seq = self._advice_by_stan.get((terminal, stan))
        return None if seq is None else self._as_posting(self._postings[seq])

    # -- reversals ----------------------------------------------------------------------------

    def record_reversal(self, reversal: Reversal) -> None:
        """Record a reversal's answer; effect "reversed" takes the original out of its batch totals."""
        if reversal.effect not in REVERSAL_EFFECTS:
            raise ValueError(f"unknown reversal effect {reversal.effect!r}")
        if reversal.effect in ("reversed", "partially-reversed"):
            original = None if reversal.original_seq is None else self.posting(reversal.original_seq)
            if original is None or not original.approved or original.reversal_seq is not None:
                raise ValueError(f"reversal {reversal.seq}: original {reversal.original_seq} is not an "
                                 "approved, unreversed posting")
            if reversal.effect == "partially-reversed" and not 0 < reversal.amount < self.captured_amount(original):
                raise ValueError(f"reversal {reversal.seq}: partial amount {reversal.amount} is not between 0 and "
                                 f"what original {original.seq} still captures")
        self._apply_reversal(reversal)
        self._append(reversal.seq, _INSERT_REVERSAL, tuple(getattr(reversal, f) for f in _REVERSAL_FIELDS))

    def _apply_reversal(self, reversal: Reversal) -> None:
        seq = reversal.seq
        self._reversals[seq] = reversal
        self._reversal_by_target[(reversal.terminal, reversal.original_stan, reversal.original_time)] = seq
        self._reversal_by_stan[(reversal.terminal, reversal.original_stan)] = seq
        if reversal.original_seq is None:
            return
        self._reversal_by_original.setdefault(reversal.original_seq, seq)
        if reversal.effect not in ("reversed", "partially-reversed"):
            return
        original = self._as_posting(self._postings[reversal.original_seq])
        was_captured = original.captured
        batch = self._batch(original.terminal, original.batch)
        if reversal.effect == "partially-reversed":
            # the transaction stays (count unchanged); only the amount undone moves to the reversal column
            self._partial[original.seq] = self._partial.get(original.seq, 0) + reversal.amount
            if was_captured:
                if original.direction == "credit":
                    batch.credit_amount -= reversal.amount
                    batch.credit_reversal_amount += reversal.amount
                else:
                    batch.debit_amount -= reversal.amount
                    batch.debit_reversal_amount += reversal.amount
            return
        remaining = original.amount - self._partial.get(original.seq, 0)
        self._reversed_by[original.seq] = seq
        if was_captured:
            batch.add(original.direction, remaining, -1)
            if original.direction == "credit":
                batch.credit_reversal_count += 1
                batch.credit_reversal_amount += remaining
            else:
                batch.debit_reversal_count += 1
                batch.debit_reversal_amount += remaining

    def captured_amount(self, posting: Posting) -> int:
        """What a posting still charges: its amount less partial reversals; 0 once fully reversed."""
        if posting.reversal_seq is not None or not posting.approved:
            return 0
        return posting.amount - self._partial.get(posting.seq, 0)

    def reversal_of(self, posting_seq: int) -> Reversal | None:
        """The reversal that first answered for this original, if any."""
        seq = self._reversal_by_original.get(posting_seq)
        return None if seq is None else self._reversals[seq]

    def reversal_for(self, terminal: str, original_stan: str, original_time: str) -> Reversal | None:
        """The latest reversal that asked for exactly this original (terminal + STAN + field 7)."""
        seq = self._reversal_by_target.get((terminal, original_stan, original_time))
        return None if seq is None else self._reversals[seq]

    def latest_reversal_for_stan(self, terminal: str, original_stan: str) -> Reversal | None:
        """The latest reversal that asked for an original with this STAN, whatever its field 7."""
        seq = self._reversal_by_stan.get((terminal, original_stan))
        return None if seq is None else self._reversals[seq]

    # -- batches, uploads, settlements --------------------------------------------------------

    def _batch(self, terminal: str, batch: str) -> _Batch:
        state = self._batches.get((terminal, batch))
        if state is None:
            state = self._batches[(terminal, batch)] = _Batch(terminal, batch)
        return state

    def current_batch(self, terminal: str) -> str:
        """The open batch number the host keeps for a terminal (ISO 8583 terminals send none).

        Starts at 000001 and moves on when that batch closes. CUP terminals carry their own (60.2).
        """
        return self._current_batch.get(terminal, FIRST_BATCH)

    def last_closed_batch(self, terminal: str) -> str | None:
        return self._last_closed.get(terminal)

    def batch_is_closed(self, terminal: str, batch: str) -> bool:
        state = self._batches.get((terminal, batch))
        return state is not None and state.closed_seq is not None

    def batch_summary(self, terminal: str, batch: str) -> BatchSummary:
        """The batch's current totals (an unknown batch is an empty open one)."""
        state = self._batches.get((terminal, batch))
        return state.summary() if state is not None else _Batch(terminal, batch).summary()

    def batch_postings(self, terminal: str, batch: str) -> list[Posting]:
        state = self._batches.get((terminal, batch))
        return [] if state is None else [self._as_posting(self._postings[seq]) for seq in state.posting_seqs]

    def record_upload(self, record: UploadRecord) -> None:
        """Store one uploaded record; a record for a STAN already uploaded replaces it."""
        self._apply_upload(record)
        self._append(record.seq, _INSERT_UPLOAD, tuple(getattr(record, f) for f in _UPLOAD_FIELDS))

    def _apply_upload(self, record: UploadRecord) -> None:
        batch = self._batch(record.terminal, record.batch)
        batch.uploads[record.stan] = record
        batch.upload_ended = False  # a record after an end marker starts a new upload round

    def end_upload(self, seq: int, received_at: float, terminal: str, batch: str) -> None:
        """The terminal says its upload is complete: the next settlement accepts the uploaded batch."""
        self._apply_upload_end((seq, received_at, terminal, batch))
        self._append(seq, _INSERT_UPLOAD_END, (seq, received_at, terminal, batch))

    def _apply_upload_end(self, row: tuple[Any, ...]) -> None:
        self._batch(row[2], row[3]).upload_ended = True

    def uploads(self, terminal: str, batch: str) -> list[UploadRecord]:
        state = self._batches.get((terminal, batch))
        return [] if state is None else sorted(state.uploads.values(), key=lambda r: r.seq)

    def record_settlement(self, settlement: Settlement, discrepancies: Iterable[Discrepancy] = ()) -> None:
        """Record a settlement's outcome (closing the batch when ``closed``) and what it found."""
        if settlement.result not in SETTLEMENT_RESULTS:
            raise ValueError(f"unknown settlement result {settlement.result!r}")
        found = list(discrepancies)
        for discrepancy in found:
            if discrepancy.seq <= settlement.seq:
                raise ValueError("discrepancies take sequence numbers after their settlement's")
        self._apply_settlement(settlement)
        self._append(settlement.seq, _INSERT_SETTLEMENT,
                     tuple(getattr(settlement, f) for f in _SETTLEMENT_FIELDS))
        for discrepancy in found:
            self._apply_discrepancy(discrepancy)
            self._append(discrepancy.seq, _INSERT_DISCREPANCY,
                         tuple(getattr(discrepancy, f) for f in _DISCREPANCY_FIELDS))

    def _apply_settlement(self, settlement: Settlement) -> None:
        self._settlements[settlement.seq] = settlement
        self._settlement_by_stan[(settlement.terminal, settlement.stan)] = settlement.seq
        if not settlement.closed:
            return
        terminal, number = settlement.terminal, settlement.batch
        batch = self._batch(terminal, number)
        if batch.closed_seq is None:
            batch.closed_seq = settlement.seq
            batch.closed_at = settlement.received_at
            batch.upload_ended = False  # the uploaded records stay, for the report
        self._last_closed[terminal] = number
        if self.current_batch(terminal) == number:
            self._current_batch[terminal] = next_batch_number(number)

    def settlement_for(self, terminal: str, stan: str) -> Settlement | None:
        """The latest settlement this terminal sent with this STAN (a 0501 repeat's first answer)."""
        seq = self._settlement_by_stan.get((terminal, stan))
        return None if seq is None else self._settlements[seq]

    def _apply_discrepancy(self, discrepancy: Discrepancy) -> None:
        self._discrepancies.append(discrepancy)
        self._batch(discrepancy.terminal, discrepancy.batch).discrepancies += 1

    # -- reports ------------------------------------------------------------------------------

    def postings(self, terminal: str | None = None, batch: str | None = None) -> list[Posting]:
        """Every decided 0100/0200/0220 in sequence order, optionally for one terminal / batch."""
        return [self._as_posting(row) for row in self._postings.values()
                if (terminal is None or row[_P_TERMINAL] == terminal) and (batch is None or row[_P_BATCH] == batch)]

    def reversals(self, terminal: str | None = None) -> list[Reversal]:
        return [r for r in self._reversals.values() if terminal is None or r.terminal == terminal]

    def batches(self, terminal: str | None = None) -> list[BatchSummary]:
        """Every batch with its net totals and status, sorted by terminal and batch number."""
        return [state.summary() for key, state in sorted(self._batches.items())
                if terminal is None or key[0] == terminal]

    def settlements(self, terminal: str | None = None) -> list[Settlement]:
        return [s for s in self._settlements.values() if terminal is None or s.terminal == terminal]

    def discrepancies(self, terminal: str | None = None, batch: str | None = None) -> list[Discrepancy]:
        return [d for d in self._discrepancies
                if (terminal is None or d.terminal == terminal) and (batch is None or d.batch == batch)]


_REVERSAL_FIELDS = tuple(Reversal.__dataclass_fields__)
_UPLOAD_FIELDS = tuple(UploadRecord.__dataclass_fields__)
_SETTLEMENT_FIELDS = tuple(Settlement.__dataclass_fields__)
_DISCREPANCY_FIELDS = tuple(Discrepancy.__dataclass_fields__)
