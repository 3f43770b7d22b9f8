"""Where each key of a TOML text starts: tomllib gives values but no lines, and every scenario or
profile error must name its file:line and key."""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Iterable

KeyPath = tuple[str | int, ...]
"""A key as tomllib nests it: table names, keys and array indexes."""

__all__ = ["KeyPath", "key_lines"]



class _ScanStop(Exception):
    """The scanner met text it does not understand; keep the lines found so far."""


class _KeyScanner:
    """Records the line of every key in valid TOML text.

    Not a TOML parser: tomllib has already accepted the text, so this only needs to find where
    keys, headers and array elements start while stepping over strings, comments and values.
    """

    _BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str):
        self.text = text
        self.i = 0
        self.lines: dict[KeyPath, int] = {}
        self._newlines = [n for n, char in enumerate(text) if char == "\n"]
        self._array_tables: dict[KeyPath, int] = {}  # [[x]] path → elements seen so far

    def line(self, position: int) -> int:
        return bisect.bisect_left(self._newlines, position) + 1

    def record(self, key: KeyPath, position: int) -> None:
        self.lines.setdefault(key, self.line(position))

    def peek(self, count: int = 1) -> str:
        return self.text[self.i : self.i + count]

    def run(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.i >= len(self.text):
                return self.lines
            start = self.i
            if self.peek(2) == "[[":
                self.i += 2
                table = self.array_header(self.dotted_key(), start)
                self.expect("]]")
            elif self.peek() == "[":
                self.i += 1
                table = self.resolve(self.dotted_key())
                self.record(table, start)
                self.expect("]")
            else:
                self.key_value(table)

    def resolve(self, parts: Iterable[str]) -> KeyPath:
        """A header's key path, with array-of-tables names pointing at their latest element."""
        resolved: KeyPath = ()
        for part in parts:
            resolved += (part,)
            if resolved in self._array_tables:
                resolved += (self._array_tables[resolved] - 1,)
        return resolved

    def array_header(self, parts: list[str], start: int) -> KeyPath:
        array = (*self.resolve(parts[:-1]), parts[-1])
        count = self._array_tables.get(array, 0)
        self._array_tables[array] = count + 1
        self.record(array, start)
        self.record((*array, count), start)
        return (*array, count)

    def key_value(self, table: KeyPath) -> None:
        start = self.i
        key = table + tuple(self.dotted_key())
        self.record(key, start)
        self.expect("=")
        self.value(key)

    def dotted_key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            char = self.peek()
            if char == '"':
                start = self.i
                self.basic_string()
                parts.append(tomllib.loads(f"k = {self.text[start : self.i]}")["k"])
            elif char == "'":
                start = self.i
                self.literal_string()
                parts.append(self.text[start + 1 : self.i - 1])
            else:
                bare = self._BARE_KEY.match(self.text, self.i)
                if bare is None:
                    raise _ScanStop
                parts.append(bare.group())
                self.i = bare.end()
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return parts
            self.i += 1

    def value(self, key: KeyPath) -> None:
        self.skip_blank(newlines=False)
        if self.peek(3) in ('"""', "'''"):
            self.multiline_string(self.peek(3))
        elif self.peek() == '"':
            self.basic_string()
        elif self.peek() == "'":
            self.literal_string()
        elif self.peek() == "[":
            self.i += 1
            self.array(key)
        elif self.peek() == "{":
            self.i += 1
            self.inline_table(key)
        else:
            start = self.i
            while self.i < len(self.text) and self.text[self.i] not in ",]}#\r\n":
                self.i += 1
            if self.i == start:
                raise _ScanStop

    def array(self, key: KeyPath) -> None:
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.i += 1
                return
            self.record((*key, index), self.i)
            self.value((*key, index))
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.i += 1
                index += 1
            elif self.peek() != "]":
                raise _ScanStop

    def inline_table(self, key: KeyPath) -> None:
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "}":
                self.i += 1
                return
            self.key_value(key)
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "}":
                raise _ScanStop

    def basic_string(self) -> None:
        self.i += 1
        while self.i < len(self.text):
            char = self.text[self.i]
            if char == "\\":
                self.i += 2
            elif char == '"':
                self.i += 1
                return
            elif char == "\n":
                raise _ScanStop
            else:
                self.i += 1
        raise _ScanStop

    def literal_string(self) -> None:
        end = self.text.find("'", self.i + 1)
        if end < 0:
            raise _ScanStop
        self.i = end + 1

    def multiline_string(self, delimiter: str) -> None:
        self.i += 3
        while self.i < len(self.text):
            if delimiter == '"""' and self.text[self.i] == "\\":
                self.i += 2
            elif self.text.startswith(delimiter, self.i):
                # Up to two quote characters may sit right before the closing delimiter.
                while self.text.startswith(delimiter, self.i + 1):
                    self.i += 1
                self.i += 3
                return
            else:
                self.i += 1
        raise _ScanStop

    def skip_blank(self, *, newlines: bool) -> None:
        blank = " \t\r\n" if newlines else " \t"
        while self.i < len(self.text):
            char = self.text[self.i]
            if char in blank:
                self.i += 1
            elif char == "#" and newlines:
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end + 1
            elif char == "#":  # a comment ends the line; the newline is the caller's business
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            else:
                return

    def expect(self, token: str) -> None:
        self.skip_blank(newlines=False)
        if not self.text.startswith(token, self.i):
            raise _ScanStop
        self.i += len(token)


def key_lines(text: str) -> dict[KeyPath, int]:
    """Line (1-based) where each key, table and array element of valid TOML ``text`` starts.

    Keys are paths as tomllib would nest them: ``[[response]]`` elements are ``("response", 0)``,
    ``("response", 1)``..., a key ``amount_max`` in ``when = {...}`` of the second one is
    ``("response", 1, "when", "amount_max")``; array values are indexed the same way. The first
    occurrence of a path wins. Text this scanner cannot follow yields the lines found before it.
    """
    scanner = _KeyScanner(text)
    try:
        return scanner.run()
    except (_ScanStop, tomllib.TOMLDecodeError):
        return scanner.lines
