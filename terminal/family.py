"""How each message family shapes the terminal's messages: every ISO-vs-CUP difference in one object.

The policy decides *what* to send and allocates STANs; a ``Family`` decides *which fields* carry
it. Pure: the clock and the batch number are passed in.

| | ISO 8583 (``IsoFamily``) | 银联 CUP POS (``CupFamily``) |
|---|---|---|
| header | none | the CUP header (``profile.cup_header``) |
| 7 transmission time | UTC, host-synced | absent |
| 12/13 local time | on card requests | absent (the 0210 carries them) |
| network management | 0800 field 70 (001/002/301) | 60.3 (001/003/004, 002, 301) |
| transaction type, batch | — | 60.1 / 60.2 |
| reversal | 0400 with its own STAN and field 90 | keeps the original's STAN, no field 90 |
| settlement | 0500 3 = 920000 / 960000, totals 74-89 + 97 | 0500 48 (net totals), 49, 60.3 = 201 |
| settlement answer | field 39 | no 39: 48's flag ('1' balanced, '2' not) |
| after the upload | 0500 960000 | end-of-upload 0320 (60.3 = 207) |
| void (operator) | 0400, 39 = 17, field 90 | 撤销: 0200, 3 = 20xxxx, 60.1 = 23, 37/38 and 61 naming the original |
"""

from __future__ import annotations

from switch.codec.composite import CompositeFieldError, CupField60, CupHeader, OriginalData, SettlementTotals
from switch.codec.message import Message
from terminal.clock import SyncedClock
from terminal.profile import TerminalProfile
from terminal.settlement import AFTER_UPLOAD_CODE, TOTALS_CODE, UPLOAD_END_UNBALANCED, SettlePhase
from terminal.store import JournalEntry

__all__ = ["SECRET_FIELDS", "CupFamily", "Family", "IsoFamily", "family_of"]

SECRET_FIELDS = (35, 36, 45, 52, 53, 55, 64, 128)  # never copied into a reversal (MACs are recomputed)
_NETWORK_CODES = {"signon": "001", "signoff": "002", "echo": "301"}
CUP_VOID = "23"  # 60.1 of a void (撤销)


class Family:
    """The ISO 8583 terminal messages; ``CupFamily`` overrides where CUP differs."""

    name = "iso87"

    def __init__(self, profile: TerminalProfile) -> None:
        self.profile = profile

    # -- every message ------------------------------------------------------------------------

    def header(self) -> str:
        return ""

    def base_fields(self, clock: SyncedClock, now: float, stan: str) -> dict[int, str]:
        """11, 41, 42 and (ISO) 7."""
        return {7: clock.field7(now), 11: stan, 41: self.profile.terminal_id, 42: self.profile.merchant_id}

    def message(self, mti: str, fields: dict[int, str]) -> Message:
        return Message(mti, dict(sorted(fields.items())), self.header())

    # -- requests -------------------------------------------------------------------------------

    def card_fields(self, fields: dict[int, str], clock: SyncedClock, now: float, txn_type: str, batch: str) -> None:
        """What a card request adds for the family: ISO local time 12/13."""
        fields[12], fields[13] = clock.fields_12_13(now)

    def network(self, purpose: str, clock: SyncedClock, now: float, stan: str, batch: str) -> Message:
        """0800 for ``purpose`` (signon, signoff, echo)."""
        fields = self.base_fields(clock, now, stan)
        del fields[42]
        fields[70] = _NETWORK_CODES[purpose]
        return self.message("0800", fields)

    def reversal_of(self, original: Message, reason: str) -> Message:
        """The stored 0400 for ``original``: its fields minus secrets, 39 the reason, 90 naming it."""
        data = OriginalData.format_of(original, self.profile.acquirer_id)
        return original.copy(mti="0400", drop=SECRET_FIELDS, f39=reason, f90=data)

    def first_reversal(self, stored: Message, reason: str, clock: SyncedClock, now: float, new_stan: str) -> Message:
        """The reversal as first transmitted: ISO gives it its own STAN and transmission time."""
        return stored.copy(mti="0400", f11=new_stan, f39=reason, f7=clock.field7(now))

    def reversal_needs_stan(self, stored: Message) -> bool:
        """Whether the first transmission of ``stored`` takes a new STAN."""
        return True

    def repeat_reversal(self, first: Message) -> Message:
        """A retransmission: the repeat MTI (0401), same STAN and field 7."""
        return first.copy(mti="0401")

    def void_of(self, entry: JournalEntry, reason: str) -> Message:
        """What undoes an approved transaction the operator voids: ISO, a 0400 (39 = 17)."""
        return self.reversal_of(entry.request, reason)

    # -- settlement -----------------------------------------------------------------------------

    def settlement(self, fields: dict[int, str], totals: SettlementTotals, batch: str, *, after_upload: bool) -> None:
        fields[3] = AFTER_UPLOAD_CODE if after_upload else TOTALS_CODE
        fields.update(totals.to_iso_fields())

    def rebatch(self, message: Message, batch: str) -> Message:
        """``message`` as part of ``batch`` (ISO requests name no batch: the host keeps it)."""
        return message

    def upload_record(self, fields: dict[int, str], batch: str) -> None:
        """Family fields of a 0320 record (ISO: none beyond the common ones)."""

    def upload_end(self, fields: dict[int, str], batch: str) -> Message:
        raise NotImplementedError("ISO ends a batch upload with 0500 960000, not a 0320")

    @property
    def phase_after_upload(self) -> SettlePhase:
        return SettlePhase.AFTER_UPLOAD

    def settlement_code(self, response: Message) -> str:
        """The settlement answer as a response code (CUP: from 48's flag)."""
        return response.get(39) or ""

    def settlement_answer_problem(self, response: Message) -> str | None:
        return None if response.get(39) is not None else "the reply has no response code (field 39)"

    def demands_signon(self, response: Message) -> bool:
        """Whether the reply's header asks for a new sign-on (CUP's processing requirement 3)."""
        return False


class IsoFamily(Family):
    pass


class CupFamily(Family):
    name = "cup"

    def header(self) -> str:
        return self.profile.cup_header

    def base_fields(self, clock: SyncedClock, now: float, stan: str) -> dict[int, str]:
        """No field 7: CUP POS requests carry none."""
        return {11: stan, 41: self.profile.terminal_id, 42: self.profile.merchant_id}

    def card_fields(self, fields: dict[int, str], clock: SyncedClock, now: float, txn_type: str, batch: str) -> None:
        fields[60] = CupField60(txn_type, batch, "000").format()

    def network(self, purpose: str, clock: SyncedClock, now: float, stan: str, batch: str) -> Message:
        code = self.profile.signon_network_code if purpose == "signon" else _NETWORK_CODES[purpose]
        fields = self.base_fields(clock, now, stan)
        fields[60] = CupField60("00", batch, code).format()
        return self.message("0800", fields)

    def reversal_of(self, original: Message, reason: str) -> Message:
        """冲正: the original's fields and STAN, no field 90; the driver MACs it into 64."""
        return original.copy(mti="0400", drop=SECRET_FIELDS, f39=reason)

    def first_reversal(self, stored: Message, reason: str, clock: SyncedClock, now: float, new_stan: str) -> Message:
        if stored.mti == "0200":  # a void (撤销): a new transaction with its own STAN
            return stored.copy(f11=new_stan)
        return stored.copy(mti="0400", f39=reason)

    def reversal_needs_stan(self, stored: Message) -> bool:
        return stored.mti == "0200"

    def repeat_reversal(self, first: Message) -> Message:
        """A void is sent again as it was (the host answers a resend of the same STAN as the first time)."""
        return first if first.mti == "0200" else first.copy(mti="0401")

    def void_of(self, entry: JournalEntry, reason: str) -> Message:
        """撤销: a new 0200, processing code 20, 60.1 = 23, the original's RRN (37) and auth code (38), and
        61 = the original's batch (61.1) + trace (61.2). 61.3 (original date) is not sent."""
        original = entry.request
        fields = {n: original[n] for n in (2, 14, 22, 25, 32, 41, 42, 49) if n in original}
        fields.update({3: "200000", 4: f"{entry.amount:012d}", 11: original[11],
                       60: CupField60(CUP_VOID, entry.batch, "000").format(), 61: entry.batch + entry.stan})
        if entry.rrn.strip():
            fields[37] = entry.rrn
        if entry.auth_code.strip():
            fields[38] = entry.auth_code.ljust(6)
        return self.message("0200", fields)

    def settlement(self, fields: dict[int, str], totals: SettlementTotals, batch: str, *, after_upload: bool) -> None:
        fields[48] = totals.to_cup48()
        fields[49] = self.profile.currency
        fields[60] = CupField60("00", batch, "201").format()

    def rebatch(self, message: Message, batch: str) -> Message:
        sixty = CupField60.parse(message[60])
        return message.copy(f60=CupField60(sixty.txn_type, batch, sixty.network_code, sixty.rest).format())

    def upload_record(self, fields: dict[int, str], batch: str) -> None:
        fields[60] = CupField60("00", batch, "201").format()

    def upload_end(self, fields: dict[int, str], batch: str) -> Message:
        """End of upload: 60.3 = 207 (the settlement had not balanced: that is why it uploaded)."""
        fields[60] = CupField60("00", batch, UPLOAD_END_UNBALANCED).format()
        return self.message("0320", fields)

    @property
    def phase_after_upload(self) -> SettlePhase:
        return SettlePhase.UPLOAD_END

    def settlement_code(self, response: Message) -> str:
        code = response.get(39) or ""
        if code in ("", "00"):
            _, flag = SettlementTotals.from_cup48(response.get(48) or "")
            return {"1": "00", "2": "95"}.get(flag, "96")
        return code

    def settlement_answer_problem(self, response: Message) -> str | None:
        code = response.get(39)
        if code is None or code == "00":
            try:
                SettlementTotals.from_cup48(response.get(48) or "")
            except CompositeFieldError as exc:
                return f"settlement reply without a readable result: {exc.reason}"
        return None

    def demands_signon(self, response: Message) -> bool:
        try:
            return CupHeader.parse(response.header).needs_sign_on
        except CompositeFieldError:
            return False


def family_of(profile: TerminalProfile) -> Family:
    return CupFamily(profile) if profile.cup else IsoFamily(profile)
