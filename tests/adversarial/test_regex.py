"""Issue 12 item 5: a ``re:`` criterion can never stall the event loop.

``(a+)+$`` against 40 ``a`` and a ``!`` takes a backtracking engine about 2**40 steps; matched in
linear time (RE2) it takes microseconds. The bounds below are generous for a loaded machine and
still a million times shorter than the backtracking time.
"""

from __future__ import annotations

import time

import httpx
import pytest

from switch.admin import create_admin_app
from switch.codec import Message
from switch.faults import FaultEngine, FaultRuleError, rule_from_table
from switch.rules import Match, ResponseRule, ResponseRules, RuleError, compile_linear
from switch.scenario import ScenarioError, parse_scenario
from tests.adversarial.test_admin_inputs import make_runtime

EVIL = "a" * 40 + "!"
CATASTROPHIC = ["(a+)+$", "(a|a)+$", "(a*)*$", "(a|aa)+$", "(.*a){20}$"]
BOUND = 0.5  # seconds for all the matches of one test together


def request(field_48: str) -> Message:
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: "000000001000", 11: "000001",
                            41: "TERM0001", 48: field_48})


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_response_rule_with_a_catastrophic_regex_answers_at_once(pattern: str) -> None:
    rules = ResponseRules([ResponseRule("evil", Match(fields={48: f"re:{pattern}"}), "05")])
    started = time.perf_counter()
    for _ in range(100):
        assert rules.first_match(request(EVIL)) is None
    assert time.perf_counter() - started < BOUND
    assert rules.first_match(request("a" * 40)) is not None  # and it still matches what it should


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_fault_rule_with_a_catastrophic_regex_decides_at_once(pattern: str) -> None:
    engine = FaultEngine(seed=3)
    engine.add({"id": "evil", "when": {"fields": {"48": f"re:{pattern}"}}, "duplicate": True})
    started = time.perf_counter()
    for _ in range(100):
        assert engine.decide(request(EVIL), connection=1, elapsed=0.0).rules == ()
    assert time.perf_counter() - started < BOUND
    assert engine.decide(request("a" * 40), connection=1, elapsed=0.0).rules == ("evil",)


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)a", r"(?<!b)a", r"(?!x)y"])
def test_patterns_that_need_backtracking_are_refused_with_a_reason(pattern: str) -> None:
    with pytest.raises(ValueError, match="linear time"):
        compile_linear(pattern)
    with pytest.raises(RuleError, match=r"fields\.48"):
        Match(fields={48: f"re:{pattern}"})
    with pytest.raises(FaultRuleError) as caught:
        rule_from_table({"when": {"fields": {"48": f"re:{pattern}"}}, "duplicate": True}, default_id="f1")
    assert caught.value.key == "when.fields.48"
    text = f'[[response]]\nwhen = {{ fields = {{ 48 = "re:{pattern}" }} }}\nrespond = "05"\n'.replace("\\", "\\\\")
    with pytest.raises(ScenarioError) as scenario_error:
        parse_scenario(text, "evil.toml")
    assert scenario_error.value.line == 2


async def test_the_admin_api_answers_while_a_catastrophic_rule_is_installed() -> None:
    runtime = make_runtime()
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await http.post("/api/v1/faults", json={"id": "evil", "when": {"fields": {"48": "re:(a+)+$"}},
                                                           "respond": "96"})
        assert response.status_code == 201, response.text
        refused = await http.post("/api/v1/faults", json={"id": "back", "when": {"fields": {"48": r"re:(a)\1"}},
                                                          "respond": "96"})
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["body", "when", "fields", "48"]
    started = time.perf_counter()
    decision = runtime.faults.decide(request(EVIL), connection=1, elapsed=0.0)
    assert time.perf_counter() - started < BOUND
    assert decision.respond is None


def test_usual_patterns_keep_working() -> None:
    match = Match(fields={42: "re:SHOP0[0-9]+", 60: r"re:.{8}00[134]", 48: r"re:\d{3}-\w+"})
    ok = Message("0200", {42: "SHOP0123", 60: "12345678001", 48: "123-abc"})
    assert match.matches(ok)
    assert not match.matches(Message("0200", {42: "SHOP0123x", 60: "12345678001", 48: "123-abc"}))
