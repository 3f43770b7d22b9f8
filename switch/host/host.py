"""``Host``: a decoded request + the time + the ledger → ``Decision`` (response, what to commit).

Pure: no I/O, no sleeping, no clock reads (``now`` is passed in). Making ledger writes durable is the
caller's job (``Decision.commit_seq`` must be committed before the response leaves, ``switch.commit``).
The handlers live in the mixins (sessions, financial, reversals, settlement); ISO/CUP differences in
``switch.host.family``. README "How the host answers" is the table of every rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from switch.codec.composite import CompositeFieldError, CupHeader
from switch.codec.message import Message
from switch.host.checks import auth_code_for, is_digits, response_mti, rrn_for
from switch.host.config import APPROVAL_CODES, HostConfig
from switch.host.core import NOT_ECHOED, Decision, Outcome, keys_from_text
from switch.host.financial import FinancialMixin
from switch.host.sessions import MAC_PLACEHOLDER
from switch.host.settlement import SettlementMixin
from switch.ledger import Ledger, LedgerError
from switch.profiles import ProfileSet
from switch.rules import ResponseRules
from switch.security import MacPlacement, mac_field

__all__ = ["Host"]

log = logging.getLogger("switch.host")


class Host(SettlementMixin, FinancialMixin):
    """Decides every answer. ``profiles`` (optional) turns on terminal profiles: unknown terminals,
    working keys, MACs, PINs. ``key_seed`` seeds the working keys (the switch passes its fault seed, so
    ``--seed`` replays keys too); ``mac_placement`` (``MacPlacement.for_dialect``) says where the MAC
    sits in this dialect's encoded messages and is required when a profile MACs. ``auth_seed`` salts the
    auth codes (the switch passes its seed; None: unsalted, as in unit tests)."""

    def __init__(self, config: HostConfig, ledger: Ledger, rules: ResponseRules | None = None, *,
                 profiles: ProfileSet | None = None, key_seed: int | str = 0,
                 mac_placement: MacPlacement | None = None, auth_seed: int | str | None = None) -> None:
        super().__init__(config, ledger, rules, profiles=profiles, key_seed=key_seed, mac_placement=mac_placement,
                         auth_seed=auth_seed)
        self._handlers: dict[str, Callable[[Message, datetime, float], Decision]] = {
            "0100": self._financial, "0101": self._financial,
            "0200": self._financial, "0201": self._financial,
            "0220": self._advice, "0221": self._advice,
            "0320": self._upload, "0321": self._upload,
            "0400": self._reversal, "0401": self._reversal, "0420": self._reversal, "0421": self._reversal,
            "0500": self._settlement, "0501": self._settlement,
            "0800": self._network, "0801": self._network,
        }

    def reset_sessions(self, now: float | None = None) -> None:
        """Forget every sign-on, its working keys and the PIN try counts (what a restart does).

        Multi-instance mode: each session ended is also an ended ``sessions`` row (host time ``now``;
        None: the wall clock, this being an operator's action, not a decision), committed by the next
        group commit; only this instance's terminals are in its memory, so a terminal no instance owns
        keeps its stored session."""
        if self.shared_sessions and self.sessions:
            at = time.time() if now is None else now
            for terminal in sorted(self.sessions):
                try:
                    self._end_session(terminal, at)
                except LedgerError as exc:  # the lock session is gone: the switch is stopping anyway
                    log.warning("terminal %s: session ended in memory only: %s", terminal, exc)
        self.sessions.clear()
        self.session_keys.clear()
        self._pin_failures.clear()

    def end_sessions(self, terminals: Iterable[str], now: float | None = None) -> list[str]:
        """Multi-instance reset of some terminals this instance owns (taken over for it): end each one's
        session in memory and, if its stored row is still open (its keys could not be restored, or it
        was restored into another listener's host only), in the ledger too; the terminals whose row
        was ended here. Rows are committed by the next group commit."""
        at = time.time() if now is None else now
        ended: list[str] = []
        for terminal in terminals:
            self.session_keys.pop(terminal, None)
            self.sessions.pop(terminal, None)
            stored = self.ledger.session(terminal)
            if self.shared_sessions and stored is not None and stored.signed_on_at is not None:
                self._store_session(terminal, at)  # no session in memory now: an ended row
                ended.append(terminal)
        return ended

    def restore_terminal(self, terminal: str) -> None:
        """Make this host's memory of ``terminal``'s session (``terminal_of``'s id) exactly what the
        ledger's session row says, or none: multi-instance mode calls it when this instance takes the
        terminal over, after its rows (the session row among them) were installed from the database.
        A row whose keys cannot be read restores no session (the terminal signs on again)."""
        self.forget_terminal(terminal)
        record = self.ledger.session(terminal)
        if record is None:
            return
        self._signon_counts[terminal] = record.signons
        if record.signed_on_at is None:
            return
        if record.working_keys is not None:
            try:
                self.session_keys[terminal] = keys_from_text(record.working_keys)
            except ValueError as exc:  # SecurityError is one
                log.error("terminal %s: stored working keys (row %d) unreadable (%s); no session restored",
                          terminal, record.seq, exc)
                return
        self.sessions[terminal] = record.signed_on_at

    def forget_terminal(self, terminal: str) -> None:
        """Drop this host's memory of one terminal's session, working keys and sign-on count:
        multi-instance mode calls it when this instance gives the terminal back (the database keeps
        the session for the next owner). PIN try counts are per card, not per terminal, and stay."""
        self.sessions.pop(terminal, None)
        self.session_keys.pop(terminal, None)
        self._signon_counts.pop(terminal, None)

    def handle(self, request: Message, now: datetime, *, raw: bytes | None = None) -> Decision:
        """Decide the answer to a decoded request at host time ``now`` (aware UTC).

        ``raw`` is the request as received (no length header, no TPDU): with profiles, its MAC is
        checked against these bytes; a MAC that must be checked without them counts as wrong.
        """
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        mti = request.mti
        handler = self._handlers.get(mti) if isinstance(mti, str) else None
        if handler is not None:
            if self.profiles is None:
                return handler(request, now, now.timestamp())
            ts = now.timestamp()
            refusal = self._security_gate(request, raw, ts)
            if refusal is not None:
                return refusal
            decision = handler(request, now, ts)
            if self.macs and decision.response is not None:
                decision.response = self._with_mac(decision.response)
            return decision
        out_mti = response_mti(mti)
        if out_mti is None:
            readable = isinstance(mti, str) and is_digits(mti, 4)
            what = "a response-class MTI" if readable else "an unreadable MTI"
            return Decision(None, None, Outcome.DROPPED, f"{mti!r} is {what}; nothing to answer")
        return Decision(self._reply(request, "12"), None, Outcome.INVALID_TRANSACTION,
                        f"MTI {mti} is not a message this host handles")

    def format_error(self, partial_mti: str, partial_fields: Mapping[str, str], now: datetime, *,
                     failed_field: str | None = None) -> Decision | None:
        """Answer 30 to a request the codec could only partly read, echoing what it did read.

        ``partial_fields`` is the codec's partial decode (pyiso8583 keys: "h", "t", "p", field
        numbers as text); ``failed_field`` (``MessageDecodeError.field``) is left out of the echo, as
        are empty values (pyiso8583 leaves the field it failed in as ""), so the reply encodes. None
        when no response MTI exists (the MTI itself was unreadable, or is a response): the caller
        then closes the connection.
        """
        out_mti = response_mti(partial_mti)
        if out_mti is None:
            return None
        fields: dict[int, str] = {}
        for key, value in partial_fields.items():
            if (isinstance(key, str) and key.isascii() and key.isdigit() and isinstance(value, str) and value
                    and key != failed_field):
                number = int(key)
                if 2 <= number <= 128 and number != 65 and number not in NOT_ECHOED:
                    fields[number] = value
        fields[39] = "30"
        header = partial_fields.get("h", "")
        header = self.family.reply_header(header if isinstance(header, str) else "", CupHeader.NO_REQUIREMENT)
        response = Message(out_mti, fields, header)
        return Decision(response, None, Outcome.FORMAT_ERROR,
                        f"{partial_mti} could not be decoded completely; answered 30 with the fields read")

    def unprocessed_reply(self, request: Message, code: str) -> Message | None:
        """An answer carrying ``code`` built from the request alone: no checks, no ledger, no session.

        For the fault engine's ``respond`` action and maintenance mode, where the host is meant to
        look inoperative (91, 96, 90...): nothing is posted, so a terminal that treats the answer as
        a decline stays consistent with the ledger. An approval code (a fault approving without
        the host) still carries 37 and 38, from the ledger's unposted range
        (``Ledger.unposted_rrn_number``: 9xxxxxxxxxxx, unique across restarts; no posting row).
        None when the MTI has no response (response class or not a request). CUP settlement answers
        carry the code as field 48's flag.
        """
        if response_mti(request.mti) is None:
            return None
        if request.mti[:3] == "050":
            try:
                return self._with_mac(self._settlement_reply(request, code))
            except (CompositeFieldError, ValueError):
                pass
        extra: dict[int, str] | None = None
        if code in APPROVAL_CODES and request.mti[:2] in ("01", "02"):
            number = self.ledger.unposted_rrn_number()  # its own range: unique, and nothing posted
            extra = self._posting_fields(request, rrn_for(number), True, auth_code_for(number, self.auth_salt))
        return self._with_mac(self._reply(request, code, extra))

    def response_mac(self, response: Message) -> tuple[str, bytes] | None:
        """(algorithm, key) to MAC ``response`` with once encoded, or None when it carries no MAC
        placeholder (see the module docstring). The server calls ``security.apply_mac`` with them."""
        if not self.macs:
            return None
        if response.fields.get(mac_field(response)) != MAC_PLACEHOLDER:
            return None
        raw_terminal = response.fields.get(41)
        profile = self._profile_for(raw_terminal) if raw_terminal is not None else None
        if profile is None or not profile.macs:
            return None
        key = self._mac_key(raw_terminal.rstrip(" "), profile)  # type: ignore[union-attr]
        return None if key is None else (profile.mac, key)
