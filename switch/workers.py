"""``iso-switch serve --workers N``: N switch processes on one port, one host, one admin endpoint.

Each worker is a whole switch (``build_switch`` + ``Switch.run``) in its own process, started with the
``spawn`` method (a fresh interpreter: no Trio state, threads or database connections inherited), in
multi-instance mode on the shared PostgreSQL ledger (docs/scaleout.md) and with SO_REUSEPORT on every
listener, so the kernel spreads new connections over the workers. A SQLite ledger is refused: each
process would decide from its own memory of the file.

The supervisor (this process) starts the workers, serves the one admin endpoint
(``switch.workers_admin``: /health lists every worker, /metrics carries a ``worker`` label, changes fan
out to every worker) and watches them:

* SIGINT/SIGTERM: every worker is sent SIGTERM and drains (its ``--grace``); one still running
  ``grace + KILL_MARGIN`` seconds later is killed. Workers run in their own session, so a Ctrl-C at
  the terminal reaches the supervisor only, and each worker is signalled exactly once.
* A worker that dies is reported (exit status) and restarted under the same number, and gets the
  admin changes made since start again (faults, scenario...); its terminals were freed by PostgreSQL
  with its session, and any other worker may take them. More than
  ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW`` seconds stop everything (exit 1): a worker
  that cannot stay up is a fault to look at, not to hide.
* A worker whose supervisor is gone (SIGKILLed) drains and stops by itself within a second.

Journals: one file per worker, ``journal-<n>.jsonl`` beside the configured journal path
(``iso-switch journal`` reads several at once, merged by time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from switch.codec import Dialect
from switch.codec.framing import Framing

__all__ = ["KILL_MARGIN", "MAX_RESTARTS", "RESTART_WINDOW", "WorkerError", "Workers", "worker_journal_path"]

log = logging.getLogger("switch.workers")

KILL_MARGIN = 10.0
"""Seconds beyond ``--grace`` a worker may take to drain before it is killed."""
START_TIMEOUT = 60.0
"""Seconds a worker may take to open its ledger and listeners."""
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
PARENT_CHECK = 1.0
"""Seconds between a worker's checks that its supervisor still lives."""


class WorkerError(Exception):
    """The workers cannot be started or kept running; the message is one line for ``error:``."""


def worker_journal_path(journal: str | None, index: int) -> str | None:
    """``journal.jsonl`` → ``journal-<index>.jsonl`` (None stays None: memory only)."""
    if journal is None:
        return None
    path = Path(journal)
    return str(path.with_name(f"{path.stem}-{index}{path.suffix or '.jsonl'}"))


@dataclass
class WorkerState:
    """One worker slot: its process now, where its admin API answers, how often it died."""

    index: int
    process: Any = None  # multiprocessing.process.BaseProcess
    admin_port: int | None = None
    listeners: list[tuple[str, int]] = field(default_factory=list)
    deaths: list[float] = field(default_factory=list)
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None and self.admin_port is not None


def _worker_main(dialect: Dialect, framing: Framing, options: Any, index: int,
                 report: multiprocessing.connection.Connection, verbose: int) -> None:
    """A worker process: its own session (Ctrl-C reaches the supervisor only), then one whole switch.
    Reports ("ready", admin port, listener addresses) or ("error", one line) through ``report``."""
    os.setsid()
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format=f"%(asctime)s worker {index} %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    from switch.app import build_switch

    parent = os.getppid()
    try:
        switch = build_switch(dialect, framing, options)
        trio.run(_serve_worker, switch, report, parent, index)
    except BaseException as exc:  # one line to the supervisor, whatever stopped the worker
        leaves = [exc]
        while leaves and isinstance(leaves[0], BaseExceptionGroup):
            leaves = list(leaves[0].exceptions)
        first = leaves[0] if leaves else exc
        text = f"{type(first).__name__}: {getattr(first, 'strerror', None) or first}"
        with contextlib.suppress(OSError):
            report.send(("error", " ".join(text.split())))
        sys.exit(1)


async def _serve_worker(switch: Any, report: multiprocessing.connection.Connection, parent: int, index: int) -> None:
    from switch.server import listener_address

    async def watch_parent() -> None:
        while os.getppid() == parent:
            await trio.sleep(PARENT_CHECK)
        log.warning("worker %d: the supervisor is gone: draining", index)
        os.kill(os.getpid(), signal.SIGTERM)  # the same drain as a signal from the supervisor

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_parent)
        async with trio.open_nursery() as serving:
            listeners, admin = await serving.start(switch.run)
            report.send(("ready", admin, [listener_address(listener) for listener in listeners]))
        nursery.cancel_scope.cancel()  # drained: stop watching


class Workers:
    """The supervisor of ``serve --workers N`` (see the module docstring)."""

    def __init__(self, dialect: Dialect, framing: Framing, options: Any, count: int, *, verbose: int = 0,
                 echo: Callable[[str], None] = print) -> None:
        from switch.app import resolve_journal_path, resolve_ledger_path
        from switch.ledger_backends import is_postgres_target

        if count < 1:
            raise WorkerError(f"--workers must be at least 1, got {count}")
        ledger = resolve_ledger_path(options.ledger)
        if not is_postgres_target(ledger):
            raise WorkerError(f"--workers needs a postgresql:// --ledger, not {ledger}: each worker process would "
                              "decide from its own memory of a SQLite ledger")
        if any(spec.port == 0 for spec in options.also_listen):
            raise WorkerError("--workers: give every --also-listen an explicit port (0 would give each worker "
                              "another one)")
        self.dialect = dialect
        self.framing = framing
        self.options = options
        self.count = count
        self.verbose = verbose
        self.echo = echo
        self.journal = resolve_journal_path(options.journal, ledger)
        self.workers = [WorkerState(index) for index in range(1, count + 1)]
        self.port = options.port
        self._reservation: socket.socket | None = None
        self._context = multiprocessing.get_context("spawn")
        self._draining = False
        self.failure: str | None = None
        self.changes: list[Any] = []  # switch.workers_admin.Change: admin changes, replayed on a restart
        # one per run, kept by restarted workers: their counted fault rules share counts (switch.faults.shared)
        self.fault_epoch: str = options.fault_epoch or secrets.token_hex(8)

    # -- ports ------------------------------------------------------------------------------------------

    def reserve_port(self) -> int:
        """``--port 0``: pick a free port once for every worker. A bound (never listening) SO_REUSEPORT
        socket holds it until the end, so no other program takes it between worker restarts."""
        if self.port:
            return int(self.port)
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.options.host, 0))
        self._reservation = sock
        self.port = sock.getsockname()[1]
        return int(self.port)

    def worker_options(self, index: int) -> Any:
        return dataclasses.replace(
            self.options, port=self.port, multi_instance=True, reuse_port=True, admin_host="127.0.0.1",
            admin_port=0, admin_port_given=True, journal=worker_journal_path(self.journal, index) or "none",
            fault_epoch=self.fault_epoch)

    # -- one worker ---------------------------------------------------------------------------------------

    async def start(self, state: WorkerState) -> None:
        """Start ``state``'s process and wait for its report; WorkerError if it cannot serve."""
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main, name=f"iso-switch-worker-{state.index}",
            args=(self.dialect, self.framing, self.worker_options(state.index), state.index, send, self.verbose))
        state.admin_port, state.listeners = None, []
        await trio.to_thread.run_sync(process.start)
        state.process = process
        send.close()
        try:
            ready = await trio.to_thread.run_sync(_receive_report, receive, process, START_TIMEOUT,
                                                  abandon_on_cancel=True)
        finally:
            receive.close()
        if ready[0] != "ready":
            await self._stop_process(process, 0.0)
            raise WorkerError(f"worker {state.index}: {ready[1]}")
        state.admin_port, state.listeners = ready[1], [tuple(address) for address in ready[2]]

    async def _stop_process(self, process: Any, grace: float) -> None:
        if process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        await trio.to_thread.run_sync(process.join, grace, abandon_on_cancel=True)
        if process.exitcode is None:
            log.warning("worker pid %d did not drain in %.0fs: killed", process.pid, grace)
            process.kill()
            await trio.to_thread.run_sync(process.join, 5.0, abandon_on_cancel=True)

    async def watch(self, state: WorkerState) -> None:
        """Wait for the worker to exit; restart it (see the module docstring) unless draining."""
        from switch.workers_admin import replay_changes

        for _ in range(MAX_RESTARTS + 1):  # bounded: the crash-loop limit ends it sooner
            await trio.to_thread.run_sync(state.process.join, abandon_on_cancel=True)
            if self._draining:
                return
            now = time.monotonic()
            code = state.process.exitcode
            state.admin_port = None
            state.deaths = [moment for moment in state.deaths if now - moment < RESTART_WINDOW] + [now]
            self.echo(f"iso-switch: worker {state.index} (pid {state.pid}) exited with status {code}")
            if len(state.deaths) > MAX_RESTARTS:
                raise WorkerError(f"worker {state.index} died {len(state.deaths)} times within "
                                  f"{RESTART_WINDOW:g}s; stopping every worker")
            state.restarts += 1  # before the start: the new admin port never shows with the old number
            await self.start(state)
            refused = await replay_changes(state, self.changes)
            for line in refused:
                self.echo(f"iso-switch: worker {state.index}: admin change not re-applied: {line}")
            self.echo(f"iso-switch: worker {state.index} restarted (pid {state.pid}); "
                      f"{len(self.changes) - len(refused)} admin changes re-applied")
        raise WorkerError(f"worker {state.index} keeps dying; stopping every worker")

    # -- the whole run -------------------------------------------------------------------------------------

    async def run(self, *, announce: Callable[[Workers, int | None], None] | None = None,
                  task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every worker and the admin endpoint; run until SIGINT/SIGTERM or ``stop``; drain."""
        from switch.workers_admin import serve_workers_admin

        self.reserve_port()
        self._stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for state in self.workers:
                    await self.start(state)
                admin = None
                if self.options.admin_port is not None:
                    admin = await nursery.start(serve_workers_admin, self, self.options.admin_host,
                                                self.options.admin_port)
                if announce is not None:
                    announce(self, admin)
                task_status.started(admin)
                async with trio.open_nursery() as watching:
                    for state in self.workers:
                        watching.start_soon(self.watch, state)
                    watching.start_soon(self._until_signalled)
                    await self._stop.wait()
                    watching.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            self._draining = True
            with trio.CancelScope(shield=True):
                await self.stop_all()
            if self._reservation is not None:
                self._reservation.close()

    async def _until_signalled(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self.echo(f"iso-switch: received {signal.Signals(signum).name}: draining {self.count} workers")
                break
        self.stop()

    def stop(self) -> None:
        """Drain every worker and return from ``run``."""
        self._draining = True
        self._stop.set()

    async def stop_all(self) -> None:
        grace = float(self.options.grace_period) + KILL_MARGIN
        async with trio.open_nursery() as nursery:
            for state in self.workers:
                if state.process is not None:
                    nursery.start_soon(self._stop_process, state.process, grace)

    def exit_codes(self) -> list[int | None]:
        return [None if state.process is None else state.process.exitcode for state in self.workers]


def _receive_report(receive: multiprocessing.connection.Connection, process: Any, timeout: float) -> tuple[Any, ...]:
    """The worker's first report, or ("error", why) if it exits or stays silent for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded by the deadline; each poll waits at most 0.2 s
        if receive.poll(0.2):
            try:
                report = receive.recv()
            except EOFError:
                break
            return tuple(report)
        if process.exitcode is not None:
            return ("error", f"exited with status {process.exitcode} before serving")
    if process.exitcode is not None:
        return ("error", f"exited with status {process.exitcode} before serving")
    return ("error", f"did not start serving within {timeout:g}s")
