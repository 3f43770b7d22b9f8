"""The consistency property: whatever the network does, terminal and host agree on what money moved.

Hypothesis generates *programs*: one to three terminals (each a ``TerminalPolicy`` over a
``TerminalStore`` file, driven by ``TerminalClient``) run purchases, refunds, pre-authorizations,
offline sales, voids, echoes, sign-offs/ons and settlements against the real host logic
(``switch.host.Host`` over ``Ledger(":memory:")``, served by ``switch.server.SwitchServer`` over
memory streams), while fault rules are added to and removed from the server's ``FaultEngine``
between steps: requests and responses dropped, delayed past the terminal's 30 s timeout (late
replies) or not, connections reset or closed before/after processing, wrong echoes, duplicated,
garbage, truncated and mis-framed replies, canned 91/96/"sign on first" answers, settlements
answered 95 (see ``settlement_95`` for the one restriction). Amounts include 0 and the over-limit
amount, cards include test cards that decline, an expired card and a PAN with a bad check digit
(refused locally). Two terminals may transact at the same moment, and a terminal may be killed in
the middle of a command and restarted over the same store (a new policy recovers what was in
flight). ISO 8583 (host-kept batch numbers) and CUP (terminal batch numbers in 60.2) both run.

Then every fault is cleared, the delayed frames still in flight are let through, and each terminal
drains what it owes and settles (bounded attempts). The invariants, per terminal:

* nothing is left owed: no pending reversal, advice or settlement in the store;
* every journal entry is decided, and for every transaction (terminal, STAN, field 7, amount) the
  host ledger (a posting approved and not reversed) and the terminal (``JournalEntry.money_moved``)
  agree on whether money moved, and on the amount and direction when it did;
* nothing is posted twice (one posting per terminal + STAN + field 7), and every posting is one of
  the terminal's transactions;
* every batch the terminal closed is closed on the host under the same number with NET totals equal
  to the terminal's, every closing settlement's totals equal the host's NET totals of that batch, the
  final settlement was answered 00, and nothing was posted to the batch left open;
* what the operator was told holds: an "approved" transaction is still approved unless it was voided,
  a declined or reversed one moved nothing.

Each example is one ``trio.run`` on ``MockClock(autojump_threshold=0)``: every timeout, backoff and
delay is virtual, so a program with a dozen 30 s timeouts runs in milliseconds of real time. The
ledger is flushed on the event loop (``GroupCommitter(in_thread=False)``), so the clock never jumps
while a flush runs. pytest-trio makes Trio's scheduling deterministic under Hypothesis, and the
fault engine is seeded, so a failing program replays and shrinks; its trace (virtual time, steps,
outcomes, the terminals' notes) is attached to the assertion.

Why a generated program and not a ``RuleBasedStateMachine``: the switch, its connections and the
terminals' clients are Trio tasks that live for the whole run, while a Hypothesis state machine calls
synchronous rules from outside any event loop (bridging the two needs the hypothesis-trio plugin,
last released in 2021 and not a dependency here). A list of steps shrinks just as well, and the
invariants are checked where they are meant to hold: after draining and settling.

``ISO_CONSISTENCY_EXAMPLES`` (default 200) and ``ISO_CONSISTENCY_STEPS`` (default 30) make a longer
run, e.g. ``ISO_CONSISTENCY_EXAMPLES=3000 pytest tests/test_consistency.py`` (about 6 minutes here).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, Phase, event, given, settings

from switch.codec.framing import Framing
from terminal.policy import (
    Purchase,
    Refund,
    ReverseLast,
    Settle,
    TerminalPolicy,
)
from tests.consistency_programs import (
    APPROVED_PAN,
    EXAMPLES,
    VALID_EXPIRY,
    AddFault,
    Do,
    Program,
    Together,
    Wait,
    programs,
)
from tests.consistency_world import PolicyFactory, run_program

# ---------------------------------------------------------------------------------------------
# The property

INTERESTING_NOTES = frozenset({"reversal-cleared", "reversal-refused", "late-reply-discarded", "upload-started",
                               "signon-demanded", "recovered", "advice-forwarded", "batch-closed", "item-retry"})


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),  # "explain" reruns too slowly here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=programs())
def test_terminal_and_host_agree_on_what_money_moved(program: Program) -> None:
    world = run_program(program)
    event(f"transactions: {min(world.transactions // 5 * 5, 20)}+")
    event(f"fault rules added: {min(sum(isinstance(step, AddFault) for step in program.steps), 3)}+")
    for kind in INTERESTING_NOTES & world.note_kinds:
        event(f"note: {kind}")


# ---------------------------------------------------------------------------------------------
# Fixed programs: the failure modes by name, and proof that the checker can fail


SALE = Purchase(1500, APPROVED_PAN, VALID_EXPIRY)


@pytest.mark.parametrize("dialect", ["iso87-binary", "cup-pos"])
@pytest.mark.parametrize(
    "fault",
    [
        {"when": {"mti": ["0200"]}, "drop_response": True},  # approved and booked, 0210 lost
        {"when": {"mti": ["0200"]}, "delay_response": "35s"},  # late 0210 after the timeout
        {"when": {"mti": ["0200"]}, "delay_request": "35s"},  # reversal overtakes its original
        {"when": {"mti": ["0200"]}, "reset": "after"},
        {"when": {"mti": ["0200", "0400", "0401"]}, "drop_response": True},  # reversals lost too
        {"when": {"mti": ["0500"]}, "drop_response": True},  # batch closed, 0510 lost
        {"when": {"mti": ["0500"], "first": 1}, "respond": "95"},  # upload, then settle again
        {"when": {"mti": ["0800"], "first": 2}, "drop_request": True},  # sign-on blackout
        {"wrong_echo": ["amount"], "probability": 0.5},
    ],
)
def test_named_failure_modes_stay_consistent(fault: dict[str, Any], dialect: str) -> None:
    program = Program(dialect, 2, None, 7, (
        Do(0, SALE),
        AddFault(fault),
        Do(0, Purchase(2500, APPROVED_PAN, VALID_EXPIRY)),
        Together(Do(0, Refund(700, APPROVED_PAN, VALID_EXPIRY)), Do(1, SALE)),
        Do(0, Settle()),
        Do(1, ReverseLast()),
        Wait(65.0),
        Do(1, Purchase(990, APPROVED_PAN, VALID_EXPIRY)),
    ))
    run_program(program)


class TimeoutMeansDeclined(TerminalPolicy):
    """Broken: a purchase without an answer counts as declined, and its stored reversal is dropped."""

    def _fail(self, now: float, cause: str, detail: str) -> None:
        exchange = self._exchange
        if exchange is None or exchange.purpose != "financial" or exchange.ref is None:
            return super()._fail(now, cause, detail)
        self._exchange = None
        reversal = self.store.reversal_for(exchange.ref)
        with self.store.transaction():
            self.store.update_entry(exchange.ref, now=now, state="declined", reason=f"{detail}: taken as declined")
            if reversal is not None:
                self.store.delete_reversal(reversal.id)
        return None


class ReversalNeverSent(TerminalPolicy):
    """Broken: stored reversals are marked acknowledged without ever being sent."""

    def _drain(self, now: float, op: Any) -> Any:
        for reversal in self.store.reversals():
            with self.store.transaction():
                self.store.update_entry(reversal.journal_id, now=now, state="reversed", reason="never sent")
                self.store.delete_reversal(reversal.id)
        return super()._drain(now, op)


class InflatedTotals(TerminalPolicy):
    """Broken: settlement totals one minor unit above the journal's."""

    def _totals(self) -> Any:
        totals = super()._totals()
        return type(totals)(totals.debit_count, totals.debit_amount + 1, totals.credit_count, totals.credit_amount)


@pytest.mark.parametrize(
    ("broken", "caught"),
    [
        (TimeoutMeansDeclined, "the host ledger says True"),
        (ReversalNeverSent, "the host ledger says True"),
        (InflatedTotals, "settlement unbalanced: uploaded, contact the acquirer"),
    ],
)
def test_the_checker_catches_a_broken_terminal(broken: PolicyFactory, caught: str) -> None:
    """The property can fail: the host books a purchase whose 0210 is lost (and one that is answered),
    and a terminal that mishandles it must be caught by ``check_consistency``."""
    program = Program("iso87-binary", 1, None, 3, (
        AddFault({"when": {"mti": ["0200"], "first": 1}, "drop_response": True}),
        Do(0, SALE),
        Do(0, Purchase(2500, APPROVED_PAN, VALID_EXPIRY)),
    ))
    run_program(program)  # the real terminal passes
    with pytest.raises(AssertionError, match=caught):
        run_program(program, broken)


# ---------------------------------------------------------------------------------------------
# The load runner's check asks the right switch: /health lists its listeners


def test_the_check_refuses_an_admin_api_of_another_switch() -> None:
    from terminal.load.consistency import listener_problem

    health = {"status": "ok", "listeners": [{"host": "127.0.0.1", "port": 8583, "dialect": "iso87-binary",
                                             "tls": False},
                                            {"host": "127.0.0.1", "port": 9583, "dialect": "cup-pos", "tls": True}]}
    url = "http://127.0.0.1:8584"
    assert listener_problem(health, url, ("127.0.0.1", 9583), ["127.0.0.1"]) is None
    assert listener_problem(health, url, ("localhost", 8583)) is None  # a name for the same address
    problem = listener_problem(health, url, ("127.0.0.1", 18583), ["127.0.0.1"])
    assert problem == ("the admin API at http://127.0.0.1:8584 belongs to a switch listening on 127.0.0.1:8583, "
                       "127.0.0.1:9583, not on 127.0.0.1:18583 where the terminals ran: give that switch's admin "
                       "API with --admin URL")
    wildcard = {"listeners": [{"host": "0.0.0.0", "port": 8583}]}
    assert listener_problem(wildcard, url, ("10.1.2.3", 8583), ["10.1.2.3"]) is None
    assert listener_problem(wildcard, url, ("10.1.2.3", 8584), ["10.1.2.3"]) is not None
    assert listener_problem({"status": "ok"}, url, ("127.0.0.1", 1)) is None  # an older switch: cannot tell
    assert "[::1]:8583" in (listener_problem({"listeners": [{"host": "::1", "port": 8583}]}, url,
                                             ("127.0.0.1", 8583), ["127.0.0.1"]) or "")


async def test_the_check_against_a_running_switch(tmp_path: Path) -> None:
    """A real switch's /health: its own port passes; another port is refused before any posting is read."""

    from switch.app import SwitchOptions, build_switch
    from switch.codec.dialect import load_dialect
    from terminal.load.consistency import AdminUnavailable, CheckOptions, check_consistency, fetch_postings

    dialect = load_dialect("iso87-binary")
    switch = build_switch(dialect, Framing.from_dialect(dialect),
                          SwitchOptions(port=0, ledger=":memory:", journal="none", admin_port=0))
    async with trio.open_nursery() as nursery:
        listeners, admin = await nursery.start(switch.run)
        port = listeners[0].socket.getsockname()[1]
        url = f"http://127.0.0.1:{admin}"
        postings = await trio.to_thread.run_sync(
            lambda: fetch_postings(url, ["TERM0001"], target=("127.0.0.1", port)))
        assert postings == []
        with pytest.raises(AdminUnavailable, match=f"listening on 127.0.0.1:{port}, not on 127.0.0.1:{port + 1} "):
            await trio.to_thread.run_sync(lambda: fetch_postings(url, ["TERM0001"], target=("127.0.0.1", port + 1)))
        result = await trio.to_thread.run_sync(lambda: check_consistency(
            CheckOptions(admin_url=url, target=("127.0.0.1", port + 1)), {"TERM0001": []}, (0.0, 1.0)))
        assert result.status == "skipped" and "where the terminals ran" in result.headline()
        nursery.cancel_scope.cancel()
