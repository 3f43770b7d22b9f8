"""Rule 5: a reversal undoes its original only when amount, card and original MTI agree; field 95
makes it partial; field 90 zeros/malformed is a format error; an original never seen gets 00 (or 25)."""

from __future__ import annotations

import pytest

from switch.codec import Message
from switch.codec.composite import OriginalData
from tests.conformance.wire import OTHER_CARD, talk

FAMILIES = ("iso87", "cup")


@pytest.mark.parametrize("family", FAMILIES)
def test_matching_reversal_undoes_the_original(family: str) -> None:
    t = talk(family)
    sale = t.sale(10000)
    approved = t.send("0200", sale)
    reversal = t.send("0400", t.reversal(sale))
    assert (reversal.mti, reversal[39], reversal[37]) == ("0410", "00", approved[37])
    assert t.charged() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_amount_is_refused_and_the_original_stays_captured(family: str) -> None:
    t = talk(family)
    sale = t.sale(10000)
    t.send("0200", sale)
    assert t.send("0400", t.reversal(sale, f4=f"{100:012d}"))[39] == "25"
    assert t.charged() == 10000
    assert t.send("0400", t.reversal(sale))[39] == "00"  # the right one still works
    assert t.charged() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_other_card_is_refused(family: str) -> None:
    t = talk(family)
    sale = t.sale(10000)
    t.send("0200", sale)
    assert t.send("0400", t.reversal(sale, f2=OTHER_CARD))[39] == "25"
    assert t.charged() == 10000


def test_original_mti_in_field_90_must_match() -> None:
    t = talk("iso87", reversal_mismatch_code="12")
    sale = t.sale(10000)
    t.send("0200", sale)
    reversal = t.reversal(sale)
    reversal[90] = OriginalData("0100", sale[11], sale[7], "", "").format()
    assert t.send("0400", reversal)[39] == "12"
    assert t.charged() == 10000


@pytest.mark.parametrize("family", FAMILIES)
def test_partial_reversal_reverses_original_minus_replacement(family: str) -> None:
    t = talk(family)
    sale = t.sale(10000)
    t.send("0200", sale)
    partial = t.reversal(sale, f95=f"{6000:012d}" + "0" * 30)  # the actual amount was 60.00
    assert t.send("0400", partial)[39] == "00"
    assert t.charged() == 6000
    assert t.ledger.reversals()[0].amount == 4000
    assert t.send("0401", partial)[39] == "00"  # repeat: nothing more undone
    assert t.charged() == 6000


@pytest.mark.parametrize("field90", ["0" * 42, "0200000001", "02000000010302093000" + "X" * 22])
def test_field_90_zeros_or_malformed_is_a_format_error(field90: str) -> None:
    t = talk("iso87")
    sale = t.sale(10000)
    t.send("0200", sale)
    reversal = t.reversal(sale)
    reversal[90] = field90
    decision = t.host.handle(Message("0400", reversal), t.clock)  # not encodable: straight to the host
    assert decision.response is not None and decision.response[39] == "30"
    assert t.charged() == 10000


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("configured", [None, "25"])
def test_original_never_seen(family: str, configured: str | None) -> None:
    t = talk(family, **({"unknown_original_code": configured} if configured else {}))
    sale = t.sale(10000)
    assert t.send("0400", t.reversal(sale))[39] == (configured or "00")
    late = t.send("0200", sale)  # the original arrives after its reversal: never posted
    assert late[39] != "00" and t.charged() == 0


@pytest.mark.parametrize("family", ["iso87", "cup"])
def test_a_refused_reversal_rests_on_its_original(family: str) -> None:
    """25 for a wrong amount says "that original stays captured": it waits for the original's row."""
    t = talk(family)
    sale = t.sale(10000)
    t.send("0200", sale)
    t.send("0400", t.reversal(sale, f4=f"{100:012d}"))
    assert t.last is not None and t.last.outcome == "reversal-mismatch"
    assert t.last.commit_seq == t.ledger.postings()[0].seq
