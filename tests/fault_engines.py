"""What the pure fault-engine tests share: a message, an engine from rule tables, which frames a rule
fired on, the error a bad table gives, and the shipped failure scenarios' names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from switch.codec.message import Message
from switch.faults import (
    FaultEngine,
    FaultRuleError,
    rule_from_table,
)

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
