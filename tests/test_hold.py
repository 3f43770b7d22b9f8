"""The ``hold`` fault: parse and validate it, park requests on a real server (memory streams, virtual
clock), release them as approve / decline / drop, by timeout, at the cap, after the connection
closed, at shutdown; and the admin API's ``/held`` endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from switch.admin import SwitchRuntime, create_admin_app
from switch.codec import Codec, Message, load_dialect
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.faults import FaultEngine, FaultRuleError, Hold, HoldOutcome, parse_fault_rules, rule_from_table
from switch.faults.engine import FaultDecision
from switch.held import HeldRequests, HeldState, Release, ReleaseStatus
from switch.host import Host, HostConfig
from switch.journal import Journal
from switch.ledger import Ledger
from switch.metrics import SwitchMetrics
from switch.scenario import default_scenario, load_scenario
from switch.server import ServerConfig, SwitchServer

DIALECT = load_dialect("iso87-binary")
CODEC = Codec(DIALECT)
FRAMING = Framing.from_dialect(DIALECT)
NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=UTC)
F7 = NOW.strftime("%m%d%H%M%S")
TERMINAL = "TERM0001"
HOLD_FIRST = {"id": "hold-first", "when": {"mti": ["0200"], "nth": 1}, "hold": True}


def purchase(stan: int, amount: int = 1234, pan: str = "4761739001010010") -> Message:
    return Message("0200", {2: pan, 3: "000000", 4: f"{amount:012d}", 7: F7, 11: f"{stan:06d}",
                            12: F7[4:], 13: F7[:4], 14: "3012", 22: "051", 25: "00", 41: TERMINAL,
                            42: "MERCHANT0000001", 49: "840"})


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def test_hold_true_and_a_timeout_table_parse_and_read_back() -> None:
    rule = rule_from_table({"when": {"mti": "0200"}, "hold": True}, default_id="f1")
    assert rule.actions.hold == Hold()
    assert rule.to_dict()["hold"] is True
    timed = rule_from_table({"hold": {"timeout": "30s", "then": "decline", "code": "51"}}, default_id="f2")
    assert timed.actions.hold == Hold(30.0, HoldOutcome.DECLINE, "51")
    assert timed.to_dict()["hold"] == {"timeout": "30s", "then": "decline", "code": "51"}
    assert rule_from_table(timed.to_dict(), default_id="x") == timed
    assert rule_from_table({"hold": False, "drop_request": True}, default_id="f3").actions.hold is None


@pytest.mark.parametrize(("table", "key"), [
    ({"hold": "yes"}, "hold"),
    ({"hold": {"timeout": "2h"}}, "hold.timeout"),  # bounded like every other duration (1 h)
    ({"hold": {"timeout": -1}}, "hold.timeout"),
    ({"hold": {"timeout": "5s", "then": "approve please"}}, "hold.then"),
    ({"hold": {"then": "decline"}}, "hold.then"),  # an outcome without a timeout never happens
    ({"hold": {"timeout": "5s", "then": "approve", "code": "51"}}, "hold.code"),
    ({"hold": {"timeout": "5s", "then": "decline", "code": "5"}}, "hold.code"),
    ({"hold": {"timeout": "5s", "after": "1s"}}, "hold.after"),
    ({"hold": True, "drop_request": True}, "hold"),
    ({"hold": True, "delay_response": "1s"}, "delay_response"),
    ({"hold": True, "respond": "91"}, "respond"),
])
def test_bad_holds_are_refused_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(FaultRuleError) as caught:
        rule_from_table(table, default_id="f1")
    assert caught.value.key == key, caught.value


def test_hold_combines_with_a_request_delay_and_wins_over_reply_shaping_of_other_rules() -> None:
    engine = FaultEngine(seed=1)
    engine.add({"id": "slow", "delay_request": "1s"})
    engine.add({"id": "park", "hold": True, "delay_request": "1s"})
    engine.add({"id": "late", "delay_response": "5s", "duplicate": True})
    decision = engine.decide(purchase(1), connection=1, elapsed=0.0)
    assert decision == FaultDecision(rules=("slow", "park", "late"), delay_request=2.0, hold=Hold())
    assert decision.actions_applied() == ("delay_request", "hold")
    engine.add({"id": "gone", "drop_request": True})
    assert engine.decide(purchase(2), connection=1, elapsed=0.0).hold is None  # an ending before wins


def test_shipped_pending_confirmation_has_a_disabled_hold_rule() -> None:
    rules = {rule.id: rule for rule in parse_fault_rules(load_scenario("pending-confirmation"))}
    rule = rules["hold-for-release"]
    assert not rule.enabled and rule.actions.hold is not None


# ---------------------------------------------------------------------------------------------
# On a server (memory streams, virtual clock)


def make_server(*rules: dict[str, Any], limit: int = 1000) -> SwitchServer:
    ledger = Ledger.open(":memory:")
    faults = FaultEngine(seed=8583)
    for rule in rules:
        faults.add(rule)
    metrics = SwitchMetrics()
    host = Host(HostConfig.for_dialect(DIALECT, require_signon=False), ledger, default_scenario().response_rules)
    return SwitchServer(codec=CODEC, framing=FRAMING, host=host, ledger=ledger,
                        committer=GroupCommitter(ledger, in_thread=False),
                        config=ServerConfig(port=0, idle_timeout=300.0, grace_period=1.0), clock=lambda: NOW,
                        faults=faults, journal=Journal(CODEC), metrics=metrics,
                        held=HeldRequests(limit=limit, metrics=metrics))


@asynccontextmanager
async def connected(server: SwitchServer) -> AsyncIterator[FrameStream]:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        client, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, server_side)
        yield FrameStream(client, FRAMING)
        nursery.cancel_scope.cancel()


async def send(frames: FrameStream, message: Message) -> None:
    await frames.send_frame(CODEC.encode(message))


async def reply(frames: FrameStream, timeout: float = 5.0) -> Message:
    with trio.fail_after(timeout):
        frame = await frames.receive_frame()
    assert frame is not None, "the connection closed"
    return CODEC.decode(frame.payload)


async def nothing_arrives(frames: FrameStream, seconds: float = 10.0) -> None:
    with trio.move_on_after(seconds):
        frame = await frames.receive_frame()
        pytest.fail(f"expected nothing, got {frame}")


async def held_count(server: SwitchServer, count: int) -> None:
    with trio.fail_after(5):
        while len(server.held) != count:
            await trio.sleep(0.01)


def postings(server: SwitchServer) -> dict[str, Any]:
    return {posting.stan: posting for posting in server.ledger.postings(terminal=TERMINAL)}


async def test_held_request_is_listed_the_connection_reads_on_and_approve_commits_then_replies(
        autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(HOLD_FIRST)
    async with connected(server) as frames:
        await send(frames, purchase(1))
        await held_count(server, 1)
        await send(frames, purchase(2))  # the connection keeps reading while 1 is held
        assert (await reply(frames))[11] == "000002"
        await trio.sleep(12)
        (entry,) = server.held.entries()
        listed = entry.as_dict(trio.current_time())
        assert listed["id"] == "h1" and listed["state"] == "held" and listed["rules"] == ["hold-first"]
        assert (listed["terminal"], listed["mti"], listed["stan"]) == (TERMINAL, "0200", "000001")
        assert listed["amount"] == "000000001234" and listed["pan"] == "476173******0010"
        assert listed["age_seconds"] >= 12 and listed["held_since"] == NOW.isoformat()
        assert "000001" not in postings(server)  # not given to the host while held
        assert b"iso_switch_held_requests 1.0" in server.metrics.render()  # type: ignore[union-attr]

        result = await server.held.release("h1", Release(HoldOutcome.APPROVE))
        answer = await reply(frames)
        assert (answer[11], answer[39]) == ("000001", "00") and result.response_code == "00"
        assert result.status is ReleaseStatus.SENT and result.posted and result.committed
        booked = postings(server)["000001"]
        assert booked.approved and server.ledger.is_committed(booked.seq)
        assert len(server.held) == 0
        assert b"iso_switch_held_requests 0.0" in server.metrics.render()  # type: ignore[union-attr]
        assert server.journal is not None
        out = [e for e in server.journal.query(stan="1") if e.direction == "out"]
        assert len(out) == 1 and "released as approve by admin" in out[0].note and "hold-first" in out[0].note


async def test_approve_still_goes_through_the_host_which_may_decline(
        autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(HOLD_FIRST)
    async with connected(server) as frames:
        await send(frames, purchase(1, pan="4000000000000051"))  # the test card the host answers 51
        await held_count(server, 1)
        result = await server.held.release("h1", Release(HoldOutcome.APPROVE))
        assert (await reply(frames))[39] == "51" and result.response_code == "51"
        assert not postings(server)["000001"].approved  # the host's decision, recorded as for any request


async def test_decline_sends_the_code_and_posts_nothing(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(HOLD_FIRST)
    async with connected(server) as frames:
        await send(frames, purchase(1))
        await held_count(server, 1)
        result = await server.held.release("h1", Release(HoldOutcome.DECLINE, "51"))
        assert (await reply(frames))[39] == "51"
        assert result.status is ReleaseStatus.SENT and not result.posted
        assert postings(server) == {}


async def test_drop_sends_nothing_and_journals_why(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(HOLD_FIRST)
    async with connected(server) as frames:
        await send(frames, purchase(1))
        await held_count(server, 1)
        result = await server.held.release("h1", Release(HoldOutcome.DROP))
        assert result.status is ReleaseStatus.DROPPED
        await nothing_arrives(frames)
        assert postings(server) == {}
        assert server.journal is not None
        (request,) = server.journal.query(stan="1")
        assert "released as drop" in request.note and "hold" in request.faults
        with pytest.raises(KeyError):
            await server.held.release("h1", Release(HoldOutcome.DROP))


async def test_the_hold_timeout_releases_by_itself(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server({**HOLD_FIRST, "hold": {"timeout": "30s", "then": "approve"}})
    async with connected(server) as frames:
        start = trio.current_time()
        await send(frames, purchase(1))
        answer = await reply(frames, timeout=60)
        assert 30 <= trio.current_time() - start < 31
        assert answer[39] == "00" and postings(server)["000001"].approved


async def test_over_the_cap_a_hold_answers_as_usual_and_says_so(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server({"id": "hold-all", "hold": True}, limit=1)
    async with connected(server) as frames:
        await send(frames, purchase(1))
        await held_count(server, 1)
        await send(frames, purchase(2))
        answer = await reply(frames)
        assert (answer[11], answer[39]) == ("000002", "00") and server.held.refused == 1
        assert server.journal is not None
        out = [e for e in server.journal.query(stan="2") if e.direction == "out"]
        assert "hold refused" in out[0].note and "the cap" in out[0].note


async def test_a_request_whose_connection_closed_is_dropped_and_its_release_says_so(
        autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(HOLD_FIRST)
    async with connected(server) as frames:
        await send(frames, purchase(1))
        await held_count(server, 1)
        await frames.stream.aclose()
        with trio.fail_after(5):
            while server.held.get("h1").state is not HeldState.CONNECTION_CLOSED:
                await trio.sleep(0.01)
        assert len(server.held) == 0  # not held any more, but still listed
        result = await server.held.release("h1", Release(HoldOutcome.APPROVE))
        assert result.status is ReleaseStatus.CONNECTION_GONE and not result.posted
        assert postings(server) == {}


async def test_shutdown_drops_held_requests_instead_of_waiting_for_them(
        autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(HOLD_FIRST)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        client, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, server_side)
        frames = FrameStream(client, FRAMING)
        await send(frames, purchase(1))
        await held_count(server, 1)
        start = trio.current_time()
        async with trio.open_nursery() as handlers:
            server._begin_drain(handlers)  # what shutdown() leads to once accepting stopped
        with trio.fail_after(5):
            assert await frames.receive_frame() is None  # closed, nothing sent
        assert trio.current_time() - start < 1.0  # well inside the grace period
        assert len(server.held) == 0 and postings(server) == {}
        assert server.journal is not None
        (request,) = server.journal.query(stan="1")
        assert "released as drop by shutdown" in request.note, request.note
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Admin API


async def test_admin_lists_and_releases_held_requests(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(HOLD_FIRST)
    assert server.journal is not None and server.metrics is not None
    runtime = SwitchRuntime(faults=server.faults, host=server.host, ledger=server.ledger, journal=server.journal,
                            metrics=server.metrics, dialect_name=DIALECT.name, held=server.held)
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http, \
            connected(server) as frames:
        added = await http.post("/api/v1/faults", json={"id": "hold-later", "when": {"nth": 1, "mti": "0100"},
                                                        "hold": {"timeout": "1m", "then": "decline"}})
        assert added.status_code == 201 and added.json()["hold"] == {"timeout": "60s", "then": "decline",
                                                                     "code": "05"}
        assert (await http.post("/api/v1/faults", json={"hold": "forever"})).status_code == 422
        await send(frames, purchase(1, amount=777))
        await held_count(server, 1)
        listed = (await http.get("/api/v1/held")).json()
        assert listed["count"] == 1 and listed["limit"] == 1000
        assert listed["held"][0]["id"] == "h1" and listed["held"][0]["amount"] == "000000000777"
        assert "iso_switch_held_requests 1.0" in (await http.get("/metrics")).text

        assert (await http.post("/api/v1/held/h9/release", json={"as": "approve"})).status_code == 404
        for body in ({"as": "maybe"}, {"as": "approve", "code": "05"}, {"as": "decline", "code": "5"}, {}):
            assert (await http.post("/api/v1/held/h1/release", json=body)).status_code == 422, body
        released = await http.post("/api/v1/held/h1/release", json={"as": "approve"})
        assert released.status_code == 200, released.text
        body = released.json()
        assert body["sent"] and body["response_code"] == "00" and body["committed"] and body["rrn"]
        assert (await reply(frames))[39] == "00"
        assert (await http.get("/api/v1/held")).json()["count"] == 0

        await send(frames, purchase(2))  # nth 1 is spent: answered at once
        assert (await reply(frames))[11] == "000002"
