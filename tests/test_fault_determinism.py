"""Fault decisions are replayable (pure): the same seed and messages give the same decisions, a rule's
draws do not depend on other rules or traffic, and the seed stream is stable across releases."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.message import Message
from switch.faults import (
    FaultDecision,
    FaultEngine,
)
from tests.fault_engines import engine, message

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
