"""A seeded fuzz of whole conversations: valid, mutated and garbage frames interleaved on many
connections against an in-process switch over real 127.0.0.1 sockets.

Each connection signs on, then sends frames one at a time, each followed by an echo probe: the
replies before the probe's answer belong to the frame. Asserted: the switch stays up; every frame
is answered, or its connection closed (silence only for a frame that decodes as a response-class
message, which the host drops by design); valid requests get the right answers whatever the
other connections do; and the ledger agrees with the clients: every approval seen is one approved
posting, none missing, none doubled.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

from switch.codec import Message, MessageDecodeError
from switch.codec.stream import FrameStream
from switch.host.checks import response_mti
from switch.ledger import Ledger
from tests.test_server import CODEC, F7, FRAMING, make_server, purchase, running

pytestmark = pytest.mark.slow

SEED = 20261203
CONNECTIONS = 12
FRAMES_PER_CONNECTION = 120
REPLY_TIMEOUT = 5.0  # real seconds; a healthy switch answers in milliseconds


class Conversation:
    """One client: its RNG, terminal, what it saw. Reconnects (and signs on again) when closed."""

    def __init__(self, index: int, port: int):
        self.rng = random.Random(f"{SEED}/{index}")
        self.terminal = f"FZ{index:06d}"
        self.port = port
        self.stan = 0
        self.frames: FrameStream | None = None
        self.approvals: list[str] = []  # RRNs
        self.outcomes: Counter[str] = Counter()

    def next_stan(self) -> str:
        self.stan += 1
        return f"{self.stan:06d}"

    async def connect(self) -> FrameStream:
        if self.frames is None:
            self.frames = FrameStream(await trio.open_tcp_stream("127.0.0.1", self.port), FRAMING)
            replies = await self.exchange(CODEC.encode(Message("0800", {7: F7, 11: self.next_stan(),
                                                                        41: self.terminal, 70: "001"})))
            assert replies is not None and [r[39] for r in replies] == ["00"], replies
        return self.frames

    async def exchange(self, payload: bytes, *, raw: bytes | None = None) -> list[Message] | None:
        """Send one frame then a probe; the replies before the probe's answer, or None if closed."""
        frames = self.frames
        assert frames is not None
        probe = self.next_stan()
        try:
            await frames.send_raw(raw if raw is not None else FRAMING.encode(payload))
            await frames.send_frame(CODEC.encode(Message("0800", {7: F7, 11: probe, 41: self.terminal, 70: "301"})))
            replies: list[Message] = []
            with trio.fail_after(REPLY_TIMEOUT):
                while (frame := await frames.receive_frame()) is not None:
                    reply = CODEC.decode(frame.payload)  # whatever the switch sends must decode
                    if reply.mti == "0810" and reply.fields.get(11) == probe and reply.fields.get(70) == "301":
                        return replies
                    replies.append(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await frames.aclose()
        self.frames = None
        return None

    def frame(self) -> tuple[str, bytes, bytes | None]:
        """(kind, payload, raw frame or None): valid, mutated or garbage."""
        rng = self.rng
        kind = rng.choice(["valid", "valid", "valid", "flip", "cut", "insert", "letters", "garbage", "oversize"])
        amount = rng.choice([1234, 5000, 0, 100000000001])
        data = bytearray(CODEC.encode(purchase(int(self.next_stan()), terminal=self.terminal, amount=amount)))
        if kind == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "cut":
            del data[rng.randrange(1, len(data)):]
        elif kind == "insert":
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif kind == "letters":
            digits = [i for i, byte in enumerate(data) if 0x30 <= byte <= 0x39]
            for i in rng.sample(digits, min(len(digits), 3)):
                data[i] = rng.choice(b"ABCxyz ")
        elif kind == "garbage":
            data = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 120)))
        elif kind == "oversize":
            return kind, bytes(data), (60000).to_bytes(2, "big") + bytes(data)
        return kind, bytes(data), None

    async def run(self) -> None:
        for _ in range(FRAMES_PER_CONNECTION):
            await self.connect()
            kind, payload, raw = self.frame()
            replies = await self.exchange(payload, raw=raw)
            try:
                request: Message | None = CODEC.decode(payload) if raw is None else None
            except MessageDecodeError:
                request = None
            if replies is None:
                assert kind != "valid", f"{self.terminal}: a valid request closed the connection"
                self.outcomes["closed"] += 1
                continue
            if not replies:
                assert request is not None and response_mti(request.mti) is None, \
                    f"{self.terminal}: {kind} frame {payload.hex()} neither answered nor closed"
                self.outcomes["silent (response MTI)"] += 1
                continue
            assert len(replies) == 1, replies
            reply = replies[0]
            self.outcomes[f"answered {reply.fields.get(39)}"] += 1
            if kind == "valid":
                amount = purchase_amount(request)
                expected = {0: "13", 100000000001: "61"}.get(amount, "00")
                assert reply[39] == expected, (reply, amount)
            if reply.mti in ("0210", "0110") and reply.fields.get(39) == "00":
                self.approvals.append(reply[37])
        if self.frames is not None:
            await self.frames.aclose()


def purchase_amount(request: Message | None) -> int:
    assert request is not None
    return int(request[4])


def approved_rrns(ledger: Ledger) -> Counter[str]:
    return Counter(posting.rrn for posting in ledger.postings() if posting.approved)


async def test_conversations_of_valid_mutated_and_garbage_frames() -> None:
    server = make_server()
    conversations: list[Conversation] = []
    async with running(server) as port:
        conversations = [Conversation(index, port) for index in range(CONNECTIONS)]
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for conversation in conversations:
                    nursery.start_soon(conversation.run)
        # the switch is alive and serves a newcomer
        fresh = Conversation(CONNECTIONS, port)
        await fresh.connect()
        replies = await fresh.exchange(CODEC.encode(Message("0800", {7: F7, 11: "777777", 41: fresh.terminal,
                                                                     70: "301"})))
        assert replies is not None and [(r[11], r[39]) for r in replies] == [("777777", "00")]
        assert fresh.frames is not None
        await fresh.frames.aclose()
    seen = Counter(rrn for conversation in conversations for rrn in conversation.approvals)
    in_ledger = approved_rrns(server.ledger)
    outcomes = sum((conversation.outcomes for conversation in conversations), Counter())
    assert outcomes["closed"] > 0 and outcomes["answered 30"] > 0 and outcomes["answered 00"] > 0, outcomes
    assert all(count == 1 for count in seen.values()), "an approval seen twice"
    assert all(count == 1 for count in in_ledger.values()), "an RRN posted twice"
    assert set(seen) == set(in_ledger), (set(seen) ^ set(in_ledger))
