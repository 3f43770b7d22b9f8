"""Applying the host's answers to a sale, a reversal, an advice, and a sign-on's working keys. Pure."""

from __future__ import annotations

from typing import Any

from switch.codec.message import Message
from switch.security import (
    MAC_KEY_LENGTHS,
    SecurityError,
    decrypt_field62,
)
from terminal.policy.core import _Exchange, _Operation
from terminal.policy.sending import SendingSteps
from terminal.policy.types import (
    APPROVAL_CODES,
    DUPLICATE_CODE,
    VOID_REASON,
    meaning_of,
)

__all__ = ["ReplySteps"]


class ReplySteps(SendingSteps):
    """What an answer changes in the store, for ``TerminalPolicy``."""

    def _load_keys(self, response: Message) -> str | None:
        """Take the working keys of an approved sign-on; what is wrong with them, or None."""
        tmk = self.profile.tmk
        if tmk is None:
            self._keys = self.profile.static_keys
            return None
        value = response.get(62)
        if not value:
            return "the reply carries no working keys (field 62)"
        try:
            keys = decrypt_field62(tmk, bytes.fromhex(value))
        except ValueError as exc:  # SecurityError is a ValueError; so is a field that is not hex
            what = str(exc) if isinstance(exc, SecurityError) else "it is not binary"
            return f"field 62 cannot be used: {what}"
        lengths = MAC_KEY_LENGTHS.get(self.profile.mac)
        if lengths is not None and len(keys.mac_key) not in lengths:
            return f"field 62 holds a {len(keys.mac_key)}-byte MAC key, which {self.profile.mac} cannot use"
        self._keys = keys
        return None

    def _apply_financial(self, op: _Operation, exchange: _Exchange, response: Message, code: str, now: float) -> None:
        entry_id = exchange.ref
        assert entry_id is not None
        reversal_id = exchange.reversal_id  # known since the request was stored: no lookup
        if reversal_id is None:
            reversal = self.store.reversal_for(entry_id)
            reversal_id = None if reversal is None else reversal.id
        approved = code in APPROVAL_CODES
        changes: dict[str, Any] = {"response_code": code, "rrn": (response.get(37) or "").strip()[:12]}
        if approved:
            changes.update(
                state="approved",
                auth_code=(response.get(38) or "").strip()[:6],
                amount=int(response.get(4) or exchange.request[4]),
                reason=meaning_of(code),
            )
        else:
            changes.update(state="declined", reason=meaning_of(code))
        with self.store.transaction():
            entry = self._update_entry(entry_id, now=now, **changes)
            if reversal_id is not None:
                self.store.delete_reversal(reversal_id)
        self._written = entry  # committed: the outcome is read from here, not read back from the store
        stan = exchange.request.get(11) or ""
        timeout = getattr(op.command, "confirm_timeout", None)
        if approved and timeout is not None:
            op.confirm_deadline = now + timeout
        if not approved and self._demanded(op, code, stan) and op.resends < 1:
            op.resends += 1
            op.resend_pending = True  # a new transaction with a new STAN once signed on again

    def _apply_reversal(self, op: _Operation, exchange: _Exchange, response: Message, code: str, now: float) -> None:
        assert exchange.ref is not None
        reversal = self.store.reversal(exchange.ref)
        stan = exchange.request.get(11) or ""
        if self._demanded(op, code, stan):
            return
        if code in self.profile.retry_codes:
            self._note("item-retry", f"reversal STAN {stan} answered {code} ({meaning_of(code)}): stays queued", stan)
            return
        entry = self.store.entry(reversal.journal_id)
        is_void = exchange.request.mti.startswith("02")  # CUP 撤销: only an approval undoes the original
        if code in (APPROVAL_CODES if is_void else self.profile.reversal_cleared_codes):
            changes = {"state": "reversed", "reason": f"the host acknowledged the reversal (answer {code})"}
            note = ("reversal-cleared", f"reversal of STAN {entry.stan} acknowledged with {code}")
        elif reversal.reason == VOID_REASON:
            op.void_refusal = code
            changes = {"state": "approved", "reason": f"void refused: {code} ({meaning_of(code)})"}
            note = ("reversal-refused", f"void of STAN {entry.stan} refused with {code}; it stays approved")
        else:
            changes = {
                "state": "reversal-refused",
                "reason": f"reversal refused: {code} ({meaning_of(code)})",
            }
            note = (
                "reversal-refused",
                f"reversal of STAN {entry.stan} refused with {code}: whether money moved is unknown",
            )
        with self.store.transaction():
            self._update_entry(entry.id, now=now, **changes)
            self.store.delete_reversal(reversal.id)
        self._note(note[0], note[1], entry.stan)

    def _apply_advice(self, op: _Operation, exchange: _Exchange, response: Message, code: str, now: float) -> None:
        assert exchange.ref is not None
        advice = self.store.advice(exchange.ref)
        stan = exchange.request.get(11) or ""
        if self._demanded(op, code, stan):
            return
        if code in self.profile.retry_codes:
            self._note("item-retry", f"advice STAN {stan} answered {code} ({meaning_of(code)}): stays queued", stan)
            return
        entry = self.store.entry(advice.journal_id)
        if code in APPROVAL_CODES or code == DUPLICATE_CODE:
            changes = {
                "state": "approved",
                "response_code": code,
                "rrn": (response.get(37) or "").strip()[:12],
                "reason": f"advice acknowledged ({code} {meaning_of(code)})",
            }
            note = ("advice-forwarded", f"advice STAN {stan} acknowledged with {code}")
        else:
            changes = {
                "state": "declined",
                "response_code": code,
                "reason": f"advice refused: {code} ({meaning_of(code)})",
            }
            note = ("advice-declined", f"advice STAN {stan} refused with {code}: not posted")
        with self.store.transaction():
            self._update_entry(entry.id, now=now, **changes)
            self.store.delete_advice(advice.id)
        self._note(note[0], note[1], stan)

