"""Issue 12 item 9: a card number typed into a free-text field never reaches the journal or the admin API.

The sensitive fields (2, 35...) were always masked; a PAN in field 48 (or 62, 63...) was written as
sent. Now every run of 13-19 digits that passes the Luhn check is masked wherever it is, in the
decoded fields and in the raw hex, for every dialect; other digit runs (amounts, field 90) stay.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from switch.admin import create_admin_app
from switch.codec import Codec, Message, load_dialect
from switch.journal import Journal, luhn_valid, mask_text, pan_runs
from tests.adversarial.test_admin_inputs import make_runtime

PAN = "4761739001010010"  # Luhn-valid test PAN
NOT_LUHN = "4761739001010011"
TYPED = "5555555555554444"  # another Luhn-valid card, typed into a text field (not field 2's, found by search)
# (dialect, free-text field, its text): CUP's 48 is BCD digits, so a PAN there is digits alone
CASES = [("iso87-binary", 48, f"NOTE CARD {TYPED} CALLED"), ("iso87-ascii", 48, f"NOTE CARD {TYPED} CALLED"),
         ("iso87-bcd", 48, f"NOTE CARD {TYPED} CALLED"), ("cup-pos", 63, f"OP {TYPED}"), ("cup-pos", 48, TYPED)]


CUP_HEADER = "603100000000"  # as in tests/test_journal.py


def request_with(text: str, field: int = 48, header: str = "") -> Message:
    return Message("0200", {2: PAN, 3: "000000", 4: "000000001000", 11: "000001", 41: "TERM0001",
                            field: text}, header)


def wire_forms(text: str) -> list[str]:
    """How ``text`` can appear in raw hex: ASCII, EBCDIC or plain digits (BCD)."""
    return [text.encode("ascii").hex().upper(), text.encode("cp500").hex().upper(), text]


def test_luhn_and_runs() -> None:
    assert luhn_valid(PAN) and not luhn_valid(NOT_LUHN)
    assert pan_runs(f"card {PAN} ok") == [PAN]
    assert pan_runs(f"x{PAN}0") == []  # 17 digits, not Luhn: another number
    assert pan_runs(NOT_LUHN) == []
    assert mask_text(f"pan={PAN};") == "pan=476173******0010;"


@pytest.mark.parametrize(("dialect_name", "field", "text"), CASES)
async def test_a_pan_in_a_free_text_field_is_masked_in_entries_raw_hex_and_the_file(
        dialect_name: str, field: int, text: str, tmp_path: Path) -> None:
    codec = Codec(load_dialect(dialect_name))
    raw = codec.encode(request_with(text, field, CUP_HEADER if codec.dialect.header_length else ""))
    path = tmp_path / "journal.jsonl"
    journal = Journal(codec, path=path)
    journal.record_in(connection=1, peer="127.0.0.1:5000", raw=raw, message=codec.decode(raw))
    journal.close()
    entry = journal.query(limit=1)[0].as_dict()
    line = path.read_text(encoding="utf-8")
    for shown in (json.dumps(entry), line):
        for card in (PAN, TYPED):
            assert card not in shown
            for form in wire_forms(card):
                assert form not in shown
    assert entry["fields"][str(field)] == mask_text(text)
    assert "555555******4444" in entry["fields"][str(field)]


def test_other_digit_runs_stay_readable() -> None:
    codec = Codec(load_dialect("iso87-ascii"))
    original = "0200" + "000001" + "1122103000" + "00000012345" + "00000000000"  # field 90: 42 digits
    message = Message("0400", {2: PAN, 3: "000000", 4: "000000001000", 11: "000002", 41: "TERM0001",
                               48: f"REF {NOT_LUHN}", 90: original})
    raw = codec.encode(message)
    journal = Journal(codec)
    journal.record_in(connection=1, peer="p", raw=raw, message=codec.decode(raw))
    entry = journal.query(limit=1)[0].as_dict()
    assert entry["fields"]["48"] == f"REF {NOT_LUHN}"
    assert entry["fields"]["90"] == original
    assert entry["fields"]["4"] == "000000001000"


async def test_the_admin_journal_view_is_masked() -> None:
    runtime = make_runtime()
    codec = Codec(runtime.dialect) if runtime.dialect else None
    assert codec is not None
    raw = codec.encode(request_with(f"{PAN}"))
    runtime.journal.record_in(connection=1, peer="p", raw=raw, message=codec.decode(raw))
    reply = Message("0210", {3: "000000", 11: "000001", 39: "00", 41: "TERM0001", 48: f"echo {PAN}"})
    runtime.journal.record_out(connection=1, peer="p", raw=codec.encode(reply), message=reply, request_seq=1)
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        text = (await http.get("/api/v1/journal")).text
    assert PAN not in text
    assert PAN.encode().hex().upper() not in text
    assert "476173******0010" in text
