"""The journal file on disk: appended, rotated by size, and its tail repaired after a writer died.

One class for both writers (the switch's worker thread and the writer process), so the file,
its rotation and its line bytes cannot differ between them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

_TAIL_BYTES = 1 << 20  # the last line is looked for this far back at most (lines are a few KB)


class JournalFile:
    """``path`` appended to; past ``max_bytes`` it becomes ``path.1`` (… ``path.N``, ``backups``
    kept) and a fresh file continues. Every method may raise ``OSError``; callers decide."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._file: BinaryIO | None = None
        self._size = 0

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open across batches
            self._size = self._file.tell()

    def write(self, lines: list[str]) -> None:
        """Append ``lines`` (each ending in a newline), rotating between lines as needed, then flush."""
        self.open()
        assert self._file is not None
        # Lines are ASCII (JSON with ASCII escapes), so a str's length is its size in bytes.
        size = sum(map(len, lines))
        if self._size + size <= self._max_bytes:  # the usual batch: no rotation inside, one write
            self._file.write("".join(lines).encode())
            self._size += size
            self._file.flush()
            return
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

    def _rotate(self) -> None:
        """journal.jsonl -> .1 -> .2 ... -> .N (the oldest dropped); a fresh file continues."""
        assert self._file is not None
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
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def resume(self, lines: list[str]) -> int:
        """After a writer died (its process gone): cut a torn last line, then append those of ``lines``
        that follow the last line it wrote. Returns how many were appended.

        ``lines`` are the ones handed to the dead writer and not confirmed, in order: it wrote a
        prefix of them (maybe none, maybe a line cut short). The last complete line in the file (or
        in ``.1`` when it died right after rotating) says where that prefix ends; when it is none of
        ``lines`` the writer wrote none of them. (Two identical lines among them would be rewritten
        from the first: a repeat, never a loss.)
        """
        self.close()
        last = self._repaired_last_line(self.path)
        if last is None and self._backups:
            last = self._repaired_last_line(self.path.with_name(f"{self.path.name}.1"))
        start = 0
        if last is not None:
            for index, line in enumerate(lines):
                if line == last:
                    start = index + 1
                    break
        self.write(lines[start:])
        return len(lines) - start

    @staticmethod
    def _repaired_last_line(path: Path) -> str | None:
        """The last complete line of ``path`` (None if it has none), after cutting any torn tail."""
        try:
            handle = open(path, "r+b")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            handle.seek(start)
            tail = handle.read()
            end = tail.rfind(b"\n") + 1
            if start + end < size:
                handle.truncate(start + end)  # a line cut short by the dead writer: rewritten whole
            if end == 0:
                return None
            previous = tail.rfind(b"\n", 0, end - 1) + 1
            if previous == 0 and start > 0:
                return None  # a last line longer than the tail read: match nothing, rewrite everything
            return tail[previous:end].decode("ascii", "replace")
