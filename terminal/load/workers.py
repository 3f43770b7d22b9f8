"""``iso-terminal load --workers N``: the run split over N processes, merged into one ``LoadStats``.

One event loop is one core; a machine driving a remote host with all its cores needs processes.
Each worker is a forked process running a ``LoadRunner`` over its own share of the terminals (so its
own stores: terminal ids, and therefore store files, are disjoint), its share of ``--count`` and of
``--rate``, and its own seed stream.

Merging, and why it is exact: a worker does not summarise. Every ``record_*`` call its runner makes
is also kept, shipped to the parent a few times a second and *replayed* there into one
``LoadStats``, with each outcome's time shifted onto the parent's clock. So the merged report has
every latency sample (percentiles are nearest-rank over all of them, never averages of per-worker
percentiles), every outcome, note and message count, and one timeline; the live display reads the
same merged stats. The consistency check runs once, in the parent, over the journals the workers
read from their stores before closing them.

Ctrl-C: workers ignore SIGINT (a terminal sends it to the whole process group, and a key press must
mean the same thing once, not N+1 times); the parent decides and tells them over a control pipe:
the first press "stop" (no new transaction, in-flight ones finish, terminals drain and settle), the
second "abandon". A worker that fails (a store that is another terminal's, a full disk) makes the
parent abandon the others and report that failure, as one process would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TextIO

import trio

from switch.exception_groups import leaves as exception_leaves
from terminal.load.options import LoadConfig
from terminal.load.runner import LoadResult, LoadRunner
from terminal.load.stats import LoadStats, Progress
from terminal.store import JournalEntry, StoreError

__all__ = ["ForwardingStats", "WorkerFailure", "replay", "run_workers", "split_config"]

_FLUSH_INTERVAL = 0.2  # seconds between a worker's shipments of records
_PROGRESS_INTERVAL = 0.25
_ABANDON_GRACE = 10.0  # seconds workers get to exit after "abandon" before they are terminated
_JOIN_TIMEOUT = 10.0


class WorkerFailure(RuntimeError):
    """A worker process failed for a reason other than a store or connection error."""


def split_config(config: LoadConfig) -> list[LoadConfig]:
    """One config per worker: contiguous slices of the terminal ids, shares of count and rate that
    add up to the whole, and a distinct seed each (the same ``--seed`` still repeats the run)."""
    n = config.workers
    ids = config.terminal_ids
    configs = []
    for index in range(n):
        group = ids[index * len(ids) // n:(index + 1) * len(ids) // n]
        count = None if config.count is None else config.count // n + (1 if index < config.count % n else 0)
        configs.append(dataclasses.replace(
            config, terminal_ids=tuple(group), count=count, workers=1,
            rate=None if config.rate is None else config.rate / n,
            seed=None if config.seed is None else config.seed * 1_000_003 + index))
    return configs


class ForwardingStats(LoadStats):
    """A worker's ``LoadStats`` that also keeps every record, for the parent to ``replay``."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[Any, ...]] = []

    def take(self) -> list[tuple[Any, ...]]:
        records, self.records = self.records, []
        return records

    def record_started(self, operation: str) -> None:
        super().record_started(operation)
        self.records.append(("started", operation))

    def record_outcome(self, operation: str, kind: str, response_code: str, latency: float, at: float) -> None:
        super().record_outcome(operation, kind, response_code, latency, at)
        self.records.append(("outcome", operation, kind, response_code, latency, at))

    def record_note(self, kind: str, text: str = "") -> None:
        super().record_note(kind, text)
        self.records.append(("note", kind, text))

    def record_sends(self, purposes: Iterable[str]) -> None:
        purposes = list(purposes)
        super().record_sends(purposes)
        if purposes:
            self.records.append(("sends", purposes))

    def record_housekeeping(self, operation: str, kind: str) -> None:
        super().record_housekeeping(operation, kind)
        self.records.append(("housekeeping", operation, kind))


def replay(stats: LoadStats, records: Iterable[tuple[Any, ...]], shift: float) -> None:
    """Apply a worker's records to ``stats``; ``shift`` moves its outcome times onto the parent's clock."""
    for record in records:
        tag = record[0]
        if tag == "outcome":
            stats.record_outcome(record[1], record[2], record[3], record[4], record[5] + shift)
        elif tag == "started":
            stats.record_started(record[1])
        elif tag == "note":
            stats.record_note(record[1], record[2])
        elif tag == "sends":
            stats.record_sends(record[1])
        elif tag == "housekeeping":
            stats.record_housekeeping(record[1], record[2])
        else:
            raise ValueError(f"not a load record: {record!r}")


# ---------------------------------------------------------------------------------------------
# The worker process


def _worker_main(config: LoadConfig, store_dir: str, data: Connection, control: Connection,
                 inherited: list[Connection], journals: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means (module docstring)
    for connection in inherited:  # the other workers' pipe ends, copied by fork: not ours to hold open
        connection.close()
    try:
        trio.run(_worker, config, store_dir, data, control, journals)
    except BaseException as exc:  # report it to the parent, which prints it once
        kind, message = _failure(exc)
        if kind == "other":
            traceback.print_exception(exc, file=sys.stderr)
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            data.send(("error", kind, message))
    finally:
        data.close()


async def _worker(config: LoadConfig, store_dir: str, data: Connection, control: Connection, journals: bool) -> None:
    stats = ForwardingStats()
    runner = LoadRunner(config, stats, store_dir)
    result: LoadResult | None = None

    def flush() -> None:
        records = stats.take()
        if records:
            data.send(("records", runner.started_at if runner.started_at is not None else time.time(), records))

    try:
        async with trio.open_nursery() as nursery:

            async def flush_regularly() -> None:
                while True:
                    await trio.sleep(_FLUSH_INTERVAL)
                    flush()

            async def listen() -> None:
                while True:
                    await trio.lowlevel.wait_readable(control.fileno())
                    try:
                        command = control.recv()
                    except EOFError:  # the parent is gone: nobody will read a report
                        command = "abandon"
                    if command == "stop":
                        runner.stop()
                    elif command == "abandon":
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(flush_regularly)
            nursery.start_soon(listen)
            result = await runner.run()
            nursery.cancel_scope.cancel()
        flush()
        done: dict[str, Any] = {"interrupted": result is None, "stopped": runner.stopping}
        if result is not None:  # the journals only for the check: reading and shipping them is not free
            done.update(started_at=result.started_at, ended_at=result.ended_at,
                        journal=result.journal() if journals else {},
                        journalled=result.journalled_keys() if journals else set())
    finally:
        for store in runner.stores.values():
            store.close()  # durable before the parent hears "done"
    data.send(("done", done))


def _failure(exc: BaseException) -> tuple[str, str]:
    """("store" | "os" | "other", one line) for an exception that ended a worker."""
    leaves = [leaf for leaf in exception_leaves(exc) if not isinstance(leaf, trio.Cancelled)]
    for leaf in leaves:
        if isinstance(leaf, StoreError):
            return "store", str(leaf)
    for leaf in leaves:
        if isinstance(leaf, OSError):
            return "os", str(leaf)
    leaf = leaves[0] if leaves else exc
    return "other", f"{type(leaf).__name__}: {leaf}"


# ---------------------------------------------------------------------------------------------
# The parent


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing's Process of the fork context
    data: Connection
    control: Connection
    done: dict[str, Any] | None = None
    error: tuple[str, str] | None = None


@dataclass
class WorkersOutcome:
    """What ``run_workers`` leaves: the merged result (None: abandoned) and whether Ctrl-C stopped it."""

    result: LoadResult | None
    stopped_early: bool
    failures: list[str] = field(default_factory=list)


def run_workers(config: LoadConfig, store_dir: str, stats: LoadStats, on_progress: Callable[[Progress], None] | None,
                err: TextIO, *, journals: bool = True) -> WorkersOutcome:
    """Run ``config`` over ``config.workers`` processes, replaying their records into ``stats``.
    ``journals``: the workers send their terminals' journals for the consistency check (False: no
    check, so the result's journals are empty).

    Raises the first worker's StoreError / OSError (or WorkerFailure) after stopping the others.
    """
    context = multiprocessing.get_context("fork")  # the config (TLS context included) is inherited, not pickled
    sys.stdout.flush()
    sys.stderr.flush()
    err.flush()
    t0 = time.time()
    workers: list[_Worker] = []
    try:
        for index, part in enumerate(split_config(config)):
            data_in, data_out = context.Pipe(duplex=False)
            control_in, control_out = context.Pipe(duplex=False)
            inherited = [end for worker in workers for end in (worker.data, worker.control)]
            process = context.Process(target=_worker_main,
                                      args=(part, store_dir, data_out, control_in, inherited, journals),
                                      name=f"iso-terminal-load-{index + 1}", daemon=True)
            process.start()
            data_out.close()
            control_in.close()
            workers.append(_Worker(index, process, data_in, control_out))
        stopped = trio.run(_collect, workers, stats, on_progress, err, t0)
    finally:
        for worker in workers:
            worker.process.join(_JOIN_TIMEOUT)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(_JOIN_TIMEOUT)
            worker.data.close()
            worker.control.close()
    for worker in workers:
        if worker.error is not None:
            kind, message = worker.error
            if kind == "store":
                raise StoreError(message)
            if kind == "os":
                raise OSError(message)
            raise WorkerFailure(f"load worker {worker.index + 1}: {message}")
    if any(worker.done is None or worker.done["interrupted"] for worker in workers):
        return WorkersOutcome(None, stopped)
    reports = [worker.done for worker in workers if worker.done is not None]
    started_at = min(report["started_at"] for report in reports)
    ended_at = max(report["ended_at"] for report in reports)
    journal: dict[str, list[JournalEntry]] = {}
    journalled: set[tuple[str, str, str]] = set()
    for report in reports:
        journal.update(report["journal"])
        journalled |= report["journalled"]
    last = stats.last_outcome_at
    elapsed = last if last is not None else ended_at - t0
    return WorkersOutcome(LoadResult({}, started_at, ended_at, elapsed, journal_entries=journal,
                                     journalled=journalled), stopped)


async def _collect(workers: list[_Worker], stats: LoadStats, on_progress: Callable[[Progress], None] | None,
                   err: TextIO, t0: float) -> bool:
    """Read every worker's records until each is done; handle Ctrl-C. True when Ctrl-C stopped the run."""
    stopped = False
    abandoned = False

    def tell(command: str) -> None:
        for worker in workers:
            if worker.done is None and worker.error is None:
                with contextlib.suppress(OSError):  # it has just exited: its reader sees that
                    worker.control.send(command)

    async with trio.open_nursery() as nursery:

        async def abandon() -> None:
            nonlocal abandoned
            if abandoned:
                return
            abandoned = True
            tell("abandon")
            await trio.sleep(_ABANDON_GRACE)
            for worker in workers:  # still not out: stop waiting for it (it is terminated below)
                if worker.done is None and worker.error is None:
                    worker.error = ("other", "did not stop when told to abandon the run")
            readers.cancel_scope.cancel()

        async def watch() -> None:
            nonlocal stopped
            with trio.open_signal_receiver(signal.SIGINT) as interrupts:
                async for _ in interrupts:
                    if stopped:
                        nursery.start_soon(abandon)
                        return
                    stopped = True
                    tell("stop")
                    print("stopping: no new transactions; those in flight finish, then the terminals drain "
                          "(Ctrl-C again to abandon them)", file=err, flush=True)

        async def show() -> None:
            assert on_progress is not None
            while True:
                await trio.sleep(_PROGRESS_INTERVAL)
                on_progress(stats.snapshot(time.time() - t0))

        async def read(worker: _Worker) -> None:
            while True:
                await trio.lowlevel.wait_readable(worker.data.fileno())
                try:
                    message = worker.data.recv()
                except EOFError:
                    if worker.done is None and worker.error is None:
                        code = worker.process.exitcode
                        worker.error = ("other", f"exited unexpectedly (status {code})" if code is not None
                                        else "closed its pipe unexpectedly")
                        nursery.start_soon(abandon)
                    return
                tag = message[0]
                if tag == "records":
                    replay(stats, message[2], message[1] - t0)
                elif tag == "done":
                    worker.done = message[1]
                    return
                elif tag == "error":
                    worker.error = (message[1], message[2])
                    nursery.start_soon(abandon)
                    return

        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            nursery.start_soon(watch)
        if on_progress is not None:
            nursery.start_soon(show)
        async with trio.open_nursery() as readers:
            for worker in workers:
                readers.start_soon(read, worker)
        nursery.cancel_scope.cancel()
    if on_progress is not None:
        on_progress(stats.snapshot(time.time() - t0))
    return stopped or any(worker.done is not None and worker.done.get("stopped") for worker in workers)
