"""GroupCommitter: one flush releases many waiters, shutdown drains, failures stop acknowledgements."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from switch.commit import CommitError, GroupCommitter
from switch.ledger import FIRST_BATCH, Ledger, Posting


def append(ledger: Ledger, stan: int) -> int:
    seq = ledger.next_sequence()
    ledger.record_posting(Posting(seq, 0.0, "TERM0001", f"{stan:06d}", "", "0200", "purchase", "debit", 100,
                                  "840", "", FIRST_BATCH, "00", True, f"{seq:012d}", "000001"))
    return seq


async def test_many_waiters_released_by_one_flush(autojump_clock: trio.testing.MockClock) -> None:
    ledger = Ledger.open(":memory:")
    committer = GroupCommitter(ledger, max_delay=0.01)
    released: list[int] = []

    async def request(stan: int) -> None:
        seq = append(ledger, stan)
        await committer.wait_committed(seq)
        assert ledger.committed_seq >= seq  # never acknowledged before durable
        released.append(seq)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as requests:
            for stan in range(1, 201):
                requests.start_soon(request, stan)
        nursery.cancel_scope.cancel()
    assert sorted(released) == list(range(1, 201))
    assert committer.flushes == 1
    assert ledger.committed_seq == 200


async def test_rows_appended_during_a_flush_go_in_the_next(autojump_clock: trio.testing.MockClock) -> None:
    ledger = Ledger.open(":memory:")
    committer = GroupCommitter(ledger, max_delay=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        first = append(ledger, 1)
        waiter_done = trio.Event()

        async def wait_first() -> None:
            await committer.wait_committed(first)
            waiter_done.set()

        nursery.start_soon(wait_first)
        await trio.testing.wait_all_tasks_blocked()
        second = append(ledger, 2)  # may land after the first flush's swap
        await committer.wait_committed(second)
        await waiter_done.wait()
        assert ledger.committed_seq == second
        nursery.cancel_scope.cancel()
    assert committer.flushes <= 2


async def test_already_committed_returns_without_a_flush(autojump_clock: trio.testing.MockClock) -> None:
    ledger = Ledger.open(":memory:")
    seq = append(ledger, 1)
    ledger.flush()
    committer = GroupCommitter(ledger)
    await committer.wait_committed(seq)  # not running, but nothing to wait for
    assert committer.flushes == 0


async def test_shutdown_flushes_what_is_pending(tmp_path: Path, autojump_clock: trio.testing.MockClock
                                                ) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    committer = GroupCommitter(ledger, idle_flush=3600.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for stan in range(1, 11):
            append(ledger, stan)  # nobody waits: only the shutdown drain writes these
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.committed_seq == 0
        nursery.cancel_scope.cancel()
    assert not committer.running
    assert ledger.committed_seq == 10
    reader = Ledger.open(path)  # another connection sees them on disk
    assert len(reader.postings()) == 10
    reader.close()
    ledger.close()


async def test_rows_nobody_waits_for_are_flushed_when_idle(autojump_clock: trio.testing.MockClock) -> None:
    ledger = Ledger.open(":memory:")
    committer = GroupCommitter(ledger, idle_flush=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        append(ledger, 1)
        await trio.sleep(0.5)
        assert ledger.committed_seq == 0
        for _ in range(10_000):  # the flush runs in a thread the mock clock does not wait for: poll
            if committer.flushes:
                break
            await trio.sleep(0.01)
        assert (committer.flushes, ledger.committed_seq) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_durable_before_acknowledged(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    committer = GroupCommitter(ledger)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        seq = append(ledger, 1)
        await committer.wait_committed(seq)
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT seq FROM postings").fetchall() == [(seq,)]
        conn.close()
        nursery.cancel_scope.cancel()
    ledger.close()


class FailingLedger(Ledger):
    def flush(self) -> int:
        raise sqlite3.OperationalError("disk I/O error")


async def test_failed_flush_fails_waiters_and_stops(autojump_clock: trio.testing.MockClock) -> None:
    ledger = FailingLedger.open(":memory:")
    committer = GroupCommitter(ledger)
    errors: list[BaseException] = []

    async def request(stan: int) -> None:
        try:
            await committer.wait_committed(append(ledger, stan))
        except CommitError as exc:
            errors.append(exc)

    with pytest.RaisesGroup(sqlite3.OperationalError):  # run() re-raises the flush error
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            for stan in range(1, 6):
                nursery.start_soon(request, stan)
    assert len(errors) == 5
    assert all("disk I/O error" in str(e) for e in errors)
    assert not committer.running


async def test_waiting_without_a_committer_or_for_nothing() -> None:
    ledger = Ledger.open(":memory:")
    committer = GroupCommitter(ledger)
    with pytest.raises(CommitError, match="not running"):
        await committer.wait_committed(append(ledger, 1))
    with pytest.raises(ValueError, match="never appended"):
        await committer.wait_committed(99)


async def test_run_twice_and_bad_settings() -> None:
    ledger = Ledger.open(":memory:")
    committer = GroupCommitter(ledger)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        with pytest.raises(RuntimeError, match="already running"):
            await committer.run()
        nursery.cancel_scope.cancel()
    for bad in ({"max_delay": -1.0}, {"max_delay": float("inf")}, {"idle_flush": 0.0}):
        with pytest.raises(ValueError):
            GroupCommitter(ledger, **bad)


async def test_flushes_do_not_need_the_shared_thread_pool() -> None:
    """Other work that fills Trio's default thread limiter (e.g. stuck file reads) cannot stop commits."""
    ledger = Ledger.open(":memory:")
    committer = GroupCommitter(ledger)
    pool = trio.to_thread.current_default_thread_limiter()
    saved = pool.total_tokens
    pool.total_tokens = 1
    try:
        async with pool, trio.open_nursery() as nursery:  # the whole shared pool is taken
            await nursery.start(committer.run)
            seq = append(ledger, 1)
            with trio.fail_after(10):
                await committer.wait_committed(seq)
            assert ledger.committed_seq >= seq
            nursery.cancel_scope.cancel()
    finally:
        pool.total_tokens = saved


async def test_uncommitted_age_measures_how_long_the_oldest_row_waits(mock_clock: trio.testing.MockClock) -> None:
    ledger = Ledger.open(":memory:")
    committer = GroupCommitter(ledger, in_thread=False)
    assert committer.uncommitted_age() == 0.0
    append(ledger, 1)
    assert committer.uncommitted_age() == 0.0  # first seen now
    mock_clock.jump(7)
    append(ledger, 2)
    assert committer.uncommitted_age() == pytest.approx(7.0)  # the oldest row's wait, not the newest's
    ledger.flush()
    assert committer.uncommitted_age() == 0.0
