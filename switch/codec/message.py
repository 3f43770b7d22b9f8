"""The one codec: a decoded ``Message`` and ``Codec.encode`` / ``Codec.decode`` over a loaded dialect.

A thin layer over pyiso8583 so the overhead stays small: field values are kept exactly as
pyiso8583 decodes them (text as ``str``, binary and BCD as upper-case hex digits), keyed by
field number. Everything that can go wrong in decoding comes out as ``MessageDecodeError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import iso8583

from switch.codec.dialect import Dialect

_STRUCTURAL = frozenset(("h", "t", "p", "1", "65"))


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
    """Encoder/decoder bound to one dialect."""

    __slots__ = ("dialect", "_spec")

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self._spec = dialect.spec

    def decode(self, raw: bytes | bytearray | memoryview) -> Message:
        """Decode one message (no length header, no TPDU). Raises only ``MessageDecodeError``."""
        data = bytes(raw)
        try:
            decoded, _ = iso8583.decode(data, self._spec)
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
        header = decoded.pop("h", "")
        mti = decoded.pop("t")
        fields = {int(k): v for k, v in decoded.items() if k not in _STRUCTURAL}
        return Message(mti, fields, header)

    def encode(self, message: Message) -> bytes:
        """Encode a message (no length header). Raises ``MessageEncodeError`` naming the field."""
        doc: dict[str, str] = {str(k): v for k, v in message.fields.items()}
        doc["t"] = message.mti
        if self.dialect.header_length:
            doc["h"] = message.header
        try:
            data, _ = iso8583.encode(doc, self._spec)
        except iso8583.EncodeError as exc:
            raise MessageEncodeError(exc.msg, field=exc.field) from None
        except KeyError as exc:
            raise MessageEncodeError(f"field {exc.args[0]} is not defined in dialect {self.dialect.name}",
                                     field=str(exc.args[0])) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise MessageEncodeError(f"cannot encode: {exc}", field="?") from None
        return bytes(data)
