"""The message layer shared by the switch and the terminal: dialects, codec, framing."""

from switch.codec.dialect import Dialect, DialectError, DialectRegistry, FieldDef, load_dialect
from switch.codec.message import Codec, CodecError, Message, MessageDecodeError, MessageEncodeError

__all__ = [
    "Codec",
    "CodecError",
    "Dialect",
    "DialectError",
    "DialectRegistry",
    "FieldDef",
    "Message",
    "MessageDecodeError",
    "MessageEncodeError",
    "load_dialect",
]
