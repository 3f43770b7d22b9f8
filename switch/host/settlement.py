"""Batch upload (0320) and settlement (0500/0501), both families.

ISO 8583: 0500 920000 carries the totals (74/76 gross counts of credits/debits, 75/77 their reversal
counts, 86/88 gross amounts, 87/89 reversal amounts, 97 net). Equal to the ledger → 00 and the batch
closes; different → 95, the terminal uploads every record (0320), then sends 0500 960000 ("after
upload"), answered 00: the batch closes and every difference is recorded as a discrepancy. The older
flow — an end-of-upload 0320 with field 70 = 202/207, then any 0500 — is accepted too.

CUP: the 0500's field 48 carries net totals; the answer has no field 39, the result is 48's flag ('1'
balanced, '2' not). On '2' the terminal uploads (0320, 60.3 = 201) and ends with a 0320 whose 60.3 is
202 (it had balanced) or 207 (it had not): that end-of-upload closes the batch, no second 0500.

``settlement_compare``: "net" (default) compares gross − reversals, so a terminal reporting net
figures with zero reversal counts balances too; "gross" compares every column as sent.
"""

from __future__ import annotations

from datetime import datetime

from switch.codec.composite import CompositeFieldError, OriginalData, SettlementTotals, mask_pan
from switch.codec.message import Message
from switch.host.config import SettlementCompare
from switch.host.core import Decision, HostCore, Outcome
from switch.host.family import UPLOAD_END_CODES, SettlementStep
from switch.ledger import BatchSummary, Discrepancy, Settlement, UploadRecord
from switch.rules import ResponseRule, pan_of

__all__ = ["SettlementMixin"]

_EMPTY = SettlementTotals(0, 0, 0, 0)


class SettlementMixin(HostCore):
    """0320 and 0500 handling."""

    # -- 0320 ---------------------------------------------------------------------------------

    def _upload(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self.required("upload"))
        if problem is not None:
            return self._format_decision(request, problem)
        end = self.family.network_code(fields) in UPLOAD_END_CODES
        original_data: OriginalData | None = None
        if not end:
            if 90 in fields:
                try:
                    original_data = OriginalData.parse(fields[90])
                except CompositeFieldError as exc:
                    return self._format_decision(request, (90, f"field 90 {exc.reason}"))
            missing = [n for n in (3, 4) if n not in fields]
            if missing:
                return self._format_decision(request, (None, f"upload record lacks field {missing[0]}"))
        terminal = self.terminal_of(fields)
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        batch = self._batch_number(fields, terminal)
        ledger = self.ledger
        if ledger.batch_is_closed(terminal, batch):
            if end and self.family.upload_closes_batch():
                return Decision(self._reply(request, "00"), ledger.batch_summary(terminal, batch).closed_seq,
                                Outcome.ALREADY_SETTLED, f"batch {batch} is already closed; end of upload answered 00")
            return self._closed_batch(request, terminal, batch)
        refusal, rule = self._rule_refusal(request, "nothing stored")
        if refusal is not None:
            return refusal
        seq = ledger.next_sequence()
        if end:
            ledger.end_upload(seq, ts, terminal, batch)
            count = len(ledger.uploads(terminal, batch))
            if self.family.upload_closes_batch():
                return self._close_after_upload(request, ts, terminal, batch, rule)
            return Decision(self._reply(request, "00", rule=rule), seq, Outcome.UPLOAD_ENDED,
                            f"upload of batch {batch} ended with {count} records; the next settlement accepts it")
        stan = original_data.stan if original_data is not None else _original_trace(fields)
        pan = pan_of(request) or ""
        record = UploadRecord(seq, ts, terminal, batch, stan, fields[3],
                              "credit" if fields[3][0] == "2" else "debit", int(fields[4]),
                              fields.get(37, "").strip(), mask_pan(pan) if pan else "")
        ledger.record_upload(record)
        return Decision(self._reply(request, "00", rule=rule), seq, Outcome.UPLOADED,
                        f"upload record STAN {stan} ({record.amount}, {record.direction}) stored for batch {batch}")

    def _close_after_upload(self, request: Message, ts: float, terminal: str, batch: str,
                            rule: ResponseRule | None) -> Decision:
        """CUP end-of-upload: close the batch against the last 0500's totals, recording differences."""
        ledger = self.ledger
        last = next((s for s in reversed(ledger.settlements(terminal)) if s.batch == batch), None)
        totals = (SettlementTotals(last.debit_count, last.debit_amount, last.credit_count, last.credit_amount)
                  if last is not None else None)
        seq = ledger.next_sequence()
        found = self._discrepancies(terminal, batch, totals, ts)
        shown = totals or self._uploaded_totals(terminal, batch)  # no 0500 recorded: what was uploaded
        f7 = request.fields.get(7, "")
        ledger.record_settlement(Settlement(
            seq, ts, terminal, batch, request.fields[11], f7, "accepted-after-upload", "00", True,
            shown.debit_count, shown.debit_amount, shown.credit_count, shown.credit_amount), found)
        verdict = "balanced" if self.family.network_code(request.fields) == "202" else "unbalanced"
        return Decision(self._reply(request, "00", rule=rule), found[-1].seq if found else seq,
                        Outcome.ACCEPTED_AFTER_UPLOAD,
                        f"end of upload ({verdict} per the terminal): batch {batch} closed with "
                        f"{len(ledger.uploads(terminal, batch))} records, {len(found)} differences recorded")

    # -- 0500 / 0501 --------------------------------------------------------------------------

    def _settlement(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self.required("settlement"))
        totals, foreign = _EMPTY, None
        if problem is None:
            try:
                totals, foreign = self.family.terminal_totals(fields)
                totals.netted()
            except CompositeFieldError as exc:
                problem = (exc.field if isinstance(exc.field, int) else None), str(exc)
        if problem is not None:
            return self._format_decision(request, problem)
        terminal, stan = self.terminal_of(fields), fields[11]
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        step = self.family.settlement_step(fields)
        ledger = self.ledger
        previous = ledger.settlement_for(terminal, stan)
        if (previous is not None and self._within_window(previous.received_at, ts)
                and not (step is SettlementStep.AFTER_UPLOAD and previous.result == "unbalanced")):
            repeat_totals = self._host_totals(previous.response_code, terminal, previous.batch)
            return Decision(self._settlement_reply(request, previous.response_code, host_totals=repeat_totals),
                            previous.seq,
                            Outcome.SETTLEMENT_REPEAT,
                            f"settlement STAN {stan} already answered ({previous.result}); "
                            f"same answer {previous.response_code}")
        refusal, rule = self._rule_refusal(request, "batch left as it was")
        if refusal is not None:
            return refusal
        batch = self._batch_number(fields, terminal)
        summary = ledger.batch_summary(terminal, batch)
        foreign_empty = foreign is None or foreign == _EMPTY
        matches = self._matches(totals, summary) and foreign_empty
        if summary.status == "closed":
            code = "00" if matches else "95"
            closed_totals = self._host_totals(code, terminal, batch, summary)
            return Decision(self._settlement_reply(request, code, rule, closed_totals),
                            summary.closed_seq, Outcome.ALREADY_SETTLED,
                            f"batch {batch} of terminal {terminal} was already settled; its totals "
                            f"{'match' if matches else 'differ'}: answered {code}, nothing changed")
        net = totals.netted()
        seq = ledger.next_sequence()
        found: list[Discrepancy] = []
        uploaded = summary.upload_count > 0 or summary.upload_ended
        if (step is SettlementStep.AFTER_UPLOAD and (uploaded or not matches)) or summary.upload_ended:
            result, code = "accepted-after-upload", "00"
            found = self._discrepancies(terminal, batch, net, ts)
            reason = f"batch {batch} accepted as uploaded and closed; {len(found)} differences from the ledger recorded"
        elif matches:
            result, code = "balanced", "00"
            reason = f"batch {batch} balanced ({_describe(totals)}) and closed"
        else:
            result, code = "unbalanced", "95"
            reason = (f"batch {batch} does not balance ({self.config.settlement_compare} compared): terminal "
                      f"{_describe(totals)}{'' if foreign_empty else ' plus foreign-card totals'}, host "
                      f"{_describe(summary.gross_totals)}; kept open")
        ledger.record_settlement(Settlement(
            seq, ts, terminal, batch, stan, fields.get(7, ""), result, code, result != "unbalanced",
            net.debit_count, net.debit_amount, net.credit_count, net.credit_amount), found)
        host_totals = self._host_totals(code, terminal, batch, summary)
        return Decision(self._settlement_reply(request, code, rule, host_totals), found[-1].seq if found else seq,
                        result,
                        f"{reason}; answered {code}")

    def _uploaded_totals(self, terminal: str, batch: str) -> SettlementTotals:
        return _sum_uploads(self.ledger.uploads(terminal, batch))

    def _matches(self, totals: SettlementTotals, summary: BatchSummary) -> bool:
        if self.config.settlement_compare == SettlementCompare.GROSS:
            return totals == summary.gross_totals
        return _net(totals.netted()) == _net(summary.net_totals)

    def _settlement_reply(self, request: Message, code: str, rule: ResponseRule | None = None,
                          host_totals: SettlementTotals | None = None) -> Message:
        """ISO: field 39. CUP: no field 39; field 48 echoes the totals with the result flag."""
        thirty_nine, extra = self.family.settlement_reply_fields(request, code, host_totals)
        return self._reply(request, thirty_nine, extra, rule)

    def _host_totals(self, code: str, terminal: str, batch: str, summary: BatchSummary | None = None
                     ) -> SettlementTotals | None:
        """The ledger's gross totals for a 95 answer (``settlement_host_totals``), so a terminal can tell
        its operator what differs; None for any other answer, or when the setting is off."""
        if code != "95" or not self.config.settlement_host_totals:
            return None
        return (summary or self.ledger.batch_summary(terminal, batch)).gross_totals

    def _discrepancies(self, terminal: str, batch: str, totals: SettlementTotals | None, ts: float
                       ) -> list[Discrepancy]:
        """Every difference between the terminal's uploaded records and the ledger's batch (and, given
        the settlement's net totals, between those and the uploaded records)."""
        ledger = self.ledger
        uploads = {u.stan: u for u in ledger.uploads(terminal, batch)}
        booked = {p.stan: p for p in ledger.batch_postings(terminal, batch) if p.kind != "authorization"}
        exponent = currency_exponent(next((p.currency for p in booked.values()), ""))
        found: list[Discrepancy] = []

        def add(kind: str, stan: str, rrn: str, ledger_amount: int | None, upload_amount: int | None,
                detail: str) -> None:
            found.append(Discrepancy(ledger.next_sequence(), ts, terminal, batch, kind, stan, rrn,
                                     ledger_amount, upload_amount, detail))

        for stan, upload in uploads.items():
            posting = booked.get(stan)
            if posting is None:
                add("unknown-to-ledger", stan, upload.rrn, None, upload.amount,
                    f"uploaded {upload.direction} of {major(upload.amount, exponent)} the host never saw")
                continue
            charged = ledger.captured_amount(posting)
            if not posting.approved:
                add("not-approved-in-ledger", stan, posting.rrn, posting.amount, upload.amount,
                    f"the host declined it with {posting.response_code}")
            elif posting.reversal_seq is not None:
                add("reversed-in-ledger", stan, posting.rrn, posting.amount, upload.amount,
                    f"the host reversed it (seq {posting.reversal_seq})")
            elif charged != upload.amount or posting.direction != upload.direction:
                add("amount-differs", stan, posting.rrn, charged, upload.amount,
                    f"host {posting.direction} {major(charged, exponent)}, upload {upload.direction} "
                    f"{major(upload.amount, exponent)}")
        for stan, posting in booked.items():
            if posting.captured and stan not in uploads:
                add("missing-from-upload", stan, posting.rrn, ledger.captured_amount(posting), None,
                    f"approved {posting.direction} of {major(ledger.captured_amount(posting), exponent)} "
                    "not in the upload")
        uploaded = self._uploaded_totals(terminal, batch)
        if totals is not None and _net(uploaded) != _net(totals):
            add("totals-differ-from-upload", "", "", None, None,
                f"settlement says {_describe(totals, exponent)}, the uploaded records add up to "
                f"{_describe(uploaded, exponent)}")
        return found


def _sum_uploads(uploads: list[UploadRecord]) -> SettlementTotals:
    return SettlementTotals(
        sum(1 for u in uploads if u.direction == "debit"), sum(u.amount for u in uploads if u.direction == "debit"),
        sum(1 for u in uploads if u.direction == "credit"), sum(u.amount for u in uploads if u.direction == "credit"))


def _original_trace(fields: dict[int, str]) -> str:
    """Which transaction an upload record (without field 90) is: 61.2 (original trace, CUP), else field 11."""
    ref = fields.get(61, "")
    if len(ref) >= 12 and ref[6:12].isdigit() and ref[6:12] != "000000":
        return ref[6:12]
    return fields[11]


def _net(totals: SettlementTotals) -> tuple[int, int, int, int]:
    return totals.debit_count, totals.debit_amount, totals.credit_count, totals.credit_amount


_EXPONENTS = {code: 0 for code in ("108", "152", "174", "262", "324", "352", "392", "410", "548", "600", "646",
                                    "704", "800", "952", "953")} | {
    code: 3 for code in ("048", "368", "400", "414", "434", "512", "788")}
"""ISO 4217 currencies without 2 decimal places (JPY, KRW, ... 0; BHD, KWD, ... 3), by numeric code."""


def currency_exponent(currency: str) -> int:
    """Decimal places of an ISO 4217 numeric currency (field 49); 2 when unknown or absent."""
    return _EXPONENTS.get(currency.strip(), 2)


def major(amount: int, exponent: int = 2) -> str:
    """Minor units as major units: 1234 → ``12.34`` (exponent 2), as people read amounts."""
    sign, value = ("-" if amount < 0 else ""), abs(amount)
    if not exponent:
        return f"{sign}{value}"
    return f"{sign}{value // 10**exponent}.{value % 10**exponent:0{exponent}d}"


def _describe(totals: SettlementTotals, exponent: int = 2) -> str:
    text = (f"{totals.debit_count} debits {major(totals.debit_amount, exponent)}, {totals.credit_count} credits "
            f"{major(totals.credit_amount, exponent)}")
    if totals.debit_reversal_count or totals.debit_reversal_amount or totals.credit_reversal_count \
            or totals.credit_reversal_amount:
        text += (f" (reversals: {totals.debit_reversal_count} debits {major(totals.debit_reversal_amount, exponent)}, "
                 f"{totals.credit_reversal_count} credits {major(totals.credit_reversal_amount, exponent)})")
    return text
