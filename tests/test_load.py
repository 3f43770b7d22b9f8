"""The load runner: its accounting on a virtual clock, the consistency check, and real runs.

Three layers, as the module is built:

* pure pieces (``nearest_rank``, ``LoadStats``, ``TokenBucket``, ``compare_views``, the parsers) with
  explicit timestamps and hand-built journal entries / postings;
* ``LoadRunner`` on pytest-trio's ``autojump_clock`` against the real switch in-process over memory
  streams (every timeout and rate limit virtual, store calls inline);
* ``iso-terminal load`` over loopback against a ``python -m switch serve`` subprocess with its admin
  API: a consistent run with settlement, and a run whose host approves a card without booking it
  (the zero-amount scenario's fault) — the check must catch that and exit 4.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec import Codec, load_dialect
from switch.codec.framing import Framing
from switch.codec.message import Message
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer
from switch.testing import SwitchProcess
from terminal.cli import cli
from terminal.client import TrioClock
from terminal.load import (
    CUP_CLOCK_SLACK,
    EXIT_CHECK_REQUIRED,
    EXIT_HOST_NOT_REACHED,
    EXIT_INCONSISTENT,
    MEMORY_STORES,
    CheckOptions,
    HostPosting,
    LoadConfig,
    LoadError,
    LoadRunner,
    LoadStats,
    TokenBucket,
    compare_views,
    derive_terminal_ids,
    exit_status,
    field7_time,
    nearest_rank,
    parse_load_duration,
    parse_mix,
    parse_rate,
    progress_line,
    run_window,
)
from terminal.load.syncer import GroupSyncer
from terminal.load.workers import ForwardingStats, replay, split_config
from terminal.profile import TerminalProfile
from terminal.store import JournalEntry

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
# compare_views: the consistency check's verdicts


def entry(stan: str, state: str, amount: int = 1000, *, kind: str = "purchase", direction: str = "debit",
          f7: str = "0301120000", code: str = "00") -> JournalEntry:
    return JournalEntry(id=int(stan), batch="000001", kind=kind, direction=direction, mti="0200", stan=stan,
                        transmission_time=f7, amount=amount, currency="840", pan="476173******0010", state=state,
                        response_code=code, rrn="", auth_code="", reason="test", request=Message("0200", {}),
                        created_at=T0, updated_at=T0)


def posting(stan: str, *, approved: bool = True, reversed_: bool = False, amount: int = 1000,
            direction: str = "debit", f7: str = "0301120000", terminal: str = "L0000001",
            received_at: float = T0) -> HostPosting:
    return HostPosting(terminal=terminal, stan=stan, transmission_time=f7, kind="purchase", direction=direction,
                       amount=amount, approved=approved, reversed=reversed_,
                       response_code="00" if approved else "51", received_at=received_at)


WINDOW = (T0 - 1, T0 + 60)


def test_agreeing_views_are_consistent() -> None:
    journal = {"L0000001": [entry("000001", "approved"), entry("000002", "declined", code="51"),
                            entry("000003", "reversed", code=""), entry("000004", "reversed", code=""),
                            entry("000005", "approved", 250, kind="refund", direction="credit")]}
    host = [posting("000001"), posting("000002", approved=False), posting("000003", reversed_=True),
            posting("000005", amount=250, direction="credit")]  # 000004 never reached the host: fine
    result = compare_views(journal, host, WINDOW)
    assert (result.status, result.checked, result.money_moved, result.net_amount) == ("consistent", 5, 2, 750)
    assert result.mismatches == () and result.undecided == ()
    assert result.headline() == "consistent: 5 transactions, 2 money moved (net 7.50), 0 mismatches"


@pytest.mark.parametrize("journal_entry, host_posting, problem", [
    (entry("000001", "approved"), None, "the terminal believes money moved; the host has no posting"),
    (entry("000001", "approved"), posting("000001", approved=False), "the host did not move it"),
    (entry("000001", "approved"), posting("000001", reversed_=True), "the host did not move it"),
    (entry("000001", "declined", code="51"), posting("000001"), "the host moved money"),
    (entry("000001", "reversed", code=""), posting("000001"), "the host moved money"),
    (entry("000001", "approved", 1000), posting("000001", amount=999), "different amounts"),
    (entry("000001", "approved"), posting("000001", direction="credit"), "different directions"),
])
def test_each_kind_of_disagreement_is_a_mismatch(journal_entry: JournalEntry, host_posting: HostPosting | None,
                                                 problem: str) -> None:
    result = compare_views({"L0000001": [journal_entry]}, [host_posting] if host_posting else [], WINDOW)
    assert result.status == "inconsistent" and result.failed
    (mismatch,) = result.mismatches
    assert problem in mismatch.problem
    assert mismatch.terminal == "L0000001" and mismatch.stan == "000001"
    assert "terminal:" in mismatch.line() and "host:" in mismatch.line()


def test_a_host_posting_the_terminal_never_journalled_is_caught_but_only_within_the_run() -> None:
    journal = {"L0000001": [entry("000001", "approved")]}
    extra = posting("000009", f7="0301120030")  # booked during the run, unknown to the terminal
    earlier_run = posting("000002", f7="0228110000")  # the same terminal id, yesterday
    result = compare_views(journal, [posting("000001"), extra, earlier_run], WINDOW)
    (mismatch,) = result.mismatches
    assert mismatch.stan == "000009" and "never journalled" in mismatch.problem
    assert result.host_postings == 2


def test_a_posting_an_earlier_run_journalled_is_not_host_only_even_in_the_same_second() -> None:
    journal = {"L0000001": [entry("000007", "approved", f7="0301120000")]}
    previous = posting("000006", f7="0301115959")  # the run before ended a moment before this one began
    host = [previous, posting("000007")]
    assert compare_views(journal, host, WINDOW).status == "inconsistent"  # nothing says it is not ours...
    known = [("L0000001", "000006", "0301115959")]  # ...but the store journalled it in its own run
    result = compare_views(journal, host, WINDOW, journalled=known)
    assert result.status == "consistent" and result.host_postings == 1


def test_a_request_the_host_booked_twice_is_a_mismatch() -> None:
    journal = {"L0000001": [entry("000001", "approved"), entry("000002", "declined", code="51")]}
    twice = [posting("000001"), posting("000001"), posting("000002", approved=False), posting("000002")]
    result = compare_views(journal, twice, WINDOW, journalled=[("L0000001", "000001", "0301120000"),
                                                               ("L0000001", "000002", "0301120000")])
    assert result.status == "inconsistent"
    assert [(m.stan, "more than once" in m.problem) for m in result.mismatches] == [("000001", True),
                                                                                   ("000002", True)]
    assert result.host_postings == 4
    assert compare_views(journal, twice[:1] + twice[2:3], WINDOW).status == "consistent"


def test_undecided_entries_are_listed_and_never_counted_consistent() -> None:
    journal = {"L0000001": [entry("000001", "approved"), entry("000002", "reversal-refused", code="12"),
                            entry("000003", "unknown", code="")]}
    result = compare_views(journal, [posting("000001"), posting("000002")], WINDOW)
    assert result.status == "consistent" and result.money_moved == 1
    assert [u.stan for u in result.undecided] == ["000002", "000003"]
    assert "2 undecided" in result.headline()


def test_cup_postings_match_by_stan_among_those_received_during_the_run() -> None:
    journal = {"L0000001": [entry("000001", "approved", f7="")]}
    old = posting("000001", f7="", approved=False, received_at=T0 - 3600)  # an earlier run's STAN 000001
    new = posting("000001", f7="", received_at=T0 + 1)
    assert compare_views(journal, [old, new], WINDOW).status == "consistent"
    assert compare_views(journal, [old], WINDOW).status == "inconsistent"
    late = posting("000001", f7="", received_at=WINDOW[1] + CUP_CLOCK_SLACK / 2)
    assert compare_views(journal, [late], WINDOW).status == "consistent"
    # two postings of STAN 000001 inside the window: the one received nearest the journal entry wins
    just_before = posting("000001", f7="", approved=False, received_at=T0 - 2)
    nearest = compare_views(journal, [just_before, new], WINDOW)
    assert [m.problem for m in nearest.mismatches] == ["the host has a transaction the terminal never journalled"]
    assert nearest.money_moved == 1  # compared with `new`; `just_before` is a second 000001 nobody explains
    assert compare_views({"L0000001": [entry("000001", "declined", f7="", code="51")]},
                         [just_before], (T0, T0 + 60)).status == "consistent"


def test_run_window_covers_every_field_7_sent() -> None:
    entries = [entry("000001", "approved", f7="0301115959"), entry("000002", "approved", f7="0301120100")]
    low, high = run_window(entries, T0, T0 + 30)
    assert (low, high) == (T0 - 1, T0 + 60)


def test_exit_status() -> None:
    def summary(status: str, outcomes: dict[str, int], interrupted: bool = False) -> dict[str, Any]:
        return {"interrupted": interrupted, "consistency": {"status": status}, "outcomes": outcomes}

    check = CheckOptions()
    assert exit_status(summary("consistent", {"approved": 3}), check) == 0
    assert exit_status(summary("inconsistent", {"approved": 3}), check) == EXIT_INCONSISTENT
    assert exit_status(summary("skipped", {"approved": 3}), check) == 0
    assert exit_status(summary("skipped", {"approved": 3}), CheckOptions(required=True)) == EXIT_CHECK_REQUIRED
    assert exit_status(summary("skipped", {"failed": 4}), check) == EXIT_HOST_NOT_REACHED
    assert exit_status(summary("consistent", {}, interrupted=True), check) == 130
    stopped = {**summary("consistent", {"approved": 3}), "stopped_early": True}  # one Ctrl-C: graceful stop
    assert exit_status(stopped, check) == 130
    assert exit_status({**stopped, "consistency": {"status": "inconsistent"}}, check) == EXIT_INCONSISTENT


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


# ---------------------------------------------------------------------------------------------
# iso-terminal load over loopback, against a real switch with its admin API


def start_switch(tmp: Path, *extra: str) -> SwitchProcess:
    return SwitchProcess.start(["--ledger", str(tmp / "ledger.sqlite"), "--journal", "none", *extra])


@pytest.fixture(scope="module")
def healthy_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    with start_switch(tmp_path_factory.mktemp("healthy")) as switch:
        assert switch.admin_url is not None
        yield switch.port, switch.admin_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def user_data_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The per-user data directory (where load keeps its stores by default) inside the test's tmp."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def load(*args: str) -> Any:
    return CliRunner().invoke(cli, ["load", *args])


def test_real_run_with_settlement_is_consistent(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "4", "--count", "160",
                  "--settle", "--seed", "11", "--json", "--quiet", "--store-dir", str(tmp_path / "stores"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["transactions"] == {"started": 160, "finished": 160, "in_flight": 0}
    assert summary["accounting_problems"] == []
    assert summary["outcomes"]["approved"] == 160
    assert summary["housekeeping"]["settle"] == {"approved": 4}
    echoes = summary["by_operation"].get("echo", {}).get("approved", 0)
    consistency = summary["consistency"]
    assert consistency["status"] == "consistent" and consistency["mismatches"] == []
    assert consistency["checked"] == consistency["money_moved"] == consistency["host_postings"] == 160 - echoes
    assert consistency["headline"].startswith(f"consistent: {160 - echoes} transactions")
    assert sorted(p.name for p in (tmp_path / "stores").iterdir() if p.suffix == ".sqlite") == [
        "L0000001.sqlite", "L0000002.sqlite", "L0000003.sqlite", "L0000004.sqlite"]


def test_text_summary_and_progress_lines(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "2", "--count", "20",
                  "--terminal-id", "LT000101", "--mix", "purchase=1", "--pan", DECLINED_PAN, "--pan", PAN,
                  "--seed", "3", "--report", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert "2 terminals" in result.stdout and "20 transactions" in result.stdout
    assert "51 " in result.stdout and "insufficient funds" in result.stdout
    assert "check    consistent: 20 transactions" in result.stdout
    assert "[" in result.stderr and "sent 20" in result.stderr  # the plain progress line (not a TTY)
    assert (tmp_path / "report" / "report.html").exists()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["config"]["first_terminal"] == "LT000101" and summary["config"]["last_terminal"] == "LT000102"
    # the stores are the terminals' own, where `iso-terminal status --terminal-id LT000101` looks
    status = CliRunner().invoke(cli, ["status", "--terminal-id", "LT000101", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["summary"]["open_batch_entries"] > 0
    again = load("--port", str(port), "--admin", admin, "--terminals", "2", "--count", "4",
                 "--terminal-id", "LT000101", "--mix", "purchase=1", "--quiet")  # STANs go on; only this run checked
    assert again.exit_code == 0, again.output
    assert "check    consistent: 4 transactions" in again.stdout


def test_an_approval_the_host_never_booked_is_caught(tmp_path: Path) -> None:
    with start_switch(tmp_path, "--scenario", "zero-amount") as switch:
        port, admin = switch.port, switch.admin_url
        result = load("--port", str(port), "--admin", admin, "--terminals", "2",
                      "--count", "30", "--mix", "purchase=1", "--pan", PAN, "--pan", UNBOOKED_PAN, "--seed", "4",
                      "--settle", "--quiet")
        as_json = load("--port", str(port), "--admin", admin, "--terminals", "1",
                       "--count", "3", "--mix", "purchase=1", "--pan", UNBOOKED_PAN, "--quiet", "--json",
                       "--terminal-id", "Z0000001")
    assert result.exit_code == EXIT_INCONSISTENT, result.output
    assert "check    inconsistent:" in result.stdout
    assert "MISMATCH" in result.stdout
    assert "the terminal believes money moved; the host has no posting" in result.stdout
    assert as_json.exit_code == EXIT_INCONSISTENT
    mismatches = json.loads(as_json.stdout)["consistency"]["mismatches"]
    assert [m["stan"] for m in mismatches] == ["000002", "000003", "000004"]  # 000001 is the sign-on
    assert all(m["terminal"] == "Z0000001" and "no posting" in m["host_view"] for m in mismatches)


def test_unreachable_admin_api_skips_the_check(healthy_switch: tuple[int, int]) -> None:
    port, _ = healthy_switch
    nowhere = f"http://127.0.0.1:{free_port()}"
    skipped = load("--port", str(port), "--admin", nowhere, "--count", "4", "--terminals", "2", "--quiet")
    assert skipped.exit_code == 0, skipped.output
    assert "consistency check skipped: admin API not reachable at" in skipped.stdout
    required = load("--port", str(port), "--admin", nowhere, "--count", "2", "--terminals", "1", "--quiet",
                    "--require-check")
    assert required.exit_code == EXIT_CHECK_REQUIRED
    unchecked = load("--port", str(port), "--no-check", "--count", "2", "--terminals", "1", "--quiet")
    assert unchecked.exit_code == 0 and "skipped: --no-check" in unchecked.stdout


def test_host_not_reached_is_one_line_and_exit_3(tmp_path: Path) -> None:
    result = load("--port", str(port := free_port()), "--no-check", "--count", "20", "--terminals", "5", "--quiet",
                  "--connect-attempts", "2", "--store-dir", str(tmp_path / "stores"))
    assert result.exit_code == EXIT_HOST_NOT_REACHED, result.output
    assert result.output.count("cannot connect") == 1  # once, not once per terminal
    assert f"error: cannot connect: 127.0.0.1:{port}: Connection refused" in result.output
    assert "load " not in result.output and not list((tmp_path / "stores").glob("*.sqlite"))  # no run


def test_a_store_that_is_not_a_terminal_store_is_one_line_exit_3(tmp_path: Path) -> None:
    (tmp_path / "L0000002.sqlite").write_text("not a database")
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen()
    with listener:
        result = load("--port", str(port), "--no-check", "--count", "2", "--terminals", "2", "--quiet",
                      "--store-dir", str(tmp_path))
    assert result.exit_code == 3, result.output
    assert "L0000002.sqlite is not a terminal store" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("option", ["--report", "--store-dir"])
def test_a_directory_that_cannot_be_written_is_a_usage_error_before_the_run(option: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen()
    with listener:  # a host that accepts: a run would connect; the check must come first
        result = load("--port", str(port), "--no-check", "--count", "1", "--terminals", "1", "--quiet",
                      option, str(tmp_path / "a-file" / "sub"))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert result.exit_code == 3, result.output
    assert f"{option} " in result.output and "cannot write there" in result.output
    assert "Traceback" not in result.output and "load " not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--count", "5", "--duration", "5s"], "not both"),
    ([], "say how long to run: --count (total transactions) or --duration (wall time)"),
    (["--count", "1", "--terminals", "2", "--workers", "2"], "fewer than --workers"),
    (["--count", "5", "--terminals", "2", "--workers", "3"], "every worker needs a terminal"),
    (["--count", "5", "--mix", "buy=1"], "unknown operation"),
    (["--count", "5", "--rate", "fast"], "--rate"),
    (["--count", "5", "--store", "x.sqlite"], "--store-dir"),
    (["--count", "5", "--pan", "4761739001010011"], "Luhn"),
    (["--count", "5", "--amount", "5.00-1.00"], "amount range"),
    (["--count", "5", "--no-check", "--require-check"], "contradicts"),
    (["--count", "5", "--terminals", "0"], "--terminals"),
])
def test_usage_errors_exit_3(args: list[str], message: str) -> None:
    result = load("--port", "1", *args)
    assert result.exit_code == 3, result.output
    assert message in result.output


# ---------------------------------------------------------------------------------------------
# --workers: splitting the run, merging the records; --store-dir :memory:


def test_split_config_shares_add_up_and_terminals_are_disjoint() -> None:
    config = load_config(7, count=23, rate=90.0, seed=4, workers=3)
    parts = split_config(config)
    assert [len(part.terminal_ids) for part in parts] == [2, 2, 3]
    assert [t for part in parts for t in part.terminal_ids] == list(config.terminal_ids)
    assert [part.count for part in parts] == [8, 8, 7] and sum(p.count or 0 for p in parts) == 23
    assert sum(part.rate or 0 for part in parts) == pytest.approx(90.0)
    assert len({part.seed for part in parts}) == 3 and all(part.workers == 1 for part in parts)
    assert split_config(config)[1].seed == parts[1].seed  # the same --seed repeats the run
    duration = split_config(load_config(4, duration=5.0, workers=2))
    assert all(part.duration == 5.0 and part.count is None for part in duration)


def test_replayed_worker_records_merge_exactly() -> None:
    """Two workers' records replayed into one LoadStats give the stats of all samples together:
    percentiles over the merged samples (not an average of the workers' percentiles)."""
    first, second = ForwardingStats(), ForwardingStats()
    for index in range(100):  # worker 1: fast; worker 2: slow
        for stats, latency in ((first, 0.010 + index / 10_000), (second, 1.0 + index / 100)):
            at = index / 50
            stats.record_started("purchase")
            stats.record_sends(["financial"])
            stats.record_outcome("purchase", "approved", "00", latency, at)
    second.record_note("connect-failed", "cannot connect: 127.0.0.1:1: Connection refused")
    merged = LoadStats()
    replay(merged, first.take(), 0.0)
    replay(merged, second.take(), 0.5)
    assert merged.check_totals() == []
    assert (merged.started, merged.finished, merged.messages_sent["financial"]) == (200, 200, 200)
    all_latencies = sorted(first.sorted_latencies() + second.sorted_latencies())
    assert merged.percentile(50) == nearest_rank(all_latencies, 50) == first.percentile(100)
    assert merged.percentile(99) == nearest_rank(all_latencies, 99)
    assert merged.percentile(50) != (first.percentile(50) + second.percentile(50)) / 2  # type: ignore[operator]
    assert merged.last_outcome_at == pytest.approx(99 / 50 + 0.5)  # worker 2's clock shifted onto the parent's
    assert merged.connect_failure == "cannot connect: 127.0.0.1:1: Connection refused"
    assert first.take() == []  # taken once
    with pytest.raises(ValueError, match="not a load record"):
        replay(merged, [("bogus",)], 0.0)


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


def test_workers_merge_into_one_consistent_report(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "5", "--count", "101", "--workers", "2",
                  "--settle", "--seed", "7", "--json", "--quiet", "--store-dir", str(tmp_path / "stores"),
                  "--terminal-id", "W0000001")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["transactions"] == {"started": 101, "finished": 101, "in_flight": 0}
    assert summary["accounting_problems"] == []
    assert summary["latency_ms"]["count"] == 101 and sum(b["count"] for b in summary["latency_histogram"]) == 101
    assert summary["housekeeping"]["settle"] == {"approved": 5} and summary["terminal_events"]["sign_ons"] == 5
    assert summary["config"]["workers"] == 2
    echoes = summary["by_operation"].get("echo", {}).get("approved", 0)
    consistency = summary["consistency"]
    assert consistency["status"] == "consistent", consistency
    assert consistency["checked"] == consistency["host_postings"] == 101 - echoes
    assert sorted(p.name for p in (tmp_path / "stores").iterdir() if p.suffix == ".sqlite") == [
        f"W000000{n}.sqlite" for n in range(1, 6)]


def test_workers_with_memory_stores(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "4", "--count", "40", "--workers", "2",
                  "--json", "--quiet", "--store-dir", ":memory:", "--terminal-id", "M0000001")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["transactions"]["finished"] == 40 and summary["config"]["store_dir"] == ":memory:"
    assert summary["consistency"]["status"] == "consistent"
    assert not (tmp_path / "xdg").exists()  # nothing written where the stores would otherwise go


@pytest.mark.parametrize("sync_threads", [1, 8])
async def test_group_syncer_releases_each_terminal_only_after_its_own_store_synced(sync_threads: int) -> None:
    """Real worker threads (no autojump): many terminals' syncs go out in a few batches, each batch's
    stores one after the other (1) or in parallel (8)."""
    synced: list[str] = []

    class FakeStore:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def sync(self) -> None:
            if self.fail:
                raise OSError(f"{self.name}: No space left on device")
            synced.append(self.name)

    syncer = GroupSyncer(batches_in_flight=2, sync_threads=sync_threads)
    released: list[str] = []
    failures: list[str] = []

    async def terminal(store: FakeStore) -> None:
        try:
            await syncer(store)  # type: ignore[arg-type]
        except OSError as exc:
            failures.append(str(exc))
            return
        assert store.name in synced  # never released before its own sync returned
        released.append(store.name)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(syncer.run)
            async with trio.open_nursery() as terminals:
                for index in range(30):
                    terminals.start_soon(terminal, FakeStore(f"T{index:02d}", fail=index == 7))
            nursery.cancel_scope.cancel()
    assert sorted(released) == sorted(synced) and len(released) == 29
    assert failures == ["T07: No space left on device"]  # only that terminal's request is stopped


def test_group_syncer_needs_at_least_one_batch_and_thread() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        GroupSyncer(sync_threads=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        GroupSyncer(batches_in_flight=0)
