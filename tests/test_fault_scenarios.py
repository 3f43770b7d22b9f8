"""Fault rules in scenario files (pure): bad tables name file, line and key; ids and seeds from the file;
and each shipped failure scenario does what its name says."""

from __future__ import annotations

import textwrap

import pytest

import specs
from switch.faults import (
    ACTION_KEYS,
    Actions,
    FaultEngine,
    FaultRule,
    parse_fault_rules,
    rule_from_table,
)
from switch.rules import Match
from switch.scenario import ScenarioError, load_scenario, parse_scenario
from tests.fault_engines import FAILURE_SCENARIOS, message
from tests.scenario_support import luhn_valid

# --- scenario files -----------------------------------------------------------------------------------


def scenario_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


BAD_FAULT_FILES = [
    ("[[fault]]\ndrop = true\n", 2, "fault[1].drop", "unknown key"),
    ('[[fault]]\nwhen = { mti = "0200", nth = 0 }\ndrop_request = true\n', 2, "fault[1].when.nth", ">= 1"),
    ('[[fault]]\ndrop_request = true\n\n[[fault]]\nname = "x"\n', 4, "fault[2]", "has no action"),
    (
        '[[fault]]\ndelay_response = { uniform = ["3s", "1s"] }\n',
        2,
        "fault[1].delay_response.uniform[2]",
        "upper bound",
    ),
    (
        '[[fault]]\ndelay_request = "1s"\n[fault.delay_response]\nnormal = { mean = "1s" }\n',
        4,
        "fault[1].delay_response.normal.stddev",
        "missing",
    ),
    ("[[fault]]\nprobability = 2\nduplicate = true\n", 2, "fault[1].probability", "from 0 to 1"),
    ('[[fault]]\ndrop_request = true\nrespond = "91"\n', 3, "fault[1].respond", "before processing"),
    (
        '[[fault]]\nid = "a"\nduplicate = true\n[[fault]]\nid = "a"\ndrop_request = true\n',
        5,
        "fault[2].id",
        "already used by fault[1]",
    ),
    (
        '[[fault]]\nid = "f2"\nduplicate = true\n[[fault]]\ndrop_request = true\n',
        4,
        "fault[2]",
        "a rule without an id is named f<position>",
    ),
    ("[[fault]]\nslice = { bytes = 8 }\n", 2, "fault[1].slice.pause", "missing"),
    ('[[fault]]\nwhen = { connection = [1, -2] }\nreset = "before"\n', 2, "fault[1].when.connection[2]", ">= 1"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"), BAD_FAULT_FILES, ids=[key for _, _, key, _ in BAD_FAULT_FILES]
)
def test_bad_fault_tables_name_file_line_and_key(text, line, key, reason):
    scenario = parse_scenario(text, "x.toml")  # the scenario loader keeps [[fault]] raw...
    with pytest.raises(ScenarioError) as caught:
        parse_fault_rules(scenario)  # ...the fault engine judges it
    error = caught.value
    assert (error.path, error.line, error.key) == ("x.toml", line, key), str(error)
    assert reason in error.reason
    assert str(error).startswith(f"x.toml:{line}: {key}: ")


def test_load_scenario_refuses_a_file_with_a_bad_fault_rule(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[scenario]\nseed = 3\n\n[[fault]]\nwhen = { mti = "0200" }\nclose = "later"\n', "utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    assert str(caught.value) == f'{path}:6: fault[1].close: must be "before" or "after", got \'later\''


def test_fault_rules_from_a_scenario_get_ids_by_position_and_the_scenario_seed():
    scenario = parse_scenario(
        scenario_text("""
        [scenario]
        seed = 99

        [[fault]]
        when = { mti = "0800", first = 2 }
        drop_request = true

        [[fault]]
        id = "slow"
        delay_response = "200ms"
        """)
    )
    rules = parse_fault_rules(scenario)
    assert [rule.id for rule in rules] == ["f1", "slow"]
    assert rules[0] == FaultRule("f1", match=Match(mti=("0800",)), first=2, actions=Actions(drop_request=True))
    assert FaultEngine.from_scenario(scenario).seed == 99
    assert FaultEngine.from_scenario(scenario, seed=5).seed == 5  # --seed overrides the file
    assert FaultEngine.from_scenario(scenario).add({"duplicate": True}).id == "f2"


@pytest.mark.parametrize("name", FAILURE_SCENARIOS)
def test_failure_scenarios_load_with_valid_fault_rules_that_read_back(name):
    scenario = load_scenario(name)
    path = specs.scenarios_dir() / f"{name}.toml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# {name}: ")
    for heading in ("What it reproduces", "What the terminal must do", "How to see it"):
        assert heading in text, f"{name}.toml: no {heading!r} in the comment block"
    rules = parse_fault_rules(scenario)
    assert rules, f"{name} has no fault rules"
    for rule in rules:
        assert rule.name != rule.id, f"{name}: rule {rule.id} has no name"
        assert rule_from_table(rule.to_dict(), default_id="x") == rule


def test_scenario_cards_are_luhn_valid():
    for name in FAILURE_SCENARIOS:
        scenario = load_scenario(name)
        prefixes = [p for rule in parse_fault_rules(scenario) if rule.match for p in rule.match.pan_prefix]
        prefixes += [p for rule in scenario.response_rules for p in rule.match.pan_prefix]
        for pan in prefixes:
            assert len(pan) >= 16 and luhn_valid(pan), (name, pan)


def shipped_engine(name: str, seed: int = 1) -> FaultEngine:
    return FaultEngine(parse_fault_rules(load_scenario(name)), seed=seed)


def test_order_expired_holds_its_card_past_the_stale_window():
    scenario = load_scenario("order-expired")
    assert scenario.host["stale_window"] == 10 and scenario.host["session_timeout"] == 120
    fault_engine = shipped_engine("order-expired")
    held = fault_engine.decide(message(f2="4600000000000022"), connection=1, elapsed=0)
    assert held.delay_request > scenario.host["stale_window"]
    assert held.delay_request < 30  # answered before a terminal's usual timeout
    assert fault_engine.decide(message(), connection=1, elapsed=0).is_clean
    expired = scenario.response_rules.first_match(message(f2="4700000000000054", f14="9912"))
    assert expired.response_code == "54"


def test_pending_confirmation_loses_the_reply_after_the_commit():
    fault_engine = shipped_engine("pending-confirmation")
    purchases = [fault_engine.decide(message(f11=f"{n:06d}"), connection=1, elapsed=0) for n in range(1, 7)]
    assert [d.drop_response for d in purchases] == [False, False, True, False, False, True]
    assert all(not d.drop_request for d in purchases)  # processed: the posting exists
    card = {
        pan: shipped_engine("pending-confirmation").decide(message(f2=pan), connection=1, elapsed=0)
        for pan in ("4999000000000013", "4999000000000021", "4999000000000039", "4999000000000047")
    }
    assert card["4999000000000013"].drop_response
    assert card["4999000000000021"].reset_after
    assert set(card["4999000000000039"].wrong_echo) == {4}
    assert set(card["4999000000000047"].wrong_echo) == {11}
    assert not fault_engine.get("random-reset-after-commit").enabled
    assert fault_engine.decide(message("0400"), connection=1, elapsed=0).is_clean  # the reversal gets through


def test_zero_amount_answers_the_first_settlement_95_only():
    fault_engine = shipped_engine("zero-amount")
    settlements = [fault_engine.decide(message("0500"), connection=1, elapsed=0) for _ in range(3)]
    assert [d.respond for d in settlements] == ["95", None, None]
    phantom = fault_engine.decide(message(f2="4999000000000062"), connection=1, elapsed=0)
    assert phantom.respond == "00"
    assert fault_engine.decide(message(f4="000000000000"), connection=1, elapsed=0).is_clean  # the host's 13


def test_system_timeout_replies_after_a_30_second_terminal_timeout():
    fault_engine = shipped_engine("system-timeout")
    decision = fault_engine.decide(message(), connection=1, elapsed=0)
    assert decision.delay_response >= 35 and not decision.drop_response
    assert decision.delay_request == 0  # processed at once: the reversal finds the original
    assert fault_engine.decide(message("0400"), connection=1, elapsed=0).is_clean
    assert [rule.id for rule in fault_engine.rules if not rule.enabled] == ["late-processing", "near-the-limit"]


def test_signon_timeout_blacks_out_the_first_two_signons_then_cuts_off_later():
    fault_engine = shipped_engine("signon-timeout")
    signons = [fault_engine.decide(message("0800", f70="001"), connection=n, elapsed=n) for n in (1, 2, 3)]
    assert [d.drop_request for d in signons] == [True, True, False]
    assert signons[2].is_clean
    assert fault_engine.decide(message("0800", f70="001"), connection=4, elapsed=330).respond == "90"
    assert fault_engine.decide(message(), connection=4, elapsed=330).respond == "90"
    assert fault_engine.decide(message(), connection=4, elapsed=360).is_clean


def test_flaky_network_fires_at_about_the_stated_rates_with_its_fixed_seed():
    scenario = load_scenario("flaky-network")
    assert scenario.seed is not None
    fault_engine = FaultEngine.from_scenario(scenario)
    count = 20_000
    for index in range(count):
        fault_engine.decide(message("0200" if index % 2 else "0800"), connection=index % 50 + 1, elapsed=index)
    for rule in fault_engine.rules:
        counters = fault_engine.counters()[rule.id]
        expected = counters["matched"] * rule.probability
        assert abs(counters["fired"] - expected) <= 5 * max(expected, 1) ** 0.5, (rule.id, counters)
    replay = FaultEngine.from_scenario(scenario)
    first = [replay.decide(message(), connection=1, elapsed=0) for _ in range(200)]
    again = FaultEngine.from_scenario(scenario)
    assert [again.decide(message(), connection=1, elapsed=0) for _ in range(200)] == first


def test_healthy_has_no_faults_and_documents_every_action():
    scenario = load_scenario("healthy")
    assert parse_fault_rules(scenario) == ()
    text = (specs.scenarios_dir() / "healthy.toml").read_text(encoding="utf-8")
    for key in ACTION_KEYS:
        assert f"#     {key}" in text, key
