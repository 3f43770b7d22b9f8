"""Rule 7: Luhn → 14, balance inquiry → 00 with 54, partial approval 10 with the approved amount, every
approval carries 37 and 38, required fields per message class and the shipped lenient scenario."""

from __future__ import annotations

import pytest

from switch.codec import Message
from tests.conformance.wire import CUP_HEADER, MID, talk, wire

FAMILIES = ("iso87", "cup")
BAD_LUHN = "4200000000000001"


@pytest.mark.parametrize("family", FAMILIES)
def test_card_failing_luhn_gets_14_and_nothing_posted(family: str) -> None:
    t = talk(family)
    assert t.send("0200", t.sale(1000, pan=BAD_LUHN))[39] == "14"
    assert t.ledger.postings() == []


def test_luhn_check_can_be_turned_off() -> None:
    t = talk("iso87", luhn_code=None)
    assert t.send("0200", t.sale(1000, pan=BAD_LUHN))[39] == "00"


@pytest.mark.parametrize("family", FAMILIES)
def test_balance_inquiry_answers_54(family: str) -> None:
    t = talk(family, balance=123456)
    inquiry = t.sale(0, proc="310000")
    del inquiry[4]
    reply = t.send("0200", inquiry)
    currency = "156" if family == "cup" else "840"
    assert (reply[39], reply[54]) == ("00", f"0002{currency}C000000123456")
    assert t.ledger.postings() == []


@pytest.mark.parametrize("family", FAMILIES)
def test_partial_approval_carries_the_approved_amount(family: str) -> None:
    t = talk(family, "test-cards")
    reply = t.send("0200", t.sale(2500, pan="4000000000000010"))
    assert (reply[39], reply[4]) == ("10", "000000001000")
    assert 37 in reply and 38 in reply
    assert t.ledger.postings()[0].amount == 1000 and t.charged() == 1000
    small = t.send("0200", t.sale(800, pan="4000000000000010"))  # never more than was asked
    assert (small[39], small[4]) == ("10", "000000000800")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_approval_carries_37_and_38(family: str) -> None:
    t = talk(family)
    for mti in ("0100", "0200", "0220"):
        reply = t.send(mti, t.sale(700))
        assert reply[39] == "00" and reply[37].strip() and reply[38].strip(), mti
    rewritten = t.host.unprocessed_reply(wire(family, Message("0200", t.sale(700), CUP_HEADER if t.cup else "")),
                                         "00")
    assert rewritten is not None and rewritten[37] and rewritten[38]


def _minimal(pan: str = "4200000000000000") -> dict[int, str]:
    return {2: pan, 4: "000000001000", 11: "000123", 42: MID}


def test_minimal_client_gets_30_by_default_and_is_served_by_lenient() -> None:
    strict = talk("iso87", signed_on=False)
    assert strict.send("0200", _minimal())[39] == "30"
    t = talk("iso87", "lenient", signed_on=False)
    first = t.send("0200", _minimal())
    assert (first[39], first[37], first[38]) == ("00", first[37], first[38]) and first[38]
    assert t.send("0200", _minimal())[39] == "94"  # identity without 41: merchant + STAN + amount + card
    posting = t.ledger.postings()[0]
    assert (posting.terminal, posting.direction) == (f"M:{MID}", "debit")
    reversal = t.send("0400", {**_minimal()})
    assert reversal[39] == "00" and t.ledger.batch_summary(f"M:{MID}", "000001").debit_count == 0


def test_required_fields_are_configurable_per_class() -> None:
    t = talk("iso87", required_fields={"financial": (3, 4, 11, 41, 12, 13)})
    sale = t.sale(1000, local=None)
    assert t.send("0200", sale)[39] == "30"
    assert t.send("0200", t.sale(1000))[39] == "00"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fault_approval_gets_an_rrn_no_posting_and_no_restart_can_reissue(family: str, tmp_path) -> None:
    """``unprocessed_reply`` with an approval code (a fault's ``respond = "00"``): 37 and 38 from the
    ledger's unposted range (9xxxxxxxxxxx), no posting, and a restarted host never issues that RRN again,
    for an unposted reply or a posting, even when the first host was killed before any flush."""
    from switch.host import Host, HostConfig
    from switch.ledger import Ledger

    path = tmp_path / "ledger.sqlite"
    t = talk(family)
    t.ledger = t.host.ledger = Ledger.open(path)
    request = wire(family, Message("0200", t.sale(700), CUP_HEADER if t.cup else ""))
    faulted = t.host.unprocessed_reply(request, "00")
    assert faulted is not None and faulted[37].startswith("9") and faulted[38]
    assert t.ledger.postings() == []  # nothing pretends it was posted
    approved = t.send("0200", t.sale(800))  # flushed (committed) before it leaves
    assert approved[37] != faulted[37] and not approved[37].startswith("9")
    killed = t.host.unprocessed_reply(request, "00")  # sent, then the host dies before the next flush
    restarted = talk(family)
    restarted.ledger = Ledger.open(path)
    restarted.host = Host(HostConfig(family=family), restarted.ledger)
    assert restarted.signon()[39] == "00"
    again = restarted.host.unprocessed_reply(request, "00")
    posted = restarted.send("0200", restarted.sale(900, stan="000777"))
    rrns = [faulted[37], approved[37], killed[37], again[37], posted[37]]
    assert len(set(rrns)) == len(rrns), rrns
