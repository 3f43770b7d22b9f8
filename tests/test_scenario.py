"""Scenario files: durations, loading, validation errors with file/line/key, valid files and the shipped
scenarios by name and path."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specs
from switch.codec.dialect import load_dialect
from switch.host import HostConfig
from switch.rules import Match
from switch.scenario import (
    HOST_KEYS,
    MAX_DURATION,
    Scenario,
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_duration,
    parse_match,
    parse_scenario,
    scenario_names,
)
from tests.scenario_support import error_of, request, toml

# --- durations --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (0.25, 0.25),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        (" 2 s ", 2.0),
        ("0ms", 0.0),
    ],
)
def test_durations(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "must be a duration"),
        ("abc", "must be a duration"),
        ("5", "add a unit"),
        ("5 sec", "got '5 sec'"),
        ("-5s", "must be a duration"),
        ("5d", "must be a duration"),
        ("s", "must be a duration"),
        ("٣s", "must be a duration"),
        ("1.2.3s", "must be a duration"),
        (-1, ">= 0"),
        (float("inf"), ">= 0"),
        (float("nan"), ">= 0"),
        (True, "must be a duration"),
        (None, "must be a duration"),
        ([5], "must be a duration"),
    ],
)
def test_bad_durations_raise_value_error_with_a_reason(value, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_duration(value)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h"])), min_size=1, max_size=4
    )
)
def test_compound_durations_add_up(parts):
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    text = "".join(f"{number}{suffix}" for number, suffix in parts)
    expected = sum(number * unit[suffix] for number, suffix in parts)
    if expected > MAX_DURATION * (1 + 1e-9):  # beyond 30 days: refused, not an overflowing number
        with pytest.raises(ValueError, match=r"<= 2\.592e"):
            parse_duration(text)
    elif expected < MAX_DURATION * (1 - 1e-9):
        assert parse_duration(text) == pytest.approx(expected)

# --- errors -----------------------------------------------------------------------------------------


def test_error_message_names_file_line_key_and_reason():
    error = error_of(
        """
        [scenario]
        name = "x"

        [[response]]
        when = {}
        respond = "51"

        [[response]]
        name = "second"
        respond = "51"
        [response.when]
        mti = ["0200"]
        amount_max = "abc"
        """,
        path="specs/x.toml",
    )
    assert (error.path, error.line, error.key) == ("specs/x.toml", 13, "response[2].when.amount_max")
    assert error.reason == "must be an integer >= 0 (minor units), got 'abc'"
    assert str(error) == (
        "specs/x.toml:13: response[2].when.amount_max: must be an integer >= 0 (minor units), got 'abc'"
    )


def test_toml_syntax_errors_keep_tomllib_line_and_column():
    error = error_of("""
        [scenario]
        name = "x"
        seed = = 3
        """)
    assert error.line == 3
    assert error.key is None
    assert "invalid TOML" in error.reason and "column" in error.reason
    assert str(error).startswith("x.toml:3: invalid TOML")


def test_error_without_a_path():
    with pytest.raises(ScenarioError) as caught:
        parse_scenario("bogus = 1\n")
    assert str(caught.value).startswith("<scenario>:1: bogus: unknown key")


BAD_FILES = [
    # (file text, line, key, reason fragment)
    ('colour = "red"\n', 1, "colour", "unknown key; allowed: scenario, host, response, fault"),
    ('scenario = "x"\n', 1, "scenario", "must be a table"),
    (
        '[scenario]\nname = "x"\nseeds = 3\n',
        3,
        "scenario.seeds",
        "allowed: name, description, seed, test_cards",
    ),
    ('[scenario]\nname = ""\n', 2, "scenario.name", "non-blank string"),
    ("[scenario]\nname = 3\n", 2, "scenario.name", "non-blank string"),
    ('[scenario]\ndescription = ["a"]\n', 2, "scenario.description", "must be a string"),
    ("[scenario]\nseed = true\n", 2, "scenario.seed", "must be an integer"),
    ("[scenario]\nseed = 1.5\n", 2, "scenario.seed", "must be an integer"),
    ('[scenario]\ntest_cards = "yes"\n', 2, "scenario.test_cards", "must be true or false"),
    ("[host]\nrequire_sign_on = true\n", 2, "host.require_sign_on", "allowed: require_signon, "),
    ('[host]\nrequire_signon = "yes"\n', 2, "host.require_signon", "must be true or false"),
    ('[host]\nsignon_required_code = "A"\n', 2, "host.signon_required_code", "2-character response code"),
    ("[host]\nstale_code = 54\n", 2, "host.stale_code", "2-character response code"),
    ('[host]\nsession_timeout = "soon"\n', 2, "host.session_timeout", 'or "never"'),
    ("[host]\nsession_timeout = 0\n", 2, "host.session_timeout", "> 0"),
    ('[host]\nstale_window = "5"\n', 2, "host.stale_window", "add a unit"),
    ("[host]\nstale_window = -5\n", 2, "host.stale_window", ">= 0"),
    ('[host]\nduplicate_window = "0s"\n', 2, "host.duplicate_window", "> 0"),
    ('[host]\nunknown_original_code = "05"\n', 2, "host.unknown_original_code", '"00"'),
    ("host = 5\n", 1, "host", "must be a table"),
    ('[response]\nwhen = {}\nrespond = "51"\n', 1, "response", "[[response]] tables, not [response]"),
    ("response = 5\n", 1, "response", "array of [[response]] tables"),
    ("response = [1]\n", 1, "response[1]", "must be a table"),
    (
        '[[response]]\nwhen = {}\nrespond = "51"\nresponse_code = "05"\n',
        4,
        "response[1].response_code",
        "allowed: name, when, respond, fields",
    ),
    ('[[response]]\nrespond = "51"\n', 1, "response[1].when", "write when = {} to match every request"),
    ("[[response]]\nwhen = {}\n", 1, "response[1].respond", "missing"),
    ('[[response]]\nwhen = {}\nrespond = "5"\n', 3, "response[1].respond", "2 letters or digits"),
    ("[[response]]\nwhen = {}\nrespond = 51\n", 3, "response[1].respond", "2 letters or digits"),
    ('[[response]]\nname = 5\nwhen = {}\nrespond = "51"\n', 2, "response[1].name", "non-blank string"),
    ('[[response]]\nwhen = "always"\nrespond = "51"\n', 2, "response[1].when", "must be a table"),
    (
        '[[response]]\nwhen = { mti = "0200", card = "4" }\nrespond = "51"\n',
        2,
        "response[1].when.card",
        "allowed: mti, processing_code, pan_prefix, amount_min, amount_max, terminal, fields",
    ),
    ('[[response]]\nwhen = { mti = ["200"] }\nrespond = "51"\n', 2, "response[1].when.mti", "4 digits"),
    (
        '[[response]]\nwhen = { processing_code = 0 }\nrespond = "51"\n',
        2,
        "response[1].when.processing_code",
        "list of 1 to 6 digits",
    ),
    (
        '[[response]]\nwhen = { pan_prefix = ["4000 0000"] }\nrespond = "51"\n',
        2,
        "response[1].when.pan_prefix",
        "1 to 19 digits",
    ),
    (
        '[[response]]\nwhen = { terminal = [""] }\nrespond = "51"\n',
        2,
        "response[1].when.terminal",
        "non-blank terminal id",
    ),
    (
        '[[response]]\nwhen = { amount_min = 1.5 }\nrespond = "51"\n',
        2,
        "response[1].when.amount_min",
        "integer >= 0",
    ),
    (
        '[[response]]\nrespond = "51"\n[response.when]\namount_min = 10\namount_max = 9\n',
        5,
        "response[1].when.amount_max",
        "must be >= amount_min (10)",
    ),
    (
        '[[response]]\nwhen = { fields = { 22 = "re:[0-9" } }\nrespond = "51"\n',
        2,
        "response[1].when.fields.22",
        "invalid regular expression",
    ),
    (
        '[[response]]\nwhen = { fields = { pos = "051" } }\nrespond = "51"\n',
        2,
        "response[1].when.fields.pos",
        "field numbers are 2..128, got 'pos'",
    ),
    (
        '[[response]]\nwhen = { fields = { 200 = "x" } }\nrespond = "51"\n',
        2,
        "response[1].when.fields.200",
        "field numbers are 2..128, got 200",
    ),
    (
        '[[response]]\nwhen = { fields = { 65 = "x" } }\nrespond = "51"\n',
        2,
        "response[1].when.fields.65",
        "bitmap",
    ),
    (
        '[[response]]\nwhen = { fields = [22] }\nrespond = "51"\n',
        2,
        "response[1].when.fields",
        "table of field number = string",
    ),
    (
        '[[response]]\nwhen = {}\nrespond = "51"\nfields = { 39 = "05" }\n',
        4,
        "response[1].fields.39",
        "set by the rule's code",
    ),
    (
        '[[response]]\nwhen = {}\nrespond = "51"\n\n[response.fields]\n44 = 7\n',
        6,
        "response[1].fields.44",
        "must be a string",
    ),
    (
        '[[response]]\nwhen = {}\nrespond = "51"\nfields = { 44 = "a", 044 = "b" }\n',
        4,
        "response[1].fields.044",
        "field 44 is given twice",
    ),
    ('[fault]\ndelay = "1s"\n', 1, "fault", "[[fault]] tables, not [fault]"),
    ('fault = "slow"\n', 1, "fault", "array of [[fault]] tables"),
    ('fault = [{ delay = "1s" }, "slow"]\n', 1, "fault[2]", "must be a table"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    BAD_FILES,
    ids=[f"{key}-{index}" for index, (_, _, key, _) in enumerate(BAD_FILES)],
)
def test_every_loader_error_names_line_and_key(text, line, key, reason):
    error = error_of(text)
    assert error.path == "x.toml"
    assert (error.line, error.key) == (line, key), str(error)
    assert reason in error.reason
    assert str(error) == f"x.toml:{line}: {key}: {error.reason}"


def test_error_points_at_the_right_element_among_many():
    rules = "".join(
        f'[[response]]\nname = "r{n}"\nwhen = {{ mti = "0200" }}\nrespond = "51"\n\n' for n in range(5)
    )
    error = error_of(rules + '[[response]]\nname = "bad"\nwhen = {}\nrespond = "x"\n')
    assert (error.line, error.key) == (29, "response[6].respond")


def test_the_first_unknown_key_in_file_order_is_named():
    error = error_of("[host]\nzeta = 1\nalpha = 2\n")
    assert (error.line, error.key) == (2, "host.zeta")


# --- valid files ------------------------------------------------------------------------------------


FULL = '''
    [scenario]
    name = "referrals"
    description = """
      Large purchases need a voice referral.
    """
    seed = 7

    [host]
    require_signon = false
    signon_required_code = "A0"
    session_timeout = "never"
    stale_window = "5m"
    stale_code = "22"
    unknown_original_code = "25"
    duplicate_window = 90

    [[response]]
    name = "big amounts need a referral"
    when = { mti = ["0200"], amount_min = 100000 }
    respond = "01"
    fields = { 44 = "CALL ISSUER" }

    [[response]]
    when = { terminal = "T9", fields = { 42 = "re:SHOP[0-9]+" } }
    respond = "a0"

    [[fault]]
    delay = "200ms"

    [[fault]]
    action = "drop"
    '''


def test_a_full_scenario_loads():
    scenario = parse_scenario(toml(FULL), "dir/referrals.toml")
    assert scenario.name == "referrals"
    assert scenario.description == "Large purchases need a voice referral."
    assert scenario.path == "dir/referrals.toml"
    assert scenario.seed == 7
    assert dict(scenario.host) == {
        "require_signon": False,
        "signon_required_code": "A0",
        "session_timeout": None,
        "stale_window": 300.0,
        "stale_code": "22",
        "unknown_original_code": "25",
        "duplicate_window": 90.0,
    }
    own = scenario.response_rules.rules[:2]
    assert own[0].name == "big amounts need a referral"
    assert own[0].match == Match(mti=("0200",), amount_min=100000)
    assert (own[0].response_code, dict(own[0].fields)) == ("01", {44: "CALL ISSUER"})
    assert own[1].name == "referrals response[2]"
    assert own[1].match == Match(terminal=("T9",), fields={42: "re:SHOP[0-9]+"})
    assert scenario.faults == ({"delay": "200ms"}, {"action": "drop"})
    assert scenario.fault_lines == (27, 30)


def test_own_rules_come_before_the_test_cards():
    scenario = parse_scenario(toml(FULL))
    cards = default_scenario().response_rules.rules
    assert scenario.test_cards
    assert scenario.response_rules.rules[2:] == cards
    big_test_card = request(pan="4000000000000051", amount="000000200000")
    assert scenario.response_rules.first_match(big_test_card).response_code == "01"  # file's rule wins
    assert scenario.response_rules.first_match(request(pan="4000000000000051")).response_code == "51"


def test_test_cards_can_be_left_out():
    scenario = parse_scenario('[scenario]\ntest_cards = false\n[[response]]\nwhen = {}\nrespond = "96"\n')
    assert not scenario.test_cards
    assert [rule.response_code for rule in scenario.response_rules] == ["96"]


def test_an_empty_file_is_the_default_behaviour():
    scenario = parse_scenario("", "empty.toml")
    assert scenario.name == "empty"
    assert scenario.description == ""
    assert dict(scenario.host) == {}
    assert scenario.faults == ()
    assert scenario.seed is None
    assert scenario.response_rules == default_scenario().response_rules


def test_fault_errors_can_be_raised_at_their_line_by_the_fault_engine():
    scenario = parse_scenario(toml(FULL), "f.toml")
    error = scenario.error(("fault", 1, "action"), "unknown action 'drop'")
    assert str(error) == "f.toml:31: fault[2].action: unknown action 'drop'"


def test_parse_match_is_reusable_with_extra_keys():
    text = '[[fault]]\nwhen = { mti = "0200", nth = 3 }\n'
    scenario = parse_scenario(text, "f.toml")
    when = scenario.faults[0]["when"]
    assert parse_match(when, ("fault", 0, "when"), scenario.source, allow=("nth",)) == Match(mti=("0200",))
    with pytest.raises(ScenarioError) as caught:
        parse_match(when, ("fault", 0, "when"), scenario.source)
    assert (caught.value.line, caught.value.key) == (2, "fault[1].when.nth")


def test_host_keys_are_the_documented_set():
    assert set(HOST_KEYS) == {
        "require_signon",
        "signon_required_code",
        "session_timeout",
        "stale_window",
        "stale_code",
        "unknown_original_code",
        "duplicate_window",
        "mac_failure_code",
        "pin_format_code",
    }


def test_security_codes_in_host_reach_the_host_config():
    scenario = parse_scenario('[host]\nmac_failure_code = "63"\npin_format_code = "55"\n')
    config = HostConfig.for_dialect(load_dialect("iso87-binary"), **scenario.host)
    assert (config.mac_code, config.pin_error_code) == ("63", "55")
    with pytest.raises(ScenarioError) as caught:
        parse_scenario('[host]\nmac_failure_code = "A"\n')
    assert (caught.value.line, caught.value.key) == (2, "host.mac_failure_code")


def test_duration_strings_and_numbers_in_host():
    scenario = parse_scenario(
        '[host]\nsession_timeout = "1h30m"\nstale_window = 0.5\nduplicate_window = "250ms"\n'
    )
    assert dict(scenario.host) == {"session_timeout": 5400.0, "stale_window": 0.5, "duplicate_window": 0.25}


# --- loading by name and path -----------------------------------------------------------------------


def test_shipped_scenarios_all_load():
    names = scenario_names()
    assert {"healthy", "test-cards"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert isinstance(scenario, Scenario)
        assert scenario.description, f"{name} has no description"
        assert scenario.response_rules.first_match(request()) is None  # an ordinary card is approved
        scenario.check_dialect(load_dialect("iso87-binary"))
        scenario.check_dialect(load_dialect("iso87-ascii"))


def test_every_shipped_file_starts_with_a_comment_block():
    for path in specs.scenarios_dir().glob("*.toml"):
        assert path.read_text(encoding="utf-8").startswith("# "), path.name


def test_healthy_requires_sign_on_and_has_no_faults():
    healthy = load_scenario("healthy")
    assert healthy.name == "healthy"
    assert healthy.host["require_signon"] is True
    assert healthy.faults == ()
    assert healthy.response_rules == default_scenario().response_rules


def test_load_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[response]]\nwhen = { terminal = "T1" }\nrespond = "91"\n', encoding="utf-8")
    scenario = load_scenario(str(path))
    assert (scenario.name, scenario.path) == ("mine", str(path))
    assert scenario.response_rules.rules[0].response_code == "91"


def test_load_errors_for_missing_unknown_and_unreadable_files(tmp_path):
    with pytest.raises(
        ScenarioError, match=r"no shipped scenario of that name \(shipped: .*healthy"
    ) as caught:
        load_scenario("no-such-scenario")
    assert caught.value.path == "no-such-scenario"
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ScenarioError, match="no such file") as caught:
        load_scenario(missing)
    assert caught.value.path == missing
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(str(binary))
    with pytest.raises(ScenarioError, match=r"cannot read|not a regular file"):
        load_scenario(str(tmp_path) + "/")


def test_bad_file_on_disk_names_its_path(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[scenario]\nname = "bad"\n\n[[response]]\nwhen = { mti = "200" }\nrespond = "51"\n')
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    assert str(caught.value) == f"{path}:5: response[1].when.mti: each entry must be 4 digits, got '200'"
