"""The terminal policy killed between every pair of steps loses nothing, and a stateful property: random
operations, faults and crashes against ``FakeHost`` (tests/policy_harness.py) leave terminal and host
agreeing on what money moved."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from switch.codec.composite import SettlementTotals
from switch.codec.message import Message
from terminal.policy import (
    Drain,
    Echo,
    OfflineSale,
    Outcome,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Settle,
    SignOn,
)
from tests.policy_harness import EXPIRY, FAULTS, PAN, TMP_ROOT, Harness, harnesses, purchase


@pytest.fixture
def harness(tmp_path):
    yield from harnesses(tmp_path)


# ---------------------------------------------------------------------------------------------
# Crash safety: kill the process between every pair of steps


CRASH_SCENARIOS = {
    "approved purchase": (lambda: purchase(1000), []),
    "purchase without reply": (lambda: purchase(1000), ["ok", "ok", "drop-response", "drop-response"]),
    "declined purchase": (lambda: purchase(1113), []),
    "offline sale": (lambda: OfflineSale(300, PAN, EXPIRY), []),
    "settlement with upload": (Settle, []),
}


@pytest.mark.parametrize("family", ["iso87", "cup"])
@pytest.mark.parametrize("scenario", sorted(CRASH_SCENARIOS))
def test_killed_between_any_two_steps_loses_nothing(tmp_path, family, scenario):
    make, faults = CRASH_SCENARIOS[scenario]
    total = _steps_without_crash(tmp_path / "reference.sqlite", family, scenario)
    for crash_after in range(total):  # after 0 .. all-but-the-last (Finished) actions
        h = Harness(family, tmp_path / f"crash-{crash_after}.sqlite")
        try:
            _prepare(h, scenario)
            stan_before = h.store.last_stan
            sent_before = len(h.sent)
            assert h.run(make(), faults, crash_after=crash_after) is None  # killed
            in_flight = [e for e in h.store.entries() if e.state == "unknown"]
            stored = h.store.reversals()
            restarted_at = len(h.sent)
            outcome = h.run(Drain())
            assert outcome.kind == "completed", outcome
            after = [s.message.mti for s in h.sent[restarted_at:] if s.message.mti != "0800"]
            if stored:
                assert after[0] in ("0400", "0401"), (crash_after, after)  # the stored reversal goes first
                assert {e.id for e in in_flight} <= {r.journal_id for r in stored}
            stans = [s.message[11] for s in h.sent[sent_before:] if s.message.mti[3] == "0"
                     and not (family == "cup" and s.message.mti == "0400")]  # CUP reversals keep the STAN
            assert len(stans) == len(set(stans)), f"STAN reused: {stans}"
            assert h.store.last_stan >= stan_before
            h.flush_network()
            h.assert_consistent()
            forced_95 = h.host.unbalanced_answers > 0  # the crash came before the host's forced 95
            final = h.run(Settle())
            assert final.kind == ("unbalanced" if forced_95 else "approved"), (crash_after, final)
            h.assert_consistent()
        finally:
            h.close()


def _prepare(h: Harness, scenario: str) -> None:
    if scenario == "settlement with upload":
        h.run(purchase(1000))
        h.run(purchase(2000))
        h.host.unbalanced_answers = 1


def _steps_without_crash(path: Path, family: str, scenario: str) -> int:
    make, faults = CRASH_SCENARIOS[scenario]
    h = Harness(family, path)
    try:
        _prepare(h, scenario)
        before = len(h.actions)
        h.run(make(), faults)
        return len(h.actions) - before
    finally:
        h.close()


# ---------------------------------------------------------------------------------------------
# The consistency property: random operations, faults and crashes against the fake host


fault_lists = st.lists(st.sampled_from(FAULTS), max_size=5)
crash_points = st.none() | st.integers(0, 14)
amounts = st.integers(1, 3000) | st.sampled_from([13, 113, 1013])  # ...13 is declined (51)


class TerminalAgainstHost(RuleBasedStateMachine):
    """Whatever happens on the wire or to the process, once the terminal has drained what it owes,
    it and the host agree for every transaction whether money moved, nothing moved twice, and
    the batch settles to the same totals on both sides."""

    family = "iso87"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="terminal-policy-", dir=TMP_ROOT)
        self.h = Harness(self.family, Path(self.tmp) / "terminal.sqlite", reversal_attempts=2,
                         advice_attempts=2, settlement_attempts=2, signon_attempts=2, connect_attempts=2)

    @initialize()
    def sign_on(self) -> None:
        self.h.run(SignOn())

    def _after(self, outcome: Outcome | None) -> None:
        """An outcome the operator saw must already be true on the host."""
        if outcome is None or outcome.journal_id is None:  # crashed mid-operation, or no transaction
            return
        entry = self.h.store.entry(outcome.journal_id)
        moved_at_host = self.h.host.moved((entry.stan, entry.transmission_time))
        if outcome.kind == "approved":
            assert entry.money_moved and moved_at_host
        elif outcome.kind == "reversed" or (outcome.kind == "declined" and outcome.operation != "reverse-last"):
            assert entry.money_moved is False and not moved_at_host

    @rule(kind=st.sampled_from([Purchase, Refund, PreAuthorization]), amount=amounts, faults=fault_lists,
          crash=crash_points)
    def transact(self, kind, amount, faults, crash) -> None:
        self._after(self.h.run(kind(amount, PAN, EXPIRY), faults, crash_after=crash))

    @rule(amount=amounts, faults=fault_lists, crash=crash_points)
    def offline_sale(self, amount, faults, crash) -> None:
        self._after(self.h.run(OfflineSale(amount, PAN, EXPIRY), faults, crash_after=crash))

    def _has_void_target(self) -> bool:
        store = self.h.store
        return any(e.kind != "advice" for e in store.entries(batch=store.batch, states=("approved",)))

    @precondition(_has_void_target)
    @rule(faults=fault_lists, crash=crash_points)
    def void(self, faults, crash) -> None:
        self._after(self.h.run(ReverseLast(), faults, crash_after=crash))

    @rule(faults=fault_lists, crash=crash_points)
    def settle(self, faults, crash) -> None:
        self._after(self.h.run(Settle(), faults, crash_after=crash))

    @rule()
    def host_expires_session(self) -> None:
        self.h.host.sessions.clear()

    @rule(faults=fault_lists)
    def echo(self, faults) -> None:
        self.h.run(Echo(), faults)

    @rule()
    def drain_and_compare(self) -> None:
        self.h.flush_network()
        outcome = self.h.run(Drain())
        assert outcome.kind == "completed", outcome
        self.h.assert_consistent()

    @invariant()
    def stans_are_never_reused_within_the_window(self) -> None:
        first_sends: list[Message] = []
        for sent in self.h.sent:  # a CUP void (0200) is resent unchanged: that is a repeat, not a reuse
            if sent.message.mti[3] == "0" and sent.message not in first_sends:
                first_sends.append(sent.message)
        keys = [(m[11], m.get(7, ""), m.mti == "0400" and self.h.family == "cup") for m in first_sends]
        assert len(keys) == len(set(keys))

    def teardown(self) -> None:
        try:
            self.h.flush_network()
            assert self.h.run(Drain()).kind == "completed"
            self.h.assert_consistent()
            batch = self.h.store.batch
            outcome = self.h.run(Settle())
            assert outcome.kind == "approved", outcome
            captured = [e for e in self.h.store.entries(batch=batch) if e.captured]
            debits = [e.amount for e in captured if e.direction == "debit"]
            credits = [e.amount for e in captured if e.direction == "credit"]
            terminal_totals = SettlementTotals(len(debits), sum(debits), len(credits), sum(credits))
            host_batch = batch if self.family == "cup" else max(self.h.host.closed)
            assert self.h.host.closed[host_batch] == terminal_totals
            self.h.assert_consistent()
        finally:
            self.h.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class CupTerminalAgainstHost(TerminalAgainstHost):
    family = "cup"


_STATEFUL = settings(max_examples=250, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestTerminalAgainstHost = TerminalAgainstHost.TestCase
TestTerminalAgainstHost.settings = _STATEFUL
TestCupTerminalAgainstHost = CupTerminalAgainstHost.TestCase
TestCupTerminalAgainstHost.settings = settings(_STATEFUL, max_examples=120)
