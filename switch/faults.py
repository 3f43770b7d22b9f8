"""The fault engine: rules that make the host misbehave on purpose, precisely and repeatably.

Pure, like the host: ``FaultEngine.decide`` turns one received frame (a decoded request, or None
for a frame that would not decode), its connection number and the time since the switch started
into a ``FaultDecision`` of concrete values (seconds to wait, bytes to send, flags) that the Trio
server carries out. Nothing here sleeps, reads a clock or touches a socket, so every rule is
unit-tested without I/O, and the executor needs no random numbers of its own.

A rule is *match + how often + actions*, written as a ``[[fault]]`` table in a scenario file or as
the same object in JSON through the admin API::

    [[fault]]
    id = "lost-0210"                          # optional; default f1, f2, ... by position
    name = "approve, commit, lose the 0210"   # optional; default: the id
    when = { mti = ["0200"], every = 3 }      # optional; no `when` = every frame
    probability = 1.0                         # optional; per matching message
    drop_response = true                      # one or more actions

**How often.** Every message that satisfies a rule's ``when`` (the response-rule criteria plus
``connection`` and the ``after``/``before`` window) is a *match* and is counted. ``nth``, ``every``
and ``first`` look at that count (the 3rd match only / the 3rd, 6th, 9th... / matches 1..n), then
``probability`` is tried on the *message*: each match fires independently with that chance. (Toxiproxy's
"toxicity" is decided once per *connection*, so every message on a connection is affected or none
is; here a 0.1 means one message in ten, whatever the connections.)

**Determinism.** Each rule has two generators of its own, seeded from the engine's seed and the
rule's id: ``random.Random(f"{seed}/{rule_id}")`` draws one number per match, for the probability,
and ``random.Random(f"{seed}/{rule_id}/values")`` the action values (delay samples, garbage bytes,
wrong echo values, MAC mask) each time the rule fires. So the same seed and the same sequence of
messages give the same decisions; a rule's decisions do not shift when other rules are added or
when traffic only they match comes and goes; and editing a rule's actions does not change which
messages it fires on. Messages that race on different connections are matched in the order
``decide`` is called, which is all a concurrent server can promise. Without a seed one is drawn from
``os.urandom`` and shown as ``engine.seed`` for replay.

**Several rules on one message** all fire and combine: delays add, flags OR, and for a value only
one can have (garbage, truncate, wrong length, MAC mask, check value mask, slice, bandwidth, respond,
each wrong-echo field) the first rule in plan order wins. Actions made pointless by another are then
removed, in the order the executor runs them (see ``FaultDecision``), so the decision lists only what
happens.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from switch.codec.message import Message
from switch.rules import Match
from switch.scenario import (
    MATCH_KEYS,
    KeyPath,
    Scenario,
    ScenarioError,
    ScenarioSource,
    format_key,
    parse_duration,
    parse_match,
)

__all__ = [
    "ACTION_KEYS",
    "EMPTY_DECISION",
    "MAINTENANCE_MODES",
    "RULE_KEYS",
    "WHEN_KEYS",
    "WRONG_ECHO_FIELDS",
    "Actions",
    "Delay",
    "FaultDecision",
    "FaultEngine",
    "FaultRule",
    "FaultRuleError",
    "parse_fault_rules",
    "rule_from_table",
]

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


def _seconds(value: object, path: KeyPath) -> float:
    if not _is_number(value) or value < 0:  # type: ignore[operator]
        raise FaultRuleError(path, f"must be a duration >= 0 (seconds), got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _count(value: object, path: KeyPath) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise FaultRuleError(path, f"must be an integer >= 1, got {value!r}")
    return value  # type: ignore[return-value]


def _flag(value: object, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        raise FaultRuleError(path, f"must be true or false, got {value!r}")
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
            raise FaultRuleError((), f"kind must be one of {', '.join(DELAY_KINDS)}, got {self.kind!r}")
        params = tuple(self.params) if isinstance(self.params, Iterable) else (self.params,)
        names = {"fixed": (), "uniform": (0, 1), "normal": ("mean", "stddev"), "lognormal": ("median", "sigma")}
        expected = names[self.kind] or (None,)
        if len(params) != len(expected):
            raise FaultRuleError((self.kind,), f"needs {len(expected)} values, got {params!r}")
        paths = [(self.kind,) if name is None else (self.kind, name) for name in expected]
        if self.kind == "lognormal":
            median = _seconds(params[0], paths[0])
            if median <= 0:
                raise FaultRuleError(paths[0], f"must be a duration > 0, got {params[0]!r}")
            sigma = params[1]
            if not _is_number(sigma) or sigma < 0:
                raise FaultRuleError(paths[1], f"must be a number >= 0 (spread of the log), got {sigma!r}")
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
        seconds = max(0.0, seconds)
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

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("delay_request", "delay_response"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Delay):
                raise FaultRuleError((name,), f"must be a Delay, got {value!r}")
        for name in ("drop_request", "drop_response", "truncate", "wrong_length", "duplicate", "corrupt_mac",
                     "wrong_check_value", "signon_again"):
            _flag(getattr(self, name), (name,))
        for name in ("close", "reset"):
            value = getattr(self, name)
            if value is not None and value not in TIMINGS:
                hint = ' (write "before" or "after" processing)' if isinstance(value, bool) else ""
                raise FaultRuleError((name,), f'must be "before" or "after", got {value!r}{hint}')
        if self.garbage is not None and (not _is_int(self.garbage) or not 1 <= self.garbage <= GARBAGE_MAX):
            raise FaultRuleError(("garbage",), f"must be a number of bytes 1..{GARBAGE_MAX}, got {self.garbage!r}")
        set_(self, "wrong_echo", self._wrong_echo(self.wrong_echo))
        if self.slice is not None:
            set_(self, "slice", self._slice(self.slice))
        if self.bandwidth is not None and (not _is_int(self.bandwidth) or self.bandwidth < 1):
            raise FaultRuleError(("bandwidth",), f"must be bytes per second >= 1, got {self.bandwidth!r}")
        if self.respond is not None and (
            not isinstance(self.respond, str) or not _RESPONSE_CODE.fullmatch(self.respond)
        ):
            raise FaultRuleError(("respond",), f'must be a 2-character response code (e.g. "91"), got {self.respond!r}')
        self._check_combination()

    @staticmethod
    def _wrong_echo(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, Iterable) or isinstance(value, Mapping | bytes):
            raise FaultRuleError(("wrong_echo",), f"must be a list of {', '.join(WRONG_ECHO_FIELDS)}, got {value!r}")
        names = tuple(value)
        for index, name in enumerate(names):
            if name not in WRONG_ECHO_FIELDS:
                allowed = ", ".join(WRONG_ECHO_FIELDS)
                raise FaultRuleError(("wrong_echo", index), f"must be one of {allowed}, got {name!r}")
            if name in names[:index]:
                raise FaultRuleError(("wrong_echo", index), f"{name!r} is given twice")
        return names

    @staticmethod
    def _slice(value: Any) -> tuple[int, float]:
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise FaultRuleError(("slice",), f"must be (chunk bytes, pause seconds), got {value!r}")
        chunk, pause = value
        if not _is_int(chunk) or chunk < 1:
            raise FaultRuleError(("slice", "bytes"), f"must be an integer >= 1, got {chunk!r}")
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
            if isinstance(value, Delay):
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
                f"must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, got {self.id!r}",
            )
        if self.id == MAINTENANCE_RULE:
            raise FaultRuleError(("id",), f"{MAINTENANCE_RULE!r} is reserved for maintenance mode")
        if self.name == "":
            set_(self, "name", self.id)
        elif not isinstance(self.name, str) or not self.name.strip():
            raise FaultRuleError(("name",), f"must be a non-blank string, got {self.name!r}")
        if self.match is not None and not isinstance(self.match, Match):
            raise FaultRuleError(("when",), f"must be a Match or None, got {self.match!r}")
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
                set_(self, name, _seconds(getattr(self, name), ("when", name)))
        if self.after is not None and self.before is not None and self.before <= self.after:
            raise FaultRuleError(("when", "before"), f"must be later than after ({self.after:g}s)")
        if not _is_number(self.probability) or not 0 <= self.probability <= 1:
            raise FaultRuleError(("probability",), f"must be a number from 0 to 1, got {self.probability!r}")
        set_(self, "probability", float(self.probability))
        if not isinstance(self.actions, Actions):
            raise FaultRuleError((), f"actions must be an Actions, got {self.actions!r}")
        if not self.actions.names():
            raise FaultRuleError((), f"has no action; give at least one of: {', '.join(ACTION_KEYS)}")
        _flag(self.enabled, ("enabled",))

    @staticmethod
    def _connections(value: Any) -> tuple[int, ...]:
        if _is_int(value):
            value = (value,)
        if not isinstance(value, tuple | list):
            raise FaultRuleError(
                ("when", "connection"), f"must be a list of connection numbers (from 1), got {value!r}"
            )
        for index, number in enumerate(value):
            if not _is_int(number) or number < 1:
                raise FaultRuleError(
                    ("when", "connection", index),
                    f"must be a connection number >= 1 (1 = the first accepted), got {number!r}",
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


# ---------------------------------------------------------------------------------------------------
# Parsing rule tables (TOML or JSON)


def _check_keys(table: Mapping[str, Any], key: KeyPath, allowed: Sequence[str], src: ScenarioSource) -> None:
    unknown = [name for name in table if name not in allowed]
    if unknown:
        first = min(unknown, key=lambda name: src.line_of((*key, name)) or 0)
        raise src.error((*key, first), f"unknown key; allowed: {', '.join(allowed)}")


def _duration(value: Any, key: KeyPath, src: ScenarioSource) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise src.error(key, str(exc)) from None


def _parse_delay(value: Any, key: KeyPath, src: ScenarioSource) -> Delay:
    """``"200ms"`` / ``0.2`` / ``{ fixed | uniform | normal | lognormal = ..., cap = "2s" }``."""
    if not isinstance(value, Mapping):
        return Delay.fixed(_duration(value, key, src))
    _check_keys(value, key, (*DELAY_KINDS, "cap"), src)
    kinds = [name for name in DELAY_KINDS if name in value]
    if len(kinds) != 1:
        raise src.error(
            key,
            f"give exactly one of {', '.join(DELAY_KINDS)} (and optionally cap), "
            f'e.g. {{ uniform = ["100ms", "300ms"] }}; got {dict(value)!r}',
        )
    kind = kinds[0]
    raw, at = value[kind], (*key, kind)
    if kind == "fixed":
        params: tuple[float, ...] = (_duration(raw, at, src),)
    elif kind == "uniform":
        if not isinstance(raw, list) or len(raw) != 2:
            raise src.error(at, f'must be [low, high], e.g. ["100ms", "300ms"], got {raw!r}')
        params = (_duration(raw[0], (*at, 0), src), _duration(raw[1], (*at, 1), src))
    else:
        names = ("mean", "stddev") if kind == "normal" else ("median", "sigma")
        example = '{ mean = "200ms", stddev = "20ms" }' if kind == "normal" else '{ median = "150ms", sigma = 0.5 }'
        if not isinstance(raw, Mapping):
            raise src.error(at, f"must be a table such as {example}, got {raw!r}")
        _check_keys(raw, at, names, src)
        for name in names:
            if name not in raw:
                raise src.error((*at, name), f"missing (write {kind} = {example})")
        params = (
            _duration(raw[names[0]], (*at, names[0]), src),
            _duration(raw[names[1]], (*at, names[1]), src) if kind == "normal" else raw["sigma"],
        )
    cap = _duration(value["cap"], (*key, "cap"), src) if "cap" in value else None
    try:
        return Delay(kind, params, cap)
    except FaultRuleError as exc:
        raise src.error((*key, *exc.path), exc.reason) from None


def _parse_actions(table: Mapping[str, Any], key: KeyPath, src: ScenarioSource) -> Actions:
    arguments: dict[str, Any] = {}
    for name in ACTION_KEYS:
        if name not in table:
            continue
        value = table[name]
        if name in ("delay_request", "delay_response"):
            value = _parse_delay(value, (*key, name), src)
        elif name == "slice":
            at = (*key, name)
            if not isinstance(value, Mapping):
                raise src.error(at, f'must be a table {{ bytes = 8, pause = "20ms" }}, got {value!r}')
            _check_keys(value, at, ("bytes", "pause"), src)
            for part in ("bytes", "pause"):
                if part not in value:
                    raise src.error((*at, part), 'missing (write slice = { bytes = 8, pause = "20ms" })')
            value = (value["bytes"], _duration(value["pause"], (*at, "pause"), src))
        arguments[name] = value
    try:
        return Actions(**arguments)
    except FaultRuleError as exc:
        raise src.error((*key, *exc.path), exc.reason) from None


def _parse_rule(table: Any, key: KeyPath, src: ScenarioSource, default_id: str) -> FaultRule:
    """A ``FaultRule`` from one table; errors are ``ScenarioError`` at ``key`` + the inner key."""
    if not isinstance(table, Mapping):
        keys = ", ".join(RULE_KEYS[:5])
        raise src.error(key, f"must be a table (a JSON object) of fault rule keys ({keys}, actions), got {table!r}")
    misplaced = [name for name in table if name in (*MATCH_KEYS, *WHEN_KEYS) and name != "fields"]
    if misplaced:
        name = misplaced[0]
        raise src.error((*key, name), f"belongs in `when`, e.g. when = {{ {name} = ... }}")
    _check_keys(table, key, RULE_KEYS, src)
    rule_id = table.get("id", default_id)
    if "name" in table and (not isinstance(table["name"], str) or not table["name"].strip()):
        raise src.error((*key, "name"), f"must be a non-blank string, got {table['name']!r}")
    when = table.get("when", {})
    match = parse_match(when, (*key, "when"), src, allow=WHEN_KEYS)
    extras: dict[str, Any] = {name: when[name] for name in ("connection", "nth", "every", "first") if name in when}
    for name in ("after", "before"):
        if name in when:
            extras[name] = _duration(when[name], (*key, "when", name), src)
    actions = _parse_actions(table, key, src)
    try:
        return FaultRule(
            id=rule_id,
            name=table.get("name", ""),
            match=match,
            probability=table.get("probability", 1.0),
            actions=actions,
            enabled=table.get("enabled", True),
            **extras,
        )
    except FaultRuleError as exc:
        raise src.error((*key, *exc.path), exc.reason) from None


def rule_from_table(table: Any, *, default_id: str) -> FaultRule:
    """A rule from a table shaped like ``[[fault]]`` (or its JSON twin); ``default_id`` if it has no id.

    Raises ``FaultRuleError`` naming the key, for the admin API to answer 422 with.
    """
    try:
        return _parse_rule(table, (), ScenarioSource(None), default_id)
    except ScenarioError as exc:
        raise FaultRuleError(exc.key or "", exc.reason) from None


def parse_fault_rules(scenario: Scenario) -> tuple[FaultRule, ...]:
    """The scenario's ``[[fault]]`` tables as rules, ids defaulting to ``f1``, ``f2``... by position.

    Raises ``ScenarioError`` naming the file, the line and the key (``fault[2].when.nth``).
    """
    rules: list[FaultRule] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(scenario.faults):
        key: KeyPath = ("fault", index)
        rule = _parse_rule(table, key, scenario.source, f"f{index + 1}")
        if rule.id in seen:
            hint = "" if "id" in table else " (a rule without an id is named f<position>; give this one an id)"
            raise scenario.error(
                (*key, "id") if "id" in table else key,
                f"id {rule.id!r} is already used by fault[{seen[rule.id] + 1}]{hint}",
            )
        seen[rule.id] = index
        rules.append(rule)
    return tuple(rules)


# ---------------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one frame, fully sampled. The executor runs it in this order, and the first
    step that ends the exchange ends it (``combine`` already removed whatever could not happen):

    1. wait ``delay_request`` seconds;
    2. ``reset_before`` (RST) / ``close_before`` (FIN) / ``drop_request`` (ignore): stop, unprocessed;
    3. ``respond``: build an answer with that code from the request, without the host; else process
       (the host decides, the ledger commits);
    4. wait ``delay_response`` seconds;
    5. ``reset_after`` / ``close_after`` / ``drop_response``: stop, nothing sent (the posting stays);
    6. build the reply: set the ``wrong_echo`` fields (number → value), XOR the last 4 bytes of field
       62 (the last working key's check value) with ``wrong_check_value``, set the CUP header's
       processing requirement to 3 with ``signon_again``; encode (and MAC, when the terminal's
       session has a MAC key); XOR the MAC (field 64, or 128 when the secondary bitmap is in use;
       add an 8-byte field 64 first if none) with ``corrupt_mac``; or frame ``garbage`` instead;
    7. frame it: ``length_delta`` added to the length header (clamped to what the header can say),
       ``truncate_at`` body bytes sent of the frame (clamp to ``len(body) - 1``) and then close;
    8. write it in ``slice`` chunks with pauses, at most ``bandwidth`` bytes per second; ``duplicate``:
       write it again.
    """

    rules: tuple[str, ...] = ()  # ids of rules that fired ("maintenance" for maintenance mode)
    delay_request: float = 0.0
    delay_response: float = 0.0
    drop_request: bool = False
    drop_response: bool = False
    close_before: bool = False
    close_after: bool = False
    reset_before: bool = False
    reset_after: bool = False
    garbage: bytes | None = None
    truncate_at: int | None = None
    length_delta: int = 0
    duplicate: bool = False
    wrong_echo: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    corrupt_mac: bytes | None = None
    slice: tuple[int, float] | None = None
    bandwidth: int | None = None
    respond: str | None = None
    wrong_check_value: bytes | None = None  # XOR mask for the last check value of field 62
    signon_again: bool = False

    @property
    def is_clean(self) -> bool:
        """Nothing to do: process and answer as usual (the fast path)."""
        return self is EMPTY_DECISION or not self.actions_applied()

    def actions_applied(self) -> tuple[str, ...]:
        """Names of the actions in execution order, for the journal and metrics."""
        present = (
            ("delay_request", self.delay_request > 0),
            ("reset_before", self.reset_before),
            ("close_before", self.close_before),
            ("drop_request", self.drop_request),
            ("respond", self.respond is not None),
            ("delay_response", self.delay_response > 0),
            ("reset_after", self.reset_after),
            ("close_after", self.close_after),
            ("drop_response", self.drop_response),
            ("wrong_echo", bool(self.wrong_echo)),
            ("wrong_check_value", self.wrong_check_value is not None),
            ("signon_again", self.signon_again),
            ("corrupt_mac", self.corrupt_mac is not None),
            ("garbage", self.garbage is not None),
            ("wrong_length", self.length_delta != 0),
            ("truncate", self.truncate_at is not None),
            ("slice", self.slice is not None),
            ("bandwidth", self.bandwidth is not None),
            ("duplicate", self.duplicate),
        )
        return tuple(name for name, applied in present if applied)


EMPTY_DECISION = FaultDecision()


def _wrong_stan(original: str | None, rng: random.Random) -> str:
    if original and len(original) == 6 and original.isascii() and original.isdigit() and original != "000000":
        number = (int(original) - 1 + rng.randrange(1, 999_999)) % 999_999 + 1  # 1..999999, never the original
    else:
        number = rng.randrange(1, 1_000_000)
    return f"{number:06d}"


def _wrong_amount(original: str | None, rng: random.Random) -> str:
    """A different amount of the same width, near the original: the kind of bug that slips through."""
    if original and original.isascii() and original.isdigit():
        amount, width = int(original), len(original)
    else:
        amount, width = rng.randrange(1, 100_000), 12
    limit = min(_AMOUNT_LIMIT, 10**width)
    step = rng.randint(1, max(100, amount))
    if amount + step < limit:
        return f"{amount + step:0{width}d}"
    wrong = amount - step if amount >= step else (amount + 1) % limit
    return f"{wrong:0{width}d}"


def _wrong_terminal(original: str | None, rng: random.Random) -> str:
    """The terminal id with one character changed (same length, so it still fits field 41)."""
    text = original if original else "T" + "".join(rng.choice("0123456789") for _ in range(7))
    position = rng.randrange(len(text))
    choices = _TERMINAL_CHARACTERS.replace(text[position], "")
    return text[:position] + rng.choice(choices) + text[position + 1 :]


_WRONG_VALUE = {"stan": _wrong_stan, "amount": _wrong_amount, "terminal": _wrong_terminal}


def _mac_mask(rng: random.Random, size: int = MAC_BYTES) -> bytes:
    """``size`` random bytes, never all zero (a zero mask would corrupt nothing)."""
    mask = bytearray(rng.randbytes(size))
    if not any(mask):
        mask[rng.randrange(size)] = 1 << rng.randrange(8)
    return bytes(mask)


def combine(fired: Sequence[tuple[FaultRule, random.Random]], message: Message | None) -> FaultDecision:
    """One decision from the rules that fired, in plan order, each with its value generator.

    Delays add, flags OR, single values: the first rule wins. Actions another one makes impossible
    are dropped (module docstring); the generator of a rule is used only for that rule's values.
    """
    delay_request = delay_response = 0.0
    flags: set[str] = set()
    single: dict[str, Any] = {}
    echo: dict[int, str] = {}
    fields = message.fields if message is not None else {}
    for rule, rng in fired:
        actions = rule.actions
        if actions.delay_request is not None:
            delay_request += actions.delay_request.sample(rng)
        if actions.delay_response is not None:
            delay_response += actions.delay_response.sample(rng)
        for name in ("drop_request", "drop_response", "duplicate"):
            if getattr(actions, name):
                flags.add(name)
        for name in ("close", "reset"):
            if getattr(actions, name):
                flags.add(f"{name}_{getattr(actions, name)}")
        if actions.garbage is not None and "garbage" not in single:
            single["garbage"] = rng.randbytes(actions.garbage)
        if actions.truncate and "truncate_at" not in single:
            single["truncate_at"] = rng.randrange(TRUNCATE_KEEP_MAX)
        if actions.wrong_length and "length_delta" not in single:
            single["length_delta"] = rng.choice((-1, 1)) * rng.randint(1, LENGTH_DELTA_MAX)
        for name in actions.wrong_echo:
            number = WRONG_ECHO_FIELDS[name]
            if number not in echo:
                echo[number] = _WRONG_VALUE[name](fields.get(number), rng)
        if actions.corrupt_mac and "corrupt_mac" not in single:
            single["corrupt_mac"] = _mac_mask(rng)
        if actions.wrong_check_value and "wrong_check_value" not in single:
            single["wrong_check_value"] = _mac_mask(rng, CHECK_VALUE_BYTES)
        if actions.signon_again:
            flags.add("signon_again")
        for name in ("slice", "bandwidth", "respond"):
            if getattr(actions, name) is not None and name not in single:
                single[name] = getattr(actions, name)
    ids = tuple(rule.id for rule, _ in fired)
    for ending in ("reset_before", "close_before", "drop_request"):  # the strongest wins
        if ending in flags:
            return FaultDecision(rules=ids, delay_request=delay_request, **{ending: True})
    for ending in ("reset_after", "close_after", "drop_response"):
        if ending in flags:
            return FaultDecision(
                rules=ids,
                delay_request=delay_request,
                delay_response=delay_response,
                respond=single.get("respond"),
                **{ending: True},
            )
    if "garbage" in single:
        echo.clear()
        single.pop("corrupt_mac", None)
        single.pop("wrong_check_value", None)
        flags.discard("signon_again")
    if "truncate_at" in single:
        flags.discard("duplicate")
    return FaultDecision(
        rules=ids,
        delay_request=delay_request,
        delay_response=delay_response,
        duplicate="duplicate" in flags,
        signon_again="signon_again" in flags,
        wrong_echo=MappingProxyType(dict(sorted(echo.items()))),
        **single,
    )


# ---------------------------------------------------------------------------------------------------
# The engine


@dataclass
class _RuleState:
    chance: random.Random  # one draw per match: the probability
    values: random.Random  # the action values, drawn when the rule fires
    matched: int = 0
    fired: int = 0


class FaultEngine:
    """The current fault plan, and the decision for each frame.

    Mutable through ``add`` / ``patch`` / ``delete`` / ``load`` / ``reset`` and ``maintenance``
    (the admin API), but a change only affects frames ``decide`` sees afterwards: a decision already
    given is a plain value, so in-flight messages keep the plan they started with.

    Maintenance: ``"refuse"`` — the server closes new connections at once, and a frame on a
    connection already open gets ``close_before``; ``"respond"`` — every frame is answered with
    ``maintenance_code`` (default 91) without processing. Either way no rule is consulted or
    counted. A sign-on blackout is an ordinary rule (``when = { mti = "0800" }``,
    ``drop_request = true``), shipped in ``signon-timeout.toml``.
    """

    def __init__(self, rules: Sequence[FaultRule] = (), *, seed: int | None = None, maintenance: str = "off"):
        self._seed = self._valid_seed(seed) if seed is not None else int.from_bytes(os.urandom(4), "big")
        self._maintenance = "off"
        self._maintenance_code = "91"
        self.maintenance = maintenance
        self._rules: tuple[FaultRule, ...] = ()
        self._active: tuple[FaultRule, ...] = ()
        self._states: dict[str, _RuleState] = {}
        self._generated = 0
        self.load(rules)

    @classmethod
    def from_scenario(cls, scenario: Scenario, *, seed: int | None = None) -> FaultEngine:
        """The scenario's faults; ``seed`` (the command line's) overrides the scenario's."""
        return cls(parse_fault_rules(scenario), seed=seed if seed is not None else scenario.seed)

    @staticmethod
    def _valid_seed(seed: Any) -> int:
        if not _is_int(seed):
            raise FaultRuleError("seed", f"must be an integer, got {seed!r}")
        return seed

    # -- state ---------------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        """The seed in use (drawn at random when none was given): pass it as ``--seed`` to replay."""
        return self._seed

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        return self._rules

    @property
    def maintenance(self) -> str:
        return self._maintenance

    @maintenance.setter
    def maintenance(self, mode: str) -> None:
        if mode not in MAINTENANCE_MODES:
            raise FaultRuleError("maintenance", f"must be one of {', '.join(MAINTENANCE_MODES)}, got {mode!r}")
        self._maintenance = mode

    @property
    def maintenance_code(self) -> str:
        return self._maintenance_code

    @maintenance_code.setter
    def maintenance_code(self, code: str) -> None:
        if not isinstance(code, str) or not _RESPONSE_CODE.fullmatch(code):
            raise FaultRuleError("maintenance_code", f'must be a 2-character response code (e.g. "91"), got {code!r}')
        self._maintenance_code = code

    def get(self, rule_id: str) -> FaultRule:
        """The rule with that id; ``KeyError`` if there is none."""
        for rule in self._rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per rule id, in plan order: ``{"matched": n, "fired": n}`` since it was added or loaded."""
        return {
            rule.id: {"matched": self._states[rule.id].matched, "fired": self._states[rule.id].fired}
            for rule in self._rules
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole plan, JSON-able: seed, maintenance and the rules (``FaultRule.to_dict``)."""
        return {
            "seed": self._seed,
            "maintenance": self._maintenance,
            "maintenance_code": self._maintenance_code,
            "rules": [rule.to_dict() for rule in self._rules],
        }

    # -- changes -------------------------------------------------------------------------------

    def _new_state(self, rule_id: str) -> _RuleState:
        return _RuleState(random.Random(f"{self._seed}/{rule_id}"), random.Random(f"{self._seed}/{rule_id}/values"))

    def _install(self, rules: tuple[FaultRule, ...], states: dict[str, _RuleState]) -> None:
        self._rules = rules
        self._states = states
        self._active = tuple(rule for rule in rules if rule.enabled)

    def load(self, rules: Sequence[FaultRule], seed: int | None = None) -> None:
        """Replace the plan; counters and generators start afresh. ``seed`` None keeps the current one."""
        rules = tuple(rules)
        seen: set[str] = set()
        for index, rule in enumerate(rules):
            if not isinstance(rule, FaultRule):
                raise TypeError(f"rule {index} is not a FaultRule: {rule!r}")
            if rule.id in seen:
                raise FaultRuleError("id", f"id {rule.id!r} is used by two rules")
            seen.add(rule.id)
        if seed is not None:
            self._seed = self._valid_seed(seed)
        generated = [int(found.group(1)) for rule in rules if (found := _GENERATED_ID.fullmatch(rule.id))]
        self._generated = max(generated, default=0)
        self._install(rules, {rule.id: self._new_state(rule.id) for rule in rules})

    def reset(self) -> None:
        """No rules, maintenance off (code 91), counters gone; the seed stays."""
        self._maintenance, self._maintenance_code = "off", "91"
        self.load(())

    def add(self, rule_table: Mapping[str, Any]) -> FaultRule:
        """Validate a rule table (as in a scenario file, or its JSON) and append it to the plan.

        Without an id it gets the next free ``f<n>``. Raises ``FaultRuleError(key, reason)``.
        """
        number = self._generated + 1
        while any(rule.id == f"f{number}" for rule in self._rules):
            number += 1
        rule = rule_from_table(rule_table, default_id=f"f{number}")
        if any(existing.id == rule.id for existing in self._rules):
            raise FaultRuleError("id", f"a rule with id {rule.id!r} exists; patch it, or delete it first")
        if "id" not in rule_table:
            self._generated = number
        self._install((*self._rules, rule), {**self._states, rule.id: self._new_state(rule.id)})
        return rule

    def patch(self, rule_id: str, changes: Mapping[str, Any]) -> FaultRule:
        """Change some keys of a rule; it keeps its place, counters and random stream.

        A key set to None goes back to its default (an action is removed); ``when`` is merged key by
        key (None removes a criterion), every other key is replaced. ``KeyError`` for an unknown id,
        ``FaultRuleError`` for a bad change.
        """
        current = self.get(rule_id)
        if not isinstance(changes, Mapping):
            raise FaultRuleError("", f"must be a table of keys to change, got {changes!r}")
        table = current.to_dict()
        for key, value in changes.items():
            if key not in RULE_KEYS:
                raise FaultRuleError(key, f"unknown key; allowed: {', '.join(RULE_KEYS)}")
            if key == "id":
                if value != rule_id:
                    raise FaultRuleError("id", "cannot be changed; delete the rule and add it under the new id")
            elif key == "when" and isinstance(value, Mapping):
                when = dict(table["when"])
                for name, criterion in value.items():
                    if criterion is None:
                        when.pop(name, None)
                    else:
                        when[name] = criterion
                table["when"] = when
            elif value is None:
                table.pop(key, None)
            else:
                table[key] = value
        rule = rule_from_table(table, default_id=rule_id)
        self._install(tuple(rule if existing.id == rule_id else existing for existing in self._rules), self._states)
        return rule

    def delete(self, rule_id: str) -> None:
        """Remove a rule; ``KeyError`` if there is none with that id."""
        self.get(rule_id)
        states = {key: state for key, state in self._states.items() if key != rule_id}
        self._install(tuple(rule for rule in self._rules if rule.id != rule_id), states)

    # -- deciding ------------------------------------------------------------------------------

    def decide(self, message: Message | None, *, connection: int, elapsed: float) -> FaultDecision:
        """The faults for one received frame: ``message`` None when it did not decode, ``connection``
        its connection number (from 1), ``elapsed`` seconds since the switch started.

        Call it once per request frame (not for keepalives), in the order frames are read.
        """
        if self._maintenance == "respond":
            return FaultDecision(rules=(MAINTENANCE_RULE,), respond=self._maintenance_code)
        if self._maintenance == "refuse":
            return FaultDecision(rules=(MAINTENANCE_RULE,), close_before=True)
        if not self._active:
            return EMPTY_DECISION
        fired: list[tuple[FaultRule, random.Random]] = []
        for rule in self._active:
            if not rule.applies_to(message, connection, elapsed):
                continue
            state = self._states[rule.id]
            state.matched += 1
            chance = state.chance.random()  # drawn on every match: counts and actions never shift the stream
            if not rule.counted_in(state.matched) or chance >= rule.probability:
                continue
            state.fired += 1
            fired.append((rule, state.values))
        if not fired:
            return EMPTY_DECISION
        return combine(fired, message)
