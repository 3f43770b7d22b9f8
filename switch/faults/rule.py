"""Fault rules as values: the constants, the key errors, delays, actions and ``FaultRule`` itself.

Every constructor validates, so rules built in code get the same errors as parsed ones."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from switch.codec.message import Message
from switch.rules import Match
from switch.scenario import (
    KeyPath,
    format_key,
)

ACTION_KEYS = (
    "delay_request",
    "delay_response",
    "drop_request",
    "drop_response",
    "close",
    "reset",
    "garbage",
    "truncate",
    "wrong_length",
    "duplicate",
    "wrong_echo",
    "corrupt_mac",
    "wrong_check_value",
    "signon_again",
    "slice",
    "bandwidth",
    "respond",
    "hold",
)
WHEN_KEYS = ("connection", "nth", "every", "first", "after", "before")
"""Keys of a fault rule's ``when`` on top of the response-rule criteria (``switch.rules.Match``)."""
RULE_KEYS = ("id", "name", "enabled", "when", "probability", *ACTION_KEYS)

TIMINGS = ("before", "after")
WRONG_ECHO_FIELDS: Mapping[str, int] = MappingProxyType({"stan": 11, "amount": 4, "terminal": 41})
MAINTENANCE_MODES = ("off", "refuse", "respond")
MAINTENANCE_RULE = "maintenance"  # rule id reported for maintenance decisions; reserved
DELAY_KINDS = ("fixed", "uniform", "normal", "lognormal")

GARBAGE_MAX = 9999  # the largest length every framing (ascii4, bcd2 included) can announce
TRUNCATE_KEEP_MAX = 48  # bytes of the body a truncated response keeps: 0..47, shorter than any real reply
LENGTH_DELTA_MAX = 16  # a wrong length header is off by 1..16 bytes, either way
MAC_BYTES = 8
CHECK_VALUE_BYTES = 4  # a CUP check value in field 62 (switch.security.CHECK_VALUE_LENGTH)

# Bounds on every number a rule carries, the same from a file and from the admin API: a value past
# them is a typo or an attack (a 1e308 s delay overflows when shown, a sigma of 1000 overflows when
# sampled), never a test anyone means to run.
MAX_DELAY = 3600.0  # seconds: any delay parameter, cap or slice pause (far beyond any terminal timeout)
MAX_WINDOW = 30 * 86400.0  # seconds: when.after / when.before, counted from the switch's start
MAX_SIGMA = 10.0  # lognormal spread of the log; e^(10·Z) is already absurd, but finite
MAX_COUNT = 10**9  # when.nth / every / first, and connection numbers
MAX_BANDWIDTH = 10**9  # bytes per second
MAX_SLICE_BYTES = 65536  # a piece of a sliced response (no frame is longer)
MAX_NAME = 200  # characters of a rule name
MAX_CONNECTIONS = 1000  # entries of when.connection
MAX_SEED = 2**64  # |seed| below this: it is turned into text for every rule's generators

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESPONSE_CODE = re.compile(r"[0-9A-Za-z]{2}")
_GENERATED_ID = re.compile(r"f([0-9]+)")
_TERMINAL_CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_AMOUNT_LIMIT = 10**12  # field 4 is n12


class FaultRuleError(ValueError):
    """A fault rule that cannot be used. ``key`` names what is wrong inside the rule table
    (``"when.nth"``, ``"delay_response.uniform[2]"``; ``""`` for the table as a whole), ``reason`` why.

    ``path`` holds the same key as a tuple, so a scenario loader can find its line.
    """

    def __init__(self, key: str | KeyPath, reason: str):
        if isinstance(key, tuple):
            self.path: KeyPath = key
            self.key = format_key(key)
        else:
            self.path = tuple(part for part in key.split(".") if part)
            self.key = key
        self.reason = reason
        super().__init__(f"{self.key}: {reason}" if self.key else reason)

    def within(self, prefix: KeyPath) -> FaultRuleError:
        """The same error seen from an enclosing table (``("delay_response",)`` + ``("uniform", 1)``)."""
        return FaultRuleError((*prefix, *self.path), self.reason)


# ---------------------------------------------------------------------------------------------------
# Small validators (code-built objects get the same errors as parsed ones)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: object) -> str:
    """``repr`` that cannot blow up or flood an error message (a 5,000-digit int cannot be printed)."""
    try:
        text = repr(value)
    except ValueError:
        return "<an integer too large to show>"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _seconds(value: object, path: KeyPath, limit: float = MAX_DELAY) -> float:
    if not _is_number(value) or not 0 <= value <= limit:  # type: ignore[operator]
        raise FaultRuleError(path, f"must be a duration >= 0 and <= {limit:g} s, got {_shown(value)}")
    return float(value)  # type: ignore[arg-type]


def _count(value: object, path: KeyPath) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_COUNT:  # type: ignore[operator]
        raise FaultRuleError(path, f"must be an integer >= 1 and <= {MAX_COUNT}, got {_shown(value)}")
    return value  # type: ignore[return-value]


def _flag(value: object, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        raise FaultRuleError(path, f"must be true or false, got {_shown(value)}")
    return value


def format_duration(seconds: float) -> str | float:
    """``0.2`` → ``"200ms"``, ``35.0`` → ``"35s"``; other values stay plain seconds. Reads back with
    ``parse_duration``, so ``to_dict`` output is valid input."""
    milliseconds = round(seconds * 1000)
    if abs(seconds * 1000 - milliseconds) > 1e-6:
        return seconds
    if milliseconds % 1000 == 0:
        return f"{milliseconds // 1000}s"
    return f"{milliseconds}ms"


# ---------------------------------------------------------------------------------------------------
# Delays


@dataclass(frozen=True)
class Delay:
    """How long to wait, as a distribution sampled once per message; ``cap`` bounds every sample.

    ``params`` by ``kind``: fixed ``(seconds,)``, uniform ``(low, high)``, normal ``(mean, stddev)``,
    lognormal ``(median, sigma)``. Lognormal is ``median * exp(sigma * Z)``: sigma 0.5 gives the long
    right tail of real network latency, so give it a cap. Normal samples below 0 count as 0.
    """

    kind: str
    params: tuple[float, ...]
    cap: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in DELAY_KINDS:
            raise FaultRuleError((), f"kind must be one of {', '.join(DELAY_KINDS)}, got {_shown(self.kind)}")
        params = tuple(self.params) if isinstance(self.params, Iterable) else (self.params,)
        names = {"fixed": (), "uniform": (0, 1), "normal": ("mean", "stddev"), "lognormal": ("median", "sigma")}
        expected = names[self.kind] or (None,)
        if len(params) != len(expected):
            raise FaultRuleError((self.kind,), f"needs {len(expected)} values, got {_shown(params)}")
        paths = [(self.kind,) if name is None else (self.kind, name) for name in expected]
        if self.kind == "lognormal":
            median = _seconds(params[0], paths[0])
            if median <= 0:
                raise FaultRuleError(paths[0], f"must be a duration > 0, got {_shown(params[0])}")
            sigma = params[1]
            if not _is_number(sigma) or not 0 <= sigma <= MAX_SIGMA:
                raise FaultRuleError(paths[1], f"must be a number >= 0 and <= {MAX_SIGMA:g} (spread of the log), "
                                               f"got {_shown(sigma)}")
            params = (median, float(sigma))
        else:
            params = tuple(_seconds(value, path) for value, path in zip(params, paths, strict=True))
        if self.kind == "uniform" and params[1] < params[0]:
            raise FaultRuleError(paths[1], f"the upper bound must be >= the lower ({params[0]:g}s)")
        object.__setattr__(self, "params", params)
        if self.cap is not None:
            object.__setattr__(self, "cap", _seconds(self.cap, ("cap",)))

    @classmethod
    def fixed(cls, seconds: float) -> Delay:
        return cls("fixed", (seconds,))

    @classmethod
    def uniform(cls, low: float, high: float, cap: float | None = None) -> Delay:
        return cls("uniform", (low, high), cap)

    @classmethod
    def normal(cls, mean: float, stddev: float, cap: float | None = None) -> Delay:
        return cls("normal", (mean, stddev), cap)

    @classmethod
    def lognormal(cls, median: float, sigma: float, cap: float | None = None) -> Delay:
        return cls("lognormal", (median, sigma), cap)

    @property
    def is_random(self) -> bool:
        return self.kind != "fixed"

    def sample(self, rng: random.Random) -> float:
        """Seconds, >= 0 and <= ``cap``."""
        first, *rest = self.params
        if self.kind == "fixed":
            seconds = first
        elif self.kind == "uniform":
            seconds = rng.uniform(first, rest[0])
        elif self.kind == "normal":
            seconds = rng.normalvariate(first, rest[0])
        else:
            seconds = rng.lognormvariate(math.log(first), rest[0])
        seconds = min(max(0.0, seconds), MAX_DELAY)  # a wild lognormal draw stays a bounded wait
        return seconds if self.cap is None else min(seconds, self.cap)

    def to_toml(self) -> str | float | dict[str, Any]:
        """The value as written in a rule: ``"200ms"`` or ``{ uniform = [...], cap = "2s" }``."""
        if self.kind == "fixed" and self.cap is None:
            return format_duration(self.params[0])
        if self.kind == "fixed":
            value: Any = format_duration(self.params[0])
        elif self.kind == "uniform":
            value = [format_duration(seconds) for seconds in self.params]
        elif self.kind == "normal":
            value = {"mean": format_duration(self.params[0]), "stddev": format_duration(self.params[1])}
        else:
            value = {"median": format_duration(self.params[0]), "sigma": self.params[1]}
        table: dict[str, Any] = {self.kind: value}
        if self.cap is not None:
            table["cap"] = format_duration(self.cap)
        return table


# ---------------------------------------------------------------------------------------------------
# Hold: park a request unanswered until the admin API (or a timeout) releases it


class HoldOutcome(StrEnum):
    """How a held request is released: processed by the host, declined unprocessed, or never answered."""

    APPROVE = "approve"  # the host decides as usual (it may still decline), committed before the reply
    DECLINE = "decline"  # ``Host.unprocessed_reply(request, code)``: nothing posted
    DROP = "drop"  # nothing sent, nothing posted


HOLD_KEYS = ("timeout", "then", "code")
DEFAULT_HOLD_CODE = "05"


@dataclass(frozen=True)
class Hold:
    """A ``hold`` action: the request is parked with an id until released through the admin API.

    ``timeout`` None: held until released (or its connection closes, or the switch stops);
    otherwise released as ``then`` (with ``code`` for a decline) that many seconds after it was held.
    """

    timeout: float | None = None
    then: HoldOutcome = HoldOutcome.DROP
    code: str = DEFAULT_HOLD_CODE

    def __post_init__(self) -> None:
        if self.timeout is not None:
            object.__setattr__(self, "timeout", _seconds(self.timeout, ("hold", "timeout")))
        try:
            object.__setattr__(self, "then", HoldOutcome(self.then))
        except ValueError:
            raise FaultRuleError(("hold", "then"), "must be one of "
                                 f"{', '.join(o.value for o in HoldOutcome)}, got {_shown(self.then)}") from None
        if not isinstance(self.code, str) or not _RESPONSE_CODE.fullmatch(self.code):
            raise FaultRuleError(("hold", "code"),
                                 f'must be a 2-character response code (e.g. "05"), got {_shown(self.code)}')
        if self.timeout is None and (self.then is not HoldOutcome.DROP or self.code != DEFAULT_HOLD_CODE):
            raise FaultRuleError(("hold", "then"), "needs a timeout: it says how a request is released when "
                                                   'the timeout expires (e.g. { timeout = "30s", then = "decline" })')
        if self.then is not HoldOutcome.DECLINE and self.code != DEFAULT_HOLD_CODE:
            raise FaultRuleError(("hold", "code"), 'applies to then = "decline" only')

    def to_toml(self) -> bool | dict[str, Any]:
        """``true``, or ``{ timeout = "30s", then = "decline", code = "05" }``; reads back with the parser."""
        if self.timeout is None:
            return True
        table: dict[str, Any] = {"timeout": format_duration(self.timeout), "then": self.then.value}
        if self.then is HoldOutcome.DECLINE:
            table["code"] = self.code
        return table


# ---------------------------------------------------------------------------------------------------
# Actions

_SHAPES_RESPONSE = (
    "wrong_echo",
    "corrupt_mac",
    "wrong_check_value",
    "signon_again",
    "garbage",
    "truncate",
    "wrong_length",
    "duplicate",
    "slice",
    "bandwidth",
)


@dataclass(frozen=True)
class Actions:
    """What a rule does when it fires. At least one must be set; see ``FaultDecision`` for the order
    in which they happen and ``ACTION_KEYS`` for the names used in files and JSON."""

    delay_request: Delay | None = None  # before processing
    delay_response: Delay | None = None  # after processing, before replying (beyond a timeout: a late reply)
    drop_request: bool = False  # never processed, never answered
    drop_response: bool = False  # processed and committed, answer not sent ("pending confirmation")
    close: str | None = None  # "before" | "after" processing: close the connection (FIN), no answer
    reset: str | None = None  # "before" | "after": TCP RST (SO_LINGER 0), no answer
    garbage: int | None = None  # send N random bytes, framed, instead of the response
    truncate: bool = False  # send the response cut short (the length header promises more), then close
    wrong_length: bool = False  # send the response with a length header off by a nonzero amount
    duplicate: bool = False  # send the response twice
    wrong_echo: tuple[str, ...] = ()  # of "stan", "amount", "terminal": the response echoes another value
    corrupt_mac: bool = False  # flip bits of the response's MAC (field 64/128; one is added if absent)
    wrong_check_value: bool = False  # flip bits of the last check value in field 62 (CUP sign-on keys)
    signon_again: bool = False  # CUP header processing requirement 3: the terminal must sign on again
    slice: tuple[int, float] | None = None  # (chunk bytes, pause seconds): write the response piecemeal
    bandwidth: int | None = None  # bytes per second for the response write
    respond: str | None = None  # answer with this response code without processing (host untouched)
    hold: Hold | None = None  # park unanswered until the admin API (or the hold's timeout) releases it

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("delay_request", "delay_response"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Delay):
                raise FaultRuleError((name,), f"must be a Delay, got {_shown(value)}")
        for name in ("drop_request", "drop_response", "truncate", "wrong_length", "duplicate", "corrupt_mac",
                     "wrong_check_value", "signon_again"):
            _flag(getattr(self, name), (name,))
        for name in ("close", "reset"):
            value = getattr(self, name)
            if value is not None and value not in TIMINGS:
                hint = ' (write "before" or "after" processing)' if isinstance(value, bool) else ""
                raise FaultRuleError((name,), f'must be "before" or "after", got {_shown(value)}{hint}')
        if self.garbage is not None and (not _is_int(self.garbage) or not 1 <= self.garbage <= GARBAGE_MAX):
            raise FaultRuleError(("garbage",),
                                 f"must be a number of bytes 1..{GARBAGE_MAX}, got {_shown(self.garbage)}")
        set_(self, "wrong_echo", self._wrong_echo(self.wrong_echo))
        if self.slice is not None:
            set_(self, "slice", self._slice(self.slice))
        if self.bandwidth is not None and (not _is_int(self.bandwidth) or not 1 <= self.bandwidth <= MAX_BANDWIDTH):
            raise FaultRuleError(("bandwidth",),
                                 f"must be bytes per second >= 1 and <= {MAX_BANDWIDTH}, got {_shown(self.bandwidth)}")
        if self.respond is not None and (
            not isinstance(self.respond, str) or not _RESPONSE_CODE.fullmatch(self.respond)
        ):
            raise FaultRuleError(("respond",),
                                 f'must be a 2-character response code (e.g. "91"), got {_shown(self.respond)}')
        if self.hold is not None and not isinstance(self.hold, Hold):
            raise FaultRuleError(("hold",), f"must be a Hold, got {_shown(self.hold)}")
        self._check_combination()

    @staticmethod
    def _wrong_echo(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, Iterable) or isinstance(value, Mapping | bytes):
            raise FaultRuleError(("wrong_echo",),
                                 f"must be a list of {', '.join(WRONG_ECHO_FIELDS)}, got {_shown(value)}")
        names = tuple(value)
        for index, name in enumerate(names):
            if name not in WRONG_ECHO_FIELDS:
                allowed = ", ".join(WRONG_ECHO_FIELDS)
                raise FaultRuleError(("wrong_echo", index), f"must be one of {allowed}, got {_shown(name)}")
            if name in names[:index]:
                raise FaultRuleError(("wrong_echo", index), f"{_shown(name)} is given twice")
        return names

    @staticmethod
    def _slice(value: Any) -> tuple[int, float]:
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise FaultRuleError(("slice",), f"must be (chunk bytes, pause seconds), got {_shown(value)}")
        chunk, pause = value
        if not _is_int(chunk) or not 1 <= chunk <= MAX_SLICE_BYTES:
            raise FaultRuleError(("slice", "bytes"), f"must be an integer >= 1 and <= {MAX_SLICE_BYTES}, "
                                                     f"got {_shown(chunk)}")
        return chunk, _seconds(pause, ("slice", "pause"))

    def names(self) -> tuple[str, ...]:
        """The actions this rule sets, in ``ACTION_KEYS`` order."""
        return tuple(name for name in ACTION_KEYS if getattr(self, name) not in (None, False, ()))

    def _ending(self, timing: str) -> list[str]:
        flag = "drop_request" if timing == "before" else "drop_response"
        names = [flag] if getattr(self, flag) else []
        return names + [name for name in ("close", "reset") if getattr(self, name) == timing]

    def _check_combination(self) -> None:
        """Refuse actions that could never take effect together, rather than silently ignore one."""
        before, after = self._ending("before"), self._ending("after")
        endings = before + after
        if len(endings) > 1:
            raise FaultRuleError(
                (endings[1],),
                f"cannot be combined with {endings[0]}: each ends the exchange; choose one (or use two rules)",
            )
        names = self.names()
        if self.hold is not None and before:
            raise FaultRuleError(("hold",), f"cannot be combined with {before[0]}: each ends the exchange "
                                            "before processing; choose one (or use two rules)")
        if self.hold is not None:
            moot = [name for name in names if name not in ("delay_request", "hold")]
            if moot:
                raise FaultRuleError((moot[0],), "has no effect: a held request is released through the admin API "
                                                 "as a plain reply (only delay_request combines with hold)")
        if before:
            moot = [name for name in names if name not in ("delay_request", before[0])]
            if moot:
                raise FaultRuleError((moot[0],), f"has no effect: {before[0]} ends the exchange before processing")
        if after:
            moot = [name for name in names if name in _SHAPES_RESPONSE]
            if moot:
                raise FaultRuleError((moot[0],), f"has no effect: {after[0]} means no response is sent")
        if self.garbage is not None:
            for name in ("wrong_echo", "corrupt_mac", "wrong_check_value", "signon_again"):
                if name in names:
                    raise FaultRuleError((name,), "has no effect: garbage replaces the response")
        if self.truncate and self.duplicate:
            raise FaultRuleError(("duplicate",), "has no effect: a truncated response is followed by a close")

    def to_dict(self) -> dict[str, Any]:
        """The set actions as rule keys, e.g. ``{"drop_response": True, "delay_request": "200ms"}``."""
        table: dict[str, Any] = {}
        for name in self.names():
            value = getattr(self, name)
            if isinstance(value, Delay | Hold):
                value = value.to_toml()
            elif name == "wrong_echo":
                value = list(value)
            elif name == "slice":
                value = {"bytes": value[0], "pause": format_duration(value[1])}
            table[name] = value
        return table


# ---------------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class FaultRule:
    """One fault rule: when it applies (``match`` and the ``when`` extras), how often, what it does.

    ``match`` None applies to every frame, undecodable ones included; a ``Match`` needs a decoded
    message. ``connection`` numbers count accepted connections from 1. ``nth`` / ``every`` /
    ``first`` count matches (``nth`` excludes the other two; ``every`` and ``first`` together mean
    every k-th among the first n). ``after`` <= seconds since start < ``before``. ``probability``
    is tried per matching message, after the counts.
    """

    id: str
    name: str = ""  # "" → the id
    match: Match | None = None
    connection: tuple[int, ...] = ()
    nth: int | None = None
    every: int | None = None
    first: int | None = None
    after: float | None = None
    before: float | None = None
    probability: float = 1.0
    actions: Actions = field(default_factory=Actions)
    enabled: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise FaultRuleError(
                ("id",),
                "must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, "
                f"got {_shown(self.id)}",
            )
        if self.id == MAINTENANCE_RULE:
            raise FaultRuleError(("id",), f"{_shown(MAINTENANCE_RULE)} is reserved for maintenance mode")
        if self.name == "":
            set_(self, "name", self.id)
        elif not isinstance(self.name, str) or not self.name.strip() or len(self.name) > MAX_NAME:
            raise FaultRuleError(("name",), f"must be a non-blank string of at most {MAX_NAME} characters, "
                                            f"got {_shown(self.name)}")
        if self.match is not None and not isinstance(self.match, Match):
            raise FaultRuleError(("when",), f"must be a Match or None, got {_shown(self.match)}")
        if self.match == Match():
            set_(self, "match", None)  # `when = {}` and no `when` mean the same: every frame
        set_(self, "connection", self._connections(self.connection))
        for name in ("nth", "every", "first"):
            _count(getattr(self, name), ("when", name))
        if self.nth is not None and (self.every is not None or self.first is not None):
            other = "every" if self.every is not None else "first"
            raise FaultRuleError(("when", other), "cannot be combined with nth (nth picks a single message)")
        for name in ("after", "before"):
            if getattr(self, name) is not None:
                set_(self, name, _seconds(getattr(self, name), ("when", name), MAX_WINDOW))
        if self.after is not None and self.before is not None and self.before <= self.after:
            raise FaultRuleError(("when", "before"), f"must be later than after ({self.after:g}s)")
        if not _is_number(self.probability) or not 0 <= self.probability <= 1:
            raise FaultRuleError(("probability",), f"must be a number from 0 to 1, got {_shown(self.probability)}")
        set_(self, "probability", float(self.probability))
        if not isinstance(self.actions, Actions):
            raise FaultRuleError((), f"actions must be an Actions, got {_shown(self.actions)}")
        if not self.actions.names():
            raise FaultRuleError((), f"has no action; give at least one of: {', '.join(ACTION_KEYS)}")
        _flag(self.enabled, ("enabled",))

    @staticmethod
    def _connections(value: Any) -> tuple[int, ...]:
        if _is_int(value):
            value = (value,)
        if not isinstance(value, tuple | list):
            raise FaultRuleError(
                ("when", "connection"), f"must be a list of connection numbers (from 1), got {_shown(value)}"
            )
        if len(value) > MAX_CONNECTIONS:
            raise FaultRuleError(("when", "connection"), f"must list at most {MAX_CONNECTIONS} connections, "
                                                         f"got {len(value)}")
        for index, number in enumerate(value):
            if not _is_int(number) or not 1 <= number <= MAX_COUNT:
                raise FaultRuleError(
                    ("when", "connection", index),
                    f"must be a connection number >= 1 (1 = the first accepted), got {_shown(number)}",
                )
        return tuple(value)

    def applies_to(self, message: Message | None, connection: int, elapsed: float) -> bool:
        """Whether a frame is a match (before counts and probability)."""
        if self.connection and connection not in self.connection:
            return False
        if self.after is not None and elapsed < self.after:
            return False
        if self.before is not None and elapsed >= self.before:
            return False
        if self.match is None:
            return True
        return message is not None and self.match.matches(message)

    def counted_in(self, count: int) -> bool:
        """Whether the ``count``-th match (from 1) passes ``nth`` / ``every`` / ``first``."""
        if self.nth is not None:
            return count == self.nth
        if self.first is not None and count > self.first:
            return False
        return self.every is None or count % self.every == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able and in the shape of the ``[[fault]]`` table; ``rule_from_table`` reads it back."""
        when = _match_table(self.match)
        if self.connection:
            when["connection"] = list(self.connection)
        for name in ("nth", "every", "first"):
            if getattr(self, name) is not None:
                when[name] = getattr(self, name)
        for name in ("after", "before"):
            if getattr(self, name) is not None:
                when[name] = format_duration(getattr(self, name))
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "when": when,
            "probability": self.probability,
            **self.actions.to_dict(),
        }


def _match_table(match: Match | None) -> dict[str, Any]:
    if match is None:
        return {}
    table: dict[str, Any] = {}
    for name in ("mti", "processing_code", "pan_prefix", "terminal"):
        if getattr(match, name):
            table[name] = list(getattr(match, name))
    for name in ("amount_min", "amount_max"):
        if getattr(match, name) is not None:
            table[name] = getattr(match, name)
    if match.fields:
        table["fields"] = {str(number): value for number, value in match.fields.items()}
    return table


