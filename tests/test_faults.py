"""The fault engine (pure): rule parsing and validation, delays, predicates, counts, probability, every
action's decision fields, and how rules combine."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.faults import (
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
    rule_from_table,
)
from switch.rules import Match
from switch.scenario import parse_duration
from tests.fault_engines import engine, error_of, fired, message

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
