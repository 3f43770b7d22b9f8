"""Who the terminal is and how patient it is: identity, currency, timeouts, attempt limits, keys.

One frozen value the policy reads and never changes. Every limit the terminal rules leave
configurable (domain.md, "Terminal rules") lives here with the documented default, so a scenario
or the CLI can tune the terminal without touching the policy.

The security settings come from a terminal profile file (``switch.profiles``, shared with the
switch; ``TerminalProfile.from_security_profile``): the terminal master key (TMK) that decrypts
the working keys a CUP host returns in field 62 at sign-on, or fixed (static) working keys; the
MAC algorithm; the field 62 key layout to ask for. TEST KEYS ONLY.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from switch.codec.composite import CompositeFieldError, CupHeader
from switch.codec.dialect import FAMILIES
from switch.security import DEFAULT_KEY_LAYOUT, KEY_LAYOUTS, KEY_LENGTHS, MAC_CHOICES, MAC_KEY_LENGTHS, WorkingKeys

if TYPE_CHECKING:
    from switch.profiles import TerminalSecurityProfile

__all__ = ["DEFAULT_CURRENCY", "SIGNON_DEMAND_CODES", "ProfileError", "TerminalProfile", "format_amount"]

SIGNON_DEMAND_CODES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # A0 (MAC check failed, sign on again) and 99 (PIN format error, sign on again) are the codes
        # that say "sign on again". 58 is "not permitted to terminal": a genuine decline unless a host
        # uses it as "sign on first" — then the profile adds it (``--signon-code 58``).
        "iso87": frozenset({"A0", "99"}),
        "cup": frozenset({"A0", "99"}),
    }
)
"""Response codes by which a host says "sign on again", per dialect family (the default)."""

DEFAULT_CURRENCY: Mapping[str, str] = MappingProxyType({"iso87": "840", "cup": "156"})
"""ISO 4217 numeric currency per family when the profile names none (US dollar; CUP: yuan)."""

_TIMEOUT_KEYS = frozenset({"0100", "0200", "0220", "0320", "0400", "0500", "0800"})


class ProfileError(ValueError):
    """A terminal profile value that cannot work; the message names the setting."""


def _positive_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class TerminalProfile:
    """The terminal's identity and its rule settings. Durations are seconds.

    ``terminal_id`` (field 41, ans8) and ``merchant_id`` (field 42, ans15) are stored padded with
    spaces to their fixed widths, as they travel. ``timeouts`` overrides ``response_timeout`` per
    request MTI ("0200", "0400", "0800", ...; repeats use their first copy's: 0401 → "0400").
    Attempt limits count transmissions within one operation; an item still unanswered then stays
    stored and is tried again before the next transaction.
    """

    terminal_id: str
    merchant_id: str
    family: str = "iso87"
    currency: str = ""  # "": DEFAULT_CURRENCY[family]
    currency_exponent: int = 2  # minor units per major unit as a power of ten (the CLI's "12.34")
    acquirer_id: str = ""  # field 32 in financial requests; "" = not sent
    response_timeout: float = 30.0
    timeouts: Mapping[str, float] = field(default_factory=dict)
    connect_timeout: float = 10.0  # the driver's bound on one connection attempt
    connect_attempts: int = 3
    signon_attempts: int = 3
    reversal_attempts: int = 3
    advice_attempts: int = 3
    settlement_attempts: int = 3  # 0500/0501 and each 0320 upload record
    backoff_initial: float = 2.0  # wait after the first failed sign-on / connection attempt
    backoff_factor: float = 2.0
    backoff_max: float = 60.0
    signon_demand_codes: frozenset[str] | None = None  # None: SIGNON_DEMAND_CODES[family]
    retry_codes: frozenset[str] = frozenset({"91", "96"})  # "not processed, try again" on queued items
    reversal_cleared_codes: frozenset[str] = frozenset({"00", "25"})  # 25: original never reached the host
    clock_codes: frozenset[str] = frozenset({"22"})  # declines the operator is told may come from a wrong clock
    resignon_limit: int = 2  # host demands for a new sign-on one operation tolerates
    utc_offset_minutes: int = 0  # local time (fields 12/13) = UTC + this
    cup_header: str = CupHeader.DEFAULT.format()
    tmk: bytes | None = field(default=None, repr=False)  # decrypts field 62 at sign-on; None: no keys expected
    mac: str = "none"  # none | cup-ecb | x9.9 | x9.19: MAC on every request but 08xx, checked on replies
    key_layout: int = DEFAULT_KEY_LAYOUT  # field 62 size asked for at a CUP sign-on (60.3 001/003/004)
    static_keys: WorkingKeys | None = field(default=None, repr=False)  # fixed working keys (no TMK needed)

    def __post_init__(self) -> None:
        problems: list[str] = []

        def text(name: str, width: int) -> None:
            value = getattr(self, name)
            if not (
                isinstance(value, str)
                and value.strip()
                and value.isascii()
                and value.isprintable()
                and len(value) <= width
            ):
                problems.append(f"{name} must be 1 to {width} printable ASCII characters, got {value!r}")
            else:
                object.__setattr__(self, name, value.ljust(width))

        text("terminal_id", 8)
        text("merchant_id", 15)
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        else:
            if self.currency == "":
                object.__setattr__(self, "currency", DEFAULT_CURRENCY[self.family])
            if self.signon_demand_codes is None:
                object.__setattr__(self, "signon_demand_codes", SIGNON_DEMAND_CODES[self.family])
        if not (
            isinstance(self.currency, str)
            and len(self.currency) == 3
            and self.currency.isdigit()
            and self.currency.isascii()
        ):
            problems.append(f"currency must be a 3-digit ISO 4217 numeric code, got {self.currency!r}")
        if not (isinstance(self.currency_exponent, int) and 0 <= self.currency_exponent <= 4):
            problems.append(f"currency_exponent must be 0 to 4, got {self.currency_exponent!r}")
        iid = self.acquirer_id
        if not (isinstance(iid, str) and len(iid) <= 11 and (iid == "" or (iid.isascii() and iid.isdigit()))):
            problems.append(f"acquirer_id must be up to 11 digits, got {iid!r}")
        for name in ("response_timeout", "connect_timeout", "backoff_initial", "backoff_max"):
            if not _positive_seconds(getattr(self, name)):
                problems.append(f"{name} must be seconds > 0, got {getattr(self, name)!r}")
        if not (_positive_seconds(self.backoff_factor) and self.backoff_factor >= 1):
            problems.append(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")
        if not isinstance(self.timeouts, Mapping):
            problems.append(f"timeouts must map request MTIs to seconds, got {self.timeouts!r}")
        else:
            for mti, seconds in self.timeouts.items():
                if mti not in _TIMEOUT_KEYS:
                    problems.append(
                        f"timeouts: {mti!r} is not a request MTI the terminal sends "
                        f"({', '.join(sorted(_TIMEOUT_KEYS))})"
                    )
                elif not _positive_seconds(seconds):
                    problems.append(f"timeouts[{mti!r}] must be seconds > 0, got {seconds!r}")
            object.__setattr__(self, "timeouts", MappingProxyType(dict(self.timeouts)))
        for name in (
            "connect_attempts",
            "signon_attempts",
            "reversal_attempts",
            "advice_attempts",
            "settlement_attempts",
        ):
            if not _positive_int(getattr(self, name)):
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not (
            isinstance(self.resignon_limit, int)
            and not isinstance(self.resignon_limit, bool)
            and self.resignon_limit >= 0
        ):
            problems.append(f"resignon_limit must be an integer >= 0, got {self.resignon_limit!r}")
        for name in ("signon_demand_codes", "retry_codes", "reversal_cleared_codes", "clock_codes"):
            codes = getattr(self, name)
            if codes is None:
                continue
            if isinstance(codes, str) or not all(
                isinstance(c, str) and len(c) == 2 and c.isascii() and c.isalnum() for c in codes
            ):
                problems.append(f"{name} must be a set of 2-character response codes, got {codes!r}")
            else:
                object.__setattr__(self, name, frozenset(codes))
        if not (isinstance(self.utc_offset_minutes, int) and -14 * 60 <= self.utc_offset_minutes <= 14 * 60):
            problems.append(f"utc_offset_minutes must be -840 to 840, got {self.utc_offset_minutes!r}")
        try:
            CupHeader.parse(self.cup_header)
        except CompositeFieldError as exc:
            problems.append(f"cup_header: {exc.reason}")
        problems += self._security_problems()
        if problems:
            raise ProfileError("invalid terminal profile: " + "; ".join(problems))

    def _security_problems(self) -> list[str]:
        problems = []
        if self.tmk is not None and not (isinstance(self.tmk, bytes) and len(self.tmk) in KEY_LENGTHS):
            problems.append("tmk must be 8, 16 or 24 bytes")
        if self.mac not in MAC_CHOICES:
            problems.append(f"mac must be one of {', '.join(MAC_CHOICES)}, got {self.mac!r}")
        if isinstance(self.key_layout, bool) or self.key_layout not in KEY_LAYOUTS:
            problems.append(f"key_layout must be one of {', '.join(map(str, KEY_LAYOUTS))}, got {self.key_layout!r}")
        keys = self.static_keys
        if keys is not None:
            if not isinstance(keys, WorkingKeys):
                problems.append(f"static_keys must be WorkingKeys, got {type(keys).__name__}")
            elif self.mac in MAC_KEY_LENGTHS and len(keys.mac_key) not in MAC_KEY_LENGTHS[self.mac]:
                problems.append(f"the static MAC key ({len(keys.mac_key)} bytes) does not suit mac {self.mac}")
        if self.mac != "none" and self.tmk is None and keys is None:
            problems.append(f"mac {self.mac} needs MAC keys: give a tmk (keys at sign-on) or static keys")
        return problems

    def __hash__(self) -> int:  # timeouts is a mapping; identity is what callers key profiles by
        return hash((self.terminal_id, self.merchant_id, self.family))

    @property
    def has_keys(self) -> bool:
        """Whether the terminal gets working keys (a TMK for field 62, or static ones): PINs need them."""
        return self.tmk is not None or self.static_keys is not None

    @property
    def signon_network_code(self) -> str:
        """CUP 60.3 of a sign-on: the code asking for ``key_layout`` (001 → 24, 003 → 40, 004 → 60
        bytes; 003 for the triple-length layouts, which have none) when a TMK expects keys, else 001."""
        if self.tmk is None:
            return "001"
        return KEY_LAYOUTS[self.key_layout].network_code or "003"

    @classmethod
    def from_security_profile(cls, profile: TerminalSecurityProfile, **overrides: Any) -> TerminalProfile:
        """The terminal a profile-file entry describes (ids, family, keys, MAC), with settings overridden."""
        settings: dict[str, Any] = {
            "family": profile.family, "tmk": profile.tmk, "mac": profile.mac, "key_layout": profile.key_layout,
            "static_keys": profile.static_keys, **overrides,
        }
        return cls(profile.terminal_id, profile.merchant_id, **settings)

    @property
    def cup(self) -> bool:
        return self.family == "cup"

    def timeout_for(self, mti: str) -> float:
        """The response timeout of a request MTI (a repeat's is its first copy's)."""
        return self.timeouts.get(mti[:3] + "0", self.response_timeout)

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failed attempts (1, 2, ...): exponential, capped."""
        return min(self.backoff_max, self.backoff_initial * self.backoff_factor ** max(0, failures - 1))

    @classmethod
    def for_dialect(cls, dialect: Any, terminal_id: str, merchant_id: str, **overrides: Any) -> TerminalProfile:
        """The profile for a loaded dialect's family, with settings overridden by name."""
        return cls(terminal_id, merchant_id, family=dialect.family, **overrides)


def format_amount(minor: int, exponent: int) -> str:
    """1234 → ``"12.34"`` (``exponent`` 2): how amounts are shown back to people."""
    if not exponent:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}"
