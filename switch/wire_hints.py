"""What undecodable bytes probably are, for one line a person can act on. Pure: no I/O, no logging.

"Failed to decode field, invalid data (field t, byte offset 0)" names pyiso8583's internal element
and leaves the reader guessing. The usual cause in the first hour is not a broken peer but a
mismatch: the other side speaks another dialect (ASCII vs binary bitmap, BCD MTIs), another
framing (a TPDU or not, another length header), TLS against a plain port (or the reverse), or is
not an ISO 8583 peer at all (HTTP). These functions recognise those cases:

* ``sniff_protocol(data)``: TLS records (ClientHello 0x16 0x03, alerts 0x15 0x03), HTTP, SSH.
* ``hint_for_undecodable(frame, dialect, framing)``: a whole frame (TPDU + message) that the
  dialect cannot decode; tries every shipped dialect, with and without a TPDU, and says which one
  does decode it, else what the first bytes look like.
* ``hint_for_framing_error(exc, framing)``: the length header made no sense (oversize, truncated).
* ``readable_decode_error(exc)``: the decode error with its element named ("the MTI", not "field t").

``peer`` says who sent the bytes, so the advice fits the side reading them: ``"client"`` (the switch
reading a terminal's request) or ``"host"`` (the terminal reading a reply).
"""

from __future__ import annotations

import functools
from typing import Literal

from switch.codec.dialect import Dialect, DialectError, DialectRegistry
from switch.codec.framing import TPDU_LENGTH, Framing, FramingError, OversizeFrameError, TruncatedFrameError
from switch.codec.message import Codec, CodecError, MessageDecodeError

__all__ = [
    "ELEMENT_NAMES",
    "Peer",
    "hint_for_framing_error",
    "hint_for_undecodable",
    "readable_decode_error",
    "sniff_protocol",
]

Peer = Literal["client", "host"]

ELEMENT_NAMES = {"h": "the header", "t": "the MTI", "p": "the primary bitmap", "1": "the secondary bitmap"}
"""pyiso8583's element names → words (a field number stays "field N")."""

_TLS_RECORD_TYPES = {0x14: "change-cipher-spec", 0x15: "alert", 0x16: "handshake", 0x17: "application data"}
_HTTP_STARTS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"HTTP/")
_TPDU_IDS = (0x60, 0x68)  # the TPDU id byte of CUP terminals (60) and of some acquirers (68)


def readable_decode_error(exc: MessageDecodeError) -> str:
    """``Failed to decode field, invalid data (field t, byte offset 0)`` → ``... at the MTI (byte 0)``."""
    element = ELEMENT_NAMES.get(exc.field, f"field {exc.field}")
    return f"{exc.reason} at {element} (byte {exc.offset})"


def sniff_protocol(data: bytes, peer: Peer = "client") -> str | None:
    """A hint when ``data`` (the first bytes from the peer) is TLS, HTTP or SSH rather than ISO 8583."""
    if len(data) >= 2 and data[0] in _TLS_RECORD_TYPES and data[1] == 0x03 and (len(data) < 3 or data[2] <= 0x04):
        record = _TLS_RECORD_TYPES[data[0]]
        if peer == "client":
            return (f"this looks like TLS ({record} record, bytes {data[:3].hex(' ')}): the client speaks TLS "
                    "to a plain listener; serve it with --tls-cert/--tls-key (or tls=yes in --also-listen), or "
                    "connect without TLS")
        return (f"this looks like TLS ({record} record, bytes {data[:3].hex(' ')}): the host expects TLS on "
                "this port; connect with --tls, --tls-ca FILE or --tls-insecure")
    head = bytes(data[:8])
    if any(start.startswith(head) or head.startswith(start) for start in _HTTP_STARTS) and len(head) >= 2 \
            and head[:1].isalpha():
        where = "an HTTP client" if peer == "client" else "an HTTP server"
        return f"this looks like HTTP ({head!r}...): the peer is {where}, not an ISO 8583 {_other(peer)}"
    if head.startswith(b"SSH-"):
        return f"this looks like SSH ({head!r}...): the port belongs to an SSH server, not an ISO 8583 host"
    return None


def _other(peer: Peer) -> str:
    return "terminal" if peer == "client" else "host"


@functools.cache
def _shipped() -> tuple[Dialect, ...]:
    registry = DialectRegistry()
    found = []
    for name in registry.names():
        try:
            found.append(registry.load(name))
        except DialectError:
            continue
    return tuple(found)


def _decodes(dialect: Dialect, payload: bytes) -> bool:
    try:
        Codec(dialect).decode(payload)
    except (CodecError, ValueError):
        return False
    return True


def hint_for_undecodable(frame: bytes, dialect: Dialect, framing: Framing, peer: Peer = "client") -> str | None:
    """Why ``frame`` — the body after the length header: the TPDU when ``framing`` has one, then the
    message — is not a ``dialect`` message, when that can be told; None when nothing fits.

    Tried in order: another protocol (TLS, HTTP); the same dialect with the TPDU the other way round;
    another shipped dialect (with or without a TPDU); what the MTI and bitmap bytes look like.
    """
    sniffed = sniff_protocol(frame, peer)
    if sniffed is not None:
        return sniffed
    has_tpdu = framing.tpdu
    payload = frame[TPDU_LENGTH:] if has_tpdu else frame
    if has_tpdu and _decodes(dialect, frame):
        return (f"this looks like a different framing: the message has no TPDU before it, but {dialect.name} "
                f"here expects one; {_tpdu_advice(peer, want=False)}")
    if not has_tpdu and len(frame) > TPDU_LENGTH and frame[0] in _TPDU_IDS and _decodes(dialect, frame[TPDU_LENGTH:]):
        return (f"this looks like a different framing: a TPDU ({frame[:TPDU_LENGTH].hex()}) comes before the "
                f"message; {_tpdu_advice(peer, want=True)}")
    candidates = [(payload, "")]
    if has_tpdu:
        candidates.append((frame, " with no TPDU before it"))
    elif len(frame) > TPDU_LENGTH and frame[0] in _TPDU_IDS:
        candidates.append((frame[TPDU_LENGTH:], " after a TPDU"))
    for other in _shipped():
        if other.name == dialect.name:
            continue
        for body, tpdu_note in candidates:
            if body and _decodes(other, body):
                advice = (f"give the client's dialect with --also-listen PORT,dialect={other.name} or --dialect "
                          f"{other.name}" if peer == "client" else f"try --dialect {other.name}")
                return (f"this looks like a different dialect: it decodes as {other.name}{tpdu_note}, not as "
                        f"{dialect.name}; {advice}")
    return _encoding_hint(payload, dialect)


def _tpdu_advice(peer: Peer, *, want: bool) -> str:
    if peer == "client":
        return "serve with --tpdu" if want else "serve with --no-tpdu (tpdu=no in --also-listen)"
    return "the host's framing differs: check its TPDU setting and --dialect"


def _encoding_hint(payload: bytes, dialect: Dialect) -> str | None:
    """What the MTI and bitmap bytes look like, against what ``dialect`` expects."""
    payload = payload[dialect.header_length:]
    head = payload[:4]
    ascii_mti = len(head) == 4 and head.isdigit()
    bcd_mti = len(payload) >= 2 and payload[:2].hex().isdigit() and not ascii_mti
    wants_bcd = dialect.mti_encoding == "bcd"
    binary_bitmap = dialect.spec.get("p", {}).get("data_enc") == "b"
    if wants_bcd and ascii_mti:
        return (f"this looks like a different dialect: the MTI is ASCII text ({head.decode()}), {dialect.name} "
                "expects BCD (2 bytes): try iso87-binary or iso87-ascii")
    if not wants_bcd and bcd_mti:
        return (f"this looks like a different dialect: the MTI looks like BCD ({payload[:2].hex()}), "
                f"{dialect.name} expects 4 ASCII digits: try iso87-bcd")
    if ascii_mti and len(payload) >= 20:
        bitmap = payload[4:20]
        hex_text = all(chr(b) in "0123456789ABCDEFabcdef" for b in bitmap)
        if binary_bitmap and hex_text:
            return (f"this looks like a different dialect: the bitmap is hex text ({bitmap.decode()}), "
                    f"{dialect.name} expects 8 binary bytes: try iso87-ascii")
        if not binary_bitmap and not hex_text:
            return (f"this looks like a different dialect: the bitmap is binary ({payload[4:12].hex()}), "
                    f"{dialect.name} expects hex text: try iso87-binary")
    return None


def hint_for_framing_error(exc: FramingError, framing: Framing, peer: Peer = "client") -> str | None:
    """A hint for a length header that made no sense: what its bytes (and any bytes after) look like."""
    data = b""
    if isinstance(exc, TruncatedFrameError):
        data = exc.buffered
    elif isinstance(exc, OversizeFrameError):
        declared = exc.declared + (framing.header_size if framing.length_includes_itself else 0)
        data = framing.header_saying(declared)
    if data:
        sniffed = sniff_protocol(data, peer)
        if sniffed is not None:
            return sniffed
    if isinstance(exc, OversizeFrameError) and framing.length_header.startswith("binary") and data.isdigit():
        return (f"this looks like a different framing: the length header is ASCII digits ({data.decode()}), "
                f"not {framing.length_header}: try --length-header ascii4 (or ascii2)")
    if isinstance(exc, OversizeFrameError):
        return (f"this looks like a different framing: a {framing.length_header} length header of {data.hex()} "
                f"announces {exc.declared} bytes; check --length-header (and --length-includes-itself)")
    return None
