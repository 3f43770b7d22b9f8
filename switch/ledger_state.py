"""The ledger's in-memory state: the indexes every host decision reads, and the code that applies one
row to them. Moved out of ``switch.ledger`` (which adds the durable queue, sequences and ownership on
top) so each file has one job.

State is a pure function of the rows applied in sequence order, whether they were just decided
(``Ledger.record_*`` applies, then queues the row) or replayed from the database (at open, or for one
terminal when an instance takes the terminal over: ``_replay`` and ``_forget_terminals``). Every index
is keyed by, or reachable from, the terminal, which is what lets one terminal's state be dropped and
reloaded without touching another's (docs/scaleout.md).

Not thread-safe by design: only the owning (event-loop) thread reads or changes it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator
from operator import itemgetter
from typing import Any

from switch.ledger_backends.base import TABLES
from switch.ledger_records import (
    BatchSummary,
    Discrepancy,
    Posting,
    Reversal,
    SessionRecord,
    Settlement,
    UploadRecord,
)

__all__ = ["FIRST_BATCH", "LedgerState", "next_batch_number"]

FIRST_BATCH = "000001"


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

(_T_POSTINGS, _T_REVERSALS, _T_UPLOADS, _T_UPLOAD_ENDS, _T_SETTLEMENTS, _T_DISCREPANCIES, _T_SESSIONS) = (
    "postings", "reversals", "uploads", "upload_ends", "settlements", "discrepancies",
    "sessions")  # names in ROW_TABLES


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




class LedgerState:
    """The indexes and their ``_apply_*`` code; ``switch.ledger.Ledger`` is the public face."""

    def __init__(self) -> None:
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
        self._sessions: dict[str, SessionRecord] = {}  # terminal -> its latest session row

    def _replay(self, table_rows: Callable[[str], Iterable[tuple[Any, ...]]]) -> int:
        """Apply every row ``table_rows`` gives (per table, seq ascending), merged into one sequence
        order, through the same code live writes use; return the highest sequence applied (0: none)."""
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
            rows("sessions", lambda r: SessionRecord(*r), self._apply_session),
        ]
        last = 0
        for seq, apply, record in heapq.merge(*streams, key=itemgetter(0)):
            apply(record)
            last = seq
        return last

    def _forget_terminals(self, terminals: Collection[str]) -> None:
        """Drop every index entry of these terminals (one pass over the state, whatever their number):
        before a terminal's rows are reloaded, and when its ownership is given up. Every record names
        its terminal, and no index entry of one terminal points at another's record."""
        if not terminals:
            return
        gone = [seq for seq, row in self._postings.items() if row[_P_TERMINAL] in terminals]
        for seq in gone:
            del self._postings[seq]
            self._reversed_by.pop(seq, None)
            self._partial.pop(seq, None)
            self._reversal_by_original.pop(seq, None)
        indexes: tuple[dict[Any, Any], ...] = (
            self._posting_by_key, self._posting_by_stan, self._advice_by_stan, self._reversal_by_target,
            self._reversal_by_stan, self._batches, self._settlement_by_stan)  # all keyed (terminal, ...)
        for index in indexes:
            for key in [key for key in index if key[0] in terminals]:
                del index[key]
        for records in (self._reversals, self._settlements):
            for seq in [seq for seq, record in records.items() if record.terminal in terminals]:
                del records[seq]
        for by_terminal in (self._current_batch, self._last_closed, self._sessions):
            for terminal in terminals:
                by_terminal.pop(terminal, None)
        self._discrepancies = [d for d in self._discrepancies if d.terminal not in terminals]

    # -- postings -----------------------------------------------------------------------------

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

    def _apply_upload(self, record: UploadRecord) -> None:
        batch = self._batch(record.terminal, record.batch)
        batch.uploads[record.stan] = record
        batch.upload_ended = False  # a record after an end marker starts a new upload round

    def _apply_upload_end(self, row: tuple[Any, ...]) -> None:
        self._batch(row[2], row[3]).upload_ended = True

    def uploads(self, terminal: str, batch: str) -> list[UploadRecord]:
        state = self._batches.get((terminal, batch))
        return [] if state is None else sorted(state.uploads.values(), key=lambda r: r.seq)

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

    # -- sign-on sessions (multi-instance mode) -----------------------------------------------

    def _apply_session(self, record: SessionRecord) -> None:
        known = self._sessions.get(record.terminal)
        if known is None or known.seq < record.seq:
            self._sessions[record.terminal] = record

    def session(self, terminal: str) -> SessionRecord | None:
        """The terminal's latest session row (None: never written). Only multi-instance switches write
        them; a single-instance host keeps its sessions in memory."""
        return self._sessions.get(terminal)

    def sessions(self) -> list[SessionRecord]:
        """Every terminal's latest session row, sorted by terminal."""
        return sorted(self._sessions.values(), key=lambda record: record.terminal)

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


