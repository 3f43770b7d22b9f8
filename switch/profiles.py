"""Terminal profiles: which terminals the switch knows, with their master keys, dialect, framing and MAC.

A real POS terminal is configured with a terminal id, a merchant id and a terminal master key (TMK);
the host must know the same values to hand out working keys at sign-on and to check MACs. A profile
file lists them, for the switch (``iso-switch serve --profiles FILE``) and for the terminal client,
so both ends of a test agree. TEST KEYS ONLY: the file holds master keys in clear.

A profile file is refused as a whole when anything in it is wrong, and the error names the file, the
line and the key, like scenario files (it reuses their line locator)::

    [settings]                              # optional
    unknown_terminal_code = "97"            # answer for a terminal not listed; default: 97 on
                                            # a CUP-dialect listener, 58 on others

    [defaults]                              # optional: any terminal key but terminal_id
    dialect = "cup-pos"

    [[terminal]]
    terminal_id = "CUP00001"                # field 41, exactly 8 characters
    merchant_id = "898100012340001"         # field 42, exactly 15 characters
    tmk = "0123456789ABCDEFFEDCBA9876543210"  # 16, 32 or 48 hex digits (spaces allowed); may be
                                            # left out when pin_key and mac_key are given
    tmk_check = "08D7B4"                    # optional: 6 or 8 hex digits, guards against typos
    dialect = "cup-pos"                     # a dialect name (or .toml path)
    framing = { length_header = "binary2" } # optional overrides of the dialect's framing
    tpdu = "6000030000"                     # optional, 10 hex digits (TPDU framing only)
    mac = "cup-ecb"                         # none | cup-ecb | x9.9 | x9.19 (default: cup-ecb
                                            # for CUP dialects, none otherwise)
    key_layout = 40                         # field 62 size: 24 | 40 | 56 | 60 | 84 (default 40)
    pin_key = "..."                         # optional static working keys (clear hex), for
    mac_key = "..."                         # terminals that do not load keys at sign-on
    pins = { 6270000000000000 = "123456" }  # optional: PAN = PIN for PIN verification
    pin_tries = 3                           # wrong PINs before 75 (default 3)
    description = "the POS on my desk"      # optional
"""

from __future__ import annotations

import os
import random
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from switch.codec.dialect import FRAMING_KEYS, DialectError, DialectRegistry
from switch.codec.framing import TPDU_LENGTH, Framing, FramingError
from switch.scenario import (
    KeyPath,
    ScenarioError,
    ScenarioSource,
    _check_keys,
    _read,
    _response_code,
    _table,
    _toml_error,
    key_lines,
)
from switch.security import (
    DEFAULT_KEY_LAYOUT,
    KEY_LAYOUTS,
    KEY_LENGTHS,
    MAC_CHOICES,
    MAC_KEY_LENGTHS,
    PIN_LENGTHS,
    PREFERRED_MAC_KEY_LENGTH,
    SecurityError,
    WorkingKeys,
    check_value,
    encrypt_field62,
)

TOP_KEYS = ("settings", "defaults", "terminal")
SETTINGS_KEYS = ("unknown_terminal_code",)
TERMINAL_KEYS = (
    "terminal_id",
    "merchant_id",
    "tmk",
    "tmk_check",
    "dialect",
    "framing",
    "tpdu",
    "mac",
    "key_layout",
    "pin_key",
    "mac_key",
    "pins",
    "pin_tries",
    "description",
)
DEFAULT_KEYS = tuple(key for key in TERMINAL_KEYS if key != "terminal_id")
DEFAULT_PIN_TRIES = 3
UNKNOWN_TERMINAL_CODES = MappingProxyType({"cup": "97", "iso87": "58"})
"""Family → answer for a terminal without a profile: CUP 97 "terminal not registered", ISO 58."""

_HEX = re.compile(r"[0-9A-Fa-f]*")


class ProfileError(ScenarioError):
    """A profile file that cannot be used; ``path``, ``line``, ``key`` and ``reason`` as for scenarios."""


def _as_profile_error(exc: ScenarioError) -> ProfileError:
    return ProfileError(exc.path, exc.line, exc.key, exc.reason)


@dataclass(frozen=True)
class _ProfileSource(ScenarioSource):
    """The scenario source, raising ``ProfileError`` so callers can tell the two files apart."""

    def error(self, key: KeyPath | None, reason: str) -> ProfileError:
        return _as_profile_error(ScenarioSource.error(self, key, reason))


# ---------------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class TerminalSecurityProfile:
    """One terminal as the switch and the terminal client both see it. ``repr`` hides the keys."""

    terminal_id: str
    merchant_id: str
    tmk: bytes | None = field(repr=False)  # None: static working keys only, no field 62 at sign-on
    dialect: str
    family: str  # the dialect's family: "cup" or "iso87"
    framing: Framing  # the dialect's framing with this profile's overrides applied
    tpdu: bytes | None = None
    mac: str = "none"  # "none" or a key of switch.security.MAC_ALGORITHMS
    key_layout: int = DEFAULT_KEY_LAYOUT
    static_keys: WorkingKeys | None = field(default=None, repr=False)
    pins: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    pin_tries: int = DEFAULT_PIN_TRIES
    description: str = ""
    framing_overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    line: int | None = field(default=None, compare=False)  # where its [[terminal]] table starts

    @property
    def tmk_check_value(self) -> str | None:
        """The TMK's 4-byte check value in hex: safe to log, and what a terminal's key menu shows."""
        return check_value(self.tmk).hex().upper() if self.tmk is not None else None

    @property
    def macs(self) -> bool:
        """Whether requests and responses of this terminal carry a MAC."""
        return self.mac != "none"

    def issue_keys(self, rng: random.Random, *, layout: int | None = None) -> WorkingKeys:
        """The working keys for a sign-on: the static keys if configured, else fresh ones from ``rng``
        that fit the key layout and the MAC algorithm.

        ``layout`` overrides ``key_layout``, e.g. with the one a CUP terminal asks for in 60.3
        (``switch.security.layout_for_network_code``); ``Field62Error`` if the MAC key cannot fit it.
        """
        if self.static_keys is not None:
            return self.static_keys
        return WorkingKeys.for_layout(rng, layout or self.key_layout, mac_algorithm=self.mac)

    def field62(self, keys: WorkingKeys, *, layout: int | None = None) -> bytes:
        """Field 62 of the sign-on reply: ``keys`` under this terminal's TMK in its key layout.

        A profile without a TMK (static keys only) has no field 62: ``SecurityError``.
        """
        if self.tmk is None:
            raise SecurityError(f"terminal {self.terminal_id!r} has static working keys and no TMK: no field 62")
        return encrypt_field62(self.tmk, keys, layout=layout or self.key_layout)

    def expected_pin(self, pan: str) -> str | None:
        """The PIN of test card ``pan`` for this terminal, or None when the card has none listed."""
        return self.pins.get(pan)


@dataclass(frozen=True)
class ProfileSet:
    """The terminals of one profile file, by terminal id, in file order."""

    path: str
    profiles: Mapping[str, TerminalSecurityProfile] = field(default_factory=lambda: MappingProxyType({}))
    unknown_code: str | None = None  # as configured; None = the family default

    def get(self, terminal_id: str) -> TerminalSecurityProfile | None:
        return self.profiles.get(terminal_id)

    def unknown_terminal_code(self, family: str) -> str:
        """Response code for a terminal without a profile on a listener of dialect ``family``."""
        if self.unknown_code is not None:
            return self.unknown_code
        return UNKNOWN_TERMINAL_CODES.get(family, UNKNOWN_TERMINAL_CODES["iso87"])

    def __len__(self) -> int:
        return len(self.profiles)

    def __iter__(self) -> Iterator[TerminalSecurityProfile]:
        return iter(self.profiles.values())

    def __contains__(self, terminal_id: object) -> bool:
        return terminal_id in self.profiles


# ---------------------------------------------------------------------------------------------------
# Value checks: each returns the value to use or raises ValueError with a reason fit to follow a key


def _text(value: Any, length: int, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string of {length} characters ({what}), got {value!r}")
    if len(value) != length or not all(" " <= char <= "~" for char in value):
        raise ValueError(
            f"must be exactly {length} printable ASCII characters ({what}; pad with spaces), "
            f"got {len(value)}: {value!r}"
        )
    return value


def _hex_bytes(value: Any, lengths: Iterable[int], what: str) -> bytes:
    """Hex text (spaces allowed between groups) of one of ``lengths`` bytes."""
    lengths = tuple(lengths)
    digits = " or ".join(str(2 * n) for n in lengths)
    if not isinstance(value, str):
        raise ValueError(f"must be {what} as a string of {digits} hex digits, got {value!r}")
    text = value.replace(" ", "")
    if not _HEX.fullmatch(text) or len(text) % 2:
        raise ValueError(f"must be {digits} hex digits ({what}), got {value!r}")
    if len(text) // 2 not in lengths:
        raise ValueError(f"must be {digits} hex digits ({what}), got {len(text)}")
    return bytes.fromhex(text)


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be an integer {low}..{high}, got {value!r}")
    return value


def _pins(src: _ProfileSource, value: Any, key: KeyPath) -> Mapping[str, str]:
    table = _table(src, value, key, 'a table of PAN = PIN, e.g. { 6270000000000000 = "123456" }')
    pins: dict[str, str] = {}
    for pan, pin in table.items():
        if not (pan.isascii() and pan.isdigit() and 8 <= len(pan) <= 19):
            raise src.error((*key, pan), f"must be a card number of 8 to 19 digits, got {pan!r}")
        if not (isinstance(pin, str) and pin.isascii() and pin.isdigit() and len(pin) in PIN_LENGTHS):
            raise src.error((*key, pan), 'PIN must be a string of 4 to 12 digits, e.g. "123456"')
        pins[pan] = pin
    return MappingProxyType(pins)


# ---------------------------------------------------------------------------------------------------
# Parsing


class _Terminal:
    """One [[terminal]] table with [defaults] behind it; errors point where each value was written."""

    def __init__(self, src: _ProfileSource, table: Mapping[str, Any], defaults: Mapping[str, Any], index: int):
        self.src = src
        self.table = table
        self.defaults = defaults
        self.index = index

    def origin(self, name: str) -> KeyPath:
        return ("terminal", self.index, name) if name in self.table else ("defaults", name)

    def has(self, name: str) -> bool:
        return name in self.table or name in self.defaults

    def raw(self, name: str) -> Any:
        return self.table[name] if name in self.table else self.defaults[name]

    def error(self, name: str, reason: str) -> ProfileError:
        return self.src.error(self.origin(name), reason)

    def required(self, name: str, hint: str) -> Any:
        if not self.has(name):
            raise self.src.error(("terminal", self.index, name), f"missing ({hint})")
        return self.raw(name)

    def check(self, name: str, validate: Callable[..., Any], *args: Any) -> Any:
        try:
            return validate(self.raw(name), *args)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None


def _profile(term: _Terminal, registry: DialectRegistry) -> TerminalSecurityProfile:
    src = term.src
    term.required("terminal_id", 'field 41, e.g. terminal_id = "CUP00001"')
    terminal_id = term.check("terminal_id", _text, 8, "field 41, terminal id")
    term.required("merchant_id", 'field 42, e.g. merchant_id = "898100012340001"')
    merchant_id = term.check("merchant_id", _text, 15, "field 42, merchant id")

    static_given = term.has("pin_key") or term.has("mac_key")
    tmk = None
    if term.has("tmk") or not static_given:
        term.required("tmk", "the terminal master key in hex, a TEST key; or static pin_key and mac_key")
        tmk = term.check("tmk", _hex_bytes, KEY_LENGTHS, "the terminal master key")
    if term.has("tmk_check"):
        if tmk is None:
            raise term.error("tmk_check", "there is no tmk to check")
        expected = term.check("tmk_check", _hex_bytes, (3, 4), "the TMK check value")
        actual = check_value(tmk, len(expected))
        if actual != expected:
            raise term.error(
                "tmk_check", f"the tmk's check value is {actual.hex().upper()}, not {expected.hex().upper()}: a typo?"
            )

    name = term.required("dialect", 'the dialect this terminal speaks, e.g. dialect = "cup-pos"')
    if not isinstance(name, str) or not name:
        raise term.error("dialect", f"must be a dialect name, got {name!r}")
    try:
        dialect = registry.load(name)
    except DialectError as exc:
        raise term.error("dialect", str(exc)) from None

    overrides: dict[str, Any] = {}
    if term.has("framing"):
        key = term.origin("framing")
        overrides = dict(_table(src, term.raw("framing"), key, 'a table such as { length_header = "binary2" }'))
        _check_keys(src, overrides, key, sorted(FRAMING_KEYS))
        try:
            framing = Framing.from_dialect(dialect, **overrides)
        except FramingError as exc:
            culprit = next((option for option in overrides if exc.reason.startswith(f"{option} ")), None)
            raise src.error((*key, culprit) if culprit else key, exc.reason) from None
    else:
        framing = Framing.from_dialect(dialect)

    tpdu = None
    if term.has("tpdu"):
        tpdu = term.check("tpdu", _hex_bytes, (TPDU_LENGTH,), "the TPDU: 60, destination, source")
        if not framing.tpdu:
            raise term.error(
                "tpdu", f"dialect {dialect.name} frames without a TPDU; add framing = {{ tpdu = true }} or drop tpdu"
            )

    mac = term.raw("mac") if term.has("mac") else ("cup-ecb" if dialect.family == "cup" else "none")
    if mac not in MAC_CHOICES:
        raise term.error("mac", f"must be one of {', '.join(MAC_CHOICES)}, got {mac!r}")

    layout = DEFAULT_KEY_LAYOUT
    if term.has("key_layout"):
        layout = term.raw("key_layout")
        if isinstance(layout, bool) or layout not in KEY_LAYOUTS:
            known = " | ".join(str(size) for size in sorted(KEY_LAYOUTS))
            raise term.error("key_layout", f"must be a field 62 size in bytes: {known}, got {layout!r}")

    static_keys = _static_keys(term, mac)
    if static_keys is None and PREFERRED_MAC_KEY_LENGTH[mac] > KEY_LAYOUTS[layout].mac_slot:
        where = "key_layout" if term.has("key_layout") else "mac"
        raise term.error(
            where,
            f"mac {mac} needs a {PREFERRED_MAC_KEY_LENGTH[mac]}-byte MAC key, which key_layout {layout} "
            f"cannot carry; use key_layout = 40 or 60",
        )
    if static_keys is not None and tmk is not None:
        _check_static_keys_fit(term, static_keys, layout)

    pins: Mapping[str, str] = MappingProxyType({})
    if term.has("pins"):
        pins = _pins(src, term.raw("pins"), term.origin("pins"))
    pin_tries = term.check("pin_tries", _integer, 1, 99) if term.has("pin_tries") else DEFAULT_PIN_TRIES
    description = term.raw("description") if term.has("description") else ""
    if not isinstance(description, str):
        raise term.error("description", f"must be a string, got {description!r}")

    return TerminalSecurityProfile(
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        tmk=tmk,
        dialect=dialect.name,
        family=dialect.family,
        framing=framing,
        tpdu=tpdu,
        mac=mac,
        key_layout=layout,
        static_keys=static_keys,
        pins=pins,
        pin_tries=pin_tries,
        description=description.strip(),
        framing_overrides=MappingProxyType(overrides),
        line=src.line_of(("terminal", term.index)),
    )


def _static_keys(term: _Terminal, mac: str) -> WorkingKeys | None:
    """``pin_key`` + ``mac_key``: fixed working keys for terminals that get none at sign-on."""
    given = [name for name in ("pin_key", "mac_key") if term.has(name)]
    if not given:
        return None
    if len(given) == 1:
        other = "mac_key" if given[0] == "pin_key" else "pin_key"
        raise term.error(given[0], f"static working keys need both pin_key and mac_key; {other} is missing")
    pin_key = term.check("pin_key", _hex_bytes, KEY_LENGTHS, "the clear PIN working key")
    mac_lengths = MAC_KEY_LENGTHS.get(mac, KEY_LENGTHS)
    mac_key = term.check("mac_key", _hex_bytes, mac_lengths, f"the clear MAC working key for mac = {mac}")
    return WorkingKeys(pin_key, mac_key)  # lengths checked above, so this cannot refuse them


def _check_static_keys_fit(term: _Terminal, keys: WorkingKeys, layout: int) -> None:
    """With a tmk, the static keys travel in field 62 at every sign-on: they must fit ``layout``
    (else every sign-on would be answered 96)."""
    shape = KEY_LAYOUTS[layout]
    if shape.track_key:
        raise term.error("key_layout" if term.has("key_layout") else "pin_key",
                         f"key_layout {layout} carries a track key, which static keys do not have; "
                         "use key_layout = 24, 40 or 56")
    if len(keys.pin_key) != shape.key_length:
        raise term.error("pin_key", f"with a tmk the static keys are sent in field 62: key_layout {layout} needs "
                                    f"a {2 * shape.key_length}-hex-digit pin_key, got {2 * len(keys.pin_key)} "
                                    "(or choose the key_layout that fits it)")
    if len(keys.mac_key) > shape.mac_slot:
        raise term.error("mac_key", f"with a tmk the static keys are sent in field 62: key_layout {layout} carries "
                                    f"a mac_key of at most {2 * shape.mac_slot} hex digits, "
                                    f"got {2 * len(keys.mac_key)}")


def parse_profiles(text: str, path: str = "<profiles>", *, dialects: DialectRegistry | None = None) -> ProfileSet:
    """Validate profile TOML ``text`` (``path`` only names it in errors); dialects come from ``dialects``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _as_profile_error(_toml_error(path, exc)) from None
    src = _ProfileSource(path, MappingProxyType(key_lines(text)))
    _check_keys(src, data, (), TOP_KEYS)

    settings = _table(src, data.get("settings", {}), ("settings",))
    _check_keys(src, settings, ("settings",), SETTINGS_KEYS)
    unknown_code = None
    if "unknown_terminal_code" in settings:
        try:
            unknown_code = _response_code(settings["unknown_terminal_code"])
        except ValueError as exc:
            raise src.error(("settings", "unknown_terminal_code"), str(exc)) from None

    defaults = _table(src, data.get("defaults", {}), ("defaults",))
    if "terminal_id" in defaults:
        raise src.error(("defaults", "terminal_id"), "every terminal needs its own terminal_id; not a default")
    _check_keys(src, defaults, ("defaults",), DEFAULT_KEYS)

    tables = data.get("terminal", [])
    if isinstance(tables, Mapping):
        raise src.error(("terminal",), "write terminals as [[terminal]] tables, not [terminal]")
    if not isinstance(tables, list):
        raise src.error(("terminal",), f"must be an array of [[terminal]] tables, got {tables!r}")

    registry = DialectRegistry() if dialects is None else dialects
    profiles: dict[str, TerminalSecurityProfile] = {}
    for index, raw in enumerate(tables):
        key: KeyPath = ("terminal", index)
        table = _table(src, raw, key)
        _check_keys(src, table, key, TERMINAL_KEYS)
        profile = _profile(_Terminal(src, table, defaults, index), registry)
        if profile.terminal_id in profiles:
            first = profiles[profile.terminal_id].line
            raise src.error(
                (*key, "terminal_id"), f"terminal {profile.terminal_id!r} is already defined (line {first})"
            )
        profiles[profile.terminal_id] = profile
    return ProfileSet(path, MappingProxyType(profiles), unknown_code)


def load_profiles(path: str | os.PathLike[str], *, dialect_path: Iterable[str | os.PathLike[str]] = ()
                  ) -> ProfileSet:
    """Read and validate a profile file; dialect names are looked up in ``dialect_path`` first."""
    shown = str(path)
    try:
        text = _read(Path(path), shown)
        registry = DialectRegistry(dialect_path)
    except ScenarioError as exc:
        raise _as_profile_error(exc) from None
    except DialectError as exc:
        raise ProfileError(shown, None, None, str(exc)) from None
    return parse_profiles(text, shown, dialects=registry)


def example_profiles_path() -> Path:
    """The shipped example profile file (two test terminals), a starting point for your own."""
    from importlib.resources import files

    return Path(str(files("specs") / "profiles" / "example.toml"))
