"""The terminal policy's rules on a virtual clock against ``FakeHost`` (tests/policy_harness.py): local
card checks, sign-on, exchanges (deadlines, matching, echo checks), connections, misuse and the profile."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from switch.codec.composite import CupField60, CupHeader
from terminal.policy import (
    AwaitReply,
    Connect,
    Drain,
    Echo,
    Finished,
    Idle,
    OfflineSale,
    PolicyError,
    Purchase,
    Refund,
    Send,
    SignOff,
    SignOn,
    Sleep,
    TerminalPolicy,
    card_problem,
    luhn_valid,
)
from terminal.profile import ProfileError, TerminalProfile
from tests.policy_harness import EXPIRY, PAN, T0, TID, harnesses, purchase


@pytest.fixture
def harness(tmp_path):
    yield from harnesses(tmp_path)


# ---------------------------------------------------------------------------------------------
# Local checks


def test_luhn():
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(("pan", "expiry", "problem"), [
    ("4111111111111111", "2712", None),
    ("4111111111111111", "2503", None),  # valid through its expiry month
    ("411111111111", "2712", "Luhn"),
    ("41111111111", "2712", "12 to 19 digits"),
    ("41111111111111111111", "2712", "12 to 19 digits"),
    ("4111-1111-1111-1111", "2712", "12 to 19 digits"),
    ("4111111111111112", "2712", "Luhn"),
    ("4111111111111111", "2502", "expired"),
    ("4111111111111111", "2713", "malformed expiry"),
    ("4111111111111111", "27", "malformed expiry"),
])
def test_card_problems(pan, expiry, problem):
    found = card_problem(pan, expiry, datetime.fromtimestamp(T0, UTC))
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize("command", [
    purchase(0), purchase(-5), purchase(10**12), purchase(pan="4111111111111112"), purchase(expiry="2401"),
    purchase(track2="4111=2712=1"), purchase(pin_block="XYZ"), OfflineSale(0, PAN, EXPIRY),
    OfflineSale(100, PAN, EXPIRY, auth_code="TOO-LONG"),
])
def test_local_refusals_send_and_store_nothing(harness, command):
    h = harness()
    outcome = h.run(command)
    assert outcome.kind == "refused"
    assert h.sent == [] and h.actions == [Finished(outcome)]
    assert h.store.last_stan == "000000" and h.store.entries() == [] and h.store.reversals() == []
    assert "refused" in h.note_kinds()


def test_amount_must_be_an_int(harness):
    assert harness().run(Purchase(12.5, PAN, EXPIRY)).kind == "refused"  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Sign-on


def test_signs_on_before_the_first_financial_message(harness):
    h = harness()
    outcome = h.run(purchase())
    assert outcome.kind == "approved" and outcome.rrn and outcome.auth_code
    assert h.sent_mtis() == ["0800", "0200"]
    assert h.sent[0].message[70] == "001" and h.sent[0].purpose == "signon"
    assert [s.message[11] for s in h.sent] == ["000001", "000002"]
    assert h.run(purchase(99)).kind == "approved"
    assert h.sent_mtis() == ["0800", "0200", "0200"]  # signed on once


def test_a_fresh_policy_signs_on_again(harness):
    h = harness()
    h.run(purchase())
    h.crash_and_restart()
    h.run(purchase())
    assert h.sent_mtis() == ["0800", "0200", "0800", "0200"]


def test_signon_retries_with_exponential_backoff(harness):
    h = harness(backoff_initial=2.0, backoff_factor=3.0)
    outcome = h.run(purchase(), faults=["ok", "drop-response", "drop-response", "ok", "ok"])
    assert outcome.kind == "approved"
    sleeps = [a for a in h.actions if isinstance(a, Sleep)]
    assert len(sleeps) == 2
    signons = [s for s in h.sent if s.purpose == "signon"]
    assert len(signons) == 3
    # each wait starts when the previous attempt timed out: 30 s, then 2 s, then 2*3 s
    assert sleeps[0].until == pytest.approx(signons[0].deadline + 2.0)
    assert sleeps[1].until == pytest.approx(signons[1].deadline + 6.0)
    assert h.sent_mtis() == ["0800", "0800", "0800", "0200"]


def test_signon_gives_up_and_no_financial_message_goes_out_unsigned(harness):
    h = harness(signon_attempts=3)
    outcome = h.run(purchase(), faults=["ok"] + ["drop-response"] * 3)
    assert outcome.kind == "failed" and "sign-on failed 3 times" in outcome.text
    assert h.sent_mtis() == ["0800", "0800", "0800"]
    assert h.store.entries() == []


def test_signon_declined_by_the_host(harness):
    h = harness(signon_attempts=2)
    h.host.handle = lambda request: h.host.reply(request, "91")  # type: ignore[method-assign]
    outcome = h.run(SignOn())
    assert (outcome.kind, outcome.response_code) == ("declined", "91")
    assert h.sent_mtis() == ["0800", "0800"]


def test_resigns_on_when_the_host_demands_and_never_reuses_the_stan(harness):
    h = harness()
    h.run(purchase())
    h.host.sessions.clear()  # the host expired the session
    outcome = h.run(purchase(2000))
    assert outcome.kind == "approved"
    assert h.sent_mtis() == ["0800", "0200", "0200", "0800", "0200"]
    refused, retried = h.sent[2].message, h.sent[4].message
    assert refused[11] != retried[11]
    states = [(e.stan, e.state, e.response_code) for e in h.store.entries()]
    assert states[1] == (refused[11], "declined", "58") and states[2][1] == "approved"
    assert "signon-demanded" in h.note_kinds()
    h.assert_consistent()


@pytest.mark.parametrize("command", [purchase(2000), Refund(2000, PAN, EXPIRY)], ids=["purchase", "refund"])
def test_58_is_a_genuine_decline_by_default(harness, command):
    h = harness(signon_demand_codes=frozenset({"A0", "99"}))
    h.run(SignOn())
    original = h.host.handle
    h.host.handle = lambda r: h.host.reply(r, "58") if r.mti == "0200" else original(r)  # type: ignore
    outcome = h.run(command)
    assert (outcome.kind, outcome.response_code, outcome.meaning) == ("declined", "58", "not permitted to terminal")
    assert h.sent_mtis() == ["0800", "0200"]  # no re-sign-on, and never sent a second time
    assert h.policy.signed_on and "signon-demanded" not in h.note_kinds()
    assert h.store.reversals() == []


def test_a_configured_signon_code_resigns_on_and_sends_a_new_transaction_once(harness):
    h = harness(signon_demand_codes=frozenset({"A0", "99", "N7"}))
    h.run(SignOn())
    original = h.host.handle
    h.host.handle = lambda r: h.host.reply(r, "N7") if r.mti == "0200" else original(r)  # type: ignore
    outcome = h.run(purchase(2000))
    assert outcome.kind == "declined" and outcome.response_code == "N7"
    assert h.sent_mtis() == ["0800", "0200", "0800", "0200"]  # one re-sign-on, one new STAN, no more
    assert h.sent[1].message[11] != h.sent[3].message[11]


def test_a_host_that_keeps_demanding_signon_is_not_retried_forever(harness):
    h = harness(resignon_limit=2)
    h.run(SignOn())
    original = h.host.handle

    def always_demand(request):
        answer = original(request)
        if request.mti != "0800":
            h.host.sessions.clear()
            return h.host.reply(request, "58")
        return answer

    h.host.handle = always_demand  # type: ignore[method-assign]
    outcome = h.run(purchase())
    assert outcome.kind == "declined" and outcome.response_code == "58"
    assert h.sent_mtis().count("0200") == 2  # one resend after a new sign-on, then it stops


def test_cup_header_demand_on_an_approval(harness):
    h = harness("cup")
    original = h.host.handle

    def demand_in_header(request):
        answer = original(request)
        if request.mti == "0200":
            answer.header = CupHeader.DEFAULT.with_requirement("3").format()
        return answer

    h.host.handle = demand_in_header  # type: ignore[method-assign]
    assert h.run(purchase()).kind == "approved"  # the approval stands
    assert not h.policy.signed_on
    h.host.handle = original  # type: ignore[method-assign]
    assert h.run(purchase(77)).kind == "approved"
    assert h.sent_mtis() == ["0800", "0200", "0800", "0200"]


def test_cup_signon_and_echo_use_field_60(harness):
    h = harness("cup")
    assert h.run(Echo()).kind == "approved"
    assert h.run(SignOn()).kind == "approved"
    echo, signon = (s.message for s in h.sent)
    assert CupField60.parse(echo[60]).network_code == "301"
    assert CupField60.parse(signon[60]).network_code == "001"
    assert 7 not in signon and signon.header == CupHeader.DEFAULT.format()


def test_echo_needs_no_signon_and_signoff_ends_the_session(harness):
    h = harness()
    assert h.run(Echo()).kind == "approved"
    assert h.sent_mtis() == ["0800"] and h.sent[0].message[70] == "301"
    h.run(SignOn())
    assert h.policy.signed_on
    assert h.run(SignOff()).kind == "approved"
    assert not h.policy.signed_on and TID not in h.host.sessions
    assert h.store.signed_on_at is None


def test_echo_without_reply_fails(harness):
    outcome = harness().run(Echo(), faults=["ok", "drop-response"])
    assert outcome.kind == "failed" and "no reply within 30s" in outcome.text


# ---------------------------------------------------------------------------------------------
# Exchanges: deadlines, matching, echo checks


def test_response_timeout_per_message_type(harness):
    h = harness(timeouts={"0200": 5.0, "0400": 7.0})
    h.run(purchase(), faults=["ok", "ok", "drop-response"])
    assert [s.message.mti for s in h.sent] == ["0800", "0200", "0400"]
    waited = [send.deadline - at for send, at in zip(h.sent, h.sent_at, strict=True)]
    assert waited == pytest.approx([30.0, 5.0, 7.0])
    assert h.sent_at[2] == pytest.approx(h.sent[1].deadline)  # the reversal left when the 0200 timed out


def test_only_the_matching_response_is_applied(harness):
    h = harness()
    h.run(SignOn())
    h.policy.start(purchase(), h.now)
    send = h.policy.next_action(h.now)
    assert isinstance(send, Send)
    request = send.message
    good = h.host_handles(h._wire(request))
    for stranger in (good.copy(f11="999999"), good.copy(f41="T9999999"), good.copy(mti="0410"),
                     good.copy(mti="0200")):
        h.policy.receive(stranger, h.now + 1)
        assert isinstance(h.policy.next_action(h.now + 1), AwaitReply)
    kinds = [n.kind for n in h.policy.take_notes()]
    assert kinds == ["unexpected-message-discarded"] * 4
    h.policy.receive(good, h.now + 2)
    finished = h.policy.next_action(h.now + 2)
    assert isinstance(finished, Finished) and finished.outcome.kind == "approved"


@pytest.mark.parametrize(("tamper", "why"), [
    (lambda m: m.copy(f4="000000009999"), "field 4 not echoed"),
    (lambda m: m.copy(f3="200000"), "field 3 not echoed"),
    (lambda m: m.copy(drop=(42,)), "field 42 not echoed on an approval"),
    (lambda m: m.copy(drop=(39,)), "no response code"),
])
def test_failed_echo_means_no_response_and_a_reversal(harness, tamper, why):
    h = harness()
    h.run(SignOn())
    original = h.host.handle
    h.host.handle = lambda r: tamper(original(r)) if r.mti == "0200" else original(r)  # type: ignore
    outcome = h.run(purchase())
    assert outcome.kind == "reversed"
    assert any(why in n.text for n in h.notes if n.kind == "exchange-failed")
    assert h.sent_mtis()[-2:] == ["0200", "0400"] and h.sent[-1].message[39] == "98"
    h.assert_consistent()


def test_partial_approval_may_echo_a_smaller_amount(harness):
    h = harness()
    h.run(SignOn())
    original = h.host.handle

    def partial(request):
        answer = original(request)
        if request.mti == "0200" and answer[39] == "00":
            h.host.postings[(request[11], request[7])].amount = 1000
            return answer.copy(f39="10", f4="000000001000")
        return answer

    h.host.handle = partial  # type: ignore[method-assign]
    outcome = h.run(purchase(1234))
    assert (outcome.kind, outcome.response_code, outcome.amount) == ("approved", "10", 1000)
    h.assert_consistent()


def test_a_declined_exchange_deletes_its_reversal(harness):
    h = harness()
    outcome = h.run(purchase(1113))
    assert (outcome.kind, outcome.response_code, outcome.meaning) == ("declined", "51", "insufficient funds")
    assert h.store.reversals() == []
    assert h.store.entries()[0].state == "declined"
    h.assert_consistent()


# ---------------------------------------------------------------------------------------------
# Connections, misuse, profile


def test_connect_failures_back_off_and_give_up(harness):
    h = harness(connect_attempts=3, backoff_initial=1.0)
    outcome = h.run(purchase(), faults=["reset-before"] * 3)
    assert outcome.kind == "failed" and "cannot connect" in outcome.text
    assert [a.until - T0 for a in h.actions if isinstance(a, Sleep)] == pytest.approx([1.01, 3.02])
    assert h.sent == []


def test_connection_lost_between_exchanges_reconnects(harness):
    h = harness()
    h.run(purchase())
    h.policy.connection_lost(h.now, "idle timeout")
    assert h.run(purchase(7)).kind == "approved"
    assert sum(isinstance(a, Connect) for a in h.actions) == 2


def test_a_connection_lost_mid_exchange_is_noted_as_such(harness):
    h = harness()
    h.run(purchase(), faults=["ok", "ok", "reset-after"])  # connect, sign-on, then the purchase
    kinds = h.note_kinds()
    assert "connection-lost" in kinds and "exchange-failed" in kinds  # both counted: load reports use them


def test_one_operation_at_a_time(harness):
    h = harness()
    h.policy.start(Echo(), h.now)
    with pytest.raises(PolicyError, match="still running"):
        h.policy.start(Echo(), h.now)


def test_misuse_is_reported(harness):
    h = harness()
    with pytest.raises(PolicyError, match="not a terminal command"):
        h.policy.start("purchase", h.now)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="finite number"):
        h.policy.next_action(float("nan"))
    assert isinstance(h.policy.next_action(h.now), Idle)
    with pytest.raises(PolicyError, match="belongs to terminal"):
        TerminalPolicy(TerminalProfile("T0000002", "SHOP"), h.store, T0)


def test_drain_with_nothing_owed_finishes_at_once(harness):
    h = harness()
    outcome = h.run(Drain())
    assert outcome.kind == "completed" and h.actions == [Finished(outcome)]


@pytest.mark.parametrize(("settings_", "message"), [
    ({"terminal_id": ""}, "terminal_id"),
    ({"terminal_id": "TOO-LONG-ID"}, "terminal_id"),
    ({"family": "visa"}, "family"),
    ({"currency": "EUR"}, "currency"),
    ({"response_timeout": 0}, "response_timeout"),
    ({"timeouts": {"0210": 5}}, "not a request MTI"),
    ({"reversal_attempts": 0}, "reversal_attempts"),
    ({"backoff_factor": 0.5}, "backoff_factor"),
    ({"retry_codes": "96"}, "retry_codes"),
    ({"cup_header": "60"}, "cup_header"),
])
def test_profile_validation(settings_, message):
    base = {"terminal_id": TID, "merchant_id": "SHOP01"}
    base.update(settings_)
    with pytest.raises(ProfileError, match=message):
        TerminalProfile(**base)


def test_profile_defaults_per_family():
    iso = TerminalProfile(TID, "SHOP01")
    cup = TerminalProfile(TID, "SHOP01", family="cup")
    assert (iso.currency, cup.currency) == ("840", "156")
    assert iso.signon_demand_codes == cup.signon_demand_codes == frozenset({"A0", "99"})  # 58 is a decline
    assert iso.merchant_id == "SHOP01         " and iso.timeout_for("0401") == 30.0
    assert TerminalProfile(TID, "S", timeouts={"0400": 9}).timeout_for("0401") == 9
    assert [iso.backoff(n) for n in (1, 2, 3, 10)] == [2.0, 4.0, 8.0, 60.0]
