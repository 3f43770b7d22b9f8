"""The scenario line locator: which line each key of a TOML file is on, so an error can name it."""

from __future__ import annotations

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.scenario import (
    MATCH_KEYS,
    ScenarioSource,
    format_key,
    key_lines,
)
from tests.scenario_support import toml

# --- line locator -----------------------------------------------------------------------------------


def test_key_lines_cover_headers_keys_inline_tables_and_arrays():
    text = toml("""
        # comment with [brackets] and key = value
        title = "x"           # line 2

        [scenario]
        name = "n"            # line 5
        [host]
        stale_window = "5m"

        [[response]]          # line 9
        when = { mti = ["0200"], amount_max = 5 }
        respond = "51"

        [[response]]          # line 13
        name = 'it''s'
        when.pan_prefix = ["4000",
            "5100",           # line 16
        ]
        "respond" = "05"
        fields = { 44 = "CALL", "48" = 'x' }
        """).replace("'it''s'", "'its'")
    lines = key_lines(text)
    assert lines[("title",)] == 2
    assert lines[("scenario",)] == 4
    assert lines[("scenario", "name")] == 5
    assert lines[("host", "stale_window")] == 7
    assert lines[("response",)] == 9
    assert lines[("response", 0)] == 9
    assert lines[("response", 0, "when")] == 10
    assert lines[("response", 0, "when", "mti")] == 10
    assert lines[("response", 0, "when", "mti", 0)] == 10
    assert lines[("response", 0, "when", "amount_max")] == 10
    assert lines[("response", 0, "respond")] == 11
    assert lines[("response", 1)] == 13
    assert lines[("response", 1, "name")] == 14
    assert lines[("response", 1, "when", "pan_prefix")] == 15
    assert lines[("response", 1, "when", "pan_prefix", 1)] == 16
    assert lines[("response", 1, "respond")] == 18
    assert lines[("response", 1, "fields", "44")] == 19
    assert lines[("response", 1, "fields", "48")] == 19


def test_key_lines_follow_subtables_of_array_elements_and_nested_arrays():
    text = toml("""
        [[response]]
        respond = "51"
        [response.when]
        mti = "0200"

        [[response]]
        respond = "05"
        [response.when]
        amount_min = 1

        [[fault]]
        [[fault.step]]
        delay = "1s"
        [[fault.step]]
        delay = "2s"
        """)
    lines = key_lines(text)
    assert lines[("response", 0, "when")] == 3
    assert lines[("response", 0, "when", "mti")] == 4
    assert lines[("response", 1)] == 6
    assert lines[("response", 1, "when")] == 8
    assert lines[("response", 1, "when", "amount_min")] == 9
    assert lines[("fault", 0)] == 11
    assert lines[("fault", 0, "step", 0, "delay")] == 13
    assert lines[("fault", 0, "step", 1, "delay")] == 15


def test_key_lines_are_not_fooled_by_strings():
    text = toml('''
        a = """
        [[response]]
        b = 1 \\""" still inside
        """
        c = 'x = [1, 2'
        d = "# not a comment ] }"
        e = """ends with extra quotes"""""
        f = \'\'\'
        g = 2 \'\'\'
        h = [ { i = 1 }, { i = 2 },
              { j = 3 } ]
        k = 1979-05-27 07:32:00Z
        l = 3
        ''')
    tomllib.loads(text)  # the fixture itself is valid TOML
    lines = key_lines(text)
    assert ("response",) not in lines
    assert ("b",) not in lines
    assert ("g",) not in lines
    assert [lines[(key,)] for key in "acdefhkl"] == [1, 5, 6, 7, 8, 10, 12, 13]
    assert lines[("h", 1, "i")] == 10
    assert lines[("h", 2, "j")] == 11


def test_key_lines_quoted_and_dotted_keys():
    text = 'a."b.c".d = 1\n"x y" = 2\n[ t . "u" ]\nv = 3\n'
    lines = key_lines(text)
    assert lines[("a", "b.c", "d")] == 1
    assert lines[("x y",)] == 2
    assert lines[("t", "u", "v")] == 4


def test_key_lines_on_text_they_cannot_follow_keep_what_they_found():
    assert key_lines("a = 1\nb = @@@\n") == {("a",): 1, ("b",): 2}
    assert key_lines("") == {}


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.sampled_from(sorted(MATCH_KEYS)), min_size=1, max_size=6, unique=True),
    blank=st.integers(0, 3),
    inline=st.booleans(),
)
def test_key_lines_find_every_generated_key(names, blank, inline):
    """Generated [[response]] tables with keys in random order, inline or as a subtable."""
    out = []
    expected = {}
    for index in range(2):
        out.append("[[response]]")
        expected[("response", index)] = len(out)
        out.extend([""] * blank)
        if inline:
            out.append("when = { " + ", ".join(f"{name} = 1" for name in names) + " }")
            for name in names:
                expected[("response", index, "when", name)] = len(out)
        else:
            out.append("[response.when]")
            for name in names:
                out.append(f"{name} = 1  # {name} = 2")
                expected[("response", index, "when", name)] = len(out)
    lines = key_lines("\n".join(out) + "\n")
    for key, line in expected.items():
        assert lines[key] == line, key


def test_format_key_counts_array_elements_from_one():
    assert format_key(("response", 1, "when", "amount_max")) == "response[2].when.amount_max"
    assert format_key(("fault", 0, "step", 2)) == "fault[1].step[3]"
    assert format_key(("host",)) == "host"


def test_source_falls_back_to_the_enclosing_key():
    src = ScenarioSource("f.toml", {("response", 0): 3, ("response", 0, "when"): 4})
    assert src.line_of(("response", 0, "when", "mti")) == 4
    assert src.line_of(("response", 0, "respond")) == 3
    assert src.line_of(("host",)) is None
    assert str(src.error(("response", 0, "respond"), "missing")) == "f.toml:3: response[1].respond: missing"
    assert str(src.error(None, "broken")) == "f.toml: broken"
