"""The settlement steps of the policy (the flow itself: ``terminal.settlement``; the fields per family:
``terminal.family``). Pure."""

from __future__ import annotations

from switch.codec.composite import (
    OriginalData,
    SettlementTotals,
)
from switch.codec.message import Message
from terminal.policy.core import PolicyCore, _Operation, _queue_key
from terminal.policy.types import (
    APPROVAL_CODES,
    Action,
    Outcome,
    PolicyError,
    Send,
    Settle,
    meaning_of,
)
from terminal.settlement import (
    AFTER_UPLOAD_CODE,
    SettlePhase,
    SettleResult,
    batch_totals,
    host_totals,
    unbalanced_text,
)
from terminal.store import JournalEntry, PendingSettlement

__all__ = ["SettlementSteps"]


class SettlementSteps(PolicyCore):
    """0500 / 0320 / 0510 handling: totals, upload, after-upload, closing the batch when the host did."""

    def _totals(self) -> SettlementTotals:
        return batch_totals(self.store.entries(batch=self.store.batch), APPROVAL_CODES)

    def _settle_step(self, now: float, op: _Operation) -> Action | None:
        """The next message of the settlement flow (see ``terminal.settlement``)."""
        match op.settle_phase:
            case SettlePhase.TOTALS:
                return self._send_settlement(now, op, after_upload=False)
            case SettlePhase.AFTER_UPLOAD:
                return self._send_settlement(now, op, after_upload=True)
            case SettlePhase.UPLOAD | SettlePhase.UPLOAD_END:
                return self._send_upload(now, op)
            case SettlePhase.DONE:
                raise PolicyError("settlement finished without a result (a policy bug)")

    def _send_upload(self, now: float, op: _Operation) -> Action | None:
        """One batch-upload message: a record (0320), or CUP's end-of-upload; 0321 repeats."""
        batch = self.store.batch
        if op.upload_attempts >= self.profile.settlement_attempts:
            op.outcome = Outcome(
                "failed",
                "settle",
                f"batch upload interrupted ({op.last_problem}); batch {batch} stays open: settle again",
                batch=batch,
            )
            return None
        if op.upload_message is None:
            op.upload_attempts = 0
            if op.settle_phase is SettlePhase.UPLOAD:
                op.upload_message = self._upload_record(now, self.store.entry(op.upload_ids[op.upload_pos]))
            else:
                op.upload_message = self._upload_end(now)
            message = op.upload_message
        else:
            message = op.upload_message.copy(mti="0321")
        op.upload_attempts += 1
        purpose = "upload" if op.settle_phase is SettlePhase.UPLOAD else "upload-end"
        return self._transmit(now, purpose, message)

    def _upload_done(self, op: _Operation, stan: str) -> None:
        """Every record is uploaded: ISO settles again (960000), CUP ends the upload (207)."""
        self._note("settlement-result", f"batch upload sent ({len(op.upload_ids)} records)", stan)
        op.settle_phase = self._family.phase_after_upload

    def _send_settlement(self, now: float, op: _Operation, *, after_upload: bool) -> Send:
        batch = self.store.batch
        totals = self._totals()
        if op.settle_sent is None:
            op.settle_sent = totals
        with self.store.transaction():
            fields = self._base_fields(now, self.store.next_stan())
            self._family.settlement(fields, totals, batch, after_upload=after_upload)
            message = self._family.message("0500", fields)
            self.store.set_pending_settlement(PendingSettlement(batch, message, 1))
        op.own_sent = True
        op.budget[_queue_key("settlement", 0)] = 1  # repeats (0501) come from _drain, within the same limit
        return self._transmit(now, "settlement", message)

    def _settle_outcome(self, op: _Operation) -> Outcome:
        batch, code, exponent = op.settle_batch, op.settle_code, self.profile.currency_exponent
        match op.settle_result:
            case SettleResult.BALANCED:
                return Outcome(
                    "approved",
                    "settle",
                    f"settled, balanced: batch {batch} closed, batch {self.store.batch} open",
                    response_code="00",
                    meaning="balanced",
                    batch=batch,
                )
            case SettleResult.CLOSED_UNBALANCED:
                ours = op.settle_sent or SettlementTotals(0, 0, 0, 0)
                return Outcome(
                    "unbalanced",
                    "settle",
                    unbalanced_text(batch, self.store.batch, code, ours, op.settle_host, len(op.upload_ids),
                                    exponent),
                    response_code=code,
                    meaning="unbalanced, uploaded, closed by the host",
                    batch=batch,
                )
            case _:
                return Outcome(
                    "declined",
                    "settle",
                    f"settlement declined {code} ({meaning_of(code)}); batch {batch} stays open",
                    response_code=code,
                    meaning=meaning_of(code),
                    batch=batch,
                )

    def _upload_record(self, now: float, entry: JournalEntry) -> Message:
        request = entry.request
        fields = self._base_fields(now, self.store.next_stan())
        for number in (2, 3, 49):
            if number in request:
                fields[number] = request[number]
        fields[4] = f"{entry.amount:012d}"
        if entry.rrn.strip():
            fields[37] = entry.rrn
        if entry.auth_code.strip():
            fields[38] = entry.auth_code.ljust(6)
        fields[90] = OriginalData.of(request, self.profile.acquirer_id).format()
        self._family.upload_record(fields, self.store.batch)
        return self._family.message("0320", fields)

    def _upload_end(self, now: float) -> Message:
        return self._family.upload_end(self._base_fields(now, self.store.next_stan()), self.store.batch)

    def _apply_upload(self, op: _Operation, purpose: str, response: Message, code: str, now: float) -> None:
        stan = response.get(11) or ""
        if self._demanded(op, code, stan) or code in self.profile.retry_codes:
            op.last_problem = f"upload answered {code}"
            return
        op.upload_message = None
        if code != "00":
            op.settle_result, op.settle_code, op.settle_phase = SettleResult.DECLINED, code, SettlePhase.DONE
        elif purpose == "upload":
            op.upload_pos += 1
            if op.upload_pos >= len(op.upload_ids):
                self._upload_done(op, stan)
        else:  # CUP end-of-upload answered 00: the host closed the batch
            self._batch_closed(op, op.settle_batch or self.store.batch, code, stan, balanced=False)

    def _batch_closed(self, op: _Operation, batch: str, code: str, stan: str, *, balanced: bool) -> None:
        new_batch = self.store.close_batch()
        verdict = "balanced" if balanced else "unbalanced, closed by the host after the upload"
        self._note("batch-closed", f"batch {batch} settled ({verdict}); batch {new_batch} open", stan)
        if isinstance(op.command, Settle):
            op.settle_result = SettleResult.BALANCED if balanced else SettleResult.CLOSED_UNBALANCED
            op.settle_code, op.settle_batch, op.settle_phase = code, batch, SettlePhase.DONE

    def _apply_settlement(self, op: _Operation, response: Message, code: str, now: float) -> None:
        """A 0510. 00 (CUP flag '1') closes the batch; 95 (CUP flag '2') starts the upload; an
        answer to the ISO 960000 "after upload" closes it as unbalanced."""
        stan = response.get(11) or ""
        code = self._family.settlement_code(response)
        if self._demanded(op, code, stan):
            return
        if code in self.profile.retry_codes:
            self._note("item-retry", f"settlement STAN {stan} answered {code} ({meaning_of(code)}): repeated", stan)
            return
        pending = self.store.pending_settlement
        batch = pending.batch if pending is not None else self.store.batch
        after_upload = pending is not None and pending.message.get(3) == AFTER_UPLOAD_CODE
        settling = isinstance(op.command, Settle)
        if code == "00":
            self._batch_closed(op, batch, code, stan, balanced=not after_upload)
            return
        self.store.clear_pending_settlement()
        self._note(
            "settlement-result",
            f"settlement of batch {batch} answered {code} ({meaning_of(code)}); the batch stays open",
            stan,
        )
        if not settling:
            return
        op.settle_code, op.settle_batch = code, batch
        if code == "95" and op.settle_phase is SettlePhase.TOTALS:
            cup = self._family.name == "cup"
            sent = host_totals(pending.message, cup) if pending is not None else None
            theirs = host_totals(response, cup)
            op.settle_host = None if theirs == sent else theirs  # an echo of our own totals says nothing
            op.upload_ids = [e.id for e in self.store.entries(batch=batch, states=("approved",)) if e.captured]
            op.upload_pos = 0
            op.upload_message = None
            op.upload_attempts = 0
            op.settle_phase = SettlePhase.UPLOAD
            self._note("upload-started", f"uploading {len(op.upload_ids)} records of batch {batch}", stan)
            if not op.upload_ids:
                self._upload_done(op, stan)
        else:
            op.settle_result, op.settle_phase = SettleResult.DECLINED, SettlePhase.DONE

