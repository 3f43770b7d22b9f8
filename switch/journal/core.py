"""The journal itself: records taken on the hot path, entries formatted once for queries, the ring; the
file is written by ``switch.journal.writing``."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from switch.codec.message import Codec, Message, MessageDecodeError
from switch.journal.lines import UPDATE_UNSENT
from switch.journal.masking import _Masker
from switch.journal.records import DIRECTION_IN, DIRECTION_OUT, _Record, _Update
from switch.journal.writing import FileWriter, JournalWriterKind

_STAN_WIDTH = 6

__all__ = ["DIRECTION_IN", "DIRECTION_OUT", "UPDATE_UNSENT", "Journal", "JournalEntry", "JournalWriterKind"]


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



# --------------------------------------------------------------------------------------------
# The journal


def _normalized_stan(stan: str | None) -> str | None:
    """'123' -> '000123': people type STANs without the leading zeros field 11 carries."""
    if stan is not None and stan.isdigit() and len(stan) < _STAN_WIDTH:
        return stan.zfill(_STAN_WIDTH)
    return stan


class Journal:
    """Every frame in and out: a ring for queries and, with ``path``, a rotated JSON-lines file.

    ``record_*`` must be called from the Trio thread (the one running the switch). Run
    ``run()`` in a nursery to write the file; cancel it to stop (it flushes first), then
    ``close()``. Without ``path`` there is only the ring and ``run()`` returns at once.
    ``max_pending`` bounds what waits for the writer, so a stalled disk costs entries (counted and
    logged), never the switch's memory. ``writer``: where the file's lines are formatted, on the
    event loop ("thread", the default for a library object) or in a writer process ("process",
    the switch's default: see ``switch.journal.writing``).
    """

    def __init__(self, codec: Codec, *, path: str | os.PathLike[str] | None = None, ring_size: int = 10_000,
                 max_bytes: int = 20 * 1024 * 1024, backups: int = 5, flush_interval: float = 0.2,
                 max_pending: int = 100_000, clock: Callable[[], float] = time.time,
                 writer: JournalWriterKind | str = JournalWriterKind.THREAD) -> None:
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
        if writer not in tuple(JournalWriterKind):
            raise ValueError(f"writer must be one of {', '.join(JournalWriterKind)}, got {writer!r}")
        self._codec = codec
        self._masker = _Masker(codec)
        self.path = Path(path) if path is not None else None
        self._ring: deque[_Record] = deque(maxlen=ring_size)
        self._next_seq = 1
        self._clock = clock
        self._writer = None if self.path is None else FileWriter(
            codec, self.path, max_bytes=max_bytes, backups=backups, flush_interval=flush_interval,
            max_pending=max_pending, kind=JournalWriterKind(writer))

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
        writer = self._writer
        if writer is not None and writer.writing:  # ``_queue`` inlined: twice per request
            pending = writer.pending
            if len(pending) == pending.maxlen:
                writer.lost += 1
            pending.append(record)

    @staticmethod
    def _queue(writer: FileWriter, item: _Record | _Update) -> None:
        """Queue a line (or an update) for the file; a full queue drops its oldest, counted as lost."""
        pending = writer.pending
        if len(pending) == pending.maxlen:
            writer.lost += 1
        pending.append(item)

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
        writer = self._writer
        if request.claimed and writer is not None and writer.writing:  # its line is written already: the update too
            self._queue(writer, _Update(request))

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

    @property
    def writer_kind(self) -> JournalWriterKind | None:
        """How the file is written (None: no file)."""
        return self._writer.kind if self._writer is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued entries to the file every ``flush_interval`` until cancelled (``writer``:
        formatted here or in a writer process, see ``switch.journal.writing``). On cancellation
        everything still queued is written (shielded) before returning, and a writer process has
        written all it was handed and exited."""
        if self._writer is None or not self._writer.writing:
            task_status.started()
            return
        await self._writer.run(task_status)

    async def flush(self) -> None:
        """Write everything queued so far now (``run`` does it every ``flush_interval``)."""
        if self._writer is not None:
            await self._writer.flush()

    def _write_pending_now(self) -> None:
        """Format and write what is queued in this thread, at once (tests and benchmarks)."""
        if self._writer is not None:
            self._writer.write_pending_now()

    def close(self) -> None:
        """Write whatever ``run`` did not (e.g. entries recorded after it stopped) and close the file.

        Blocks on the disk: call it at shutdown, after ``run`` has returned. The ring stays
        readable; later entries go to the ring only.
        """
        if self._writer is not None:
            self._writer.close()
