"""What ``iso-switch describe`` shows, as pure functions over bytes, so every rule is unit-tested.

``describe_message`` decodes one message with its per-element wire bytes and turns it into a
``MessageReport``: one ``ElementRow`` per element (header, MTI, bitmaps, fields) with the name from
the dialect, the wire bytes, the decoded value (masked unless asked otherwise) and, for composite
fields, their parts. A message that fails to decode still yields the rows read before the failure
plus the failure itself, because "what was fine up to where" is what a user debugging a host needs.
``render_text`` and ``report_to_json`` are the two outputs; the CLI only reads input and prints.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from switch.codec.composite import (
    CUP_NETWORK_CODES,
    CUP_TRANSACTION_TYPES,
    CompositeFieldError,
    CupField60,
    CupHeader,
    OriginalData,
    mask_field,
)
from switch.codec.dialect import Dialect, FramingDefaults
from switch.codec.framing import (
    LENGTH_HEADERS,
    MAX_FRAME_LIMIT,
    Framing,
    FramingError,
    parse_tpdu,
    split_frames,
)
from switch.codec.message import Codec, MessageDecodeError

FULLY_MASKED = "****"
WIRE_SHOWN_BYTES = 16  # wider wire bytes are cut in the table (the JSON output has them all)
NAME_WIDTH = 34

# Element keys as pyiso8583 names them, in the order they travel, and how a person calls them.
STRUCTURAL_NAMES = {
    "h": "header", "t": "MTI", "p": "primary bitmap", "1": "secondary bitmap", "65": "tertiary bitmap",
}
ROW_LABELS = {"h": "header", "t": "MTI", "p": "bitmap", "1": "bitmap2", "65": "bitmap3"}

_MTI_CLASSES = {
    "1": "authorization",
    "2": "financial",
    "3": "file action",
    "4": "reversal",
    "5": "reconciliation",
    "6": "administrative",
    "7": "fee collection",
    "8": "network management",
}
_MTI_FUNCTIONS = {
    "0": "request",
    "1": "response",
    "2": "advice",
    "3": "advice response",
    "4": "notification",
    "5": "notification acknowledgement",
    "6": "instruction",
    "7": "instruction acknowledgement",
}
_MTI_ORIGINS = {"0": "", "1": "repeat", "2": "from issuer", "3": "issuer repeat", "4": "from other",
                "5": "other repeat"}
_MTI_VERSIONS = {"0": "", "1": "ISO 8583:1993", "2": "ISO 8583:2003", "8": "national use", "9": "private use"}
# Where the generic reading misleads: x32x is "file action" in the standard, batch upload in POS use.
_MTI_SPECIAL = {"32": "batch upload", "33": "batch upload"}

RESPONSE_CODES = {
    "00": "approved", "01": "refer to issuer", "03": "invalid merchant", "05": "do not honour",
    "12": "invalid transaction", "13": "invalid amount", "14": "invalid card number",
    "22": "suspected malfunction", "25": "original not found", "30": "format error", "41": "lost card",
    "43": "stolen card", "51": "insufficient funds", "54": "expired card", "55": "incorrect PIN",
    "57": "not permitted to cardholder", "58": "not permitted to terminal", "61": "exceeds amount limit",
    "62": "restricted card", "65": "exceeds frequency limit", "68": "response received too late",
    "75": "PIN tries exceeded", "90": "cut-off in progress", "91": "issuer or switch inoperative",
    "94": "duplicate transmission", "95": "reconcile error", "96": "system malfunction",
    "97": "terminal not registered", "98": "issuer timeout", "99": "PIN format error, sign on again",
    "A0": "MAC check failed, sign on again",
}
NETWORK_MANAGEMENT_CODES = {"001": "sign-on", "002": "sign-off", "301": "echo test"}


def mti_meaning(mti: str) -> str:
    """'0200' -> 'financial request', '0401' -> 'reversal request, repeat' (classes per ISO 8583)."""
    if len(mti) != 4 or not mti.isdigit():
        return "not a valid MTI"
    version, klass, function, origin = mti[0], mti[1], mti[2], mti[3]
    if klass not in _MTI_CLASSES:
        return f"unknown message class {klass}"
    if function not in _MTI_FUNCTIONS:
        return f"unknown message function {function}"
    if mti[1:3] in _MTI_SPECIAL:
        words = _MTI_SPECIAL[mti[1:3]] + (" response" if function == "3" else "")
    else:
        words = f"{_MTI_CLASSES[klass]} {_MTI_FUNCTIONS[function]}"
    extras = [_MTI_ORIGINS.get(origin, f"origin {origin}"), _MTI_VERSIONS.get(version, f"version {version}")]
    return ", ".join([words, *(extra for extra in extras if extra)])


def framing_summary(framing: FramingDefaults) -> str:
    """One phrase for a dialect's default framing, e.g. 'binary2 + TPDU'."""
    text = framing.length_header
    if framing.length_includes_itself:
        text += " (counts itself)"
    if framing.tpdu:
        text += " + TPDU"
    return text


@dataclass(frozen=True, slots=True)
class ElementRow:
    """One element of a message as shown: wire bytes, decoded value and composite parts."""

    key: str  # pyiso8583's element key: "h", "t", "p", "1" or the field number as text
    name: str
    offset: int  # byte offset of the element (its length prefix) within the message
    prefix: bytes  # the length prefix as sent (empty for fixed-length elements)
    data: bytes
    value: str  # as shown: masked unless unmasking was asked for
    masked: bool = False
    parts: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return ROW_LABELS.get(self.key, self.key)


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """Where and why decoding stopped; ``offset`` is -1 when the codec could not tell."""

    reason: str
    element: str
    offset: int

    @property
    def where(self) -> str:
        if self.element in STRUCTURAL_NAMES:
            place = STRUCTURAL_NAMES[self.element]
        elif self.element.isdigit():
            place = f"field {self.element}"
        else:
            place = "an unknown element"
        return f"{place}, byte offset {self.offset}" if self.offset >= 0 else place

    def line(self) -> str:
        return f"error: {self.reason} at {self.where}"


@dataclass(frozen=True, slots=True)
class MessageReport:
    """A described message; ``failure`` is set when decoding stopped before the end."""

    rows: tuple[ElementRow, ...]
    mti: str | None
    failure: DecodeFailure | None = None
    tpdu: bytes | None = None

    @property
    def mti_meaning(self) -> str | None:
        return mti_meaning(self.mti) if self.mti is not None else None


def describe_message(codec: Codec, raw: bytes, *, unmask: bool = False, tpdu: bytes | None = None
                     ) -> MessageReport:
    """Decode ``raw`` (one message, no length header) into a report; never raises on bad bytes."""
    try:
        message, wire = codec.decode_detailed(raw)
    except MessageDecodeError as exc:
        decoded = dict(exc.partial)
        wire = getattr(exc, "partial_wire", {})
        failure: DecodeFailure | None = DecodeFailure(exc.reason, exc.field, exc.offset)
    else:
        decoded = {str(number): value for number, value in message.fields.items()}
        decoded["t"] = message.mti
        if "h" in wire:
            decoded["h"] = message.header
        failure = None
    if failure is not None:  # pyiso8583 leaves the failing element half-read: not a row to show
        wire = {key: parts for key, parts in wire.items() if key != failure.element}
    rows = tuple(_rows(codec.dialect, decoded, wire, unmask=unmask))
    mti = decoded.get("t") if "t" in wire else None
    return MessageReport(rows=rows, mti=mti, failure=failure, tpdu=tpdu)


def _rows(dialect: Dialect, decoded: Mapping[str, str], wire: Mapping[str, tuple[bytes, bytes]], *,
          unmask: bool) -> list[ElementRow]:
    rows = []
    offset = 0
    for key, (prefix, data) in wire.items():  # wire order is the order pyiso8583 read them
        rows.append(_row(dialect, key, decoded, prefix, data, offset, unmask=unmask))
        offset += len(prefix) + len(data)
    return rows


def _row(dialect: Dialect, key: str, decoded: Mapping[str, str], prefix: bytes, data: bytes, offset: int, *,
         unmask: bool) -> ElementRow:
    spec = dialect.spec.get(key, {})
    name = str(spec.get("desc", key))
    if key in ("p", "1", "65"):
        value = _bitmap_text(data)
        base = {"p": 0, "1": 64, "65": 128}[key]
        present = _bitmap_fields(value, base)
        parts: tuple[tuple[str, str], ...] = (("fields", " ".join(map(str, present))),) if present else ()
        return ElementRow(key, name, offset, prefix, data, value, parts=parts)
    value = decoded.get(key, data.hex().upper())
    if key == "h":
        return ElementRow(key, name, offset, prefix, data, value, parts=_header_parts(dialect, value))
    if key == "t":
        return ElementRow(key, name, offset, prefix, data, value)
    number = int(key)
    shown = value if unmask else mask_field(number, value)
    masked = shown != value
    if masked and set(shown) == {"*"}:  # PIN block, ICC data: a short marker, not a row of stars
        shown = FULLY_MASKED
    parts = () if masked else _field_parts(dialect, number, value)
    return ElementRow(key, name, offset, prefix, data, shown, masked=masked, parts=parts)


def _bitmap_text(data: bytes) -> str:
    """A bitmap as 16 hex digits whether it travelled as 8 bytes or as 16 hex characters."""
    if len(data) == 16:
        return data.decode("ascii", errors="replace").upper()
    return data.hex().upper()


def _bitmap_fields(bitmap_hex: str, base: int) -> list[int]:
    """Field numbers whose bits are set; bit 1 of each bitmap announces the next one, not a field."""
    try:
        bits = int(bitmap_hex, 16)
    except ValueError:
        return []
    width = len(bitmap_hex) * 4
    return [base + i + 1 for i in range(1, width) if bits >> (width - 1 - i) & 1]


def _parts_or_note(parse: Callable[[], tuple[tuple[str, str], ...]]) -> tuple[tuple[str, str], ...]:
    try:
        return parse()
    except CompositeFieldError as exc:
        return (("cannot split", exc.reason),)


def _named(code: str, names: Mapping[str, str]) -> str:
    return f"{code} ({names[code]})" if code in names else code


def _header_parts(dialect: Dialect, value: str) -> tuple[tuple[str, str], ...]:
    if dialect.family != "cup":
        return ()

    def parse() -> tuple[tuple[str, str], ...]:
        header = CupHeader.parse(value)
        return (
            ("application type", header.app_type),
            ("version", header.version),
            ("terminal status", header.terminal_status),
            ("processing requirement",
             _named(header.processing_requirement, CupHeader.PROCESSING_REQUIREMENTS)),
            ("reserved", header.reserved),
        )

    return _parts_or_note(parse)


def _field_parts(dialect: Dialect, number: int, value: str) -> tuple[tuple[str, str], ...]:
    if number == 39:
        return (("meaning", RESPONSE_CODES[value]),) if value in RESPONSE_CODES else ()
    if number == 70:
        return (("meaning", NETWORK_MANAGEMENT_CODES[value]),) if value in NETWORK_MANAGEMENT_CODES else ()
    if number == 90:
        return _parts_or_note(lambda: _original_data_parts(value))
    if number == 60 and dialect.family == "cup":
        return _parts_or_note(lambda: _cup60_parts(value))
    return ()


def _original_data_parts(value: str) -> tuple[tuple[str, str], ...]:
    original = OriginalData.parse(value)
    return (
        ("original MTI", f"{original.mti} ({mti_meaning(original.mti)})"),
        ("original STAN", original.stan),
        ("original transmission time", original.transmission_time),
        ("original acquirer id", repr(original.acquirer_id)),
        ("original forwarding id", repr(original.forwarding_id)),
    )


def _cup60_parts(value: str) -> tuple[tuple[str, str], ...]:
    f60 = CupField60.parse(value)
    parts = [
        ("60.1 transaction type", _named(f60.txn_type, CUP_TRANSACTION_TYPES)),
        ("60.2 batch number", f60.batch),
    ]
    if f60.network_code:
        parts.append(("60.3 network management code", _named(f60.network_code, CUP_NETWORK_CODES)))
    if f60.rest:
        parts.append(("60.4 onwards", f60.rest))
    return tuple(parts)


# --------------------------------------------------------------------------------------------
# Output

def printable(text: str) -> str:
    """Control characters as \\xNN escapes, so bytes from the input never drive the terminal."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}"
                   for ch in text)


def wire_text(row: ElementRow, limit: int = WIRE_SHOWN_BYTES) -> str:
    """Length prefix and data in hex, the data cut after ``limit`` bytes and hidden when masked."""
    if row.masked:
        data = f"[{len(row.data)} bytes masked]"
    elif len(row.data) > limit:
        data = f"{row.data[:limit].hex().upper()}... ({len(row.data)} bytes)"
    else:
        data = row.data.hex().upper()
    return f"{row.prefix.hex().upper()} {data}" if row.prefix else data


def tpdu_text(tpdu: bytes) -> str:
    tpdu_id, destination, source = parse_tpdu(tpdu)
    return f"{tpdu.hex().upper()} (id {tpdu_id:02X}, destination {destination:04X}, source {source:04X})"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render_text(report: MessageReport) -> list[str]:
    """The report as aligned table lines (without the failure line, which the caller prints last)."""
    lines = []
    if report.tpdu is not None:
        lines.append(f"TPDU  {tpdu_text(report.tpdu)}")
    if report.mti is not None:
        lines.append(f"MTI   {printable(report.mti)}  {report.mti_meaning}")
    if not report.rows:
        return lines
    wires = [wire_text(row) for row in report.rows]
    names = [_cut(printable(row.name), NAME_WIDTH) for row in report.rows]
    label_w = max(len("field"), *(len(row.label) for row in report.rows))
    name_w = max(len("name"), *(len(name) for name in names))
    wire_w = max(len("wire (hex)"), *(len(wire) for wire in wires))
    lines.append(f"{'field':<{label_w}}  {'name':<{name_w}}  {'wire (hex)':<{wire_w}}  value")
    for row, name, wire in zip(report.rows, names, wires, strict=True):
        line = f"{row.label:<{label_w}}  {name:<{name_w}}  {wire:<{wire_w}}  {printable(row.value)}"
        lines.append(line.rstrip())
        for part, value in row.parts:
            lines.append(f"{'':<{label_w}}    {part}: {printable(value)}")
    return lines


def report_to_json(report: MessageReport) -> dict[str, Any]:
    """The report as JSON-ready data: full wire bytes (except masked ones), parts as objects."""
    tpdu = None
    if report.tpdu is not None:
        tpdu_id, destination, source = parse_tpdu(report.tpdu)
        tpdu = {"hex": report.tpdu.hex().upper(), "id": tpdu_id, "destination": destination, "source": source}
    return {
        "tpdu": tpdu,
        "mti": report.mti,
        "mti_meaning": report.mti_meaning,
        "elements": [
            {
                "element": row.key,
                "name": row.name,
                "offset": row.offset,
                "length_prefix": row.prefix.hex().upper(),
                "data": None if row.masked else row.data.hex().upper(),
                "size": len(row.data),
                "value": row.value,
                "masked": row.masked,
                "parts": dict(row.parts),
            }
            for row in report.rows
        ],
        "error": None if report.failure is None else {
            "reason": report.failure.reason,
            "element": report.failure.element,
            "offset": report.failure.offset,
        },
    }


# --------------------------------------------------------------------------------------------
# Input

_HEX_SEPARATORS = str.maketrans("", "", " \t\r\n:")


def parse_hex(text: str) -> bytes:
    """Hex digits with any spaces, newlines or colons between them ('02 00', '02:00') -> bytes."""
    digits = text.translate(_HEX_SEPARATORS)
    for position, ch in enumerate(digits):
        if ch not in string.hexdigits:
            raise ValueError(f"not hex: {ch!r} at hex digit {position + 1}")
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)}): a byte is two digits")
    return bytes.fromhex(digits)


def stdin_bytes(data: bytes, *, raw: bool = False) -> bytes:
    """Standard input as message bytes: hex text if it is valid hex, else the bytes themselves."""
    if raw:
        return data
    try:
        return parse_hex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return data


def length_header_hint(raw: bytes) -> str | None:
    """A hint for unframed input that fails to decode but starts with a length header matching its size."""
    for kind in LENGTH_HEADERS:
        try:
            frames = split_frames(Framing(length_header=kind, max_frame=MAX_FRAME_LIMIT), raw)
        except FramingError:
            continue
        if len(frames) == 1 and frames[0].payload:
            return f"hint: the input starts with a {kind} length header that matches its size; try --framed"
    return None
