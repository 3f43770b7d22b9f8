"""The Trio shell of the switch: listeners, one reader task per connection, serialized writes, drain.

Everything that decides *what* to answer lives in ``switch.host`` (pure); this module only moves
frames, waits for the ledger to make a decision durable before replying, and keeps connections
from affecting each other: a malformed frame or a crashing request costs at most its own
connection, never the server.

A ``SwitchServer`` is one listener: one dialect, one framing, one ``Host``, plain TCP or TLS
(``ServerConfig.ssl_context``). Several listeners in one switch (plain ISO 8583 on 8583, CUP over
TLS on 9583) are a ``SwitchGroup``: one ``SwitchServer`` per listener, each with its own ``Host``
(hosts differ per dialect family: CUP reads 60.3 and field 48, ISO field 70 and 74-97, and the
"sign on first" codes differ), all sharing one ledger and its group committer, so every posting
lands in one book with one sequence, one fsync serves every listener, and settlement sees a
terminal's postings whichever listener they came through. They also share the fault plan, the
journal and the metrics. Sessions and working keys stay per listener: a terminal signs on where
it transacts.

MACs: the host marks a response that needs one with the MAC placeholder; after encoding, the
server asks ``Host.response_mac`` for the algorithm and the session's key and replaces the
placeholder with the MAC (``switch.security.apply_mac``), so what is MACed is exactly what is sent.

Hostile peers: at most ``max_pending`` requests per connection are in flight (the reader stops
reading while that many wait), a peer that stops reading is closed after the idle timeout once
no write has finished for that long, and each listener holds at most ``max_connections``.
Layout: ``server_core`` (per-connection state, decide/encode/MAC), ``server_faults`` (faults on
the wire), ``server_listen`` (accept loop, TLS, ``SwitchGroup``), this module (the Trio tasks).
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from functools import partial

import trio

from switch.codec import Message, MessageDecodeError
from switch.codec.framing import FramingError, reply_tpdu
from switch.codec.stream import FrameStream
from switch.commit import CommitError
from switch.faults import EMPTY_DECISION
from switch.server_core import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING,
    NO_FAULTS,
    ServerConfig,
    ServerStats,
    _Applied,
    _CloseConnection,
    _Connection,
    _peer_name,
    utc_now,
)
from switch.server_faults import _FaultedServer
from switch.server_listen import (
    Listener,
    SwitchGroup,
    listener_address,
    open_reuse_port_listeners,
    serve_listeners,
    server_ssl_context,
)
from switch.wire_hints import hint_for_framing_error

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_PENDING", "Listener", "ServerConfig", "ServerStats", "SwitchGroup",
           "SwitchServer", "listener_address", "run_until_signalled", "server_ssl_context", "utc_now"]

log = logging.getLogger("switch.server")


class SwitchServer(_FaultedServer):
    """Serves one dialect and framing on TCP; host decisions are made by ``host``.

    Per frame: decode → fault plan (``faults.decide``) → host decision → ledger commit → reply. A
    clean fault plan takes the fast path inline in the reader; any fault moves that one request
    to its own task, so a delayed reply never holds up the others on the connection.
    """

    # -- connection handling -------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until EOF, idle timeout, a framing error, a fault or shutdown."""
        peer = _peer_name(stream)
        self.stats.connections_total += 1
        if self.faults.maintenance == "refuse":
            log.info("%s: refused (maintenance)", peer)
            await trio.aclose_forcefully(stream)
            return
        limit = self.config.max_connections
        if limit is not None and len(self._connections) >= limit:
            self.stats.connections_refused += 1
            self._refusals.event(
                f"{peer}: connection refused: {limit} connections open (--max-connections {limit})",
                f"connections still refused at --max-connections {limit}: {{count}} in the last {{every:g}}s")
            await trio.aclose_forcefully(stream)
            return
        self._refusals.ended("connections accepted again below --max-connections after {count} refused")
        conn = _Connection(FrameStream(stream, self.framing), peer, self.stats.connections_total,
                           max(1, self.config.max_pending))
        self._connections.add(conn)
        self.stats.connections_open += 1
        if self.metrics:
            self.metrics.connection_opened()
        try:
            async with trio.open_nursery() as tasks:
                conn.scope = tasks.cancel_scope
                watchdog = trio.CancelScope()
                tasks.start_soon(self._writer, conn, watchdog)
                if self.config.idle_timeout:
                    tasks.start_soon(self._idle_watchdog, conn, self.config.idle_timeout, watchdog)
                with conn.reader_scope:
                    if self._draining:
                        conn.reader_scope.cancel()
                    await self._read_loop(conn, tasks)
                # Reader finished (EOF, error, idle or drain): in-flight requests still get answered,
                # and the watchdog stays on until the writer is done, so a peer that never reads
                # them cannot hold the connection open.
                conn.reader_done = True
                conn.wakeup.set()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("%s: connection lost", peer)
        except* Exception as group:  # a bug costs this connection only; the server keeps accepting
            log.error("%s: connection closed after an internal error", peer, exc_info=group)
        finally:
            self._connections.discard(conn)
            self.stats.connections_open -= 1
            if self.metrics:
                self.metrics.connection_closed()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _idle_watchdog(self, conn: _Connection, idle: float, scope: trio.CancelScope) -> None:
        """Close a connection with no frame for ``idle`` seconds and nothing in flight, or whose
        writes have not finished for ``idle`` seconds (its peer does not read).

        One sleeping task per connection instead of a cancel scope around every read: the reader
        and writer only stamp ``last_activity``, which keeps the per-frame cost off the hot path.
        A request in flight (host, commit, a delay fault) keeps the connection busy; a write that
        makes no progress does not.
        """
        with scope:
            while True:
                await trio.sleep_until(conn.last_activity + idle)
                now = trio.current_time()
                if now < conn.last_activity + idle:
                    continue  # a frame came in or a write finished meanwhile
                if conn.sending:
                    self.stats.connections_dropped += 1
                    log.info("%s: peer has read nothing for %.0fs with %d replies pending, closing", conn.peer,
                             idle, conn.in_flight)
                    if conn.scope is not None:
                        conn.scope.cancel()
                    return
                if conn.in_flight or conn.held:
                    conn.last_activity = now  # busy, not idle (a held request awaits its release): look again later
                    continue
                if not conn.reader_done:
                    log.info("%s: idle for %.0fs, closing", conn.peer, idle)
                    conn.reader_scope.cancel()
                return

    async def _read_loop(self, conn: _Connection, tasks: trio.Nursery) -> None:
        frames = conn.frames
        journal = self.journal
        faults = self.faults
        owner = self.owner
        clock = trio.lowlevel.current_clock()  # ``trio.current_time()`` is this, two calls further
        while True:
            while conn.full:  # backpressure: read no more until replies leave
                conn.room = trio.Event()
                await conn.room.wait()
            try:
                frame = await frames.receive_frame()
            except FramingError as exc:
                self.stats.connections_dropped += 1
                hint = hint_for_framing_error(exc, self.framing)
                log.warning("%s: closing connection: %s%s", conn.peer, exc, f"; {hint}" if hint else "")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if frame is None:
                return
            conn.last_activity = clock.current_time()
            if frame.is_keepalive:
                continue
            arrived = time.monotonic()
            self.stats.frames_in += 1
            conn.in_flight += 1
            payload = frame.payload
            try:
                request: Message | None = self.codec.decode(payload)
                error: MessageDecodeError | None = None
            except MessageDecodeError as exc:
                request, error = None, exc
                self._report_undecodable(conn.peer, exc, (frame.tpdu or b"") + payload)
            if faults.shared is None:
                plan = faults.decide(request, connection=conn.number, elapsed=arrived - self._started)
            else:  # multi-instance: a counted rule that matched is counted in the database (switch.faults.shared)
                plan = await faults.decide_shared(request, connection=conn.number, elapsed=arrived - self._started)
            clean = plan is EMPTY_DECISION or plan.is_clean
            applied = NO_FAULTS if clean else _Applied.of(plan)
            request_seq = journal.record_in(connection=conn.number, peer=conn.peer, raw=payload, message=request,
                                            error=error, faults=applied.actions, rules=applied.rules
                                            ) if journal is not None else None
            tpdu = reply_tpdu(frame.tpdu) if frame.tpdu else None
            if not clean:
                if self.metrics:
                    for action, rule in zip(applied.actions, applied.rules, strict=True):
                        self.metrics.fault(action, rule)
                tasks.start_soon(self._serve_faulted, conn, request, error, plan, applied, tpdu, request_seq,
                                 arrived, payload)
                continue
            try:
                if owner is None or request is None:
                    reply, commit_seq = self._decide(request, error, conn.peer, payload)
                else:  # multi-instance: the reader waits while the terminal is taken over, keeping order
                    reply, commit_seq = await self._decide_owned(request, error, conn.peer, payload)
                outgoing = self._outgoing(reply, commit_seq, request, error, tpdu, request_seq, arrived)
            except _CloseConnection as exc:
                self._unanswered(request, error, request_seq, NO_FAULTS, f"connection closed: {exc}")
                conn.finished(1)
                self.stats.connections_dropped += 1
                log.warning("%s: closing connection: %s", conn.peer, exc)
                return
            if outgoing is None:
                self._unanswered(request, error, request_seq, NO_FAULTS, "no response")
            conn.post(outgoing)

    async def _writer(self, conn: _Connection, watchdog: trio.CancelScope) -> None:
        try:
            await self._write_loop(conn)
        finally:
            watchdog.cancel()  # nothing more to write: the reader alone decides when the connection ends
            self._held_connection_closed(conn)  # requests held here are dropped, as a real host drops them

    async def _write_loop(self, conn: _Connection) -> None:
        """The connection's one writer: waits for durability of a batch of replies, then sends it."""
        clock = trio.lowlevel.current_clock()
        while True:
            await conn.wakeup.wait()
            conn.wakeup = trio.Event()
            while conn.outbox:
                batch, conn.outbox = conn.outbox, []
                durable_after = max(item.commit_seq for item in batch)
                if durable_after:
                    try:
                        await self.committer.wait_committed(durable_after)
                    except CommitError as exc:
                        log.error("%s: ledger not durable, %d replies withheld: %s", conn.peer, len(batch), exc)
                        conn.reader_scope.cancel()
                        return
                conn.sending += 1
                try:
                    await conn.frames.send_raw(b"".join([item.framed for item in batch]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.reader_scope.cancel()
                    return
                finally:
                    conn.sending -= 1
                conn.last_activity = clock.current_time()  # bytes moved: the peer reads
                conn.finished(len(batch))
                self.stats.responses_out += len(batch)
                self._sent(conn, batch, NO_FAULTS)
            if conn.reader_done and conn.in_flight <= 0:
                return

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``shutdown()`` or cancellation; then drain in-flight work and close the ledger.

        Reports the listeners opened (``listener_address`` gives each one's address).
        """
        async with trio.open_nursery() as root:
            await root.start(self.committer.run)
            if self.owner is not None:
                await root.start(self.owner.run)
            try:
                await self.accept(task_status=task_status)
            finally:
                root.cancel_scope.cancel()  # the committer flushes what is pending on its way out
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.ledger.close)

    async def accept(self, *, task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve connections until ``shutdown()``, then drain (``grace_period``).

        Neither runs the committer nor closes the ledger: ``serve`` (or a ``SwitchGroup``) does.
        """
        async with trio.open_nursery() as handlers:
            try:
                if self.config.reuse_port:
                    listeners: list[Listener] = list(await open_reuse_port_listeners(self.config.port,
                                                                                     self.config.host))
                else:
                    listeners = list(await trio.open_tcp_listeners(self.config.port, host=self.config.host))
            except OSError as exc:  # name the address: with several listeners "address in use" says too little
                raise OSError(exc.errno, f"{self.config.host}:{self.config.port}: {exc.strerror or exc}") from exc
            if self.config.ssl_context is not None:
                listeners = [trio.SSLListener(listener, self.config.ssl_context, https_compatible=False)
                             for listener in listeners]
            self.listeners = listeners
            async with trio.open_nursery() as acceptor:
                self._accepting = acceptor.cancel_scope
                if self._draining:
                    acceptor.cancel_scope.cancel()
                await acceptor.start(partial(serve_listeners, self.handle_stream, listeners,
                                             handler_nursery=handlers))
                task_status.started(listeners)
            # accepting stopped: connections get the grace period to finish in-flight requests
            self._begin_drain(handlers)

    def _begin_drain(self, handlers: trio.Nursery) -> None:
        self._draining = True
        dropped = self.held.drop_all(self)  # the drain must not wait for releases that will never come
        if dropped:
            log.info("shutdown: %d held requests dropped unanswered", dropped)
        for conn in list(self._connections):
            conn.reader_scope.cancel()
        handlers.cancel_scope.deadline = trio.current_time() + self.config.grace_period

    def shutdown(self) -> None:
        """Stop accepting; in-flight requests get ``grace_period`` seconds to complete."""
        self._draining = True
        if self._accepting is not None:
            self._accepting.cancel()


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between young collections while serving (CPython's default: 700)."""


def tune_gc_for_serving() -> None:
    """Make the cyclic garbage collector cheaper per request for a long-running switch process.

    Measured with ``scripts/bench_switch.py``: at CPython's defaults the collector took 10-15 us of
    every request (a tenth of the switch's CPU): full collections walked every object loaded at
    start-up (modules, dialects, scenario, ledger state) and young ones ran every ~70 requests.
    Everything alive once serving starts is frozen (never scanned again: it lives as long as the
    process) and young collections run every ``GC_YOUNG_THRESHOLD`` allocations: about 5 us.
    Only ``run_until_signalled`` (the process's own server) does this, not a server inside
    someone else's program.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young:  # 0: the collector is off, and stays off
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


async def run_until_signalled(server: SwitchServer | SwitchGroup, *,
                              task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED
                              ) -> ServerStats:
    """Serve until SIGINT/SIGTERM, then drain and return the stats (the CLI prints the summary)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        tune_gc_for_serving()
        task_status.started(listeners)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                server.shutdown()
                break
    return server.stats
