"""Listeners: TLS contexts, the accept loop, and a switch of several listeners (``SwitchGroup``).

The accept loop replaces ``trio.serve_listeners`` for one reason: at the file-descriptor limit
(EMFILE/ENFILE) Trio logs a full traceback every 0.1 s for as long as the limit lasts. Here the
first failure is one line saying what it means, then one summary line per ``report_every``
seconds while it lasts and one when accepting works again; existing connections keep being served.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from switch.server_core import REPORT_EVERY, RateLimitedLog, ServerStats

if TYPE_CHECKING:
    from switch.server import SwitchServer

log = logging.getLogger("switch.server")

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept() failures that mean "out of resources, try again later" rather than a broken listener."""
ACCEPT_RETRY = 0.1  # seconds between accept attempts while out of file descriptors (as Trio does)


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
    host, port, *_ = listener.socket.getsockname()
    return host, port



Listener = trio.abc.Listener[trio.abc.Stream]
"""What ``serve`` reports: a ``trio.SocketListener``, or a ``trio.SSLListener`` around one."""

LISTEN_BACKLOG = 4096  # capped by the kernel's somaxconn, as trio.open_tcp_listeners does


async def open_reuse_port_listeners(port: int, host: str) -> list[trio.SocketListener]:
    """Listening sockets on ``host:port`` with SO_REUSEPORT, so several worker processes (``serve
    --workers``) bind the same port and the kernel spreads new connections over them. Linux and the
    BSDs only: elsewhere a one-line OSError says so."""
    if not hasattr(trio.socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this system (--workers needs it)")
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM,
                                          flags=trio.socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners



def _fd_limit() -> str:
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return "unknown"
    return str(soft)


async def serve_listeners(handler: Callable[[trio.abc.Stream], Awaitable[object]], listeners: Sequence[Listener], *,
                          handler_nursery: trio.Nursery, report_every: float = REPORT_EVERY,
                          task_status: trio.TaskStatus[Sequence[Listener]] = trio.TASK_STATUS_IGNORED) -> None:
    """Like ``trio.serve_listeners``, but an accept failing for lack of resources logs one line per
    ``report_every`` seconds (no traceback) instead of one traceback per retry."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_serve_one_listener, handler, listener, handler_nursery, report_every)
        task_status.started(listeners)


async def _serve_one_listener(handler: Callable[[trio.abc.Stream], Awaitable[object]], listener: Listener,
                              handler_nursery: trio.Nursery, report_every: float) -> None:
    report = RateLimitedLog(report_every, logging.ERROR)
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                report.event(
                    f"accept failed: {name} ({os.strerror(exc.errno or 0)}): out of file descriptors or memory "
                    f"(RLIMIT_NOFILE {_fd_limit()}; see --max-connections, ulimit -n); existing connections "
                    f"are still served, retrying every {ACCEPT_RETRY:g}s",
                    f"accept still failing: {name}: {{count}} failures in the last {{every:g}}s")
                await trio.sleep(ACCEPT_RETRY)
                continue
            report.ended("accept works again after {count} failures")
            handler_nursery.start_soon(handler, stream)




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
            if other.owner is not first.owner:
                raise ValueError("the listeners of one switch must share one terminal owner (multi-instance)")
        self.servers = tuple(servers)
        self.ledger = first.ledger
        self.committer = first.committer

    @property
    def stats(self) -> ServerStats:
        """Every listener's counters added up (for the shutdown summary)."""
        total = ServerStats(started=min(server.stats.started for server in self.servers))
        for server in self.servers:
            for name in ("connections_total", "connections_open", "frames_in", "responses_out", "approvals",
                         "format_errors", "connections_dropped", "connections_refused"):
                setattr(total, name, getattr(total, name) + getattr(server.stats, name))
        return total

    async def serve(self, *, task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as root:
            await root.start(self.committer.run)
            owner = self.servers[0].owner
            if owner is not None:
                await root.start(owner.run)
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

