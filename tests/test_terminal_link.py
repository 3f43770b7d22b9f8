"""The link's own socket calls on plain TCP (``Link.send`` / ``Link._receive``), over real loopback
sockets: a write the kernel cannot take at once finishes through Trio's path or stops at its deadline
(False, part of it written), a reset peer gives Trio's error, a closed peer ends the stream, and a
reply already there is read without waiting. The clock is Trio's autojump clock: a blocked write
reaches its deadline at once, without a real wait."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from switch.codec import load_dialect
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from terminal.link import Ended, Link

FRAMING = Framing.from_dialect(load_dialect("iso87-binary"))
BIG = 8 * 1024 * 1024  # far more than both sockets' buffers hold


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[Link, trio.SocketStream]]:
    """(an inline link on a TCP connection to 127.0.0.1, the peer's end of it)."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stream = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    peer_sock, _ = await listener.accept()
    listener.close()
    peer = trio.SocketStream(peer_sock)
    link = Link(FrameStream(stream, FRAMING), inline=True)
    try:
        yield link, peer
    finally:
        await trio.aclose_forcefully(stream)
        await trio.aclose_forcefully(peer)


async def drain(peer: trio.SocketStream, count: int) -> bytes:
    received = bytearray()
    while len(received) < count:
        data = await peer.receive_some(65536)
        if not data:
            break
        received += data
    return bytes(received)


async def test_the_link_calls_the_socket_itself_on_plain_tcp() -> None:
    async with connected() as (link, _peer):
        assert link._sock is not None  # else every test below would only test Trio's path


async def test_a_write_too_big_for_the_kernel_finishes_through_the_waiting_path(autojump_clock: Any) -> None:
    data = bytes(range(256)) * (BIG // 256)
    async with connected() as (link, peer):
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await drain(peer, len(data)))

            nursery.start_soon(reader)
            assert await link.send(data, trio.current_time() + 60)
        assert got == [data]  # every byte, in order, once


async def test_a_blocked_write_stops_at_its_deadline_with_part_written(autojump_clock: Any) -> None:
    async with connected() as (link, peer):
        assert not await link.send(b"x" * BIG, trio.current_time() + 5)  # nobody reads: the deadline comes
        await link.frames.stream.send_eof()
        written = await drain(peer, BIG)  # what the kernels took before the deadline, then the EOF
        assert 0 < len(written) < BIG


async def test_a_deadline_already_past_writes_nothing(autojump_clock: Any) -> None:
    async with connected() as (link, peer):
        assert not await link.send(b"hello", trio.current_time() - 1)
        await link.frames.stream.send_eof()
        assert await drain(peer, 5) == b""


async def test_a_write_to_a_reset_peer_is_trios_broken_resource_error() -> None:
    async with connected() as (link, peer):
        peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.aclose()  # RST
        with trio.fail_after(5):
            with pytest.raises(trio.BrokenResourceError, match="socket connection broken") as caught:
                for _ in range(100):  # the first write may still be taken; the RST makes a later one fail
                    await link.send(b"x" * 4096, trio.current_time() + 5)
                    await trio.sleep(0)
        assert isinstance(caught.value.__cause__, OSError)


async def test_a_closed_peer_ends_the_stream_and_a_waiting_reply_is_read_at_once() -> None:
    async with connected() as (link, peer):
        frame = FRAMING.encode(b"0810" + b"\x00" * 8, None)
        await peer.send_all(frame)
        await peer.aclose()
        with trio.fail_after(5):
            first = await link.read_one()
            assert not isinstance(first, Ended) and first.payload == b"0810" + b"\x00" * 8
            assert isinstance(await link.read_one(), Ended)
