"""The ledger: durability across reopen (including an object dropped without close), group flush
from a worker thread while the owner keeps appending, and the reports.

Tests that take ``target`` run against both backends: a SQLite file and a fresh database on a real
PostgreSQL server (tests/pg_server.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from switch.ledger import (
    FIRST_BATCH,
    Discrepancy,
    Ledger,
    LedgerError,
    Posting,
    Reversal,
    Settlement,
    UploadRecord,
    next_batch_number,
)
from switch.ledger_backends import open_backend

T0 = 1_748_779_200.0


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's ledger lives: a SQLite file, or a PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return str(request.getfixturevalue("pg_url"))


def stored_seqs(target: str, table: str = "postings") -> list[int]:
    """The sequence numbers committed in ``table``, read past the Ledger (straight from the backend)."""
    backend = open_backend(target)
    try:
        with backend.snapshot() as rows:
            return [row[0] for row in rows(table)]
    finally:
        backend.close()


def posting(ledger: Ledger, stan: str, amount: int = 1000, *, terminal: str = "TERM0001",
            batch: str = FIRST_BATCH, approved: bool = True, direction: str = "debit", kind: str = "purchase",
            f7: str = "0601120000") -> Posting:
    seq = ledger.next_sequence()
    record = Posting(seq, T0 + seq, terminal, stan, f7, "0200", kind, direction, amount, "840",
                     "420000******0000", batch, "00" if approved else "51", approved, f"{seq:012d}",
                     "123456" if approved else "")
    ledger.record_posting(record)
    return record


def reverse(ledger: Ledger, original: Posting, effect: str = "reversed") -> Reversal:
    seq = ledger.next_sequence()
    reversal = Reversal(seq, T0 + seq, original.terminal, original.stan, "0601120100", "0400", original.seq,
                        original.stan, original.transmission_time, "00", effect)
    ledger.record_reversal(reversal)
    return reversal


def settle(ledger: Ledger, terminal: str, batch: str, stan: str, closed: bool = True) -> Settlement:
    seq = ledger.next_sequence()
    record = Settlement(seq, T0 + seq, terminal, batch, stan, "", "balanced" if closed else "unbalanced",
                        "00" if closed else "95", closed, 0, 0, 0, 0)
    ledger.record_settlement(record)
    return record


def state(ledger: Ledger) -> tuple:
    return (ledger.postings(), ledger.batches(), ledger.reversals(), ledger.settlements(),
            ledger.discrepancies(), [ledger.uploads(b.terminal, b.batch) for b in ledger.batches()])


def test_memory_ledger_indexes_see_writes_at_once() -> None:
    ledger = Ledger.open(":memory:")
    first = posting(ledger, "000001")
    assert ledger.find_posting("TERM0001", "000001", "0601120000") == first
    assert ledger.latest_posting("TERM0001", "000001") == first
    assert ledger.find_posting("TERM0001", "000001", "") is None
    assert (ledger.pending_seq, ledger.committed_seq) == (1, 0)
    assert ledger.flush() == 1
    assert ledger.committed_seq == 1 and ledger.is_committed(1)
    assert ledger.flush() == 1  # nothing pending: no-op


def test_reopen_after_flush_without_close(target: str) -> None:
    path = target
    ledger = Ledger.open(path)
    kept = [posting(ledger, f"{n:06d}", 100 * n) for n in range(1, 6)]
    refund = posting(ledger, "000006", 250, direction="credit")
    declined = posting(ledger, "000007", approved=False)
    reverse(ledger, kept[0])
    advice = posting(ledger, "000008", 70, kind="advice")
    seq = ledger.next_sequence()
    ledger.record_upload(UploadRecord(seq, T0, "TERM0001", FIRST_BATCH, "000002", "000000", "debit", 200,
                                      "", ""))
    ledger.end_upload(ledger.next_sequence(), T0, "TERM0001", FIRST_BATCH)
    settlement = settle(ledger, "TERM0001", FIRST_BATCH, "000009")
    ledger.record_settlement(
        Settlement(ledger.next_sequence(), T0, "TERM0002", FIRST_BATCH, "000001", "", "unbalanced", "95",
                   False, 1, 1, 0, 0),
        [Discrepancy(ledger.next_sequence(), T0, "TERM0002", FIRST_BATCH, "missing-from-upload", "000001", "",
                     5, None, "x")])
    ledger.flush()
    posting(ledger, "000010")  # appended, never flushed: lost with the process, as it was never acknowledged
    expected = state(ledger)
    expected_seq = ledger.committed_seq
    del ledger  # dropped without close(), like a process killed after its last flush

    again = Ledger.open(path)
    assert again.committed_seq == again.pending_seq == expected_seq
    assert again.next_sequence() == expected_seq + 1
    postings, batches, *rest = state(again)
    assert postings == [p for p in expected[0] if p.stan != "000010"]
    assert rest == list(expected[2:])
    assert again.latest_posting("TERM0001", "000010") is None
    by_seq = {p.seq: p for p in postings}
    assert by_seq[kept[0].seq].reversal_seq is not None
    assert by_seq[declined.seq].approved is False
    assert again.latest_advice("TERM0001", "000008") == advice
    [term1, term2] = batches
    assert (term1.status, term1.closed_seq) == ("closed", settlement.seq)
    assert (term1.debit_count, term1.debit_amount) == (5, 200 + 300 + 400 + 500 + 70)  # kept[0] reversed
    assert (term1.credit_count, term1.credit_amount) == (1, refund.amount)
    assert (term1.debit_reversal_count, term1.debit_reversal_amount) == (1, 100)
    assert (term1.upload_count, term1.upload_ended) == (1, False)  # settlement consumed the upload end
    assert (term2.status, term2.discrepancies) == ("open", 1)
    assert again.current_batch("TERM0001") == "000002"
    assert again.current_batch("TERM0002") == FIRST_BATCH
    assert again.reversal_for("TERM0001", kept[0].stan, kept[0].transmission_time).effect == "reversed"
    assert again.settlement_for("TERM0001", "000009") == settlement
    again.close()


def test_close_flushes_and_is_idempotent(target: str) -> None:
    path = target
    ledger = Ledger.open(path)
    posting(ledger, "000001")
    ledger.close()
    ledger.close()
    assert ledger.closed
    with pytest.raises(LedgerError, match="closed"):
        posting(ledger, "000002")
    with pytest.raises(LedgerError, match="closed"):
        ledger.flush()
    reopened = Ledger.open(path)
    assert len(reopened.postings()) == 1
    reopened.close()


def test_file_is_wal_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_not_a_ledger(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match=r"garbage\.sqlite"):
        Ledger.open(garbage)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema', '99')")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="schema version 99"):
        Ledger.open(other)
    with pytest.raises(LedgerError, match="cannot open"):
        Ledger.open(tmp_path / "missing-dir" / "ledger.sqlite")


def test_flush_from_a_thread_while_appending(target: str) -> None:
    path = target
    ledger = Ledger.open(path)
    total = 3000
    stop = threading.Event()
    flushed: list[int] = []

    def flusher() -> None:
        while not stop.is_set():
            flushed.append(ledger.flush())

    worker = threading.Thread(target=flusher)
    worker.start()
    try:
        for n in range(1, total + 1):
            posting(ledger, f"{n:06d}", n)
            assert ledger.committed_seq <= ledger.pending_seq
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert flushed == sorted(flushed)  # committed_seq only moves forward
    assert len(set(flushed)) > 1  # the flushes really interleaved with the appends
    ledger.flush()
    assert ledger.committed_seq == total
    assert stored_seqs(path) == list(range(1, total + 1))  # every append written exactly once
    ledger.close()


def test_failed_flush_keeps_rows_pending(tmp_path: Path) -> None:
    """SQLite: another writer holds the lock. (PostgreSQL: test_ledger_schema's refused batch.)"""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path, busy_timeout=0.05)
    first = posting(ledger, "000001")
    ledger.flush()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the flush cannot commit
    second, third = posting(ledger, "000002"), posting(ledger, "000003")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        ledger.flush()
    assert ledger.committed_seq == first.seq
    assert ledger.find_posting("TERM0001", "000002", second.transmission_time) == second
    blocker.execute("ROLLBACK")
    blocker.close()
    assert ledger.flush() == third.seq  # the rows were kept and go out with the next flush
    ledger.close()
    reopened = Ledger.open(path)
    assert [p.stan for p in reopened.postings()] == ["000001", "000002", "000003"]
    reopened.close()


def test_sequences_must_increase() -> None:
    ledger = Ledger.open(":memory:")
    first = posting(ledger, "000001")
    stale = Posting(first.seq, T0, "TERM0001", "000002", "", "0200", "purchase", "debit", 1, "", "",
                    FIRST_BATCH, "00", True, "x", "y")
    with pytest.raises(ValueError, match="next_sequence"):
        ledger.record_posting(stale)


def test_record_validation() -> None:
    ledger = Ledger.open(":memory:")
    declined = posting(ledger, "000001", approved=False)
    with pytest.raises(ValueError, match="not an approved"):
        reverse(ledger, declined)
    with pytest.raises(ValueError, match="unknown reversal effect"):
        reverse(ledger, declined, effect="maybe")
    with pytest.raises(ValueError, match="unknown settlement result"):
        ledger.record_settlement(Settlement(ledger.next_sequence(), T0, "T", "000001", "1", "", "odd", "00",
                                            True, 0, 0, 0, 0))


def test_reports_filter_and_serialize() -> None:
    ledger = Ledger.open(":memory:")
    posting(ledger, "000001", terminal="A")
    posting(ledger, "000002", terminal="B")
    settle(ledger, "A", FIRST_BATCH, "000003")
    posting(ledger, "000004", terminal="A", batch="000002")
    assert [p.stan for p in ledger.postings(terminal="A")] == ["000001", "000004"]
    assert [p.stan for p in ledger.postings(terminal="A", batch="000002")] == ["000004"]
    assert [(b.terminal, b.batch, b.status) for b in ledger.batches()] == [
        ("A", "000001", "closed"), ("A", "000002", "open"), ("B", "000001", "open")]
    assert [b.batch for b in ledger.batches(terminal="B")] == ["000001"]
    summary = ledger.batches(terminal="A")[0]
    assert summary.net_totals.debit_amount == 1000
    text = json.dumps([p.as_dict() for p in ledger.postings()] + [b.as_dict() for b in ledger.batches()]
                      + [s.as_dict() for s in ledger.settlements()])
    assert '"rrn"' in text and '"status": "closed"' in text
    first = ledger.postings()[0]
    assert (first.as_dict()["reversed"], first.as_dict()["captured"]) == (False, True)
    reverse(ledger, first)
    reversed_ = ledger.postings()[0].as_dict()
    assert (reversed_["reversed"], reversed_["captured"], reversed_["reversal_seq"]) == (True, False, 5)
    assert ledger.batch_summary("Z", "000009").status == "open"  # an unknown batch is empty and open
    assert ledger.last_closed_batch("A") == FIRST_BATCH
    assert ledger.last_closed_batch("B") is None


def test_batch_numbers_wrap() -> None:
    assert next_batch_number("000001") == "000002"
    assert next_batch_number("999999") == "000001"


def test_identity_partial_reversal_and_gross_totals_survive_reopen(target: str) -> None:
    path = target
    ledger = Ledger.open(path)
    seq = ledger.next_sequence()
    ledger.append_posting(seq, T0, "TERM0001", "000001", "0601120000", "0200", "purchase", "debit", 10000, "840",
                          "", FIRST_BATCH, "00", True, f"{seq:012d}", "123456", "20L0601120000", None)
    original = ledger.find_posting("TERM0001", "000001", "20L0601120000")
    assert original is not None and original.identity == "20L0601120000"
    assert ledger.find_posting("TERM0001", "000001", "0601120000") is None  # field 7 is not the key
    partial_seq = ledger.next_sequence()
    ledger.record_reversal(Reversal(partial_seq, T0 + 1, "TERM0001", "000001", "", "0400", original.seq,
                                    "000001", "0601120000", "00", "partially-reversed", 4000))
    with pytest.raises(ValueError):  # cannot undo more than is still captured
        ledger.record_reversal(Reversal(ledger.next_sequence(), T0 + 2, "TERM0001", "000001", "", "0400",
                                        original.seq, "000001", "", "00", "partially-reversed", 6000))
    summary = ledger.batch_summary("TERM0001", FIRST_BATCH)
    assert (summary.debit_count, summary.debit_amount, summary.debit_reversal_amount) == (1, 6000, 4000)
    assert (summary.gross_totals.debit_count, summary.gross_totals.debit_amount) == (1, 10000)
    assert ledger.captured_amount(original) == 6000
    assert ledger.latest_reversal_for_stan("TERM0001", "000001").seq == partial_seq
    before = state(ledger)
    ledger.close()
    reopened = Ledger.open(path)
    assert state(reopened) == before
    assert reopened.captured_amount(reopened.posting(original.seq)) == 6000
    full = reverse(reopened, reopened.posting(original.seq))
    assert reopened.posting(original.seq).reversal_seq == full.seq
    summary = reopened.batch_summary("TERM0001", FIRST_BATCH)
    assert (summary.debit_count, summary.debit_amount, summary.debit_reversal_amount) == (0, 0, 10000)
    reopened.close()


def test_unposted_rrn_numbers_are_their_own_range_and_unique_across_restarts(target: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Replies that post nothing take RRN numbers from 9xxxxxxxxxxx, claimed in blocks: each open claims
    one durably before anything is answered, and half-way through a block the next one is claimed through
    the group commit, so a crash (no flush, no close) never lets a restart hand out a number again."""
    monkeypatch.setattr("switch.ledger.UNPOSTED_BLOCK", 4)
    path = target
    first = Ledger.open(path)
    seq_before = first.pending_seq
    numbers = [first.unposted_rrn_number() for _ in range(3)]  # the 3rd claims the next block ahead
    assert numbers == [900_000_000_000, 900_000_000_001, 900_000_000_002]
    first.flush()  # what the group committer does within milliseconds
    numbers += [first.unposted_rrn_number() for _ in range(3)]  # into the block claimed ahead; then "crash"
    posted = posting(first, "000001")
    assert posted.seq < 900_000_000_000 and first.postings() == [posted]  # no row pretends a posting
    assert first.pending_seq > seq_before  # the claims travel with the group commit
    second = Ledger.open(path)  # the first was never closed nor flushed again
    numbers += [second.unposted_rrn_number() for _ in range(3)]  # 8, 9, 10: the 3rd claims 12-15 ahead
    second.flush()
    numbers += [second.unposted_rrn_number() for _ in range(2)]  # 11, then 12 from the block claimed ahead
    assert len(numbers) == len(set(numbers)), numbers
    assert second.postings() == []  # the posting was not flushed: it is lost, its RRN was never sent
    third = Ledger.open(path)  # the second "crashed" too
    assert third.unposted_rrn_number() == 900_000_000_016
    for ledger in (first, second, third):
        ledger.close()


def test_unposted_rrn_numbers_of_a_memory_ledger() -> None:
    ledger = Ledger.open(":memory:")
    numbers = {ledger.unposted_rrn_number() for _ in range(1000)}
    assert len(numbers) == 1000 and min(numbers) == 900_000_000_000
