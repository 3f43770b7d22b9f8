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
from switch.codec.framing import Framing, FramingError, reply_tpdu
from switch.codec.stream import FrameStream
from switch.commit import CommitError, GroupCommitter
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
    """Per-connection state: frame stream, outbox of replies, in-flight count, reader scope.

    Replies go through the outbox to one writer task, which waits once for the ledger commit that
    covers a whole batch and then sends the batch in one write: one fsync wait and one syscall
    serve many requests, which is what keeps a durable switch close to a bare decode/encode loop.
    """

    __slots__ = ("frames", "in_flight", "number", "outbox", "peer", "reader_done", "reader_scope", "wakeup")

    def __init__(self, frames: FrameStream, peer: str, number: int):
        self.frames = frames
        self.peer = peer
        self.number = number
        self.in_flight = 0  # requests read whose reply is neither written nor abandoned
        self.reader_scope = trio.CancelScope()
        self.reader_done = False
        self.outbox: list[tuple[int, bytes]] = []  # (ledger seq to be durable first or 0, framed reply)
        self.wakeup = trio.Event()

    def post(self, commit_seq: int | None, framed: bytes | None) -> None:
        """Hand a reply (or, with ``framed`` None, the end of a request that gets none) to the writer."""
        if framed is None:
            self.in_flight -= 1
        else:
            self.outbox.append((commit_seq or 0, framed))
        self.wakeup.set()


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
        self.stats.connections_total += 1
        conn = _Connection(FrameStream(stream, self.framing), peer, self.stats.connections_total)
        self._connections.add(conn)
        self.stats.connections_open += 1
        try:
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._write_loop, conn)
                with conn.reader_scope:
                    if self._draining:
                        conn.reader_scope.cancel()
                    await self._read_loop(conn)
                # Reader finished (EOF, error, idle or drain): in-flight requests still get answered.
                conn.reader_done = True
                conn.wakeup.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("%s: connection lost", peer)
        finally:
            self._connections.discard(conn)
            self.stats.connections_open -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _read_loop(self, conn: _Connection) -> None:
        idle = self.config.idle_timeout or float("inf")
        frames = conn.frames
        tpdu_reply = self.framing.tpdu
        while True:
            try:
                with trio.move_on_after(idle) as idle_scope:
                    frame = await frames.receive_frame()
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
            try:
                reply, commit_seq = self.decide(frame.payload, peer=conn.peer)
            except _CloseConnection as exc:
                conn.in_flight -= 1
                self.stats.connections_dropped += 1
                log.warning("%s: closing connection: %s", conn.peer, exc)
                return
            if reply is None:
                conn.post(None, None)
                continue
            tpdu = reply_tpdu(frame.tpdu) if tpdu_reply and frame.tpdu else None
            conn.post(commit_seq, self.framing.encode(reply, tpdu))

    async def _write_loop(self, conn: _Connection) -> None:
        """The connection's one writer: waits for durability of a batch of replies, then sends it."""
        while True:
            await conn.wakeup.wait()
            conn.wakeup = trio.Event()
            while conn.outbox:
                batch, conn.outbox = conn.outbox, []
                durable_after = max(seq for seq, _ in batch)
                if durable_after:
                    try:
                        await self.committer.wait_committed(durable_after)
                    except CommitError as exc:
                        log.error("%s: ledger not durable, %d replies withheld: %s", conn.peer, len(batch), exc)
                        conn.reader_scope.cancel()
                        return
                try:
                    await conn.frames.send_raw(b"".join([framed for _, framed in batch]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.reader_scope.cancel()
                    return
                conn.in_flight -= len(batch)
                self.stats.responses_out += len(batch)
            if conn.reader_done and conn.in_flight <= 0:
                return

    def decide(self, payload: bytes, *, peer: str = "-") -> tuple[bytes | None, int | None]:
        """Decode and decide: the reply payload (None: stay silent) and the ledger seq it must wait for."""
        try:
            request = self.codec.decode(payload)
        except MessageDecodeError as exc:
            self.stats.format_errors += 1
            decision = self.host.format_error(exc.mti or "", exc.partial, self.clock(), failed_field=exc.field)
            if decision is None or decision.response is None:
                raise _CloseConnection(f"undecodable frame ({exc})") from None
            log.info("%s: format error answered with 30: %s", peer, exc)
            return self._encode(decision, None), decision.commit_seq
        try:
            decision = self.host.handle(request, self.clock())
        except Exception:  # a host bug must cost one request, never the server
            log.exception("%s: host failed on %s; request dropped", peer, request.mti)
            return None, None
        if decision.outcome == "approved":
            self.stats.approvals += 1
        if decision.response is None:
            log.info("%s: %s not answered: %s", peer, request.mti, decision.reason)
            return None, None
        log.debug("%s: %s -> %s (%s)", peer, request.mti, decision.outcome, decision.reason)
        return self._encode(decision, request), decision.commit_seq

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
