"""The terminal policy's clock and operator texts, CUP-specific messages, cardholder confirmation, balance
inquiries and CUP voids, against ``FakeHost`` (tests/policy_harness.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.codec.composite import CupField60, OriginalData
from switch.codec.message import Message
from terminal.clock import SyncedClock
from terminal.policy import (
    AwaitConfirmation,
    BalanceInquiry,
    Purchase,
    ReverseLast,
    SignOn,
    TerminalPolicy,
)
from tests.policy_harness import EXPIRY, PAN, T0, Harness, harnesses, purchase


@pytest.fixture
def harness(tmp_path):
    yield from harnesses(tmp_path)


# ---------------------------------------------------------------------------------------------
# Clock: the host's time from the 0810; operator texts


def _host_clock_reply(h: Harness, skew: float):
    """Make the fake host answer sign-ons with its local time ``skew`` seconds ahead of the terminal."""
    original = h.host.handle

    def handle(request: Message) -> Message | None:
        answer = original(request)
        if answer is not None and request.mti == "0800":
            host_now = datetime.fromtimestamp(h.now + skew, UTC)
            answer = answer.copy(f12=host_now.strftime("%H%M%S"), f13=host_now.strftime("%m%d"))
        return answer

    h.host.handle = handle  # type: ignore[method-assign]


def test_signon_reply_sets_the_clock_used_in_fields_7_12_13(harness):
    h = harness()
    _host_clock_reply(h, 300)  # the terminal's clock is 5 minutes slow
    h.run(purchase(1000))
    sale = h.sent[-1].message
    host_time = datetime.fromtimestamp(h.sent_at[-1] + 300, UTC)
    assert (sale[12], sale[13]) == (host_time.strftime("%H%M%S"), host_time.strftime("%m%d"))
    assert sale[7] == host_time.strftime("%m%d%H%M%S")  # field 7 in UTC, on the host's clock
    assert h.store.clock_offset is not None and h.store.clock_offset[0] == 300
    assert "clock-synced" in h.note_kinds()
    # durable: a restarted terminal stamps its first messages with the host's time before signing on
    restarted = TerminalPolicy(h.profile, h.store, h.now)
    assert restarted.clock.offset == 300


def test_clock_sync_across_new_year_and_without_fields():
    from terminal.clock import host_offset

    new_year_eve = datetime(2025, 12, 31, 23, 59, 50, tzinfo=UTC).timestamp()
    assert host_offset("000010", "0101", new_year_eve, 0) == 20  # the host is already in 2026
    assert host_offset(None, "0101", new_year_eve, 0) is None
    assert host_offset("256161", "0230", new_year_eve, 0) is None  # not a time
    assert host_offset("120000", "0301", T0, 8 * 60) == -8 * 3600  # a terminal on UTC+8 vs a host on UTC


def test_a_stale_time_decline_tells_the_operator_to_check_the_clock(harness):
    h = harness()
    h.run(SignOn())
    original = h.host.handle
    h.host.handle = lambda r: h.host.reply(r, "22") if r.mti == "0200" else original(r)  # type: ignore
    outcome = h.run(purchase(1000))
    assert outcome.kind == "declined" and outcome.meaning == "suspected malfunction"  # not "order expired"
    assert "check the terminal clock" in outcome.text
    h.host.handle = original  # type: ignore[method-assign]
    h.host.handle = lambda r: h.host.reply(r, "05") if r.mti == "0200" else original(r)  # type: ignore
    assert "clock" not in h.run(purchase(1000)).text


def test_a_reversal_is_never_reported_as_approved(harness):
    h = harness()
    outcome = h.run(purchase(1000), faults=["ok", "ok", "drop-response"])
    assert outcome.kind == "reversed" and "approved" not in outcome.text
    assert outcome.text.startswith("not charged: no valid answer, so the terminal reversed it")
    h.run(purchase(2000))
    voided = h.run(ReverseLast())
    assert voided.kind == "reversed" and "approved" not in voided.text and voided.text.startswith("voided: ")


def test_a_refused_reversal_says_what_to_do(harness):
    h = harness()
    h.host.reversal_answer = "12"
    outcome = h.run(purchase(1000), faults=["ok", "ok", "drop-response"])
    assert outcome.kind == "unknown"
    assert outcome.text.startswith("outcome unknown: the card may be debited, do not charge again")


# ---------------------------------------------------------------------------------------------
# CUP messages are CUP


def test_cup_timeout_reversal_keeps_the_stan_has_no_field_90_and_is_maced(harness):
    from switch.security import WorkingKeys

    h = harness("cup")
    outcome = h.run(purchase(1000), faults=["ok", "ok", "drop-response"])
    assert outcome.kind == "reversed"
    sale, reversal = h.sent[1].message, h.sent[2].message
    assert (sale.mti, reversal.mti) == ("0200", "0400")
    assert reversal[11] == sale[11] and 90 not in reversal and 7 not in reversal
    assert reversal[39] == "98" and CupField60.parse(reversal[60]).txn_type == "22"
    assert reversal[4] == sale[4] and 35 not in reversal and 52 not in reversal
    keys = WorkingKeys(bytes.fromhex("0123456789ABCDEF"), bytes.fromhex("FEDCBA9876543210"))
    maced = TerminalPolicy(dataclasses.replace(h.profile, mac="cup-ecb", static_keys=keys), h.store, h.now)
    assert maced.request_mac(reversal) == ("cup-ecb", keys.mac_key)  # the driver MACs it into 64


def test_iso_timeout_reversal_has_its_own_stan_and_field_90(harness):
    h = harness()
    h.run(purchase(1000), faults=["ok", "ok", "drop-response"])
    sale, reversal = h.sent[1].message, h.sent[2].message
    assert reversal.mti == "0400" and reversal[11] != sale[11]
    original = OriginalData.parse(reversal[90])
    assert (original.mti, original.stan, original.transmission_time) == ("0200", sale[11], sale[7])


# ---------------------------------------------------------------------------------------------
# Cardholder confirmation (seed 004's own meaning: did not sign / confirm in time)


def test_a_sale_the_cardholder_confirms_in_time_stands(harness):
    h = harness()
    h.confirm_after = 5.0
    outcome = h.run(purchase(1000, confirm_timeout=30.0))
    assert outcome.kind == "approved" and "cardholder-confirmed" in h.note_kinds()
    assert h.sent_mtis() == ["0800", "0200"]
    waits = [a for a in h.actions if isinstance(a, AwaitConfirmation)]
    assert waits and h.sent_at[-1] + 30.0 <= waits[0].deadline < h.sent_at[-1] + 31.0  # from the approval


def test_a_sale_never_confirmed_is_reversed_with_customer_cancellation(harness):
    h = harness()
    h.confirm_after = None
    outcome = h.run(purchase(1000, confirm_timeout=30.0))
    assert outcome.kind == "reversed"
    assert outcome.text.startswith("cancelled: the cardholder did not confirm in time; the approved sale was reversed")
    assert "approved" not in outcome.text.replace("the approved sale", "")
    sale, reversal = h.sent[1].message, h.sent[2].message
    assert reversal.mti == "0400" and reversal[39] == "17"  # ISO 8583 response code 17: customer cancellation
    assert OriginalData.parse(reversal[90]).stan == sale[11]
    assert h.sent_at[2] >= h.sent_at[1] + 30.0
    assert h.store.entries()[0].state == "reversed" and h.store.reversals() == []
    h.assert_consistent()


def test_a_confirmation_after_the_deadline_is_too_late(harness):
    h = harness()
    h.confirm_after = 31.0
    assert h.run(purchase(1000, confirm_timeout=30.0)).kind == "reversed"


def test_a_declined_sale_asks_for_no_confirmation(harness):
    h = harness()
    h.confirm_after = None
    outcome = h.run(purchase(1113, confirm_timeout=30.0))
    assert outcome.kind == "declined" and not any(isinstance(a, AwaitConfirmation) for a in h.actions)


def test_a_bad_confirmation_timeout_is_refused_locally(harness):
    h = harness()
    assert h.run(purchase(1000, confirm_timeout=0)).kind == "refused" and h.sent == []


@pytest.mark.parametrize("family", ["iso87", "cup"])
def test_balance_inquiry_has_no_amount_and_stores_no_reversal(harness, family):
    h = harness(family)
    outcome = h.run(BalanceInquiry(PAN, EXPIRY))
    assert outcome.kind == "approved" and "available 1234.56" in outcome.text
    request = h.sent[-1].message
    assert (request.mti, request[3]) == ("0200", "310000") and 4 not in request
    if family == "cup":
        assert CupField60.parse(request[60]).txn_type == "01"
    assert h.store.entries() == [] and h.store.reversals() == []


def test_an_unanswered_balance_inquiry_fails_without_a_reversal(harness):
    h = harness()
    outcome = h.run(BalanceInquiry(PAN, EXPIRY), faults=["ok", "ok", "drop-response"])
    assert outcome.kind == "failed" and h.store.reversals() == []
    assert [m for m in h.sent_mtis() if m.startswith("04")] == []


def test_cup_void_is_a_new_0200_naming_its_original(harness):
    h = harness("cup")
    bought = h.run(purchase(1000))
    voided = h.run(ReverseLast())
    assert voided.kind == "reversed" and voided.text.startswith("voided: ") and "approved" not in voided.text
    void = h.sent[-1].message
    assert (void.mti, void[3], void[4]) == ("0200", "200000", "000000001000")
    assert void[11] != bought.stan  # its own STAN
    sixty = CupField60.parse(void[60])
    assert (sixty.txn_type, sixty.batch) == ("23", "000001")
    assert void[61] == "000001" + bought.stan and void[37] == bought.rrn and void[38].strip() == bought.auth_code
    assert 90 not in void and 39 not in void
    assert h.store.entries()[0].state == "reversed"
    h.assert_consistent()


def test_cup_void_declined_leaves_the_sale_standing(harness):
    h = harness("cup")
    h.run(purchase(1000))
    original = h.host.handle
    h.host.handle = lambda r: h.host.reply(r, "25") if r.mti == "0200" and r[60][:2] == "23" else original(r)  # type: ignore
    outcome = h.run(ReverseLast())
    assert outcome.kind == "declined" and outcome.response_code == "25"  # 25 does not clear a void
    assert h.store.entries()[0].state == "approved" and h.store.reversals() == []


def test_ctrl_c_before_the_cardholder_confirms_queues_the_reversal(harness):
    h = harness()
    h.policy.start(purchase(1000, confirm_timeout=30.0), h.now)
    for _ in range(20):
        action = h.policy.next_action(h.now)
        if isinstance(action, AwaitConfirmation):
            break
        h.perform(action, "ok")
    else:
        raise AssertionError("never asked for the confirmation")
    outcome = h.policy.interrupt(h.now)
    assert outcome.kind == "unknown-queued" and "do not charge again" in outcome.text
    assert [r.reason for r in h.store.reversals()] == ["17"] and not h.policy.busy


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False),
       st.sampled_from([0, 480, -300, 330, 840, -720]),
       st.sampled_from([0.0, 12.5, -3600.0, 4e-7, -4e-7]))
def test_the_cached_local_date_is_the_local_times_date(now: float, zone_minutes: int, offset: float) -> None:
    """Cards are checked against ``local_date`` (made once per second): the very day ``local`` gives,
    microsecond rounding at a second's edge included."""
    clock = SyncedClock(zone_minutes, offset)
    for instant in (now, float(int(now)) - 5e-7, float(int(now)) + 0.9999995):
        if instant >= 0:
            assert clock.local_date(instant) == clock.local(instant).date()


def test_the_outcome_after_an_answer_is_what_the_store_holds() -> None:
    """The policy keeps the entry its answer wrote instead of reading it back; a void of that sale
    (another write) must not be answered from that memory."""
    h = Harness()
    first = h.run(Purchase(1234, PAN, "3012"))
    assert first.kind == "approved"
    entry = h.store.entry(first.journal_id)
    assert (first.stan, first.rrn, first.auth_code, first.amount) == (entry.stan, entry.rrn, entry.auth_code,
                                                                       entry.amount)
    void = h.run(ReverseLast())
    assert void.kind == "reversed" and void.journal_id == first.journal_id
    assert h.store.entry(first.journal_id).state == "reversed"
    assert not h.store.reversals()
