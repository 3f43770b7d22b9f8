"""Building and storing what the terminal sends: network messages, sales (persisted with their
reversal before they are handed out), balance inquiries, reversals, advices, voids. Pure."""

from __future__ import annotations

from switch.codec.message import Message
from switch.security import (
    encrypt_pin_block,
    pin_block_format0,
)
from terminal.policy.core import _Operation, _queue_key
from terminal.policy.settling import SettlementSteps
from terminal.policy.types import (
    NO_REPLY_REASON,
    VOID_REASON,
    BalanceInquiry,
    OfflineSale,
    Purchase,
    Send,
)
from terminal.store import JournalEntry, PendingAdvice, PendingReversal

__all__ = ["SendingSteps"]


class SendingSteps(SettlementSteps):
    """The messages of ``TerminalPolicy``, each persisted before it is handed to the driver."""

    def _cancel_unconfirmed(self, now: float, op: _Operation) -> None:
        """The confirmation deadline passed: reverse the approved sale (39 = 17, customer cancellation)."""
        assert op.journal_id is not None
        entry = self.store.entry(op.journal_id)
        op.confirm_deadline, op.unconfirmed = None, True
        with self.store.transaction():
            self._update_entry(entry.id, now=now, state="unknown",
                                    reason="the cardholder did not confirm in time: reversal queued")
            self.store.add_reversal(entry.id, VOID_REASON, self._reversal_of(entry.request, VOID_REASON), now)
        self._note("reversal-queued", f"cardholder did not confirm STAN {entry.stan}: its reversal is queued",
                   entry.stan)

    def _send_network(self, now: float, purpose: str) -> Send:
        message = self._family.network(purpose, self._clock, now, self.store.next_stan(), self.store.batch)
        return self._transmit(now, purpose, message)

    def _send_financial(self, now: float, op: _Operation, command: Purchase) -> Send:
        """Persist (STAN, in-flight journal entry, pending reversal) in one transaction, then send."""
        with self.store.transaction():
            stan = self.store.next_stan()
            fields = self._card_fields(
                now,
                stan,
                command.processing_code,
                command.amount,
                command.pan,
                command.expiry,
                command.cup_type,
            )
            if command.track2 is not None:
                fields[35] = command.track2
                fields[22] = "021"
            if command.pin_block is not None:
                fields[52] = command.pin_block.upper()
            elif command.pin is not None and self._keys is not None:
                block = pin_block_format0(command.pin, command.pan)
                fields[52] = encrypt_pin_block(self._keys.pin_key, block).hex().upper()
            request = Message(command.mti, dict(sorted(fields.items())), self._header())
            entry = self.store.add_entry(
                kind=command.kind,
                direction=command.direction,
                request=request,
                amount=command.amount,
                currency=self.profile.currency,
                pan=command.pan,
                state="in-flight",
                now=now,
            )
            reversal = self.store.add_reversal(entry.id, NO_REPLY_REASON, self._reversal_of(request, NO_REPLY_REASON),
                                               now)
        op.journal_id = entry.id
        op.own_sent = True
        send = self._transmit(now, "financial", request, entry.id)
        assert self._exchange is not None
        self._exchange.reversal_id = reversal.id
        return send

    def _send_inquiry(self, now: float, command: BalanceInquiry) -> Send:
        fields = self._card_fields(now, self.store.next_stan(), command.processing_code, 0, command.pan,
                                   command.expiry, command.cup_type)
        del fields[4]  # an inquiry has no amount
        if command.track2 is not None:
            fields[35], fields[22] = command.track2, "021"
        if command.pin_block is not None:
            fields[52] = command.pin_block.upper()
        return self._transmit(now, "inquiry", self._family.message("0200", fields))

    def _reversal_of(self, original: Message, reason: str) -> Message:
        return self._family.reversal_of(original, reason)

    def _send_reversal(self, now: float, op: _Operation, reversal: PendingReversal) -> Send:
        key = _queue_key("reversal", reversal.id)
        op.budget[key] = op.budget.get(key, 0) + 1
        with self.store.transaction():
            if reversal.attempts == 0:
                stan = self.store.next_stan() if self._family.reversal_needs_stan(reversal.message) else ""
                message = first = self._family.first_reversal(reversal.message, reversal.reason, self._clock, now, stan)
            else:
                first = reversal.message
                message = self._family.repeat_reversal(first)
            self.store.update_reversal(reversal.id, now=now, message=first, attempts=reversal.attempts + 1)
        return self._transmit(
            now,
            "reversal",
            Message(message.mti, dict(sorted(message.fields.items())), message.header),
            reversal.id,
        )

    def _send_advice(self, now: float, advice: PendingAdvice) -> Send:
        """First transmission: the advice joins the batch open *now* (an offline sale made while a
        settlement was unanswered belongs to the next batch); CUP 60.2 says so. Repeats (0221) are
        the first copy again."""
        if advice.attempts:
            self.store.update_advice(advice.id, now=now, attempts=advice.attempts + 1)
            return self._transmit(now, "advice", advice.message.copy(mti="0221"), advice.id)
        batch = self.store.batch
        message = self._family.rebatch(advice.message, batch)
        with self.store.transaction():
            self.store.update_advice(advice.id, now=now, attempts=1, message=message)
            self._update_entry(advice.journal_id, now=now, batch=batch)
        return self._transmit(now, "advice", message, advice.id)

    def _record_offline_sale(self, op: _Operation, command: OfflineSale, now: float) -> None:
        """Journal the offline sale and store its advice at once: it happened, connected or not."""
        with self.store.transaction():
            stan = self.store.next_stan()
            fields = self._card_fields(now, stan, "000000", command.amount, command.pan, command.expiry, "30")
            if command.auth_code:
                fields[38] = command.auth_code.ljust(6)
            advice = Message("0220", dict(sorted(fields.items())), self._header())
            entry = self.store.add_entry(
                kind="advice",
                direction="debit",
                request=advice,
                amount=command.amount,
                currency=self.profile.currency,
                pan=command.pan,
                state="advice-pending",
                now=now,
                auth_code=command.auth_code,
                reason="approved offline; advice not yet acknowledged",
            )
            self.store.add_advice(entry.id, advice, now)
        op.journal_id = entry.id

    def _void_target(self) -> JournalEntry | None:
        """The last approved transaction of the open batch that a reversal can undo (not an advice)."""
        candidates = [e for e in self.store.entries(batch=self.store.batch, states=("approved",)) if e.kind != "advice"]
        return candidates[-1] if candidates else None

    def _start_void(self, now: float, op: _Operation) -> None:
        target = self._void_target()
        if target is None:
            self._refuse(op, f"no approved transaction in the open batch {self.store.batch} to reverse")
            return
        with self.store.transaction():
            self._update_entry(target.id, now=now, state="unknown", reason="void requested: reversal queued")
            self.store.add_reversal(target.id, VOID_REASON, self._family.void_of(target, VOID_REASON), now)
        op.journal_id = target.id
        op.own_sent = True
        self._note("reversal-queued", f"void of {target.kind} STAN {target.stan} queued", target.stan)

