"""The load runner: its accounting on a virtual clock, and ``LoadRunner`` in process.

* pure pieces (``nearest_rank``, ``LoadStats``, ``TokenBucket``, the parsers) with explicit timestamps;
* ``LoadRunner`` on pytest-trio's ``autojump_clock`` against the real switch in-process over memory
  streams (every timeout and rate limit virtual, store calls inline).

The consistency check's verdicts are in test_load_consistency.py, real runs over loopback in
test_load_e2e.py, the group syncer in test_load_syncer.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec import Codec, load_dialect
from switch.codec.framing import Framing
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer
from terminal.client import TrioClock
from terminal.load import (
    MEMORY_STORES,
    HostPosting,
    LoadConfig,
    LoadError,
    LoadRunner,
    LoadStats,
    TokenBucket,
    compare_views,
    derive_terminal_ids,
    field7_time,
    nearest_rank,
    parse_load_duration,
    parse_mix,
    parse_rate,
    progress_line,
    run_window,
)
from terminal.profile import TerminalProfile

ISO = load_dialect("iso87-binary")
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
PAN = "4761739001010010"  # approved by the default test-card table
DECLINED_PAN = "4000000000000051"  # the test-card table answers 51
UNBOOKED_PAN = "4999000000000062"  # zero-amount scenario: answered 00 by a fault, never booked


# ---------------------------------------------------------------------------------------------
# nearest-rank percentiles


def test_nearest_rank_on_known_inputs() -> None:
    hundred = [float(n) for n in range(1, 101)]
    assert [nearest_rank(hundred, p) for p in (1, 50, 90, 99, 99.9, 100)] == [1, 50, 90, 99, 100, 100]
    assert [nearest_rank([1.0, 2.0, 3.0, 4.0], p) for p in (25, 50, 50.1, 75, 100)] == [1, 2, 3, 3, 4]
    assert nearest_rank([7.0], 0.001) == 7.0
    thousand = [float(n) for n in range(1, 1001)]
    assert nearest_rank(thousand, 99.9) == 999.0  # rank ceil(999.0) exactly, not 1000
    # 7/100 * 100 is 7.000000000000001 in floats: a naive ceil would answer the 8th sample
    assert nearest_rank(hundred, 7) == 7.0


@pytest.mark.parametrize("samples, percentile", [([], 50), ([1.0], 0), ([1.0], 100.5), ([1.0], -1)])
def test_nearest_rank_refuses_what_has_no_answer(samples: list[float], percentile: float) -> None:
    with pytest.raises(ValueError):
        nearest_rank(samples, percentile)


@settings(max_examples=250, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=60),
       st.sampled_from([0.1, 1, 10, 25, 50, 90, 99, 99.9, 100]))
def test_nearest_rank_is_the_smallest_sample_covering_p_percent(values: list[int], percentile: float) -> None:
    samples = sorted(float(v) for v in values)
    value = nearest_rank(samples, percentile)
    share = Fraction(str(percentile)) / 100
    assert value in samples
    assert sum(s <= value for s in samples) >= share * len(samples)  # covers p percent
    assert sum(s < value for s in samples) < share * len(samples)  # and no smaller sample does


# ---------------------------------------------------------------------------------------------
# LoadStats on a virtual clock


def test_stats_count_up_and_add_up() -> None:
    stats = LoadStats()
    script = [  # operation, outcome, code, latency (s), finished at (s since start)
        ("purchase", "approved", "00", 0.010, 0.05),
        ("purchase", "approved", "00", 0.020, 0.15),
        ("purchase", "declined", "51", 0.030, 0.95),
        ("refund", "approved", "00", 0.040, 1.20),
        ("purchase", "reversed", "", 30.0, 31.0),
        ("void", "reversed", "00", 0.050, 31.5),
        ("echo", "failed", "", 12.0, 40.0),
        ("purchase", "unknown-queued", "", 30.0, 41.0),
        ("purchase", "declined", "05", 0.060, 41.5),
    ]
    for operation, *_ in script:
        stats.record_started(operation)
    stats.record_started("purchase")  # still in flight at the end
    for operation, kind, code, latency, at in script:
        stats.record_outcome(operation, kind, code, latency, at)
    for kind in ("reversal-cleared", "late-reply-discarded", "late-reply-discarded", "signed-on"):
        stats.record_note(kind)
    stats.record_sends(["signon", "financial", "reversal", "reversal"])

    assert stats.check_totals() == []
    assert (stats.started, stats.finished, stats.in_flight) == (10, 9, 1)
    summary = stats.summary(elapsed=41.5)
    assert summary["transactions"] == {"started": 10, "finished": 9, "in_flight": 1}
    assert summary["outcomes"] == {"approved": 3, "declined": 2, "reversed": 2, "unknown-queued": 1,
                                   "unknown": 0, "refused": 0, "failed": 1, "completed": 0, "unbalanced": 0}
    assert sum(summary["outcomes"].values()) + summary["transactions"]["in_flight"] == stats.started
    assert summary["errors"] == 3  # the purchase reversed, the failed echo, the unknown one; the void is fine
    assert summary["declined_by_code"] == {"05": 1, "51": 1}
    assert summary["response_codes"]["51"] == {"count": 1, "meaning": "insufficient funds"}
    assert summary["response_codes"]["00"]["count"] == 4
    assert summary["by_operation"]["purchase"] == {"approved": 2, "declined": 2, "reversed": 1, "unknown-queued": 1}
    assert summary["tps"] == round(9 / 41.5, 3)
    events = summary["terminal_events"]
    assert (events["reversals_sent"], events["reversals_acknowledged"], events["late_replies_discarded"]) == (2, 1, 2)
    latency = summary["latency_ms"]
    # sorted: 10 20 30 40 50 60 12000 30000 30000 ms; nearest rank of 9 samples
    assert latency["min"] == 10.0 and latency["max"] == 30000.0
    assert latency["p50"] == 50.0  # rank ceil(4.5) = 5
    assert latency["p90"] == 30000.0  # rank ceil(8.1) = 9
    assert latency["p99"] == latency["p99.9"] == 30000.0
    assert sum(b["count"] for b in summary["latency_histogram"]) == 9


def test_stats_timeline_buckets_by_tenth_of_a_second_and_widens_for_long_runs() -> None:
    stats = LoadStats()
    for at, kind in ((0.05, "approved"), (0.05, "declined"), (0.25, "failed"), (0.31, "approved")):
        stats.record_started("purchase")
        stats.record_outcome("purchase", kind, "00" if kind == "approved" else "", 0.01, at)
    timeline = stats.timeline()
    assert [(b["start"], b["seconds"], b["finished"], b["ok"], b["declined"], b["errors"]) for b in timeline] == [
        (0.0, 0.1, 2, 1, 1, 0), (0.1, 0.1, 0, 0, 0, 0), (0.2, 0.1, 1, 0, 0, 1), (0.3, 0.1, 1, 1, 0, 0)]
    stats.record_started("purchase")
    stats.record_outcome("purchase", "approved", "00", 0.01, 3599.95)  # an hour-long run
    long = stats.timeline()
    assert len(long) <= 300 and long[0]["seconds"] == 15
    assert sum(b["finished"] for b in long) == 5
    assert long[0]["finished"] == 4 and long[-1]["finished"] == 1
    assert stats.check_totals() == []


def test_stats_refuse_impossible_records() -> None:
    stats = LoadStats()
    with pytest.raises(ValueError, match="never started"):
        stats.record_outcome("purchase", "approved", "00", 0.1, 1.0)
    stats.record_started("purchase")
    with pytest.raises(ValueError, match="not an outcome kind"):
        stats.record_outcome("purchase", "maybe", "", 0.1, 1.0)
    with pytest.raises(ValueError, match="latency"):
        stats.record_outcome("purchase", "approved", "00", -1.0, 1.0)


def test_snapshot_reports_recent_and_average_tps() -> None:
    stats = LoadStats()
    for i in range(40):  # 10 per second for 4 seconds
        stats.record_started("purchase")
        stats.record_outcome("purchase", "approved", "00", 0.02, 0.05 + i * 0.1)
    progress = stats.snapshot(4.0)
    assert progress.finished == 40 and progress.in_flight == 0
    assert progress.tps == 10.0
    assert progress.recent_tps == 10.0  # the last 2 seconds: 20 outcomes
    assert progress.p50 == progress.p99 == 0.02
    line = progress_line(progress)
    assert "sent 40 approved 40" in line and "tps 10.0" in line and "p99 20.0ms" in line


OUTCOMES = ["approved", "declined", "reversed", "unknown-queued", "unknown", "refused", "failed", "completed"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["purchase", "refund", "void", "echo"]), st.sampled_from(OUTCOMES),
                          st.sampled_from(["", "00", "51", "05"]), st.floats(0, 60), st.floats(0, 600)),
                max_size=80),
       st.integers(0, 5))
def test_accounting_identities_hold_for_any_history(history: list[tuple[str, str, str, float, float]],
                                                    in_flight: int) -> None:
    stats = LoadStats()
    for operation, *_ in history:
        stats.record_started(operation)
    for _ in range(in_flight):
        stats.record_started("purchase")
    for operation, kind, code, latency, at in history:
        stats.record_outcome(operation, kind, code, latency, at)
    assert stats.check_totals() == []
    summary = stats.summary(elapsed=600.0)
    assert summary["transactions"]["started"] == sum(summary["outcomes"].values()) + in_flight
    assert sum(sum(c.values()) for c in summary["by_operation"].values()) == len(history)
    assert sum(b["finished"] for b in summary["timeline"]) == len(history)
    assert sum(b["ok"] + b["declined"] + b["errors"] for b in summary["timeline"]) == len(history)
    assert sum(b["count"] for b in summary["latency_histogram"]) == len(history)
    if history:
        samples = sorted(latency for *_, latency, _ in history)
        for p in (50, 90, 99, 99.9):
            assert summary["latency_ms"][f"p{p:g}"] == round(nearest_rank(samples, p) * 1000, 3)
        assert summary["latency_ms"]["max"] == round(samples[-1] * 1000, 3)


# ---------------------------------------------------------------------------------------------
# rate limiter and parsers


def test_token_bucket_spaces_reservations_and_refills_only_up_to_its_burst() -> None:
    bucket = TokenBucket(10.0)
    assert [bucket.reserve(0.0) for _ in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert bucket.reserve(10.0) == 10.0  # idle for long: one token saved (burst 1), not a hundred
    assert bucket.reserve(10.0) == pytest.approx(10.1)
    burst = TokenBucket(2.0, burst=3)
    assert [burst.reserve(5.0) for _ in range(4)] == pytest.approx([5.0, 5.0, 5.0, 5.5])
    with pytest.raises(LoadError):
        TokenBucket(0)


def test_parsers_accept_the_documented_forms() -> None:
    assert parse_mix("purchase=90,echo=5,refund=5") == {"purchase": 90, "echo": 5, "refund": 5}
    assert parse_mix(" Purchase = 1 , void=0, ") == {"purchase": 1}
    assert parse_rate("200/s") == 200.0 and parse_rate("50") == 50.0 and parse_rate("600/m") == 10.0
    assert parse_load_duration("1m30s") == 90.0 and parse_load_duration("2.5") == 2.5
    assert derive_terminal_ids("L0000001", 3) == ["L0000001", "L0000002", "L0000003"]
    assert derive_terminal_ids("LOAD0998", 2) == ["LOAD0998", "LOAD0999"]


@pytest.mark.parametrize("call, message", [
    (lambda: parse_mix("purchase"), "expected OPERATION=WEIGHT"),
    (lambda: parse_mix("buy=3"), "unknown operation 'buy'"),
    (lambda: parse_mix("purchase=-1"), "whole number"),
    (lambda: parse_mix("purchase=1,purchase=2"), "given twice"),
    (lambda: parse_mix("echo=0"), "above 0"),
    (lambda: parse_rate("fast"), "transactions per second"),
    (lambda: parse_rate("0/s"), "above 0"),
    (lambda: parse_load_duration("soon"), "duration"),
    (lambda: parse_load_duration("0s"), "longer than 0"),
    (lambda: derive_terminal_ids("LOAD9999", 2), "more than 4 digits"),
    (lambda: derive_terminal_ids("LOADTERM", 2), "ending in digits"),
    (lambda: derive_terminal_ids("L0000001", 0), "at least 1"),
])
def test_parsers_say_what_is_wrong(call: Callable[[], object], message: str) -> None:
    with pytest.raises(LoadError, match=message):
        call()


def test_config_needs_exactly_one_stop_condition() -> None:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 1, "dialect": ISO, "framing": Framing.from_dialect(ISO),
                            "profile": TerminalProfile.for_dialect(ISO, "L0000001", "M1"), "terminal_ids": ("L1",)}
    with pytest.raises(LoadError, match=r"say how long to run: --count .* or --duration"):
        LoadConfig(**base)
    with pytest.raises(LoadError, match=r"either --count .* not both"):
        LoadConfig(**base, count=1, duration=1.0)
    with pytest.raises(LoadError, match="amount range"):
        LoadConfig(**base, count=1, amount_range=(5, 1))
    assert LoadConfig(**base, count=1).describe()["mode"] == "closed loop"


def test_field7_time_picks_the_year_nearest_the_run() -> None:
    new_year = datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC).timestamp()
    assert field7_time("1231235959", new_year) == datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert field7_time("0101000005", new_year) == new_year
    assert field7_time("", new_year) is None and field7_time("13x", new_year) is None


def test_live_table_keeps_every_number_whole_on_an_80_column_terminal() -> None:
    import io

    from terminal.load import LiveProgress, Progress

    progress = Progress(elapsed=123.4, started=123456, finished=123000, in_flight=456,
                        outcomes={"approved": 120000, "failed": 3, "reversed": 12, "unknown": 7},
                        declined_by_code={"51": 2000, "05": 1000}, reversals_sent=15, reversals_acknowledged=12,
                        late_replies=3, tps=1000.5, recent_tps=1234.5, p50=0.0123, p99=1.234)
    out = io.StringIO()
    live = LiveProgress(out, "iso-terminal load → 127.0.0.1:8583: 20 terminals, 30s at 200/s")
    live.console.width = 80
    live(progress)
    live.close()
    screen = out.getvalue()
    assert "…" not in screen
    for text in ("123.4s", "123456", "120000", "3000", "05×1000 51×2000", "15/12", "1234.5", "1000.5", "12.3ms",
                 "1.23s"):
        assert text in screen, text


# ---------------------------------------------------------------------------------------------
# LoadRunner on a virtual clock, against the real switch in-process


@dataclass
class Rig:
    server: SwitchServer
    faults: FaultEngine
    clock: TrioClock
    nursery: trio.Nursery

    async def connect(self) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.handle_stream, server_side)
        return client_side

    def host_postings(self, terminals: list[str]) -> list[HostPosting]:
        rows = [p for t in terminals for p in self.server.ledger.postings(terminal=t)]
        return [HostPosting.from_json(json.loads(json.dumps(p.as_dict()))) for p in rows]


@asynccontextmanager
async def switch_in_process() -> AsyncIterator[Rig]:
    clock = TrioClock.starting_at(T0)
    ledger = Ledger.open(":memory:")
    faults = FaultEngine(seed=1)
    server = SwitchServer(
        codec=Codec(ISO), framing=Framing.from_dialect(ISO),
        host=Host(HostConfig.for_dialect(ISO), ledger, default_scenario().response_rules),
        ledger=ledger, committer=GroupCommitter(ledger), config=ServerConfig(port=0, grace_period=1.0),
        clock=lambda: datetime.fromtimestamp(clock.now(), UTC), faults=faults,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        yield Rig(server, faults, clock, nursery)
        nursery.cancel_scope.cancel()


def load_config(terminals: int, **settings: Any) -> LoadConfig:
    ids = tuple(derive_terminal_ids("L0000001", terminals))
    profile = TerminalProfile.for_dialect(ISO, ids[0], "MERCHANT0000001", response_timeout=5.0)
    return LoadConfig(host="memory", port=0, dialect=ISO, framing=Framing.from_dialect(ISO), profile=profile,
                      terminal_ids=ids, offload_store=False, expiry="3012", **settings)


async def run_in_process(rig: Rig, config: LoadConfig, tmp_path: Path) -> tuple[LoadStats, Any]:
    stats = LoadStats()
    runner = LoadRunner(config, stats, str(tmp_path), connect=rig.connect, clock=rig.clock)
    result = await runner.run()
    return stats, result


async def test_runner_runs_exactly_count_transactions_and_both_views_agree(
        autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    config = load_config(3, count=30, seed=5, settle=True, mix={"purchase": 6, "refund": 1, "echo": 1},
                         pans=(PAN, DECLINED_PAN))
    async with switch_in_process() as rig:
        stats, result = await run_in_process(rig, config, tmp_path)
        postings = rig.host_postings(list(config.terminal_ids))
    try:
        assert stats.check_totals() == []
        assert (stats.started, stats.finished) == (30, 30)
        assert stats.outcomes["approved"] + stats.outcomes["declined"] == 30
        assert set(stats.declined_by_code) <= {"51"}
        assert stats.housekeeping["settle"]["approved"] == 3  # every batch closed
        assert stats.notes["signed-on"] == 3
        journal = result.journal()
        echoes = stats.by_operation.get("echo", Counter()).total()
        assert sum(len(entries) for entries in journal.values()) == 30 - echoes
        window = run_window((e for es in journal.values() for e in es), result.started_at, result.ended_at)
        verdict = compare_views(journal, postings, window)
        assert verdict.status == "consistent", verdict.mismatches
        assert verdict.checked == len(postings) == 30 - echoes
        assert verdict.money_moved == stats.outcomes["approved"] - echoes
    finally:
        result.close()


async def test_rate_limit_starts_transactions_at_the_rate_for_the_duration(
        autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    config = load_config(4, duration=5.05, rate=10.0, mix={"purchase": 1})
    async with switch_in_process() as rig:
        stats, result = await run_in_process(rig, config, tmp_path)
    result.close()
    assert stats.started == stats.finished == 51  # tokens at 0.0, 0.1, ... 5.0; the next (5.1) is past the end
    per_second = [b["finished"] for b in stats.timeline(max_buckets=10)]
    assert all(9 <= n <= 11 for n in per_second[:5]), per_second  # 10 a second (a slot may sit on an edge)


async def test_closed_loop_duration_stops_starting_and_lets_the_last_ones_finish(
        autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    config = load_config(2, duration=10.0, mix={"purchase": 1})
    async with switch_in_process() as rig:
        rig.faults.add({"id": "slow", "delay_response": "3s"})  # every reply 3 s late (within the 5 s timeout)
        stats, result = await run_in_process(rig, config, tmp_path)
    result.close()
    # each terminal: sign-on (3 s), then purchases of 3 s; started at 0, 6, 9 → 3 each, the last ending at 12 s
    assert (stats.started, stats.finished, stats.outcomes["approved"]) == (6, 6, 6)
    assert result.elapsed == pytest.approx(12.0)
    assert stats.percentile(50) == pytest.approx(3.0)
    assert stats.percentile(100) == pytest.approx(6.0)  # the first purchase waited for the sign-on too


async def test_stop_ends_the_run_gracefully(autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    config = load_config(2, duration=100.0, mix={"purchase": 1}, settle=True)
    async with switch_in_process() as rig:
        rig.faults.add({"id": "slow", "delay_response": "1s"})
        stats = LoadStats()
        runner = LoadRunner(config, stats, str(tmp_path), connect=rig.connect, clock=rig.clock)

        async def press_ctrl_c() -> None:
            await trio.sleep(4.5)
            runner.stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(press_ctrl_c)
            result = await runner.run()
    result.close()
    # per terminal: sign-on + purchase end at 2 s, then purchases end at 3, 4 and 5 (started at 4 < 4.5)
    assert (stats.started, stats.finished, stats.in_flight) == (8, 8, 0)
    assert result.elapsed == pytest.approx(5.0) and runner.stopping
    assert stats.housekeeping["settle"] == {"approved": 2}  # drained and settled as at a normal end


async def test_stop_wakes_terminals_waiting_for_a_rate_limit_slot(
        autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    config = load_config(5, count=20, rate=0.1, mix={"echo": 1})  # one start every 10 s; slots queued to 40 s
    async with switch_in_process() as rig:
        stats = LoadStats()
        runner = LoadRunner(config, stats, str(tmp_path), connect=rig.connect, clock=rig.clock)

        async def press_ctrl_c() -> None:
            await trio.sleep(15)
            runner.stop()

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(press_ctrl_c)
            result = await runner.run()
        took = trio.current_time() - began
    result.close()
    assert (stats.started, stats.finished) == (2, 2)  # started at 0 and 10 s; the three waiting never start
    assert took < 16, took  # not the 40 s the queued slots would have slept


async def test_lost_replies_are_reversed_and_the_check_still_agrees(
        autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    config = load_config(2, count=20, mix={"purchase": 1}, seed=1)
    async with switch_in_process() as rig:
        rig.faults.add({"id": "lose-every-5th", "when": {"mti": ["0200"], "every": 5}, "drop_response": True})
        rig.faults.add({"id": "late-7th", "when": {"mti": ["0200"], "nth": 7}, "delay_response": "6s"})
        stats, result = await run_in_process(rig, config, tmp_path)
        postings = rig.host_postings(list(config.terminal_ids))
    try:
        assert stats.check_totals() == []
        assert stats.outcomes["reversed"] >= 4 and stats.outcomes["reversed"] + stats.outcomes["approved"] == 20
        assert stats.messages_sent["reversal"] == stats.notes["reversal-cleared"] == stats.outcomes["reversed"]
        assert stats.notes["late-reply-discarded"] == 1
        journal = result.journal()
        window = run_window((e for es in journal.values() for e in es), result.started_at, result.ended_at)
        verdict = compare_views(journal, postings, window)
        assert verdict.status == "consistent" and verdict.money_moved == stats.outcomes["approved"]
        assert sum(p.reversed for p in postings) == stats.outcomes["reversed"]  # committed, then undone
    finally:
        result.close()


async def test_memory_stores_run_and_keep_nothing_on_disk(
        autojump_clock: Any, inline_threads: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(2, count=10, seed=3, settle=True, store_dir=MEMORY_STORES)
    async with switch_in_process() as rig:
        stats = LoadStats()
        runner = LoadRunner(config, stats, MEMORY_STORES, connect=rig.connect, clock=rig.clock)
        result = await runner.run()
        postings = rig.host_postings(list(config.terminal_ids))
    try:
        assert stats.finished == 10 and stats.check_totals() == []
        assert all(store.path == ":memory:" for store in result.stores.values())
        journal = result.journal()
        window = run_window((e for es in journal.values() for e in es), result.started_at, result.ended_at)
        assert compare_views(journal, postings, window).status == "consistent"
        assert list(tmp_path.iterdir()) == []
    finally:
        result.close()
