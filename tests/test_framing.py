"""Framing: length headers, TPDU and the incremental decoder (pure code, no I/O)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.codec.dialect import FramingDefaults, load_dialect
from switch.codec.framing import (
    LENGTH_HEADERS,
    TPDU_LENGTH,
    Frame,
    FrameDecoder,
    Framing,
    FramingError,
    OversizeFrameError,
    TruncatedFrameError,
    parse_tpdu,
    reply_tpdu,
    split_frames,
)

CUP_TPDU = bytes.fromhex("6000030000")
HEADER_CAPACITY = {"binary2": 0xFFFF, "binary4": 0xFFFF_FFFF, "ascii2": 99, "ascii4": 9999, "bcd2": 9999}
ALL_FRAMINGS = [
    Framing(length_header=kind, length_includes_itself=itself, tpdu=tpdu)
    for kind in LENGTH_HEADERS
    for itself in (False, True)
    for tpdu in (False, True)
]


def _framing_id(framing: Framing) -> str:
    return f"{framing.length_header}{'-self' if framing.length_includes_itself else ''}" + (
        "-tpdu" if framing.tpdu else ""
    )


def decode_all(decoder: FrameDecoder) -> list[Frame]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


# --- settings -------------------------------------------------------------------------------------


def test_length_headers_are_the_five_real_kinds():
    assert LENGTH_HEADERS == ("binary2", "binary4", "ascii2", "ascii4", "bcd2")


@pytest.mark.parametrize(
    ("kind", "size"), [("binary2", 2), ("binary4", 4), ("ascii2", 2), ("ascii4", 4), ("bcd2", 2)]
)
def test_header_size(kind, size):
    assert Framing(length_header=kind).header_size == size


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"length_header": "none"}, "length_header must be one of"),
        ({"length_header": "BINARY2"}, "length_header must be one of"),
        ({"length_includes_itself": 1}, "length_includes_itself must be true or false"),
        ({"tpdu": "yes"}, "tpdu must be true or false"),
        ({"max_frame": 0}, "max_frame must be an integer"),
        ({"max_frame": True}, "max_frame must be an integer"),
        ({"max_frame": 8192.0}, "max_frame must be an integer"),
        ({"max_frame": (1 << 24) + 1}, "max_frame must be an integer"),
        ({"tpdu": True, "max_frame": 4}, "at least 5"),
        ({"keepalive": "reply"}, "keepalive must be one of ignore, echo"),
    ],
)
def test_invalid_settings_are_refused_with_a_reason(overrides, fragment):
    with pytest.raises(FramingError) as info:
        Framing(**overrides)
    assert fragment in info.value.reason


def test_from_dialect_takes_the_dialect_defaults():
    dialect = load_dialect("iso87-binary")
    assert Framing.from_dialect(dialect) == Framing(
        length_header=dialect.framing.length_header,
        length_includes_itself=dialect.framing.length_includes_itself,
        tpdu=dialect.framing.tpdu,
        max_frame=dialect.framing.max_frame,
        keepalive=dialect.framing.keepalive,
    )


def test_from_dialect_overrides_win_and_none_means_not_given():
    cup_like = SimpleNamespace(framing=FramingDefaults(length_header="binary2", tpdu=True, keepalive="echo"))
    framing = Framing.from_dialect(cup_like, length_header="bcd2", max_frame=None, tpdu=None)
    assert framing == Framing(length_header="bcd2", tpdu=True, keepalive="echo", max_frame=8192)


def test_from_dialect_refuses_unknown_and_invalid_overrides():
    dialect = load_dialect("iso87-binary")
    with pytest.raises(FramingError, match="unknown framing option 'length'"):
        Framing.from_dialect(dialect, length="binary2")
    with pytest.raises(FramingError, match="keepalive must be one of"):
        Framing.from_dialect(dialect, keepalive="sometimes")


# --- encoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "size", "header"),
    [
        (Framing("binary2", max_frame=9999), 1234, bytes.fromhex("04d2")),
        (Framing("binary4", max_frame=9999), 1234, bytes.fromhex("000004d2")),
        (Framing("ascii2"), 42, b"42"),
        (Framing("ascii4", max_frame=9999), 1234, b"1234"),
        (Framing("bcd2", max_frame=9999), 1234, bytes.fromhex("1234")),
        (Framing("binary2", length_includes_itself=True), 3, bytes.fromhex("0005")),
        (Framing("binary4", length_includes_itself=True), 3, bytes.fromhex("00000007")),
        (Framing("ascii2", length_includes_itself=True), 3, b"05"),
        (Framing("ascii4", length_includes_itself=True), 3, b"0007"),
        (Framing("bcd2", length_includes_itself=True), 3, bytes.fromhex("0005")),
    ],
)
def test_known_length_headers(framing, size, header):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    wire = framing.encode(payload)
    assert wire == header + payload
    assert split_frames(framing, wire) == [Frame(payload)]


def test_cup_frame_layout_is_length_then_tpdu_then_message():
    framing = Framing("binary2", tpdu=True)
    wire = framing.encode(b"\x60\x31\x00\x31\x00\x00MSG", CUP_TPDU)
    assert wire == bytes.fromhex("000e") + CUP_TPDU + b"\x60\x31\x00\x31\x00\x00MSG"
    assert split_frames(framing, wire) == [Frame(b"\x60\x31\x00\x31\x00\x00MSG", CUP_TPDU)]


@pytest.mark.parametrize("framing", ALL_FRAMINGS, ids=_framing_id)
def test_round_trip_every_header_kind(framing):
    tpdu = CUP_TPDU if framing.tpdu else None
    frames = [Frame(b"0800" + bytes([n]) * n, tpdu) for n in (0, 1, 7, 50)] + [Frame(b"")]
    wire = b"".join(framing.encode(f.payload, f.tpdu) for f in frames)
    assert split_frames(framing, wire) == frames


@pytest.mark.parametrize(
    ("framing", "largest"),
    [
        (Framing("ascii2"), 99),
        (Framing("ascii2", length_includes_itself=True), 97),
        (Framing("ascii2", tpdu=True), 99 - TPDU_LENGTH),
        (Framing("ascii4", max_frame=20000), 9999),
        (Framing("bcd2", max_frame=20000), 9999),
        (Framing("bcd2", length_includes_itself=True, max_frame=20000), 9997),
        (Framing("binary2", max_frame=1 << 20), 0xFFFF),
        (Framing("binary2", length_includes_itself=True, max_frame=1 << 20), 0xFFFD),
    ],
    ids=lambda v: _framing_id(v) if isinstance(v, Framing) else str(v),
)
def test_encode_refuses_a_body_the_header_cannot_express(framing, largest):
    tpdu = CUP_TPDU if framing.tpdu else None
    fits = b"x" * largest
    assert split_frames(framing, framing.encode(fits, tpdu)) == [Frame(fits, tpdu)]
    with pytest.raises(OversizeFrameError) as info:
        framing.encode(fits + b"x", tpdu)
    assert "does not fit" in info.value.reason
    assert info.value.declared == largest + 1 + (TPDU_LENGTH if tpdu else 0)


def test_encode_refuses_a_body_over_max_frame():
    framing = Framing("binary2", tpdu=True, max_frame=100)
    framing.encode(b"x" * 95, CUP_TPDU)
    with pytest.raises(OversizeFrameError) as info:
        framing.encode(b"x" * 96, CUP_TPDU)
    assert (info.value.declared, info.value.limit) == (101, 100)


def test_encode_checks_the_tpdu():
    with pytest.raises(FramingError, match="none was given"):
        Framing(tpdu=True).encode(b"0800")
    with pytest.raises(FramingError, match="tpdu is off"):
        Framing().encode(b"0800", CUP_TPDU)
    with pytest.raises(FramingError, match="5 bytes, got 4"):
        Framing(tpdu=True).encode(b"0800", CUP_TPDU[:4])


def test_keepalive_is_a_zero_length_frame_in_every_mode():
    assert Framing().encode(b"") == b"\x00\x00"
    assert Framing(tpdu=True).encode(b"") == b"\x00\x00"
    assert Framing("ascii4", length_includes_itself=True).encode(b"") == b"0004"
    assert Frame(b"").is_keepalive
    assert not Frame(b"", CUP_TPDU).is_keepalive  # a TPDU with no message is a (bad) message
    assert not Frame(b"0800").is_keepalive


# --- TPDU -----------------------------------------------------------------------------------------


def test_reply_tpdu_swaps_destination_and_source():
    request = bytes.fromhex("6000120034")
    assert reply_tpdu(request) == bytes.fromhex("6000340012")
    assert reply_tpdu(reply_tpdu(request)) == request
    assert parse_tpdu(request) == (0x60, 0x0012, 0x0034)
    assert parse_tpdu(reply_tpdu(request)) == (0x60, 0x0034, 0x0012)


@pytest.mark.parametrize("bad", [b"", b"\x60\x00\x03\x00", b"\x60\x00\x03\x00\x00\x00"])
def test_tpdu_helpers_refuse_wrong_sizes(bad):
    with pytest.raises(FramingError, match="TPDU is 5 bytes"):
        reply_tpdu(bad)
    with pytest.raises(FramingError, match="TPDU is 5 bytes"):
        parse_tpdu(bad)


# --- decoding errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "header", "declared"),
    [
        (Framing("binary2", max_frame=100), bytes.fromhex("0065"), 101),
        (Framing("binary2"), bytes.fromhex("ffff"), 0xFFFF),
        (Framing("binary4"), bytes.fromhex("7fffffff"), 0x7FFF_FFFF),
        (Framing("ascii2", max_frame=50), b"51", 51),
        (Framing("ascii4", max_frame=1000), b"9999", 9999),
        (Framing("bcd2", max_frame=1000), bytes.fromhex("1001"), 1001),
        (Framing("binary2", length_includes_itself=True, max_frame=100), bytes.fromhex("0067"), 101),
    ],
)
def test_oversize_header_is_refused_without_the_body(framing, header, declared):
    decoder = FrameDecoder(framing)
    decoder.feed(header)  # only the header: the body never arrives
    with pytest.raises(OversizeFrameError) as info:
        decoder.next_frame()
    assert (info.value.declared, info.value.limit) == (declared, framing.max_frame)


def test_oversize_header_is_refused_when_split_across_feeds():
    decoder = FrameDecoder(Framing("binary4", max_frame=1000))
    decoder.feed(b"\x00\x00\x10")
    assert decoder.next_frame() is None
    decoder.feed(b"\x00")
    with pytest.raises(OversizeFrameError):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("kind", "header", "shown"),
    [
        ("ascii2", b"1x", "31 78"),
        ("ascii2", b" 5", "20 35"),
        ("ascii4", b"-001", "2d 30 30 31"),
        ("ascii4", b"00\xb9\xb9", "30 30 b9 b9"),  # non-ASCII digits must not sneak through
        ("bcd2", b"\x0a\x00", "0a 00"),
        ("bcd2", b"\x00\xf0", "00 f0"),
    ],
)
def test_bad_digits_in_the_header_name_the_bytes(kind, header, shown):
    decoder = FrameDecoder(Framing(kind))
    decoder.feed(header + b"body")
    with pytest.raises(FramingError) as info:
        decoder.next_frame()
    assert shown in info.value.reason
    assert kind in info.value.reason


def test_length_that_includes_itself_cannot_be_smaller_than_the_header():
    decoder = FrameDecoder(Framing("binary2", length_includes_itself=True))
    decoder.feed(b"\x00\x01x")
    with pytest.raises(FramingError, match="less than the header's own 2 bytes"):
        decoder.next_frame()


@pytest.mark.parametrize("body", [1, 2, 3, 4])
def test_body_shorter_than_the_tpdu_is_an_error(body):
    decoder = FrameDecoder(Framing(tpdu=True))
    decoder.feed(body.to_bytes(2, "big"))
    with pytest.raises(FramingError, match="shorter than the 5-byte TPDU"):
        decoder.next_frame()


def test_trailing_partial_frame_is_truncated_on_close():
    framing = Framing()
    whole = framing.encode(b"0800 whole")
    partial = framing.encode(b"0800 cut off")[:7]
    decoder = FrameDecoder(framing)
    decoder.feed(whole + partial)
    assert decode_all(decoder) == [Frame(b"0800 whole")]
    assert decoder.buffered == 7
    with pytest.raises(TruncatedFrameError) as info:
        decoder.close()
    assert info.value.buffered == partial
    with pytest.raises(TruncatedFrameError):
        split_frames(framing, whole + partial)
    with pytest.raises(TruncatedFrameError) as info:
        split_frames(framing, b"\x00")  # half a header
    assert info.value.buffered == b"\x00"


def test_close_at_a_frame_boundary_is_clean():
    decoder = FrameDecoder(Framing())
    decoder.close()
    decoder.feed(Framing().encode(b"abc"))
    assert decode_all(decoder) == [Frame(b"abc")]
    decoder.close()
    assert split_frames(Framing(), b"") == []


def test_decoder_refuses_use_after_an_error():
    decoder = FrameDecoder(Framing("ascii2"))
    decoder.feed(b"zz")
    with pytest.raises(FramingError):
        decoder.next_frame()
    for call in (decoder.next_frame, decoder.close, lambda: decoder.feed(b"02ab")):
        with pytest.raises(FramingError, match="already failed"):
            call()


def test_buffered_counts_undelivered_bytes():
    framing = Framing()
    decoder = FrameDecoder(framing)
    wire = framing.encode(b"one") + framing.encode(b"two")
    decoder.feed(wire[:6])
    assert decoder.buffered == 6
    assert decoder.next_frame() == Frame(b"one")
    assert decoder.buffered == 1
    decoder.feed(wire[6:])
    assert decoder.next_frame() == Frame(b"two")
    assert decoder.buffered == 0


def test_keepalives_between_messages():
    framing = Framing(tpdu=True)
    wire = b"\x00\x00" + framing.encode(b"0800", CUP_TPDU) + b"\x00\x00\x00\x00"
    frames = split_frames(framing, wire)
    assert frames == [Frame(b""), Frame(b"0800", CUP_TPDU), Frame(b""), Frame(b"")]
    assert [f.is_keepalive for f in frames] == [True, False, True, True]


def test_consumed_bytes_are_dropped_so_the_buffer_stays_small():
    # The switch benchmark streams millions of frames through one decoder; the buffer must not
    # grow with the bytes already delivered (white-box: looks at the private buffer).
    framing = Framing()
    wire = framing.encode(b"x" * 10)
    decoder = FrameDecoder(framing)
    decoder.feed(wire[:1])
    for _ in range(10_000):
        decoder.feed(wire[1:] + wire[:1])  # always one byte of the next frame left over
        assert decoder.next_frame() == Frame(b"x" * 10)
        assert decoder.next_frame() is None
        assert decoder.buffered == 1
        assert len(decoder._buf) <= 2 * len(wire)


# --- properties -----------------------------------------------------------------------------------


@st.composite
def framed_stream(draw):
    """A framing, the frames sent over it, and cut points that split the wire bytes into chunks."""
    framing = draw(
        st.builds(
            Framing,
            length_header=st.sampled_from(LENGTH_HEADERS),
            length_includes_itself=st.booleans(),
            tpdu=st.booleans(),
            max_frame=st.integers(64, 600),
        )
    )
    tpdu_size = TPDU_LENGTH if framing.tpdu else 0
    capacity = HEADER_CAPACITY[framing.length_header] - (
        framing.header_size if framing.length_includes_itself else 0
    )
    largest = min(capacity, framing.max_frame) - tpdu_size
    message = st.binary(max_size=largest)
    if framing.tpdu:
        frame = st.one_of(
            st.builds(Frame, message, st.binary(min_size=TPDU_LENGTH, max_size=TPDU_LENGTH)),
            st.just(Frame(b"")),
        )
    else:
        frame = st.builds(Frame, message)
    frames = draw(st.lists(frame, max_size=12))
    wire = b"".join(framing.encode(f.payload, f.tpdu) for f in frames)
    cuts = sorted(draw(st.sets(st.integers(0, len(wire)), max_size=20)))
    return framing, frames, wire, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(framed_stream())
def test_any_chunking_yields_the_same_frames(case):
    framing, frames, wire, cuts = case
    decoder = FrameDecoder(framing)
    out: list[Frame] = []
    bounds = [0, *cuts, len(wire)]
    for start, end in itertools.pairwise(bounds):
        decoder.feed(wire[start:end])
        out.extend(decode_all(decoder))
    decoder.close()
    assert out == frames
    assert split_frames(framing, wire) == frames


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ALL_FRAMINGS),
    st.lists(st.binary(max_size=40), max_size=8),
)
def test_arbitrary_bytes_give_frames_or_a_framing_error_only(framing, chunks):
    decoder = FrameDecoder(framing)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            for frame in decode_all(decoder):
                assert len(frame.payload) + (TPDU_LENGTH if frame.tpdu else 0) <= framing.max_frame
        decoder.close()
    except FramingError:
        pass


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [("binary2", 300, b"\x01\x2c"), ("binary2", 70000, b"\xff\xff"), ("binary4", 5, b"\x00\x00\x00\x05"),
     ("ascii2", 123, b"99"), ("ascii4", 42, b"0042"), ("bcd2", 1234, b"\x12\x34"), ("bcd2", 12345, b"\x99\x99"),
     ("ascii4", -3, b"0000")],
)
def test_header_saying_writes_any_value_clamped_to_the_header(kind: str, value: int, expected: bytes) -> None:
    assert Framing(length_header=kind).header_saying(value) == expected
