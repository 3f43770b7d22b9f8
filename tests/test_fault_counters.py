"""Counted fault rules counted once for every instance (``switch.faults.shared``, ``switch.fault_counters``)
on a real PostgreSQL: two engines on one database as two instances, the atomic counter under threads,
scopes (epoch, reload, patch), an unreachable database, and two switches over loopback."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from switch.app import SwitchOptions, build_switch
from switch.codec import Message
from switch.fault_counters import FaultCounters
from switch.faults import FaultRule, rule_from_table
from switch.faults.shared import SharedFaultEngine
from switch.ledger import Ledger, LedgerError
from tests.pg_server import _free_port
from tests.test_server import DIALECT, FRAMING, connect, exchange, purchase


@pytest.fixture
def ledger_url(pg_url: str) -> str:
    """A database with the ledger schema (its version 3 creates ``fault_counters``)."""
    Ledger.open(pg_url).close()
    return pg_url


@pytest.fixture
def counters(ledger_url: str) -> Iterator[list[FaultCounters]]:
    """Two counters (one per 'instance'), each on its own connection; closed at the end."""
    made = [FaultCounters.open(ledger_url), FaultCounters.open(ledger_url)]
    yield made
    for item in made:
        item.close()


def rules(*tables: dict[str, object]) -> list[FaultRule]:
    return [rule_from_table(table, default_id=f"f{n}") for n, table in enumerate(tables, 1)]


def pair(counters: list[FaultCounters], plan: list[FaultRule], *, epoch: str = "run-1"
         ) -> tuple[SharedFaultEngine, SharedFaultEngine]:
    a, b = (SharedFaultEngine(plan, seed=7, counters=item, epoch=epoch) for item in counters)
    return a, b


async def fired(engines: tuple[SharedFaultEngine, ...], messages: list[Message]) -> list[tuple[str, ...]]:
    """Each message to the next engine in turn (round robin); the rules that fired on each."""
    result = []
    for engine, message in zip(itertools.cycle(engines), messages, strict=False):
        result.append((await engine.decide_shared(message, connection=1, elapsed=0.0)).rules)
    return result


def traffic(count: int, start: int = 1) -> list[Message]:
    return [purchase(stan, terminal=f"TERM{stan % 5:04d}") for stan in range(start, start + count)]


async def test_nth_first_every_count_once_across_two_instances(counters: list[FaultCounters]) -> None:
    plan = rules({"id": "third", "when": {"mti": "0200", "nth": 3}, "respond": "05"},
                 {"id": "two", "when": {"mti": "0200", "first": 2}, "respond": "51"},
                 {"id": "even", "when": {"mti": "0200", "every": 2}, "respond": "61"})
    a, b = pair(counters, plan)
    seen = await fired((a, b), traffic(8))
    assert seen == [
        ("two",), ("two", "even"), ("third",), ("even",), (), ("even",), (), ("even",)]
    assert sum("third" in r for r in seen) == 1 and sum("two" in r for r in seen) == 2
    # each instance counts its own matches and fires; global_matched is the shared count it last saw
    assert a.counters()["third"] == {"matched": 4, "fired": 1, "global_matched": 3}  # stopped asking once passed
    assert b.counters()["third"] == {"matched": 4, "fired": 0, "global_matched": 4}
    assert a.counters()["even"]["global_matched"] == 7 and b.counters()["even"]["global_matched"] == 8
    assert counters[0].current([(a.scope_of("even"), "even")]) == {"even": 8}


async def test_rules_without_a_count_never_touch_the_database(counters: list[FaultCounters]) -> None:
    a, b = pair(counters, rules({"id": "all", "when": {"mti": "0200"}, "respond": "05"}))
    counters[0].close()
    counters[0].url = counters[1].url = "postgresql://127.0.0.1:1/nothing"  # any count would now fail
    assert await fired((a, b), traffic(4)) == [("all",)] * 4
    assert counters[0].failures == counters[1].failures == 0
    assert "global_matched" not in a.counters()["all"]


async def test_a_reload_starts_every_instance_afresh_and_a_patch_keeps_the_count(
        counters: list[FaultCounters]) -> None:
    plan = rules({"id": "third", "when": {"mti": "0200", "nth": 3}, "respond": "05"})
    a, b = pair(counters, plan)
    assert [bool(r) for r in await fired((a, b), traffic(3))] == [False, False, True]
    for engine in (a, b):  # as the supervisor's fan-out does: the same change to every instance
        engine.patch("third", {"respond": "91"})
    assert await fired((a, b), traffic(3, 10)) == [(), (), ()]  # patched: same scope, the count went on
    old_scope = a.scope_of("third")
    for engine in (a, b):
        engine.load(engine.rules)
    assert a.scope_of("third") == b.scope_of("third") != old_scope
    assert [bool(r) for r in await fired((a, b), traffic(3, 20))] == [False, False, True]
    # the old scope counted until each instance saw it pass 3 (b asked once more); the new one from 1
    assert counters[0].current([(old_scope, "third")]) == {"third": 4}
    assert counters[0].current([(a.scope_of("third"), "third")]) == {"third": 3}
    for engine in (a, b):
        engine.reset()
        engine.add({"id": "third", "when": {"mti": "0200", "nth": 3}, "respond": "05"})
    assert a.scope_of("third") == b.scope_of("third")
    assert [bool(r) for r in await fired((a, b), traffic(3, 30))] == [False, False, True]


async def test_other_epochs_and_seeds_count_apart(counters: list[FaultCounters]) -> None:
    plan = rules({"id": "second", "when": {"mti": "0200", "nth": 2}, "respond": "05"})
    a = SharedFaultEngine(plan, seed=7, counters=counters[0], epoch="run-1")
    b = SharedFaultEngine(plan, seed=7, counters=counters[1], epoch="run-2")
    c = SharedFaultEngine(plan, seed=8, counters=counters[1], epoch="run-1")
    assert len({a.scope_of("second"), b.scope_of("second"), c.scope_of("second")}) == 3
    assert await fired((a, b, c), traffic(3)) == [(), (), ()]  # each saw its own first match
    assert await fired((a, b, c), traffic(3, 10)) == [("second",)] * 3


def test_threads_hammering_one_counter_lose_no_update(ledger_url: str) -> None:
    threads, each = 8, 150
    opened = [FaultCounters.open(ledger_url) for _ in range(threads)]
    seen: list[list[int]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def hammer(index: int) -> None:
        start.wait(timeout=30)
        for _ in range(each):
            counts = opened[index].count_blocking([("scope", "r1"), ("scope", "r2")])
            assert counts is not None
            seen[index].append(counts["r1"])

    workers = [threading.Thread(target=hammer, args=(index,)) for index in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        values = sorted(itertools.chain.from_iterable(seen))
        assert values == list(range(1, threads * each + 1))  # every count handed out exactly once
        assert opened[0].current([("scope", "r1"), ("scope", "r2")]) == {"r1": threads * each, "r2": threads * each}
    finally:
        for item in opened:
            item.close()


async def test_frames_waiting_together_are_counted_in_one_statement_each_with_its_own_number(
        counters: list[FaultCounters], monkeypatch: pytest.MonkeyPatch) -> None:
    """While ``run`` serves, 200 frames matching two rules at once take a few statements, not 200, and
    every frame still gets its own count of each rule (1..200, none twice), on two instances at once."""
    statements: list[int] = []
    original = FaultCounters.count_many_blocking

    def counted(self: FaultCounters, frames: list[list[tuple[str, str]]]) -> list[dict[str, int] | None]:
        statements.append(len(frames))
        return original(self, frames)

    monkeypatch.setattr(FaultCounters, "count_many_blocking", counted)
    got: list[dict[str, int] | None] = []

    async def frame(index: int) -> None:
        got.append(await counters[index % 2].count([("scope", "a"), ("scope", "b")]))

    with trio.fail_after(30):
        async with trio.open_nursery() as serving:
            for item in counters:
                await serving.start(item.run)
            async with trio.open_nursery() as frames:
                for index in range(200):
                    frames.start_soon(frame, index)
            serving.cancel_scope.cancel()
    assert all(result is not None for result in got)
    for rule in ("a", "b"):
        assert sorted(result[rule] for result in got if result is not None) == list(range(1, 201))
    assert sum(statements) == 200 and len(statements) < 50  # batched: one round trip serves many frames


async def test_an_unreachable_database_counts_nothing_and_says_so_once(
        counters: list[FaultCounters], caplog: pytest.LogCaptureFixture) -> None:
    a = SharedFaultEngine(rules({"id": "all2", "when": {"mti": "0200", "every": 1}, "respond": "05"}), seed=7,
                          counters=counters[0], epoch="e")
    assert await fired((a,), traffic(1)) == [("all2",)]
    counters[0].close()
    counters[0].url = f"postgresql://nobody@127.0.0.1:{_free_port()}/none"
    with caplog.at_level(logging.WARNING, logger="switch.faults"):
        assert await fired((a,), traffic(3, 10)) == [(), (), ()]  # not counted: the counted rule does not fire
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "do not fire until the database answers again" in errors[0], errors
    assert counters[0].failures == 3
    assert a.counters()["all2"] == {"matched": 4, "fired": 1, "global_matched": 1}


def test_a_database_without_the_table_is_refused_in_one_line(pg_url: str) -> None:
    with pytest.raises(LedgerError, match="no fault_counters table") as caught:
        FaultCounters.open(pg_url)
    assert "\n" not in str(caught.value)


async def test_two_switches_on_one_database_fire_nth_once(ledger_url: str, tmp_path: Path) -> None:
    scenario = tmp_path / "counted.toml"
    scenario.write_text('[scenario]\nname = "counted"\nseed = 5\n\n[[fault]]\nid = "third"\n'
                        'when = { mti = "0200", nth = 3 }\nrespond = "05"\n')
    switches = [build_switch(DIALECT, FRAMING, SwitchOptions(
        port=0, ledger=ledger_url, journal="none", admin_port=None, multi_instance=True, require_signon=False,
        scenario=str(scenario), fault_epoch="e2e")) for _ in range(2)]
    codes: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            ports = [(await nursery.start(switch.server.serve))[0].socket.getsockname()[1] for switch in switches]
            for stan in range(1, 7):  # a terminal per message: no waiting for another instance to give one back
                frames = await connect(ports[stan % 2])
                try:
                    codes.append((await exchange(frames, purchase(stan, terminal=f"TERM{stan:04d}")))[39])
                finally:
                    await frames.aclose()
            for switch in switches:
                switch.server.shutdown()
    finally:
        for switch in switches:
            with contextlib.suppress(Exception):
                switch.server.ledger.close()
            if switch.runtime.faults.shared is not None:
                switch.runtime.faults.shared.close()
    assert codes == ["00", "00", "05", "00", "00", "00"]
    assert [s.runtime.faults.counters()["third"]["fired"] for s in switches] == [0, 1]  # stan 3 went to the second


def test_the_workers_of_one_run_share_a_seed_and_count_apart_from_another_run(ledger_url: str) -> None:
    made = [build_switch(DIALECT, FRAMING, SwitchOptions(port=0, ledger=ledger_url, journal="none", admin_port=None,
                                                         multi_instance=True, fault_epoch=epoch))
            for epoch in ("run-a", "run-a", "run-b")]
    try:
        seeds = [switch.runtime.faults.seed for switch in made]
        assert seeds[0] == seeds[1] != seeds[2]  # no --seed, none in the scenario: one per run, not per worker
        assert all(isinstance(switch.runtime.faults, SharedFaultEngine) for switch in made)
    finally:
        for switch in made:
            switch.server.ledger.close()
            if switch.runtime.faults.shared is not None:
                switch.runtime.faults.shared.close()
