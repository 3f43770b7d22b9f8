"""The switch's message journal: every frame in and out, decoded, masked, kept in a ring and a file.

Two readers with different needs share one record per frame:

- the admin API asks ``Journal.query`` for the newest entries matching a filter (a bounded ring in
  memory, ``ring_size`` entries);
- people and tools read the JSON-lines file (``journal.jsonl``, rotated by size into
  ``journal.jsonl.1`` ... ``.N``), written by ``Journal.run`` in a worker thread.

The switch calls ``record_in`` / ``record_out`` on its hot path, so recording only stores the raw
bytes, the decoded fields and a few keys used by filters. Everything costly (masking, hex, JSON)
happens later and once per entry: in the writer thread for the file, on ``query`` for the API, with
the result cached on the record.

Masking follows ``switch.codec.composite.mask_field`` for decoded values (PAN first 6 + last 4,
track data after the PAN hidden, PIN block and ICC data as ``****``). In ``raw_hex`` every byte
of those fields' data is shown as ``**`` (length prefixes stay). A frame that cannot be decoded
is kept, marked by ``error``, with the fields read before the failure masked the same way. Its
raw bytes may still hold a PAN where the decoder did not get to, or where it misread a frame of
another dialect, so there the journal also masks the whole unread rest when the bitmap announces
a sensitive field not read, every digit run long enough to be a PAN or track (12+ digits, BCD,
ASCII or EBCDIC), and PAN-sized digit runs in the fields read: a PAN in a log is worse than a
less readable log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import trio

from switch.codec.composite import mask_field, mask_pan
from switch.codec.message import Codec, Message, MessageDecodeError
from switch.describe import RESPONSE_CODES, mti_meaning, printable

log = logging.getLogger("switch.journal")

SENSITIVE_FIELDS = (2, 34, 35, 36, 45, 52, 55)
"""Fields ``mask_field`` hides (PAN, extended PAN, tracks 1-3, PIN block, ICC data), in wire order."""
_SENSITIVE_KEYS = frozenset(str(number) for number in SENSITIVE_FIELDS)
_STRUCTURAL_KEYS = frozenset(("t", "p", "1", "65"))  # MTI and bitmaps: not data fields
_FIELD_KEYS = {number: str(number) for number in range(1, 193)}  # str(number) without the call per field
FULLY_MASKED = "****"
MASKED_BYTE = "**"
# Shorter encodings could be found by coincidence anywhere (a bitmap byte, a length); those fields
# are located exactly by a second decode instead of by search.
_MIN_SEARCHED_BYTES = 4
# Digit runs in the unreadable rest of an undecodable frame: 12+ decimal nibbles catch BCD digits
# and ASCII digits (0x30-0x39 is "3d" in hex) alike; EBCDIC digits are 0xF0-0xF9.
_HEX_DIGIT_RUN = re.compile(r"[0-9]{12,}")
_EBCDIC_DIGIT_RUN = re.compile(rb"[\xF0-\xF9]{8,}")
_FIELD_DIGIT_RUN = re.compile(r"[0-9]{13,}")  # PAN-sized, longer than any amount (n12)
# Every message puts at least an MTI (2 bytes) and a bitmap (8) before field 2, so the first 10
# bytes of a frame never hold a PAN, whatever dialect wrote it.
_NEVER_PAN_BYTES = 10
_STAN_WIDTH = 6
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # made once, not per call as json.dumps
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii  # C: what json.dumps escapes with
_INFINITY = float("inf")

DIRECTION_IN = "in"
DIRECTION_OUT = "out"
UPDATE_UNSENT = "unsent"


# --------------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One frame as the journal shows it: decoded, masked, with what the switch did to it.

    ``matched``: for a request ("in"), whether a response was sent for it (False until one is,
    and for good after ``record_unsent``); None for "out". ``request_seq``: for "out", the
    entry of the request it answers (None when it answers none). ``fields`` keys are field
    numbers as text, plus "h" for a dialect header.
    """

    seq: int
    time: float
    connection: int
    peer: str
    direction: str
    mti: str | None
    stan: str | None
    terminal: str | None
    response_code: str | None
    faults: tuple[str, ...]
    fields: dict[str, str]
    raw_hex: str
    note: str
    error: str | None
    matched: bool | None
    request_seq: int | None = None
    _dict: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (built once; treat it as read-only)."""
        cached = self._dict
        if cached is None:
            cached = {
                "seq": self.seq, "time": self.time, "connection": self.connection, "peer": self.peer,
                "direction": self.direction, "mti": self.mti, "stan": self.stan, "terminal": self.terminal,
                "response_code": self.response_code, "faults": list(self.faults), "fields": self.fields,
                "raw_hex": self.raw_hex, "note": self.note, "error": self.error, "matched": self.matched,
                "request_seq": self.request_seq,
            }
            object.__setattr__(self, "_dict", cached)
        return cached


class _Record:
    """What ``record_*`` stores: cheap to build; formatted later, at most once."""

    __slots__ = ("claimed", "connection", "decode_error", "direction", "entry", "error", "faults", "fields",
                 "formatted", "header", "matched", "mti", "note", "peer", "raw", "request_seq",
                 "response_code", "seq", "stan", "terminal", "time", "unsent")

    def __init__(self, seq: int, stamp: float, connection: int, peer: str, direction: str, raw: bytes,
                 message: Message | None, decode_error: MessageDecodeError | None, error: str | None,
                 faults: tuple[str, ...], note: str, request_seq: int | None):
        self.seq = seq
        self.time = stamp
        self.connection = connection
        self.peer = peer
        self.direction = direction
        self.raw = raw
        if message is not None:
            fields = self.fields = dict(message.fields)  # the caller may reuse its message
            self.mti = message.mti
            self.header = message.header
        else:
            self.fields = None
            self.header = ""
            if decode_error is not None:  # what was read before the failing element feeds the filters
                self.mti = decode_error.mti
                fields = {int(key): value for key, value in decode_error.partial.items()
                          if key in ("11", "39", "41") and key != decode_error.field and isinstance(value, str)}
            else:
                self.mti = None
                fields = {}
        self.stan = fields.get(11)
        self.terminal = fields.get(41)
        self.response_code = fields.get(39)
        self.decode_error = decode_error
        self.error = error
        self.faults = faults
        self.note = note
        self.request_seq = request_seq
        self.matched: bool | None = False if direction == DIRECTION_IN else None
        self.unsent = False
        self.claimed = False  # handed to the file writer
        self.formatted: tuple[dict[str, str], str, str | None] | None = None
        self.entry: JournalEntry | None = None


class _Update:
    """A request already written to the file whose response was then not sent: written again."""

    __slots__ = ("record",)

    def __init__(self, record: _Record):
        self.record = record


# --------------------------------------------------------------------------------------------
# Masking


def _bitmap_numbers(bitmap_hex: str, base: int) -> set[int]:
    try:
        bits = int(bitmap_hex, 16)
    except ValueError:
        return set()
    width = len(bitmap_hex) * 4
    return {base + i + 1 for i in range(width) if bits >> (width - 1 - i) & 1}


def _hex_masked(raw: bytes, ranges: Iterable[tuple[int, int]]) -> str:
    """``raw`` as upper-case hex with the bytes of every (start, end) range shown as ``**``."""
    text = raw.hex().upper()
    if not ranges:
        return text
    pieces = []
    position = 0
    for start, end in sorted(ranges):
        start = max(start, position)
        if end <= start:
            continue
        pieces.append(text[2 * position:2 * start])
        pieces.append(MASKED_BYTE * (end - start))
        position = end
    pieces.append(text[2 * position:])
    return "".join(pieces)


def _shown_value(number: int, value: str) -> str:
    shown = mask_field(number, value)
    if shown != value and shown and set(shown) == {"*"}:
        return FULLY_MASKED
    return shown


def _masked_run(match: re.Match[str]) -> str:
    return mask_pan(match.group())


def _digit_run_ranges(raw: bytes, start: int) -> list[tuple[int, int]]:
    """Byte ranges of digit runs in ``raw[start:]`` that could be a PAN or track (any encoding)."""
    rest = raw[start:]
    ranges = [(start + m.start() // 2, start + (m.end() + 1) // 2)
              for m in _HEX_DIGIT_RUN.finditer(rest.hex())]
    ranges += [(start + m.start(), start + m.end()) for m in _EBCDIC_DIGIT_RUN.finditer(rest)]
    return ranges


class _Masker:
    """Masked fields and raw hex for one dialect.

    For a decoded frame the data of each sensitive field is encoded as the dialect sends it and
    every occurrence in the raw bytes is masked: a search in C instead of a second decode (which
    would cost as much as the switch's own decode, per frame). Whenever that cannot be trusted
    (an encoding the search cannot reproduce, a value too short to search for, a value not found)
    the field positions come from ``Codec.decode_detailed`` instead.
    """

    def __init__(self, codec: Codec):
        self._codec = Codec(codec.dialect)  # private: the writer thread must not share plan caches
        self._encodings: dict[int, tuple[str, bool, str, str]] = {}
        for number in SENSITIVE_FIELDS:
            spec = codec.dialect.spec.get(str(number))
            if spec is not None:
                self._encodings[number] = (spec["data_enc"], spec.get("len_count", "bytes") == "nibbles",
                                           spec.get("left_pad", "")[:1], spec.get("right_pad", "")[:1])

    def _wire_data(self, number: int, value: str) -> bytes | None:
        encoding = self._encodings.get(number)
        if encoding is None:
            return None
        data_enc, nibbles, left_pad, right_pad = encoding
        try:
            if data_enc != "b":
                return value.encode(data_enc)
            if nibbles and len(value) % 2:
                value = left_pad + value if left_pad else value + right_pad
            return bytes.fromhex(value)
        except (ValueError, LookupError):
            return None

    def decoded(self, raw: bytes, fields: dict[int, str], header: str) -> tuple[dict[str, str], str]:
        keys = _FIELD_KEYS
        shown = {keys[number]: value for number, value in fields.items()}  # as on the wire (or as built)
        if header:
            shown = {"h": header, **shown}
        present = [(number, fields[number]) for number in SENSITIVE_FIELDS if number in fields]
        for number, value in present:
            shown[keys[number]] = _shown_value(number, value)
        ranges: list[tuple[int, int]] = []
        for number, value in present:
            if not value:
                continue
            data = self._wire_data(number, value)
            if data is None or len(data) < _MIN_SEARCHED_BYTES:
                return shown, self._exact_hex(raw)
            found = raw.find(data)
            if found < 0:
                return shown, self._exact_hex(raw)
            while found >= 0:  # every occurrence, overlapping ones too: an echo elsewhere is a PAN too
                ranges.append((found, found + len(data)))
                found = raw.find(data, found + 1)
        return shown, _hex_masked(raw, ranges)

    def _exact_hex(self, raw: bytes) -> str:
        try:
            _, wire = self._codec.decode_detailed(raw)
        except MessageDecodeError:
            return self.undecodable(raw)[1]
        ranges = []
        offset = 0
        for key, (prefix, data) in wire.items():
            start = offset + len(prefix)
            offset = start + len(data)
            if key in _SENSITIVE_KEYS:
                ranges.append((start, offset))
        return _hex_masked(raw, ranges)

    def undecodable(self, raw: bytes) -> tuple[dict[str, str], str, str | None]:
        """(masked fields read, masked raw hex, decode error) of a frame that may not decode."""
        try:
            message, _ = self._codec.decode_detailed(raw)
        except MessageDecodeError as exc:
            return (*self._partial(raw, exc), str(exc))
        fields, raw_hex = self.decoded(raw, message.fields, message.header)
        return fields, raw_hex, None

    @staticmethod
    def _partial(raw: bytes, exc: MessageDecodeError) -> tuple[dict[str, str], str]:
        wire: dict[str, tuple[bytes, bytes]] = getattr(exc, "partial_wire", {})
        ranges: list[tuple[int, int]] = []
        read: list[str] = []
        offset = 0
        structure_end = 0
        for key, (prefix, data) in wire.items():  # wire order; the failing element is half read
            if key == exc.field or key not in exc.partial:
                break
            start = offset + len(prefix)
            offset = start + len(data)
            if key in _SENSITIVE_KEYS:
                ranges.append((start, offset))
            elif key == "t" and offset <= _NEVER_PAN_BYTES:
                structure_end = offset
            read.append(key)
        if "p" in read:
            present = _bitmap_numbers(exc.partial["p"][:16], 0)
            if any(number in present and str(number) not in read for number in SENSITIVE_FIELDS):
                ranges.append((offset, len(raw)))  # a sensitive field is somewhere in the unread rest
        # A frame of another dialect can be read wrongly but far enough to put a PAN into any field,
        # and nothing is known of the rest: hide whatever looks like one, wherever it is. Only the
        # header and MTI stay readable, when they were read within the first bytes, where no
        # dialect can carry a PAN.
        ranges += _digit_run_ranges(raw, structure_end)
        shown: dict[str, str] = {}
        for key in read:
            if key == "h":
                shown["h"] = _FIELD_DIGIT_RUN.sub(_masked_run, exc.partial["h"])
            elif key not in _STRUCTURAL_KEYS:
                number = int(key)
                value = exc.partial[key]
                shown[key] = (_shown_value(number, value) if key in _SENSITIVE_KEYS
                              else _FIELD_DIGIT_RUN.sub(_masked_run, value))
        return shown, _hex_masked(raw, ranges)


# --------------------------------------------------------------------------------------------
# The journal


def _normalized_stan(stan: str | None) -> str | None:
    """'123' -> '000123': people type STANs without the leading zeros field 11 carries."""
    if stan is not None and stan.isdigit() and len(stan) < _STAN_WIDTH:
        return stan.zfill(_STAN_WIDTH)
    return stan


_JSON_BOOL = {None: "null", True: "true", False: "false"}


def _json_text(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def _fast_line(record: _Record, fields: dict[str, str], raw_hex: str, error: str | None, matched: bool | None,
               faults: tuple[str, ...], note: str, update: bool) -> bytes:
    """One file line, the JSON ``json.dumps`` would write (compact, ASCII), in half its time.

    The writer thread holds the GIL while it formats, so its cost is taken from the event loop;
    the line's shape is fixed, so only strings need the (C) JSON escaping. Field keys, the
    direction and ``raw_hex`` (hex digits and '*') need none. Unexpected types raise TypeError
    or ValueError and the caller falls back to ``json``.
    """
    stamp = record.time
    if type(stamp) is not float or stamp != stamp or stamp in (_INFINITY, -_INFINITY):
        raise ValueError("time is not a finite float")
    connection, request_seq = record.connection, record.request_seq
    if type(connection) is not int or (request_seq is not None and type(request_seq) is not int):
        raise TypeError("connection and request_seq must be int")
    line = "".join((
        '{"seq":', str(record.seq), ',"time":', repr(stamp), ',"connection":', str(connection),
        ',"peer":', _json_string(record.peer), ',"direction":"', record.direction,
        '","mti":', _json_text(record.mti), ',"stan":', _json_text(record.stan),
        ',"terminal":', _json_text(record.terminal), ',"response_code":', _json_text(record.response_code),
        ',"faults":[', ",".join(map(_json_string, faults)), '],"fields":{',
        ",".join([f'"{key}":{_json_string(value)}' for key, value in fields.items()]),
        '},"raw_hex":"', raw_hex, '","note":', _json_string(note), ',"error":', _json_text(error),
        ',"matched":', _JSON_BOOL[matched], ',"request_seq":', "null" if request_seq is None else str(request_seq),
        f',"update":"{UPDATE_UNSENT}"}}\n' if update else "}\n",
    ))
    return line.encode()


class _Batch:
    __slots__ = ("done", "items")

    def __init__(self, items: list[tuple[_Record, bool | None, tuple[str, ...], str, bool]]):
        self.items = items
        self.done = False


class Journal:
    """Every frame in and out: a ring for queries and, with ``path``, a rotated JSON-lines file.

    ``record_*`` must be called from the Trio thread (the one running the switch). Run
    ``run()`` in a nursery to write the file; cancel it to stop (it flushes first), then
    ``close()``. Without ``path`` there is only the ring and ``run()`` returns at once.
    ``max_pending`` bounds what waits for the writer, so a stalled disk costs entries (counted and
    logged), never the switch's memory.
    """

    def __init__(self, codec: Codec, *, path: str | os.PathLike[str] | None = None, ring_size: int = 10_000,
                 max_bytes: int = 20 * 1024 * 1024, backups: int = 5, flush_interval: float = 0.2,
                 max_pending: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if ring_size < 1:
            raise ValueError(f"ring_size must be at least 1, got {ring_size}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be 0 or more, got {backups}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._codec = codec
        self._masker = _Masker(codec)
        self.path = Path(path) if path is not None else None
        self._ring: deque[_Record] = deque(maxlen=ring_size)
        self._next_seq = 1
        self._clock = clock
        self._max_bytes = max_bytes
        self._backups = backups
        self._flush_interval = flush_interval
        # File writer state. ``_pending`` is filled on the Trio thread and emptied there too (into
        # a batch); the file object is only touched by the thread writing a batch.
        self._writing = self.path is not None
        self._pending: deque[_Record | _Update] = deque(maxlen=max_pending)
        self._lost = 0
        self._inflight: _Batch | None = None
        self._flush_lock = trio.Lock()
        self._file: BinaryIO | None = None
        self._size = 0
        self._failed = False
        self._closed = False

    # -- recording (hot path) -------------------------------------------------------------

    def _decode_failure(self, raw: bytes, message: Message | None, error: str | BaseException | None
                        ) -> tuple[Message | None, MessageDecodeError | None, str | None]:
        if isinstance(error, MessageDecodeError):
            return message, error, str(error)
        text = None if error is None else str(error)
        if message is not None:
            return message, None, text
        try:  # the rare path (format errors, faults that send garbage): decode once for the filters
            return self._codec.decode(raw), None, text
        except MessageDecodeError as exc:
            return None, exc, text or str(exc)

    def _add(self, record: _Record) -> None:
        self._ring.append(record)
        if self._writing:
            pending = self._pending
            if len(pending) == pending.maxlen:
                self._lost += 1
            pending.append(record)

    def record_in(self, *, connection: int, peer: str, raw: bytes | bytearray | memoryview,
                  message: Message | None, error: str | BaseException | None = None,
                  faults: Iterable[str] = (), note: str = "") -> int:
        """Journal a frame received; returns its ``seq`` (pass it to ``record_out``).

        ``raw`` is the frame body (no length header or TPDU) and ``message`` its decoded form, or
        None if it did not decode; then ``error`` is the ``MessageDecodeError`` (best: its partial
        fields feed the filters) or its text.
        """
        data = raw if type(raw) is bytes else bytes(raw)
        decode_error = None
        if message is None or error is not None:
            message, decode_error, error = self._decode_failure(data, message, error)
        seq = self._next_seq
        self._next_seq = seq + 1
        self._add(_Record(seq, self._clock(), connection, peer, DIRECTION_IN, data, message, decode_error,
                          error, faults if type(faults) is tuple else tuple(faults), note, None))
        return seq

    def record_out(self, *, connection: int, peer: str, raw: bytes | bytearray | memoryview,
                   message: Message | None, request_seq: int | None, faults: Iterable[str] = (),
                   note: str = "") -> int:
        """Journal a frame sent (``message`` exactly as encoded into ``raw``, or None for bytes
        that are not a message, e.g. a garbage fault); marks request ``request_seq`` matched."""
        data = raw if type(raw) is bytes else bytes(raw)
        decode_error = error = None
        if message is None:
            message, decode_error, error = self._decode_failure(data, None, None)
        seq = self._next_seq
        self._next_seq = seq + 1
        self._add(_Record(seq, self._clock(), connection, peer, DIRECTION_OUT, data, message, decode_error,
                          error, faults if type(faults) is tuple else tuple(faults), note, request_seq))
        if request_seq is not None:
            request = self._find(request_seq)
            if request is not None and request.direction == DIRECTION_IN and not request.matched:
                request.matched = True
                request.entry = None
        return seq

    def record_unsent(self, request_seq: int, faults: Iterable[str] = (), note: str = "") -> None:
        """A response decided but never sent (dropped by a fault): the request stays unmatched and
        carries the faults and the note. A no-op once the request has left the ring."""
        request = self._find(request_seq)
        if request is None:
            return
        added = tuple(name for name in faults if name not in request.faults)
        request.faults += added
        if note:
            request.note = f"{request.note}; {note}" if request.note else note
        request.unsent = True
        request.entry = None
        if request.claimed and self._writing:  # its line is written already: write the update too
            self._pending.append(_Update(request))

    def _find(self, seq: int) -> _Record | None:
        """The ring holds consecutive seqs, so the position is arithmetic (recent ones are cheap)."""
        ring = self._ring
        if not ring:
            return None
        index = seq - ring[0].seq
        if 0 <= index < len(ring):
            return ring[index - len(ring)]  # deque indexing walks from the nearer end
        return None

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ring)

    def _formatted(self, record: _Record) -> tuple[dict[str, str], str, str | None]:
        formatted = record.formatted
        if formatted is None:
            if record.fields is not None:
                fields, raw_hex = self._masker.decoded(record.raw, record.fields, record.header)
                formatted = (fields, raw_hex, record.error)
            else:
                fields, raw_hex, error = self._masker.undecodable(record.raw)
                formatted = (fields, raw_hex, record.error or error)
            record.formatted = formatted
        return formatted

    def _entry(self, record: _Record) -> JournalEntry:
        entry = record.entry
        if entry is None:
            fields, raw_hex, error = self._formatted(record)
            entry = record.entry = JournalEntry(
                record.seq, record.time, record.connection, record.peer, record.direction, record.mti,
                record.stan, record.terminal, record.response_code, record.faults, fields, raw_hex,
                record.note, error, record.matched, record.request_seq)
        return entry

    def query(self, *, terminal: str | None = None, mti: str | None = None, stan: str | None = None,
              since: float | None = None, until: float | None = None, faults_only: bool = False,
              unmatched: bool = False, limit: int = 100) -> list[JournalEntry]:
        """The newest ``limit`` entries matching every filter given, oldest first.

        ``since`` <= time < ``until`` (Unix seconds). ``terminal`` ignores the trailing spaces
        field 41 is padded with; ``stan`` may omit leading zeros. ``unmatched``: requests no
        response was sent for (yet, or ever) and responses that answer no request.
        """
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        terminal = terminal.rstrip() if terminal is not None else None
        stan = _normalized_stan(stan)
        found: list[_Record] = []
        for record in reversed(self._ring):
            if len(found) >= limit:
                break
            if since is not None and record.time < since:
                continue  # not break: a wall clock can step back, so times need not grow along the ring
            if until is not None and record.time >= until:
                continue
            if mti is not None and record.mti != mti:
                continue
            if stan is not None and record.stan != stan:
                continue
            if terminal is not None and (record.terminal is None or record.terminal.rstrip() != terminal):
                continue
            if faults_only and not record.faults:
                continue
            if unmatched and not (record.matched is False or (record.direction == DIRECTION_OUT
                                                              and record.request_seq is None)):
                continue
            found.append(record)
        return [self._entry(record) for record in reversed(found)]

    # -- the file ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued entries to the file every ``flush_interval`` until cancelled.

        The file work (JSON, masking, writes, rotation) runs in a worker thread so the event loop
        never waits on the disk. On cancellation everything still queued is written (shielded)
        before returning.
        """
        if not self._writing:
            task_status.started()
            return
        try:
            if self._file is None:
                await trio.to_thread.run_sync(self._open_file)
            task_status.started()
            while self._writing:
                await trio.sleep(self._flush_interval)
                await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()

    async def flush(self) -> None:
        """Write everything queued so far now (``run`` does it every ``flush_interval``)."""
        await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:  # one batch at a time, in order
            while self._writing and (self._inflight is not None or self._pending):
                if self._inflight is None or self._inflight.done:
                    self._inflight = self._take_batch()
                # Not abandoned on cancel: a cancelled flush still finishes the batch it started.
                await trio.to_thread.run_sync(self._write_batch, self._inflight)
                self._inflight = None

    def _take_batch(self) -> _Batch:
        """Claim what is queued, with the state each entry has now (the Trio thread may change it
        while the thread writes)."""
        if self._lost:
            log.warning("journal writer fell behind: %d entries were not written to %s", self._lost, self.path)
            self._lost = 0
        items = []
        pending = self._pending
        while pending:
            item = pending.popleft()
            if type(item) is _Update:
                record = item.record
                items.append((record, False, record.faults, record.note, True))
            else:
                record = item
                record.claimed = True
                matched = False if record.unsent else (True if record.matched else None)
                items.append((record, matched if record.direction == DIRECTION_IN else None, record.faults,
                              record.note, False))
        return _Batch(items)

    def _line(self, record: _Record, matched: bool | None, faults: tuple[str, ...], note: str,
              update: bool) -> bytes:
        fields, raw_hex, error = self._formatted(record)
        try:
            return _fast_line(record, fields, raw_hex, error, matched, faults, note, update)
        except (TypeError, ValueError):  # a caller passed something unexpected: let json cope
            document: dict[str, Any] = {
                "seq": record.seq, "time": record.time, "connection": record.connection, "peer": record.peer,
                "direction": record.direction, "mti": record.mti, "stan": record.stan,
                "terminal": record.terminal, "response_code": record.response_code, "faults": list(faults),
                "fields": fields, "raw_hex": raw_hex, "note": note, "error": error, "matched": matched,
                "request_seq": record.request_seq,
            }
            if update:
                document["update"] = UPDATE_UNSENT
            return _LINE_ENCODER.encode(document).encode() + b"\n"

    def _open_file(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open across batches
            self._size = self._file.tell()
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        """The file is optional; the ring is not. Say so once and stop queueing for the file."""
        if not self._failed:
            log.error("journal file %s cannot be written (%s); keeping the in-memory journal only",
                      self.path, exc)
        self._failed = True
        self._writing = False
        self._pending.clear()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _write_batch(self, batch: _Batch) -> None:
        """Runs in a worker thread: format, write, rotate, flush."""
        try:
            if self._file is None:
                self._open_file()
                if self._file is None:
                    return
            chunk: list[bytes] = []
            chunk_size = 0
            for item in batch.items:
                line = self._line(*item)
                if self._size + chunk_size + len(line) > self._max_bytes and self._size + chunk_size > 0:
                    self._file.write(b"".join(chunk))
                    chunk, chunk_size = [], 0
                    self._rotate()
                chunk.append(line)
                chunk_size += len(line)
            self._file.write(b"".join(chunk))
            self._size += chunk_size
            self._file.flush()
        except OSError as exc:
            self._give_up(exc)
        batch.done = True

    def _rotate(self) -> None:
        """journal.jsonl -> .1 -> .2 ... -> .N (the oldest dropped); a fresh file continues."""
        assert self._file is not None and self.path is not None
        self._file.close()
        self._file = None
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        for index in range(self._backups, 0, -1):
            source = self.path if index == 1 else self.path.with_name(f"{self.path.name}.{index - 1}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{self.path.name}.{index}"))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        """Write whatever ``run`` did not (e.g. entries recorded after it stopped) and close the file.

        Blocks on the disk: call it at shutdown, after ``run`` has returned. The ring stays
        readable; later entries go to the ring only.
        """
        if self._closed:
            return
        self._closed = True
        if self._writing:
            if self._inflight is not None and not self._inflight.done:
                self._write_batch(self._inflight)
                self._inflight = None
            if self._pending:
                self._write_batch(self._take_batch())
        self._writing = False
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._give_up(exc)
            self._file = None


# --------------------------------------------------------------------------------------------
# Reading the file (the CLI)


class JournalFileError(ValueError):
    """A line of a journal file that is not a journal entry."""


ErrorHandler = Callable[[int, str], None]


def _parse_line(line: bytes, number: int, on_error: ErrorHandler | None) -> dict[str, Any] | None:
    text = line.strip()
    if not text:
        return None
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = f"not JSON ({exc})"
    else:
        if isinstance(document, dict) and isinstance(document.get("seq"), int):
            return document
        reason = "not a journal entry (no integer 'seq')"
    if on_error is None:
        raise JournalFileError(f"line {number}: {reason}")
    on_error(number, reason)
    return None


def read_journal_file(path: str | os.PathLike[str], *, on_error: ErrorHandler | None = None
                      ) -> Iterator[dict[str, Any]]:
    """Every entry of a journal file in order. A bad line raises ``JournalFileError``, or with
    ``on_error`` is reported as (line number, reason) and skipped (a crash can cut the last line)."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            document = _parse_line(line, number, on_error)
            if document is not None:
                yield document


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """The CLI's filters over entries read from a file (the same meaning as ``Journal.query``'s)."""

    terminal: str | None = None
    mti: str | None = None
    stan: str | None = None
    faults_only: bool = False

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.mti is not None and entry.get("mti") != self.mti:
            return False
        if self.stan is not None and entry.get("stan") != _normalized_stan(self.stan):
            return False
        if self.terminal is not None:
            terminal = entry.get("terminal")
            if not isinstance(terminal, str) or terminal.rstrip() != self.terminal.rstrip():
                return False
        return not (self.faults_only and not entry.get("faults"))


def _text(value: Any) -> str:
    return printable(str(value))


def format_entry_line(entry: dict[str, Any]) -> str:
    """One readable line: time, seq, connection, arrow (<- in, -> out), MTI and meaning, STAN,
    terminal, response code, faults, note. Anything a peer sent is escaped for the terminal."""
    stamp = entry.get("time")
    try:
        when = datetime.fromtimestamp(float(stamp)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (TypeError, ValueError, OverflowError, OSError):
        when = "????-??-?? ??:??:??.???"
    direction = entry.get("direction")
    arrow = "<-" if direction == DIRECTION_IN else "->" if direction == DIRECTION_OUT else "??"
    parts = [when, f"#{_text(entry.get('seq'))}", f"c{_text(entry.get('connection'))}", arrow]
    mti = entry.get("mti")
    if isinstance(mti, str):
        parts.append(f"{printable(mti)} {mti_meaning(mti)}")
    else:
        parts.append("(undecodable)")
    for label, key in (("STAN", "stan"), ("TID", "terminal")):
        if entry.get(key) is not None:
            parts.append(f"{label} {_text(entry[key])}")
    code = entry.get("response_code")
    if code is not None:
        meaning = RESPONSE_CODES.get(code) if isinstance(code, str) else None
        parts.append(f"RC {_text(code)}" + (f" {meaning}" if meaning else ""))
    if entry.get("request_seq") is not None:
        parts.append(f"re #{_text(entry['request_seq'])}")
    if entry.get("update") == UPDATE_UNSENT:
        parts.append("[response not sent]")
    faults = entry.get("faults")
    if faults:
        names = faults if isinstance(faults, list) else [faults]
        parts.append("faults: " + ",".join(_text(name) for name in names))
    if entry.get("note"):
        parts.append(f"({_text(entry['note'])})")
    if entry.get("error"):
        parts.append(f"error: {_text(entry['error'])}")
    return "  ".join(parts)


class JournalFollower:
    """Reads a journal file incrementally, across rotation (the file replaced) and truncation.

    Truncation is noticed when the file becomes shorter than what was read, as with ``tail -F``;
    the journal itself never truncates in place (rotation renames, or unlinks with no backups).

    ``poll()`` returns the entries appended since the last call; the first call returns the whole
    file. It never sleeps: the caller decides how often to poll (``follow_journal``).
    """

    def __init__(self, path: str | os.PathLike[str], *, on_error: ErrorHandler | None = None):
        self.path = Path(path)
        self._on_error = on_error
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._buffer = b""
        self._line_number = 0
        self._position = 0

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - kept open between polls
        except FileNotFoundError:
            return False
        status = os.fstat(handle.fileno())
        self._file, self._identity = handle, (status.st_dev, status.st_ino)
        self._buffer, self._line_number, self._position = b"", 0, 0
        return True

    def _read(self) -> list[dict[str, Any]]:
        assert self._file is not None
        data = self._file.read()
        if not data:
            return []
        self._position += len(data)
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()  # an incomplete last line waits for the rest
        entries = []
        for line in lines:
            self._line_number += 1
            document = _parse_line(line, self._line_number, self._on_error)
            if document is not None:
                entries.append(document)
        return entries

    def _finish_file(self) -> list[dict[str, Any]]:
        entries = self._read()
        if self._buffer.strip():  # the writer only writes whole lines: this one was cut
            self._line_number += 1
            document = _parse_line(self._buffer, self._line_number, self._on_error)
            if document is not None:
                entries.append(document)
        self.close()
        return entries

    def poll(self) -> list[dict[str, Any]]:
        if self._file is None and not self._open():
            return []
        entries = self._read()
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return entries  # rotated away and not yet recreated: keep reading the old one
        if (status.st_dev, status.st_ino) != self._identity:
            entries += self._finish_file()  # lines written to it just before the rotation
            if self._open():
                entries += self._read()
        elif status.st_size < self._position:  # truncated in place: start again
            assert self._file is not None
            self._file.seek(0)
            self._buffer, self._line_number, self._position = b"", 0, 0
            entries += self._read()
        return entries

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def follow_journal(follower: JournalFollower, emit: Callable[[dict[str, Any]], None], *,
                   interval: float = 0.5, stop: Callable[[], bool] = lambda: False,
                   sleep: Callable[[float], None] | None = None) -> None:
    """Emit new entries as they are appended until ``stop()`` is true (the CLI stops on Ctrl-C).

    ``sleep`` defaults to ``time.sleep`` looked up at call time, so a test can replace it.
    """
    sleep = sleep or time.sleep
    while not stop():
        for entry in follower.poll():
            emit(entry)
        if stop():
            break
        sleep(interval)
