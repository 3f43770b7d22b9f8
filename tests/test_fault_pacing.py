"""Fault actions over real loopback sockets, continued (see test_fault_actions.py): slow writes, answers
without the host (respond, maintenance), sign-on blackouts, when a rule fires (nth, every, first,
connection), and the same faults for the same seed and traffic. Every wait is bounded by ``fail_after``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from tests.fault_wire import (
    CODEC,
    HEADER,
    TERMINAL,
    Client,
    frame_size,
    make_server,
    only_first_0200,
    posting,
    purchase,
    request_entry,
    running,
    signon,
)

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
