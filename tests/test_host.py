"""Host logic without sockets: table tests per message type and response code, both families, and
hypothesis properties (never raises; ledger totals are the sum of what is still charged)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.codec import Codec, Message, MessageDecodeError, load_dialect
from switch.codec.composite import CupHeader, OriginalData, SettlementTotals
from switch.host import (
    APPROVAL_CODES,
    Decision,
    Host,
    HostConfig,
    auth_code_for,
    card_expiry,
    rrn_for,
    transmission_datetime,
)
from switch.ledger import Ledger
from switch.rules import Match, ResponseRule, ResponseRules

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
F7 = "0601120000"
CUP_HEADER = "603100000000"
FAMILIES = ("iso87", "cup")
DIALECTS = {"iso87": "iso87-binary", "cup": "cup-pos"}
CODECS = {family: Codec(load_dialect(name)) for family, name in DIALECTS.items()}
GOOD_CARD = "4200000000000000"
DECLINE_51 = "4000000000000051"
PARTIAL_CARD = "4999000000000005"


def f7_at(moment: datetime) -> str:
    return moment.strftime("%m%d%H%M%S")


RULES = ResponseRules([
    ResponseRule("test card 51", Match(mti=("0100", "0200"), pan_prefix=(DECLINE_51,)), "51",
                 {44: "NSF"}),
    ResponseRule("partial approval", Match(mti=("0200",), pan_prefix=(PARTIAL_CARD,)), "10",
                 {4: "000000000500"}),
    ResponseRule("maintenance", Match(mti=("0800",), terminal=("MAINT001",)), "91"),
    ResponseRule("cut-off", Match(mti=("0500",), terminal=("CUTOFF01",)), "90"),
    ResponseRule("reversals refused", Match(mti=("0400",), terminal=("NOREV001",)), "96"),
])


class Terminal:
    """Builds the requests a terminal of one family sends (fields as the codec decodes them)."""

    def __init__(self, family: str, tid: str = "TERM0001", batch: str = "000001"):
        self.family = family
        self.tid = tid
        self.batch = batch
        self.cup = family == "cup"

    def msg(self, mti: str, fields: dict[int, str]) -> Message:
        return Message(mti, dict(fields), CUP_HEADER if self.cup else "")

    def _f60(self, txn_type: str, code: str) -> str:
        return txn_type + self.batch + code

    def signon(self, code: str = "001") -> Message:
        if self.cup:
            netcode = "003" if code == "001" else code
            return self.msg("0800", {11: "000001", 41: self.tid, 60: self._f60("00", netcode)})
        return self.msg("0800", {7: F7, 11: "000001", 41: self.tid, 70: code})

    def purchase(self, stan: str, amount: int = 1000, pan: str = GOOD_CARD, mti: str = "0200",
                 proc: str = "000000", f7: str = F7, **extra: str) -> Message:
        fields = {2: pan, 3: proc, 4: f"{amount:012d}", 11: stan, 12: "120000", 13: "0601", 22: "021",
                  25: "00", 41: self.tid, 42: "MERCHANT0000001", 49: "156" if self.cup else "840"}
        if self.cup:
            fields[60] = self._f60("22", "000")
        else:
            fields[7] = f7
        fields.update({int(k[1:]): v for k, v in extra.items()})
        return self.msg(mti, fields)

    def reversal(self, original: Message, stan: str | None = None, mti: str = "0400", with90: bool = True,
                 f7: str = F7) -> Message:
        fields = {k: v for k, v in original.fields.items() if k not in (35, 36, 52, 53, 55, 14)}
        fields[11] = stan or original[11]
        fields[39] = "98"
        if not self.cup:
            fields[7] = f7
        if with90:
            fields[90] = OriginalData.of(original).format()
        return self.msg(mti, fields)

    def advice(self, stan: str, amount: int = 1000, mti: str = "0220") -> Message:
        message = self.purchase(stan, amount, mti=mti)
        message.fields[38] = "OFF123"
        return message

    def upload(self, stan: str, amount: int, proc: str = "000000") -> Message:
        fields = {2: GOOD_CARD, 3: proc, 4: f"{amount:012d}", 11: stan, 41: self.tid}
        if self.cup:
            fields[60] = self._f60("00", "201")
        return self.msg("0320", fields)

    def upload_end(self, stan: str = "000900") -> Message:
        if self.cup:
            return self.msg("0320", {11: stan, 41: self.tid, 60: self._f60("00", "202")})
        return self.msg("0320", {11: stan, 41: self.tid, 70: "202"})

    def settle(self, stan: str, totals: SettlementTotals, mti: str = "0500") -> Message:
        if self.cup:  # CUP field 48 has no reversal columns: only the net figures travel
            net = totals.netted()
            return self.msg(mti, {11: stan, 41: self.tid, 48: net.to_cup48("0"), 60: self._f60("00", "201")})
        return self.msg(mti, {7: F7, 11: stan, 41: self.tid, **totals.to_iso_fields()})


def totals(debits: int = 0, debit_amount: int = 0, credits: int = 0, credit_amount: int = 0,
           **reversals: int) -> SettlementTotals:
    return SettlementTotals(debits, debit_amount, credits, credit_amount, **reversals)


@dataclass
class Rig:
    host: Host
    ledger: Ledger
    term: Terminal
    family: str

    def send(self, message: Message, now: datetime = NOW) -> Decision:
        decision = self.host.handle(message, now)
        if decision.response is not None:  # every response must be encodable in the dialect
            CODECS[self.family].encode(decision.response)
            assert decision.response.mti == message.response_mti
        return decision

    def signed_on(self) -> Rig:
        assert self.send(self.term.signon()).outcome == "signon"
        return self


def make_rig(family: str, rules: ResponseRules | None = RULES, ledger: Ledger | None = None, **config) -> Rig:
    ledger = ledger or Ledger.open(":memory:")
    return Rig(Host(HostConfig(family=family, **config), ledger, rules), ledger, Terminal(family), family)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def rig(family: str) -> Rig:
    return make_rig(family).signed_on()


def code(decision: Decision) -> str | None:
    assert decision.response is not None
    return decision.response.get(39)


def settle_code(rig: Rig, decision: Decision) -> str:
    """ISO: field 39. CUP: no 39, field 48's flag ('1' balanced, '2' not)."""
    assert decision.response is not None
    if rig.family == "cup":
        assert 39 not in decision.response
        flag = SettlementTotals.from_cup48(decision.response[48])[1]
        return {"1": "00", "2": "95"}[flag]
    return decision.response[39]


# ---------------------------------------------------------------------------------------------
# 0800


def test_signon_signoff_echo(family: str) -> None:
    rig = make_rig(family)
    term = rig.term
    assert code(rig.send(term.purchase("000002"))) == "A0"
    echo = rig.send(term.signon("301"))
    assert (echo.outcome, code(echo), echo.commit_seq) == ("echo", "00", None)
    assert rig.host.sessions == {}
    on = rig.send(term.signon("001"))
    assert (on.outcome, code(on)) == ("signon", "00")
    assert rig.host.sessions == {"TERM0001": NOW.timestamp()}
    assert code(rig.send(term.purchase("000003"))) == "00"
    off = rig.send(term.signon("002"))
    assert (off.outcome, code(off)) == ("signoff", "00")
    assert rig.host.sessions == {}
    assert code(rig.send(term.purchase("000004"))) == "A0"


def test_cup_signon_codes_and_reply_header() -> None:
    rig = make_rig("cup")
    for netcode in ("003", "004"):
        rig.host.reset_sessions()
        decision = rig.send(rig.term.msg("0800", {11: "000001", 41: "TERM0001", 60: "00000001" + netcode}))
        assert decision.outcome == "signon"
        assert CupHeader.parse(decision.response.header).processing_requirement == "0"


@pytest.mark.parametrize(("fields", "outcome", "expected"), [
    ({"iso87": {41: "TERM0001", 70: "101"}, "cup": {41: "TERM0001", 60: "00000001101"}},
     "invalid-transaction", "12"),
    ({"iso87": {41: "TERM0001"}, "cup": {41: "TERM0001"}}, "format-error", "30"),
    ({"iso87": {41: "TERM0001", 70: "1"}, "cup": {41: "TERM0001", 60: "00000001"}}, "format-error", "30"),
    ({"iso87": {70: "001"}, "cup": {60: "00000001001"}}, "format-error", "30"),
    ({"iso87": {41: "MAINT001", 70: "001"}, "cup": {41: "MAINT001", 60: "00000001001"}}, "rule", "91"),
])
def test_network_management_table(family: str, fields: dict, outcome: str, expected: str) -> None:
    rig = make_rig(family)
    decision = rig.send(rig.term.msg("0800", {11: "000001", **fields[family]}))
    assert (decision.outcome, code(decision)) == (outcome, expected)
    assert rig.host.sessions == {}


# ---------------------------------------------------------------------------------------------
# sign-on first and session expiry


def test_every_message_class_needs_a_session(family: str) -> None:
    rig = make_rig(family)
    term = rig.term
    original = term.purchase("000001")
    requests = [original, term.purchase("000002", mti="0100"), term.advice("000003"), term.reversal(original),
                term.upload("000001", 1000), term.upload_end(), term.settle("000010", totals())]
    expected = "A0"
    for request in requests:
        decision = rig.send(request)
        assert (decision.outcome, decision.commit_seq) == ("signon-required", None), request.mti
        assert decision.response.get(39) == expected
        if family == "cup":
            assert CupHeader.parse(decision.response.header).needs_sign_on
    assert rig.ledger.pending_seq == 0  # nothing recorded


def test_signon_code_is_configurable_and_signon_can_be_off(family: str) -> None:
    rig = make_rig(family, signon_required_code="99")
    assert code(rig.send(rig.term.purchase("000001"))) == "99"
    open_rig = make_rig(family, require_signon=False)
    assert code(open_rig.send(open_rig.term.purchase("000001"))) == "00"


def test_session_expires(family: str) -> None:
    rig = make_rig(family, session_timeout=60.0).signed_on()
    term = rig.term
    later = NOW + timedelta(seconds=59)
    assert code(rig.send(term.purchase("000001", f7=f7_at(later)), later)) == "00"
    expired = NOW + timedelta(seconds=60)
    decision = rig.send(term.purchase("000002", f7=f7_at(expired)), expired)
    assert decision.outcome == "signon-required"
    assert "expired" in decision.reason
    assert "TERM0001" not in rig.host.sessions
    rig.send(term.signon(), expired)
    assert code(rig.send(term.purchase("000003", f7=f7_at(expired)), expired)) == "00"


# ---------------------------------------------------------------------------------------------
# 0100 / 0200


def _without(message: Message, *numbers: int) -> Message:
    return message.copy(drop=numbers)


def _with(message: Message, number: int, value: str) -> Message:
    return message.copy(**{f"f{number}": value})


FORMAT_CASES = [
    ("no processing code", lambda m: _without(m, 3)),
    ("no amount", lambda m: _without(m, 4)),
    ("no STAN", lambda m: _without(m, 11)),
    ("no terminal", lambda m: _without(m, 41)),
    ("blank terminal", lambda m: _with(m, 41, "        ")),
    ("no card", lambda m: _without(m, 2)),
    ("amount not digits", lambda m: _with(m, 4, "00000000012A")),
    ("STAN zero", lambda m: _with(m, 11, "000000")),
    ("processing code short", lambda m: _with(m, 3, "00000")),
    ("PAN letters", lambda m: _with(m, 2, "4200X00000000000")),
    ("expiry month 13", lambda m: _with(m, 14, "2713")),
    ("field 7 month 13", lambda m: _with(m, 7, "1301120000")),
    ("field 7 31 April", lambda m: _with(m, 7, "0431120000")),
    ("field 7 hour 24", lambda m: _with(m, 7, "0601240000")),
]


@pytest.mark.parametrize(("name", "mutate"), FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
@pytest.mark.parametrize("mti", ["0100", "0200", "0220"])
def test_format_errors_answer_30_and_post_nothing(rig: Rig, name: str, mutate, mti: str) -> None:
    decision = rig.send(mutate(rig.term.purchase("000001", mti=mti)))
    assert (decision.outcome, code(decision), decision.commit_seq) == ("format-error", "30", None)
    assert rig.ledger.postings() == []


def test_family_specific_mandatory_fields() -> None:
    iso = make_rig("iso87").signed_on()
    assert code(iso.send(_without(iso.term.purchase("000001"), 7))) == "30"
    cup = make_rig("cup").signed_on()
    assert code(cup.send(_without(cup.term.purchase("000001"), 60))) == "30"
    assert code(cup.send(_with(cup.term.purchase("000002"), 60, "2200000"))) == "30"
    assert code(cup.send(cup.term.purchase("000003"))) == "00"  # CUP needs no field 7


def test_track2_alone_is_a_card(rig: Rig) -> None:
    separator = "D" if rig.family == "cup" else "="
    request = _without(rig.term.purchase("000001"), 2)
    request.fields[35] = f"{GOOD_CARD}{separator}30121010000000000"
    decision = rig.send(request)
    assert code(decision) == "00"
    assert 35 not in decision.response
    assert rig.ledger.postings()[0].pan == "420000******0000"


@pytest.mark.parametrize(("mti", "kind"), [("0200", "purchase"), ("0100", "authorization")])
def test_approval_fields_and_echo(rig: Rig, mti: str, kind: str) -> None:
    request = rig.term.purchase("000001", mti=mti, f14="3012", f52="0123456789ABCDEF",
                                f55="9F2608AABBCCDDEEFF0011", f32="12345")
    decision = rig.send(request)
    response = decision.response
    assert (decision.outcome, response[39]) == ("approved", "00")
    posting = rig.ledger.postings()[0]
    assert decision.commit_seq == posting.seq
    assert (posting.kind, posting.approved, posting.amount, posting.direction) == (kind, True, 1000, "debit")
    assert response[37] == posting.rrn == rrn_for(posting.seq)
    assert len(response[37]) == 12 and response[37].isalnum()
    assert response[38] == posting.auth_code == auth_code_for(posting.seq)
    assert len(response[38]) == 6
    for number in (2, 3, 4, 11, 12, 13, 32, 41, 42, 49):
        assert response[number] == request[number], number
    if rig.family == "cup":
        assert response[60] == request[60]
    else:
        assert response[7] == request[7]
    for number in (14, 52, 55):
        assert number not in response


def test_field_32_is_ours_when_the_request_has_none(rig: Rig) -> None:
    assert rig.send(rig.term.purchase("000001")).response[32] == "00000000001"


def test_refund_is_a_credit(rig: Rig) -> None:
    rig.send(rig.term.purchase("000001", amount=700, proc="200000"))
    batch = rig.ledger.batches()[0]
    assert (batch.credit_count, batch.credit_amount, batch.debit_count) == (1, 700, 0)


def test_rrns_unique_and_survive_restart(family: str, tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    rig = make_rig(family, ledger=Ledger.open(path)).signed_on()
    rrns = [rig.send(rig.term.purchase(f"{stan:06d}")).response[37] for stan in range(1, 201)]
    auth_codes = {rig.ledger.posting(int(rrn)).auth_code for rrn in rrns}
    assert len(set(rrns)) == 200 and len(auth_codes) == 200
    rig.ledger.flush()
    restarted = make_rig(family, ledger=Ledger.open(path)).signed_on()  # the first object is abandoned
    more = [restarted.send(restarted.term.purchase(f"{stan:06d}")).response[37] for stan in range(201, 211)]
    assert not set(more) & set(rrns)
    assert min(more) > max(rrns)


@pytest.mark.parametrize(("amount", "expiry", "expected"), [
    (0, None, "13"),
    (1000, "2505", "54"),  # May 2025, host date June 2025
    (1000, "2412", "54"),
    (1000, "2506", "00"),  # valid to the end of its month
    (1000, "3001", "00"),
])
def test_amount_and_expiry(rig: Rig, amount: int, expiry: str | None, expected: str) -> None:
    extra = {"f14": expiry} if expiry else {}
    decision = rig.send(rig.term.purchase("000001", amount=amount, **extra))
    assert code(decision) == expected
    [posting] = rig.ledger.postings()
    assert (posting.response_code, posting.approved) == (expected, expected == "00")
    assert decision.commit_seq == posting.seq


def test_expiry_from_track2() -> None:
    assert card_expiry({35: "4200000000000000=25051010000"}) == "2505"
    assert card_expiry({35: "4200000000000000D30121010000"}) == "3012"
    assert card_expiry({14: "2701", 35: "4200000000000000=25051010000"}) == "2701"
    assert card_expiry({35: "4200000000000000=99991010000"}) is None
    assert card_expiry({35: "4200000000000000"}) is None
    assert card_expiry({}) is None


@pytest.mark.parametrize(("offset", "config", "expected"), [
    (0, {}, "00"),
    (-299, {}, "00"),
    (299, {}, "00"),
    (-301, {}, "22"),
    (301, {}, "22"),
    (-3600, {"stale_window": 7200.0}, "00"),
    (-400, {"stale_code": "68"}, "68"),
])
def test_stale_transmission_time(offset: int, config: dict, expected: str) -> None:
    rig = make_rig("iso87", stale_check=True, **config).signed_on()
    f7 = f7_at(NOW + timedelta(seconds=offset))
    decision = rig.send(rig.term.purchase("000001", f7=f7))
    assert code(decision) == expected
    assert decision.outcome == ("approved" if expected == "00" else "stale")


@pytest.mark.parametrize(("now", "f7", "expected"), [
    (datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC), "1231235959", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
    (datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC), "0101000001", datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)),
    (datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC), "0601115900", datetime(2025, 6, 1, 11, 59, 0, tzinfo=UTC)),
    (datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC), "0229235959", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
    (datetime(2026, 6, 1, 0, 0, 0, tzinfo=UTC), "0229000000", None),  # no leap year among 2025-2027
])
def test_transmission_year_inference(now: datetime, f7: str, expected: datetime | None) -> None:
    assert transmission_datetime(f7, now) == expected


def test_new_year_wrap_is_not_stale() -> None:
    now = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    rig = make_rig("iso87", stale_check=True).signed_on()
    assert code(rig.send(rig.term.purchase("000001", f7="1231235959"), now)) == "00"


def test_leap_day_far_from_any_leap_year_is_stale() -> None:
    now = datetime(2026, 6, 1, 0, 0, 0, tzinfo=UTC)
    rig = make_rig("iso87", stale_check=True).signed_on()
    assert rig.send(rig.term.purchase("000001", f7="0229000000"), now).outcome == "stale"


def test_response_rules(rig: Rig) -> None:
    declined = rig.send(rig.term.purchase("000001", pan=DECLINE_51))
    assert (declined.outcome, code(declined), declined.response[44]) == ("declined", "51", "NSF")
    assert 38 not in declined.response
    partial = rig.send(rig.term.purchase("000002", amount=2000, pan=PARTIAL_CARD))
    assert (partial.outcome, code(partial), partial.response[4]) == ("approved", "10", "000000000500")
    postings = rig.ledger.postings()
    assert [(p.response_code, p.approved, p.amount) for p in postings] == [
        ("51", False, 1000), ("10", True, 500)]
    assert rig.ledger.batches()[0].debit_amount == 500
    assert "10" in APPROVAL_CODES


def test_no_rules_approves_everything(family: str) -> None:
    rig = make_rig(family, rules=None).signed_on()
    assert code(rig.send(rig.term.purchase("000001", pan=DECLINE_51))) == "00"


# ---------------------------------------------------------------------------------------------
# duplicates


@pytest.mark.parametrize("pan", [GOOD_CARD, DECLINE_51])
def test_duplicate_gets_94_without_second_posting(rig: Rig, pan: str) -> None:
    request = rig.term.purchase("000001", pan=pan)
    first = rig.send(request)
    again = rig.send(request)
    assert (again.outcome, code(again), again.commit_seq) == ("duplicate", "94", first.commit_seq)
    assert 37 not in again.response
    assert len(rig.ledger.postings()) == 1
    later = rig.send(request, NOW + timedelta(hours=1))  # still within the 24h window
    assert code(later) == "94"
    assert len(rig.ledger.postings()) == 1


def test_field_7_is_not_part_of_the_identity_but_local_time_is() -> None:
    rig = make_rig("iso87").signed_on()
    assert code(rig.send(rig.term.purchase("000001", f7=F7))) == "00"
    assert code(rig.send(rig.term.purchase("000001", f7="0601120001"))) == "94"  # a resend: fresh field 7
    assert code(rig.send(rig.term.purchase("000001", f7="0601120001", f12="120001"))) == "00"  # another sale
    assert len(rig.ledger.postings()) == 2


def test_duplicate_window_expires() -> None:
    rig = make_rig("iso87", duplicate_window=10.0, stale_window=1000.0).signed_on()
    request = rig.term.purchase("000001")
    rig.send(request)
    assert code(rig.send(request, NOW + timedelta(seconds=10))) == "94"
    assert code(rig.send(request, NOW + timedelta(seconds=11))) == "00"
    assert len(rig.ledger.postings()) == 2


# ---------------------------------------------------------------------------------------------
# reversals


@pytest.mark.parametrize("mti", ["0400", "0420"])
@pytest.mark.parametrize("with90", [True, False])
def test_reversal_exactly_once(rig: Rig, mti: str, with90: bool) -> None:
    original = rig.term.purchase("000001", amount=1500)
    approved = rig.send(original)
    reversal = rig.term.reversal(original, mti=mti, with90=with90)
    first = rig.send(reversal)
    assert (first.outcome, code(first), first.response[37]) == ("reversed", "00", approved.response[37])
    repeat_mti = mti[:3] + "1"
    for request in (reversal, reversal.copy(mti=repeat_mti),
                    rig.term.reversal(original, stan="000050", mti=mti, with90=True)):
        again = rig.send(request)
        assert (again.outcome, code(again), again.commit_seq) == ("reversal-repeat", "00", first.commit_seq)
    [posting] = rig.ledger.postings()
    assert posting.reversal_seq == first.commit_seq
    [batch] = rig.ledger.batches()
    assert (batch.debit_count, batch.debit_amount) == (0, 0)
    assert (batch.debit_reversal_count, batch.debit_reversal_amount) == (1, 1500)
    assert len(rig.ledger.reversals()) == 1


@pytest.mark.parametrize("unknown_code", ["00", "25"])
def test_reversal_of_declined_and_unknown_originals(family: str, unknown_code: str) -> None:
    rig = make_rig(family, unknown_original_code=unknown_code).signed_on()
    declined = rig.term.purchase("000001", pan=DECLINE_51)
    rig.send(declined)
    nothing = rig.send(rig.term.reversal(declined))
    assert (nothing.outcome, code(nothing)) == ("nothing-to-undo", "00")
    never_seen = rig.term.purchase("000002")
    unknown = rig.send(rig.term.reversal(never_seen))
    assert (unknown.outcome, code(unknown)) == ("original-unknown", unknown_code)
    repeat = rig.send(rig.term.reversal(never_seen, mti="0401"))
    assert (repeat.outcome, code(repeat)) == ("reversal-repeat", unknown_code)
    # the original arrives after its reversal (it was delayed): declined, never posted
    late = rig.send(never_seen)
    assert (late.outcome, code(late)) == ("reversed-before-arrival", "22")
    assert [p.approved for p in rig.ledger.postings()] == [False, False]
    assert rig.ledger.batches()[0].debit_count == 0


def test_reversal_must_match_the_originals_amount() -> None:
    rig = make_rig("iso87").signed_on()
    original = rig.term.purchase("000001", f7=F7)
    rig.send(original)
    other = rig.term.purchase("000001", amount=5, f7="0601115959")  # same STAN, another amount
    decision = rig.send(rig.term.reversal(other))
    assert (decision.outcome, code(decision)) == ("reversal-mismatch", "25")
    assert rig.ledger.postings()[0].reversal_seq is None


def test_reversal_of_authorization_releases_it(rig: Rig) -> None:
    auth = rig.term.purchase("000001", mti="0100")
    rig.send(auth)
    decision = rig.send(rig.term.reversal(auth))
    assert decision.outcome == "reversed"
    assert rig.ledger.postings()[0].reversal_seq == decision.commit_seq
    assert rig.ledger.batches()[0].debit_reversal_count == 0  # authorizations are never in totals


def test_reversal_after_settlement_is_refused(rig: Rig) -> None:
    original = rig.term.purchase("000001")
    rig.send(original)
    assert settle_code(rig, rig.send(rig.term.settle("000002", totals(1, 1000)))) == "00"
    decision = rig.send(rig.term.reversal(original))
    assert (decision.outcome, code(decision)) == ("batch-closed", "12")
    assert rig.send(rig.term.reversal(original, mti="0401")).response[39] == "12"
    assert rig.ledger.postings()[0].reversal_seq is None


def test_rule_refusing_a_reversal_undoes_nothing(family: str) -> None:
    rig = make_rig(family)
    rig.term.tid = "NOREV001"
    rig.signed_on()
    original = rig.term.purchase("000001")
    rig.send(original)
    decision = rig.send(rig.term.reversal(original))
    assert (decision.outcome, code(decision), decision.commit_seq) == ("rule", "96", None)
    assert rig.ledger.reversals() == []
    assert rig.ledger.batches()[0].debit_count == 1


def test_reversal_format_errors(rig: Rig) -> None:
    original = rig.term.purchase("000001")
    rig.send(original)
    assert code(rig.send(_with(rig.term.reversal(original), 90, "0200"))) == "30"
    assert code(rig.send(_without(rig.term.reversal(original), 11))) == "30"
    assert rig.ledger.reversals() == []


# ---------------------------------------------------------------------------------------------
# advices


def test_advice_posted_once(rig: Rig) -> None:
    advice = rig.term.advice("000001", amount=800)
    first = rig.send(advice)
    assert (first.outcome, code(first), first.response[38]) == ("advice-posted", "00", "OFF123")
    for request in (advice, advice.copy(mti="0221"), _with(advice.copy(mti="0221"), 7, "0601120005")):
        again = rig.send(request)
        assert (again.outcome, code(again), again.commit_seq) == ("duplicate-advice", "00", first.commit_seq)
        assert again.response[37] == first.response[37]
    [posting] = rig.ledger.postings()
    assert (posting.kind, posting.amount) == ("advice", 800)
    assert rig.ledger.batches()[0].debit_amount == 800


def test_advice_with_zero_amount(rig: Rig) -> None:
    assert code(rig.send(rig.term.advice("000001", amount=0))) == "13"
    assert rig.ledger.postings() == []


# ---------------------------------------------------------------------------------------------
# settlement and batch upload


def test_settlement_balanced_closes_batch(rig: Rig) -> None:
    term = rig.term
    rig.send(term.purchase("000001", amount=1000))
    rig.send(term.purchase("000002", amount=2500))
    rig.send(term.purchase("000003", amount=300, proc="200000"))
    reversed_one = term.purchase("000004", amount=999)
    rig.send(reversed_one)
    rig.send(term.reversal(reversed_one))
    rig.send(term.purchase("000005", pan=DECLINE_51))
    rig.send(term.purchase("000006", mti="0100"))
    # gross totals with their reversals (ISO); CUP sends the net figures
    decision = rig.send(term.settle("000010", totals(3, 4499, 1, 300, debit_reversal_count=1,
                                                     debit_reversal_amount=999)))
    assert (decision.outcome, settle_code(rig, decision)) == ("balanced", "00")
    batch = rig.ledger.batch_summary("TERM0001", "000001")
    assert (batch.status, batch.closed_seq) == ("closed", decision.commit_seq)
    if rig.family == "iso87":
        assert rig.ledger.current_batch("TERM0001") == "000002"
        rig.send(term.purchase("000011"))
        assert rig.ledger.postings()[-1].batch == "000002"
    else:
        assert code(rig.send(term.purchase("000011"))) == "12"  # CUP batch 000001 is settled
        term.batch = "000002"
        assert code(rig.send(term.purchase("000012"))) == "00"


def test_settlement_unbalanced_keeps_batch_open_and_repeat_same_answer(rig: Rig) -> None:
    rig.send(rig.term.purchase("000001", amount=1000))
    request = rig.term.settle("000010", totals(1, 999))
    decision = rig.send(request)
    assert (decision.outcome, settle_code(rig, decision)) == ("unbalanced", "95")
    assert rig.ledger.batch_summary("TERM0001", "000001").status == "open"
    repeat = rig.send(request.copy(mti="0501"))
    assert (repeat.outcome, settle_code(rig, repeat), repeat.commit_seq) == (
        "settlement-repeat", "95", decision.commit_seq)
    fixed = rig.send(rig.term.settle("000011", totals(1, 1000)))
    assert settle_code(rig, fixed) == "00"
    assert rig.send(rig.term.settle("000011", totals(1, 1000), mti="0501")).outcome == "settlement-repeat"


def test_settlement_after_upload_records_discrepancies(rig: Rig) -> None:
    term = rig.term
    rig.send(term.purchase("000001", amount=1000))  # uploaded as is
    rig.send(term.purchase("000002", amount=2000))  # uploaded with another amount
    rig.send(term.purchase("000003", amount=3000))  # not uploaded
    declined = term.purchase("000004", pan=DECLINE_51)
    rig.send(declined)  # uploaded though declined
    assert settle_code(rig, rig.send(term.settle("000010", totals(4, 8500)))) == "95"
    for stan, amount in (("000001", 1000), ("000002", 2500), ("000004", 1000), ("000099", 4000)):
        decision = rig.send(term.upload(stan, amount))
        assert (decision.outcome, code(decision)) == ("uploaded", "00")
    end = rig.send(term.upload_end("000011"))
    if rig.family == "cup":  # CUP: the end-of-upload 0320 closes the batch itself
        decision = end
        assert (end.outcome, code(end)) == ("accepted-after-upload", "00")
    else:
        assert (end.outcome, code(end)) == ("upload-ended", "00")
        decision = rig.send(term.settle("000011", totals(4, 8500)))
        assert (decision.outcome, settle_code(rig, decision)) == ("accepted-after-upload", "00")
    found = {(d.kind, d.stan, d.ledger_amount, d.upload_amount) for d in rig.ledger.discrepancies()}
    assert found == {
        ("amount-differs", "000002", 2000, 2500),
        ("missing-from-upload", "000003", 3000, None),
        ("not-approved-in-ledger", "000004", 1000, 1000),
        ("unknown-to-ledger", "000099", None, 4000),
    }
    assert decision.commit_seq == max(d.seq for d in rig.ledger.discrepancies())
    batch = rig.ledger.batch_summary("TERM0001", "000001")
    assert (batch.status, batch.upload_count, batch.discrepancies) == ("closed", 4, 4)


def test_settlement_totals_differing_from_upload_are_a_discrepancy(rig: Rig) -> None:
    rig.send(rig.term.purchase("000001", amount=1000))
    if rig.family == "cup":  # CUP: the end-of-upload compares with the 0500 that was answered '2'
        assert settle_code(rig, rig.send(rig.term.settle("000010", totals(2, 2000)))) == "95"
    rig.send(rig.term.upload("000001", 1000))
    decision = rig.send(rig.term.upload_end())
    if rig.family == "iso87":
        decision = rig.send(rig.term.settle("000010", totals(2, 2000)))
        assert settle_code(rig, decision) == "00"
    assert code(decision) == "00" if rig.family == "iso87" else decision.outcome == "accepted-after-upload"
    assert [d.kind for d in rig.ledger.discrepancies()] == ["totals-differ-from-upload"]


def test_upload_validation_and_reupload(rig: Rig) -> None:
    record = rig.term.upload("000001", 1000)
    assert code(rig.send(_without(record, 4))) == "30"
    rig.send(record)
    rig.send(rig.term.upload("000001", 1200))  # a re-sent record replaces the first
    [upload] = rig.ledger.uploads("TERM0001", "000001")
    assert upload.amount == 1200


def test_settlement_rule_leaves_batch_open(family: str) -> None:
    rig = make_rig(family)
    rig.term.tid = "CUTOFF01"
    rig.signed_on()
    rig.send(rig.term.purchase("000001"))
    decision = rig.send(rig.term.settle("000010", totals(1, 1000)))
    assert (decision.outcome, decision.response[39]) == ("rule", "90")
    assert rig.ledger.batch_summary("CUTOFF01", "000001").status == "open"
    assert rig.ledger.settlements() == []


def test_settlement_format_errors(rig: Rig) -> None:
    request = rig.term.settle("000010", totals())
    bad = _with(request, 48, "12345") if rig.family == "cup" else _with(request, 76, "12")
    assert code(rig.send(bad)) == "30"
    if rig.family == "iso87":
        assert code(rig.send(_with(request, 97, "X0000000000000000"))) == "30"


def test_cup_settlement_of_a_closed_batch_resent_with_new_stan() -> None:
    rig = make_rig("cup").signed_on()
    rig.send(rig.term.purchase("000001"))
    assert settle_code(rig, rig.send(rig.term.settle("000010", totals(1, 1000)))) == "00"
    again = rig.send(rig.term.settle("000011", totals(1, 1000)))
    assert (again.outcome, settle_code(rig, again)) == ("already-settled", "00")
    assert settle_code(rig, rig.send(rig.term.settle("000012", totals(2, 1000)))) == "95"


def test_cup_foreign_card_totals_do_not_balance() -> None:
    rig = make_rig("cup").signed_on()
    request = rig.term.msg("0500", {11: "000010", 41: "TERM0001", 60: "00000001201",
                                    48: totals().to_cup48("0", foreign=totals(1, 100))})
    decision = rig.send(request)
    assert settle_code(rig, decision) == "95"
    assert decision.response[48][-1] == "2"


# ---------------------------------------------------------------------------------------------
# unknown MTIs and undecodable requests


@pytest.mark.parametrize(("mti", "expected"), [
    ("0210", None), ("0810", None), ("0430", None), ("0480", None), ("02x0", None), ("020", None), ("", None),
    ("0600", "12"), ("0900", "12"), ("0120", "12"), ("0340", "12"), ("1200", "12"),
])
def test_unknown_and_response_class_mtis(family: str, mti: str, expected: str | None) -> None:
    rig = make_rig(family)
    header = CUP_HEADER if family == "cup" else ""
    decision = rig.host.handle(Message(mti, {11: "000001", 41: "TERM0001"}, header), NOW)
    if expected is None:
        assert (decision.response, decision.outcome) == (None, "dropped")
    else:
        assert (decision.outcome, decision.response[39]) == ("invalid-transaction", expected)
        assert decision.response.mti == mti[:2] + str(int(mti[2]) + 1) + "0"


def test_format_error_echoes_what_was_read(family: str) -> None:
    rig = make_rig(family)
    partial = {"h": CUP_HEADER, "t": "0200", "p": "7000000000000000", "2": GOOD_CARD, "3": "000000",
               "11": "000007", "35": "4200000000000000=3012", "52": "00"}
    if family == "iso87":
        del partial["h"]
    decision = rig.host.format_error("0200", partial, NOW)
    response = decision.response
    assert (decision.outcome, response.mti, response[39]) == ("format-error", "0210", "30")
    assert response.fields == {2: GOOD_CARD, 3: "000000", 11: "000007", 39: "30"}
    assert response.header == (CUP_HEADER if family == "cup" else "")
    CODECS[family].encode(response)
    assert rig.host.format_error("0210", {"t": "0210"}, NOW) is None
    assert rig.host.format_error("", {}, NOW) is None


def test_format_error_leaves_out_the_field_it_failed_in(family: str) -> None:
    """The codec's real partial decode of a frame cut short, and a failure named by the caller."""
    rig = make_rig(family)
    codec = CODECS[family]
    raw = codec.encode(rig.term.purchase("000001"))
    cut = len(raw) - 40
    with pytest.raises(MessageDecodeError) as caught:
        codec.decode(raw[:cut])
    error = caught.value
    decision = rig.host.format_error(error.mti, error.partial, NOW, failed_field=error.field)
    assert decision.response[39] == "30"
    assert error.field not in {str(n) for n in decision.response.fields}
    codec.encode(decision.response)
    without_hint = rig.host.format_error(error.mti, error.partial, NOW)
    codec.encode(without_hint.response)
    named = rig.host.format_error("0200", {"t": "0200", "3": "000000", "11": "000001"}, NOW, failed_field="11")
    assert named.response.fields == {3: "000000", 39: "30"}


# ---------------------------------------------------------------------------------------------
# configuration


def test_config_defaults_and_validation() -> None:
    assert HostConfig().signon_code == "A0"
    assert HostConfig(family="cup").signon_code == "A0"
    assert HostConfig(family="cup", signon_required_code="99").signon_code == "99"
    cup = HostConfig.for_dialect(load_dialect("cup-pos"), stale_window=60)
    assert (cup.family, cup.stale_window) == ("cup", 60)
    with pytest.raises(ValueError, match="unknown host setting 'colour'"):
        HostConfig.for_dialect(load_dialect("iso87-binary"), colour="red")
    for bad in ({"family": "x"}, {"stale_code": "123"}, {"session_timeout": 0}, {"stale_window": -1},
                {"duplicate_window": float("nan")}, {"require_signon": "yes"}, {"institution_id": "12a"},
                {"signon_required_code": ""}, {"unknown_original_code": None}):
        with pytest.raises(ValueError, match="invalid host configuration"):
            HostConfig(**bad)


def test_rrn_and_auth_code_derivation() -> None:
    assert rrn_for(1) == "000000000001"
    assert len({auth_code_for(seq) for seq in range(1, 100_001)}) == 100_000
    assert auth_code_for(1) != auth_code_for(2)


# ---------------------------------------------------------------------------------------------
# properties


def _valid_requests(family: str) -> dict[str, Message]:
    """One well-formed request per handled MTI, for the property below to mutate."""
    term = Terminal(family)
    purchase = term.purchase("000001")
    messages = [term.signon(), term.signon("301"), purchase, term.purchase("000002", mti="0100"),
                term.advice("000003"), term.reversal(purchase), term.upload("000001", 1000),
                term.upload_end(), term.settle("000010", totals(1, 1000))]
    return {m.mti: m for m in messages} | {"0800-echo": messages[1], "0320-end": messages[7]}


LENIENT_REQUIRED = {"financial": (4, 11), "reversal": (11,), "upload": (11,), "settlement": (11,), "network": ()}
VALID_REQUESTS = {family: _valid_requests(family) for family in FAMILIES}
KNOWN_MTIS = ["0100", "0101", "0200", "0201", "0220", "0221", "0320", "0321", "0400", "0401", "0420", "0421",
              "0500", "0501", "0800", "0801", "0210", "0600"]
field_values = st.one_of(
    st.text(max_size=24),
    st.text(alphabet="0123456789", max_size=20),
    st.sampled_from(["", "0", "000000", "000000000000", F7, "0229000000", "2200000100", "00000001201",
                     "00000001202", "001", "002", "301", "202", "9" * 42, "0200" + "0" * 38, "A" * 17,
                     "C0000000000000000", "0" * 62, "0" * 31, "2" * 31, "3012", "2401", "310000", "200000",
                     "23000001000", "25000001000", "000001000001" + "0" * 30, "0000010000010302"]),
)


HOST_SETTING_VALUES = st.fixed_dictionaries({}, optional={
    "resend_answer": st.sampled_from(["94", "original"]),
    "settlement_compare": st.sampled_from(["net", "gross"]),
    "luhn_code": st.sampled_from([None, "14"]),
    "timezone": st.sampled_from(["UTC", "+08:00", "-05:30", "+14:00"]),
    "unknown_original_code": st.sampled_from(["00", "25"]),
    "reversal_mismatch_code": st.sampled_from(["25", "12"]),
    "duplicate_window": st.sampled_from([0, 1, 86400]),
    "session_timeout": st.sampled_from([None, 1, 3600]),
    "stale_window": st.sampled_from([1, 300]),
    "balance": st.sampled_from([0, 10**12 - 1]),
    "signon_required_code": st.sampled_from(["A0", "58"]),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(FAMILIES), base=st.sampled_from(sorted(VALID_REQUESTS["iso87"])),
       mti=st.one_of(st.none(), st.sampled_from(KNOWN_MTIS), st.text(max_size=5)),
       drop=st.sets(st.integers(2, 128), max_size=3),
       noise=st.dictionaries(st.integers(2, 128), field_values, max_size=3),
       header=st.one_of(st.none(), st.text(max_size=14)), signed_on=st.booleans(),
       offset=st.one_of(st.just(0), st.integers(-400 * 86400, 400 * 86400)), lenient=st.booleans(),
       host_settings=HOST_SETTING_VALUES)
def test_handle_never_raises(family: str, base: str, mti: str | None, drop: set[int], noise: dict[int, str],
                             header: str | None, signed_on: bool, offset: int, lenient: bool,
                             host_settings: dict[str, object]) -> None:
    """Arbitrary field dicts never make the host raise; most examples stay close to valid requests
    so that every handler is reached, not only the format checks. ``lenient``: with almost nothing
    mandatory (the lenient scenario's settings), so handlers meet requests missing any field.
    ``host_settings``: any value of every other ``[host]`` setting that changes a decision path."""
    settings = {"required_fields": LENIENT_REQUIRED, "stale_check": True} if lenient else {}
    rig = make_rig(family, require_signon=not signed_on, **settings, **host_settings)
    template = VALID_REQUESTS[family][base]
    mti = template.mti if mti is None else mti
    fields = {k: v for k, v in template.fields.items() if k not in drop} | noise
    header = template.header if header is None else header
    now = NOW + timedelta(seconds=offset)
    for request in (template, Message(mti, fields, header), Message(mti, dict(fields), header)):
        decision = rig.host.handle(request, now)
        assert isinstance(decision.outcome, str) and decision.reason
        assert decision.commit_seq is None or decision.commit_seq <= rig.ledger.pending_seq
        if decision.response is not None:
            assert decision.response.mti[:2] == request.mti[:2]
    rig.host.format_error(mti, {str(k): v for k, v in fields.items()} | {"t": mti, "h": header}, now)


# A random day of traffic: purchases, refunds, declines, duplicates, reversals (once, repeated, of
# unknown originals), advices and settlements; then the invariants and a replay from disk.
operation = st.one_of(
    st.tuples(st.just("purchase"), st.integers(0, 5000), st.sampled_from([GOOD_CARD, GOOD_CARD, DECLINE_51]),
              st.sampled_from(["000000", "200000"])),
    st.tuples(st.just("duplicate"), st.integers(0, 50)),
    st.tuples(st.just("reverse"), st.integers(0, 50), st.sampled_from(["0400", "0401", "0420", "0421"]),
              st.booleans()),
    st.tuples(st.just("reverse-unknown"), st.integers(0, 5000)),
    st.tuples(st.just("reverse-partial"), st.integers(0, 50), st.integers(0, 6000)),
    st.tuples(st.just("advice"), st.integers(1, 5000), st.booleans()),
    st.tuples(st.just("settle"), st.booleans()),
    st.tuples(st.just("authorize"), st.integers(1, 5000)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(FAMILIES), operations=st.lists(operation, max_size=40))
def test_ledger_totals_are_approved_not_reversed(family: str, operations: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.sqlite"
        rig = make_rig(family, ledger=Ledger.open(path)).signed_on()
        term = rig.term
        sent: list[Message] = []
        advices: list[Message] = []
        stan = 0

        def next_stan() -> str:
            nonlocal stan
            stan += 1
            return f"{stan:06d}"

        for op in operations:
            kind = op[0]
            if kind == "purchase":
                message = term.purchase(next_stan(), amount=op[1], pan=op[2], proc=op[3])
                sent.append(message)
                rig.send(message)
            elif kind == "authorize":
                message = term.purchase(next_stan(), amount=op[1], mti="0100")
                sent.append(message)
                rig.send(message)
            elif kind == "duplicate" and sent:
                decision = rig.send(sent[op[1] % len(sent)])
                assert decision.outcome in ("duplicate", "batch-closed")
            elif kind == "reverse" and sent:
                rig.send(term.reversal(sent[op[1] % len(sent)], mti=op[2], with90=op[3]))
            elif kind == "reverse-partial" and sent:
                partial = term.reversal(sent[op[1] % len(sent)])
                partial.fields[95] = f"{op[2]:012d}" + "0" * 30  # the actual amount: may keep all, or none
                rig.send(partial)
            elif kind == "reverse-unknown":
                rig.send(term.reversal(term.purchase(f"{900000 + op[1]:06d}")))
            elif kind == "advice":
                if op[2] and advices:
                    assert rig.send(advices[-1].copy(mti="0221")).outcome in ("duplicate-advice",)
                else:
                    message = term.advice(next_stan(), amount=op[1])
                    advices.append(message)
                    rig.send(message)
            elif kind == "settle":
                summary = rig.ledger.batch_summary("TERM0001", rig.ledger.current_batch("TERM0001")
                                                   if family == "iso87" else term.batch)
                wrong = totals(summary.debit_count + 1, summary.debit_amount)
                claimed = summary.net_totals if op[1] else wrong
                decision = rig.send(term.settle(next_stan(), claimed))
                if decision.outcome == "balanced" and family == "cup":
                    term.batch = f"{int(term.batch) + 1:06d}"
        _check_invariants(rig.ledger)
        rig.ledger.flush()
        replayed = Ledger.open(path)
        assert replayed.postings() == rig.ledger.postings()
        assert replayed.batches() == rig.ledger.batches()
        assert replayed.reversals() == rig.ledger.reversals()
        assert replayed.settlements() == rig.ledger.settlements()
        assert replayed.next_sequence() == rig.ledger.pending_seq + 1
        replayed.close()
        rig.ledger.close()


def _check_invariants(ledger: Ledger) -> None:
    postings = ledger.postings()
    for batch in ledger.batches():
        mine = [p for p in postings if p.terminal == batch.terminal and p.batch == batch.batch]
        debits = [p for p in mine if p.captured and p.direction == "debit"]
        credits = [p for p in mine if p.captured and p.direction == "credit"]
        # a partially reversed sale is still one sale, for what it still captures
        assert (batch.debit_count, batch.debit_amount) == (len(debits), sum(map(ledger.captured_amount, debits)))
        assert (batch.credit_count, batch.credit_amount) == (len(credits), sum(map(ledger.captured_amount, credits)))
        settled = [p for p in mine if p.approved and p.kind != "authorization"]
        gross = batch.gross_totals  # gross − reversals = net, column by column
        assert gross.debit_amount == sum(p.amount for p in settled if p.direction == "debit")
        assert gross.credit_amount == sum(p.amount for p in settled if p.direction == "credit")
        assert gross.netted() == batch.net_totals
    reversals = {r.seq: r for r in ledger.reversals()}
    undone = [r.original_seq for r in reversals.values() if r.effect in ("reversed", "partially-reversed")]
    assert len(undone) == len(set(undone))  # nothing reversed twice
    for posting in postings:
        if posting.reversal_seq is not None:
            assert posting.approved
            assert reversals[posting.reversal_seq].effect == "reversed"
            assert reversals[posting.reversal_seq].original_seq == posting.seq
    keys = [(p.terminal, p.stan, p.identity) for p in postings]
    assert len(keys) == len(set(keys))  # a duplicate (same identity: field 7 is not part of it) never posted twice
    assert len({p.rrn for p in postings}) == len(postings)
