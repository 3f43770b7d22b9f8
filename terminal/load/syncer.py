"""Group sync for many deferred-sync stores: one hand-over per batch of terminals, not per request.

Each load terminal's store commits without fsync and must be synced before a request leaves
(``TerminalStore.sync``; the driver awaits it). Handing every one of those fsyncs to its own worker
thread made the event loop and dozens of threads fight over the GIL (tens of futex calls per
transaction). Here the terminals that need a sync at the same moment queue up; a long-lived
dispatcher thread takes them as one batch, and the event loop wakes the batch's terminals together
when it is back.

Inside a batch the stores are synced in parallel by a small pool of sync threads (the GIL is
released during each commit's write and each fdatasync): one after the other, a batch of 20 cost
20 disk flushes in a row (~1.5 ms each on this machine's disk, so the durable load runner was
bound at ~600 transactions per second), while concurrent fdatasyncs are merged by the file
system's journal into a few flushes (measured: 550 flushes/s from one thread, 13,000/s from 8).

The event loop's share is kept small, as it is the load runner's bottleneck: a batch goes to its
dispatcher through a ``SimpleQueue`` and comes back through one ``run_sync_soon``, and a waiting
terminal is parked and rescheduled directly (py-spy put a ``trio.to_thread`` call per batch and a
``trio.Event`` per request at ~5 % of the loop's time). One batch is in flight
at a time: while it syncs, the next one gathers every terminal that needs a sync meanwhile, so
there are fewer, larger batches and fewer wake-ups per transaction (measured against the previous
syncer with four in flight, 50 and 200 terminals: ~25-35 % fewer context switches and less kernel
time per transaction, and more transactions per second; two in flight was in between). Giving each
store its own thread and wake-up instead was measured worse: every sync thread then wanted the GIL
from the busy loop on its own (three times the context switches per transaction).

No terminal is released before its own store's sync returned: a store its batch never synced (no
thread to run it, the syncer stopped) raises ``StoreError`` in its terminal instead, so "stored,
then sent" holds exactly as before.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue

import trio

from terminal.store import StoreError, TerminalStore

__all__ = ["GroupSyncer"]

_BATCHES_IN_FLIGHT = 1  # batches being synced at once (one dispatcher thread each): see the module docstring
_SYNC_THREADS = 8  # stores synced at once across the batches (the file system merges their flushes)


class _Waiter:
    __slots__ = ("error", "followers", "settled", "store", "synced", "task")

    def __init__(self, store: TerminalStore, task: trio.lowlevel.Task) -> None:
        self.store = store
        self.task = task
        self.error: BaseException | None = None
        self.synced = False  # set only once the store's sync returned: anything else is a failure
        self.settled = False  # woken, or its terminal was cancelled while waiting: never wake it (again)
        self.followers: list[_Waiter] = []  # later waiters for the same store in the same batch

    def abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self.settled = True  # (its store may still be synced: harmless)
        return trio.lowlevel.Abort.SUCCEEDED


def _sync_one(waiter: _Waiter) -> None:
    try:
        waiter.store.sync()
    except Exception as exc:  # this terminal's store failed; the others still get synced
        waiter.error = exc
    else:
        waiter.synced = True


def _sync_all(waiters: list[_Waiter], pool: ThreadPoolExecutor | None) -> None:
    """Sync every waiter's store; returns when all have returned (in parallel through ``pool``)."""
    if pool is None or len(waiters) == 1:
        for waiter in waiters:
            _sync_one(waiter)
        return
    for _ in pool.map(_sync_one, waiters):  # _sync_one keeps each store's error for its own terminal
        pass


def _live(waiters: list[_Waiter], syncing: set[int]) -> tuple[list[_Waiter], list[_Waiter]]:
    """(the next batch, the waiters held back): the waiters still waiting, one per store. A terminal
    cancelled while it waited (and waiting again) must not have its store synced twice at once, by
    two threads on one connection: a store queued twice is synced once and all its waiters get that
    one result, and a store a batch in flight is syncing (``syncing``: ids) waits for a later batch."""
    batch: list[_Waiter] = []
    held: list[_Waiter] = []
    by_store: dict[int, _Waiter] = {}
    for waiter in waiters:
        if waiter.settled:
            continue
        if id(waiter.store) in syncing:
            held.append(waiter)
            continue
        first = by_store.get(id(waiter.store))
        if first is None:
            by_store[id(waiter.store)] = waiter
            batch.append(waiter)
        else:
            first.followers.append(waiter)
    return batch, held


def _wake(waiters: list[_Waiter]) -> None:
    for waiter in waiters:
        for each in (waiter, *waiter.followers):
            if not each.settled:
                each.settled = True
                each.error, each.synced = waiter.error, waiter.synced
                trio.lowlevel.reschedule(each.task)


class GroupSyncer:
    """``await syncer(store)`` returns once ``store`` is synced; ``run`` serves it (start it in a nursery)."""

    def __init__(self, batches_in_flight: int = _BATCHES_IN_FLIGHT, sync_threads: int = _SYNC_THREADS) -> None:
        """``sync_threads``: stores synced in parallel (1: one after the other within each batch)."""
        if batches_in_flight < 1 or sync_threads < 1:
            raise ValueError("batches_in_flight and sync_threads must be >= 1")
        self._batches_in_flight = batches_in_flight
        self._sync_threads = sync_threads
        self._queue: list[_Waiter] = []  # waiting for a dispatcher
        self._wakeup = trio.Event()
        self._in_flight = 0
        self._batches: SimpleQueue[list[_Waiter] | None] = SimpleQueue()  # to the dispatcher threads
        self._pool: ThreadPoolExecutor | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._failure: BaseException | None = None  # what broke a dispatcher: the run raises it
        self._stopped = False
        self._syncing: set[int] = set()  # ids of the stores in the batches in flight
        self._ran = False

    async def __call__(self, store: TerminalStore) -> None:
        if self._stopped:
            raise StoreError(f"terminal {store.terminal_id}: store not synced; the request is not sent")
        waiter = _Waiter(store, trio.lowlevel.current_task())
        self._queue.append(waiter)
        self._wakeup.set()
        await trio.lowlevel.wait_task_rescheduled(waiter.abort)
        if waiter.error is not None:
            raise waiter.error
        if not waiter.synced:  # the batch never reached this store (no thread, say): never send unsynced
            raise StoreError(f"terminal {store.terminal_id}: store not synced; the request is not sent")

    async def run(self) -> None:
        """Serve syncs until cancelled; on the way out, finish the batches being synced, refuse the rest.

        Once: a stopped syncer refuses every later sync (a run's terminals end with it)."""
        if self._ran:
            raise RuntimeError("a GroupSyncer runs once; make a new one")
        self._ran = True
        self._token = trio.lowlevel.current_trio_token()
        dispatchers: list[threading.Thread] = []
        try:
            if self._sync_threads > 1:
                self._pool = ThreadPoolExecutor(self._sync_threads, thread_name_prefix="store-sync")
            for index in range(self._batches_in_flight):
                thread = threading.Thread(target=self._dispatch, name=f"store-sync-batch_{index}", daemon=True)
                thread.start()
                dispatchers.append(thread)
            await self._serve()
        finally:
            self._stopped = True
            for _ in dispatchers:
                self._batches.put(None)  # each ends after the batch it is syncing
            for thread in dispatchers:  # blocks the loop for those syncs only: a half-synced store is a store
                thread.join()
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)
            queued, self._queue = self._queue, []
            _wake(queued)  # never synced: their terminals are refused, not released
            # (batches the dispatchers finished wake their terminals through run_sync_soon, still to come)

    async def _serve(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._failure is not None:
                raise self._failure
            if self._queue and self._in_flight < self._batches_in_flight:
                # the waiters of this turn of the loop (and any before); a store another batch is
                # still syncing waits for the next turn
                batch, self._queue = _live(self._queue, self._syncing)
                if batch:
                    self._syncing.update(id(waiter.store) for waiter in batch)
                    self._in_flight += 1
                    self._batches.put(batch)

    def _dispatch(self) -> None:
        """A dispatcher thread: sync whole batches, hand each back to the event loop once."""
        token = self._token
        assert token is not None
        while (batch := self._batches.get()) is not None:
            try:
                _sync_all(batch, self._pool)
            except BaseException as exc:  # the machinery failed (no thread, say): refuse the batch, stop the run
                self._failure = exc
            try:
                token.run_sync_soon(self._back, batch)
            except trio.RunFinishedError:  # the run is over: nobody waits for it any more
                return

    def _back(self, batch: list[_Waiter]) -> None:
        """In the event loop: a batch is synced (or failed); wake its terminals and send the next batch."""
        self._in_flight -= 1
        self._syncing.difference_update(id(waiter.store) for waiter in batch)
        _wake(batch)
        self._wakeup.set()
