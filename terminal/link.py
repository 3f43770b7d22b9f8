"""One open connection of a terminal to its host (``TerminalClient``'s link): its frame stream, read
inline by the driver (plain TCP: no task switch per reply; ``arrived`` asks the kernel, without
waiting, whether anything came between commands) or by a reader task into an inbox (TLS, test
streams). Split from ``terminal.client`` so each file has one job.

Inline on plain TCP the link also calls the socket itself (``send``, ``_receive``): Trio's stream
methods wrap every call in context managers and a trip through the scheduler after each success,
a visible share of a load terminal's CPU per request. Here a write the kernel takes at once costs
one system call and no task switch, and a read waits (``wait_readable``) only when nothing is
there yet; errors are reported as Trio's ``SocketStream`` reports them, so notes read the same."""

from __future__ import annotations

import errno
import select
import socket
from dataclasses import dataclass

import trio

from switch.codec.framing import Frame, FrameDecoder, FramingError
from switch.codec.stream import FrameStream
from terminal.wire_hints import closed_by_host_text, framing_error_text

__all__ = ["Ended", "Link", "describe"]

_INBOX_SIZE = 16  # frames read ahead of the driver; a full inbox stops the reader (backpressure)
_RECEIVE_SIZE = 65536  # bytes asked of the stream per read (as FrameStream does)
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})  # trio's SocketStream: "already closed", not broken


@dataclass(frozen=True)
class Ended:
    """The reader's last word: the connection ended (peer closed, reset, framing error)."""

    reason: str


class Link:
    """One open connection: its frame stream and, unless it is read inline, the reader task's scope
    and inbox."""

    def __init__(self, frames: FrameStream, inline: bool) -> None:
        self.frames = frames
        self.inline = inline
        self.reader_scope = trio.CancelScope()
        self.send_inbox, self.inbox = trio.open_memory_channel[Frame | Ended](_INBOX_SIZE)
        self.frames_received = 0  # a close before any reply hints at TLS or a refusing host
        # inline: the link decodes frames itself, so it knows what one read brought beyond the reply
        self._decoder = FrameDecoder(frames.framing) if inline else None
        self._decoded: Frame | None = None  # a whole frame ``arrived`` took from the decoder, not yet read
        self._poller: select.poll | None = None  # inline on a socket: asks the kernel what arrived
        self._sock: socket.socket | None = None  # inline on a socket: the socket, called directly
        if inline and isinstance(frames.stream, trio.SocketStream):
            self._poller = select.poll()
            self._poller.register(frames.stream.socket.fileno(), select.POLLIN)
            raw = getattr(frames.stream.socket, "_sock", None)  # Trio's own socket object under its wrapper
            if isinstance(raw, socket.socket) and not raw.getblocking():
                self._sock = raw

    async def read_one(self) -> Frame | Ended:
        """The next non-keep-alive frame, or ``Ended`` when the connection ended (peer closed,
        reset, framing error). Cancel-safe: a partial frame stays in the decoder."""
        while True:
            item = await self._read_item()
            if isinstance(item, Ended) or not item.is_keepalive:
                return item

    async def read_arrived(self) -> Frame | Ended | None:
        """Inline links between commands: ``read_one`` of what has ARRIVED only; None as soon as nothing
        more is waiting (a keep-alive taken, or only part of a frame buffered): never a wait for bytes
        the host has not sent."""
        while self.arrived():
            item = await self._read_item()
            if isinstance(item, Ended) or not item.is_keepalive:
                return item
        return None

    async def _read_item(self) -> Frame | Ended:
        """The next frame, keep-alives included (echoed when the framing says so), or ``Ended``."""
        framing = self.frames.framing
        try:
            frame = await self._next_frame()
            if self._decoder is not None and frame is not None and frame.is_keepalive \
                    and framing.keepalive == "echo":  # what FrameStream.receive_frame does for the reader
                await self.frames.send_raw(framing.encode(b""))
        except FramingError as exc:
            return Ended(framing_error_text(exc, framing))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            return Ended(describe(exc, "connection broken"))
        if frame is None:
            return Ended(closed_by_host_text(self.frames_received))
        self.frames_received += 1
        return frame

    async def _next_frame(self) -> Frame | None:
        """The next frame (keep-alives too); None at a clean end of the stream at a frame boundary."""
        decoder = self._decoder
        if decoder is None:
            return await self.frames.receive_frame()
        decoded = self._decoded
        if decoded is not None:  # taken from the decoder by ``arrived``
            self._decoded = None
            return decoded
        while (frame := decoder.next_frame()) is None:
            data = await self._receive()
            if not data:
                decoder.close()  # TruncatedFrameError when the stream ended inside a frame
                return None
            decoder.feed(data)
        return frame

    async def _receive(self) -> bytes | bytearray:
        """Bytes from the stream (b"" at its end). On a socket: ``recv`` at once, waiting for the
        kernel only when nothing is there, and a checkpoint (as Trio's) only when nothing was awaited;
        the caller's deadline bounds the waits."""
        sock = self._sock
        if sock is None:
            return await self.frames.stream.receive_some(_RECEIVE_SIZE)
        await trio.lowlevel.checkpoint_if_cancelled()  # a deadline already past reads nothing, as with Trio
        waited = False
        while True:
            try:
                data = sock.recv(_RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            except OSError as exc:
                raise _stream_error(exc)  # noqa: B904 (its cause is set as Trio sets it)
            if not waited:  # other tasks get their turn even when every reply is already there
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send(self, data: bytes, deadline: float) -> bool:
        """Write ``data`` by ``deadline`` (Trio time); False when the deadline came first (part of it
        may be on the wire). Raises trio.BrokenResourceError / ClosedResourceError like ``send_all``.
        On a socket what the kernel takes at once is written without waiting or a task switch."""
        sock = self._sock
        if sock is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            if trio.current_time() < deadline:  # else: nothing is written, as under an expired move_on_at
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise _stream_error(exc)  # noqa: B904 (its cause is set as Trio sets it)
                if sent == len(data):
                    return True
                data = data[sent:]
        with trio.move_on_at(deadline):
            await self.frames.send_raw(data)
            return True
        return False

    def arrived(self) -> bool:
        """Inline links: whether anything is waiting — a whole frame the last read brought beyond the
        one it returned, or, on a socket, bytes or a close the kernel holds (no wait, no task switch).
        Part of a frame alone is not "arrived": its rest may never come."""
        decoder = self._decoder
        if decoder is not None and self._decoded is None and decoder.buffered:
            try:
                self._decoded = decoder.next_frame()
            except FramingError:
                return True  # the decoder stays failed: the next read meets the same error
        if self._decoded is not None:
            return True
        return self._poller is not None and bool(self._poller.poll(0))

    async def read(self) -> None:
        """Reader task (links not read inline): every non-keep-alive frame into the inbox, then one ``Ended``."""
        with self.reader_scope:
            try:
                while True:
                    item = await self.read_one()
                    if isinstance(item, Ended):
                        await self.send_inbox.send(item)
                        return
                    try:  # no extra yield per reply when the inbox has room (the next read yields anyway)
                        self.send_inbox.send_nowait(item)
                    except trio.WouldBlock:
                        await self.send_inbox.send(item)  # full: wait for the driver (backpressure)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the driver dropped this link: nobody is listening any more

    async def close(self) -> None:
        self.reader_scope.cancel()
        self.inbox.close()
        await trio.aclose_forcefully(self.frames)


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """``exc`` as Trio's ``SocketStream`` raises it (the same text in the terminal's notes): "already
    closed" without a cause, broken ``from exc``."""
    error: trio.BrokenResourceError | trio.ClosedResourceError
    if exc.errno in _CLOSED_ERRNOS:
        error = trio.ClosedResourceError("this socket was already closed")
    else:
        error = trio.BrokenResourceError(f"socket connection broken: {exc}")
        error.__cause__ = exc
    error.__suppress_context__ = True
    return error


def describe(exc: BaseException, fallback: str) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or f"{fallback} ({type(exc).__name__})"
