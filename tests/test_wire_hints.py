"""Hints for bytes that are not a message of the expected dialect: another dialect or framing, TLS
on a plain port (or the reverse), HTTP. Pure functions (``switch.wire_hints``, ``terminal.wire_hints``)."""

from __future__ import annotations

import pytest

from switch.codec.dialect import load_dialect
from switch.codec.framing import Frame, FrameDecoder, Framing, FramingError
from switch.codec.message import Codec, Message, MessageDecodeError
from switch.wire_hints import (
    hint_for_framing_error,
    hint_for_undecodable,
    readable_decode_error,
    sniff_protocol,
)
from terminal.wire_hints import closed_by_host_text, framing_error_text, undecodable_reply_text

BINARY, ASCII, BCD, CUP = (load_dialect(name) for name in ("iso87-binary", "iso87-ascii", "iso87-bcd", "cup-pos"))
ECHO = Message("0800", {7: "0101120000", 11: "000001", 70: "301"})
# The first bytes of a TLS 1.2 ClientHello and of a TLS alert record (level 2, handshake failure).
CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(40)
TLS_ALERT = bytes.fromhex("15030300020228")


def framing(dialect: object = BINARY, **overrides: object) -> Framing:
    return Framing.from_dialect(dialect, **overrides)  # type: ignore[arg-type]


def decode_error(dialect: object, payload: bytes) -> MessageDecodeError:
    with pytest.raises(MessageDecodeError) as caught:
        Codec(dialect).decode(payload)  # type: ignore[arg-type]
    return caught.value


def framing_error(fr: Framing, data: bytes) -> FramingError:
    decoder = FrameDecoder(fr)
    with pytest.raises(FramingError) as caught:
        decoder.feed(data)
        while decoder.next_frame() is not None:
            pass
        decoder.close()
    return caught.value


def test_the_mti_is_called_the_mti() -> None:
    error = decode_error(BINARY, Codec(BCD).encode(ECHO))
    assert error.field == "t"
    assert readable_decode_error(error) == "Failed to decode field, invalid data at the MTI (byte 0)"


@pytest.mark.parametrize(("sent", "expected", "listener"), [
    (ASCII, BINARY, "iso87-ascii"),
    (BCD, BINARY, "iso87-bcd"),
    (BINARY, BCD, "iso87-binary"),
])
def test_another_dialect_is_named(sent: object, expected: object, listener: str) -> None:
    payload = Codec(sent).encode(ECHO)  # type: ignore[arg-type]
    hint = hint_for_undecodable(payload, expected, framing(expected))  # type: ignore[arg-type]
    assert hint is not None
    assert hint.startswith(f"this looks like a different dialect: it decodes as {listener}, not as ")
    assert f"--also-listen PORT,dialect={listener}" in hint
    terminal_hint = hint_for_undecodable(payload, expected, framing(expected), peer="host")  # type: ignore[arg-type]
    assert terminal_hint is not None and terminal_hint.endswith(f"try --dialect {listener}")


def test_a_tpdu_the_listener_does_not_expect_and_the_reverse() -> None:
    payload = Codec(BINARY).encode(ECHO)
    extra = hint_for_undecodable(bytes.fromhex("6000010000") + payload, BINARY, framing())
    assert extra is not None and "a TPDU (6000010000) comes before the message" in extra
    missing = hint_for_undecodable(payload, BINARY, framing(tpdu=True))
    assert missing is not None and "no TPDU before it" in missing and "--no-tpdu" in missing


def test_tls_on_a_plain_port_both_ways() -> None:
    client = hint_for_undecodable(CLIENT_HELLO, BINARY, framing())
    assert client is not None and "TLS (handshake record, bytes 16 03 01)" in client and "--tls-cert" in client
    host = sniff_protocol(TLS_ALERT, peer="host")
    assert host is not None and "TLS (alert record, bytes 15 03 03)" in host and "--tls-ca FILE" in host


def test_http_and_ssh_are_recognised() -> None:
    assert "HTTP client" in (sniff_protocol(b"GET /health HTTP/1.1\r\n") or "")
    assert "HTTP server" in (sniff_protocol(b"HTTP/1.1 400 Bad Request", peer="host") or "")
    assert "SSH" in (sniff_protocol(b"SSH-2.0-OpenSSH_9.6") or "")
    assert sniff_protocol(Codec(BINARY).encode(ECHO)) is None  # a real message is none of these


def test_encoding_hints_when_no_dialect_decodes() -> None:
    ascii_mti = b"0800" + b"8220000000000000" + b"garbage"  # ASCII MTI, hex-text bitmap, then junk
    hint = hint_for_undecodable(ascii_mti, BINARY, framing())
    assert hint is not None and "the bitmap is hex text (8220000000000000)" in hint
    assert hint_for_undecodable(ascii_mti, BCD, framing(BCD)) is not None
    assert "MTI is ASCII text (0800)" in (hint_for_undecodable(ascii_mti, BCD, framing(BCD)) or "")
    assert hint_for_undecodable(b"\xff\xfe\xfd\xfc\xfb\xfa", BINARY, framing()) is None


def test_framing_errors_from_tls_and_ascii_length_headers() -> None:
    binary2 = framing()
    hello = framing_error(binary2, CLIENT_HELLO)  # 16 03 announces 5635 bytes; the stream ends first
    assert "TLS" in (hint_for_framing_error(hello, binary2) or "")
    alert = framing_error(binary2, TLS_ALERT)
    text = framing_error_text(alert, binary2)
    assert text.startswith("framing error: ") and "--tls-ca" in text
    big = framing_error(binary2, b"99" + bytes(10))  # 0x3939 = 14649 bytes > max_frame 8192
    hint = hint_for_framing_error(big, binary2)
    assert hint is not None and "length header is ASCII digits (99)" in hint


def test_terminal_reply_text_names_the_mti_and_the_dialect() -> None:
    payload = Codec(BCD).encode(ECHO)
    error = decode_error(BINARY, payload)
    text = undecodable_reply_text(error, Frame(payload), BINARY, framing())
    assert "field t" not in text
    assert text == ("Failed to decode field, invalid data at the MTI (byte 0); this looks like a different "
                    "dialect: it decodes as iso87-bcd, not as iso87-binary; try --dialect iso87-bcd")


def test_a_host_closing_before_any_reply_hints_at_tls() -> None:
    assert closed_by_host_text(3) == "connection closed by the host"
    silent = closed_by_host_text(0)
    assert silent.startswith("connection closed by the host before any reply") and "--tls" in silent
