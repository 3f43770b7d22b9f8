"""The terminal policy's vocabulary: commands (what the operator asks), actions (what the driver
must do next), outcomes and notes (what happened), and the local checks made before anything is sent.

States and events are types: ``match`` on them. See ``terminal.policy`` for the rules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, ClassVar

from switch.codec.composite import luhn_valid
from switch.codec.message import Message
from terminal.profile import format_amount

APPROVAL_CODES = frozenset({"00", "08", "10", "11"})
"""Codes that approve: approved, honour with identification, partial approval, VIP approval."""
DUPLICATE_CODE = "94"
PARTIAL_APPROVAL = "10"
NO_REPLY_REASON = "98"
MAC_FAILURE_REASON = "A0"
VOID_REASON = "17"  # ISO 8583 "customer cancellation": a reversal the operator asked for
UNKNOWN_ADVICE = (
    "outcome unknown: the card may be debited, do not charge again; the reversal goes out automatically"
)
CLOCK_ADVICE = "check the terminal clock (the host may refuse requests whose time is off its own)"

RESPONSE_MEANINGS = {
    "00": "approved",
    "01": "refer to issuer",
    "03": "invalid merchant",
    "05": "do not honour",
    "08": "honour with identification",
    "10": "partial approval",
    "11": "approved (VIP)",
    "12": "invalid transaction",
    "13": "invalid amount",
    "14": "invalid card number",
    "17": "customer cancellation",
    "22": "suspected malfunction",
    "25": "original not found",
    "30": "format error",
    "41": "lost card",
    "43": "stolen card",
    "51": "insufficient funds",
    "54": "expired card",
    "55": "incorrect PIN",
    "57": "not permitted to cardholder",
    "58": "not permitted to terminal",
    "61": "exceeds amount limit",
    "62": "restricted card",
    "65": "exceeds frequency limit",
    "68": "response received too late",
    "75": "PIN tries exceeded",
    "90": "cut-off in progress",
    "91": "issuer or switch inoperative",
    "94": "duplicate transmission",
    "95": "reconcile error",
    "96": "system malfunction",
    "97": "terminal not registered",
    "98": "no reply (issuer timeout)",
    "99": "PIN format error, sign on again",
    "A0": "MAC check failed, sign on again",
}
"""Response code → meaning (domain.md), for outcomes people read."""



def meaning_of(code: str) -> str:
    return RESPONSE_MEANINGS.get(code, "unknown response code")


class PolicyError(RuntimeError):
    """The policy was used wrongly (an operation started while one runs, a bad command)."""


# ---------------------------------------------------------------------------------------------
# Local checks


def card_problem(pan: object, expiry: object, today: date) -> str | None:
    """Why no host should see this card, or None: PAN 12-19 digits with a Luhn check, expiry YYMM
    not before ``today``'s month (a card is valid through its expiry month)."""
    if not (isinstance(pan, str) and pan.isascii() and pan.isdigit() and 12 <= len(pan) <= 19):
        return "malformed card number: a PAN is 12 to 19 digits"
    if not luhn_valid(pan):
        return "malformed card number: the Luhn check digit is wrong"
    if not (
        isinstance(expiry, str)
        and len(expiry) == 4
        and expiry.isascii()
        and expiry.isdigit()
        and 1 <= int(expiry[2:]) <= 12
    ):
        return f"malformed expiry date {expiry!r}: expected YYMM"
    if (2000 + int(expiry[:2]), int(expiry[2:])) < (today.year, today.month):
        return f"card expired (expiry {expiry[2:]}/{expiry[:2]})"
    return None


def _amount_problem(amount: object) -> str | None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        return f"amount must be an integer number of minor units, got {amount!r}"
    if amount <= 0:
        return f"amount must be greater than zero, got {amount}"
    if amount >= 10**12:
        return f"amount {amount} does not fit field 4 (12 digits)"
    return None


# ---------------------------------------------------------------------------------------------
# Commands: what an operator asks the terminal to do


@dataclass(frozen=True)
class SignOn:
    """Sign on now (even if signed on)."""

    name: ClassVar[str] = "signon"


@dataclass(frozen=True)
class SignOff:
    name: ClassVar[str] = "signoff"


@dataclass(frozen=True)
class Echo:
    """Network echo test (0800/301): works signed on or not."""

    name: ClassVar[str] = "echo"


@dataclass(frozen=True)
class Drain:
    """Send whatever is still owed to the host (reversals, advices, a settlement) and nothing else."""

    name: ClassVar[str] = "drain"


@dataclass(frozen=True)
class Purchase:
    """A card-present sale (0200, processing code 00). ``amount`` in minor units; ``pan``/``expiry``
    (YYMM) always; ``track2`` and ``pin_block`` (16 hex digits, already encrypted) when the card was
    swiped / a PIN entered, or ``pin`` (the digits) to have the terminal build the encrypted ISO
    format 0 block with its PIN key — they travel in the request only, never in a reversal or the
    store."""

    amount: int
    pan: str
    expiry: str
    track2: str | None = None
    pin_block: str | None = None
    pin: str | None = field(default=None, repr=False)
    confirm_timeout: float | None = None  # seconds the cardholder has to confirm (sign) after approval

    name: ClassVar[str] = "purchase"
    kind: ClassVar[str] = "purchase"
    mti: ClassVar[str] = "0200"
    processing_code: ClassVar[str] = "000000"
    cup_type: ClassVar[str] = "22"
    direction: ClassVar[str] = "debit"


@dataclass(frozen=True)
class Refund(Purchase):
    """A refund to the card (0200, processing code 20): a credit in settlement."""

    name: ClassVar[str] = "refund"
    kind: ClassVar[str] = "refund"
    processing_code: ClassVar[str] = "200000"
    cup_type: ClassVar[str] = "25"
    direction: ClassVar[str] = "credit"


@dataclass(frozen=True)
class PreAuthorization(Purchase):
    """An authorization only (0100): holds funds, never settled."""

    name: ClassVar[str] = "preauth"
    kind: ClassVar[str] = "authorization"
    mti: ClassVar[str] = "0100"
    processing_code: ClassVar[str] = "030000"
    cup_type: ClassVar[str] = "10"


@dataclass(frozen=True)
class BalanceInquiry:
    """Balance inquiry (0200, processing code 31; CUP 60.1 = 01): no amount, nothing moves, so no
    reversal is stored; the answer's field 54 carries the balance. An unanswered inquiry just fails."""

    pan: str
    expiry: str
    track2: str | None = None
    pin_block: str | None = None

    name: ClassVar[str] = "balance"
    processing_code: ClassVar[str] = "310000"
    cup_type: ClassVar[str] = "01"


@dataclass(frozen=True)
class OfflineSale:
    """A sale approved offline (floor limit): stored at once, forwarded as an advice (0220)."""

    amount: int
    pan: str
    expiry: str
    auth_code: str = ""

    name: ClassVar[str] = "offline-sale"


@dataclass(frozen=True)
class ReverseLast:
    """Void: reverse the last approved transaction of the open batch (0400, reason 17)."""

    name: ClassVar[str] = "reverse-last"


@dataclass(frozen=True)
class Settle:
    name: ClassVar[str] = "settle"


Command = SignOn | SignOff | Echo | Drain | Purchase | BalanceInquiry | OfflineSale | ReverseLast | Settle


# ---------------------------------------------------------------------------------------------
# Actions: what the driver must do next


@dataclass(frozen=True)
class Connect:
    """Open a connection (bounded by ``profile.connect_timeout``); report ``connection_made`` or
    ``connect_failed``."""


@dataclass(frozen=True)
class Send:
    """Encode and write ``message``. Everything it depends on is already durable. Its reply is due
    by ``deadline``; the next action is ``AwaitReply``. A failed write is ``connection_lost``."""

    message: Message
    deadline: float
    purpose: str  # signon, signoff, echo, financial, reversal, advice, settlement, upload, upload-end


@dataclass(frozen=True)
class AwaitReply:
    """Read frames until ``deadline``, feeding each to ``receive`` / ``receive_undecodable``; then
    (or at the deadline) ask ``next_action`` again."""

    deadline: float


@dataclass(frozen=True)
class Sleep:
    """Wait until ``until`` (a backoff); frames arriving meanwhile may still be fed to ``receive``."""

    until: float
    reason: str


@dataclass(frozen=True)
class AwaitConfirmation:
    """The sale is approved; wait until ``deadline`` for the cardholder to confirm (signature / confirm
    key), then report ``cardholder_confirmed`` — or ask ``next_action`` again at the deadline, and the
    terminal reverses the sale (reason 17, customer cancellation)."""

    deadline: float


@dataclass(frozen=True)
class Finished:
    """The operation is over; ``outcome`` says how."""

    outcome: Outcome


@dataclass(frozen=True)
class Idle:
    """No operation is running."""


Action = Connect | Send | AwaitReply | AwaitConfirmation | Sleep | Finished | Idle


OUTCOME_KINDS = (
    "approved",
    "declined",
    "reversed",
    "unknown-queued",
    "unknown",
    "refused",
    "failed",
    "completed",
    "unbalanced",
)


@dataclass(frozen=True)
class Outcome:
    """How an operation ended.

    ``kind``: approved (RRN, auth code) · declined (code + meaning) · reversed (the exchange failed
    and its reversal was acknowledged: nothing moved) · unknown-queued (what the host did is not
    known yet; a reversal/advice/settlement is stored and goes out before the next transaction) ·
    unknown (the host refused the reversal: whether money moved cannot be known) · refused (checked
    locally, nothing sent) · failed (not done: no connection, no sign-on, an older item blocks) ·
    completed (a drain with nothing left owed). ``text`` is one readable line.
    """

    kind: str
    operation: str
    text: str
    response_code: str = ""
    meaning: str = ""
    stan: str = ""
    rrn: str = ""
    auth_code: str = ""
    amount: int | None = None
    batch: str = ""
    journal_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Note:
    """Something for the terminal's journal. ``kind``: signed-on, signon-failed, signon-demanded,
    signed-off, connect-failed, connection-lost, exchange-failed, reversal-queued, reversal-cleared,
    reversal-refused, advice-forwarded, advice-declined, item-retry, settlement-result,
    batch-closed, upload-started, late-reply-discarded, unexpected-message-discarded, recovered,
    refused."""

    kind: str
    text: str
    stan: str = ""
    message: Message | None = None



# ---------------------------------------------------------------------------------------------
# Small helpers (local checks)


def _check_now(now: object) -> None:
    if type(now) is float and now - now == 0.0:  # the common case first (finite: inf - inf is nan)
        return
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise PolicyError(f"now must be Unix seconds (a finite number), got {now!r}")


_AMOUNT_TYPES = {"01": "ledger", "02": "available"}


def _balances(value: str, exponent: int) -> str:
    """Field 54 (20-character blocks: account type 2, amount type 2, currency 3, C/D, amount 12) read out."""
    parts = []
    for start in range(0, len(value) - 19, 20):
        block = value[start:start + 20]
        if block[7] not in "CD" or not block[8:].isdigit():
            return f"unreadable field 54 {value!r}"
        sign = "-" if block[7] == "D" else ""
        parts.append(f"{_AMOUNT_TYPES.get(block[2:4], 'amount type ' + block[2:4])} "
                     f"{sign}{format_amount(int(block[8:]), exponent)} (currency {block[4:7]})")
    return ", ".join(parts) or "the host gave no balance (field 54 absent)"


def _track2_ok(track2: object) -> bool:
    if not (isinstance(track2, str) and 1 <= len(track2) <= 37 and track2.isascii()):
        return False
    separators = sum(track2.count(s) for s in "=D")
    return separators == 1 and all(c.isdigit() or c in "=D" for c in track2)


def _hex_ok(value: object, width: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) == width
        and value.isascii()
        and all(c in "0123456789abcdefABCDEF" for c in value)
    )

