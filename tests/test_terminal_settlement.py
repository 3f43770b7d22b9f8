"""The terminal policy's settlement against ``FakeHost`` (tests/policy_harness.py): totals from the
journal, upload on a mismatch, the host's totals, CUP's flag in field 48, repeats and declines."""

from __future__ import annotations

import pytest

from switch.codec.composite import CupField60, OriginalData, SettlementTotals
from switch.codec.message import Message
from terminal.policy import (
    OfflineSale,
    PreAuthorization,
    Refund,
    ReverseLast,
    Settle,
    SignOn,
)
from tests.policy_harness import EXPIRY, PAN, harnesses, purchase


@pytest.fixture
def harness(tmp_path):
    yield from harnesses(tmp_path)


# ---------------------------------------------------------------------------------------------
# Settlement


def test_settlement_totals_come_from_the_journal(harness):
    h = harness()
    h.run(purchase(1000))
    h.run(purchase(2000))
    h.run(ReverseLast())  # reversed: not counted
    h.run(Refund(300, PAN, EXPIRY))
    h.run(PreAuthorization(5000, PAN, EXPIRY))  # authorizations are never settled
    h.run(purchase(1113))  # declined
    h.run(OfflineSale(400, PAN, EXPIRY))
    outcome = h.run(Settle())
    assert outcome.kind == "approved" and outcome.batch == "000001" and outcome.meaning == "balanced"
    request = h.sent[-1].message
    assert (request.mti, request[3]) == ("0500", "920000")
    totals = SettlementTotals.from_iso_fields(request.fields)
    # ISO reading: gross in 74/76 and 86/88, the voided purchase also in the reversal columns 77/89
    assert totals == SettlementTotals(debit_count=3, debit_amount=3400, credit_count=1, credit_amount=300,
                                      debit_reversal_count=1, debit_reversal_amount=2000)
    assert (request[75], request[87]) == ("0" * 10, "0" * 16)
    assert request[97] == "D" + f"{1100:016d}"  # net = gross − reversals
    totals = totals.netted()
    assert h.store.batch == "000002"
    assert h.host.closed["000001"] == totals
    h.assert_consistent()


def test_settlement_mismatch_uploads_then_settles_after_upload_and_reports_unbalanced(harness):
    h = harness()
    h.run(purchase(1000))
    h.run(purchase(2000))
    entry = h.store.entries()[-1]
    h.store.update_entry(entry.id, now=h.now, amount=1999)  # the terminal's journal disagrees
    outcome = h.run(Settle())
    # never "balanced": unbalanced, uploaded, closed by the host, operator told what to do
    assert outcome.kind == "unbalanced" and outcome.response_code == "00"
    assert outcome.text.startswith("settlement unbalanced: uploaded, contact the acquirer")
    assert outcome.meaning != "balanced" and "closed batch 000001" in outcome.text
    # the fake host echoes the request's totals: an echo is not the host's own figures
    assert "the host gave no totals; the terminal's were debits 2 / 29.99, credits 0 / 0.00" in outcome.text
    assert h.sent_mtis()[-4:] == ["0500", "0320", "0320", "0500"]
    first, record1, record2, second = (s.message for s in h.sent[-4:])
    assert (first[3], second[3]) == ("920000", "960000")
    assert OriginalData.parse(record1[90]).stan == h.store.entries()[0].stan
    assert record2[4] == "000000001999" and record1[37] == h.store.entries()[0].rrn
    assert 70 not in record1 and 70 not in record2  # no ISO end-of-upload 0320 any more
    assert second[11] != first[11]  # a new settlement, not a repeat
    assert "upload-started" in h.note_kinds()
    assert h.store.batch == "000002"  # closed because the host closed it


def test_settlement_reports_the_differences_when_the_host_gives_its_totals(harness):
    h = harness()
    h.run(purchase(1000))
    h.store.update_entry(h.store.entries()[-1].id, now=h.now, amount=1250)
    original = h.host.handle

    def with_totals(request: Message) -> Message | None:
        answer = original(request)
        if answer is not None and request.mti == "0500" and answer.get(39) == "95":
            return answer.copy(**{f"f{n}": v for n, v in SettlementTotals(1, 1000, 0, 0).to_iso_fields().items()})
        return answer

    h.host.handle = with_totals  # type: ignore[method-assign]
    outcome = h.run(Settle())
    assert outcome.kind == "unbalanced"
    assert "terminal − host: debits +0 / +2.50" in outcome.text


def test_settlement_after_upload_declined_keeps_the_batch_open(harness):
    h = harness()
    h.run(purchase(1000))
    h.store.update_entry(h.store.entries()[-1].id, now=h.now, amount=999)
    original = h.host.handle
    h.host.handle = lambda r: (h.host.reply(r, "12") if r.mti == "0500" and r[3] == "960000"  # type: ignore
                               else original(r))
    outcome = h.run(Settle())
    assert (outcome.kind, outcome.response_code) == ("declined", "12")
    assert "batch 000001 stays open" in outcome.text
    assert h.store.batch == "000001" and h.store.pending_settlement is None


def test_cup_settlement_reads_the_flag_in_field_48(harness):
    h = harness("cup")
    h.run(purchase(1000))
    entry = h.store.entries()[-1]
    h.store.update_entry(entry.id, now=h.now, amount=999)
    outcome = h.run(Settle())
    assert outcome.kind == "unbalanced" and "contact the acquirer" in outcome.text
    settle, record, end = (s.message for s in h.sent[-3:])
    assert SettlementTotals.from_cup48(settle[48]) == (SettlementTotals(1, 999, 0, 0), "0")
    assert CupField60.parse(settle[60]) == CupField60("00", "000001", "201")
    assert CupField60.parse(record[60]).network_code == "201" and record.mti == "0320"
    assert end.mti == "0320" and CupField60.parse(end[60]).network_code == "207"  # closes: no second 0500
    assert [s.message.mti for s in h.sent].count("0500") == 1
    assert h.store.batch == "000002"
    h.run(purchase(5))
    assert CupField60.parse(h.sent[-1].message[60]).batch == "000002"


def test_cup_balanced_settlement_closes_without_upload(harness):
    h = harness("cup")
    h.run(purchase(1000))
    outcome = h.run(Settle())
    assert (outcome.kind, outcome.meaning) == ("approved", "balanced")
    assert h.sent_mtis()[-1] == "0500" and h.store.batch == "000002"


def test_unanswered_settlement_is_repeated_before_anything_else(harness):
    h = harness(settlement_attempts=2)
    h.run(purchase(1000))
    outcome = h.run(Settle(), faults=["drop-response", "drop-response"])
    assert outcome.kind == "unknown-queued"
    assert h.store.pending_settlement is not None and h.store.batch == "000001"
    # an offline sale made while the settlement is owed (the process dies right after storing it)
    assert h.run(OfflineSale(700, PAN, EXPIRY), crash_after=0) is None
    assert h.run(purchase(2000)).kind == "approved"
    first = h.sent_mtis().index("0500")
    assert h.sent_mtis()[first:] == ["0500", "0501", "0800", "0501", "0220", "0200"]
    assert {s.message[11] for s in h.sent[first:first + 4] if s.message.mti != "0800"} == {h.sent[first].message[11]}
    assert h.store.batch == "000002" and h.store.pending_settlement is None
    advice = next(e for e in h.store.entries() if e.kind == "advice")
    assert advice.batch == "000002"
    assert h.run(Settle()).kind == "approved"
    assert h.host.closed["000002"] == SettlementTotals(2, 2700, 0, 0)
    h.assert_consistent()


def test_settlement_declined(harness):
    h = harness()
    h.run(SignOn())
    original = h.host.handle
    h.host.handle = lambda r: h.host.reply(r, "90") if r.mti == "0500" else original(r)  # type: ignore
    outcome = h.run(Settle())
    assert (outcome.kind, outcome.response_code, outcome.meaning) == ("declined", "90", "cut-off in progress")
    assert h.store.batch == "000001" and h.store.pending_settlement is None
