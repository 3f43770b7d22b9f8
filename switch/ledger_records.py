"""The ledger's records: immutable rows of what the host decided (postings, reversals, uploads,
settlements, discrepancies, sign-on sessions) and the batch summary reports show. Kept apart from ``switch.ledger`` (the
store and its indexes) so each file has one job; ``switch.ledger`` re-exports every name."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from switch.codec.composite import SettlementTotals

__all__ = [
    "DISCREPANCY_KINDS",
    "REVERSAL_EFFECTS",
    "SETTLEMENT_RESULTS",
    "BatchSummary",
    "Discrepancy",
    "Posting",
    "Reversal",
    "SessionRecord",
    "Settlement",
    "UploadRecord",
]


# ---------------------------------------------------------------------------------------------
# Records (immutable; the ledger replaces a posting when it is reversed)


class _Record:
    """``as_dict`` for JSON output (``iso-switch ledger --json``, the admin API)."""

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class Posting(_Record):
    """One financial request the host decided (0100, 0200, 0220), approved or declined.

    Declines are kept too: a duplicate of a declined request is still a duplicate, and a reversal
    of a declined original must be told apart from one whose original never arrived.
    ``kind`` is "authorization" (0100: holds funds, never settled), "purchase" (0200) or "advice"
    (0220: an offline sale reported afterwards). ``direction`` is "debit" or "credit" (processing
    code 2x). ``pan`` is masked. ``transmission_time`` is field 7 as sent, "" when absent (CUP).
    ``received_at`` is host time in Unix seconds. ``identity`` is the host's duplicate key beside
    terminal + STAN (local date/time 12/13, else amount + card; field 7 changes on every resend, so it
    is not part of it); "" means "use ``transmission_time``" (rows written without one).
    ``requested_amount`` is field 4 as asked (None: same as ``amount``, which is what was approved).
    """

    seq: int
    received_at: float
    terminal: str
    stan: str
    transmission_time: str
    mti: str
    kind: str
    direction: str
    amount: int
    currency: str
    pan: str
    batch: str
    response_code: str
    approved: bool
    rrn: str
    auth_code: str
    reversal_seq: int | None = None
    identity: str = ""
    requested_amount: int | None = None

    @property
    def reversed(self) -> bool:
        return self.reversal_seq is not None

    @property
    def captured(self) -> bool:
        """Counts in settlement totals: approved, settled kind, not reversed."""
        return self.approved and self.kind != "authorization" and self.reversal_seq is None

    def as_dict(self) -> dict[str, Any]:
        """The stored fields plus the derived ``reversed`` and ``captured`` flags."""
        return {**asdict(self), "reversed": self.reversed, "captured": self.captured}


REVERSAL_EFFECTS = ("reversed", "partially-reversed", "nothing-to-undo", "original-unknown", "batch-closed")


@dataclass(frozen=True, slots=True)
class Reversal(_Record):
    """A reversal (0400/0420) and the answer it got; repeats are answered from here.

    ``effect``: "reversed" (an approved original was undone), "nothing-to-undo" (the original was
    declined), "original-unknown" (no such original:
    kept so a repeat gets the same answer and an original arriving *after* its reversal is not
    posted), "batch-closed" (the original's batch was already settled; refused), "partially-reversed"
    (``amount`` of the original undone, the rest stays captured; a CUP void is a "reversed").
    ``original_stan`` / ``original_time`` name what the reversal asked for (from field 90, or its
    own STAN when field 90 is absent; time "" when unknown).
    """

    seq: int
    received_at: float
    terminal: str
    stan: str
    transmission_time: str
    mti: str
    original_seq: int | None
    original_stan: str
    original_time: str
    response_code: str
    effect: str
    amount: int = 0


@dataclass(frozen=True, slots=True)
class UploadRecord(_Record):
    """One transaction a terminal uploaded (0320) after a settlement mismatch."""

    seq: int
    received_at: float
    terminal: str
    batch: str
    stan: str
    processing_code: str
    direction: str
    amount: int
    rrn: str
    pan: str


SETTLEMENT_RESULTS = ("balanced", "unbalanced", "accepted-after-upload")


@dataclass(frozen=True, slots=True)
class Settlement(_Record):
    """A settlement request (0500) and its outcome; a 0501 repeat is answered from here.

    ``result``: "balanced" (closed), "unbalanced" (95, batch stays open) or "accepted-after-upload"
    (closed; differences recorded as discrepancies). ``closed`` says whether this row closed the batch.
    The totals are the terminal's, as compared (net of reversals).
    """

    seq: int
    received_at: float
    terminal: str
    batch: str
    stan: str
    transmission_time: str
    result: str
    response_code: str
    closed: bool
    debit_count: int
    debit_amount: int
    credit_count: int
    credit_amount: int


DISCREPANCY_KINDS = (
    "missing-from-upload",     # the ledger has a settled transaction the terminal did not upload
    "unknown-to-ledger",       # uploaded, but the ledger never saw it
    "not-approved-in-ledger",  # uploaded, but the ledger declined it
    "reversed-in-ledger",      # uploaded, but the ledger reversed it
    "amount-differs",          # both have it, with different amount or direction
    "totals-differ-from-upload",  # the settlement's totals are not the sum of the uploaded records
)


@dataclass(frozen=True, slots=True)
class Discrepancy(_Record):
    """A difference between a terminal's uploaded batch and the ledger, found when settling after upload."""

    seq: int
    received_at: float
    terminal: str
    batch: str
    kind: str
    stan: str
    rrn: str
    ledger_amount: int | None
    upload_amount: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class BatchSummary(_Record):
    """A terminal's batch as reports show it.

    Debit/credit counts and amounts are NET: approved, captured, not reversed (what settlement
    compares). The reversal columns count what was reversed, for information.

    A partial reversal does not reverse a transaction, it lowers its amount: the sale stays one sale
    in the count (and is not a reversal count), its amount column holds what it still captures, and
    the amount undone is in the reversal amount column. So ``gross_totals`` reads as a terminal reports
    it (one debit of the original amount, 0 reversals, the undone amount in 87/89) and
    ``gross_totals.netted() == net_totals`` always holds.
    """

    terminal: str
    batch: str
    status: str  # "open" | "closed"
    debit_count: int
    debit_amount: int
    credit_count: int
    credit_amount: int
    debit_reversal_count: int
    debit_reversal_amount: int
    credit_reversal_count: int
    credit_reversal_amount: int
    postings: int
    upload_count: int
    upload_ended: bool
    discrepancies: int
    closed_seq: int | None
    closed_at: float | None

    @property
    def net_totals(self) -> SettlementTotals:
        """What a terminal's settlement request is compared with."""
        return SettlementTotals(self.debit_count, self.debit_amount, self.credit_count, self.credit_amount)

    @property
    def gross_totals(self) -> SettlementTotals:
        """The batch as ISO 8583 reports it: gross counts/amounts with their reversal columns."""
        return SettlementTotals(
            self.debit_count + self.debit_reversal_count, self.debit_amount + self.debit_reversal_amount,
            self.credit_count + self.credit_reversal_count, self.credit_amount + self.credit_reversal_amount,
            self.debit_reversal_count, self.debit_reversal_amount,
            self.credit_reversal_count, self.credit_reversal_amount)


@dataclass(frozen=True, slots=True)
class SessionRecord(_Record):
    """A terminal's sign-on session as the ``sessions`` table keeps it (one row per terminal, the latest
    change), shared by multi-instance switches (docs/scaleout.md).

    ``signed_on_at`` None: no session (signed off, expired, or closed by a MAC failure).
    ``working_keys``: the session's keys as the host serialised them (hex; None without profiles).
    ``signons``: how many times the terminal signed on so far (seeds the next sign-on's keys).
    ``seq`` / ``changed_at``: the ledger sequence and host time of the change.
    """

    seq: int
    changed_at: float
    terminal: str
    signed_on_at: float | None
    working_keys: str | None
    signons: int

    @property
    def signed_on(self) -> bool:
        return self.signed_on_at is not None
