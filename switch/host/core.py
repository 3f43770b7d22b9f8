"""The host's state and the building blocks every message handler shares: replies, format checks,
the sign-on gate, response rules, postings. Pure: no I/O, no clock reads.

* **Replies** echo the request (2, 3, 4, 7, 11, 12, 13, 32, 41, 42, 49, 60, 90 and whatever else it
  carried) except card secrets and what only the terminal may send (``NOT_ECHOED``). Financial
  responses carry field 32 (the request's, or ``institution_id``), as CUP hosts always return it.
* **Response rules** are consulted only where the host would act: after the format, sign-on and
  repeat checks. A rule code that is not an approval means "answer this and do nothing", so the ledger
  never disagrees with the answer; the rule's fields are set after the host's own.
* **Every decided 0100/0200/0220 is posted** (declines too: a reversal of a declined original must find
  it, and a repeat of a decline gets the decline again) with an RRN (37) made from the ledger sequence
  and, when approved, an auth code (38).
* **Sessions** (sign-on time, working keys) are the host's memory. With a multi-instance ledger
  (``Ledger.multi_instance``) every change of one is also a ledger row (``_store_session``), like a
  posting, whose sequence the decision's ``commit_seq`` names: instances share sessions through the
  database, and no answer depends on a session change that is not durable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from switch.codec.composite import CupHeader, mask_pan
from switch.codec.message import Message
from switch.host.checks import RESPONSE_MTIS, Problem, auth_code_for, auth_salt, response_mti, rrn_for
from switch.host.config import APPROVAL_CODES, HostConfig
from switch.host.family import Family, family_for
from switch.host.screen import FormatScreen
from switch.ledger import Ledger, Posting
from switch.profiles import ProfileSet
from switch.rules import ResponseRule, ResponseRules
from switch.security import MacPlacement, WorkingKeys

__all__ = ["NOT_ECHOED", "Decision", "HostCore", "Outcome", "Txn", "keys_from_text", "keys_to_text"]

Txn = tuple[str, str, str, str]
"""A financial request's (terminal, STAN, card number, identity): worked out once per request by
``FinancialMixin._financial_fields`` and handed to the repeat check and the posting."""

NOT_ECHOED = frozenset({14, 35, 36, 45, 52, 53, 55, 64, 96, 128})
"""Request fields never copied into a response: expiry, tracks, PIN, ICC data, MACs."""

ANONYMOUS = "-"
"""The terminal identity of a request with neither field 41 nor field 42 (lenient clients)."""


def keys_to_text(keys: WorkingKeys) -> str:
    """Working keys as the ``sessions`` row keeps them: PIN, MAC (and track) key as hex, "/" between.
    Clear keys in the database are fine for an emulator's test keys; a real host would store them
    under a key-encryption key (or keep them in an HSM)."""
    parts = [keys.pin_key, keys.mac_key] + ([keys.track_key] if keys.track_key is not None else [])
    return "/".join(part.hex().upper() for part in parts)


def keys_from_text(text: str) -> WorkingKeys:
    """``keys_to_text`` undone; ValueError (or ``SecurityError``, a subclass) on anything else."""
    parts = text.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"working keys {len(parts)} part(s), expected PIN/MAC[/track] hex")
    keys = [bytes.fromhex(part) for part in parts]
    return WorkingKeys(keys[0], keys[1], keys[2] if len(keys) == 3 else None)


KINDS = {"0100": "authorization", "0101": "authorization", "0200": "purchase", "0201": "purchase",
         "0220": "advice", "0221": "advice"}


class Outcome(StrEnum):
    """The machine word of a decision, for metrics, the journal and tests."""

    APPROVED = "approved"
    DECLINED = "declined"
    DUPLICATE = "duplicate"
    REPEAT = "repeat"
    STALE = "stale"
    REVERSED_BEFORE_ARRIVAL = "reversed-before-arrival"
    ADVICE_POSTED = "advice-posted"
    DUPLICATE_ADVICE = "duplicate-advice"
    BALANCE = "balance-inquiry"
    VOIDED = "voided"
    REVERSAL_REPEAT = "reversal-repeat"
    REVERSAL_MISMATCH = "reversal-mismatch"
    UPLOADED = "uploaded"
    UPLOAD_ENDED = "upload-ended"
    SETTLEMENT_REPEAT = "settlement-repeat"
    ALREADY_SETTLED = "already-settled"
    BALANCED = "balanced"
    UNBALANCED = "unbalanced"
    ACCEPTED_AFTER_UPLOAD = "accepted-after-upload"
    BATCH_CLOSED = "batch-closed"
    SIGNON = "signon"
    SIGNOFF = "signoff"
    SIGNON_FAILED = "signon-failed"
    SIGNON_REQUIRED = "signon-required"
    ECHO = "echo"
    RULE = "rule"
    FORMAT_ERROR = "format-error"
    INVALID_TRANSACTION = "invalid-transaction"
    UNKNOWN_TERMINAL = "unknown-terminal"
    UNKNOWN_MERCHANT = "unknown-merchant"
    MAC_FAILED = "mac-failed"
    DROPPED = "dropped"


@dataclass(slots=True)
class Decision:
    """The host's answer to one request.

    ``response`` None means log and drop. ``commit_seq`` is the ledger sequence that must be durable
    before the response is sent (None: the answer depends on nothing durable). ``outcome`` is a short
    machine word for metrics and tests (an ``Outcome`` or, from reversals, the ledger effect), ``reason``
    a sentence for the journal saying why; a plain approval's is just "approved".
    """

    response: Message | None
    commit_seq: int | None
    outcome: str
    reason: str


class HostCore:
    """State and shared building blocks; the message handlers are mixins over this (see ``Host``)."""

    def __init__(self, config: HostConfig, ledger: Ledger, rules: ResponseRules | None = None, *,
                 profiles: ProfileSet | None = None, key_seed: int | str = 0,
                 mac_placement: MacPlacement | None = None, auth_seed: int | str | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.rules = rules if rules else None
        self.profiles = profiles
        self.key_seed = key_seed
        self.auth_salt = auth_salt(auth_seed)
        """Salts the auth codes (field 38) with the switch's seed, so runs with other seeds differ."""
        self.mac_placement = mac_placement
        self.macs = profiles is not None and any(profile.macs for profile in profiles)
        """Whether any terminal MACs: the server only looks for MAC placeholders when one does."""
        if self.macs and mac_placement is None:
            raise ValueError("a terminal profile asks for MACs: give the dialect's MacPlacement "
                             "(switch.security.MacPlacement.for_dialect)")
        self.sessions: dict[str, float] = {}
        """Signed-on terminals (field 41, trailing spaces removed) → sign-on time, Unix seconds.
        Single-instance: in memory only, so after a restart every terminal must sign on again, as with
        real hosts. Multi-instance: the owned terminals' sessions, mirrored in ledger rows."""
        self.shared_sessions = ledger.multi_instance
        """Every session change is also a ledger row (multi-instance mode: the database is the truth)."""
        self.session_keys: dict[str, WorkingKeys] = {}
        """Working keys of the signed-on terminals (profiles only), keyed like ``sessions``."""
        self._signon_counts: dict[str, int] = {}
        self._pin_failures: dict[str, int] = {}
        self.family: Family = family_for(config.family)
        self._checks = tuple(self.family.checks.items())
        self._screen = FormatScreen(self._checks)

    def required(self, message_class: str) -> tuple[int, ...]:
        """Mandatory fields of a message class: the ``[host] required_fields`` entry, else the family's."""
        configured = self.config.required_fields
        return configured[message_class] if message_class in configured else self.family.required[message_class]

    # -- identities ---------------------------------------------------------------------------

    @staticmethod
    def terminal_of(fields: Mapping[int, str]) -> str:
        """Field 41 without trailing spaces; without 41 (lenient clients), the merchant id (42) marked
        "M:" so it never collides with a terminal id, else the anonymous terminal "-"."""
        terminal = fields.get(41, "").rstrip(" ")
        if terminal:
            return terminal
        merchant = fields.get(42, "").strip()
        return f"M:{merchant}" if merchant else ANONYMOUS

    # -- replies ------------------------------------------------------------------------------

    def _reply(self, request: Message, code: str | None, extra: Mapping[int, str] | None = None,
               rule: ResponseRule | None = None, requirement: str = CupHeader.NO_REQUIREMENT) -> Message:
        """The response: the request's fields (but card secrets and MACs), 39, ``extra``, then the rule's."""
        fields = request.fields.copy()
        if not NOT_ECHOED.isdisjoint(fields):
            for number in NOT_ECHOED.intersection(fields):
                del fields[number]
        if code is None:
            fields.pop(39, None)
        else:
            fields[39] = code
        if extra:
            fields.update(extra)
        if rule is not None and rule.fields:
            fields.update(rule.fields)
        mti = request.mti
        out_mti = RESPONSE_MTIS.get(mti) or response_mti(mti) or f"{mti[:2]}{int(mti[2]) + 1}0"
        return Message(out_mti, fields, self.family.reply_header(request.header, requirement))

    def _format_problem(self, fields: Mapping[int, str], required: tuple[int, ...]) -> Problem | None:
        """The first missing mandatory field, else the first field its check refuses, else None.
        ``FormatScreen`` answers the common "None" with one match; the loops say what is wrong."""
        if self._screen.passes(fields, required):
            return None
        for number in required:
            if number not in fields:
                return None, f"mandatory field {number} is missing"
        get = fields.get
        for number, check in self._checks:
            value = get(number)
            if value is not None:
                problem = check(value)
                if problem is not None:
                    return number, f"field {number} {problem} (got {value!r})"
        return None

    def _format_decision(self, request: Message, problem: Problem) -> Decision:
        """30, echoing the request except the faulty field (which may not even encode)."""
        bad_field, text = problem
        response = self._reply(request, "30")
        if bad_field is not None:
            response.fields.pop(bad_field, None)
        return Decision(response, None, Outcome.FORMAT_ERROR, f"format error: {text}")

    def _end_session(self, terminal: str, ts: float) -> tuple[float | None, int | None]:
        """Close the terminal's session: (its sign-on time, None if it had none; the ledger sequence
        that must be durable before an answer that rests on it, None in single-instance mode)."""
        self.session_keys.pop(terminal, None)
        signed_on = self.sessions.pop(terminal, None)
        return signed_on, None if signed_on is None else self._store_session(terminal, ts)

    def _store_session(self, terminal: str, ts: float) -> int | None:
        """Multi-instance mode: queue the terminal's session as memory now holds it as a ledger row
        (the terminal is owned: the server acquired it before deciding); its sequence. Else None."""
        if not self.shared_sessions:
            return None
        signed_on = self.sessions.get(terminal)
        keys = self.session_keys.get(terminal) if signed_on is not None else None
        stored = self.ledger.session(terminal)
        signons = max(self._signon_counts.get(terminal, 0), 0 if stored is None else stored.signons)  # never back
        seq = self.ledger.next_sequence()
        self.ledger.record_session(seq, ts, terminal, signed_on, None if keys is None else keys_to_text(keys), signons)
        return seq

    def _gate(self, request: Message, terminal: str, ts: float) -> Decision | None:
        """None when the terminal may transact; else the "sign on first" answer."""
        if not self.config.require_signon:
            return None
        signed_on = self.sessions.get(terminal)
        timeout = self.config.session_timeout
        commit_seq = None
        if signed_on is None:
            reason = f"terminal {terminal} has not signed on"
            if self.shared_sessions and (stored := self.ledger.session(terminal)) is not None:
                commit_seq = stored.seq  # a sign-off this rests on is durable before the answer leaves
        elif timeout is not None and ts - signed_on >= timeout:
            _, commit_seq = self._end_session(terminal, ts)
            reason = (f"session of terminal {terminal} expired {ts - signed_on - timeout:.0f}s ago "
                      f"(timeout {timeout:g}s)")
        else:
            return None
        code = self.config.signon_code
        return Decision(self._reply(request, code, requirement=CupHeader.SIGN_ON_AGAIN), commit_seq,
                        Outcome.SIGNON_REQUIRED, f"{reason}; answered {code} (sign on first)")

    def _rule_refusal(self, request: Message, what: str) -> tuple[Decision | None, ResponseRule | None]:
        """(refusal, None) when a rule answers with a non-approval, else (None, the approving rule or None)."""
        if self.rules is None:
            return None, None
        rule = self.rules.first_match(request)
        if rule is None:
            return None, None
        if rule.response_code in APPROVAL_CODES:
            return None, rule
        decision = Decision(self._reply(request, rule.response_code, rule=rule), None, Outcome.RULE,
                            f"response rule {rule.name!r} answered {rule.response_code}; {what}")
        return decision, None

    def _batch_number(self, fields: Mapping[int, str], terminal: str) -> str:
        return self.family.batch_number(fields, self.ledger, terminal)

    def _closed_batch(self, request: Message, terminal: str, batch: str) -> Decision:
        """12: the answer rests on the settlement row that closed the batch, so that must be durable."""
        closed_seq = self.ledger.batch_summary(terminal, batch).closed_seq
        return Decision(self._reply(request, "12"), closed_seq, Outcome.BATCH_CLOSED,
                        f"batch {batch} of terminal {terminal} is already settled; answered 12")

    def _within_window(self, received_at: float, ts: float) -> bool:
        return ts - received_at <= self.config.duplicate_window

    def _local_now(self, now: datetime) -> datetime:
        return now.astimezone(self.config.tz)

    # -- postings -----------------------------------------------------------------------------

    def _post(self, request: Message, ts: float, txn: Txn, code: str, approved: bool, batch: str, amount: int,
              auth_code: str | None = None) -> tuple[int, dict[int, str]]:
        """Record the request's posting; (its ledger seq, the fields the response carries for it).
        ``txn`` is what ``_financial_fields`` worked out once per request (terminal, STAN, card, identity)."""
        fields = request.fields
        mti = request.mti
        terminal, stan, pan, identity = txn
        seq = self.ledger.next_sequence()
        rrn = rrn_for(seq)
        auth_code = (auth_code or auth_code_for(seq, self.auth_salt)) if approved else ""
        f7 = fields.get(7, "")
        requested = int(fields[4]) if fields.get(4) else amount
        self.ledger.append_posting(
            seq, ts, terminal, stan, "" if f7 == "0000000000" else f7, mti, KINDS[mti],
            "credit" if fields.get(3, "0")[0] == "2" else "debit", amount, fields.get(49, ""),
            mask_pan(pan) if pan else "", batch, code, approved, rrn, auth_code,
            identity, None if requested == amount else requested)
        extra = {37: rrn, 38: auth_code} if approved else {37: rrn}  # ``_posting_fields``, inlined
        if 32 not in fields:
            extra[32] = self.config.institution_id
        return seq, extra

    def _posting_fields(self, request: Message, rrn: str, approved: bool, auth_code: str) -> dict[int, str]:
        """37 (host RRN), 38 (auth code) when approved, and 32 unless the request carried one."""
        extra = {37: rrn, 38: auth_code} if approved else {37: rrn}
        if 32 not in request.fields:
            extra[32] = self.config.institution_id  # read per message: the admin API may replace config
        return extra

    def _original_answer(self, request: Message, first: Posting) -> dict[int, str]:
        """The fields a repeat gets from the first answer: 37, 38 and the approved amount."""
        extra = self._posting_fields(request, first.rrn, first.approved, first.auth_code)
        if first.approved and 4 in request.fields:
            extra[4] = f"{first.amount:0{len(request.fields[4])}d}"
        return extra

    def _decline(self, request: Message, ts: float, txn: Txn, code: str, batch: str,
                 outcome: str, reason: str, rule: ResponseRule | None = None) -> Decision:
        amount = int(request.fields[4]) if request.fields.get(4) else 0
        seq, extra = self._post(request, ts, txn, code, False, batch, amount)
        return Decision(self._reply(request, code, extra, rule), seq, outcome, f"{reason}; answered {code}")
