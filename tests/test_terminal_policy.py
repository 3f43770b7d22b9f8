"""The terminal policy's rules on a virtual clock, crash safety, and a stateful consistency proof.

Everything runs against ``FakeHost``, a small acquirer host over dict ledgers written here (not
``switch.host``: the terminal must work against any host speaking the dialect; the integration with
the real host is another test's job). Every message travels through the real codec of the dialect,
so whatever the policy builds is proven encodable. Time is a plain float moved by the harness.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from switch.codec import Codec, MessageDecodeError, load_dialect
from switch.codec.composite import CupField60, CupHeader, OriginalData, SettlementTotals
from switch.codec.message import Message
from terminal.clock import SyncedClock
from terminal.policy import (
    AwaitConfirmation,
    AwaitReply,
    BalanceInquiry,
    Connect,
    Drain,
    Echo,
    Finished,
    Idle,
    OfflineSale,
    Outcome,
    PolicyError,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Send,
    Settle,
    SignOff,
    SignOn,
    Sleep,
    TerminalPolicy,
    card_problem,
    luhn_valid,
)
from terminal.profile import ProfileError, TerminalProfile
from terminal.store import TerminalStore

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
PAN = "4111111111111111"
EXPIRY = "2712"
TID = "T0000001"
LATENCY = 0.05
_SHM = Path("/dev/shm")
TMP_ROOT = str(_SHM) if _SHM.is_dir() else None  # tmpfs: fsync is cheap, durability semantics the same


# ---------------------------------------------------------------------------------------------
# A small host over dict ledgers


@dataclass
class Posting:
    stan: str
    f7: str
    kind: str
    direction: str
    amount: int
    approved: bool
    batch: str
    reversed: bool = False

    @property
    def moved(self) -> bool:
        return self.approved and not self.reversed


@dataclass
class FakeHost:
    """Answers like a careful acquirer: sign-on gate, duplicates (94), reversal by field 90 exactly
    once (remembering unknown originals so a late one is not posted), advices once per STAN,
    settlement against NET totals with upload and repeat handling. Amounts ending in 13 get 51."""

    family: str
    sessions: set[str] = field(default_factory=set)
    postings: dict[tuple[str, str], Posting] = field(default_factory=dict)
    advice_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    reversals: dict[tuple[str, str], str] = field(default_factory=dict)
    settlements: dict[str, str] = field(default_factory=dict)
    iso_batch: int = 1
    closed: dict[str, SettlementTotals] = field(default_factory=dict)
    upload_ended: set[str] = field(default_factory=set)
    seen: list[Message] = field(default_factory=list)
    reversal_answer: str | None = None  # force an answer to reversals (e.g. "12", "96")
    unbalanced_answers: int = 0  # answer this many settlements 95 whatever the totals

    @property
    def cup(self) -> bool:
        return self.family == "cup"

    @property
    def signon_code(self) -> str:
        return "A0" if self.cup else "58"

    def reply(self, request: Message, code: str | None, demand: bool = False, **extra: str) -> Message:
        fields = {k: v for k, v in request.fields.items() if k not in (14, 35, 36, 52, 53, 55, 64)}
        if code is not None:
            fields[39] = code
        fields.update({int(k.removeprefix("f")): v for k, v in extra.items()})
        header = ""
        if self.cup:
            header = CupHeader.DEFAULT.with_requirement("3" if demand else "0").format()
        return Message(request.response_mti, dict(sorted(fields.items())), header)

    def batch_of(self, request: Message) -> str:
        return request[60][2:8] if self.cup else f"{self.iso_batch:06d}"

    def net_totals(self, batch: str) -> SettlementTotals:
        moved = [p for p in self.postings.values() if p.batch == batch and p.moved and p.kind != "authorization"]
        debits = [p.amount for p in moved if p.direction == "debit"]
        credits = [p.amount for p in moved if p.direction == "credit"]
        return SettlementTotals(len(debits), sum(debits), len(credits), sum(credits))

    def moved(self, key: tuple[str, str]) -> bool:
        posting = self.postings.get(key)
        return posting is not None and posting.moved

    def handle(self, request: Message) -> Message | None:
        self.seen.append(request)
        mti = request.mti
        terminal = request[41].rstrip()
        if mti == "0800":
            code = request[60][8:11] if self.cup else request[70]
            if code == "001":
                self.sessions.add(terminal)
            elif code == "002":
                self.sessions.discard(terminal)
            return self.reply(request, "00")
        if terminal not in self.sessions:
            return self.reply(request, self.signon_code, demand=True)
        if mti in ("0100", "0200"):
            return self._financial(request)
        if mti in ("0220", "0221"):
            return self._advice(request)
        if mti in ("0400", "0401"):
            return self._reversal(request)
        if mti in ("0320", "0321"):
            return self._upload(request)
        if mti in ("0500", "0501"):
            return self._settlement(request)
        return self.reply(request, "12")

    def _post(self, request: Message, code: str, kind: str) -> Posting:
        key = (request[11], request.get(7, ""))
        posting = Posting(request[11], request.get(7, ""), kind, "credit" if request[3][0] == "2" else "debit",
                          int(request[4]), code == "00", self.batch_of(request))
        self.postings[key] = posting
        return posting

    def _financial(self, request: Message) -> Message:
        if request[3].startswith("31"):  # balance inquiry: nothing posted
            return self.reply(request, "00", f54="0002" + request[49] + "C000000123456")
        if self.cup and request[60][:2] == "23":  # 撤销: a void names its original in 61 (batch + trace)
            return self._void(request)
        key = (request[11], request.get(7, ""))
        if key in self.postings:
            return self.reply(request, "94")
        batch = self.batch_of(request)
        kind = "authorization" if request.mti == "0100" else "purchase"
        if key in self.reversals:  # its reversal overtook it: the terminal gave it up
            self._post(request, "22", kind)
            return self.reply(request, "22", f37=f"{len(self.postings):012d}")
        if batch in self.closed:
            return self.reply(request, "12")
        code = "51" if int(request[4]) % 100 == 13 else "00"
        self._post(request, code, kind)
        extra = {"f37": f"{len(self.postings):012d}"}
        if code == "00":
            extra["f38"] = f"{len(self.postings) * 7919 % 1_000_000:06d}"
        return self.reply(request, code, **extra)

    def _void(self, request: Message) -> Message:
        key = ("void", request[11])
        if key not in self.reversals:
            posting = self.postings.get((request[61][6:12], ""))
            if posting is None or not posting.moved or posting.batch in self.closed:
                self.reversals[key] = "25" if posting is None else "12"
            else:
                posting.reversed = True
                self.reversals[key] = "00"
        return self.reply(request, self.reversals[key])

    def _advice(self, request: Message) -> Message:
        if request[11] in self.advice_keys:
            return self.reply(request, "00")
        batch = self.batch_of(request)
        if batch in self.closed:
            return self.reply(request, "12")
        self._post(request, "00", "advice")
        self.advice_keys[request[11]] = (request[11], request.get(7, ""))
        return self.reply(request, "00", f37=f"{len(self.postings):012d}")

    def _reversal(self, request: Message) -> Message:
        if self.cup:  # CUP reversals keep the original's STAN and carry no field 90
            assert 90 not in request
            key = (request[11], "")
        else:
            original = OriginalData.parse(request[90])
            key = (original.stan, "" if original.transmission_time == "0" * 10 else original.transmission_time)
        if key in self.reversals:
            return self.reply(request, self.reversals[key])
        if self.reversal_answer is not None:
            return self.reply(request, self.reversal_answer)
        posting = self.postings.get(key)
        if posting is not None and posting.moved:
            if posting.kind != "authorization" and posting.batch in self.closed:
                code = "12"
            else:
                posting.reversed = True
                code = "00"
        else:
            code = "00"  # declined, already reversed, or never seen (remembered)
        self.reversals[key] = code
        return self.reply(request, code)

    def _upload(self, request: Message) -> Message:
        """CUP: the end-of-upload (60.3 202/207) closes the batch; ISO: a record per 0320."""
        batch = self.batch_of(request)
        if self.cup and request[60][8:11] in ("202", "207"):
            self.upload_ended.add(batch)
            if batch not in self.closed:
                self.closed[batch] = self.net_totals(batch)
        elif not self.cup:
            self.upload_ended.add(batch)  # at least one record: a 960000 is then accepted
        return self.reply(request, "00")

    def _settlement(self, request: Message) -> Message:
        stan = request[11]
        if stan not in self.settlements:
            batch = self.batch_of(request)
            if self.cup:
                totals, _ = SettlementTotals.from_cup48(request[48])
            else:
                totals = SettlementTotals.from_iso_fields(request.fields).netted()
            after_upload = not self.cup and request.get(3) == "960000"
            if batch in self.closed:
                code = "00" if totals == self.closed[batch] else "95"
            elif self.unbalanced_answers and batch not in self.upload_ended:
                self.unbalanced_answers -= 1
                code = "95"
            elif (after_upload and batch in self.upload_ended) or totals == self.net_totals(batch):
                self.closed[batch] = self.net_totals(batch)
                self.iso_batch += 0 if self.cup else 1
                code = "00"
            else:
                code = "95"
            self.settlements[stan] = code
        code = self.settlements[stan]
        if self.cup:
            totals, _ = SettlementTotals.from_cup48(request[48])
            return self.reply(request, None, f48=totals.to_cup48("1" if code == "00" else "2"))
        return self.reply(request, code)


# ---------------------------------------------------------------------------------------------
# A synchronous driver with a fault-injecting wire

FAULTS = ("ok", "drop-request", "drop-response", "late-response", "delay-request", "wrong-echo", "garbage",
          "bad-mac", "reset-before", "reset-after", "foreign", "duplicate")


class Harness:
    """Runs the policy the way ``terminal.client`` will: performs actions, feeds events back."""

    def __init__(self, family: str = "iso87", path: str | Path = ":memory:", **profile_settings):
        self.family = family
        self.dialect = load_dialect("cup-pos" if family == "cup" else "iso87-binary")
        self.codec = Codec(self.dialect)
        if family == "iso87":  # this fake ISO host answers 58 to an unsigned terminal: configured as a demand
            profile_settings.setdefault("signon_demand_codes", frozenset({"A0", "99", "58"}))
        self.profile = TerminalProfile.for_dialect(self.dialect, TID, "SHOP01", **profile_settings)
        self.path = str(path)
        self.host = FakeHost(family)
        self.now = T0
        self.store = TerminalStore.open(self.path, TID)
        self.policy = TerminalPolicy(self.profile, self.store, self.now)
        self.sent: list[Send] = []
        self.sent_at: list[float] = []  # the clock when each Send was handed out
        self.actions: list[object] = []
        self.notes: list = []
        self.outcomes: list[Outcome] = []
        self.inbox: list[tuple[str, object]] = []  # what arrives during the current wait
        self.late: list[tuple[float, Message]] = []  # (deliver at or after, reply)
        self.delayed: list[Message] = []  # requests stuck in the network
        self.confirm_after: float | None = 1.0  # when the cardholder confirms an approved sale (None: never)

    # -- lifecycle --------------------------------------------------------------------------------

    def crash_and_restart(self) -> None:
        """The process dies: the policy (all memory) is gone, the connection too; the file stays."""
        self.store.close()
        self.inbox.clear()
        self.late.clear()
        self.now += 5
        self.store = TerminalStore.open(self.path, TID)
        self.policy = TerminalPolicy(self.profile, self.store, self.now)

    def close(self) -> None:
        self.store.close()

    # -- running ----------------------------------------------------------------------------------

    def run(self, command, faults=(), crash_after: int | None = None, max_actions: int = 400) -> Outcome | None:
        faults = list(faults)
        self.policy.start(command, self.now)
        for step in range(max_actions):
            if crash_after is not None and step >= crash_after:
                self.crash_and_restart()
                return None
            action = self.policy.next_action(self.now)
            self.actions.append(action)
            self.notes.extend(self.policy.take_notes())
            if isinstance(action, Finished):
                self.outcomes.append(action.outcome)
                return action.outcome
            fault = faults.pop(0) if faults and isinstance(action, Connect | Send) else "ok"
            self.perform(action, fault)
            self.notes.extend(self.policy.take_notes())
        raise AssertionError(f"{command} did not finish in {max_actions} actions")

    def perform(self, action, fault: str) -> None:
        policy = self.policy
        if isinstance(action, Connect):
            self.now += 0.01
            if fault.startswith("reset"):
                policy.connect_failed(self.now, "connection refused")
            else:
                policy.connection_made(self.now)
        elif isinstance(action, Send):
            self.sent.append(action)
            self.sent_at.append(self.now)
            self.transmit(action, fault)
        elif isinstance(action, AwaitReply):
            self.await_reply(action.deadline)
        elif isinstance(action, Sleep):
            assert action.until > self.now
            self.now = action.until
        elif isinstance(action, AwaitConfirmation):  # confirm_after: None never, else seconds after approval
            if self.confirm_after is not None and self.now + self.confirm_after < action.deadline:
                self.now += self.confirm_after
                policy.cardholder_confirmed(self.now)
            else:
                self.now = action.deadline
        else:
            raise AssertionError(f"unexpected action {action}")

    def _wire(self, message: Message) -> Message:
        return self.codec.decode(self.codec.encode(message))

    def host_handles(self, request: Message) -> Message | None:
        for stuck in self.delayed:  # requests held up in the network reach the host first
            answer = self.host.handle(stuck)
            if answer is not None:
                self.late.append((self.now, self._wire(answer)))
        self.delayed.clear()
        answer = self.host.handle(request)
        return None if answer is None else self._wire(answer)

    def flush_network(self) -> None:
        for stuck in self.delayed:
            self.host.handle(stuck)
        self.delayed.clear()
        self.late.clear()

    def transmit(self, action: Send, fault: str) -> None:
        request = self._wire(action.message)  # proves the policy's message encodes in the dialect
        self.now += 0.01
        if fault == "drop-request":
            return
        if fault == "delay-request":
            self.delayed.append(request)
            return
        if fault == "reset-before":
            self.policy.connection_lost(self.now, "connection reset")
            return
        answer = self.host_handles(request)
        if answer is None:
            return
        if fault == "drop-response":
            return
        if fault == "late-response":
            self.late.append((action.deadline, answer))
        elif fault == "reset-after":
            self.policy.connection_lost(self.now, "connection reset")
        elif fault == "garbage":
            self.inbox.append(("garbage", b"\x00\x01garbage"))
        elif fault == "bad-mac":
            self.inbox.append(("bad-mac", answer))
        elif fault == "wrong-echo":
            self.inbox.append(("message", wrong_echo(answer)))
        elif fault == "foreign":
            self.inbox.append(("message", answer.copy(f41="T9999999")))
            self.inbox.append(("message", answer))
        elif fault == "duplicate":
            self.inbox.append(("message", answer))
            self.inbox.append(("message", answer))
        else:
            self.inbox.append(("message", answer))

    def deliver_late(self) -> None:
        due = [item for item in self.late if item[0] <= self.now]
        self.late = [item for item in self.late if item[0] > self.now]
        for _, message in due:
            self.policy.receive(message, self.now)

    def await_reply(self, deadline: float) -> None:
        self.deliver_late()
        if not self.inbox:
            self.now = max(self.now, deadline)
            self.deliver_late()
            return
        for kind, item in self.inbox:  # all of it arrives; what is not the response gets discarded
            self.now += LATENCY
            if kind == "garbage":
                try:
                    self.codec.decode(item)
                except MessageDecodeError as exc:
                    self.policy.receive_undecodable(self.now, str(exc))
            else:
                self.policy.receive(item, self.now, mac_ok=kind != "bad-mac")
        self.inbox.clear()

    # -- views ------------------------------------------------------------------------------------

    def sent_mtis(self) -> list[str]:
        return [s.message.mti for s in self.sent]

    def note_kinds(self) -> list[str]:
        return [n.kind for n in self.notes]

    def journal(self):
        return {(e.stan, e.transmission_time): e for e in self.store.entries()}

    def assert_consistent(self) -> None:
        """For every transaction the host and the terminal agree whether money moved; nothing
        moved that the terminal does not know of (so nothing was posted twice)."""
        journal = self.journal()
        for key, entry in journal.items():
            assert entry.money_moved is not None, f"undecided after draining: {entry}"
            assert self.host.moved(key) == entry.money_moved, (key, entry.state, self.host.postings.get(key))
            if entry.money_moved:
                assert self.host.postings[key].amount == entry.amount
        for key, posting in self.host.postings.items():
            if posting.moved:
                assert key in journal and journal[key].money_moved, f"host moved {key} the terminal never knew"


def wrong_echo(answer: Message) -> Message:
    if 4 in answer:
        return answer.copy(f4=f"{int(answer[4]) + 1:012d}")
    if 3 in answer:
        return answer.copy(f3="999999")
    return answer.copy(f11="000000")  # no longer the response at all


@pytest.fixture
def harness(tmp_path):
    made: list[Harness] = []

    def make(family: str = "iso87", **profile_settings) -> Harness:
        h = Harness(family, tmp_path / f"{family}-{len(made)}.sqlite", **profile_settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def purchase(amount: int = 1234, **kw) -> Purchase:
    return Purchase(amount, kw.pop("pan", PAN), kw.pop("expiry", EXPIRY), **kw)


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


# ---------------------------------------------------------------------------------------------
# Settlement


def test_settlement_totals_come_from_the_journal(harness):
    h = harness()
    h.run(purchase(1000))
    h.run(purchase(2000))
    h.run(ReverseLast())  # reversed: not counted
    h.run(Refund(300, PAN, EXPIRY))
    h.run(PreAuthorization(5000, PAN, EXPIRY))  # authorizations are never settled
    h.run(purchase(1113))  # declined
    h.run(OfflineSale(400, PAN, EXPIRY))
    outcome = h.run(Settle())
    assert outcome.kind == "approved" and outcome.batch == "000001" and outcome.meaning == "balanced"
    request = h.sent[-1].message
    assert (request.mti, request[3]) == ("0500", "920000")
    totals = SettlementTotals.from_iso_fields(request.fields)
    # ISO reading: gross in 74/76 and 86/88, the voided purchase also in the reversal columns 77/89
    assert totals == SettlementTotals(debit_count=3, debit_amount=3400, credit_count=1, credit_amount=300,
                                      debit_reversal_count=1, debit_reversal_amount=2000)
    assert (request[75], request[87]) == ("0" * 10, "0" * 16)
    assert request[97] == "D" + f"{1100:016d}"  # net = gross − reversals
    totals = totals.netted()
    assert h.store.batch == "000002"
    assert h.host.closed["000001"] == totals
    h.assert_consistent()


def test_settlement_mismatch_uploads_then_settles_after_upload_and_reports_unbalanced(harness):
    h = harness()
    h.run(purchase(1000))
    h.run(purchase(2000))
    entry = h.store.entries()[-1]
    h.store.update_entry(entry.id, now=h.now, amount=1999)  # the terminal's journal disagrees
    outcome = h.run(Settle())
    # never "balanced": unbalanced, uploaded, closed by the host, operator told what to do
    assert outcome.kind == "unbalanced" and outcome.response_code == "00"
    assert outcome.text.startswith("settlement unbalanced: uploaded, contact the acquirer")
    assert outcome.meaning != "balanced" and "closed batch 000001" in outcome.text
    # the fake host echoes the request's totals: an echo is not the host's own figures
    assert "the host gave no totals; the terminal's were debits 2 / 29.99, credits 0 / 0.00" in outcome.text
    assert h.sent_mtis()[-4:] == ["0500", "0320", "0320", "0500"]
    first, record1, record2, second = (s.message for s in h.sent[-4:])
    assert (first[3], second[3]) == ("920000", "960000")
    assert OriginalData.parse(record1[90]).stan == h.store.entries()[0].stan
    assert record2[4] == "000000001999" and record1[37] == h.store.entries()[0].rrn
    assert 70 not in record1 and 70 not in record2  # no ISO end-of-upload 0320 any more
    assert second[11] != first[11]  # a new settlement, not a repeat
    assert "upload-started" in h.note_kinds()
    assert h.store.batch == "000002"  # closed because the host closed it


def test_settlement_reports_the_differences_when_the_host_gives_its_totals(harness):
    h = harness()
    h.run(purchase(1000))
    h.store.update_entry(h.store.entries()[-1].id, now=h.now, amount=1250)
    original = h.host.handle

    def with_totals(request: Message) -> Message | None:
        answer = original(request)
        if answer is not None and request.mti == "0500" and answer.get(39) == "95":
            return answer.copy(**{f"f{n}": v for n, v in SettlementTotals(1, 1000, 0, 0).to_iso_fields().items()})
        return answer

    h.host.handle = with_totals  # type: ignore[method-assign]
    outcome = h.run(Settle())
    assert outcome.kind == "unbalanced"
    assert "terminal − host: debits +0 / +2.50" in outcome.text


def test_settlement_after_upload_declined_keeps_the_batch_open(harness):
    h = harness()
    h.run(purchase(1000))
    h.store.update_entry(h.store.entries()[-1].id, now=h.now, amount=999)
    original = h.host.handle
    h.host.handle = lambda r: (h.host.reply(r, "12") if r.mti == "0500" and r[3] == "960000"  # type: ignore
                               else original(r))
    outcome = h.run(Settle())
    assert (outcome.kind, outcome.response_code) == ("declined", "12")
    assert "batch 000001 stays open" in outcome.text
    assert h.store.batch == "000001" and h.store.pending_settlement is None


def test_cup_settlement_reads_the_flag_in_field_48(harness):
    h = harness("cup")
    h.run(purchase(1000))
    entry = h.store.entries()[-1]
    h.store.update_entry(entry.id, now=h.now, amount=999)
    outcome = h.run(Settle())
    assert outcome.kind == "unbalanced" and "contact the acquirer" in outcome.text
    settle, record, end = (s.message for s in h.sent[-3:])
    assert SettlementTotals.from_cup48(settle[48]) == (SettlementTotals(1, 999, 0, 0), "0")
    assert CupField60.parse(settle[60]) == CupField60("00", "000001", "201")
    assert CupField60.parse(record[60]).network_code == "201" and record.mti == "0320"
    assert end.mti == "0320" and CupField60.parse(end[60]).network_code == "207"  # closes: no second 0500
    assert [s.message.mti for s in h.sent].count("0500") == 1
    assert h.store.batch == "000002"
    h.run(purchase(5))
    assert CupField60.parse(h.sent[-1].message[60]).batch == "000002"


def test_cup_balanced_settlement_closes_without_upload(harness):
    h = harness("cup")
    h.run(purchase(1000))
    outcome = h.run(Settle())
    assert (outcome.kind, outcome.meaning) == ("approved", "balanced")
    assert h.sent_mtis()[-1] == "0500" and h.store.batch == "000002"


def test_unanswered_settlement_is_repeated_before_anything_else(harness):
    h = harness(settlement_attempts=2)
    h.run(purchase(1000))
    outcome = h.run(Settle(), faults=["drop-response", "drop-response"])
    assert outcome.kind == "unknown-queued"
    assert h.store.pending_settlement is not None and h.store.batch == "000001"
    # an offline sale made while the settlement is owed (the process dies right after storing it)
    assert h.run(OfflineSale(700, PAN, EXPIRY), crash_after=0) is None
    assert h.run(purchase(2000)).kind == "approved"
    first = h.sent_mtis().index("0500")
    assert h.sent_mtis()[first:] == ["0500", "0501", "0800", "0501", "0220", "0200"]
    assert {s.message[11] for s in h.sent[first:first + 4] if s.message.mti != "0800"} == {h.sent[first].message[11]}
    assert h.store.batch == "000002" and h.store.pending_settlement is None
    advice = next(e for e in h.store.entries() if e.kind == "advice")
    assert advice.batch == "000002"
    assert h.run(Settle()).kind == "approved"
    assert h.host.closed["000002"] == SettlementTotals(2, 2700, 0, 0)
    h.assert_consistent()


def test_settlement_declined(harness):
    h = harness()
    h.run(SignOn())
    original = h.host.handle
    h.host.handle = lambda r: h.host.reply(r, "90") if r.mti == "0500" else original(r)  # type: ignore
    outcome = h.run(Settle())
    assert (outcome.kind, outcome.response_code, outcome.meaning) == ("declined", "90", "cut-off in progress")
    assert h.store.batch == "000001" and h.store.pending_settlement is None


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


# ---------------------------------------------------------------------------------------------
# Crash safety: kill the process between every pair of steps


CRASH_SCENARIOS = {
    "approved purchase": (lambda: purchase(1000), []),
    "purchase without reply": (lambda: purchase(1000), ["ok", "ok", "drop-response", "drop-response"]),
    "declined purchase": (lambda: purchase(1113), []),
    "offline sale": (lambda: OfflineSale(300, PAN, EXPIRY), []),
    "settlement with upload": (Settle, []),
}


@pytest.mark.parametrize("family", ["iso87", "cup"])
@pytest.mark.parametrize("scenario", sorted(CRASH_SCENARIOS))
def test_killed_between_any_two_steps_loses_nothing(tmp_path, family, scenario):
    make, faults = CRASH_SCENARIOS[scenario]
    total = _steps_without_crash(tmp_path / "reference.sqlite", family, scenario)
    for crash_after in range(total):  # after 0 .. all-but-the-last (Finished) actions
        h = Harness(family, tmp_path / f"crash-{crash_after}.sqlite")
        try:
            _prepare(h, scenario)
            stan_before = h.store.last_stan
            sent_before = len(h.sent)
            assert h.run(make(), faults, crash_after=crash_after) is None  # killed
            in_flight = [e for e in h.store.entries() if e.state == "unknown"]
            stored = h.store.reversals()
            restarted_at = len(h.sent)
            outcome = h.run(Drain())
            assert outcome.kind == "completed", outcome
            after = [s.message.mti for s in h.sent[restarted_at:] if s.message.mti != "0800"]
            if stored:
                assert after[0] in ("0400", "0401"), (crash_after, after)  # the stored reversal goes first
                assert {e.id for e in in_flight} <= {r.journal_id for r in stored}
            stans = [s.message[11] for s in h.sent[sent_before:] if s.message.mti[3] == "0"
                     and not (family == "cup" and s.message.mti == "0400")]  # CUP reversals keep the STAN
            assert len(stans) == len(set(stans)), f"STAN reused: {stans}"
            assert h.store.last_stan >= stan_before
            h.flush_network()
            h.assert_consistent()
            forced_95 = h.host.unbalanced_answers > 0  # the crash came before the host's forced 95
            final = h.run(Settle())
            assert final.kind == ("unbalanced" if forced_95 else "approved"), (crash_after, final)
            h.assert_consistent()
        finally:
            h.close()


def _prepare(h: Harness, scenario: str) -> None:
    if scenario == "settlement with upload":
        h.run(purchase(1000))
        h.run(purchase(2000))
        h.host.unbalanced_answers = 1


def _steps_without_crash(path: Path, family: str, scenario: str) -> int:
    make, faults = CRASH_SCENARIOS[scenario]
    h = Harness(family, path)
    try:
        _prepare(h, scenario)
        before = len(h.actions)
        h.run(make(), faults)
        return len(h.actions) - before
    finally:
        h.close()


# ---------------------------------------------------------------------------------------------
# The consistency property: random operations, faults and crashes against the fake host


fault_lists = st.lists(st.sampled_from(FAULTS), max_size=5)
crash_points = st.none() | st.integers(0, 14)
amounts = st.integers(1, 3000) | st.sampled_from([13, 113, 1013])  # ...13 is declined (51)


class TerminalAgainstHost(RuleBasedStateMachine):
    """Whatever happens on the wire or to the process, once the terminal has drained what it owes,
    it and the host agree for every transaction whether money moved, nothing moved twice, and
    the batch settles to the same totals on both sides."""

    family = "iso87"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="terminal-policy-", dir=TMP_ROOT)
        self.h = Harness(self.family, Path(self.tmp) / "terminal.sqlite", reversal_attempts=2,
                         advice_attempts=2, settlement_attempts=2, signon_attempts=2, connect_attempts=2)

    @initialize()
    def sign_on(self) -> None:
        self.h.run(SignOn())

    def _after(self, outcome: Outcome | None) -> None:
        """An outcome the operator saw must already be true on the host."""
        if outcome is None or outcome.journal_id is None:  # crashed mid-operation, or no transaction
            return
        entry = self.h.store.entry(outcome.journal_id)
        moved_at_host = self.h.host.moved((entry.stan, entry.transmission_time))
        if outcome.kind == "approved":
            assert entry.money_moved and moved_at_host
        elif outcome.kind == "reversed" or (outcome.kind == "declined" and outcome.operation != "reverse-last"):
            assert entry.money_moved is False and not moved_at_host

    @rule(kind=st.sampled_from([Purchase, Refund, PreAuthorization]), amount=amounts, faults=fault_lists,
          crash=crash_points)
    def transact(self, kind, amount, faults, crash) -> None:
        self._after(self.h.run(kind(amount, PAN, EXPIRY), faults, crash_after=crash))

    @rule(amount=amounts, faults=fault_lists, crash=crash_points)
    def offline_sale(self, amount, faults, crash) -> None:
        self._after(self.h.run(OfflineSale(amount, PAN, EXPIRY), faults, crash_after=crash))

    def _has_void_target(self) -> bool:
        store = self.h.store
        return any(e.kind != "advice" for e in store.entries(batch=store.batch, states=("approved",)))

    @precondition(_has_void_target)
    @rule(faults=fault_lists, crash=crash_points)
    def void(self, faults, crash) -> None:
        self._after(self.h.run(ReverseLast(), faults, crash_after=crash))

    @rule(faults=fault_lists, crash=crash_points)
    def settle(self, faults, crash) -> None:
        self._after(self.h.run(Settle(), faults, crash_after=crash))

    @rule()
    def host_expires_session(self) -> None:
        self.h.host.sessions.clear()

    @rule(faults=fault_lists)
    def echo(self, faults) -> None:
        self.h.run(Echo(), faults)

    @rule()
    def drain_and_compare(self) -> None:
        self.h.flush_network()
        outcome = self.h.run(Drain())
        assert outcome.kind == "completed", outcome
        self.h.assert_consistent()

    @invariant()
    def stans_are_never_reused_within_the_window(self) -> None:
        first_sends: list[Message] = []
        for sent in self.h.sent:  # a CUP void (0200) is resent unchanged: that is a repeat, not a reuse
            if sent.message.mti[3] == "0" and sent.message not in first_sends:
                first_sends.append(sent.message)
        keys = [(m[11], m.get(7, ""), m.mti == "0400" and self.h.family == "cup") for m in first_sends]
        assert len(keys) == len(set(keys))

    def teardown(self) -> None:
        try:
            self.h.flush_network()
            assert self.h.run(Drain()).kind == "completed"
            self.h.assert_consistent()
            batch = self.h.store.batch
            outcome = self.h.run(Settle())
            assert outcome.kind == "approved", outcome
            captured = [e for e in self.h.store.entries(batch=batch) if e.captured]
            debits = [e.amount for e in captured if e.direction == "debit"]
            credits = [e.amount for e in captured if e.direction == "credit"]
            terminal_totals = SettlementTotals(len(debits), sum(debits), len(credits), sum(credits))
            host_batch = batch if self.family == "cup" else max(self.h.host.closed)
            assert self.h.host.closed[host_batch] == terminal_totals
            self.h.assert_consistent()
        finally:
            self.h.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class CupTerminalAgainstHost(TerminalAgainstHost):
    family = "cup"


_STATEFUL = settings(max_examples=250, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestTerminalAgainstHost = TerminalAgainstHost.TestCase
TestTerminalAgainstHost.settings = _STATEFUL
TestCupTerminalAgainstHost = CupTerminalAgainstHost.TestCase
TestCupTerminalAgainstHost.settings = settings(_STATEFUL, max_examples=120)


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
