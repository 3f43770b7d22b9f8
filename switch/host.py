"""The acquirer host's decisions: a decoded request + the time + the ledger → the answer.

Pure: no I/O, no sleeping, no clock reads (``now`` is passed in). The ledger is read and written
in memory here; making the writes durable is the caller's job (``Decision.commit_seq`` names the
sequence that must be committed before the response may leave, see ``switch.commit``).

What the host does, per message class (domain.md has the payments background):

* **0800 network management** (ISO: field 70; CUP: 60.3). 001 signs the terminal (field 41) on
  (CUP also 003/004), 002 signs it off, 301 echo always answers 00; other codes get 12. Sessions
  live in memory only: a restarted host forgets them and terminals must sign on again, as with
  real hosts (whose sign-on also hands out working keys that do not survive either).
* **Sign-on first.** With ``require_signon`` every other message from a terminal without a session
  gets ``signon_code``: CUP "A0" (MAC check failed, sign on again: CUP sign-on delivers the MAC
  key, so that is what CUP hosts answer), ISO 8583 "58" (not permitted to terminal: ISO has no
  dedicated code and this is the common choice). CUP replies also set header processing
  requirement 3 ("sign on again"). A session expires ``session_timeout`` seconds after its
  sign-on (key lifetime, not idleness).
* **0100 / 0200** in this order: format (missing/invalid mandatory field → 30), sign-on,
  duplicate (same terminal + STAN + field 7 within ``duplicate_window`` → 94, nothing posted),
  an original arriving after its own reversal (declined with ``stale_code``, never posted),
  stale field 7 (beyond ``stale_window`` → ``stale_code``), amount 0 → 13, expiry (field 14, or
  track 2) before the host's month → 54, response rules, otherwise approved. Every decided request
  is recorded (declines too: a reversal of a declined original must find it) with a host RRN
  (field 37) made from the ledger sequence and, when approved, an auth code (field 38).
* **0220 / 0221 advice**: posted once. A repeat (same terminal + STAN within the window, whatever
  its field 7: a stored advice is often re-sent with a fresh one) is answered 00 again with the
  first posting's RRN and nothing is posted; 00 rather than 94 because the advice *was* accepted,
  and terminals treat both as success anyway (domain.md). An advice reports a sale the terminal
  already completed, so it gets no stale-time or expiry check (amount 0 is still 13). Limitation:
  a 0420 that overtakes its own 0220 leaves the advice posted (terminals send advices first).
* **0400 / 0401 / 0420 / 0421 reversal**: the original is found by terminal + field 90's STAN and
  field 7, falling back to terminal + STAN when field 90 is absent or names no field 7 (CUP). An
  approved original is reversed exactly once (00); a declined one needs nothing (00); an unknown
  one gets ``unknown_original_code`` and is remembered, so a repeat gets the same answer and the
  original, should it arrive late, is not posted; an original whose batch is already settled is
  refused with 12. Any repeat — 0401, or a second reversal naming the same original — gets the
  first answer again and nothing more is undone.
* **0320 batch upload**: one record per message (field 90's STAN, or field 11, names the
  original; 3 and 4 its processing code and amount). The end of an upload is a 0320 with network
  code 202 or 207: CUP in 60.3 (as the CUP spec has it), ISO 8583 in field 70 (the ISO network
  management field, carrying the same codes so both families read alike).
* **0500 / 0501 settlement**: the terminal's totals (ISO 74/76/86/88; CUP field 48) are compared
  with the ledger's batch. Equal → 00 and the batch closes; different → 95 (CUP: field 48 flag
  '2', no field 39) and it stays open. After an upload has ended, the next settlement accepts the
  terminal's batch (00, closes), recording every difference between the upload and the ledger as a
  discrepancy row. A 0501 (same terminal + STAN) gets the first answer again.

**Settlement compares NET totals**: debits and credits approved and not reversed. A terminal that
reversed an exchange whose outcome it never learned cannot know whether the host had approved it,
so its reversal counts cannot match the host's; only what is still charged can. Fields 74/76/86/88
are therefore read as net figures; the reversal fields 75/77/87/89 are accepted and echoed but not
compared, and field 97 is checked for shape only.

Batch numbers: ISO 8583 terminals send none, so the host keeps one per terminal (the ledger's
``current_batch``, moving on when a settlement closes it); CUP terminals' 60.2 is authoritative. A
CUP request for a batch already settled is refused with 12.

Response rules (``switch.rules``) are consulted only where the host would act: after the format,
sign-on and duplicate/repeat checks. A rule code that is not an approval means "answer this and do
nothing": nothing posted, reversed, uploaded or closed, so the ledger never disagrees with the
answer. Its fields are set in the response (after the host's own, so a rule may override them).

Responses echo the request (2, 3, 4, 7, 11, 12, 13, 32, 41, 42, 49, 60, 90 and whatever else it
carried) except card secrets and what only the terminal may send: track data (35, 36, 45), PIN
(52, 53), ICC data (55), expiry (14), MACs (64, 128, 96). Financial responses carry field 32 (the
request's, or ``institution_id``), as CUP hosts always return it.

Response-class MTIs (third digit odd) and MTIs that cannot be read are logged and dropped; any
other unknown request gets 12. ``handle`` never raises on a decoded message (property-tested).

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
  sign-off, session expiry, a MAC failure and ``reset_sessions`` forget them.
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
  Counts are per card (PAN), as an issuer keeps them. These declines are posted like any other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from typing import Any

from switch.codec.composite import (
    CompositeFieldError,
    CupField60,
    CupHeader,
    OriginalData,
    SettlementTotals,
    mask_pan,
)
from switch.codec.dialect import FAMILIES
from switch.codec.message import Message
from switch.ledger import (
    Discrepancy,
    Ledger,
    Posting,
    Reversal,
    Settlement,
    UploadRecord,
    next_batch_number,
)
from switch.profiles import ProfileSet, TerminalSecurityProfile
from switch.rules import ResponseRule, ResponseRules, pan_of
from switch.security import (
    KEY_LAYOUTS,
    MAC_LENGTH,
    PREFERRED_MAC_KEY_LENGTH,
    MacPlacement,
    SecurityError,
    WorkingKeys,
    check_value,
    layout_for_network_code,
    mac_field,
    verify_mac,
    verify_pin,
    with_mac_placeholder,
)

__all__ = ["APPROVAL_CODES", "SIGNON_REQUIRED_DEFAULTS", "Decision", "Host", "HostConfig"]

APPROVAL_CODES = frozenset({"00", "08", "10", "11"})
"""Codes that approve (post) a request: approved, honour with id, partial approval, VIP approval."""

SIGNON_REQUIRED_DEFAULTS: Mapping[str, str] = {"cup": "A0", "iso87": "58"}
"""Default "sign on first" code per family; see the module docstring for why."""

MAC_FAILURE_DEFAULT = "A0"
"""Answer to a request whose MAC does not verify: CUP's "MAC check failed, sign on again". ISO 8583
has no code of its own (hosts use A0 or 63 "security violation"); A0 is the default for both
families because terminals, ours included, read it as "sign on again" and so fetch fresh keys."""
PIN_FORMAT_DEFAULT = "99"
"""Answer to a PIN block that is not ISO format 0 (CUP: "PIN format error, sign on again")."""

INVALID_MERCHANT = "03"
"""Answer to a known terminal sending another merchant id (field 42) than its profile's."""

_MAC_PLACEHOLDER = "00" * MAC_LENGTH

NOT_ECHOED = frozenset({14, 35, 36, 45, 52, 53, 55, 64, 96, 128})
"""Request fields never copied into a response: expiry, tracks, PIN, ICC data, MACs."""

UPLOAD_END_CODES = frozenset({"202", "207"})

_SIGN_ON_CODES = {"iso87": frozenset({"001"}), "cup": frozenset({"001", "003", "004"})}
_SIGN_OFF, _ECHO = "002", "301"
_NO_TIME = ""
_ZERO_TIME = "0000000000"
_HALF_YEAR = timedelta(days=183)
_SENT_CACHE_SIZE = 1024  # field 7 values remembered (Host._sent_at)
_APPROVED = "approved"
"""The reason of a plain approval: built on every approved request, and its details (RRN, auth
code) are in the response anyway; the rarer outcomes spell out why in their reasons."""
_CUP_FLAG = {"00": "1", "95": "2"}  # settlement result → CUP field 48 flag
_ISO_TOTAL_FIELDS = (74, 75, 76, 77, 86, 87, 88, 89)


# ---------------------------------------------------------------------------------------------
# Configuration and decisions


def _code(value: object) -> bool:
    return isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalnum()


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class HostConfig:
    """How the host answers; scenario files set these under ``[host]``. Durations in seconds."""

    family: str = "iso87"
    require_signon: bool = True
    signon_required_code: str | None = None  # None: SIGNON_REQUIRED_DEFAULTS[family]
    session_timeout: float | None = None  # None: sessions never expire
    stale_window: float = 300.0  # |field 7 - host time| beyond this → stale_code ("order expired")
    stale_code: str = "22"
    unknown_original_code: str = "00"  # reversal of an original never seen; alternative "25"
    duplicate_window: float = 86400.0
    institution_id: str = "00000000001"  # our acquirer id (field 32 in financial responses)
    mac_failure_code: str | None = None  # None: MAC_FAILURE_DEFAULT (profiles only)
    pin_format_code: str | None = None  # None: PIN_FORMAT_DEFAULT (profiles only)

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if not isinstance(self.require_signon, bool):
            problems.append(f"require_signon must be true or false, got {self.require_signon!r}")
        for name in ("stale_code", "unknown_original_code"):
            if not _code(getattr(self, name)):
                problems.append(f"{name} must be a 2-character response code, got {getattr(self, name)!r}")
        for name in ("signon_required_code", "mac_failure_code", "pin_format_code"):
            value = getattr(self, name)
            if value is not None and not _code(value):
                problems.append(f"{name} must be a 2-character response code or None, got {value!r}")
        timeout = self.session_timeout
        if timeout is not None and not (_seconds(timeout) and timeout > 0):
            problems.append(f"session_timeout must be seconds > 0 or None, got {self.session_timeout!r}")
        if not (_seconds(self.stale_window) and self.stale_window > 0):
            problems.append(f"stale_window must be seconds > 0, got {self.stale_window!r}")
        if not (_seconds(self.duplicate_window) and self.duplicate_window >= 0):
            problems.append(f"duplicate_window must be seconds >= 0, got {self.duplicate_window!r}")
        iid = self.institution_id
        if not (isinstance(iid, str) and 1 <= len(iid) <= 11 and iid.isascii() and iid.isdigit()):
            problems.append(f"institution_id must be 1 to 11 digits, got {iid!r}")
        if problems:
            raise ValueError("invalid host configuration: " + "; ".join(problems))

    @property
    def signon_code(self) -> str:
        """The "sign on first" code in force (the family default unless configured)."""
        return self.signon_required_code or SIGNON_REQUIRED_DEFAULTS[self.family]

    @property
    def mac_code(self) -> str:
        """The answer to a request whose MAC does not verify."""
        return self.mac_failure_code or MAC_FAILURE_DEFAULT

    @property
    def pin_error_code(self) -> str:
        """The answer to a PIN block that is not ISO format 0."""
        return self.pin_format_code or PIN_FORMAT_DEFAULT

    @classmethod
    def for_dialect(cls, dialect: Any, **overrides: Any) -> HostConfig:
        """The configuration for a dialect's family, with scenario / command-line overrides."""
        known = {f.name for f in dataclass_fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown host setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        settings = {"family": dialect.family, **overrides}
        return cls(**settings)


@dataclass(slots=True)
class Decision:
    """The host's answer to one request.

    ``response`` None means log and drop. ``commit_seq`` is the ledger sequence that must be durable
    before the response is sent (None: the answer depends on nothing durable). ``outcome`` is a short
    machine word for metrics and tests, ``reason`` a sentence for the journal saying why; a plain
    approval's is just "approved" (the common case, so it is not formatted per request: its RRN and
    auth code are in the response).
    """

    response: Message | None
    commit_seq: int | None
    outcome: str
    reason: str


# ---------------------------------------------------------------------------------------------
# Field checks: each returns None when the value is fine, else what is wrong.


# Each check runs on every request that carries its field, so they avoid int() and helper calls:
# once a value is known to be ASCII digits, comparing 2-digit slices as strings ("01" <= mm <= "12")
# orders them exactly as comparing the numbers would.


def _is_digits(value: str, width: int) -> bool:
    return len(value) == width and value.isascii() and value.isdigit()


def _check_pan(value: str) -> str | None:
    if 1 <= len(value) <= 19 and value.isascii() and value.isdigit():
        return None
    return "must be 1 to 19 digits"


def _check_n(width: int) -> Callable[[str], str | None]:
    problem = f"must be {width} digits"

    def check(value: str) -> str | None:
        return None if len(value) == width and value.isascii() and value.isdigit() else problem
    return check


def _check_amount(value: str) -> str | None:
    if 1 <= len(value) <= 12 and value.isascii() and value.isdigit():
        return None
    return "must be 1 to 12 digits"


_LAST_DAY = {"01": "31", "02": "29", "03": "31", "04": "30", "05": "31", "06": "30",
             "07": "31", "08": "31", "09": "30", "10": "31", "11": "30", "12": "31"}
"""Month → its last day, as text; 29 for February because 02-29 is valid in a leap year."""


def _check_transmission_time(value: str) -> str | None:
    if not (len(value) == 10 and value.isascii() and value.isdigit()):
        return "must be 10 digits MMDDhhmmss"
    last_day = _LAST_DAY.get(value[0:2])
    if last_day is None or not "01" <= value[2:4] <= last_day:
        return "is not a valid date MMDD"
    if value[4:6] > "23" or value[6:8] > "59" or value[8:10] > "59":
        return "is not a valid time hhmmss"
    return None


def _check_stan(value: str) -> str | None:
    if not (len(value) == 6 and value.isascii() and value.isdigit()):
        return "must be 6 digits"
    return "must not be 000000 (STANs run 000001-999999)" if value == "000000" else None


def _check_terminal(value: str) -> str | None:
    return None if value.strip() else "must not be blank"


def _check_expiry(value: str) -> str | None:
    if not (len(value) == 4 and value.isascii() and value.isdigit()):
        return "must be 4 digits YYMM"
    return None if "01" <= value[2:4] <= "12" else "month must be 01-12"


def _check_cup60(value: str) -> str | None:
    try:
        CupField60.parse(value)
    except CompositeFieldError as exc:
        return exc.reason
    return None


_CHECKS: dict[str, dict[int, Callable[[str], str | None]]] = {
    "iso87": {2: _check_pan, 3: _check_n(6), 4: _check_amount, 7: _check_transmission_time, 11: _check_stan,
              14: _check_expiry, 41: _check_terminal, 70: _check_n(3)},
    "cup": {2: _check_pan, 3: _check_n(6), 4: _check_amount, 7: _check_transmission_time, 11: _check_stan,
            14: _check_expiry, 41: _check_terminal, 60: _check_cup60},
}
"""Checked whenever present, in every message of the family."""

_REQUIRED: dict[str, dict[str, tuple[int, ...]]] = {
    "iso87": {"financial": (3, 4, 7, 11, 41), "reversal": (7, 11, 41), "upload": (11, 41),
              "settlement": (11, 41), "network": (70,)},
    "cup": {"financial": (3, 4, 11, 41, 60), "reversal": (11, 41, 60), "upload": (11, 41, 60),
            "settlement": (11, 41, 48, 60), "network": (60,)},
}
"""Mandatory fields per message class (financial also needs a card: field 2 or 35)."""

_Problem = tuple[int | None, str]
"""A format error: the faulty field (None when one is missing) and what is wrong."""

_KINDS = {"0100": "authorization", "0101": "authorization", "0200": "purchase", "0201": "purchase",
          "0220": "advice", "0221": "advice"}


def _time_key(f7: str | None) -> str:
    """Field 7 as the ledger keys it: "" when absent or all zeros (CUP requests carry none)."""
    return _NO_TIME if f7 is None or f7 == _ZERO_TIME else f7


def transmission_datetime(f7: str, now: datetime) -> datetime | None:
    """Field 7 (MMDDhhmmss UTC, no year) as the datetime nearest ``now``: last, this or next year.

    The year is whichever puts the instant closest to the host's time, so 1231235959 received at
    00:00:05 on 1 January is five seconds old, not a year ahead. None when the date exists in none of
    the three years (29 February with no leap year near).
    """
    month, day = int(f7[0:2]), int(f7[2:4])
    hour, minute, second = int(f7[4:6]), int(f7[6:8]), int(f7[8:10])
    best: datetime | None = None
    for year in (now.year, now.year - 1, now.year + 1):
        try:
            candidate = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except ValueError:
            continue
        if best is None or abs(candidate - now) < abs(best - now):
            best = candidate
            if abs(candidate - now) <= _HALF_YEAR:
                break  # no other year can be closer
    return best


def card_expiry(fields: Mapping[int, str]) -> str | None:
    """YYMM from field 14, else from track 2 (field 35: the 4 digits after '=' or 'D'), else None."""
    expiry = fields.get(14)
    if expiry is not None:
        return expiry
    track2 = fields.get(35)
    if not track2:
        return None
    for separator in ("=", "D"):
        at = track2.find(separator)
        if at >= 0:
            candidate = track2[at + 1:at + 5]
            if _is_digits(candidate, 4) and 1 <= int(candidate[2:4]) <= 12:
                return candidate
            return None
    return None


def rrn_for(seq: int) -> str:
    """Field 37 (an12) from the ledger sequence: unique while the sequence is, across restarts."""
    return f"{seq % 10**12:012d}"


def auth_code_for(seq: int) -> str:
    """Field 38 (an6), deterministic: the sequence times an odd number not divisible by 5, modulo 10^6.

    That map is a bijection on 0..999999, so a million approvals in a row get different codes, and
    consecutive approvals do not get consecutive codes (issuers' codes are not sequential).
    """
    return f"{seq * 741457 % 1_000_000:06d}"


def _response_mti(mti: object) -> str | None:
    """The response MTI when ``mti`` is a readable request/advice/notification MTI, else None."""
    if isinstance(mti, str) and _is_digits(mti, 4) and mti[2] in "024":
        return f"{mti[:2]}{int(mti[2]) + 1}0"
    return None


# ---------------------------------------------------------------------------------------------
# The host


class Host:
    """Decides every answer; see the module docstring for the rules it applies.

    ``profiles`` (optional) turns on terminal profiles: unknown terminals, working keys, MACs, PINs.
    ``key_seed`` seeds the working keys (the switch passes its fault seed, so ``--seed`` replays
    keys too); ``mac_placement`` says where the MAC sits in this dialect's encoded messages
    (``MacPlacement.for_dialect``) and is required when a profile MACs.
    """

    def __init__(self, config: HostConfig, ledger: Ledger, rules: ResponseRules | None = None, *,
                 profiles: ProfileSet | None = None, key_seed: int | str = 0,
                 mac_placement: MacPlacement | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.rules = rules if rules else None
        self.profiles = profiles
        self.key_seed = key_seed
        self.mac_placement = mac_placement
        self.macs = profiles is not None and any(profile.macs for profile in profiles)
        """Whether any terminal MACs: the server only looks for MAC placeholders when one does."""
        if self.macs and mac_placement is None:
            raise ValueError("a terminal profile asks for MACs: give the dialect's MacPlacement "
                             "(switch.security.MacPlacement.for_dialect)")
        self.sessions: dict[str, float] = {}
        """Signed-on terminals (field 41, trailing spaces removed) → sign-on time, Unix seconds.
        In memory only: after a restart every terminal must sign on again, as with real hosts."""
        self.session_keys: dict[str, WorkingKeys] = {}
        """Working keys of the signed-on terminals (profiles only), keyed like ``sessions``."""
        self._signon_counts: dict[str, int] = {}  # per terminal: which key draw the next sign-on gets
        self._pin_failures: dict[str, int] = {}  # per PAN: wrong PINs in a row
        family = config.family
        self._cup = family == "cup"
        self._checks = tuple(_CHECKS[family].items())
        self._required = _REQUIRED[family]
        self._sign_on_codes = _SIGN_ON_CODES[family]
        self._signon_code = config.signon_code
        self._header_cache: dict[tuple[str, str], str] = {}
        self._sent_cache: dict[str, datetime] = {}  # field 7 -> its instant, see _sent_at
        self._handlers: dict[str, Callable[[Message, datetime, float], Decision]] = {
            "0100": self._financial, "0101": self._financial,
            "0200": self._financial, "0201": self._financial,
            "0220": self._advice, "0221": self._advice,
            "0320": self._upload, "0321": self._upload,
            "0400": self._reversal, "0401": self._reversal, "0420": self._reversal, "0421": self._reversal,
            "0500": self._settlement, "0501": self._settlement,
            "0800": self._network, "0801": self._network,
        }
        self._response_mtis = {mti: f"{mti[:2]}{int(mti[2]) + 1}0" for mti in self._handlers}

    def reset_sessions(self) -> None:
        """Forget every sign-on, its working keys and the PIN try counts (what a restart does)."""
        self.sessions.clear()
        self.session_keys.clear()
        self._pin_failures.clear()

    def _end_session(self, terminal: str) -> float | None:
        self.session_keys.pop(terminal, None)
        return self.sessions.pop(terminal, None)

    # -- entry points -------------------------------------------------------------------------

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
            refusal = self._security_gate(request, raw)
            if refusal is not None:
                return refusal
            decision = handler(request, now, ts)
            if self.macs and decision.response is not None:
                decision.response = self._with_mac(decision.response)
            return decision
        response_mti = _response_mti(mti)
        if response_mti is None:
            readable = isinstance(mti, str) and _is_digits(mti, 4)
            what = "a response-class MTI" if readable else "an unreadable MTI"
            return Decision(None, None, "dropped", f"{mti!r} is {what}; nothing to answer")
        return Decision(self._reply(request, "12"), None, "invalid-transaction",
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
        response_mti = _response_mti(partial_mti)
        if response_mti is None:
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
        header = self._reply_header(header if isinstance(header, str) else "")
        response = Message(response_mti, fields, header)
        return Decision(response, None, "format-error",
                        f"{partial_mti} could not be decoded completely; answered 30 with the fields read")

    def unprocessed_reply(self, request: Message, code: str) -> Message | None:
        """An answer carrying ``code`` built from the request alone: no checks, no ledger, no session.

        For the fault engine's ``respond`` action and maintenance mode, where the host is meant to
        look inoperative (91, 96, 90...): nothing is posted, so a terminal that treats the answer as
        a decline stays consistent with the ledger. None when the MTI has no response (response
        class or not a request). CUP settlement answers carry the code as field 48's flag.
        """
        if _response_mti(request.mti) is None:
            return None
        if self._cup and request.mti[:3] == "050" and 48 in request.fields:
            try:
                return self._with_mac(self._settlement_reply(request, code))
            except (CompositeFieldError, ValueError):
                pass
        return self._with_mac(self._reply(request, code))

    def response_mac(self, response: Message) -> tuple[str, bytes] | None:
        """(algorithm, key) to MAC ``response`` with once encoded, or None when it carries no MAC
        placeholder (see the module docstring). The server calls ``security.apply_mac`` with them."""
        if not self.macs:
            return None
        if response.fields.get(mac_field(response)) != _MAC_PLACEHOLDER:
            return None
        raw_terminal = response.fields.get(41)
        profile = self._profile_for(raw_terminal) if raw_terminal is not None else None
        if profile is None or not profile.macs:
            return None
        key = self._mac_key(raw_terminal.rstrip(" "), profile)  # type: ignore[union-attr]
        return None if key is None else (profile.mac, key)

    # -- terminal profiles: unknown terminals, MACs, keys, PINs --------------------------------

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

    def _security_gate(self, request: Message, raw: bytes | None) -> Decision | None:
        """Unknown terminal → its code; a MACing terminal's request with a bad MAC → A0. Else None."""
        raw_terminal = request.fields.get(41)
        if not raw_terminal or not raw_terminal.strip():
            return None  # the handler's format checks answer 30
        assert self.profiles is not None
        terminal = raw_terminal.rstrip(" ")
        profile = self._profile_for(raw_terminal)
        if profile is None:
            code = self.profiles.unknown_terminal_code(self.config.family)
            return Decision(self._reply(request, code), None, "unknown-terminal",
                            f"terminal {terminal} is not in the profile file {self.profiles.path}; answered {code}")
        merchant = request.fields.get(42)
        if merchant is not None and merchant.rstrip(" ") != profile.merchant_id.rstrip(" "):
            return Decision(self._reply(request, INVALID_MERCHANT), None, "unknown-merchant",
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
        had_session = self._end_session(terminal) is not None
        code = self.config.mac_code
        return Decision(self._reply(request, code, requirement=CupHeader.SIGN_ON_AGAIN), None, "mac-failed",
                        f"{problem}; answered {code} (sign on again), "
                        f"{'session closed' if had_session else 'no session'}, nothing done")

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
        profile = self._profile_for(raw_terminal) if raw_terminal else None
        if profile is None or not profile.macs or self._mac_key(raw_terminal.rstrip(" "), profile) is None:
            return response
        return with_mac_placeholder(response)

    def _issue_keys(self, request: Message, terminal: str, code: str) -> tuple[dict[int, str] | None, str]:
        """At sign-on: the session's working keys; (fields for the reply, words for the reason)."""
        profile = self._profile_for(request.fields[41])
        if profile is None:
            return None, ""
        count = self._signon_counts.get(terminal, 0) + 1
        self._signon_counts[terminal] = count
        extra: dict[int, str] = {}
        if self._cup:
            sixty = CupField60.parse(request.fields[60])
            if self.ledger.batch_is_closed(terminal, sixty.batch):
                last = self.ledger.last_closed_batch(terminal) or sixty.batch
                batch = next_batch_number(last)
                extra[60] = CupField60(sixty.txn_type, batch, sixty.network_code, sixty.rest).format()
        if profile.tmk is None:
            assert profile.static_keys is not None  # a profile has a TMK or static keys
            self.session_keys[terminal] = profile.static_keys
            return extra or None, "; static working keys, no field 62"
        layout = self._key_layout(profile, code)
        rng = random.Random(f"{self.key_seed}/keys/{terminal}/{count}")
        keys = profile.issue_keys(rng, layout=layout)
        extra[62] = profile.field62(keys, layout=layout).hex().upper()
        self.session_keys[terminal] = keys
        return extra, (f"; working keys in field 62 ({layout} bytes): PIN key check "
                       f"{check_value(keys.pin_key).hex().upper()}, MAC key check "
                       f"{check_value(keys.mac_key).hex().upper()}")

    def _key_layout(self, profile: TerminalSecurityProfile, code: str) -> int:
        """The profile's layout, or the CUP layout the terminal asked for in 60.3 if its MAC key fits."""
        layout = profile.key_layout
        requested = layout_for_network_code(code) if self._cup else None
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

    # -- building blocks ----------------------------------------------------------------------

    def _reply_header(self, header: str, requirement: str = CupHeader.NO_REQUIREMENT) -> str:
        """The response header: CUP's with the processing requirement set; others unchanged."""
        if not self._cup:
            return header
        key = (header, requirement)
        cached = self._header_cache.get(key)
        if cached is None:
            try:
                parsed = CupHeader.parse(header)
            except CompositeFieldError:
                parsed = CupHeader.DEFAULT
            cached = parsed.with_requirement(requirement).format()
            if len(self._header_cache) >= 256:  # headers come from clients: keep the cache bounded
                self._header_cache.clear()
            self._header_cache[key] = cached
        return cached

    def _reply(self, request: Message, code: str | None, extra: Mapping[int, str] | None = None,
               rule: ResponseRule | None = None, requirement: str = CupHeader.NO_REQUIREMENT) -> Message:
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
        response_mti = self._response_mtis.get(mti) or f"{mti[:2]}{int(mti[2]) + 1}0"
        header = self._reply_header(request.header, requirement) if self._cup else request.header
        return Message(response_mti, fields, header)

    def _format_problem(self, fields: Mapping[int, str], required: tuple[int, ...]) -> _Problem | None:
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

    def _format_decision(self, request: Message, problem: _Problem) -> Decision:
        """30, echoing the request except the faulty field (which may not even encode)."""
        bad_field, text = problem
        response = self._reply(request, "30")
        if bad_field is not None:
            response.fields.pop(bad_field, None)
        return Decision(response, None, "format-error", f"format error: {text}")

    def _gate(self, request: Message, terminal: str, ts: float) -> Decision | None:
        """None when the terminal may transact; else the "sign on first" answer."""
        if not self.config.require_signon:
            return None
        signed_on = self.sessions.get(terminal)
        timeout = self.config.session_timeout
        if signed_on is None:
            reason = f"terminal {terminal} has not signed on"
        elif timeout is not None and ts - signed_on >= timeout:
            self._end_session(terminal)
            reason = (f"session of terminal {terminal} expired {ts - signed_on - timeout:.0f}s ago "
                      f"(timeout {timeout:g}s)")
        else:
            return None
        return Decision(self._reply(request, self._signon_code, requirement=CupHeader.SIGN_ON_AGAIN), None,
                        "signon-required", f"{reason}; answered {self._signon_code} (sign on first)")

    def _rule_refusal(self, request: Message, what: str) -> tuple[Decision | None, ResponseRule | None]:
        """(refusal, None) when a rule answers with a non-approval, else (None, the approving rule or None)."""
        if self.rules is None:
            return None, None
        rule = self.rules.first_match(request)
        if rule is None:
            return None, None
        if rule.response_code in APPROVAL_CODES:
            return None, rule
        decision = Decision(self._reply(request, rule.response_code, rule=rule), None, "rule",
                            f"response rule {rule.name!r} answered {rule.response_code}; {what}")
        return decision, None

    def _batch_number(self, fields: Mapping[int, str], terminal: str) -> str:
        """ISO: the host-kept open batch; CUP: the terminal's 60.2 (validated before this is called)."""
        if self._cup:
            return fields[60][2:8]
        return self.ledger.current_batch(terminal)

    def _closed_batch(self, request: Message, terminal: str, batch: str) -> Decision:
        return Decision(self._reply(request, "12"), None, "batch-closed",
                        f"batch {batch} of terminal {terminal} is already settled; answered 12")

    def _within_window(self, received_at: float, ts: float) -> bool:
        return ts - received_at <= self.config.duplicate_window

    def _financial_fields(self, request: Message, ts: float) -> tuple[str, str] | Decision:
        """Format + card + sign-on checks of a financial/advice request: (terminal, STAN) or the answer."""
        fields = request.fields
        problem = self._format_problem(fields, self._required["financial"])
        if problem is None and 2 not in fields and not fields.get(35):
            problem = None, "no card number: field 2 or 35 is mandatory"
        if problem is not None:
            return self._format_decision(request, problem)
        terminal = fields[41].rstrip(" ")
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        return terminal, fields[11]

    def _post(self, request: Message, ts: float, terminal: str, stan: str, code: str, approved: bool,
              batch: str, amount: int, auth_code: str | None = None) -> tuple[int, dict[int, str]]:
        """Record the request's posting; (its ledger seq, the fields the response carries for it)."""
        fields = request.fields
        mti = request.mti
        seq = self.ledger.next_sequence()
        rrn = rrn_for(seq)
        auth_code = (auth_code or auth_code_for(seq)) if approved else ""
        pan = pan_of(request)
        self.ledger.append_posting(
            seq, ts, terminal, stan, _time_key(fields.get(7)), mti, _KINDS[mti],
            "credit" if fields[3][0] == "2" else "debit", amount, fields.get(49, ""),
            mask_pan(pan) if pan else "", batch, code, approved, rrn, auth_code)
        return seq, self._posting_fields(request, rrn, approved, auth_code)

    def _posting_fields(self, request: Message, rrn: str, approved: bool, auth_code: str) -> dict[int, str]:
        """37 (host RRN), 38 (auth code) when approved, and 32 unless the request carried one."""
        extra = {37: rrn, 38: auth_code} if approved else {37: rrn}
        if 32 not in request.fields:
            extra[32] = self.config.institution_id  # read per message: the admin API may replace config
        return extra

    def _decline(self, request: Message, ts: float, terminal: str, stan: str, code: str, batch: str,
                 outcome: str, reason: str, rule: ResponseRule | None = None) -> Decision:
        seq, extra = self._post(request, ts, terminal, stan, code, False, batch, int(request.fields[4]))
        return Decision(self._reply(request, code, extra, rule), seq, outcome, f"{reason}; answered {code}")

    # -- 0100 / 0200 --------------------------------------------------------------------------

    def _financial(self, request: Message, now: datetime, ts: float) -> Decision:
        checked = self._financial_fields(request, ts)
        if isinstance(checked, Decision):
            return checked
        terminal, stan = checked
        fields = request.fields
        f7 = _time_key(fields.get(7))
        ledger = self.ledger
        first = ledger.find_posting(terminal, stan, f7)
        if first is not None and self._within_window(first.received_at, ts):
            return Decision(self._reply(request, "94"), first.seq, "duplicate",
                            f"terminal {terminal} STAN {stan} field 7 {f7 or '-'} already decided "
                            f"({first.response_code}, RRN {first.rrn}); answered 94, nothing posted")
        batch = self._batch_number(fields, terminal)
        cfg = self.config
        early = self._reversed_before_arrival(terminal, stan, f7, ts)
        if early is not None:
            return self._decline(request, ts, terminal, stan, cfg.stale_code, batch,
                                 "reversed-before-arrival",
                                 f"its reversal (seq {early.seq}) arrived first: the terminal gave it up")
        if f7:
            sent = self._sent_at(f7, now)
            if sent is None:
                return self._decline(request, ts, terminal, stan, cfg.stale_code, batch, "stale",
                                     f"field 7 {f7} is an impossible date (window {cfg.stale_window:g}s)")
            offset = (now - sent).total_seconds()
            if abs(offset) > cfg.stale_window:
                return self._decline(request, ts, terminal, stan, cfg.stale_code, batch, "stale",
                                     f"field 7 {f7} is {offset:+.0f}s off host time "
                                     f"(window {cfg.stale_window:g}s)")
        amount = int(fields[4])
        if amount == 0:
            return self._decline(request, ts, terminal, stan, "13", batch, "declined", "amount is zero")
        expiry = card_expiry(fields)
        # YYMM (month checked to be 01-12) against the host's month, both compared as YYYYMM numbers
        if expiry is not None and 200000 + int(expiry) < now.year * 100 + now.month:
            return self._decline(request, ts, terminal, stan, "54", batch, "declined",
                                 f"card expired (YYMM {expiry}, host date {now:%y%m})")
        if self.profiles is not None:
            pin_refusal = self._pin_refusal(request, terminal)
            if pin_refusal is not None:
                return self._decline(request, ts, terminal, stan, pin_refusal[0], batch, "declined",
                                     pin_refusal[1])
        rule = None
        if self.rules is not None:
            rule = self.rules.first_match(request)
            if rule is not None and rule.response_code not in APPROVAL_CODES:
                return self._decline(request, ts, terminal, stan, rule.response_code, batch, "declined",
                                     f"response rule {rule.name!r}", rule)
        if _KINDS[request.mti] != "authorization" and ledger.batch_is_closed(terminal, batch):
            return self._closed_batch(request, terminal, batch)
        if rule is None:
            seq, extra = self._post(request, ts, terminal, stan, "00", True, batch, amount)
            return Decision(self._reply(request, "00", extra), seq, "approved", _APPROVED)
        code = rule.response_code
        if 4 in rule.fields and _check_amount(rule.fields[4]) is None:
            amount = int(rule.fields[4])  # e.g. a partial approval (10) of a smaller amount
        seq, extra = self._post(request, ts, terminal, stan, code, True, batch, amount)
        return Decision(self._reply(request, code, extra, rule), seq, "approved",
                        f"approved by response rule {rule.name!r}: RRN {extra[37]}, auth code {extra[38]}, "
                        f"batch {batch}")

    def _sent_at(self, f7: str, now: datetime) -> datetime | None:
        """``transmission_datetime(f7, now)``, remembering each field 7's answer.

        Parsing field 7 into a datetime is the dearest part of a purchase's checks, and at any moment
        most requests carry one of a few recent values. A remembered instant is reused exactly when
        ``transmission_datetime`` would pick it again: it lies in ``now``'s year, within half a year
        of ``now`` (the first candidate that function tries, and then accepts).
        """
        cache = self._sent_cache
        sent = cache.get(f7)
        if sent is not None and sent.year == now.year and abs(sent - now) <= _HALF_YEAR:
            return sent
        sent = transmission_datetime(f7, now)
        if sent is not None:
            if len(cache) >= _SENT_CACHE_SIZE:  # values come from clients: keep the memory bounded
                cache.clear()
            cache[f7] = sent
        return sent

    def _reversed_before_arrival(self, terminal: str, stan: str, f7: str, ts: float) -> Reversal | None:
        """A reversal of an unknown original that names this request (it overtook its original)."""
        ledger = self.ledger
        for time_key in ((f7, _NO_TIME) if f7 else (_NO_TIME,)):
            reversal = ledger.reversal_for(terminal, stan, time_key)
            if (reversal is not None and reversal.effect == "original-unknown"
                    and self._within_window(reversal.received_at, ts)):
                return reversal
        return None

    # -- 0220 / 0221 --------------------------------------------------------------------------

    def _advice(self, request: Message, now: datetime, ts: float) -> Decision:
        checked = self._financial_fields(request, ts)
        if isinstance(checked, Decision):
            return checked
        terminal, stan = checked
        fields = request.fields
        first = self.ledger.latest_advice(terminal, stan)
        if first is not None and self._within_window(first.received_at, ts):
            extra = self._posting_fields(request, first.rrn, first.approved, first.auth_code)
            return Decision(self._reply(request, "00", extra), first.seq,
                            "duplicate-advice",
                            f"advice {terminal} STAN {stan} already posted (RRN {first.rrn}); "
                            "answered 00 again, nothing posted")
        amount = int(fields[4])
        if amount == 0:
            return Decision(self._reply(request, "13"), None, "declined",
                            "advice amount is zero; answered 13")
        refusal, rule = self._rule_refusal(request, "advice not posted")
        if refusal is not None:
            return refusal
        batch = self._batch_number(fields, terminal)
        if self.ledger.batch_is_closed(terminal, batch):
            return self._closed_batch(request, terminal, batch)
        offline_code = fields.get(38)
        seq, extra = self._post(request, ts, terminal, stan, "00", True, batch, amount,
                                offline_code if offline_code and offline_code.strip() else None)
        return Decision(self._reply(request, "00", extra, rule), seq,
                        "advice-posted", f"advice posted: RRN {extra[37]}, batch {batch}")

    # -- 0400 / 0401 / 0420 / 0421 ------------------------------------------------------------

    def _reversal(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self._required["reversal"])
        original_data: OriginalData | None = None
        if problem is None and 90 in fields:
            try:
                original_data = OriginalData.parse(fields[90])
            except CompositeFieldError as exc:
                problem = 90, f"field 90 {exc.reason}"
        if problem is not None:
            return self._format_decision(request, problem)
        terminal = fields[41].rstrip(" ")
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        if original_data is not None:
            target_stan, target_time = original_data.stan, _time_key(original_data.transmission_time)
        else:
            target_stan, target_time = fields[11], _NO_TIME
        ledger = self.ledger
        previous = ledger.reversal_for(terminal, target_stan, target_time)
        if previous is not None and self._within_window(previous.received_at, ts):
            return self._reversal_repeat(request, previous)
        original = self._find_original(terminal, target_stan, target_time, ts)
        if original is not None:
            earlier = ledger.reversal_of(original.seq)
            if earlier is not None:
                return self._reversal_repeat(request, earlier)
        refusal, rule = self._rule_refusal(request, "nothing reversed")
        if refusal is not None:
            return refusal
        named = f"{terminal} STAN {target_stan} field 7 {target_time or '-'}"
        if original is None:
            effect, code = "original-unknown", self.config.unknown_original_code
            reason = f"no original {named}; remembered so a late original is not posted"
        elif not original.approved:
            effect, code = "nothing-to-undo", "00"
            reason = (f"original (seq {original.seq}) was declined with {original.response_code}: "
                      "nothing to undo")
        elif original.kind != "authorization" and ledger.batch_is_closed(terminal, original.batch):
            effect, code = "batch-closed", "12"
            reason = f"original (RRN {original.rrn}) is in batch {original.batch}, already settled"
        else:
            effect, code = "reversed", "00"
            reason = f"original RRN {original.rrn} ({original.amount}, {original.direction}) reversed"
        seq = ledger.next_sequence()
        reversal = Reversal(seq, ts, terminal, fields[11], _time_key(fields.get(7)), request.mti,
                            original.seq if original is not None else None, target_stan, target_time, code,
                            effect)
        ledger.record_reversal(reversal)
        response = self._reply(request, code, self._reversal_fields(request, original), rule)
        return Decision(response, seq, effect, f"{reason}; answered {code}")

    def _find_original(self, terminal: str, stan: str, time_key: str, ts: float) -> Posting | None:
        """Exact terminal + STAN + field 7; else the latest posting with that STAN, unless its field 7
        contradicts the one asked for (a different transaction that reused the STAN) or it is older
        than the duplicate window."""
        ledger = self.ledger
        if time_key:
            exact = ledger.find_posting(terminal, stan, time_key)
            if exact is not None:
                return exact
        latest = ledger.latest_posting(terminal, stan)
        if latest is None or not self._within_window(latest.received_at, ts):
            return None
        if time_key and latest.transmission_time and latest.transmission_time != time_key:
            return None
        return latest

    def _reversal_fields(self, request: Message, original: Posting | None) -> dict[int, str] | None:
        if original is None or not original.rrn or 37 in request.fields:
            return None
        return {37: original.rrn}

    def _reversal_repeat(self, request: Message, first: Reversal) -> Decision:
        original = self.ledger.posting(first.original_seq) if first.original_seq is not None else None
        return Decision(self._reply(request, first.response_code, self._reversal_fields(request, original)),
                        first.seq, "reversal-repeat",
                        f"original already answered by reversal seq {first.seq} ({first.effect}); "
                        "same answer "
                        f"{first.response_code}, nothing more undone")

    # -- 0320 ---------------------------------------------------------------------------------

    def _upload(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self._required["upload"])
        if problem is not None:
            return self._format_decision(request, problem)
        network_code = fields[60][8:11] if self._cup else fields.get(70, "")
        end = network_code in UPLOAD_END_CODES
        if not end:
            missing = [n for n in (3, 4) if n not in fields]
            original_data: OriginalData | None = None
            if 90 in fields:
                try:
                    original_data = OriginalData.parse(fields[90])
                except CompositeFieldError as exc:
                    return self._format_decision(request, (90, f"field 90 {exc.reason}"))
            if missing:
                return self._format_decision(request, (None, f"upload record lacks field {missing[0]}"))
        terminal = fields[41].rstrip(" ")
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        batch = self._batch_number(fields, terminal)
        if self.ledger.batch_is_closed(terminal, batch):
            return self._closed_batch(request, terminal, batch)
        refusal, rule = self._rule_refusal(request, "nothing stored")
        if refusal is not None:
            return refusal
        seq = self.ledger.next_sequence()
        if end:
            self.ledger.end_upload(seq, ts, terminal, batch)
            count = len(self.ledger.uploads(terminal, batch))
            return Decision(self._reply(request, "00", rule=rule), seq, "upload-ended",
                            f"upload of batch {batch} ended with {count} records; "
                            "the next settlement accepts it")
        stan = original_data.stan if original_data is not None else fields[11]
        pan = pan_of(request) or ""
        record = UploadRecord(seq, ts, terminal, batch, stan, fields[3],
                              "credit" if fields[3][0] == "2" else "debit", int(fields[4]),
                              fields.get(37, "").strip(), mask_pan(pan) if pan else "")
        self.ledger.record_upload(record)
        return Decision(self._reply(request, "00", rule=rule), seq, "uploaded",
                        f"upload record STAN {stan} ({record.amount}, {record.direction}) "
                        f"stored for batch {batch}")

    # -- 0500 / 0501 --------------------------------------------------------------------------

    def _terminal_totals(self, fields: Mapping[int, str]) -> tuple[SettlementTotals, SettlementTotals | None]:
        """(the totals compared, CUP foreign-card section or None); raises CompositeFieldError."""
        if self._cup:
            domestic, _ = SettlementTotals.from_cup48(fields[48])
            if len(fields[48]) == 31:  # domestic section only
                return domestic, None
            return domestic, SettlementTotals.from_cup48(fields[48], foreign=True)[0]
        net = fields.get(97)
        if net is not None and not (len(net) == 17 and net[0] in "CD" and _is_digits(net[1:], 16)):
            raise CompositeFieldError(97, f"net settlement amount must be C or D and 16 digits, got {net!r}")
        totals = SettlementTotals.from_iso_fields({n: fields[n] for n in _ISO_TOTAL_FIELDS if n in fields})
        return totals, None

    def _settlement(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self._required["settlement"])
        if problem is None:
            try:
                totals, foreign = self._terminal_totals(fields)
            except CompositeFieldError as exc:
                problem = (exc.field if isinstance(exc.field, int) else None), str(exc)
        if problem is not None:
            return self._format_decision(request, problem)
        terminal, stan = fields[41].rstrip(" "), fields[11]
        gate = self._gate(request, terminal, ts)
        if gate is not None:
            return gate
        ledger = self.ledger
        previous = ledger.settlement_for(terminal, stan)
        if previous is not None and self._within_window(previous.received_at, ts):
            return Decision(self._settlement_reply(request, previous.response_code), previous.seq,
                            "settlement-repeat",
                            f"settlement STAN {stan} already answered ({previous.result}); "
                            f"same answer {previous.response_code}")
        refusal, rule = self._rule_refusal(request, "batch left as it was")
        if refusal is not None:
            return refusal
        batch = self._batch_number(fields, terminal)
        summary = ledger.batch_summary(terminal, batch)
        foreign_empty = foreign is None or foreign == SettlementTotals(0, 0, 0, 0)
        matches = _net(totals) == _net(summary.net_totals) and foreign_empty
        if summary.status == "closed":
            code = "00" if matches else "95"
            return Decision(self._settlement_reply(request, code, rule), summary.closed_seq,
                            "already-settled",
                            f"batch {batch} of terminal {terminal} was already settled; its totals "
                            f"{'match' if matches else 'differ'}: answered {code}, nothing changed")
        seq = ledger.next_sequence()
        found: list[Discrepancy] = []
        if summary.upload_ended:
            result, code = "accepted-after-upload", "00"
            found = self._discrepancies(terminal, batch, totals, ts)
            reason = (f"batch {batch} accepted as uploaded and closed; {len(found)} differences from the "
                      "ledger recorded")
        elif matches:
            result, code = "balanced", "00"
            reason = f"batch {batch} balanced ({_describe(totals)}) and closed"
        else:
            result, code = "unbalanced", "95"
            reason = (f"batch {batch} does not balance: terminal {_describe(totals)}"
                      f"{'' if foreign_empty else ' plus foreign-card totals'}, "
                      f"host {_describe(summary.net_totals)}; "
                      "kept open")
        settlement = Settlement(seq, ts, terminal, batch, stan, _time_key(fields.get(7)), result, code,
                                result != "unbalanced", totals.debit_count, totals.debit_amount,
                                totals.credit_count, totals.credit_amount)
        ledger.record_settlement(settlement, found)
        commit = found[-1].seq if found else seq
        return Decision(self._settlement_reply(request, code, rule), commit, result,
                        f"{reason}; answered {code}")

    def _settlement_reply(self, request: Message, code: str, rule: ResponseRule | None = None) -> Message:
        """ISO: field 39. CUP: no field 39; field 48 echoes the totals with the result flag."""
        if not self._cup:
            return self._reply(request, code, rule=rule)
        value = request.fields[48]
        domestic, _ = SettlementTotals.from_cup48(value)
        flag = _CUP_FLAG.get(code, "3")
        if len(value) > 31:
            foreign, _ = SettlementTotals.from_cup48(value, foreign=True)
            foreign_flag = "1" if foreign == SettlementTotals(0, 0, 0, 0) else "2"
            echoed = domestic.to_cup48(flag, foreign=foreign, foreign_flag=foreign_flag)
        else:
            echoed = domestic.to_cup48(flag)[:31]
        return self._reply(request, None, {48: echoed}, rule)

    def _discrepancies(self, terminal: str, batch: str, totals: SettlementTotals, ts: float
                       ) -> list[Discrepancy]:
        """Every difference between the terminal's uploaded records and the ledger's batch."""
        ledger = self.ledger
        uploads = {u.stan: u for u in ledger.uploads(terminal, batch)}
        booked = {p.stan: p for p in ledger.batch_postings(terminal, batch) if p.kind != "authorization"}
        found: list[Discrepancy] = []

        def add(kind: str, stan: str, rrn: str, ledger_amount: int | None, upload_amount: int | None,
                detail: str) -> None:
            found.append(Discrepancy(ledger.next_sequence(), ts, terminal, batch, kind, stan, rrn,
                                     ledger_amount, upload_amount, detail))

        for stan, upload in uploads.items():
            posting = booked.get(stan)
            if posting is None:
                add("unknown-to-ledger", stan, upload.rrn, None, upload.amount,
                    f"uploaded {upload.direction} of {upload.amount} the host never saw")
            elif not posting.approved:
                add("not-approved-in-ledger", stan, posting.rrn, posting.amount, upload.amount,
                    f"the host declined it with {posting.response_code}")
            elif posting.reversal_seq is not None:
                add("reversed-in-ledger", stan, posting.rrn, posting.amount, upload.amount,
                    f"the host reversed it (seq {posting.reversal_seq})")
            elif posting.amount != upload.amount or posting.direction != upload.direction:
                add("amount-differs", stan, posting.rrn, posting.amount, upload.amount,
                    f"host {posting.direction} {posting.amount}, upload {upload.direction} {upload.amount}")
        for stan, posting in booked.items():
            if posting.captured and stan not in uploads:
                add("missing-from-upload", stan, posting.rrn, posting.amount, None,
                    f"approved {posting.direction} of {posting.amount} not in the upload")
        uploaded = SettlementTotals(
            sum(1 for u in uploads.values() if u.direction == "debit"),
            sum(u.amount for u in uploads.values() if u.direction == "debit"),
            sum(1 for u in uploads.values() if u.direction == "credit"),
            sum(u.amount for u in uploads.values() if u.direction == "credit"))
        if _net(uploaded) != _net(totals):
            add("totals-differ-from-upload", "", "", None, None,
                f"settlement says {_describe(totals)}, the uploaded records add up to {_describe(uploaded)}")
        return found

    # -- 0800 ---------------------------------------------------------------------------------

    def _network(self, request: Message, now: datetime, ts: float) -> Decision:
        fields = request.fields
        problem = self._format_problem(fields, self._required["network"])
        if problem is None and self._cup and len(fields[60]) < 11:
            problem = 60, "field 60 has no 60.3 network management code"
        if problem is not None:
            return self._format_decision(request, problem)
        code = fields[60][8:11] if self._cup else fields[70]
        terminal = fields.get(41, "").rstrip(" ")
        refusal, rule = self._rule_refusal(request, "session unchanged")
        if refusal is not None:
            return refusal
        if code == _ECHO:
            return Decision(self._reply(request, "00", rule=rule), None, "echo", "echo test answered")
        if code in self._sign_on_codes or code == _SIGN_OFF:
            if not terminal:
                return self._format_decision(request, (None, "sign-on/off needs field 41 (terminal id)"))
            if code == _SIGN_OFF:
                was = self._end_session(terminal)
                state = "closed its session" if was is not None else "had no session"
                return Decision(self._reply(request, "00", rule=rule), None, "signoff",
                                f"terminal {terminal} signed off ({state})")
            extra, keys_note = None, ""
            if self.profiles is not None:
                try:
                    extra, keys_note = self._issue_keys(request, terminal, code)
                except (SecurityError, CompositeFieldError) as exc:
                    self._end_session(terminal)
                    return Decision(self._reply(request, "96"), None, "signon-failed",
                                    f"terminal {terminal}: working keys cannot be issued: {exc}; answered 96")
            self.sessions[terminal] = ts
            return Decision(self._reply(request, "00", extra, rule=rule), None, "signon",
                            f"terminal {terminal} signed on (network code {code}){keys_note}")
        return Decision(self._reply(request, "12"), None, "invalid-transaction",
                        f"network management code {code} is not supported (sign-on, sign-off, echo are)")


def _net(totals: SettlementTotals) -> tuple[int, int, int, int]:
    """What settlement compares: debits and credits still charged (reversal columns ignored)."""
    return totals.debit_count, totals.debit_amount, totals.credit_count, totals.credit_amount


def _describe(totals: SettlementTotals) -> str:
    return (f"{totals.debit_count} debits {totals.debit_amount}, "
            f"{totals.credit_count} credits {totals.credit_amount}")
