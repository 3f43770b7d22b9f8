"""Counted fault rules counted once for every instance (``serve --multi-instance`` / ``--workers``).

``SharedFaultEngine`` is a ``FaultEngine`` with identity draws whose counted rules (``when.nth``,
``every``, ``first``) take their match count from the shared database (``switch.fault_counters``)
instead of this process's memory, so ``nth = 3`` fires on the 3rd match *any* instance sees, once.
Rules without a count never touch the database: they fire on their identity draw alone.

**Scope.** Each rule's count lives under a scope fixed when the rule's state is created (start,
scenario load, ``PUT /seed``, reset, ``POST /faults``), a BLAKE2b digest of:

* the *epoch*: one per ``serve --workers`` run (the supervisor makes it and gives it to every worker,
  restarted ones too); ``""`` for separately started ``--multi-instance`` processes;
* the seed;
* the *generation*: how many plan changes created rule states on this engine (start = 1; each load,
  seed change, reset and add adds one; patch and delete do not). Instances given the same changes in
  the same order (the supervisor's fan-out and replay do exactly that) agree on it;
* the rule's canonical definition (``to_dict`` as sorted JSON) at that moment.

So instances running the same plan share counts, and a reloaded or replaced plan starts afresh for
every instance that is given the change; a ``PATCH`` keeps its rule's count (as in one process).
Separately started instances cannot tell a restart from a colleague, so their counts (epoch ``""``)
carry over a restart with the same scenario, seed and changes: give a new run a new ``--seed`` (or
empty the table while they are stopped) to start counting afresh.

**Counters view.** ``counters()`` keeps ``matched`` / ``fired`` for *this* instance and adds
``global_matched`` for counted rules: the shared count as this instance last saw it. Once that count
has passed ``nth`` (or ``first``) the rule can never fire again under its scope, so the instance stops
asking the database for it (``global_matched`` then stays where it passed).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from switch.codec.message import Message
from switch.fault_counters import FaultCounters
from switch.faults.engine import EMPTY_DECISION, FaultDecision, FaultEngine, _RuleState, combine, identity_draw
from switch.faults.parse import parse_fault_rules
from switch.faults.rule import FaultRule
from switch.scenario import Scenario

__all__ = ["SharedFaultEngine", "is_counted"]


def is_counted(rule: FaultRule) -> bool:
    """Whether the rule looks at its match count (``nth``, ``every`` or ``first``)."""
    return rule.nth is not None or rule.every is not None or rule.first is not None


def _spent(rule: FaultRule, count: int) -> bool:
    """No match after the ``count``-th can pass the rule's count any more (``nth`` / ``first`` passed)."""
    limit = rule.nth if rule.nth is not None else rule.first
    return limit is not None and count >= limit


@dataclass
class _SharedRuleState(_RuleState):
    scope: str = ""  # set when the state is installed
    global_matched: int = 0  # the shared count as this instance last saw it


class SharedFaultEngine(FaultEngine):
    """A fault engine whose counted rules count in ``counters`` (see the module docstring)."""

    def __init__(self, rules: Sequence[FaultRule] = (), *, seed: int | None = None, maintenance: str = "off",
                 counters: FaultCounters | None, epoch: str = "") -> None:
        self.epoch = epoch
        self.generation = 0
        self.shared = counters
        super().__init__(rules, seed=seed, maintenance=maintenance, identity_draws=True)

    @classmethod
    def for_scenario(cls, scenario: Scenario, *, seed: int | None = None, counters: FaultCounters | None,
                     epoch: str = "") -> SharedFaultEngine:
        """The scenario's faults; ``seed`` (the command line's) overrides the scenario's."""
        return cls(parse_fault_rules(scenario), seed=seed if seed is not None else scenario.seed,
                   counters=counters, epoch=epoch)

    def _new_state(self, rule_id: str) -> _RuleState:
        base = super()._new_state(rule_id)
        return _SharedRuleState(base.chance, base.values)

    def _scope(self, rule: FaultRule) -> str:
        definition = json.dumps(rule.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        text = f"{self.epoch}\x00{self.seed}\x00{self.generation}\x00{definition}"
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def _install(self, rules: tuple[FaultRule, ...], states: dict[str, _RuleState]) -> None:
        fresh = [rule for rule in rules if self._state(states, rule.id).scope == ""]
        if fresh:
            self.generation += 1
            for rule in fresh:
                self._state(states, rule.id).scope = self._scope(rule)
        super()._install(rules, states)

    @staticmethod
    def _state(states: dict[str, _RuleState], rule_id: str) -> _SharedRuleState:
        state = states[rule_id]
        assert isinstance(state, _SharedRuleState)
        return state

    def scope_of(self, rule_id: str) -> str:
        """The scope the rule counts under now (``KeyError`` for an unknown id)."""
        self.get(rule_id)
        return self._state(self._states, rule_id).scope

    def counters(self) -> dict[str, dict[str, int]]:
        """``FaultEngine.counters`` (this instance's matches and fires) plus ``global_matched`` for
        counted rules: the count all instances share, as this one last saw it."""
        result = super().counters()
        for rule in self.rules:
            if is_counted(rule):
                result[rule.id]["global_matched"] = self._state(self._states, rule.id).global_matched
        return result

    async def decide_shared(self, message: Message | None, *, connection: int, elapsed: float) -> FaultDecision:
        """``decide``, counted rules counted in the database: awaits it only when one of them matched."""
        counters = self.shared
        if counters is None or self.maintenance != "off" or not self._active:
            return self.decide(message, connection=connection, elapsed=elapsed)
        fired: list[tuple[int, FaultRule, random.Random]] = []
        waiting: list[tuple[int, FaultRule, _SharedRuleState, float, random.Random]] = []
        for position, rule in enumerate(self._active):
            if not rule.applies_to(message, connection, elapsed):
                continue
            state = self._state(self._states, rule.id)
            state.matched += 1
            if message is not None:
                chance, values = identity_draw(self.seed, rule.id, message)
            else:
                chance, values = state.chance.random(), state.values
            if not is_counted(rule):
                if chance < rule.probability:
                    state.fired += 1
                    fired.append((position, rule, values))
            elif not _spent(rule, state.global_matched):
                waiting.append((position, rule, state, chance, values))
        if waiting:
            counts = await counters.count([(state.scope, rule.id) for _, rule, state, _, _ in waiting])
            for position, rule, state, chance, values in waiting:
                count = counts.get(rule.id) if counts is not None else None
                if count is None:  # the database did not count it (logged): not counted, does not fire
                    continue
                state.global_matched = max(state.global_matched, count)
                if rule.counted_in(count) and chance < rule.probability:
                    state.fired += 1
                    fired.append((position, rule, values))
            fired.sort(key=lambda item: item[0])
        if not fired:
            return EMPTY_DECISION
        return combine([(rule, values) for _, rule, values in fired], message)
