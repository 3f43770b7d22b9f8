"""The generated fast path (switch.codec.compiled) against the pyiso8583 reference, per dialect.

``Codec(dialect)`` tries generated straight-line functions first; ``Codec(dialect, fast=False)`` is
the pyiso8583 path alone. Differential properties: for valid messages, mutated and malformed
bytes, and malformed messages, both give byte-identical encodings, equal decoded messages, and
errors of the same type with the same reason, field, offset and partial decode. Valid traffic must
actually take the fast path (else the speed-up silently vanished), for every shipped dialect and
for user dialects combining other wire settings.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.codec import Codec, CodecError, Dialect, DialectRegistry, Message
from switch.strategies import messages
from tests.test_codec_properties import VARIANTS, mutated

SHIPPED = DialectRegistry().names()
# the property tests' user dialects, plus F pads (bcd_pad_char) and x+n as sign byte + BCD on the right
EXTRA_VARIANTS = {
    "f-padded-bcd": 'mti = "bcd"\nnumeric = "bcd"\nlength = "bcd"\nbcd_pad = "right"\nbcd_pad_char = "F"\n'
                    '[fields]\n28 = { encoding = "bcd", pad = "right" }\n97 = { encoding = "bcd" }\n',
}
ALL_VARIANTS = {**VARIANTS, **EXTRA_VARIANTS}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def registry() -> DialectRegistry:
    return DialectRegistry()


@functools.cache
def variant_registry(directory: str) -> DialectRegistry:
    return DialectRegistry([directory])


@functools.cache
def pair(name: str, directory: str = "") -> tuple[Dialect, Codec, Codec]:
    dialect = (variant_registry(directory) if directory else registry()).load(name)
    return dialect, Codec(dialect), Codec(dialect, fast=False)


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("compiled-variants")
    for name, text in ALL_VARIANTS.items():
        (directory / f"{name}.toml").write_text(f'extends = "iso87-binary"\nname = "{name}"\n{text}')
    return str(directory)


def outcome(call: Any, arg: Any) -> tuple[Any, ...]:
    """What a codec call gave: the value, or the error's type and every attribute callers read."""
    try:
        return ("ok", call(arg))
    except CodecError as error:
        return (type(error), error.reason, error.field, getattr(error, "offset", None),
                getattr(error, "partial", None), getattr(error, "raw", None), str(error))


def assert_same_decode(fast: Codec, ref: Codec, raw: bytes) -> None:
    assert outcome(fast.decode, raw) == outcome(ref.decode, raw)


def assert_same_encode(fast: Codec, ref: Codec, message: Message) -> None:
    assert outcome(fast.encode, message) == outcome(ref.encode, message)


parametrize_shipped = pytest.mark.parametrize("name", SHIPPED)


def test_every_shipped_dialect_is_covered() -> None:
    assert {"iso87-binary", "iso87-ascii", "iso87-bcd", "cup-pos"} <= set(SHIPPED)


@parametrize_shipped
@SETTINGS
@given(data=st.data())
def test_valid_messages_take_the_fast_path_and_match(name: str, data: st.DataObject) -> None:
    dialect, fast, ref = pair(name)
    message = data.draw(messages(dialect))
    wire = ref.encode(message)
    assert fast.encode(message) == wire
    assert fast.decode(wire) == ref.decode(wire) == message
    generated = fast._fast
    assert generated is not None
    encoder = generated.encoder(tuple(message.fields))
    assert encoder is not None and encoder(message.mti, message.header, *message.fields.values()) == wire
    assert generated.decode(wire) is not None  # valid traffic is never left to the slow path


@parametrize_shipped
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_bytes_decode_identically(name: str, data: st.DataObject) -> None:
    _, fast, ref = pair(name)
    assert_same_decode(fast, ref, data.draw(mutated(name)))


@parametrize_shipped
@SETTINGS
@given(data=st.data())
def test_truncated_and_garbage_tails_decode_identically(name: str, data: st.DataObject) -> None:
    dialect, fast, ref = pair(name)
    wire = ref.encode(data.draw(messages(dialect, max_fields=10)))
    cut = data.draw(st.integers(0, len(wire)))
    assert_same_decode(fast, ref, wire[:cut])
    assert_same_decode(fast, ref, wire[:cut] + data.draw(st.binary(max_size=64)))
    assert_same_decode(fast, ref, wire + data.draw(st.binary(min_size=1, max_size=8)))


@parametrize_shipped
@SETTINGS
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_decode_identically(name: str, raw: bytes) -> None:
    _, fast, ref = pair(name)
    assert_same_decode(fast, ref, raw)


def spoil(value: str, draw: st.DrawFn) -> Any:
    """A value the field may or may not take: other text, other case, other length, or not text."""
    kind = draw(st.sampled_from(["text", "lower", "longer", "shorter", "type", "ascii"]))
    value = value if isinstance(value, str) else ""  # spoiled twice
    if kind == "text":
        return draw(st.text(max_size=12))
    if kind == "ascii":
        return draw(st.text("0123456789ABCDEFabcdefCDxyz=:? ", max_size=20))
    if kind == "lower":
        return value.lower()
    if kind == "longer":
        return value + draw(st.sampled_from(["0", "A", "1", "D", "ab"]))
    if kind == "shorter":
        return value[:-1]
    return draw(st.sampled_from([None, 12, b"12", 1.5]))


@st.composite
def malformed_messages(draw: st.DrawFn, dialect: Dialect) -> Message:
    """A valid message with 1-3 fields, the MTI or the header spoiled, or a field number it lacks."""
    message = draw(messages(dialect, max_fields=10))
    fields: dict[Any, Any] = dict(message.fields)
    mti: Any = message.mti
    header: Any = message.header
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["field", "field", "field", "mti", "header", "number"]))
        if target == "field" and fields:
            number = draw(st.sampled_from(list(fields)))
            fields[number] = spoil(fields[number], draw)
        elif target == "mti":
            mti = spoil(mti, draw)
        elif target == "header":
            header = spoil(header, draw)
        else:
            fields[draw(st.sampled_from([1, 65, 129, 0, "2", True]))] = "1"
    return Message(mti, fields, header)


@parametrize_shipped
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_malformed_messages_encode_identically(name: str, data: st.DataObject) -> None:
    dialect, fast, ref = pair(name)
    assert_same_encode(fast, ref, data.draw(malformed_messages(dialect)))


@pytest.mark.parametrize("variant", sorted(ALL_VARIANTS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_variant_dialects_match_the_reference(variant_dir: str, variant: str, data: st.DataObject) -> None:
    dialect, fast, ref = pair(variant, variant_dir)
    message = data.draw(messages(dialect, max_fields=12))
    wire = ref.encode(message)
    assert fast.encode(message) == wire
    assert fast.decode(wire) == message
    assert fast._fast is not None and fast._fast.decode(wire) is not None
    cut = data.draw(st.integers(0, len(wire)))
    assert_same_decode(fast, ref, wire[:cut] + data.draw(st.binary(max_size=32)))
    assert_same_encode(fast, ref, data.draw(malformed_messages(dialect)))
