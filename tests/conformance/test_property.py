"""Property: whatever the interleaving of originals, repeats, resends and reversals (and their repeats),
no transaction is booked twice and the ledger's net equals approvals − reversals."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conformance.wire import talk

N_TRANSACTIONS = 4
ACTIONS = st.lists(
    st.tuples(st.sampled_from(["original", "repeat", "resend", "reversal", "reversal-repeat", "advice"]),
              st.integers(0, N_TRANSACTIONS - 1)),
    max_size=25)


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from(["iso87", "cup"]), actions=ACTIONS,
       resend=st.sampled_from(["94", "original"]))
def test_no_double_booking_and_net_is_approvals_minus_reversals(family: str, actions: list[tuple[str, int]],
                                                                 resend: str) -> None:
    t = talk(family, resend_answer=resend)
    sales = [t.sale(1000 * (i + 1)) for i in range(N_TRANSACTIONS)]
    advices = [t.sale(100 * (i + 1)) for i in range(N_TRANSACTIONS)]
    approved: dict[int, str] = {}  # transaction → RRN of its approval as the terminal saw it
    reversed_: set[int] = set()
    for action, i in actions:
        t.tick(1)
        sale = {**sales[i], 7: t.f7()} if family == "iso87" else sales[i]  # field 7 fresh each time
        if action in ("original", "repeat", "resend"):
            reply = t.send({"original": "0200", "repeat": "0201", "resend": "0200"}[action], sale)
            if reply[39] == "00":
                assert approved.setdefault(i, reply[37]) == reply[37], "a second approval with another RRN"
        elif action == "advice":
            assert t.send("0221" if i % 2 else "0220", advices[i])[39] == "00"
        else:
            reply = t.send("0401" if action == "reversal-repeat" else "0400", t.reversal(sales[i]))
            assert reply[39] == "00"
            reversed_.add(i)
    postings = t.ledger.postings()
    keys = [(p.terminal, p.stan, p.identity) for p in postings]
    assert len(keys) == len(set(keys)), "a transaction was booked twice"
    assert len([r for r in t.ledger.reversals() if r.effect == "reversed"]) == len(
        {r.original_seq for r in t.ledger.reversals() if r.effect == "reversed"})
    sales_approved = {p.stan for p in postings if p.approved and p.kind == "purchase"}
    expected = sum(int(sales[i][4]) for i in range(N_TRANSACTIONS)
                   if sales[i][11] in sales_approved and i not in reversed_)
    expected += sum(p.amount for p in postings if p.kind == "advice")
    assert t.charged() == expected
    for p in postings:
        if p.kind == "purchase" and p.approved:
            i = next(k for k in range(N_TRANSACTIONS) if sales[k][11] == p.stan)
            assert p.rrn == approved.get(i, p.rrn)
