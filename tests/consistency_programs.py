"""The consistency property's programs (see tests/test_consistency.py): the steps a program is made of,
the Hypothesis strategies that draw them, and the constants they share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import hypothesis.strategies as st

from switch.codec import load_dialect
from terminal.policy import (
    Command,
    Drain,
    Echo,
    OfflineSale,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Settle,
    SignOff,
    SignOn,
)

EXAMPLES = int(os.environ.get("ISO_CONSISTENCY_EXAMPLES", "200"))
STEPS = int(os.environ.get("ISO_CONSISTENCY_STEPS", "30"))

DIALECTS = {"iso87-binary": load_dialect("iso87-binary"), "cup-pos": load_dialect("cup-pos")}
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
MERCHANT = "MERCHANT0000001"
APPROVED_PAN = "4761739001010010"  # not in the test-card table: approved
VALID_EXPIRY = "3012"
EXPIRED = "2412"  # before March 2025: refused by the terminal, never sent
BAD_LUHN_PAN = "4761739001010011"  # wrong check digit: refused locally
OVER_LIMIT = 100_000_001  # the default test-card table answers 61 above 1,000,000.00

LANDING_TIME = 900.0
"""Virtual seconds to let frames already given a delay land after the faults are cleared: delays
drawn below are at most 50 s, and several rules on one frame add up."""
FINAL_ATTEMPTS = 3
VIRTUAL_LIMIT = 7 * 86400.0
"""A program that has not finished after a virtual week is stuck (a livelock, not a slow host)."""
TRACE_LINES = 400
SIGNON_DEMAND = "sign-on-demand"
"""Placeholder in a generated ``respond``: the dialect's "sign on first" code (ISO 58, CUP A0)."""


# ---------------------------------------------------------------------------------------------
# Programs


@dataclass(frozen=True)
class Do:
    """Terminal ``terminal`` runs ``command`` to its outcome."""

    terminal: int
    command: Command


@dataclass(frozen=True)
class Crash:
    """Terminal ``terminal`` is killed ``after`` virtual seconds into ``command`` (if it is still
    running) and restarted: a new ``TerminalPolicy`` and client over the same store file."""

    terminal: int
    command: Command
    after: float


@dataclass(frozen=True)
class Together:
    """Two terminals run a command each at the same time (their frames interleave at the switch)."""

    first: Do
    second: Do


@dataclass(frozen=True)
class AddFault:
    rule: dict[str, Any]


@dataclass(frozen=True)
class RemoveFault:
    """Delete the fault rule at this position (modulo the number of rules; nothing when none)."""

    position: int


@dataclass(frozen=True)
class Wait:
    """Let virtual time pass: late replies land, sessions and idle connections expire."""

    seconds: float


Step = Do | Crash | Together | AddFault | RemoveFault | Wait


@dataclass(frozen=True)
class Program:
    dialect: str
    terminals: int
    session_timeout: float | None
    seed: int
    steps: tuple[Step, ...]


amounts = st.one_of(st.integers(1, 250_000), st.sampled_from([0, 1, OVER_LIMIT]))
cards = st.sampled_from(
    [
        (APPROVED_PAN, VALID_EXPIRY),
        (APPROVED_PAN, VALID_EXPIRY),
        (APPROVED_PAN, VALID_EXPIRY),
        ("4000000000000051", VALID_EXPIRY),  # 51 insufficient funds
        ("4300000000000041", VALID_EXPIRY),  # 41 lost card
        (APPROVED_PAN, EXPIRED),
        (BAD_LUHN_PAN, VALID_EXPIRY),
    ]
)


@st.composite
def card_commands(draw: st.DrawFn) -> Command:
    kind = draw(st.sampled_from([Purchase, Purchase, Purchase, Refund, PreAuthorization, OfflineSale]))
    pan, expiry = draw(cards)
    return kind(draw(amounts), pan, expiry)


commands = st.one_of(
    card_commands(),
    card_commands(),
    st.sampled_from([ReverseLast(), ReverseLast(), Settle(), Settle(), Drain(), Echo(), SignOff(), SignOn()]),
)

REQUEST_MTIS = ["0800", "0200", "0100", "0220", "0221", "0400", "0401", "0500", "0501", "0320"]
targets = st.one_of(
    # mostly one kind of exchange, so that faults on different legs of one transaction meet often
    # (the 0210 lost and then the 0410 too); sometimes every frame, sometimes any mixture
    st.sampled_from([None, ["0200"], ["0200", "0100"], ["0400", "0401"], ["0500", "0501"], ["0800"],
                     ["0220", "0221"], ["0320"]]),
    st.lists(st.sampled_from(REQUEST_MTIS), min_size=1, max_size=3, unique=True),
)
delays = st.sampled_from(["2s", "10s", "29s", "31s", "35s", "50s"])
ending_before = st.sampled_from([{"drop_request": True}, {"reset": "before"}, {"close": "before"}])
ending_after = st.sampled_from([{"drop_response": True}, {"reset": "after"}, {"close": "after"}])
shaping = st.one_of(
    st.builds(lambda echo: {"wrong_echo": echo},
              st.lists(st.sampled_from(["stan", "amount", "terminal"]), min_size=1, max_size=3, unique=True)),
    st.just({"duplicate": True}),
    st.builds(lambda size: {"garbage": size}, st.integers(1, 64)),
    st.just({"truncate": True}),
    st.just({"wrong_length": True}),
)


@st.composite
def fault_rules(draw: st.DrawFn, uploads: bool) -> dict[str, Any]:
    """A valid ``[[fault]]`` table: who it hits, how often, and one misbehaviour (plus a delay).

    ``uploads``: the program may answer settlements 95 (see ``settlement_95``); then no delay ever
    holds a 0500 back.
    """
    when: dict[str, Any] = {}
    target = draw(targets)
    if target is not None:
        when["mti"] = target
    how_often = draw(st.sampled_from(["always", "first", "every"]))
    if how_often == "first":
        when["first"] = draw(st.integers(1, 3))
    elif how_often == "every":
        when["every"] = draw(st.integers(2, 3))
    kinds = ["before", "after", "after", "shape", "respond", "respond", "delay", "delay"]
    kinds += ["settlement-95"] if uploads else []
    kind = draw(st.sampled_from(kinds))
    if kind == "settlement-95":
        return settlement_95(when)
    rule: dict[str, Any] = {"when": when} if when else {}
    if draw(st.booleans()):
        rule["probability"] = 0.5
    if kind == "before":
        rule.update(draw(ending_before))
    elif kind == "after":
        rule.update(draw(ending_after))
    elif kind == "shape":
        rule.update(draw(shaping))
    elif kind == "respond":
        rule["respond"] = draw(st.sampled_from(["91", "96", SIGNON_DEMAND]))
    if kind == "delay" or draw(st.integers(0, 3)) == 0:
        # a delay_response with an ending before processing would never happen: the rule is refused
        which = "delay_request" if kind == "before" else draw(st.sampled_from(["delay_request", "delay_response"]))
        rule[which] = draw(delays)
        if uploads:
            mtis = [mti for mti in when.get("mti", REQUEST_MTIS) if mti != "0500"] or ["0501"]
            rule["when"] = {**when, "mti": mtis}
    return rule


def settlement_95(when: dict[str, Any]) -> dict[str, Any]:
    """Answer a 0500 with 95 unprocessed, so that the terminal uploads its batch and settles again.

    This is the fault engine answering for the host without telling it, so it must not contradict
    what the host answers to a repeat of the same settlement (a 0501 with the same STAN): repeats get
    the first answer (domain.md). Hence only first transmissions (0500), and never a late 95: in
    such programs no delay holds a 0500 back. A 95 the terminal sees after its timeout, while its
    0501 is on the way to the host, would make the host close its current batch on the 0501 while the
    terminal uploads: the terminal's and the host's batch numbers (ISO: the host keeps its own) would
    drift apart, totals still matching.
    """
    return {"when": {**when, "mti": ["0500"]}, "respond": "95"}


@st.composite
def programs(draw: st.DrawFn) -> Program:
    terminals = draw(st.integers(1, 3))
    uploads = draw(st.booleans())
    terminal_numbers = st.integers(0, terminals - 1)
    do = st.builds(Do, terminal_numbers, commands)
    step_kinds = [
        *[do] * 6,
        st.builds(Crash, terminal_numbers, card_commands(), st.sampled_from([0.0, 1.0, 30.0, 45.0, 70.0])),
        st.builds(AddFault, fault_rules(uploads)),
        st.builds(AddFault, fault_rules(uploads)),
        st.builds(RemoveFault, st.integers(0, 7)),
        st.builds(RemoveFault, st.integers(0, 7)),
        st.builds(Wait, st.sampled_from([5.0, 31.0, 65.0, 130.0, 301.0])),
    ]
    if terminals > 1:
        step_kinds.append(st.builds(Together, st.builds(Do, st.just(0), commands),
                                    st.builds(Do, st.just(1), commands)))
    steps = draw(st.lists(st.one_of(step_kinds), min_size=STEPS // 2, max_size=STEPS))
    return Program(
        dialect=draw(st.sampled_from(["iso87-binary", "iso87-binary", "cup-pos"])),
        terminals=terminals,
        session_timeout=draw(st.sampled_from([None, None, 240.0])),
        seed=draw(st.integers(0, 2**16)),
        steps=tuple(steps),
    )
