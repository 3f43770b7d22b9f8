"""The Trio load runner: the shared rate limiter, the counting policy, ``LoadRunner`` and its result."""

from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from switch.codec.message import Codec, Message
from terminal.client import ConnectFactory, TerminalClient, TrioClock, tcp_connector
from terminal.load.options import MEMORY_STORES, LoadConfig, LoadError, store_file_name
from terminal.load.stats import LoadStats, Progress
from terminal.load.syncer import GroupSyncer
from terminal.policy import (
    Command,
    Drain,
    Echo,
    Note,
    OfflineSale,
    Outcome,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Send,
    Settle,
    TerminalPolicy,
)
from terminal.profile import TerminalProfile
from terminal.store import JournalEntry, TerminalStore

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The rate limiter (pure)


class TokenBucket:
    """A token bucket over explicit times: ``rate`` tokens per second, at most ``burst`` saved up.

    ``reserve(now)`` takes one token and returns when the caller may go (``now`` if a token was
    there); reservations queue up, so concurrent callers are spaced ``1/rate`` apart. Pure: the
    caller sleeps.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise LoadError(f"rate must be a number > 0, got {rate!r}")
        if not (isinstance(burst, int | float) and math.isfinite(burst) and burst >= 1):
            raise LoadError(f"burst must be a number >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated: float | None = None

    def reserve(self, now: float) -> float:
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return now
        return now + (-self._tokens) / self.rate
# ---------------------------------------------------------------------------------------------
# The runner (Trio)

_GC_THRESHOLDS = (20_000, 20, 20)  # collections during a run: the young generation every 20,000 net allocations


class _RareCollections:
    """For the length of a run: the objects made before it frozen, the collector's thresholds raised.

    A transaction allocates a few hundred GC-tracked objects that reference counting frees; with the
    default thresholds (700, 10, 10) the collector ran every few transactions, and its full passes
    scanned everything the terminals keep (stores, caches, tasks), so its cost per transaction grew
    with the number of terminals (9 % of the CPU with 200). Nothing is collected later than a
    cycle's memory matters; the previous settings come back at the end."""

    def __init__(self) -> None:
        self._saved = gc.get_threshold()

    def __enter__(self) -> None:
        gc.freeze()
        gc.set_threshold(*_GC_THRESHOLDS)

    def __exit__(self, *exc: object) -> None:
        gc.set_threshold(*self._saved)
        gc.unfreeze()



@dataclass
class LoadResult:
    """What a run leaves: the stores (still open, for the check), times by both clocks, interruption.

    A run split over worker processes has no stores here: ``journal_entries`` and ``journalled``
    carry what the workers read from theirs before closing them."""

    stores: dict[str, TerminalStore]
    started_at: float  # Unix seconds (the policies' clock)
    ended_at: float
    elapsed: float  # seconds from the start to the last transaction's outcome (or to the stop)
    interrupted: bool = False
    journal_entries: dict[str, list[JournalEntry]] | None = None
    journalled: set[tuple[str, str, str]] | None = None
    _entries_read: dict[str, list[JournalEntry]] | None = dataclasses.field(default=None, init=False, repr=False,
                                                                          compare=False)

    def journal(self) -> dict[str, list[JournalEntry]]:
        """Each terminal's journal entries made during this run (earlier runs' entries excluded)."""
        if self.journal_entries is not None:
            return self.journal_entries
        return {terminal: [entry for entry in entries if entry.created_at >= self.started_at]
                for terminal, entries in self._stored_entries().items()}

    def journalled_keys(self) -> set[tuple[str, str, str]]:
        """(terminal, STAN, field 7) of every entry the stores hold, from any run."""
        if self.journalled is not None:
            return self.journalled
        return {(terminal, entry.stan, entry.transmission_time)
                for terminal, entries in self._stored_entries().items() for entry in entries}

    def _stored_entries(self) -> dict[str, list[JournalEntry]]:
        """Every store's entries, read once for both questions above (the run is over: they no longer
        change). Reading and decoding a journal costs as much per entry as a good part of a transaction."""
        if self._entries_read is None:
            self._entries_read = {terminal: store.entries() for terminal, store in self.stores.items()}
        return self._entries_read

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


class _CountingPolicy(TerminalPolicy):
    """The policy, counting each message it has the driver send (by purpose: reversal, signon...).

    Every ``Send`` the policy hands out is made by ``_transmit`` (counted there: one call per message,
    not a wrapper around every ``next_action``). Policy calls may run in a worker thread; only this
    terminal's calls touch the list, one at a time, and the runner takes it between commands, when
    no call is running.
    """

    def __init__(self, profile: TerminalProfile, store: TerminalStore, now: float) -> None:
        super().__init__(profile, store, now)
        self._sent: list[str] = []

    def _transmit(self, now: float, purpose: str, message: Message, ref: int | None = None) -> Send:
        self._sent.append(purpose)
        return super()._transmit(now, purpose, message, ref)

    def take_sent(self) -> list[str]:
        sent, self._sent = self._sent, []
        return sent


@dataclass(frozen=True)
class _Job:
    operation: str
    command: Command


class LoadRunner:
    """Runs ``config`` on the current Trio loop, counting into ``stats``.

    ``connect`` defaults to TCP to ``config.host:config.port`` (tests pass memory streams); ``clock``
    defaults to the wall clock. ``store_dir`` is where each terminal's store file goes.
    """

    def __init__(self, config: LoadConfig, stats: LoadStats, store_dir: str, *,
                 connect: ConnectFactory | None = None, clock: TrioClock | None = None) -> None:
        self.config = config
        self.stats = stats
        self.store_dir = store_dir
        self._connect = connect or tcp_connector(config.host, config.port, ssl_context=config.ssl_context)
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._bucket = TokenBucket(config.rate) if config.rate else None
        self._operations = list(config.mix)
        self._cum_weights = list(itertools.accumulate(config.mix[name] for name in self._operations))
        self._codec = Codec(config.dialect)
        self._issued = 0
        self._stopping = False
        self._stop_requested = trio.Event()  # wakes terminals waiting for a rate-limit slot
        self._t0 = 0.0
        self._deadline: float | None = None
        self.stores: dict[str, TerminalStore] = {}
        self.started_at: float | None = None  # Unix seconds, once ``run`` has begun
        self._syncer = GroupSyncer() if config.offload_store else None

    def store_path(self, terminal_id: str) -> str:
        if self.store_dir == MEMORY_STORES:
            return ":memory:"
        return os.path.join(self.store_dir, store_file_name(terminal_id))

    async def run(self, on_progress: Callable[[Progress], None] | None = None,
                  progress_interval: float = 0.25) -> LoadResult:
        clock = self._clock or TrioClock.wall()
        self._clock = clock
        self._t0 = trio.current_time()
        started_at = self.started_at = clock.now()
        if self.config.duration is not None:
            self._deadline = self._t0 + self.config.duration
        result = LoadResult(self.stores, started_at, started_at, 0.0)
        try:
            with _RareCollections():
                await self._run_terminals(on_progress, progress_interval)
        finally:
            result.ended_at = clock.now()
            last = self.stats.last_outcome_at
            result.elapsed = last if last is not None else self._at()
            if on_progress is not None:
                on_progress(self.stats.snapshot(self._at()))
        return result

    async def _run_terminals(self, on_progress: Callable[[Progress], None] | None, progress_interval: float) -> None:
        async with trio.open_nursery() as nursery:
            if on_progress is not None:
                nursery.start_soon(self._report_progress, on_progress, progress_interval)
            if self._syncer is not None:
                nursery.start_soon(self._syncer.run)
            async with trio.open_nursery() as terminals:
                for terminal_id in self.config.terminal_ids:
                    terminals.start_soon(self._terminal, terminal_id)
            nursery.cancel_scope.cancel()

    def _at(self) -> float:
        return trio.current_time() - self._t0

    async def _report_progress(self, on_progress: Callable[[Progress], None], interval: float) -> None:
        while True:
            await trio.sleep(interval)
            on_progress(self.stats.snapshot(self._at()))

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in a worker thread when the stores are offloaded and on disk (an open reads and may
        write the file); inline for ``:memory:`` stores, where a thread hop would only cost time."""
        if self.config.offload_store and self.store_dir != MEMORY_STORES:
            return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        return fn(*args, **kwargs)

    async def _terminal(self, terminal_id: str) -> None:
        assert self._clock is not None
        config = self.config
        store = await self._call(TerminalStore.open, self.store_path(terminal_id), terminal_id, deferred_sync=True)
        self.stores[terminal_id] = store
        profile = dataclasses.replace(config.profile, terminal_id=terminal_id)
        policy = await self._call(_CountingPolicy, profile, store, self._clock.now())
        closing = False

        def on_note(note: Note) -> None:
            if not (closing and note.kind == "connection-lost"):  # our own close at the end is no loss
                self.stats.record_note(note.kind, note.text)

        client = TerminalClient(policy, self._codec, config.framing, self._connect, self._clock, tpdu=config.tpdu,
                                offload_sync=config.offload_store, syncer=self._syncer, on_note=on_note)
        async with client:
            await self._housekeeping(client, policy, Drain())  # anything an earlier run left owed
            while (job := await self._next_job()) is not None:
                self.stats.record_started(job.operation)
                began = trio.current_time()
                outcome = await client.run_command(job.command)
                ended = trio.current_time()
                self.stats.record_sends(policy.take_sent())
                self.stats.record_outcome(job.operation, outcome.kind, outcome.response_code, ended - began,
                                          ended - self._t0)
            await self._housekeeping(client, policy, Drain())
            if config.settle:
                await self._housekeeping(client, policy, Settle())
            closing = True

    async def _housekeeping(self, client: TerminalClient, policy: _CountingPolicy, command: Command) -> Outcome:
        outcome = await client.run_command(command)
        self.stats.record_sends(policy.take_sent())
        self.stats.record_housekeeping(command.name, outcome.kind)
        return outcome

    def stop(self) -> None:
        """End the run early, gracefully: no new transaction starts; the ones in flight finish, then
        every terminal drains (and settles) as at a normal end."""
        self._stopping = True
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def _next_job(self) -> _Job | None:
        """The next transaction to run, at the moment it may start; None when the run is over."""
        count, deadline = self.config.count, self._deadline
        if self._stopping or (count is not None and self._issued >= count):
            return None
        now = trio.current_time()
        if deadline is not None and now >= deadline:
            return None
        self._issued += 1  # taken before any await, so terminals together never exceed --count
        if self._bucket is not None:
            start = self._bucket.reserve(now)
            if deadline is not None and start >= deadline:
                self._issued -= 1
                return None
            with trio.move_on_at(start):
                await self._stop_requested.wait()
            if self._stopping:
                self._issued -= 1
                return None
        return self._job()

    def _job(self) -> _Job:
        config = self.config
        operation = self._rng.choices(self._operations, cum_weights=self._cum_weights)[0]  # = weights=, same draws
        amount = self._rng.randint(*config.amount_range)
        pan = self._rng.choice(config.pans)
        command: Command
        if operation == "purchase":
            command = Purchase(amount, pan, config.expiry)
        elif operation == "refund":
            command = Refund(amount, pan, config.expiry)
        elif operation == "preauth":
            command = PreAuthorization(amount, pan, config.expiry)
        elif operation == "offline":
            command = OfflineSale(amount, pan, config.expiry)
        elif operation == "void":
            command = ReverseLast()
        else:
            command = Echo()
        return _Job(operation, command)
