"""The driver reading replies inline (no reader task) — on by default on plain TCP connections.

Over real loopback TCP against a small scripted host: a close between commands and a late
duplicate reply are seen before the next command (the driver polls the socket), never as an
unknown outcome of the next purchase. Over memory streams with ``inline_reads=True`` and the
autojump clock: timeouts still give a 0400 and 0401 repeats, and a reply after its deadline is
discarded. Also: the journal's row order the store reads positionally.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import trio
import trio.testing

from switch.codec import Codec, load_dialect
from switch.codec.framing import Framing
from switch.codec.message import Message
from switch.codec.stream import FrameStream
from terminal.client import TerminalClient, TrioClock
from terminal.link import Ended, Link
from terminal.policy import Note, Purchase, TerminalPolicy
from terminal.profile import TerminalProfile
from terminal.records import JournalEntry
from terminal.store import TerminalStore
from terminal.store_sql import _JOURNAL_COLUMNS

ISO = load_dialect("iso87-binary")
CODEC = Codec(ISO)
FRAMING = Framing.from_dialect(ISO)
TID = "TERM0001"
MID = "MERCHANT0000001"
PAN = "4761739001010010"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()

# what the scripted host sends for a request: the requests it answers (each answered with code 00)
Script = Callable[[Message], list[Message]]


def answer(request: Message, rrn: int) -> Message:
    return request.copy(mti=request.response_mti, drop=(35, 52, 55), f39="00", f37=f"{rrn:012d}", f38="123456")


class Host:
    """A scripted host: every request is recorded; ``script(request)`` says which requests to answer
    now (default: that one), so a host can answer twice, not at all, or an older request late."""

    def __init__(self, script: Script = lambda request: [request]) -> None:
        self.script = script
        self.requests: list[str] = []
        self.connections = 0
        self.streams: list[trio.abc.Stream] = []
        self.rrn = 0

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        self.streams.append(stream)
        frames = FrameStream(stream, FRAMING)
        try:
            while (frame := await frames.receive_frame()) is not None:
                request = CODEC.decode(frame.payload)
                self.requests.append(request.mti)
                for answered in self.script(request):
                    self.rrn += 1
                    await frames.send_frame(CODEC.encode(answer(answered, self.rrn)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def client_for(connect: Callable[[], Any], clock: TrioClock, notes: list[Note],
                     **options: Any) -> AsyncIterator[TerminalClient]:
    store = TerminalStore.open(":memory:", TID)
    profile = TerminalProfile.for_dialect(ISO, TID, MID)
    policy = TerminalPolicy(profile, store, clock.now())
    try:
        async with TerminalClient(policy, CODEC, FRAMING, connect, clock, on_note=notes.append, **options) as client:
            yield client
    finally:
        store.close()


@asynccontextmanager
async def tcp_host(host: Host) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, host.serve, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def sale() -> Purchase:
    return Purchase(1234, PAN, "3012")


async def test_a_close_between_commands_is_seen_before_the_next_purchase_over_tcp() -> None:
    host = Host()
    notes: list[Note] = []
    opened: list[trio.SocketStream] = []
    with trio.fail_after(20):
        async with tcp_host(host) as port:

            async def connect() -> trio.abc.Stream:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                opened.append(stream)
                return stream

            async with client_for(connect, TrioClock.wall(), notes) as client:
                assert (await client.run_command(sale())).kind == "approved"
                assert client._link is not None and client._link.inline  # TCP: read inline, no reader task
                await host.streams[0].aclose()  # the host drops the idle connection
                await trio.lowlevel.wait_readable(opened[0].socket)  # its close has reached the terminal
                outcome = await client.run_command(sale())
    assert outcome.kind == "approved", outcome  # not an unknown outcome on a dead connection
    assert host.connections == 2 and host.requests.count("0200") == 2
    assert "0400" not in host.requests
    assert "connection-lost" in [note.kind for note in notes]
    assert "exchange-failed" not in [note.kind for note in notes]


async def test_a_late_duplicate_reply_between_commands_is_discarded_over_tcp() -> None:
    seen = 0

    def twice_the_first(request: Message) -> list[Message]:
        nonlocal seen
        seen += request.mti == "0200"
        return [request, request] if request.mti == "0200" and seen == 1 else [request]

    host = Host(twice_the_first)
    notes: list[Note] = []
    with trio.fail_after(20):
        async with tcp_host(host) as port:
            opened: list[trio.SocketStream] = []

            async def connect() -> trio.abc.Stream:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                opened.append(stream)
                return stream

            async with client_for(connect, TrioClock.wall(), notes) as client:
                first = await client.run_command(sale())
                link = client._link
                assert link is not None and link.inline
                if not link.arrived():  # read with the reply already, or not here yet: wait for it
                    await trio.lowlevel.wait_readable(opened[0].socket)
                assert link.arrived()
                kinds_before = [note.kind for note in notes]
                second = await client.run_command(sale())
    assert (first.kind, second.kind) == ("approved", "approved")
    assert first.rrn != second.rrn
    assert "unexpected-message-discarded" not in kinds_before
    assert [note.kind for note in notes].count("unexpected-message-discarded") == 1  # the duplicate 0210
    assert host.connections == 1 and "0400" not in host.requests


async def test_forced_inline_reads_keep_timeouts_reversals_and_late_replies(autojump_clock: Any) -> None:
    """No answer to the 0200 in time: its 0210 comes only with the first 0400 (late: discarded), the
    0400 itself stays unanswered, so a 0401 follows, and its answer clears the reversal."""
    sales: list[Message] = []

    def late(request: Message) -> list[Message]:
        if request.mti == "0200":
            sales.append(request)
            return []
        return sales[-1:] if request.mti == "0400" else [request]

    host = Host(late)
    clock = TrioClock.starting_at(T0)
    notes: list[Note] = []
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client_side, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(host.serve, server_side)
            return client_side

        async with client_for(connect, clock, notes, inline_reads=True) as client:
            outcome = await client.run_command(sale())
            assert client._link is not None and client._link.inline
            assert not client._link.arrived()  # nothing to poll on a memory stream
            assert client.policy.store.reversals() == []  # the 0410 cleared it
        nursery.cancel_scope.cancel()
    assert outcome.kind != "approved", outcome
    assert host.requests == ["0800", "0200", "0400", "0401"], host.requests  # sign-on first
    assert "late-reply-discarded" in [note.kind for note in notes]


def test_the_store_reads_journal_rows_in_the_order_of_the_entry_fields() -> None:
    """``TerminalStore._entry`` builds entries positionally from a row: the columns must stay in the
    order of ``JournalEntry``'s fields."""
    assert tuple(field.name for field in dataclasses.fields(JournalEntry)) == _JOURNAL_COLUMNS


async def test_an_inline_link_knows_a_frame_that_came_with_the_last_reply() -> None:
    """Two frames in one read: the first is returned, the second is waiting (``arrived``) and is
    returned next without reading the stream again; then a close is an ``Ended``."""
    client_side, server_side = trio.testing.memory_stream_pair()
    link = Link(FrameStream(client_side, FRAMING), inline=True)
    first, second = (FRAMING.encode(CODEC.encode(Message("0810", {11: stan, 39: "00", 70: "301"})))
                     for stan in ("000001", "000002"))
    with trio.fail_after(5):
        await server_side.send_all(first + second)
        assert not isinstance(got := await link.read_one(), Ended)
        assert CODEC.decode(got.payload).get(11) == "000001"
        assert link.arrived()
        assert not isinstance(got := await link.read_one(), Ended)
        assert CODEC.decode(got.payload).get(11) == "000002"
        assert not link.arrived()
        await server_side.aclose()
        ended = await link.read_one()
    assert isinstance(ended, Ended)


async def test_part_of_a_frame_is_not_an_arrival_so_no_command_waits_for_its_rest() -> None:
    """A reply and half of the next frame in one read: the half is kept, but nothing has "arrived"
    (its rest may never come), so ``read_arrived`` returns at once; the rest completes it later."""
    client_side, server_side = trio.testing.memory_stream_pair()
    link = Link(FrameStream(client_side, FRAMING), inline=True)
    first, second = (FRAMING.encode(CODEC.encode(Message("0810", {11: stan, 39: "00", 70: "301"})))
                     for stan in ("000001", "000002"))
    half = len(second) // 2
    with trio.fail_after(5):
        await server_side.send_all(first + second[:half])
        assert not isinstance(got := await link.read_one(), Ended)
        assert CODEC.decode(got.payload).get(11) == "000001"
        assert not link.arrived()
        start = trio.current_time()
        assert await link.read_arrived() is None
        assert trio.current_time() - start < 0.01  # no wait for bytes the host has not sent
        await server_side.send_all(second[half:])
        assert not isinstance(got := await link.read_one(), Ended)
        assert CODEC.decode(got.payload).get(11) == "000002"
