"""Generated straight-line encode/decode for one dialect: the fast path in front of pyiso8583.

pyiso8583's generic per-field walk (spec look-ups, doc_enc bookkeeping, error plumbing) costs
more than the work itself. For each field tuple (encode) and each bitmap met twice (decode: a
compile costs ~1 ms, so one-off garbage bitmaps stay on pyiso8583) this module writes a Python
function with the offsets, widths, pads and bitmap bytes as constants, compiles it once and caches
it (512 shapes at most per codec). The generated code only ever *accepts*: anything unusual (short or extra
bytes, a bad digit, a lower-case hex bitmap, an all-zero secondary bitmap, an odd pad it does not
recognise, a non-str value, an exception of any kind) makes it return None, and ``Codec`` then
runs the pyiso8583 path, which stays the reference and produces every error. So errors are
identical by construction; tests/test_codec_compiled.py proves accepted results identical too.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from typing import Any

from switch.codec.bcd import from_signed_bcd, strip_odd_pad, to_signed_bcd
from switch.codec.dialect import Dialect

_CACHE_SIZE = 512  # distinct bitmaps / field tuples remembered; hostile input cannot grow it further
_DIGITS = b"0123456789"
_HEX = b"0123456789ABCDEF"
_TRACK = b"0123456789:;<=>?D"
_BCD_TRACK = b"0123456789D"

Decoder = Callable[[bytes], Any]
Encoder = Callable[..., bytes | None]


def _signed_ok(value: str) -> bool:
    return value[:1] in ("C", "D") and value[1:].isascii() and not value[1:].encode().translate(None, _DIGITS)


class _Field:
    """How one field travels, derived once from the dialect (``kind`` picks the generated code)."""

    def __init__(self, number: int, dialect: Dialect):
        fdef = dialect.fields[number]
        spec: Mapping[str, Any] = dialect.spec[str(number)]
        self.number = number
        self.max = spec["max_len"]
        self.width = spec["len_type"]
        self.len_enc = spec["len_enc"]
        self.enc = spec["data_enc"]
        self.pad_left = spec.get("left_pad", "")[:1]
        self.pad_right = spec.get("right_pad", "")[:1]
        self.nibbles = spec.get("len_count", "bytes") == "nibbles"
        self.lenient = bool(spec.get("pad_lenient"))
        self.signed = fdef.signed_bcd  # pad side of a sign-byte + BCD x+n field
        self.digits = fdef.max - 1
        if fdef.signed_bcd:
            self.kind = "signed"
        elif self.enc == "b" and self.nibbles:
            self.kind = "bcd"
        elif self.enc == "b":
            self.kind = "raw"
        elif fdef.type == "b":
            self.kind = "hextext"
        else:
            self.kind = "text"
        # the content class the reference checks: digits, track, bcd track, hex, x+n, or none
        if fdef.type == "n":
            self.check = "digits"
        elif fdef.type == "z":
            self.check = "bcdtrack" if self.enc == "b" else "track"
        elif fdef.type == "xn":
            self.check = "signed"
        elif fdef.type == "b":
            self.check = "hex"
        else:
            self.check = ""
        self.supported = (self.len_enc in ("ascii", "bcd", "b")
                          and (self.kind != "bcd" or self.lenient or not self.max % 2 or self.width))


def _check_value(fld: _Field, v: str, lines: list[str], checks: dict[str, list[str]]) -> None:
    """The check of one field value in generated code: a signed amount on its own line (a field of
    kind "signed" was checked while converting), other checks batched per kind after the loop."""
    if fld.check == "signed" and fld.kind != "signed":
        lines.append(f"    if not _signed_ok({v}): return None")
    elif fld.check in checks:
        checks[fld.check].append(v)


class CompiledCodec:
    """Per-dialect cache of generated functions; ``decode``/``encode`` return None to mean "ask pyiso8583"."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        spec = dialect.spec
        self.fields = {n: _Field(n, dialect) for n in dialect.fields}
        self.header_len = spec["h"]["max_len"] if dialect.header_length else 0
        self.header_raw = spec["h"]["data_enc"] == "b"
        self.header_enc = spec["h"]["data_enc"]
        self.mti_bcd = spec["t"]["data_enc"] == "b"
        self.bitmap_text = spec["p"]["data_enc"] != "b"
        self.bitmap_enc = spec["p"]["data_enc"]
        self.bitmap_width = 16 if self.bitmap_text else 8
        self.bitmap_hex = _HEX.decode().encode(self.bitmap_enc) if self.bitmap_text else b""  # e.g. EBCDIC
        self.start = self.header_len + (2 if self.mti_bcd else 4)
        self._decoders: dict[bytes, Decoder | None] = {}
        self._seen: set[bytes] = set()  # bitmaps met once; a compile (~1 ms) waits for the second
        self._encoders: dict[tuple[Any, ...], Encoder | None] = {}

    # --- decode -------------------------------------------------------------------------------

    def decode(self, data: bytes) -> tuple[str, dict[int, str], str] | None:
        """(MTI, fields, header) of ``data``, or None when pyiso8583 must decide."""
        at, width = self.start, self.bitmap_width
        end = at + width
        key = data[at:end]
        if self.bitmap_text:
            if len(key) != 16 or key.translate(None, self.bitmap_hex):
                return None
            secondary = int(key[:1].decode(self.bitmap_enc), 16) & 8
        else:
            if len(key) != 8:
                return None
            secondary = key[0] & 0x80
        if secondary:
            key = data[at:end + width]
            if len(key) != 2 * width:
                return None
        try:
            decoder = self._decoders[key]
        except KeyError:
            if key not in self._seen:  # compile on the second sighting: noise must not cost a compile
                if len(self._seen) >= _CACHE_SIZE:
                    self._seen.clear()
                self._seen.add(key)
                return None
            decoder = self._build_decoder(key)
        if decoder is None:
            return None
        result: tuple[str, dict[int, str], str] | None = decoder(data)
        return result

    def _bitmap_fields(self, key: bytes) -> list[int] | None:
        if self.bitmap_text and (len(key) not in (16, 32) or key.translate(None, self.bitmap_hex)):
            return None  # lower case or non-hex secondary: the reference decides
        raw = bytes.fromhex(key.decode(self.bitmap_enc)) if self.bitmap_text else key
        if len(raw) != (16 if raw[:1] >= b"\x80" else 8):
            return None  # bit 1 and the bitmap bytes present must agree
        numbers = [i * 8 + bit + 1 for i, byte in enumerate(raw) for bit in range(8) if byte >> (7 - bit) & 1]
        if len(raw) == 16 and (not any(raw[8:]) or 65 in numbers):
            return None  # all-zero secondary (re-encoded differently) or a tertiary bitmap
        numbers = [n for n in numbers if n != 1]
        if not all(n in self.fields and self.fields[n].supported for n in numbers):
            return None
        return numbers

    def _build_decoder(self, key: bytes) -> Decoder | None:
        if len(self._decoders) >= _CACHE_SIZE:
            self._decoders.clear()
        numbers = self._bitmap_fields(key)
        decoder = None if numbers is None else self._generate_decoder(numbers, self.start + len(key))
        self._decoders[key] = decoder
        return decoder

    def _generate_decoder(self, numbers: list[int], offset: int) -> Decoder:
        lines = ["def decode(data):", "    n = len(data)"]
        env: dict[str, Any] = {"_strip_pad": strip_odd_pad, "_signed_ok": _signed_ok, "_from_signed": from_signed_bcd,
                               "_DIGITS": _DIGITS, "_HEX": _HEX, "_TRACK": _TRACK, "_BCD_TRACK": _BCD_TRACK}
        h = self.header_len
        if h:
            lines.append(f"    header = data[0:{h}].hex().upper()" if self.header_raw
                         else f"    header = data[0:{h}].decode({self.header_enc!r})")
        else:
            lines.append("    header = ''")
        if self.mti_bcd:
            lines.append(f"    mti = data[{h}:{h + 2}].hex()")
        else:
            lines.append(f"    mti = data[{h}:{h + 4}].decode('ascii')")
        lines.append("    if not (mti.isdigit() and mti.isascii()): return None")
        checks: dict[str, list[str]] = {"digits": [], "track": [], "bcdtrack": [], "hex": []}
        text_checks: list[str] = []  # ASCII text fields sliced from the latin-1 view ``s``
        if any(self.fields[n].kind == "text" and self.fields[n].enc == "ascii" for n in numbers):
            lines.append("    s = data.decode('latin-1')")
        const = True  # offsets are literals until the first variable-length field
        pos: int | str = offset
        if not numbers:
            lines.append("    f = {}")
        for number in numbers:
            fld = self.fields[number]
            v = f"v{number}"
            at = str(pos) if const else "i"
            if fld.width:
                w = fld.width
                lines.append(f"    p = data[{at}:{at}+{w}]" if not const else f"    p = data[{pos}:{pos + w}]")
                if fld.len_enc == "ascii":
                    lines.append("    if not p.isdigit(): return None")
                    lines.append("    ln = int(p)")
                elif fld.len_enc == "bcd":
                    lines.append("    ln = int(p.hex(), 10)")
                else:
                    lines.append("    ln = int.from_bytes(p, 'big')")
                lines.append(f"    if ln > {fld.max}: return None")
                size = "(ln + 1) // 2" if fld.nibbles else "ln"
                start = f"{pos + w}" if const else f"i + {w}"
                lines.append(f"    a = {start}")
                lines.append(f"    i = a + {size}")
                sl = "data[a:i]"
                odd = "ln & 1"
                const = False
            else:
                size_bytes = (fld.max + 1) // 2 if fld.nibbles else fld.max
                if const:
                    assert isinstance(pos, int)
                    sl = f"data[{pos}:{pos + size_bytes}]"
                    pos += size_bytes
                else:
                    lines.append(f"    a = i; i = a + {size_bytes}")
                    sl = "data[a:i]"
                odd = "1" if fld.nibbles and fld.max % 2 else "0"
            if fld.kind == "text" and fld.enc == "ascii":  # one latin-1 decode, then one isascii check
                lines.append(f"    {v} = s{sl[4:]}")
                if not fld.check:  # the digit, track and x+n checks already refuse non-ASCII
                    text_checks.append(v)
            elif fld.kind == "text":
                lines.append(f"    {v} = {sl}.decode({fld.enc!r})")
            elif fld.kind == "hextext":
                lines.append(f"    {v} = {sl}.decode({fld.enc!r}).upper()")
                if fld.width:
                    lines.append(f"    if len({v}) & 1: return None")
            elif fld.kind == "raw":
                lines.append(f"    {v} = {sl}.hex().upper()")
            elif fld.kind == "signed":
                lines.append(f"    {v} = _from_signed({sl}.hex().upper(), {fld.digits}, {fld.signed!r})")
                lines.append(f"    if not _signed_ok({v}): return None")
            else:  # bcd nibbles; n needs no upper-casing: a-f fail its digit check either way
                lines.append(f"    {v} = {sl}.hex()" if fld.check == "digits" else f"    {v} = {sl}.hex().upper()")
                if odd != "0":
                    if not fld.lenient:
                        lines.append(f"    if {odd}: return None")
                    else:
                        lines.append(f"    if {odd}:")
                        lines.append(f"        {v} = _strip_pad({v}.upper(), {fld.pad_left!r}, {fld.pad_right!r})")
                        lines.append(f"        if {v} is None: return None")
            _check_value(fld, v, lines, checks)
        end = str(pos) if const else "i"
        lines.append(f"    if {end} != n: return None")
        if text_checks:
            joined = text_checks[0] if len(text_checks) == 1 else "''.join((" + ", ".join(text_checks) + ",))"
            lines.append(f"    if not {joined}.isascii(): return None")
        for name, values in checks.items():
            if values:
                joined = values[0] if len(values) == 1 else "''.join((" + ", ".join(values) + ",))"
                table = {"digits": "_DIGITS", "track": "_TRACK", "bcdtrack": "_BCD_TRACK", "hex": "_HEX"}[name]
                lines.append(f"    t = {joined}")
                lines.append(f"    if not t.isascii() or t.encode().translate(None, {table}): return None")
        if numbers:
            lines.append("    f = {" + ", ".join(f"{n}: v{n}" for n in numbers) + "}")
        lines.append("    return mti, f, header")
        return _compile(lines, env, "decode")

    # --- encode -------------------------------------------------------------------------------

    def encoder(self, shape: tuple[Any, ...]) -> Encoder | None:
        """The generated encoder for messages whose fields are ``shape`` (in that order), or None."""
        try:
            return self._encoders[shape]
        except KeyError:
            pass
        if len(self._encoders) >= _CACHE_SIZE:
            self._encoders.clear()
        ok = all(type(n) is int and n in self.fields and self.fields[n].supported for n in shape)
        encoder = self._generate_encoder(shape) if ok else None
        self._encoders[shape] = encoder
        return encoder

    def _bitmap_bytes(self, numbers: list[int]) -> bytes:
        secondary = any(n > 64 for n in numbers)
        raw = bytearray(16 if secondary else 8)
        for n in [*numbers, 1] if secondary else numbers:
            raw[(n - 1) // 8] |= 0x80 >> ((n - 1) % 8)
        if self.bitmap_text:
            return raw.hex().upper().encode(self.bitmap_enc)
        return bytes(raw)

    def _generate_encoder(self, shape: tuple[int, ...]) -> Encoder:
        params = ", ".join(f"v{n}" for n in shape)
        lines = [f"def encode(mti, header, {params}):" if shape else "def encode(mti, header):"]
        env: dict[str, Any] = {"_a2b": binascii.a2b_hex, "_signed_ok": _signed_ok, "_to_signed": to_signed_bcd,
                               "_DIGITS": _DIGITS, "_HEX": _HEX, "_TRACK": _TRACK, "_BCD_TRACK": _BCD_TRACK,
                               "_BITMAP": self._bitmap_bytes(sorted(shape))}
        lines.append("    if not (type(mti) is str and type(header) is str): return None")
        if shape:
            lines.append("    if not (" + " and ".join(f"type(v{n}) is str" for n in shape) + "): return None")
        lines.append("    if not (mti.isdigit() and mti.isascii()): return None")
        parts = []
        if self.header_len:
            if self.header_raw:
                lines.append("    hb = _a2b(header)")
            else:
                lines.append(f"    hb = header.encode({self.header_enc!r})")
            lines.append(f"    if len(hb) != {self.header_len}: return None")
            parts.append("hb")
        else:
            lines.append("    if header: return None")
        lines.append("    mb = _a2b(mti)" if self.mti_bcd else "    mb = mti.encode('ascii')")
        lines.append(f"    if len(mb) != {2 if self.mti_bcd else 4}: return None")
        parts += ["mb", "_BITMAP"]
        texts: set[str] = set()  # parts that are ASCII str: each run of them is encoded once, at the end
        checks: dict[str, list[str]] = {"digits": [], "track": [], "bcdtrack": [], "hex": []}
        for number in sorted(shape):
            fld = self.fields[number]
            v, b = f"v{number}", f"b{number}"
            if fld.check == "hex":
                lines.append(f"    {v} = {v}.upper()")
            if fld.kind == "text" and fld.enc == "ascii" and fld.len_enc in ("ascii", "b"):
                # as str: len() is the byte count once the run's one encode("ascii") succeeds (else the
                # encode raises and the reference path decides); no per-field encode
                _check_value(fld, v, lines, checks)
                if not fld.width:
                    lines.append(f"    if len({v}) != {fld.max}: return None")
                    parts.append(v)
                    texts.add(v)
                    continue
                lines.append(f"    ln = len({v})")
                lines.append(f"    if ln > {fld.max}: return None")
                if fld.len_enc == "ascii":
                    lines.append(f"    l{number} = '%0{fld.width}d' % ln")
                    texts.add(f"l{number}")
                else:
                    lines.append(f"    l{number} = ln.to_bytes({fld.width}, 'big')")
                parts += [f"l{number}", v]
                texts.add(v)
                continue
            if fld.kind == "text":
                lines.append(f"    {b} = {v}.encode({fld.enc!r})")
                size = f"len({b})"
            elif fld.kind == "hextext":
                lines.append(f"    if len({v}) & 1: return None")
                lines.append(f"    {b} = {v}.encode({fld.enc!r})")
                size = f"len({b})"
            elif fld.kind == "raw":
                lines.append(f"    {b} = _a2b({v})")
                size = f"len({b})"
            elif fld.kind == "signed":
                lines.append(f"    if len({v}) != {fld.digits + 1} or not _signed_ok({v}): return None")
                lines.append(f"    {b} = _a2b(_to_signed({v}, {fld.digits}, {fld.signed!r}))")
                size = f"len({b})"
            else:  # bcd nibbles: pad an odd count the way pyiso8583 does (left pad first)
                padded = (f"({fld.pad_left!r} + {v})" if fld.pad_left
                          else f"({v} + {fld.pad_right!r})" if fld.pad_right else None)
                if padded is None:
                    lines.append(f"    if len({v}) & 1: return None")
                    lines.append(f"    {b} = _a2b({v})")
                else:
                    lines.append(f"    {b} = _a2b({padded} if len({v}) & 1 else {v})")
                size = f"len({v})"
            _check_value(fld, v, lines, checks)
            if not fld.width:
                lines.append(f"    if {size} != {fld.max}: return None")
                parts.append(b)
                continue
            lines.append(f"    ln = {size}")
            lines.append(f"    if ln > {fld.max}: return None")
            w = fld.width
            if fld.len_enc == "ascii":
                lines.append(f"    l{number} = b'%0{w}d' % ln")
            elif fld.len_enc == "bcd":
                lines.append(f"    l{number} = _a2b('%0{2 * w}d' % ln)")
            else:
                lines.append(f"    l{number} = ln.to_bytes({w}, 'big')")
            parts += [f"l{number}", b]
        for name, values in checks.items():
            if values:
                joined = values[0] if len(values) == 1 else "''.join((" + ", ".join(values) + ",))"
                table = {"digits": "_DIGITS", "track": "_TRACK", "bcdtrack": "_BCD_TRACK", "hex": "_HEX"}[name]
                lines.append(f"    t = {joined}")
                lines.append(f"    if not t.isascii() or t.encode().translate(None, {table}): return None")
        runs: list[list[str]] = []  # consecutive parts of one type: str runs become one bytes part
        for part in parts:
            if runs and (part in texts) == (runs[-1][0] in texts):
                runs[-1].append(part)
            else:
                runs.append([part])
        pieces = [(run[0] if len(run) == 1 else "''.join((" + ", ".join(run) + ",))") + ".encode('ascii')"
                  if run[0] in texts else ", ".join(run) for run in runs]
        lines.append("    return b''.join((" + ", ".join(pieces) + ",))")
        return _compile(lines, env, "encode")


def _compile(lines: list[str], env: dict[str, Any], name: str) -> Any:
    """Compile generated source (built only from the dialect's own numbers and codec names)."""
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<generated {name}>", "exec"), env)
    env[name].__source__ = source
    return env[name]
