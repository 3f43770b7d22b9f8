"""Giving up, for ``TerminalPolicy``: an exchange that failed (timeout, lost connection, bad MAC...), a
sign-on that failed, an operation ended at a limit, and the outcome an operation's journal entry
means. Pure."""

from __future__ import annotations

from typing import Any

from terminal.policy.core import _Operation
from terminal.policy.replies import ReplySteps
from terminal.policy.types import (
    CLOCK_ADVICE,
    MAC_FAILURE_REASON,
    NO_REPLY_REASON,
    UNKNOWN_ADVICE,
    Drain,
    Outcome,
    ReverseLast,
    Settle,
    SignOn,
    meaning_of,
)
from terminal.store import JournalEntry

__all__ = ["FailureSteps"]


class FailureSteps(ReplySteps):
    """What a failure changes in the store, and what an operation's outcome is, for ``TerminalPolicy``."""

    def _fail(self, now: float, cause: str, detail: str) -> None:
        """The awaited exchange failed (timeout, connection-lost, unparsable, echo, mac, not-sent)."""
        exchange = self._exchange
        assert exchange is not None
        self._exchange = None
        request = exchange.request
        stan = request.get(11) or ""
        self._late.append((request.response_mti, self.profile.terminal_id.rstrip(" "), stan))
        self._note("exchange-failed", f"{request.mti} STAN {stan} ({exchange.purpose}) failed: {detail}", stan)
        op = self._op
        assert op is not None
        op.last_problem = detail
        if cause == "mac":
            self._signed_on = False  # new working keys come with a new sign-on
        purpose = exchange.purpose
        if purpose == "financial":
            assert exchange.ref is not None
            reason = MAC_FAILURE_REASON if cause == "mac" else NO_REPLY_REASON
            reversal = self.store.reversal_for(exchange.ref)
            with self.store.transaction():
                self._update_entry(exchange.ref, now=now, state="unknown", reason=f"{detail}: reversal queued")
                if reversal is not None:
                    self.store.update_reversal(
                        reversal.id, now=now, reason=reason, message=reversal.message.copy(f39=reason)
                    )
            self._note("reversal-queued", f"reversal of STAN {stan} queued with reason {reason}", stan)
        elif purpose == "signon":
            self._signon_failed(op, now, f"sign-on {detail}", "")
        elif purpose in ("echo", "signoff", "inquiry"):
            if purpose == "signoff":
                self._signed_on = False
            op.outcome = Outcome("failed", op.command.name, f"{op.command.name} failed: {detail}")
        # reversal / advice / settlement / upload: the attempt was counted when sent; the item stays.

    def _signon_failed(self, op: _Operation, now: float, problem: str, code: str) -> None:
        op.signon_failures += 1
        op.last_problem = problem
        op.last_code = code
        self._note("signon-failed", f"{problem} (attempt {op.signon_failures} of {self.profile.signon_attempts})")
        if op.signon_failures < self.profile.signon_attempts:
            self._wait_until = now + self.profile.backoff(op.signon_failures)

    def _give_up(self, op: _Operation, reason: str) -> None:
        """End the operation when a limit is reached; what is stored stays stored."""
        name = op.command.name
        if op.journal_id is not None:
            entry = self.store.entry(op.journal_id)
            if entry.state in ("unknown", "in-flight", "advice-pending"):
                op.outcome = self._entry_outcome(op, entry, reason)
                return
        if isinstance(op.command, Drain) or (
            isinstance(op.command, Settle) and op.own_sent and self.store.pending_settlement is not None
        ):
            op.outcome = Outcome("unknown-queued", name, f"not finished: {reason}")
        elif isinstance(op.command, SignOn) and op.last_code:
            op.outcome = Outcome(
                "declined",
                name,
                f"sign-on declined {op.last_code} ({meaning_of(op.last_code)})",
                response_code=op.last_code,
                meaning=meaning_of(op.last_code),
            )
        else:
            op.outcome = Outcome("failed", name, f"{name} not done: {reason}")

    def _entry_outcome(self, op: _Operation, entry: JournalEntry, reason: str = "") -> Outcome:
        name = op.command.name
        common: dict[str, Any] = {"stan": entry.stan, "amount": entry.amount, "batch": entry.batch,
                                  "journal_id": entry.id}
        state = entry.state
        if op.unconfirmed and state == "reversed":
            return Outcome("reversed", name, "cancelled: the cardholder did not confirm in time; the approved "
                           "sale was reversed (reason 17, customer cancellation), nothing is charged",
                           rrn=entry.rrn, **common)
        if op.unconfirmed and state == "approved":
            code = op.void_refusal
            return Outcome("unknown", name, f"the cardholder did not confirm, but the host refused the reversal "
                           f"({code} {meaning_of(code)}): the sale stands; contact the acquirer",
                           response_code=code, meaning=meaning_of(code), rrn=entry.rrn, **common)
        if state == "approved" and op.void_refusal:
            code = op.void_refusal
            return Outcome(
                "declined",
                name,
                f"void of STAN {entry.stan} refused {code} ({meaning_of(code)}); the transaction stands",
                response_code=code,
                meaning=meaning_of(code),
                rrn=entry.rrn,
                auth_code=entry.auth_code,
                **common,
            )
        if state == "approved":
            return Outcome(
                "approved",
                name,
                f"approved, RRN {entry.rrn or '-'}, auth code {entry.auth_code or '-'}",
                response_code=entry.response_code,
                meaning=meaning_of(entry.response_code),
                rrn=entry.rrn,
                auth_code=entry.auth_code,
                **common,
            )
        if state == "declined":
            code = entry.response_code
            advice = f": {CLOCK_ADVICE}" if code in self.profile.clock_codes else ""
            return Outcome(
                "declined",
                name,
                f"declined {code} ({meaning_of(code)}){advice}",
                response_code=code,
                meaning=meaning_of(code),
                rrn=entry.rrn,
                **common,
            )
        if state == "reversed":
            if isinstance(op.command, ReverseLast):
                text = f"voided: {entry.reason}; nothing is charged for STAN {entry.stan}"
            else:
                text = f"not charged: no valid answer, so the terminal reversed it ({entry.reason})"
            return Outcome("reversed", name, text, rrn=entry.rrn, **common)
        if state == "reversal-refused":
            return Outcome(
                "unknown",
                name,
                f"outcome unknown: the card may be debited, do not charge again; {entry.reason}, "
                "so ask the acquirer whether it was charged",
                **common,
            )
        if state == "advice-pending":
            return Outcome("unknown-queued", name, f"approved offline; the advice goes out automatically "
                                                   f"({reason or entry.reason})", **common)
        return Outcome("unknown-queued", name, f"{UNKNOWN_ADVICE} ({reason or entry.reason})", **common)
