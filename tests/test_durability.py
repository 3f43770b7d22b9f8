"""Durability before acknowledgement: a switch killed with SIGKILL mid-load keeps every approval it sent.

Real processes on 127.0.0.1: the switch is started with ``python -m switch serve``, fed a stream of
purchases over several connections, killed with SIGKILL while requests are in flight, restarted on
the same ledger file. Then every approval the client received must be in the ledger (same RRN),
nothing twice, and after the client reverses what it never got an answer for (as a careful
terminal does), settlement of the batch balances.

Run against both ledger backends: a SQLite file, and a database on a real PostgreSQL server
(tests/pg_server.py), where "durable" means committed by the server before the reply.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from switch.codec import Codec, Message, load_dialect
from switch.codec.composite import OriginalData, SettlementTotals
from switch.codec.framing import FrameDecoder, Framing
from switch.ledger import Ledger
from switch.testing import SwitchProcess

DIALECT = load_dialect("iso87-binary")
CODEC = Codec(DIALECT)
FRAMING = Framing.from_dialect(DIALECT)
CONNECTIONS = 4
TERMINAL = "KILLTEST"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ledger the switch serves from: a SQLite file, or a PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return str(request.getfixturevalue("pg_url"))


def start_switch(ledger: str, journal: Path) -> SwitchProcess:
    return SwitchProcess.start(["--ledger", ledger, "--no-signon", "--no-admin", "--journal", str(journal)])


def purchase(stan: int, f7: str) -> Message:
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: f"{100 + stan % 50:012d}", 7: f7,
                            11: f"{stan:06d}", 12: f7[4:], 13: f7[:4], 14: "3012", 22: "051", 25: "00",
                            41: TERMINAL, 42: "MERCHANT0000001", 49: "840"})


def exchange(port: int, request: Message) -> Message:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(FRAMING.encode(CODEC.encode(request)))
        decoder = FrameDecoder(FRAMING)
        while (frame := decoder.next_frame()) is None:
            data = sock.recv(65536)
            assert data, "switch closed the connection"
            decoder.feed(data)
        return CODEC.decode(frame.payload)


def test_sigkill_mid_stream_keeps_every_acknowledged_approval(ledger_target: str, tmp_path: Path) -> None:
    ledger_path = ledger_target
    journal = tmp_path / "journal.jsonl"
    f7 = datetime.now(UTC).strftime("%m%d%H%M%S")
    switch = start_switch(ledger_path, journal)
    port = switch.port
    sent: dict[str, Message] = {}  # stan -> request
    approved: dict[str, str] = {}  # stan -> RRN the client was told
    selector = selectors.DefaultSelector()
    decoders = {}
    stan = 0
    try:
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            decoders[sock] = FrameDecoder(FRAMING)
        socks = list(decoders)

        def send_next(sock: socket.socket) -> None:
            nonlocal stan
            stan += 1
            request = purchase(stan, f7)
            sent[request[11]] = request
            sock.setblocking(True)
            sock.sendall(FRAMING.encode(CODEC.encode(request)))
            sock.setblocking(False)

        for sock in socks:
            for _ in range(4):  # several requests in flight per connection
                send_next(sock)
        deadline = time.monotonic() + 20
        killed = False
        while time.monotonic() < deadline and selector.get_map():
            if not killed and len(approved) >= 400:
                os.kill(switch.process.pid, signal.SIGKILL)  # in flight right now: 16 requests
                killed = True
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    selector.unregister(sock)
                    continue
                decoders[sock].feed(data)
                while (frame := decoders[sock].next_frame()) is not None:
                    reply = CODEC.decode(frame.payload)
                    assert reply[39] == "00", reply
                    approved[reply[11]] = reply[37]
                    if not killed:
                        send_next(sock)
        assert killed, "the switch answered too slowly to reach the kill point"
        switch.process.wait(timeout=10)
        for sock in socks:
            sock.close()
    finally:
        switch.kill()

    unanswered = sorted(set(sent) - set(approved))
    assert unanswered, "the kill should have left requests in flight"

    # restart on the same ledger: every acknowledged approval is there, none twice
    with start_switch(ledger_path, journal) as switch:
        port = switch.port
        book = Ledger.open(ledger_path)
        postings = book.postings(terminal=TERMINAL)
        book.close()
        by_stan: dict[str, list[str]] = {}
        for posting in postings:
            by_stan.setdefault(posting.stan, []).append(posting.rrn)
        assert all(len(rrns) == 1 for rrns in by_stan.values()), "a request was posted twice"
        for stan_, rrn in approved.items():
            assert by_stan.get(stan_) == [rrn], f"approval {stan_} (RRN {rrn}) was sent but is not in the ledger"

        # a careful terminal reverses what it never heard back about; then the batch settles
        next_stan = stan + 1
        for stan_ in unanswered:
            original = sent[stan_]
            reversal = Message("0400", {**{k: v for k, v in original.fields.items()},
                                        11: f"{next_stan:06d}", 90: OriginalData.of(original).format()})
            next_stan += 1
            assert exchange(port, reversal)[39] == "00"
        amounts = [int(sent[s][4]) for s in approved]
        totals = SettlementTotals(debit_count=len(amounts), debit_amount=sum(amounts), credit_count=0,
                                  credit_amount=0)
        settle = Message("0500", {7: f7, 11: f"{next_stan:06d}", 41: TERMINAL, 42: "MERCHANT0000001",
                                  **totals.to_iso_fields()})
        assert exchange(port, settle)[39] == "00"
