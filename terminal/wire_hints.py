"""The terminal's words for replies it cannot read: what went wrong, and what the bytes look like.

The driver (``terminal.client``) reports an unreadable reply to the policy as one line of text,
which ends up in the outcome and the journal notes. pyiso8583's own text names internal elements
("field t" is the MTI) and never says the likely cause: the host speaks another dialect or framing,
or TLS on a port the terminal reached in plain TCP. These functions build that line, using the
switch's sniffing (``switch.wire_hints``) with the advice worded for the terminal's options.
"""

from __future__ import annotations

from switch.codec.dialect import Dialect
from switch.codec.framing import Frame, Framing, FramingError
from switch.codec.message import MessageDecodeError
from switch.wire_hints import hint_for_framing_error, hint_for_undecodable, readable_decode_error

__all__ = ["closed_by_host_text", "framing_error_text", "undecodable_reply_text"]


def undecodable_reply_text(exc: MessageDecodeError, frame: Frame, dialect: Dialect, framing: Framing) -> str:
    """``Failed to decode ... at the MTI (byte 0); this looks like a different dialect: it decodes as
    iso87-ascii, not as iso87-binary; try --dialect iso87-ascii`` (the hint only when one fits)."""
    text = readable_decode_error(exc)
    hint = hint_for_undecodable((frame.tpdu or b"") + frame.payload, dialect, framing, peer="host")
    return f"{text}; {hint}" if hint else text


def framing_error_text(exc: FramingError, framing: Framing) -> str:
    """``framing error: <reason>`` and, when the bytes tell, why: TLS on this port, another length header."""
    hint = hint_for_framing_error(exc, framing, peer="host")
    return f"framing error: {exc}; {hint}" if hint else f"framing error: {exc}"


def closed_by_host_text(frames_received: int) -> str:
    """Why a connection ended, when the host closed it. A TLS listener reached in plain TCP closes
    without a word (it cannot read the frame as a TLS record), as does a host that refuses the
    terminal: say both when the host closed before answering anything on this connection."""
    if frames_received:
        return "connection closed by the host"
    return ("connection closed by the host before any reply (a TLS port? connect with --tls, --tls-ca FILE "
            "or --tls-insecure; or check the dialect and framing)")
