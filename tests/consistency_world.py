"""Running a consistency program (see tests/test_consistency.py) against the real host over memory streams,
and the invariants checked once every terminal has drained and settled."""

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

import trio
import trio.testing

from switch.codec import Codec
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
    Note,
    Outcome,
    ReverseLast,
    Settle,
    TerminalPolicy,
)
from terminal.profile import TerminalProfile
from terminal.store import JournalEntry, TerminalStore, next_batch_number
from tests.consistency_programs import (
    DIALECTS,
    FINAL_ATTEMPTS,
    LANDING_TIME,
    MERCHANT,
    SIGNON_DEMAND,
    T0,
    TRACE_LINES,
    VIRTUAL_LIMIT,
    AddFault,
    Crash,
    Do,
    Program,
    RemoveFault,
    Step,
    Together,
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
