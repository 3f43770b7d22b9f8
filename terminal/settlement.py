"""Settlement as the terminal sees it: the flow's phases, the batch totals, and what to tell the operator.

Pure: no store writes, no clock. ``terminal.policy`` drives the flow and sends the messages.

ISO 8583 (domain.md "Settlement (ISO)")::

    0500 920000 (totals) ─00→ balanced: the host closed the batch
                         ─95→ 0320 per record ─→ 0500 960000 (totals after upload) ─00→ closed, unbalanced

CUP (domain.md "银联 CUP POS dialect")::

    0500 (48 = totals) ─flag 1→ balanced, closed
                       ─flag 2→ 0320 per record (60.3 201) ─→ end-of-upload 0320 (60.3 207) ─00→ closed, unbalanced

The terminal closes its batch (and opens the next number) only on the answer that closed it at the
host. "Unbalanced but closed" is not "balanced": the operator is told to contact the acquirer.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from switch.codec.composite import CompositeFieldError, SettlementTotals
from switch.codec.message import Message
from terminal.profile import format_amount
from terminal.store import JournalEntry

__all__ = [
    "AFTER_UPLOAD_CODE",
    "TOTALS_CODE",
    "UPLOAD_END_BALANCED",
    "UPLOAD_END_UNBALANCED",
    "SettlePhase",
    "SettleResult",
    "batch_totals",
    "differences",
    "host_totals",
    "totals_text",
    "unbalanced_text",
]

TOTALS_CODE = "920000"  # ISO 0500 processing code: the batch totals
AFTER_UPLOAD_CODE = "960000"  # ISO 0500 processing code: the totals again, after the batch upload
UPLOAD_END_BALANCED = "202"  # CUP end-of-upload 60.3 when the settlement had balanced
UPLOAD_END_UNBALANCED = "207"  # ... and when it had not


class SettlePhase(Enum):
    """Where a ``Settle`` operation is. Each phase names the message it sends next."""

    TOTALS = "totals"  # 0500 (ISO 920000) not answered yet
    UPLOAD = "upload"  # 0320 per record
    UPLOAD_END = "upload-end"  # CUP: the end-of-upload 0320 (60.3 202/207), which closes the batch
    AFTER_UPLOAD = "after-upload"  # ISO: 0500 960000, whose 00 closes the batch
    DONE = "done"


class SettleResult(Enum):
    """How a settlement ended, as the operator must read it."""

    BALANCED = "balanced"  # the host agreed with the totals and closed the batch
    CLOSED_UNBALANCED = "closed-unbalanced"  # totals differed; uploaded; the host closed the batch anyway
    DECLINED = "declined"  # the host refused a step; the batch stays open


def batch_totals(entries: Iterable[JournalEntry], approval_codes: frozenset[str]) -> SettlementTotals:
    """ISO totals of a batch from the journal: gross counts/amounts of every captured transaction the
    host approved (74/76, 86/88), the ones since reversed in the reversal columns (75/77, 87/89).

    A reversal of a transaction the host never approved (a timeout reversal) moved nothing and is in
    neither column. Net (97) = gross − reversals, whichever reading the host uses.
    """
    values = dict.fromkeys(
        ("debit_count", "debit_amount", "credit_count", "credit_amount", "debit_reversal_count",
         "debit_reversal_amount", "credit_reversal_count", "credit_reversal_amount"), 0)
    for entry in entries:
        if entry.kind == "authorization":
            continue  # authorizations hold funds; they are never settled
        reversed_ = entry.state == "reversed"
        if not (entry.state == "approved" or (reversed_ and entry.response_code in approval_codes)):
            continue  # declined, unknown, or reversed before any approval: nothing moved
        side = "credit" if entry.direction == "credit" else "debit"
        values[f"{side}_count"] += 1
        values[f"{side}_amount"] += entry.amount
        if reversed_:
            values[f"{side}_reversal_count"] += 1
            values[f"{side}_reversal_amount"] += entry.amount
    return SettlementTotals(**values)


def host_totals(reply: Message, cup: bool) -> SettlementTotals | None:
    """The host's own totals when its settlement answer carries them (some hosts do: ISO 74-89, or
    CUP 48), else None. Used only to tell the operator the differences."""
    try:
        if cup:
            value = reply.get(48)
            return None if not value else SettlementTotals.from_cup48(value)[0]
        if not any(n in reply for n in (74, 76, 86, 88)):
            return None
        return SettlementTotals.from_iso_fields(reply.fields)
    except CompositeFieldError:
        return None


def totals_text(totals: SettlementTotals, exponent: int) -> str:
    """``debits 2 / 30.00, credits 1 / 3.00 (net)`` in major units, reversals folded in."""
    net = totals.netted()
    return (f"debits {net.debit_count} / {format_amount(net.debit_amount, exponent)}, "
            f"credits {net.credit_count} / {format_amount(net.credit_amount, exponent)}")


def differences(ours: SettlementTotals, theirs: SettlementTotals | None, exponent: int) -> str:
    """The differences (terminal − host) in major units, or what is known when the host gave none."""
    if theirs is None:
        return f"the host gave no totals; the terminal's were {totals_text(ours, exponent)}"
    a, b = ours.netted(), theirs.netted()
    parts = []
    columns = (("debits", "debit_count", "debit_amount"), ("credits", "credit_count", "credit_amount"))
    for what, count, amount in columns:
        dc, da = getattr(a, count) - getattr(b, count), getattr(a, amount) - getattr(b, amount)
        if dc or da:
            sign = "-" if da < 0 else "+"
            parts.append(f"{what} {dc:+d} / {sign}{format_amount(abs(da), exponent)}")
    if not parts:
        return f"no differences in the totals ({totals_text(ours, exponent)})"
    return "terminal − host: " + ", ".join(parts)


def unbalanced_text(batch: str, new_batch: str, code: str, ours: SettlementTotals, theirs: SettlementTotals | None,
                    uploaded: int, exponent: int) -> str:
    """The settle line after 95 + upload: how many records went up, the terminal's totals and the
    differences (major units), and that the host closed the batch anyway: the operator must call."""
    records = "1 record" if uploaded == 1 else f"{uploaded} records"
    diff = differences(ours, theirs, exponent)
    if theirs is not None:
        diff += f"; the terminal's totals: {totals_text(ours, exponent)}"
    return (f"settlement unbalanced: uploaded, contact the acquirer. The host closed batch {batch} after the "
            f"upload of {records} (answered {code}); {diff}; batch {new_batch} open")
