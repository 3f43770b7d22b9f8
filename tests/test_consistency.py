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

import os
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, given, settings

from switch.codec import Codec, load_dialect
from switch.codec.dialect import Dialect
from switch.codec.framing import Framing
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer
from terminal.client import TerminalClient, TrioClock
from terminal.policy import (
    Command,
    Drain,
    Echo,
    Note,
    OfflineSale,
    Outcome,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Settle,
    SignOff,
    SignOn,
    TerminalPolicy,
)
from terminal.profile import TerminalProfile
from terminal.store import JournalEntry, TerminalStore, next_batch_number

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


# ---------------------------------------------------------------------------------------------
# Running a program


@dataclass
class _Job:
    command: Command
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None


class TerminalProcess:
    """One run of a terminal program: a task of its own owns the client (whose nursery must nest in
    it), takes commands one at a time, and can be killed wherever it is, like a process."""

    def __init__(self, client: TerminalClient) -> None:
        self.client = client
        self._scope = trio.CancelScope()
        self._submit, self._jobs = trio.open_memory_channel[_Job](0)
        self._ended = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with self.client:
                    task_status.started()
                    async for job in self._jobs:
                        job.outcome = await self.client.run_command(job.command)
                        job.done.set()
        finally:
            self._ended.set()

    async def run_command(self, command: Command) -> Outcome:
        job = _Job(command)
        await self._submit.send(job)
        await job.done.wait()
        assert job.outcome is not None
        return job.outcome

    async def kill(self) -> None:
        self._scope.cancel()
        await self._ended.wait()


@dataclass
class Terminal:
    """One terminal of the run and what its operator was told."""

    terminal_id: str
    store: TerminalStore
    process: TerminalProcess
    told_approved: set[int] = field(default_factory=set)  # journal ids an outcome called approved
    told_nothing_moved: dict[int, str] = field(default_factory=dict)  # journal id → declined / reversed
    voided: set[int] = field(default_factory=set)  # journal ids a void (ReverseLast) went after
    final_settlement: Outcome | None = None


@dataclass
class World:
    dialect: Dialect
    ledger: Ledger
    faults: FaultEngine
    terminals: list[Terminal]
    trace: list[str] = field(default_factory=list)
    start: Callable[[TerminalStore], Awaitable[TerminalProcess]] | None = None  # a terminal process starting up
    transactions: int = 0  # journal entries over all terminals, for the statistics
    note_kinds: set[str] = field(default_factory=set)  # what happened, for the statistics


PolicyFactory = Callable[[TerminalProfile, TerminalStore, float], TerminalPolicy]

STORE_DIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
"""Stores on a RAM disk where there is one: every store write is an fsync (``synchronous=FULL``),
which on a slow disk makes this test I/O bound; a crash here is simulated by reopening the file,
which needs no fsync to be faithful (``test_store`` and the SIGKILL tests cover the disk)."""


def run_program(program: Program, policy_factory: PolicyFactory = TerminalPolicy) -> World:
    """Run ``program`` against a fresh switch with fresh terminal stores on a virtual clock, then
    ``check_consistency``; a failed invariant carries the run's trace as an exception note."""
    with tempfile.TemporaryDirectory(prefix="iso-consistency-", dir=STORE_DIR) as workdir, ExitStack() as open_stores:
        stores = []
        for number in range(program.terminals):
            terminal_id = f"TERM{number + 1:04d}"
            stores.append(open_stores.enter_context(TerminalStore.open(Path(workdir) / f"{terminal_id}.sqlite",
                                                                       terminal_id)))
        clock = trio.testing.MockClock(autojump_threshold=0)
        world = trio.run(_run_program, program, stores, policy_factory, clock=clock)
        world.transactions = sum(len(store.entries()) for store in stores)
        try:
            check_consistency(world)
        except AssertionError as failure:
            failure.add_note("trace of the run (virtual seconds):\n" + "\n".join(world.trace[-TRACE_LINES:]))
            raise
        return world


async def _run_program(program: Program, stores: list[TerminalStore], policy_factory: PolicyFactory) -> World:
    dialect = DIALECTS[program.dialect]
    clock = TrioClock.starting_at(T0)
    ledger = Ledger.open(":memory:")
    faults = FaultEngine(seed=program.seed)
    host = Host(HostConfig.for_dialect(dialect, session_timeout=program.session_timeout), ledger,
                default_scenario().response_rules)
    server = SwitchServer(
        codec=Codec(dialect), framing=Framing.from_dialect(dialect), host=host, ledger=ledger,
        committer=GroupCommitter(ledger, in_thread=False),
        config=ServerConfig(port=0, idle_timeout=300.0, grace_period=2.0),
        clock=lambda: datetime.fromtimestamp(clock.now(), UTC), faults=faults,
    )
    world = World(dialect, ledger, faults, [])
    with trio.fail_after(VIRTUAL_LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.committer.run)

            async def connect() -> trio.abc.Stream:
                client_side, server_side = trio.testing.memory_stream_pair()
                nursery.start_soon(server.handle_stream, server_side)
                return client_side

            async def start(store: TerminalStore) -> TerminalProcess:
                """A terminal process starting up: a new policy (it recovers what was in flight) and driver."""
                # the terminal knows this host's "sign on first" code (ISO hosts: 58) as a sign-on demand
                demand = frozenset({"A0", "99", HostConfig.for_dialect(dialect).signon_code})
                profile = TerminalProfile.for_dialect(dialect, store.terminal_id, MERCHANT, signon_demand_codes=demand)
                policy = policy_factory(profile, store, clock.now())
                client = TerminalClient(policy, Codec(dialect), Framing.from_dialect(dialect), connect, clock,
                                        on_note=_tracer(world, store.terminal_id))
                process = TerminalProcess(client)
                await nursery.start(process.serve)
                return process

            world.start = start
            for store in stores:
                world.terminals.append(Terminal(store.terminal_id, store, await start(store)))
            for step in program.steps:
                await _perform(world, step)
            await _drain_and_settle(world)
            nursery.cancel_scope.cancel()
    return world


def _tracer(world: World, terminal_id: str) -> Callable[[Note], None]:
    def trace(item: Note) -> None:
        world.note_kinds.add(item.kind)
        world.trace.append(f"  {trace_time()} {terminal_id} {item.kind}: {item.text}")

    return trace


def trace_time() -> str:
    return f"t={trio.current_time():9.1f}"


async def _perform(world: World, step: Step) -> None:
    if isinstance(step, Do):
        await _run(world, step)
    elif isinstance(step, Crash):
        await _crash(world, step)
    elif isinstance(step, Together):
        async with trio.open_nursery() as both:
            both.start_soon(_run, world, step.first)
            both.start_soon(_run, world, step.second)
    elif isinstance(step, AddFault):
        rule = step.rule
        if rule.get("respond") == SIGNON_DEMAND:
            rule = {**rule, "respond": HostConfig.for_dialect(world.dialect).signon_code}
        added = world.faults.add(rule)
        world.trace.append(f"{trace_time()} fault {added.id} added: {added.to_dict()}")
    elif isinstance(step, RemoveFault):
        rules = world.faults.rules
        if rules:
            removed = rules[step.position % len(rules)]
            world.faults.delete(removed.id)
            world.trace.append(f"{trace_time()} fault {removed.id} removed")
    else:
        await trio.sleep(step.seconds)
        world.trace.append(f"{trace_time()} waited {step.seconds:g}s")


async def _run(world: World, step: Do) -> Outcome:
    terminal = world.terminals[step.terminal]
    world.trace.append(f"{trace_time()} {terminal.terminal_id} starts {step.command}")
    outcome = await terminal.process.run_command(step.command)
    world.trace.append(f"{trace_time()} {terminal.terminal_id} -> {outcome.kind}: {outcome.text}")
    _remember(terminal, step.command, outcome)
    return outcome


async def _crash(world: World, step: Crash) -> None:
    terminal = world.terminals[step.terminal]
    with trio.move_on_after(step.after) as killed:
        await _run(world, Do(step.terminal, step.command))
    if not killed.cancelled_caught:
        return
    await terminal.process.kill()
    world.trace.append(f"{trace_time()} {terminal.terminal_id} killed {step.after:g}s into {step.command}; restarts")
    assert world.start is not None
    terminal.process = await world.start(terminal.store)


def _remember(terminal: Terminal, command: Command, outcome: Outcome) -> None:
    """What the operator was told, to be held against the final state."""
    if outcome.kind == "refused":
        assert outcome.journal_id is None, f"a local refusal was journalled: {outcome}"
        return
    if outcome.journal_id is None:
        return
    if isinstance(command, ReverseLast):
        terminal.voided.add(outcome.journal_id)
    elif outcome.kind == "approved":
        terminal.told_approved.add(outcome.journal_id)
    elif outcome.kind in ("declined", "reversed"):
        terminal.told_nothing_moved[outcome.journal_id] = outcome.kind


async def _drain_and_settle(world: World) -> None:
    """Clear every fault, let delayed frames land, then each terminal drains and settles."""
    world.faults.reset()
    world.trace.append(f"{trace_time()} faults cleared")
    await trio.sleep(LANDING_TIME)
    for terminal in world.terminals:
        await _until(world, terminal, Drain(), "completed")
        terminal.final_settlement = await _until(world, terminal, Settle(), "approved")


async def _until(world: World, terminal: Terminal, command: Command, wanted: str) -> Outcome:
    outcome = None
    for _ in range(FINAL_ATTEMPTS):
        outcome = await _run(world, Do(world.terminals.index(terminal), command))
        if outcome.kind == wanted or (isinstance(command, Settle) and outcome.kind == "unbalanced"):
            return outcome  # unbalanced: the host closed the batch after its upload; checked below
    raise AssertionError(
        f"{terminal.terminal_id}: {command.name} did not end {wanted} in {FINAL_ATTEMPTS} attempts "
        f"with every fault cleared; last: {outcome}"
    )


# ---------------------------------------------------------------------------------------------
# The invariants


def check_consistency(world: World) -> None:
    """Assert the invariants of the module docstring for every terminal of ``world``."""
    for terminal in world.terminals:
        _check_nothing_owed(terminal)
        entries = terminal.store.entries()
        _check_money(world.ledger, terminal, entries)
        _check_settlements(world.ledger, terminal, entries)
        _check_what_the_operator_was_told(terminal, {entry.id: entry for entry in entries})


def _check_nothing_owed(terminal: Terminal) -> None:
    store, name = terminal.store, terminal.terminal_id
    assert store.reversals() == [], f"{name}: reversals still pending after draining: {store.reversals()}"
    assert store.advices() == [], f"{name}: advices still pending after draining: {store.advices()}"
    assert store.pending_settlement is None, f"{name}: a settlement is still owed: {store.pending_settlement}"


def _check_money(ledger: Ledger, terminal: Terminal, entries: list[JournalEntry]) -> None:
    name = terminal.terminal_id
    postings = defaultdict(list)
    for posting in ledger.postings(terminal=name):
        postings[(posting.stan, posting.transmission_time)].append(posting)
    twice = {key: found for key, found in postings.items() if len(found) > 1}
    assert not twice, f"{name}: posted twice (STAN, field 7): {twice}"
    known = set()
    for entry in entries:
        key = (entry.stan, entry.transmission_time)
        known.add(key)
        assert entry.money_moved is not None, (
            f"{name}: {entry.kind} STAN {entry.stan} is still undecided ({entry.state}: {entry.reason})"
        )
        posting = postings[key][0] if postings.get(key) else None
        host_moved = posting is not None and posting.approved and not posting.reversed
        assert host_moved == entry.money_moved, (
            f"{name}: {entry.kind} STAN {entry.stan} field 7 {entry.transmission_time or '-'} amount "
            f"{entry.amount}: the terminal says money moved = {entry.money_moved} ({entry.state}: {entry.reason}), "
            f"the host ledger says {host_moved} ({posting})"
        )
        if host_moved:
            assert posting is not None
            assert (posting.amount, posting.direction, posting.mti[:2]) == (
                entry.amount, entry.direction, entry.mti[:2]
            ), f"{name}: STAN {entry.stan}: the host booked {posting}, the terminal {entry}"
    strangers = sorted(set(postings) - known)
    assert not strangers, f"{name}: postings that are none of the terminal's transactions: {strangers}"


def _captured_totals(entries: list[JournalEntry]) -> tuple[int, int, int, int]:
    debits = [entry.amount for entry in entries if entry.captured and entry.direction == "debit"]
    credits = [entry.amount for entry in entries if entry.captured and entry.direction == "credit"]
    return len(debits), sum(debits), len(credits), sum(credits)


def _net(totals: Any) -> tuple[int, int, int, int]:
    return totals.debit_count, totals.debit_amount, totals.credit_count, totals.credit_amount


def _check_settlements(ledger: Ledger, terminal: Terminal, entries: list[JournalEntry]) -> None:
    name, store = terminal.terminal_id, terminal.store
    final = terminal.final_settlement
    assert final is not None and (final.kind, final.response_code) == ("approved", "00"), final
    by_batch: dict[str, list[JournalEntry]] = defaultdict(list)
    for entry in entries:
        by_batch[entry.batch].append(entry)
    batch = "000001"
    while batch != store.batch:  # every batch the terminal closed
        summary = ledger.batch_summary(name, batch)
        assert summary.status == "closed", f"{name}: batch {batch} is closed at the terminal, open at the host"
        assert _net(summary) == _captured_totals(by_batch[batch]), (
            f"{name}: batch {batch}: host NET totals {_net(summary)}, terminal {_captured_totals(by_batch[batch])}"
        )
        batch = next_batch_number(batch)
    assert by_batch[store.batch] == [], f"{name}: transactions in the batch left open: {by_batch[store.batch]}"
    left_open = ledger.batch_summary(name, store.batch)
    assert (left_open.status, left_open.postings) == ("open", 0), f"{name}: host batch {store.batch}: {left_open}"
    closing = [s for s in ledger.settlements(name) if s.closed]
    assert closing, f"{name}: the host closed no batch"
    assert closing[-1].response_code == "00" and closing[-1].batch == final.batch, (closing[-1], final)
    for settlement in closing:
        summary = ledger.batch_summary(name, settlement.batch)
        assert _net(settlement) == _net(summary), (
            f"{name}: settlement {settlement} closed batch {settlement.batch} whose NET totals are {_net(summary)}"
        )


def _check_what_the_operator_was_told(terminal: Terminal, entries: dict[int, JournalEntry]) -> None:
    name = terminal.terminal_id
    for journal_id in terminal.told_approved:
        entry = entries[journal_id]
        assert entry.state == "approved" or journal_id in terminal.voided, (
            f"{name}: STAN {entry.stan} was reported approved and is now {entry.state} without a void"
        )
    for journal_id, told in terminal.told_nothing_moved.items():
        entry = entries[journal_id]
        assert entry.money_moved is False, f"{name}: STAN {entry.stan} was reported {told} and is now {entry.state}"


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
    import trio

    from switch.app import SwitchOptions, build_switch
    from switch.codec.dialect import load_dialect
    from switch.codec.framing import Framing
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
