"""Valid messages of any dialect, derived from its field table (``switch.strategies.messages``).

Nothing here names a field number: every value is built from the ``FieldDef`` (ISO class, length
type, maximum, BCD or not) and the pyiso8583 field spec the loader derived (text codec, whether a
binary field travels as raw bytes or hex text), so a new dialect file is covered as soon as it is
shipped. Values take the form the codec decodes to, so ``decode(encode(m)) == m`` is the property:

- n: digits (BCD or ASCII on the wire, the decoded form is the same);
- z: track digits with at most one separator, ``=`` in ASCII, ``D`` where the field is BCD;
- xn: ``C`` or ``D`` then digits;
- an / anp / ans: alphanumerics / plus space / printable ASCII, restricted to characters the field's
  text codec carries as one byte (lengths and maxima are in bytes);
- b: upper-case hex, two digits per byte, whether the wire carries raw bytes or hex text.

A fixed field gets exactly ``max`` digits, characters or bytes; a variable one 0..max.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from hypothesis import strategies as st

from switch.codec import Codec, Dialect, FieldDef, Message
from switch.codec.dialect import DialectRegistry, load_dialect

__all__ = [
    "ALPHANUMERIC",
    "DIGITS",
    "HEX_UPPER",
    "KNOWN_MTIS",
    "PRINTABLE_ASCII",
    "dialect_of",
    "dialects",
    "encoded_messages",
    "field_value",
    "field_values",
    "headers",
    "messages",
    "mtis",
    "shipped_dialects",
    "single_byte_chars",
]

DIGITS = string.digits
HEX_UPPER = "0123456789ABCDEF"
ALPHANUMERIC = string.ascii_letters + string.digits
PRINTABLE_ASCII = "".join(chr(code) for code in range(0x20, 0x7F))
# MTIs the emulator handles, drawn often so tests look like traffic; any four digits are valid too.
KNOWN_MTIS = ("0100", "0110", "0200", "0210", "0220", "0221", "0230", "0320", "0330", "0400", "0401",
              "0410", "0420", "0421", "0430", "0500", "0501", "0510", "0800", "0810")


def shipped_dialects() -> list[str]:
    """Names of the dialects installed with the package (``iso-switch dialects`` lists the same)."""
    return DialectRegistry().names()


def dialect_of(dialect: Dialect | str) -> Dialect:
    """A loaded dialect, or one loaded by name (shipped) or path (a ``.toml`` file)."""
    return load_dialect(dialect) if isinstance(dialect, str) else dialect


def dialects() -> st.SearchStrategy[Dialect]:
    """Any shipped dialect, loaded."""
    return st.sampled_from(shipped_dialects()).map(load_dialect)


def single_byte_chars(candidates: str, codec: str) -> str:
    """The candidates that ``codec`` writes as exactly one byte and reads back unchanged."""
    kept = []
    for char in candidates:
        try:
            encoded = char.encode(codec)
        except UnicodeEncodeError:
            continue
        if len(encoded) == 1 and encoded.decode(codec) == char:
            kept.append(char)
    return "".join(kept)


def _sizes(fdef: FieldDef, *, reserved: int = 0) -> st.SearchStrategy[int]:
    """Length of the free part of a value: exactly max (fixed) or 0..max (variable), less ``reserved``."""
    if fdef.fixed:
        return st.just(fdef.max - reserved)
    return st.integers(0, fdef.max - reserved)


def _text(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=size, max_size=size)


def _sized_text(fdef: FieldDef, alphabet: str) -> st.SearchStrategy[str]:
    return _sizes(fdef).flatmap(lambda size: _text(alphabet, size))


def _track(fdef: FieldDef) -> st.SearchStrategy[str]:
    separator = "D" if fdef.wire_numeric else "="

    def place(size: int) -> st.SearchStrategy[str]:
        digits = _text(DIGITS, size)
        if size == 0:
            return digits
        position = st.none() | st.integers(0, size - 1)
        return st.tuples(digits, position).map(
            lambda drawn: drawn[0] if drawn[1] is None
            else drawn[0][: drawn[1]] + separator + drawn[0][drawn[1] + 1:])

    return _sizes(fdef).flatmap(place)


def _signed_amount(fdef: FieldDef) -> st.SearchStrategy[str]:
    sign = st.sampled_from("CD")
    return st.tuples(sign, _sizes(fdef, reserved=1).flatmap(lambda size: _text(DIGITS, size))).map("".join)


def _hex_bytes(fdef: FieldDef) -> st.SearchStrategy[str]:
    return _sizes(fdef).flatmap(lambda size: st.binary(min_size=size, max_size=size)).map(
        lambda raw: raw.hex().upper())


def field_value(fdef: FieldDef, dialect: Dialect | str) -> st.SearchStrategy[str]:
    """Valid values of one field, in the form ``Codec.decode`` returns them."""
    dialect = dialect_of(dialect)
    spec = dialect.spec[str(fdef.number)]
    if fdef.type == "n":
        return _sized_text(fdef, DIGITS)
    if fdef.type == "z":
        return _track(fdef)
    if fdef.type == "xn":
        return _signed_amount(fdef)
    if fdef.type == "b":
        return _hex_bytes(fdef)
    alphabet = {"an": ALPHANUMERIC, "anp": ALPHANUMERIC + " "}.get(fdef.type, PRINTABLE_ASCII)
    alphabet = single_byte_chars(alphabet, spec["data_enc"])
    if not alphabet:
        raise ValueError(f"{dialect.name} field {fdef.number}: codec {spec['data_enc']} carries none of "
                         f"the {fdef.type} characters as single bytes")
    return _sized_text(fdef, alphabet)


def mtis() -> st.SearchStrategy[str]:
    """Four-digit MTIs: every dialect carries them (ASCII digits or two BCD bytes)."""
    return st.sampled_from(KNOWN_MTIS) | _text(DIGITS, 4)


def headers(dialect: Dialect | str) -> st.SearchStrategy[str]:
    """The dialect header: hex digits of ``header_length`` bytes (raw), or that many hex characters."""
    dialect = dialect_of(dialect)
    spec = dialect.spec["h"]
    if not dialect.header_length:
        return st.just("")
    if spec["data_enc"] == "b":
        size = spec["max_len"]
        return st.binary(min_size=size, max_size=size).map(lambda raw: raw.hex().upper())
    return _text(HEX_UPPER, spec["max_len"])


def field_values(dialect: Dialect | str) -> Mapping[int, st.SearchStrategy[str]]:
    """One value strategy per defined field (bitmaps 1 and 65 are never defined: the codec computes them)."""
    dialect = dialect_of(dialect)
    return {number: field_value(fdef, dialect) for number, fdef in dialect.fields.items()}


def messages(dialect: Dialect | str, *, max_fields: int | None = None,
             mti: str | None = None) -> st.SearchStrategy[Message]:
    """Valid messages of ``dialect`` (a name or a loaded one): an MTI (``mti`` fixes it), the header if
    the dialect has one, any subset of its fields; ``decode(encode(m)) == m`` holds for every one."""
    dialect = dialect_of(dialect)
    mti_values = mtis() if mti is None else st.just(mti)
    values = field_values(dialect)
    numbers = sorted(values)
    limit = len(numbers) if max_fields is None else min(max_fields, len(numbers))

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        chosen = draw(st.sets(st.sampled_from(numbers), max_size=limit))
        fields = {number: draw(values[number]) for number in sorted(chosen)}
        return Message(draw(mti_values), fields, draw(headers(dialect)))

    return build()


def encoded_messages(dialect: Dialect | str, *, max_fields: int | None = None) -> st.SearchStrategy[bytes]:
    """Wire bytes of valid messages (no length header, no TPDU), for framing and fuzz tests."""
    dialect = dialect_of(dialect)
    codec = Codec(dialect)
    return messages(dialect, max_fields=max_fields).map(codec.encode)
