"""Framing: the length header and optional TPDU around an encoded message, independent of dialect.

ISO 8583 says nothing about how messages travel over TCP, so every host picks a length header
(binary, ASCII or BCD digits; sometimes counting its own bytes) and some networks (CUP) put a
5-byte TPDU between that header and the message. This module is pure: ``Framing.encode`` builds
one frame and ``FrameDecoder`` turns arbitrary chunks of a byte stream back into frames, so the
Trio shell (``switch.codec.stream``) only moves bytes and every framing rule is unit-testable.

Wire layout of one frame::

    length header | [TPDU, 5 bytes] | message

The header's value is the body size (TPDU + message), plus the header's own size when
``length_includes_itself``. A zero-length body is a keep-alive (``Frame(b"")``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: dialect.py imports this module, not the other way round
    from switch.codec.dialect import Dialect

LENGTH_HEADERS = ("binary2", "binary4", "ascii2", "ascii4", "bcd2")
KEEPALIVE_MODES = ("ignore", "echo")
TPDU_LENGTH = 5
MAX_FRAME_LIMIT = 1 << 24  # a peer can make us buffer max_frame bytes; refuse absurd settings

# header kind -> (size in bytes, largest value it can express)
_HEADER_SPECS: dict[str, tuple[int, int]] = {
    "binary2": (2, 0xFFFF),
    "binary4": (4, 0xFFFF_FFFF),
    "ascii2": (2, 99),
    "ascii4": (4, 9999),
    "bcd2": (2, 9999),
}


class FramingError(ValueError):
    """Bytes (or settings) that break the framing rules; ``reason`` says which rule and shows the bytes."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class OversizeFrameError(FramingError):
    """A frame whose declared body (TPDU + message) exceeds the limit.

    The decoder raises it as soon as the length header is complete, so a peer cannot make us
    buffer a huge body just to refuse it. ``declared`` and ``limit`` are body sizes in bytes.
    """

    def __init__(self, declared: int, limit: int, reason: str | None = None):
        self.declared = declared
        self.limit = limit
        super().__init__(reason or f"frame body of {declared} bytes exceeds the limit of {limit} bytes")


class TruncatedFrameError(FramingError):
    """The stream ended in the middle of a frame; ``buffered`` holds the bytes of the partial frame."""

    def __init__(self, buffered: bytes, reason: str | None = None):
        self.buffered = bytes(buffered)
        super().__init__(
            reason
            or f"stream ended mid-frame with {len(self.buffered)} bytes buffered: {_show(self.buffered)}"
        )


def _show(data: bytes | bytearray, limit: int = 16) -> str:
    """Hex of the first bytes, for error messages that must name the bytes at fault."""
    shown = bytes(data[:limit]).hex(" ")
    return shown + (" ..." if len(data) > limit else "") if data else "(none)"


@dataclass(frozen=True, slots=True)
class Framing:
    """How frames travel on one connection; validated on construction so bad settings fail early."""

    length_header: str = "binary2"
    length_includes_itself: bool = False  # some hosts count the header bytes in the length
    tpdu: bool = False  # 5-byte TPDU between length header and message (CUP)
    max_frame: int = 8192  # maximum body size (TPDU + message) in bytes
    keepalive: str = "ignore"  # zero-length frames: "ignore" or "echo"

    def __post_init__(self) -> None:
        if self.length_header not in LENGTH_HEADERS:
            raise FramingError(
                f"length_header must be one of {', '.join(LENGTH_HEADERS)}, got {self.length_header!r}"
            )
        for flag in ("length_includes_itself", "tpdu"):
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise FramingError(f"{flag} must be true or false, got {value!r}")
        if (
            not isinstance(self.max_frame, int)
            or isinstance(self.max_frame, bool)
            or not 1 <= self.max_frame <= MAX_FRAME_LIMIT
        ):
            raise FramingError(f"max_frame must be an integer 1..{MAX_FRAME_LIMIT}, got {self.max_frame!r}")
        if self.tpdu and self.max_frame < TPDU_LENGTH:
            raise FramingError(
                f"max_frame must be at least {TPDU_LENGTH} (the TPDU) when tpdu is on, got {self.max_frame}"
            )
        if self.keepalive not in KEEPALIVE_MODES:
            raise FramingError(
                f"keepalive must be one of {', '.join(KEEPALIVE_MODES)}, got {self.keepalive!r}"
            )

    @classmethod
    def from_dialect(cls, dialect: Dialect, **overrides: Any) -> Framing:
        """The dialect's framing with command-line overrides; an override of ``None`` means "not given"."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise FramingError(f"unknown framing option {unknown[0]!r} (known: {', '.join(names)})")
        values = {name: getattr(dialect.framing, name) for name in names}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    @property
    def header_size(self) -> int:
        return _HEADER_SPECS[self.length_header][0]

    @property
    def _body_capacity(self) -> int:
        """Largest body the length header can express."""
        size, largest = _HEADER_SPECS[self.length_header]
        return largest - size if self.length_includes_itself else largest

    def header_saying(self, value: int) -> bytes:
        """A length header of this framing's kind that says ``value`` as written, clamped to what it
        can express: for fault injection and fuzzing, which need headers that disagree with the body."""
        size = self.header_size
        kind = self.length_header
        value = max(0, value)
        if kind.startswith("binary"):
            return min(value, 256**size - 1).to_bytes(size, "big")
        if kind.startswith("ascii"):
            return f"{min(value, 10**size - 1):0{size}d}".encode()
        return bytes.fromhex(f"{min(value, 9999):04d}")  # bcd2

    def encode(self, payload: bytes, tpdu: bytes | None = None) -> bytes:
        """One frame: length header (+ TPDU) + payload.

        With ``tpdu`` on, every message needs a 5-byte TPDU; the one exception is
        ``encode(b"")`` without a TPDU, which is the zero-length keep-alive frame in any mode.
        """
        keepalive = not payload and tpdu is None
        if tpdu is not None:
            if not self.tpdu:
                raise FramingError("a TPDU was given but this framing carries none (tpdu is off)")
            if len(tpdu) != TPDU_LENGTH:
                raise FramingError(f"a TPDU is {TPDU_LENGTH} bytes, got {len(tpdu)}: {_show(tpdu)}")
        elif self.tpdu and not keepalive:
            raise FramingError("this framing carries a TPDU before every message, but none was given")
        body = len(payload) + (TPDU_LENGTH if tpdu is not None else 0)
        if body > self.max_frame:
            raise OversizeFrameError(body, self.max_frame)
        capacity = self._body_capacity
        if body > capacity:
            counted = ", which counts its own bytes" if self.length_includes_itself else ""
            raise OversizeFrameError(
                body,
                capacity,
                f"frame body of {body} bytes does not fit a "
                f"{self.length_header} length header (at most {capacity} bytes{counted})",
            )
        return b"".join((self._encode_length(body), tpdu or b"", payload))

    def encoder(self) -> Callable[[bytes, bytes | None], bytes]:
        """``encode`` for a hot path: without a TPDU and within the size limits, one length header
        and one concatenation (what ``encode`` would return); anything else goes to ``encode``."""
        encode = self.encode
        kind = self.length_header
        if self.tpdu or not kind.startswith(("binary", "ascii")):
            return encode
        size = self.header_size
        limit = min(self.max_frame, self._body_capacity)
        extra = size if self.length_includes_itself else 0
        if kind.startswith("binary"):
            def header(value: int) -> bytes:
                return value.to_bytes(size, "big")
        else:
            def header(value: int) -> bytes:
                return b"%0*d" % (size, value)

        def fast(payload: bytes, tpdu: bytes | None = None) -> bytes:
            body = len(payload)
            if tpdu is None and body <= limit:
                return header(body + extra) + payload
            return encode(payload, tpdu)
        return fast

    def _encode_length(self, body: int) -> bytes:
        value = body + self.header_size if self.length_includes_itself else body
        kind = self.length_header
        if kind.startswith("binary"):
            return value.to_bytes(self.header_size, "big")
        if kind.startswith("ascii"):
            return b"%0*d" % (self.header_size, value)
        return bytes.fromhex(f"{value:04d}")  # bcd2: four packed decimal digits

    def _decode_length(self, header: bytes | bytearray) -> int:
        """Body size declared by a complete length header; FramingError naming the bytes if malformed."""
        kind = self.length_header
        if kind.startswith("binary"):
            value = int.from_bytes(header, "big")
        elif kind.startswith("ascii"):
            if not header.isdigit():  # bytes.isdigit accepts ASCII 0-9 only
                raise FramingError(
                    f"bad {kind} length header {_show(header)} ({bytes(header)!r}): "
                    f"expected {self.header_size} ASCII decimal digits"
                )
            value = int(header)
        else:
            digits = header.hex()
            if not digits.isdigit():
                raise FramingError(f"bad bcd2 length header {_show(header)}: expected packed BCD digits 0-9")
            value = int(digits)
        if not self.length_includes_itself:
            return value
        if value < self.header_size:
            raise FramingError(
                f"length header {_show(header)} declares {value} bytes, less than the header's "
                f"own {self.header_size} bytes (length_includes_itself is on)"
            )
        return value - self.header_size


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the message bytes and, in TPDU framing, the TPDU that preceded them."""

    payload: bytes  # the message bytes (after the TPDU); b"" for a keep-alive
    tpdu: bytes | None = None

    @property
    def is_keepalive(self) -> bool:
        """A zero-length frame; a TPDU with an empty message is not one (it is a malformed message)."""
        return not self.payload and self.tpdu is None


def _check_tpdu(tpdu: bytes) -> None:
    if len(tpdu) != TPDU_LENGTH:
        raise FramingError(f"a TPDU is {TPDU_LENGTH} bytes, got {len(tpdu)}: {_show(tpdu)}")


def reply_tpdu(tpdu: bytes) -> bytes:
    """The TPDU for a reply: destination and source addresses swapped, id byte kept."""
    _check_tpdu(tpdu)
    return bytes(tpdu[0:1] + tpdu[3:5] + tpdu[1:3])


def parse_tpdu(tpdu: bytes) -> tuple[int, int, int]:
    """(id, destination, source) of a TPDU, for display and journals."""
    _check_tpdu(tpdu)
    return tpdu[0], int.from_bytes(tpdu[1:3], "big"), int.from_bytes(tpdu[3:5], "big")


class FrameDecoder:
    """Sans-I/O incremental frame reader: feed chunks as they arrive, pull whole frames out.

    Headers are checked as soon as they are complete, so an oversize or malformed frame is refused
    without waiting for (or buffering) its body. Any error leaves the stream position unknown, so
    after one the decoder is not reusable: every later call raises a FramingError, and the caller
    should close the connection.

    The buffer is one bytearray read through an offset; consumed bytes are dropped in bulk when
    they make up most of the buffer, so decoding stays linear in the bytes received.
    """

    _COMPACT_AT = 1 << 16  # drop consumed bytes once this many have piled up ...

    def __init__(self, framing: Framing) -> None:
        self._framing = framing
        self._header_size = framing.header_size
        self._min_body = TPDU_LENGTH if framing.tpdu else 0
        self._max_frame = framing.max_frame
        self._plain_binary = framing.length_header.startswith("binary") and not framing.length_includes_itself
        """The common header (a binary count of the body's bytes) is read inline: it cannot be malformed."""
        self._buf = bytearray()
        self._pos = 0
        self._body: int | None = None  # body size of the frame whose header was already read
        self._failed: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray) -> None:
        self._check_usable()
        if self._pos and (self._pos >= self._COMPACT_AT or self._pos * 2 >= len(self._buf)):
            del self._buf[: self._pos]  # ... or once they are at least half the buffer
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed."""
        if self._failed is not None:
            self._check_usable()
        try:
            return self._next_frame()
        except FramingError as exc:
            self._failed = exc
            raise

    def _next_frame(self) -> Frame | None:
        buf, pos, hs = self._buf, self._pos, self._header_size
        available = len(buf) - pos
        body = self._body
        if body is None:
            if available < hs:
                return None
            if self._plain_binary:
                body = int.from_bytes(buf[pos : pos + hs], "big")
            else:
                body = self._framing._decode_length(buf[pos : pos + hs])
            if body > self._max_frame:
                raise OversizeFrameError(body, self._max_frame)
            if 0 < body < self._min_body:
                raise FramingError(
                    f"frame body of {body} bytes is shorter than the {TPDU_LENGTH}-byte TPDU "
                    f"(header {_show(buf[pos : pos + hs])})"
                )
            self._body = body
        if available < hs + body:
            return None
        start, end = pos + hs, pos + hs + body
        self._body = None
        if end == len(buf):  # common case: the buffer held exactly whole frames
            self._pos = 0
            frame = self._cut(buf, start, end)
            buf.clear()
            return frame
        self._pos = end
        return self._cut(buf, start, end)

    def _cut(self, buf: bytearray, start: int, end: int) -> Frame:
        if start == end:
            return Frame(b"")
        with memoryview(buf) as view:  # one copy per field, and released before the buffer is resized
            if self._min_body:
                return Frame(bytes(view[start + TPDU_LENGTH : end]), bytes(view[start : start + TPDU_LENGTH]))
            return Frame(bytes(view[start:end]))

    def close(self) -> None:
        """End of input: raises TruncatedFrameError if part of a frame is still buffered."""
        self._check_usable()
        if self.buffered:
            partial = bytes(self._buf[self._pos :])
            self._failed = TruncatedFrameError(partial)
            raise self._failed

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise FramingError(f"frame decoder already failed ({self._failed.reason}); close the connection")


def split_frames(framing: Framing, data: bytes) -> list[Frame]:
    """All frames in a byte string (a capture, a test vector); a trailing partial frame is an error."""
    decoder = FrameDecoder(framing)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    decoder.close()
    return frames
