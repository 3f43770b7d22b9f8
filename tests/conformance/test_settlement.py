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


# -- after a partial reversal: a partially reversed sale is still one sale -----------------------------
#
# A sale of 100.00 with a partial reversal keeping 60.00 (field 95) stands in the batch as ONE debit of
# 60.00. ISO totals carry it as 1 debit of 100.00 in 76/88 and the 40.00 undone in 89, with 77 (reversal
# count) counting only sales reversed in full; CUP's net field 48 carries 1 debit of 60.00.


def _partially_reversed_day(t: Conversation) -> dict[int, str]:
    sale = t.sale(10000)
    assert t.send("0200", sale)[39] == "00"
    assert t.send("0400", t.reversal(sale, f95=f"{6000:012d}" + "0" * 30))[39] == "00"
    summary = t.ledger.batch_summary(TID, "000001")
    assert (summary.debit_count, summary.debit_amount) == (1, 6000)  # still one sale, 60.00 captured
    assert (summary.debit_reversal_count, summary.debit_reversal_amount) == (0, 4000)
    return sale


PARTIAL_GROSS = SettlementTotals(1, 10000, 0, 0, debit_reversal_count=0, debit_reversal_amount=4000)
PARTIAL_NET = SettlementTotals(1, 6000, 0, 0)


@pytest.mark.parametrize("compare", ["net", "gross"])
def test_iso_partially_reversed_sale_balances_as_one_sale(compare: str) -> None:
    t = talk("iso87", settlement_compare=compare)
    _partially_reversed_day(t)
    assert t.ledger.batch_summary(TID, "000001").gross_totals == PARTIAL_GROSS
    if compare == "net":
        assert t.settle(PARTIAL_NET)[39] == "00"  # net figures with zero reversal columns balance too
    else:
        assert t.settle(PARTIAL_NET)[39] == "95"  # gross compares every column as sent
        assert t.settle(PARTIAL_GROSS)[39] == "00"
    assert t.ledger.batch_summary(TID, "000001").status == "closed"


def test_iso_partial_reversal_counted_as_a_reversal_is_one_debit_short() -> None:
    """A terminal that counts the partial reversal in 77 says no sale stands (1 − 1 = 0 debits) while
    60.00 is captured: 95, and after the upload (the record with its remaining 60.00) the batch closes
    with no record discrepancy, only the terminal's own totals contradicting its upload."""
    t = talk("iso87")
    sale = _partially_reversed_day(t)
    counted = SettlementTotals(1, 10000, 0, 0, debit_reversal_count=1, debit_reversal_amount=4000)
    assert t.settle(counted)[39] == "95"
    assert t.upload({**sale, 4: f"{6000:012d}"})[39] == "00"
    assert t.settle(counted, proc="960000")[39] == "00"
    assert [d.kind for d in t.ledger.discrepancies()] == ["totals-differ-from-upload"]


def test_cup_partially_reversed_sale_balances_as_one_sale() -> None:
    t = talk("cup")
    sale = _partially_reversed_day(t)
    assert t.settlement_result(t.settle(SettlementTotals(1, 10000, 0, 0))) == "95"  # the amount before it
    assert t.upload({**sale, 4: f"{6000:012d}"})[39] == "00"
    assert t.upload_end()[39] == "00"
    assert t.ledger.discrepancies()[0].kind == "totals-differ-from-upload"  # not the record: it is right
    t2 = talk("cup")
    _partially_reversed_day(t2)
    assert t2.settlement_result(t2.settle(PARTIAL_NET)) == "00"


def test_cup_sale_into_a_settled_batch_is_12_and_rests_on_the_closing_row() -> None:
    t = talk("cup")
    _day(t)
    assert t.settlement_result(t.settle(NET)) == "00"
    closed_seq = t.ledger.batch_summary(TID, "000001").closed_seq
    assert t.send("0200", t.sale(700))[39] == "12"  # 60.2 still names batch 000001
    assert t.last is not None and t.last.commit_seq == closed_seq
    assert len(t.ledger.postings()) == 4


def test_iso_95_carries_the_host_totals_so_the_terminal_can_say_what_differs() -> None:
    t = talk("iso87")
    _day(t)
    wrong = SettlementTotals(3, 8000, 1, 500)
    answer = t.settle(wrong)
    assert answer[39] == "95"
    host = SettlementTotals.from_iso_fields(answer.fields)
    assert host == GROSS  # the ledger's figures, not an echo of the terminal's
    assert answer[97] == GROSS.to_iso_fields()[97]
    assert t.settle(wrong)[86] == GROSS.to_iso_fields()[86]  # the same STAN again: the same answer


def test_iso_95_echoes_the_terminal_totals_when_host_totals_are_off() -> None:
    t = talk("iso87", settlement_host_totals=False)
    _day(t)
    wrong = SettlementTotals(3, 8000, 1, 500)
    answer = t.settle(wrong)
    assert answer[39] == "95"
    assert SettlementTotals.from_iso_fields(answer.fields) == wrong
