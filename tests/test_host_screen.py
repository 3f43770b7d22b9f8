"""The format screen (``switch.host.screen``) must give exactly the answers of the field checks it skips."""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.host import Host, HostConfig
from switch.host.checks import PATTERNS
from switch.host.family import family_for
from switch.host.screen import MAX_SHAPES, FormatScreen
from switch.ledger import Ledger

_EDGE = ["", "0", "00", "0000", "000000", "000001", "0229", "0230", "0431", "0430", "1231", "1232", "0001",
         "1300", "3012", "3000", "3013", "235959", "240000", "236000", "235960", "0229235959", "0230000000",
         "1231235959", "0131240000", "0101000000", "1301000000", "123", "12345", "1234567890123",
         "123456789012", "4761739001010010", "47617390010100101234", "1234567890123456789", " ", "  A ",
         "\t", "\u00a0", "\u2003x", "A\x00", "\x00", "１２３４５６", "١٢٣٤", "12\n", "000000\n", "B0000001",
         "0000000000", "99", "９"]
_CHECKS = [check for check in PATTERNS]


def _agrees(check, value: str) -> None:
    matched = re.fullmatch(PATTERNS[check], value, re.DOTALL) is not None
    accepted = check(value) is None
    assert not matched or accepted, (check, value)  # the screen never passes what the check refuses
    if "\x00" not in value:
        assert matched == accepted, (check, value)  # and passes all the check accepts (but NUL)


def test_each_pattern_accepts_exactly_what_its_check_accepts_on_edge_values() -> None:
    for check, value in itertools.product(_CHECKS, _EDGE):
        _agrees(check, value)


def test_every_digit_string_up_to_four_and_every_date_time() -> None:
    for check in _CHECKS:
        for value in map("".join, itertools.product("0123456789", repeat=4)):
            _agrees(check, value)
    months = [f"{m:02d}" for m in range(0, 14)]
    days = [f"{d:02d}" for d in range(0, 33)]
    for month, day in itertools.product(months, days):
        for check in _CHECKS:
            _agrees(check, month + day)
            _agrees(check, month + day + "235959")
            _agrees(check, month + day + "240000")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=24), st.sampled_from(_CHECKS))
def test_patterns_agree_with_checks_on_any_text(value: str, check) -> None:
    _agrees(check, value)


def _host(family: str = "iso87") -> Host:
    return Host(HostConfig(family=family), Ledger.open(":memory:"))


_GOOD = {2: "4761739001010010", 3: "000000", 4: "000000001000", 7: "0601120000", 11: "000001", 12: "120000",
         13: "0601", 14: "3012", 22: "051", 25: "00", 41: "B0000001", 42: "MERCHANT0000001", 49: "840"}


def _slow(host: Host, fields: dict[int, str], required: tuple[int, ...]):
    """The checks alone, as ``_format_problem`` runs them when the screen does not pass."""
    for number in required:
        if number not in fields:
            return None, f"mandatory field {number} is missing"
    for number, check in host._checks:
        value = fields.get(number)
        if value is not None and (problem := check(value)) is not None:
            return number, f"field {number} {problem} (got {value!r})"
    return None


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([2, 3, 4, 7, 11, 12, 13, 14, 41, 70]),
                       st.sampled_from(_EDGE) | st.text(max_size=12), max_size=6),
       st.sets(st.sampled_from(list(_GOOD)), max_size=3))
def test_format_problem_is_the_checks_answer(changes: dict[int, str], dropped: set[int]) -> None:
    host = _host()
    required = host.required("financial")
    fields = {n: v for n, v in {**_GOOD, **changes}.items() if n not in dropped}
    for _ in range(2):  # the first call compiles the shape, the second uses it
        assert host._format_problem(fields, required) == _slow(host, fields, required)


def test_cup_field_60_still_runs_its_check_after_the_match() -> None:
    host = _host("cup")
    required = host.required("financial")
    fields = {**_GOOD, 60: "22000001000"}
    assert host._format_problem(fields, required) == _slow(host, fields, required)
    broken = {**fields, 60: "2x"}
    assert host._format_problem(broken, required) == _slow(host, broken, required) is not None


def test_values_that_are_not_strings_fall_back_to_the_checks() -> None:
    screen = FormatScreen(tuple(family_for("iso87").checks.items()))
    assert screen.passes(_GOOD, (3, 4))
    assert not screen.passes({**_GOOD, 3: 123}, (3, 4))  # type: ignore[dict-item]
    assert not screen.passes({**_GOOD, 41: "B0\x000001"}, (3, 4))  # NUL: the checks decide (and accept it)
    assert not screen.passes({k: v for k, v in _GOOD.items() if k != 4}, (3, 4))


def test_shapes_remembered_are_bounded() -> None:
    screen = FormatScreen(tuple(family_for("iso87").checks.items()))
    for extra in range(100, 100 + MAX_SHAPES):
        assert screen.passes({**_GOOD, extra: "x"}, (3,))
    assert len(screen._shapes[(3,)]) == MAX_SHAPES
    assert not screen.passes({**_GOOD, 999: "x"}, (3,))  # a new shape past the bound: checks instead
    assert len(screen._shapes[(3,)]) == MAX_SHAPES
    assert screen.passes({**_GOOD, 100: "x"}, (3,))  # a remembered one still passes
