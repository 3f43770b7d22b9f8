"""The message journal: masking (fields and raw hex, every dialect), the ring and its queries,
matched/unmatched requests, and the rotated JSON-lines file written by a Trio task (reading it back
and the ``iso-switch journal`` command: test_journal_reading.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from switch.codec import Codec, Dialect, Message, MessageDecodeError, load_dialect
from switch.codec.composite import mask_field, mask_pan
from switch.journal import (
    SENSITIVE_FIELDS,
    Journal,
    JournalEntry,
    format_entry_line,
    read_journal_file,
)

DIALECTS = ("iso87-binary", "iso87-ascii", "iso87-bcd", "cup-pos")
CODECS = {name: Codec(load_dialect(name)) for name in DIALECTS}
BINARY = CODECS["iso87-binary"]
PAN = "4761739001010119"
PIN = "0123456789ABCDEF"
ICC = "9F2608C2F1A2B3C4D5E6F79F2701809F100706010A03A0B000"
CUP_HEADER = "603100000000"
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Visa / Mastercard-like PANs. The other fields of ``purchase`` hold no 4 or 5 where a digit run could
# start, so a PAN found in the output can only have come from a PAN field.
PANS = st.tuples(st.sampled_from("45"), st.text("0123456789", min_size=12, max_size=18)).map("".join)


def track2(dialect: Dialect, pan: str) -> str:
    separator = "D" if dialect.fields[35].wire_numeric else "="
    return f"{pan}{separator}25122011143804489"


def purchase(codec: Codec, pan: str = PAN, *, stan: str = "000001", terminal: str = "TERM0001",
             icc: str = ICC) -> Message:
    """A 0200 carrying every kind of sensitive data the dialect defines, other fields free of digits
    that could be mistaken for the PAN."""
    dialect = codec.dialect
    fields = {2: pan, 3: "000000", 4: "000000001230", 11: stan, 35: track2(dialect, pan), 41: terminal,
              42: "MERCHANT", 45: f"B{pan}^DOE/JOHN^2512101", 52: PIN, 55: icc}
    fields = {number: value for number, value in fields.items() if number in dialect.fields}
    if 42 in fields:
        fields[42] = fields[42].ljust(dialect.fields[42].max)
    return Message("0200", fields, CUP_HEADER if dialect.header_length else "")


def response(request: Message, code: str = "00") -> Message:
    fields = {number: value for number, value in request.fields.items() if number in (2, 3, 4, 11, 41)}
    fields[39] = code
    return Message(request.response_mti, fields, request.header)


def sensitive_spans(codec: Codec, raw: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the sensitive fields' data, from the codec's own wire breakdown."""
    _, wire = codec.decode_detailed(raw)
    spans, offset = [], 0
    for key, (prefix, data) in wire.items():
        start = offset + len(prefix)
        offset = start + len(data)
        if key.isdigit() and int(key) in SENSITIVE_FIELDS:
            spans.append((start, offset))
    return spans


def masked_bytes(raw_hex: str) -> set[int]:
    return {index // 2 for index in range(0, len(raw_hex), 2) if raw_hex[index:index + 2] == "**"}


def assert_no_pan(entry: JournalEntry, pan: str) -> None:
    text = json.dumps(entry.as_dict())
    assert pan not in text  # as text, and as BCD digits in raw_hex
    assert pan.encode().hex().upper() not in entry.raw_hex  # as ASCII bytes in raw_hex


def journal_for(codec: Codec = BINARY, **options: Any) -> Journal:
    return Journal(codec, **options)


# --------------------------------------------------------------------------------------------
# Masking


def test_sensitive_fields_are_exactly_the_ones_mask_field_hides() -> None:
    sample = "4761739001010119"
    hidden = {number for number in range(1, 129) if mask_field(number, sample) != sample}
    assert hidden == set(SENSITIVE_FIELDS)


@pytest.mark.parametrize("name", DIALECTS)
def test_decoded_frame_masks_fields_and_exactly_their_wire_bytes(name: str) -> None:
    codec = CODECS[name]
    request = purchase(codec)
    raw = codec.encode(request)
    journal = journal_for(codec)
    seq = journal.record_in(connection=1, peer="127.0.0.1:4000", raw=raw, message=codec.decode(raw))
    (entry,) = journal.query()
    assert entry.seq == seq
    assert entry.fields["2"] == "476173******0119"
    assert entry.fields["35"].startswith("476173******0119")
    assert set(entry.fields["35"][17:]) == {"*"}
    assert entry.fields["52"] == "****"
    assert entry.fields["55"] == "****"
    assert entry.fields["4"] == "000000001230"
    assert entry.fields["41"] == "TERM0001"
    if codec.dialect.header_length:
        assert entry.fields["h"] == CUP_HEADER
    expected = set()
    for start, end in sensitive_spans(codec, raw):
        expected.update(range(start, end))
    assert masked_bytes(entry.raw_hex) == expected  # nothing else hidden
    for index in set(range(len(raw))) - expected:
        assert entry.raw_hex[2 * index:2 * index + 2] == f"{raw[index]:02X}"
    assert_no_pan(entry, PAN)


@pytest.mark.parametrize("name", DIALECTS)
@PROPERTY_SETTINGS
@given(pan=PANS, icc=st.binary(min_size=1, max_size=40),
       data=st.data())
def test_pan_never_appears_decoded_or_truncated(name: str, pan: str, icc: bytes, data: st.DataObject) -> None:
    codec = CODECS[name]
    request = purchase(codec, pan, icc=icc.hex().upper())
    raw = codec.encode(request)
    spans = sensitive_spans(codec, raw)
    journal = journal_for(codec)
    request_seq = journal.record_in(connection=1, peer="p", raw=raw, message=codec.decode(raw))
    reply = response(request)
    journal.record_out(connection=1, peer="p", raw=codec.encode(reply), message=reply, request_seq=request_seq)
    cut = data.draw(st.integers(1, len(raw) - 1), label="cut")
    try:
        codec.decode(raw[:cut])
    except MessageDecodeError as exc:
        journal.record_in(connection=1, peer="p", raw=raw[:cut], message=None, error=exc)
    else:  # pragma: no cover - a strict prefix of a message cannot be the whole message
        raise AssertionError("truncated frame decoded")
    full, answer, truncated = journal.query()
    for entry in (full, answer, truncated):
        assert_no_pan(entry, pan)
    assert full.fields["2"] == mask_pan(pan)
    for entry, length in ((full, len(raw)), (truncated, cut)):
        hidden = masked_bytes(entry.raw_hex)
        for start, end in spans:
            assert set(range(start, min(end, length))) <= hidden
    assert truncated.error is not None
    assert truncated.mti in (None, "0200")  # None when the cut falls before the MTI's end


@pytest.mark.parametrize(("sender", "receiver"),
                         [(a, b) for a in DIALECTS for b in DIALECTS if a != b])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pan=PANS)
def test_pan_never_appears_in_a_frame_of_another_dialect(sender: str, receiver: str, pan: str) -> None:
    raw = CODECS[sender].encode(purchase(CODECS[sender], pan))
    codec = CODECS[receiver]
    try:
        codec.decode(raw)
    except MessageDecodeError as exc:
        error: MessageDecodeError = exc
    else:  # pragma: no cover - the dialects differ in the MTI, bitmap or header encoding
        assume(False)
    journal = journal_for(codec)
    journal.record_in(connection=2, peer="p", raw=raw, message=None, error=error)
    (entry,) = journal.query()
    assert entry.error is not None
    assert_no_pan(entry, pan)


def test_undecodable_frame_keeps_what_was_read_and_hides_the_unread_pan() -> None:
    raw = BINARY.encode(purchase(BINARY))
    cut = sensitive_spans(BINARY, raw)[0][0] + 5  # five digits into the PAN
    journal = journal_for()
    journal.record_in(connection=1, peer="p", raw=raw[:cut], message=None)  # no error given: found out
    (entry,) = journal.query()
    assert entry.mti == "0200"
    assert entry.fields == {}  # the PAN was the first field and it was cut
    assert entry.error is not None and "field 2" in entry.error
    assert entry.raw_hex.startswith(raw[:4].hex().upper())  # the MTI stays readable
    assert masked_bytes(entry.raw_hex) >= set(range(12, cut))  # length prefix on: the PAN's rest


@pytest.mark.parametrize("name", DIALECTS)
def test_cut_pin_block_is_hidden_though_it_holds_no_digit_run(name: str) -> None:
    codec = CODECS[name]
    pin = "ABCDEF0A1B2C3D4E"
    message = Message("0800", {41: "TERM0001", 52: pin}, CUP_HEADER if codec.dialect.header_length else "")
    raw = codec.encode(message)
    ((start, end),) = sensitive_spans(codec, raw)
    cut = end - 2
    journal = journal_for(codec)
    journal.record_in(connection=1, peer="p", raw=raw[:cut], message=None)
    (entry,) = journal.query()
    assert entry.fields["41"] == "TERM0001"
    assert masked_bytes(entry.raw_hex) >= set(range(start, cut))  # no digits to spot: the bitmap told
    mti_end = len(message.header) // 2 + (4 if name in ("iso87-binary", "iso87-ascii") else 2)
    assert entry.raw_hex.startswith(raw[:mti_end].hex().upper())


def test_garbage_without_a_bitmap_is_shown_but_digit_runs_are_hidden() -> None:
    garbage = b"\x01\x02hello" + b"4761739001010119" + b"\xff"  # "llo4..." is no hex bitmap
    journal = journal_for(CODECS["iso87-ascii"])
    journal.record_out(connection=1, peer="p", raw=garbage, message=None, request_seq=None,
                       faults=("send_garbage",))
    (entry,) = journal.query()
    assert entry.mti is None and entry.error is not None
    assert entry.raw_hex.startswith(garbage[:7].hex().upper())
    assert entry.raw_hex.endswith("FF")
    assert masked_bytes(entry.raw_hex) == set(range(7, 7 + 16))


def test_search_falls_back_to_exact_positions_when_wire_bytes_differ_from_the_value() -> None:
    codec = CODECS["iso87-ascii"]  # binary fields travel as hex text; a peer may send lower case
    raw = codec.encode(purchase(codec)).replace(PIN.encode(), PIN.lower().encode())
    message = codec.decode(raw)
    assert message.fields[52] == PIN  # the codec upper-cases: the value no longer matches the wire
    journal = journal_for(codec)
    journal.record_in(connection=1, peer="p", raw=raw, message=message)
    (entry,) = journal.query()
    expected = set()
    for start, end in sensitive_spans(codec, raw):
        expected.update(range(start, end))
    assert masked_bytes(entry.raw_hex) == expected
    assert PIN.lower().encode().hex().upper() not in entry.raw_hex


@pytest.mark.parametrize("name", DIALECTS)
def test_a_short_pan_sends_every_field_to_the_exact_path_still_masked(name: str) -> None:
    codec = CODECS[name]
    message = purchase(codec, "123")  # too short to search for; track, PIN and ICC come after it
    raw = codec.encode(message)
    journal = journal_for(codec)
    journal.record_in(connection=1, peer="p", raw=raw, message=codec.decode(raw))
    (entry,) = journal.query()
    assert entry.fields["2"] == "**3"
    assert entry.fields["52"] == entry.fields["55"] == "****"
    assert entry.fields["35"] == mask_field(35, message.fields[35])
    expected = set()
    for start, end in sensitive_spans(codec, raw):
        expected.update(range(start, end))
    assert masked_bytes(entry.raw_hex) == expected


def test_short_sensitive_value_is_located_exactly_not_searched() -> None:
    raw = BINARY.encode(purchase(BINARY, icc="9F"))  # one byte: would match a bitmap or length byte
    journal = journal_for()
    journal.record_in(connection=1, peer="p", raw=raw, message=BINARY.decode(raw))
    (entry,) = journal.query()
    expected = set()
    for start, end in sensitive_spans(BINARY, raw):
        expected.update(range(start, end))
    assert masked_bytes(entry.raw_hex) == expected


# --------------------------------------------------------------------------------------------
# Ring and queries


class Clock:
    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def record_exchange(journal: Journal, codec: Codec, *, stan: str, terminal: str = "TERM0001",
                    code: str = "00", connection: int = 1, faults: tuple[str, ...] = ()) -> tuple[int, int]:
    request = purchase(codec, stan=stan, terminal=terminal)
    raw = codec.encode(request)
    seq = journal.record_in(connection=connection, peer="p", raw=raw, message=request)
    reply = response(request, code)
    out = journal.record_out(connection=connection, peer="p", raw=codec.encode(reply), message=reply,
                             request_seq=seq, faults=faults)
    return seq, out


def test_ring_keeps_the_newest_entries_only() -> None:
    journal = journal_for(ring_size=5)
    for number in range(1, 7):
        record_exchange(journal, BINARY, stan=f"{number:06d}")
    assert len(journal) == 5
    assert [entry.seq for entry in journal.query(limit=100)] == [8, 9, 10, 11, 12]
    # Requests that left the ring can still be answered or dropped without harm.
    journal.record_out(connection=1, peer="p", raw=b"", message=None, request_seq=1)
    journal.record_unsent(1, ("drop_response",), "dropped (fault)")
    assert [entry.seq for entry in journal.query(limit=3)] == [11, 12, 13]


def test_query_filters_and_order() -> None:
    clock = Clock()
    journal = journal_for(clock=clock)
    record_exchange(journal, BINARY, stan="000001", terminal="TERM0001")
    clock.now += 10
    record_exchange(journal, BINARY, stan="000002", terminal="TERM0002", code="05", faults=("delay_response",))
    clock.now += 10
    record_exchange(journal, BINARY, stan="000003", terminal="TERM0001")

    assert [e.seq for e in journal.query()] == [1, 2, 3, 4, 5, 6]  # newest last
    assert [e.seq for e in journal.query(limit=2)] == [5, 6]
    assert journal.query(limit=0) == []
    assert [e.seq for e in journal.query(terminal="TERM0001")] == [1, 2, 5, 6]
    assert [e.seq for e in journal.query(terminal="TERM0002  ")] == [3, 4]  # field 41 padding ignored
    assert [e.seq for e in journal.query(mti="0210")] == [2, 4, 6]
    assert [e.seq for e in journal.query(stan="2")] == [3, 4]  # leading zeros optional
    assert [e.seq for e in journal.query(stan="000003", mti="0200")] == [5]
    assert [e.seq for e in journal.query(faults_only=True)] == [4]
    start = 1_700_000_000.0
    assert [e.seq for e in journal.query(since=start + 10)] == [3, 4, 5, 6]
    assert [e.seq for e in journal.query(until=start + 10)] == [1, 2]
    assert [e.seq for e in journal.query(since=start + 5, until=start + 15)] == [3, 4]
    entry = journal.query(faults_only=True)[0]
    assert entry.response_code == "05" and entry.faults == ("delay_response",) and entry.direction == "out"
    assert entry.request_seq == 3 and entry.matched is None
    with pytest.raises(ValueError, match="limit"):
        journal.query(limit=-1)


def test_matched_unmatched_and_unsent() -> None:
    journal = journal_for()
    request = purchase(BINARY)
    raw = BINARY.encode(request)
    first = journal.record_in(connection=1, peer="p", raw=raw, message=request)
    second = journal.record_in(connection=1, peer="p", raw=raw, message=request, faults=("delay_request",))
    assert [e.seq for e in journal.query(unmatched=True)] == [first, second]
    before = journal.query()[0]
    assert before.matched is False

    reply = response(request)
    journal.record_out(connection=1, peer="p", raw=BINARY.encode(reply), message=reply, request_seq=first)
    assert journal.query()[0].matched is True  # the cached entry was refreshed
    assert before.matched is False  # entries handed out are snapshots
    journal.record_unsent(second, ["drop_response"], "dropped (fault)")
    unmatched = journal.query(unmatched=True)
    assert [e.seq for e in unmatched] == [second]
    assert unmatched[0].faults == ("delay_request", "drop_response")
    assert unmatched[0].note == "dropped (fault)"
    assert unmatched[0].matched is False
    # A reply that answers no request is unmatched too.
    orphan = journal.record_out(connection=1, peer="p", raw=BINARY.encode(reply), message=reply, request_seq=None)
    assert [e.seq for e in journal.query(unmatched=True)] == [second, orphan]


def test_entry_as_dict_is_json_and_cached() -> None:
    journal = journal_for()
    record_exchange(journal, BINARY, stan="000007")
    entry = journal.query(limit=1)[0]
    document = entry.as_dict()
    assert document is entry.as_dict()
    assert json.loads(json.dumps(document)) == document
    assert document["direction"] == "out" and document["response_code"] == "00" and document["request_seq"] == 1
    assert journal.query(limit=1)[0] is entry  # unchanged records are not formatted again


def test_recording_copies_what_the_caller_may_reuse() -> None:
    journal = journal_for()
    request = purchase(BINARY)
    buffer = bytearray(BINARY.encode(request))
    journal.record_in(connection=1, peer="p", raw=buffer, message=request)
    request.fields[41] = "CHANGED!"
    buffer[:4] = b"9999"
    (entry,) = journal.query()
    assert entry.fields["41"] == "TERM0001" and entry.terminal == "TERM0001"
    assert entry.raw_hex.startswith(b"0200".hex().upper())


def test_constructor_refuses_nonsense() -> None:
    for options in ({"ring_size": 0}, {"max_bytes": 0}, {"backups": -1}, {"flush_interval": 0},
                    {"max_pending": 0}):
        with pytest.raises(ValueError):
            Journal(BINARY, **options)


# --------------------------------------------------------------------------------------------
# The file


def lines_of(path: Path) -> list[dict[str, Any]]:
    return list(read_journal_file(path))


async def test_cancelled_writer_flushes_everything(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "journal.jsonl"  # the directory is created
    journal = journal_for(path=path, flush_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for number in range(1, 501):
            record_exchange(journal, BINARY, stan=f"{number:06d}")
        nursery.cancel_scope.cancel()
    journal.close()
    entries = lines_of(path)
    assert [entry["seq"] for entry in entries] == list(range(1, 1001))
    assert all(PAN not in json.dumps(entry) for entry in entries)
    assert entries[0]["fields"]["2"] == "476173******0119"
    assert entries[0]["matched"] in (None, True)
    assert entries[1]["request_seq"] == 1


async def test_writer_writes_while_running(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = journal_for(path=path, flush_interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        record_exchange(journal, BINARY, stan="000001")
        with trio.fail_after(10):  # waits for the worker thread: bounded, not a timing assertion
            while len(path.read_bytes().splitlines()) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    journal.close()
    assert [entry["seq"] for entry in lines_of(path)] == [1, 2]


async def test_flush_and_unsent_update_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = journal_for(path=path)
    request = purchase(BINARY)
    seq = journal.record_in(connection=3, peer="p", raw=BINARY.encode(request), message=request)
    await journal.flush()
    (written,) = lines_of(path)
    assert written["matched"] is None and "update" not in written  # the outcome was not known yet
    journal.record_unsent(seq, ("drop_response",), "dropped (fault)")
    early = journal.record_in(connection=3, peer="p", raw=BINARY.encode(request), message=request)
    journal.record_unsent(early, ("drop_response",), "dropped (fault)")  # before it was written
    await journal.flush()
    journal.close()
    _, update, second = lines_of(path)
    assert update["seq"] == seq and update["update"] == "unsent" and update["matched"] is False
    assert update["faults"] == ["drop_response"] and update["note"] == "dropped (fault)"
    assert second["seq"] == early and second["matched"] is False and "update" not in second
    assert "response not sent" in format_entry_line(update)


@settings(max_examples=100, deadline=None)
@given(peer=st.text(), note=st.text(), faults=st.lists(st.text(), max_size=3), terminal=st.text(max_size=8),
       connection=st.integers(-(2**40), 2**40) | st.just("not-a-number"))
def test_file_lines_are_the_json_of_the_entry_whatever_the_strings(
        peer: str, note: str, faults: list[str], terminal: str, connection: Any) -> None:
    import tempfile

    request = Message("0800", {11: "000001", 41: "TERM0001", 70: "301"})
    raw = BINARY.encode(request)
    shown = Message("0800", {11: "000001", 41: terminal, 70: "301"})  # what a peer might put in field 41
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "journal.jsonl"
        journal = journal_for(path=path)
        seq = journal.record_in(connection=connection, peer=peer, raw=raw, message=shown, faults=faults,
                                note=note)
        journal.close()
        (line,) = lines_of(path)
    (entry,) = journal.query()
    expected = json.loads(json.dumps(entry.as_dict(), default=str))
    assert line == {**expected, "matched": None}  # a request's outcome is not known when it is written
    assert line["seq"] == seq and line["terminal"] == terminal and line["peer"] == peer


async def test_rotation_keeps_backups_and_order(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = journal_for(path=path, max_bytes=4000, backups=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for number in range(1, 41):
            record_exchange(journal, BINARY, stan=f"{number:06d}")
        nursery.cancel_scope.cancel()
    journal.close()
    files = [tmp_path / "journal.jsonl.2", tmp_path / "journal.jsonl.1", path]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    seqs = [entry["seq"] for file in files for entry in lines_of(file)]
    assert seqs == list(range(seqs[0], 81))  # contiguous, newest last, the oldest rotated away
    assert seqs[0] > 1
    assert all(file.stat().st_size <= 4000 for file in files)


async def test_rotation_without_backups_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = journal_for(path=path, max_bytes=1500, backups=0)
    for number in range(1, 11):
        record_exchange(journal, BINARY, stan=f"{number:06d}")
    await journal.flush()
    journal.close()
    assert [p.name for p in tmp_path.iterdir()] == ["journal.jsonl"]
    assert lines_of(path)[-1]["seq"] == 20
    assert path.stat().st_size <= 1500


async def test_existing_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    for _ in range(2):
        journal = journal_for(path=path)
        record_exchange(journal, BINARY, stan="000001")
        await journal.flush()
        journal.close()
    assert [entry["seq"] for entry in lines_of(path)] == [1, 2, 1, 2]


async def test_unwritable_file_is_reported_once_and_the_ring_keeps_working(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    journal = journal_for(path=blocker / "journal.jsonl")
    with caplog.at_level(logging.ERROR, logger="switch.journal"):
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)  # returns: nothing to write to
        record_exchange(journal, BINARY, stan="000001")
        await journal.flush()
        journal.close()
    assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1
    assert [entry.seq for entry in journal.query()] == [1, 2]


async def test_close_writes_entries_recorded_without_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = journal_for(path=path)
    record_exchange(journal, BINARY, stan="000001")
    journal.close()
    journal.close()  # idempotent
    record_exchange(journal, BINARY, stan="000002")  # ring only from now on
    assert [entry["seq"] for entry in lines_of(path)] == [1, 2]
    assert len(journal) == 4


async def test_memory_only_journal_run_returns_at_once() -> None:
    journal = journal_for()
    with trio.fail_after(1):
        await journal.run()
    record_exchange(journal, BINARY, stan="000001")
    await journal.flush()
    journal.close()
    assert len(journal.query()) == 2


async def test_writer_that_falls_behind_drops_the_oldest_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.jsonl"
    journal = journal_for(path=path, max_pending=3)
    for number in range(1, 4):
        record_exchange(journal, BINARY, stan=f"{number:06d}")
    with caplog.at_level(logging.WARNING, logger="switch.journal"):
        await journal.flush()
    journal.close()
    assert [entry["seq"] for entry in lines_of(path)] == [4, 5, 6]
    assert any("3 entries were not written" in r.getMessage() for r in caplog.records)
