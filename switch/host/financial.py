"""0100/0200 (authorisation, purchase, refund, balance inquiry, CUP void) and 0220 advices.

Order of checks for a 0100/0200: format (mandatory fields, card present, Luhn → ``luhn_code``),
sign-on, repeat/resend of a transaction already decided (same terminal + STAN + identity, see
``checks.identity_of``: a repeat MTI gets the first answer again, a plain resend 94 or the first
answer per ``resend_answer``; never a second posting), an original arriving after its own reversal,
stale time (opt-in ``stale_check``), amount 0 → 13, card expiry → 54, PIN (profiles), response
rules, batch closed → 12, otherwise approved with 37 and 38.
"""

from __future__ import annotations

from datetime import datetime

from switch.codec.message import Message
from switch.host.checks import card_expiry, check_amount, identity_of, luhn_valid
from switch.host.config import APPROVAL_CODES, ResendAnswer
from switch.host.core import KINDS, Decision, Outcome, Txn
from switch.host.family import CUP_VOID
from switch.host.reversals import ReversalMixin
from switch.host.sessions import SessionsMixin
from switch.ledger import Posting, Reversal
from switch.rules import pan_of

__all__ = ["FinancialMixin"]

_BALANCE_INQUIRY = "31"


class FinancialMixin(ReversalMixin, SessionsMixin):
    """Financial requests and advices."""

    def _financial_fields(self, request: Message, ts: float, required: tuple[int, ...]) -> Txn | Decision:
        """Format + card + sign-on checks: (terminal, STAN, card, identity) or the answer. The identity
        (``checks.identity_of``) is computed here once; the repeat check and the posting both use it."""
        fields = request.fields
        problem = self._format_problem(fields, required)
        pan = pan_of(request)
        if problem is None and pan is None:
            problem = None, "no card number: field 2 or 35 is mandatory"
        if problem is not None:
            return self._format_decision(request, problem)
        assert pan is not None
        terminal = self.terminal_of(fields)
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        luhn = self.config.luhn_code
        if luhn is not None and pan.isascii() and pan.isdigit() and not luhn_valid(pan):
            return Decision(self._reply(request, luhn), None, Outcome.DECLINED,
                            f"card number fails the Luhn check; answered {luhn}, nothing posted")
        return terminal, fields[11], pan, identity_of(request.mti, fields, pan)

    def _repeat(self, request: Message, txn: Txn, ts: float) -> Decision | None:
        """The answer to a transaction already decided (repeat MTI or resend), else None."""
        terminal, stan, _, identity = txn
        first = self.ledger.find_posting(terminal, stan, identity)
        if first is None or not self._within_window(first.received_at, ts):
            return None
        is_repeat = request.mti[3] == "1"
        if is_repeat or self.config.resend_answer == ResendAnswer.ORIGINAL or first.kind == "advice":
            return self._first_answer(request, first, "repeat" if is_repeat else "resend")
        return Decision(self._reply(request, "94"), first.seq, Outcome.DUPLICATE,
                        f"terminal {terminal} STAN {stan} already decided ({first.response_code}, RRN "
                        f"{first.rrn}); answered 94, nothing posted")

    def _first_answer(self, request: Message, first: Posting, what: str) -> Decision:
        extra = self._original_answer(request, first)
        outcome = Outcome.DUPLICATE_ADVICE if first.kind == "advice" else Outcome.REPEAT
        return Decision(self._reply(request, first.response_code, extra), first.seq, outcome,
                        f"{what} of STAN {first.stan} (RRN {first.rrn}): the first answer "
                        f"{first.response_code} again, nothing posted")

    def _financial(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        processing = fields.get(3, "000000")
        if processing[:2] == _BALANCE_INQUIRY:
            return self._balance_inquiry(request, ts)
        checked = self._financial_fields(request, ts, self.required("financial"))
        if isinstance(checked, Decision):
            return checked
        txn = checked
        terminal, stan = txn[0], txn[1]
        if self.family.void_or_refund(fields) == CUP_VOID and request.mti[:3] == "020":
            repeat = self._repeat(request, txn, ts)
            return repeat if repeat is not None else self._void(request, ts, terminal)
        repeat = self._repeat(request, txn, ts)
        if repeat is not None:
            return repeat
        batch = self._batch_number(fields, terminal)
        cfg = self.config
        early = self._reversed_before_arrival(terminal, stan, ts)
        if early is not None:
            return self._decline(request, ts, txn, cfg.stale_code, batch, Outcome.REVERSED_BEFORE_ARRIVAL,
                                 f"its reversal (seq {early.seq}) arrived first: the terminal gave it up")
        if cfg.stale_check:
            stale = self._stale(fields, now)
            if stale is not None:
                return self._decline(request, ts, txn, cfg.stale_code, batch, Outcome.STALE, stale)
        amount = int(fields[4])
        if amount == 0:
            return self._decline(request, ts, txn, "13", batch, Outcome.DECLINED, "amount is zero")
        expiry = card_expiry(fields)
        if expiry is not None and 200000 + int(expiry) < now.year * 100 + now.month:
            return self._decline(request, ts, txn, "54", batch, Outcome.DECLINED,
                                 f"card expired (YYMM {expiry}, host date {now:%y%m})")
        if self.profiles is not None and 41 in fields:
            pin_refusal = self._pin_refusal(request, terminal)
            if pin_refusal is not None:
                return self._decline(request, ts, txn, pin_refusal[0], batch, Outcome.DECLINED,
                                     pin_refusal[1])
        rule = None
        if self.rules is not None:
            rule = self.rules.first_match(request)
            if rule is not None and rule.response_code not in APPROVAL_CODES:
                return self._decline(request, ts, txn, rule.response_code, batch, Outcome.DECLINED,
                                     f"response rule {rule.name!r}", rule)
        if KINDS[request.mti] != "authorization" and self.ledger.batch_is_closed(terminal, batch):
            return self._closed_batch(request, terminal, batch)
        if rule is None:
            seq, extra = self._post(request, ts, txn, "00", True, batch, amount)
            return Decision(self._reply(request, "00", extra), seq, Outcome.APPROVED, "approved")
        code = rule.response_code
        approved_amount = amount
        if 4 in rule.fields and check_amount(rule.fields[4]) is None:
            approved_amount = min(amount, int(rule.fields[4]))  # a partial approval (10) never exceeds the ask
        seq, extra = self._post(request, ts, txn, code, True, batch, approved_amount)
        extra[4] = f"{approved_amount:0{len(fields[4])}d}"
        response = self._reply(request, code, None, rule)
        response.fields.update(extra)
        return Decision(response, seq, Outcome.APPROVED,
                        f"approved ({code}) by response rule {rule.name!r}: {approved_amount} of {amount}, "
                        f"RRN {extra[37]}, auth code {extra[38]}, batch {batch}")

    def _stale(self, fields: dict[int, str], now: datetime) -> str | None:
        """Why the request's time (field 7, or local 12/13) is beyond ``stale_window``, else None."""
        cfg = self.config
        read = self.family.request_time(fields, now, cfg.tz)
        if read is None:
            return None
        what, sent = read
        if sent is None:
            return f"{what} is an impossible date (window {cfg.stale_window:g}s)"
        offset = (now - sent).total_seconds()
        if abs(offset) > cfg.stale_window:
            return f"{what} is {offset:+.0f}s off host time (window {cfg.stale_window:g}s)"
        return None

    def _reversed_before_arrival(self, terminal: str, stan: str, ts: float) -> Reversal | None:
        """A reversal of an unknown original with this STAN (it overtook its original). Field 7 is not
        compared: the original may arrive as a resend with a fresh one."""
        reversal = self.ledger.latest_reversal_for_stan(terminal, stan)
        if (reversal is not None and reversal.effect == "original-unknown"
                and self._within_window(reversal.received_at, ts)):
            return reversal
        return None

    def _balance_inquiry(self, request: Message, ts: float) -> Decision:
        """31xxxx: 00 with field 54 (the configured balance); nothing posted, no amount needed."""
        fields = request.fields
        required = tuple(n for n in self.required("financial") if n != 4)
        checked = self._financial_fields(request, ts, required)
        if isinstance(checked, Decision):
            return checked
        account = fields.get(3, "310000")[2:4]
        currency = fields.get(49) or self.family.default_currency
        balance = f"{account}02{currency}C{self.config.balance:012d}"  # 02 = available balance
        refusal, rule = self._rule_refusal(request, "no balance given")
        if refusal is not None:
            return refusal
        return Decision(self._reply(request, "00", {54: balance}, rule), None, Outcome.BALANCE,
                        f"balance inquiry answered: available {self.config.balance}")

    # -- 0220 / 0221 --------------------------------------------------------------------------

    def _advice(self, request: Message, now: datetime, ts: float) -> Decision:
        """Posted once; a repeat or resend gets 00 again with the first RRN (the advice *was* accepted).
        No stale or expiry check: it reports a sale the terminal already completed (amount 0 is still 13)."""
        checked = self._financial_fields(request, ts, self.required("financial"))
        if isinstance(checked, Decision):
            return checked
        txn = checked
        terminal = txn[0]
        fields = request.fields
        repeat = self._repeat(request, txn, ts)
        if repeat is not None:
            return repeat
        amount = int(fields[4])
        if amount == 0:
            return Decision(self._reply(request, "13"), None, Outcome.DECLINED, "advice amount is zero; answered 13")
        refusal, rule = self._rule_refusal(request, "advice not posted")
        if refusal is not None:
            return refusal
        batch = self._batch_number(fields, terminal)
        if self.ledger.batch_is_closed(terminal, batch):
            return self._closed_batch(request, terminal, batch)
        offline_code = fields.get(38)
        seq, extra = self._post(request, ts, txn, "00", True, batch, amount,
                                offline_code if offline_code and offline_code.strip() else None)
        return Decision(self._reply(request, "00", extra, rule), seq, Outcome.ADVICE_POSTED,
                        f"advice posted: RRN {extra[37]}, batch {batch}")
