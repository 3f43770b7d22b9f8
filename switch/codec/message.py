"""The one codec: a decoded ``Message`` and ``Codec.encode`` / ``Codec.decode`` over a loaded dialect.

A thin layer over pyiso8583 so the overhead stays small: field values are kept exactly as
pyiso8583 decodes them (text as ``str``, binary and BCD as upper-case hex digits), keyed by
field number. Everything that can go wrong in decoding comes out as ``MessageDecodeError``, and
in encoding as ``MessageEncodeError``, both naming the element at fault. On top of pyiso8583 the
codec enforces each ISO class's content (see ``Codec``), the same way in both directions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import iso8583
import iso8583.decoder

from switch.codec.bcd import from_signed_bcd, strip_odd_pad, to_signed_bcd
from switch.codec.compiled import CompiledCodec
from switch.codec.dialect import Dialect

_STRUCTURAL = frozenset(("h", "t", "p", "1", "65"))
_DIGITS = b"0123456789"
_HEX_DIGITS = b"0123456789ABCDEF"
# Track 2/3 characters (ISO/IEC 7813 code points 0x30-0x3F) plus 'D', the field separator as
# hex-expanded BCD track data shows it.
_TRACK_CHARS = b"0123456789:;<=>?D"
_BCD_TRACK_CHARS = b"0123456789D"
_PLAN_CACHE_SIZE = 512  # distinct field sets remembered per codec; real traffic has a few dozen


def _only(value: str, allowed: bytes) -> bool:
    """Whether every character of ``value`` is one of the ASCII ``allowed`` ones.

    Deleting the allowed bytes from the encoded text is a C-level table scan, several times faster
    than str.isdigit or str.strip on this hot path; isascii (O(1)) keeps other characters out.
    """
    return value.isascii() and not value.encode().translate(None, allowed)


def _digits_fault(value: str) -> str | None:
    return None if _only(value, _DIGITS) else "must hold digits only"


def _track_fault(value: str) -> str | None:
    return None if _only(value, _TRACK_CHARS) else "must hold track characters only (0-9 : ; < = > ? D)"


def _bcd_track_fault(value: str) -> str | None:
    return None if _only(value, _BCD_TRACK_CHARS) else "must hold track digits and the D separator only"


def _signed_amount_fault(value: str) -> str | None:
    if value[:1] in ("C", "D") and _only(value[1:], _DIGITS):
        return None
    return "must be C (credit) or D (debit) followed by digits"


def _hex_fault(value: str) -> str | None:
    if _only(value, _HEX_DIGITS) and not len(value) % 2:
        return None
    return "must be hex digits, two per byte"


# pyiso8583 removes an odd BCD value's pad with the one convention its spec names and fails on any
# other; fields a dialect marks ``pad_lenient`` take every convention instead (strip_odd_pad). The
# hook is pyiso8583's own helper, replaced for those fields only, so other specs decode as before.
_pyiso8583_remove_pad = iso8583.decoder._remove_pad_field


def _remove_pad_field(s: Any, idx: int, doc_dec: dict[str, Any], doc_enc: Any, field_key: str,
                      field_spec: Mapping[str, Any], enc_field_len: int) -> str:
    if field_spec.get("pad_lenient"):
        value = strip_odd_pad(doc_dec[field_key], field_spec.get("left_pad", "")[:1],
                               field_spec.get("right_pad", "")[:1])
        if value is not None:
            return value
    return _pyiso8583_remove_pad(s, idx, doc_dec, doc_enc, field_key, field_spec, enc_field_len)


iso8583.decoder._remove_pad_field = _remove_pad_field


class CodecError(ValueError):
    """Base of the codec's errors."""


class MessageDecodeError(CodecError):
    """Bytes that are not a message of the dialect.

    ``field`` is the element where decoding stopped (``"h"`` header, ``"t"`` MTI, ``"p"`` primary
    bitmap, ``"1"`` secondary bitmap, or a field number as text), ``offset`` the byte offset in
    ``raw`` where that element starts, ``partial`` the fields decoded before it.
    """

    def __init__(self, reason: str, *, field: str, offset: int, raw: bytes, partial: Mapping[str, str]):
        self.reason = reason
        self.field = field
        self.offset = offset
        self.raw = bytes(raw)
        self.partial = dict(partial)
        self.partial_wire: dict[str, tuple[bytes, bytes]] = {}  # filled by Codec.decode_detailed only
        super().__init__(f"{reason} (field {field}, byte offset {offset})")

    @property
    def mti(self) -> str | None:
        """The MTI if it was decoded before the failure (lets a host answer 30 to a readable request)."""
        mti = self.partial.get("t")
        return mti if mti and len(mti) == 4 and mti.isdigit() else None


class MessageEncodeError(CodecError):
    """A message that cannot be encoded in the dialect; names the field."""

    def __init__(self, reason: str, *, field: str):
        self.reason = reason
        self.field = field
        super().__init__(f"{reason} (field {field})")


@dataclass(slots=True)
class Message:
    """A decoded ISO 8583 message: MTI, optional dialect header and data elements by number."""

    mti: str
    fields: dict[int, str] = field(default_factory=dict)
    header: str = ""

    def __getitem__(self, number: int) -> str:
        return self.fields[number]

    def __setitem__(self, number: int, value: str) -> None:
        self.fields[number] = value

    def __delitem__(self, number: int) -> None:
        del self.fields[number]

    def __contains__(self, number: object) -> bool:
        return number in self.fields

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.fields))

    def get(self, number: int, default: str | None = None) -> str | None:
        return self.fields.get(number, default)

    def copy(self, *, mti: str | None = None, drop: tuple[int, ...] = (), **updates: Any) -> Message:
        """A new message with the MTI replaced and fields dropped; ``f39="00"`` style updates."""
        fields = {k: v for k, v in self.fields.items() if k not in drop}
        for key, value in updates.items():
            fields[int(key.removeprefix("f"))] = value
        return Message(mti or self.mti, fields, self.header)

    @property
    def response_mti(self) -> str:
        """Request MTI + 10 (0200 → 0210, 0401 → 0410): the origin digit is reset, class function+1."""
        return f"{self.mti[:2]}{int(self.mti[2]) + 1}0"


class Codec:
    """Encoder/decoder bound to one dialect.

    pyiso8583 enforces lengths and the wire form (BCD, hex, the text codec) but not what an ISO
    class allows, so the codec adds the content rules the wire form leaves open: n is digits, z is
    track characters, x+n is C/D then digits, b carried as hex text is whole bytes of hex, the MTI
    is four digits. Both directions apply the same rules, so whatever ``decode`` accepts ``encode``
    takes back, and a peer's malformed field is a ``MessageDecodeError`` naming it instead of a
    ValueError deep inside the host. To keep the layer thin, the per-field work for each set of
    present fields is planned once (``_Plan``) and reused by every message of that shape.
    """

    __slots__ = ("_decode_plans", "_digit_keys", "_encode_plans", "_fast", "_hex_bitmap", "_keys", "_numbers",
                 "_rule_keys", "_rules", "_signed", "_spec", "_text_length_keys", "dialect")

    def __init__(self, dialect: Dialect, *, fast: bool = True):
        self.dialect = dialect
        self._spec = dialect.spec
        self._keys = {number: str(number) for number in dialect.fields}  # field number -> pyiso8583 key
        self._numbers = {key: number for number, key in self._keys.items()}
        self._digit_keys = frozenset(self._keys[n] for n, f in dialect.fields.items() if f.type == "n")
        rules = {}
        for number, fdef in dialect.fields.items():
            hex_text = self._spec[str(number)]["data_enc"] != "b"  # not BCD nibbles / raw bytes
            if fdef.type == "xn":
                rules[str(number)] = _signed_amount_fault
            elif fdef.type == "z":
                rules[str(number)] = _track_fault if hex_text else _bcd_track_fault
            elif fdef.type == "b":  # raw or hex text alike, the value is hex digits, whole bytes
                rules[str(number)] = _hex_fault
        self._rules = rules
        self._rule_keys = frozenset(rules)
        # x+n fields carried as sign byte + BCD: key -> (digit count, pad side)
        self._signed = {str(n): (f.max - 1, f.signed_bcd) for n, f in dialect.fields.items() if f.signed_bcd}
        self._text_length_keys = frozenset(
            key for key, fspec in self._spec.items()
            if key in self._numbers and fspec["len_type"] and fspec["len_enc"] not in ("b", "bcd"))
        self._hex_bitmap = self._spec["p"]["data_enc"] != "b"
        self._decode_plans: dict[str, _Plan] = {}  # by bitmap text
        self._encode_plans: dict[tuple[Any, ...], _Plan] = {}  # by the message's field numbers in order
        # Generated straight-line functions (switch.codec.compiled) tried first; they only accept, and
        # anything they decline runs the pyiso8583 path below, which stays the reference for every error.
        self._fast: CompiledCodec | None = CompiledCodec(dialect) if fast else None

    def _plan(self, cache: dict[Any, _Plan], shape: Any, keys: list[str]) -> _Plan:
        if len(cache) >= _PLAN_CACHE_SIZE:
            cache.clear()
        plan = cache[shape] = _Plan(self, keys)
        return plan

    @staticmethod
    def _content_ok(plan: _Plan, doc: dict[str, Any]) -> bool:
        """Fast check of every field's content rule; False means ``_content_fault`` names the field.

        Same rules as ``_content_fault`` (and the same upper-casing of hex text), checked a class at a
        time over the joined values instead of field by field.
        """
        if plan.digits is not None:
            joined = plan.digits(doc)
            if type(joined) is tuple:  # several fields; one field comes back as its bare value
                joined = "".join(joined)
            if not joined.isascii() or joined.encode().translate(None, _DIGITS):
                return False
        if plan.tracks is not None:
            joined = plan.tracks(doc)
            if type(joined) is tuple:
                joined = "".join(joined)
            if not joined.isascii() or joined.encode().translate(None, _TRACK_CHARS):
                return False
        for key, rule in plan.rules:
            if rule is _hex_fault:
                doc[key] = doc[key].upper()
            if rule(doc[key]) is not None:
                return False
        return True

    def _content_fault(self, doc: dict[str, Any]) -> tuple[str, str] | None:
        """The first field (wire order) whose content breaks its class rule, else None.

        Hex-text binary fields are upper-cased in ``doc`` first, so either case is accepted and the
        decoded value keeps the codec's upper-case promise. Non-str values raise TypeError or
        AttributeError; ``encode`` turns that into an error naming the field.
        """
        faults: list[tuple[str, str]] = []
        for key in self._digit_keys.intersection(doc):
            reason = _digits_fault(doc[key])
            if reason is not None:
                faults.append((key, reason))
        for key in self._rule_keys.intersection(doc):
            rule = self._rules[key]
            if rule is _hex_fault:
                doc[key] = doc[key].upper()
            reason = rule(doc[key])
            if reason is not None:
                faults.append((key, reason))
        return min(faults, key=lambda fault: int(fault[0])) if faults else None

    def _wire_fault(self, decoded: dict[str, str], encoded: Mapping[str, Mapping[str, bytes]]
                    ) -> tuple[str, str] | None:
        """What pyiso8583 let through that this dialect does not allow, else None."""
        mti = decoded["t"]
        if not (mti.isdigit() and mti.isascii()):
            return "t", "MTI must be four digits"
        if self._hex_bitmap:
            for key in ("p", "1"):  # bytes.fromhex skips whitespace; a bitmap must not have any
                if key in decoded and not decoded[key].isalnum():
                    return key, "hex bitmap holds whitespace"
        if len(decoded.get("1", "")) > 16:
            return "65", f"bit 65 (tertiary bitmap) is set; dialect {self.dialect.name} has no fields 129-192"
        if self._text_length_keys:
            prefixed = self._text_length_keys.intersection(encoded)
            if prefixed and not b"".join([encoded[key]["len"] for key in prefixed]).isdigit():
                key = min((k for k in prefixed if not encoded[k]["len"].isdigit()), key=int)
                return key, "length prefix must be digits"  # int() would take ' 9', '+9', '1_0'
        return self._content_fault(decoded)

    def _decode_fault(self, fault: tuple[str, str], decoded: Mapping[str, str],
                      encoded: Mapping[str, Mapping[str, bytes]], data: bytes) -> MessageDecodeError:
        """The error for a ``_wire_fault``, located at its element's byte offset."""
        key, reason = fault
        element_at = "1" if key == "65" else key  # pyiso8583 appends the tertiary bitmap to "1"
        offset, partial = 0, {}
        for element, parts in encoded.items():
            if element == element_at:
                break
            offset += len(parts["len"]) + len(parts["data"])
            partial[element] = decoded[element]
        if key == "65":
            offset += len(encoded["1"]["data"]) // 2
            partial["1"] = decoded["1"][:16]
        return MessageDecodeError(reason, field=key, offset=offset, raw=data, partial=partial)

    def decode(self, raw: bytes | bytearray | memoryview) -> Message:
        """Decode one message (no length header, no TPDU). Raises only ``MessageDecodeError``."""
        data = bytes(raw)
        if self._fast is not None:
            try:
                found = self._fast.decode(data)
            except Exception:  # the generated code declines by any means; the reference decides
                found = None
            if found is not None:
                return Message(*found)
        try:
            decoded, encoded = iso8583.decode(data, self._spec)
        except iso8583.DecodeError as exc:
            raise MessageDecodeError(exc.msg, field=exc.field, offset=exc.pos, raw=data,
                                     partial=exc.doc_dec) from None
        except KeyError as exc:
            # A bit set for a field the dialect does not define (e.g. tertiary 129..192).
            raise MessageDecodeError(f"field {exc.args[0]} is not defined in dialect {self.dialect.name}",
                                     field=str(exc.args[0]), offset=-1, raw=data, partial={}) from None
        except Exception as exc:  # pyiso8583 must never leak another type to callers
            raise MessageDecodeError(f"undecodable: {exc}", field="?", offset=-1, raw=data,
                                     partial={}) from None
        if self._signed:
            self._signed_from_wire(decoded)
        mti = decoded["t"]
        bitmap = decoded["p"] + decoded["1"] if "1" in decoded else decoded["p"]
        if (mti.isdigit() and mti.isascii() and len(bitmap) <= 32
                and (not self._hex_bitmap or bitmap.isalnum())):
            plan = self._decode_plans.get(bitmap)
            if plan is None:
                plan = self._plan(self._decode_plans, bitmap, [k for k in decoded if k in self._numbers])
            if self._content_ok(plan, decoded) and (
                    not plan.lengths or b"".join([encoded[k]["len"] for k in plan.lengths]).isdigit()):
                header = decoded.pop("h", "")
                del decoded["t"], decoded["p"]
                decoded.pop("1", None)
                return Message(mti, dict(zip(plan.numbers, decoded.values(), strict=True)), header)
        fault = self._wire_fault(decoded, encoded) or ("?", "content check failed")
        raise self._decode_fault(fault, decoded, encoded, data)

    def decode_detailed(self, raw: bytes | bytearray | memoryview
                        ) -> tuple[Message, dict[str, tuple[bytes, bytes]]]:
        """Decode like ``decode`` and also return each element's wire bytes, for tools that show them.

        The second value maps "h", "t", "p", "1" and field numbers (as text) to (length prefix, data)
        in wire order. On failure the ``MessageDecodeError`` carries the elements read before it in
        an extra ``partial_wire`` attribute of the same shape. Kept apart from ``decode`` so the hot
        path does not build this mapping.
        """
        data = bytes(raw)
        try:
            decoded, encoded = iso8583.decode(data, self._spec)
        except Exception as exc:  # decode() turns every failure into the typed error, same wording
            read = exc.doc_enc if isinstance(exc, iso8583.DecodeError) else {}
            try:
                self.decode(data)
            except MessageDecodeError as error:
                error.partial_wire = {k: (bytes(v["len"]), bytes(v["data"])) for k, v in read.items()}
                raise error from None
            raise  # pragma: no cover - decode() cannot succeed where iso8583.decode failed
        if self._signed:
            self._signed_from_wire(decoded)
        wire = {k: (bytes(v["len"]), bytes(v["data"])) for k, v in encoded.items()}
        fault = self._wire_fault(decoded, encoded)
        if fault is not None:
            refusal = self._decode_fault(fault, decoded, encoded, data)
            refusal.partial_wire = {k: wire[k] for k in refusal.partial}
            raise refusal
        header = decoded.pop("h", "")
        mti = decoded.pop("t")
        fields = {int(k): v for k, v in decoded.items() if k not in _STRUCTURAL}
        return Message(mti, fields, header), wire

    def encode(self, message: Message) -> bytes:
        """Encode a message (no length header). Raises ``MessageEncodeError`` naming the field."""
        fields = message.fields
        shape = tuple(fields)
        if self._fast is not None:
            try:
                encoder = self._fast.encoder(shape)
                wire = None if encoder is None else encoder(message.mti, message.header, *fields.values())
            except Exception:  # declined; the reference path below encodes or names the fault
                wire = None
            if wire is not None:
                return wire
        plan = self._encode_plans.get(shape)
        if plan is None:
            undefined = [number for number in shape if number not in self._keys]
            if undefined:
                raise self._undefined_field(undefined[0])
            plan = self._plan(self._encode_plans, shape, [self._keys[number] for number in shape])
        doc: dict[str, Any] = dict(zip(plan.keys, fields.values(), strict=True))
        mti = doc["t"] = message.mti
        if self.dialect.header_length:
            doc["h"] = message.header
        elif message.header:
            raise MessageEncodeError(f"dialect {self.dialect.name} has no header", field="h")
        try:
            if not (mti.isdigit() and mti.isascii()):
                raise MessageEncodeError("MTI must be four digits", field="t")
            if not self._content_ok(plan, doc):
                key, reason = self._content_fault(doc) or ("?", "content check failed")
                raise MessageEncodeError(reason, field=key)
            if self._signed:
                self._signed_to_wire(doc)
            data, _ = iso8583.encode(doc, self._spec)
        except MessageEncodeError:
            raise
        except iso8583.EncodeError as exc:
            raise MessageEncodeError(exc.msg, field=exc.field) from None
        except Exception as exc:  # pyiso8583 raises TypeError, even UnboundLocalError, on non-str values
            raise self._bad_value(message, exc) from None
        return bytes(data)

    def _signed_from_wire(self, decoded: dict[str, Any]) -> None:
        for key in self._signed.keys() & decoded.keys():
            digits, pad_side = self._signed[key]
            decoded[key] = from_signed_bcd(decoded[key], digits, pad_side)

    def _signed_to_wire(self, doc: dict[str, Any]) -> None:
        for key in self._signed.keys() & doc.keys():
            digits, pad_side = self._signed[key]
            value = doc[key]
            if len(value) != digits + 1:
                raise MessageEncodeError(f"Field data is {len(value)} characters, expecting {digits + 1}",
                                         field=key)
            doc[key] = to_signed_bcd(value, digits, pad_side)

    def _undefined_field(self, key: object) -> MessageEncodeError:
        if key in (1, 65):
            reason = f"field {key} is a bitmap; the codec computes it"
        else:
            reason = f"field {key!r} is not defined in dialect {self.dialect.name}"
        return MessageEncodeError(reason, field=str(key))

    @staticmethod
    def _bad_value(message: Message, exc: Exception) -> MessageEncodeError:
        """Name the element whose value is not text (the usual cause of a TypeError here)."""
        if not isinstance(message.mti, str):
            return MessageEncodeError(f"MTI must be str, got {type(message.mti).__name__}", field="t")
        if not isinstance(message.header, str):
            return MessageEncodeError(f"header must be str, got {type(message.header).__name__}", field="h")
        for number in sorted(message.fields):
            value = message.fields[number]
            if not isinstance(value, str):
                return MessageEncodeError(f"value must be str, got {type(value).__name__}", field=str(number))
        return MessageEncodeError(f"cannot encode: {exc}", field="?")


class _Plan:
    """The per-field work of a codec for one set of present fields, worked out once.

    ``keys`` are the pyiso8583 keys in the message's order and ``numbers`` the same as ints;
    ``digits``/``tracks`` fetch the values of n / ASCII z fields so one join checks them all;
    ``rules`` are the field-by-field checks left (x+n, hex-text binary); ``lengths`` the fields whose
    length prefix is ASCII digits.
    """

    __slots__ = ("digits", "keys", "lengths", "numbers", "rules", "tracks")

    def __init__(self, codec: Codec, keys: list[str]):
        self.keys = tuple(keys)
        self.numbers = tuple(int(key) for key in keys)
        digit_keys = [key for key in keys if key in codec._digit_keys]
        track_keys = [key for key in keys if codec._rules.get(key) is _track_fault]
        self.digits = itemgetter(*digit_keys) if digit_keys else None
        self.tracks = itemgetter(*track_keys) if track_keys else None
        self.rules = tuple((key, codec._rules[key]) for key in keys
                           if key in codec._rules and codec._rules[key] is not _track_fault)
        self.lengths = tuple(key for key in keys if key in codec._text_length_keys)
