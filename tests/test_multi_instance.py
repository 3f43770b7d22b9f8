"""Two switches acting as ONE host on a shared PostgreSQL ledger (docs/scaleout.md), over real loopback
sockets: two ``SwitchServer``s in one Trio program, each with its own multi-instance ``Ledger`` and
``TerminalOwner``. A terminal moving between them with its sign-on session (also driven by the
terminal API against two whole switches), repeats and reversals reaching the other instance,
the same request at both at once, settlement totals across instances, and a crashed instance whose
uncommitted decision the survivor never sees.

Idle release is driven by hand (``release``: a far later owner clock, then the database unlock), never
by sleeping; the periodic task runs with a sweep interval longer than any test.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import trio

from switch.app import SwitchOptions, build_switch
from switch.codec import Message
from switch.codec.composite import SettlementTotals
from switch.commit import CommitError, GroupCommitter
from switch.exception_groups import leaves as exception_leaves
from switch.host import Host, HostConfig
from switch.ledger import Ledger, LedgerError
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer
from switch.server_terminals import TerminalOwner
from terminal.api import open_terminal
from terminal.policy import Note
from tests.pg_server import terminate_ledger_sessions
from tests.test_server import CODEC, DIALECT, F7, FRAMING, NOW, connect, exchange, network, purchase, reversal_of

T = "TERM0001"


@dataclass
class Instance:
    server: SwitchServer
    owner: TerminalOwner
    port: int = 0
    now: float = 0.0  # the owner's clock: moved by hand to make terminals idle

    @property
    def ledger(self) -> Ledger:
        return self.server.ledger

    async def release(self) -> None:
        """Give back every terminal (all idle at a far later time), then drop their database locks."""
        self.now += 1e6
        self.owner.sweep()
        await trio.to_thread.run_sync(self.ledger.unlock_released_terminals)

    async def ask(self, request: Message) -> Message:
        frames = await connect(self.port)
        try:
            return await exchange(frames, request)
        finally:
            await frames.aclose()


def make_instance(pg_url: str, *, wait: float = 0.3, require_signon: bool = False) -> Instance:
    ledger = Ledger.open(pg_url, multi_instance=True)
    host = Host(HostConfig.for_dialect(DIALECT, require_signon=require_signon), ledger,
                default_scenario().response_rules)
    holder: list[Instance] = []
    owner = TerminalOwner(ledger, wait=wait, idle_seconds=60.0, sweep_every=3600.0, clock=lambda: holder[0].now)
    server = SwitchServer(codec=CODEC, framing=FRAMING, host=host, ledger=ledger, committer=GroupCommitter(ledger),
                          config=ServerConfig(port=0, idle_timeout=None, grace_period=2.0), clock=lambda: NOW,
                          owner=owner)
    holder.append(Instance(server, owner))
    return holder[0]


@asynccontextmanager
async def serving(*instances: Instance) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for instance in instances:
            listeners = await nursery.start(instance.server.serve)
            instance.port = listeners[0].socket.getsockname()[1]
        yield
        for instance in instances:
            instance.server.shutdown()


def committed(pg_url: str) -> Ledger:
    """A fresh reader of what is committed (replayed from the database, decides nothing)."""
    return Ledger.open(pg_url)


@pytest.fixture
def pair(pg_url: str) -> list[Instance]:
    return [make_instance(pg_url), make_instance(pg_url)]


async def test_a_terminal_signed_on_at_a_transacts_at_b(pg_url: str) -> None:
    """The session is a row of the terminal: it moves with the terminal, and so does its end."""
    a, b = make_instance(pg_url, require_signon=True), make_instance(pg_url, require_signon=True)
    async with serving(a, b):
        assert (await a.ask(network("001", stan=1)))[39] == "00"
        assert (await a.ask(purchase(2)))[39] == "00"
        busy = await b.ask(purchase(3))  # A still owns the terminal: B answers 91, decides nothing
        assert busy[39] == "91" and 37 not in busy.fields
        assert b.owner.stats.busy == 1
        await a.release()
        assert T not in a.server.host.sessions  # given back: A's memory of it is dropped, the database keeps it
        assert (await b.ask(purchase(3)))[39] == "00"  # no new sign-on: B restored A's session
        assert b.server.host.sessions[T] == NOW.timestamp()
        assert (await b.ask(network("002", stan=4)))[39] == "00"  # signed off at B...
        await b.release()
        assert (await a.ask(purchase(5)))[39] == a.server.host.config.signon_code  # ...so A wants a sign-on
    with contextlib.closing(committed(pg_url)) as ledger:
        assert sorted(p.stan for p in ledger.postings(T)) == ["000002", "000003"]
        session = ledger.session(T)
        assert session is not None and session.signed_on_at is None and session.signons == 1


async def test_the_terminal_api_signs_on_at_one_switch_and_buys_at_the_other(pg_url: str) -> None:
    """Two whole switches (``build_switch``, as ``serve --multi-instance --terminal-idle 0.2``) and the
    terminal API: sign on and buy at A; once A has given the idle terminal back, the same terminal
    (its connection closed, the next one going to B) buys at B, approved with no second sign-on."""
    options = SwitchOptions(port=0, ledger=pg_url, journal="none", admin_port=None, multi_instance=True,
                            terminal_idle=0.2, require_signon=True, grace_period=1.0)
    switches = [build_switch(DIALECT, FRAMING, options) for _ in range(2)]
    ports: list[int] = []
    target = [0]  # which switch the terminal's next connection goes to

    async def connect_to_target() -> trio.abc.Stream:
        return await trio.open_tcp_stream("127.0.0.1", ports[target[0]])

    notes: list[Note] = []
    async with trio.open_nursery() as nursery:
        for switch in switches:
            listeners, _ = await nursery.start(functools.partial(switch.run, handle_signals=False))
            ports.append(listeners[0].socket.getsockname()[1])
        a_owner, b_owner = (switch.runtime.owner for switch in switches)
        assert a_owner is not None and b_owner is not None
        async with open_terminal(dialect=DIALECT, terminal_id=T, merchant_id="MERCHANT0000001",
                                 connect=connect_to_target, on_note=notes.append) as terminal:
            assert terminal.signed_on
            assert (await terminal.purchase(1000)).approved
            with trio.fail_after(15):  # A's periodic task (every 2 s) gives the idle terminal back
                while a_owner.stats.released < 1:
                    await trio.sleep(0.05)
            target[0] = 1
            await terminal.client.aclose()  # the next operation connects again: to B
            sale = await terminal.purchase(2000)
            assert sale.approved, sale
        assert [note.kind for note in notes].count("signed-on") == 1  # only at A
        assert b_owner.stats.acquired == 1 and T in switches[1].server.host.sessions
        for switch in switches:
            switch.server.shutdown()
    with contextlib.closing(committed(pg_url)) as ledger:
        assert [p.amount for p in ledger.postings(T)] == [1000, 2000]


async def test_repeat_and_reversal_at_b_of_an_original_decided_at_a(pair: list[Instance], pg_url: str) -> None:
    a, b = pair
    sale = purchase(7, amount=2500)
    async with serving(a, b):
        original = await a.ask(sale)
        assert original[39] == "00"
        await a.release()
        repeat = await b.ask(Message("0201", dict(sale.fields)))
        assert (repeat[39], repeat[37], repeat[38]) == (original[39], original[37], original[38])
        assert (await b.ask(sale))[39] == "94"  # the same 0200 again: a duplicate, not a second sale
        reversed_ = await b.ask(reversal_of(sale, 8))
        assert (reversed_.mti, reversed_[39]) == ("0410", "00")
        again = await b.ask(reversal_of(sale, 8, "0401"))
        assert (again.mti, again[39]) == ("0410", "00")
        await b.release()
        assert (await a.ask(reversal_of(sale, 8, "0401")))[39] == "00"  # and back at A: still one reversal
    with contextlib.closing(committed(pg_url)) as ledger:
        postings = ledger.postings(T)
        assert [p.stan for p in postings] == ["000007"]
        assert len(ledger.reversals(T)) == 1


async def test_the_same_request_at_both_instances_at_once_books_once(pair: list[Instance], pg_url: str) -> None:
    a, b = pair
    for instance in pair:
        instance.owner.wait = 20.0  # the loser waits for the winner to give the terminal back
    sale = purchase(11, amount=990)
    answers: dict[str, Message] = {}
    first_send, first_receive = trio.open_memory_channel[str](2)

    async def send(name: str, instance: Instance) -> None:
        answers[name] = await instance.ask(sale)
        await first_send.send(name)

    async with serving(a, b):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "a", a)
                nursery.start_soon(send, "b", b)
                winner = await first_receive.receive()
                await (a if winner == "a" else b).release()  # the loser takes over and sees the booking
    codes = {name: reply[39] for name, reply in answers.items()}
    assert codes[winner] == "00" and codes["b" if winner == "a" else "a"] == "94"
    with contextlib.closing(committed(pg_url)) as ledger:
        assert len(ledger.postings(T)) == 1


async def test_settlement_totals_are_exact_across_instances(pair: list[Instance], pg_url: str) -> None:
    a, b = pair
    sales = [purchase(20 + n, amount=1000 * (n + 1)) for n in range(3)]
    async with serving(a, b):
        for sale in sales[:2]:
            assert (await a.ask(sale))[39] == "00"
        await a.release()
        assert (await b.ask(sales[2]))[39] == "00"
        assert (await b.ask(reversal_of(sales[0], 30)))[39] == "00"
        await b.release()
        wrong = SettlementTotals(3, 6000, 0, 0)  # counts the reversed sale: out of balance
        settle = Message("0500", {3: "920000", 7: F7, 11: "000031", 41: T, 42: "MERCHANT0000001",
                                  **wrong.to_iso_fields()})
        assert (await a.ask(settle))[39] == "95"
        await a.release()
        right = SettlementTotals(3, 6000, 0, 0, debit_reversal_count=1, debit_reversal_amount=1000)  # A and B
        settle = Message("0500", {3: "920000", 7: F7, 11: "000032", 41: T, 42: "MERCHANT0000001",
                                  **right.to_iso_fields()})
        assert (await b.ask(settle))[39] == "00"
    with contextlib.closing(committed(pg_url)) as ledger:
        assert [s.result for s in ledger.settlements(T)] == ["unbalanced", "balanced"]


async def test_a_crashed_instance_leaves_only_committed_rows_to_the_next(pg_url: str) -> None:
    a, b = make_instance(pg_url), make_instance(pg_url, wait=5.0)
    kept, lost = purchase(40, amount=4000), purchase(41, amount=4100)
    async with trio.open_nursery() as outer, serving(b):
        crashed = trio.Event()

        async def run_a() -> None:
            with pytest.raises(BaseException) as raised:  # the switch stops on the lost locks
                async with serving(a):
                    original = await a.ask(kept)
                    assert original[39] == "00"
                    # decided at A (rows in memory, not yet flushed), then the process dies at once
                    decision = a.server.host.handle(lost, NOW)
                    assert decision.response is not None and decision.response[39] == "00"
                    terminate_ledger_sessions(pg_url, a.ledger)
                    crashed.set()
                    assert decision.commit_seq is not None
                    await a.server.committer.wait_committed(decision.commit_seq)  # refused: CommitError
                    await trio.sleep_forever()
            leaves = exception_leaves(raised.value)
            assert any(isinstance(leaf, CommitError | LedgerError) for leaf in leaves), leaves

        outer.start_soon(run_a)
        await crashed.wait()
        repeat = await b.ask(Message("0201", dict(kept.fields)))  # B sees what A committed...
        assert repeat[39] == "00" and b.owner.stats.acquired == 1
        fresh = await b.ask(lost)  # ...and not what A decided but never committed: a new sale
        assert fresh[39] == "00"
    with contextlib.closing(committed(pg_url)) as ledger:
        assert sorted(p.stan for p in ledger.postings(T)) == ["000040", "000041"]
        assert len(ledger.postings(T)) == 2


async def test_a_lost_lock_session_stops_the_instance_without_deciding(pg_url: str) -> None:
    a = make_instance(pg_url)
    with pytest.raises(BaseException) as raised:  # the switch stops: no decision without the locks
        async with serving(a):
            assert (await a.ask(purchase(50)))[39] == "00"
            ownership = a.ledger._ownership
            assert ownership is not None and ownership.control._conn is not None
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (ownership.control._conn.info.backend_pid,))
            await trio.to_thread.run_sync(ledger_ping_fails, a.ledger)
            frames = await connect(a.port)
            await frames.send_frame(CODEC.encode(purchase(51)))
            with trio.fail_after(5):
                assert await frames.receive_frame() is None  # closed unanswered
            await trio.sleep_forever()  # the owner task stops the switch
    assert any(isinstance(leaf, LedgerError) for leaf in exception_leaves(raised.value))
    assert a.owner.failure is not None


def ledger_ping_fails(ledger: Ledger) -> None:
    with pytest.raises(LedgerError):
        ledger.check_locks()


def test_multi_instance_is_refused_on_a_sqlite_ledger(tmp_path: Path) -> None:
    options = SwitchOptions(port=0, ledger=str(tmp_path / "l.sqlite"), journal="none", admin_port=None,
                            multi_instance=True)
    with pytest.raises(ValueError, match="needs a postgresql:// ledger"):
        build_switch(DIALECT, FRAMING, options)


async def test_concurrent_requests_of_a_new_terminal_share_one_take_over(pair: list[Instance]) -> None:
    a, _ = pair
    async with serving(a):
        codes: list[str] = []

        async def one(stan: int) -> None:
            codes.append((await a.ask(purchase(stan, terminal="TERM0009")))[39])

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for stan in range(60, 68):
                    nursery.start_soon(one, stan)
    assert codes == ["00"] * 8
    assert a.owner.stats.acquired == 1  # one fetch for all eight


async def test_faulted_requests_also_wait_for_the_terminal(pair: list[Instance], pg_url: str) -> None:
    a, b = pair
    b.server.faults.add({"id": "slow", "delay_request": 0.01})  # every request of B takes the faulted path
    async with serving(a, b):
        assert (await a.ask(purchase(70)))[39] == "00"
        assert (await b.ask(purchase(71)))[39] == "91"  # A owns it: B decides nothing
        await a.release()
        assert (await b.ask(purchase(71)))[39] == "00"
        assert (await b.ask(Message("0201", dict(purchase(70).fields))))[39] == "00"  # A's original, from B
    with contextlib.closing(committed(pg_url)) as ledger:
        assert sorted(p.stan for p in ledger.postings(T)) == ["000070", "000071"]
