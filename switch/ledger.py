"""The acquirer host's durable ledger: postings, reversals, advices, batch uploads, settlements.

Two layers with one rule between them:

* **In memory**, a set of indexes answers every question the host asks on the hot path (is this
  terminal + STAN + field 7 known? which reversal answered this original? what are this batch's
  totals?) in O(1). A mutation is applied to the indexes *at once*, so the very next decision sees it.
  Postings, one per financial request, are kept as their table rows (plain tuples, the very tuple
  the INSERT binds) and become ``Posting`` objects only when read: building a frozen dataclass costs
  more than the rest of recording one, and most postings are never read back.
* **On disk**, a backend (``switch.ledger_backends``: SQLite by default, PostgreSQL for a
  ``postgresql://`` URL) holds an append-only log of typed rows: every mutation is also queued as one
  row, and ``flush()`` has the backend write everything queued in ONE transaction. That is the
  group commit: a burst of approvals costs one fsync, and ``committed_seq`` tells the caller which
  of them are durable. The host never sends an answer whose row is not yet committed
  (``Decision.commit_seq`` + ``switch.commit``).

Every row carries a sequence number from one counter (``next_sequence``), which is also what RRNs
are made from, so RRNs stay unique across restarts. A reply that posts nothing but must carry an RRN
(a fault's or maintenance's approval code) takes one from a range of its own, ``unposted_rrn`` (RRNs
starting with 9), claimed durably in blocks, so it is unique across restarts too without a row that
would pretend something was posted. State is a pure function of the rows in sequence
order, so ``Ledger.open`` on an existing file replays them into the same indexes: a host killed with
SIGKILL restarts with every approval it flushed (and therefore every approval it sent).

Threading: the Trio thread reads and mutates; ``flush`` may run in a worker thread at the same time.
Only ``flush`` (and ``close``) touch the backend's connection, and the queue of rows is a deque that
the owner only appends to and ``flush`` only takes from the front of (each operation atomic), so
the two never need a lock on the hot path.

One process per ledger (file or database): a second writer would not see the first one's in-memory
indexes (docs/scaleout.md plans how several instances will share one PostgreSQL ledger).
Reading a ledger another process is serving (``iso-switch ledger``) is fine: it replays what has
been committed so far.
"""

from __future__ import annotations

import heapq
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

from switch.ledger_backends import open_backend
from switch.ledger_backends.base import SCHEMA_VERSION, TABLES, UNPOSTED_CLAIM, LedgerBackend, LedgerError, PendingRow
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

FIRST_BATCH = "000001"

UNPOSTED_RRN_BASE = 9 * 10**11
"""RRNs of replies that post nothing are 9xxxxxxxxxxx: ledger sequences (the posted RRNs) would need
900 billion rows to reach this range."""
UNPOSTED_RRN_SPAN = 10**11
UNPOSTED_BLOCK = 1_000_000
"""How many unposted RRNs one durable claim covers (see ``Ledger.unposted_rrn_number``)."""


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
# Rows: one append-only table per record type (``switch.ledger_backends.base.TABLES``); state = replay
# of all rows in seq order. A queued row names its table; the backend owns the SQL.

(_T_POSTINGS, _T_REVERSALS, _T_UPLOADS, _T_UPLOAD_ENDS, _T_SETTLEMENTS, _T_DISCREPANCIES) = (
    "postings", "reversals", "uploads", "upload_ends", "settlements", "discrepancies")  # names in TABLES


_PostingRow = tuple[Any, ...]
"""A posting as the postings table stores it: ``Posting``'s fields but ``reversal_seq``, in order, with
``approved`` as 0/1 (what every backend returns; a bool would go through sqlite3's adapter lookup)."""

_POSTING_COLUMNS = tuple(column.name for column in TABLES["postings"])
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

    def __init__(self, backend: LedgerBackend) -> None:
        self.path = backend.name  # a file path, or a URL without its password
        self._backend: LedgerBackend | None = backend  # None once closed
        self._flush_lock = threading.Lock()  # flush() vs close() from different threads
        self._pending: deque[PendingRow] = deque()  # (seq, table, params), seq ascending
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
    def open(cls, path: str | os.PathLike[str], *, busy_timeout: float = 5.0, writer: bool = False) -> Ledger:
        """Open (creating or migrating if needed) the ledger at ``path``: a SQLite file, ``":memory:"``
        for a throwaway one, or a ``postgresql://`` URL.

        An existing ledger is replayed into the in-memory indexes, so a restarted host continues
        exactly where the last flush left it. ``busy_timeout``: how long a SQLite flush waits for a lock
        another connection holds (a reader's checkpoint) before failing. ``writer``: this process will
        serve from the ledger; refused (LedgerError) while another does, where the backend can tell
        (PostgreSQL; a SQLite file is one process's by convention).
        """
        return cls.from_backend(open_backend(path, busy_timeout=busy_timeout), writer=writer)

    @classmethod
    def from_backend(cls, backend: LedgerBackend, *, claim: bool = True, writer: bool = False) -> Ledger:
        """Replay ``backend`` into a new ledger (closing the backend if that fails). ``claim``: durably
        claim a block of unposted RRN numbers before anything is answered (False only for a replay
        nobody answers from, such as ``ledger migrate``'s verification)."""
        try:
            if writer:
                backend.lock_writer()  # before the replay: what another writer holds in memory is unseen
            ledger = cls(backend)
            ledger._load()
            if claim:
                ledger._unposted_next = backend.claim_unposted(UNPOSTED_BLOCK)
                ledger._unposted_claimed = ledger._unposted_next + UNPOSTED_BLOCK
        except Exception as exc:
            backend.close()
            if isinstance(exc, LedgerError):
                raise
            raise LedgerError(f"{backend.name}: not a usable ledger database: {exc}") from None
        return ledger

    def _load(self) -> None:
        """Replay every committed row, in sequence order, through the same code live writes use."""
        assert self._backend is not None
        with self._backend.snapshot() as table_rows:
            self._replay(table_rows)

    def _replay(self, table_rows: Callable[[str], Iterable[tuple[Any, ...]]]) -> None:
        def rows(table: str, build: Callable[[tuple[Any, ...]], Any], apply: Callable[[Any], None]
                 ) -> Iterator[tuple[int, Callable[[Any], None], Any]]:
            for row in table_rows(table):
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
        """Flush what is pending, then close the backend's connection. Idempotent."""
        with self._flush_lock:
            if self._backend is None:
                return
            self._flush_locked()
            self._backend.close()
            self._backend = None

    @property
    def closed(self) -> bool:
        return self._backend is None

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
        self._append(self.next_sequence(), UNPOSTED_CLAIM, (str(self._unposted_claimed),))

    @property
    def pending_seq(self) -> int:
        """Highest sequence whose row has been appended (visible to decisions, maybe not durable)."""
        return self._pending_seq

    @property
    def committed_seq(self) -> int:
        """Highest sequence whose row is durable (committed by the backend)."""
        return self._committed_seq

    def is_committed(self, seq: int) -> bool:
        return seq <= self._committed_seq

    def _append(self, seq: int, table: str, params: tuple[Any, ...]) -> None:
        if self._backend is None:
            raise LedgerError(f"{self.path}: ledger is closed")
        if seq <= self._pending_seq:
            raise ValueError(f"sequence {seq} appended after {self._pending_seq}: take a new next_sequence()")
        self._pending.append((seq, table, params))
        self._pending_seq = seq

    def flush(self) -> int:
        """Write everything appended so far in ONE transaction; return ``committed_seq``.

        Safe from a worker thread while the owning thread keeps appending: an append lands either in
        this transaction or in the next (see ``_flush_locked``). If the
        write fails, the rows go back to the front of the queue and the error propagates.
        """
        with self._flush_lock:
            if self._backend is None:
                raise LedgerError(f"{self.path}: ledger is closed")
            return self._flush_locked()

    def _flush_locked(self) -> int:
        assert self._backend is not None
        # Take the rows queued right now, oldest first. Each popleft and each of the owner's appends is
        # atomic, so a row appended meanwhile simply waits for the next flush. (Swapping the queue for
        # a new list is not enough: an append that had already fetched the old list would land in it
        # after this flush copied it, and be lost while committed_seq claimed it.)
        pending = self._pending
        batch = [pending.popleft() for _ in range(len(pending))]
        if not batch:
            return self._committed_seq
        try:
            self._backend.write(batch)  # one transaction; nothing written if it raises
        except BaseException:
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
        self._append(posting.seq, _T_POSTINGS, row)

    def append_posting(self, seq: int, received_at: float, terminal: str, stan: str, transmission_time: str,
                       mti: str, kind: str, direction: str, amount: int, currency: str, pan: str, batch: str,
                       response_code: str, approved: bool, rrn: str, auth_code: str, identity: str = "",
                       requested_amount: int | None = None) -> None:
        """``record_posting`` from the values themselves: the host's per-request path, which has no
        use for a ``Posting`` object (arguments as ``Posting``'s fields, in order)."""
        row = (seq, received_at, terminal, stan, transmission_time, mti, kind, direction, amount, currency,
               pan, batch, response_code, 1 if approved else 0, rrn, auth_code, identity, requested_amount)
        self._apply_posting(row)
        self._append(seq, _T_POSTINGS, row)

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
        self._append(reversal.seq, _T_REVERSALS, tuple(getattr(reversal, f) for f in _REVERSAL_FIELDS))

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
        self._append(record.seq, _T_UPLOADS, tuple(getattr(record, f) for f in _UPLOAD_FIELDS))

    def _apply_upload(self, record: UploadRecord) -> None:
        batch = self._batch(record.terminal, record.batch)
        batch.uploads[record.stan] = record
        batch.upload_ended = False  # a record after an end marker starts a new upload round

    def end_upload(self, seq: int, received_at: float, terminal: str, batch: str) -> None:
        """The terminal says its upload is complete: the next settlement accepts the uploaded batch."""
        self._apply_upload_end((seq, received_at, terminal, batch))
        self._append(seq, _T_UPLOAD_ENDS, (seq, received_at, terminal, batch))

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
        self._append(settlement.seq, _T_SETTLEMENTS,
                     tuple(getattr(settlement, f) for f in _SETTLEMENT_FIELDS))
        for discrepancy in found:
            self._apply_discrepancy(discrepancy)
            self._append(discrepancy.seq, _T_DISCREPANCIES,
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
