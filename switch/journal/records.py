"""What the journal keeps per frame (``_Record``), cheap to build on the hot path, and how a record
crosses to the writer process and back (``HANDED_OVER`` / ``restored``).

Kept apart from ``core`` so the writer process (``switch.journal.writer``) can format lines without
importing Trio."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from switch.codec.message import Message, MessageDecodeError

if TYPE_CHECKING:
    from switch.journal.core import JournalEntry
    from switch.journal.masking import _Masker

DIRECTION_IN = "in"
DIRECTION_OUT = "out"


class _Record:
    """What ``record_*`` stores: cheap to build; formatted later, at most once."""

    __slots__ = ("claimed", "connection", "decode_error", "direction", "entry", "error", "faults", "fields",
                 "formatted", "header", "matched", "mti", "note", "peer", "raw", "request_seq",
                 "response_code", "rules", "seq", "stan", "terminal", "time", "unsent")

    def __init__(self, seq: int, stamp: float, connection: int, peer: str, direction: str, raw: bytes,
                 message: Message | None, decode_error: MessageDecodeError | None, error: str | None,
                 faults: tuple[str, ...], rules: tuple[str, ...], note: str, request_seq: int | None):
        self.seq = seq
        self.time = stamp
        self.connection = connection
        self.peer = peer
        self.direction = direction
        self.raw = raw
        self.fields: dict[int, str] | None
        self.mti: str | None
        fields: dict[int, str]
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
        self.rules = rules
        self.note = note
        self.request_seq = request_seq
        self.matched: bool | None = False if direction == DIRECTION_IN else None
        self.unsent = False
        self.claimed = False  # handed to the file writer
        self.formatted: tuple[dict[str, str], str, str | None] | None = None
        self.entry: JournalEntry | None = None

    def format(self, masker: _Masker) -> tuple[dict[str, str], str, str | None]:
        """(masked fields, masked raw hex, error), computed once (by a query or the writer)."""
        formatted = self.formatted
        if formatted is None:
            if self.fields is not None:
                fields, raw_hex = masker.decoded(self.raw, self.fields, self.header)
                formatted = (fields, raw_hex, self.error)
            else:
                fields, raw_hex, error = masker.undecodable(self.raw)
                formatted = (fields, raw_hex, self.error or error)
            self.formatted = formatted
        return formatted


class _Update:
    """A request already written to the file whose response was then not sent: written again."""

    __slots__ = ("record",)

    def __init__(self, record: _Record):
        self.record = record


HANDED_OVER = ("seq", "time", "connection", "peer", "direction", "raw", "fields", "header", "mti", "stan", "terminal",
               "response_code", "error", "request_seq", "faults", "rules", "note")
"""The ``_Record`` attributes a line is formatted from, in the order the writer process gets them
(``faults``, ``rules`` and ``note`` as they were when the record was claimed)."""


def restored(values: tuple[Any, ...]) -> _Record:
    """A ``_Record`` rebuilt from its ``HANDED_OVER`` values (in the writer process, or for a
    rewrite after it died): enough to format its line, nothing the ring needs."""
    record = _Record.__new__(_Record)
    (record.seq, record.time, record.connection, record.peer, record.direction, record.raw, record.fields,
     record.header, record.mti, record.stan, record.terminal, record.response_code, record.error,
     record.request_seq, record.faults, record.rules, record.note) = values
    record.decode_error = None
    record.matched = None
    record.unsent = False
    record.claimed = True
    record.formatted = None
    record.entry = None
    return record
