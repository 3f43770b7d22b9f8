"""Scenario files: TOML that tells the switch how to answer (response rules, host settings) and, later,
how to misbehave (fault rules, issue 4).

A scenario is refused as a whole when anything in it is wrong, and the error names the file, the
line and the key (``specs/x.toml:14: response[2].when.amount_max: must be ...``). tomllib reports
positions only for syntax errors, so ``key_lines`` scans the (already valid) text once and records
the line where every key, table header and array element starts; errors look their key up there.

The format is documented in the shipped files' comments and in the README; in short::

    [scenario]                       # all optional
    name = "healthy"                 # default: the file name without .toml
    description = "what it reproduces"
    seed = 7                         # RNG seed for faults (CLI --seed overrides)
    test_cards = true                # append the default test-card table after this file's rules

    [host]                           # overrides for the host's settings, see HOST_KEYS
    stale_window = "5m"

    [[response]]                     # response rules, first match wins, in file order
    name = "big amounts need a referral"
    when = { mti = ["0200"], amount_min = 100000 }
    respond = "01"
    fields = { 44 = "CALL ISSUER" }

    [[fault]]                        # kept raw for the fault engine
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import specs
from switch.codec.dialect import Dialect
from switch.rules import REGEX_PREFIX, Match, ResponseRule, ResponseRules, RuleError
from switch.toml_lines import KeyPath, key_lines

"""A key inside a scenario file: table keys as strings, array positions as 0-based ints."""

TEST_CARDS = "test-cards"  # shipped file holding the default test-card table

TOP_KEYS = ("scenario", "host", "response", "fault")
SCENARIO_KEYS = ("name", "description", "seed", "test_cards")
RESPONSE_KEYS = ("name", "when", "respond", "fields")
MATCH_KEYS = ("mti", "processing_code", "pan_prefix", "amount_min", "amount_max", "terminal", "fields")
_RESPONSE_ATTRIBUTE_KEYS = {"response_code": "respond", "match": "when"}  # ResponseRule attr → file key


class ScenarioError(ValueError):
    """A scenario that cannot be used.

    ``path`` is the file (None for text given directly), ``line`` 1-based or None when unknown,
    ``key`` the dotted key such as ``response[2].when.amount_max`` (array elements count from 1, in
    file order) or None for file-level problems, ``reason`` what is wrong.
    """

    def __init__(self, path: str | None, line: int | None, key: str | None, reason: str):
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason
        where = path or "<scenario>"
        if line is not None:
            where += f":{line}"
        if key is not None:
            where += f": {key}"
        super().__init__(f"{where}: {reason}")


def format_key(key: KeyPath) -> str:
    """``("response", 1, "when", "mti")`` → ``response[2].when.mti`` (positions shown from 1)."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part + 1}]"
        else:
            text += f".{part}" if text else part
    return text


# ---------------------------------------------------------------------------------------------------
# Durations


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HELP = "a number of seconds or a string such as '250ms', '30s', '5m', '1h' or '1m30s'"
MAX_DURATION = 30 * 86400.0
"""The longest duration any setting takes (30 days): beyond it a value is a typo or an attack, and
1e308 s overflows wherever it is added to a clock or shown in milliseconds. Fault rules bound their
delays tighter (``switch.faults.MAX_DELAY``)."""
MAX_SCENARIO_BYTES = 1 << 20
"""A scenario file larger than this (1 MiB) is refused before it is parsed: real ones are a few KiB."""


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string with units (``"250ms"``, ``"1m30s"``).

    Raises ``ValueError`` whose message is a reason fit to follow a key name.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a duration ({_DURATION_HELP}), got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value <= MAX_DURATION:
            shown = f"{value!r}" if isinstance(value, float) or abs(value) < 10**30 else "a huge integer"
            raise ValueError(f"must be a duration >= 0 and <= {MAX_DURATION:g} s, got {shown}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        total, position = 0.0, 0
        while position < len(text):
            part = _DURATION_PART.match(text, position)
            if part is None:
                break
            total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
            position = part.end()
        if text and position == len(text):
            if not total <= MAX_DURATION:  # also catches inf from "9999…9h"
                raise ValueError(f"must be a duration >= 0 and <= {MAX_DURATION:g} s, got {value[:40]!r}")
            return total
        hint = " (write a plain number without quotes, or add a unit)" if _looks_numeric(text) else ""
        raise ValueError(f"must be a duration ({_DURATION_HELP}), got {value!r}{hint}")
    raise ValueError(f"must be a duration ({_DURATION_HELP}), got {value!r}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Sources and errors


@dataclass(frozen=True)
class ScenarioSource:
    """Where a scenario came from: its path and the line of every key, to build precise errors."""

    path: str | None
    lines: Mapping[KeyPath, int] = field(default_factory=dict)

    def line_of(self, key: KeyPath) -> int | None:
        """Line of ``key``, or of its nearest enclosing key when it is absent (a missing key)."""
        for length in range(len(key), 0, -1):
            line = self.lines.get(key[:length])
            if line is not None:
                return line
        return None

    def error(self, key: KeyPath | None, reason: str) -> ScenarioError:
        """An error for ``key`` (None: the file as a whole), to raise."""
        if key is None:
            return ScenarioError(self.path, None, None, reason)
        return ScenarioError(self.path, self.line_of(key), format_key(key), reason)


def _check_keys(src: ScenarioSource, table: Mapping[str, Any], key: KeyPath, allowed: Iterable[str]) -> None:
    """Unknown keys are errors (typos must not be ignored silently); names the first in file order."""
    allowed = tuple(allowed)
    unknown = [name for name in table if name not in allowed]
    if unknown:
        first = min(unknown, key=lambda name: src.line_of((*key, name)) or 0)
        raise src.error((*key, first), f"unknown key; allowed: {', '.join(allowed)}")


def _table(src: ScenarioSource, value: Any, key: KeyPath, what: str = "a table") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise src.error(key, f"must be {what}, got {value!r}")
    return value


def _rule_error(
    src: ScenarioSource, key: KeyPath, exc: RuleError, rename: Mapping[str, str] = MappingProxyType({})
) -> ScenarioError:
    """Map a ``RuleError`` attribute (``fields.44``) onto the key path in the file."""
    head, *rest = exc.attribute.split(".")
    return src.error((*key, rename.get(head, head), *rest), exc.reason)


def _field_numbers(src: ScenarioSource, value: Any, key: KeyPath) -> dict[int, Any]:
    """TOML keys are strings: ``{ 44 = "x" }`` → ``{44: "x"}``; range checks are the rule's."""
    table = _table(src, value, key, 'a table of field number = string, e.g. { 44 = "CALL ISSUER" }')
    numbers: dict[int, Any] = {}
    for name, field_value in table.items():
        if not (name.isascii() and name.isdigit()):
            raise src.error((*key, name), f"field numbers are 2..128, got {name!r}")
        if int(name) in numbers:
            raise src.error((*key, name), f"field {int(name)} is given twice")
        numbers[int(name)] = field_value
    return numbers


def parse_match(when: Any, key: KeyPath, src: ScenarioSource, *, allow: Iterable[str] = ()) -> Match:
    """A ``Match`` from a ``when`` table at ``key``.

    ``allow`` names extra keys the caller handles itself (the fault engine's ``nth``, ``every``,
    ``connection``...), so its predicates share this syntax and these errors.
    """
    table = _table(src, when, key, 'a table such as { mti = ["0200"], amount_min = 100 }')
    _check_keys(src, table, key, (*MATCH_KEYS, *allow))
    arguments = {name: table[name] for name in MATCH_KEYS if name in table}
    if "fields" in arguments:
        arguments["fields"] = _field_numbers(src, arguments["fields"], (*key, "fields"))
    try:
        return Match(**arguments)
    except RuleError as exc:
        raise _rule_error(src, key, exc) from None


# ---------------------------------------------------------------------------------------------------
# Host settings


def _response_code(value: Any) -> str:
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalnum():
        return value
    raise ValueError(f'must be a 2-character response code (letters or digits, e.g. "A0"), got {value!r}')


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, got {value!r}")


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a duration > 0, got {value!r}")
    return seconds


def _timeout_or_never(value: Any) -> float | None:
    if value == "never":
        return None
    try:
        return _positive_duration(value)
    except ValueError as exc:
        raise ValueError(f'{exc}, or "never"') from None


def _unknown_original_code(value: Any) -> str:
    if value in ("00", "25"):
        return value
    raise ValueError(f'must be "00" (approve, lets the terminal clear its queue) or "25", got {value!r}')


HOST_KEYS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "require_signon": _boolean,
        "signon_required_code": _response_code,
        "session_timeout": _timeout_or_never,
        "stale_window": _positive_duration,
        "stale_code": _response_code,
        "unknown_original_code": _unknown_original_code,
        "duplicate_window": _positive_duration,
        "mac_failure_code": _response_code,
        "pin_format_code": _response_code,
    }
)
"""``[host]`` keys → validator returning the value the host's config takes (durations in seconds)."""


def _host(src: ScenarioSource, value: Any) -> Mapping[str, Any]:
    from switch.host.config import HOST_SETTINGS  # late: switch.host imports modules that import this one

    keys = {**HOST_KEYS, **HOST_SETTINGS}
    table = _table(src, value, ("host",))
    _check_keys(src, table, ("host",), keys)
    settings: dict[str, Any] = {}
    for name, raw in table.items():
        try:
            settings[name] = keys[name](raw)
        except ValueError as exc:
            raise src.error(("host", name), str(exc)) from None
    return MappingProxyType(settings)


# ---------------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: host overrides, response rules (file's, then test cards) and raw faults."""

    name: str
    description: str
    path: str | None
    host: Mapping[str, Any]
    response_rules: ResponseRules
    faults: tuple[Mapping[str, Any], ...] = ()
    seed: int | None = None
    test_cards: bool = True
    fault_lines: tuple[int | None, ...] = ()  # line of each [[fault]] header, parallel to ``faults``
    source: ScenarioSource = field(default_factory=lambda: ScenarioSource(None), repr=False, compare=False)
    _rule_origins: tuple[tuple[ScenarioSource, KeyPath], ...] = field(default=(), repr=False, compare=False)

    def error(self, key: KeyPath, reason: str) -> ScenarioError:
        """An error at ``key`` of this scenario's file, e.g. ``("fault", 0, "delay")`` → line and name."""
        return self.source.error(key, reason)

    def check_dialect(self, dialect: Dialect) -> None:
        """Refuse rules the dialect cannot carry, at start-up rather than on the first matching request.

        A response field must be defined by the dialect and fit its type and size. A ``when.fields``
        entry on a field the dialect lacks, or a literal value the field can never hold (wrong
        length, letters in a numeric field, lower-case hex), could never match: always a mistake.
        """
        origins = self._rule_origins
        if len(origins) != len(self.response_rules):  # built in code, not parsed: no file positions
            origins = tuple((self.source, ("response", index)) for index in range(len(self.response_rules)))
        for rule, (src, key) in zip(self.response_rules, origins, strict=True):
            for number, expected in rule.match.fields.items():
                literal = None if expected.startswith(REGEX_PREFIX) else expected
                problem = _dialect_value_problem(dialect, number, literal)
                if problem:
                    raise src.error((*key, "when", "fields", str(number)), f"never matches: {problem}")
            for number, value in rule.fields.items():
                problem = _dialect_value_problem(dialect, number, value)
                if problem:
                    raise src.error((*key, "fields", str(number)), problem)


_VALUE_CHARACTERS = {  # what the codec accepts for a field type; others are free text
    "n": (re.compile(r"[0-9]*"), "digits"),
    "z": (re.compile(r"[0-9:;<=>?D]*"), "track characters (0-9 : ; < = > ? D)"),
    "b": (re.compile(r"[0-9A-F]*"), "upper-case hex digits"),
}


def _dialect_value_problem(dialect: Dialect, number: int, value: str | None) -> str | None:
    """Why ``value`` cannot be field ``number`` of ``dialect`` as the codec represents it (None: it can).

    ``value`` None checks only that the field exists.
    """
    definition = dialect.fields.get(number)
    if definition is None:
        return f"dialect {dialect.name} has no field {number}"
    if value is None:
        return None
    binary = definition.type == "b"
    limit = definition.max * 2 if binary else definition.max  # binary values are hex text
    unit = "hex digits" if binary else "characters"
    if definition.fixed and len(value) != limit:
        return f"field {number} of dialect {dialect.name} is exactly {limit} {unit}, got {len(value)}"
    if len(value) > limit:
        return f"field {number} of dialect {dialect.name} holds at most {limit} {unit}, got {len(value)}"
    allowed = _VALUE_CHARACTERS.get(definition.type)
    if allowed and allowed[0].fullmatch(value) is None:
        return f"field {number} of dialect {dialect.name} holds {allowed[1]}, got {value!r}"
    return None


def _response_rules(
    src: ScenarioSource, value: Any, scenario_name: str
) -> tuple[list[ResponseRule], list[tuple[ScenarioSource, KeyPath]]]:
    if isinstance(value, Mapping):
        raise src.error(("response",), "write response rules as [[response]] tables, not [response]")
    if not isinstance(value, list):
        raise src.error(("response",), f"must be an array of [[response]] tables, got {value!r}")
    rules: list[ResponseRule] = []
    origins: list[tuple[ScenarioSource, KeyPath]] = []
    for index, raw in enumerate(value):
        key: KeyPath = ("response", index)
        table = _table(src, raw, key)
        _check_keys(src, table, key, RESPONSE_KEYS)
        for required, hint in (
            ("when", "write when = {} to match every request"),
            ("respond", 'the response code to answer with, e.g. respond = "51"'),
        ):
            if required not in table:
                raise src.error((*key, required), f"missing ({hint})")
        match = parse_match(table["when"], (*key, "when"), src)
        fields = _field_numbers(src, table.get("fields", {}), (*key, "fields"))
        name = table.get("name", f"{scenario_name} {format_key(key)}")
        try:
            rules.append(ResponseRule(name, match, table["respond"], fields))
        except RuleError as exc:
            raise _rule_error(src, key, exc, _RESPONSE_ATTRIBUTE_KEYS) from None
        origins.append((src, key))
    return rules, origins


def _faults(src: ScenarioSource, value: Any) -> tuple[tuple[Mapping[str, Any], ...], tuple[int | None, ...]]:
    """Fault tables are validated by the fault engine; here only their shape and position."""
    if isinstance(value, Mapping):
        raise src.error(("fault",), "write fault rules as [[fault]] tables, not [fault]")
    if not isinstance(value, list):
        raise src.error(("fault",), f"must be an array of [[fault]] tables, got {value!r}")
    faults = tuple(_table(src, raw, ("fault", index)) for index, raw in enumerate(value))
    return faults, tuple(src.line_of(("fault", index)) for index in range(len(faults)))


def _toml_error(path: str | None, exc: tomllib.TOMLDecodeError) -> ScenarioError:
    line = getattr(exc, "lineno", None)
    if line is None:
        found = re.search(r"at line (\d+)", str(exc))
        line = int(found.group(1)) if found else None
    return ScenarioError(path, line, None, f"invalid TOML: {exc}")


def parse_scenario(text: str, path: str | None = None, *, with_test_cards: bool = True) -> Scenario:
    """Validate scenario TOML ``text`` (``path`` is only for names and errors).

    ``with_test_cards=False`` ignores the file's ``test_cards`` and adds no table; it is how the
    test-card file itself is read.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, exc) from None
    except ValueError as exc:  # an integer past Python's digit limit
        raise ScenarioError(path, None, None, f"invalid TOML: {exc}") from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise ScenarioError(path, None, None, "invalid TOML: nested too deeply") from None
    src = ScenarioSource(path, MappingProxyType(key_lines(text)))
    _check_keys(src, data, (), TOP_KEYS)

    meta = _table(src, data.get("scenario", {}), ("scenario",))
    _check_keys(src, meta, ("scenario",), SCENARIO_KEYS)
    default_name = Path(path).stem if path else "scenario"
    name = meta.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise src.error(("scenario", "name"), f"must be a non-blank string, got {name!r}")
    description = meta.get("description", "")
    if not isinstance(description, str):
        raise src.error(("scenario", "description"), f"must be a string, got {description!r}")
    seed = meta.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -(2**64) < seed < 2**64):
        shown = f"{seed!r}" if not isinstance(seed, int) else "an integer of magnitude 2**64 or more"
        raise src.error(("scenario", "seed"), f"must be an integer of magnitude below 2**64, got {shown}")
    test_cards = meta.get("test_cards", True)
    if not isinstance(test_cards, bool):
        raise src.error(("scenario", "test_cards"), f"must be true or false, got {test_cards!r}")

    host = _host(src, data.get("host", {}))
    rules, origins = _response_rules(src, data.get("response", []), name)
    faults, fault_lines = _faults(src, data.get("fault", []))
    use_test_cards = test_cards and with_test_cards
    if use_test_cards:
        cards = default_scenario()
        rules += cards.response_rules.rules
        origins += cards._rule_origins
    return Scenario(
        name=name,
        description=description.strip(),
        path=path,
        host=host,
        response_rules=ResponseRules(rules),
        faults=faults,
        seed=seed,
        test_cards=use_test_cards,
        fault_lines=fault_lines,
        source=src,
        _rule_origins=tuple(origins),
    )


def _read(path: Path, shown: str) -> str:
    """The file's text, read only if it is a regular file of at most ``MAX_SCENARIO_BYTES``.

    Opened non-blocking and checked on the open descriptor (no race with a swapped path): a FIFO
    would block a thread forever and ``/dev/zero`` would fill memory, so neither is ever read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ScenarioError(shown, None, None, "no such file") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ScenarioError(shown, None, None, f"cannot read: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ScenarioError(shown, None, None, "not a regular file (a scenario is a .toml file)")
        if info.st_size > MAX_SCENARIO_BYTES:
            raise ScenarioError(shown, None, None, f"larger than {MAX_SCENARIO_BYTES} bytes ({info.st_size})")
        with os.fdopen(fd, "rb") as file:
            fd = -1
            data = file.read(MAX_SCENARIO_BYTES + 1)  # it may have grown since fstat
    except OSError as exc:
        raise ScenarioError(shown, None, None, f"cannot read: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(shown, None, None, f"larger than {MAX_SCENARIO_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(shown, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


_SHIPPED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_SCENARIO_NAME = 1024  # characters of a name or path given to the admin API


def load_scenario_within(name: str, directories: Sequence[str | os.PathLike[str]] = ()) -> Scenario:
    """A shipped scenario by name, or a ``.toml`` file inside one of ``directories`` (``--scenario-path``).

    What the admin API loads: a remote caller must not make the switch read an arbitrary file,
    a device or a FIFO. A path (relative to a directory, or absolute) is accepted only if it
    resolves, symlinks followed, to a regular file under one of the directories. Raises
    ``ScenarioError`` (the admin API answers 422) for anything else.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_SCENARIO_NAME:
        raise ScenarioError(None, None, "name", f"must be a name or path of 1 to {MAX_SCENARIO_NAME} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ScenarioError(None, None, "name", "must not contain control characters (NUL, newline...)")
    if _SHIPPED_NAME.fullmatch(name) and not name.endswith(".toml") and name in scenario_names():
        return load_scenario(name)
    if not directories:
        raise ScenarioError(name, None, None,
                            f"no shipped scenario of that name (shipped: {', '.join(scenario_names())}); files are "
                            "loaded only from a directory the switch was started with (--scenario-path DIR)")
    if not name.endswith(".toml"):
        shipped = ", ".join(scenario_names())
        raise ScenarioError(name, None, None,
                            f"no shipped scenario of that name (shipped: {shipped}); a file name must end in .toml")
    for directory in directories:
        root = Path(directory).expanduser().resolve()
        candidate = (root / name).resolve()  # an absolute name replaces root; checked just below
        if candidate.is_relative_to(root) and candidate.exists():
            return _with_valid_faults(parse_scenario(_read(candidate, name), name))
    raise ScenarioError(name, None, None,
                        "no such file under the scenario directories (--scenario-path): "
                        + ", ".join(str(Path(directory)) for directory in directories))


def scenario_names() -> list[str]:
    """Names of the shipped scenarios, for ``--scenario NAME`` and help texts."""
    return sorted(path.stem for path in specs.scenarios_dir().glob("*.toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name (``"healthy"``) or a file by path (ends in ``.toml`` or has a ``/``).

    Unlike ``parse_scenario`` it also validates the ``[[fault]]`` tables, so a file with a bad fault
    rule is refused at start-up with its line and key.
    """
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return _with_valid_faults(parse_scenario(_read(Path(name_or_path), name_or_path), name_or_path))
    path = specs.scenarios_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        raise ScenarioError(
            name_or_path,
            None,
            None,
            f"no shipped scenario of that name (shipped: {', '.join(scenario_names())}); "
            "a file path must end in .toml",
        )
    return _with_valid_faults(parse_scenario(_read(path, str(path)), str(path)))


def _with_valid_faults(scenario: Scenario) -> Scenario:
    from switch.faults import parse_fault_rules  # here: the fault engine builds on this module

    parse_fault_rules(scenario)  # raises ScenarioError naming file, line and key
    return scenario


@cache
def default_scenario() -> Scenario:
    """The default test-card table alone: no host overrides, no faults (what runs without --scenario)."""
    path = specs.scenarios_dir() / f"{TEST_CARDS}.toml"
    scenario = parse_scenario(_read(path, str(path)), str(path), with_test_cards=False)
    return Scenario(
        name="default",
        description="The default test-card table; no host overrides, no faults.",
        path=None,
        host=MappingProxyType({}),
        response_rules=scenario.response_rules,
        test_cards=True,
        source=ScenarioSource(None),
        _rule_origins=scenario._rule_origins,
    )
