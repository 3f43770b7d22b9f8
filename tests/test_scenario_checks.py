"""A scenario against its dialect (response fields it cannot carry, literals that never match) and the
default test-card table."""

from __future__ import annotations

import re

import pytest

import specs
from switch.codec.dialect import load_dialect
from switch.rules import Match, ResponseRule, ResponseRules
from switch.scenario import (
    Scenario,
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_scenario,
)
from tests.scenario_support import luhn_valid, request

# --- dialect check ----------------------------------------------------------------------------------


RESPONSE_FIELD_PROBLEMS = [
    ('44 = "THIS TEXT IS FAR TOO LONG FOR 44"', "44", "holds at most 25 characters, got 32"),
    ('38 = "AB12"', "38", "is exactly 6 characters, got 4"),
    ('70 = "ABC"', "70", "holds digits, got 'ABC'"),
    ('35 = "4000000000000051X2512"', "35", "holds track characters"),
    ('64 = "00112233"', "64", "is exactly 16 hex digits, got 8"),
    ('64 = "XX112233445566ZZ"', "64", "holds upper-case hex digits"),
    ('64 = "00112233445566aa"', "64", "holds upper-case hex digits"),
]


@pytest.mark.parametrize(("entry", "number", "reason"), RESPONSE_FIELD_PROBLEMS)
def test_check_dialect_refuses_response_fields_the_dialect_cannot_carry(entry, number, reason):
    scenario = parse_scenario(
        f'[[response]]\nwhen = {{}}\nrespond = "01"\nfields = {{ {entry} }}\n', "d.toml"
    )
    with pytest.raises(ScenarioError) as caught:
        scenario.check_dialect(load_dialect("iso87-binary"))
    assert (caught.value.path, caught.value.line, caught.value.key) == (
        "d.toml",
        4,
        f"response[1].fields.{number}",
    )
    assert reason in caught.value.reason


@pytest.mark.parametrize(("entry", "number", "reason"), RESPONSE_FIELD_PROBLEMS)
def test_check_dialect_refuses_when_literals_that_never_match(entry, number, reason):
    scenario = parse_scenario(f'[[response]]\nrespond = "01"\nwhen.fields = {{ {entry} }}\n', "d.toml")
    with pytest.raises(ScenarioError) as caught:
        scenario.check_dialect(load_dialect("iso87-binary"))
    assert (caught.value.line, caught.value.key) == (3, f"response[1].when.fields.{number}")
    assert caught.value.reason.startswith("never matches: ")
    assert reason in caught.value.reason


def test_check_dialect_accepts_what_the_dialect_can_carry():
    scenario = parse_scenario(
        '[[response]]\nwhen = { fields = { 22 = "051", 64 = "re:[0-9a-f]+", 42 = "re:.*" } }\n'
        'respond = "01"\n'
        'fields = { 44 = "CALL ISSUER", 38 = "AB1234", 64 = "0011223344556677", 35 = "4000=2512" }\n'
    )
    scenario.check_dialect(load_dialect("iso87-binary"))
    scenario.check_dialect(load_dialect("iso87-ascii"))


def test_check_dialect_on_a_scenario_built_in_code():
    rule = ResponseRule("referral", Match(), "01", {38: "AB"})
    scenario = Scenario("coded", "", None, {}, ResponseRules([rule]))
    with pytest.raises(ScenarioError) as caught:
        scenario.check_dialect(load_dialect("iso87-binary"))
    assert str(caught.value) == (
        "<scenario>: response[1].fields.38: field 38 of dialect iso87-binary is exactly 6 characters, got 2"
    )


def test_check_dialect_refuses_fields_the_dialect_lacks(tmp_path):
    (tmp_path / "slim.toml").write_text('extends = "iso87-binary"\nname = "slim"\nremove_fields = [48]\n')
    slim = load_dialect("slim", dialect_path=[tmp_path])
    for when in ('"x"', '"re:.*"'):
        scenario = parse_scenario(
            f'[[response]]\nwhen = {{ fields = {{ 48 = {when} }} }}\nrespond = "01"\n', "d.toml"
        )
        with pytest.raises(ScenarioError, match="never matches: dialect slim has no field 48") as caught:
            scenario.check_dialect(slim)
        assert (caught.value.line, caught.value.key) == (2, "response[1].when.fields.48")
    scenario = parse_scenario('[[response]]\nwhen = {}\nrespond = "01"\nfields = { 48 = "x" }\n', "d.toml")
    with pytest.raises(ScenarioError, match="dialect slim has no field 48") as caught:
        scenario.check_dialect(slim)
    assert (caught.value.line, caught.value.key) == (4, "response[1].fields.48")


# --- the default test-card table --------------------------------------------------------------------


def documented_test_cards() -> list[tuple[str, str]]:
    """(PAN, code) rows of the comment table in test-cards.toml, so the documentation cannot drift."""
    text = (specs.scenarios_dir() / "test-cards.toml").read_text(encoding="utf-8")
    rows = re.findall(r"^#\s+((?:\d{4} ){3}\d{4}(?: \d{3})?)\s+(\w\w)\s", text, flags=re.MULTILINE)
    return [(pan.replace(" ", ""), code) for pan, code in rows]


def test_documented_table_lists_the_required_codes():
    rows = documented_test_cards()
    assert {code for _, code in rows} >= {"51", "61", "05", "14", "41", "43", "57", "00"}
    assert any(pan.startswith("62") and code != "00" for pan, code in rows)
    assert any(len(pan) == 19 for pan, _ in rows)


def test_every_documented_test_card_is_luhn_valid_and_ends_in_its_code():
    for pan, code in documented_test_cards():
        assert luhn_valid(pan), pan
        assert pan.endswith(code), pan


@pytest.mark.parametrize(("pan", "code"), documented_test_cards())
def test_every_documented_test_card_gives_its_code(pan, code):
    rules = default_scenario().response_rules
    for mti in ("0100", "0200"):
        rule = rules.first_match(request(pan=pan, mti=mti))
        assert (rule.response_code if rule else "00") == code
        swiped = rules.first_match(request(pan=None, mti=mti, f35=f"{pan}=29121010000000000000"))
        assert (swiped.response_code if swiped else "00") == code


def test_test_cards_only_answer_authorizations_and_financial_requests():
    rules = default_scenario().response_rules
    for mti in ("0400", "0220", "0800", "0210"):
        assert rules.first_match(request(pan="4000000000000051", mti=mti)) is None


def test_amount_trigger_for_61():
    rules = default_scenario().response_rules
    assert rules.first_match(request(amount="000100000000")) is None  # exactly 1,000,000.00
    assert rules.first_match(request(amount="000100000001")).response_code == "61"
    assert rules.first_match(request(pan="4300000000000041", amount="000100000001")).response_code == "41"


def test_default_scenario_is_test_cards_only():
    default = default_scenario()
    assert default.name == "default"
    assert dict(default.host) == {}
    assert default.faults == ()
    assert default.seed is None
    assert len(default.response_rules) == len(load_scenario("test-cards").response_rules)
