"""What crosses the pipe to the journal writer process: frames, the start-up settings, batches of records.

A frame is a 4-byte big-endian length and that many bytes. The first frame holds the settings
(pickled: the file, its rotation and the dialect, which masking needs); every later one a batch.

A batch is a flat list, two items per record: its ``HANDED_OVER`` values (a tuple: the raw bytes,
the decoded fields as a dict, the metadata) and its claim code (matched None/True/False = 0/1/2,
+3 for an "update" line), serialised by ``marshal`` (version 2: binary floats, no reference
tracking), the cheapest C serialiser for tuples of str/bytes/int/float/dict. Measured per record on
iso87-binary (GC off, this is switch-process CPU; the loads are the writer's): marshal v2 ~0.8 us,
pickle 5 ~0.95 us, marshal v4 ~1.9 us to dump. Sending the fields by shape (the field numbers once,
the values joined in one string) was measured too and cost more: the Python work to build it
outweighs what marshal saves (2.3 against 1.5 us a record, claim included).

Values marshal cannot take (a caller's str subclass, an IntEnum connection) send the batch by
pickle instead, and what pickle cannot take either is formatted in the switch and sent as finished
lines: the file gets the same bytes whichever way a batch travels.
"""

from __future__ import annotations

import marshal
import pickle
import struct
from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import IO, Any

from switch.codec.dialect import Dialect
from switch.journal.lines import LineFormatter
from switch.journal.records import DIRECTION_IN, HANDED_OVER, _Record, _Update, restored

_LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a batch larger than this is a corrupt length, not a batch
_MARSHAL = b"M"
_PICKLE = b"P"
_LINES = b"L"
_MARSHAL_VERSION = 2
_MATCHED: tuple[bool | None, ...] = (None, True, False)
_UPDATE_CLAIM = 2 + 3  # matched False, an "update" line
handed_over = attrgetter(*HANDED_OVER)
"""record -> its ``HANDED_OVER`` values as a tuple (one C call)."""


@dataclass(frozen=True)
class WriterSettings:
    """What the writer process needs to write exactly the file the switch would."""

    path: str
    max_bytes: int
    backups: int
    dialect: Dialect


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame's payload from a blocking stream; None at the end (or a frame cut short by it)."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes: the pipe is out of step")
    payload = stream.read(size)
    return payload if len(payload) == size else None


def settings_payload(settings: WriterSettings) -> bytes:
    return pickle.dumps(settings, protocol=pickle.HIGHEST_PROTOCOL)


def read_settings(payload: bytes) -> WriterSettings:
    settings = pickle.loads(payload)  # from the parent process, over its own pipe
    if not isinstance(settings, WriterSettings):
        raise ValueError(f"expected WriterSettings, got {type(settings).__name__}")
    return settings


class BatchEncoder:
    """The switch's side: claims queued records into batch payloads (on the event loop: every
    line of ``take`` is per-record switch CPU)."""

    def __init__(self, formatter: LineFormatter):
        self._formatter = formatter  # for the rare batch that must travel as finished lines

    def take(self, pending: deque[_Record | _Update], limit: int) -> bytes:
        """Claim up to ``limit`` queued entries, with the state each has now, as one batch payload."""
        items: list[Any] = []
        append = items.append
        for _ in range(min(len(pending), limit)):
            item = pending.popleft()
            if type(item) is _Update:
                append(handed_over(item.record))
                append(_UPDATE_CLAIM)
            else:
                record: _Record = item  # type: ignore[assignment]
                record.claimed = True
                append(handed_over(record))
                append((2 if record.unsent else 1 if record.matched else 0) if record.direction == DIRECTION_IN
                       else 0)
        try:
            return _MARSHAL + marshal.dumps(items, _MARSHAL_VERSION)
        except ValueError:  # a type marshal does not know
            pass
        try:
            return _PICKLE + pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # anything pickle refuses: formatted here instead
            return _LINES + marshal.dumps(BatchDecoder(self._formatter).item_lines(items), _MARSHAL_VERSION)


class BatchDecoder:
    """The writer's side: batch payloads back to file lines, the bytes the switch's own writer would
    produce."""

    def __init__(self, formatter: LineFormatter):
        self._formatter = formatter

    def lines(self, payload: bytes) -> list[str]:
        kind, body = payload[:1], memoryview(payload)[1:]
        if kind == _LINES:
            lines: list[str] = marshal.loads(body)
            return lines
        if kind == _MARSHAL:
            items = marshal.loads(body)
        elif kind == _PICKLE:
            items = pickle.loads(body)  # from the parent process, over its own pipe
        else:
            raise ValueError(f"unknown batch kind {bytes(kind)!r}")
        return self.item_lines(items)

    def item_lines(self, items: list[Any]) -> list[str]:
        line = self._formatter.line
        lines = []
        for index in range(0, len(items), 2):
            record = restored(items[index])
            claim = items[index + 1]
            lines.append(line(record, _MATCHED[claim % 3], record.faults, record.rules, record.note, claim >= 3))
        return lines
