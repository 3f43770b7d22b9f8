"""The terminal's thin Trio driver: runs ``TerminalPolicy`` over a real connection.

The policy (``terminal.policy``) decides everything: what to send, when an exchange has timed out,
when to reverse, retry, back off, sign on or give up. This module only does what the policy's
actions say — connect, write a frame, read frames until a deadline, sleep — and reports every event
back (``connection_made``, ``receive``, ``connection_lost``, ...), calling ``next_action`` after each
one. It never resends, reorders or times anything on its own.

Choices, and why:

* **One clock.** The policy works in Unix seconds; Trio sleeps on its own clock. ``TrioClock``
  links them with one offset captured once, so under pytest-trio's ``autojump_clock`` every
  response timeout, backoff and deadline in the policy is virtual. After a wait that ended at a
  deadline the driver reports at least that deadline as ``now``, so float rounding in the
  conversion can never make the policy see "not yet" and spin.
* **Reading replies.** A host that closes an idle connection *between* commands must be noticed
  before the next command starts (rather than costing that command's purchase an unknown outcome),
  and late replies that arrived between commands are fed to the policy — which logs and discards
  them — when the next command starts. On plain TCP (``trio.SocketStream``) the driver reads
  inline: while it waits for a reply it reads the socket itself, and before a command it asks the
  kernel (a zero-timeout ``poll``) whether anything arrived — a close or a late reply — and reads
  that first. That is one task switch and one channel hand-over fewer per reply than a reader task
  (the load runner's cost per transaction). Other streams (TLS, whose socket holds handshake bytes
  too; memory streams in tests) have a reader task per connection feeding a small channel.
  ``inline_reads`` forces either way.
* **Persist, then send.** The policy has committed everything a ``Send`` depends on before
  returning it, so the frame is written at once; a write that fails or cannot finish by the
  exchange's deadline is ``connection_lost`` (a partial frame may be on the wire). An encoding error
  is ``send_failed``. Every ``Send`` therefore ends in exactly one policy event.
* **MAC**: the policy owns the working keys (they come with a sign-on) and says which messages
  carry a MAC (``request_mac``) and whether a reply's MAC is good (``reply_mac_ok``); the driver
  only encodes with the 8-byte placeholder, writes the MAC over it (``security.apply_mac``) and
  hands the reply's bytes to the check, because the MAC covers bytes, not fields. A bad MAC is fed
  as ``receive(mac_ok=False)``: the policy reverses with reason A0 and signs on again.
* **TLS**: ``tcp_connector(..., ssl_context=client_ssl_context(...))``; the handshake happens in
  the connect step, so a certificate the terminal does not trust is a failed connection attempt
  (retried with backoff like a refused one), never a half-open link.
* **Cancellation.** Cancelling ``run_command`` (Ctrl-C, a load generator's deadline) abandons the
  operation: the connection is closed and the client refuses further commands, because the policy is
  left mid-operation. Nothing is lost — whatever was sent is already on disk — and a new
  ``TerminalPolicy`` over the same store recovers it exactly like a process restart.
* **Blocking store calls**: the policy's calls commit to SQLite with fsync. A CLI runs them on the
  event loop; with many terminals on one loop pass ``offload_store=True`` to run each call in a
  worker thread (one call at a time per client, as the store requires). Cheaper for many terminals:
  a store opened with ``deferred_sync=True`` commits without fsync, and the driver calls its
  ``sync()`` before writing any frame — so a request still leaves only once what it depends on is
  on disk — in a worker thread with ``offload_sync=True`` (the policy's calls then stay inline:
  one thread hop per request instead of one per call), or through ``syncer``, a coroutine that
  returns once the store is synced (the load runner's group syncer: one thread hop per batch of
  terminals).

Notes from the policy are logged on the ``terminal`` logger (and handed to ``on_note`` if given).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

import trio

from switch.codec.framing import TPDU_LENGTH, Frame, Framing, FramingError
from switch.codec.message import Codec, Message, MessageDecodeError, MessageEncodeError
from switch.codec.stream import FrameStream
from switch.security import MacError, MacPlacement, SecurityError, apply_mac, with_mac_placeholder
from terminal.link import Ended, Link, describe
from terminal.policy import (
    AwaitConfirmation,
    AwaitReply,
    Command,
    Connect,
    Finished,
    Idle,
    Note,
    Outcome,
    Send,
    Sleep,
    TerminalPolicy,
)
from terminal.store import TerminalStore
from terminal.wire_hints import undecodable_reply_text

__all__ = [
    "DEFAULT_TPDU",
    "ClientError",
    "ConnectFactory",
    "TerminalClient",
    "TrioClock",
    "client_ssl_context",
    "tcp_connector",
]

log = logging.getLogger("terminal")

DEFAULT_TPDU = bytes.fromhex("6000010000")
"""TPDU on every frame when the framing carries one (CUP): id 60, destination 0001, source 0000."""

ConnectFactory = Callable[[], Awaitable[trio.abc.Stream]]
"""Opens one connection to the host; raises OSError when it cannot."""

_MAX_ACTIONS = 100_000  # one operation never needs this many; reaching it is a policy bug, not a slow host
_MAX_ARRIVALS = 1_000  # frames taken between two commands at most (more: the rest waits for the command)
_ARRIVAL_READ_LIMIT = 0.05  # seconds an inline read between commands may wait for the rest of a frame

_WARNING_NOTES = frozenset(
    {
        "signon-failed",
        "signon-demanded",
        "connect-failed",
        "connection-lost",
        "exchange-failed",
        "reversal-queued",
        "reversal-refused",
        "advice-declined",
        "item-retry",
        "late-reply-discarded",
        "unexpected-message-discarded",
        "recovered",
    }
)

T = TypeVar("T")


class ClientError(RuntimeError):
    """The client cannot run a command (not entered, closed, or left mid-operation by a cancellation)."""


def tcp_connector(host: str, port: int, *, ssl_context: ssl.SSLContext | None = None) -> ConnectFactory:
    """The default ``ConnectFactory``: a TCP connection to ``host:port``, TLS with ``ssl_context``.

    A failure is re-raised as one OSError reading "127.0.0.1:8583: Connection refused", because
    Trio reports "all attempts to connect ... failed" and keeps the reasons in an exception group.
    With TLS the handshake is part of connecting: "127.0.0.1:9583: TLS handshake failed: ...".
    """

    async def connect() -> trio.abc.Stream:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise OSError(f"{host}:{port}: {_connect_failure(exc)}") from exc
        if ssl_context is None:
            return stream
        secure = trio.SSLStream(stream, ssl_context, server_hostname=host, https_compatible=False)
        try:
            await secure.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__
            reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause or exc)
            raise OSError(f"{host}:{port}: TLS handshake failed: {reason}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return secure

    return connect


def client_ssl_context(ca_file: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """The terminal's TLS context: the system's trusted CAs, or only ``ca_file`` (PEM) when given.

    ``insecure`` accepts any certificate and host name (a self-signed test switch without its
    certificate at hand); it still encrypts, but anyone in the middle can read along. Raises
    ValueError naming the file when ``ca_file`` cannot be read.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise ValueError(f"TLS: no such CA file: {ca_file}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: CA file {ca_file} cannot be used: {getattr(exc, 'reason', None) or exc}") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _connect_failure(exc: OSError) -> str:
    failures: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        failures = list(exc.__cause__.exceptions)
    reasons = dict.fromkeys(_reason(failure) for failure in failures)
    return "; ".join(reasons)


def _reason(failure: BaseException) -> str:
    if isinstance(failure, OSError):
        if failure.errno and failure.errno > 0:  # trio's text repeats the address: the system's is enough
            return os.strerror(failure.errno)
        if failure.strerror:  # name resolution (negative errno)
            return failure.strerror
    return str(failure) or type(failure).__name__


class TrioClock:
    """The policy's clock (Unix seconds) on Trio's clock: ``now() = trio.current_time() + offset``.

    Build it inside ``trio.run``: ``TrioClock.wall()`` for real time, ``TrioClock.starting_at(t)``
    to make the current moment read as Unix time ``t`` (tests: fixed field 7 values).
    """

    def __init__(self, offset: float) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
            raise ValueError(f"offset must be a finite number of seconds, got {offset!r}")
        self.offset = float(offset)

    @classmethod
    def wall(cls) -> TrioClock:
        return cls(time.time() - trio.current_time())

    @classmethod
    def starting_at(cls, unix_seconds: float) -> TrioClock:
        return cls(unix_seconds - trio.current_time())

    def now(self) -> float:
        return trio.current_time() + self.offset

    def to_trio(self, unix_seconds: float) -> float:
        return unix_seconds - self.offset


class TerminalClient:
    """Drives one terminal's ``TerminalPolicy`` over connections opened by ``connect``.

    Use as an async context manager (it owns the connection's reader task)::

        async with TerminalClient(policy, Codec(dialect), framing, tcp_connector(host, port)) as client:
            outcome = await client.run_command(Purchase(1234, pan, expiry))

    The connection stays open across commands (the policy reconnects when it needs to);
    ``aclose()`` closes it. The store belongs to the caller and is not closed here.
    """

    def __init__(
        self,
        policy: TerminalPolicy,
        codec: Codec,
        framing: Framing,
        connect: ConnectFactory,
        clock: TrioClock | None = None,
        *,
        tpdu: bytes | None = None,
        offload_store: bool = False,
        offload_sync: bool | None = None,
        syncer: Callable[[TerminalStore], Awaitable[None]] | None = None,
        on_note: Callable[[Note], None] | None = None,
        confirmation: Callable[[], Awaitable[None]] | None = None,
        inline_reads: bool | None = None,
    ) -> None:
        """``confirmation``: returns when the cardholder confirms an approved sale that asks for it
        (``Purchase.confirm_timeout``); None: there is no confirmation step, a sale is confirmed at once.
        ``inline_reads``: read replies in the driver, not in a reader task (see the module docstring);
        None: on plain TCP connections only. Forced on another stream, a close between commands is
        noticed only when the next command reads."""
        if tpdu is not None and not framing.tpdu:
            raise ValueError("a TPDU was given but the framing carries none")
        if tpdu is not None and len(tpdu) != TPDU_LENGTH:
            raise ValueError(f"a TPDU is {TPDU_LENGTH} bytes, got {len(tpdu)}")
        try:
            placement: MacPlacement | None = MacPlacement.for_dialect(codec.dialect)
        except MacError as exc:
            if policy.profile.mac != "none":
                raise ValueError(f"the profile MACs with {policy.profile.mac}, but {exc}") from None
            placement = None
        self.policy = policy
        self.codec = codec
        self.framing = framing
        self.mac_placement = placement
        self.tpdu = (tpdu or DEFAULT_TPDU) if framing.tpdu else None
        self._connect = connect
        self._clock = clock
        self._offload = offload_store
        self._offload_sync = offload_store if offload_sync is None else offload_sync
        self._syncer = syncer
        self._on_note = on_note
        self._confirmation = confirmation
        self._inline_reads = inline_reads
        self._exit_stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._link: Link | None = None
        self._broken = ""
        self._time_floor = -math.inf  # the latest deadline a wait has reached (see _now)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._exit_stack is not None:
            raise ClientError("this TerminalClient is already in use")
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        stack.push_async_callback(self._shutdown)  # runs first on exit, inside the nursery
        self._exit_stack = stack
        if self._clock is None:
            self._clock = TrioClock.wall()
        self._log_notes()  # e.g. "recovered": in-flight entries a previous run left behind
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        stack, self._exit_stack = self._exit_stack, None
        assert stack is not None, "__aexit__ without __aenter__"
        return bool(await stack.__aexit__(exc_type, exc, tb))

    async def _shutdown(self) -> None:
        try:
            await self.aclose()
        finally:
            nursery, self._nursery = self._nursery, None
            if nursery is not None:
                nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Close the connection (if any). The policy notices at its next command and reconnects."""
        link, self._link = self._link, None
        if link is not None:
            with trio.CancelScope(shield=True):
                await link.close()
            if not self._broken:
                self.policy.connection_lost(self._now(), "closed by the terminal")
                self._log_notes(logging.INFO)  # our own doing: not a warning

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def clock(self) -> TrioClock:
        if self._clock is None:
            raise ClientError("the clock is set when the client is entered (async with)")
        return self._clock

    # -- running ---------------------------------------------------------------------------------

    async def run_command(self, command: Command) -> Outcome:
        """Run one terminal command to its outcome (what is owed to the host goes first).

        The loop runs once per action of every transaction of a load run, so it calls the policy
        directly (no coroutine per call unless the store is offloaded) and reads the clock once per
        step: ``now`` is read again only after something was awaited."""
        if self._nursery is None:
            raise ClientError("enter the client first: async with TerminalClient(...) as client")
        if self._broken:
            raise ClientError(self._broken)
        await self._take_arrivals()  # an idle close or late replies since the last command
        policy = self.policy
        offload = self._offload
        started = finished = False
        try:
            now = self._now()
            if offload:
                await self._call(policy.start, command, now)
            else:
                policy.start(command, now)
            started = True
            self._log_notes()
            for _ in range(_MAX_ACTIONS):
                if offload:
                    action = await self._call(policy.next_action, self._now())
                else:  # ``now``: read after start, or after the last action and its awaits
                    action = policy.next_action(now)
                self._log_notes()
                if isinstance(action, Send):
                    await self._send(action)
                elif isinstance(action, AwaitReply):
                    await self._wait(action.deadline)
                elif isinstance(action, Finished):
                    finished = True
                    return action.outcome
                elif isinstance(action, Connect):
                    await self._open()
                elif isinstance(action, Sleep):
                    await self._wait(action.until)
                elif isinstance(action, AwaitConfirmation):
                    await self._await_confirmation(action.deadline)
                elif isinstance(action, Idle):
                    raise ClientError(f"the policy went idle during {command.name} without an outcome")
                self._log_notes()
                now = self._now()
            raise ClientError(f"{command.name} did not finish in {_MAX_ACTIONS} actions (a policy bug)")
        finally:
            if started and not finished:
                self._abandon(command)

    def _abandon(self, command: Command) -> None:
        """A cancellation (or bug) left the policy mid-operation: drop the connection, refuse more."""
        self._broken = (
            f"{command.name} was interrupted; what it sent is stored and a new TerminalPolicy on the "
            "same store recovers it (as after a restart)"
        )
        link, self._link = self._link, None
        if link is not None:
            link.reader_scope.cancel()
            link.inbox.close()
            assert self._nursery is not None
            self._nursery.start_soon(trio.aclose_forcefully, link.frames)

    # -- performing actions ----------------------------------------------------------------------

    async def _open(self) -> None:
        if self._link is not None:  # the policy believes it is disconnected: believe it
            await self._drop_link()
        timeout = self.policy.profile.connect_timeout
        stream: trio.abc.Stream | None = None
        failure = ""
        with trio.move_on_after(timeout):
            try:
                stream = await self._connect()
            except OSError as exc:
                failure = describe(exc, "connection failed")
        if stream is None:
            reason = failure or f"connect timed out after {timeout:g}s"
            await self._call(self.policy.connect_failed, self._now(), reason)
            return
        inline = self._inline_reads
        if inline is None:  # plain TCP only (exactly: a subclass may buffer), and no keep-alive echo to write
            inline = type(stream) is trio.SocketStream and self.framing.keepalive != "echo"
        link = Link(FrameStream(stream, self.framing), inline)
        if not inline:
            assert self._nursery is not None
            self._nursery.start_soon(link.read)
        self._link = link
        await self._call(self.policy.connection_made, self._now())

    async def _send(self, action: Send) -> None:
        link = self._link
        if link is None:  # cannot happen while the policy and the driver agree; never leave a Send dangling
            await self._call(self.policy.connection_lost, self._now(), "no connection to send on")
            return
        try:
            payload = self._encode(action.message)
            frame = self.framing.encode(payload, self.tpdu)
        except (MessageEncodeError, FramingError, SecurityError) as exc:
            await self._call(self.policy.send_failed, self._now(), str(exc))
            return
        store = self.policy.store
        if store.needs_sync:  # deferred-sync store: what this request depends on reaches the disk first
            if self._syncer is not None:
                await self._syncer(store)
            elif self._offload_sync:
                await trio.to_thread.run_sync(store.sync)
            else:
                store.sync()
        problem = ""
        try:
            if not await link.send(frame, self.clock.to_trio(action.deadline)):
                problem = "the host did not take the request before its deadline"
                self._time_floor = max(self._time_floor, action.deadline)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            problem = describe(exc, "write failed")
        if problem:
            await self._drop_link()
            await self._call(self.policy.connection_lost, self._now(), problem)

    def _encode(self, message: Message) -> bytes:
        """The request's bytes, MACed when the policy says so (the MAC covers the encoded bytes)."""
        spec = self.policy.request_mac(message)
        if spec is None or self.mac_placement is None:
            return self.codec.encode(message)
        payload = self.codec.encode(with_mac_placeholder(message))
        return apply_mac(payload, spec[0], spec[1], self.mac_placement)

    async def _wait(self, until: float) -> None:
        """Wait until ``until`` for one arrival and feed it; the caller asks ``next_action`` again."""
        link = self._link
        with trio.move_on_at(self.clock.to_trio(until)) as scope:
            if link is None:
                await trio.sleep_forever()
            elif link.inline:
                item = await link.read_one()
            else:
                item = await link.inbox.receive()
        if scope.cancelled_caught:
            self._time_floor = max(self._time_floor, until)
            return
        await self._feed(item)

    async def _await_confirmation(self, deadline: float) -> None:
        """Wait for the cardholder until ``deadline``; the policy reverses the sale if it passes."""
        if self._confirmation is not None:
            with trio.move_on_at(self.clock.to_trio(deadline)) as scope:
                await self._confirmation()
            if scope.cancelled_caught:
                self._time_floor = max(self._time_floor, deadline)
                return
        await self._call(self.policy.cardholder_confirmed, self._now())

    async def _take_arrivals(self) -> None:
        """Feed whatever arrived while no command ran (late replies, the host closing the connection)."""
        for _ in range(_MAX_ARRIVALS):
            link = self._link
            if link is None:
                return
            item: Frame | Ended | None = None
            if link.inline:
                if not link.arrived():  # the usual case: asked without a cancel scope's cost
                    return
                with trio.move_on_after(_ARRIVAL_READ_LIMIT):  # bytes the kernel holds: never long
                    item = await link.read_arrived()
                if item is None:  # nothing, or only part of a frame so far (kept): the command reads the rest
                    return
            else:
                try:
                    item = link.inbox.receive_nowait()
                except trio.WouldBlock:
                    return
            await self._feed(item)
            self._log_notes()

    async def _feed(self, item: Frame | Ended) -> None:
        if isinstance(item, Ended):
            await self._drop_link()
            await self._call(self.policy.connection_lost, self._now(), item.reason)
            return
        try:
            message = self.codec.decode(item.payload)
        except MessageDecodeError as exc:
            text = undecodable_reply_text(exc, item, self.codec.dialect, self.framing)
            await self._call(self.policy.receive_undecodable, self._now(), text)
            return
        mac_ok = self.policy.reply_mac_ok(message, item.payload, self.mac_placement)
        await self._call(self.policy.receive, message, self._now(), mac_ok=mac_ok)

    async def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            with trio.CancelScope(shield=True):
                await link.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _now(self) -> float:
        """Unix seconds for the policy: never earlier than a deadline a wait has already reached."""
        now = self.clock.now()
        if now < self._time_floor:
            now = self._time_floor
        self._time_floor = now
        return now

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._offload:
            return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        return fn(*args, **kwargs)

    def _log_notes(self, level_override: int | None = None) -> None:
        if not self.policy.has_notes:  # the usual case, several times per transaction
            return
        for note in self.policy.take_notes():
            level = level_override or (logging.WARNING if note.kind in _WARNING_NOTES else logging.INFO)
            terminal = self.policy.profile.terminal_id.rstrip()
            log.log(level, "%s %s: %s", terminal, note.kind, note.text)
            if self._on_note is not None:
                self._on_note(note)
