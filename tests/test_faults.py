"""The fault engine (pure): rule parsing and validation, predicates, counts, probability, every action's
decision fields, how rules combine, CRUD at run time, maintenance, determinism, and the shipped
failure scenarios."""

from __future__ import annotations

import json
import random
import statistics
import textwrap
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specs
from switch.codec.message import Message
from switch.faults import (
    ACTION_KEYS,
    EMPTY_DECISION,
    GARBAGE_MAX,
    LENGTH_DELTA_MAX,
    TRUNCATE_KEEP_MAX,
    Actions,
    Delay,
    FaultDecision,
    FaultEngine,
    FaultRule,
    FaultRuleError,
    format_duration,
    parse_fault_rules,
    rule_from_table,
)
from switch.rules import Match
from switch.scenario import ScenarioError, load_scenario, parse_duration, parse_scenario

FAILURE_SCENARIOS = (
    "order-expired",
    "pending-confirmation",
    "zero-amount",
    "system-timeout",
    "signon-timeout",
    "flaky-network",
)


def message(mti: str = "0200", **fields: str) -> Message:
    """A purchase by default; ``f4="..."`` style keywords override or add fields."""
    values = {2: "4200000000000000", 3: "000000", 4: "000000001000", 11: "000001", 41: "T0000001"}
    values.update({int(name.removeprefix("f")): value for name, value in fields.items()})
    return Message(mti, values)


def engine(*tables: Mapping[str, Any], seed: int = 1) -> FaultEngine:
    fault_engine = FaultEngine(seed=seed)
    for table in tables:
        fault_engine.add(table)
    return fault_engine


def fired(
    fault_engine: FaultEngine, messages: list[Message | None], connection: int = 1, elapsed: float = 0.0
) -> list[int]:
    """1-based positions of the messages on which some rule fired."""
    return [
        position
        for position, item in enumerate(messages, 1)
        if fault_engine.decide(item, connection=connection, elapsed=elapsed).rules
    ]


def error_of(table: Any) -> FaultRuleError:
    with pytest.raises(FaultRuleError) as caught:
        rule_from_table(table, default_id="f1")
    return caught.value


# --- delays -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("200ms", Delay.fixed(0.2)),
        (0.2, Delay.fixed(0.2)),
        ({"fixed": "35s"}, Delay.fixed(35)),
        ({"fixed": "1s", "cap": "500ms"}, Delay("fixed", (1.0,), 0.5)),
        ({"uniform": ["100ms", "300ms"]}, Delay.uniform(0.1, 0.3)),
        ({"normal": {"mean": "200ms", "stddev": "20ms"}, "cap": "2s"}, Delay.normal(0.2, 0.02, cap=2)),
        ({"lognormal": {"median": "150ms", "sigma": 0.5}}, Delay.lognormal(0.15, 0.5)),
    ],
)
def test_delay_forms(value, expected):
    rule = rule_from_table({"delay_request": value}, default_id="d")
    assert rule.actions.delay_request == expected


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        ("fast", "delay_request", "must be a duration"),
        (-1, "delay_request", "must be a duration >= 0"),
        ({"uniform": ["300ms", "100ms"]}, "delay_request.uniform[2]", "upper bound must be >= the lower"),
        ({"uniform": ["1s"]}, "delay_request.uniform", "must be [low, high]"),
        ({"uniform": ["1s", "x"]}, "delay_request.uniform[2]", "must be a duration"),
        ({"normal": {"mean": "200ms"}}, "delay_request.normal.stddev", "missing"),
        ({"normal": "200ms"}, "delay_request.normal", "must be a table"),
        ({"normal": {"mean": "1s", "stddev": "1s", "sd": 1}}, "delay_request.normal.sd", "unknown key"),
        ({"lognormal": {"median": 0, "sigma": 0.5}}, "delay_request.lognormal.median", "> 0"),
        ({"lognormal": {"median": "1s", "sigma": "wide"}}, "delay_request.lognormal.sigma", "number >= 0"),
        ({"fixed": "1s", "uniform": ["1s", "2s"]}, "delay_request", "exactly one of"),
        ({"cap": "1s"}, "delay_request", "exactly one of"),
        ({"fixed": "1s", "max": "2s"}, "delay_request.max", "unknown key"),
        ({"fixed": "1s", "cap": "soon"}, "delay_request.cap", "must be a duration"),
    ],
)
def test_bad_delays_name_their_key(value, key, reason):
    error = error_of({"delay_request": value})
    assert error.key == key
    assert reason in error.reason


def test_delay_samples_stay_in_range_and_under_the_cap():
    rng = random.Random(5)
    uniform = Delay.uniform(0.1, 0.3)
    normal = Delay.normal(0.01, 0.05)  # mostly below zero: clamped
    capped = Delay.lognormal(1.0, 2.0, cap=1.5)
    for _ in range(2000):
        assert 0.1 <= uniform.sample(rng) <= 0.3
        assert normal.sample(rng) >= 0
        assert 0 < capped.sample(rng) <= 1.5
    assert Delay.fixed(0.2).sample(rng) == 0.2


def test_lognormal_median_and_normal_mean_are_what_they_say():
    rng = random.Random(11)
    lognormal = [Delay.lognormal(0.15, 0.5).sample(rng) for _ in range(4001)]
    assert statistics.median(lognormal) == pytest.approx(0.15, rel=0.05)
    normal = [Delay.normal(0.2, 0.02).sample(rng) for _ in range(4000)]
    assert statistics.mean(normal) == pytest.approx(0.2, rel=0.01)
    assert statistics.stdev(normal) == pytest.approx(0.02, rel=0.1)


@given(st.integers(min_value=0, max_value=10**7))
def test_formatted_durations_read_back(milliseconds):
    seconds = milliseconds / 1000
    text = format_duration(seconds)
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)
    assert format_duration(parse_duration(text)) == text


# --- predicates ---------------------------------------------------------------------------------------


def test_a_rule_without_when_applies_to_every_frame_even_undecodable_ones():
    fault_engine = engine({"drop_request": True})
    assert fault_engine.decide(None, connection=1, elapsed=0).drop_request
    assert fault_engine.decide(message("0800"), connection=1, elapsed=0).drop_request
    assert fault_engine.rules[0].match is None
    assert rule_from_table({"when": {}, "drop_request": True}, default_id="x").match is None


def test_a_rule_with_criteria_never_applies_to_undecodable_frames():
    fault_engine = engine({"when": {"mti": "0200"}, "drop_request": True})
    assert fault_engine.decide(None, connection=1, elapsed=0) is EMPTY_DECISION
    assert fault_engine.counters()["f1"] == {"matched": 0, "fired": 0}


@pytest.mark.parametrize(
    ("when", "hit", "miss"),
    [
        ({"mti": ["0200", "0100"]}, message("0100"), message("0800")),
        ({"processing_code": "20"}, message(f3="200000"), message()),
        ({"pan_prefix": "4999"}, message(f2="4999000000000013"), message()),
        ({"amount_min": 500, "amount_max": 2000}, message(f4="000000000500"), message(f4="000000002001")),
        ({"terminal": "T0000009"}, message(f41="T0000009"), message()),
        ({"fields": {"22": "051"}}, message(f22="051"), message(f22="021")),
        ({"fields": {"70": "re:00[12]"}}, message("0800", f70="001"), message("0800", f70="301")),
    ],
)
def test_message_criteria_are_the_response_rule_criteria(when, hit, miss):
    fault_engine = engine({"when": when, "drop_request": True})
    assert fault_engine.decide(hit, connection=1, elapsed=0).drop_request
    assert fault_engine.decide(miss, connection=1, elapsed=0) is EMPTY_DECISION


def test_connection_numbers():
    fault_engine = engine({"when": {"connection": [2, 4]}, "drop_request": True})
    assert [bool(fault_engine.decide(message(), connection=n, elapsed=0).rules) for n in range(1, 6)] == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert engine({"when": {"connection": 3}, "duplicate": True}).rules[0].connection == (3,)


def test_nth_fires_on_the_nth_match_only_and_other_messages_do_not_count():
    fault_engine = engine({"when": {"mti": "0200", "nth": 3}, "drop_response": True})
    traffic = [message(), message("0800"), message(), message("0400"), message(), message(), message()]
    assert fired(fault_engine, traffic) == [5]  # the third 0200
    assert fault_engine.counters()["f1"] == {"matched": 5, "fired": 1}


def test_every_kth_match():
    assert fired(engine({"when": {"every": 3}, "duplicate": True}), [message()] * 10) == [3, 6, 9]


def test_first_n_matches():
    assert fired(engine({"when": {"first": 2}, "duplicate": True}), [message()] * 5) == [1, 2]


def test_every_kth_among_the_first_n():
    assert fired(engine({"when": {"every": 2, "first": 6}, "duplicate": True}), [message()] * 10) == [2, 4, 6]


def test_nth_does_not_combine_with_every_or_first():
    error = error_of({"when": {"nth": 2, "first": 3}, "duplicate": True})
    assert (error.key, error.reason) == ("when.first", "cannot be combined with nth (nth picks a single message)")


def test_time_window_is_after_inclusive_before_exclusive():
    fault_engine = engine({"when": {"after": "10s", "before": "20s"}, "duplicate": True})
    hits = {
        elapsed: bool(fault_engine.decide(message(), connection=1, elapsed=elapsed).rules)
        for elapsed in (0, 9.999, 10, 15, 19.999, 20, 300)
    }
    assert hits == {0: False, 9.999: False, 10: True, 15: True, 19.999: True, 20: False, 300: False}


def test_counts_run_within_the_window():
    fault_engine = engine({"when": {"after": "1m", "first": 1}, "duplicate": True})
    assert not fault_engine.decide(message(), connection=1, elapsed=30).rules
    assert fault_engine.decide(message(), connection=1, elapsed=61).rules  # first match in the window
    assert not fault_engine.decide(message(), connection=1, elapsed=62).rules


def test_before_must_be_later_than_after():
    error = error_of({"when": {"after": "2m", "before": "1m"}, "duplicate": True})
    assert (error.key, error.reason) == ("when.before", "must be later than after (120s)")


def test_probability_zero_never_fires_but_still_counts_matches():
    fault_engine = engine({"probability": 0, "duplicate": True})
    assert fired(fault_engine, [message()] * 500) == []
    assert fault_engine.counters()["f1"] == {"matched": 500, "fired": 0}


def test_probability_one_always_fires():
    assert len(fired(engine({"probability": 1, "duplicate": True}), [message()] * 500)) == 500


@pytest.mark.parametrize("probability", [0.01, 0.1, 0.5, 0.9])
def test_probability_is_per_message(probability):
    count = 20_000
    fault_engine = engine({"probability": probability, "duplicate": True}, seed=42)
    hits = 0
    for index in range(count):  # spread over many connections: the chance does not depend on them
        hits += bool(fault_engine.decide(message(), connection=index % 97 + 1, elapsed=index).rules)
    sigma = (count * probability * (1 - probability)) ** 0.5
    assert abs(hits - count * probability) < 5 * sigma


def _identity_engine(seed: int = 7) -> FaultEngine:
    fault_engine = FaultEngine(seed=seed, identity_draws=True)
    fault_engine.add({"id": "slow", "probability": 0.3, "delay_response": {"uniform": ["10ms", "2s"]}})
    fault_engine.add({"id": "echo", "probability": 0.2, "wrong_echo": ["stan"]})
    return fault_engine


def test_identity_draws_give_a_message_the_same_faults_whatever_instance_and_order():
    traffic = [message(mti, f11=f"{stan:06d}", f41=f"T{terminal:07d}")
               for stan in range(1, 300) for terminal in range(3) for mti in ("0200", "0400")]
    one = _identity_engine()
    alone = {(m.mti, m[11], m[41]): one.decide(m, connection=1, elapsed=0.0) for m in traffic}
    # two instances sharing the same traffic in another order, each seeing a different part of it
    shuffled = list(traffic)
    random.Random(5).shuffle(shuffled)
    instances = [_identity_engine(), _identity_engine()]
    for index, item in enumerate(shuffled):
        plan = instances[index % 2].decide(item, connection=index % 13 + 1, elapsed=float(index))
        assert plan == alone[(item.mti, item[11], item[41])]
    hits = sum(bool(plan.rules) for plan in alone.values())
    expected = len(traffic) * (1 - 0.7 * 0.8)
    assert abs(hits - expected) < 5 * (len(traffic) * 0.44 * 0.56) ** 0.5
    other_seed = _identity_engine(seed=8)
    assert [other_seed.decide(m, connection=1, elapsed=0.0) for m in traffic] != list(alone.values())


def test_identity_draws_differ_per_stan_mti_and_terminal_but_not_per_resend():
    fault_engine = FaultEngine(seed=3, identity_draws=True)
    fault_engine.add({"probability": 0.5, "delay_request": {"uniform": [0, 1]}})
    plans = {(stan, mti): fault_engine.decide(message(mti, f11=f"{stan:06d}"), connection=1, elapsed=0.0)
             for stan in range(1, 200) for mti in ("0200", "0201")}
    resent = [fault_engine.decide(message("0200", f11=f"{stan:06d}"), connection=2, elapsed=9.0)
              for stan in range(1, 200)]
    assert resent == [plans[(stan, "0200")] for stan in range(1, 200)]
    assert any(plans[(stan, "0200")] != plans[(stan, "0201")] for stan in range(1, 200))
    assert len({plan.delay_request for plan in plans.values() if plan.rules}) > 50  # values vary per message


def test_stream_draws_stay_the_default():
    assert not FaultEngine(seed=1).identity_draws
    streamed = engine({"probability": 0.5, "duplicate": True}, seed=9)
    assert fired(streamed, [message()] * 200) != []  # one message resent: the stream still varies the draw
    assert 0 < len(fired(engine({"probability": 0.5, "duplicate": True}, seed=9), [message()] * 200)) < 200


def test_probability_applies_after_the_counts():
    fault_engine = engine({"when": {"every": 2}, "probability": 0.5, "duplicate": True}, seed=3)
    positions = fired(fault_engine, [message()] * 2000)
    assert all(position % 2 == 0 for position in positions)
    assert 400 < len(positions) < 600


def test_disabled_rules_are_not_consulted_or_counted():
    fault_engine = engine({"enabled": False, "duplicate": True})
    assert fired(fault_engine, [message()] * 3) == []
    assert fault_engine.counters()["f1"] == {"matched": 0, "fired": 0}


# --- actions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected", "applied"),
    [
        ({"delay_request": "200ms"}, {"delay_request": 0.2}, ("delay_request",)),
        ({"delay_response": "35s"}, {"delay_response": 35.0}, ("delay_response",)),
        ({"drop_request": True}, {"drop_request": True}, ("drop_request",)),
        ({"drop_response": True}, {"drop_response": True}, ("drop_response",)),
        ({"close": "before"}, {"close_before": True}, ("close_before",)),
        ({"close": "after"}, {"close_after": True}, ("close_after",)),
        ({"reset": "before"}, {"reset_before": True}, ("reset_before",)),
        ({"reset": "after"}, {"reset_after": True}, ("reset_after",)),
        ({"duplicate": True}, {"duplicate": True}, ("duplicate",)),
        ({"slice": {"bytes": 8, "pause": "5ms"}}, {"slice": (8, 0.005)}, ("slice",)),
        ({"bandwidth": 1200}, {"bandwidth": 1200}, ("bandwidth",)),
        ({"respond": "91"}, {"respond": "91"}, ("respond",)),
    ],
)
def test_each_action_sets_its_decision_field(table, expected, applied):
    decision = engine(table).decide(message(), connection=1, elapsed=0)
    assert decision.rules == ("f1",)
    for name, value in expected.items():
        assert getattr(decision, name) == value
    assert decision == FaultDecision(rules=("f1",), **expected)  # and nothing else
    assert decision.actions_applied() == applied
    assert not decision.is_clean


def test_garbage_is_that_many_random_bytes():
    decisions = [engine({"garbage": 40}, seed=seed).decide(message(), connection=1, elapsed=0) for seed in (1, 2)]
    assert [len(decision.garbage) for decision in decisions] == [40, 40]
    assert decisions[0].garbage != decisions[1].garbage
    assert decisions[0].actions_applied() == ("garbage",)


def test_truncate_keeps_a_short_prefix_of_the_body():
    cuts = {
        engine({"truncate": True}, seed=seed).decide(message(), connection=1, elapsed=0).truncate_at
        for seed in range(200)
    }
    assert cuts <= set(range(TRUNCATE_KEEP_MAX))
    assert len(cuts) > 20
    decision = engine({"truncate": True}).decide(message(), connection=1, elapsed=0)
    assert decision.actions_applied() == ("truncate",)


def test_wrong_length_is_off_by_a_nonzero_amount_either_way():
    deltas = {
        engine({"wrong_length": True}, seed=seed).decide(message(), connection=1, elapsed=0).length_delta
        for seed in range(300)
    }
    assert 0 not in deltas
    assert all(abs(delta) <= LENGTH_DELTA_MAX for delta in deltas)
    assert min(deltas) < 0 < max(deltas)


def test_corrupt_mac_is_a_nonzero_eight_byte_mask():
    for seed in range(50):
        mask = engine({"corrupt_mac": True}, seed=seed).decide(message(), connection=1, elapsed=0).corrupt_mac
        assert len(mask) == 8
        assert any(mask)


def test_wrong_echo_gives_other_values_of_the_same_shape():
    request = message(f4="000000001000", f11="000123", f41="T0000001")
    decision = engine({"wrong_echo": ["stan", "amount", "terminal"]}).decide(request, connection=1, elapsed=0)
    echo = dict(decision.wrong_echo)
    assert set(echo) == {4, 11, 41}
    for number in (4, 11, 41):
        assert echo[number] != request.fields[number]
        assert len(echo[number]) == len(request.fields[number])
    assert echo[4].isdigit() and echo[11].isdigit()
    assert decision.actions_applied() == ("wrong_echo",)


def test_wrong_echo_still_has_values_without_a_request():
    decision = engine({"wrong_echo": ["stan", "amount", "terminal"]}).decide(None, connection=1, elapsed=0)
    echo = dict(decision.wrong_echo)
    assert len(echo[11]) == 6 and echo[11] != "000000"
    assert len(echo[4]) == 12 and len(echo[41]) == 8


@settings(max_examples=250, deadline=None)
@given(
    stan=st.integers(min_value=1, max_value=999_999).map(lambda n: f"{n:06d}"),
    amount=st.integers(min_value=0, max_value=10**12 - 1).map(lambda n: f"{n:012d}"),
    terminal=st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ ", min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_wrong_echo_values_always_differ(stan, amount, terminal, seed):
    request = message(f4=amount, f11=stan, f41=terminal)
    decision = engine({"wrong_echo": ["stan", "amount", "terminal"]}, seed=seed).decide(
        request, connection=1, elapsed=0
    )
    assert decision.wrong_echo[11] != stan and decision.wrong_echo[11] != "000000"
    assert decision.wrong_echo[4] != amount and len(decision.wrong_echo[4]) == 12
    assert decision.wrong_echo[41] != terminal and len(decision.wrong_echo[41]) == len(terminal)


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ({}, "", "has no action"),
        ({"drop_request": "yes"}, "drop_request", "must be true or false"),
        ({"close": True}, "close", 'must be "before" or "after"'),
        ({"reset": "during"}, "reset", 'must be "before" or "after"'),
        ({"garbage": 0}, "garbage", f"1..{GARBAGE_MAX}"),
        ({"garbage": GARBAGE_MAX + 1}, "garbage", f"1..{GARBAGE_MAX}"),
        ({"wrong_echo": ["stan", "pan"]}, "wrong_echo[2]", "must be one of stan, amount, terminal"),
        ({"wrong_echo": ["stan", "stan"]}, "wrong_echo[2]", "given twice"),
        ({"wrong_echo": 4}, "wrong_echo", "must be a list"),
        ({"slice": 8}, "slice", "must be a table"),
        ({"slice": {"bytes": 0, "pause": "1ms"}}, "slice.bytes", "integer >= 1"),
        ({"slice": {"bytes": 8}}, "slice.pause", "missing"),
        ({"bandwidth": 0}, "bandwidth", ">= 1"),
        ({"respond": "9"}, "respond", "2-character response code"),
        ({"respond": 91}, "respond", "2-character response code"),
        ({"probability": 1.5, "duplicate": True}, "probability", "from 0 to 1"),
        ({"probability": "often", "duplicate": True}, "probability", "from 0 to 1"),
        ({"enabled": "no", "duplicate": True}, "enabled", "true or false"),
        ({"id": "has space", "duplicate": True}, "id", "letters, digits"),
        ({"id": "maintenance", "duplicate": True}, "id", "reserved"),
        ({"name": " ", "duplicate": True}, "name", "non-blank"),
        ({"when": {"nth": 0}, "duplicate": True}, "when.nth", "integer >= 1"),
        ({"when": {"every": 1.5}, "duplicate": True}, "when.every", "integer >= 1"),
        ({"when": {"connection": [1, 0]}, "duplicate": True}, "when.connection[2]", "connection number >= 1"),
        ({"when": {"connection": "first"}, "duplicate": True}, "when.connection", "list of connection numbers"),
        ({"when": {"after": "soon"}, "duplicate": True}, "when.after", "must be a duration"),
        ({"when": {"mti": "200"}, "duplicate": True}, "when.mti", "4 digits"),
        ({"when": {"colour": "red"}, "duplicate": True}, "when.colour", "unknown key"),
        ({"when": "0200", "duplicate": True}, "when", "must be a table"),
        ({"drop": True}, "drop", "unknown key"),
        ({"every": 3, "duplicate": True}, "every", "belongs in `when`, e.g. when = { every = ... }"),
        ({"mti": "0200", "duplicate": True}, "mti", "belongs in `when`"),
        # actions that could never take effect together
        ({"drop_request": True, "close": "after"}, "close", "cannot be combined with drop_request"),
        ({"close": "before", "reset": "before"}, "reset", "cannot be combined with close"),
        ({"drop_request": True, "respond": "91"}, "respond", "drop_request ends the exchange before processing"),
        ({"reset": "before", "delay_response": "1s"}, "delay_response", "before processing"),
        ({"drop_response": True, "duplicate": True}, "duplicate", "no response is sent"),
        ({"close": "after", "wrong_echo": ["stan"]}, "wrong_echo", "no response is sent"),
        ({"garbage": 10, "corrupt_mac": True}, "corrupt_mac", "garbage replaces the response"),
        ({"truncate": True, "duplicate": True}, "duplicate", "followed by a close"),
    ],
)
def test_bad_rules_name_key_and_reason(table, key, reason):
    error = error_of(table)
    assert error.key == key, error
    assert reason in error.reason
    assert isinstance(error, ValueError)


def test_useful_combinations_in_one_rule_are_accepted():
    rule = rule_from_table(
        {"delay_request": "1s", "delay_response": "2s", "respond": "96", "drop_response": True}, default_id="x"
    )
    assert rule.actions.names() == ("delay_request", "delay_response", "drop_response", "respond")
    decision = FaultEngine([rule], seed=1).decide(message(), connection=1, elapsed=0)
    assert decision.actions_applied() == ("delay_request", "respond", "delay_response", "drop_response")


def test_rules_can_be_built_in_code_with_the_same_checks():
    rule = FaultRule("lost", match=Match(mti=("0200",)), every=2, actions=Actions(drop_response=True))
    assert rule.name == "lost"
    assert rule == rule_from_table(
        {"id": "lost", "when": {"mti": "0200", "every": 2}, "drop_response": True}, default_id="f1"
    )
    with pytest.raises(FaultRuleError) as caught:
        FaultRule("x", actions=Actions(drop_request=True, duplicate=True))
    assert caught.value.key == "duplicate"
    with pytest.raises(FaultRuleError) as caught:
        FaultRule("x", probability=2, actions=Actions(duplicate=True))
    assert caught.value.key == "probability"


# --- combining rules ----------------------------------------------------------------------------------


def test_delays_add_flags_or_and_the_first_rule_wins_single_values():
    fault_engine = engine(
        {
            "id": "a",
            "delay_request": "100ms",
            "respond": "91",
            "slice": {"bytes": 4, "pause": "1ms"},
            "wrong_echo": ["stan"],
        },
        {
            "id": "b",
            "delay_request": "50ms",
            "delay_response": "1s",
            "respond": "96",
            "bandwidth": 100,
            "duplicate": True,
            "wrong_echo": ["stan", "amount"],
            "slice": {"bytes": 9, "pause": "9ms"},
        },
    )
    decision = fault_engine.decide(message(), connection=1, elapsed=0)
    alone = engine({"id": "a", "wrong_echo": ["stan"]}).decide(message(), connection=1, elapsed=0)
    assert decision.rules == ("a", "b")
    assert decision.delay_request == pytest.approx(0.15)
    assert decision.delay_response == 1.0
    assert (decision.respond, decision.slice, decision.bandwidth, decision.duplicate) == ("91", (4, 0.001), 100, True)
    assert set(decision.wrong_echo) == {4, 11}
    assert decision.wrong_echo[11] == alone.wrong_echo[11]  # rule a's value: each rule has its own generator


def test_the_strongest_ending_before_processing_wins_and_removes_everything_later():
    fault_engine = engine(
        {"drop_request": True, "delay_request": "1s"},
        {"close": "before"},
        {"reset": "before"},
        {"delay_response": "2s", "duplicate": True, "respond": "91"},
    )
    decision = fault_engine.decide(message(), connection=1, elapsed=0)
    assert decision == FaultDecision(rules=("f1", "f2", "f3", "f4"), delay_request=1.0, reset_before=True)
    assert decision.actions_applied() == ("delay_request", "reset_before")


def test_an_ending_after_processing_keeps_respond_and_delays_but_sends_nothing():
    fault_engine = engine(
        {"drop_response": True},
        {"close": "after"},
        {"respond": "96", "delay_response": "1s", "duplicate": True, "corrupt_mac": True},
    )
    decision = fault_engine.decide(message(), connection=1, elapsed=0)
    assert decision == FaultDecision(rules=("f1", "f2", "f3"), delay_response=1.0, respond="96", close_after=True)


def test_garbage_replaces_echo_and_mac_changes_and_truncation_cancels_duplicates():
    decision = engine(
        {"wrong_echo": ["stan"], "corrupt_mac": True, "duplicate": True}, {"garbage": 5}, {"truncate": True}
    ).decide(message(), connection=1, elapsed=0)
    assert decision.actions_applied() == ("garbage", "truncate")
    assert not decision.wrong_echo and decision.corrupt_mac is None and not decision.duplicate


def test_empty_decision_is_clean():
    assert EMPTY_DECISION.is_clean
    assert EMPTY_DECISION.actions_applied() == ()
    assert engine().decide(message(), connection=1, elapsed=0) is EMPTY_DECISION
    assert FaultDecision(rules=("x",), delay_request=0.0).is_clean  # a 0 s delay does nothing


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


# --- determinism --------------------------------------------------------------------------------------

MIXED_RULES = (
    {"id": "jitter", "delay_response": {"lognormal": {"median": "40ms", "sigma": 0.6}, "cap": "1s"}},
    {"id": "lost", "when": {"mti": ["0200"]}, "probability": 0.2, "drop_response": True},
    {"id": "echo", "probability": 0.3, "wrong_echo": ["stan", "amount"], "corrupt_mac": True},
    {"id": "junk", "probability": 0.1, "garbage": 16, "wrong_length": True},
    {"id": "cut", "when": {"every": 4}, "probability": 0.5, "truncate": True},
    {"id": "rst", "when": {"connection": [2]}, "probability": 0.1, "reset": "before"},
)

frames = st.lists(
    st.tuples(
        st.one_of(
            st.none(),
            st.builds(
                message,
                st.sampled_from(["0200", "0800", "0400", "0100"]),
                f11=st.integers(1, 999_999).map(lambda n: f"{n:06d}"),
            ),
        ),
        st.integers(min_value=1, max_value=3),
    ),
    min_size=1,
    max_size=60,
)


def run(seed: int | None, traffic: list[tuple[Message | None, int]], rules=MIXED_RULES) -> list[FaultDecision]:
    fault_engine = FaultEngine(seed=seed)
    for table in rules:
        fault_engine.add(table)
    return [
        fault_engine.decide(frame, connection=connection, elapsed=index * 0.5)
        for index, (frame, connection) in enumerate(traffic)
    ]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**40), traffic=frames)
def test_same_seed_and_same_messages_give_the_same_decisions(seed, traffic):
    first = run(seed, traffic)
    assert run(seed, traffic) == first
    for decision in first:  # and every decision is executable
        endings = [
            decision.reset_before,
            decision.close_before,
            decision.drop_request,
            decision.reset_after,
            decision.close_after,
            decision.drop_response,
        ]
        assert sum(endings) <= 1
        assert decision.delay_request >= 0 and decision.delay_response >= 0


def test_a_different_seed_gives_different_decisions():
    traffic = [(message(f11=f"{n:06d}"), n % 3 + 1) for n in range(1, 200)]
    assert run(1, traffic) != run(2, traffic)
    assert run(1, traffic) == run(1, traffic)


def test_without_a_seed_one_is_drawn_and_exposed_for_replay():
    traffic = [(message(), 1)] * 100
    fault_engine = FaultEngine()
    assert isinstance(fault_engine.seed, int)
    for table in MIXED_RULES:
        fault_engine.add(table)
    original = [fault_engine.decide(frame, connection=c, elapsed=i * 0.5) for i, (frame, c) in enumerate(traffic)]
    assert run(fault_engine.seed, traffic) == original
    assert len({FaultEngine().seed for _ in range(5)}) > 1  # drawn, not a constant


def test_a_rule_decides_the_same_whatever_other_rules_and_traffic_exist():
    """One generator per rule: adding a rule, or traffic it alone matches, does not shift the others."""
    purchases = [message(f11=f"{n:06d}") for n in range(1, 300)]
    alone = engine({"id": "lost", "when": {"mti": "0200"}, "probability": 0.3, "drop_response": True}, seed=4)
    crowded = engine(
        {"id": "noise", "probability": 0.5, "delay_request": {"uniform": ["0s", "1s"]}},
        {"id": "lost", "when": {"mti": "0200"}, "probability": 0.3, "drop_response": True},
        seed=4,
    )
    lost_alone = [alone.decide(m, connection=1, elapsed=0).drop_response for m in purchases]
    lost_crowded = []
    for m in purchases:
        crowded.decide(message("0800"), connection=2, elapsed=0)  # traffic only "noise" matches
        lost_crowded.append(crowded.decide(m, connection=1, elapsed=0).drop_response)
    assert lost_crowded == lost_alone


def test_changing_a_rules_actions_does_not_change_which_messages_it_fires_on():
    traffic = [message()] * 300
    plain = engine({"id": "r", "probability": 0.3, "duplicate": True}, seed=8)
    changed = engine({"id": "r", "probability": 0.3, "duplicate": True}, seed=8)
    before = [plain.decide(m, connection=1, elapsed=0).rules for m in traffic[:100]]
    assert [changed.decide(m, connection=1, elapsed=0).rules for m in traffic[:100]] == before
    changed.patch("r", {"duplicate": None, "garbage": 30, "delay_response": {"uniform": ["1s", "2s"]}})
    rest_plain = [plain.decide(m, connection=1, elapsed=0).rules for m in traffic[100:]]
    assert [changed.decide(m, connection=1, elapsed=0).rules for m in traffic[100:]] == rest_plain


def test_the_seed_stream_is_stable_across_releases():
    """The documented seeding (``random.Random(f"{seed}/{rule_id}")``, one draw per match, values from
    ``f"{seed}/{rule_id}/values"``): a recorded run must replay after an upgrade, so a change here is a
    breaking change."""
    fault_engine = engine({"id": "p", "probability": 0.5, "garbage": 4}, seed=2024)
    chance, values = random.Random("2024/p"), random.Random("2024/p/values")
    expected = [(position, values.randbytes(4)) for position in range(1, 41) if chance.random() < 0.5]
    decisions = [fault_engine.decide(message(), connection=1, elapsed=0) for _ in range(40)]
    assert [(position, d.garbage) for position, d in enumerate(decisions, 1) if d.rules] == expected


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


def luhn_valid(pan: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(pan)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


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
