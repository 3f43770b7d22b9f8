"""Group commit: durability before acknowledgement without one fsync per message.

Request tasks append ledger rows synchronously (so the next decision already sees them) and then
``await committer.wait_committed(decision.commit_seq)`` before sending their response. One
committer task gathers everything pending, lets a short window (``max_delay``) collect more, and
writes it all in one transaction in a worker thread (``Ledger.flush``); every waiter whose row is
now durable goes on. Under load, rows also pile up while a flush is running, so one fsync serves a
whole burst of requests and the switch keeps its throughput with a durable ledger.

Shutdown drains: when ``run`` is cancelled it flushes once more (shielded) before returning, so
nothing appended is left behind. A failing flush (disk full, I/O error) is not retried: waiters
get ``CommitError`` — their responses must not be sent — and ``run`` re-raises, stopping the
switch rather than acknowledging what it cannot keep.

Flushes run on a thread limiter of their own, so nothing else that uses worker threads (the admin
API loading scenarios, say) can take the thread the ledger needs. ``uncommitted_age`` says how long
the oldest row not yet durable has waited, for ``/health`` to report a stalled commit path.
"""

from __future__ import annotations

import math

import trio

from switch.ledger import Ledger

__all__ = ["CommitError", "GroupCommitter"]


class CommitError(RuntimeError):
    """The ledger could not be made durable, or the committer is not running: do not acknowledge."""


class GroupCommitter:
    """The one writer of a ledger inside a Trio program."""

    def __init__(self, ledger: Ledger, *, max_delay: float = 0.0, idle_flush: float = 1.0,
                 in_thread: bool = True) -> None:
        """``max_delay``: how long to let more rows collect once something waits (seconds, >= 0).
        ``idle_flush``: rows appended with nobody waiting for them are flushed at least this often.
        ``in_thread``: flush in a worker thread (the event loop keeps serving meanwhile). False
        flushes on the event loop: for virtual-clock tests, where a loop waiting on a thread looks
        idle to ``autojump_clock``, which would then jump time past every deadline."""
        if not (math.isfinite(max_delay) and max_delay >= 0):
            raise ValueError(f"max_delay must be seconds >= 0, got {max_delay!r}")
        if not (math.isfinite(idle_flush) and idle_flush > 0):
            raise ValueError(f"idle_flush must be seconds > 0, got {idle_flush!r}")
        self.ledger = ledger
        self.max_delay = max_delay
        self.idle_flush = idle_flush
        self.in_thread = in_thread
        self.flushes = 0  # transactions written (for metrics and tests)
        self._wanted = trio.Event()  # set by a waiter: something pending needs committing
        self._flushed = trio.Event()  # set (then replaced) after every flush attempt
        self._running = False
        self._failure: BaseException | None = None
        self._limiter = trio.CapacityLimiter(1)  # the one writer's own thread, never the shared pool
        self._oldest: tuple[int, float] | None = None  # (first uncommitted seq, when it was first seen)

    @property
    def running(self) -> bool:
        return self._running

    def uncommitted_age(self) -> float:
        """Seconds (``trio.current_time``) the oldest row not yet durable has been seen waiting; 0 if none.

        Observed here and by every ``wait_committed``, so under traffic it is accurate; a row
        nobody waits for is first seen by the first call after it was appended.
        """
        ledger = self.ledger
        if ledger.closed or ledger.committed_seq >= ledger.pending_seq:
            self._oldest = None
            return 0.0
        now = trio.current_time()
        first = ledger.committed_seq + 1
        if self._oldest is None or self._oldest[0] != first:
            self._oldest = (first, now)
        return now - self._oldest[1]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit loop; returns (after a final flush) when cancelled."""
        if self._running:
            raise RuntimeError("GroupCommitter.run is already running")
        self._running = True
        self._failure = None
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.idle_flush):
                    await self._wanted.wait()
                self._wanted = trio.Event()
                if self.ledger.pending_seq <= self.ledger.committed_seq:
                    continue
                if self.max_delay:
                    await trio.sleep(self.max_delay)
                await self._flush()
        finally:
            try:
                with trio.CancelScope(shield=True):
                    ledger = self.ledger
                    pending = not ledger.closed and ledger.pending_seq > ledger.committed_seq
                    if self._failure is None and pending:
                        await self._flush()
            finally:
                self._running = False
                self._release()  # waiters left now fail instead of hanging

    async def _flush(self) -> None:
        try:
            if self.in_thread:
                await trio.to_thread.run_sync(self.ledger.flush, limiter=self._limiter)
            else:
                self.ledger.flush()
                await trio.lowlevel.checkpoint()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self.flushes += 1
            self._release()

    def _release(self) -> None:
        self._flushed.set()
        self._flushed = trio.Event()

    async def wait_committed(self, seq: int) -> None:
        """Return once ledger sequence ``seq`` is durable (at once, without a checkpoint, if it is).

        Raises CommitError if the flush failed or the committer is not running, ValueError for a
        sequence no row was appended with (it could never become durable).
        """
        ledger = self.ledger
        if ledger.is_committed(seq):
            return
        self.uncommitted_age()  # note when the oldest pending row started waiting
        if seq > ledger.pending_seq:
            raise ValueError(f"sequence {seq} was never appended (pending up to {ledger.pending_seq})")
        while ledger.committed_seq < seq:
            if self._failure is not None:
                raise CommitError(f"ledger flush failed: {self._failure!r}") from self._failure
            if not self._running:
                raise CommitError(f"sequence {seq} is not durable and the group committer is not running")
            flushed = self._flushed
            self._wanted.set()
            await flushed.wait()
