"""The careful POS terminal's rules as a pure state machine (h11 style).

The policy never sleeps, never touches a socket and never reads a clock: the driver passes ``now``
(Unix seconds) into every call. It decides; the driver (``terminal.client``) only moves bytes,
sleeps and connects. One operation runs at a time::

    policy.start(Purchase(amount=1234, pan=..., expiry="2712"), now)
    while True:
        action = policy.next_action(now)      # Connect | Send | AwaitReply | Sleep | Finished
        ...perform it, then report what happened:
        policy.connection_made / connect_failed / connection_lost / receive / receive_undecodable
        if isinstance(action, Finished): break

(``terminal.client`` is that driver; the test suite's ``Harness`` is a synchronous one.) What
happened along the way comes out of ``take_notes()`` for the terminal's journal: sign-ons, failed
exchanges, late replies discarded.

The rules (domain.md, "Terminal rules"):

* **Sign-on first.** Every operation that sends a financial message signs on first when the
  terminal is not signed on; a fresh policy never is (sessions do not survive restarts). Failed
  sign-ons are retried up to ``signon_attempts`` with exponential backoff (a ``Sleep`` action).
  A host demand (a code in ``signon_demand_codes``: A0, 99, the host's "sign on first"; or the CUP
  header's processing requirement 3) drops the session; the next message signs on again.
* **Local refusals**: amount <= 0, a PAN that is not 12-19 digits with a valid Luhn check digit,
  an expiry month before the current one: refused before anything is stored or sent.
* **Every exchange has a deadline** (``profile.timeout_for``). A message is the response only if
  its MTI is the request's + 10 and fields 41 and 11 match; then echo checks (3, 4, 11, 41, and
  42 when approved) and the MAC verdict decide whether the exchange succeeded. Anything else that
  arrives is logged and discarded, late replies to exchanges already failed included: they never
  change an outcome.
* **Persist, then send.** Before a 0200/0100 is returned in a ``Send``, one store transaction has
  allocated its STAN, journalled it as in-flight and stored its pending reversal. A valid answer
  deletes the reversal in the same transaction that records the answer. Timeout, connection loss,
  an unparsable reply or a failed echo queue it with reason 98, a failed MAC with A0; the reversal
  goes out at once: 0400, then 0401 repeats (same STAN and field 7: retransmissions), up to
  ``reversal_attempts`` per operation. Unanswered, it stays stored and goes out before the next
  transaction — and a new transaction is not sent while any reversal, advice or settlement is
  still owed to the host. A reversal carries its own new STAN in field 11 and names the original
  (MTI, STAN, field 7, acquirer) in field 90; track data, PIN and ICC data are dropped.
* **Advices** (0220, offline sales) are stored when made and forwarded (0221 repeats) until the
  host answers; 94 counts as success.
* **Settlement** totals come from the journal of the open batch (approved, not reversed, not
  authorizations). 0500; on 95 (CUP: field 48 flag '2') upload the batch (0320 per record, then the
  end marker: ISO field 70 = 202, CUP 60.3 = 202) and settle again with a new 0500; on 00 close the
  batch and increment the batch number. A 0500 left unanswered is repeated (0501) before anything
  else, so the batch the host closed is the batch the terminal closes.
* **STANs** come from the store, persisted before use, 000001-999999 wrapping.
* **Keys, MACs, PINs** (profiles with a TMK or static keys, see ``terminal.profile``). A CUP
  sign-on asks for the profile's key layout in 60.3; an approved sign-on of a terminal with a TMK
  must carry field 62, whose working keys are decrypted and their check values verified: a missing
  field, a wrong size or a mismatch is a failed sign-on (retried like any other), and the keys of
  the last good sign-on stay in memory only (a restart signs on again anyway). Static keys are used
  as they are. Every request but network management (08xx) is MACed with the MAC key
  (``request_mac``: the driver encodes and MACs it), and replies are checked (``reply_mac_ok``):
  a reply with a MAC must verify, and an approval (or a CUP settlement answer) must have one; a
  decline without a MAC is accepted, because a host cannot MAC its "MAC check failed" answer. A
  bad MAC fails the exchange: reversal with reason A0, sign on again for new keys. A purchase
  with a ``pin`` sends field 52: the ISO format 0 block encrypted under the PIN key; the PIN
  itself is never stored.

ISO settlement sends NET figures in 74/76/86/88 (approved and not reversed) with the reversal
columns 75/77/87/89 as zeros and 97 as their net: hosts differ on whether 76/88 are gross or net,
and with zero reversal columns both readings give the same totals.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from switch.codec.composite import (
    CompositeFieldError,
    CupField60,
    CupHeader,
    OriginalData,
    SettlementTotals,
)
from switch.codec.message import Message
from switch.security import (
    MAC_KEY_LENGTHS,
    MacPlacement,
    SecurityError,
    WorkingKeys,
    check_value,
    decrypt_field62,
    encrypt_pin_block,
    mac_field,
    pin_block_format0,
    verify_mac,
)
from terminal.profile import TerminalProfile
from terminal.store import JournalEntry, PendingAdvice, PendingReversal, PendingSettlement, TerminalStore

__all__ = [
    "APPROVAL_CODES",
    "MAC_FAILURE_REASON",
    "NO_REPLY_REASON",
    "RESPONSE_MEANINGS",
    "VOID_REASON",
    "Action",
    "AwaitReply",
    "Command",
    "Connect",
    "Drain",
    "Echo",
    "Finished",
    "Idle",
    "Note",
    "OfflineSale",
    "Outcome",
    "PolicyError",
    "PreAuthorization",
    "Purchase",
    "Refund",
    "ReverseLast",
    "Send",
    "Settle",
    "SignOff",
    "SignOn",
    "Sleep",
    "TerminalPolicy",
    "card_problem",
    "luhn_valid",
    "meaning_of",
]

APPROVAL_CODES = frozenset({"00", "08", "10", "11"})
"""Codes that approve: approved, honour with identification, partial approval, VIP approval."""
DUPLICATE_CODE = "94"
PARTIAL_APPROVAL = "10"
NO_REPLY_REASON = "98"
MAC_FAILURE_REASON = "A0"
VOID_REASON = "17"  # ISO 8583 "customer cancellation": a reversal the operator asked for

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
    "22": "suspected malfunction / order expired",
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

_SECRETS = (35, 36, 45, 52, 53, 55, 64, 128)  # never copied into a reversal (MACs are recomputed)
_ECHOED = (3, 4, 11, 41)
_LATE_MEMORY = 64  # failed exchanges whose replies are recognised as late (older ones: "unexpected")
_MAX_STEPS = 64  # internal transitions one next_action may take; more means a bug, not a slow host


def meaning_of(code: str) -> str:
    return RESPONSE_MEANINGS.get(code, "unknown response code")


class PolicyError(RuntimeError):
    """The policy was used wrongly (an operation started while one runs, a bad command)."""


# ---------------------------------------------------------------------------------------------
# Local checks


def luhn_valid(pan: str) -> bool:
    """Whether ``pan`` (digits) ends in a correct Luhn (mod 10) check digit."""
    total = 0
    for position, char in enumerate(reversed(pan)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def card_problem(pan: object, expiry: object, today: datetime) -> str | None:
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


Command = SignOn | SignOff | Echo | Drain | Purchase | OfflineSale | ReverseLast | Settle


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
class Finished:
    """The operation is over; ``outcome`` says how."""

    outcome: Outcome


@dataclass(frozen=True)
class Idle:
    """No operation is running."""


Action = Connect | Send | AwaitReply | Sleep | Finished | Idle


OUTCOME_KINDS = (
    "approved",
    "declined",
    "reversed",
    "unknown-queued",
    "unknown",
    "refused",
    "failed",
    "completed",
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
# Internal state


@dataclass
class _Exchange:
    purpose: str
    request: Message
    deadline: float
    ref: int | None = None  # journal id (financial), reversal id (reversal), advice id (advice)


@dataclass
class _Operation:
    command: Command
    needs_signon: bool
    drains: bool
    phase: str = "start"
    outcome: Outcome | None = None
    journal_id: int | None = None
    budget: dict[tuple[str, int], int] = field(default_factory=dict)
    connect_failures: int = 0
    signon_failures: int = 0
    resignons: int = 0
    resends: int = 0
    resend_pending: bool = False
    last_problem: str = ""
    last_code: str = ""
    void_refusal: str = ""
    own_sent: bool = False  # the operation's own main message has gone out
    settle_result: str | None = None  # balanced | unbalanced | declined
    settle_code: str = ""
    settle_batch: str = ""  # the batch the last settlement answer was about
    uploaded: bool = False
    upload_ids: list[int] = field(default_factory=list)
    upload_pos: int = 0
    upload_message: Message | None = None  # the record being sent, for 0321 repeats
    upload_attempts: int = 0


def _queue_key(kind: str, item_id: int) -> tuple[str, int]:
    return (kind, item_id)


class TerminalPolicy:
    """The terminal's decisions over one ``TerminalStore``; see the module docstring."""

    def __init__(self, profile: TerminalProfile, store: TerminalStore, now: float) -> None:
        if store.terminal_id != profile.terminal_id.rstrip(" "):
            raise PolicyError(
                f"store {store.path} belongs to terminal {store.terminal_id!r}, "
                f"the profile is terminal {profile.terminal_id.rstrip()!r}"
            )
        _check_now(now)
        self.profile = profile
        self.store = store
        self._connected = False
        self._signed_on = False  # never trusted across restarts
        self._exchange: _Exchange | None = None
        self._op: _Operation | None = None
        self._wait_until: float | None = None
        self._late: deque[tuple[str, str, str]] = deque(maxlen=_LATE_MEMORY)
        self._notes: list[Note] = []
        self._keys: WorkingKeys | None = profile.static_keys if profile.tmk is None else None
        for entry in store.recover_in_flight(now):
            self._note(
                "recovered",
                f"{entry.kind} STAN {entry.stan} was in flight when the terminal stopped: "
                "outcome unknown, its stored reversal goes out first",
                entry.stan,
            )

    # -- queries ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._op is not None

    @property
    def signed_on(self) -> bool:
        return self._signed_on

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def working_keys(self) -> WorkingKeys | None:
        """The keys in use: from the last good sign-on (TMK profiles) or the static ones; None before."""
        return self._keys

    def request_mac(self, message: Message) -> tuple[str, bytes] | None:
        """(algorithm, MAC key) when ``message`` must go out MACed (the driver encodes it with
        ``security.with_mac_placeholder`` and applies the MAC); None when it carries no MAC."""
        if self.profile.mac == "none" or self._keys is None or message.mti.startswith("08"):
            return None
        return self.profile.mac, self._keys.mac_key

    def reply_mac_ok(self, message: Message, raw: bytes, placement: MacPlacement | None) -> bool:
        """The MAC verdict on a reply (``raw``: its bytes without length header and TPDU), for
        ``receive(mac_ok=...)``. See the module docstring for which replies must carry a MAC."""
        if self.profile.mac == "none" or self._keys is None or message.mti.startswith("08"):
            return True
        if mac_field(message) not in message.fields:
            code = message.get(39)
            return code is not None and code not in APPROVAL_CODES
        if placement is None:
            return False
        try:
            return verify_mac(raw, self.profile.mac, self._keys.mac_key, placement)
        except SecurityError:  # a reply too short to hold a MAC, or the like: not a good MAC
            return False

    def owes_host(self) -> bool:
        """Whether reversals, advices or a settlement are stored and must reach the host."""
        return bool(self.store.reversals() or self.store.advices() or self.store.pending_settlement)

    def take_notes(self) -> list[Note]:
        """Journal notes since the last call (the driver logs them after every call)."""
        notes, self._notes = self._notes, []
        return notes

    # -- commands --------------------------------------------------------------------------------

    def start(self, command: Command, now: float) -> None:
        """Begin an operation; then drive it with ``next_action``. A local refusal or a drain with
        nothing owed finishes at once (the first action is ``Finished``)."""
        _check_now(now)
        if self._op is not None:
            raise PolicyError(f"operation {self._op.command.name} is still running; finish it first")
        if isinstance(command, SignOn):
            self._signed_on = False
            op = _Operation(command, needs_signon=True, drains=False)
        elif isinstance(command, SignOff | Echo):
            op = _Operation(command, needs_signon=False, drains=False)
        elif isinstance(command, Drain | Settle | ReverseLast | Purchase | OfflineSale):
            op = _Operation(command, needs_signon=True, drains=True)
        else:
            raise PolicyError(f"not a terminal command: {command!r}")
        self._op = op
        self._wait_until = None
        if isinstance(command, Purchase):
            problem = self._sale_problem(command, now)
            if problem is not None:
                self._refuse(op, problem)
        elif isinstance(command, OfflineSale):
            problem = self._sale_problem(command, now)
            if problem is not None:
                self._refuse(op, problem)
            else:
                self._record_offline_sale(op, command, now)
        elif isinstance(command, Drain) and not self.owes_host():
            op.outcome = Outcome("completed", command.name, "nothing owed to the host")
        elif isinstance(command, ReverseLast) and self._void_target() is None:
            self._refuse(op, f"no approved transaction in the open batch {self.store.batch} to reverse")

    def _sale_problem(self, command: Purchase | OfflineSale, now: float) -> str | None:
        problem = _amount_problem(command.amount) or card_problem(command.pan, command.expiry, self._local(now))
        if problem is not None:
            return problem
        if isinstance(command, Purchase):
            if command.track2 is not None and not _track2_ok(command.track2):
                return "malformed track 2: up to 37 digits with one '=' (or 'D') separator"
            if command.pin_block is not None and not _hex_ok(command.pin_block, 16):
                return "malformed PIN block: 16 hex digits"
            if command.pin is not None:
                if command.pin_block is not None:
                    return "give a PIN or a PIN block, not both"
                pin = command.pin
                if not (isinstance(pin, str) and pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 12):
                    return "malformed PIN: 4 to 12 digits"
                if not self.profile.has_keys:
                    return "a PIN needs a PIN key: use a terminal profile with a tmk or static pin_key"
        elif command.auth_code and not (
            len(command.auth_code) <= 6 and command.auth_code.isascii() and command.auth_code.isalnum()
        ):
            return "malformed offline approval code: up to 6 letters or digits"
        return None

    def _refuse(self, op: _Operation, reason: str) -> None:
        self._note("refused", f"{op.command.name} refused locally: {reason}")
        op.outcome = Outcome("refused", op.command.name, f"refused: {reason}", meaning=reason)

    # -- the driver's loop -----------------------------------------------------------------------

    def next_action(self, now: float) -> Action:
        """What the driver must do now. Detects an expired deadline itself (``now`` >= deadline)."""
        _check_now(now)
        exchange = self._exchange
        if exchange is not None:
            if now < exchange.deadline:
                return AwaitReply(exchange.deadline)
            self._fail(now, "timeout", f"no reply within {self.profile.timeout_for(exchange.request.mti):g}s")
        for _ in range(_MAX_STEPS):
            op = self._op
            if op is None:
                return Idle()
            if op.outcome is not None:
                self._op = None
                self._wait_until = None
                return Finished(op.outcome)
            if self._wait_until is not None:
                if now < self._wait_until:
                    return Sleep(self._wait_until, op.last_problem or "backoff")
                self._wait_until = None
            action = self._step(now, op)
            if action is not None:
                return action
        raise PolicyError(
            f"operation {self._op.command.name if self._op else '?'} made no progress "
            f"in {_MAX_STEPS} steps (a policy bug)"
        )

    def connection_made(self, now: float) -> None:
        _check_now(now)
        self._connected = True
        if self._op is not None:
            self._op.connect_failures = 0

    def connect_failed(self, now: float, reason: str) -> None:
        _check_now(now)
        self._connected = False
        op = self._op
        self._note("connect-failed", f"cannot connect: {reason}")
        if op is None:
            return
        op.connect_failures += 1
        op.last_problem = f"cannot connect: {reason}"
        if op.connect_failures < self.profile.connect_attempts:
            self._wait_until = now + self.profile.backoff(op.connect_failures)

    def connection_lost(self, now: float, reason: str = "connection closed") -> None:
        """The connection broke (peer closed, reset, failed write). An exchange in progress fails."""
        _check_now(now)
        was_connected = self._connected
        self._connected = False
        if was_connected or self._exchange is not None:
            self._note("connection-lost", reason)  # counted whether or not an exchange was waiting
        if self._exchange is not None:
            self._fail(now, "connection-lost", reason)

    def receive(self, message: Message, now: float, *, mac_ok: bool = True) -> None:
        """A decoded message arrived. ``mac_ok`` is the driver's MAC verdict (True when no MAC is used).

        Only the awaited exchange's response (MTI + 10, field 41, field 11) is applied; anything else
        becomes a discard note. A reply at or after the deadline is late: the exchange has failed.
        """
        _check_now(now)
        exchange = self._exchange
        if exchange is not None and now >= exchange.deadline:
            self._fail(now, "timeout", f"no reply within {self.profile.timeout_for(exchange.request.mti):g}s")
            exchange = None
        if exchange is None or not self._matches(exchange, message):
            self._discard(message)
            return
        if not mac_ok:
            self._fail(now, "mac", "the reply's MAC does not verify")
            return
        problem = self._echo_problem(exchange, message)
        if problem is not None:
            self._fail(now, "echo", problem)
            return
        self._exchange = None
        header_demand = self.profile.cup and exchange.purpose != "signon" and _header_demands_signon(message)
        self._apply(exchange, message, now)
        if header_demand and self._signed_on:
            self._signed_on = False
            self._note("signon-demanded", "the reply's CUP header asks for a new sign-on", message.get(11, ""))

    def send_failed(self, now: float, reason: str) -> None:
        """The driver could not encode or write the last ``Send`` (a write error that also broke the
        connection is ``connection_lost``). The exchange fails like any other: a financial request's
        stored reversal goes out, so a message that may or may not have left is never left hanging."""
        _check_now(now)
        if self._exchange is None:
            raise PolicyError("send_failed without a message in flight")
        self._fail(now, "not-sent", f"could not send: {reason}")

    def receive_undecodable(self, now: float, error: str) -> None:
        """A frame arrived that the codec could not decode: the awaited exchange (if any) fails."""
        _check_now(now)
        if self._exchange is not None and now < self._exchange.deadline:
            self._fail(now, "unparsable", f"unparsable reply: {error}")
        else:
            self._note("unexpected-message-discarded", f"undecodable frame discarded: {error}")

    # -- stepping --------------------------------------------------------------------------------

    def _step(self, now: float, op: _Operation) -> Action | None:
        outcome = self._own_outcome(op)
        if outcome is not None:  # done: a sign-on demand on the last reply is the next operation's business
            op.outcome = outcome
            return None
        if not self._connected:
            if op.connect_failures >= self.profile.connect_attempts:
                self._give_up(op, op.last_problem or "cannot connect")
                return None
            return Connect()
        if op.needs_signon and not self._signed_on:
            if op.resignons > self.profile.resignon_limit:
                self._give_up(op, f"the host demanded a new sign-on {op.resignons} times")
                return None
            if op.signon_failures >= self.profile.signon_attempts:
                self._give_up(op, f"sign-on failed {op.signon_failures} times; last: {op.last_problem}")
                return None
            return self._send_network(now, "signon")
        if op.drains:
            action = self._drain(now, op)
            if action is not None or op.outcome is not None:
                return action
        return self._op_step(now, op)

    def _drain(self, now: float, op: _Operation) -> Action | None:
        """The next stored item owed to the host; None when nothing is owed.

        Order: reversals (oldest first), then an unanswered settlement (so the batch it closes is
        the batch the terminal closes), then advices (re-batched when first sent, see
        ``_send_advice``).
        """
        limit = self.profile.reversal_attempts
        for reversal in self.store.reversals():
            key = _queue_key("reversal", reversal.id)
            if op.budget.get(key, 0) >= limit:
                self._give_up(
                    op,
                    f"the reversal of STAN {reversal.message.get(90, '')[4:10]} got no answer in "
                    f"{limit} attempts; it stays stored and goes out before the next transaction",
                )
                return None
            return self._send_reversal(now, op, reversal)
        pending = self.store.pending_settlement
        if pending is not None:
            key = _queue_key("settlement", 0)
            if op.budget.get(key, 0) >= self.profile.settlement_attempts:
                self._give_up(
                    op,
                    f"settlement STAN {pending.message.get(11)} got no answer in "
                    f"{self.profile.settlement_attempts} attempts; it is repeated before the "
                    "next transaction",
                )
                return None
            op.budget[key] = op.budget.get(key, 0) + 1
            self.store.set_pending_settlement(PendingSettlement(pending.batch, pending.message, pending.attempts + 1))
            return self._transmit(now, "settlement", pending.message.copy(mti="0501"))
        for advice in self.store.advices():
            key = _queue_key("advice", advice.id)
            if op.budget.get(key, 0) >= self.profile.advice_attempts:
                self._give_up(
                    op,
                    f"the advice STAN {advice.message.get(11)} got no answer in "
                    f"{self.profile.advice_attempts} attempts; it stays stored",
                )
                return None
            op.budget[key] = op.budget.get(key, 0) + 1
            return self._send_advice(now, advice)
        return None

    def _own_outcome(self, op: _Operation) -> Outcome | None:
        """The operation's outcome once its own work is over, else None."""
        command = op.command
        name = command.name
        if isinstance(command, Purchase | OfflineSale | ReverseLast):
            if op.journal_id is None or op.resend_pending:
                return None
            entry = self.store.entry(op.journal_id)
            if entry.state in ("in-flight", "unknown", "advice-pending"):
                return None  # its reversal or advice is still owed
            return self._entry_outcome(op, entry)
        if isinstance(command, SignOn):
            if self._signed_on:
                return Outcome("approved", name, "signed on", response_code="00", meaning=meaning_of("00"))
            return None
        if isinstance(command, Settle):
            batch, code = op.settle_batch, op.settle_code
            if op.settle_result == "balanced":
                return Outcome(
                    "approved",
                    name,
                    f"settled: batch {batch} closed, batch {self.store.batch} open",
                    response_code="00",
                    meaning="balanced",
                    batch=batch,
                )
            if op.settle_result == "declined":
                return Outcome(
                    "declined",
                    name,
                    f"settlement declined {code} ({meaning_of(code)}); batch {batch} stays open",
                    response_code=code,
                    meaning=meaning_of(code),
                    batch=batch,
                )
            if op.settle_result == "unbalanced" and op.uploaded:
                return Outcome(
                    "declined",
                    name,
                    f"batch {batch} still does not balance after its upload",
                    response_code="95",
                    meaning=meaning_of("95"),
                    batch=batch,
                )
        return None

    def _op_step(self, now: float, op: _Operation) -> Action | None:
        """The operation's own work, once connected, signed on (if needed) and owing nothing."""
        command = op.command
        if isinstance(command, Purchase):
            op.resend_pending = False
            if command.pin is not None and self._keys is None:
                self._refuse(op, "no PIN working key: the host's sign-on delivered none")
                return None
            return self._send_financial(now, op, command)
        if isinstance(command, ReverseLast):
            self._start_void(now, op)
            return None
        if isinstance(command, Settle):
            return self._settle_step(now, op)
        if isinstance(command, Drain):
            op.outcome = Outcome("completed", command.name, "everything owed to the host was answered")
            return None
        if isinstance(command, Echo | SignOff) and op.phase == "start":
            op.phase = "sent"
            return self._send_network(now, "echo" if isinstance(command, Echo) else "signoff")
        raise PolicyError(f"{command.name} has nothing left to do but no outcome (a policy bug)")

    # -- building and sending --------------------------------------------------------------------

    def _local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, UTC) + timedelta(minutes=self.profile.utc_offset_minutes)

    def _header(self) -> str:
        return self.profile.cup_header if self.profile.cup else ""

    def _base_fields(self, now: float, stan: str) -> dict[int, str]:
        """Fields 7 (ISO only: CUP POS requests carry none), 11, 41, 42."""
        fields = {11: stan, 41: self.profile.terminal_id, 42: self.profile.merchant_id}
        if not self.profile.cup:
            fields[7] = datetime.fromtimestamp(now, UTC).strftime("%m%d%H%M%S")
        return fields

    def _card_fields(
        self, now: float, stan: str, processing_code: str, amount: int, pan: str, expiry: str, cup_type: str
    ) -> dict[int, str]:
        fields = self._base_fields(now, stan)
        fields.update(
            {
                2: pan,
                3: processing_code,
                4: f"{amount:012d}",
                14: expiry,
                22: "012",
                25: "00",
                49: self.profile.currency,
            }
        )
        if self.profile.acquirer_id:
            fields[32] = self.profile.acquirer_id
        if self.profile.cup:
            fields[60] = CupField60(cup_type, self.store.batch, "000").format()
        else:
            local = self._local(now)
            fields[12] = local.strftime("%H%M%S")
            fields[13] = local.strftime("%m%d")
        return fields

    def _transmit(self, now: float, purpose: str, message: Message, ref: int | None = None) -> Send:
        deadline = now + self.profile.timeout_for(message.mti)
        self._exchange = _Exchange(purpose, message, deadline, ref)
        return Send(message, deadline, purpose)

    def _send_network(self, now: float, purpose: str) -> Send:
        code = {"signon": "001", "signoff": "002", "echo": "301"}[purpose]
        if purpose == "signon" and self.profile.cup:
            code = self.profile.signon_network_code
        fields = self._base_fields(now, self.store.next_stan())
        if self.profile.cup:
            fields[60] = CupField60("00", self.store.batch, code).format()
        else:
            del fields[42]
            fields[70] = code
        return self._transmit(now, purpose, Message("0800", dict(sorted(fields.items())), self._header()))

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
            self.store.add_reversal(entry.id, NO_REPLY_REASON, self._reversal_of(request, NO_REPLY_REASON), now)
        op.journal_id = entry.id
        op.own_sent = True
        return self._transmit(now, "financial", request, entry.id)

    def _reversal_of(self, original: Message, reason: str) -> Message:
        """The 0400 for ``original``: its fields minus card secrets, field 90 naming it, 39 the reason.

        Fields 11 (and 7) are given their own values when the reversal is first transmitted.
        """
        original_data = OriginalData.of(original, self.profile.acquirer_id).format()
        return original.copy(mti="0400", drop=_SECRETS, f39=reason, f90=original_data)

    def _send_reversal(self, now: float, op: _Operation, reversal: PendingReversal) -> Send:
        key = _queue_key("reversal", reversal.id)
        op.budget[key] = op.budget.get(key, 0) + 1
        with self.store.transaction():
            if reversal.attempts == 0:
                first = reversal.message.copy(mti="0400", f11=self.store.next_stan(), f39=reversal.reason)
                if not self.profile.cup:
                    first[7] = datetime.fromtimestamp(now, UTC).strftime("%m%d%H%M%S")
                message = first
            else:
                first = reversal.message
                message = first.copy(mti="0401")
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
        message = advice.message
        if self.profile.cup:
            sixty = CupField60.parse(message[60])
            message = message.copy(f60=CupField60(sixty.txn_type, batch, sixty.network_code, sixty.rest).format())
        with self.store.transaction():
            self.store.update_advice(advice.id, now=now, attempts=1, message=message)
            self.store.update_entry(advice.journal_id, now=now, batch=batch)
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
            self.store.update_entry(target.id, now=now, state="unknown", reason="void requested: reversal queued")
            self.store.add_reversal(target.id, VOID_REASON, self._reversal_of(target.request, VOID_REASON), now)
        op.journal_id = target.id
        op.own_sent = True
        self._note("reversal-queued", f"void of {target.kind} STAN {target.stan} queued", target.stan)

    # -- settlement ------------------------------------------------------------------------------

    def _totals(self) -> SettlementTotals:
        debit_count = debit_amount = credit_count = credit_amount = 0
        for entry in self.store.entries(batch=self.store.batch, states=("approved",)):
            if not entry.captured:
                continue
            if entry.direction == "credit":
                credit_count += 1
                credit_amount += entry.amount
            else:
                debit_count += 1
                debit_amount += entry.amount
        return SettlementTotals(debit_count, debit_amount, credit_count, credit_amount)

    def _settle_step(self, now: float, op: _Operation) -> Action | None:
        if op.settle_result is None:
            return self._send_settlement(now, op)
        # unbalanced (the other results are final, see _own_outcome): upload once, then settle again
        batch = self.store.batch
        if op.upload_attempts >= self.profile.settlement_attempts:
            op.outcome = Outcome(
                "failed",
                "settle",
                f"batch upload interrupted ({op.last_problem}); batch {batch} stays open",
                batch=batch,
            )
            return None
        if op.upload_message is None:
            op.upload_attempts = 0
            if op.upload_pos < len(op.upload_ids):
                op.upload_message = self._upload_record(now, self.store.entry(op.upload_ids[op.upload_pos]))
            else:
                op.upload_message = self._upload_end(now)
            message = op.upload_message
        else:
            message = op.upload_message.copy(mti="0321")
        op.upload_attempts += 1
        purpose = "upload" if op.upload_pos < len(op.upload_ids) else "upload-end"
        return self._transmit(now, purpose, message)

    def _send_settlement(self, now: float, op: _Operation) -> Send:
        batch = self.store.batch
        totals = self._totals()
        with self.store.transaction():
            fields = self._base_fields(now, self.store.next_stan())
            if self.profile.cup:
                fields[48] = totals.to_cup48()
                fields[49] = self.profile.currency
                fields[60] = CupField60("00", batch, "201").format()
            else:
                fields.update(totals.to_iso_fields())
            message = Message("0500", dict(sorted(fields.items())), self._header())
            self.store.set_pending_settlement(PendingSettlement(batch, message, 1))
        op.own_sent = True
        op.budget[_queue_key("settlement", 0)] = 1  # repeats (0501) come from _drain, within the same limit
        return self._transmit(now, "settlement", message)

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
        if self.profile.cup:
            fields[60] = CupField60("00", self.store.batch, "201").format()
        return Message("0320", dict(sorted(fields.items())), self._header())

    def _upload_end(self, now: float) -> Message:
        fields = self._base_fields(now, self.store.next_stan())
        if self.profile.cup:
            fields[60] = CupField60("00", self.store.batch, "202").format()
        else:
            fields[70] = "202"
        return Message("0320", dict(sorted(fields.items())), self._header())

    # -- responses -------------------------------------------------------------------------------

    def _matches(self, exchange: _Exchange, message: Message) -> bool:
        request = exchange.request
        return (
            message.mti == request.response_mti
            and (message.get(41) or "").rstrip(" ") == self.profile.terminal_id.rstrip(" ")
            and message.get(11) == request.get(11)
        )

    def _echo_problem(self, exchange: _Exchange, response: Message) -> str | None:
        request = exchange.request
        code = response.get(39)
        cup_settlement = self.profile.cup and exchange.purpose == "settlement"
        if code is None:
            if not cup_settlement:
                return "the reply has no response code (field 39)"
        elif not (len(code) == 2 and code.isascii() and code.isalnum()):
            return f"the reply's response code {code!r} is not 2 letters or digits"
        for number in _ECHOED:
            if number not in request:
                continue
            sent, got = request[number], response.get(number)
            if number == 41:
                sent, got = sent.rstrip(" "), (got or "").rstrip(" ")
            if got == sent:
                continue
            if (
                number == 4
                and code == PARTIAL_APPROVAL
                and got is not None
                and got.isdigit()
                and 0 < int(got) <= int(sent)
            ):
                continue
            return f"field {number} not echoed: sent {sent!r}, got {got!r}"
        if code in APPROVAL_CODES and 42 in request and (response.get(42) or "").rstrip(" ") != request[42].rstrip(" "):
            return f"field 42 not echoed on an approval: sent {request[42]!r}, got {response.get(42)!r}"
        if cup_settlement and (code is None or code == "00"):
            try:
                SettlementTotals.from_cup48(response.get(48) or "")
            except CompositeFieldError as exc:
                return f"settlement reply without a readable result: {exc.reason}"
        return None

    def _discard(self, message: Message) -> None:
        key = (message.mti, (message.get(41) or "").rstrip(" "), message.get(11) or "")
        if key in self._late:
            self._note(
                "late-reply-discarded",
                f"late {message.mti} for STAN {key[2]} (code "
                f"{message.get(39, '-')}) discarded: that exchange already failed",
                key[2],
                message,
            )
        else:
            self._note(
                "unexpected-message-discarded",
                f"{message.mti} STAN {key[2] or '-'} matches no request in progress; discarded",
                key[2],
                message,
            )

    def _demanded(self, op: _Operation, code: str, stan: str) -> bool:
        """If ``code`` demands a new sign-on: drop the session, count it; True."""
        if code not in (self.profile.signon_demand_codes or ()):
            return False
        self._signed_on = False
        op.resignons += 1
        self._note("signon-demanded", f"the host answered {code} ({meaning_of(code)}): signing on again", stan)
        return True

    def _apply(self, exchange: _Exchange, response: Message, now: float) -> None:
        op = self._op
        assert op is not None
        code = response.get(39) or ""
        stan = exchange.request.get(11) or ""
        purpose = exchange.purpose
        if purpose == "signon":
            problem = self._load_keys(response) if code == "00" else None
            if code == "00" and problem is not None:
                self._signon_failed(op, now, f"sign-on answered 00, but {problem}", "")
            elif code == "00":
                self._signed_on = True
                op.signon_failures = 0
                self.store.record_signon(now)
                keys = self._keys
                loaded = "" if keys is None or self.profile.tmk is None else (
                    f"; working keys loaded (PIN key check {check_value(keys.pin_key).hex().upper()}, "
                    f"MAC key check {check_value(keys.mac_key).hex().upper()})")
                self._note("signed-on", f"signed on{loaded}", stan)
            else:
                self._signon_failed(op, now, f"sign-on answered {code} ({meaning_of(code)})", code)
        elif purpose == "signoff":
            self._signed_on = False
            self.store.record_signon(None)
            self._note("signed-off", f"sign-off answered {code}", stan)
            op.outcome = self._code_outcome(op, code, "signed off")
        elif purpose == "echo":
            op.outcome = self._code_outcome(op, code, "echo answered")
        elif purpose == "financial":
            self._apply_financial(op, exchange, response, code, now)
        elif purpose == "reversal":
            self._apply_reversal(op, exchange, response, code, now)
        elif purpose == "advice":
            self._apply_advice(op, exchange, response, code, now)
        elif purpose == "settlement":
            self._apply_settlement(op, response, code, now)
        elif purpose in ("upload", "upload-end"):
            if self._demanded(op, code, stan) or code in self.profile.retry_codes:
                op.last_problem = f"upload answered {code}"
                return
            op.upload_message = None
            if code != "00":
                op.settle_result, op.settle_code = "declined", code
            elif purpose == "upload":
                op.upload_pos += 1
            else:
                op.uploaded = True
                op.settle_result = None
                self._note("settlement-result", f"batch upload ended ({len(op.upload_ids)} records)", stan)

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

    def _code_outcome(self, op: _Operation, code: str, done: str) -> Outcome:
        if code == "00":
            return Outcome("approved", op.command.name, done, response_code=code, meaning=meaning_of(code))
        return Outcome(
            "declined",
            op.command.name,
            f"declined {code} ({meaning_of(code)})",
            response_code=code,
            meaning=meaning_of(code),
        )

    def _apply_financial(self, op: _Operation, exchange: _Exchange, response: Message, code: str, now: float) -> None:
        entry_id = exchange.ref
        assert entry_id is not None
        reversal = self.store.reversal_for(entry_id)
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
            self.store.update_entry(entry_id, now=now, **changes)
            if reversal is not None:
                self.store.delete_reversal(reversal.id)
        stan = exchange.request.get(11) or ""
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
        if code in self.profile.reversal_cleared_codes:
            changes = {"state": "reversed", "reason": f"reversal acknowledged ({code} {meaning_of(code)})"}
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
            self.store.update_entry(entry.id, now=now, **changes)
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
            self.store.update_entry(entry.id, now=now, **changes)
            self.store.delete_advice(advice.id)
        self._note(note[0], note[1], stan)

    def _apply_settlement(self, op: _Operation, response: Message, code: str, now: float) -> None:
        stan = response.get(11) or ""
        if self.profile.cup and code in ("", "00"):
            _, flag = SettlementTotals.from_cup48(response.get(48) or "")
            code = {"1": "00", "2": "95"}.get(flag, "96")
        if self._demanded(op, code, stan):
            return
        if code in self.profile.retry_codes:
            self._note("item-retry", f"settlement STAN {stan} answered {code} ({meaning_of(code)}): repeated", stan)
            return
        pending = self.store.pending_settlement
        batch = pending.batch if pending is not None else self.store.batch
        if code == "00":
            new_batch = self.store.close_batch()
            result = "balanced"
            self._note("batch-closed", f"batch {batch} settled and closed; batch {new_batch} open", stan)
        else:
            self.store.clear_pending_settlement()
            result = "unbalanced" if code == "95" else "declined"
            self._note(
                "settlement-result",
                f"settlement of batch {batch} answered {code} ({meaning_of(code)}); the batch stays open",
                stan,
            )
        if isinstance(op.command, Settle):
            op.settle_result, op.settle_code, op.settle_batch = result, code, batch
            if result == "unbalanced" and not op.uploaded:
                op.upload_ids = [e.id for e in self.store.entries(batch=batch, states=("approved",)) if e.captured]
                op.upload_pos = 0
                op.upload_message = None
                op.upload_attempts = 0
                self._note("upload-started", f"uploading {len(op.upload_ids)} records of batch {batch}", stan)

    # -- failures --------------------------------------------------------------------------------

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
                self.store.update_entry(exchange.ref, now=now, state="unknown", reason=f"{detail}: reversal queued")
                if reversal is not None:
                    self.store.update_reversal(
                        reversal.id, now=now, reason=reason, message=reversal.message.copy(f39=reason)
                    )
            self._note("reversal-queued", f"reversal of STAN {stan} queued with reason {reason}", stan)
        elif purpose == "signon":
            self._signon_failed(op, now, f"sign-on {detail}", "")
        elif purpose in ("echo", "signoff"):
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
        common = {"stan": entry.stan, "amount": entry.amount, "batch": entry.batch, "journal_id": entry.id}
        state = entry.state
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
            return Outcome(
                "declined",
                name,
                f"declined {code} ({meaning_of(code)})",
                response_code=code,
                meaning=meaning_of(code),
                rrn=entry.rrn,
                **common,
            )
        if state == "reversed":
            return Outcome("reversed", name, f"reversed: {entry.reason}", rrn=entry.rrn, **common)
        if state == "reversal-refused":
            return Outcome("unknown", name, f"outcome unknown: {entry.reason}", **common)
        what = "advice stored" if state == "advice-pending" else "reversal stored"
        return Outcome("unknown-queued", name, f"outcome unknown, {what}: {reason or entry.reason}", **common)

    def _note(self, kind: str, text: str, stan: str = "", message: Message | None = None) -> None:
        self._notes.append(Note(kind, text, stan, message))


# ---------------------------------------------------------------------------------------------
# Small helpers


def _check_now(now: object) -> None:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise PolicyError(f"now must be Unix seconds (a finite number), got {now!r}")


def _header_demands_signon(message: Message) -> bool:
    try:
        return CupHeader.parse(message.header).needs_sign_on
    except CompositeFieldError:
        return False


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
