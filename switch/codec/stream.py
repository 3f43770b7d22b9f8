"""The thin Trio shell around ``FrameDecoder``: whole frames in and out of a ``trio.abc.Stream``.

All framing decisions live in ``switch.codec.framing``; this module only reads bytes until the
decoder yields a frame, and writes frames under a lock so that concurrent answers on one
connection (requests may be answered out of order) never interleave their bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

from switch.codec.framing import Frame, FrameDecoder, Framing


class FrameStream(trio.abc.AsyncResource):
    """Reads whole frames from, and writes frames to, a trio.abc.Stream; writes are serialized by a trio.Lock
    so several tasks may answer on one connection concurrently without interleaving bytes.

    Reading is for one task at a time (a second concurrent ``receive_frame`` raises
    ``trio.BusyResourceError``). After a ``FramingError`` the byte stream is out of step and the
    connection should be closed. A send cancelled midway may leave a partial frame on the wire,
    which likewise ends the connection's usefulness (trio's ``send_all`` contract).
    """

    def __init__(self, stream: trio.abc.Stream, framing: Framing, *, receive_size: int = 65536) -> None:
        if not isinstance(receive_size, int) or receive_size < 1:
            raise ValueError(f"receive_size must be a positive integer, got {receive_size!r}")
        self._stream = stream
        self._framing = framing
        self._receive_size = receive_size
        self._decoder = FrameDecoder(framing)
        self._send_lock = trio.Lock()
        self._receiving = False
        self._keepalive_bytes = framing.encode(b"")

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    @property
    def framing(self) -> Framing:
        return self._framing

    async def receive_frame(self) -> Frame | None:
        """The next frame; None on a clean end of stream at a frame boundary.

        Raises ``TruncatedFrameError`` if the stream ends mid-frame and ``OversizeFrameError`` as
        soon as an oversize length header arrives, before any of its body is read. Keep-alive
        frames are returned too (so the caller can reset idle timers); in "echo" mode a
        zero-length frame is written back first.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving frames on this stream")
        self._receiving = True
        try:
            while (frame := self._decoder.next_frame()) is None:
                data = await self._stream.receive_some(self._receive_size)
                if not data:
                    self._decoder.close()
                    return None
                self._decoder.feed(data)
        finally:
            self._receiving = False
        if frame.is_keepalive and self._framing.keepalive == "echo":
            await self.send_raw(self._keepalive_bytes)
        return frame

    async def send_frame(self, payload: bytes, tpdu: bytes | None = None) -> None:
        """Frame and send one message; framing errors are raised before any byte is written."""
        await self.send_raw(self._framing.encode(payload, tpdu))

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (fault injection: garbage, a wrong length header), under the same lock.

        An uncontended lock is taken without ``Lock.acquire``'s own checkpoint: ``send_all`` is one
        already, and the extra trip through the scheduler was a measurable share of a reply's cost
        (one per batch of replies). A free lock has no waiters, so nobody is passed over."""
        lock = self._send_lock
        if lock.locked():
            async with lock:
                await self._stream.send_all(data)
            return
        lock.acquire_nowait()
        try:
            await self._stream.send_all(data)
        finally:
            lock.release()

    @contextlib.asynccontextmanager
    async def sending(self) -> AsyncIterator[trio.abc.Stream]:
        """Hold the send lock and get the raw stream: bytes written inside stay together on the wire
        (a reply written piecemeal with pauses), while other senders wait for the block to end."""
        async with self._send_lock:
            yield self._stream

    async def aclose(self) -> None:
        await self._stream.aclose()
