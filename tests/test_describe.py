"""The pure side of `describe`: MTI meanings, masking, partial decodes, composite parts, rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from switch.codec.dialect import DialectRegistry, load_dialect
from switch.codec.framing import Framing
from switch.codec.message import Codec, Message
from switch.describe import (
    FULLY_MASKED,
    DecodeFailure,
    describe_message,
    framing_summary,
    length_header_hint,
    mti_meaning,
    parse_hex,
    printable,
    render_text,
    report_to_json,
    stdin_bytes,
    wire_text,
)

PAN = "4761739001010010"
TRACK2 = "4761739001010010=25121010000012300000"
PIN_BLOCK = "0123456789ABCDEF"
ISO = Codec(load_dialect("iso87-binary"))


def purchase(**extra: str) -> Message:
    fields = {2: PAN, 3: "000000", 4: "000000001234", 11: "000001", 41: "TERM0001", 49: "840"}
    fields.update({int(k.removeprefix("f")): v for k, v in extra.items()})
    return Message("0200", fields)


@pytest.fixture
def cup_codec(tmp_path: Path) -> Codec:
    """cup-pos as a dialect of the "cup" family, so CUP structure (header, field 60) is shown."""
    (tmp_path / "cup-family.toml").write_text('extends = "cup-pos"\nname = "cup-family"\nfamily = "cup"\n')
    return Codec(DialectRegistry([tmp_path]).load("cup-family"))


# --------------------------------------------------------------------------------------------
# MTI, framing summary


@pytest.mark.parametrize(
    ("mti", "meaning"),
    [
        ("0200", "financial request"),
        ("0210", "financial response"),
        ("0100", "authorization request"),
        ("0220", "financial advice"),
        ("0230", "financial advice response"),
        ("0401", "reversal request, repeat"),
        ("0420", "reversal advice"),
        ("0430", "reversal advice response"),
        ("0320", "batch upload"),
        ("0330", "batch upload response"),
        ("0500", "reconciliation request"),
        ("0800", "network management request"),
        ("0810", "network management response"),
        ("1200", "financial request, ISO 8583:1993"),
        ("0900", "unknown message class 9"),
        ("0290", "unknown message function 9"),
        ("02A0", "not a valid MTI"),
        ("020", "not a valid MTI"),
    ],
)
def test_mti_meaning(mti: str, meaning: str) -> None:
    assert mti_meaning(mti) == meaning


def test_framing_summary_names_header_tpdu_and_self_counting() -> None:
    assert framing_summary(load_dialect("iso87-binary").framing) == "binary2"
    assert framing_summary(load_dialect("cup-pos").framing) == "binary2 + TPDU"
    counted = Framing(length_header="ascii4", length_includes_itself=True)
    assert framing_summary(counted) == "ascii4 (counts itself)"  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# A full decode


def test_rows_follow_the_wire_and_cover_every_byte() -> None:
    raw = ISO.encode(purchase())
    report = describe_message(ISO, raw)
    assert report.failure is None
    assert report.mti == "0200" and report.mti_meaning == "financial request"
    assert [row.key for row in report.rows] == ["t", "p", "2", "3", "4", "11", "41", "49"]
    offset = 0
    for row in report.rows:
        assert row.offset == offset
        assert raw[offset:offset + len(row.prefix) + len(row.data)] == row.prefix + row.data
        offset += len(row.prefix) + len(row.data)
    assert offset == len(raw)
    by_key = {row.key: row for row in report.rows}
    assert by_key["2"].prefix == b"16"
    assert by_key["4"].value == "000000001234" and by_key["4"].data == b"000000001234"
    assert by_key["p"].parts == (("fields", "2 3 4 11 41 49"),)


def test_pan_track_and_pin_block_are_masked_by_default() -> None:
    report = describe_message(ISO, ISO.encode(purchase(f35=TRACK2, f52=PIN_BLOCK)))
    rows = {row.key: row for row in report.rows}
    assert rows["2"].value == "476173******0010" and rows["2"].masked
    assert rows["35"].value.startswith("476173******0010=") and set(rows["35"].value[17:]) == {"*"}
    assert rows["52"].value == FULLY_MASKED and rows["52"].masked
    assert not rows["3"].masked
    text = "\n".join(render_text(report))
    document = json.dumps(report_to_json(report))
    for secret in (PAN, TRACK2, PIN_BLOCK, PAN.encode().hex().upper(), PIN_BLOCK[:8]):
        assert secret not in text
        assert secret not in document


def test_unmask_shows_everything() -> None:
    report = describe_message(ISO, ISO.encode(purchase(f35=TRACK2, f52=PIN_BLOCK)), unmask=True)
    rows = {row.key: row for row in report.rows}
    assert (rows["2"].value, rows["35"].value, rows["52"].value) == (PAN, TRACK2, PIN_BLOCK)
    assert not any(row.masked for row in report.rows)
    assert PAN.encode().hex().upper() in "\n".join(render_text(report))


@given(pan=st.text("0123456789", min_size=12, max_size=19))
@settings(max_examples=200, deadline=None)
def test_no_pan_leaks_through_value_or_wire(pan: str) -> None:
    message = purchase(f2=pan)
    # a "PAN" that is another field's own value (12 digits equal to the amount, say) shows there by right
    assume(not any(pan in str(value) for key, value in message.fields.items() if key != 2))
    report = describe_message(ISO, ISO.encode(message))
    shown = "\n".join(render_text(report)) + json.dumps(report_to_json(report))
    assert pan not in shown
    assert pan.encode().hex().upper() not in shown
    row = next(row for row in report.rows if row.key == "2")
    assert row.value == pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    assert wire_text(row) == f"{len(pan):02d}".encode().hex().upper() + f" [{len(pan)} bytes masked]"


# --------------------------------------------------------------------------------------------
# Partial decodes


def test_truncated_message_shows_fields_before_the_failure() -> None:
    raw = ISO.encode(purchase())
    cut = raw[: 4 + 8 + 2 + 16 + 3]  # MTI, bitmap, field 2 complete, 3 of field 3's 6 digits
    report = describe_message(ISO, cut)
    assert [row.key for row in report.rows] == ["t", "p", "2"]
    assert report.failure is not None
    assert report.failure.element == "3"
    assert report.failure.offset == 30
    line = report.failure.line()
    assert line.startswith("error: ") and line.endswith(" at field 3, byte offset 30")
    assert "expecting 6" in line


def test_failure_in_the_mti_names_it() -> None:
    report = describe_message(ISO, b"02")
    assert report.rows == () and report.mti is None
    assert report.failure is not None and report.failure.line().endswith(" at MTI, byte offset 0")
    assert render_text(report) == []


def test_content_fault_keeps_rows_before_the_bad_field() -> None:
    raw = ISO.encode(purchase()).replace(b"000000001234", b"00000000X234")
    report = describe_message(ISO, raw)
    assert report.failure is not None and report.failure.element == "4"
    assert [row.key for row in report.rows] == ["t", "p", "2", "3"]


def test_failure_without_offset_omits_it() -> None:
    assert DecodeFailure("bad", "129", -1).line() == "error: bad at field 129"
    assert DecodeFailure("bad", "p", 4).line() == "error: bad at primary bitmap, byte offset 4"


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_a_report_never_an_exception(raw: bytes) -> None:
    for codec in (ISO, Codec(load_dialect("cup-pos"))):
        report = describe_message(codec, raw)
        render_text(report)
        json.dumps(report_to_json(report))
        covered = 0
        for row in report.rows:  # rows are contiguous from the first byte, whatever happened
            assert row.offset == covered
            covered += len(row.prefix) + len(row.data)
        assert covered <= len(raw)
        if report.failure is None:
            assert covered == len(raw) and report.mti is not None


# --------------------------------------------------------------------------------------------
# Composite fields


def test_field_90_is_split_into_original_data_elements() -> None:
    original = "0200" + "000001" + "0101120000" + "00000012345" + "00000000000"
    report = describe_message(ISO, ISO.encode(Message("0400", {11: "000002", 90: original})))
    parts = dict(next(row for row in report.rows if row.key == "90").parts)
    assert parts["original MTI"] == "0200 (financial request)"
    assert parts["original STAN"] == "000001"
    assert parts["original transmission time"] == "0101120000"
    assert parts["original acquirer id"] == "'00000012345'"
    assert report.mti_meaning == "reversal request"


def test_response_and_network_codes_are_named() -> None:
    report = describe_message(ISO, ISO.encode(Message("0810", {39: "A0", 70: "301"})))
    parts = {row.key: dict(row.parts) for row in report.rows}
    assert parts["39"] == {"meaning": "MAC check failed, sign on again"}
    assert parts["70"] == {"meaning": "echo test"}


def test_cup_header_and_field_60_parts(cup_codec: Codec) -> None:
    message = Message("0800", {11: "000001", 41: "TERM0001", 60: "00000001003"}, header="603103000000")
    report = describe_message(cup_codec, cup_codec.encode(message))
    rows = {row.key: dict(row.parts) for row in report.rows}
    assert rows["h"]["processing requirement"] == "3 (sign on again)"
    assert rows["h"]["application type"] == "60"
    assert rows["60"] == {
        "60.1 transaction type": "00 (network management)",
        "60.2 batch number": "000001",
        "60.3 network management code": "003 (sign-on, double-length keys)",
    }
    text = "\n".join(render_text(report))
    assert "    60.2 batch number: 000001" in text


def test_undividable_composite_gets_a_note_not_an_error(cup_codec: Codec) -> None:
    message = Message("0200", {60: "220000019"}, header="603100000000")
    report = describe_message(cup_codec, cup_codec.encode(message))
    assert report.failure is None
    parts = dict(next(row for row in report.rows if row.key == "60").parts)
    assert "must be 3 digits" in parts["cannot split"]


def test_shipped_cup_dialect_decodes_a_sign_on() -> None:
    codec = Codec(load_dialect("cup-pos"))
    message = Message("0800", {11: "000001", 41: "TERM0001", 42: "123456789012345", 60: "00000001003"},
                      header="603100000000")
    report = describe_message(codec, codec.encode(message), tpdu=bytes.fromhex("6000010000"))
    assert report.failure is None
    assert [row.key for row in report.rows] == ["h", "t", "p", "11", "41", "42", "60"]
    assert render_text(report)[0] == "TPDU  6000010000 (id 60, destination 0001, source 0000)"
    assert report_to_json(report)["tpdu"] == {"hex": "6000010000", "id": 0x60, "destination": 1, "source": 0}
    f60 = dict(next(row for row in report.rows if row.key == "60").parts)
    assert f60["60.3 network management code"] == "003 (sign-on, double-length keys)"


# --------------------------------------------------------------------------------------------
# Rendering


def test_table_columns_line_up() -> None:
    report = describe_message(ISO, ISO.encode(purchase(f39="51")))
    lines = render_text(report)
    assert lines[0] == "MTI   0200  financial request"
    header = lines[1]
    assert header.split() == ["field", "name", "wire", "(hex)", "value"]
    value_column = header.index("value")
    table = [line for line in lines[2:] if not line.startswith(" ")]
    assert len(table) == len(report.rows)
    for line, row in zip(table, report.rows, strict=True):
        assert line[value_column:] == row.value
    assert "          meaning: insufficient funds" in lines


def test_long_wire_bytes_are_cut_but_json_keeps_them() -> None:
    long_text = "X" * 100
    report = describe_message(ISO, ISO.encode(Message("0200", {48: long_text})))
    row = next(row for row in report.rows if row.key == "48")
    assert wire_text(row) == "313030 " + "58" * 16 + "... (100 bytes)"
    element = next(e for e in report_to_json(report)["elements"] if e["element"] == "48")
    assert element["data"] == "58" * 100 and element["length_prefix"] == "313030"


def test_control_characters_never_reach_the_terminal() -> None:
    assert printable("ok\x1b[31m\x00\n") == "ok\\x1b[31m\\x00\\x0a"
    assert printable("银联") == "银联"
    report = describe_message(ISO, ISO.encode(Message("0200", {43: "shop\x1b[2J" + " " * 32})))
    assert "\x1b" not in "\n".join(render_text(report))


def test_json_report_shape() -> None:
    document = report_to_json(describe_message(ISO, ISO.encode(purchase())[:-2]))
    assert document["mti"] == "0200"
    assert document["error"] == {"reason": document["error"]["reason"], "element": "49", "offset": 62}
    pan = next(e for e in document["elements"] if e["element"] == "2")
    assert pan == {"element": "2", "name": "Primary Account Number (PAN)", "offset": 12,
                   "length_prefix": "3136", "data": None, "size": 16, "value": "476173******0010",
                   "masked": True, "parts": {}}


# --------------------------------------------------------------------------------------------
# Input


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0200", b"\x02\x00"),
        ("02 00\n", b"\x02\x00"),
        ("02:00:ab:CD", b"\x02\x00\xab\xcd"),
        ("  0 2\r\n\t0 0 ", b"\x02\x00"),
        ("", b""),
    ],
)
def test_parse_hex_accepts_separators(text: str, expected: bytes) -> None:
    assert parse_hex(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("020", "odd number of hex digits (3)"),
        ("02G0", "'G' at hex digit 3"),
        ("0x0200", "'x' at hex digit 2"),
    ],
)
def test_parse_hex_names_the_problem(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_hex(text)


def test_stdin_is_hex_when_it_reads_as_hex_and_raw_otherwise() -> None:
    assert stdin_bytes(b"02 00\n") == b"\x02\x00"
    binary = ISO.encode(purchase())
    assert stdin_bytes(binary) == binary  # the bitmap is not text
    assert stdin_bytes(b"0200\n", raw=True) == b"0200\n"
    assert stdin_bytes(b"TERM") == b"TERM"


def test_length_header_hint() -> None:
    raw = ISO.encode(purchase())
    assert length_header_hint(Framing().encode(raw)) is not None
    assert "ascii4" in (length_header_hint(Framing(length_header="ascii4").encode(raw)) or "")
    assert length_header_hint(raw) is None
