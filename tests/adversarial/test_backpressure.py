"""Issue 12 item 1: a peer that sends and never reads cannot grow the switch's memory, and is closed.

Over lockstep memory streams (a write blocks until the other side reads, like a full socket
buffer) and the autojump clock: no real sleeps, and the bound is asserted on what the server
read and holds, plus tracemalloc's peak, not on timing.
"""

from __future__ import annotations

import logging
import tracemalloc

import pytest
import trio
import trio.testing

from switch.codec.stream import FrameStream
from tests.test_server import CODEC, FRAMING, make_server, network, purchase

pytestmark = pytest.mark.usefixtures("inline_threads")

SENT = 5000
MAX_PENDING = 16


async def _flood(stream: trio.abc.SendStream, frames: list[bytes], sent: list[int]) -> None:
    """Send every frame, counting them, until the server stops reading (close) or all are sent."""
    try:
        for frame in frames:
            await stream.send_all(frame)
            sent[0] += 1
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_a_peer_that_never_reads_is_bounded_and_closed_after_the_idle_timeout(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "switch.server")
    server = make_server(idle_timeout=30.0, require_signon=False)
    server.config.max_pending = MAX_PENDING
    client, server_side = trio.testing.lockstep_stream_pair()
    frames = [FRAMING.encode(CODEC.encode(purchase(stan) if stan % 2 else network("301", stan=stan)))
              for stan in range(1, SENT + 1)]
    sent = [0]
    tracemalloc.start()
    try:
        start = trio.current_time()
        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.committer.run)
                nursery.start_soon(_flood, client, frames, sent)
                await server.handle_stream(server_side)  # returns when the server gives up on the peer
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the server read a bounded number of requests: the queue of unsent replies and what the reader
    # took in before it stopped (at most one receive buffer's worth of frames beyond the queue)
    assert server.stats.frames_in <= MAX_PENDING + 400, server.stats.frames_in
    assert sent[0] < SENT  # the flood was held back, not absorbed
    assert peak < 2_000_000, f"tracemalloc peak {peak} bytes"
    assert server.stats.connections_open == 0
    assert 30.0 <= elapsed < 31.0  # closed after the idle timeout, though replies were still pending
    assert "peer has read nothing for 30s" in caplog.text


async def test_a_peer_that_half_closes_and_never_reads_is_closed_too(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(idle_timeout=10.0, require_signon=False)
    server.config.max_pending = MAX_PENDING
    client, server_side = trio.testing.lockstep_stream_pair()

    async def send_then_half_close() -> None:
        # lockstep: this only completes as the server reads; it stops reading when MAX_PENDING wait
        with trio.move_on_after(5):
            for stan in range(1, 4):
                await client.send_all(FRAMING.encode(CODEC.encode(network("301", stan=stan))))
            await client.send_stream.aclose()

    start = trio.current_time()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_half_close)
            await server.handle_stream(server_side)
    assert server.stats.frames_in == 3
    assert server.stats.responses_out == 0  # the peer never read one
    assert 10.0 <= trio.current_time() - start < 11.0


async def test_a_slow_reader_gets_every_reply(autojump_clock: trio.testing.MockClock) -> None:
    """Backpressure pauses reading; it never loses a request of a peer that does read."""
    server = make_server(idle_timeout=30.0, require_signon=False)
    server.config.max_pending = 4
    client, server_side = trio.testing.lockstep_stream_pair()
    frames = FrameStream(client, FRAMING)
    count = 200
    seen: set[str] = set()

    async def send_all() -> None:
        for stan in range(1, count + 1):
            await frames.send_frame(CODEC.encode(purchase(stan)))

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.committer.run)
            nursery.start_soon(server.handle_stream, server_side)
            nursery.start_soon(send_all)
            while len(seen) < count:
                await trio.sleep(0.5)  # reads slowly, in virtual time: far slower than the switch answers
                frame = await frames.receive_frame()
                assert frame is not None
                reply = CODEC.decode(frame.payload)
                assert reply[39] == "00"
                seen.add(reply[11])
            await frames.aclose()
            nursery.cancel_scope.cancel()
    assert len(seen) == count


async def test_connections_over_the_limit_are_refused_with_one_line(autojump_clock: trio.testing.MockClock,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(idle_timeout=None, require_signon=False)
    server.config.max_connections = 2
    async with trio.open_nursery() as nursery:
        kept = []
        for _ in range(2):
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, server_side)
            kept.append(FrameStream(client, FRAMING))
        await trio.testing.wait_all_tasks_blocked()
        refused = []
        for _ in range(50):  # a flood: one line, not fifty
            client, server_side = trio.testing.memory_stream_pair()
            await server.handle_stream(server_side)
            refused.append(client)
        for client in refused:
            assert await client.receive_some(10) == b""  # closed at once
        # the connections within the limit are served as usual
        await kept[0].send_frame(CODEC.encode(network("301")))
        frame = await kept[0].receive_frame()
        assert frame is not None and CODEC.decode(frame.payload)[39] == "00"
        for frames in kept:
            await frames.aclose()
    lines = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert len(lines) == 1 and "2 connections open (--max-connections 2)" in lines[0], lines
    assert server.stats.connections_refused == 50
