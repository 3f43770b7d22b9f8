"""Where ISO 8583 and CUP differ, in one object per family (the rest of the host never asks "is it CUP?").

* where the network management code lives (ISO field 70; CUP 60.3) and which codes sign on;
* which fields each message class requires and which are checked whenever present;
* the batch number (ISO terminals send none: the host keeps one per terminal; CUP's 60.2 rules);
* settlement totals: ISO 74-77/86-89/97 with 39 in the reply; CUP field 48 with the result as its flag;
* the reply header (CUP's processing requirement 3 = sign on again);
* how a stale request is recognised (ISO field 7 UTC, else 12/13 local; CUP 12/13 local);
* the CUP void (60.1 = 23) and refund (60.1 = 25);
* at sign-on: the batch number handed back (CUP 60.2) and the key layout asked for (CUP 60.3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from enum import StrEnum

from switch.codec.composite import CompositeFieldError, CupField60, CupHeader, SettlementTotals
from switch.codec.message import Message
from switch.host.checks import (
    check_amount,
    check_cup60,
    check_expiry,
    check_local_date,
    check_local_time,
    check_n,
    check_pan,
    check_stan,
    check_terminal,
    check_transmission_time,
    is_digits,
    local_datetime,
    transmission_datetime,
)
from switch.ledger import Ledger, next_batch_number
from switch.security import layout_for_network_code

__all__ = ["CupFamily", "Family", "SettlementStep", "family_for"]

Check = Callable[[str], str | None]

_COMMON_CHECKS: dict[int, Check] = {
    2: check_pan, 3: check_n(6), 4: check_amount, 7: check_transmission_time, 11: check_stan,
    12: check_local_time, 13: check_local_date, 14: check_expiry, 41: check_terminal}

_CUP_FLAG = {"00": "1", "95": "2"}  # settlement result → CUP field 48 flag
ISO_TOTAL_FIELDS = (74, 75, 76, 77, 86, 87, 88, 89)
UPLOAD_END_CODES = frozenset({"202", "207"})
SIGN_OFF, ECHO = "002", "301"
CUP_VOID, CUP_REFUND = "23", "25"


class SettlementStep(StrEnum):
    """What a settlement request asks: compare totals, or accept the batch after an upload (ISO 960000)."""

    TOTALS = "totals"
    AFTER_UPLOAD = "after-upload"


class Family:
    """ISO 8583:1987 behaviour; ``CupFamily`` overrides where CUP differs."""

    name = "iso87"
    sign_on_codes: frozenset[str] = frozenset({"001"})
    checks: Mapping[int, Check] = {**_COMMON_CHECKS, 70: check_n(3)}
    required: Mapping[str, tuple[int, ...]] = {
        "financial": (3, 4, 7, 11, 41), "reversal": (7, 11, 41), "upload": (11, 41),
        "settlement": (11, 41), "network": (70,)}
    default_currency = "840"

    def network_code(self, fields: Mapping[int, str]) -> str | None:
        """The network management code of an 08xx / 0320 (None when absent)."""
        return fields.get(70)

    def batch_number(self, fields: Mapping[int, str], ledger: Ledger, terminal: str) -> str:
        """ISO terminals send no batch number: the host keeps the open one per terminal."""
        return ledger.current_batch(terminal)

    def reply_header(self, header: str, requirement: str) -> str:
        return header

    def settlement_step(self, fields: Mapping[int, str]) -> SettlementStep:
        """ISO 0500 with processing code 96xxxx is "totals after upload"; anything else compares."""
        return SettlementStep.AFTER_UPLOAD if fields.get(3, "")[:2] == "96" else SettlementStep.TOTALS

    def terminal_totals(self, fields: Mapping[int, str]) -> tuple[SettlementTotals, SettlementTotals | None]:
        """(the terminal's totals, foreign-card section or None); raises CompositeFieldError."""
        totals = SettlementTotals.from_iso_fields({n: fields[n] for n in (*ISO_TOTAL_FIELDS, 97) if n in fields})
        return totals, None

    def settlement_reply_fields(self, request: Message, code: str, host_totals: SettlementTotals | None
                                ) -> tuple[str | None, dict[int, str]]:
        """(field 39 or None, extra fields) of a settlement answer carrying ``code``: ISO puts the
        host's own totals, when given, in 74-77, 86-89 and 97 (the responder's figures)."""
        return code, host_totals.to_iso_fields() if host_totals is not None else {}

    def upload_closes_batch(self) -> bool:
        """Whether an end-of-upload 0320 closes the batch itself (CUP) or the next 0500 does (ISO)."""
        return False

    def request_time(self, fields: Mapping[int, str], now: datetime, zone: tzinfo
                     ) -> tuple[str, datetime | None] | None:
        """(what was read, the instant it names) for the stale check; None when the request has no time."""
        f7 = fields.get(7)
        if f7 and f7 != "0000000000":
            return f"field 7 {f7}", transmission_datetime(f7, now)
        return _local_time(fields, now, zone)

    def void_or_refund(self, fields: Mapping[int, str]) -> str | None:
        """CUP's 60.1 transaction type when it is a void or refund; ISO has neither (None)."""
        return None

    def signon_batch_fields(self, fields: Mapping[int, str], ledger: Ledger, terminal: str) -> dict[int, str]:
        """Fields a sign-on reply (with profiles) adds about the batch: ISO terminals carry none."""
        return {}

    def requested_key_layout(self, code: str) -> int | None:
        """The working-key layout a sign-on's network code asks for; ISO's 001 asks for none."""
        return None


class CupFamily(Family):
    """银联 CUP POS: field 60, field 48 totals, header processing requirement, no field 7."""

    name = "cup"
    sign_on_codes = frozenset({"001", "003", "004"})
    checks: Mapping[int, Check] = {**_COMMON_CHECKS, 60: check_cup60}
    required: Mapping[str, tuple[int, ...]] = {
        "financial": (3, 4, 11, 41, 60), "reversal": (11, 41, 60), "upload": (11, 41, 60),
        "settlement": (11, 41, 48, 60), "network": (60,)}
    default_currency = "156"

    def __init__(self) -> None:
        self._header_cache: dict[tuple[str, str], str] = {}

    def network_code(self, fields: Mapping[int, str]) -> str | None:
        sixty = fields.get(60)
        return sixty[8:11] if sixty is not None and len(sixty) >= 11 else fields.get(70)

    def batch_number(self, fields: Mapping[int, str], ledger: Ledger, terminal: str) -> str:
        """60.2 is authoritative (validated before this is called); without 60, the host's open batch."""
        sixty = fields.get(60)
        return sixty[2:8] if sixty is not None else ledger.current_batch(terminal)

    def reply_header(self, header: str, requirement: str) -> str:
        key = (header, requirement)
        cached = self._header_cache.get(key)
        if cached is None:
            try:
                parsed = CupHeader.parse(header)
            except CompositeFieldError:
                parsed = CupHeader.DEFAULT
            cached = parsed.with_requirement(requirement).format()
            if len(self._header_cache) >= 256:  # headers come from clients: keep the cache bounded
                self._header_cache.clear()
            self._header_cache[key] = cached
        return cached

    def settlement_step(self, fields: Mapping[int, str]) -> SettlementStep:
        return SettlementStep.TOTALS

    def terminal_totals(self, fields: Mapping[int, str]) -> tuple[SettlementTotals, SettlementTotals | None]:
        if 48 not in fields:
            raise CompositeFieldError(48, "CUP settlement totals (field 48) are missing")
        domestic, _ = SettlementTotals.from_cup48(fields[48])
        if len(fields[48]) == 31:  # domestic section only
            return domestic, None
        return domestic, SettlementTotals.from_cup48(fields[48], foreign=True)[0]

    def settlement_reply_fields(self, request: Message, code: str, host_totals: SettlementTotals | None
                                ) -> tuple[str | None, dict[int, str]]:
        """No field 39: field 48 echoes the totals with the result flag ('1' balanced, '2' not, '3' error)."""
        value = request.fields.get(48)
        if value is None:
            return code, {}
        domestic, _ = SettlementTotals.from_cup48(value)
        flag = _CUP_FLAG.get(code, "3")
        if len(value) > 31:
            foreign, _ = SettlementTotals.from_cup48(value, foreign=True)
            foreign_flag = "1" if foreign == SettlementTotals(0, 0, 0, 0) else "2"
            return None, {48: domestic.to_cup48(flag, foreign=foreign, foreign_flag=foreign_flag)}
        return None, {48: domestic.to_cup48(flag)[:31]}

    def upload_closes_batch(self) -> bool:
        return True

    def request_time(self, fields: Mapping[int, str], now: datetime, zone: tzinfo
                     ) -> tuple[str, datetime | None] | None:
        """CUP terminals send no field 7: their local date/time 12/13 is what can be stale."""
        return _local_time(fields, now, zone)

    def signon_batch_fields(self, fields: Mapping[int, str], ledger: Ledger, terminal: str) -> dict[int, str]:
        """A sign-on whose 60.2 names a batch already settled gets the next batch number in 60.2."""
        sixty = CupField60.parse(fields[60])
        if not ledger.batch_is_closed(terminal, sixty.batch):
            return {}
        batch = next_batch_number(ledger.last_closed_batch(terminal) or sixty.batch)
        return {60: CupField60(sixty.txn_type, batch, sixty.network_code, sixty.rest).format()}

    def requested_key_layout(self, code: str) -> int | None:
        """60.3 001 / 003 / 004 ask for the 24 / 40 / 60-byte key layouts."""
        return layout_for_network_code(code)

    def void_or_refund(self, fields: Mapping[int, str]) -> str | None:
        sixty = fields.get(60)
        kind = sixty[0:2] if sixty else None
        return kind if kind in (CUP_VOID, CUP_REFUND) else None


def _local_time(fields: Mapping[int, str], now: datetime, zone: tzinfo) -> tuple[str, datetime | None] | None:
    f12, f13 = fields.get(12), fields.get(13)
    if not (f12 and f13 and is_digits(f12, 6) and is_digits(f13, 4)):
        return None
    return f"fields 13/12 {f13} {f12}", local_datetime(f13 + f12, now, zone)


def family_for(name: str) -> Family:
    """The family object for a dialect family name ("iso87" or "cup")."""
    return CupFamily() if name == "cup" else Family()


def parse_sixty(fields: Mapping[int, str]) -> CupField60 | None:
    """Field 60 parsed, or None when absent (format checks have validated it)."""
    sixty = fields.get(60)
    return CupField60.parse(sixty) if sixty is not None else None
