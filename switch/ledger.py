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

Every row carries a sequence number from one counter (``next_sequence``; in multi-instance mode, from
blocks claimed in the database), which is also what RRNs
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

One process per ledger file or database by default: a second writer would not see the first one's
in-memory indexes. A PostgreSQL ledger opened with ``multi_instance=True`` is shared instead: each
instance decides only for the terminals it owns (a per-terminal advisory lock; the terminal's rows are
reloaded when it is taken over, and it is given back only once they are all committed) and numbers
its rows from sequence blocks claimed in the database (docs/scaleout.md, ``switch.ownership``). A
SQLite ledger is always one process's: it has no way to lock a terminal across processes.
Multi-instance hosts also record each terminal's sign-on session as a row (``record_session``, the
one table replaced per terminal rather than appended), so the session moves with the terminal.
Reading a ledger another process is serving (``iso-switch ledger``) is fine: it replays what has
been committed so far.

The indexes and the code that applies rows to them are in ``switch.ledger_state``.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from switch.ledger_backends import open_backend
from switch.ledger_backends.base import SCHEMA_VERSION, UNPOSTED_CLAIM, LedgerBackend, LedgerError, PendingRow
from switch.ledger_records import (
    DISCREPANCY_KINDS,
    REVERSAL_EFFECTS,
    SETTLEMENT_RESULTS,
    BatchSummary,
    Discrepancy,
    Posting,
    Reversal,
    SessionRecord,
    Settlement,
    UploadRecord,
)
from switch.ledger_state import (
    _T_DISCREPANCIES,
    _T_POSTINGS,
    _T_REVERSALS,
    _T_SESSIONS,
    _T_SETTLEMENTS,
    _T_UPLOAD_ENDS,
    _T_UPLOADS,
    FIRST_BATCH,
    LedgerState,
    _posting_row,
    next_batch_number,
)
from switch.ownership import NumberBlocks, Ownership, TerminalBusy, TerminalRows, UnflushedTerminal

__all__ = [
    "DISCREPANCY_KINDS",
    "FIRST_BATCH",
    "REVERSAL_EFFECTS",
    "SCHEMA_VERSION",
    "SEQUENCE_BLOCK",
    "SETTLEMENT_RESULTS",
    "UNPOSTED_RRN_BASE",
    "BatchSummary",
    "Discrepancy",
    "Ledger",
    "LedgerError",
    "Posting",
    "Reversal",
    "SessionRecord",
    "Settlement",
    "TerminalBusy",
    "TerminalRows",
    "UnflushedTerminal",
    "UploadRecord",
    "next_batch_number",
]

UNPOSTED_RRN_BASE = 9 * 10**11
"""RRNs of replies that post nothing are 9xxxxxxxxxxx: ledger sequences (the posted RRNs) would need
900 billion rows to reach this range."""
UNPOSTED_RRN_SPAN = 10**11
UNPOSTED_BLOCK = 1_000_000
"""How many unposted RRNs one durable claim covers (see ``Ledger.unposted_rrn_number``)."""
SEQUENCE_BLOCK = 10_000
"""Multi-instance mode: how many ledger sequences one claim covers. One claim (a row-locked UPDATE)
per this many rows keeps claims off the hot path; an instance that stops wastes at most one block of
numbers (RRNs are unique, not gap-free)."""


class Ledger(LedgerState):
    """The durable ledger; see the module docstring. Build with ``Ledger.open(path)``."""

    def __init__(self, backend: LedgerBackend) -> None:
        super().__init__()
        self.path = backend.name  # a file path, or a URL without its password
        self._backend: LedgerBackend | None = backend  # None once closed
        self._flush_lock = threading.Lock()  # flush() vs close() from different threads
        self._pending: deque[PendingRow] = deque()  # (seq, table, params), seq ascending
        # multi-instance mode: the sequences of this instance's rows not yet committed, kept until their
        # transaction commits (a flush in progress took them out of ``_pending`` already)
        self._uncommitted: set[int] = set()
        self._sequence = 0
        self._pending_seq = 0
        self._committed_seq = 0
        self._unposted_next = 0  # next unposted RRN number; numbers below _unposted_claimed are claimed
        self._unposted_claimed = 0
        # multi-instance mode (PostgreSQL only): all three set together, else all None
        self._ownership: Ownership | None = None
        self._seq_blocks: NumberBlocks | None = None
        self._unposted_blocks: NumberBlocks | None = None

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, busy_timeout: float = 5.0, writer: bool = False,
             multi_instance: bool = False, claim: bool = True) -> Ledger:
        """Open (creating or migrating if needed) the ledger at ``path``: a SQLite file, ``":memory:"``
        for a throwaway one, or a ``postgresql://`` URL.

        An existing ledger is replayed into the in-memory indexes, so a restarted host continues
        exactly where the last flush left it. ``busy_timeout``: how long a SQLite flush waits for a lock
        another connection holds (a reader's checkpoint) before failing. ``writer``: this process will
        serve from the ledger; refused (LedgerError) while another does, where the backend can tell
        (PostgreSQL; a SQLite file is one process's by convention).

        ``multi_instance`` (PostgreSQL only): serve from a ledger other instances serve from too. Nothing
        is replayed at open; the ledger decides only for terminals it has acquired
        (``fetch_terminal_rows`` + ``install_terminal_rows``, or ``acquire_terminal``), and its
        sequences come from blocks claimed in the database. Refused while a single-instance writer
        serves the database, and a single-instance writer is refused while any multi-instance one does.

        ``claim`` False: a reader that answers nothing (``iso-switch ledger``) claims no unposted RRN
        block, so reading a ledger writes nothing to it (beyond a schema migration).
        """
        backend = open_backend(path, busy_timeout=busy_timeout)
        if multi_instance:
            return cls._open_multi_instance(backend)
        return cls.from_backend(backend, writer=writer, claim=claim)

    @classmethod
    def from_backend(cls, backend: LedgerBackend, *, claim: bool = True, writer: bool = False) -> Ledger:
        """Replay ``backend`` into a new ledger (closing the backend if that fails). ``claim``: durably
        claim a block of unposted RRN numbers before anything is answered (False only for a replay
        nobody answers from, such as ``ledger migrate``'s verification)."""
        try:
            if writer:
                backend.lock_writer()  # before the replay: what another writer holds in memory is unseen
                backend.end_sessions()  # a single-instance host starts with no sessions, as after any restart
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

    @classmethod
    def _open_multi_instance(cls, backend: LedgerBackend) -> Ledger:
        from switch.ledger_backends.pg_control import PostgresControl
        from switch.ledger_backends.postgresql import PostgresBackend

        if not isinstance(backend, PostgresBackend):
            backend.close()
            raise LedgerError(f"{backend.name}: multi-instance mode needs a PostgreSQL ledger (a SQLite file is "
                              "served by one process)")
        control: PostgresControl | None = None
        try:
            control = PostgresControl(backend.url, backend.name, secrets.randbits(62))
            ledger = cls(backend)
            ledger._ownership = Ownership(control)
            ledger._seq_blocks = NumberBlocks(SEQUENCE_BLOCK, control.claim_sequences)
            ledger._unposted_blocks = NumberBlocks(UNPOSTED_BLOCK, control.claim_unposted)
            backend.fence = control  # every group commit checks this instance still owns its terminals
        except BaseException:
            if control is not None:
                control.close()
            backend.close()
            raise
        return ledger

    def _load(self) -> None:
        """Replay every committed row, in sequence order, through the same code live writes use."""
        assert self._backend is not None
        with self._backend.snapshot() as table_rows:
            last = self._replay(table_rows)
        self._sequence = self._pending_seq = self._committed_seq = last

    def close(self) -> None:
        """Flush what is pending, then close the backend's connection (and, in multi-instance mode, the
        lock connection: every terminal this instance owned is free again). Idempotent."""
        with self._flush_lock:
            if self._backend is None:
                return
            try:
                self._flush_locked()
            finally:
                self._backend.close()
                self._backend = None
                if self._ownership is not None:
                    self._ownership.control.close()

    @property
    def closed(self) -> bool:
        return self._backend is None

    @property
    def multi_instance(self) -> bool:
        return self._ownership is not None

    def database_view(self, terminal: str | None = None) -> Ledger:
        """WORKER THREAD (blocking): a ledger replayed from what the database has committed — every
        terminal's rows, or only ``terminal``'s — on a connection of its own; the caller closes it.

        For reads of a multi-instance ledger (admin API, the load runner's consistency check), whose
        memory holds only the terminals this instance owns: the host is all instances together.
        Nothing is claimed or written. A single-instance ledger is its own view: use it directly."""
        from switch.ledger_backends.postgresql import PostgresBackend

        backend = self._backend
        if not isinstance(backend, PostgresBackend):
            raise LedgerError(f"{self.path}: a database view is for a multi-instance PostgreSQL ledger")
        view_backend = open_backend(backend.url)
        if terminal is None:
            return Ledger.from_backend(view_backend, claim=False)
        try:
            view = Ledger(view_backend)
            view._replay(view_backend.terminal_snapshot(terminal))
        except BaseException:
            view_backend.close()
            raise
        return view

    def open_session_terminals(self) -> list[str]:
        """WORKER THREAD (blocking): the terminals whose COMMITTED session is open, whichever instance
        wrote it, on a connection of its own (multi-instance sessions reset)."""
        from switch.ledger_backends.postgresql import PostgresBackend

        backend = self._backend
        if not isinstance(backend, PostgresBackend):
            raise LedgerError(f"{self.path}: stored sessions are read from a multi-instance PostgreSQL ledger")
        with open_backend(backend.url) as reader:
            return reader.open_session_terminals()

    # -- sequence and durability --------------------------------------------------------------

    def next_sequence(self) -> int:
        """A new sequence number (monotonic, never reused after a restart: RRNs are made from it; in
        multi-instance mode never used by another instance either)."""
        if self._seq_blocks is not None:
            self._sequence = self._seq_blocks.take()
            return self._sequence
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
        Multi-instance mode: blocks are claimed by an atomic increment in the database (ahead, by the
        group committer), so instances never share one.
        """
        if self._unposted_blocks is not None:
            return UNPOSTED_RRN_BASE + self._unposted_blocks.take() % UNPOSTED_RRN_SPAN
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
        """Whether the row numbered ``seq`` is durable. In multi-instance mode a row installed from the
        database (another instance's, answered again for a repeat) is, though its number may lie above
        anything this instance appended: only this instance's own rows not yet committed are not —
        queued, or in a flush whose transaction has not committed yet."""
        if seq <= self._committed_seq:
            return True
        return self._ownership is not None and seq not in self._uncommitted

    def _append(self, seq: int, table: str, params: tuple[Any, ...]) -> None:
        if self._backend is None:
            raise LedgerError(f"{self.path}: ledger is closed")
        if seq <= self._pending_seq:
            raise ValueError(f"sequence {seq} appended after {self._pending_seq}: take a new next_sequence()")
        if self._ownership is not None:
            self._ownership.note_row(params[2], seq)  # every table's third column is the terminal
            self._uncommitted.add(seq)
        self._pending.append((seq, table, params))
        self._pending_seq = seq

    def flush(self) -> int:
        """Write everything appended so far in ONE transaction; return ``committed_seq``.

        Safe from a worker thread while the owning thread keeps appending: an append lands either in
        this transaction or in the next (see ``_flush_locked``). If the
        write fails, the rows go back to the front of the queue and the error propagates.
        Multi-instance mode: the transaction also checks that this instance still holds the lock of
        every terminal written (else LedgerError, nothing written), and the next sequence block is
        claimed here, off the event loop, when the current one is half used.
        """
        with self._flush_lock:
            if self._backend is None:
                raise LedgerError(f"{self.path}: ledger is closed")
            committed = self._flush_locked()
            if self._seq_blocks is not None and self._unposted_blocks is not None:
                from switch.ledger_backends.postgresql import PostgresBackend

                assert isinstance(self._backend, PostgresBackend)
                self._seq_blocks.prefetch(self._backend.claim_sequences)
                self._unposted_blocks.prefetch(self._backend.claim_unposted)
            return committed

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
        if self._ownership is not None:  # only now: until the commit, these rows were not durable
            self._uncommitted.difference_update(row[0] for row in batch)
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

    def record_upload(self, record: UploadRecord) -> None:
        """Store one uploaded record; a record for a STAN already uploaded replaces it."""
        self._apply_upload(record)
        self._append(record.seq, _T_UPLOADS, tuple(getattr(record, f) for f in _UPLOAD_FIELDS))

    def end_upload(self, seq: int, received_at: float, terminal: str, batch: str) -> None:
        """The terminal says its upload is complete: the next settlement accepts the uploaded batch."""
        self._apply_upload_end((seq, received_at, terminal, batch))
        self._append(seq, _T_UPLOAD_ENDS, (seq, received_at, terminal, batch))

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

    def record_session(self, seq: int, changed_at: float, terminal: str, signed_on_at: float | None,
                       working_keys: str | None, signons: int) -> None:
        """Record a terminal's sign-on session as it is now (``signed_on_at`` None: ended), replacing its
        row. Multi-instance hosts call it on every session change and make ``seq`` durable before they
        answer, so whichever instance serves the terminal next restores exactly this session."""
        if working_keys is not None and signed_on_at is None:
            raise ValueError(f"session row {seq} of {terminal}: working keys without a session")
        if signons < 0:
            raise ValueError(f"session row {seq} of {terminal}: sign-on count {signons} is negative")
        record = SessionRecord(seq, changed_at, terminal, signed_on_at, working_keys, signons)
        self._apply_session(record)
        self._append(seq, _T_SESSIONS, (seq, changed_at, terminal, signed_on_at, working_keys, signons))

    # -- terminal ownership (multi-instance mode) ---------------------------------------------

    def _owning(self) -> Ownership:
        if self._ownership is None:
            raise LedgerError(f"{self.path}: terminal ownership needs a ledger opened with multi_instance=True")
        if self._backend is None:
            raise LedgerError(f"{self.path}: ledger is closed")
        return self._ownership

    def owns(self, terminal: str) -> bool:
        """Does this instance decide for ``terminal``? Any thread; O(1), for every request. Always True
        in single-instance mode. Raises LedgerError once the lock connection is lost (fail-stop: the
        locks may be gone, so no further decision may be made)."""
        return True if self._ownership is None else self._ownership.owns(terminal)

    def touch_terminal(self, terminal: str, now: float) -> None:
        """Note a request of an owned terminal at ``now`` (the caller's clock, the same one given to
        ``release_idle_terminals``). Loop thread; O(1). No-op in single-instance mode."""
        if self._ownership is not None:
            self._ownership.touch(terminal, now)

    def fetch_terminal_rows(self, terminal: str, timeout: float) -> TerminalRows:
        """WORKER THREAD (blocking): take ``terminal``'s lock, waiting at most ``timeout`` seconds
        (TerminalBusy: another instance owns it), then read its committed rows. Holding the lock, the
        rows are complete: the previous owner gave the terminal up only after committing, and a
        commit of a previous owner that died is waited for or refused (``pg_control``'s fence).
        Pass the result to ``install_terminal_rows`` on the loop thread. LedgerError if the lock
        connection fails (fail-stop)."""
        ownership = self._owning()
        ownership.lock(terminal, timeout)
        rows = TerminalRows(terminal, ownership.control.terminal_rows(terminal))
        blocks = self._seq_blocks
        if blocks is not None and rows.last_seq >= blocks.next_number:  # racy read, re-checked at install
            rows = TerminalRows(terminal, rows.rows, ownership.control.claim_sequences(blocks.block))
        return rows

    def install_terminal_rows(self, rows: TerminalRows, now: float | None = None) -> bool:
        """LOOP THREAD (synchronous, no I/O): drop whatever memory holds for the terminal, replay
        ``rows`` through the same ``_apply_*`` code as at open, and own the terminal from now on
        (``now``: its first activity, for idle release). False, and nothing changed, when the terminal
        is already owned (a second fetch raced the first; its rows add nothing and installing them
        would drop decisions not yet committed)."""
        ownership = self._owning()
        if not ownership.begin_install(rows.terminal):
            return False
        if self._seq_blocks is not None:  # our new rows of this terminal must follow its old ones
            self._seq_blocks.move_past(rows.last_seq, rows.fresh_block)
        self._forget_terminals((rows.terminal,))
        self._replay(rows.source())
        ownership.finish_install(rows.terminal, now)
        return True

    def acquire_terminal(self, terminal: str, timeout: float, now: float | None = None) -> None:
        """``fetch_terminal_rows`` then ``install_terminal_rows`` in the calling thread: for a caller that
        is the only thread using this ledger (tools, tests). The server splits the two across threads.
        No-op if already owned."""
        if self._ownership is not None and self._ownership.owns(terminal):
            return
        self.install_terminal_rows(self.fetch_terminal_rows(terminal, timeout), now)

    def release_terminal(self, terminal: str) -> None:
        """LOOP THREAD (synchronous, no I/O): stop deciding for ``terminal`` and forget its state.
        Refused with UnflushedTerminal while one of its rows is not committed (flush first; the caller
        must also have no request of it waiting for a decision). The database lock is dropped by the
        next ``unlock_released_terminals``; until then a ``fetch_terminal_rows`` takes it back
        without waiting."""
        self._owning().release(terminal, self._committed_seq)
        self._forget_terminals((terminal,))

    def release_idle_terminals(self, idle_seconds: float, now: float) -> list[str]:
        """LOOP THREAD (synchronous, no I/O): ``release_terminal`` every owned terminal with no request
        for ``idle_seconds`` (``touch_terminal``'s clock) whose rows are all committed; terminals with
        rows still uncommitted are left for a later call. Returns the terminals released (sorted); call
        ``unlock_released_terminals`` in a worker thread afterwards."""
        ownership = self._owning()
        released = ownership.idle(idle_seconds, now, self._committed_seq)
        for terminal in released:
            ownership.release(terminal, self._committed_seq)
        self._forget_terminals(set(released))
        return released

    def unlock_released_terminals(self) -> list[str]:
        """WORKER THREAD (blocking): drop the database locks of the released terminals, so other
        instances can take them; returns those unlocked. LedgerError if the lock connection fails."""
        return self._owning().unlock_released()

    def owned_terminals(self) -> frozenset[str]:
        """The terminals this instance decides for now (empty in single-instance mode: it decides for all)."""
        return frozenset() if self._ownership is None else self._ownership.owned()

    def check_locks(self) -> None:
        """WORKER THREAD (blocking): LedgerError if the lock connection is gone (it then stays lost and
        ``owns`` raises). Call it every few seconds: it makes a lost session noticed between requests,
        though commits are refused without it anyway (the fence)."""
        self._owning().control.ping()


_REVERSAL_FIELDS = tuple(Reversal.__dataclass_fields__)
_UPLOAD_FIELDS = tuple(UploadRecord.__dataclass_fields__)
_SETTLEMENT_FIELDS = tuple(Settlement.__dataclass_fields__)
_DISCREPANCY_FIELDS = tuple(Discrepancy.__dataclass_fields__)
