"""The terminal's Trio driver against the real switch, in-process over memory streams.

The switch is the real one (``switch.server.SwitchServer`` over ``switch.host.Host``, an in-memory
ledger, the group committer running, ``switch.faults.FaultEngine`` for misbehaviour); each client
connection is a ``trio.testing.memory_stream_pair`` whose server side runs ``handle_stream``. Time is
pytest-trio's ``autojump_clock``: the 30 s response timeouts, backoffs and delayed replies are all
virtual, and the switch reads the same virtual clock (field 7 is checked against it).

The group committer writes the ledger in a worker thread. While a thread runs, the autojump clock
sees an idle event loop and jumps to the next deadline — the terminal's response timeout — which
would turn approved purchases into timeouts that never happen in real time. So these tests run
``trio.to_thread.run_sync`` inline (``inline_threads``); one test runs real threads on the real clock.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from switch.codec import Codec, load_dialect
from switch.codec.dialect import Dialect
from switch.codec.framing import Framing
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer
from terminal.client import ClientError, TerminalClient, TrioClock
from terminal.link import _stream_error, describe
from terminal.policy import Drain, Echo, Note, Purchase, Refund, ReverseLast, Settle, SignOn, TerminalPolicy
from terminal.profile import TerminalProfile
from terminal.store import TerminalStore

ISO = load_dialect("iso87-binary")
CUP = load_dialect("cup-pos")
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
TID = "TERM0001"
MID = "MERCHANT0000001"
PAN = "4761739001010010"  # approved by the default test-card table
EXPIRY = "3012"


@dataclass
class Rig:
    """A running switch and a connect factory for terminals; ``refuse`` makes connecting fail."""

    dialect: Dialect
    server: SwitchServer
    faults: FaultEngine
    clock: TrioClock
    nursery: trio.Nursery
    connections: int = 0
    refuse: bool = False
    hang: bool = False  # connecting never completes (a black-holed SYN)
    notes: list[Note] = field(default_factory=list)

    @property
    def ledger(self) -> Ledger:
        return self.server.ledger

    async def connect(self) -> trio.abc.Stream:
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.hang:
            await trio.sleep_forever()
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.handle_stream, server_side)
        self.connections += 1
        return client_side

    @asynccontextmanager
    async def terminal(self, store: TerminalStore | None = None, *,
                       confirmation: Callable[[], Awaitable[None]] | None = None,
                       **settings: Any) -> AsyncIterator[TerminalClient]:
        """A client for terminal TID over ``store`` (default: a throw-away in-memory one)."""
        own_store = store is None
        store = store or TerminalStore.open(":memory:", TID)
        profile = TerminalProfile.for_dialect(self.dialect, TID, MID, **settings)
        policy = TerminalPolicy(profile, store, self.clock.now())
        codec = Codec(self.dialect)
        framing = Framing.from_dialect(self.dialect)
        try:
            async with TerminalClient(policy, codec, framing, self.connect, self.clock,
                                      on_note=self.notes.append, confirmation=confirmation) as client:
                yield client
        finally:
            if own_store:
                store.close()

    def note_kinds(self) -> list[str]:
        return [note.kind for note in self.notes]


@asynccontextmanager
async def switch(dialect: Dialect = ISO, *, idle_timeout: float | None = 300.0, **host: Any) -> AsyncIterator[Rig]:
    clock = TrioClock.starting_at(T0)
    ledger = Ledger.open(":memory:")
    faults = FaultEngine(seed=1)
    server = SwitchServer(
        codec=Codec(dialect), framing=Framing.from_dialect(dialect),
        host=Host(HostConfig.for_dialect(dialect, **host), ledger, default_scenario().response_rules),
        ledger=ledger, committer=GroupCommitter(ledger),
        config=ServerConfig(port=0, idle_timeout=idle_timeout, grace_period=2.0),
        clock=lambda: datetime.fromtimestamp(clock.now(), UTC), faults=faults,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        yield Rig(dialect, server, faults, clock, nursery)
        nursery.cancel_scope.cancel()


def sale(amount: int = 1234) -> Purchase:
    return Purchase(amount, PAN, EXPIRY)


def only_posting(rig: Rig) -> Any:
    postings = rig.ledger.postings(terminal=TID)
    assert len(postings) == 1, postings
    return postings[0]


# ---------------------------------------------------------------------------------------------


async def test_signon_then_purchase_approved_on_one_connection(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal() as client:
        signon = await client.run_command(SignOn())
        assert (signon.kind, signon.response_code) == ("approved", "00")
        outcome = await client.run_command(sale(1234))
        assert outcome.kind == "approved", outcome
        assert len(outcome.rrn) == 12 and outcome.auth_code and outcome.amount == 1234
        posting = only_posting(rig)
        assert posting.approved and not posting.reversed
        assert (posting.stan, posting.rrn, posting.auth_code) == (outcome.stan, outcome.rrn, outcome.auth_code)
        entry = client.policy.store.entry(outcome.journal_id)
        assert entry.state == "approved" and entry.money_moved is True
        assert client.policy.store.reversals() == []
        assert rig.connections == 1 and client.connected
        assert trio.current_time() < 1  # nothing waited on a timeout


async def test_purchase_signs_on_first_by_itself(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal() as client:
        outcome = await client.run_command(sale())
        assert outcome.kind == "approved"
        assert "signed-on" in rig.note_kinds()


async def test_dropped_response_times_out_and_the_reversal_undoes_the_posting(
    autojump_clock: Any, inline_threads: None
) -> None:
    async with switch() as rig, rig.terminal() as client:
        await client.run_command(SignOn())
        rig.faults.add({"when": {"mti": "0200"}, "drop_response": True})
        started = trio.current_time()
        outcome = await client.run_command(sale(2500))
        assert outcome.kind == "reversed", outcome
        assert 30.0 <= trio.current_time() - started < 31.0  # one response timeout, then the 0410 at once
        posting = only_posting(rig)
        assert posting.approved and posting.reversed  # the host had approved; the reversal undid it
        (reversal,) = rig.ledger.reversals(terminal=TID)
        assert (reversal.mti, reversal.original_stan, reversal.effect) == ("0400", outcome.stan, "reversed")
        store = client.policy.store
        assert store.entry(outcome.journal_id).state == "reversed" and store.reversals() == []
        kinds = rig.note_kinds()
        assert kinds.index("exchange-failed") < kinds.index("reversal-queued") < kinds.index("reversal-cleared")


async def test_late_reply_is_discarded_and_the_reversal_stands(
    autojump_clock: Any, inline_threads: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="terminal")
    async with switch() as rig, rig.terminal() as client:
        await client.run_command(SignOn())
        rig.faults.add({"when": {"mti": "0200", "first": 1}, "delay_response": "35s"})
        outcome = await client.run_command(sale(700))
        assert outcome.kind == "reversed", outcome
        await trio.sleep(10)  # the 0210 arrives at 35 s, on the same connection, after the outcome
        echo = await client.run_command(Echo())
        assert echo.kind == "approved"
        late = [note for note in rig.notes if note.kind == "late-reply-discarded"]
        assert [note.stan for note in late] == [outcome.stan]
        assert client.policy.store.entry(outcome.journal_id).state == "reversed"  # the late 00 changed nothing
        assert only_posting(rig).reversed
        assert rig.connections == 1
    assert any("late-reply-discarded" in record.getMessage() for record in caplog.records)


async def test_connection_reset_after_commit_reconnects_and_reverses(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal() as client:
        await client.run_command(SignOn())
        rig.faults.add({"when": {"mti": "0200", "first": 1}, "reset": "after"})
        outcome = await client.run_command(sale(990))
        assert outcome.kind == "reversed", outcome
        assert rig.connections == 2  # the reversal went out on a new connection
        assert only_posting(rig).reversed
        assert trio.current_time() < 1  # a reset is noticed at once, not at the timeout
        again = await client.run_command(sale(991))
        assert again.kind == "approved"


@pytest.mark.parametrize(
    ("fault", "failure"),
    [
        ({"garbage": 24}, "unparsable reply"),
        ({"wrong_echo": ["amount"]}, "field 4 not echoed"),
        ({"truncate": True}, "stream ended mid-frame"),
    ],
)
async def test_a_reply_the_terminal_cannot_trust_is_reversed(
    fault: dict[str, Any], failure: str, autojump_clock: Any, inline_threads: None
) -> None:
    async with switch() as rig, rig.terminal() as client:
        await client.run_command(SignOn())
        rig.faults.add({"when": {"mti": "0200", "first": 1}, **fault})
        outcome = await client.run_command(sale(6100))
        assert outcome.kind == "reversed", outcome
        assert only_posting(rig).reversed
        (failed,) = [note for note in rig.notes if note.kind == "exchange-failed"]
        assert failure in failed.text and failed.stan == outcome.stan


async def test_a_duplicated_reply_is_discarded(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal() as client:
        await client.run_command(SignOn())
        rig.faults.add({"when": {"mti": "0200", "first": 1}, "duplicate": True})
        outcome = await client.run_command(sale(6200))
        assert outcome.kind == "approved"
        assert (await client.run_command(Echo())).kind == "approved"
        (discarded,) = [note for note in rig.notes if note.kind == "unexpected-message-discarded"]
        assert discarded.stan == outcome.stan
        assert client.policy.store.entry(outcome.journal_id).state == "approved"


async def test_reset_with_the_host_unreachable_leaves_the_reversal_queued(
    autojump_clock: Any, inline_threads: None
) -> None:
    async with switch() as rig, rig.terminal() as client:
        await client.run_command(SignOn())
        rig.faults.add({"when": {"mti": "0200", "first": 1}, "reset": "after"})
        rig.refuse = True  # after the reset nothing answers: reconnecting fails three times
        outcome = await client.run_command(sale(1500))
        assert outcome.kind == "unknown-queued", outcome
        assert rig.note_kinds().count("connect-failed") == 3
        store = client.policy.store
        assert [r.reason for r in store.reversals()] == ["98"]
        assert store.entry(outcome.journal_id).money_moved is None
        assert only_posting(rig).approved and not only_posting(rig).reversed  # the host still thinks it moved
        rig.refuse = False
        drained = await client.run_command(Drain())
        assert drained.kind == "completed"
        assert store.reversals() == [] and store.entry(outcome.journal_id).state == "reversed"
        assert only_posting(rig).reversed


@pytest.mark.parametrize(
    ("trouble", "reason", "elapsed"),
    [
        ("refuse", "Connection refused", 2.0 + 4.0),  # the backoff between the 3 attempts
        ("hang", "connect timed out after 10s", 3 * 10.0 + 2.0 + 4.0),  # plus 10 s per attempt
    ],
)
async def test_unreachable_host_fails_after_the_connect_attempts(
    trouble: str, reason: str, elapsed: float, autojump_clock: Any, inline_threads: None
) -> None:
    async with switch() as rig, rig.terminal() as client:
        setattr(rig, trouble, True)
        started = trio.current_time()
        outcome = await client.run_command(sale())
        assert outcome.kind == "failed" and reason in outcome.text
        assert trio.current_time() - started == pytest.approx(elapsed)
        assert rig.note_kinds().count("connect-failed") == 3
        assert client.policy.store.entries() == []  # nothing was stored: nothing was sent


async def test_closed_client_reconnects_at_the_next_command(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal() as client:
        assert (await client.run_command(Echo())).kind == "approved"
        await client.aclose()
        assert not client.connected
        assert (await client.run_command(sale())).kind == "approved"
        assert rig.connections == 2


async def test_idle_close_between_commands_is_noticed_before_the_next_purchase(
    autojump_clock: Any, inline_threads: None
) -> None:
    async with switch(idle_timeout=30.0) as rig, rig.terminal() as client:
        await client.run_command(SignOn())
        await trio.sleep(60)  # the switch closes the idle connection at 30 s
        outcome = await client.run_command(sale())
        assert outcome.kind == "approved", outcome  # not an unknown outcome on a dead connection
        assert rig.connections == 2
        assert "exchange-failed" not in rig.note_kinds()


async def test_settle_balanced_closes_the_batch_on_both_sides(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal() as client:
        assert (await client.run_command(sale(1000))).kind == "approved"
        assert (await client.run_command(sale(2000))).kind == "approved"
        assert (await client.run_command(Refund(500, PAN, EXPIRY))).kind == "approved"
        outcome = await client.run_command(Settle())
        assert (outcome.kind, outcome.batch, outcome.response_code) == ("approved", "000001", "00"), outcome
        assert client.policy.store.batch == "000002"
        (batch,) = [b for b in rig.ledger.batches(terminal=TID) if b.batch == "000001"]
        assert batch.status == "closed"
        assert (batch.debit_count, batch.debit_amount, batch.credit_count, batch.credit_amount) == (2, 3000, 1, 500)
        assert "upload-started" not in rig.note_kinds()


async def test_settle_answered_95_uploads_then_960000_closes_and_reports_unbalanced(
    autojump_clock: Any, inline_threads: None
) -> None:
    async with switch() as rig, rig.terminal() as client:
        for amount in (1100, 2200):
            assert (await client.run_command(sale(amount))).kind == "approved"
        rig.faults.add({"when": {"mti": "0500", "first": 1}, "respond": "95"})
        outcome = await client.run_command(Settle())
        assert outcome.kind == "unbalanced", outcome  # never reported as balanced after 95 → upload → 00
        assert outcome.text.startswith("settlement unbalanced: uploaded, contact the acquirer")
        assert "upload-started" in rig.note_kinds()
        uploads = rig.ledger.uploads(TID, "000001")
        assert sorted(record.amount for record in uploads) == [1100, 2200]
        (batch,) = [b for b in rig.ledger.batches(terminal=TID) if b.batch == "000001"]
        assert batch.status == "closed" and batch.upload_count == 2
        # the first 0500 was answered 95 by the fault without reaching the host; the second closed the batch
        assert [s.result for s in rig.ledger.settlements(TID)] == ["accepted-after-upload"]
        assert client.policy.store.batch == "000002"


async def test_void_reverses_the_last_purchase(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal() as client:
        bought = await client.run_command(sale(4200))
        voided = await client.run_command(ReverseLast())
        assert voided.kind == "reversed" and voided.stan == bought.stan
        assert only_posting(rig).reversed


async def test_restart_sends_the_stored_reversal_before_the_next_purchase(
    autojump_clock: Any, inline_threads: None, tmp_path: Path
) -> None:
    path = tmp_path / "terminal.sqlite"
    async with switch() as rig:
        store = TerminalStore.open(path, TID)
        async with rig.terminal(store) as client:
            await client.run_command(SignOn())
            rig.faults.add({"when": {"mti": "0200"}, "drop_response": True})
            with trio.move_on_after(5):  # the process "dies" while waiting for the 0210
                await client.run_command(sale(3300))
            with pytest.raises(ClientError, match="interrupted"):
                await client.run_command(Echo())
        store.close()
        assert only_posting(rig).approved  # the host approved the purchase nobody heard about
        rig.faults.reset()

        store = TerminalStore.open(path, TID)
        async with rig.terminal(store) as client:
            assert "recovered" in rig.note_kinds()
            outcome = await client.run_command(sale(3400))
            assert outcome.kind == "approved", outcome
        first, second = rig.ledger.postings(terminal=TID)
        (reversal,) = rig.ledger.reversals(terminal=TID)
        assert first.amount == 3300 and first.reversed
        assert reversal.original_stan == first.stan and first.seq < reversal.seq < second.seq
        assert second.amount == 3400 and not second.reversed
        assert [e.state for e in store.entries()] == ["reversed", "approved"]
        store.close()


async def test_cup_terminal_frames_with_a_tpdu_and_settles(autojump_clock: Any, inline_threads: None) -> None:
    async with switch(CUP) as rig, rig.terminal() as client:
        assert client.tpdu is not None
        outcome = await client.run_command(sale(1888))
        assert outcome.kind == "approved", outcome
        assert (await client.run_command(Settle())).kind == "approved"
        assert only_posting(rig).approved


async def test_store_calls_offloaded_to_threads_on_the_real_clock(tmp_path: Path) -> None:
    """No autojump here: real worker threads for the ledger flush and for the store's fsyncs."""
    with trio.fail_after(20):
        async with switch() as rig:
            store = TerminalStore.open(tmp_path / "t.sqlite", TID)
            profile = TerminalProfile.for_dialect(ISO, TID, MID)
            policy = TerminalPolicy(profile, store, rig.clock.now())
            async with TerminalClient(policy, Codec(ISO), Framing.from_dialect(ISO), rig.connect, rig.clock,
                                      offload_store=True) as client:
                assert (await client.run_command(sale(5100))).kind == "approved"
                assert (await client.run_command(Settle())).kind == "approved"
            store.close()


async def test_client_must_be_entered_and_tpdu_must_fit_the_framing() -> None:
    store = TerminalStore.open(":memory:", TID)
    policy = TerminalPolicy(TerminalProfile.for_dialect(ISO, TID, MID), store, T0)
    client = TerminalClient(policy, Codec(ISO), Framing.from_dialect(ISO), lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ClientError, match="async with"):
        await client.run_command(Echo())
    with pytest.raises(ValueError, match="carries none"):
        TerminalClient(policy, Codec(ISO), Framing.from_dialect(ISO), client._connect, tpdu=b"\x60\0\1\0\0")
    with pytest.raises(ValueError, match="5 bytes"):
        TerminalClient(policy, Codec(CUP), Framing.from_dialect(CUP), client._connect, tpdu=b"\x60")
    store.close()


# ---------------------------------------------------------------------------------------------
# Cardholder confirmation against the real host (virtual clock)


async def test_an_unconfirmed_sale_is_reversed_at_the_host(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal(confirmation=trio.sleep_forever) as client:
        started = trio.current_time()
        outcome = await client.run_command(Purchase(1500, PAN, EXPIRY, confirm_timeout=45.0))
        assert outcome.kind == "reversed" and outcome.text.startswith("cancelled: the cardholder did not confirm")
        assert trio.current_time() - started >= 45.0
        posting = only_posting(rig)
        assert posting.approved and posting.reversed  # approved, then reversed: nothing charged


async def test_a_confirmed_sale_stands(autojump_clock: Any, inline_threads: None) -> None:
    async def confirms_after_a_while() -> None:
        await trio.sleep(10)

    async with switch() as rig, rig.terminal(confirmation=confirms_after_a_while) as client:
        outcome = await client.run_command(Purchase(1500, PAN, EXPIRY, confirm_timeout=45.0))
        assert outcome.kind == "approved"
        assert only_posting(rig).reversed is False


async def test_a_deferred_sync_store_is_synced_before_every_request_leaves(
        autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    """Store, then send: with commits that do not fsync, the driver syncs before it writes a frame,
    so the sale's journal entry and reversal are on disk before the sale is on the wire."""
    store = TerminalStore.open(tmp_path / "t.sqlite", TID, deferred_sync=True)
    events: list[str] = []
    real_sync = store.sync

    def sync() -> None:
        events.append("sync" if store.needs_sync else "sync (nothing to do)")
        real_sync()

    store.sync = sync  # type: ignore[method-assign]
    async with switch() as rig:
        real_connect = rig.connect

        async def connect() -> trio.abc.Stream:
            stream = await real_connect()
            real_send = stream.send_all

            async def send_all(data: bytes | bytearray | memoryview) -> None:
                events.append("unsynced write" if store.needs_sync else "write")
                await real_send(data)

            stream.send_all = send_all  # type: ignore[method-assign]
            return stream

        policy = TerminalPolicy(TerminalProfile.for_dialect(ISO, TID, MID), store, rig.clock.now())
        async with TerminalClient(policy, Codec(ISO), Framing.from_dialect(ISO), connect, rig.clock,
                                  offload_sync=True) as client:
            assert (await client.run_command(sale(4200))).kind == "approved"
    assert "unsynced write" not in events
    assert events.count("write") == 2 and events[:2] == ["sync", "write"]  # sign-on (its STAN), then the sale
    assert events[2:] == ["sync", "write"]
    store.close()
    with TerminalStore.open(tmp_path / "t.sqlite", TID) as reopened:
        assert [e.state for e in reopened.entries()] == ["approved"]


@pytest.mark.parametrize("error", [ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
                                   BrokenPipeError(errno.EPIPE, "Broken pipe"),
                                   OSError(errno.EBADF, "Bad file descriptor")])
def test_a_socket_error_reads_as_trio_reports_it(error: OSError) -> None:
    """The link calls the socket itself on plain TCP; its errors must read as Trio's ``SocketStream``
    reports them (the connection-lost notes are the same either way)."""
    from trio._highlevel_socket import _translate_socket_errors_to_stream_errors

    with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)) as trio_says, \
            _translate_socket_errors_to_stream_errors():
        raise error
    ours = _stream_error(error)
    assert type(ours) is type(trio_says.value)
    assert str(ours) == str(trio_says.value)
    assert ours.__cause__ is trio_says.value.__cause__
    assert describe(ours, "write failed") == describe(trio_says.value, "write failed")
