"""Fault rule tables (a scenario's ``[[fault]]`` or the admin API's JSON) into ``FaultRule`` values,
with errors naming the key (and, from a file, its line)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from switch.faults.rule import (
    ACTION_KEYS,
    DELAY_KINDS,
    HOLD_KEYS,
    RULE_KEYS,
    WHEN_KEYS,
    Actions,
    Delay,
    FaultRule,
    FaultRuleError,
    Hold,
    _shown,
)
from switch.scenario import (
    MATCH_KEYS,
    KeyPath,
    Scenario,
    ScenarioError,
    ScenarioSource,
    parse_duration,
    parse_match,
)

# ---------------------------------------------------------------------------------------------------
# Parsing rule tables (TOML or JSON)


def _check_keys(table: Mapping[str, Any], key: KeyPath, allowed: Sequence[str], src: ScenarioSource) -> None:
    unknown = [name for name in table if name not in allowed]
    if unknown:
        first = min(unknown, key=lambda name: src.line_of((*key, name)) or 0)
        raise src.error((*key, first), f"unknown key; allowed: {', '.join(allowed)}")


def _duration(value: Any, key: KeyPath, src: ScenarioSource) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise src.error(key, str(exc)) from None


def _parse_delay(value: Any, key: KeyPath, src: ScenarioSource) -> Delay:
    """``"200ms"`` / ``0.2`` / ``{ fixed | uniform | normal | lognormal = ..., cap = "2s" }``."""
    if not isinstance(value, Mapping):
        return Delay.fixed(_duration(value, key, src))
    _check_keys(value, key, (*DELAY_KINDS, "cap"), src)
    kinds = [name for name in DELAY_KINDS if name in value]
    if len(kinds) != 1:
        raise src.error(
            key,
            f"give exactly one of {', '.join(DELAY_KINDS)} (and optionally cap), "
            f'e.g. {{ uniform = ["100ms", "300ms"] }}; got {_shown(dict(value))}',
        )
    kind = kinds[0]
    raw, at = value[kind], (*key, kind)
    if kind == "fixed":
        params: tuple[float, ...] = (_duration(raw, at, src),)
    elif kind == "uniform":
        if not isinstance(raw, list) or len(raw) != 2:
            raise src.error(at, f'must be [low, high], e.g. ["100ms", "300ms"], got {_shown(raw)}')
        params = (_duration(raw[0], (*at, 0), src), _duration(raw[1], (*at, 1), src))
    else:
        names = ("mean", "stddev") if kind == "normal" else ("median", "sigma")
        example = '{ mean = "200ms", stddev = "20ms" }' if kind == "normal" else '{ median = "150ms", sigma = 0.5 }'
        if not isinstance(raw, Mapping):
            raise src.error(at, f"must be a table such as {example}, got {_shown(raw)}")
        _check_keys(raw, at, names, src)
        for name in names:
            if name not in raw:
                raise src.error((*at, name), f"missing (write {kind} = {example})")
        params = (
            _duration(raw[names[0]], (*at, names[0]), src),
            _duration(raw[names[1]], (*at, names[1]), src) if kind == "normal" else raw["sigma"],
        )
    cap = _duration(value["cap"], (*key, "cap"), src) if "cap" in value else None
    try:
        return Delay(kind, params, cap)
    except FaultRuleError as exc:
        raise src.error((*key, *exc.path), exc.reason) from None


def _parse_hold(value: Any, key: KeyPath, src: ScenarioSource) -> Hold | None:
    """``true`` (held until released), ``false`` (no hold) or ``{ timeout = "30s", then = "decline", code = "05" }``."""
    if isinstance(value, bool):
        return Hold() if value else None
    if not isinstance(value, Mapping):
        raise src.error(key, 'must be true or a table { timeout = "30s", then = "approve"|"decline"|"drop", '
                             f'code = "05" }}, got {_shown(value)}')
    _check_keys(value, key, HOLD_KEYS, src)
    arguments: dict[str, Any] = {name: value[name] for name in ("then", "code") if name in value}
    if "timeout" in value:
        arguments["timeout"] = _duration(value["timeout"], (*key, "timeout"), src)
    try:
        return Hold(**arguments)
    except FaultRuleError as exc:
        raise src.error((*key[:-1], *exc.path), exc.reason) from None


def _parse_actions(table: Mapping[str, Any], key: KeyPath, src: ScenarioSource) -> Actions:
    arguments: dict[str, Any] = {}
    for name in ACTION_KEYS:
        if name not in table:
            continue
        value = table[name]
        if name in ("delay_request", "delay_response"):
            value = _parse_delay(value, (*key, name), src)
        elif name == "hold":
            value = _parse_hold(value, (*key, name), src)
        elif name == "slice":
            at = (*key, name)
            if not isinstance(value, Mapping):
                raise src.error(at, f'must be a table {{ bytes = 8, pause = "20ms" }}, got {_shown(value)}')
            _check_keys(value, at, ("bytes", "pause"), src)
            for part in ("bytes", "pause"):
                if part not in value:
                    raise src.error((*at, part), 'missing (write slice = { bytes = 8, pause = "20ms" })')
            value = (value["bytes"], _duration(value["pause"], (*at, "pause"), src))
        arguments[name] = value
    try:
        return Actions(**arguments)
    except FaultRuleError as exc:
        raise src.error((*key, *exc.path), exc.reason) from None


def _parse_rule(table: Any, key: KeyPath, src: ScenarioSource, default_id: str) -> FaultRule:
    """A ``FaultRule`` from one table; errors are ``ScenarioError`` at ``key`` + the inner key."""
    if not isinstance(table, Mapping):
        keys = ", ".join(RULE_KEYS[:5])
        raise src.error(key,
                        f"must be a table (a JSON object) of fault rule keys ({keys}, actions), got {_shown(table)}")
    misplaced = [name for name in table if name in (*MATCH_KEYS, *WHEN_KEYS) and name != "fields"]
    if misplaced:
        name = misplaced[0]
        raise src.error((*key, name), f"belongs in `when`, e.g. when = {{ {name} = ... }}")
    _check_keys(table, key, RULE_KEYS, src)
    rule_id = table.get("id", default_id)
    if "name" in table and (not isinstance(table["name"], str) or not table["name"].strip()):
        raise src.error((*key, "name"), f"must be a non-blank string, got {_shown(table['name'])}")
    when = table.get("when", {})
    match = parse_match(when, (*key, "when"), src, allow=WHEN_KEYS)
    extras: dict[str, Any] = {name: when[name] for name in ("connection", "nth", "every", "first") if name in when}
    for name in ("after", "before"):
        if name in when:
            extras[name] = _duration(when[name], (*key, "when", name), src)
    actions = _parse_actions(table, key, src)
    try:
        return FaultRule(
            id=rule_id,
            name=table.get("name", ""),
            match=match,
            probability=table.get("probability", 1.0),
            actions=actions,
            enabled=table.get("enabled", True),
            **extras,
        )
    except FaultRuleError as exc:
        raise src.error((*key, *exc.path), exc.reason) from None


def rule_from_table(table: Any, *, default_id: str) -> FaultRule:
    """A rule from a table shaped like ``[[fault]]`` (or its JSON twin); ``default_id`` if it has no id.

    Raises ``FaultRuleError`` naming the key, for the admin API to answer 422 with.
    """
    try:
        return _parse_rule(table, (), ScenarioSource(None), default_id)
    except ScenarioError as exc:
        raise FaultRuleError(exc.key or "", exc.reason) from None


def parse_fault_rules(scenario: Scenario) -> tuple[FaultRule, ...]:
    """The scenario's ``[[fault]]`` tables as rules, ids defaulting to ``f1``, ``f2``... by position.

    Raises ``ScenarioError`` naming the file, the line and the key (``fault[2].when.nth``).
    """
    rules: list[FaultRule] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(scenario.faults):
        key: KeyPath = ("fault", index)
        rule = _parse_rule(table, key, scenario.source, f"f{index + 1}")
        if rule.id in seen:
            hint = "" if "id" in table else " (a rule without an id is named f<position>; give this one an id)"
            raise scenario.error(
                (*key, "id") if "id" in table else key,
                f"id {_shown(rule.id)} is already used by fault[{seen[rule.id] + 1}]{hint}",
            )
        seen[rule.id] = index
        rules.append(rule)
    return tuple(rules)


