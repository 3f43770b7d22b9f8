"""Rule 6: settlement. ISO 920000 totals read the ISO way (gross − reversals), 95 → 0320 uploads →
960000 → 00 and the batch closes with discrepancies recorded; the older end-of-upload 0320 flow still
works. CUP: 0500 → flag 2 → 0320 uploads → end-of-upload 0320 (202/207) closes the batch."""

from __future__ import annotations

import pytest

from switch.codec.composite import SettlementTotals
from tests.conformance.wire import TID, Conversation, talk


def _day(t: Conversation) -> list[dict[int, str]]:
    """Three sales, one reversed, one refund: gross 3 debits 6000 (1 reversed, 1000), 1 credit 500."""
    sales = [t.sale(1000), t.sale(2000), t.sale(3000)]
    for sale in sales:
        assert t.send("0200", sale)[39] == "00"
    assert t.send("0400", t.reversal(sales[0]))[39] == "00"
    refund = t.sale(500, proc="200000")
    assert t.send("0200", refund)[39] == "00"
    return [*sales[1:], refund]


GROSS = SettlementTotals(3, 6000, 1, 500, debit_reversal_count=1, debit_reversal_amount=1000)
NET = SettlementTotals(2, 5000, 1, 500)


@pytest.mark.parametrize("reported", [GROSS, NET], ids=["gross-with-reversals", "net-zero-reversals"])
def test_iso_totals_balance_read_the_iso_way(reported: SettlementTotals) -> None:
    t = talk("iso87")
    _day(t)
    assert t.settle(reported)[39] == "00"
    assert t.ledger.batch_summary(TID, "000001").status == "closed"


def test_iso_gross_compare_setting() -> None:
    t = talk("iso87", settlement_compare="gross")
    _day(t)
    assert t.settle(NET)[39] == "95"
    assert t.settle(GROSS)[39] == "00"


def test_iso_920000_95_upload_960000_closes_and_records_discrepancies() -> None:
    t = talk("iso87")
    captured = _day(t)
    wrong = SettlementTotals(3, 8000, 1, 500)  # the terminal also counts a sale the host never saw
    assert t.settle(wrong)[39] == "95"
    assert t.ledger.batch_summary(TID, "000001").status == "open"
    for record in captured:
        assert t.upload(record)[39] == "00"
    assert t.upload(t.sale(3000, stan="000099"))[39] == "00"  # unknown to the ledger
    after = t.settle(wrong, proc="960000")
    assert (after.mti, after[39]) == ("0510", "00")
    batch = t.ledger.batch_summary(TID, "000001")
    assert batch.status == "closed" and batch.upload_count == 4
    assert [(d.kind, d.stan) for d in t.ledger.discrepancies()] == [("unknown-to-ledger", "000099")]
    assert t.ledger.current_batch(TID) == "000002"


def test_iso_end_of_upload_0320_flow_still_works() -> None:
    t = talk("iso87")
    captured = _day(t)
    assert t.settle(SettlementTotals(1, 1, 0, 0))[39] == "95"
    for record in captured:
        t.upload(record)
    assert t.upload_end()[39] == "00"
    assert t.settle(NET)[39] == "00"
    assert t.ledger.batch_summary(TID, "000001").status == "closed"


@pytest.mark.parametrize("balanced", [False, True], ids=["207", "202"])
def test_cup_upload_end_closes_the_batch_without_a_second_0500(balanced: bool) -> None:
    t = talk("cup")
    captured = _day(t)
    assert t.settlement_result(t.settle(SettlementTotals(2, 5000, 1, 600))) == "95"  # refund differs
    for record in captured:
        assert t.upload(record)[39] == "00"
    end = t.upload_end(balanced=balanced)
    assert (end.mti, end[39]) == ("0330", "00")
    batch = t.ledger.batch_summary(TID, "000001")
    assert batch.status == "closed"
    assert [d.kind for d in t.ledger.discrepancies()] == ["totals-differ-from-upload"]
    assert t.upload_end(balanced=balanced)[39] == "00"  # a resent end-of-upload: still closed, still 00


def test_cup_balanced_settlement_closes() -> None:
    t = talk("cup")
    _day(t)
    assert t.settlement_result(t.settle(NET)) == "00"
    assert t.ledger.batch_summary(TID, "000001").status == "closed"
