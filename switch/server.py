"""The Trio shell of the switch: listeners, one reader task per connection, serialized writes, drain.

Everything that decides *what* to answer lives in ``switch.host`` (pure); this module only moves
frames, waits for the ledger to make a decision durable before replying, and keeps connections
from affecting each other: a malformed frame or a crashing request costs at most its own
connection, never the server.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import trio

from switch.codec import Codec, Message, MessageDecodeError, MessageEncodeError
from switch.codec.framing import Frame, Framing, FramingError, reply_tpdu
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.host import Decision, Host
from switch.ledger import Ledger

log = logging.getLogger("switch.server")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ServerStats:
    """Counters for the shutdown summary (and later the metrics endpoint)."""

    started: float = field(default_factory=time.monotonic)
    connections_total: int = 0
    connections_open: int = 0
    frames_in: int = 0
    responses_out: int = 0
    approvals: int = 0
    format_errors: int = 0
    connections_dropped: int = 0

    def summary(self) -> str:
        uptime = time.monotonic() - self.started
        return (f"iso-switch: stopped after {uptime:.1f}s: {self.connections_total} connections, "
                f"{self.frames_in} requests, {self.responses_out} responses, {self.approvals} approvals, "
                f"{self.format_errors} format errors")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8583
    idle_timeout: float | None = 300.0  # close a connection with no traffic and nothing in flight
    grace_period: float = 5.0  # how long shutdown waits for in-flight requests


class _Connection:
    """Per-connection state: the frame stream, in-flight count and the reader's cancel scope."""

    __slots__ = ("frames", "in_flight", "peer", "reader_scope")

    def __init__(self, frames: FrameStream, peer: str):
        self.frames = frames
        self.peer = peer
        self.in_flight = 0
        self.reader_scope = trio.CancelScope()


class SwitchServer:
    """Serves one dialect and framing on TCP; host decisions are made by ``host``."""

    def __init__(self, *, codec: Codec, framing: Framing, host: Host, ledger: Ledger,
                 committer: GroupCommitter, config: ServerConfig | None = None,
                 clock: Callable[[], datetime] = utc_now):
        self.codec = codec
        self.framing = framing
        self.host = host
        self.ledger = ledger
        self.committer = committer
        self.config = config or ServerConfig()
        self.clock = clock
        self.stats = ServerStats()
        self._connections: set[_Connection] = set()
        self._accepting: trio.CancelScope | None = None
        self._draining = False

    # -- connection handling -------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until EOF, idle timeout, a framing error or shutdown."""
        peer = _peer_name(stream)
        conn = _Connection(FrameStream(stream, self.framing), peer)
        self._connections.add(conn)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        try:
            async with trio.open_nursery() as requests:
                with conn.reader_scope:
                    if self._draining:
                        conn.reader_scope.cancel()
                    await self._read_loop(conn, requests)
                # Reader finished (EOF, error, idle or drain): in-flight requests still complete.
        except trio.BrokenResourceError:
            log.info("%s: connection lost", peer)
        finally:
            self._connections.discard(conn)
            self.stats.connections_open -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _read_loop(self, conn: _Connection, requests: trio.Nursery) -> None:
        idle = self.config.idle_timeout
        while True:
            try:
                with trio.move_on_after(idle if idle else float("inf")) as idle_scope:
                    frame = await conn.frames.receive_frame()
            except FramingError as exc:
                self.stats.connections_dropped += 1
                log.warning("%s: closing connection: %s", conn.peer, exc)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if idle_scope.cancelled_caught:
                if conn.in_flight:
                    continue
                log.info("%s: idle for %.0fs, closing", conn.peer, idle)
                return
            if frame is None:
                return
            if frame.is_keepalive:
                continue
            self.stats.frames_in += 1
            conn.in_flight += 1
            requests.start_soon(self._serve_frame, conn, frame)

    async def _serve_frame(self, conn: _Connection, frame: Frame) -> None:
        try:
            reply = await self.process(frame.payload, peer=conn.peer)
            if reply is None:
                return
            await conn.frames.send_frame(reply, reply_tpdu(frame.tpdu) if frame.tpdu else None)
            self.stats.responses_out += 1
        except _CloseConnection as exc:
            self.stats.connections_dropped += 1
            log.warning("%s: closing connection: %s", conn.peer, exc)
            conn.reader_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.reader_scope.cancel()
        finally:
            conn.in_flight -= 1

    async def process(self, payload: bytes, *, peer: str = "-") -> bytes | None:
        """Decode, decide, make durable, encode. Returns the reply payload or None to stay silent."""
        try:
            request = self.codec.decode(payload)
        except MessageDecodeError as exc:
            self.stats.format_errors += 1
            decision = self.host.format_error(exc.mti or "", exc.partial, self.clock())
            if decision is None or decision.response is None:
                raise _CloseConnection(f"undecodable frame ({exc})") from None
            log.info("%s: format error answered with 30: %s", peer, exc)
            return self._encode(decision, None)
        try:
            decision = self.host.handle(request, self.clock())
        except Exception:  # a host bug must cost one request, never the server
            log.exception("%s: host failed on %s; request dropped", peer, request.mti)
            return None
        if decision.commit_seq is not None:
            await self.committer.wait_committed(decision.commit_seq)
        if decision.outcome == "approved":
            self.stats.approvals += 1
        if decision.response is None:
            log.info("%s: %s not answered: %s", peer, request.mti, decision.reason)
            return None
        return self._encode(decision, request)

    def _encode(self, decision: Decision, request: Message | None) -> bytes | None:
        assert decision.response is not None
        try:
            return self.codec.encode(decision.response)
        except MessageEncodeError:
            log.exception("response to %s could not be encoded; dropped", request.mti if request else "?")
            return None

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Run until ``shutdown()`` or cancellation; then drain in-flight work and close the ledger."""
        async with trio.open_nursery() as root:
            await root.start(self.committer.run)
            try:
                async with trio.open_nursery() as handlers:
                    listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
                    async with trio.open_nursery() as acceptor:
                        self._accepting = acceptor.cancel_scope
                        if self._draining:
                            acceptor.cancel_scope.cancel()
                        await acceptor.start(partial(trio.serve_listeners, self.handle_stream, listeners,
                                                     handler_nursery=handlers))
                        task_status.started(listeners)
                    # accepting stopped: connections get the grace period to finish in-flight requests
                    self._begin_drain(handlers)
            finally:
                root.cancel_scope.cancel()  # the committer flushes what is pending on its way out
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.ledger.close)

    def _begin_drain(self, handlers: trio.Nursery) -> None:
        self._draining = True
        for conn in list(self._connections):
            conn.reader_scope.cancel()
        handlers.cancel_scope.deadline = trio.current_time() + self.config.grace_period

    def shutdown(self) -> None:
        """Stop accepting; in-flight requests get ``grace_period`` seconds to complete."""
        self._draining = True
        if self._accepting is not None:
            self._accepting.cancel()


class _CloseConnection(Exception):
    """A frame so broken that no answer is possible: the connection is closed and logged."""


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "memory"
    try:
        host, port, *_ = sock.getpeername()
        return f"{host}:{port}"
    except OSError:
        return "?"


async def run_until_signalled(server: SwitchServer, *,
                              task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
                              ) -> ServerStats:
    """Serve until SIGINT/SIGTERM, then drain and return the stats (the CLI prints the summary)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        task_status.started(listeners)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                server.shutdown()
                break
    return server.stats
