"""The hot-path framing shortcuts (``Framing.encoder``, the decoder's inline binary header) must give
exactly what ``Framing.encode`` / ``_decode_length`` give, errors included."""

from __future__ import annotations

import itertools

import pytest

from switch.codec.framing import LENGTH_HEADERS, FrameDecoder, Framing, FramingError, OversizeFrameError


def _outcome(encode, payload: bytes, tpdu: bytes | None) -> tuple[str, object]:
    try:
        return "ok", encode(payload, tpdu)
    except FramingError as exc:
        return type(exc).__name__, str(exc)


_FRAMINGS = [Framing(length_header=kind, length_includes_itself=includes, tpdu=tpdu, max_frame=max_frame)
             for kind, includes, tpdu, max_frame in itertools.product(LENGTH_HEADERS, (False, True), (False, True),
                                                                       (5, 97, 99, 101, 8192))]


@pytest.mark.parametrize("framing", _FRAMINGS, ids=repr)
def test_encoder_gives_what_encode_gives(framing: Framing) -> None:
    fast = framing.encoder()
    sizes = sorted({0, 1, 4, 5, 6, 94, 95, 96, 97, 98, 99, 100, 101, 102, 1000, 8187, 8192, 8193, 9999, 10000})
    for size, tpdu in itertools.product(sizes, (None, b"\x60\x00\x01\x00\x02", b"\x60")):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert _outcome(fast, payload, tpdu) == _outcome(framing.encode, payload, tpdu), (size, tpdu)
        assert _outcome(fast, bytearray(payload), tpdu) == _outcome(framing.encode, bytearray(payload), tpdu)


@pytest.mark.parametrize("framing", [f for f in _FRAMINGS if not f.tpdu], ids=repr)
def test_decoder_reads_back_what_the_encoder_wrote(framing: Framing) -> None:
    fast = framing.encoder()
    payloads = [b"", b"\x01", b"x" * min(framing.max_frame, 90), b"0200" * 2]
    stream = b"".join(fast(p) for p in payloads if _outcome(framing.encode, p, None)[0] == "ok")
    decoder = FrameDecoder(framing)
    for at in range(0, len(stream), 7):  # in chunks that split headers
        decoder.feed(stream[at:at + 7])
    got = []
    while (frame := decoder.next_frame()) is not None:
        got.append(frame.payload)
    assert got == [p for p in payloads if _outcome(framing.encode, p, None)[0] == "ok"]


def test_oversize_binary_header_is_refused_before_the_body_and_the_decoder_stays_failed() -> None:
    decoder = FrameDecoder(Framing(length_header="binary2", max_frame=100))
    decoder.feed(b"\x00\x65")  # 101 > max_frame
    with pytest.raises(OversizeFrameError):
        decoder.next_frame()
    with pytest.raises(FramingError, match="already failed"):
        decoder.next_frame()
