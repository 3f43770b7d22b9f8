"""Masking for the journal: PANs, tracks, PIN blocks and ICC data never reach a log or the admin API.

See the package docstring for what is masked where."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from switch.codec.composite import luhn_valid, mask_field, mask_pan
from switch.codec.message import Codec, MessageDecodeError

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
# A card number typed into a free-text field (48, 62, 63...): a run of exactly 13-19 digits that
# passes the Luhn check. Longer runs (field 90's 42 digits) and non-Luhn runs are other data.
_PAN_LIKE = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")
# Every message puts at least an MTI (2 bytes) and a bitmap (8) before field 2, so the first 10
# bytes of a frame never hold a PAN, whatever dialect wrote it.
_NEVER_PAN_BYTES = 10
_SENSITIVE_CACHE = 4096  # distinct sensitive values remembered by ``_Masker.sensitive``




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


def pan_runs(text: str) -> list[str]:
    """The PAN-like digit runs in free text: 13-19 digits, not part of a longer run, passing Luhn."""
    return [run for run in _PAN_LIKE.findall(text) if luhn_valid(run)]


def mask_text(text: str) -> str:
    """``text`` with every PAN-like run (see ``pan_runs``) masked as a PAN: first 6 and last 4 shown."""
    return _PAN_LIKE.sub(lambda match: mask_pan(match.group()) if luhn_valid(match.group()) else match.group(),
                         text)


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
        self._text_encodings = {int(key): spec["data_enc"] for key, spec in codec.dialect.spec.items()
                                if key.isdigit() and spec.get("data_enc") not in (None, "b")}
        self._encodings: dict[int, tuple[str, bool, str, str]] = {}
        self._sensitive: dict[tuple[int, str], tuple[str, bytes | None]] = {}
        for number in SENSITIVE_FIELDS:
            spec = codec.dialect.spec.get(str(number))
            if spec is not None:
                self._encodings[number] = (spec["data_enc"], spec.get("len_count", "bytes") == "nibbles",
                                           spec.get("left_pad", "")[:1], spec.get("right_pad", "")[:1])

    def sensitive(self, number: int, value: str) -> tuple[str, bytes | None]:
        """(shown value, bytes as the dialect sends it or None) of a sensitive field's value.

        Cached: a load test repeats a few test cards, and this is per frame on the writer's path.
        The cache is bounded (cleared when full), and holds nothing the ring does not hold too.
        """
        key = (number, value)
        cached = self._sensitive.get(key)
        if cached is None:
            if len(self._sensitive) >= _SENSITIVE_CACHE:
                self._sensitive.clear()
            cached = self._sensitive[key] = (_shown_value(number, value), self._wire_data(number, value))
        return cached

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
        text_ranges: list[tuple[int, int]] = []
        if not self._free_text_pans(raw, fields, shown, text_ranges):
            return shown, self._exact_hex(raw, _digit_run_ranges(raw, _NEVER_PAN_BYTES))
        ranges: list[tuple[int, int]] = list(text_ranges)
        for number, value in present:
            if not value:
                continue
            data = self._wire_data(number, value)
            if data is None or len(data) < _MIN_SEARCHED_BYTES:
                return shown, self._exact_hex(raw, text_ranges)
            found = raw.find(data)
            if found < 0:
                return shown, self._exact_hex(raw, text_ranges)
            while found >= 0:  # every occurrence, overlapping ones too: an echo elsewhere is a PAN too
                ranges.append((found, found + len(data)))
                found = raw.find(data, found + 1)
        return shown, _hex_masked(raw, ranges)

    def _free_text_pans(self, raw: bytes, fields: dict[int, str], shown: dict[str, str],
                        ranges: list[tuple[int, int]]) -> bool:
        """Mask PAN-like runs in the other fields (a card number typed into field 48): in ``shown``,
        and in ``ranges`` where it sits in ``raw``. False when a run cannot be located in the raw
        bytes (the caller then masks every digit run there)."""
        located = True
        for number, value in fields.items():
            if number in SENSITIVE_FIELDS or not isinstance(value, str) or not _FIELD_DIGIT_RUN.search(value):
                continue  # the C search first: most fields have no 13-digit run at all
            runs = pan_runs(value)
            if not runs:
                continue
            shown[_FIELD_KEYS.get(number, str(number))] = mask_text(value)
            encoding = self._text_encodings.get(number)
            for run in runs:
                try:
                    data = run.encode(encoding) if encoding else b""
                except (LookupError, UnicodeError):
                    data = b""
                found = raw.find(data) if data else -1
                if found < 0:
                    located = False
                while found >= 0:
                    ranges.append((found, found + len(data)))
                    found = raw.find(data, found + 1)
        return located

    def _exact_hex(self, raw: bytes, extra: Sequence[tuple[int, int]] = ()) -> str:
        """Sensitive fields located by a second, detailed decode (plus ``extra`` ranges) masked."""
        try:
            _, wire = self._codec.decode_detailed(raw)
        except MessageDecodeError:
            return self.undecodable(raw)[1]
        ranges = list(extra)
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


