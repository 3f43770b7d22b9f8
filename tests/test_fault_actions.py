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

import pytest
import trio

from switch.codec import MessageDecodeError
from switch.codec.framing import TruncatedFrameError
from switch.faults import FaultDecision, FaultEngine
from tests.fault_wire import (
    CODEC,
    HEADER,
    Client,
    assert_committed_posting,
    frame_size,
    make_server,
    only_first_0200,
    posting,
    purchase,
    request_entry,
    running,
)

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
