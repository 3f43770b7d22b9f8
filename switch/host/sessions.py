"""Sessions and the security gate: sign-on / sign-off / echo (0800), terminal profiles (unknown
terminals and merchants), MACs, working keys and PINs.

* **0800** (ISO field 70; CUP 60.3): 001 (CUP also 003/004) signs the terminal on, 002 signs it off,
  301 echo always answers 00; sign-on and echo replies carry the host's local date/time in 12/13
  (``timezone``) so terminals can set their clocks. Other codes get 12. A single-instance host keeps
  sessions in memory only: a restart forgets them, as real hosts do (their sign-on hands out keys that
  do not survive). Multi-instance hosts share them through the ledger (``sessions`` rows: sign-on time,
  working keys, sign-on count), each change durable before its answer leaves, so a terminal signed on
  at one instance transacts at another, whose host restores the session when it takes the terminal
  over (``Host.restore_terminal``); expiry counts from the shared sign-on time.
* **Sign-on first** (``require_signon``): any other message of a terminal without a session gets
  ``signon_code`` (A0; CUP replies also set header requirement 3). A session expires ``session_timeout``
  seconds after its sign-on (key lifetime, not idleness).

**Terminal profiles** (``switch.profiles``, given as ``profiles``; without them none of this
happens and the host behaves as described above):

* A request whose field 41 is not in the profile file gets ``ProfileSet.unknown_terminal_code``
  (CUP 97 "terminal not registered", ISO 58) and nothing else happens; one whose field 42 is not
  the terminal's merchant id gets 03 ("invalid merchant"), as an acquirer that boards merchants does.
* **Working keys.** A sign-on of a terminal with a TMK draws fresh PIN and MAC keys from
  ``random.Random(f"{key_seed}/keys/{terminal}/{n}")`` (n counts that terminal's sign-ons, so a
  seed replays a session and no two sign-ons share keys) and returns them in field 62 under the
  TMK, each with its check value (``TerminalSecurityProfile.field62``; the field carries the key
  block as hex, which the codec writes as raw bytes in CUP and as text where field 62 is text).
  The layout is the profile's ``key_layout``, except that a CUP terminal asking for another of the
  CUP layouts in 60.3 (001 → 24, 003 → 40, 004 → 60 bytes) gets that one when its MAC key fits.
  A CUP sign-on whose 60.2 names a batch already settled is answered with the next batch number
  in 60.2. Terminals with static keys (``pin_key`` / ``mac_key``) and no TMK get no field 62
  (with a TMK, those fixed keys are what field 62 carries). The keys live with the session:
  sign-off, session expiry, a MAC failure and ``reset_sessions`` forget them. Sign-ons are counted
  per terminal (in the ``sessions`` row in multi-instance mode, so no two instances draw the same keys).
* **MACs.** Network management (08xx) is never MACed. Any other request of a terminal whose
  profile MACs is checked as soon as a MAC key is known (session keys, else static ones): the
  MAC field (64, or 128 with a secondary bitmap) must be the MAC of the request's bytes (``raw``)
  under the profile's algorithm. A missing or wrong MAC is answered ``mac_failure_code`` (A0,
  "MAC check failed, sign on again"; CUP header requirement 3), the session is closed and nothing
  is posted; that answer carries no MAC (the host cannot share a key it no longer trusts). Every
  other response to such a terminal carries the 8-zero-byte MAC placeholder
  (``security.with_mac_placeholder``); the server encodes it and asks ``response_mac`` for the
  algorithm and key to replace the placeholder with (``security.apply_mac``).
* **PINs.** For a card in the terminal's ``pins`` table, field 52 (ISO format 0 under the PIN
  key) is checked after the expiry check: no field 52 → 55; a block that is not format 0 (wrong
  key or PAN), or no PIN key yet → ``pin_format_code`` (99, "PIN format error, sign on again");
  a wrong PIN → 55, and the ``pin_tries``-th wrong PIN in a row → 75, after which the card
  answers 75 until ``reset_sessions`` (a restart) unblocks it. A right PIN resets the count.
  Counts are per card (PAN), as an issuer keeps them, and per instance in multi-instance mode (not
  rows: a card is not a terminal, so no instance owns it). These declines are posted like any other.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime

from switch.codec.composite import CompositeFieldError, CupHeader, mask_pan
from switch.codec.message import Message
from switch.host.core import Decision, HostCore, Outcome
from switch.host.family import ECHO, SIGN_OFF
from switch.profiles import TerminalSecurityProfile
from switch.rules import pan_of
from switch.security import (
    KEY_LAYOUTS,
    MAC_LENGTH,
    PREFERRED_MAC_KEY_LENGTH,
    SecurityError,
    WorkingKeys,
    check_value,
    mac_field,
    verify_mac,
    verify_pin,
    with_mac_placeholder,
)

__all__ = ["INVALID_MERCHANT", "SessionsMixin"]

log = logging.getLogger("switch.host")

INVALID_MERCHANT = "03"
"""Answer to a known terminal sending another merchant id (field 42) than its profile's."""

MAC_PLACEHOLDER = "00" * MAC_LENGTH


class SessionsMixin(HostCore):
    """0800 handling, the profile/MAC gate, working keys and PIN checks."""

    def _profile_for(self, raw_terminal: str) -> TerminalSecurityProfile | None:
        """The profile of field 41 as received (profiles hold ids padded to 8 characters)."""
        profiles = self.profiles
        if profiles is None:
            return None
        return profiles.get(raw_terminal) or profiles.get(raw_terminal.rstrip(" ").ljust(8))

    def _keys_of(self, terminal: str, profile: TerminalSecurityProfile) -> WorkingKeys | None:
        return self.session_keys.get(terminal) or profile.static_keys

    def _mac_key(self, terminal: str, profile: TerminalSecurityProfile) -> bytes | None:
        keys = self._keys_of(terminal, profile)
        return keys.mac_key if keys is not None else None

    def _security_gate(self, request: Message, raw: bytes | None, ts: float) -> Decision | None:
        """Unknown terminal → its code; a MACing terminal's request with a bad MAC → A0. Else None."""
        raw_terminal = request.fields.get(41)
        if not raw_terminal or not raw_terminal.strip():
            return None  # the handler's format checks answer 30
        assert self.profiles is not None
        terminal = raw_terminal.rstrip(" ")
        profile = self._profile_for(raw_terminal)
        if profile is None:
            code = self.profiles.unknown_terminal_code(self.config.family)
            return Decision(self._reply(request, code), None, Outcome.UNKNOWN_TERMINAL,
                            f"terminal {terminal} is not in the profile file {self.profiles.path}; answered {code}")
        merchant = request.fields.get(42)
        if merchant is not None and merchant.rstrip(" ") != profile.merchant_id.rstrip(" "):
            return Decision(self._reply(request, INVALID_MERCHANT), None, Outcome.UNKNOWN_MERCHANT,
                            f"terminal {terminal} sent merchant {merchant.rstrip(' ')}, its profile says "
                            f"{profile.merchant_id}; answered {INVALID_MERCHANT}, nothing done")
        if not profile.macs or request.mti.startswith("08"):
            return None
        key = self._mac_key(terminal, profile)
        if key is None:
            return None  # no keys yet: the sign-on gate answers
        problem = self._mac_problem(request, raw, profile.mac, key)
        if problem is None:
            return None
        signed_on, commit_seq = self._end_session(terminal, ts)
        code = self.config.mac_code
        return Decision(self._reply(request, code, requirement=CupHeader.SIGN_ON_AGAIN), commit_seq,
                        Outcome.MAC_FAILED,
                        f"{problem}; answered {code} (sign on again), "
                        f"{'no session' if signed_on is None else 'session closed'}, nothing done")

    def _mac_problem(self, request: Message, raw: bytes | None, algorithm: str, key: bytes) -> str | None:
        stan = request.fields.get(11, "-")
        number = mac_field(request)
        if number not in request.fields:
            return f"{request.mti} STAN {stan} carries no MAC (field {number}), but terminal MACs ({algorithm})"
        if raw is None or self.mac_placement is None:
            return f"{request.mti} STAN {stan}: its bytes were not given, so its MAC cannot be checked"
        try:
            if verify_mac(raw, algorithm, key, self.mac_placement):
                return None
        except SecurityError as exc:  # MacError, or a key the algorithm cannot use
            return f"{request.mti} STAN {stan}: MAC cannot be checked: {exc}"
        return (f"{request.mti} STAN {stan}: MAC {request.fields[number]} does not verify "
                f"({algorithm}, MAC key check value {check_value(key).hex().upper()})")

    def _with_mac(self, response: Message) -> Message:
        """``response`` with the MAC placeholder when it goes to a MACing terminal with a key."""
        if not self.macs or response.mti.startswith("08"):
            return response
        raw_terminal = response.fields.get(41)
        if not raw_terminal:
            return response
        profile = self._profile_for(raw_terminal)
        if profile is None or not profile.macs or self._mac_key(raw_terminal.rstrip(" "), profile) is None:
            return response
        return with_mac_placeholder(response)

    def _issue_keys(self, request: Message, terminal: str, code: str, count: int) -> tuple[dict[int, str] | None, str]:
        """At the terminal's ``count``-th sign-on: the session's working keys; (fields for the reply,
        words for the reason)."""
        profile = self._profile_for(request.fields[41])
        if profile is None:
            return None, ""
        extra = self.family.signon_batch_fields(request.fields, self.ledger, terminal)
        if profile.tmk is None:
            assert profile.static_keys is not None  # a profile has a TMK or static keys
            self.session_keys[terminal] = profile.static_keys
            return extra or None, "; static working keys, no field 62"
        layout = self._key_layout(profile, code)
        rng = random.Random(f"{self.key_seed}/keys/{terminal}/{count}")
        keys = profile.issue_keys(rng, layout=layout)
        extra[62] = profile.field62(keys, layout=layout).hex().upper()
        self.session_keys[terminal] = keys
        checks = (f"PIN key check {check_value(keys.pin_key).hex().upper()}, MAC key check "
                  f"{check_value(keys.mac_key).hex().upper()}")
        # at -v: whoever loads a real terminal compares these with what the terminal shows
        log.info("%s sign-on %d: working keys in field 62 (%d bytes): %s", terminal, count, layout, checks)
        return extra, f"; working keys in field 62 ({layout} bytes): {checks}"

    def _key_layout(self, profile: TerminalSecurityProfile, code: str) -> int:
        """The profile's layout, or the CUP layout the terminal asked for in 60.3 if its MAC key fits."""
        layout = profile.key_layout
        requested = self.family.requested_key_layout(code)
        if (requested is None or requested == layout or KEY_LAYOUTS[layout].network_code is None
                or profile.static_keys is not None):
            return layout
        if PREFERRED_MAC_KEY_LENGTH[profile.mac] > KEY_LAYOUTS[requested].mac_slot:
            return layout
        return requested

    def _pin_refusal(self, request: Message, terminal: str) -> tuple[str, str] | None:
        """(code, reason) when field 52 fails the terminal's PIN table; None when fine or not checked."""
        profile = self._profile_for(request.fields[41])
        pan = pan_of(request)
        expected = profile.expected_pin(pan) if profile is not None and pan else None
        if expected is None:
            return None
        assert profile is not None and pan is not None
        card = mask_pan(pan)
        failures = self._pin_failures.get(pan, 0)
        if failures >= profile.pin_tries:
            return "75", f"card {card} is blocked after {failures} wrong PINs"
        block = request.fields.get(52)
        if not block:
            return "55", f"card {card} needs a PIN and field 52 is missing"
        keys = self._keys_of(terminal, profile)
        code = self.config.pin_error_code
        if keys is None:
            return code, f"no PIN working key for terminal {terminal}: sign on first"
        try:
            right = verify_pin(keys.pin_key, bytes.fromhex(block), pan, expected)
        except (SecurityError, ValueError) as exc:
            return code, f"PIN block of card {card} is not ISO format 0 under the PIN key: {exc}"
        if right:
            self._pin_failures.pop(pan, None)
            return None
        failures += 1
        self._pin_failures[pan] = failures
        if failures >= profile.pin_tries:
            return "75", f"wrong PIN for card {card}, {failures} in a row: PIN tries exceeded, card blocked"
        return "55", f"wrong PIN for card {card} ({failures} of {profile.pin_tries} tries)"

    def _clock_fields(self, now: datetime) -> dict[int, str]:
        """Fields 12 (hhmmss) and 13 (MMDD): the host's local time, so a terminal can set its clock."""
        local = self._local_now(now)
        return {12: local.strftime("%H%M%S"), 13: local.strftime("%m%d")}

    def _network(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self.required("network"))
        code = self.family.network_code(fields)
        if problem is None and code is None:
            problem = (60 if 60 in fields else None), "no network management code (ISO field 70, CUP 60.3)"
        if problem is not None:
            return self._format_decision(request, problem)
        assert code is not None
        terminal = self.terminal_of(fields)
        refusal, rule = self._rule_refusal(request, "session unchanged")
        if refusal is not None:
            return refusal
        clock = self._clock_fields(now)
        if code == ECHO:
            return Decision(self._reply(request, "00", clock, rule=rule), None, Outcome.ECHO, "echo test answered")
        if code in self.family.sign_on_codes or code == SIGN_OFF:
            if 41 not in fields and 41 in self.required("financial"):
                return self._format_decision(request, (None, "sign-on/off needs field 41 (terminal id)"))
            if code == SIGN_OFF:
                was, commit_seq = self._end_session(terminal, ts)
                state = "closed its session" if was is not None else "had no session"
                return Decision(self._reply(request, "00", rule=rule), commit_seq, Outcome.SIGNOFF,
                                f"terminal {terminal} signed off ({state})")
            extra: dict[int, str] = dict(clock)
            keys_note = ""
            count = self._signon_counts.get(terminal, 0)
            if self.shared_sessions and (stored := self.ledger.session(terminal)) is not None:
                count = max(count, stored.signons)  # another listener of this instance may have signed it on
            count = self._signon_counts[terminal] = count + 1
            if self.profiles is not None and 41 in fields:
                try:
                    keys, keys_note = self._issue_keys(request, terminal, code, count)
                except (SecurityError, CompositeFieldError) as exc:
                    _, commit_seq = self._end_session(terminal, ts)
                    return Decision(self._reply(request, "96"), commit_seq, Outcome.SIGNON_FAILED,
                                    f"terminal {terminal}: working keys cannot be issued: {exc}; answered 96")
                extra.update(keys or {})
            self.sessions[terminal] = ts
            commit_seq = self._store_session(terminal, ts)  # durable before the keys leave (multi-instance)
            return Decision(self._reply(request, "00", extra, rule=rule), commit_seq, Outcome.SIGNON,
                            f"terminal {terminal} signed on (network code {code}); host time "
                            f"{extra[13]} {extra[12]} in fields 13/12{keys_note}")
        return Decision(self._reply(request, "12"), None, Outcome.INVALID_TRANSACTION,
                        f"network management code {code} is not supported (sign-on, sign-off, echo are)")
