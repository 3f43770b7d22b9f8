"""``HostConfig``: every ``[host]`` setting of a scenario, validated once, and the codes' defaults."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, timedelta, timezone, tzinfo
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from switch.codec.dialect import FAMILIES

__all__ = [
    "APPROVAL_CODES",
    "HOST_SETTINGS",
    "MAC_FAILURE_DEFAULT",
    "MESSAGE_CLASSES",
    "PIN_FORMAT_DEFAULT",
    "SIGNON_REQUIRED_DEFAULTS",
    "HostConfig",
    "ResendAnswer",
    "SettlementCompare",
]

APPROVAL_CODES = frozenset({"00", "08", "10", "11"})
"""Codes that approve (post) a request: approved, honour with id, partial approval, VIP approval."""

SIGNON_REQUIRED_DEFAULTS: Mapping[str, str] = {"cup": "A0", "iso87": "A0"}
"""Default "sign on first" code per family: A0 ("sign on again") for both. CUP sign-on delivers the MAC
key, so CUP hosts answer A0; ISO 8583 has no dedicated code, and A0 is what terminals (ours included)
read as "sign on again" (domain.md). 58 "not permitted to terminal" is a genuine decline, so a host
that uses it for "sign on first" says so (``signon_required_code = "58"``)."""

MAC_FAILURE_DEFAULT = "A0"
"""Answer to a request whose MAC does not verify (CUP's "MAC check failed, sign on again"; ISO hosts
use A0 or 63): terminals read A0 as "sign on again" and so fetch fresh keys."""
PIN_FORMAT_DEFAULT = "99"
"""Answer to a PIN block that is not ISO format 0 (CUP: "PIN format error, sign on again")."""

MESSAGE_CLASSES = ("financial", "reversal", "upload", "settlement", "network")
"""The classes ``required_fields`` is given per."""

INDISPENSABLE_FIELDS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "financial": (4, 11), "reversal": (11,), "upload": (11,), "settlement": (11,), "network": ()})
"""Fields ``required_fields`` cannot leave out: without the STAN (11) no transaction has an identity
(repeats, reversals and settlements are found by it), and without the amount (4) a financial request
has nothing to approve (a balance inquiry, 31xxxx, never needs 4)."""


class ResendAnswer(StrEnum):
    """What a plain resend (same MTI, same transaction) gets: 94, or the first answer again."""

    DUPLICATE = "94"
    ORIGINAL = "original"


class SettlementCompare(StrEnum):
    """What settlement compares: net (gross − reversals, the default) or gross with reversal columns."""

    NET = "net"
    GROSS = "gross"


def _code(value: object) -> bool:
    return isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalnum()


_SWITCH_WORDS = frozenset({"on", "no"})
"""Two-letter words a setting that takes a code or "off" must not read as a code (``luhn_code = "on"``)."""


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_OFFSET = re.compile(r"([+-])(\d\d):?(\d\d)")


def parse_timezone(value: str) -> tzinfo:
    """"UTC" or an offset "+08:00" / "-0530" as a fixed ``timezone``; raises ValueError."""
    if value.upper() in ("UTC", "Z", "GMT"):
        return UTC
    match = _OFFSET.fullmatch(value)
    if match is None or int(match[2]) > 14 or int(match[3]) > 59:
        raise ValueError(f'must be "UTC" or an offset such as "+08:00", got {value!r}')
    minutes = int(match[2]) * 60 + int(match[3])
    return timezone(timedelta(minutes=-minutes if match[1] == "-" else minutes))


@dataclass(frozen=True)
class HostConfig:
    """How the host answers; scenario files set these under ``[host]``. Durations in seconds."""

    family: str = "iso87"
    require_signon: bool = True
    signon_required_code: str | None = None  # None: SIGNON_REQUIRED_DEFAULTS[family]
    session_timeout: float | None = None  # None: sessions never expire
    stale_check: bool = False  # opt-in: decline requests whose time is stale_window off host time
    stale_window: float = 300.0
    stale_code: str = "22"
    unknown_original_code: str = "00"  # reversal of an original never seen; alternative "25"
    reversal_mismatch_code: str = "25"  # reversal whose amount / card / MTI contradict the original
    duplicate_window: float = 86400.0
    resend_answer: str = ResendAnswer.DUPLICATE.value  # plain resend: "94" or "original"
    settlement_compare: str = SettlementCompare.NET.value
    settlement_host_totals: bool = True  # ISO 95 answers carry the host's totals (74-77, 86-89, 97)
    luhn_code: str | None = "14"  # None: no Luhn check of the card number
    timezone: str = "UTC"  # host local time (0810 fields 12/13, stale check of 12/13)
    balance: int = 100000  # minor units answered in field 54 to a balance inquiry
    required_fields: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # {} : family defaults
    institution_id: str = "00000000001"  # our acquirer id (field 32 in financial responses)
    mac_failure_code: str | None = None  # None: MAC_FAILURE_DEFAULT (profiles only)
    pin_format_code: str | None = None  # None: PIN_FORMAT_DEFAULT (profiles only)

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        for name in ("require_signon", "stale_check", "settlement_host_totals"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("stale_code", "unknown_original_code", "reversal_mismatch_code"):
            if not _code(getattr(self, name)):
                problems.append(f"{name} must be a 2-character response code, got {getattr(self, name)!r}")
        for name in ("signon_required_code", "mac_failure_code", "pin_format_code", "luhn_code"):
            value = getattr(self, name)
            if value is not None and (not _code(value) or (name == "luhn_code" and value.lower() in _SWITCH_WORDS)):
                problems.append(f"{name} must be a 2-character response code or None, got {value!r}")
        timeout = self.session_timeout
        if timeout is not None and not (_seconds(timeout) and timeout > 0):
            problems.append(f"session_timeout must be seconds > 0 or None, got {self.session_timeout!r}")
        if not (_seconds(self.stale_window) and self.stale_window > 0):
            problems.append(f"stale_window must be seconds > 0, got {self.stale_window!r}")
        if not (_seconds(self.duplicate_window) and self.duplicate_window >= 0):
            problems.append(f"duplicate_window must be seconds >= 0, got {self.duplicate_window!r}")
        for name, enum in (("resend_answer", ResendAnswer), ("settlement_compare", SettlementCompare)):
            if getattr(self, name) not in {e.value for e in enum}:
                choices = " or ".join(repr(e.value) for e in enum)
                problems.append(f"{name} must be {choices}, got {getattr(self, name)!r}")
        try:
            parse_timezone(self.timezone) if isinstance(self.timezone, str) else parse_timezone("?")
        except ValueError as exc:
            problems.append(f"timezone {exc}")
        if isinstance(self.balance, bool) or not isinstance(self.balance, int) or not 0 <= self.balance < 10**12:
            problems.append(f"balance must be minor units 0 to 999999999999, got {self.balance!r}")
        try:
            object.__setattr__(self, "required_fields", MappingProxyType(_required(self.required_fields)))
        except ValueError as exc:
            problems.append(f"required_fields {exc}")
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

    @property
    def tz(self) -> tzinfo:
        """The host's local time zone (a fixed offset)."""
        return parse_timezone(self.timezone)

    @classmethod
    def for_dialect(cls, dialect: Any, **overrides: Any) -> HostConfig:
        """The configuration for a dialect's family, with scenario / command-line overrides."""
        known = {f.name for f in dataclass_fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown host setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        settings = {"family": dialect.family, **overrides}
        return cls(**settings)


def _required(value: object) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table of message class = [field numbers], got {value!r}")
    result: dict[str, tuple[int, ...]] = {}
    for name, numbers in value.items():
        if name not in MESSAGE_CLASSES:
            raise ValueError(f"names message classes ({', '.join(MESSAGE_CLASSES)}), got {name!r}")
        if not isinstance(numbers, list | tuple) or not all(
                isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= 128 for n in numbers):
            raise ValueError(f"{name} must be a list of field numbers 2..128, got {numbers!r}")
        indispensable = INDISPENSABLE_FIELDS[name]
        if any(n not in numbers for n in indispensable):
            many = len(indispensable) > 1
            needed = " and ".join(str(n) for n in indispensable)
            raise ValueError(f"{name} must include field{'s' if many else ''} {needed} (the host cannot identify "
                             f"or decide a {name} request without {'them' if many else 'it'}), got {list(numbers)!r}")
        result[name] = tuple(numbers)
    return result


# -- [host] keys added with this package, for switch.scenario's validation ----------------------


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value in choices:
            return str(value)
        raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return parse


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, got {value!r}")


def _code_setting(value: Any) -> str:
    if _code(value):
        return str(value)
    raise ValueError(f'must be a 2-character response code (e.g. "25"), got {value!r}')


def _code_or_off(value: Any) -> str | None:
    if value == "off":
        return None
    if isinstance(value, str) and value.lower() in _SWITCH_WORDS:
        raise ValueError(f'must be a 2-character response code (the check is on by default, answering 14) or '
                         f'"off", got {value!r}, which reads as a switch, not a code')
    try:
        return _code_setting(value)
    except ValueError:
        raise ValueError(f'must be a 2-character response code or "off", got {value!r}') from None


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be "UTC" or an offset such as "+08:00", got {value!r}')
    parse_timezone(value)
    return value


def _balance(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
        return value
    raise ValueError(f"must be an amount in minor units, 0 to 999999999999, got {value!r}")


def _required_setting(value: Any) -> Mapping[str, tuple[int, ...]]:
    return MappingProxyType(_required(value))


HOST_SETTINGS: Mapping[str, Callable[[Any], Any]] = MappingProxyType({
    "stale_check": _boolean,
    "reversal_mismatch_code": _code_setting,
    "resend_answer": _choice(*(e.value for e in ResendAnswer)),
    "settlement_compare": _choice(*(e.value for e in SettlementCompare)),
    "settlement_host_totals": _boolean,
    "luhn_code": _code_or_off,
    "timezone": _timezone,
    "balance": _balance,
    "required_fields": _required_setting,
})
"""``[host]`` keys of this package beyond the original ones → validator (``switch.scenario`` merges them)."""
