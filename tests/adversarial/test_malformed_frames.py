"""Issue 12 item 2: every malformed frame gets a 30 that encodes, or the connection is closed.

The reported frames (a 30 echoing a field read before the failure, which the codec then refused
to encode: dropped with a traceback and the connection left open) and a hypothesis family of
truncated and mutated frames, over memory streams on a virtual clock: silence shows up as the
virtual deadline passing, never as a real wait.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from switch.codec import Codec, Message, MessageDecodeError, MessageEncodeError, load_dialect
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer

NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=UTC)
F7 = NOW.strftime("%m%d%H%M%S")
DIALECTS = {name: load_dialect(name) for name in ("iso87-binary", "iso87-ascii")}


def bitmap(dialect: str, *numbers: int) -> bytes:
    value = 0
    for number in numbers:
        value |= 1 << (64 - number)
    raw = value.to_bytes(8, "big")
    return raw if dialect == "iso87-binary" else raw.hex().upper().encode("ascii")


def make_server(dialect: str) -> SwitchServer:
    ledger = Ledger.open(":memory:")
    loaded = DIALECTS[dialect]
    host = Host(HostConfig.for_dialect(loaded, require_signon=False), ledger, default_scenario().response_rules)
    return SwitchServer(codec=Codec(loaded), framing=Framing.from_dialect(loaded), host=host, ledger=ledger,
                        committer=GroupCommitter(ledger), config=ServerConfig(port=0, idle_timeout=60.0),
                        clock=lambda: NOW)


async def answer_or_close(server: SwitchServer, payload: bytes) -> tuple[Message | None, bool]:
    """Send ``payload`` as one frame; (the reply decoded or None if closed, whether an echo sent after it
    is still answered). Fails on silence: no reply and no close before the virtual deadline."""
    client, server_side = trio.testing.memory_stream_pair()
    frames = FrameStream(client, server.framing)
    reply: Message | None = None
    alive = False
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        nursery.start_soon(server.handle_stream, server_side)
        await frames.send_frame(payload)
        with trio.fail_after(30):  # virtual: the idle timeout is 60, so only silence gets here
            frame = await frames.receive_frame()
        if frame is not None:
            reply = server.codec.decode(frame.payload)  # what the switch sends must decode
            echo = Message("0800", {7: F7, 11: "999999", 41: "TERM0001", 70: "301"})
            try:
                await frames.send_frame(server.codec.encode(echo))
                with trio.fail_after(30):
                    while (after := await frames.receive_frame()) is not None:
                        answer = server.codec.decode(after.payload)
                        if answer.fields.get(11) == "999999":
                            alive = True
                            break
            except trio.BrokenResourceError:
                pass
        await frames.aclose()
        nursery.cancel_scope.cancel()
    return reply, alive


REPORTED = [
    ("0200", (3, 4), b"ABCDEF" + b"12", 3),
    ("0800", (28, 41), b"111111111" + b"TE", 28),
]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize(("mti", "fields", "body", "bad_echo"), REPORTED)
async def test_the_reported_frames_get_a_30_that_encodes(autojump_clock: trio.testing.MockClock,
                                                         caplog: pytest.LogCaptureFixture, dialect: str, mti: str,
                                                         fields: tuple[int, ...], body: bytes, bad_echo: int) -> None:
    caplog.set_level(logging.INFO, "switch.server")
    server = make_server(dialect)
    payload = mti.encode("ascii") + bitmap(dialect, *fields) + body
    with pytest.raises(MessageDecodeError):
        server.codec.decode(payload)
    reply, alive = await answer_or_close(server, payload)
    assert reply is not None and reply.mti == mti[:2] + "1" + mti[3] and reply[39] == "30"
    assert bad_echo not in reply.fields  # the half-read field that does not encode is left out
    assert alive  # and the connection goes on serving
    assert "Traceback" not in caplog.text and not any(record.exc_info for record in caplog.records)
    assert server.stats.format_errors == 1


async def test_a_reply_that_cannot_be_made_to_encode_closes_the_connection(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If not even MTI + 39 encodes (a broken dialect or host), the connection is closed with one line."""
    server = make_server("iso87-binary")
    real = server.codec

    class RefusingReplies:
        """The real codec, except that no reply (MTI ending in 10) encodes."""

        def __init__(self) -> None:
            self.dialect = real.dialect
            self.decode = real.decode

        def encode(self, message: Message) -> bytes:
            if message.mti.endswith("10"):
                raise MessageEncodeError(f"cannot encode {message.mti}", field="39")
            return real.encode(message)

    monkeypatch.setattr(server, "codec", RefusingReplies())
    payload = b"0200" + bitmap("iso87-binary", 3, 4) + b"ABCDEF12"
    reply, alive = await answer_or_close(server, payload)
    assert reply is None and not alive
    assert "closing connection" in caplog.text and not any(record.exc_info for record in caplog.records)


def _valid(codec: Codec, kind: int, stan: int) -> bytes:
    if kind == 0:
        message = Message("0800", {7: F7, 11: f"{stan:06d}", 41: "TERM0001", 70: "301"})
    else:
        message = Message("0200", {2: "4761739001010010", 3: "000000", 4: "000000001234", 7: F7,
                                   11: f"{stan:06d}", 12: F7[4:], 13: F7[:4], 14: "3012", 22: "051", 25: "00",
                                   28: "C00000100", 41: "TERM0001", 42: "MERCHANT0000001", 49: "840"})
    return codec.encode(message)


@st.composite
def malformed(draw: st.DrawFn, codec: Codec) -> bytes:
    """A valid request, then cut, with bytes overwritten, inserted or deleted, or bitmap bits toggled."""
    data = bytearray(_valid(codec, draw(st.integers(0, 1)), draw(st.integers(1, 999999))))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["cut", "set", "insert", "delete", "bit"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if how == "cut":
            del data[at:]
        elif how == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, ord("A"), ord("9"), ord(" "), draw(st.integers(0, 255))]))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif how == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        else:
            width = 8 if codec.dialect.name == "iso87-binary" else 16
            bit = draw(st.integers(1, 63))
            if codec.dialect.name == "iso87-binary" and len(data) >= 4 + width:
                data[4 + bit // 8] ^= 0x80 >> (bit % 8)
            elif len(data) >= 4 + width:
                nibble = int(chr(data[4 + bit // 4]), 16) if chr(data[4 + bit // 4]) in "0123456789ABCDEF" else 0
                data[4 + bit // 4] = ord(f"{nibble ^ (8 >> (bit % 4)):X}")
    return bytes(data)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_mutated_frames_are_answered_or_closed_never_silent(dialect: str, inline_threads: None) -> None:
    codec = Codec(DIALECTS[dialect])

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(payload=malformed(codec))
    def check(payload: bytes) -> None:
        assume(payload)  # an empty frame is a keep-alive: not answered, by design
        server = make_server(dialect)

        async def main() -> tuple[Message | None, bool]:
            return await answer_or_close(server, payload)

        reply, alive = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        try:
            request: Message | None = codec.decode(payload)
        except MessageDecodeError:
            request = None
        if reply is not None:
            assert alive, "answered, then the next request was not"
            if request is None and reply.mti[2] == "1":
                assert reply[39] == "30" or reply.mti.startswith("08")  # a format error gets 30
        server.ledger.close()

    check()
