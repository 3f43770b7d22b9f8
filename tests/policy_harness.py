"""What the terminal policy tests share: ``FakeHost``, a small acquirer host over dict ledgers written
here (not ``switch.host``: the terminal must work against any host speaking the dialect; the
integration with the real host is another test's job), and ``Harness``, a synchronous driver with a
fault-injecting wire. Every message travels through the real codec of the dialect, so whatever the
policy builds is proven encodable. Time is a plain float moved by the harness."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from switch.codec import Codec, MessageDecodeError, load_dialect
from switch.codec.composite import CupHeader, OriginalData, SettlementTotals
from switch.codec.message import Message
from terminal.policy import (
    AwaitConfirmation,
    AwaitReply,
    Connect,
    Finished,
    Outcome,
    Purchase,
    Send,
    Sleep,
    TerminalPolicy,
)
from terminal.profile import TerminalProfile
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


def harnesses(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """The ``harness`` fixture of each policy test module: ``harness(family, **profile)`` makes a
    Harness over a store in ``tmp_path``; all are closed at the end."""
    made: list[Harness] = []

    def make(family: str = "iso87", **profile_settings: Any) -> Harness:
        h = Harness(family, tmp_path / f"{family}-{len(made)}.sqlite", **profile_settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def purchase(amount: int = 1234, **kw) -> Purchase:
    return Purchase(amount, kw.pop("pan", PAN), kw.pop("expiry", EXPIRY), **kw)
