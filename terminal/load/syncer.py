"""Group sync for many deferred-sync stores: one thread hop per batch of terminals, not per request.

Each load terminal's store commits without fsync and must be synced before a request leaves
(``TerminalStore.sync``; the driver awaits it). Handing every one of those fsyncs to its own worker
thread made the event loop and dozens of threads fight over the GIL (tens of futex calls per
transaction). Here the terminals that need a sync at the same moment queue up; a few long-lived
batches each take the whole queue into one worker thread, sync every store in it (the GIL is
released during each fsync), and wake their terminals together. No terminal is answered before its
own store's sync returned, so "stored, then sent" holds exactly as before.
"""

from __future__ import annotations

import trio

from terminal.store import TerminalStore

__all__ = ["GroupSyncer"]

_BATCHES_IN_FLIGHT = 4  # worker threads syncing at once (the disk merges their flushes)


class _Waiter:
    __slots__ = ("done", "error", "store")

    def __init__(self, store: TerminalStore) -> None:
        self.store = store
        self.done = trio.Event()
        self.error: BaseException | None = None


def _sync_all(waiters: list[_Waiter]) -> None:
    for waiter in waiters:
        try:
            waiter.store.sync()
        except Exception as exc:  # this terminal's store failed; the others still get synced
            waiter.error = exc


class GroupSyncer:
    """``await syncer(store)`` returns once ``store`` is synced; ``run`` serves it (start it in a nursery)."""

    def __init__(self, batches_in_flight: int = _BATCHES_IN_FLIGHT) -> None:
        self._queue: list[_Waiter] = []
        self._wakeup = trio.Event()
        self._limiter = trio.Semaphore(batches_in_flight)

    async def __call__(self, store: TerminalStore) -> None:
        waiter = _Waiter(store)
        self._queue.append(waiter)
        self._wakeup.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self._limiter.acquire()  # wait for a free thread: meanwhile the queue grows into a batch
                batch, self._queue = self._queue, []
                if not batch:
                    self._limiter.release()
                    continue
                nursery.start_soon(self._flush, batch)

    async def _flush(self, batch: list[_Waiter]) -> None:
        try:
            with trio.CancelScope(shield=True):  # a store half-synced is still a store; finish the batch
                await trio.to_thread.run_sync(_sync_all, batch)
        finally:
            self._limiter.release()
            for waiter in batch:
                waiter.done.set()
