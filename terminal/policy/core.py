"""The policy's state and the helpers every part of it uses: the store, the profile's family, the
synchronised clock, the exchange awaited, the operation running, journal notes. Pure."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from switch.codec.composite import (
    SettlementTotals,
)
from switch.codec.message import Message
from switch.security import (
    MacPlacement,
    SecurityError,
    WorkingKeys,
    mac_field,
    verify_mac,
)
from terminal.clock import SyncedClock, host_offset
from terminal.family import SECRET_FIELDS, Family, family_of
from terminal.policy.types import (
    APPROVAL_CODES,
    Command,
    Note,
    Outcome,
    PolicyError,
    Send,
    _check_now,
    meaning_of,
)
from terminal.profile import TerminalProfile
from terminal.settlement import (
    SettlePhase,
    SettleResult,
)
from terminal.store import JournalEntry, TerminalStore

__all__ = ["PolicyCore"]

_SECRETS = SECRET_FIELDS
_ECHOED = (3, 4, 11, 41)
_LATE_MEMORY = 64  # failed exchanges whose replies are recognised as late (older ones: "unexpected")
_MAX_STEPS = 64  # internal transitions one next_action may take; more means a bug, not a slow host

# ---------------------------------------------------------------------------------------------
# Internal state


@dataclass(slots=True)  # made for every exchange / operation: slots make that and each access cheaper
class _Exchange:
    purpose: str
    request: Message
    deadline: float
    ref: int | None = None  # journal id (financial), reversal id (reversal), advice id (advice)
    reversal_id: int | None = None  # financial: the reversal stored with the request (deleted by its answer)


@dataclass(slots=True)  # made for every exchange / operation: slots make that and each access cheaper
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
    confirm_deadline: float | None = None  # approved, awaiting the cardholder's confirmation until then
    unconfirmed: bool = False  # the cardholder did not confirm in time: the sale is being reversed
    settle_phase: SettlePhase = SettlePhase.TOTALS
    settle_result: SettleResult | None = None
    settle_code: str = ""
    settle_batch: str = ""  # the batch the last settlement answer was about
    settle_sent: SettlementTotals | None = None  # the totals of the first 0500
    settle_host: SettlementTotals | None = None  # the host's own totals, when its answer carried them
    upload_ids: list[int] = field(default_factory=list)
    upload_pos: int = 0
    upload_message: Message | None = None  # the record being sent, for 0321 repeats
    upload_attempts: int = 0


def _queue_key(kind: str, item_id: int) -> tuple[str, int]:
    return (kind, item_id)



class PolicyCore:
    """State and shared helpers of ``TerminalPolicy`` (which adds the steps; see ``terminal.policy``)."""

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
        self._written: JournalEntry | None = None  # the entry as the last answer wrote it (see _update_entry)
        self._keys: WorkingKeys | None = profile.static_keys if profile.tmk is None else None
        self._family: Family = family_of(profile)
        synced = store.clock_offset
        self._clock = SyncedClock(profile.utc_offset_minutes, synced[0] if synced is not None else 0.0)
        for entry in store.recover_in_flight(now):
            self._note(
                "recovered",
                f"{entry.kind} STAN {entry.stan} was in flight when the terminal stopped: "
                "outcome unknown, its stored reversal goes out first",
                entry.stan,
            )

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

    @property
    def has_notes(self) -> bool:
        """Whether ``take_notes`` has anything (a cheap check for a driver that asks after every call)."""
        return bool(self._notes)

    def take_notes(self) -> list[Note]:
        """Journal notes since the last call (the driver logs them after every call)."""
        notes, self._notes = self._notes, []
        return notes

    def _refuse(self, op: _Operation, reason: str) -> None:
        self._note("refused", f"{op.command.name} refused locally: {reason}")
        op.outcome = Outcome("refused", op.command.name, f"refused: {reason}", meaning=reason)

    @property
    def clock(self) -> SyncedClock:
        """The terminal's time as synchronised with the host's at the last sign-on (see terminal.clock)."""
        return self._clock

    def _sync_clock(self, response: Message, now: float, stan: str) -> None:
        """Take the host's local time from an 0810 (12/13) as the terminal's clock offset."""
        offset = host_offset(response.get(12), response.get(13), now, self.profile.utc_offset_minutes)
        if offset is None:
            return
        self._clock = SyncedClock(self.profile.utc_offset_minutes, offset)
        self.store.record_clock_offset(offset, now)
        self._note("clock-synced", f"clock synchronised with the host: host − terminal = {offset:+.0f}s", stan)

    def _header(self) -> str:
        return self._family.header()

    def _base_fields(self, now: float, stan: str) -> dict[int, str]:
        return self._family.base_fields(self._clock, now, stan)

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
        self._family.card_fields(fields, self._clock, now, cup_type, self.store.batch)
        return fields

    def _update_entry(self, entry_id: int, *, now: float, **changes: Any) -> JournalEntry:
        """``store.update_entry``, and the entry remembered from the last answer is forgotten (it may be
        this one). Every change the policy makes to the journal goes through here, so ``_written``, when
        set, is what the store holds: the outcome step after an answer need not read the entry back."""
        self._written = None
        return self.store.update_entry(entry_id, now=now, **changes)

    def _transmit(self, now: float, purpose: str, message: Message, ref: int | None = None) -> Send:
        deadline = now + self.profile.timeout_for(message.mti)
        self._exchange = _Exchange(purpose, message, deadline, ref)
        return Send(message, deadline, purpose)

    def _demanded(self, op: _Operation, code: str, stan: str) -> bool:
        """If ``code`` demands a new sign-on: drop the session, count it; True."""
        if code not in (self.profile.signon_demand_codes or ()):
            return False
        self._signed_on = False
        op.resignons += 1
        self._note("signon-demanded", f"the host answered {code} ({meaning_of(code)}): signing on again", stan)
        return True

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

    def _note(self, kind: str, text: str, stan: str = "", message: Message | None = None) -> None:
        self._notes.append(Note(kind, text, stan, message))



