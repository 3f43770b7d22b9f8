"""The journal's file writer: claims what ``record_*`` queued and gets it into the file, in order.

Two ways, one file format (``JournalWriterKind``):

- ``thread``: the lines are formatted (masking, hex, JSON) on the event loop, ``_SLICE`` entries
  between checkpoints, and only the writes and rotation run in a worker thread, so the loop never
  waits on the disk. Formatting in a thread cost more: it competes for the GIL with the loop, and
  the hand-offs (up to the 5 ms switch interval each) left the loop idle while requests waited.
- ``process``: the event loop only claims each record and serialises its raw values (marshal,
  ~2 us a record), hands the batch to a writer process over a pipe, and the formatting (~7 us a
  line) runs there, on another core (``switch.journal.writer``). A writer process that dies is
  replaced by the thread way at once, after rewriting what it had not confirmed: nothing is lost.

A record is claimed with the state it has then (a request's outcome may still be open); when a
request already claimed is then answered with nothing (``record_unsent``), an "update" line for
it follows.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections import deque
from pathlib import Path

import trio

from switch.codec.message import Codec
from switch.journal.filing import JournalFile
from switch.journal.handoff import BatchDecoder, BatchEncoder, WriterSettings
from switch.journal.lines import LineFormatter
from switch.journal.masking import _Masker
from switch.journal.process import WriterProcess, WriterStartError
from switch.journal.records import _Record, _Update

log = logging.getLogger("switch.journal")

_SLICE = 256  # entries formatted between checkpoints: ~2 ms of the event loop at most
_HANDOFF_SLICE = 1024  # records serialised per batch to the writer process: ~2 ms, ~0.5 MB


class JournalWriterKind(enum.StrEnum):
    """Where the journal file's lines are formatted."""

    THREAD = "thread"
    PROCESS = "process"


_PROCESS_MIN_CPUS = 3


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def choose_writer(option: str) -> JournalWriterKind:
    """``thread`` / ``process`` as given; ``auto`` (the switch's default): the writer process when this
    process may use at least ``_PROCESS_MIN_CPUS`` CPUs, else the thread.

    Why: the writer process takes ~7 us per frame off the event loop but spends ~10 us per frame of
    its own (unmarshal, then the same formatting) and needs a core to run on. Measured on a 2-core VM
    with the load client on the same two cores (``scripts/bench_switch.py``), switch, client and
    writer then compete for two cores and the rate did not improve; with a core to spare, the
    switch's own CPU per message is what limits it, and that is what the process saves.
    """
    if option == "auto":
        return JournalWriterKind.PROCESS if usable_cpus() >= _PROCESS_MIN_CPUS else JournalWriterKind.THREAD
    try:
        return JournalWriterKind(option)
    except ValueError:
        raise ValueError(f"journal writer must be auto, thread or process, got {option!r}") from None


class _Batch:
    """Lines claimed and formatted (in order), then written by one thread job."""

    __slots__ = ("done", "lines")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done = False


class FileWriter:
    """Writes a journal's queued records to its file (see the module docstring)."""

    def __init__(self, codec: Codec, path: Path, *, max_bytes: int, backups: int, flush_interval: float,
                 max_pending: int, kind: JournalWriterKind):
        self.path = path
        self.kind = kind
        self._settings = WriterSettings(str(path), max_bytes, backups, codec.dialect)
        self._lines = LineFormatter(_Masker(codec))  # the writer's own caches
        self._encoder = BatchEncoder(self._lines)
        self._flush_interval = flush_interval
        # ``pending`` is filled on the Trio thread and emptied there too (into a batch); the file is
        # only touched by the thread writing a batch, or by the writer process while it runs.
        self.writing = True
        self.pending: deque[_Record | _Update] = deque(maxlen=max_pending)
        self.lost = 0
        self._inflight: _Batch | None = None
        self._flush_lock = trio.Lock()
        self._file = JournalFile(path, max_bytes, backups)
        self._process: WriterProcess | None = None
        self._failed = False
        self.closed = False

    # -- running ---------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        """Write queued entries every ``flush_interval`` until cancelled; then write the rest (shielded)."""
        if self.kind is JournalWriterKind.PROCESS and not self._file.is_open:
            await self._start_process()
        if self._process is None:
            await self._run_in_thread(task_status)
            return
        process = self._process
        async with trio.open_nursery() as nursery:
            nursery.start_soon(process.read_reports)
            try:
                task_status.started()
                await self._flush_periodically()
            finally:
                with trio.CancelScope(shield=True):
                    await self._flush()
                    if self._process is process:
                        await self._stop_process(process)

    async def _run_in_thread(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            if self.writing and not self._file.is_open:
                await trio.to_thread.run_sync(self._open_file)
            task_status.started()
            await self._flush_periodically()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()

    async def _flush_periodically(self) -> None:
        while self.writing:  # until cancelled, or the file is given up
            await trio.sleep(self._flush_interval)
            await self._flush()

    async def _start_process(self) -> None:
        try:
            self._process = await WriterProcess.start(self._settings)
        except WriterStartError as exc:
            if exc.file_error:
                self._give_up(str(exc))
            else:
                log.error("journal writer process could not start (%s); formatting the journal in the switch "
                          "process instead", exc)

    async def _stop_process(self, process: WriterProcess) -> None:
        """Shutdown (or a dead writer): close its pipe, wait for it, rewrite here what it did not write."""
        status = await process.stop()
        self._process = None
        if process.error is not None:
            self._give_up(process.error)
            return
        if process.confirmed >= process.sent and status == 0:
            return
        payloads = process.unconfirmed()
        decoder = BatchDecoder(self._lines)
        lines = [line for payload in payloads for line in decoder.lines(payload)]
        try:
            rewritten = await trio.to_thread.run_sync(self._file.resume, lines)
        except OSError as exc:
            self._give_up(str(exc))
            log.error("journal writer process (pid %d) exited with status %s; %d lines it had not written are "
                      "lost with the file", process.pid, status, len(lines))
            return
        log.error("journal writer process (pid %d) exited with status %s; the switch formats and writes the journal "
                  "itself from now on (more CPU per message); nothing lost: %d of the %d lines it had not confirmed "
                  "were written again", process.pid, status, rewritten, len(lines))

    # -- flushing --------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything queued so far now; with a writer process, until it confirms."""
        await self._flush()
        process = self._process
        if process is not None and not await process.wait_confirmed():
            async with self._flush_lock:
                if self._process is process:
                    await self._stop_process(process)
                await self._flush_locked()

    async def _flush(self) -> None:
        async with self._flush_lock:  # one batch at a time, in order
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self.writing and (self._inflight is not None or self.pending
                                or (self._process is not None and not self._process.alive)):
            process = self._process
            if process is not None:
                if process.alive:
                    await process.send(self._take_payload())
                else:
                    await self._stop_process(process)
                continue
            batch = self._inflight
            if batch is None or batch.done:
                batch = self._inflight = _Batch()
                await self._claim_lines(batch)
            # Not abandoned on cancel: a cancelled flush keeps the lines it formatted (their
            # records are claimed) and a later flush writes them first.
            await trio.to_thread.run_sync(self._write_lines, batch, batch.lines)
            self._inflight = None

    def _report_lost(self) -> None:
        if self.lost:
            log.warning("journal writer fell behind: %d entries were not written to %s", self.lost, self.path)
            self.lost = 0

    def _take_payload(self) -> bytes:
        """Claim up to ``_HANDOFF_SLICE`` queued records (their state now) as a batch for the process."""
        self._report_lost()
        return self._encoder.take(self.pending, _HANDOFF_SLICE)

    async def _claim_lines(self, batch: _Batch) -> None:
        """Claim what is queued now and format it into ``batch``, ``_SLICE`` entries between
        checkpoints. Cancelled at a checkpoint, the batch keeps the lines formatted so far and the
        rest stays queued (the inflight batch is written by the next flush, lines in order)."""
        self._report_lost()
        remaining = len(self.pending)  # not what is queued meanwhile: one batch per flush, bounded
        while remaining > 0:
            count = min(remaining, _SLICE)
            self._claim(batch, count)
            remaining -= count
            if remaining:
                await trio.lowlevel.checkpoint()

    def _claim(self, batch: _Batch, count: int) -> None:
        """Claim the first ``count`` queued entries, each with the state it has now (the Trio thread
        may change it later), and append their lines to ``batch``: claimed and formatted in one
        pass, with nothing built per entry but its line."""
        self._lines.claim(self.pending, count, batch.lines)

    # -- the file, in this process -----------------------------------------------------------

    def _open_file(self) -> None:
        try:
            self._file.open()
        except OSError as exc:
            self._give_up(str(exc))

    def _give_up(self, reason: str) -> None:
        """The file is optional; the ring is not. Say so once and stop queueing for the file."""
        if not self._failed:
            log.error("journal file %s cannot be written (%s); keeping the in-memory journal only", self.path, reason)
        self._failed = True
        self.writing = False
        self.pending.clear()
        with contextlib.suppress(OSError):
            self._file.close()

    def write_pending_now(self) -> None:
        """Format and write everything queued, in this thread, at once (``close``; tests; benchmarks)."""
        if self.writing:
            if self._inflight is not None and not self._inflight.done:
                self._write_lines(self._inflight, self._inflight.lines)
                self._inflight = None
            if self.pending:
                self._report_lost()
                batch = _Batch()
                self._claim(batch, len(self.pending))
                self._write_lines(batch, batch.lines)

    def _write_lines(self, batch: _Batch, lines: list[str]) -> None:
        """Runs in a worker thread: write, rotate, flush."""
        try:
            self._file.write(lines)
        except OSError as exc:
            self._give_up(str(exc))
        batch.done = True

    def close(self) -> None:
        """Write what ``run`` did not and close the file (blocks on the disk: call it after ``run``)."""
        if self.closed:
            return
        if self._process is not None:  # run() is still going: it drains and stops its process when cancelled
            log.warning("journal close() while its writer process runs: run() writes the rest when cancelled")
            return
        self.closed = True
        self.write_pending_now()
        self.writing = False
        try:
            self._file.close()
        except OSError as exc:
            self._give_up(str(exc))


__all__ = ["FileWriter", "JournalWriterKind", "choose_writer", "usable_cpus"]
