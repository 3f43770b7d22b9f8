"""Codec properties over every shipped dialect: round trips, byte-exactness, and typed errors only.

Byte-exactness (``encode(decode(b)) == b``) holds for every input the codec accepts, except two
encodings pyiso8583 reads but never writes, which the codec accepts on purpose because real peers
send them; re-encoding gives the canonical form:

- an all-zero secondary bitmap (bit 1 set, no field 65-128): dropped on re-encode;
- lower-case hex digits in a hex-text bitmap or hex-text binary field: upper-cased;
- an odd-length BCD value padded another way than the dialect sends (F on either side, a leading
  or a trailing 0): re-encoded with the dialect's own pad, same length, same decoded value.

Everything else pyiso8583 would accept loosely is refused by the codec, in both directions:
non-digits in n fields (ASCII or BCD nibbles A-F), non-track characters in ASCII z, malformed x+n,
non-hex or odd-length hex-text binary, a non-digit MTI, whitespace in a hex bitmap, a tertiary
bitmap, and ASCII length prefixes int() would take (" 9", "+9", "1_0").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.codec import (
    Codec,
    Dialect,
    DialectRegistry,
    FieldDef,
    Message,
    MessageDecodeError,
    MessageEncodeError,
)
from switch.strategies import ALPHANUMERIC, DIGITS, messages

DIALECTS = DialectRegistry().names()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STRUCTURAL_ELEMENTS = {"h", "t", "p", "1", "?"}


@functools.cache
def dialect_of(name: str) -> Dialect:
    return DialectRegistry().load(name)


@functools.cache
def codec_of(name: str) -> Codec:
    return Codec(dialect_of(name))


@functools.cache
def messages_of(name: str, max_fields: int | None = None) -> st.SearchStrategy[Message]:
    return messages(dialect_of(name), max_fields=max_fields)


parametrize_dialects = pytest.mark.parametrize("name", DIALECTS)


def test_both_encodings_of_iso87_are_shipped() -> None:
    # Guards the parametrization: an empty or broken dialect directory would silently test nothing.
    assert {"iso87-binary", "iso87-ascii"} <= set(DIALECTS)


# --- wire layout, read from the spec (not from the codec under test) --------------------------------


def bitmap_layout(dialect: Dialect) -> tuple[int, int]:
    """Byte offset of the primary bitmap and the wire width of one bitmap."""
    header = dialect.spec["h"]["max_len"]  # raw bytes, or text characters of one byte each
    mti = 2 if dialect.spec["t"]["data_enc"] == "b" else 4
    width = 8 if dialect.spec["p"]["data_enc"] == "b" else 16
    return header + mti, width


def bitmap_bytes(dialect: Dialect, wire: bytes) -> bytes:
    """One wire bitmap as its 8 bytes (hex text is read case-insensitively)."""
    return wire if dialect.spec["p"]["data_enc"] == "b" else bytes.fromhex(wire.decode("ascii"))


def bits(bitmap: bytes, first: int = 1) -> set[int]:
    return {first + i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (7 - i % 8) & 1}


def split_bitmaps(dialect: Dialect, wire: bytes) -> tuple[bytes, bytes, set[int], bytes]:
    """(header + MTI, bitmap bytes as sent, the bits set in them, everything after the bitmaps)."""
    offset, width = bitmap_layout(dialect)
    primary = bitmap_bytes(dialect, wire[offset:offset + width])
    present = bits(primary)
    end = offset + width
    if 1 in present:
        present |= bits(bitmap_bytes(dialect, wire[end:end + width]), first=65)
        end += width
    return wire[:offset], wire[offset:end], present, wire[end:]


def has_hex_text_binary(dialect: Dialect) -> bool:
    return any(f.type == "b" and dialect.spec[str(n)]["data_enc"] != "b" for n, f in dialect.fields.items())


def has_odd_bcd_pads(dialect: Dialect) -> bool:
    return any(spec.get("pad_lenient") for spec in dialect.spec.values())


def only_hex_case_differs(sent: bytes, canonical: bytes) -> bool:
    return len(sent) == len(canonical) and all(
        x == y or (chr(x) in "abcdef" and y == x - 32) for x, y in zip(sent, canonical, strict=True))


def assert_decode_error_shape(error: MessageDecodeError, raw: bytes) -> None:
    assert type(error) is MessageDecodeError
    assert isinstance(error.reason, str) and error.reason
    assert isinstance(error.field, str) and (error.field in STRUCTURAL_ELEMENTS or error.field.isdigit())
    assert isinstance(error.offset, int) and -1 <= error.offset <= len(raw)
    assert error.raw == bytes(raw)
    assert isinstance(error.partial, dict)
    if error.mti is not None:
        assert error.partial["t"] == error.mti


def assert_decodes_canonically(name: str, raw: bytes) -> Message | None:
    """Decode ``raw``; if accepted, re-encoding must give ``raw`` back or its canonical form.

    The canonical form may differ only as the module docstring says: a dropped all-zero secondary
    bitmap, and upper-cased hex in hex-text bitmaps and binary fields. Returns the message, or None
    when the codec refused the bytes (with a well-formed error).
    """
    dialect, codec = dialect_of(name), codec_of(name)
    try:
        message = codec.decode(raw)
    except MessageDecodeError as error:
        assert_decode_error_shape(error, raw)
        return None
    canonical = codec.encode(message)
    if canonical == raw:
        return message
    assert codec.decode(canonical) == message
    sent_head, sent_bitmaps, sent_bits, sent_rest = split_bitmaps(dialect, raw)
    canon_head, canon_bitmaps, canon_bits, canon_rest = split_bitmaps(dialect, canonical)
    assert sent_head == canon_head  # header and MTI are always byte-exact
    assert sent_bits - {1} == canon_bits - {1}
    redundant_secondary = 1 in sent_bits and not any(bit > 64 for bit in sent_bits)
    assert (1 in canon_bits) == (1 in sent_bits and not redundant_secondary)
    if not redundant_secondary:
        if dialect.spec["p"]["data_enc"] == "b":
            assert sent_bitmaps == canon_bitmaps
        else:
            assert only_hex_case_differs(sent_bitmaps, canon_bitmaps)
    if has_hex_text_binary(dialect):
        assert only_hex_case_differs(sent_rest, canon_rest)
    elif has_odd_bcd_pads(dialect):  # pad nibbles (and with them a value's alignment) may differ
        assert len(sent_rest) == len(canon_rest)
    else:
        assert sent_rest == canon_rest
    return message


# --- round trips ----------------------------------------------------------------------------------------


@parametrize_dialects
@SETTINGS
@given(data=st.data())
def test_encode_then_decode_is_identity(name: str, data: st.DataObject) -> None:
    message = data.draw(messages_of(name))
    assert codec_of(name).decode(codec_of(name).encode(message)) == message


@parametrize_dialects
@SETTINGS
@given(data=st.data())
def test_decode_then_encode_is_byte_exact_on_encoded_messages(name: str, data: st.DataObject) -> None:
    wire = codec_of(name).encode(data.draw(messages_of(name)))
    assert codec_of(name).encode(codec_of(name).decode(wire)) == wire
    assert codec_of(name).decode(bytearray(wire)) == codec_of(name).decode(memoryview(wire))


@parametrize_dialects
def test_every_defined_field_round_trips_at_its_extremes(name: str) -> None:
    """Each field alone at its minimum and maximum size: catches a spec the strategies under-sample."""
    codec, dialect = codec_of(name), dialect_of(name)
    header = simple_header(dialect)
    for number, fdef in dialect.fields.items():
        for size in {fdef.max} if fdef.fixed else {1 if fdef.type == "xn" else 0, fdef.max}:
            message = Message("0800", {number: simple_value(fdef, size)}, header)
            assert codec.decode(codec.encode(message)) == message, (number, size)


# Wire settings the shipped dialects do not combine, as user dialect files extending iso87-binary:
# the strategies and the codec must hold for any legal dialect, not only the shipped ones.
VARIANTS = {
    "bcd-binary-lengths-hex-bitmap": 'mti = "bcd"\nnumeric = "bcd"\nlength = "binary"\nbitmap = "hex"\n'
                                     'binary = "hex"\n',
    "ebcdic-text-bcd-lengths": 'text = "cp500"\nlength = "bcd"\nbitmap = "hex"\n',
    "right-padded-bcd-latin1-header": 'numeric = "bcd"\nbcd_pad = "right"\ntext = "latin-1"\n'
                                      'binary = "hex"\n[header]\nlength = 4\n',
    "ascii-header-bcd": 'numeric = "bcd"\nlength = "binary"\n[header]\nlength = 5\nencoding = "ascii"\n',
}


Variants = dict[str, tuple[Codec, st.SearchStrategy[Message]]]


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Variants:
    directory = tmp_path_factory.mktemp("variant-dialects")
    for name, settings_text in VARIANTS.items():
        (directory / f"{name}.toml").write_text(f'extends = "iso87-binary"\nname = "{name}"\n{settings_text}')
    registry = DialectRegistry([directory])
    return {name: (Codec(registry.load(name)), messages(registry.load(name))) for name in VARIANTS}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_variant_dialects_round_trip_and_refuse_garbage_cleanly(variants: Variants, variant: str,
                                                                 data: st.DataObject) -> None:
    codec, strategy = variants[variant]
    message = data.draw(strategy)
    wire = codec.encode(message)
    assert codec.decode(wire) == message
    assert codec.encode(codec.decode(wire)) == wire
    cut = data.draw(st.integers(0, len(wire)))
    garbage = wire[:cut] + data.draw(st.binary(max_size=64))
    try:
        decoded = codec.decode(garbage)
    except MessageDecodeError as error:
        assert_decode_error_shape(error, garbage)
    else:
        assert codec.decode(codec.encode(decoded)) == decoded


# --- hostile input: only MessageDecodeError, well formed ---------------------------------------------------


@parametrize_dialects
@SETTINGS
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_give_a_message_or_a_typed_error(name: str, raw: bytes) -> None:
    assert_decodes_canonically(name, raw)


@parametrize_dialects
@SETTINGS
@given(data=st.data())
def test_valid_head_then_garbage_gives_a_message_or_a_typed_error(name: str, data: st.DataObject) -> None:
    wire = codec_of(name).encode(data.draw(messages_of(name, 8)))
    offset, width = bitmap_layout(dialect_of(name))
    keep = data.draw(st.integers(0, min(len(wire), offset + 2 * width)))
    assert_decodes_canonically(name, wire[:keep] + data.draw(st.binary(max_size=200)))


@parametrize_dialects
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_truncation_is_refused_with_an_offset_inside_the_input(name: str, data: st.DataObject) -> None:
    message = data.draw(messages_of(name, 10))
    wire = codec_of(name).encode(message)
    for end in range(len(wire)):
        with pytest.raises(MessageDecodeError) as info:
            codec_of(name).decode(wire[:end])
        assert_decode_error_shape(info.value, wire[:end])
        assert 0 <= info.value.offset <= end
        if end >= bitmap_layout(dialect_of(name))[0]:  # the MTI was read before the failure
            assert info.value.mti == message.mti


@parametrize_dialects
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_bit_flip_in_the_first_bytes_is_decoded_or_refused(name: str, data: st.DataObject) -> None:
    """Exhaustive single-bit flips over header, MTI, bitmaps and the first fields."""
    wire = codec_of(name).encode(data.draw(messages_of(name, 10)))
    offset, width = bitmap_layout(dialect_of(name))
    for position in range(min(len(wire), offset + 2 * width + 48)):
        for bit in range(8):
            flipped = bytearray(wire)
            flipped[position] ^= 1 << bit
            assert_decodes_canonically(name, bytes(flipped))


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A valid message's bytes after 1-3 edits; some edits keep it decodable, most do not."""
    dialect = dialect_of(name)
    wire = bytearray(codec_of(name).encode(draw(messages_of(name, 10))))
    offset, width = bitmap_layout(dialect)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "byte", "digit", "lower", "secondary", "delete", "insert"]))
        position = draw(st.integers(0, max(len(wire) - 1, 0)))
        if kind == "flip" and wire:
            wire[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and wire:
            wire[position] = draw(st.integers(0, 255))
        elif kind == "digit":  # same class of content, so often still decodable
            digits = [i for i, byte in enumerate(wire) if chr(byte) in DIGITS]
            if digits:
                wire[draw(st.sampled_from(digits))] = ord(draw(st.sampled_from(DIGITS)))
        elif kind == "lower":
            letters = [i for i, byte in enumerate(wire) if chr(byte) in "ABCDEF"]
            if letters:
                wire[draw(st.sampled_from(letters))] += 32
        elif kind == "secondary" and len(wire) >= offset + width:
            try:
                primary = bitmap_bytes(dialect, bytes(wire[offset:offset + width]))
            except ValueError:  # an earlier edit broke the hex bitmap text
                continue
            if not primary[0] & 0x80:  # announce an empty secondary bitmap, as some peers always do
                primary = bytes([primary[0] | 0x80]) + primary[1:]
                text = dialect.spec["p"]["data_enc"] != "b"
                new = primary.hex().upper().encode() if text else primary
                wire[offset:offset + width] = new + (b"0" * 16 if text else bytes(8))
        elif kind == "delete" and wire:
            del wire[position]
        elif kind == "insert":
            wire.insert(position, draw(st.integers(0, 255)))
    return bytes(wire)


@parametrize_dialects
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_messages_decode_canonically_or_are_refused(name: str, data: st.DataObject) -> None:
    assert_decodes_canonically(name, data.draw(mutated(name)))


# --- precise decode rules -------------------------------------------------------------------------------


def simple_value(fdef: FieldDef, size: int) -> str:
    """A valid value of ``size`` units (digits, characters or bytes) for any field class."""
    if fdef.type == "b":
        return "AB" * size
    if fdef.type == "xn":
        return "C" + "1" * (size - 1)
    return ("1" if fdef.type in ("n", "z") else "A") * size


def simple_header(dialect: Dialect) -> str:
    spec = dialect.spec["h"]
    return "0" * (2 * spec["max_len"] if spec["data_enc"] == "b" else spec["max_len"])


def wire_size(dialect: Dialect, number: int, value: str) -> int:
    """Bytes the data of ``value`` takes on the wire (without a length prefix)."""
    spec = dialect.spec[str(number)]
    if spec["data_enc"] == "b":
        return (len(value) + 1) // 2
    return len(value.encode(spec["data_enc"]))


def alone(name: str, fdef: FieldDef, value: str) -> tuple[Message, bytes]:
    """A message holding one field, which therefore ends the wire bytes."""
    message = Message("0200", {fdef.number: value}, simple_header(dialect_of(name)))
    return message, codec_of(name).encode(message)


def first_field(dialect: Dialect, wanted: Callable[[FieldDef, Mapping[str, Any]], bool], reason: str
                ) -> FieldDef:
    found = [fdef for number, fdef in dialect.fields.items() if wanted(fdef, dialect.spec[str(number)])]
    if not found:
        pytest.skip(f"dialect {dialect.name} has no {reason}")
    return found[0]


@parametrize_dialects
def test_non_digit_in_a_numeric_field_is_refused_at_its_offset(name: str) -> None:
    dialect = dialect_of(name)
    fdef = first_field(dialect, lambda f, s: f.type == "n" and f.fixed, "fixed n field")
    message, wire = alone(name, fdef, "1" * fdef.max)
    start = len(wire) - wire_size(dialect, fdef.number, "1" * fdef.max)
    bad = bytearray(wire)
    bad[start] = 0x0A if fdef.wire_numeric else ord("A")  # BCD nibble A / ASCII letter
    with pytest.raises(MessageDecodeError) as info:
        codec_of(name).decode(bytes(bad))
    assert (info.value.field, info.value.offset) == (str(fdef.number), start)
    assert "digits" in info.value.reason and info.value.mti == message.mti


@parametrize_dialects
def test_length_prefix_that_int_would_accept_is_refused(name: str) -> None:
    dialect = dialect_of(name)
    fdef = first_field(dialect, lambda f, s: s["len_type"] > 0 and s["len_enc"] not in ("b", "bcd"),
                       "ASCII length prefix")
    value = simple_value(fdef, 2)
    _, wire = alone(name, fdef, value)
    prefix_width = dialect.spec[str(fdef.number)]["len_type"]
    prefix_at = len(wire) - wire_size(dialect, fdef.number, value) - prefix_width
    for loose in (b" ", b"+"):  # " 02" / "+02" style prefixes: int() reads them, ISO does not
        bad = wire[:prefix_at] + loose + wire[prefix_at + 1:]
        with pytest.raises(MessageDecodeError) as info:
            codec_of(name).decode(bad)
        assert (info.value.field, info.value.offset) == (str(fdef.number), prefix_at)
        assert "length prefix" in info.value.reason


def with_secondary(dialect: Dialect, wire: bytes, secondary: bytes) -> bytes:
    """``wire`` (bit 1 clear) with bit 1 set and ``secondary`` (8 bytes) inserted after the primary."""
    offset, width = bitmap_layout(dialect)
    primary = bitmap_bytes(dialect, wire[offset:offset + width])
    primary = bytes([primary[0] | 0x80]) + primary[1:]
    if dialect.spec["p"]["data_enc"] != "b":
        primary, secondary = primary.hex().upper().encode(), secondary.hex().upper().encode()
    return wire[:offset] + primary + secondary + wire[offset + width:]


@parametrize_dialects
def test_empty_secondary_bitmap_is_accepted_and_dropped_on_encode(name: str) -> None:
    dialect = dialect_of(name)
    fdef = first_field(dialect, lambda f, s: f.number < 65, "field in the primary bitmap")
    message, wire = alone(name, fdef, simple_value(fdef, fdef.max))
    padded = with_secondary(dialect, wire, bytes(8))
    assert codec_of(name).decode(padded) == message
    assert codec_of(name).encode(codec_of(name).decode(padded)) == wire


@parametrize_dialects
def test_tertiary_bitmap_is_refused(name: str) -> None:
    dialect = dialect_of(name)
    fdef = first_field(dialect, lambda f, s: f.number > 65, "field in the secondary bitmap")
    _, wire = alone(name, fdef, simple_value(fdef, fdef.max))
    offset, width = bitmap_layout(dialect)
    secondary_at = offset + width
    text = dialect.spec["p"]["data_enc"] != "b"
    secondary = bitmap_bytes(dialect, wire[secondary_at:secondary_at + width])
    secondary = bytes([secondary[0] | 0x80]) + secondary[1:]  # bit 65: a tertiary bitmap follows
    for tertiary, field, at in ((bytes(8), "65", secondary_at + width), (b"\x80" + bytes(7), "129", -1)):
        parts = (secondary, tertiary)
        inserted = b"".join(p.hex().upper().encode() if text else p for p in parts)
        bad = wire[:secondary_at] + inserted + wire[secondary_at + width:]
        with pytest.raises(MessageDecodeError) as info:
            codec_of(name).decode(bad)
        assert (info.value.field, info.value.offset) == (field, at)


@parametrize_dialects
def test_hex_bitmap_case_is_free_but_whitespace_is_refused(name: str) -> None:
    dialect = dialect_of(name)
    if dialect.spec["p"]["data_enc"] == "b":
        pytest.skip(f"dialect {name} has a binary bitmap")
    primary_fields = {n: simple_value(f, f.max) for n, f in dialect.fields.items() if n < 57}
    message = Message("0200", primary_fields, simple_header(dialect))
    wire = codec_of(name).encode(message)
    offset, width = bitmap_layout(dialect)
    bitmap = wire[offset:offset + width]
    assert bitmap.upper() != bitmap.lower(), "bitmap has no hex letters to test case with"
    lower = wire[:offset] + bitmap.lower() + wire[offset + width:]
    assert codec_of(name).decode(lower) == message
    assert codec_of(name).encode(codec_of(name).decode(lower)) == wire
    # bytes.fromhex skips whitespace, so "7F..FF 00 " would silently read as a 7-byte bitmap
    spaced = wire[:offset] + bitmap[:12] + b" " + bitmap[12:14] + b" " + wire[offset + width:]
    with pytest.raises(MessageDecodeError) as info:
        codec_of(name).decode(spaced)
    assert (info.value.field, info.value.offset) == ("p", offset)


@parametrize_dialects
def test_hex_text_binary_field_takes_either_case_but_only_hex(name: str) -> None:
    dialect = dialect_of(name)
    fdef = first_field(dialect, lambda f, s: f.type == "b" and f.fixed and s["data_enc"] != "b",
                       "fixed binary field carried as hex text")
    value = "0123456789ABCDEF" * fdef.max
    message, wire = alone(name, fdef, value[: 2 * fdef.max])
    start = len(wire) - 2 * fdef.max
    lower = wire[:start] + wire[start:].lower()
    assert codec_of(name).decode(lower) == message
    assert codec_of(name).encode(Message(message.mti, {fdef.number: message[fdef.number].lower()},
                                         message.header)) == wire
    with pytest.raises(MessageDecodeError) as info:
        codec_of(name).decode(wire[:start] + b"G" + wire[start + 1:])
    assert (info.value.field, info.value.offset) == (str(fdef.number), start)


@parametrize_dialects
def test_non_digit_mti_is_refused(name: str) -> None:
    dialect = dialect_of(name)
    fdef = next(iter(dialect.fields.values()))
    _, wire = alone(name, fdef, simple_value(fdef, fdef.max if fdef.fixed else 1))
    mti_at = dialect.spec["h"]["max_len"]
    bad = bytearray(wire)
    bad[mti_at] = 0x0A if dialect.spec["t"]["data_enc"] == "b" else ord("A")
    with pytest.raises(MessageDecodeError) as info:
        codec_of(name).decode(bytes(bad))
    assert (info.value.field, info.value.offset) == ("t", mti_at)
    assert info.value.mti is None


# --- invalid messages: only MessageEncodeError naming the field --------------------------------------------


def invalid_values(fdef: FieldDef, dialect: Dialect) -> st.SearchStrategy[object]:
    """Values ``fdef`` must refuse: wrong size, wrong class of content, not text at all."""
    options: list[st.SearchStrategy[object]] = [
        st.just(simple_value(fdef, fdef.max + 1)),  # one unit over the maximum, fixed or variable
        st.integers() | st.none() | st.binary(max_size=4),
    ]
    if fdef.fixed and fdef.max > 1:
        options.append(st.integers(1, fdef.max - 1).map(lambda size: simple_value(fdef, size)))
    if fdef.type in ("n", "z", "xn", "b"):
        # A right-sized value with one 'G': no digit, no track character, no sign, no hex digit.
        valid = simple_value(fdef, fdef.max if fdef.fixed else min(fdef.max, 2))
        options.append(st.integers(0, len(valid) - 1).map(lambda at: valid[:at] + "G" + valid[at + 1:]))
    if fdef.type == "b":
        options.append(st.just("ABC"))  # odd number of hex digits
    if fdef.type in ("an", "anp", "ans"):
        try:
            "\U0001f600".encode(dialect.spec[str(fdef.number)]["data_enc"])
        except UnicodeEncodeError:  # a character the field's text codec cannot carry
            options.append(st.just(simple_value(fdef, max(fdef.max - 1, 1))[:-1] + "\U0001f600"))
    return st.one_of(options)


@parametrize_dialects
@SETTINGS
@given(data=st.data())
def test_invalid_field_value_is_refused_naming_the_field(name: str, data: st.DataObject) -> None:
    dialect = dialect_of(name)
    message = data.draw(messages_of(name, 6))
    number = data.draw(st.sampled_from(sorted(dialect.fields)))
    message.fields[number] = data.draw(invalid_values(dialect.fields[number], dialect))
    with pytest.raises(MessageEncodeError) as info:
        codec_of(name).encode(message)
    assert info.value.field == str(number)


@parametrize_dialects
@SETTINGS
@given(data=st.data())
def test_undefined_field_number_is_refused_naming_it(name: str, data: st.DataObject) -> None:
    dialect = dialect_of(name)
    message = data.draw(messages_of(name, 4))
    key = data.draw(st.sampled_from([1, 65, "2", 2.5]) | st.integers(-3, 300).filter(
        lambda n: n not in dialect.fields))
    message.fields[key] = "00"  # type: ignore[index]
    with pytest.raises(MessageEncodeError) as info:
        codec_of(name).encode(message)
    assert info.value.field == str(key)


@parametrize_dialects
@SETTINGS
@given(data=st.data())
def test_bad_mti_or_header_is_refused_naming_it(name: str, data: st.DataObject) -> None:
    dialect = dialect_of(name)
    message = data.draw(messages_of(name, 4))
    element = data.draw(st.sampled_from(["t", "h"]))
    if element == "t":
        message.mti = data.draw(st.sampled_from(["020", "02000", "02A0", "\u0660200", "", 200]))
    elif dialect.header_length:
        message.header = data.draw(st.sampled_from([message.header[:-2], message.header + "00", "ZZ" *
                                                    dialect.spec["h"]["max_len"], 0]))
    else:
        message.header = data.draw(st.text(ALPHANUMERIC, min_size=1, max_size=12))
    with pytest.raises(MessageEncodeError) as info:
        codec_of(name).encode(message)
    assert info.value.field == element
