"""The terminal policy's reversals and advices against ``FakeHost`` (tests/policy_harness.py): stored
before the request leaves, 0400 then 0401 repeats, queued until delivered, late and duplicate replies,
voids, refused reversals; offline sales and 0220/0221 advices."""

from __future__ import annotations

import pytest

from switch.codec.composite import OriginalData
from terminal.policy import (
    Drain,
    OfflineSale,
    PolicyError,
    ReverseLast,
    Send,
    SignOn,
)
from terminal.store import TerminalStore
from tests.policy_harness import EXPIRY, PAN, TID, harnesses, purchase


@pytest.fixture
def harness(tmp_path):
    yield from harnesses(tmp_path)


# ---------------------------------------------------------------------------------------------
# Reversals


def test_reversal_is_persisted_before_the_request_is_handed_out(harness):
    h = harness()
    h.run(SignOn())
    h.policy.start(purchase(track2=PAN + "=27121010000", pin_block="0123456789ABCDEF"), h.now)
    send = h.policy.next_action(h.now)
    assert isinstance(send, Send) and send.message.mti == "0200"
    assert send.message[35] and send.message[52]  # the card data travels ...
    with TerminalStore.open(h.path, TID) as other_process:  # ... and the reversal is already on disk
        (entry,) = other_process.entries()
        (reversal,) = other_process.reversals()
        assert entry.state == "in-flight" and entry.stan == send.message[11]
        assert reversal.journal_id == entry.id and reversal.attempts == 0
        assert other_process.last_stan == send.message[11]


def test_timeout_sends_0400_then_0401_repeats_with_the_same_stan(harness):
    h = harness(reversal_attempts=3)
    outcome = h.run(purchase(track2=PAN + "=27121010000", pin_block="0123456789ABCDEF"),
                    faults=["ok", "ok", "drop-response", "drop-response", "drop-request", "ok"])
    assert outcome.kind == "reversed"
    assert h.sent_mtis() == ["0800", "0200", "0400", "0401", "0401"]
    original, first, *repeats = (s.message for s in h.sent[1:])
    assert first[11] not in (original[11],) and all(r[11] == first[11] for r in repeats)
    assert all(r[7] == first[7] for r in repeats)  # retransmissions: the same message again
    assert first[39] == "98"
    assert OriginalData.parse(first[90]) == OriginalData(original.mti, original[11], original[7], "", "")
    for secret in (35, 52):
        assert secret not in first
    for copied in (2, 3, 4, 41, 42, 49):
        assert first[copied] == original[copied]
    entry = h.store.entries()[0]
    assert entry.state == "reversed" and entry.money_moved is False
    h.assert_consistent()


def test_unanswered_reversal_is_queued_and_goes_out_before_the_next_transaction(harness):
    h = harness(reversal_attempts=2)
    outcome = h.run(purchase(), faults=["ok", "ok", "drop-response", "drop-response", "drop-response"])
    assert outcome.kind == "unknown-queued"
    assert outcome.text.startswith("outcome unknown: the card may be debited, do not charge again; "
                                   "the reversal goes out automatically")
    assert h.sent_mtis() == ["0800", "0200", "0400", "0401"]
    (reversal,) = h.store.reversals()
    assert reversal.attempts == 2
    assert h.journal()[(h.sent[1].message[11], h.sent[1].message[7])].money_moved is None
    h.crash_and_restart()
    assert h.run(purchase(55)).kind == "approved"
    assert h.sent_mtis()[4:] == ["0800", "0401", "0200"]  # signed on, the queued reversal, the sale
    assert h.store.reversals() == []
    h.assert_consistent()


def test_a_reversal_that_cannot_be_delivered_blocks_new_transactions(harness):
    h = harness(reversal_attempts=1)
    h.run(purchase(), faults=["ok", "ok", "drop-response", "drop-response"])
    outcome = h.run(purchase(66), faults=["drop-response"])
    assert outcome.kind == "failed" and "stays stored" in outcome.text
    assert h.sent_mtis()[-1] == "0401" and h.sent_mtis().count("0200") == 1


@pytest.mark.parametrize("fault", ["reset-after", "garbage", "late-response", "drop-request", "reset-before"])
def test_every_failed_exchange_is_reversed(harness, fault):
    h = harness()
    h.run(SignOn())
    outcome = h.run(purchase(), faults=[fault])
    assert outcome.kind == "reversed"
    h.flush_network()
    h.assert_consistent()


def test_a_request_that_could_not_be_sent_is_still_reversed(harness):
    h = harness()
    h.run(SignOn())
    h.policy.start(purchase(), h.now)
    send = h.policy.next_action(h.now)
    assert isinstance(send, Send)
    h.policy.send_failed(h.now, "field 35: must hold track characters only")
    assert h.store.entries()[0].state == "unknown" and len(h.store.reversals()) == 1
    with pytest.raises(PolicyError, match="without a message in flight"):
        h.policy.send_failed(h.now, "again")
    reversal = h.policy.next_action(h.now)
    assert isinstance(reversal, Send) and reversal.message.mti == "0400"


def test_mac_failure_reverses_with_a0_after_a_new_signon(harness):
    h = harness()
    h.run(SignOn())
    outcome = h.run(purchase(), faults=["bad-mac"])
    assert outcome.kind == "reversed"
    assert h.sent_mtis() == ["0800", "0200", "0800", "0400"]
    assert h.sent[-1].message[39] == "A0"
    h.assert_consistent()


def test_late_reply_is_discarded_and_never_changes_the_outcome(harness):
    h = harness()
    h.run(SignOn())
    outcome = h.run(purchase(), faults=["late-response"])
    assert outcome.kind == "reversed"
    assert "late-reply-discarded" in h.note_kinds()
    assert h.store.entries()[0].state == "reversed"
    h.assert_consistent()


def test_late_reply_after_the_deadline_is_late_even_if_nothing_else_happened(harness):
    h = harness()
    h.run(SignOn())
    h.policy.start(purchase(), h.now)
    send = h.policy.next_action(h.now)
    answer = h.host_handles(h._wire(send.message))
    h.policy.receive(answer, send.deadline)  # exactly at the deadline: too late
    assert [n.kind for n in h.policy.take_notes()] == ["exchange-failed", "reversal-queued",
                                                       "late-reply-discarded"]
    assert h.store.entries()[0].state == "unknown"


def test_duplicate_reply_is_applied_once(harness):
    h = harness()
    h.run(SignOn())
    assert h.run(purchase(), faults=["duplicate"]).kind == "approved"
    assert h.note_kinds()[-1] == "unexpected-message-discarded"
    assert [e.state for e in h.store.entries()] == ["approved"]


def test_void_reverses_the_last_approved_transaction(harness):
    h = harness()
    h.run(purchase(100))
    h.run(purchase(200))
    outcome = h.run(ReverseLast())
    assert outcome.kind == "reversed" and outcome.amount == 200
    assert h.sent[-1].message.mti == "0400" and h.sent[-1].message[39] == "17"
    assert [e.state for e in h.store.entries()] == ["approved", "reversed"]
    h.assert_consistent()
    assert h.run(ReverseLast()).amount == 100
    refused = h.run(ReverseLast())
    assert refused.kind == "refused" and "no approved transaction" in refused.text


def test_refused_reversals(harness):
    h = harness()
    h.run(purchase(100))
    h.host.reversal_answer = "12"
    void = h.run(ReverseLast())
    assert (void.kind, void.response_code) == ("declined", "12")
    assert h.store.entries()[0].state == "approved"  # the void was refused: the sale stands
    failed = h.run(purchase(300), faults=["drop-response"])
    assert failed.kind == "unknown"  # the host refused the reversal: nobody can say
    assert h.store.entries()[-1].state == "reversal-refused"
    assert h.store.reversals() == []


def test_retry_codes_keep_the_reversal_queued(harness):
    h = harness(reversal_attempts=2)
    h.run(SignOn())
    h.host.reversal_answer = "96"
    outcome = h.run(purchase(), faults=["drop-response"])
    assert outcome.kind == "unknown-queued"
    assert "item-retry" in h.note_kinds() and len(h.store.reversals()) == 1
    h.host.reversal_answer = None
    assert h.run(Drain()).kind == "completed"
    h.assert_consistent()


def test_reversal_of_a_stale_stan_after_wrapping(harness):
    h = harness()
    h.store._set_meta("stan", "999998")
    h.run(purchase(), faults=["ok", "ok", "drop-response"])
    assert [s.message[11] for s in h.sent] == ["999999", "000001", "000002"]
    assert OriginalData.parse(h.sent[2].message[90]).stan == "000001"
    h.assert_consistent()


# ---------------------------------------------------------------------------------------------
# Advices


def test_offline_sale_is_stored_even_without_a_connection(harness):
    h = harness(connect_attempts=2)
    outcome = h.run(OfflineSale(500, PAN, EXPIRY, "OFF123"), faults=["reset-before", "reset-before"])
    assert outcome.kind == "unknown-queued" and "the advice goes out automatically" in outcome.text
    assert [e.state for e in h.store.entries()] == ["advice-pending"]
    assert len(h.store.advices()) == 1 and h.sent == []
    assert h.run(Drain()).kind == "completed"
    assert h.sent_mtis() == ["0800", "0220"] and h.sent[1].message[38] == "OFF123"
    assert h.store.entries()[0].state == "approved"
    h.assert_consistent()


def test_advice_repeats_are_0221_and_94_counts_as_success(harness):
    h = harness()
    h.run(SignOn())
    original = h.host.handle
    h.host.handle = lambda r: original(r).copy(f39="94") if r.mti == "0221" else original(r)  # type: ignore
    outcome = h.run(OfflineSale(500, PAN, EXPIRY), faults=["drop-response"])
    assert outcome.kind == "approved"
    assert h.sent_mtis()[1:] == ["0220", "0221"] and h.sent[1].message[11] == h.sent[2].message[11]
    assert h.store.advices() == [] and h.store.entries()[0].response_code == "94"
    h.assert_consistent()
