"""End-to-end tests of the switch over real loopback sockets (127.0.0.1 only) and memory streams."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from switch.codec import Codec, Message, load_dialect
from switch.codec.composite import OriginalData
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import default_scenario
from switch.server import GC_YOUNG_THRESHOLD, ServerConfig, SwitchServer, tune_gc_for_serving
from switch.server_core import _Connection

DIALECT = load_dialect("iso87-binary")
CODEC = Codec(DIALECT)
FRAMING = Framing.from_dialect(DIALECT)
NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=UTC)
F7 = NOW.strftime("%m%d%H%M%S")


def make_server(ledger: Ledger | None = None, *, idle_timeout: float | None = 300.0, **host: object
                ) -> SwitchServer:
    ledger = ledger or Ledger.open(":memory:")
    config = HostConfig.for_dialect(DIALECT, **host)
    return SwitchServer(codec=CODEC, framing=FRAMING, host=Host(config, ledger, default_scenario().response_rules),
                        ledger=ledger, committer=GroupCommitter(ledger),
                        config=ServerConfig(port=0, idle_timeout=idle_timeout, grace_period=2.0),
                        clock=lambda: NOW)


@asynccontextmanager
async def running(server: SwitchServer) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        yield listeners[0].socket.getsockname()[1]
        server.shutdown()


async def connect(port: int) -> FrameStream:
    return FrameStream(await trio.open_tcp_stream("127.0.0.1", port), FRAMING)


async def exchange(frames: FrameStream, request: Message) -> Message:
    await frames.send_frame(CODEC.encode(request))
    with trio.fail_after(5):
        frame = await frames.receive_frame()
    assert frame is not None, "server closed the connection"
    return CODEC.decode(frame.payload)


def network(code: str, terminal: str = "TERM0001", stan: int = 1) -> Message:
    return Message("0800", {7: F7, 11: f"{stan:06d}", 41: terminal, 70: code})


def purchase(stan: int, *, terminal: str = "TERM0001", amount: int = 1234,
             pan: str = "4761739001010010") -> Message:
    return Message("0200", {2: pan, 3: "000000", 4: f"{amount:012d}", 7: F7, 11: f"{stan:06d}",
                            12: F7[4:], 13: F7[:4], 14: "3012", 22: "051", 25: "00", 41: terminal,
                            42: "MERCHANT0000001", 49: "840"})


def reversal_of(original: Message, stan: int, mti: str = "0400") -> Message:
    fields = {k: v for k, v in original.fields.items() if k not in (35, 36, 52, 53)}
    fields[11] = f"{stan:06d}"
    fields[90] = OriginalData.of(original).format()
    return Message(mti, fields)


async def test_signon_purchase_reversal_and_repeat_over_loopback() -> None:
    server = make_server()
    async with running(server) as port:
        frames = await connect(port)
        assert (await exchange(frames, purchase(1)))[39] != "00"  # not signed on yet
        signon = await exchange(frames, network("001", stan=2))
        assert (signon.mti, signon[39]) == ("0810", "00")
        sale = purchase(3)
        approved = await exchange(frames, sale)
        assert approved.mti == "0210" and approved[39] == "00"
        assert approved[11] == "000003" and approved[4] == sale[4] and approved[41] == "TERM0001"
        assert len(approved[37]) == 12 and len(approved[38]) == 6
        assert (await exchange(frames, sale))[39] == "94"  # duplicate transmission
        reversed_ = await exchange(frames, reversal_of(sale, 4))
        assert (reversed_.mti, reversed_[39]) == ("0410", "00")
        repeat = await exchange(frames, reversal_of(sale, 4, "0401"))
        assert (repeat.mti, repeat[39]) == ("0410", "00")
        echo = await exchange(frames, network("301", stan=5))
        assert echo[39] == "00"
        await frames.aclose()
    postings = server.ledger.postings(terminal="TERM0001")
    assert len([p for p in postings if p.as_dict().get("reversed")]) == 1


async def test_test_card_declines_over_loopback() -> None:
    server = make_server(require_signon=False)
    async with running(server) as port:
        frames = await connect(port)
        assert (await exchange(frames, purchase(1, amount=0)))[39] == "13"
        assert (await exchange(frames, purchase(2, pan="4000000000000051")))[39] == "51"
        await frames.aclose()


async def test_many_requests_in_flight_on_one_connection_are_all_answered() -> None:
    server = make_server(require_signon=False)
    async with running(server) as port:
        frames = await connect(port)
        for stan in range(1, 101):
            await frames.send_frame(CODEC.encode(purchase(stan)))
        seen: set[str] = set()
        with trio.fail_after(10):
            while len(seen) < 100:
                frame = await frames.receive_frame()
                assert frame is not None
                reply = CODEC.decode(frame.payload)
                assert reply[39] == "00"
                seen.add(reply[11])
        await frames.aclose()
    assert len(seen) == 100


async def test_malformed_frame_gets_30_and_garbage_closes_only_that_connection() -> None:
    server = make_server(require_signon=False)
    async with running(server) as port:
        good = await connect(port)
        readable = await connect(port)
        garbage = await connect(port)
        # MTI and fields up to 4 readable, then the frame ends inside field 7
        truncated = CODEC.encode(purchase(1))[:40]
        await readable.send_frame(truncated)
        with trio.fail_after(5):
            frame = await readable.receive_frame()
        assert frame is not None
        reply = CODEC.decode(frame.payload)
        assert (reply.mti, reply[39]) == ("0210", "30")
        await garbage.send_frame(b"\xff\x00garbage that is no message")
        with trio.fail_after(5):
            assert await garbage.receive_frame() is None  # closed by the server
        assert (await exchange(good, purchase(2)))[39] == "00"
        for frames in (good, readable, garbage):
            await frames.aclose()


async def test_oversize_length_header_is_refused_before_the_body() -> None:
    server = make_server(require_signon=False)
    async with running(server) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all((60000).to_bytes(2, "big"))  # header only: the body never comes
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        await stream.aclose()
        frames = await connect(port)
        assert (await exchange(frames, network("301")))[39] == "00"
        await frames.aclose()


async def test_thousand_concurrent_connections() -> None:
    server = make_server()
    count = 1000
    async with running(server) as port:
        answered = 0

        async def one(index: int) -> None:
            nonlocal answered
            frames = await connect(port)
            reply = await exchange(frames, network("001", terminal=f"T{index:07d}"))
            assert reply[39] == "00"
            answered += 1
            await frames.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(count):
                    nursery.start_soon(one, index)
    assert answered == count


async def test_idle_connection_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(idle_timeout=30.0)
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_side)
        frames = FrameStream(client, FRAMING)
        start = trio.current_time()
        assert await frames.receive_frame() is None
        assert 30.0 <= trio.current_time() - start < 31.0


async def test_shutdown_drains_in_flight_requests() -> None:
    server = make_server(require_signon=False)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        port = listeners[0].socket.getsockname()[1]
        frames = await connect(port)
        for stan in range(1, 21):
            await frames.send_frame(CODEC.encode(purchase(stan)))
        with trio.fail_after(5):
            first = await frames.receive_frame()
        server.shutdown()
        assert first is not None
        replies = 1
        with trio.fail_after(5):
            while (frame := await frames.receive_frame()) is not None:
                assert CODEC.decode(frame.payload)[39] == "00"
                replies += 1
        # every request the server had read before the drain was answered, then the connection closed
        assert replies == server.stats.frames_in
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_an_internal_error_on_one_connection_never_stops_the_server(monkeypatch: pytest.MonkeyPatch,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(require_signon=False)
    write_loop = server._write_loop

    async def failing_on_the_first_connection(conn: _Connection) -> None:
        if conn.number == 1:
            raise RuntimeError("a bug in the writer")
        await write_loop(conn)

    monkeypatch.setattr(server, "_write_loop", failing_on_the_first_connection)
    async with running(server) as port:
        broken = await connect(port)
        with trio.fail_after(5):
            assert await broken.receive_frame() is None  # that connection is closed ...
        good = await connect(port)
        assert (await exchange(good, purchase(1)))[39] == "00"  # ... and the server still serves
        await good.aclose()
        await broken.aclose()
    assert "internal error" in caplog.text


async def test_connections_beyond_max_connections_are_closed_over_loopback(caplog: pytest.LogCaptureFixture) -> None:
    server = make_server()
    server.config.max_connections = 3
    async with running(server) as port:
        kept = [await connect(port) for _ in range(3)]
        for frames in kept:  # each is being served before the next one arrives
            assert (await exchange(frames, network("301")))[39] == "00"
        extra = await connect(port)
        with trio.fail_after(5):
            assert await extra.receive_frame() is None  # closed at once
        await kept[0].aclose()
        with trio.fail_after(5):
            while server.stats.connections_open > 2:
                await trio.sleep(0.01)
        again = await connect(port)  # room again
        assert (await exchange(again, network("301")))[39] == "00"
        for frames in [*kept[1:], extra, again]:
            await frames.aclose()
    assert "connection refused: 3 connections open (--max-connections 3)" in caplog.text
    assert server.stats.connections_refused == 1


async def test_a_client_in_another_dialect_gets_one_warning_with_a_hint(caplog: pytest.LogCaptureFixture) -> None:
    """At the default verbosity: a client sending iso87-ascii to an iso87-binary listener is told
    apart from noise, once per burst rather than once per frame."""
    ascii_codec = Codec(load_dialect("iso87-ascii"))
    server = make_server(require_signon=False)
    async with running(server) as port:
        frames = await connect(port)
        for stan in (1, 2, 3):
            await frames.send_frame(ascii_codec.encode(purchase(stan)))
            with trio.fail_after(5):
                await frames.receive_frame()  # a 30, or the close
        await frames.aclose()
    warnings = [r.getMessage() for r in caplog.records if "undecodable frame" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "it decodes as iso87-ascii, not as iso87-binary" in warnings[0]


async def test_an_ascii_length_header_on_a_binary_framing_is_named(caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(require_signon=False)
    async with running(server) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"0123" + b"0" * 123)  # a 4-digit ASCII length header
        with trio.fail_after(5):
            while await stream.receive_some(100):
                pass
        await stream.aclose()
    assert "the length header is ASCII digits" in caplog.text


def test_serving_freezes_what_start_up_loaded_and_collects_young_objects_less_often() -> None:
    """``run_until_signalled`` (the CLI's server) makes the collector cheaper per request; a
    collector switched off stays off."""
    threshold = gc.get_threshold()
    alive = [object()]  # a container the collector tracks, alive when serving starts
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc_for_serving()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0 and gc.is_tracked(alive)
        assert not any(item is alive for item in gc.get_objects())  # frozen: no collection scans it
        gc.unfreeze()
        gc.set_threshold(0, 10, 10)
        tune_gc_for_serving()
        assert gc.get_threshold()[0] == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
