"""The switch and the plain client that test_fault_actions.py and test_fault_pacing.py drive over real
loopback sockets (127.0.0.1): a real ``SwitchServer`` (real host, in-memory ledger, group committer, journal,
metrics) with given fault rules, and a client that sees frames, TCP reads, FIN and RST as they arrive."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from switch.codec import Codec, Message, load_dialect
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.journal import Journal, JournalEntry
from switch.ledger import Ledger, Posting
from switch.metrics import SwitchMetrics
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer

DIALECT = load_dialect("iso87-binary")
CODEC = Codec(DIALECT)
FRAMING = Framing.from_dialect(DIALECT)
HEADER = FRAMING.header_size
NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=UTC)
F7 = NOW.strftime("%m%d%H%M%S")
TERMINAL = "TERM0001"
QUIET = 0.25  # how long "nothing more arrives" is watched for, after the frames that should arrive
TEST_LIMIT = 10.0  # no test here may take longer than this


# ---------------------------------------------------------------------------------------------
# Server and client


def make_server(*rules: Mapping[str, Any], seed: int = 8583, require_signon: bool = False) -> SwitchServer:
    """A switch as ``iso-switch serve`` builds it, on a free loopback port, with these fault rules."""
    ledger = Ledger.open(":memory:")
    faults = FaultEngine(seed=seed)
    for rule in rules:
        faults.add(rule)
    host = Host(HostConfig.for_dialect(DIALECT, require_signon=require_signon), ledger,
                default_scenario().response_rules)
    return SwitchServer(codec=CODEC, framing=FRAMING, host=host, ledger=ledger, committer=GroupCommitter(ledger),
                        config=ServerConfig(port=0, idle_timeout=30.0, grace_period=1.0), clock=lambda: NOW,
                        faults=faults, journal=Journal(CODEC), metrics=SwitchMetrics())


@asynccontextmanager
async def running(server: SwitchServer) -> AsyncIterator[int]:
    with trio.fail_after(TEST_LIMIT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve)
            yield listeners[0].socket.getsockname()[1]
            server.shutdown()


class Client:
    """One terminal connection. Whole frames through ``frames``, or raw bytes through ``stream``
    for the faults that break framing (never both on one connection: the frame reader buffers)."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.frames = FrameStream(stream, FRAMING)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, message: Message) -> float:
        """Send one request; returns the time its last byte was handed to the kernel."""
        await self.frames.send_frame(CODEC.encode(message))
        return trio.current_time()

    async def reply(self, timeout: float = 5.0) -> Message:
        with trio.fail_after(timeout):
            frame = await self.frames.receive_frame()
        assert frame is not None, "the switch closed the connection instead of replying"
        return CODEC.decode(frame.payload)

    async def expect_silence(self, seconds: float = QUIET) -> None:
        """Nothing arrives for ``seconds`` and the connection stays open."""
        with trio.move_on_after(seconds):
            frame = await self.frames.receive_frame()
            pytest.fail(f"expected no reply, got {'EOF' if frame is None else CODEC.decode(frame.payload)}")

    async def expect_eof(self, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            assert await self.frames.receive_frame() is None

    async def receive_raw(self, timeout: float = 5.0) -> bytes:
        """One TCP read (b"" at EOF)."""
        with trio.fail_after(timeout):
            return await self.stream.receive_some(4096)

    async def aclose(self) -> None:
        await self.stream.aclose()


def purchase(stan: int, *, terminal: str = TERMINAL, amount: int = 1234) -> Message:
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: f"{amount:012d}", 7: F7, 11: f"{stan:06d}",
                            12: F7[4:], 13: F7[:4], 14: "3012", 22: "051", 25: "00", 41: terminal,
                            42: "MERCHANT0000001", 49: "840"})


def signon(stan: int, *, terminal: str = TERMINAL) -> Message:
    return Message("0800", {7: F7, 11: f"{stan:06d}", 41: terminal, 70: "001"})


def posting(server: SwitchServer, stan: int) -> Posting | None:
    found = [p for p in server.ledger.postings(terminal=TERMINAL) if p.stan == f"{stan:06d}"]
    assert len(found) <= 1
    return found[0] if found else None


def request_entry(server: SwitchServer, stan: int, mti: str = "0200") -> JournalEntry:
    assert server.journal is not None
    found = [e for e in server.journal.query(stan=str(stan), mti=mti) if e.direction == "in"]
    assert len(found) == 1, found
    return found[0]


def assert_committed_posting(server: SwitchServer, stan: int) -> None:
    """The "pending confirmation" evidence: the host approved and the ledger made it durable."""
    booked = posting(server, stan)
    assert booked is not None, f"no posting for STAN {stan}"
    assert booked.approved
    assert server.ledger.is_committed(booked.seq)


def frame_size(data: bytes) -> int:
    """The body length a binary2 header announces."""
    return int.from_bytes(data[:HEADER], "big")


def only_first_0200(**actions: Any) -> dict[str, Any]:
    """A rule for the first 0200 only, so the next one shows the connection still works."""
    return {"when": {"mti": ["0200"], "nth": 1}, **actions}
