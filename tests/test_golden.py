"""Golden vectors: messages whose bytes were worked out by hand from the standard, field by field.

Each expected hex string below is written literally, one line per element with what it encodes,
so a reviewer can check it against the dialect rules without running anything. For every vector
the codec must decode the bytes to exactly the listed fields and encode those fields back to
exactly the bytes. The bitmaps were computed by hand too: bit n is bit (7 - (n-1) % 8) of byte
(n-1) // 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import iso8583.specs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.composite import CupField60, CupHeader
from switch.codec.dialect import load_dialect
from switch.codec.message import Codec, Message, MessageEncodeError


def hexdump(annotated: str) -> str:
    """The hex pairs of an annotated dump: one element per line, '#' starts what it encodes."""
    pairs = [pair for line in annotated.splitlines() for pair in line.split("#", 1)[0].split()]
    bad = [pair for pair in pairs if len(pair) != 2 or any(c not in "0123456789ABCDEF" for c in pair)]
    assert not bad, f"not hex byte pairs: {bad}"
    return "".join(pairs)


@dataclass(frozen=True)
class Vector:
    name: str
    dialect: str
    message: Message
    dump: str  # annotated, see hexdump()

    @property
    def hex(self) -> str:
        return hexdump(self.dump)

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex)


# One purchase, three ISO dialects. Field 35 differs only where the BCD dialect needs D for '='.
PURCHASE_FIELDS = {
    2: "4111111111111111",
    3: "000000",
    4: "000000001000",
    7: "1225103000",
    11: "000123",
    22: "051",
    25: "00",
    32: "12345",
    35: "4111111111111111=261210112345",
    41: "TERM0001",
    42: "MERCHANT0000001",
    49: "840",
    52: "0123456789ABCDEF",
}
# Bits 2 3 4 7 | 11 | 22 | 25 32 | 35 | 41 42 | 49 52 | - :
PURCHASE_BITMAP = "72 20 04 81 20 C0 90 00"

ISO87_BINARY_0200 = Vector(
    "iso87-binary 0200 purchase", "iso87-binary", Message("0200", PURCHASE_FIELDS), f"""
    30 32 30 30                                        # MTI 0200, ASCII
    {PURCHASE_BITMAP}                                  # bitmap, 8 raw bytes
    31 36 34 31 31 31 31 31 31 31 31 31 31 31 31 31 31 31  # 2: LL "16" + PAN
    30 30 30 30 30 30                                  # 3
    30 30 30 30 30 30 30 30 31 30 30 30                # 4
    31 32 32 35 31 30 33 30 30 30                      # 7
    30 30 30 31 32 33                                  # 11
    30 35 31                                           # 22
    30 30                                              # 25
    30 35 31 32 33 34 35                               # 32: LL "05" + "12345"
    32 39 34 31 31 31 31 31 31 31 31 31 31 31 31 31 31 31  # 35: LL "29" + PAN
    3D 32 36 31 32 31 30 31 31 32 33 34 35             # 35 cont.: "=261210112345"
    54 45 52 4D 30 30 30 31                            # 41 "TERM0001"
    4D 45 52 43 48 41 4E 54 30 30 30 30 30 30 31       # 42 "MERCHANT0000001"
    38 34 30                                           # 49
    01 23 45 67 89 AB CD EF                            # 52: 8 raw bytes
""")

ISO87_ASCII_0200 = Vector(
    "iso87-ascii 0200 purchase", "iso87-ascii", Message("0200", PURCHASE_FIELDS), """
    30 32 30 30                                        # MTI 0200
    37 32 32 30 30 34 38 31 32 30 43 30 39 30 30 30    # bitmap as text "7220048120C09000"
    31 36 34 31 31 31 31 31 31 31 31 31 31 31 31 31 31 31  # 2
    30 30 30 30 30 30                                  # 3
    30 30 30 30 30 30 30 30 31 30 30 30                # 4
    31 32 32 35 31 30 33 30 30 30                      # 7
    30 30 30 31 32 33                                  # 11
    30 35 31                                           # 22
    30 30                                              # 25
    30 35 31 32 33 34 35                               # 32
    32 39 34 31 31 31 31 31 31 31 31 31 31 31 31 31 31 31  # 35
    3D 32 36 31 32 31 30 31 31 32 33 34 35             # 35 cont.
    54 45 52 4D 30 30 30 31                            # 41
    4D 45 52 43 48 41 4E 54 30 30 30 30 30 30 31       # 42
    38 34 30                                           # 49
    30 31 32 33 34 35 36 37 38 39 41 42 43 44 45 46    # 52 as 16 hex characters
""")

ISO87_BCD_0200 = Vector(
    "iso87-bcd 0200 purchase", "iso87-bcd",
    Message("0200", {**PURCHASE_FIELDS, 35: "4111111111111111D261210112345"}), f"""
    02 00                                              # MTI, BCD
    {PURCHASE_BITMAP}                                  # bitmap
    16 41 11 11 11 11 11 11 11                         # 2: BCD LL 16 digits + PAN
    00 00 00                                           # 3
    00 00 00 00 10 00                                  # 4
    12 25 10 30 00                                     # 7
    00 01 23                                           # 11
    00 51                                              # 22: odd fixed, '0' nibble on the left
    00                                                 # 25
    05 12 34 50                                        # 32: 5 digits, left-aligned, '0' pad right
    29 41 11 11 11 11 11 11 11 D2 61 21 01 12 34 50    # 35: 29 digits, '=' is nibble D, pad right
    54 45 52 4D 30 30 30 31                            # 41: text stays ASCII
    4D 45 52 43 48 41 4E 54 30 30 30 30 30 30 31       # 42
    38 34 30                                           # 49: 3 characters, as jPOS ISO87B sends it
    01 23 45 67 89 AB CD EF                            # 52
""")

CUP_HEADER = "603100000000"
CUP_REQUEST_TPDU = "6000030000"  # 60 + destination 0003 + source 0000
CUP_REPLY_TPDU = "6000000003"  # destination and source swapped

CUP_SIGN_ON = Vector(
    "cup-pos 0800 sign-on", "cup-pos",
    Message("0800", {
        11: "000001",
        41: "12345678",
        42: "123456789012345",
        60: "00000001003",  # 60.1 "00" + 60.2 batch "000001" + 60.3 "003" sign-on, double-length keys
        63: "001",  # operator
    }, header=CUP_HEADER), """
    60 31 00 00 00 00                                  # CUP header
    08 00                                              # MTI
    00 20 00 00 00 C0 00 12                            # bitmap: 11 | 41 42 | 60 63
    00 00 01                                           # 11
    31 32 33 34 35 36 37 38                            # 41
    31 32 33 34 35 36 37 38 39 30 31 32 33 34 35       # 42
    00 11 00 00 00 01 00 30                            # 60: BCD LLL 11 digits, pad '0' right
    00 03 30 30 31                                     # 63: BCD LLL 3 bytes + ASCII
""")
CUP_SIGN_ON_FRAMED_LENGTH = "003C"  # TPDU 5 + header 6 + MTI 2 + bitmap 8 + 3 + 8 + 15 + 8 + 5 = 60

CUP_SIGN_ON_KEYS = (
    "1122334455667788" "AABBCCDD"  # PIN key under the master key + its check value
    "8877665544332211" "DDCCBBAA"  # MAC key + check value
)
CUP_SIGN_ON_REPLY = Vector(
    "cup-pos 0810 sign-on reply", "cup-pos",
    Message("0810", {
        11: "000001",
        12: "103000",
        13: "1225",
        32: "00010344",
        37: "123456789012",
        39: "00",
        41: "12345678",
        42: "123456789012345",
        60: "00000001003",
        62: CUP_SIGN_ON_KEYS,
    }, header=CUP_HEADER), """
    60 31 00 00 00 00                                  # CUP header
    08 10                                              # MTI
    00 38 00 01 0A C0 00 14                            # bitmap: 11 12 13 | 32 | 37 39 | 41 42 | 60 62
    00 00 01                                           # 11
    10 30 00                                           # 12
    12 25                                              # 13
    08 00 01 03 44                                     # 32: BCD LL 8 digits
    31 32 33 34 35 36 37 38 39 30 31 32                # 37
    30 30                                              # 39
    31 32 33 34 35 36 37 38                            # 41
    31 32 33 34 35 36 37 38 39 30 31 32 33 34 35       # 42
    00 11 00 00 00 01 00 30                            # 60
    00 24                                              # 62: BCD LLL, 24 bytes
    11 22 33 44 55 66 77 88 AA BB CC DD                # 62: PIN key + check value
    88 77 66 55 44 33 22 11 DD CC BB AA                # 62: MAC key + check value
""")
CUP_SIGN_ON_REPLY_FRAMED_LENGTH = "0069"  # 5 + 6 + 2 + 8 + 3 + 3 + 2 + 5 + 12 + 2 + 8 + 15 + 8 + 26 = 105

CUP_SALE = Vector(
    "cup-pos 0200 sale", "cup-pos",
    Message("0200", {
        2: "6222021234567890123",
        3: "000000",
        4: "000000010000",
        11: "000002",
        14: "2612",
        22: "021",
        23: "001",
        25: "00",
        26: "06",
        35: "6222021234567890123D2612101",
        41: "12345678",
        42: "123456789012345",
        49: "156",
        52: "1122334455667788",
        53: "2600000000000000",
        60: "2200000100050",  # sale, batch 000001, 60.3 000, 60.4 "5", 60.5 "0"
        64: "0102030405060708",
    }, header=CUP_HEADER), """
    60 31 00 00 00 00                                  # CUP header
    02 00                                              # MTI
    70 24 06 C0 20 C0 98 11                            # bitmap: 2 3 4 | 11 14 | 22 23 | 25 26 | 35 | 41 42
    #                                                    | 49 52 53 | 60 64
    19 62 22 02 12 34 56 78 90 12 30                   # 2: 19 digits, pad '0' right
    00 00 00                                           # 3
    00 00 00 01 00 00                                  # 4
    00 00 02                                           # 11
    26 12                                              # 14
    02 10                                              # 22: n3 left-aligned, pad '0' right
    00 01                                              # 23: n3 right-aligned, pad '0' left
    00                                                 # 25
    06                                                 # 26
    27 62 22 02 12 34 56 78 90 12 3D 26 12 10 10       # 35: 27 digits, D separator, pad right
    31 32 33 34 35 36 37 38                            # 41
    31 32 33 34 35 36 37 38 39 30 31 32 33 34 35       # 42
    31 35 36                                           # 49: ASCII in CUP
    11 22 33 44 55 66 77 88                            # 52
    26 00 00 00 00 00 00 00                            # 53
    00 13 22 00 00 01 00 05 00                         # 60: 13 digits, pad '0' right
    01 02 03 04 05 06 07 08                            # 64
""")

VECTORS = [ISO87_BINARY_0200, ISO87_ASCII_0200, ISO87_BCD_0200, CUP_SIGN_ON, CUP_SIGN_ON_REPLY, CUP_SALE]


def _codec(name: str) -> Codec:
    return Codec(load_dialect(name))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_decode_gives_the_hand_written_fields(vector: Vector) -> None:
    decoded = _codec(vector.dialect).decode(vector.raw)
    assert decoded.mti == vector.message.mti
    assert decoded.header == vector.message.header
    assert decoded.fields == vector.message.fields


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_encode_gives_the_hand_written_bytes(vector: Vector) -> None:
    assert _codec(vector.dialect).encode(vector.message).hex().upper() == vector.hex


def test_vector_lengths_match_the_hand_count() -> None:
    # Guards the dumps themselves: a dropped or doubled pair would shift every later element.
    assert [len(v.raw) for v in VECTORS] == [141, 157, 93, 55, 100, 121]


@pytest.mark.parametrize(("vector", "tpdu", "length_header"), [
    (CUP_SIGN_ON, CUP_REQUEST_TPDU, CUP_SIGN_ON_FRAMED_LENGTH),
    (CUP_SIGN_ON_REPLY, CUP_REPLY_TPDU, CUP_SIGN_ON_REPLY_FRAMED_LENGTH),
])
def test_cup_framed_length_header_counts_tpdu_and_body(vector: Vector, tpdu: str, length_header: str) -> None:
    # binary2 length header, not counting itself: TPDU + CUP header + message.
    framed = bytes.fromhex(length_header + tpdu) + vector.raw
    assert (len(bytes.fromhex(tpdu)) + len(vector.raw)).to_bytes(2, "big") == framed[:2]
    assert int.from_bytes(framed[:2], "big") == len(framed) - 2
    assert framed[7:] == _codec("cup-pos").encode(vector.message)


def test_cup_reply_tpdu_swaps_destination_and_source() -> None:
    request, reply = bytes.fromhex(CUP_REQUEST_TPDU), bytes.fromhex(CUP_REPLY_TPDU)
    assert reply == request[:1] + request[3:5] + request[1:3]


def test_cup_sign_on_composites() -> None:
    decoded = _codec("cup-pos").decode(CUP_SIGN_ON.raw)
    assert CupHeader.parse(decoded.header) == CupHeader.DEFAULT
    assert CupField60.parse(decoded[60]) == CupField60("00", "000001", "003")
    reply = _codec("cup-pos").decode(CUP_SIGN_ON_REPLY.raw)
    keys = bytes.fromhex(reply[62])
    assert len(keys) == 24
    assert [keys[i:i + 12].hex().upper() for i in (0, 12)] == ["1122334455667788AABBCCDD",
                                                               "8877665544332211DDCCBBAA"]


def test_bcd_track_needs_d_not_equals() -> None:
    # '=' has no BCD nibble; the dialect documents that callers give D.
    with pytest.raises(MessageEncodeError) as info:
        _codec("iso87-bcd").encode(Message("0200", dict(PURCHASE_FIELDS)))
    assert info.value.field == "35"


def test_iso87_binary_is_pyiso8583_default_spec() -> None:
    assert dict(load_dialect("iso87-binary").spec) == iso8583.specs.default


def test_iso87_ascii_is_pyiso8583_default_ascii_spec() -> None:
    assert dict(load_dialect("iso87-ascii").spec) == iso8583.specs.default_ascii


# Odd-length BCD is where the two BCD dialects differ from each other and where padding bugs hide:
# every length of every padded field must come back exactly as given.
BCD_PADDED_FIELDS = {
    "iso87-bcd": {2: (1, 19), 22: (3, 3), 27: (1, 1), 32: (1, 11), 35: (1, 37), 99: (1, 11)},
    "cup-pos": {2: (1, 19), 22: (3, 3), 23: (3, 3), 35: (1, 37), 48: (1, 322), 60: (8, 17), 61: (1, 29)},
}


@st.composite
def padded_bcd_message(draw: st.DrawFn, dialect: str) -> Message:
    fields: dict[int, str] = {}
    for number, (shortest, longest) in BCD_PADDED_FIELDS[dialect].items():
        alphabet = "0123456789D" if number in (35, 36) else "0123456789"
        fields[number] = draw(st.text(alphabet, min_size=shortest, max_size=longest))
    header = CUP_HEADER if dialect == "cup-pos" else ""
    return Message("0200", fields, header=header)


@pytest.mark.parametrize("dialect", sorted(BCD_PADDED_FIELDS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_odd_length_bcd_fields_round_trip(dialect: str, data: st.DataObject) -> None:
    codec = _codec(dialect)
    message = data.draw(padded_bcd_message(dialect))
    decoded = codec.decode(codec.encode(message))
    assert decoded.fields == message.fields
    assert decoded.header == message.header


def test_cup_pos_declares_its_header_tpdu_and_semantics() -> None:
    dialect = load_dialect("cup-pos")
    assert dialect.header_length == 6
    assert (dialect.framing.tpdu, dialect.framing.length_header) == (True, "binary2")
    assert dialect.family == "cup"
    assert load_dialect("iso87-bcd").framing.tpdu is False
