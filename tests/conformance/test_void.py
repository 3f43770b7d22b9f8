"""Rule 8: a CUP void (0200, processing code 20xxxx, 60.1 = 23, the original in 61 and/or 37) cancels its
original once; a refund (60.1 = 25) is a credit."""

from __future__ import annotations

from tests.conformance.wire import talk


def _void(t, original: dict[int, str], reply: dict[int, str] | None = None, by_rrn: bool = False) -> dict[int, str]:
    void = t.sale(int(original[4]), proc="200000")
    void[60] = t.f60("23")
    if by_rrn:
        void[37] = reply[37] if reply else ""
    else:
        void[61] = t.batch + original[11] + "0302"
    return void


def test_void_cancels_the_original_once() -> None:
    t = talk("cup")
    sale = t.sale(8800)
    approved = t.send("0200", sale)
    void = _void(t, sale)
    reply = t.send("0200", void)
    assert (reply.mti, reply[39]) == ("0210", "00") and reply[37] and reply[38]
    assert t.charged() == 0
    again = t.send("0200", void)  # the same void resent: same answer, nothing more undone
    assert (again[39], again[37]) == ("00", reply[37])
    second = t.send("0200", _void(t, sale))  # another void of the same sale: no double cancel
    assert second[39] != "00"
    assert t.charged() == 0 and len(t.ledger.reversals()) == 1
    assert approved[37] != reply[37]


def test_void_found_by_rrn() -> None:
    t = talk("cup")
    sale = t.sale(4200)
    approved = t.send("0200", sale)
    assert t.send("0200", _void(t, sale, approved, by_rrn=True))[39] == "00"
    assert t.charged() == 0


def test_void_with_wrong_amount_is_refused() -> None:
    t = talk("cup")
    sale = t.sale(4200)
    t.send("0200", sale)
    void = _void(t, sale)
    void[4] = f"{100:012d}"
    assert t.send("0200", void)[39] == "25"
    assert t.charged() == 4200


def test_void_of_unknown_original_is_25() -> None:
    t = talk("cup")
    assert t.send("0200", _void(t, t.sale(4200, stan="000777")))[39] == "25"


def test_refund_is_a_credit() -> None:
    t = talk("cup")
    refund = t.sale(1500, proc="200000")
    refund[60] = t.f60("25")
    assert t.send("0200", refund)[39] == "00"
    posting = t.ledger.postings()[0]
    assert (posting.direction, posting.amount) == ("credit", 1500)
    assert t.charged() == -1500


def test_a_0201_repeat_of_a_void_gets_the_voids_answer() -> None:
    """A repeat MTI of an answered void is the same void: its first answer again (not 12, "another void")."""
    t = talk("cup")
    sale = t.sale(5100)
    t.send("0200", sale)
    void = _void(t, sale)
    first = t.send("0200", void)
    repeat = t.send("0201", void)
    assert (repeat.mti, repeat[39], repeat[37], repeat[38]) == ("0210", "00", first[37], first[38])
    assert t.charged() == 0 and len(t.ledger.reversals()) == 1


def test_a_refused_void_waits_for_the_original_it_rests_on() -> None:
    """Refusals that rest on a ledger row (the original, the closing settlement) carry its sequence as
    ``commit_seq``, so the answer never leaves before what it describes is durable."""
    t = talk("cup")
    sale = t.sale(4200)
    t.send("0200", sale)
    original = t.ledger.postings()[0]
    void = _void(t, sale)
    void[4] = f"{100:012d}"
    assert t.send("0200", void)[39] == "25"
    assert t.last is not None and t.last.commit_seq == original.seq
