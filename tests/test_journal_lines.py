"""The journal file's lines: by message shape or the general path, always exactly the bytes
``json.dumps`` writes (compact, ASCII), with no PAN; and the rule id beside each fault."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from switch.codec import Codec, Message
from switch.journal import format_entry_line
from tests.test_journal import (
    BINARY,
    CODECS,
    DIALECTS,
    PAN,
    PANS,
    PROPERTY_SETTINGS,
    journal_for,
    lines_of,
    purchase,
    response,
)
from tests.test_journal_reading import entry_dict, write_lines


def compact_json(document: dict[str, Any]) -> bytes:
    """The reference line: what ``json.dumps`` writes, compact and ASCII."""
    return (json.dumps(document, separators=(",", ":")) + "\n").encode()


def written_and_expected(codec: Codec, exchanges: list[tuple[Message, Message | None]], *, faults: tuple[str, ...],
                         rules: tuple[str, ...], note: str, peer: str) -> tuple[list[bytes], list[bytes], int]:
    """Record each (request, reply or None: dropped) as the server does, write the file (the requests
    claimed once, so an unsent one also gets its update line) and return (lines written, the
    reference lines from the entries, how many lines took the general path after the first line of
    their shape, which always does: a shape's line function is compiled when it is met again)."""
    import tempfile

    import switch.journal.lines as lines_module

    general = 0
    original = lines_module.general_line

    def counted(*args: Any, **kwargs: Any) -> str:
        nonlocal general
        general += 1
        return original(*args, **kwargs)

    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
        patch.setattr(lines_module, "general_line", counted)
        path = Path(directory) / "journal.jsonl"
        journal = journal_for(codec, path=path)
        expected: list[bytes] = []
        for request, reply in exchanges:
            seq = journal.record_in(connection=2, peer=peer, raw=codec.encode(request), message=request,
                                    faults=faults, rules=rules, note=note)
            if reply is None:
                journal._write_pending_now()  # written while the outcome is unknown
                journal.record_unsent(seq, ("drop_response",), "dropped", ("lose",))
                (entry,) = journal.query(limit=1)
                expected.append(compact_json({**entry.as_dict(), "faults": list(faults), "rules": list(rules),
                                              "note": note, "matched": None}))
                expected.append(compact_json({**entry.as_dict(), "update": "unsent"}))
                continue
            journal.record_out(connection=2, peer=peer, raw=codec.encode(reply), message=reply, request_seq=seq,
                               faults=faults, rules=rules, note=note)
            expected += [compact_json(entry.as_dict()) for entry in journal.query(limit=2)]
        shapes = {(bool(record.header), tuple(record.fields)) for record in journal._ring if record.fields is not None}
        journal.close()
        return path.read_bytes().splitlines(keepends=True), expected, general - len(shapes)


@pytest.mark.parametrize("name", DIALECTS)
def test_lines_by_shape_are_the_bytes_json_dumps_writes(name: str) -> None:
    codec = CODECS[name]
    exchanges: list[tuple[Message, Message | None]] = []
    for stan in range(1, 6):
        request = purchase(codec, stan=f"{stan:06d}")
        exchanges.append((request, response(request, "00" if stan % 2 else "51")))
    exchanges.append((purchase(codec, stan="000099"), None))
    written, expected, general = written_and_expected(codec, exchanges, faults=("delay_response",),
                                                      rules=("slow",), note="late", peer="127.0.0.1:40000")
    assert written == expected
    assert general == 0  # plain frames never need the general path: the shaped one was what was checked


@PROPERTY_SETTINGS
@given(name=st.sampled_from(DIALECTS), pan=PANS, terminal=st.text(min_size=1, max_size=8),
       merchant=st.text(max_size=15), peer=st.text(max_size=20), note=st.text(max_size=10),
       faults=st.lists(st.text(max_size=12), max_size=2), dropped=st.booleans())
def test_every_line_is_the_bytes_json_dumps_writes_whatever_the_values(
        name: str, pan: str, terminal: str, merchant: str, peer: str, note: str, faults: list[str],
        dropped: bool) -> None:
    """Odd values (quotes, controls, non-ASCII, typed-in card numbers) go the general path; either
    way the line is exactly the reference, and no PAN is in it."""
    codec = CODECS[name]
    request = purchase(codec, pan, terminal=terminal.ljust(8)[:8])
    if 42 in request.fields:
        request = Message(request.mti, {**request.fields, 42: merchant.ljust(15)[:15]}, request.header)
    try:
        codec.encode(request)
    except Exception:  # a value this dialect cannot carry: nothing to journal
        assume(False)
    reply = None if dropped else response(request)
    rules = tuple(f"r{index}" for index in range(len(faults)))
    written, expected, _ = written_and_expected(codec, [(request, reply)], faults=tuple(faults), rules=rules,
                                                note=note, peer=peer)
    assert written == expected
    for line in written:
        assert pan.encode() not in line


def test_rules_stay_beside_their_faults_and_old_lines_read_as_none(tmp_path: Path) -> None:
    journal = journal_for()
    request = purchase(BINARY)
    seq = journal.record_in(connection=1, peer="p", raw=BINARY.encode(request), message=request,
                            faults=("delay_request",), rules=("slow",))
    journal.record_unsent(seq, ("delay_request", "drop_response"), "dropped", ("other", "lose"))
    (entry,) = journal.query()
    assert entry.faults == ("delay_request", "drop_response") and entry.rules == ("slow", "lose")
    assert entry.as_dict()["rules"] == ["slow", "lose"]
    old = tmp_path / "old.jsonl"
    write_lines(old, [entry_dict(1, faults=["drop_response"])])
    (read,) = lines_of(old)
    assert read["rules"] == []
    assert "rules" not in format_entry_line(read)
    shown = format_entry_line({**read, "rules": ["lose"]})
    assert "faults: drop_response" in shown and "rules: lose" in shown


@pytest.mark.parametrize("name", DIALECTS)
def test_frames_without_sensitive_fields_are_the_bytes_json_dumps_writes(name: str) -> None:
    """The shaped path when there is nothing to mask (no PAN, track, PIN or ICC data): raw_hex is
    the whole frame, and the line is still exactly the reference."""
    codec = CODECS[name]
    exchanges: list[tuple[Message, Message | None]] = []
    for stan in range(1, 4):
        full = purchase(codec, stan=f"{stan:06d}")
        request = Message(full.mti, {number: value for number, value in full.fields.items()
                                     if number not in (2, 35, 45, 52, 55)}, full.header)
        exchanges.append((request, Message(request.response_mti, {11: request.fields[11], 39: "00"},
                                           request.header)))
    written, expected, general = written_and_expected(codec, exchanges, faults=(), rules=(), note="",
                                                      peer="127.0.0.1:40001")
    assert written == expected
    assert general == 0
    assert b"**" not in b"".join(written)


@pytest.mark.parametrize("only_pan", [True, False])
@pytest.mark.parametrize("repeats", [1, 2, 3])
def test_a_shaped_line_masks_every_occurrence_as_the_general_path_does(repeats: int, only_pan: bool) -> None:
    """The generated line function of a shape (compiled when the shape is met again) against the
    general path, record by record: the same line, a PAN found once or several times in the raw bytes
    masked wherever it is, and nothing of it left."""
    from switch.journal.lines import LineFormatter, general_line
    from switch.journal.masking import _Masker
    from switch.journal.records import DIRECTION_IN, _Record

    request = purchase(BINARY)
    if only_pan:  # one sensitive field (its own branch of the generated code) rather than five
        request = Message(request.mti, {number: value for number, value in request.fields.items()
                                        if number not in (35, 45, 52, 55)})
    raw = BINARY.encode(request) + PAN.encode() * (repeats - 1)  # the PAN echoed after the frame
    formatter = LineFormatter(_Masker(BINARY))
    masker = _Masker(BINARY)
    lines = []
    for seq in (1, 2, 3):
        record = _Record(seq, 1_700_000_000.25 + seq, 7, "127.0.0.1:4000", DIRECTION_IN, raw, request, None, None,
                         (), (), "", None)
        fields, raw_hex, error = record.format(masker)
        expected = general_line(record, fields, raw_hex, error, None, (), (), "", False)
        line = formatter.line(record, None, (), (), "", False)
        assert line == expected
        assert PAN not in line and PAN.encode().hex().upper() not in line
        lines.append(line)
    assert formatter._shapes[tuple(request.fields)] is not None  # the last ones took the shaped path
