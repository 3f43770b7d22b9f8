"""Declarative response rules: a predicate over a request → the response code (and extra fields) to give.

Pure data and pure functions, so the host can consult them on every request without I/O and the
fault engine can reuse ``Match`` for its own predicates. Rules come from scenario files
(``switch.scenario``); the constructors validate everything themselves and raise ``RuleError``
naming the offending attribute, so a rule built in code is as safe as one loaded from a file.

``Match.matches`` never raises, whatever the message holds: a request with a missing or
malformed field simply does not match a predicate on that field, and the host's own format checks
(not a rule) decide what a malformed request deserves.

Rules are consulted on every request, so the table is built for speed once and evaluated cheaply:
what the criteria look at (MTI, field 3, the PAN, the amount, the terminal) is read from a request
once into ``RequestFacts``, each ``Match`` is compiled into the few predicates it actually has, and
``ResponseRules`` only tries the rules whose MTI list admits the request's MTI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import re2

from switch.codec.message import Message

REGEX_PREFIX = "re:"
"""A field value written ``re:<regex>`` matches when the regex matches the *whole* field value."""

FIELD_MIN, FIELD_MAX = 2, 128
BITMAP_FIELDS = frozenset({1, 65})  # computed by the codec, never matched or set by a rule
RESPONSE_CODE_FIELD = 39
_RESPONSE_CODE = re.compile(r"[0-9A-Za-z]{2}")
_TRACK2_SEPARATORS = ("=", "D", "d")  # '=' in ASCII track 2, 'D' when it travels as BCD/hex
REGEX_MAX_LENGTH = 1000  # characters of a ``re:`` pattern; RE2 also bounds the compiled program's memory
FIELD_VALUE_MAX = 9999  # characters of a field value in a rule: the longest an LLLL field can carry
LIST_MAX = 1000  # entries of a criterion list (MTIs, prefixes, terminals): more is an attack, not a test


class LinearPattern(Protocol):
    """What a compiled ``re:`` pattern offers: a whole-value match (an RE2 regexp)."""

    def fullmatch(self, text: str) -> object | None: ...


def compile_linear(pattern: str) -> LinearPattern:
    """Compile ``pattern`` with RE2, whose matching time is linear in the input whatever the pattern.

    Rules are tried on the event loop for every request, so a backtracking engine would let one
    rule such as ``(a+)+$`` stall every connection for seconds on a 40-character field. RE2 refuses
    what it cannot match in linear time (backreferences, lookarounds): ``ValueError`` with the reason.
    """
    if len(pattern) > REGEX_MAX_LENGTH:
        raise ValueError(f"longer than {REGEX_MAX_LENGTH} characters")
    options = re2.Options()
    options.log_errors = False  # the reason goes into our error, not to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"{reason} (patterns are matched in linear time: no backreferences or lookarounds)"
                         ) from None


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
    if len(result) > LIST_MAX:
        raise RuleError(attribute, f"must have at most {LIST_MAX} entries, got {len(result)}")
    for value in result:
        if not isinstance(value, str) or len(value) > FIELD_VALUE_MAX or not pattern.fullmatch(value):
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
        if len(value) > FIELD_VALUE_MAX:
            raise RuleError(f"{attribute}.{number}", f"must be at most {FIELD_VALUE_MAX} characters, got {len(value)}")
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


class RequestFacts:
    """What rule criteria test, read from one request once: a table of rules then costs one read of
    each, not one per rule (the default test-card table alone has eleven PAN rules).

    Every value is normalised so a predicate needs no further checks: ``processing_code`` is field 3
    (None unless a string), ``pan`` as ``pan_of`` finds it, ``amount`` field 4 as an int (None
    unless plain ASCII digits), ``terminal`` field 41 without trailing spaces (None unless a
    string). ``fields`` is the request's own dict, for ``fields`` criteria.
    """

    __slots__ = ("amount", "fields", "mti", "pan", "processing_code", "terminal")

    def __init__(self, message: Message) -> None:
        fields = message.fields
        self.mti: object = message.mti
        self.fields: Mapping[int, object] = fields
        code = fields.get(3)
        self.processing_code: str | None = code if isinstance(code, str) else None
        self.pan: str | None = pan_of(message)
        self.amount: int | None = _ascii_int(fields.get(4))
        terminal = fields.get(41)
        self.terminal: str | None = terminal.rstrip(" ") if isinstance(terminal, str) else None


_Predicate = Callable[[RequestFacts], bool]
"""One criterion of a ``Match``, compiled: True when the request's facts satisfy it."""


def _processing_code_in(prefixes: tuple[str, ...]) -> _Predicate:
    def test(facts: RequestFacts) -> bool:
        code = facts.processing_code
        return code is not None and code.startswith(prefixes)
    return test


def _pan_in(prefixes: tuple[str, ...]) -> _Predicate:
    def test(facts: RequestFacts) -> bool:
        pan = facts.pan
        return pan is not None and pan.startswith(prefixes)
    return test


def _amount_within(low: int | None, high: int | None) -> _Predicate:
    def test(facts: RequestFacts) -> bool:
        amount = facts.amount
        return (amount is not None and (low is None or amount >= low)
                and (high is None or amount <= high))
    return test


def _terminal_in(terminals: tuple[str, ...]) -> _Predicate:
    def test(facts: RequestFacts) -> bool:
        terminal = facts.terminal
        return terminal is not None and terminal in terminals
    return test


def _field_is(number: int, expected: str) -> _Predicate:
    def test(facts: RequestFacts) -> bool:
        actual = facts.fields.get(number)
        return isinstance(actual, str) and actual == expected
    return test


def _field_fullmatches(number: int, pattern: LinearPattern) -> _Predicate:
    def test(facts: RequestFacts) -> bool:
        actual = facts.fields.get(number)
        return isinstance(actual, str) and pattern.fullmatch(actual) is not None
    return test


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
    _predicates: tuple[_Predicate, ...] = field(init=False, repr=False, compare=False, hash=False)
    """Every criterion but ``mti``, compiled (``ResponseRules`` sorts rules by MTI itself)."""

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
        # The MTI is not among them: ResponseRules only tries a rule on the MTIs it names.
        predicates: list[_Predicate] = []
        if self.processing_code:
            predicates.append(_processing_code_in(self.processing_code))
        if self.pan_prefix:
            predicates.append(_pan_in(self.pan_prefix))
        if self.amount_min is not None or self.amount_max is not None:
            predicates.append(_amount_within(self.amount_min, self.amount_max))
        if self.terminal:
            predicates.append(_terminal_in(self.terminal))
        for number, value in values.items():
            if value.startswith(REGEX_PREFIX):
                try:
                    pattern = compile_linear(value.removeprefix(REGEX_PREFIX))
                except ValueError as exc:
                    raise RuleError(f"fields.{number}", f"invalid regular expression: {exc}") from None
                predicates.append(_field_fullmatches(number, pattern))
            else:
                predicates.append(_field_is(number, value))
        set_(self, "fields", MappingProxyType(values))
        set_(self, "_predicates", tuple(predicates))

    def matches(self, message: Message) -> bool:
        """True when every criterion holds. Never raises: absent or malformed fields just fail to match."""
        try:
            return self._matches(message)
        except Exception:  # a predicate must not take the host down, whatever a client sent
            return False

    def _matches(self, message: Message) -> bool:
        if self.mti and message.mti not in self.mti:  # before reading the facts: the cheapest refusal
            return False
        facts = RequestFacts(message)
        return all(predicate(facts) for predicate in self._predicates)

    def holds(self, facts: RequestFacts) -> bool:
        """``matches`` for a request whose facts were already read: for callers that test many
        predicates against one request (read its facts once, then ask each)."""
        if self.mti and facts.mti not in self.mti:
            return False
        return all(predicate(facts) for predicate in self._predicates)


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


_Candidate = tuple["ResponseRule", tuple[_Predicate, ...]]
"""A rule with its compiled predicates (all must hold)."""

_Segment = tuple[_Predicate | None, tuple[_Candidate, ...]]
"""Consecutive candidates behind a screen: a predicate every one of them needs (None: no screen), so
when the screen fails, none of them can match and all are skipped with one test."""


def _segments(rules: Iterable[ResponseRule]) -> tuple[_Segment, ...]:
    """The rules, in order, as segments: runs of two or more rules that test only PAN prefixes share
    one screen (does the PAN start with any of their prefixes?), every other rule stands alone.

    Test-card tables are exactly such runs, and most cards are in none of them: one ``startswith``
    over all the prefixes then replaces a test per card rule.
    """
    segments: list[_Segment] = []
    run: list[ResponseRule] = []

    def close_run() -> None:
        if len(run) >= 2:
            prefixes = tuple(prefix for rule in run for prefix in rule.match.pan_prefix)
            segments.append((_pan_in(prefixes), tuple((rule, rule.match._predicates) for rule in run)))
        else:
            segments.extend((None, ((rule, rule.match._predicates),)) for rule in run)
        run.clear()

    for rule in rules:
        if rule.match.pan_prefix and len(rule.match._predicates) == 1:  # PAN prefixes and nothing else
            run.append(rule)
        else:
            close_run()
            segments.append((None, ((rule, rule.match._predicates),)))
    close_run()
    return tuple(segments)


class ResponseRules:
    """An ordered rule table: the first rule that matches a request decides, as in a firewall.

    A request is only tested against the rules its MTI can match: for each MTI some rule names, the
    rules naming it *and* the rules naming no MTI, merged in table order; for any other MTI, the
    rules naming none. So the order, and therefore which rule is first, is exactly the table's.
    """

    __slots__ = ("_any_mti", "_by_mti", "_rules")

    def __init__(self, rules: Sequence[ResponseRule] = ()) -> None:
        rules = tuple(rules)
        for index, rule in enumerate(rules):
            if not isinstance(rule, ResponseRule):
                raise TypeError(f"rule {index} is not a ResponseRule: {rule!r}")
        self._rules = rules
        self._any_mti = _segments(rule for rule in rules if not rule.match.mti)
        named = {mti for rule in rules for mti in rule.match.mti}
        self._by_mti: dict[str, tuple[_Segment, ...]] = {
            mti: _segments(rule for rule in rules if not rule.match.mti or mti in rule.match.mti)
            for mti in named
        }

    @property
    def rules(self) -> tuple[ResponseRule, ...]:
        return self._rules

    def first_match(self, message: Message) -> ResponseRule | None:
        """The first rule, in table order, whose predicate holds; None when no rule applies.

        Never raises: something that is not a readable message matches no rule.
        """
        try:
            mti = message.mti
            segments = self._by_mti.get(mti, self._any_mti) if isinstance(mti, str) else self._any_mti
            if not segments:
                return None
            facts = RequestFacts(message)
        except Exception:  # not a Message at all; a rule must not take the host down
            return None
        for screen, candidates in segments:
            if screen is not None and not screen(facts):
                continue
            for rule, predicates in candidates:
                for predicate in predicates:
                    if not predicate(facts):
                        break
                else:  # every predicate held
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
