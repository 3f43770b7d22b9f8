"""One regular-expression match that tells a well-formed request from one that needs the field checks.

``HostCore._format_problem`` runs the mandatory-field loop and up to ten field checks on every request,
each a Python call: together a measurable share of a decision. Almost every request is well formed,
so ``FormatScreen`` first asks one question of the whole request: with the fields it carries (its
*shape*: the field numbers in order), do all mandatory fields exist and do all checked values match
their check's pattern? For each shape it compiles once, into one pattern, the checked values joined
by NUL; then a request of that shape costs one ``fullmatch``. A pass means exactly "no problem"
(every pattern accepts only values its check accepts and no pattern accepts a NUL, so the join cannot
be split another way); anything else, or a shape never seen, falls back to the checks, which say what
is wrong. Checks without a pattern (``checks.PATTERNS``) still run, after the match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from operator import itemgetter

from switch.host.checks import PATTERNS

__all__ = ["FormatScreen"]

Check = Callable[[str], "str | None"]

MAX_SHAPES = 256
"""Shapes remembered per mandatory-field set; past that, new shapes just take the checks (no growth)."""

_Entry = tuple[Callable[[Mapping[int, str]], object], Callable[[str], object], tuple[tuple[int, Check], ...]]


class FormatScreen:
    """Whether a request surely has no format problem, by its shape (see the module docstring)."""

    __slots__ = ("_checks", "_shapes")

    def __init__(self, checks: tuple[tuple[int, Check], ...]) -> None:
        self._checks = checks
        self._shapes: dict[tuple[int, ...], dict[tuple[int, ...], _Entry | None]] = {}

    def passes(self, fields: Mapping[int, str], required: tuple[int, ...]) -> bool:
        """True only if the full checks would find no problem; False means "run them"."""
        shapes = self._shapes.get(required)
        if shapes is None:
            if len(self._shapes) >= MAX_SHAPES:  # mandatory sets come from the config: a few, but bounded
                return False
            shapes = self._shapes[required] = {}
        shape = tuple(fields)
        try:
            entry = shapes[shape]
        except KeyError:
            if len(shapes) >= MAX_SHAPES:
                return False
            entry = shapes[shape] = self._compile(shape, required)
        if entry is None:
            return False
        values, match, rest = entry
        try:
            joined = "\x00".join(values(fields))  # type: ignore[arg-type]
        except TypeError:  # a value that is no string: the checks say what is wrong with it
            return False
        if match(joined) is None:
            return False
        return not rest or all(check(fields[number]) is None for number, check in rest)

    def _compile(self, shape: tuple[int, ...], required: tuple[int, ...]) -> _Entry | None:
        """The matcher of one shape; None when a mandatory field is missing (the checks name it)."""
        present = set(shape)
        if not present.issuperset(required):
            return None
        numbers, patterns, rest = [], [], []
        for number, check in self._checks:
            if number not in present:
                continue
            pattern = PATTERNS.get(check)
            if pattern is None:
                rest.append((number, check))
            else:
                numbers.append(number)
                patterns.append(pattern)
        if not numbers:
            return (lambda fields: ("",)), re.compile("").fullmatch, tuple(rest)
        getter = itemgetter(*numbers)
        values = getter if len(numbers) > 1 else (lambda fields: (getter(fields),))
        return values, re.compile("\x00".join(patterns), re.DOTALL).fullmatch, tuple(rest)
