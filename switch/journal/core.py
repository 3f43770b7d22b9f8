"""The journal itself: records taken on the hot path, entries formatted once, the ring and the file writer."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio

from switch.codec.message import Codec, Message, MessageDecodeError
from switch.journal.lines import UPDATE_UNSENT, LineFormatter
from switch.journal.masking import _Masker

log = logging.getLogger("switch.journal")

_STAN_WIDTH = 6
_SLICE = 256  # entries formatted between checkpoints: ~2 ms of the event loop at most

DIRECTION_IN = "in"
DIRECTION_OUT = "out"
__all__ = ["DIRECTION_IN", "DIRECTION_OUT", "UPDATE_UNSENT", "Journal", "JournalEntry"]


# --------------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One frame as the journal shows it: decoded, masked, with what the switch did to it.

    ``matched``: for a request ("in"), whether a response was sent for it (False until one is,
    and for good after ``record_unsent``); None for "out". ``request_seq``: for "out", the
    entry of the request it answers (None when it answers none). ``fields`` keys are field
    numbers as text, plus "h" for a dialect header. ``rules``: the id of the fault rule behind
    each of ``faults``, in the same order ("maintenance" for maintenance mode); empty when the
    recorder did not say (and in files written before rule ids were recorded).
    """

    seq: int
    time: float
    connection: int
    peer: str
    direction: str
    mti: str | None
    stan: str | None
    terminal: str | None
    response_code: str | None
    faults: tuple[str, ...]
    fields: dict[str, str]
    raw_hex: str
    note: str
    error: str | None
    matched: bool | None
    request_seq: int | None = None
    rules: tuple[str, ...] = ()
    _dict: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (built once; treat it as read-only)."""
        cached = self._dict
        if cached is None:
            cached = {
                "seq": self.seq, "time": self.time, "connection": self.connection, "peer": self.peer,
                "direction": self.direction, "mti": self.mti, "stan": self.stan, "terminal": self.terminal,
                "response_code": self.response_code, "faults": list(self.faults), "rules": list(self.rules),
                "fields": self.fields,
                "raw_hex": self.raw_hex, "note": self.note, "error": self.error, "matched": self.matched,
                "request_seq": self.request_seq,
            }
            object.__setattr__(self, "_dict", cached)
        return cached


class _Record:
    """What ``record_*`` stores: cheap to build; formatted later, at most once."""

    __slots__ = ("claimed", "connection", "decode_error", "direction", "entry", "error", "faults", "fields",
                 "formatted", "header", "matched", "mti", "note", "peer", "raw", "request_seq",
                 "response_code", "rules", "seq", "stan", "terminal", "time", "unsent")

    def __init__(self, seq: int, stamp: float, connection: int, peer: str, direction: str, raw: bytes,
                 message: Message | None, decode_error: MessageDecodeError | None, error: str | None,
                 faults: tuple[str, ...], rules: tuple[str, ...], note: str, request_seq: int | None):
        self.seq = seq
        self.time = stamp
        self.connection = connection
        self.peer = peer
        self.direction = direction
        self.raw = raw
        self.fields: dict[int, str] | None
        self.mti: str | None
        fields: dict[int, str]
        if message is not None:
            fields = self.fields = dict(message.fields)  # the caller may reuse its message
            self.mti = message.mti
            self.header = message.header
        else:
            self.fields = None
            self.header = ""
            if decode_error is not None:  # what was read before the failing element feeds the filters
                self.mti = decode_error.mti
                fields = {int(key): value for key, value in decode_error.partial.items()
                          if key in ("11", "39", "41") and key != decode_error.field and isinstance(value, str)}
            else:
                self.mti = None
                fields = {}
        self.stan = fields.get(11)
        self.terminal = fields.get(41)
        self.response_code = fields.get(39)
        self.decode_error = decode_error
        self.error = error
        self.faults = faults
        self.rules = rules
        self.note = note
        self.request_seq = request_seq
        self.matched: bool | None = False if direction == DIRECTION_IN else None
        self.unsent = False
        self.claimed = False  # handed to the file writer
        self.formatted: tuple[dict[str, str], str, str | None] | None = None
        self.entry: JournalEntry | None = None

    def format(self, masker: _Masker) -> tuple[dict[str, str], str, str | None]:
        """(masked fields, masked raw hex, error), computed once (by a query or the writer)."""
        formatted = self.formatted
        if formatted is None:
            if self.fields is not None:
                fields, raw_hex = masker.decoded(self.raw, self.fields, self.header)
                formatted = (fields, raw_hex, self.error)
            else:
                fields, raw_hex, error = masker.undecodable(self.raw)
                formatted = (fields, raw_hex, self.error or error)
            self.formatted = formatted
        return formatted


class _Update:
    """A request already written to the file whose response was then not sent: written again."""

    __slots__ = ("record",)

    def __init__(self, record: _Record):
        self.record = record



# --------------------------------------------------------------------------------------------
# The journal


def _normalized_stan(stan: str | None) -> str | None:
    """'123' -> '000123': people type STANs without the leading zeros field 11 carries."""
    if stan is not None and stan.isdigit() and len(stan) < _STAN_WIDTH:
        return stan.zfill(_STAN_WIDTH)
    return stan


class _Batch:
    __slots__ = ("done", "items")

    def __init__(self, items: list[tuple[_Record, bool | None, tuple[str, ...], tuple[str, ...], str, bool]]):
        self.items = items
        self.done = False


class Journal:
    """Every frame in and out: a ring for queries and, with ``path``, a rotated JSON-lines file.

    ``record_*`` must be called from the Trio thread (the one running the switch). Run
    ``run()`` in a nursery to write the file; cancel it to stop (it flushes first), then
    ``close()``. Without ``path`` there is only the ring and ``run()`` returns at once.
    ``max_pending`` bounds what waits for the writer, so a stalled disk costs entries (counted and
    logged), never the switch's memory.
    """

    def __init__(self, codec: Codec, *, path: str | os.PathLike[str] | None = None, ring_size: int = 10_000,
                 max_bytes: int = 20 * 1024 * 1024, backups: int = 5, flush_interval: float = 0.2,
                 max_pending: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if ring_size < 1:
            raise ValueError(f"ring_size must be at least 1, got {ring_size}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be 0 or more, got {backups}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._codec = codec
        self._masker = _Masker(codec)
        self._lines = LineFormatter(_Masker(codec))  # the file writer's own caches
        self.path = Path(path) if path is not None else None
        self._ring: deque[_Record] = deque(maxlen=ring_size)
        self._next_seq = 1
        self._clock = clock
        self._max_bytes = max_bytes
        self._backups = backups
        self._flush_interval = flush_interval
        # File writer state. ``_pending`` is filled on the Trio thread and emptied there too (into
        # a batch); the file object is only touched by the thread writing a batch.
        self._writing = self.path is not None
        self._pending: deque[_Record | _Update] = deque(maxlen=max_pending)
        self._lost = 0
        self._inflight: _Batch | None = None
        self._flush_lock = trio.Lock()
        self._file: BinaryIO | None = None
        self._size = 0
        self._failed = False
        self._closed = False

    # -- recording (hot path) -------------------------------------------------------------

    def _decode_failure(self, raw: bytes, message: Message | None, error: str | BaseException | None
                        ) -> tuple[Message | None, MessageDecodeError | None, str | None]:
        if isinstance(error, MessageDecodeError):
            return message, error, str(error)
        text = None if error is None else str(error)
        if message is not None:
            return message, None, text
        try:  # the rare path (format errors, faults that send garbage): decode once for the filters
            return self._codec.decode(raw), None, text
        except MessageDecodeError as exc:
            return None, exc, text or str(exc)

    def _add(self, record: _Record) -> None:
        self._ring.append(record)
        if self._writing:
            pending = self._pending
            if len(pending) == pending.maxlen:
                self._lost += 1
            pending.append(record)

    def record_in(self, *, connection: int, peer: str, raw: bytes | bytearray | memoryview,
                  message: Message | None, error: str | BaseException | None = None,
                  faults: Iterable[str] = (), rules: Iterable[str] = (), note: str = "") -> int:
        """Journal a frame received; returns its ``seq`` (pass it to ``record_out``).

        ``raw`` is the frame body (no length header or TPDU) and ``message`` its decoded form, or
        None if it did not decode; then ``error`` is the ``MessageDecodeError`` (best: its partial
        fields feed the filters) or its text. ``rules``: the fault rule id behind each of ``faults``.
        """
        data = raw if type(raw) is bytes else bytes(raw)
        decode_error = None
        if message is None or error is not None:
            message, decode_error, error = self._decode_failure(data, message, error)
        seq = self._next_seq
        self._next_seq = seq + 1
        self._add(_Record(seq, self._clock(), connection, peer, DIRECTION_IN, data, message, decode_error,
                          error, faults if type(faults) is tuple else tuple(faults),
                          rules if type(rules) is tuple else tuple(rules), note, None))
        return seq

    def record_out(self, *, connection: int, peer: str, raw: bytes | bytearray | memoryview,
                   message: Message | None, request_seq: int | None, faults: Iterable[str] = (),
                   rules: Iterable[str] = (), note: str = "") -> int:
        """Journal a frame sent (``message`` exactly as encoded into ``raw``, or None for bytes
        that are not a message, e.g. a garbage fault); marks request ``request_seq`` matched."""
        data = raw if type(raw) is bytes else bytes(raw)
        decode_error = error = None
        if message is None:
            message, decode_error, error = self._decode_failure(data, None, None)
        seq = self._next_seq
        self._next_seq = seq + 1
        self._add(_Record(seq, self._clock(), connection, peer, DIRECTION_OUT, data, message, decode_error,
                          error, faults if type(faults) is tuple else tuple(faults),
                          rules if type(rules) is tuple else tuple(rules), note, request_seq))
        if request_seq is not None:
            request = self._find(request_seq)
            if request is not None and request.direction == DIRECTION_IN and not request.matched:
                request.matched = True
                request.entry = None
        return seq

    def record_unsent(self, request_seq: int, faults: Iterable[str] = (), note: str = "",
                      rules: Iterable[str] = ()) -> None:
        """A response decided but never sent (dropped by a fault): the request stays unmatched and
        carries the faults (with their ``rules``) and the note. A no-op once the request has left
        the ring."""
        request = self._find(request_seq)
        if request is None:
            return
        names, ids = tuple(faults), tuple(rules)
        if names:
            kept = [index for index, name in enumerate(names) if name not in request.faults]
            if len(ids) == len(names) and len(request.rules) == len(request.faults):  # keep them parallel
                request.rules += tuple(ids[index] for index in kept)
            request.faults += tuple(names[index] for index in kept)
        if note:
            request.note = f"{request.note}; {note}" if request.note else note
        request.unsent = True
        request.entry = None
        if request.claimed and self._writing:  # its line is written already: write the update too
            self._pending.append(_Update(request))

    def _find(self, seq: int) -> _Record | None:
        """The ring holds consecutive seqs, so the position is arithmetic (recent ones are cheap)."""
        ring = self._ring
        if not ring:
            return None
        index = seq - ring[0].seq
        if 0 <= index < len(ring):
            return ring[index - len(ring)]  # deque indexing walks from the nearer end
        return None

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ring)

    def _entry(self, record: _Record) -> JournalEntry:
        entry = record.entry
        if entry is None:
            fields, raw_hex, error = record.formatted or record.format(self._masker)
            entry = record.entry = JournalEntry(
                record.seq, record.time, record.connection, record.peer, record.direction, record.mti,
                record.stan, record.terminal, record.response_code, record.faults, fields, raw_hex,
                record.note, error, record.matched, record.request_seq, record.rules)
        return entry

    def query(self, *, terminal: str | None = None, mti: str | None = None, stan: str | None = None,
              since: float | None = None, until: float | None = None, faults_only: bool = False,
              unmatched: bool = False, limit: int = 100) -> list[JournalEntry]:
        """The newest ``limit`` entries matching every filter given, oldest first.

        ``since`` <= time < ``until`` (Unix seconds). ``terminal`` ignores the trailing spaces
        field 41 is padded with; ``stan`` may omit leading zeros. ``unmatched``: requests no
        response was sent for (yet, or ever) and responses that answer no request.
        """
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        terminal = terminal.rstrip() if terminal is not None else None
        stan = _normalized_stan(stan)
        found: list[_Record] = []
        for record in reversed(self._ring):
            if len(found) >= limit:
                break
            if since is not None and record.time < since:
                continue  # not break: a wall clock can step back, so times need not grow along the ring
            if until is not None and record.time >= until:
                continue
            if mti is not None and record.mti != mti:
                continue
            if stan is not None and record.stan != stan:
                continue
            if terminal is not None and (record.terminal is None or record.terminal.rstrip() != terminal):
                continue
            if faults_only and not record.faults:
                continue
            if unmatched and not (record.matched is False or (record.direction == DIRECTION_OUT
                                                              and record.request_seq is None)):
                continue
            found.append(record)
        return [self._entry(record) for record in reversed(found)]

    # -- the file ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued entries to the file every ``flush_interval`` until cancelled.

        The lines are formatted (masking, hex, JSON) on the event loop, ``_SLICE`` entries between
        checkpoints, and only the writes and rotation run in a worker thread, so the loop never
        waits on the disk. Formatting in a thread cost more: it competes for the GIL with the loop,
        and the hand-offs (up to the 5 ms switch interval each) left the loop idle while requests
        waited (measured: ~15 us more CPU per request). On cancellation everything still queued is
        written (shielded) before returning.
        """
        if not self._writing:
            task_status.started()
            return
        try:
            if self._file is None:
                await trio.to_thread.run_sync(self._open_file)
            task_status.started()
            while self._writing:
                await trio.sleep(self._flush_interval)
                await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()

    async def flush(self) -> None:
        """Write everything queued so far now (``run`` does it every ``flush_interval``)."""
        await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:  # one batch at a time, in order
            while self._writing and (self._inflight is not None or self._pending):
                if self._inflight is None or self._inflight.done:
                    self._inflight = self._take_batch()
                # Not abandoned on cancel: a cancelled flush still finishes the batch it started
                # (formatting it again from the state claimed, which a retry cannot change).
                batch = self._inflight
                lines = await self._format(batch)
                await trio.to_thread.run_sync(self._write_lines, batch, lines)
                self._inflight = None

    async def _format(self, batch: _Batch) -> list[str]:
        """The batch's lines, formatted on the event loop with a checkpoint every ``_SLICE`` entries."""
        line_of = self._lines.line
        items = batch.items
        lines: list[str] = []
        for start in range(0, len(items), _SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            lines += [line_of(*item) for item in items[start:start + _SLICE]]
        return lines

    def _take_batch(self) -> _Batch:
        """Claim what is queued, with the state each entry has now (the Trio thread may change it
        while the thread writes)."""
        if self._lost:
            log.warning("journal writer fell behind: %d entries were not written to %s", self._lost, self.path)
            self._lost = 0
        items: list[tuple[_Record, bool | None, tuple[str, ...], tuple[str, ...], str, bool]] = []
        pending = self._pending
        while pending:
            item = pending.popleft()
            if type(item) is _Update:
                record = item.record
                items.append((record, False, record.faults, record.rules, record.note, True))
            else:
                record = item  # type: ignore[assignment]
                record.claimed = True
                matched = False if record.unsent else (True if record.matched else None)
                items.append((record, matched if record.direction == DIRECTION_IN else None, record.faults,
                              record.rules, record.note, False))
        return _Batch(items)

    def _open_file(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open across batches
            self._size = self._file.tell()
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        """The file is optional; the ring is not. Say so once and stop queueing for the file."""
        if not self._failed:
            log.error("journal file %s cannot be written (%s); keeping the in-memory journal only",
                      self.path, exc)
        self._failed = True
        self._writing = False
        self._pending.clear()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _write_batch(self, batch: _Batch) -> None:
        """Format and write a batch at once (``close``: nothing else runs any more)."""
        line_of = self._lines.line
        self._write_lines(batch, [line_of(*item) for item in batch.items])

    def _write_lines(self, batch: _Batch, lines: list[str]) -> None:
        """Runs in a worker thread: write, rotate, flush."""
        try:
            if self._file is None:
                self._open_file()
                if self._file is None:
                    return
            # Lines are ASCII (JSON with ASCII escapes), so a str's length is its size in bytes.
            chunk: list[str] = []
            chunk_size = 0
            for line in lines:
                if self._size + chunk_size + len(line) > self._max_bytes and self._size + chunk_size > 0:
                    self._file.write("".join(chunk).encode())
                    chunk, chunk_size = [], 0
                    self._rotate()
                chunk.append(line)
                chunk_size += len(line)
            self._file.write("".join(chunk).encode())
            self._size += chunk_size
            self._file.flush()
        except OSError as exc:
            self._give_up(exc)
        batch.done = True

    def _rotate(self) -> None:
        """journal.jsonl -> .1 -> .2 ... -> .N (the oldest dropped); a fresh file continues."""
        assert self._file is not None and self.path is not None
        self._file.close()
        self._file = None
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        for index in range(self._backups, 0, -1):
            source = self.path if index == 1 else self.path.with_name(f"{self.path.name}.{index - 1}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{self.path.name}.{index}"))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        """Write whatever ``run`` did not (e.g. entries recorded after it stopped) and close the file.

        Blocks on the disk: call it at shutdown, after ``run`` has returned. The ring stays
        readable; later entries go to the ring only.
        """
        if self._closed:
            return
        self._closed = True
        if self._writing:
            if self._inflight is not None and not self._inflight.done:
                self._write_batch(self._inflight)
                self._inflight = None
            if self._pending:
                self._write_batch(self._take_batch())
        self._writing = False
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._give_up(exc)
            self._file = None


