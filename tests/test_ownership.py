"""Per-terminal ownership of a PostgreSQL ledger shared by several instances (docs/scaleout.md), at the
ledger level: acquire / install / release / unlock, the wait limit, the flushed-before-release rule,
fail-stop on a lost lock connection (the commit fence), sequence blocks that never collide, and the
two modes excluding each other. Against a real PostgreSQL server (tests/pg_server.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import switch.ledger as ledger_module
from switch.ledger import (
    FIRST_BATCH,
    Ledger,
    LedgerError,
    Posting,
    Reversal,
    TerminalBusy,
    UnflushedTerminal,
)
from switch.ledger_backends import open_backend
from switch.ledger_backends import postgresql as pg_module
from switch.ledger_backends.pg_control import lock_key

T0 = 1_748_779_200.0


def sale(ledger: Ledger, terminal: str, stan: str, amount: int = 1000) -> Posting:
    seq = ledger.next_sequence()
    record = Posting(seq, T0 + seq, terminal, stan, "0601120000", "0200", "purchase", "debit", amount, "840",
                     "420000******0000", FIRST_BATCH, "00", True, f"{seq:012d}", "123456")
    ledger.record_posting(record)
    return record


def reverse(ledger: Ledger, original: Posting) -> Reversal:
    seq = ledger.next_sequence()
    record = Reversal(seq, T0 + seq, original.terminal, original.stan, "0601120100", "0400", original.seq,
                      original.stan, original.transmission_time, "00", "reversed")
    ledger.record_reversal(record)
    return record


@pytest.fixture
def instances(pg_url: str) -> Iterator[list[Ledger]]:
    """Three multi-instance ledgers on one database (closed at the end, whatever state they are in)."""
    opened = [Ledger.open(pg_url, multi_instance=True) for _ in range(3)]
    yield opened
    for ledger in opened:
        with contextlib.suppress(LedgerError):  # a test cut its lock connection: pending rows are refused
            ledger.close()


def kill_lock_session(pg_url: str, ledger: Ledger) -> None:
    """End the ledger's lock connection from the server side (what a crash or a network cut does)."""
    ownership = ledger._ownership
    assert ownership is not None and ownership.control._conn is not None
    pid = ownership.control._conn.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        assert row is not None and row[0]


def view(ledger: Ledger, terminal: str) -> tuple[Any, ...]:
    return (ledger.postings(terminal), ledger.reversals(terminal), ledger.batches(terminal),
            ledger.settlements(terminal), ledger.discrepancies(terminal), ledger.current_batch(terminal))


def test_a_terminal_moves_between_instances_with_its_committed_rows(instances: list[Ledger]) -> None:
    a, b, _ = instances
    a.acquire_terminal("T1", timeout=1.0)
    assert a.owns("T1") and not b.owns("T1")
    first = sale(a, "T1", "000001", 1500)
    reverse(a, sale(a, "T1", "000002", 700))
    a.flush()
    a.release_terminal("T1")
    assert not a.owns("T1") and a.postings("T1") == []  # forgotten at once, lock still held
    assert a.unlock_released_terminals() == ["T1"]
    b.acquire_terminal("T1", timeout=1.0)
    assert b.find_posting("T1", "000001", "0601120000") == first
    assert b.batch_summary("T1", FIRST_BATCH).debit_amount == 1500
    assert b.reversals("T1")[0].original_seq == first.seq + 1


def test_acquire_times_out_while_another_instance_owns(instances: list[Ledger]) -> None:
    a, b, _ = instances
    a.acquire_terminal("T1", timeout=1.0)
    with pytest.raises(TerminalBusy, match="'T1' is owned by another instance"):
        b.fetch_terminal_rows("T1", timeout=0.05)
    assert not b.owns("T1")
    b.acquire_terminal("T2", timeout=1.0)  # other terminals are not affected
    assert b.owns("T2")


def test_release_is_refused_while_rows_are_uncommitted(instances: list[Ledger]) -> None:
    a, b, _ = instances
    a.acquire_terminal("T1", timeout=1.0)
    sale(a, "T1", "000001")
    with pytest.raises(UnflushedTerminal, match="not yet committed"):
        a.release_terminal("T1")
    assert a.release_idle_terminals(0.0, now=1e9) == []  # idle but unflushed: deferred, not released
    assert a.owns("T1") and len(a.postings("T1")) == 1
    a.flush()
    assert a.release_idle_terminals(0.0, now=1e9) == ["T1"]
    a.unlock_released_terminals()
    b.acquire_terminal("T1", timeout=1.0)
    assert len(b.postings("T1")) == 1


def test_idle_release_keeps_terminals_that_were_seen_recently(instances: list[Ledger]) -> None:
    a = instances[0]
    a.acquire_terminal("T1", timeout=1.0, now=100.0)
    a.acquire_terminal("T2", timeout=1.0, now=100.0)
    a.touch_terminal("T2", 150.0)
    assert a.release_idle_terminals(60.0, now=170.0) == ["T1"]
    assert a.owned_terminals() == {"T2"}


def test_a_released_terminal_taken_back_before_unlock_keeps_one_lock(pg_url: str, instances: list[Ledger]) -> None:
    a, b, _ = instances
    a.acquire_terminal("T1", timeout=1.0)
    sale(a, "T1", "000001")
    a.flush()
    a.release_terminal("T1")
    a.acquire_terminal("T1", timeout=1.0)  # RELEASING -> LOCKED: no second (re-entrant) hold
    assert a.owns("T1") and len(a.postings("T1")) == 1
    assert a.unlock_released_terminals() == []
    a.release_terminal("T1")
    assert a.unlock_released_terminals() == ["T1"]
    b.acquire_terminal("T1", timeout=1.0)  # one unlock freed it: the hold was not stacked
    with psycopg.connect(pg_url, autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                            (lock_key("owner", "T1") & 0xFFFFFFFF,)).fetchone()
    assert row is not None and row[0] == 1


def test_deciding_for_a_terminal_not_owned_is_refused(instances: list[Ledger]) -> None:
    a = instances[0]
    with pytest.raises(LedgerError, match="'T9' is not owned"):
        sale(a, "T9", "000001")
    assert a.pending_seq == 0


def test_a_second_install_of_an_owned_terminal_changes_nothing(instances: list[Ledger]) -> None:
    a = instances[0]
    rows = a.fetch_terminal_rows("T1", timeout=1.0)
    assert a.install_terminal_rows(rows)
    sale(a, "T1", "000001")  # not yet committed: a reinstall would lose it
    assert not a.install_terminal_rows(a.fetch_terminal_rows("T1", timeout=1.0))
    assert len(a.postings("T1")) == 1


def test_concurrent_fetches_of_one_terminal_take_one_lock(instances: list[Ledger]) -> None:
    a, b, _ = instances
    results: list[object] = []

    def fetch() -> None:
        try:
            results.append(a.fetch_terminal_rows("T1", timeout=2.0))
        except LedgerError as exc:  # pragma: no cover - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 4 and all(not isinstance(r, LedgerError) for r in results)
    a.install_terminal_rows(results[0])  # type: ignore[arg-type]
    a.release_terminal("T1")
    a.unlock_released_terminals()
    b.acquire_terminal("T1", timeout=1.0)  # free after one unlock


def test_crash_frees_the_terminal_and_only_committed_rows_survive(pg_url: str, instances: list[Ledger]) -> None:
    a, b, _ = instances
    a.acquire_terminal("T1", timeout=1.0)
    kept = sale(a, "T1", "000001", 1000)
    a.flush()
    sale(a, "T1", "000002", 2000)  # decided, never committed: never acknowledged either
    kill_lock_session(pg_url, a)
    b.acquire_terminal("T1", timeout=5.0)
    assert b.postings("T1") == [kept]
    # A's write connection is still alive, but its commit is fenced off: the lock session is gone
    with pytest.raises(LedgerError, match="no longer held"):
        a.flush()
    assert b.postings("T1") == [kept]
    fresh = open_backend(pg_url)
    try:
        with fresh.snapshot() as rows:
            assert [row[0] for row in rows("postings")] == [kept.seq]
    finally:
        fresh.close()
    with pytest.raises(LedgerError, match="lock connection"):
        a.owns("T1")  # fail-stop: A never decides again


def test_a_new_owner_waits_for_a_commit_still_in_flight(pg_url: str, instances: list[Ledger]) -> None:
    """The fence: a commit that passed its ownership check holds the terminal's fence until COMMIT, and
    a new owner reads the rows only after it (here the commit is held open by hand)."""
    a, b, _ = instances
    a.acquire_terminal("T1", timeout=1.0)
    with psycopg.connect(pg_url) as in_flight:  # stands for A's write transaction, mid-commit
        in_flight.execute("SELECT pg_advisory_xact_lock_shared(%s)", (lock_key("fence", "T1"),))
        kill_lock_session(pg_url, a)
        with pytest.raises(TerminalBusy, match="previous owner's commit did not finish"):
            b.fetch_terminal_rows("T1", timeout=0.1)
        in_flight.commit()
    b.acquire_terminal("T1", timeout=2.0)
    assert b.owns("T1")


def test_lost_lock_connection_is_noticed_by_the_health_check(pg_url: str, instances: list[Ledger]) -> None:
    a = instances[0]
    a.acquire_terminal("T1", timeout=1.0)
    kill_lock_session(pg_url, a)
    with pytest.raises(LedgerError, match="lock connection failed"):
        a.check_locks()
    with pytest.raises(LedgerError, match="lock connection is lost"):
        a.owns("T1")
    with pytest.raises(LedgerError, match="lock connection is lost"):
        a.fetch_terminal_rows("T2", timeout=0.1)


def test_sequence_blocks_never_collide(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    monkeypatch.setattr(ledger_module, "SEQUENCE_BLOCK", 7)
    monkeypatch.setattr(ledger_module, "UNPOSTED_BLOCK", 5)
    a, b = Ledger.open(pg_url, multi_instance=True), Ledger.open(pg_url, multi_instance=True)
    try:
        a.acquire_terminal("TA", timeout=1.0)
        b.acquire_terminal("TB", timeout=1.0)
        taken: dict[str, list[int]] = {"a": [], "b": []}
        unposted: list[int] = []
        for step in range(60):  # interleaved, crossing many block boundaries (spare, prefetch and sync claims)
            for name, ledger, terminal in (("a", a, "TA"), ("b", b, "TB")):
                if (step + len(name)) % 3:
                    taken[name].append(sale(ledger, terminal, f"{step:06d}").seq)
                unposted.append(ledger.unposted_rrn_number())
                if step % 4 == 0:
                    ledger.flush()
        for seqs in taken.values():
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert not set(taken["a"]) & set(taken["b"])
        assert len(set(unposted)) == len(unposted)
        a.flush()
        b.flush()
        c = Ledger.open(pg_url)  # a reader replays both instances' rows: RRNs (from seqs) are unique
        rrns = [p.rrn for p in c.postings()]
        assert len(rrns) == len(set(rrns)) == len(taken["a"]) + len(taken["b"])
        c.close()
    finally:
        a.close()
        b.close()


def test_rows_added_after_a_takeover_number_above_the_previous_owners(pg_url: str, instances: list[Ledger]) -> None:
    """A's block was claimed before B's: when A takes over a terminal B wrote to, A's new rows must
    still follow B's, or a replay (in sequence order) would put A's settlement before B's sale."""
    a, b, _ = instances  # opened in this order: a's block is the lower one
    b.acquire_terminal("T1", timeout=1.0)
    b_sale = sale(b, "T1", "000001")
    b.flush()
    b.release_terminal("T1")
    b.unlock_released_terminals()
    below = a.next_sequence()  # still in a's older block
    assert below < b_sale.seq
    a.acquire_terminal("T1", timeout=1.0)
    a_sale = sale(a, "T1", "000002")
    assert a_sale.seq > b_sale.seq > below
    a.flush()
    backend = open_backend(pg_url)
    try:
        stored = [row[3] for row in backend.terminal_snapshot("T1")("postings")]
    finally:
        backend.close()
    assert stored == ["000001", "000002"]  # replay order = decision order


def test_sequence_blocks_start_above_rows_a_single_instance_wrote(pg_url: str) -> None:
    single = Ledger.open(pg_url, writer=True)
    for n in range(5):
        sale(single, "T1", f"{n:06d}")
    single.close()
    multi = Ledger.open(pg_url, multi_instance=True)
    try:
        assert multi.next_sequence() > 5
    finally:
        multi.close()


def test_modes_exclude_each_other(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    monkeypatch.setattr(pg_module, "WRITER_LOCK_WAIT", 0.05)
    multi = Ledger.open(pg_url, multi_instance=True)
    with pytest.raises(LedgerError, match="another switch is serving"):
        Ledger.open(pg_url, writer=True)
    Ledger.open(pg_url).close()  # reading is always allowed
    multi.close()
    single = Ledger.open(pg_url, writer=True)
    with pytest.raises(LedgerError, match="single-instance switch is serving"):
        Ledger.open(pg_url, multi_instance=True)
    single.close()


def test_sqlite_and_single_instance_ledgers_have_no_ownership(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="multi-instance mode needs a PostgreSQL ledger"):
        Ledger.open(tmp_path / "ledger.sqlite", multi_instance=True)
    single = Ledger.open(tmp_path / "ledger.sqlite")
    assert single.owns("ANY") and not single.multi_instance
    with pytest.raises(LedgerError, match="multi_instance=True"):
        single.acquire_terminal("ANY", timeout=0.1)
    single.close()


def test_a_database_view_shows_what_every_instance_committed(instances: list[Ledger]) -> None:
    """Reads (the admin API, the load runner's check) see the whole host, not the reader's terminals."""
    a, b, _ = instances
    a.acquire_terminal("T1", timeout=1.0)
    b.acquire_terminal("T2", timeout=1.0)
    sale(a, "T1", "000001", 1500)
    sale(b, "T2", "000001", 250)
    a.flush()
    b.flush()
    assert b.postings("T1") == []  # B's memory holds only its own terminals
    whole = b.database_view()
    one = b.database_view("T1")
    try:
        assert sorted((p.terminal, p.amount) for p in whole.postings()) == [("T1", 1500), ("T2", 250)]
        assert [(p.terminal, p.amount) for p in one.postings()] == [("T1", 1500)]
        assert view(one, "T1")[:5] == view(a, "T1")[:5]
    finally:
        whole.close()
        one.close()
    assert not a.closed and not b.closed


def test_a_single_instance_ledger_has_no_database_view(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "l.sqlite")
    try:
        with pytest.raises(LedgerError, match="multi-instance"):
            ledger.database_view()
    finally:
        ledger.close()
