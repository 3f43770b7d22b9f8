"""What the terminal's store keeps, as values: journal entries and their states, pending reversals,
advices and settlement, and STAN and batch numbering. ``terminal.store`` persists them (and
re-exports these names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switch.codec.message import Message

__all__ = [
    "JOURNAL_KINDS",
    "JOURNAL_STATES",
    "JournalEntry",
    "PendingAdvice",
    "PendingReversal",
    "PendingSettlement",
    "next_batch_number",
    "next_stan",
]

JOURNAL_KINDS = ("purchase", "refund", "authorization", "advice")
JOURNAL_STATES = (
    "in-flight",  # request persisted (and perhaps sent); its reversal is stored
    "approved",  # approved and not reversed: money moved (an authorization holds funds)
    "declined",  # the host declined it: nothing moved
    "unknown",  # outcome unknown or a void under way: a reversal is queued
    "reversed",  # the host acknowledged its reversal: nothing moved
    "reversal-refused",  # the host answered its reversal with a refusal: the terminal cannot know
    "advice-pending",  # offline sale approved locally, advice not yet acknowledged
)
_MONEY_MOVED: Mapping[str, bool | None] = {
    "in-flight": None,
    "approved": True,
    "declined": False,
    "unknown": None,
    "reversed": False,
    "reversal-refused": None,
    "advice-pending": None,
}


def next_stan(stan: str) -> str:
    """The STAN after ``stan``: 000001-999999, wrapping 999999 → 000001 (000000 is never used)."""
    return f"{int(stan) % 999999 + 1:06d}"


def next_batch_number(batch: str) -> str:
    """The batch after ``batch``: n6, wrapping 999999 → 000001 (as the host's ledger counts)."""
    return f"{int(batch) % 999999 + 1:06d}"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One financial exchange of the terminal and what it believes became of it.

    ``stan`` / ``transmission_time`` (field 7, "" in CUP) / ``amount`` identify it to a
    consistency checker; ``money_moved`` says whether the terminal believes money moved.
    ``request`` is the request as sent, minus secrets (``SECRET_FIELDS``).
    """

    id: int
    batch: str
    kind: str
    direction: str  # "debit" (purchase, authorization, offline sale) | "credit" (refund)
    mti: str
    stan: str
    transmission_time: str
    amount: int
    currency: str
    pan: str  # masked
    state: str
    response_code: str
    rrn: str
    auth_code: str
    reason: str  # why the state is what it is, for people
    request: Message
    created_at: float
    updated_at: float

    @property
    def money_moved(self) -> bool | None:
        """True approved and not reversed, False nothing moved, None the terminal cannot know yet."""
        return _MONEY_MOVED[self.state]

    @property
    def captured(self) -> bool:
        """Counts in settlement totals: money moved and the kind settles (authorizations do not)."""
        return self.state == "approved" and self.kind != "authorization"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (the request as field-number → value) for ``status --json``."""
        data = {name: getattr(self, name) for name in self.__slots__ if name != "request"}
        data["money_moved"] = self.money_moved
        data["request_mti"] = self.request.mti
        return data


@dataclass(frozen=True, slots=True)
class PendingReversal:
    """A reversal that must reach the host: stored before its original leaves.

    ``message`` is the reversal as first transmitted (field 11 "" until then); ``attempts`` counts
    transmissions so far across restarts: 0 means the next is the 0400, more means 0401 repeats.
    ``reason`` is its field 39 (98 no reply, A0 MAC failure, 17 a void the operator asked for).
    """

    id: int
    journal_id: int
    reason: str
    message: Message
    attempts: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class PendingAdvice:
    """An advice (0220) stored until the host answers it; ``attempts`` > 0 means repeats are 0221."""

    id: int
    journal_id: int
    message: Message
    attempts: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class PendingSettlement:
    """A 0500 sent whose answer never came: repeated (0501, same STAN) before anything else."""

    batch: str
    message: Message
    attempts: int
