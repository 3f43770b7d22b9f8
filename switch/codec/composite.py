"""Structured views of the composite fields the host and the terminal reason about.

The codec keeps every field as the string it decoded; these classes split the few fields whose
parts drive decisions (field 90 to find an original, CUP field 60 for batch and network code, the
CUP header's sign-on demand, settlement totals) and rebuild them. Each ``parse`` keeps whatever
detail the wire had (padding style, trailing sub-fields), so ``parse(x).format() == x`` holds for
every valid ``x`` and a value the emulator relays is never silently rewritten.

Also here: PAN and track masking, shared by ``describe`` and the journal so both hide the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

from switch.codec.message import Message

__all__ = [
    "CUP_NETWORK_CODES",
    "CUP_TRANSACTION_TYPES",
    "CompositeFieldError",
    "CupField60",
    "CupHeader",
    "OriginalData",
    "SettlementTotals",
    "mask_field",
    "mask_pan",
    "mask_track",
]

_DIGITS = re.compile(r"[0-9]*")
_DECIMAL = frozenset("0123456789")
_UPPER_HEX = re.compile(r"[0-9A-F]*")
_PADDED_ID = re.compile(r" *[0-9]* *")


class CompositeFieldError(ValueError):
    """A composite field value that does not have the structure its field requires.

    ``field`` is the field number (or a name such as ``"header"`` for parts that have none).
    """

    def __init__(self, field: int | str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"field {field}: {reason}")


def _require_digits(value: object, width: int, what: str, field_id: int | str) -> str:
    """``value`` as exactly ``width`` decimal digits, or a CompositeFieldError naming the part."""
    if not isinstance(value, str) or len(value) != width or not _DIGITS.fullmatch(value):
        raise CompositeFieldError(field_id, f"{what} must be {width} digits, got {value!r}")
    return value


def _require_hex(value: object, width: int, what: str, field_id: int | str) -> str:
    if not isinstance(value, str) or len(value) != width or not _UPPER_HEX.fullmatch(value):
        raise CompositeFieldError(field_id, f"{what} must be {width} upper-case hex digits, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Field 90: original data elements


@dataclass(frozen=True, slots=True)
class OriginalData:
    """Field 90 (n42): how a reversal or advice names the request it refers to.

    Layout: original MTI (4) + original STAN (6) + original field 7 (10) + original acquiring
    institution id (11) + original forwarding institution id (11). Real systems pad the two ids
    either with zeros (right-justified, as n fields are) or with spaces (left-justified, as text
    is); each id is kept as its raw 11 characters, so either style, or a mix, formats back
    unchanged. ``pad`` only decides how a shorter id given to the constructor is filled ('0' or
    ' '), so it is not part of equality.
    """

    mti: str
    stan: str
    transmission_time: str
    acquirer_id: str
    forwarding_id: str
    pad: str = field(default="0", compare=False)

    LENGTH: ClassVar[int] = 42
    ID_WIDTH: ClassVar[int] = 11

    def __post_init__(self) -> None:
        _require_digits(self.mti, 4, "original MTI", 90)
        _require_digits(self.stan, 6, "original STAN", 90)
        _require_digits(self.transmission_time, 10, "original transmission date-time", 90)
        if self.pad not in ("0", " "):
            raise CompositeFieldError(90, f"id pad must be '0' or ' ', got {self.pad!r}")
        for name in ("acquirer_id", "forwarding_id"):
            object.__setattr__(self, name, self._padded_id(name, getattr(self, name)))

    def _padded_id(self, name: str, value: object) -> str:
        what = "original " + name.replace("_", " ")
        if not isinstance(value, str):
            raise CompositeFieldError(90, f"{what} must be a string, got {value!r}")
        if len(value) == self.ID_WIDTH:
            if not _PADDED_ID.fullmatch(value):
                raise CompositeFieldError(90, f"{what} must be digits padded with zeros or spaces, "
                                              f"got {value!r}")
            return value
        if len(value) > self.ID_WIDTH or not _DIGITS.fullmatch(value):
            raise CompositeFieldError(90, f"{what} must be up to {self.ID_WIDTH} digits, got {value!r}")
        if self.pad == "0":
            return value.rjust(self.ID_WIDTH, "0")
        return value.ljust(self.ID_WIDTH, " ")

    @classmethod
    def parse(cls, value: str) -> OriginalData:
        if not isinstance(value, str) or len(value) != cls.LENGTH:
            got = f"{len(value)} characters" if isinstance(value, str) else repr(value)
            raise CompositeFieldError(90, f"original data elements must be {cls.LENGTH} characters, "
                                          f"got {got}")
        ids = value[20:42]
        return cls(value[0:4], value[4:10], value[10:20], value[20:31], value[31:42],
                   pad=" " if " " in ids else "0")

    def format(self) -> str:
        return self.mti + self.stan + self.transmission_time + self.acquirer_id + self.forwarding_id

    @classmethod
    def of(cls, original: Message, acquirer_id: str = "", forwarding_id: str = "", *,
           pad: str = "0") -> OriginalData:
        """Field 90 for a reversal/advice of ``original``: its MTI, 11 and 7, ids from 32/33 if present.

        Explicit ids win over the original's 32/33. A missing field 7 (CUP POS requests carry none)
        becomes ten zeros; a missing STAN is an error, as nothing could then find the original.
        """
        stan = original.get(11)
        if stan is None:
            raise CompositeFieldError(90, "the original message has no field 11 (STAN) to refer to")
        return cls(original.mti, stan, original.get(7) or "0" * 10,
                   acquirer_id or original.get(32) or "", forwarding_id or original.get(33) or "",
                   pad=pad)

    @classmethod
    def format_of(cls, original: Message, acquirer_id: str = "", forwarding_id: str = "", *,
                  pad: str = "0") -> str:
        """``of(original, acquirer_id, forwarding_id, pad=pad).format()``, the same string or the same
        error, without building the value when every part is plainly valid (a terminal builds one for
        every request it may have to reverse)."""
        mti, stan, sent = original.mti, original.get(11), original.get(7) or "0" * 10
        acquirer = acquirer_id or original.get(32) or ""
        forwarding = forwarding_id or original.get(33) or ""
        if (pad in ("0", " ") and type(mti) is str and len(mti) == 4 and type(stan) is str and len(stan) == 6
                and type(sent) is str and len(sent) == 10
                and type(acquirer) is str and len(acquirer) <= cls.ID_WIDTH
                and type(forwarding) is str and len(forwarding) <= cls.ID_WIDTH
                and _plain_digits(mti + stan + sent + acquirer + forwarding)):  # all digits iff each part is
            if pad == "0":
                return mti + stan + sent + acquirer.rjust(cls.ID_WIDTH, "0") + forwarding.rjust(cls.ID_WIDTH, "0")
            return mti + stan + sent + acquirer.ljust(cls.ID_WIDTH, " ") + forwarding.ljust(cls.ID_WIDTH, " ")
        return cls.of(original, acquirer_id, forwarding_id, pad=pad).format()

    @property
    def key(self) -> tuple[str, str, str]:
        """(MTI, STAN, transmission time): what a host looks the original up by."""
        return (self.mti, self.stan, self.transmission_time)

    @property
    def acquirer(self) -> str:
        """The acquiring institution id without its padding ('' when absent)."""
        return _unpad_id(self.acquirer_id)

    @property
    def forwarding(self) -> str:
        """The forwarding institution id without its padding ('' when absent)."""
        return _unpad_id(self.forwarding_id)

    def refers_to_same(self, other: OriginalData) -> bool:
        """Same original whatever padding style each side used for the ids."""
        return (self.key == other.key and self.acquirer == other.acquirer
                and self.forwarding == other.forwarding)


def _plain_digits(value: str) -> bool:
    """``_DIGITS.fullmatch(value)`` (ASCII digits or nothing) without the regular expression."""
    return not value or (value.isascii() and value.isdigit())


def _unpad_id(raw: str) -> str:
    return raw.strip(" ").lstrip("0")


# --------------------------------------------------------------------------------------------
# CUP field 60 and the CUP header

CUP_TRANSACTION_TYPES: Mapping[str, str] = {
    "00": "network management",
    "01": "balance inquiry",
    "10": "pre-authorization",
    "11": "pre-authorization void",
    "20": "pre-authorization completion",
    "21": "pre-authorization completion void",
    "22": "sale",
    "23": "void",
    "25": "refund",
    "30": "offline sale",
}
"""60.1 values the emulator knows by name (for ``describe``); others pass through unnamed."""

CUP_NETWORK_CODES: Mapping[str, str] = {
    "000": "none (financial message)",
    "001": "sign-on, single-length keys",
    "002": "sign-off",
    "003": "sign-on, double-length keys",
    "004": "sign-on, double-length keys with track key",
    "201": "batch upload / settlement",
    "202": "batch upload end",
    "207": "batch upload end (with IC records)",
    "301": "echo test",
}
"""60.3 network management codes (domain.md)."""


@dataclass(frozen=True, slots=True)
class CupField60:
    """CUP field 60: 60.1 transaction type n2 + 60.2 batch number n6 + 60.3 network code n3 + rest.

    60.3 may be absent (8 digits in all); whatever follows it (60.4 read capability, 60.5 IC
    condition, ...) is kept verbatim in ``rest`` so relaying a field never drops it.
    """

    txn_type: str
    batch: str
    network_code: str = ""
    rest: str = ""

    def __post_init__(self) -> None:
        _require_digits(self.txn_type, 2, "60.1 transaction type", 60)
        _require_digits(self.batch, 6, "60.2 batch number", 60)
        if self.network_code != "":
            _require_digits(self.network_code, 3, "60.3 network management code", 60)
        if not isinstance(self.rest, str) or not _DIGITS.fullmatch(self.rest):
            raise CompositeFieldError(60, f"60.4 onwards must be digits, got {self.rest!r}")
        if self.rest and not self.network_code:
            raise CompositeFieldError(60, "60.4 onwards cannot be present without 60.3")

    @classmethod
    def parse(cls, value: str) -> CupField60:
        if not isinstance(value, str) or not _DIGITS.fullmatch(value):
            raise CompositeFieldError(60, f"must be digits, got {value!r}")
        if len(value) < 8:
            raise CompositeFieldError(60, f"needs at least 60.1 (2) + 60.2 (6) = 8 digits, got {len(value)}")
        if 8 < len(value) < 11:
            raise CompositeFieldError(60, f"60.3 network management code must be 3 digits, got {value[8:]!r}")
        return cls(value[0:2], value[2:8], value[8:11], value[11:])

    def format(self) -> str:
        return self.txn_type + self.batch + self.network_code + self.rest


@dataclass(frozen=True, slots=True)
class CupHeader:
    """The 6-byte CUP message header, as the 12 hex digits the codec decodes it to.

    app type (2, "60") + version (2, e.g. "31" or "22") + terminal status (1, 0 normal, 1 test)
    + processing requirement (1: what the host asks of the terminal in a reply, see
    ``PROCESSING_REQUIREMENTS``) + reserved/application version (6).
    """

    app_type: str
    version: str
    terminal_status: str
    processing_requirement: str
    reserved: str

    DEFAULT: ClassVar[CupHeader]
    NO_REQUIREMENT: ClassVar[str] = "0"
    DOWNLOAD_PARAMETERS: ClassVar[str] = "1"
    SIGN_ON_AGAIN: ClassVar[str] = "3"
    PROCESSING_REQUIREMENTS: ClassVar[Mapping[str, str]] = {
        "0": "none",
        "1": "download terminal parameters",
        "2": "upload terminal status",
        "3": "sign on again",
        "4": "download IC card public keys",
        "5": "download IC card parameters",
    }

    def __post_init__(self) -> None:
        _require_hex(self.app_type, 2, "application type", "header")
        _require_hex(self.version, 2, "version", "header")
        _require_hex(self.terminal_status, 1, "terminal status", "header")
        _require_hex(self.processing_requirement, 1, "processing requirement", "header")
        _require_hex(self.reserved, 6, "reserved part", "header")

    @classmethod
    def parse(cls, value: str) -> CupHeader:
        _require_hex(value, 12, "CUP header", "header")
        return cls(value[0:2], value[2:4], value[4], value[5], value[6:12])

    def format(self) -> str:
        return (self.app_type + self.version + self.terminal_status + self.processing_requirement
                + self.reserved)

    @property
    def needs_sign_on(self) -> bool:
        """A reply whose header tells the terminal to sign on again before anything else."""
        return self.processing_requirement == self.SIGN_ON_AGAIN

    def with_requirement(self, requirement: str) -> CupHeader:
        """The same header demanding ``requirement`` (how the host asks for a re-sign-on)."""
        return CupHeader(self.app_type, self.version, self.terminal_status, requirement, self.reserved)


CupHeader.DEFAULT = CupHeader("60", "31", "0", "0", "000000")


# --------------------------------------------------------------------------------------------
# Settlement totals

# (attribute, ISO field, digits) — counts n10, amounts n16.
_ISO_TOTALS = (
    ("credit_count", 74, 10),
    ("credit_reversal_count", 75, 10),
    ("debit_count", 76, 10),
    ("debit_reversal_count", 77, 10),
    ("credit_amount", 86, 16),
    ("credit_reversal_amount", 87, 16),
    ("debit_amount", 88, 16),
    ("debit_reversal_amount", 89, 16),
)
_NET_FIELD = 97
_CUP_FLAGS = ("0", "1", "2", "3")
_CUP_SECTION = 31  # amount n12 + count n3 + amount n12 + count n3 + flag n1


def _fixed(value: int, width: int, field_id: int | str, what: str) -> str:
    text = str(value)
    if len(text) > width:
        raise CompositeFieldError(field_id, f"{what} {value} does not fit {width} digits")
    return text.rjust(width, "0")


@dataclass(frozen=True, slots=True)
class SettlementTotals:
    """What a terminal and a host compare at settlement; amounts in minor units.

    Debits are purchases (money from the cardholder), credits are refunds. Counts and amounts
    are gross: a reversed purchase is in both ``debit_*`` and ``debit_reversal_*``, as ISO 8583
    reports them in 76/88 and 77/89. CUP field 48 has no reversal columns and reports net
    figures; ``netted()`` folds reversals in, and ``to_cup48`` sends that.
    """

    debit_count: int
    debit_amount: int
    credit_count: int
    credit_amount: int
    debit_reversal_count: int = 0
    debit_reversal_amount: int = 0
    credit_reversal_count: int = 0
    credit_reversal_amount: int = 0

    def __post_init__(self) -> None:
        for name, number, _ in _ISO_TOTALS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CompositeFieldError(number, f"{name.replace('_', ' ')} must be an integer >= 0, "
                                                  f"got {value!r}")

    @property
    def net_amount(self) -> int:
        """Credits minus debits, each net of its reversals: negative on a normal day of sales,
        positive when refunds outweigh them."""
        return ((self.credit_amount - self.credit_reversal_amount)
                - (self.debit_amount - self.debit_reversal_amount))

    def netted(self) -> SettlementTotals:
        """The same totals with reversals subtracted from what they reverse (reversal columns 0)."""
        pairs = (("debit_count", "debit_reversal_count"), ("debit_amount", "debit_reversal_amount"),
                 ("credit_count", "credit_reversal_count"), ("credit_amount", "credit_reversal_amount"))
        net: dict[str, int] = {}
        for gross, reversed_ in pairs:
            value = getattr(self, gross) - getattr(self, reversed_)
            if value < 0:
                raise CompositeFieldError("totals", f"{reversed_.replace('_', ' ')} exceeds "
                                                    f"{gross.replace('_', ' ')}")
            net[gross] = value
        return SettlementTotals(**net)

    def to_iso_fields(self) -> dict[int, str]:
        """Fields 74-77 (counts n10), 86-89 (amounts n16) and 97 (net, x+n16).

        Field 97 is 'C' when credits (net of reversals) are at least the debits, 'D' when
        debits exceed them — the sign of ``net_amount``; zero is 'C'.
        """
        fields = {number: _fixed(getattr(self, name), width, number, name.replace("_", " "))
                  for name, number, width in _ISO_TOTALS}
        net = self.net_amount
        sign = "C" if net >= 0 else "D"
        fields[_NET_FIELD] = sign + _fixed(abs(net), 16, _NET_FIELD, "net settlement amount")
        return dict(sorted(fields.items()))

    @classmethod
    def from_iso_fields(cls, fields: Mapping[int, str]) -> SettlementTotals:
        """Totals from a settlement message's fields; an absent field counts as 0.

        Field 97, when present, must agree with the others: a message that contradicts itself
        is a format error, not a totals mismatch.
        """
        values: dict[str, int] = {}
        for name, number, width in _ISO_TOTALS:
            raw = fields.get(number)
            what = name.replace("_", " ")
            values[name] = 0 if raw is None else int(_require_digits(raw, width, what, number))
        totals = cls(**values)
        net_raw = fields.get(_NET_FIELD)
        if net_raw is not None:
            if not isinstance(net_raw, str) or len(net_raw) != 17 or net_raw[0] not in "CD":
                raise CompositeFieldError(_NET_FIELD, "net settlement amount must be 'C' or 'D' and 16 "
                                                      f"digits, got {net_raw!r}")
            magnitude = int(_require_digits(net_raw[1:], 16, "net settlement amount", _NET_FIELD))
            stated = magnitude if net_raw[0] == "C" else -magnitude
            if stated != totals.net_amount:
                raise CompositeFieldError(_NET_FIELD, f"net settlement amount {net_raw} does not match "
                                                      f"fields 86-89 (net {totals.net_amount})")
        return totals

    def to_cup48(self, flag: str = "0", *, foreign: SettlementTotals | None = None,
                 foreign_flag: str = "0") -> str:
        """CUP field 48 (62 digits): domestic then foreign-card section, each
        debit amount n12 + debit count n3 + credit amount n12 + credit count n3 + flag n1.

        Figures are net of reversals. ``flag`` is '0' in requests; a host's reply sets '1'
        balanced, '2' not balanced, '3' error. The foreign section is zeros unless given.
        """
        return _cup_section(self, flag) + _cup_section(foreign or SettlementTotals(0, 0, 0, 0), foreign_flag)

    @classmethod
    def from_cup48(cls, value: str, *, foreign: bool = False) -> tuple[SettlementTotals, str]:
        """(totals, flag) of the domestic section of CUP field 48, or of the foreign one.

        Accepts the full 62 digits, or only the 31-digit domestic section some terminals send.
        """
        if not isinstance(value, str) or not _DIGITS.fullmatch(value):
            raise CompositeFieldError(48, f"settlement totals must be digits, got {value!r}")
        if len(value) not in (_CUP_SECTION, 2 * _CUP_SECTION):
            raise CompositeFieldError(48, f"settlement totals must be {2 * _CUP_SECTION} digits (domestic + "
                                          f"foreign) or {_CUP_SECTION} (domestic), got {len(value)}")
        if foreign and len(value) == _CUP_SECTION:
            raise CompositeFieldError(48, "no foreign-card section: the value has only the domestic one")
        section = value[_CUP_SECTION:] if foreign else value[:_CUP_SECTION]
        flag = _cup_flag(section[30])
        totals = cls(debit_amount=int(section[0:12]), debit_count=int(section[12:15]),
                     credit_amount=int(section[15:27]), credit_count=int(section[27:30]))
        return totals, flag


def _cup_section(totals: SettlementTotals, flag: str) -> str:
    _cup_flag(flag)
    net = totals.netted()
    return (_fixed(net.debit_amount, 12, 48, "debit amount") + _fixed(net.debit_count, 3, 48, "debit count")
            + _fixed(net.credit_amount, 12, 48, "credit amount")
            + _fixed(net.credit_count, 3, 48, "credit count") + flag)


def _cup_flag(flag: str) -> str:
    if flag not in _CUP_FLAGS:
        raise CompositeFieldError(48, f"settlement flag must be one of {', '.join(_CUP_FLAGS)}, got {flag!r}")
    return flag


# --------------------------------------------------------------------------------------------
# Masking


_DOUBLED = {str(d): (2 * d if d < 5 else 2 * d - 9) for d in range(10)}


@lru_cache(maxsize=4096)
def luhn_valid(pan: str) -> bool:
    """The card number's check digit (ISO/IEC 7812) is right. Digits only; cached, as cards repeat.

    The one Luhn check of the project: the host (14), the terminal (refused locally) and the
    journal (which digit runs in free text are PANs to mask) must agree on what a card number is.
    """
    return (sum(map(int, pan[-1::-2])) + sum(map(_DOUBLED.__getitem__, pan[-2::-2]))) % 10 == 0


def mask_pan(pan: str) -> str:
    """First 6 and last 4 characters visible, the rest '*' (PCI DSS's most that may be shown).

    Values too short to be a PAN (10 characters or fewer) keep at most their last 4, and never
    more than half, so masking still hides something. The length is preserved.
    """
    n = len(pan)
    if n > 10:
        return pan[:6] + "*" * (n - 10) + pan[-4:]
    visible = min(4, n // 2)
    return "*" * (n - visible) + pan[n - visible:]


def mask_track(track: str) -> str:
    """Mask track data: the PAN as ``mask_pan`` does, everything after the separator as '*'.

    The PAN is the first run of digits (after any sentinel or format code such as ';' or 'B');
    the separator is the character that ends it: '=' (track 2/3 as text), 'D' (the same as a
    BCD nibble) or '^' (track 1). Expiry, service code and discretionary data are all hidden;
    the length and the separator stay, so the shape is still recognisable in a journal.
    """
    start = 0
    while start < len(track) and track[start] not in _DECIMAL:
        start += 1
    end = start
    while end < len(track) and track[end] in _DECIMAL:
        end += 1
    if end >= len(track):
        return track[:start] + mask_pan(track[start:])
    return track[:start] + mask_pan(track[start:end]) + track[end] + "*" * (len(track) - end - 1)


_MASK_PAN_FIELDS = frozenset((2, 34))
_MASK_TRACK_FIELDS = frozenset((35, 36, 45))
_MASK_ALL_FIELDS = frozenset((52, 55))  # PIN block; ICC data carries PAN and track-2 equivalent


def mask_field(number: int, value: str) -> str:
    """A field value as it may be shown or journalled: PANs, tracks, PIN and ICC data masked."""
    if number in _MASK_PAN_FIELDS:
        return mask_pan(value)
    if number in _MASK_TRACK_FIELDS:
        return mask_track(value)
    if number in _MASK_ALL_FIELDS:
        return "*" * len(value)
    return value
