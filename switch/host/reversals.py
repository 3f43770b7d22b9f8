"""Reversals (0400/0401/0420/0421) and the CUP void: find the original, check it is the one meant,
undo it exactly once.

* The original is named by field 90 (original MTI, STAN, field 7) or, without 90, by the reversal's
  own STAN (CUP reversals keep the original's STAN and carry no 90). Field 90 all zeros or
  unreadable is a format error (30), not an unknown original.
* It must be the same transaction: field 90's MTI class, the amount (4: the amount asked or approved)
  and the card (when the reversal carries one) must agree; otherwise ``reversal_mismatch_code``
  (default 25, "original not found": no original with these data elements exists) and the original
  stays captured.
* Field 95 (replacement amounts, first 12 digits = the actual amount) makes it partial: exactly
  original − replacement is undone, the rest stays captured.
* Any later reversal of the same original (0401, 0421, a second 0400) gets the first answer again;
  nothing more is undone. An unknown original gets ``unknown_original_code`` and is remembered, so the
  original arriving late is declined and never posted.
"""

from __future__ import annotations

from datetime import datetime

from switch.codec.composite import CompositeFieldError, OriginalData, mask_pan
from switch.codec.message import Message
from switch.host.checks import auth_code_for, is_digits, rrn_for
from switch.host.core import Decision, HostCore, Outcome
from switch.ledger import Posting, Reversal
from switch.rules import pan_of

__all__ = ["ReversalMixin"]

_ZERO_90 = "0" * 42


class ReversalMixin(HostCore):
    """0400-class handling and the shared "undo an original once" step (also used by CUP voids)."""

    def _reversal(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self.required("reversal"))
        original_data: OriginalData | None = None
        if problem is None and 90 in fields:
            if fields[90].strip("0 ") == "":
                problem = 90, "field 90 names no original (all zeros)"
            else:
                try:
                    original_data = OriginalData.parse(fields[90])
                except CompositeFieldError as exc:
                    problem = 90, f"field 90 {exc.reason}"
        if problem is None and 95 in fields and not is_digits(fields[95][:12], 12):
            problem = 95, "field 95 must start with the 12-digit actual amount"
        if problem is not None:
            return self._format_decision(request, problem)
        terminal = self.terminal_of(fields)
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        if original_data is not None:
            f7 = original_data.transmission_time
            target_stan, target_time = original_data.stan, "" if f7 == "0000000000" else f7
        else:
            target_stan, target_time = fields[11], ""
        ledger = self.ledger
        previous = ledger.reversal_for(terminal, target_stan, target_time)
        if previous is not None and self._within_window(previous.received_at, ts):
            return self._reversal_repeat(request, previous)
        original = self._find_original(terminal, target_stan, ts)
        if original is not None:
            earlier = ledger.reversal_of(original.seq)
            if earlier is not None:
                return self._reversal_repeat(request, earlier)
        refusal, rule = self._rule_refusal(request, "nothing reversed")
        if refusal is not None:
            return refusal
        named = f"{terminal} STAN {target_stan}{f' field 7 {target_time}' if target_time else ''}"
        amount = 0
        if original is None:
            effect, code = "original-unknown", self.config.unknown_original_code
            reason = f"no original {named}; remembered so a late original is not posted"
        else:
            mismatch = self._mismatch(request, original, original_data)
            if mismatch is not None:
                code = self.config.reversal_mismatch_code  # the answer rests on the original's row
                return Decision(self._reply(request, code), original.seq, Outcome.REVERSAL_MISMATCH,
                                f"reversal names original RRN {original.rrn} but {mismatch}; answered {code}, "
                                "original stays captured")
            effect, code, amount, reason = self._effect(request, terminal, original)
        seq = ledger.next_sequence()
        f7 = fields.get(7, "")
        ledger.record_reversal(Reversal(
            seq, ts, terminal, fields[11], "" if f7 == "0000000000" else f7, request.mti,
            original.seq if original is not None else None, target_stan, target_time, code, effect, amount))
        response = self._reply(request, code, self._reversal_fields(request, original), rule)
        return Decision(response, seq, effect, f"{reason}; answered {code}")

    def _effect(self, request: Message, terminal: str, original: Posting) -> tuple[str, str, int, str]:
        """(effect, code, amount undone for a partial reversal, reason) for a matching original."""
        if not original.approved:
            return ("nothing-to-undo", "00", 0,
                    f"original (seq {original.seq}) was declined with {original.response_code}: nothing to undo")
        if original.kind != "authorization" and self.ledger.batch_is_closed(terminal, original.batch):
            return ("batch-closed", "12", 0,
                    f"original (RRN {original.rrn}) is in batch {original.batch}, already settled")
        captured = self.ledger.captured_amount(original)
        replacement = request.fields.get(95)
        if replacement is not None and 0 < int(replacement[:12]) < captured:
            undone = captured - int(replacement[:12])
            return ("partially-reversed", "00", undone,
                    f"original RRN {original.rrn} partially reversed: {undone} of {captured} undone, "
                    f"{int(replacement[:12])} stays captured (field 95)")
        if replacement is not None and int(replacement[:12]) >= captured:
            return ("nothing-to-undo", "00", 0,
                    f"field 95 keeps {int(replacement[:12])} of {captured}: nothing to undo")
        return ("reversed", "00", 0,
                f"original RRN {original.rrn} ({original.amount}, {original.direction}) reversed")

    def _mismatch(self, request: Message, original: Posting, data: OriginalData | None) -> str | None:
        """What contradicts the original (MTI class from 90, amount, card), or None when it is the one."""
        if data is not None and data.mti[1:3] != original.mti[1:3]:
            return f"field 90 says original MTI {data.mti}, the original was a {original.mti}"
        amount = request.fields.get(4)
        if amount and is_digits(amount, len(amount)) and int(amount) not in (original.amount,
                                                                             original.requested_amount):
            return f"amount {int(amount)} is not the original's {original.amount}"
        pan = pan_of(request)
        if pan and original.pan and mask_pan(pan) != original.pan:
            return f"card {mask_pan(pan)} is not the original's {original.pan}"
        return None

    def _find_original(self, terminal: str, stan: str, ts: float) -> Posting | None:
        """The latest posting of this terminal with this STAN within the duplicate window. Field 7 is not
        compared: a repeat may have been the copy that got posted; amount, card and MTI are (``_mismatch``)."""
        latest = self.ledger.latest_posting(terminal, stan)
        if latest is None or not self._within_window(latest.received_at, ts):
            return None
        return latest

    def _reversal_fields(self, request: Message, original: Posting | None) -> dict[int, str] | None:
        if original is None or not original.rrn or 37 in request.fields:
            return None
        return {37: original.rrn}

    def _reversal_repeat(self, request: Message, first: Reversal) -> Decision:
        original = self.ledger.posting(first.original_seq) if first.original_seq is not None else None
        return Decision(self._reply(request, first.response_code, self._reversal_fields(request, original)),
                        first.seq, Outcome.REVERSAL_REPEAT,
                        f"original already answered by reversal seq {first.seq} ({first.effect}); same answer "
                        f"{first.response_code}, nothing more undone")

    # -- CUP void (撤销): a 0200 with 60.1 = 23 naming its original in 61 and/or 37 -----------------

    def _void(self, request: Message, ts: float, terminal: str) -> Decision:
        fields = request.fields
        ledger = self.ledger
        original = self._void_target(fields, terminal)
        if original is None:
            return Decision(self._reply(request, "25"), None, Outcome.DECLINED,
                            "void names no original of this terminal (61.2 trace / 37 RRN); answered 25")
        earlier = ledger.reversal_of(original.seq)
        if earlier is not None:
            if earlier.mti[:3] == request.mti[:3] and earlier.stan == fields[11]:  # resend or 0201 repeat
                code = earlier.response_code
                extra = self._void_fields(request, earlier.seq, code)
                return Decision(self._reply(request, code, extra), earlier.seq, Outcome.REPEAT,
                                f"void STAN {fields[11]} already answered {code}; nothing more undone")
            return Decision(self._reply(request, "12"), earlier.seq, Outcome.DECLINED,
                            f"original RRN {original.rrn} already cancelled (seq {earlier.seq}); answered 12")
        mismatch = self._mismatch(request, original, None)
        if mismatch is None and not original.approved:
            mismatch = f"the original was declined ({original.response_code})"
        if mismatch is not None:
            code = self.config.reversal_mismatch_code
            return Decision(self._reply(request, code), original.seq, Outcome.REVERSAL_MISMATCH,
                            f"void of RRN {original.rrn} refused: {mismatch}; answered {code}")
        if ledger.batch_is_closed(terminal, original.batch):
            return self._closed_batch(request, terminal, original.batch)
        refusal, rule = self._rule_refusal(request, "nothing voided")
        if refusal is not None:
            return refusal
        seq = ledger.next_sequence()
        ledger.record_reversal(Reversal(seq, ts, terminal, fields[11], "", request.mti, original.seq,
                                        original.stan, original.transmission_time, "00", "reversed"))
        extra = self._void_fields(request, seq, "00")
        return Decision(self._reply(request, "00", extra, rule), seq, Outcome.VOIDED,
                        f"void: original RRN {original.rrn} ({original.amount}) cancelled")

    def _void_target(self, fields: dict[int, str], terminal: str) -> Posting | None:
        """The original a void names: 61.2 (original trace) in the terminal's batch, else 37 (our RRN)."""
        ref = fields.get(61, "")
        if len(ref) >= 12 and is_digits(ref[6:12], 6):
            posting = self.ledger.latest_posting(terminal, ref[6:12])
            if posting is not None and posting.kind != "authorization":
                return posting
        rrn = fields.get(37, "").strip()
        if rrn and rrn.isdigit():
            posting = self.ledger.posting(int(rrn))
            if posting is not None and posting.terminal == terminal and posting.rrn == rrn:
                return posting
        return None

    def _void_fields(self, request: Message, seq: int, code: str) -> dict[int, str]:
        extra = self._posting_fields(request, rrn_for(seq), code == "00", auth_code_for(seq, self.auth_salt))
        return extra
