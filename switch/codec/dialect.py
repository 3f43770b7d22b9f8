"""Dialects as data: TOML files in specs/dialects (or a user directory) → pyiso8583 specs.

A dialect file states *what* each field is (ISO class, length type, maximum) and, once for the
whole dialect, *how* each class travels on the wire (ASCII or BCD numerics, raw or hex binary,
ASCII/BCD/binary length prefixes, binary or hex bitmap). The loader derives the pyiso8583 spec
from that, so a field layout is written once and a dialect that differs only in encoding
(``extends = "iso87-binary"``) repeats none of it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import specs

FAMILIES = ("iso87", "cup")  # message semantics the host/terminal apply (CUP: field 60, 48, header)
FIELD_TYPES = ("n", "z", "an", "ans", "anp", "xn", "b")
NUMERIC_TYPES = ("n", "z")
LENGTH_TYPES = {"fixed": 0, "L": 1, "LL": 2, "LLL": 3, "LLLL": 4}
NUMERIC_ENCODINGS = ("ascii", "bcd")
BINARY_ENCODINGS = ("raw", "hex")
LENGTH_ENCODINGS = ("ascii", "bcd", "binary")
BITMAP_ENCODINGS = ("binary", "hex")
PADS = ("left", "right")
DIALECT_KEYS = {
    "name", "title", "extends", "family", "mti", "numeric", "text", "binary", "length", "bitmap",
    "bcd_pad", "bcd_pad_char", "header", "framing", "fields", "remove_fields",
}
FIELD_KEYS = {"name", "type", "length", "max", "encoding", "length_encoding", "pad", "pad_char"}
HEADER_KEYS = {"length", "encoding", "name"}
FRAMING_KEYS = {"length_header", "length_includes_itself", "tpdu", "keepalive", "max_frame"}
SPECIAL_FIELDS = ("1", "65")  # bitmaps; pyiso8583 computes them
BCD_PAD_CHARS = ("0", "F")
MAX_FIELD_LENGTH = 99_999  # beyond any LLLL field; a bound so a typo'd 1e30 is named, not a crash later
# Printable ASCII: every text codec must carry these one byte each and give them back unchanged, or
# MTIs, response codes and terminal ids could never be read or answered.
_ASCII_PROBE = "".join(chr(c) for c in range(0x20, 0x7F))


class DialectError(ValueError):
    """A dialect file that cannot be used; names the file, the field and the key at fault."""

    def __init__(self, source: str, reason: str, *, field: str | None = None, key: str | None = None):
        self.source = source
        self.field = field
        self.key = key
        self.reason = reason
        where = source
        if field is not None:
            where += f": field {field}"
        if key is not None:
            where += f": key '{key}'"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class FieldDef:
    """One data element as the dialect declares it; ``max`` is in digits, characters or bytes."""

    number: int
    name: str
    type: str
    length: str  # one of LENGTH_TYPES
    max: int
    wire_numeric: bool  # carried as BCD nibbles (n/z in a BCD dialect)
    signed_bcd: str = ""  # x+n as sign character + BCD digits: the side of an odd digit count's pad

    @property
    def fixed(self) -> bool:
        return self.length == "fixed"


@dataclass(frozen=True, slots=True)
class FramingDefaults:
    """The framing a dialect is normally carried in; CLI flags override it."""

    length_header: str = "binary2"
    length_includes_itself: bool = False
    tpdu: bool = False
    keepalive: str = "ignore"
    max_frame: int = 8192


@dataclass(frozen=True, slots=True)
class Dialect:
    """A loaded dialect: the pyiso8583 spec plus what tools need to know about each field."""

    name: str
    title: str
    source: str
    family: str
    spec: Mapping[str, Mapping[str, Any]]
    fields: Mapping[int, FieldDef]
    header_length: int  # bytes of dialect header before the MTI (CUP: 6)
    header_name: str
    mti_encoding: str
    numeric: str
    framing: FramingDefaults = field(default_factory=FramingDefaults)

    def field_name(self, number: int) -> str:
        fd = self.fields.get(number)
        return fd.name if fd else f"Field {number}"


def _require(cond: bool, source: str, reason: str, *, field: str | None = None, key: str | None = None) -> None:
    if not cond:
        raise DialectError(source, reason, field=field, key=key)


def _choice(raw: Mapping[str, Any], key: str, allowed: Iterable[str], source: str, default: str,
            *, field: str | None = None) -> str:
    value = raw.get(key, default)
    allowed = tuple(allowed)
    _require(isinstance(value, str) and value in allowed, source,
             f"must be one of {', '.join(allowed)}, got {value!r}", field=field, key=key)
    return value


def _text_codec(name: Any, source: str, *, field: str | None = None, key: str = "text") -> str:
    """A codec name that carries printable ASCII one byte per character, both ways.

    Looking the name up is not enough: rot13 and base64 are codecs too, and a dialect using one
    would load and then never answer anything. So a probe of every printable ASCII character must
    encode to exactly one byte each and decode back unchanged (EBCDIC's cp500 passes, UTF-16 not).
    """
    _require(isinstance(name, str), source, f"must be a text encoding name, got {name!r}", field=field, key=key)
    try:
        wire = _ASCII_PROBE.encode(name)  # str.encode refuses bytes-to-bytes and str-to-str codecs
        back = wire.decode(name)
    except LookupError as exc:
        reason = "not a text encoding" if "text encoding" in str(exc) else "unknown text encoding"
        raise DialectError(source, f"{reason} {name!r}", field=field, key=key) from None
    except (UnicodeError, ValueError, TypeError) as exc:
        raise DialectError(source, f"text encoding {name!r} cannot carry printable ASCII ({exc})",
                           field=field, key=key) from None
    _require(len(wire) == len(_ASCII_PROBE) and back == _ASCII_PROBE, source,
             f"text encoding {name!r} does not carry printable ASCII one byte per character both ways",
             field=field, key=key)
    return name


def _length_width(length: str, length_encoding: str) -> int:
    """Bytes taken by a length prefix of ``length`` ('LL', 'LLL', ...) in the given encoding."""
    digits = LENGTH_TYPES[length]
    if length_encoding == "ascii":
        return digits
    if length_encoding == "bcd":
        return (digits + 1) // 2
    return 1 if digits <= 2 else 2  # binary: uint8 up to 255, uint16 beyond


class _Settings:
    """Dialect-wide wire settings (how each class of data travels)."""

    def __init__(self, raw: Mapping[str, Any], source: str):
        self.mti = _choice(raw, "mti", NUMERIC_ENCODINGS, source, "ascii")
        self.numeric = _choice(raw, "numeric", NUMERIC_ENCODINGS, source, "ascii")
        self.text = _text_codec(raw.get("text", "ascii"), source)
        self.binary = _choice(raw, "binary", BINARY_ENCODINGS, source, "raw")
        self.length = _choice(raw, "length", LENGTH_ENCODINGS, source, "ascii")
        self.bitmap = _choice(raw, "bitmap", BITMAP_ENCODINGS, source, "binary")
        self.bcd_pad = _choice(raw, "bcd_pad", PADS, source, "left")
        # what fills the spare nibble of an odd digit count when sending; decoding takes either
        self.bcd_pad_char = _choice(raw, "bcd_pad_char", BCD_PAD_CHARS, source, "0")


def _field_spec(number: str, raw: Mapping[str, Any], settings: _Settings, source: str
                ) -> tuple[FieldDef, dict[str, Any]]:
    """Validate one ``[fields]`` entry and derive its pyiso8583 field spec."""
    _require(isinstance(raw, Mapping), source, "must be a table", field=number)
    unknown = set(raw) - FIELD_KEYS
    _require(not unknown, source, f"unknown key (allowed: {', '.join(sorted(FIELD_KEYS))})",
             field=number, key=sorted(unknown)[0] if unknown else None)
    name = raw.get("name", f"Field {number}")
    _require(isinstance(name, str), source, "must be a string", field=number, key="name")
    ftype = _choice(raw, "type", FIELD_TYPES, source, "", field=number)
    length = _choice(raw, "length", LENGTH_TYPES, source, "fixed", field=number)
    maximum = raw.get("max")
    if not (isinstance(maximum, int) and not isinstance(maximum, bool) and maximum > 0):
        raise DialectError(source, f"must be a positive integer, got {_short(maximum)}", field=number, key="max")
    _require(maximum <= MAX_FIELD_LENGTH, source, f"must be at most {MAX_FIELD_LENGTH}, got {_short(maximum)}",
             field=number, key="max")

    length_encoding = _choice(raw, "length_encoding", LENGTH_ENCODINGS, source, settings.length, field=number)
    len_enc = {"ascii": "ascii", "bcd": "bcd", "binary": "b"}[length_encoding]
    len_type = 0 if length == "fixed" else _length_width(length, length_encoding)

    default_encoding = {"n": settings.numeric, "z": settings.numeric, "b": settings.binary}.get(ftype, settings.text)
    encoding = raw.get("encoding", default_encoding)
    if ftype == "xn" and encoding == "bcd":
        # jPOS IFB_AMOUNT: the sign as one text byte, then the digits as BCD; fixed length only
        _require(length == "fixed" and maximum >= 2, source,
                 "an x+n field in BCD must be fixed length, sign plus at least one digit", field=number, key="encoding")
        pad_side = _choice(raw, "pad", PADS, source, settings.bcd_pad, field=number)
        signed = {"data_enc": "b", "desc": name, "len_enc": "ascii", "len_type": 0, "max_len": 1 + maximum // 2}
        return FieldDef(int(number), name, ftype, length, maximum, False, pad_side), signed
    if ftype in NUMERIC_TYPES:
        _require(encoding in NUMERIC_ENCODINGS or encoding == settings.text, source,
                 f"numeric fields take one of {', '.join(NUMERIC_ENCODINGS)}, got {encoding!r}",
                 field=number, key="encoding")
    elif ftype == "b":
        _require(encoding in BINARY_ENCODINGS, source,
                 f"binary fields take one of {', '.join(BINARY_ENCODINGS)}, got {encoding!r}",
                 field=number, key="encoding")
    else:
        encoding = _text_codec(encoding, source, field=number, key="encoding")

    spec: dict[str, Any] = {"len_enc": len_enc, "len_type": len_type, "desc": name}
    wire_numeric = False
    if ftype in NUMERIC_TYPES and encoding == "bcd":
        wire_numeric = True
        pad_side = _choice(raw, "pad", PADS, source, settings.bcd_pad, field=number)
        pad_char = raw.get("pad_char", settings.bcd_pad_char if ftype == "n" else "F")
        _require(isinstance(pad_char, str) and len(pad_char) == 1 and pad_char in "0123456789ABCDEF",
                 source, f"must be one hex digit, got {pad_char!r}", field=number, key="pad_char")
        # pad_lenient: decoding also takes the other conventions (see switch.codec.message)
        spec.update(data_enc="b", max_len=maximum, len_count="nibbles", pad_lenient=True,
                    **{f"{pad_side}_pad": pad_char})
    elif ftype == "b" and encoding == "hex":
        spec.update(data_enc=settings.text, max_len=maximum * 2)
    elif ftype == "b":
        spec.update(data_enc="b", max_len=maximum)
    else:
        spec.update(data_enc="ascii" if encoding == "ascii" and ftype in NUMERIC_TYPES else encoding,
                    max_len=maximum)
    if len_type:
        capacity = _prefix_capacity(length, length_encoding, len_type)
        _require(spec["max_len"] <= capacity, source,
                 f"{spec['max_len']} does not fit a {length} {length_encoding} length prefix (max {capacity})",
                 field=number, key="max")
    fdef = FieldDef(int(number), name, ftype, length, maximum, wire_numeric)
    return fdef, dict(sorted(spec.items()))


def _prefix_capacity(length: str, length_encoding: str, width: int) -> int:
    if length_encoding == "binary":
        return 256**width - 1
    return 10 ** LENGTH_TYPES[length] - 1


def _short(value: Any) -> str:
    """repr cut to a readable size: a 5,000-digit integer in an error would bury the message."""
    if isinstance(value, int) and value.bit_length() >= 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _huge_integer_at(path: Path) -> tuple[str, str | None]:
    """Where tomllib met an integer too long to convert: (" at line N", key) or ("", None)."""
    import re
    import sys

    limit = sys.get_int_max_str_digits() or 4300
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "", None
    digits = re.compile(r"(?:([A-Za-z0-9_\-\"]+)\s*=\s*)?[+-]?[0-9_]{" + str(limit + 1) + ",}")
    for number, line in enumerate(lines, 1):
        found = digits.search(line)
        if found:
            key = found.group(1)
            return f" at line {number}", key.strip('"') if key else None
    return "", None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise DialectError(str(path), f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array/inline table
        raise DialectError(str(path), "not valid TOML: arrays or tables nested too deep") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file first and lets this through
        raise DialectError(str(path), f"not valid TOML: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DialectError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        line, key = _huge_integer_at(path)
        raise DialectError(str(path), f"not valid TOML: integer too long{line}", key=key) from None


class DialectRegistry:
    """Finds dialect files by name in the shipped directory plus any user directories.

    User directories come first, so a user can shadow a shipped dialect by name.
    """

    def __init__(self, extra_dirs: Iterable[str | os.PathLike[str]] = ()):
        self.search_path = [Path(d) for d in extra_dirs] + [specs.dialects_dir()]
        for directory in self.search_path[:-1]:
            if not directory.is_dir():
                raise DialectError(str(directory), "dialect path is not a directory")
        self._cache: dict[str, Dialect] = {}

    def names(self) -> list[str]:
        found: dict[str, None] = {}
        for directory in self.search_path:
            for path in sorted(directory.glob("*.toml")):
                found.setdefault(path.stem, None)
        return sorted(found)

    def path_of(self, name: str) -> Path:
        candidate = Path(name)
        if candidate.suffix == ".toml" and candidate.is_file():
            return candidate
        for directory in self.search_path:
            path = directory / f"{name}.toml"
            if path.is_file():
                return path
        raise DialectError(name, f"no such dialect (known: {', '.join(self.names())})")

    def load(self, name: str) -> Dialect:
        if name not in self._cache:
            path = self.path_of(name)
            self._cache[name] = build_dialect(self.merged_table(name), str(path), default_name=path.stem)
        return self._cache[name]

    def merged_table(self, name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
        """The raw table of ``name`` with its parents folded in (fields merged per number).

        A parent is fully loaded first, so an error in it names the parent's own file.
        """
        path = self.path_of(name)
        if name in chain:
            raise DialectError(str(path), f"'extends' forms a cycle: {' -> '.join((*chain, name))}",
                               key="extends")
        raw = _read_toml(path)
        unknown = set(raw) - DIALECT_KEYS
        _require(not unknown, str(path), f"unknown key (allowed: {', '.join(sorted(DIALECT_KEYS))})",
                 key=sorted(unknown)[0] if unknown else None)
        parent = raw.get("extends")
        if parent is None:
            return raw
        _require(isinstance(parent, str), str(path), "must be a dialect name", key="extends")
        try:
            self.path_of(parent)
        except DialectError as exc:  # name the file that asked for it, not just the missing name
            raise DialectError(str(path), f"{parent!r}: {exc.reason}", key="extends") from None
        base = self.merged_table(parent, (*chain, name))
        if parent not in self._cache:
            self.load(parent)
        return _merge(base, raw, str(path))


def _merge(base: Mapping[str, Any], child: Mapping[str, Any], source: str) -> dict[str, Any]:
    merged = {k: v for k, v in base.items() if k not in ("name", "title", "extends")}
    for key, value in child.items():
        if key in ("fields", "framing", "header") and isinstance(value, Mapping):
            table = dict(merged.get(key, {}))
            if key == "fields":
                for number, fdef in value.items():
                    table[number] = {**table.get(number, {}), **fdef} if isinstance(fdef, Mapping) else fdef
            else:
                table.update(value)
            merged[key] = table
        else:
            merged[key] = value
    remove = child.get("remove_fields", [])
    if not (isinstance(remove, list) and all(isinstance(n, int) for n in remove)):
        raise DialectError(source, "must be a list of field numbers", key="remove_fields")
    for number in remove:
        merged.get("fields", {}).pop(str(number), None)
    merged.pop("remove_fields", None)
    return merged


def build_dialect(merged: Mapping[str, Any], source: str, *, default_name: str = "dialect") -> Dialect:
    """Validate a dialect table (parents already merged in) and derive the pyiso8583 spec."""
    settings = _Settings(merged, source)
    name = merged.get("name", default_name)
    _require(isinstance(name, str) and bool(name), source, "must be a non-empty string", key="name")
    title = merged.get("title", name)
    _require(isinstance(title, str), source, "must be a string", key="title")

    header = merged.get("header", {})
    _require(isinstance(header, Mapping), source, "must be a table", key="header")
    unknown = set(header) - HEADER_KEYS
    _require(not unknown, source, f"unknown key in [header] (allowed: {', '.join(sorted(HEADER_KEYS))})",
             key=sorted(unknown)[0] if unknown else None)
    header_length = header.get("length", 0)
    _require(isinstance(header_length, int) and 0 <= header_length <= 64, source,
             f"must be an integer 0..64, got {_short(header_length)}", key="header.length")
    header_encoding = _choice(header, "encoding", ("raw", "ascii"), source, "raw")  # raw: bytes shown as hex

    spec: dict[str, dict[str, Any]] = {
        "h": {"data_enc": "b" if header_encoding == "raw" and header_length else "ascii", "len_enc": "ascii",
              "len_type": 0, "max_len": header_length, "desc": header.get("name", "Message Header")},
        "t": {"data_enc": "b" if settings.mti == "bcd" else "ascii", "len_enc": "ascii", "len_type": 0,
              "max_len": 2 if settings.mti == "bcd" else 4, "desc": "Message Type"},
    }
    bitmap = {"data_enc": "b", "max_len": 8} if settings.bitmap == "binary" else {
        "data_enc": settings.text, "max_len": 16}
    spec["p"] = {"len_enc": "ascii", "len_type": 0, **bitmap, "desc": "Bitmap, Primary"}
    spec["1"] = {"len_enc": "ascii", "len_type": 0, **bitmap, "desc": "Bitmap, Secondary"}

    raw_fields = merged.get("fields")
    if not (isinstance(raw_fields, Mapping) and raw_fields):
        raise DialectError(source, "a dialect needs a [fields] table", key="fields")
    fields: dict[int, FieldDef] = {}
    for number, fraw in raw_fields.items():
        # str(int(...)) == number: no "04" beside "4", no "065" slipping past the bitmap check
        _require(number.isdigit() and number == str(int(number)) and 2 <= int(number) <= 128
                 and number not in SPECIAL_FIELDS, source,
                 "field numbers are 2..128 without leading zeros (1 and 65 are bitmaps the codec computes)",
                 field=number)
        fdef, fspec = _field_spec(number, fraw, settings, source)
        fields[fdef.number] = fdef
        spec[str(fdef.number)] = fspec
    # Field 65 carries pyiso8583's tertiary-bitmap extension; describe it like the secondary one.
    spec["65"] = {"len_enc": "ascii", "len_type": 0, **bitmap, "desc": "Bitmap, Extended"}

    framing_raw = merged.get("framing", {})
    _require(isinstance(framing_raw, Mapping), source, "must be a table", key="framing")
    unknown = set(framing_raw) - FRAMING_KEYS
    _require(not unknown, source, f"unknown key in [framing] (allowed: {', '.join(sorted(FRAMING_KEYS))})",
             key=sorted(unknown)[0] if unknown else None)
    framing = _framing_defaults(framing_raw, source)
    ordered = {k: spec[k] for k in ("h", "t", "p", "1")}
    ordered.update({str(n): spec[str(n)] for n in sorted(fields)})
    ordered["65"] = spec["65"]
    family = _choice(merged, "family", FAMILIES, source, "iso87")
    return Dialect(name=name, title=title, source=source, family=family, spec=ordered,
                   fields=dict(sorted(fields.items())),
                   header_length=header_length, header_name=spec["h"]["desc"], mti_encoding=settings.mti,
                   numeric=settings.numeric, framing=framing)


def _framing_defaults(raw: Mapping[str, Any], source: str) -> FramingDefaults:
    from switch.codec.framing import LENGTH_HEADERS  # local: framing imports nothing from here

    defaults = FramingDefaults()
    length_header = _choice(raw, "length_header", LENGTH_HEADERS, source, defaults.length_header)
    keepalive = _choice(raw, "keepalive", ("ignore", "echo"), source, defaults.keepalive)
    flags = {}
    for key in ("length_includes_itself", "tpdu"):
        value = raw.get(key, getattr(defaults, key))
        _require(isinstance(value, bool), source, f"must be true or false, got {value!r}", key=f"framing.{key}")
        flags[key] = value
    max_frame = raw.get("max_frame", defaults.max_frame)
    _require(isinstance(max_frame, int) and 16 <= max_frame <= 1 << 20, source,
             f"must be an integer 16..1048576, got {_short(max_frame)}", key="framing.max_frame")
    return FramingDefaults(length_header=length_header, keepalive=keepalive, max_frame=max_frame, **flags)


_default_registry: DialectRegistry | None = None


def load_dialect(name: str = "iso87-binary", dialect_path: Iterable[str | os.PathLike[str]] = ()) -> Dialect:
    """Load a dialect by name (or path to a .toml file), searching ``dialect_path`` first."""
    global _default_registry
    extra = list(dialect_path)
    if extra:
        return DialectRegistry(extra).load(name)
    if _default_registry is None:
        _default_registry = DialectRegistry()
    return _default_registry.load(name)
