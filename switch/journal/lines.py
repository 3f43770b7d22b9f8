"""The journal file's lines, formatted by message shape: the JSON ``json.dumps`` would write, cheaply.

Every microsecond here is taken from the event loop, which formats the lines between requests
(issue 13 measured 17-26 us per request in the old writer thread, more than the host decision). Almost every frame a
switch journals is one of a few shapes (the field numbers of a 0200, of its 0210...) whose values
are plain printable ASCII, carry no card number outside the sensitive fields, and whose sensitive
fields are found in the raw bytes by a search. For those, a line function generated per shape
(compiled when the shape is met again, then cached: straight-line code, each value a local, the
line one f-string; ~20 % fewer instructions per line than one ``%`` template per shape inside a
generic walk) takes the values as they are, after one check over all of them at once (C string
methods and one regular expression on their join) instead of JSON-escaping and PAN-scanning field
by field.

Everything else (values needing escapes, a 13+ digit run that may be a typed-in PAN, a sensitive
value the search cannot locate, an undecodable frame, unexpected types) takes the general path:
``_Masker.decoded`` / ``undecodable`` and ``general_line``, which produce the same line the slow
way. Both paths write exactly ``json.dumps(document, separators=(",", ":"))`` (ASCII), which the
tests check against ``document_line``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from switch.journal.masking import _FIELD_KEYS, MASKED_BYTE, SENSITIVE_FIELDS, _hex_masked, _Masker
from switch.journal.records import DIRECTION_IN, _Record, _Update

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
_DIGIT_RUN_SEARCH = re.compile(_DIGIT_RUN).search  # literal: linear, where ``in`` stalls on runs of 0s
_MIN_SEARCHED_BYTES = 4  # as masking's: shorter sensitive data is located by a second decode
_MAX_SHAPES = 512  # field tuples cached; a peer sending every bitmap it can think of gets the general path
UPDATE_UNSENT = "unsent"
_UPDATE_TAIL = f',"update":"{UPDATE_UNSENT}"'


def _json_text(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def document_line(document: dict[str, Any]) -> str:
    """The reference: the line for ``document`` as ``json.dumps`` writes it (compact, ASCII)."""
    return _LINE_ENCODER.encode(document) + "\n"


LineFunction = Callable[["_Record", bool | None, tuple[str, ...], tuple[str, ...], str, bool], str | None]
"""A shape's generated line function: (record, matched, faults, rules, note, update) -> the line, or
None when the general path must decide."""


def _occurrences(raw: bytes, wire: bytes, found: int) -> list[tuple[int, int]]:
    """(start, end) of every occurrence of ``wire`` in ``raw`` from ``found`` on, overlapping ones
    too: an echo elsewhere is masked as well, as masking does."""
    ranges = []
    while found >= 0:
        ranges.append((found, found + len(wire)))
        found = raw.find(wire, found + 1)
    return ranges


def _shape_source(numbers: tuple[int, ...], header: bool) -> str:
    """The source of the line function of one field tuple: straight-line code (each value a local,
    the line one f-string), built only from the field numbers (ints) and constant text.

    It returns None, for the general path to decide, whenever the template could differ from
    ``json.dumps``: a value that needs escapes or is not a str, a 13-digit run outside the masked
    fields (a typed-in PAN), a sensitive value the raw search cannot locate, a non-finite time, a
    seq or connection that is not an int."""
    names = [f"v{index}" for index in range(len(numbers))]
    code = [
        "def line(record, matched, faults, rules, note, update):",
        "    seq = record.seq",
        "    stamp = record.time",
        "    connection = record.connection",
        "    request_seq = record.request_seq",
        "    if (type(stamp) is not float or stamp - stamp != 0.0 or type(connection) is not int",
        "            or (request_seq is not None and type(request_seq) is not int) or type(seq) is not int):",
        "        return None",
        "    raw = record.raw",
    ]
    if names:
        code.append("    " + ", ".join(names) + ", = record.fields.values()")
    if header:
        code.append("    header = record.header")
    sensitive = [(index, number) for index, number in enumerate(numbers) if number in SENSITIVE_FIELDS]
    shown = list(names)  # what the line shows of each value: the masked form of a sensitive one
    for index, number in sensitive:
        value, wire, found = names[index], f"w{index}", f"a{index}"
        shown[index] = f"s{index}"
        code += [
            f"    if type({value}) is not str:",
            "        return None",
            f"    cached = cache_get(({number}, {value}))",
            "    if cached is None:",
            f"        cached = sensitive({number}, {value})",
            f"    {shown[index]}, {wire} = cached",
            f"    if {value}:",
            f"        if {wire} is None or len({wire}) < {_MIN_SEARCHED_BYTES}:",
            "            return None",
            f"        {found} = raw.find({wire})",
            f"        if {found} < 0:",
            "            return None",
        ]
    checked = [*shown, "header"] if header else shown
    if checked:
        # Printable ASCII with no quote or backslash is its own JSON string body; no 13-digit run
        # outside the masked sensitive fields means no typed-in PAN to hide (the header included).
        code += [
            "    try:",
            "        classes = ' '.join((" + ", ".join(checked) + ",)).encode('ascii').translate(CLASSES)",
            "    except (TypeError, UnicodeEncodeError):",
            "        return None",
            "    if ESCAPED in classes or digit_run(classes) is not None:",
            "        return None",
        ]
    if not sensitive:
        code.append("    raw_hex = raw.hex().upper()")
    elif len(sensitive) == 1:  # the usual case, one PAN found once: no sorting or merging to do
        index = sensitive[0][0]
        value, wire, found = names[index], f"w{index}", f"a{index}"
        # The hex before, the stars and the hex after go into the line as three pieces (no join).
        code += [
            f"    if not {value}:",
            "        raw_hex, stars, rest = raw.hex().upper(), '', ''",
            f"    elif raw.find({wire}, {found} + 1) < 0:",
            f"        raw_hex = raw[:{found}].hex().upper()",
            f"        stars = MASKED_BYTE * len({wire})",
            f"        rest = raw[{found} + len({wire}):].hex().upper()",
            "    else:",
            f"        raw_hex, stars, rest = hex_masked(raw, occurrences(raw, {wire}, {found})), '', ''",
        ]
    else:
        code.append("    ranges = []")
        for index, _ in sensitive:
            code += [f"    if {names[index]}:",
                     f"        ranges += occurrences(raw, w{index}, a{index})"]
        code.append("    raw_hex = hex_masked(raw, ranges) if ranges else raw.hex().upper()")
    keys = (["h"] if header else []) + [_FIELD_KEYS[number] for number in numbers]
    values = (["header"] if header else []) + shown
    fields = ",".join(f'"{key}":"{{{value}}}"' for key, value in zip(keys, values, strict=True))
    # STAN, terminal and response code are fields 11, 41 and 39: present (and plain, as every value
    # is on this path) or null for the whole shape.
    stan, terminal, code_39 = (f'"{{{names[numbers.index(number)]}}}"' if number in numbers else "null"
                               for number in (11, 41, 39))
    pieces = "{stars}{rest}" if len(sensitive) == 1 else ""
    template = (
        '{{"seq":{seq},"time":{stamp!r},"connection":{connection},"peer":{peer},"direction":"{direction}",'
        f'"mti":{{mti}},"stan":{stan},"terminal":{terminal},"response_code":{code_39},'
        '"faults":[{faults}],"rules":[{rules}],'
        f'"fields":{{{{{fields}}}}},'
        f'"raw_hex":"{{raw_hex}}{pieces}","note":{{note}},'
        '"error":{error},"matched":{matched},"request_seq":{request_seq}'
        '{tail}}}\n'
    )
    # The usual frame has no faults, rules, note or error and is no update: its own template, with
    # those as constants, spares a dozen statements per line.
    plain = (template.replace("[{faults}]", "[]").replace("[{rules}]", "[]").replace("{note}", '""')
             .replace("{error}", "null").replace("{tail}", ""))
    code += [
        "    peer = json_string(record.peer)",
        "    direction = record.direction",
        "    mti = record.mti",
        "    mti = 'null' if mti is None else json_string(mti)",
        "    matched = JSON_BOOL[matched]",
        "    if request_seq is None:",
        "        request_seq = 'null'",
        "    error = record.error",
        "    if error is None and not (faults or rules or note or update):",
        f"        return f{plain!r}",
        "    faults = ','.join(map(json_string, faults)) if faults else ''",
        "    rules = ','.join(map(json_string, rules)) if rules else ''",
        "    note = json_string(note) if note else '\"\"'",
        "    error = 'null' if error is None else json_string(error)",
        "    tail = UPDATE_TAIL if update else ''",
        f"    return f{template!r}",
    ]
    return "\n".join(code) + "\n"


def _compiled_shape(numbers: tuple[int, ...], header: bool, masker: _Masker) -> LineFunction:
    source = _shape_source(numbers, header)
    env: dict[str, Any] = {
        "cache_get": masker._sensitive.get, "sensitive": masker.sensitive, "json_string": _json_string,
        "CLASSES": _CLASSES, "ESCAPED": _ESCAPED, "digit_run": _DIGIT_RUN_SEARCH, "MASKED_BYTE": MASKED_BYTE,
        "hex_masked": _hex_masked, "occurrences": _occurrences, "JSON_BOOL": _JSON_BOOL,
        "UPDATE_TAIL": _UPDATE_TAIL,
    }
    exec(compile(source, "<generated journal line>", "exec"), env)  # our own source: numbers and constants
    function: LineFunction = env["line"]
    function.__source__ = source  # type: ignore[attr-defined]
    return function


class LineFormatter:
    """Formats ``_Record``s into file lines for the journal's writer (its caches are its own)."""

    def __init__(self, masker: _Masker):
        self._masker = masker
        self._shapes: dict[tuple[int, ...], LineFunction | None] = {}
        self._header_shapes: dict[tuple[int, ...], LineFunction | None] = {}
        self._seen_once: set[tuple[bool, tuple[int, ...]]] = set()  # shapes met once, not compiled yet

    def _shape(self, numbers: tuple[int, ...], header: bool) -> LineFunction | None:
        """The line function of a field tuple, compiled the second time it is met (a compile costs
        ~1-2 ms of the event loop: one-off garbage bitmaps stay on the general path, as in the codec)."""
        shapes = self._header_shapes if header else self._shapes
        if len(shapes) >= _MAX_SHAPES:
            return None
        key = (header, numbers)
        if key not in self._seen_once:
            if len(self._seen_once) >= 2 * _MAX_SHAPES:
                self._seen_once.clear()
            self._seen_once.add(key)
            return None
        self._seen_once.discard(key)
        shape = (_compiled_shape(numbers, header, self._masker)
                 if all(type(n) is int and n in _FIELD_KEYS for n in numbers) else None)
        shapes[numbers] = shape
        return shape

    def line(self, record: _Record, matched: bool | None, faults: tuple[str, ...], rules: tuple[str, ...],
             note: str, update: bool) -> str:
        """The file line of ``record`` with the state claimed for it (its ``faults``, ``note``...): by
        its shape when it can be, else the general path."""
        fields = record.fields
        if fields is not None:
            numbers = tuple(fields)
            shapes = self._header_shapes if record.header else self._shapes
            shape = shapes.get(numbers)
            if shape is None and numbers not in shapes:
                shape = self._shape(numbers, bool(record.header))
            if shape is not None:
                fast = shape(record, matched, faults, rules, note, update)
                if fast is not None:
                    return fast
        formatted, raw_hex, error = record.formatted or record.format(self._masker)
        return general_line(record, formatted, raw_hex, error, matched, faults, rules, note, update)

    def claim(self, pending: deque[_Record | _Update], count: int, lines: list[str]) -> None:
        """Claim the first ``count`` entries of ``pending``, each with the state it has now (the Trio
        thread may change it later), and append their lines to ``lines``."""
        popleft = pending.popleft
        append = lines.append
        line = self.line
        for _ in range(count):
            item = popleft()
            if type(item) is _Update:
                record = item.record
                append(line(record, False, record.faults, record.rules, record.note, True))
                continue
            record = item  # type: ignore[assignment]
            record.claimed = True
            if record.direction == DIRECTION_IN:
                matched = False if record.unsent else (True if record.matched else None)
            else:
                matched = None
            append(line(record, matched, record.faults, record.rules, record.note, False))


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
