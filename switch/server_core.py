"""The switch's per-connection state and the synchronous half of serving a frame.

``_ServerCore`` decides, encodes and MACs replies and journals them; ``switch.server_faults``
adds the fault execution on the wire and ``switch.server`` the Trio tasks (reader, writer,
idle watchdog, listeners). Split this way so that each file stays readable; ``switch.server``
re-exports the public names.

Every reply either encodes or the connection is closed: a reply that does not encode (a 30 that
echoes a field read before the decode failed, which the codec then refuses) is retried as a
minimal reply, the MTI, 39 and only the fields that encode on their own; if even that fails the
caller closes the connection with one log line, never silence.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from switch.codec import Codec, Message, MessageDecodeError, MessageEncodeError
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.faults import FaultDecision, FaultEngine
from switch.held import HeldRequest, HeldRequests
from switch.host import Host
from switch.journal import Journal
from switch.ledger import Ledger, LedgerError
from switch.metrics import SwitchMetrics
from switch.security import SecurityError, apply_mac, mac_field
from switch.server_terminals import TerminalOwner
from switch.wire_hints import hint_for_undecodable, readable_decode_error

log = logging.getLogger("switch.server")

_LOGGED_OUTCOMES = frozenset({"mac-failed", "unknown-terminal", "unknown-merchant", "signon-failed"})
"""Decisions logged at WARNING: a terminal the switch cannot trust or does not know."""

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING = 64
REPORT_EVERY = 10.0  # seconds between summary lines of a rate-limited log
TERMINAL_BUSY_CODE = "91"
"""Multi-instance: the answer when another instance keeps the request's terminal past the wait
(issuer unavailable: the terminal retries or reverses, and nothing was decided here)."""


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
    connections_refused: int = 0  # over max_connections

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
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS  # per listener; more are accepted and closed at once
    max_pending: int = DEFAULT_MAX_PENDING  # requests read but not yet answered, per connection
    reuse_port: bool = False  # SO_REUSEPORT: several worker processes on one port (serve --workers)



class RateLimitedLog:
    """One log line for the first of a run of events, then at most one summary per ``every`` seconds.

    For events a hostile or overloaded peer can cause in a tight loop (accept failures at the fd
    limit, connections refused over ``--max-connections``): each line says how many were folded in.
    Times come from ``trio.current_time`` so tests can run it on a virtual clock.
    """

    def __init__(self, every: float = REPORT_EVERY, level: int = logging.WARNING):
        self.every = every
        self.level = level
        self.suppressed = 0
        self.total = 0
        self._next: float | None = None  # when the next line may be written; None: no run under way

    def due(self) -> bool:
        """Whether the next ``event`` writes a line: lets a caller skip building a costly message."""
        return self._next is None or trio.current_time() >= self._next

    def event(self, first: str, again: str) -> None:
        """Log ``first`` now, or fold this event into the next ``again`` line (``{count}``, ``{every}``)."""
        self.total += 1
        now = trio.current_time()
        if self._next is None:
            log.log(self.level, "%s", first)
            self._next = now + self.every
        elif now >= self._next:
            log.log(self.level, "%s", again.format(count=self.suppressed + 1, every=self.every))
            self.suppressed = 0
            self._next = now + self.every
        else:
            self.suppressed += 1

    def ended(self, line: str) -> None:
        """The run is over: log ``line`` (``{count}``: events in the run) if one was under way."""
        if self._next is not None:
            log.log(self.level, "%s", line.format(count=self.total))
            self._next = None
            self.suppressed = 0
            self.total = 0


class _Connection:
    """Per-connection state: frame stream, outbox of replies, in-flight count, cancel scopes.

    Replies go through the outbox to one writer task, which waits once for the ledger commit that
    covers a whole batch and then sends the batch in one write: one fsync wait and one syscall
    serve many requests, which is what keeps a durable switch close to a bare decode/encode loop.
    Faulted replies (delays, slices, garbage...) are written by their own task through the same
    FrameStream, whose lock keeps frames from interleaving.

    Backpressure: at most ``max_pending`` requests are in flight; the reader waits on ``room``
    before reading more, so a peer that sends and never reads fills its own socket buffers, not
    our memory. ``sending`` counts writes under way: a connection whose writes do not finish for
    the idle timeout has a peer that does not read, and is closed.
    """

    __slots__ = ("closed", "frames", "held", "in_flight", "last_activity", "max_pending", "number", "outbox", "peer",
                 "reader_done", "reader_scope", "room", "scope", "sending", "wakeup")

    def __init__(self, frames: FrameStream, peer: str, number: int, max_pending: int = DEFAULT_MAX_PENDING):
        self.frames = frames
        self.peer = peer
        self.number = number
        self.max_pending = max_pending
        self.in_flight = 0  # requests read whose reply is neither written nor abandoned
        self.sending = 0  # writes started and not finished (a peer that does not read keeps this up)
        self.reader_scope = trio.CancelScope()
        self.scope: trio.CancelScope | None = None  # the whole connection (close/reset faults cancel it)
        self.reader_done = False
        self.last_activity = trio.current_time()  # for the idle watchdog: a stamp per frame or write is cheap
        self.outbox: list[_Outgoing] = []
        self.wakeup = trio.Event()
        self.room = trio.Event()  # set when in_flight drops below max_pending
        self.held: set[HeldRequest] = set()  # parked by a hold fault; not in in_flight (no backpressure)
        self.closed = False  # the writer has ended: nothing more can be sent here

    def post(self, item: _Outgoing | None) -> None:
        """Hand a reply (or, with None, the end of a request that gets none) to the writer."""
        if item is None:
            self.finished(1)
        else:
            self.outbox.append(item)
        self.wakeup.set()

    def finished(self, count: int) -> None:
        """``count`` requests are answered or abandoned: the reader may read again if it waited."""
        self.in_flight -= count
        if self.in_flight < self.max_pending:
            self.room.set()

    @property
    def full(self) -> bool:
        return self.in_flight >= self.max_pending


@dataclass(frozen=True, slots=True)
class _Applied:
    """The fault actions applied to one request and, in the same order, the id of the rule behind
    each (``FaultDecision.actions_applied`` / ``rules_applied``): what the journal and metrics say."""

    actions: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()

    @classmethod
    def of(cls, plan: FaultDecision) -> _Applied:
        return cls(plan.actions_applied(), plan.rules_applied())


NO_FAULTS = _Applied()


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



class _ServerCore:
    """Decide, encode, MAC and journal one reply: the synchronous half of serving a frame."""

    def __init__(self, *, codec: Codec, framing: Framing, host: Host, ledger: Ledger,
                 committer: GroupCommitter, config: ServerConfig | None = None,
                 clock: Callable[[], datetime] = utc_now, faults: FaultEngine | None = None,
                 journal: Journal | None = None, metrics: SwitchMetrics | None = None,
                 held: HeldRequests | None = None, owner: TerminalOwner | None = None):
        self.codec = codec
        self.framing = framing
        self._frame = framing.encoder()
        self.host = host
        self.ledger = ledger
        self.committer = committer
        self.config = config or ServerConfig()
        self.clock = clock
        self.faults = faults or FaultEngine(seed=0)
        self.journal = journal
        self.metrics = metrics
        self.held = held if held is not None else HeldRequests(metrics=metrics)  # shared by a switch's listeners
        self.owner = owner
        """Multi-instance mode only (shared by a switch's listeners): owns terminals before deciding."""
        if owner is not None:
            owner.add_host(host)
        self.stats = ServerStats()
        self._started = time.monotonic()
        self._debug = log.isEnabledFor(logging.DEBUG)  # once: the per-request check is measurable
        self._connections: set[_Connection] = set()
        self.listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        """What ``accept`` listens on (a ``trio.SSLListener`` around each socket with TLS)."""
        self._accepting: trio.CancelScope | None = None
        self._draining = False
        self._refusals = RateLimitedLog()  # connections refused over max_connections
        self._undecodable = RateLimitedLog()  # frames that are no message of this dialect

    def _report_undecodable(self, peer: str, exc: MessageDecodeError, frame: bytes) -> None:
        """A warning, once per burst, that says why a frame is no message here when that can be told
        (another dialect, a TPDU the other way round, TLS or HTTP on a plain port): at the default
        verbosity, since a client in the wrong dialect otherwise sees 30s and the log says nothing.
        The hint costs a few trial decodes, so it is built only when the line is written."""
        report = self._undecodable
        if not report.due():
            report.event("", "")
            return
        hint = hint_for_undecodable(frame, self.codec.dialect, self.framing) or "no shipped dialect or framing fits"
        line = f"{peer}: undecodable frame: {readable_decode_error(exc)}; {hint}".replace("{", "{{").replace("}", "}}")
        report.event(line, line + " (and {count} more such frames in the last {every:g} s)")

    def _outgoing(self, reply: Message | None, commit_seq: int | None, request: Message | None,
                  error: MessageDecodeError | None, tpdu: bytes | None, request_seq: int | None,
                  arrived: float) -> _Outgoing | None:
        """The framed reply for the writer; None for no reply. Raises ``_CloseConnection`` when no
        reply, not even a minimal one, encodes."""
        if reply is None:
            return None
        payload, reply = self._encode_or_close(reply)
        if self.host.macs:
            payload, reply, _ = self._mac(reply, payload)
        mti = request.mti if request is not None else (error.mti if error is not None else None) or "????"
        wait = commit_seq or 0
        if wait and self.owner is not None and self.ledger.is_committed(wait):
            # multi-instance: a row installed from another instance (a repeat's first answer, a session)
            # is durable, and its number may exceed this instance's own pending rows: the writer waits
            # for the highest number of a batch, so it must not stand in for those
            wait = 0
        return _Outgoing(wait, self._frame(payload, tpdu), payload, reply, mti, request_seq, arrived)

    def _unanswered(self, request: Message | None, error: MessageDecodeError | None, request_seq: int | None,
                    faults: _Applied, note: str) -> None:
        if self.metrics:
            mti = request.mti if request is not None else (error.mti if error is not None else None) or "????"
            self.metrics.message(mti, None)
        if self.journal is not None and request_seq is not None:
            self.journal.record_unsent(request_seq, faults.actions, note, faults.rules)

    def _sent(self, conn: _Connection, batch: list[_Outgoing], faults: _Applied, note: str = "") -> None:
        journal, metrics = self.journal, self.metrics
        if journal is None and metrics is None:
            return
        now = time.monotonic()
        for item in batch:
            if journal is not None:
                journal.record_out(connection=conn.number, peer=conn.peer, raw=item.payload, message=item.reply,
                                   request_seq=item.request_seq, faults=faults.actions, rules=faults.rules,
                                   note=note)
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

    async def _decide_owned(self, request: Message, error: MessageDecodeError | None, peer: str, raw: bytes
                            ) -> tuple[Message | None, int | None]:
        """Multi-instance ``_decide``: own the request's terminal first (``TerminalOwner``); when another
        instance keeps it past the wait, the "unprocessed" 91 and nothing decided. Raises
        ``_CloseConnection`` when the lock session is lost (the switch then stops)."""
        owner = self.owner
        assert owner is not None
        try:
            terminal = Host.terminal_of(request.fields)
            if not owner.owned(terminal) and not await owner.acquire(terminal):
                log.info("%s: %s of terminal %s answered %s: another instance serves it", peer, request.mti,
                         terminal, TERMINAL_BUSY_CODE)
                return self.host.unprocessed_reply(request, TERMINAL_BUSY_CODE), None
        except LedgerError as exc:
            raise _CloseConnection(f"no decision without the terminal's lock: {exc}") from None
        return self._decide(request, error, peer, raw)

    async def _decide_any(self, request: Message | None, error: MessageDecodeError | None, peer: str, raw: bytes
                          ) -> tuple[Message | None, int | None]:
        """``_decide``, through ``_decide_owned`` in multi-instance mode (the paths off the hot one)."""
        if self.owner is None or request is None:
            return self._decide(request, error, peer, raw)
        return await self._decide_owned(request, error, peer, raw)

    def _encode(self, reply: Message) -> tuple[bytes, Message] | None:
        """The reply encoded, or else a minimal reply: its MTI, 39 and each field that encodes on
        its own (what a 30 can echo of a half-read request is not always valid); None if neither
        encodes. Returns the message actually encoded, for the journal and the MAC."""
        try:
            return self.codec.encode(reply), reply
        except MessageEncodeError as exc:
            first = exc
        code = reply.fields.get(39)
        kept: dict[int, str] = {} if code is None else {39: code}
        for number, value in reply.fields.items():
            if number == 39:
                continue
            try:
                self.codec.encode(Message(reply.mti, {**kept, number: value}, reply.header))
            except MessageEncodeError:
                continue
            kept[number] = value
        minimal = Message(reply.mti, kept, reply.header)
        try:
            payload = self.codec.encode(minimal)
        except MessageEncodeError as exc:
            log.warning("response %s does not encode (%s), nor does a minimal one (%s)", reply.mti, first, exc)
            return None
        dropped = sorted(set(reply.fields) - set(kept))
        log.info("response %s does not encode (%s); sent without field(s) %s", reply.mti, first,
                 ", ".join(map(str, dropped)))
        return payload, minimal

    def _encode_or_close(self, reply: Message) -> tuple[bytes, Message]:
        encoded = self._encode(reply)
        if encoded is None:
            raise _CloseConnection(f"response {reply.mti} does not encode, even with only MTI and 39")
        return encoded

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



def _xor(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask, strict=False))


def _with_wire_mac(reply: Message, payload: bytes, size: int, hex_field: bool) -> Message:
    """``reply`` with its MAC field holding what ``payload`` ends with, as the codec would decode it."""
    wire = payload[len(payload) - size:]
    fields = dict(reply.fields)
    fields[mac_field(reply)] = wire.decode("ascii").upper() if hex_field else wire.hex().upper()
    return Message(reply.mti, fields, reply.header)


class _CloseConnection(Exception):
    """A frame so broken that no answer is possible: the connection is closed and logged."""


def _socket_of(stream: trio.abc.Stream) -> socket.socket | trio.socket.SocketType | None:
    """The socket under ``stream``, through a TLS wrapper if there is one; None for memory streams."""
    for _ in range(4):  # SSLStream → SocketStream; never deeper in practice
        sock = getattr(stream, "socket", None)
        if sock is not None:
            return sock
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

