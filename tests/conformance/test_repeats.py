"""Rule 2: repeats never double-book. Identity = terminal + STAN + local date/time 12/13 (or + amount +
card without 12/13); field 7 is not part of it."""

from __future__ import annotations

import pytest

from tests.conformance.wire import talk

FAMILIES = ("iso87", "cup")


@pytest.mark.parametrize("family", FAMILIES)
def test_repeat_mti_gets_the_original_answer_and_no_second_posting(family: str) -> None:
    t = talk(family, "test-cards")
    sale = t.sale(1000)
    first = t.send("0200", sale)
    t.tick(30)  # the terminal timed out and repeats with a fresh field 7
    repeat = t.send("0201", {**sale, 7: t.f7()} if family == "iso87" else sale)
    assert (repeat.mti, repeat[39], repeat[37], repeat[38], repeat[4]) == (
        "0210", first[39], first[37], first[38], first[4])
    assert len(t.ledger.postings()) == 1
    assert t.charged() == 1000


@pytest.mark.parametrize("family", FAMILIES)
def test_repeat_of_a_declined_request_gets_the_same_decline(family: str) -> None:
    t = talk(family, "test-cards")
    sale = t.sale(1000, pan="4000000000000051")
    assert t.send("0200", sale)[39] == "51"
    again = t.send("0201", sale)
    assert again[39] == "51" and 38 not in again
    assert len(t.ledger.postings()) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_resend_gets_94_by_default(family: str) -> None:
    t = talk(family)
    sale = t.sale(1000)
    t.send("0200", sale)
    t.tick(5)
    resend = t.send("0200", {**sale, 7: t.f7()} if family == "iso87" else sale)
    assert resend[39] == "94"
    assert len(t.ledger.postings()) == 1 and t.charged() == 1000


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_resend_gets_the_original_answer_when_configured(family: str) -> None:
    t = talk(family, resend_answer="original")
    sale = t.sale(1000)
    first = t.send("0200", sale)
    resend = t.send("0200", sale)
    assert (resend[39], resend[37], resend[38]) == ("00", first[37], first[38])
    assert len(t.ledger.postings()) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_repeat_of_a_request_never_seen_is_processed_as_the_original(family: str) -> None:
    t = talk(family)
    sale = t.sale(1000)
    first = t.send("0201", sale)  # the 0200 was lost before reaching the host
    assert first[39] == "00" and 37 in first and 38 in first
    again = t.send("0201", sale)
    assert (again[37], again[38]) == (first[37], first[38])
    assert len(t.ledger.postings()) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_without_local_time_the_identity_is_amount_and_card(family: str) -> None:
    t = talk(family)
    sale = t.sale(1000, local=None)
    t.send("0200", sale)
    assert t.send("0200", sale)[39] == "94"  # same STAN, amount and card: the same transaction
    other = t.send("0200", {**sale, 4: f"{2000:012d}"})  # same STAN, another amount: another sale
    assert other[39] == "00"
    assert len(t.ledger.postings()) == 2


def test_other_local_time_with_the_same_stan_is_another_transaction() -> None:
    t = talk("iso87")
    t.send("0200", t.sale(1000, stan="000007", local=("093000", "0302")))
    assert t.send("0200", t.sale(1000, stan="000007", local=("101500", "0302")))[39] == "00"
    assert len(t.ledger.postings()) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_advice_repeat_is_posted_once(family: str) -> None:
    t = talk(family)
    advice = t.sale(1500, f38="OFF123")
    first = t.send("0220", advice)
    repeat = t.send("0221", advice)
    assert (first.mti, repeat.mti, repeat[39], repeat[37]) == ("0230", "0230", "00", first[37])
    assert len(t.ledger.postings()) == 1 and t.charged() == 1500


@pytest.mark.parametrize("family", FAMILIES)
def test_reversal_repeat_gets_the_same_answer_and_undoes_once(family: str) -> None:
    t = talk(family)
    sale = t.sale(1000)
    t.send("0200", sale)
    reversal = t.reversal(sale)
    assert t.send("0400", reversal)[39] == "00"
    assert t.send("0401", reversal)[39] == "00"
    assert t.send("0400", reversal)[39] == "00"
    assert len(t.ledger.reversals()) == 1 and t.charged() == 0


def test_identity_is_remembered_for_the_duplicate_window_only() -> None:
    t = talk("iso87", duplicate_window=60.0)
    sale = t.sale(1000)
    t.send("0200", sale)
    t.tick(60)
    assert t.send("0200", sale)[39] == "94"
    t.tick(1)
    assert t.send("0200", sale)[39] == "00"  # beyond the window: a new transaction
    assert len(t.ledger.postings()) == 2
