"""Every fault action, end to end over real loopback sockets (127.0.0.1): its effect on the wire.

The engine's decisions are unit-tested in test_faults.py; here a real ``SwitchServer`` (real host,
in-memory ledger, group committer, journal, metrics) carries them out and a plain client reads
what actually arrives: when, how many frames, in how many TCP reads, whether the connection ends
with FIN (EOF) or RST (ConnectionResetError), and what the ledger and the journal say afterwards.

Timing bounds are loose on purpose (a 0.4 s delay must arrive after 0.4 s and well before 2 s):
trio never wakes a sleeper early, so the lower bounds are exact, and the upper bounds only catch a
fault that waits far too long. Every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from switch.codec import Codec, Message, MessageDecodeError, load_dialect
from switch.codec.framing import Framing, TruncatedFrameError
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.faults import FaultDecision, FaultEngine
from switch.host import Host, HostConfig
from switch.journal import Journal, JournalEntry
from switch.ledger import Ledger, Posting
from switch.metrics import SwitchMetrics
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer

DIALECT = load_dialect("iso87-binary")
CODEC = Codec(DIALECT)
FRAMING = Framing.from_dialect(DIALECT)
HEADER = FRAMING.header_size
NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=UTC)
F7 = NOW.strftime("%m%d%H%M%S")
TERMINAL = "TERM0001"
QUIET = 0.25  # how long "nothing more arrives" is watched for, after the frames that should arrive
TEST_LIMIT = 10.0  # no test here may take longer than this


# ---------------------------------------------------------------------------------------------
# Server and client


def make_server(*rules: Mapping[str, Any], seed: int = 8583, require_signon: bool = False) -> SwitchServer:
    """A switch as ``iso-switch serve`` builds it, on a free loopback port, with these fault rules."""
    ledger = Ledger.open(":memory:")
    faults = FaultEngine(seed=seed)
    for rule in rules:
        faults.add(rule)
    host = Host(HostConfig.for_dialect(DIALECT, require_signon=require_signon), ledger,
                default_scenario().response_rules)
    return SwitchServer(codec=CODEC, framing=FRAMING, host=host, ledger=ledger, committer=GroupCommitter(ledger),
                        config=ServerConfig(port=0, idle_timeout=30.0, grace_period=1.0), clock=lambda: NOW,
                        faults=faults, journal=Journal(CODEC), metrics=SwitchMetrics())


@asynccontextmanager
async def running(server: SwitchServer) -> AsyncIterator[int]:
    with trio.fail_after(TEST_LIMIT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve)
            yield listeners[0].socket.getsockname()[1]
            server.shutdown()


class Client:
    """One terminal connection. Whole frames through ``frames``, or raw bytes through ``stream``
    for the faults that break framing (never both on one connection: the frame reader buffers)."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.frames = FrameStream(stream, FRAMING)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, message: Message) -> float:
        """Send one request; returns the time its last byte was handed to the kernel."""
        await self.frames.send_frame(CODEC.encode(message))
        return trio.current_time()

    async def reply(self, timeout: float = 5.0) -> Message:
        with trio.fail_after(timeout):
            frame = await self.frames.receive_frame()
        assert frame is not None, "the switch closed the connection instead of replying"
        return CODEC.decode(frame.payload)

    async def expect_silence(self, seconds: float = QUIET) -> None:
        """Nothing arrives for ``seconds`` and the connection stays open."""
        with trio.move_on_after(seconds):
            frame = await self.frames.receive_frame()
            pytest.fail(f"expected no reply, got {'EOF' if frame is None else CODEC.decode(frame.payload)}")

    async def expect_eof(self, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            assert await self.frames.receive_frame() is None

    async def receive_raw(self, timeout: float = 5.0) -> bytes:
        """One TCP read (b"" at EOF)."""
        with trio.fail_after(timeout):
            return await self.stream.receive_some(4096)

    async def aclose(self) -> None:
        await self.stream.aclose()


def purchase(stan: int, *, terminal: str = TERMINAL, amount: int = 1234) -> Message:
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: f"{amount:012d}", 7: F7, 11: f"{stan:06d}",
                            12: F7[4:], 13: F7[:4], 14: "3012", 22: "051", 25: "00", 41: terminal,
                            42: "MERCHANT0000001", 49: "840"})


def signon(stan: int, *, terminal: str = TERMINAL) -> Message:
    return Message("0800", {7: F7, 11: f"{stan:06d}", 41: terminal, 70: "001"})


def posting(server: SwitchServer, stan: int) -> Posting | None:
    found = [p for p in server.ledger.postings(terminal=TERMINAL) if p.stan == f"{stan:06d}"]
    assert len(found) <= 1
    return found[0] if found else None


def request_entry(server: SwitchServer, stan: int, mti: str = "0200") -> JournalEntry:
    assert server.journal is not None
    found = [e for e in server.journal.query(stan=str(stan), mti=mti) if e.direction == "in"]
    assert len(found) == 1, found
    return found[0]


def assert_committed_posting(server: SwitchServer, stan: int) -> None:
    """The "pending confirmation" evidence: the host approved and the ledger made it durable."""
    booked = posting(server, stan)
    assert booked is not None, f"no posting for STAN {stan}"
    assert booked.approved
    assert server.ledger.is_committed(booked.seq)


def frame_size(data: bytes) -> int:
    """The body length a binary2 header announces."""
    return int.from_bytes(data[:HEADER], "big")


def only_first_0200(**actions: Any) -> dict[str, Any]:
    """A rule for the first 0200 only, so the next one shows the connection still works."""
    return {"when": {"mti": ["0200"], "nth": 1}, **actions}


# ---------------------------------------------------------------------------------------------
# Delays and late replies


async def test_delay_request_holds_the_request_before_the_host_sees_it() -> None:
    server = make_server({"when": {"mti": ["0200"]}, "delay_request": "400ms"})
    async with running(server) as port:
        client = await Client.connect(port)
        sent = await client.send(purchase(1))
        await trio.sleep(0.1)
        assert posting(server, 1) is None  # still waiting: not processed yet
        reply = await client.reply()
        elapsed = trio.current_time() - sent
        assert (reply.mti, reply[11], reply[39]) == ("0210", "000001", "00")
        assert 0.4 <= elapsed < 2.0
        assert_committed_posting(server, 1)
        assert request_entry(server, 1).faults == ("delay_request",)
        await client.aclose()


async def test_delay_response_commits_first_then_holds_the_reply() -> None:
    server = make_server({"when": {"mti": ["0200"]}, "delay_response": "400ms"})
    async with running(server) as port:
        client = await Client.connect(port)
        sent = await client.send(purchase(1))
        await trio.sleep(0.1)
        assert_committed_posting(server, 1)  # processed and durable while the reply waits
        reply = await client.reply()
        elapsed = trio.current_time() - sent
        assert (reply[11], reply[39]) == ("000001", "00")
        assert 0.4 <= elapsed < 2.0
        await client.aclose()


async def test_late_reply_arrives_after_the_terminal_gave_up_waiting() -> None:
    server = make_server({"when": {"mti": ["0200"]}, "delay_response": "600ms"})
    async with running(server) as port:
        client = await Client.connect(port)
        sent = await client.send(purchase(1))
        with trio.move_on_after(0.25) as terminal_timeout:  # the terminal's response timeout
            await client.frames.receive_frame()
        assert terminal_timeout.cancelled_caught
        late = await client.reply()
        assert trio.current_time() - sent >= 0.6
        assert (late[11], late[39]) == ("000001", "00")
        await client.aclose()


async def test_delays_of_several_rules_add_up_and_other_actions_combine() -> None:
    server = make_server({"id": "slow", "when": {"mti": ["0200"]}, "delay_response": "150ms"},
                         {"id": "slower", "when": {"mti": ["0200"]}, "delay_response": "150ms", "duplicate": True})
    async with running(server) as port:
        client = await Client.connect(port)
        sent = await client.send(purchase(1))
        first, second = await client.reply(), await client.reply()
        assert trio.current_time() - sent >= 0.3
        assert first == second and first[39] == "00"
        await client.aclose()


async def test_journal_and_metrics_name_the_rule_behind_each_action() -> None:
    """Issue 14: with several rules nobody can tell which one fired from the action alone."""
    server = make_server({"id": "slow", "when": {"mti": ["0200"]}, "delay_response": "50ms"},
                         {"id": "twice", "when": {"mti": ["0200"]}, "delay_response": "50ms", "duplicate": True},
                         {"id": "lose-2", "when": {"mti": ["0200"], "nth": 2}, "drop_response": True})
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        first, second = await client.reply(), await client.reply()
        assert first == second
        await client.send(purchase(2))
        await client.expect_silence()
        await client.aclose()
    delayed, dropped = request_entry(server, 1), request_entry(server, 2)
    assert delayed.faults == ("delay_response", "duplicate")
    assert delayed.rules == ("slow", "twice")  # the delays add up; the first rule asking names it
    assert delayed.as_dict()["rules"] == ["slow", "twice"]
    assert (dropped.faults, dropped.rules) == (("delay_response", "drop_response"), ("slow", "lose-2"))
    assert server.journal is not None
    replies = server.journal.query(stan="1", mti="0210")
    assert [e.rules for e in replies] == [("slow", "twice")] * 2
    assert server.metrics is not None
    text = server.metrics.render().decode()
    assert 'iso_switch_faults_applied_total{action="delay_response",rule="slow"} 2.0' in text
    assert 'iso_switch_faults_applied_total{action="duplicate",rule="twice"} 1.0' in text
    assert 'iso_switch_faults_applied_total{action="drop_response",rule="lose-2"} 1.0' in text


def test_each_action_is_attributed_to_the_first_rule_that_asked_for_it() -> None:
    engine = FaultEngine(seed=1)
    engine.add({"id": "nothing-yet", "when": {"mti": ["0800"]}, "drop_request": True})  # does not match
    engine.add({"id": "slow", "when": {"mti": ["0200"]}, "delay_request": "10ms"})
    engine.add({"id": "noise", "when": {"mti": ["0200"]}, "delay_request": "10ms", "garbage": 8})
    engine.add({"id": "echo", "when": {"mti": ["0200"]}, "wrong_echo": ["stan"]})  # garbage replaces the reply
    decision = engine.decide(purchase(1), connection=1, elapsed=0.0)
    assert decision.rules == ("slow", "noise", "echo")  # every rule that fired
    assert decision.actions_applied() == ("delay_request", "garbage")
    assert decision.rules_applied() == ("slow", "noise")
    built = FaultDecision(rules=("r9",), drop_response=True)  # no sources: its first rule
    assert built.rules_applied() == ("r9",) and FaultDecision(drop_request=True).rules_applied() == ("",)


async def test_maintenance_decisions_name_the_maintenance_rule() -> None:
    server = make_server()
    server.faults.maintenance = "respond"
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        assert (await client.reply())[39] == "91"
        await client.aclose()
    entry = request_entry(server, 1)
    assert (entry.faults, entry.rules) == (("respond",), ("maintenance",))
    assert server.metrics is not None
    text = server.metrics.render().decode()
    assert 'iso_switch_faults_applied_total{action="respond",rule="maintenance"} 1.0' in text


# ---------------------------------------------------------------------------------------------
# Endings: drop, close, reset


async def test_drop_request_is_never_processed_nor_answered() -> None:
    server = make_server(only_first_0200(drop_request=True))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        await client.send(purchase(2))
        assert (await client.reply())[11] == "000002"  # the first reply on the wire is the second's
        await client.expect_silence()
        assert posting(server, 1) is None
        assert posting(server, 2) is not None
        dropped = request_entry(server, 1)
        assert dropped.faults == ("drop_request",)
        assert dropped.matched is False
        assert "dropped unprocessed" in dropped.note
        await client.aclose()


async def test_drop_response_commits_the_posting_but_sends_nothing() -> None:
    server = make_server(only_first_0200(drop_response=True))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        await client.send(purchase(2))
        assert (await client.reply())[11] == "000002"
        await client.expect_silence()
        assert_committed_posting(server, 1)  # "pending confirmation": approved, durable, never told
        lost = request_entry(server, 1)
        assert lost.faults == ("drop_response",)
        assert lost.matched is False
        assert "dropped after commit" in lost.note
        await client.aclose()


@pytest.mark.parametrize("timing", ["before", "after"])
async def test_close_ends_the_connection_with_fin(timing: str) -> None:
    server = make_server(only_first_0200(close=timing))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        await client.expect_eof()  # a clean EOF, not a reset
        if timing == "before":
            assert posting(server, 1) is None
        else:
            assert_committed_posting(server, 1)
        assert request_entry(server, 1).faults == (f"close_{timing}",)
        assert f"closed {timing} processing" in request_entry(server, 1).note
        await client.aclose()
        again = await Client.connect(port)  # only that connection ended
        await again.send(purchase(2))
        assert (await again.reply())[39] == "00"
        await again.aclose()


@pytest.mark.parametrize("timing", ["before", "after"])
async def test_reset_ends_the_connection_with_rst(timing: str) -> None:
    server = make_server(only_first_0200(reset=timing))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        with pytest.raises(trio.BrokenResourceError) as broken, trio.fail_after(5):
            await client.frames.receive_frame()
        assert isinstance(broken.value.__cause__, ConnectionResetError)  # RST (SO_LINGER 0), not FIN
        if timing == "before":
            assert posting(server, 1) is None
        else:
            assert_committed_posting(server, 1)
        assert request_entry(server, 1).faults == (f"reset_{timing}",)
        await client.aclose()
        again = await Client.connect(port)
        await again.send(purchase(2))
        assert (await again.reply())[39] == "00"
        await again.aclose()


# ---------------------------------------------------------------------------------------------
# Broken replies: garbage, truncate, wrong length


async def test_garbage_is_a_framed_run_of_bytes_that_does_not_decode() -> None:
    server = make_server(only_first_0200(garbage=40))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        with trio.fail_after(5):
            frame = await client.frames.receive_frame()
        assert frame is not None and len(frame.payload) == 40
        with pytest.raises(MessageDecodeError):
            CODEC.decode(frame.payload)
        assert_committed_posting(server, 1)  # processed as usual: only the reply is replaced
        await client.send(purchase(2))  # the connection goes on
        assert (await client.reply())[11] == "000002"
        assert server.journal is not None
        sent = [e for e in server.journal.query(faults_only=True) if e.direction == "out"]
        assert len(sent) == 1 and sent[0].note == "garbage sent" and sent[0].error
        await client.aclose()


async def test_truncate_sends_part_of_the_frame_then_closes() -> None:
    server = make_server({"when": {"mti": ["0200"]}, "truncate": True})
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        with pytest.raises(TruncatedFrameError) as truncated, trio.fail_after(5):
            await client.frames.receive_frame()  # EOF in the middle of the frame
        partial = truncated.value.buffered
        body = partial[HEADER:]
        assert len(body) < frame_size(partial)
        assert len(body) < 48
        assert_committed_posting(server, 1)
        assert server.journal is not None  # the journal shows the bytes that left, not the whole reply
        out = [e for e in server.journal.query(faults_only=True) if e.direction == "out"]
        assert len(out) == 1 and len(out[0].raw_hex) == 2 * len(body) and out[0].note.startswith("truncated")
        await client.aclose()


async def test_wrong_length_header_disagrees_with_the_body_sent() -> None:
    server = make_server({"when": {"mti": ["0200"]}, "wrong_length": True})
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        data = b""
        reply = None
        with trio.fail_after(5):
            while reply is None:  # read until what follows the header is one whole message
                chunk = await client.stream.receive_some(4096)
                assert chunk, "closed before the whole body arrived"
                data += chunk
                try:
                    reply = CODEC.decode(data[HEADER:])
                except MessageDecodeError:
                    continue
        assert (reply.mti, reply[11], reply[39]) == ("0210", "000001", "00")  # the body itself is intact
        body = len(data) - HEADER
        assert frame_size(data) != body
        assert 1 <= abs(frame_size(data) - body) <= 16
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# Wrong replies: duplicate, wrong echo, MAC


async def test_duplicate_sends_the_same_reply_twice() -> None:
    server = make_server(only_first_0200(duplicate=True))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        with trio.fail_after(5):
            first = await client.frames.receive_frame()
            second = await client.frames.receive_frame()
        assert first is not None and second is not None
        assert first.payload == second.payload
        assert CODEC.decode(first.payload)[11] == "000001"
        await client.send(purchase(2))
        assert (await client.reply())[11] == "000002"  # no third copy in between
        await client.expect_silence()
        assert len(server.ledger.postings()) == 2  # sent twice, booked once
        assert server.journal is not None  # every frame out is journaled: both copies
        copies = [e for e in server.journal.query(stan="000001") if e.direction == "out"]
        assert len(copies) == 2 and copies[0].raw_hex == copies[1].raw_hex
        await client.aclose()


@pytest.mark.parametrize(("echo", "field"), [("stan", 11), ("amount", 4), ("terminal", 41)])
async def test_wrong_echo_changes_exactly_that_field(echo: str, field: int) -> None:
    server = make_server({"when": {"mti": ["0200"]}, "wrong_echo": [echo]})
    async with running(server) as port:
        client = await Client.connect(port)
        request = purchase(1)
        await client.send(request)
        reply = await client.reply()
        assert reply[39] == "00"
        assert reply[field] != request[field]
        assert len(reply[field]) == len(request[field])
        for echoed in {3, 4, 11, 41, 42} - {field}:
            assert reply[echoed] == request[echoed]
        await client.aclose()


async def test_corrupt_mac_adds_a_wrong_mac_a_clean_reply_does_not_have() -> None:
    server = make_server(only_first_0200(corrupt_mac=True))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        corrupted = await client.reply()
        await client.send(purchase(2))
        clean = await client.reply()
        assert 64 not in clean.fields
        assert 64 in corrupted.fields
        assert corrupted[64] != "00" * 8 and len(bytes.fromhex(corrupted[64])) == 8
        assert set(corrupted.fields) - {64} == set(clean.fields)
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# Slow writes: slice, bandwidth


async def read_frame_by_reads(client: Client) -> tuple[bytes, list[int], float]:
    """Read one frame with raw TCP reads: (frame bytes, size of each read, seconds from first byte to last)."""
    data = b""
    sizes: list[int] = []
    first = last = 0.0
    with trio.fail_after(5):
        while len(data) < HEADER or len(data) < HEADER + frame_size(data):
            chunk = await client.stream.receive_some(4096)
            assert chunk, "closed mid-frame"
            last = trio.current_time()
            first = first or last
            data += chunk
            sizes.append(len(chunk))
    return data, sizes, last - first


async def test_slice_writes_the_reply_in_small_pieces_with_pauses() -> None:
    server = make_server({"when": {"mti": ["0200"]}, "slice": {"bytes": 8, "pause": "30ms"}})
    async with running(server) as port:
        client = await Client.connect(port)
        sent = await client.send(purchase(1))
        data, reads, spread = await read_frame_by_reads(client)
        elapsed = trio.current_time() - sent
        pieces = math.ceil(len(data) / 8)
        assert CODEC.decode(data[HEADER:])[11] == "000001"  # the pieces make the whole frame
        assert len(reads) >= pieces // 2  # many TCP reads, not one (a slow reader may merge a few)
        assert sum(1 for size in reads if size <= 8) >= pieces // 2
        assert elapsed >= (pieces - 1) * 0.03
        assert spread >= (pieces - 1) * 0.03 - 0.03  # the pauses fall between the pieces
        assert elapsed < 5.0
        await client.aclose()


async def test_bandwidth_paces_the_reply_to_the_rate() -> None:
    rate = 1000  # bytes per second
    server = make_server({"when": {"mti": ["0200"]}, "bandwidth": rate})
    async with running(server) as port:
        client = await Client.connect(port)
        sent = await client.send(purchase(1))
        data, reads, _ = await read_frame_by_reads(client)
        elapsed = trio.current_time() - sent
        assert CODEC.decode(data[HEADER:])[11] == "000001"
        assert len(reads) >= 2
        assert elapsed >= len(data) / rate  # no faster than the link would carry it
        assert elapsed < len(data) / rate + 1.0
        await client.aclose()


@pytest.mark.parametrize("slow", [{"slice": {"bytes": 8, "pause": "20ms"}}, {"bandwidth": 2000}])
async def test_a_slow_reply_stays_whole_while_later_replies_wait_behind_it(slow: dict[str, Any]) -> None:
    server = make_server(only_first_0200(**slow))
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(purchase(1))
        await client.send(purchase(2))  # answered at once, while the first reply is still being written
        replies = [await client.reply(), await client.reply()]  # each decodes: no bytes of one inside the other
        assert sorted(reply[11] for reply in replies) == ["000001", "000002"]  # in either order
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# Answers without the host: respond, maintenance


async def test_respond_answers_the_code_without_touching_host_or_ledger() -> None:
    server = make_server({"when": {"mti": ["0200"]}, "respond": "91"})
    async with running(server) as port:
        client = await Client.connect(port)
        request = purchase(1)
        await client.send(request)
        reply = await client.reply()
        assert (reply.mti, reply[39]) == ("0210", "91")
        assert (reply[11], reply[4], reply[41]) == (request[11], request[4], request[41])
        assert server.ledger.postings() == []
        assert request_entry(server, 1).faults == ("respond",)
        await client.aclose()


async def test_maintenance_refuse_closes_new_connections_at_once_and_open_ones_at_their_next_message() -> None:
    server = make_server()
    async with running(server) as port:
        already_open = await Client.connect(port)
        await already_open.send(purchase(1))
        assert (await already_open.reply())[39] == "00"
        server.faults.maintenance = "refuse"
        refused = await Client.connect(port)
        assert await refused.receive_raw() == b""  # closed without a request being sent
        await refused.aclose()
        await already_open.send(purchase(2))
        await already_open.expect_eof()
        assert posting(server, 2) is None
        server.faults.maintenance = "off"
        back = await Client.connect(port)
        await back.send(purchase(3))
        assert (await back.reply())[39] == "00"
        await back.aclose()
        await already_open.aclose()


async def test_maintenance_respond_answers_every_request_unprocessed() -> None:
    server = make_server(require_signon=True)
    server.faults.maintenance = "respond"
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(signon(1))
        assert ((reply := await client.reply()).mti, reply[39]) == ("0810", "91")
        await client.send(purchase(2))  # not signed on, yet 91 rather than "sign on first"
        assert ((reply := await client.reply()).mti, reply[39]) == ("0210", "91")
        assert server.ledger.postings() == []
        assert TERMINAL not in server.host.sessions  # the 0800 was not processed either
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# Sign-on blackout


async def test_signon_blackout_drops_0800_but_0200_is_answered_without_signon() -> None:
    server = make_server({"id": "signon-blackout", "when": {"mti": ["0800"]}, "drop_request": True})
    async with running(server) as port:
        client = await Client.connect(port)
        await client.send(signon(1))
        await client.send(purchase(2))
        reply = await client.reply()
        assert (reply.mti, reply[11], reply[39]) == ("0210", "000002", "00")
        await client.expect_silence()
        assert request_entry(server, 1, mti="0800").faults == ("drop_request",)
        await client.aclose()


async def test_signon_blackout_of_the_first_two_then_the_retry_signs_on() -> None:
    server = make_server({"when": {"mti": ["0800"], "first": 2}, "drop_request": True}, require_signon=True)
    async with running(server) as port:
        client = await Client.connect(port)
        for stan in (1, 2):
            await client.send(signon(stan))
            await client.expect_silence(0.15)
        await client.send(signon(3))
        assert ((reply := await client.reply()).mti, reply[11], reply[39]) == ("0810", "000003", "00")
        await client.send(purchase(4))
        assert (await client.reply())[39] == "00"
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# When a rule fires: nth, every, first, connection


@pytest.mark.parametrize(("when", "faulted"), [
    ({"nth": 3}, {3}),
    ({"every": 3}, {3, 6, 9}),
    ({"first": 2}, {1, 2}),
    ({"every": 2, "first": 6}, {2, 4, 6}),
    ({"amount_min": 500, "every": 2}, {4, 8}),  # counts only matching messages: amounts >= 500 are 2, 4, 6, 8
])
async def test_count_predicates_pick_the_messages_on_the_wire(when: dict[str, Any], faulted: set[int]) -> None:
    server = make_server({"when": {"mti": ["0200"], **when}, "respond": "96"})
    async with running(server) as port:
        client = await Client.connect(port)
        answered_96 = set()
        for stan in range(1, 10):
            await client.send(purchase(stan, amount=1000 if stan % 2 == 0 else 100))
            reply = await client.reply()
            assert reply[11] == f"{stan:06d}"
            if reply[39] == "96":
                answered_96.add(stan)
            else:
                assert reply[39] == "00"
        assert answered_96 == faulted
        await client.aclose()


async def test_connection_predicate_faults_only_that_connection() -> None:
    server = make_server({"when": {"connection": [2]}, "respond": "96"})
    async with running(server) as port:
        clients = [await Client.connect(port) for _ in range(3)]  # accepted as connections 1, 2, 3
        codes = []
        for stan, client in enumerate(clients, start=1):
            await client.send(purchase(stan))
            codes.append((await client.reply())[39])
        assert codes == ["00", "96", "00"]
        for client in clients:
            await client.aclose()


# ---------------------------------------------------------------------------------------------
# Same seed, same traffic: same faults


DETERMINISM_RULES = (
    {"id": "lossy", "when": {"mti": ["0200"]}, "probability": 0.5, "drop_request": True},
    {"id": "lost-reply", "when": {"mti": ["0200"]}, "probability": 0.2, "drop_response": True},
    {"id": "jitter", "when": {"mti": ["0200"]}, "probability": 0.5, "delay_response": {"uniform": ["5ms", "30ms"]}},
)


async def run_traffic(seed: int, count: int = 40) -> tuple[frozenset[int], dict[int, tuple[str, ...]]]:
    """Send ``count`` purchases in order over one connection to a fresh switch; return the STANs that got
    no reply on the wire and each STAN's journalled faults."""
    server = make_server(*DETERMINISM_RULES, seed=seed)
    assert server.journal is not None
    async with running(server) as port:
        client = await Client.connect(port)
        for stan in range(1, count + 1):
            await client.send(purchase(stan))
        with trio.fail_after(5):  # until every request is either answered or given up by its fault
            while True:
                requests = [e for e in server.journal.query(mti="0200", limit=10_000) if e.direction == "in"]
                if len(requests) == count and all(e.matched or e.note for e in requests):
                    break
                await trio.sleep(0.01)
        expected = {int(e.stan or 0) for e in requests if e.matched}
        answered = set()
        for _ in range(len(expected)):
            answered.add(int((await client.reply())[11]))
        await client.expect_silence(0.1)
        await client.aclose()
    assert answered == expected  # the wire and the journal agree
    faults = {int(e.stan or 0): e.faults for e in requests}
    return frozenset(range(1, count + 1)) - answered, faults


async def test_same_seed_and_traffic_give_the_same_faults_on_the_wire() -> None:
    dropped, faults = await run_traffic(seed=424242)
    assert 0 < len(dropped) < 40  # the rules really fire, and not on everything
    assert any("delay_response" in applied for applied in faults.values())
    assert (dropped, faults) == await run_traffic(seed=424242)
    other_dropped, other_faults = await run_traffic(seed=424243)
    assert (other_dropped, other_faults) != (dropped, faults)
    assert other_dropped != dropped
