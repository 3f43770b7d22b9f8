"""The journal file's lines, formatted by message shape: the JSON ``json.dumps`` would write, cheaply.

Every microsecond here is taken from the event loop, which formats the lines between requests
(issue 13 measured 17-26 us per request in the old writer thread, more than the host decision). Almost every frame a
switch journals is one of a few shapes (the field numbers of a 0200, of its 0210...) whose values
are plain printable ASCII, carry no card number outside the sensitive fields, and whose sensitive
fields are found in the raw bytes by a search. For those, one ``%`` template per shape (built once,
cached) takes the values as they are, after one check over all of them at once (C string methods
and one regular expression on their join) instead of JSON-escaping and PAN-scanning field by field.

Everything else (values needing escapes, a 13+ digit run that may be a typed-in PAN, a sensitive
value the search cannot locate, an undecodable frame, unexpected types) takes the general path:
``_Masker.decoded`` / ``undecodable`` and ``general_line``, which produce the same line the slow
way. Both paths write exactly ``json.dumps(document, separators=(",", ":"))`` (ASCII), which the
tests check against ``document_line``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from switch.journal.masking import _FIELD_KEYS, SENSITIVE_FIELDS, _hex_masked, _Masker

if TYPE_CHECKING:
    from switch.journal.records import _Record

_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # made once, not per call as json.dumps
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii  # C: what json.dumps escapes with
_JSON_BOOL = {None: "null", True: "true", False: "false"}
# One pass over the join of a frame's values (ASCII-encoded, then each byte mapped to its class:
# digit "0", plain " ", else "!") finds whatever sends it to the general path: a character JSON
# would escape (anything but printable ASCII, a quote, a backslash) or a run of 13 digits, where a
# typed-in PAN could hide (masking's ``_FIELD_DIGIT_RUN``). C all the way: a regular expression
# doing the same costs five times as much on digit-heavy ISO 8583 values.
_CLASSES = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 if 0x20 <= byte <= 0x7E and byte not in b'"\\' else 0x21
                 for byte in range(256))
_ESCAPED = b"!"
_DIGIT_RUN = b"0" * 13
_MIN_SEARCHED_BYTES = 4  # as masking's: shorter sensitive data is located by a second decode
_MAX_SHAPES = 512  # field tuples cached; a peer sending every bitmap it can think of gets the general path
UPDATE_UNSENT = "unsent"
_UPDATE_TAIL = f',"update":"{UPDATE_UNSENT}"'


def _json_text(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def document_line(document: dict[str, Any]) -> str:
    """The reference: the line for ``document`` as ``json.dumps`` writes it (compact, ASCII)."""
    return _LINE_ENCODER.encode(document) + "\n"


class _Shape:
    """The line template of one field tuple: constant keys, ``%s`` where each value goes."""

    __slots__ = ("sensitive", "template")

    def __init__(self, numbers: tuple[int, ...], header: bool):
        keys = (["h"] if header else []) + [_FIELD_KEYS[number] for number in numbers]
        fields = ",".join(f'"{key}":"%s"' for key in keys)
        # STAN, terminal and response code are fields 11, 41 and 39: present (and plain, as every
        # value is on this path) or null for the whole shape ("%.0s" takes the None and shows nothing).
        stan, terminal, code = ('"%s"' if number in numbers else "%.0snull" for number in (11, 41, 39))
        self.template = (
            f'{{"seq":%d,"time":%r,"connection":%d,"peer":%s,"direction":"%s","mti":%s,"stan":{stan},'
            f'"terminal":{terminal},"response_code":{code},"faults":[%s],"rules":[%s],"fields":{{{fields}'
            '},"raw_hex":"%s","note":%s,"error":%s,"matched":%s,"request_seq":%s%s}\n')
        # (position among the field values, field number) of each sensitive field present
        self.sensitive = tuple((index, number) for index, number in enumerate(numbers)
                               if number in SENSITIVE_FIELDS)


class LineFormatter:
    """Formats ``_Record``s into file lines for the journal's writer (its caches are its own)."""

    def __init__(self, masker: _Masker):
        self._masker = masker
        self._sensitive_cache = masker._sensitive  # read directly on the hot path: (number, value) -> shown, wire
        self._shapes: dict[tuple[int, ...], _Shape | None] = {}
        self._header_shapes: dict[tuple[int, ...], _Shape | None] = {}

    def _shape(self, numbers: tuple[int, ...], header: bool) -> _Shape | None:
        shapes = self._header_shapes if header else self._shapes
        if len(shapes) >= _MAX_SHAPES:
            return None
        shape = _Shape(numbers, header) if all(type(n) is int and n in _FIELD_KEYS for n in numbers) else None
        shapes[numbers] = shape
        return shape

    def line(self, record: _Record, matched: bool | None, faults: tuple[str, ...], rules: tuple[str, ...],
             note: str, update: bool) -> str:
        """The file line of ``record`` with the state claimed for it (its ``faults``, ``note``...)."""
        if record.fields is not None:
            fast = self._shaped_line(record, matched, faults, rules, note, update)
            if fast is not None:
                return fast
        fields, raw_hex, error = record.formatted or record.format(self._masker)
        return general_line(record, fields, raw_hex, error, matched, faults, rules, note, update)

    def _shaped_line(self, record: _Record, matched: bool | None, faults: tuple[str, ...],
                     rules: tuple[str, ...], note: str, update: bool) -> str | None:
        """The line by the record's shape, or None when the general path must decide.

        Written for the interpreter: every attribute read once into a local, no helper calls on
        the usual path (a line costs ~6 us on the benchmark VM, and a switch writes two per request)."""
        fields = record.fields
        assert fields is not None
        header = record.header
        numbers = tuple(fields)
        shapes = self._header_shapes if header else self._shapes
        shape = shapes.get(numbers)
        if shape is None and (numbers in shapes or (shape := self._shape(numbers, bool(header))) is None):
            return None  # a shape the general path serves
        seq, stamp, connection, request_seq = record.seq, record.time, record.connection, record.request_seq
        if (type(stamp) is not float or stamp - stamp != 0.0 or type(connection) is not int  # NaN, inf: json
                or (request_seq is not None and type(request_seq) is not int) or type(seq) is not int):
            return None
        values = list(fields.values())
        raw = record.raw
        ranges: list[tuple[int, int]] | None = None
        cache = self._sensitive_cache
        for index, number in shape.sensitive:
            value = values[index]
            if type(value) is not str:
                return None
            cached = cache.get((number, value))
            if cached is None:
                cached = self._masker.sensitive(number, value)
            shown, wire = cached
            values[index] = shown
            if value:
                if wire is None or len(wire) < _MIN_SEARCHED_BYTES:
                    return None
                found = raw.find(wire)
                if found < 0:
                    return None
                if ranges is None:
                    ranges = []
                while found >= 0:  # every occurrence, as the general path masks them
                    ranges.append((found, found + len(wire)))
                    found = raw.find(wire, found + 1)
        try:
            joined = " ".join(values)
            classes = (f"{joined} {header}" if header else joined).encode("ascii").translate(_CLASSES)
        except (TypeError, UnicodeEncodeError):
            return None
        # Printable ASCII with no quote or backslash is its own JSON string body; no 13-digit run
        # outside the masked sensitive fields means no typed-in PAN to hide (the header included).
        if _ESCAPED in classes or _DIGIT_RUN in classes:
            return None
        if ranges is None:
            raw_hex = raw.hex().upper()
        elif len(ranges) == 1:  # the usual case (one PAN): no sorting or merging to do
            start, end = ranges[0]
            raw_hex = f"{raw[:start].hex().upper()}{'**' * (end - start)}{raw[end:].hex().upper()}"
        else:
            raw_hex = _hex_masked(raw, ranges)
        if header:
            values.insert(0, header)
        mti, error = record.mti, record.error
        return shape.template % (
            seq, stamp, connection, _json_string(record.peer), record.direction,
            "null" if mti is None else _json_string(mti), record.stan, record.terminal, record.response_code,
            ",".join(map(_json_string, faults)) if faults else "", ",".join(map(_json_string, rules)) if rules else "",
            *values, raw_hex, _json_string(note) if note else "\"\"", "null" if error is None else _json_string(error),
            _JSON_BOOL[matched], "null" if request_seq is None else request_seq, _UPDATE_TAIL if update else "")


def general_line(record: _Record, fields: dict[str, str], raw_hex: str, error: str | None, matched: bool | None,
                 faults: tuple[str, ...], rules: tuple[str, ...], note: str, update: bool) -> str:
    """The line from the masked fields, for any record; unexpected types are left to ``json``."""
    try:
        return _fast_line(record, fields, raw_hex, error, matched, faults, rules, note, update)
    except (TypeError, ValueError):  # a caller passed something unexpected: let json cope
        document: dict[str, Any] = {
            "seq": record.seq, "time": record.time, "connection": record.connection, "peer": record.peer,
            "direction": record.direction, "mti": record.mti, "stan": record.stan,
            "terminal": record.terminal, "response_code": record.response_code, "faults": list(faults),
            "rules": list(rules), "fields": fields, "raw_hex": raw_hex, "note": note, "error": error,
            "matched": matched, "request_seq": record.request_seq,
        }
        if update:
            document["update"] = UPDATE_UNSENT
        return document_line(document)


def _fast_line(record: _Record, fields: dict[str, str], raw_hex: str, error: str | None, matched: bool | None,
               faults: tuple[str, ...], rules: tuple[str, ...], note: str, update: bool) -> str:
    """The line the JSON encoder would write, field by field (its shape is fixed, so only strings
    need the C escaping). Unexpected types raise TypeError or ValueError."""
    stamp = record.time
    if type(stamp) is not float or stamp - stamp != 0.0:
        raise ValueError("time is not a finite float")
    connection, request_seq = record.connection, record.request_seq
    if type(connection) is not int or (request_seq is not None and type(request_seq) is not int):
        raise TypeError("connection and request_seq must be int")
    return "".join((
        '{"seq":', str(record.seq), ',"time":', repr(stamp), ',"connection":', str(connection),
        ',"peer":', _json_string(record.peer), ',"direction":"', record.direction,
        '","mti":', _json_text(record.mti), ',"stan":', _json_text(record.stan),
        ',"terminal":', _json_text(record.terminal), ',"response_code":', _json_text(record.response_code),
        ',"faults":[', ",".join(map(_json_string, faults)), '],"rules":[', ",".join(map(_json_string, rules)),
        '],"fields":{', ",".join([f'"{key}":{_json_string(value)}' for key, value in fields.items()]),
        '},"raw_hex":"', raw_hex, '","note":', _json_string(note), ',"error":', _json_text(error),
        ',"matched":', _JSON_BOOL[matched], ',"request_seq":', "null" if request_seq is None else str(request_seq),
        _UPDATE_TAIL + "}\n" if update else "}\n",
    ))
