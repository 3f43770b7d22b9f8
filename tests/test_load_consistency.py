"""The load runner's consistency check (``compare_views``): its verdicts on hand-built journal entries
and host postings, the run window and the exit status."""

from __future__ import annotations

from typing import Any

import pytest

from switch.codec.message import Message
from terminal.load import (
    CUP_CLOCK_SLACK,
    EXIT_CHECK_REQUIRED,
    EXIT_HOST_NOT_REACHED,
    EXIT_INCONSISTENT,
    CheckOptions,
    HostPosting,
    compare_views,
    exit_status,
    run_window,
)
from terminal.store import JournalEntry
from tests.test_load import T0

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
