"""The fault plan at run time (pure; what the admin API calls): add, patch, enable, delete, load, reset,
the plan as data, and maintenance mode."""

from __future__ import annotations

import json

import pytest

from switch.faults import (
    Actions,
    Delay,
    FaultDecision,
    FaultEngine,
    FaultRuleError,
    rule_from_table,
)
from tests.fault_engines import engine, fired, message

# --- run-time changes (the admin API's calls) ---------------------------------------------------------


def test_add_assigns_ids_that_are_not_reused():
    fault_engine = FaultEngine(seed=1)
    assert fault_engine.add({"duplicate": True}).id == "f1"
    assert fault_engine.add({"id": "mine", "duplicate": True}).id == "mine"
    assert fault_engine.add({"duplicate": True}).id == "f2"
    fault_engine.delete("f2")
    assert fault_engine.add({"duplicate": True}).id == "f3"
    assert [rule.id for rule in fault_engine.rules] == ["f1", "mine", "f3"]


def test_add_refuses_a_duplicate_id_and_bad_tables_without_changing_the_plan():
    fault_engine = engine({"id": "a", "duplicate": True})
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.add({"id": "a", "drop_request": True})
    assert caught.value.key == "id" and "exists" in caught.value.reason
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.add({"when": {"mti": ["02OO"]}, "duplicate": True})
    assert caught.value.key == "when.mti"
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.add(["not", "a", "table"])
    assert caught.value.key == "" and "must be a table" in caught.value.reason
    assert [rule.id for rule in fault_engine.rules] == ["a"]
    assert fault_engine.add({"duplicate": True}).id == "f1"  # failed adds used no id


def test_patch_replaces_keys_merges_when_and_none_restores_defaults():
    fault_engine = engine(
        {"id": "a", "name": "lost", "when": {"mti": "0200", "every": 2}, "drop_response": True, "delay_request": "1s"}
    )
    rule = fault_engine.patch(
        "a", {"probability": 0.5, "when": {"every": None, "terminal": "T1"}, "delay_request": None}
    )
    assert rule.to_dict() == {
        "id": "a",
        "name": "lost",
        "enabled": True,
        "when": {"mti": ["0200"], "terminal": ["T1"]},
        "probability": 0.5,
        "drop_response": True,
    }
    assert fault_engine.rules == (rule,)
    assert fault_engine.patch("a", {"when": None}).match is None


def test_patch_switches_actions_and_is_validated_as_a_whole():
    fault_engine = engine({"id": "a", "drop_response": True})
    assert fault_engine.patch("a", {"drop_response": None, "reset": "after"}).actions == Actions(reset="after")
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.patch("a", {"duplicate": True})  # reset after: no response to duplicate
    assert caught.value.key == "duplicate"
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.patch("a", {"id": "b"})
    assert caught.value.key == "id"
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.patch("a", {"colour": None})
    assert caught.value.key == "colour"
    with pytest.raises(FaultRuleError):
        fault_engine.patch("a", "enabled")
    with pytest.raises(KeyError):
        fault_engine.patch("zz", {"enabled": False})
    assert fault_engine.get("a").actions == Actions(reset="after")


def test_patch_keeps_place_counters_and_random_stream():
    fault_engine = engine({"id": "a", "duplicate": True}, {"id": "b", "when": {"every": 2}, "drop_request": True})
    fired(fault_engine, [message()] * 3)
    fault_engine.patch("b", {"drop_request": None, "respond": "96"})
    assert [rule.id for rule in fault_engine.rules] == ["a", "b"]
    assert fault_engine.counters()["b"] == {"matched": 3, "fired": 1}
    assert fault_engine.decide(message(), connection=1, elapsed=0).respond == "96"  # 4th match: every 2nd


def test_enable_and_disable_at_run_time():
    fault_engine = engine({"id": "a", "enabled": False, "duplicate": True})
    assert not fault_engine.decide(message(), connection=1, elapsed=0).duplicate
    fault_engine.patch("a", {"enabled": True})
    assert fault_engine.decide(message(), connection=1, elapsed=0).duplicate


def test_a_decision_already_given_keeps_its_plan():
    fault_engine = engine({"id": "a", "delay_response": "5s"})
    in_flight = fault_engine.decide(message(), connection=1, elapsed=0)
    fault_engine.patch("a", {"delay_response": "1s"})
    fault_engine.add({"drop_response": True})
    assert in_flight.delay_response == 5.0 and not in_flight.drop_response
    after = fault_engine.decide(message(), connection=1, elapsed=0)
    assert (after.delay_response, after.drop_response) == (1.0, True)
    assert fault_engine.get("a").actions.delay_response == Delay.fixed(1)


def test_delete_and_unknown_ids():
    fault_engine = engine({"id": "a", "duplicate": True}, {"id": "b", "duplicate": True})
    fault_engine.delete("a")
    assert [rule.id for rule in fault_engine.rules] == ["b"]
    assert list(fault_engine.counters()) == ["b"]
    with pytest.raises(KeyError):
        fault_engine.delete("a")
    with pytest.raises(KeyError):
        fault_engine.get("a")


def test_load_replaces_the_plan_and_restarts_counters_and_streams():
    fault_engine = engine({"id": "a", "when": {"first": 1}, "duplicate": True}, seed=5)
    assert fired(fault_engine, [message()] * 2) == [1]
    fault_engine.load(fault_engine.rules)
    assert fault_engine.counters() == {"a": {"matched": 0, "fired": 0}}
    assert fired(fault_engine, [message()] * 2) == [1]
    fault_engine.load((), seed=9)
    assert (fault_engine.rules, fault_engine.seed) == ((), 9)
    rule = rule_from_table({"id": "a", "duplicate": True}, default_id="f1")
    with pytest.raises(FaultRuleError, match="used by two rules"):
        fault_engine.load([rule, rule])
    with pytest.raises(TypeError):
        fault_engine.load([{"duplicate": True}])


def test_reset_clears_rules_and_maintenance_but_keeps_the_seed():
    fault_engine = engine({"duplicate": True}, seed=77)
    fault_engine.maintenance = "respond"
    fault_engine.maintenance_code = "96"
    fault_engine.reset()
    assert (fault_engine.rules, fault_engine.maintenance, fault_engine.maintenance_code) == ((), "off", "91")
    assert fault_engine.seed == 77
    assert fault_engine.add({"duplicate": True}).id == "f1"


def test_engine_to_dict_is_the_plan():
    fault_engine = engine({"id": "a", "duplicate": True}, seed=3)
    assert fault_engine.to_dict() == {
        "seed": 3,
        "maintenance": "off",
        "maintenance_code": "91",
        "rules": [{"id": "a", "name": "a", "enabled": True, "when": {}, "probability": 1.0, "duplicate": True}],
    }


ROUND_TRIP_TABLES = [
    {
        "id": "all-when",
        "name": "n",
        "enabled": False,
        "probability": 0.25,
        "when": {
            "mti": ["0200"],
            "processing_code": ["00"],
            "pan_prefix": ["4"],
            "amount_min": 1,
            "amount_max": 9,
            "terminal": ["T1"],
            "fields": {"22": "re:05.", "42": "M1"},
            "connection": [1, 2],
            "every": 3,
            "first": 9,
            "after": "1m",
            "before": "1h",
        },
        "delay_request": {"normal": {"mean": "200ms", "stddev": "20ms"}, "cap": "2s"},
        "delay_response": {"lognormal": {"median": "150ms", "sigma": 0.5}},
        "wrong_echo": ["amount", "terminal"],
        "corrupt_mac": True,
        "slice": {"bytes": 3, "pause": "2ms"},
        "bandwidth": 10,
        "respond": "A0",
        "wrong_length": True,
        "duplicate": True,
    },
    {"id": "g", "when": {"nth": 2}, "garbage": 12, "truncate": True, "delay_response": {"uniform": ["1s", "2s"]}},
    {"id": "fixed-capped", "delay_request": {"fixed": 0.0005, "cap": "1ms"}, "reset": "after"},
]


@pytest.mark.parametrize("table", ROUND_TRIP_TABLES, ids=lambda table: table["id"])
def test_to_dict_reads_back_as_the_same_rule(table):
    rule = rule_from_table(table, default_id="f1")
    assert rule_from_table(rule.to_dict(), default_id="other") == rule
    assert json.loads(json.dumps(rule.to_dict())) == rule.to_dict()  # JSON-able as it is


# --- maintenance --------------------------------------------------------------------------------------


def test_maintenance_respond_answers_every_frame_unprocessed_without_consulting_rules():
    fault_engine = engine({"drop_request": True})
    fault_engine.maintenance = "respond"
    for frame in (message(), message("0800"), None):
        decision = fault_engine.decide(frame, connection=1, elapsed=0)
        assert decision == FaultDecision(rules=("maintenance",), respond="91")
    fault_engine.maintenance_code = "90"
    assert fault_engine.decide(message(), connection=1, elapsed=0).respond == "90"
    assert fault_engine.counters()["f1"] == {"matched": 0, "fired": 0}
    fault_engine.maintenance = "off"
    assert fault_engine.decide(message(), connection=1, elapsed=0).drop_request


def test_maintenance_refuse_closes_connections_already_open():
    fault_engine = FaultEngine(seed=1, maintenance="refuse")
    decision = fault_engine.decide(message(), connection=3, elapsed=0)
    assert decision == FaultDecision(rules=("maintenance",), close_before=True)


def test_bad_maintenance_settings_are_refused():
    fault_engine = FaultEngine(seed=1)
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.maintenance = "on"
    assert caught.value.key == "maintenance"
    with pytest.raises(FaultRuleError) as caught:
        fault_engine.maintenance_code = "9"
    assert caught.value.key == "maintenance_code"
    with pytest.raises(FaultRuleError):
        FaultEngine(maintenance="closed")
    with pytest.raises(FaultRuleError):
        FaultEngine(seed="7")  # type: ignore[arg-type]
