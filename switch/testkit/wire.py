"""``assert_same_wire``: compare your encoder's bytes with ours, element by element.

A byte diff says "offset 37 differs"; a developer needs "field 4 (Amount, transaction): length
prefix 06 vs 0C". Both sides are decoded with the dialect (``Codec.decode_detailed`` keeps every
element's wire bytes), so the message names each element that differs — its value and its bytes —
and falls back to the first differing byte when a side does not decode at all.
"""

from __future__ import annotations

from switch.codec import Codec, Dialect
from switch.codec.dialect import load_dialect
from switch.codec.message import MessageDecodeError

__all__ = ["assert_same_wire", "wire_differences"]

_ELEMENT_NAMES = {"h": "header", "t": "MTI", "p": "primary bitmap", "1": "secondary bitmap"}
_ORDER = {"h": -4, "t": -3, "p": -2, "1": -1}
_CONTEXT = 8  # bytes shown either side of the first differing byte


def _label(key: str, dialect: Dialect) -> str:
    if key in _ELEMENT_NAMES:
        return _ELEMENT_NAMES[key]
    return f"field {key} ({dialect.field_name(int(key))})"


def _sort_key(key: str) -> int:
    return _ORDER.get(key, int(key) if key.isdigit() else 10**6)


def _first_difference(theirs: bytes, ours: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b), min(len(theirs), len(ours)))
    start = max(0, at - _CONTEXT)
    return (f"first difference at byte {at} (theirs {len(theirs)} bytes, ours {len(ours)}):\n"
            f"  theirs[{start}:]: {theirs[start:at + _CONTEXT].hex(' ')}\n"
            f"  ours[{start}:]:   {ours[start:at + _CONTEXT].hex(' ')}")


def _decode(codec: Codec, raw: bytes) -> tuple[dict[str, str], dict[str, tuple[bytes, bytes]]] | str:
    try:
        message, wire = codec.decode_detailed(raw)
    except MessageDecodeError as exc:
        return str(exc)
    values = {"t": message.mti, **({"h": message.header} if message.header else {}),
              **{str(number): value for number, value in message.fields.items()}}
    return values, wire


def wire_differences(theirs: bytes, ours: bytes, *, dialect: Dialect | str = "iso87-binary") -> list[str]:
    """One line per element that differs (empty when the bytes are equal)."""
    theirs, ours = bytes(theirs), bytes(ours)
    if theirs == ours:
        return []
    loaded = load_dialect(dialect) if isinstance(dialect, str) else dialect
    codec = Codec(loaded)
    left, right = _decode(codec, theirs), _decode(codec, ours)
    if isinstance(left, str) or isinstance(right, str):
        lines = [f"{side} do not decode as {loaded.name}: {problem}"
                 for side, problem in (("their bytes", left), ("our bytes", right)) if isinstance(problem, str)]
        return [*lines, _first_difference(theirs, ours)]
    (their_values, their_wire), (our_values, our_wire) = left, right
    lines = []
    for key in sorted(set(their_wire) | set(our_wire), key=_sort_key):
        mine, yours = our_wire.get(key), their_wire.get(key)
        if mine == yours:
            continue
        label = _label(key, loaded)
        if yours is None or mine is None:
            present, side = ("ours", our_values) if yours is None else ("theirs", their_values)
            lines.append(f"{label}: only in {present}: {side.get(key, '')!r}")
            continue
        parts = []
        if their_values.get(key) != our_values.get(key):
            parts.append(f"value {their_values.get(key)!r} != {our_values.get(key)!r}")
        if yours[0] != mine[0]:
            parts.append(f"length prefix {yours[0].hex() or '(none)'} != {mine[0].hex() or '(none)'}")
        if yours[1] != mine[1]:
            parts.append(f"bytes {yours[1].hex()} != {mine[1].hex()}")
        lines.append(f"{label}: {'; '.join(parts)}")
    if not lines:  # every element equal: the difference is outside them (trailing bytes)
        lines.append(_first_difference(theirs, ours))
    return lines


def assert_same_wire(their_bytes: bytes, our_bytes: bytes, *, dialect: Dialect | str = "iso87-binary") -> None:
    """Raise AssertionError listing every element (header, MTI, bitmaps, fields) whose wire bytes
    differ — theirs first, then ours — when the two encodings are not byte-for-byte equal."""
    lines = wire_differences(their_bytes, our_bytes, dialect=dialect)
    if lines:
        name = dialect if isinstance(dialect, str) else dialect.name
        raise AssertionError(f"wire bytes differ ({name}; theirs != ours):\n  " + "\n  ".join(lines))
