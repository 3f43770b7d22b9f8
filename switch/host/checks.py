"""Field checks and the small pure derivations the host's rules use (no host state here).

Each check returns None when the value is fine, else what is wrong. They run on every request
carrying their field, so they avoid int() and helper calls: once a value is known to be ASCII digits,
comparing 2-digit slices as strings ("01" <= mm <= "12") orders them exactly as the numbers would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo

from switch.codec.composite import CompositeFieldError, CupField60, luhn_valid

__all__ = [
    "PATTERNS",
    "RESPONSE_MTIS",
    "Problem",
    "auth_code_for",
    "auth_salt",
    "card_expiry",
    "identity_of",
    "luhn_valid",
    "response_mti",
    "rrn_for",
    "transmission_datetime",
]

Problem = tuple[int | None, str]
"""A format error: the faulty field (None when one is missing) and what is wrong."""

_HALF_YEAR = timedelta(days=183)

PATTERNS: dict[Callable[[str], str | None], str] = {}
"""Check → a regular expression that fully matches exactly the values it accepts (and never a NUL).
``screen.FormatScreen`` matches a whole well-formed request with them at once; a check absent here
(field 60's parse) is simply called. Each pattern must accept no value its check refuses:
``test_host`` compares them on edge values."""


def is_digits(value: str, width: int) -> bool:
    return len(value) == width and value.isascii() and value.isdigit()


def check_pan(value: str) -> str | None:
    if 1 <= len(value) <= 19 and value.isascii() and value.isdigit():
        return None
    return "must be 1 to 19 digits"


def check_n(width: int) -> Callable[[str], str | None]:
    problem = f"must be {width} digits"

    def check(value: str) -> str | None:
        return None if len(value) == width and value.isascii() and value.isdigit() else problem
    PATTERNS[check] = f"[0-9]{{{width}}}"
    return check


def check_amount(value: str) -> str | None:
    if 1 <= len(value) <= 12 and value.isascii() and value.isdigit():
        return None
    return "must be 1 to 12 digits"


_LAST_DAY = {"01": "31", "02": "29", "03": "31", "04": "30", "05": "31", "06": "30",
             "07": "31", "08": "31", "09": "30", "10": "31", "11": "30", "12": "31"}
"""Month → its last day, as text; 29 for February because 02-29 is valid in a leap year."""


def check_transmission_time(value: str) -> str | None:
    if not (len(value) == 10 and value.isascii() and value.isdigit()):
        return "must be 10 digits MMDDhhmmss"
    last_day = _LAST_DAY.get(value[0:2])
    if last_day is None or not "01" <= value[2:4] <= last_day:
        return "is not a valid date MMDD"
    if value[4:6] > "23" or value[6:8] > "59" or value[8:10] > "59":
        return "is not a valid time hhmmss"
    return None


def check_local_time(value: str) -> str | None:
    if not is_digits(value, 6):
        return "must be 6 digits hhmmss"
    return "is not a valid time hhmmss" if value[0:2] > "23" or value[2:4] > "59" or value[4:6] > "59" else None


def check_local_date(value: str) -> str | None:
    if not is_digits(value, 4):
        return "must be 4 digits MMDD"
    last_day = _LAST_DAY.get(value[0:2])
    return None if last_day is not None and "01" <= value[2:4] <= last_day else "is not a valid date MMDD"


def check_stan(value: str) -> str | None:
    if not (len(value) == 6 and value.isascii() and value.isdigit()):
        return "must be 6 digits"
    return "must not be 000000 (STANs run 000001-999999)" if value == "000000" else None


def check_terminal(value: str) -> str | None:
    return None if value.strip() else "must not be blank"


def check_expiry(value: str) -> str | None:
    if not (len(value) == 4 and value.isascii() and value.isdigit()):
        return "must be 4 digits YYMM"
    return None if "01" <= value[2:4] <= "12" else "month must be 01-12"


_MMDD = ("(?:(?:0[13578]|1[02])(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)(?:0[1-9]|[12][0-9]|30)"
         "|02(?:0[1-9]|[12][0-9]))")
_HHMMSS = "(?:[01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]"
PATTERNS.update({
    check_pan: "[0-9]{1,19}",
    check_amount: "[0-9]{1,12}",
    check_transmission_time: _MMDD + _HHMMSS,
    check_local_time: _HHMMSS,
    check_local_date: _MMDD,
    check_stan: "(?!000000)[0-9]{6}",
    check_terminal: r"[^\x00]*[^\s\x00][^\x00]*",  # \s is what str.strip removes; no NUL (the screen's joint)
    check_expiry: "[0-9]{2}(?:0[1-9]|1[0-2])",
})


def check_cup60(value: str) -> str | None:
    try:
        CupField60.parse(value)
    except CompositeFieldError as exc:
        return exc.reason
    return None


def transmission_datetime(f7: str, now: datetime) -> datetime | None:
    """Field 7 (MMDDhhmmss UTC, no year) as the datetime nearest ``now``: last, this or next year.

    The year is whichever puts the instant closest to the host's time, so 1231235959 received at
    00:00:05 on 1 January is five seconds old, not a year ahead. None when the date exists in none of
    the three years (29 February with no leap year near).
    """
    return local_datetime(f7, now, UTC)


def local_datetime(mmddhhmmss: str, now: datetime, zone: tzinfo) -> datetime | None:
    """MMDDhhmmss in ``zone`` as the instant nearest ``now`` (see ``transmission_datetime``)."""
    month, day = int(mmddhhmmss[0:2]), int(mmddhhmmss[2:4])
    hour, minute, second = int(mmddhhmmss[4:6]), int(mmddhhmmss[6:8]), int(mmddhhmmss[8:10])
    best: datetime | None = None
    local_now = now.astimezone(zone)
    for year in (local_now.year, local_now.year - 1, local_now.year + 1):
        try:
            candidate = datetime(year, month, day, hour, minute, second, tzinfo=zone)
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
            if is_digits(candidate, 4) and 1 <= int(candidate[2:4]) <= 12:
                return candidate
            return None
    return None


def identity_of(mti: str, fields: Mapping[int, str], pan: str | None) -> str:
    """What, beside terminal + STAN, names one transaction for the duplicate check.

    The message class (so a 0100 and a 0200 never collide) plus the local date/time 12/13 when the
    request has both, else its amount and a digest of its card number. Field 7 is deliberately absent:
    it changes on every retransmission.
    """
    kind = mti[1:3]
    f12, f13 = fields.get(12), fields.get(13)
    if f12 and f13:
        return f"{kind}L{f13}{f12}"
    card = hashlib.blake2b((pan or "").encode(), digest_size=6).hexdigest() if pan else "-"
    return f"{kind}A{fields.get(4, '')}/{card}"


def rrn_for(seq: int) -> str:
    """Field 37 (an12) from the ledger sequence: unique while the sequence is, across restarts."""
    return f"{seq % 10**12:012d}"


def auth_code_for(seq: int, salt: int = 0) -> str:
    """Field 38 (an6), deterministic: the sequence times an odd number not divisible by 5, plus
    ``salt``, modulo 10^6.

    That map is a bijection on 0..999999, so a million approvals in a row get different codes, and
    consecutive approvals do not get consecutive codes (issuers' codes are not sequential). The
    salt comes from the switch's seed (``auth_salt``): another seed, other codes from the first
    approval on; the same seed replays them.
    """
    return f"{(seq * 741457 + salt) % 1_000_000:06d}"


def auth_salt(seed: int | str | None) -> int:
    """The ``auth_code_for`` salt of a seed (0 for None: the unsalted codes)."""
    if seed is None:
        return 0
    return int.from_bytes(hashlib.blake2b(f"{seed}/auth-codes".encode(), digest_size=8).digest(), "big") % 1_000_000


RESPONSE_MTIS = {f"0{c}{f}{o}": f"0{c}{int(f) + 1}0" for c in "12345678" for f in "024" for o in "0123"}


def response_mti(mti: object) -> str | None:
    """The response MTI when ``mti`` is a readable request/advice/notification MTI, else None."""
    if isinstance(mti, str):
        known = RESPONSE_MTIS.get(mti)
        if known is not None:
            return known
        if is_digits(mti, 4) and mti[2] in "024":
            return f"{mti[:2]}{int(mti[2]) + 1}0"
    return None
