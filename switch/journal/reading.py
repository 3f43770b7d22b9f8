"""Reading journal files back: parse, filter, format a line, follow a growing file (the CLI)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from switch.describe import RESPONSE_CODES, mti_meaning, printable
from switch.journal.core import DIRECTION_IN, DIRECTION_OUT, UPDATE_UNSENT, _normalized_stan

# --------------------------------------------------------------------------------------------
# Reading the file (the CLI)


class JournalFileError(ValueError):
    """A line of a journal file that is not a journal entry."""


ErrorHandler = Callable[[int, str], None]


def _parse_line(line: bytes, number: int, on_error: ErrorHandler | None) -> dict[str, Any] | None:
    text = line.strip()
    if not text:
        return None
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = f"not JSON ({exc})"
    else:
        if isinstance(document, dict) and isinstance(document.get("seq"), int):
            document.setdefault("rules", [])  # written before rule ids were recorded: none known
            return document
        reason = "not a journal entry (no integer 'seq')"
    if on_error is None:
        raise JournalFileError(f"line {number}: {reason}")
    on_error(number, reason)
    return None


def read_journal_file(path: str | os.PathLike[str], *, on_error: ErrorHandler | None = None
                      ) -> Iterator[dict[str, Any]]:
    """Every entry of a journal file in order. A bad line raises ``JournalFileError``, or with
    ``on_error`` is reported as (line number, reason) and skipped (a crash can cut the last line)."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            document = _parse_line(line, number, on_error)
            if document is not None:
                yield document


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """The CLI's filters over entries read from a file (the same meaning as ``Journal.query``'s)."""

    terminal: str | None = None
    mti: str | None = None
    stan: str | None = None
    faults_only: bool = False

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.mti is not None and entry.get("mti") != self.mti:
            return False
        if self.stan is not None and entry.get("stan") != _normalized_stan(self.stan):
            return False
        if self.terminal is not None:
            terminal = entry.get("terminal")
            if not isinstance(terminal, str) or terminal.rstrip() != self.terminal.rstrip():
                return False
        return not (self.faults_only and not entry.get("faults"))


def _text(value: Any) -> str:
    return printable(str(value))


def format_entry_line(entry: dict[str, Any]) -> str:
    """One readable line: time, seq, connection, arrow (<- in, -> out), MTI and meaning, STAN,
    terminal, response code, faults and the rules behind them, note. Anything a peer sent is
    escaped for the terminal."""
    stamp: Any = entry.get("time")  # from a file: anything; float() refusing it is handled below
    try:
        when = datetime.fromtimestamp(float(stamp)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (TypeError, ValueError, OverflowError, OSError):
        when = "????-??-?? ??:??:??.???"
    direction = entry.get("direction")
    arrow = "<-" if direction == DIRECTION_IN else "->" if direction == DIRECTION_OUT else "??"
    parts = [when, f"#{_text(entry.get('seq'))}", f"c{_text(entry.get('connection'))}", arrow]
    mti = entry.get("mti")
    if isinstance(mti, str):
        parts.append(f"{printable(mti)} {mti_meaning(mti)}")
    else:
        parts.append("(undecodable)")
    for label, key in (("STAN", "stan"), ("TID", "terminal")):
        if entry.get(key) is not None:
            parts.append(f"{label} {_text(entry[key])}")
    code = entry.get("response_code")
    if code is not None:
        meaning = RESPONSE_CODES.get(code) if isinstance(code, str) else None
        parts.append(f"RC {_text(code)}" + (f" {meaning}" if meaning else ""))
    if entry.get("request_seq") is not None:
        parts.append(f"re #{_text(entry['request_seq'])}")
    if entry.get("update") == UPDATE_UNSENT:
        parts.append("[response not sent]")
    faults = entry.get("faults")
    if faults:
        names = faults if isinstance(faults, list) else [faults]
        parts.append("faults: " + ",".join(_text(name) for name in names))
        rules = entry.get("rules")
        if rules and isinstance(rules, list):
            parts.append("rules: " + ",".join(_text(rule) for rule in rules))
    if entry.get("note"):
        parts.append(f"({_text(entry['note'])})")
    if entry.get("error"):
        parts.append(f"error: {_text(entry['error'])}")
    return "  ".join(parts)


class JournalFollower:
    """Reads a journal file incrementally, across rotation (the file replaced) and truncation.

    Truncation is noticed when the file becomes shorter than what was read, as with ``tail -F``;
    the journal itself never truncates in place (rotation renames, or unlinks with no backups).

    ``poll()`` returns the entries appended since the last call; the first call returns the whole
    file. It never sleeps: the caller decides how often to poll (``follow_journal``).
    """

    def __init__(self, path: str | os.PathLike[str], *, on_error: ErrorHandler | None = None):
        self.path = Path(path)
        self._on_error = on_error
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._buffer = b""
        self._line_number = 0
        self._position = 0

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - kept open between polls
        except FileNotFoundError:
            return False
        status = os.fstat(handle.fileno())
        self._file, self._identity = handle, (status.st_dev, status.st_ino)
        self._buffer, self._line_number, self._position = b"", 0, 0
        return True

    def _read(self) -> list[dict[str, Any]]:
        assert self._file is not None
        data = self._file.read()
        if not data:
            return []
        self._position += len(data)
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()  # an incomplete last line waits for the rest
        entries = []
        for line in lines:
            self._line_number += 1
            document = _parse_line(line, self._line_number, self._on_error)
            if document is not None:
                entries.append(document)
        return entries

    def _finish_file(self) -> list[dict[str, Any]]:
        entries = self._read()
        if self._buffer.strip():  # the writer only writes whole lines: this one was cut
            self._line_number += 1
            document = _parse_line(self._buffer, self._line_number, self._on_error)
            if document is not None:
                entries.append(document)
        self.close()
        return entries

    def poll(self) -> list[dict[str, Any]]:
        if self._file is None and not self._open():
            return []
        entries = self._read()
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return entries  # rotated away and not yet recreated: keep reading the old one
        if (status.st_dev, status.st_ino) != self._identity:
            entries += self._finish_file()  # lines written to it just before the rotation
            if self._open():
                entries += self._read()
        elif status.st_size < self._position:  # truncated in place: start again
            assert self._file is not None
            self._file.seek(0)
            self._buffer, self._line_number, self._position = b"", 0, 0
            entries += self._read()
        return entries

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def follow_journal(follower: JournalFollower, emit: Callable[[dict[str, Any]], None], *,
                   interval: float = 0.5, stop: Callable[[], bool] = lambda: False,
                   sleep: Callable[[float], None] | None = None) -> None:
    """Emit new entries as they are appended until ``stop()`` is true (the CLI stops on Ctrl-C).

    ``sleep`` defaults to ``time.sleep`` looked up at call time, so a test can replace it.
    """
    sleep = sleep or time.sleep
    while not stop():
        for entry in follower.poll():
            emit(entry)
        if stop():
            break
        sleep(interval)
