"""FrameStream over in-memory Trio streams: partial reads, EOF, keep-alives, concurrent writers."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from switch.codec.framing import (
    Frame,
    Framing,
    FramingError,
    OversizeFrameError,
    TruncatedFrameError,
    split_frames,
)
from switch.codec.stream import FrameStream

CUP_TPDU = bytes.fromhex("6000030000")


class CountingStream(trio.abc.Stream):
    """Wraps a stream; counts receive_some calls and can split each send_all into small pieces.

    Splitting with a checkpoint between pieces gives other tasks the chance to write in the
    middle of a frame, which is exactly what FrameStream's send lock must prevent.
    """

    def __init__(self, inner: trio.abc.Stream, *, send_piece: int | None = None):
        self.inner = inner
        self.send_piece = send_piece
        self.receives = 0

    async def send_all(self, data) -> None:
        if self.send_piece is None:
            await self.inner.send_all(data)
            return
        for start in range(0, len(data), self.send_piece):
            await self.inner.send_all(data[start : start + self.send_piece])
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        self.receives += 1
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def frame_pair(framing: Framing, *, receive_size: int = 65536) -> tuple[FrameStream, FrameStream]:
    left, right = trio.testing.memory_stream_pair()
    return FrameStream(left, framing, receive_size=receive_size), FrameStream(
        right, framing, receive_size=receive_size
    )


async def test_frames_round_trip_with_tpdu():
    client, server = frame_pair(Framing(tpdu=True))
    await client.send_frame(b"0800 sign-on", CUP_TPDU)
    await client.send_frame(b"0200 purchase", CUP_TPDU)
    assert await server.receive_frame() == Frame(b"0800 sign-on", CUP_TPDU)
    assert await server.receive_frame() == Frame(b"0200 purchase", CUP_TPDU)
    await server.send_frame(b"0810", bytes.fromhex("6000000003"))
    assert await client.receive_frame() == Frame(b"0810", bytes.fromhex("6000000003"))


@pytest.mark.parametrize("receive_size", [1, 2, 3, 7])
async def test_partial_reads_reassemble_whole_frames(receive_size):
    framing = Framing("ascii4", tpdu=True)
    client, server = frame_pair(framing, receive_size=receive_size)
    frames = [Frame(bytes([n]) * (n * 5), CUP_TPDU) for n in range(1, 6)] + [Frame(b"")]
    for frame in frames:
        await client.send_frame(frame.payload, frame.tpdu)
    await client.aclose()
    received = []
    while (frame := await server.receive_frame()) is not None:
        received.append(frame)
    assert received == frames


async def test_frame_trickling_in_byte_by_byte_over_a_lockstep_stream():
    framing = Framing("bcd2", length_includes_itself=True)
    left, right = trio.testing.lockstep_stream_pair()
    server = FrameStream(right, framing)
    wire = framing.encode(b"0200 trickled") + framing.encode(b"0200 second")

    async def trickle() -> None:
        for byte in wire:
            await left.send_all(bytes([byte]))
        await left.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        assert await server.receive_frame() == Frame(b"0200 trickled")
        assert await server.receive_frame() == Frame(b"0200 second")
        assert await server.receive_frame() is None


async def test_several_frames_in_one_read():
    framing = Framing()
    left, right = trio.testing.memory_stream_pair()
    counting = CountingStream(right)
    server = FrameStream(counting, framing)
    payloads = [b"0800", b"0200 one", b"0200 two", b"0400"]
    await left.send_all(b"".join(framing.encode(p) for p in payloads))
    assert [(await server.receive_frame()).payload for _ in payloads] == payloads
    assert counting.receives == 1
    assert server.stream is counting


async def test_clean_eof_at_a_frame_boundary_returns_none():
    client, server = frame_pair(Framing())
    await client.send_frame(b"last")
    await client.aclose()
    assert await server.receive_frame() == Frame(b"last")
    assert await server.receive_frame() is None
    assert await server.receive_frame() is None  # EOF stays EOF


async def test_eof_mid_frame_is_truncated():
    framing = Framing()
    client, server = frame_pair(framing)
    await client.send_raw(framing.encode(b"0200 never finished")[:9])
    await client.aclose()
    with pytest.raises(TruncatedFrameError) as info:
        await server.receive_frame()
    assert len(info.value.buffered) == 9


async def test_oversize_header_is_refused_before_the_body_is_sent(autojump_clock):
    framing = Framing("binary2", max_frame=1024)
    client, server = frame_pair(framing)
    await client.send_raw((1025).to_bytes(2, "big"))  # the header alone; the body never comes
    with trio.fail_after(5), pytest.raises(OversizeFrameError) as info:
        await server.receive_frame()
    assert (info.value.declared, info.value.limit) == (1025, 1024)


async def test_bad_length_header_over_the_stream():
    client, server = frame_pair(Framing("ascii4"))
    await client.send_raw(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FramingError, match="47 45 54 20"):
        await server.receive_frame()


async def test_keepalive_ignore_returns_the_frame_and_writes_nothing(autojump_clock):
    client, server = frame_pair(Framing(keepalive="ignore"))
    await client.send_frame(b"")
    frame = await server.receive_frame()
    assert frame == Frame(b"") and frame.is_keepalive
    with trio.move_on_after(10) as waited:
        await client.stream.receive_some()
    assert waited.cancelled_caught


@pytest.mark.parametrize(
    ("framing", "echoed"),
    [
        (Framing("binary2", keepalive="echo"), b"\x00\x00"),
        (Framing("binary2", tpdu=True, keepalive="echo"), b"\x00\x00"),
        (Framing("ascii4", length_includes_itself=True, keepalive="echo"), b"0004"),
    ],
)
async def test_keepalive_echo_writes_a_zero_length_frame_back(framing, echoed):
    client, server = frame_pair(framing)
    await client.send_raw(echoed)
    frame = await server.receive_frame()
    assert frame.is_keepalive
    assert await client.stream.receive_some() == echoed


async def test_concurrent_senders_never_interleave():
    framing = Framing("binary4", max_frame=1 << 20)
    left, right = trio.testing.memory_stream_pair()
    sender = FrameStream(CountingStream(left, send_piece=997), framing)
    receiver = FrameStream(right, framing)
    rng = random.Random(8583)
    payloads = [bytes([n]) * rng.randrange(4_000, 40_000) for n in range(50)]

    async def answer(payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        await sender.send_frame(payload)

    received: list[bytes] = []

    async def receive_all() -> None:
        for _ in payloads:
            received.append((await receiver.receive_frame()).payload)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_all)
            async with trio.open_nursery() as senders:
                for payload in payloads:
                    senders.start_soon(answer, payload)
    assert sorted(received) == sorted(payloads)


async def test_send_raw_shares_the_lock_with_send_frame():
    framing = Framing()
    left, right = trio.testing.memory_stream_pair()
    sender = FrameStream(CountingStream(left, send_piece=3), framing)
    garbage = b"\x00\x05junk!" * 20

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send_frame, b"A" * 300)
        nursery.start_soon(sender.send_raw, garbage)
        nursery.start_soon(sender.send_frame, b"B" * 300)
    await sender.aclose()
    wire = b""
    while chunk := await right.receive_some():
        wire += chunk
    frames = split_frames(framing, wire)
    assert sorted(f.payload for f in frames) == sorted([b"A" * 300, b"B" * 300] + [b"junk!"] * 20)


async def test_send_frame_refuses_bad_input_before_writing():
    client, server = frame_pair(Framing(tpdu=True, max_frame=64))
    with pytest.raises(FramingError):
        await client.send_frame(b"no tpdu")
    with pytest.raises(OversizeFrameError):
        await client.send_frame(b"x" * 60, CUP_TPDU)
    await client.send_frame(b"ok", CUP_TPDU)
    assert await server.receive_frame() == Frame(b"ok", CUP_TPDU)


async def test_only_one_task_may_receive_at_a_time():
    _client, server = frame_pair(Framing())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.receive_frame)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.receive_frame()
        nursery.cancel_scope.cancel()


async def test_aclose_closes_the_underlying_stream():
    client, server = frame_pair(Framing())
    async with client:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await client.send_frame(b"after close")
    assert await server.receive_frame() is None


def test_receive_size_must_be_positive():
    left, _right = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="receive_size"):
        FrameStream(left, Framing(), receive_size=0)
