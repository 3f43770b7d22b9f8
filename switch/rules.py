"""Declarative response rules: a predicate over a request → the response code (and extra fields) to give.

Pure data and pure functions, so the host can consult them on every request without I/O and the
fault engine can reuse ``Match`` for its own predicates. Rules come from scenario files
(``switch.scenario``); the constructors validate everything themselves and raise ``RuleError``
naming the offending attribute, so a rule built in code is as safe as one loaded from a file.

``Match.matches`` never raises, whatever the message holds: a request with a missing or
malformed field simply does not match a predicate on that field, and the host's own format checks
(not a rule) decide what a malformed request deserves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from switch.codec.message import Message

REGEX_PREFIX = "re:"
"""A field value written ``re:<regex>`` matches when the regex matches the *whole* field value."""

FIELD_MIN, FIELD_MAX = 2, 128
BITMAP_FIELDS = frozenset({1, 65})  # computed by the codec, never matched or set by a rule
RESPONSE_CODE_FIELD = 39
_RESPONSE_CODE = re.compile(r"[0-9A-Za-z]{2}")
_TRACK2_SEPARATORS = ("=", "D", "d")  # '=' in ASCII track 2, 'D' when it travels as BCD/hex


class RuleError(ValueError):
    """A rule or predicate that cannot be built; ``attribute`` names what is wrong (``"fields.44"``)."""

    def __init__(self, attribute: str, reason: str):
        self.attribute = attribute
        self.reason = reason
        super().__init__(f"{attribute}: {reason}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(attribute: str, values: Any, pattern: re.Pattern[str], expected: str) -> tuple[str, ...]:
    """Normalise one string or an iterable of strings to a tuple, each full-matching ``pattern``."""
    if isinstance(values, str):
        values = (values,)
    if not isinstance(values, Iterable) or isinstance(values, Mapping | bytes):
        raise RuleError(attribute, f"must be a list of {expected}, got {values!r}")
    result = tuple(values)
    for value in result:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise RuleError(attribute, f"each entry must be {expected}, got {value!r}")
    return result


def _field_number(attribute: str, number: Any) -> int:
    if not _is_int(number):
        raise RuleError(attribute, f"field numbers are integers {FIELD_MIN}..{FIELD_MAX}, got {number!r}")
    if not FIELD_MIN <= number <= FIELD_MAX:
        raise RuleError(f"{attribute}.{number}", f"field numbers are {FIELD_MIN}..{FIELD_MAX}, got {number}")
    if number in BITMAP_FIELDS:
        raise RuleError(f"{attribute}.{number}", "is a bitmap, which the codec computes")
    return number


def _field_values(attribute: str, values: Any) -> dict[int, str]:
    if not isinstance(values, Mapping):
        raise RuleError(attribute, f"must be a table of field number = string, got {values!r}")
    result: dict[int, str] = {}
    for number, value in values.items():
        number = _field_number(attribute, number)
        if not isinstance(value, str):
            raise RuleError(f"{attribute}.{number}", f"must be a string, got {value!r}")
        result[number] = value
    return dict(sorted(result.items()))


_MTI = re.compile(r"[0-9]{4}")
_DIGITS_6 = re.compile(r"[0-9]{1,6}")
_DIGITS_19 = re.compile(r"[0-9]{1,19}")
_NON_EMPTY = re.compile(r".*\S.*", re.DOTALL)


def _ascii_int(value: object) -> int | None:
    """An amount field as an int, or None if it is not plain ASCII digits (``int`` accepts more)."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def pan_of(message: Message) -> str | None:
    """The card number: field 2, else the part of track 2 (field 35) before its separator.

    Swiped and chip transactions often carry the PAN only inside track 2, and a test card must
    behave the same however it was read.
    """
    fields = message.fields
    pan = fields.get(2)
    if isinstance(pan, str) and pan:
        return pan
    track2 = fields.get(35)
    if not isinstance(track2, str) or not track2:
        return None
    track2 = track2.lstrip(";")
    cut = min((i for i in (track2.find(sep) for sep in _TRACK2_SEPARATORS) if i >= 0), default=len(track2))
    return track2[:cut] or None


@dataclass(frozen=True)
class Match:
    """A predicate over a request. Every given criterion must hold; an empty criterion matches anything.

    ``mti`` exact MTIs; ``processing_code`` prefixes of field 3 ("00" purchase, "20" refund);
    ``pan_prefix`` prefixes of the PAN (field 2, or track 2 when field 2 is absent);
    ``amount_min``/``amount_max`` inclusive bounds on field 4 in minor units; ``terminal`` field 41
    values compared without trailing spaces; ``fields`` exact values by field number, where a value
    ``re:<regex>`` must match the whole field value. Binary and BCD fields compare as the codec
    decodes them: upper-case hex.
    """

    mti: tuple[str, ...] = ()
    processing_code: tuple[str, ...] = ()
    pan_prefix: tuple[str, ...] = ()
    amount_min: int | None = None
    amount_max: int | None = None
    terminal: tuple[str, ...] = ()
    fields: Mapping[int, str] = field(default_factory=dict, hash=False)
    _field_tests: tuple[tuple[int, str | re.Pattern[str]], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mti", _strings("mti", self.mti, _MTI, "4 digits"))
        set_(
            self,
            "processing_code",
            _strings("processing_code", self.processing_code, _DIGITS_6, "1 to 6 digits"),
        )
        set_(self, "pan_prefix", _strings("pan_prefix", self.pan_prefix, _DIGITS_19, "1 to 19 digits"))
        terminals = _strings("terminal", self.terminal, _NON_EMPTY, "a non-blank terminal id")
        set_(self, "terminal", tuple(t.rstrip(" ") for t in terminals))
        for name in ("amount_min", "amount_max"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise RuleError(name, f"must be an integer >= 0 (minor units), got {value!r}")
        if self.amount_min is not None and self.amount_max is not None and self.amount_min > self.amount_max:
            raise RuleError("amount_max", f"must be >= amount_min ({self.amount_min}), got {self.amount_max}")
        values = _field_values("fields", self.fields)
        tests: list[tuple[int, str | re.Pattern[str]]] = []
        for number, value in values.items():
            if value.startswith(REGEX_PREFIX):
                try:
                    tests.append((number, re.compile(value.removeprefix(REGEX_PREFIX))))
                except re.error as exc:
                    raise RuleError(f"fields.{number}", f"invalid regular expression: {exc}") from None
            else:
                tests.append((number, value))
        set_(self, "fields", MappingProxyType(values))
        set_(self, "_field_tests", tuple(tests))

    def matches(self, message: Message) -> bool:
        """True when every criterion holds. Never raises: absent or malformed fields just fail to match."""
        try:
            return self._matches(message)
        except Exception:  # a predicate must not take the host down, whatever a client sent
            return False

    def _matches(self, message: Message) -> bool:
        fields = message.fields
        if self.mti and message.mti not in self.mti:
            return False
        if self.processing_code:
            code = fields.get(3)
            if not isinstance(code, str) or not code.startswith(self.processing_code):
                return False
        if self.pan_prefix:
            pan = pan_of(message)
            if pan is None or not pan.startswith(self.pan_prefix):
                return False
        if self.amount_min is not None or self.amount_max is not None:
            amount = _ascii_int(fields.get(4))
            if amount is None:
                return False
            if self.amount_min is not None and amount < self.amount_min:
                return False
            if self.amount_max is not None and amount > self.amount_max:
                return False
        if self.terminal:
            terminal = fields.get(41)
            if not isinstance(terminal, str) or terminal.rstrip(" ") not in self.terminal:
                return False
        for number, expected in self._field_tests:
            actual = fields.get(number)
            if not isinstance(actual, str):
                return False
            if isinstance(expected, str):
                if actual != expected:
                    return False
            elif expected.fullmatch(actual) is None:
                return False
        return True


@dataclass(frozen=True)
class ResponseRule:
    """When ``match`` holds, answer with ``response_code`` and set ``fields`` in the response.

    What a code means for postings (``"00"`` approves normally, with the host's RRN and auth code;
    anything else declines) is the host's business; a rule only chooses the answer.
    """

    name: str
    match: Match
    response_code: str
    fields: Mapping[int, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise RuleError("name", f"must be a non-blank string, got {self.name!r}")
        if not isinstance(self.match, Match):
            raise RuleError("match", f"must be a Match, got {self.match!r}")
        if not isinstance(self.response_code, str) or not _RESPONSE_CODE.fullmatch(self.response_code):
            raise RuleError(
                "response_code", f"must be 2 letters or digits (e.g. 51, A0), got {self.response_code!r}"
            )
        values = _field_values("fields", self.fields)
        if RESPONSE_CODE_FIELD in values:
            raise RuleError(
                f"fields.{RESPONSE_CODE_FIELD}", "the response code is set by the rule's code, not here"
            )
        object.__setattr__(self, "fields", MappingProxyType(values))

    def matches(self, message: Message) -> bool:
        return self.match.matches(message)


class ResponseRules:
    """An ordered rule table: the first rule that matches a request decides, as in a firewall."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[ResponseRule] = ()) -> None:
        rules = tuple(rules)
        for index, rule in enumerate(rules):
            if not isinstance(rule, ResponseRule):
                raise TypeError(f"rule {index} is not a ResponseRule: {rule!r}")
        self._rules = rules

    @property
    def rules(self) -> tuple[ResponseRule, ...]:
        return self._rules

    def first_match(self, message: Message) -> ResponseRule | None:
        """The first rule, in table order, whose predicate holds; None when no rule applies."""
        for rule in self._rules:
            if rule.match.matches(message):
                return rule
        return None

    def __add__(self, other: ResponseRules) -> ResponseRules:
        if not isinstance(other, ResponseRules):
            return NotImplemented
        return ResponseRules(self._rules + other._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[ResponseRule]:
        return iter(self._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResponseRules) and self._rules == other._rules

    def __hash__(self) -> int:
        return hash(self._rules)

    def __repr__(self) -> str:
        return f"ResponseRules({[rule.name for rule in self._rules]!r})"
