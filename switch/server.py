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
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import trio

from switch.codec import Codec, Message, MessageDecodeError, MessageEncodeError
from switch.codec.composite import CompositeFieldError, CupHeader
from switch.codec.framing import Framing, FramingError, reply_tpdu
from switch.codec.stream import FrameStream
from switch.commit import CommitError, GroupCommitter
from switch.faults import EMPTY_DECISION, FaultDecision, FaultEngine
from switch.host import Host
from switch.journal import Journal
from switch.ledger import Ledger
from switch.metrics import SwitchMetrics
from switch.security import SecurityError, apply_mac, mac_field

log = logging.getLogger("switch.server")

_LOGGED_OUTCOMES = frozenset({"mac-failed", "unknown-terminal", "unknown-merchant", "signon-failed"})
"""Decisions logged at WARNING: a terminal the switch cannot trust or does not know."""


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
    ssl_context: ssl.SSLContext | None = None  # TLS on this listener (server side, see server_ssl_context)


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate (chain) and its private key.

    Raises ValueError naming the file when either cannot be used (missing, not PEM, not a pair).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ValueError(f"TLS: no such file: {exc.filename or cert_file}") from None
    except (ssl.SSLError, OSError) as exc:
        detail = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ValueError(f"TLS: certificate {cert_file} with key {key_file} cannot be used: they must be a PEM "
                         f"certificate and its matching PEM private key ({detail})") from None
    return context


def listener_address(listener: trio.abc.Listener[trio.abc.Stream]) -> tuple[str, int]:
    """(host, port) a listener is bound to, through a TLS wrapper if there is one."""
    while not hasattr(listener, "socket"):
        listener = listener.transport_listener  # type: ignore[attr-defined]
    host, port, *_ = listener.socket.getsockname()  # type: ignore[attr-defined]
    return host, port


class _Connection:
    """Per-connection state: frame stream, outbox of replies, in-flight count, cancel scopes.

    Replies go through the outbox to one writer task, which waits once for the ledger commit that
    covers a whole batch and then sends the batch in one write: one fsync wait and one syscall
    serve many requests, which is what keeps a durable switch close to a bare decode/encode loop.
    Faulted replies (delays, slices, garbage...) are written by their own task through the same
    FrameStream, whose lock keeps frames from interleaving.
    """

    __slots__ = ("frames", "in_flight", "last_activity", "number", "outbox", "peer", "reader_done", "reader_scope",
                 "scope", "wakeup")

    def __init__(self, frames: FrameStream, peer: str, number: int):
        self.frames = frames
        self.peer = peer
        self.number = number
        self.in_flight = 0  # requests read whose reply is neither written nor abandoned
        self.reader_scope = trio.CancelScope()
        self.scope: trio.CancelScope | None = None  # the whole connection (close/reset faults cancel it)
        self.reader_done = False
        self.last_activity = trio.current_time()  # for the idle watchdog: a stamp per frame is cheap
        self.outbox: list[_Outgoing] = []
        self.wakeup = trio.Event()

    def post(self, item: _Outgoing | None) -> None:
        """Hand a reply (or, with None, the end of a request that gets none) to the writer."""
        if item is None:
            self.in_flight -= 1
        else:
            self.outbox.append(item)
        self.wakeup.set()


class _Outgoing:
    """A decided reply waiting for its ledger commit and the writer."""

    __slots__ = ("arrived", "commit_seq", "framed", "payload", "reply", "request_mti", "request_seq")

    def __init__(self, commit_seq: int, framed: bytes, payload: bytes, reply: Message | None, request_mti: str,
                 request_seq: int | None, arrived: float):
        self.commit_seq = commit_seq
        self.framed = framed
        self.payload = payload
        self.reply = reply
        self.request_mti = request_mti
        self.request_seq = request_seq
        self.arrived = arrived


class SwitchServer:
    """Serves one dialect and framing on TCP; host decisions are made by ``host``.

    Per frame: decode → fault plan (``faults.decide``) → host decision → ledger commit → reply. A
    clean fault plan takes the fast path inline in the reader; any fault moves that one request
    to its own task, so a delayed reply never holds up the others on the connection.
    """

    def __init__(self, *, codec: Codec, framing: Framing, host: Host, ledger: Ledger,
                 committer: GroupCommitter, config: ServerConfig | None = None,
                 clock: Callable[[], datetime] = utc_now, faults: FaultEngine | None = None,
                 journal: Journal | None = None, metrics: SwitchMetrics | None = None):
        self.codec = codec
        self.framing = framing
        self.host = host
        self.ledger = ledger
        self.committer = committer
        self.config = config or ServerConfig()
        self.clock = clock
        self.faults = faults or FaultEngine(seed=0)
        self.journal = journal
        self.metrics = metrics
        self.stats = ServerStats()
        self._started = time.monotonic()
        self._debug = log.isEnabledFor(logging.DEBUG)  # once: the per-request check is measurable
        self._connections: set[_Connection] = set()
        self.listeners: list[Listener] = []
        """What ``accept`` listens on (a ``trio.SSLListener`` around each socket with TLS)."""
        self._accepting: trio.CancelScope | None = None
        self._draining = False

    # -- connection handling -------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until EOF, idle timeout, a framing error, a fault or shutdown."""
        peer = _peer_name(stream)
        self.stats.connections_total += 1
        if self.faults.maintenance == "refuse":
            log.info("%s: refused (maintenance)", peer)
            await trio.aclose_forcefully(stream)
            return
        conn = _Connection(FrameStream(stream, self.framing), peer, self.stats.connections_total)
        self._connections.add(conn)
        self.stats.connections_open += 1
        if self.metrics:
            self.metrics.connection_opened()
        try:
            async with trio.open_nursery() as tasks:
                conn.scope = tasks.cancel_scope
                tasks.start_soon(self._write_loop, conn)
                watchdog = trio.CancelScope()
                if self.config.idle_timeout:
                    tasks.start_soon(self._idle_watchdog, conn, self.config.idle_timeout, watchdog)
                with conn.reader_scope:
                    if self._draining:
                        conn.reader_scope.cancel()
                    await self._read_loop(conn, tasks)
                # Reader finished (EOF, error, idle or drain): in-flight requests still get answered.
                watchdog.cancel()
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
        """Close a connection with no frame for ``idle`` seconds and nothing in flight.

        One sleeping task per connection instead of a cancel scope around every read: the reader
        only stamps ``last_activity``, which keeps the per-frame cost off the hot path.
        """
        with scope:
            while True:
                await trio.sleep_until(conn.last_activity + idle)
                if trio.current_time() < conn.last_activity + idle:
                    continue  # a frame came in meanwhile
                if conn.in_flight:
                    conn.last_activity = trio.current_time()  # busy, not idle: look again later
                    continue
                log.info("%s: idle for %.0fs, closing", conn.peer, idle)
                conn.reader_scope.cancel()
                return

    async def _read_loop(self, conn: _Connection, tasks: trio.Nursery) -> None:
        frames = conn.frames
        journal = self.journal
        faults = self.faults
        while True:
            try:
                frame = await frames.receive_frame()
            except FramingError as exc:
                self.stats.connections_dropped += 1
                log.warning("%s: closing connection: %s", conn.peer, exc)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if frame is None:
                return
            conn.last_activity = trio.current_time()
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
            plan = faults.decide(request, connection=conn.number, elapsed=arrived - self._started)
            clean = plan is EMPTY_DECISION or plan.is_clean
            applied = () if clean else plan.actions_applied()
            request_seq = journal.record_in(connection=conn.number, peer=conn.peer, raw=payload, message=request,
                                            error=error, faults=applied) if journal is not None else None
            tpdu = reply_tpdu(frame.tpdu) if frame.tpdu else None
            if not clean:
                if self.metrics:
                    for action in applied:
                        self.metrics.fault(action)
                tasks.start_soon(self._serve_faulted, conn, request, error, plan, applied, tpdu, request_seq,
                                 arrived, payload)
                continue
            try:
                reply, commit_seq = self._decide(request, error, conn.peer, payload)
            except _CloseConnection as exc:
                conn.in_flight -= 1
                self.stats.connections_dropped += 1
                log.warning("%s: closing connection: %s", conn.peer, exc)
                return
            outgoing = self._outgoing(reply, commit_seq, request, error, tpdu, request_seq, arrived)
            if outgoing is None:
                self._unanswered(request, error, request_seq, (), "no response")
            conn.post(outgoing)

    def _outgoing(self, reply: Message | None, commit_seq: int | None, request: Message | None,
                  error: MessageDecodeError | None, tpdu: bytes | None, request_seq: int | None,
                  arrived: float) -> _Outgoing | None:
        if reply is None:
            return None
        payload = self._encode(reply)
        if payload is None:
            return None
        if self.host.macs:
            payload, reply, _ = self._mac(reply, payload)
        mti = request.mti if request is not None else (error.mti if error is not None else None) or "????"
        return _Outgoing(commit_seq or 0, self.framing.encode(payload, tpdu), payload, reply, mti, request_seq,
                         arrived)

    def _unanswered(self, request: Message | None, error: MessageDecodeError | None, request_seq: int | None,
                    faults: tuple[str, ...], note: str) -> None:
        if self.metrics:
            mti = request.mti if request is not None else (error.mti if error is not None else None) or "????"
            self.metrics.message(mti, None)
        if self.journal is not None and request_seq is not None:
            self.journal.record_unsent(request_seq, faults, note)

    async def _write_loop(self, conn: _Connection) -> None:
        """The connection's one writer: waits for durability of a batch of replies, then sends it."""
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
                try:
                    await conn.frames.send_raw(b"".join([item.framed for item in batch]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.reader_scope.cancel()
                    return
                conn.in_flight -= len(batch)
                self.stats.responses_out += len(batch)
                self._sent(conn, batch, ())
            if conn.reader_done and conn.in_flight <= 0:
                return

    def _sent(self, conn: _Connection, batch: list[_Outgoing], faults: tuple[str, ...], note: str = "") -> None:
        journal, metrics = self.journal, self.metrics
        if journal is None and metrics is None:
            return
        now = time.monotonic()
        for item in batch:
            if journal is not None:
                journal.record_out(connection=conn.number, peer=conn.peer, raw=item.payload, message=item.reply,
                                   request_seq=item.request_seq, faults=faults, note=note)
            if metrics is not None:
                reply = item.reply  # None: the bytes sent were no message (garbage), so no code was sent
                metrics.message(item.request_mti, None if reply is None else
                                reply.fields.get(39) or reply.fields.get(48, "")[30:31])
                metrics.latency(now - item.arrived)

    def _decide(self, request: Message | None, error: MessageDecodeError | None, peer: str, raw: bytes
                ) -> tuple[Message | None, int | None]:
        """The host's answer (None: stay silent) and the ledger seq it must wait for."""
        if request is None:
            assert error is not None
            self.stats.format_errors += 1
            decision = self.host.format_error(error.mti or "", error.partial, self.clock(), failed_field=error.field)
            if decision is None or decision.response is None:
                raise _CloseConnection(f"undecodable frame ({error})")
            log.info("%s: format error answered with 30: %s", peer, error)
            return decision.response, decision.commit_seq
        try:
            decision = self.host.handle(request, self.clock(), raw=raw)
        except Exception:  # a host bug must cost one request, never the server
            log.exception("%s: host failed on %s; request dropped", peer, request.mti)
            return None, None
        if decision.outcome == "approved":
            self.stats.approvals += 1
        elif decision.outcome in _LOGGED_OUTCOMES:
            log.warning("%s: %s %s: %s", peer, request.mti, decision.outcome, decision.reason)
        if decision.response is None:
            log.info("%s: %s not answered: %s", peer, request.mti, decision.reason)
            return None, None
        if self._debug:
            log.debug("%s: %s -> %s (%s)", peer, request.mti, decision.outcome, decision.reason)
        return decision.response, decision.commit_seq

    def _encode(self, reply: Message) -> bytes | None:
        try:
            return self.codec.encode(reply)
        except MessageEncodeError:
            log.exception("response %s could not be encoded; dropped", reply.mti)
            return None

    def _mac(self, reply: Message, payload: bytes) -> tuple[bytes, Message, bool]:
        """The encoded reply with its MAC placeholder replaced by the MAC (when the host marked one),
        the reply with the MAC as its field value (for the journal), and whether it was MACed."""
        spec = self.host.response_mac(reply)
        placement = self.host.mac_placement
        if spec is None or placement is None:
            return payload, reply, False
        try:
            payload = apply_mac(payload, spec[0], spec[1], placement)
        except SecurityError:
            log.exception("response %s could not be MACed; sent with an all-zero MAC", reply.mti)
            return payload, reply, False
        return payload, _with_wire_mac(reply, payload, placement.field_length, placement.hex_field), True

    # -- fault execution ------------------------------------------------------------------

    async def _serve_faulted(self, conn: _Connection, request: Message | None, error: MessageDecodeError | None,
                             plan: FaultDecision, applied: tuple[str, ...], tpdu: bytes | None,
                             request_seq: int | None, arrived: float, raw: bytes) -> None:
        """Run one request through its fault plan, in the order FaultDecision documents."""
        finished = False
        try:
            if plan.delay_request:
                await trio.sleep(plan.delay_request)
            if plan.reset_before or plan.close_before or plan.drop_request:
                finished = True
                await self._end_unanswered(conn, request, error, request_seq, applied, reset=plan.reset_before,
                                           close=plan.close_before, when="before processing",
                                           dropped="request dropped unprocessed")
                return
            if plan.respond is not None:
                reply = self.host.unprocessed_reply(request, plan.respond) if request is not None else None
                commit_seq = None
                if reply is None and request is None:  # nothing readable to answer: as the host would
                    reply, commit_seq = self._decide(request, error, conn.peer, raw)
                if reply is None:
                    return
            else:
                reply, commit_seq = self._decide(request, error, conn.peer, raw)
                if reply is None:
                    return
            if commit_seq:
                await self.committer.wait_committed(commit_seq)  # the posting exists before anything else
            if plan.delay_response:
                await trio.sleep(plan.delay_response)
            if plan.reset_after or plan.close_after or plan.drop_response:
                finished = True
                await self._end_unanswered(conn, request, error, request_seq, applied, reset=plan.reset_after,
                                           close=plan.close_after, when="after processing",
                                           dropped="response dropped after commit")
                return
            payload, reply = self._faulted_payload(reply, plan)
            if payload is None:
                return
            frame = self._faulted_frame(payload, tpdu, plan)
            await self._faulted_write(conn, frame, plan)
            finished = True
            conn.in_flight -= 1
            self.stats.responses_out += 1
            mti = request.mti if request is not None else "????"
            sent = None if plan.garbage is not None else reply  # the journal decodes what was really sent
            note = "garbage sent" if plan.garbage is not None else ""
            if plan.truncate_at is not None:  # journal the bytes that left, not the whole reply
                kept = max(0, len(frame) - self.framing.header_size - (len(tpdu) if tpdu else 0))
                note = f"truncated: {kept} of {len(payload)} bytes sent, then closed"
                payload, sent = payload[:kept], None
            self._sent(conn, [_Outgoing(0, frame, payload, sent, mti, request_seq, arrived)], applied, note=note)
            if plan.duplicate:
                await self._faulted_write(conn, frame, plan)
                if self.journal is not None:
                    self.journal.record_out(connection=conn.number, peer=conn.peer, raw=payload, message=sent,
                                            request_seq=request_seq, faults=applied, note="the same reply again")
            if plan.truncate_at is not None:
                await self._close(conn, reset=False)
        except _CloseConnection as exc:
            log.warning("%s: closing connection: %s", conn.peer, exc)
            conn.reader_scope.cancel()
        except CommitError as exc:
            log.error("%s: ledger not durable, reply withheld: %s", conn.peer, exc)
            conn.reader_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.reader_scope.cancel()
        finally:
            if not finished:
                conn.post(None)

    async def _end_unanswered(self, conn: _Connection, request: Message | None, error: MessageDecodeError | None,
                              request_seq: int | None, applied: tuple[str, ...], *, reset: bool, close: bool,
                              when: str, dropped: str) -> None:
        """End an exchange with no reply: journal why, then reset or close the connection if asked."""
        note = f"reset {when}" if reset else (f"closed {when}" if close else dropped)
        self._unanswered(request, error, request_seq, applied, note)
        conn.in_flight -= 1
        if reset or close:
            await self._close(conn, reset=reset)

    def _faulted_payload(self, reply: Message, plan: FaultDecision) -> tuple[bytes | None, Message]:
        """Step 6: the reply with wrong echoes, a wrong check value, the sign-on-again header and a
        corrupted MAC applied, encoded and MACed (or the garbage)."""
        if plan.garbage is not None:
            return plan.garbage, reply
        if plan.wrong_echo or plan.wrong_check_value is not None or plan.signon_again:
            fields = dict(reply.fields)
            fields.update(plan.wrong_echo)
            if plan.wrong_check_value is not None and 62 in fields:
                fields[62] = _corrupt_check_value(fields[62], plan.wrong_check_value)
            header = _sign_on_again(reply.header) if plan.signon_again else reply.header
            reply = Message(reply.mti, fields, header)
        if plan.corrupt_mac is not None and self.host.response_mac(reply) is None:
            # no MAC for this terminal: the reply gets a wrong one (an 8-byte field 64 if it had none)
            fields = dict(reply.fields)
            number = 128 if any(number > 64 for number in fields) and 128 in fields else 64
            mac = bytes.fromhex(fields.get(number, "00" * 8))
            fields[number] = _xor(mac, plan.corrupt_mac).hex().upper()
            reply = Message(reply.mti, fields, reply.header)
            return self._encode(reply), reply
        payload = self._encode(reply)
        if payload is None or not self.host.macs:
            return payload, reply
        payload, reply, maced = self._mac(reply, payload)
        placement = self.host.mac_placement
        if plan.corrupt_mac is not None and maced and placement is not None:
            size = placement.field_length
            wire = payload[len(payload) - size:]
            if placement.hex_field:
                wire = _xor(bytes.fromhex(wire.decode("ascii")), plan.corrupt_mac).hex().upper().encode("ascii")
            else:
                wire = _xor(wire, plan.corrupt_mac)
            payload = payload[:len(payload) - size] + wire
            reply = _with_wire_mac(reply, payload, size, placement.hex_field)
        return payload, reply

    def _faulted_frame(self, payload: bytes, tpdu: bytes | None, plan: FaultDecision) -> bytes:
        """Step 7: framing, with a wrong length header or a truncated body when asked."""
        framed = self.framing.encode(payload, tpdu)
        size = self.framing.header_size
        if plan.length_delta:
            declared = len(framed) - size + (size if self.framing.length_includes_itself else 0)
            wrong = max(0, declared + plan.length_delta)
            framed = self.framing.header_saying(wrong) + framed[size:]
        if plan.truncate_at is not None:
            framed = framed[:size + max(0, min(plan.truncate_at, len(framed) - size - 1))]
        return framed

    async def _faulted_write(self, conn: _Connection, frame: bytes, plan: FaultDecision) -> None:
        """Step 8: write whole, in slices with pauses, or under a bandwidth cap.

        The cap paces like a link of that rate: the piece ending at byte k goes out no sooner than
        k / bandwidth seconds after the write began, so the whole reply takes at least
        len(frame) / bandwidth (not one piece less), and deadlines rather than relative sleeps keep
        each timer's overshoot from adding up.
        """
        if plan.slice is None and plan.bandwidth is None:
            await conn.frames.send_raw(frame)
            return
        chunk, pause = plan.slice if plan.slice is not None else (max(1, (plan.bandwidth or 1) // 20), 0.0)
        # The frame stays whole on the wire: replies decided meanwhile wait behind it, as they would
        # behind a slow link, instead of landing between its pieces.
        async with conn.frames.sending() as stream:
            start = trio.current_time()
            for offset in range(0, len(frame), chunk):
                piece = frame[offset:offset + chunk]
                if pause and offset:
                    await trio.sleep(pause)
                if plan.bandwidth:
                    await trio.sleep_until(start + (offset + len(piece)) / plan.bandwidth)
                await stream.send_all(piece)

    async def _close(self, conn: _Connection, *, reset: bool) -> None:
        """Close the connection now: FIN, or RST when ``reset`` (SO_LINGER 0). Pending replies are lost."""
        sock = _socket_of(conn.frames.stream)
        if reset and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(conn.frames.stream)
        if conn.scope is not None:
            conn.scope.cancel()

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``shutdown()`` or cancellation; then drain in-flight work and close the ledger.

        Reports the listeners opened (``listener_address`` gives each one's address).
        """
        async with trio.open_nursery() as root:
            await root.start(self.committer.run)
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
                listeners: list[Listener] = list(await trio.open_tcp_listeners(self.config.port,
                                                                               host=self.config.host))
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
                await acceptor.start(partial(trio.serve_listeners, self.handle_stream, listeners,
                                             handler_nursery=handlers))
                task_status.started(listeners)
            # accepting stopped: connections get the grace period to finish in-flight requests
            self._begin_drain(handlers)

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


Listener = trio.abc.Listener[trio.abc.Stream]
"""What ``serve`` reports: a ``trio.SocketListener``, or a ``trio.SSLListener`` around one."""


class SwitchGroup:
    """Several listeners in one switch: one ``SwitchServer`` each, sharing the ledger and committer.

    See the module docstring for why each listener has its own ``Host``. ``serve`` runs the
    committer once, opens every listener (the first server's listeners come first in the report),
    and on ``shutdown`` drains them all before the ledger is closed once.
    """

    def __init__(self, servers: Sequence[SwitchServer]):
        if not servers:
            raise ValueError("a switch needs at least one listener")
        first = servers[0]
        for other in servers[1:]:
            if other.ledger is not first.ledger or other.committer is not first.committer:
                raise ValueError("the listeners of one switch must share one ledger and one committer")
        self.servers = tuple(servers)
        self.ledger = first.ledger
        self.committer = first.committer

    @property
    def stats(self) -> ServerStats:
        """Every listener's counters added up (for the shutdown summary)."""
        total = ServerStats(started=min(server.stats.started for server in self.servers))
        for server in self.servers:
            for name in ("connections_total", "connections_open", "frames_in", "responses_out", "approvals",
                         "format_errors", "connections_dropped"):
                setattr(total, name, getattr(total, name) + getattr(server.stats, name))
        return total

    async def serve(self, *, task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as root:
            await root.start(self.committer.run)
            try:
                async with trio.open_nursery() as accepting:
                    listeners: list[Listener] = []
                    for server in self.servers:
                        listeners += await accepting.start(server.accept)
                    task_status.started(listeners)
            finally:
                root.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.ledger.close)

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()


def _xor(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask, strict=False))


def _with_wire_mac(reply: Message, payload: bytes, size: int, hex_field: bool) -> Message:
    """``reply`` with its MAC field holding what ``payload`` ends with, as the codec would decode it."""
    wire = payload[len(payload) - size:]
    fields = dict(reply.fields)
    fields[mac_field(reply)] = wire.decode("ascii").upper() if hex_field else wire.hex().upper()
    return Message(reply.mti, fields, reply.header)


def _corrupt_check_value(value: str, mask: bytes) -> str:
    """Field 62 (hex) with its last check value XORed with ``mask``; unchanged if it is not hex."""
    try:
        data = bytes.fromhex(value)
    except ValueError:
        return value
    if len(data) < len(mask):
        return value
    return (data[:len(data) - len(mask)] + _xor(data[len(data) - len(mask):], mask)).hex().upper()


def _sign_on_again(header: str) -> str:
    """A CUP header with processing requirement 3 ("sign on again"); other headers unchanged."""
    try:
        return CupHeader.parse(header).with_requirement(CupHeader.SIGN_ON_AGAIN).format()
    except CompositeFieldError:
        return header


class _CloseConnection(Exception):
    """A frame so broken that no answer is possible: the connection is closed and logged."""


def _socket_of(stream: trio.abc.Stream) -> socket.socket | trio.socket.SocketType | None:
    """The socket under ``stream``, through a TLS wrapper if there is one; None for memory streams."""
    for _ in range(4):  # SSLStream → SocketStream; never deeper in practice
        sock = getattr(stream, "socket", None)
        if sock is not None:
            return sock  # type: ignore[no-any-return]
        stream = getattr(stream, "transport_stream", None)  # type: ignore[assignment]
        if stream is None:
            return None
    return None


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = _socket_of(stream)
    if sock is None:
        return "memory"
    try:
        host, port, *_ = sock.getpeername()
        return f"{host}:{port}"
    except OSError:
        return "?"


async def run_until_signalled(server: SwitchServer | SwitchGroup, *,
                              task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED
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
