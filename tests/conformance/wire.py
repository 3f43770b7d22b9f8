"""Conversations with the pure host: what a terminal sends, what the host answers, what the ledger holds.

Every request and response goes through the family's real codec (encode → decode), so a conversation
proves the answer can travel on the wire, not just that a dict was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from switch.codec import Codec, Message, load_dialect
from switch.codec.composite import OriginalData, SettlementTotals
from switch.host import Decision, Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import load_scenario

NOW = datetime(2026, 3, 2, 9, 30, 0, tzinfo=UTC)
CARD = "4200000000000000"
OTHER_CARD = "6270000000000000"
TID = "TERM0001"
MID = "MERCHANT0000001"
CUP_HEADER = "603100000000"
DIALECTS = {"iso87": "iso87-binary", "cup": "cup-pos"}
CODECS = {family: Codec(load_dialect(name)) for family, name in DIALECTS.items()}


def wire(family: str, message: Message) -> Message:
    """The message as the other side decodes it."""
    codec = CODECS[family]
    return codec.decode(codec.encode(message))


@dataclass
class Conversation:
    """One terminal talking to a host over its family's codec."""

    family: str
    host: Host
    ledger: Ledger
    clock: datetime = NOW
    batch: str = "000001"
    stan: int = 0
    log: list[tuple[Message, Message | None]] = field(default_factory=list)
    last: Decision | None = None

    @property
    def cup(self) -> bool:
        return self.family == "cup"

    def next_stan(self) -> str:
        self.stan += 1
        return f"{self.stan:06d}"

    def tick(self, seconds: float = 1.0) -> None:
        self.clock += timedelta(seconds=seconds)

    def send(self, mti: str, fields: dict[int, str]) -> Message:
        """Send a request; the decoded response (a test that expects silence uses ``host.handle``)."""
        request = wire(self.family, Message(mti, dict(fields), CUP_HEADER if self.cup else ""))
        decision = self.host.handle(request, self.clock)
        self.last = decision
        assert decision.response is not None, decision.reason
        if decision.commit_seq is not None:
            self.ledger.flush()  # what the server does before the answer leaves (group commit)
            assert self.ledger.is_committed(decision.commit_seq)
        response = wire(self.family, decision.response)
        self.log.append((request, response))
        return response

    # -- messages a terminal of this family builds ---------------------------------------------

    def f60(self, txn_type: str, code: str = "000") -> str:
        return txn_type + self.batch + code

    def signon(self) -> Message:
        if self.cup:
            return self.send("0800", {11: self.next_stan(), 41: TID, 42: MID, 60: self.f60("00", "001")})
        return self.send("0800", {7: self.f7(), 11: self.next_stan(), 41: TID, 70: "001"})

    def f7(self) -> str:
        return self.clock.strftime("%m%d%H%M%S")

    def sale(self, amount: int = 1000, *, stan: str | None = None, pan: str = CARD, mti: str = "0200",
             proc: str = "000000", local: tuple[str, str] | None = ("093000", "0302"), **extra: str) -> dict[int, str]:
        """The fields of a purchase (not sent: ``send(mti, fields)`` does that)."""
        fields = {2: pan, 3: proc, 4: f"{amount:012d}", 11: stan or self.next_stan(), 22: "021", 25: "00",
                  41: TID, 42: MID, 49: "156" if self.cup else "840"}
        if local is not None:
            fields[12], fields[13] = local
        if self.cup:
            fields[60] = self.f60("22")
        else:
            fields[7] = self.f7()
        fields.update({int(k[1:]): v for k, v in extra.items()})
        return fields

    def reversal(self, original: dict[int, str], mti: str = "0400", **extra: str) -> dict[int, str]:
        """ISO: a copy with field 90 naming the original; CUP: same STAN, no field 90 (冲正)."""
        fields = {k: v for k, v in original.items() if k not in (35, 36, 52, 53, 55, 14)}
        fields[39] = "98"
        if self.cup:
            fields[60] = self.f60("22")
        else:
            fields[90] = OriginalData(mti.replace("4", "2", 1)[:2] + "00", original[11], original[7], "", "").format()
            fields[7] = self.f7()
        fields.update({int(k[1:]): v for k, v in extra.items()})
        return fields

    def settle(self, totals: SettlementTotals, proc: str = "920000") -> Message:
        if self.cup:
            return self.send("0500", {11: self.next_stan(), 41: TID, 42: MID, 48: totals.netted().to_cup48("0"),
                                      60: self.f60("00", "201")})
        return self.send("0500", {3: proc, 7: self.f7(), 11: self.next_stan(), 41: TID, 42: MID,
                                  **totals.to_iso_fields()})

    def upload(self, original: dict[int, str]) -> Message:
        fields = {2: original[2], 3: original[3], 4: original[4], 11: self.next_stan(), 41: TID, 42: MID}
        if self.cup:
            fields[60] = self.f60("00", "201")
            fields[61] = self.batch + original[11]
        else:
            fields[90] = OriginalData("0200", original[11], original[7], "", "").format()
        return self.send("0320", fields)

    def upload_end(self, balanced: bool = False) -> Message:
        code = "202" if balanced else "207"
        if self.cup:
            return self.send("0320", {11: self.next_stan(), 41: TID, 42: MID, 60: self.f60("00", code)})
        return self.send("0320", {11: self.next_stan(), 41: TID, 42: MID, 70: code})

    def settlement_result(self, response: Message) -> str:
        """ISO: field 39. CUP: field 48's flag as the ISO code it stands for ('1' → 00, '2' → 95)."""
        if self.cup:
            assert 39 not in response
            return {"1": "00", "2": "95"}[SettlementTotals.from_cup48(response[48])[1]]
        return response[39]

    # -- what the ledger holds -----------------------------------------------------------------

    def charged(self) -> int:
        """Net debits still charged in the terminal's open and closed batches."""
        return sum(b.debit_amount - b.credit_amount for b in self.ledger.batches(TID))


def talk(family: str, scenario: str | None = None, signed_on: bool = True, **config: object) -> Conversation:
    """A fresh host (in-memory ledger, the scenario's settings and rules) and a terminal talking to it."""
    settings: dict[str, object] = {}
    rules = None
    if scenario is not None:
        loaded = load_scenario(scenario)
        settings.update(loaded.host)
        rules = loaded.response_rules
    settings.update(config)
    ledger = Ledger.open(":memory:")
    conversation = Conversation(family, Host(HostConfig(family=family, **settings), ledger, rules), ledger)  # type: ignore[arg-type]
    if signed_on:
        assert conversation.signon()[39] == "00"
    return conversation
