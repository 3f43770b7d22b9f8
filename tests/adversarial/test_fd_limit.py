"""Issue 12 item 9 (fd limit): accept failing with EMFILE logs one line per period, not a traceback
every 0.1 s, and connections already open keep being served.

The failure is injected by a fake listener on the virtual clock, and then for real: a switch
subprocess with RLIMIT_NOFILE lowered to 64 and more clients than that.
"""

from __future__ import annotations

import errno
import logging
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from functools import partial

import pytest
import trio
import trio.testing

from switch.codec.stream import FrameStream
from switch.server_listen import REPORT_EVERY, serve_listeners
from tests.test_server import CODEC, FRAMING, make_server, network

FAILING_FOR = 60.0  # virtual seconds at the fd limit: 600 failed accepts at Trio's 0.1 s retry


class ExhaustedListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() fails with EMFILE until ``until``, then hands out ``stream`` once, then waits."""

    def __init__(self, until: float, stream: trio.abc.Stream):
        self.until = until
        self.stream: trio.abc.Stream | None = stream
        self.failures = 0

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if trio.current_time() < self.until:
            self.failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        if self.stream is not None:
            stream, self.stream = self.stream, None
            return stream
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_at_the_fd_limit_logs_a_line_per_period_and_keeps_serving(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, inline_threads: None) -> None:
    caplog.set_level(logging.DEBUG)
    server = make_server(idle_timeout=None, require_signon=False)
    old_client, old_server_side = trio.testing.memory_stream_pair()
    new_client, new_server_side = trio.testing.memory_stream_pair()
    listener = ExhaustedListener(trio.current_time() + FAILING_FOR, new_server_side)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        nursery.start_soon(server.handle_stream, old_server_side)  # open before the limit was hit
        await nursery.start(partial(serve_listeners, server.handle_stream, [listener], handler_nursery=nursery))
        old = FrameStream(old_client, FRAMING)
        for stan in range(1, 6):  # served throughout the accept failures
            await trio.sleep(FAILING_FOR / 6)
            await old.send_frame(CODEC.encode(network("301", stan=stan)))
            with trio.fail_after(1):
                frame = await old.receive_frame()
            assert frame is not None and CODEC.decode(frame.payload)[11] == f"{stan:06d}"
        await trio.sleep(FAILING_FOR / 6 + 1)
        new = FrameStream(new_client, FRAMING)  # accepted once descriptors are free again
        await new.send_frame(CODEC.encode(network("301", stan=99)))
        with trio.fail_after(1):
            frame = await new.receive_frame()
        assert frame is not None and CODEC.decode(frame.payload)[11] == "000099"
        nursery.cancel_scope.cancel()
    assert listener.failures >= 500
    accept_lines = [record for record in caplog.records if "accept" in record.getMessage()]
    assert 2 <= len(accept_lines) <= FAILING_FOR / REPORT_EVERY + 2, [r.getMessage() for r in accept_lines]
    assert "EMFILE" in accept_lines[0].getMessage() and "RLIMIT_NOFILE" in accept_lines[0].getMessage()
    assert "accept works again" in accept_lines[-1].getMessage()
    assert not any(record.exc_info for record in caplog.records)
    assert not any(record.name == "trio.serve_listeners" for record in caplog.records)


async def test_other_accept_errors_still_end_the_listener(autojump_clock: trio.testing.MockClock) -> None:
    class Broken(ExhaustedListener):
        async def accept(self) -> trio.abc.Stream:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EBADF, "Bad file descriptor")

    _client, server_side = trio.testing.memory_stream_pair()
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_listeners, make_server().handle_stream, [Broken(0, server_side)],
                                        handler_nursery=nursery))
    assert caught.group_contains(OSError)


@pytest.mark.slow
def test_a_real_switch_at_its_fd_limit_logs_lines_not_tracebacks_and_recovers() -> None:
    """The same over real sockets: ``iso-switch serve`` with RLIMIT_NOFILE 64, 120 clients connecting."""
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--port", "0", "--no-admin", "--ledger",
                                ":memory:", "--journal", "none", "--idle-timeout", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=low_limit)
    lines: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    pumping = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    pumping.start()
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        port = 0
        while not port and time.monotonic() < deadline:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", "".join(lines))
            port = int(found.group(1)) if found else 0
            time.sleep(0.05)
        assert port, "".join(lines)
        for _ in range(120):  # the kernel completes these handshakes; the switch cannot accept them all
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(2.5)  # real time at the limit: Trio alone would log ~25 tracebacks here
        for client in clients[:100]:
            client.close()
        del clients[:100]
        echo = bytes.fromhex("0800") + bytes(8)  # any frame will do: we only need an answer or a close
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            fresh.sendall(len(echo).to_bytes(2, "big") + echo)
            fresh.recv(100)  # answered (30) or closed: the switch is serving again
        assert process.poll() is None
    finally:
        for client in clients:
            client.close()
        process.terminate()
        process.wait(timeout=15)
        pumping.join(timeout=5)
    text = "".join(lines)
    accept_lines = [line for line in text.splitlines() if "accept" in line]
    assert any("EMFILE" in line for line in accept_lines), text[-2000:]
    assert len(accept_lines) <= 3, accept_lines
    assert "Traceback" not in text, text[-2000:]
