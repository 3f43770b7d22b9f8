"""What the scenario tests share: TOML text from an indented literal, the error a bad file gives, a
request to match rules against, and the Luhn check of test cards."""

from __future__ import annotations

import textwrap

import pytest

from switch.codec.message import Message
from switch.scenario import (
    ScenarioError,
    parse_scenario,
)


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def error_of(text: str, path: str = "x.toml") -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(toml(text), path)
    return caught.value


def request(
    pan: str | None = "4200000000000000", amount: str = "000000001000", mti: str = "0200", **extra: str
) -> Message:
    fields = {3: "000000", 4: amount, 11: "000001", 41: "T0000001", 42: "MERCHANT0000001"}
    if pan is not None:
        fields[2] = pan
    fields.update({int(k.removeprefix("f")): v for k, v in extra.items()})
    return Message(mti, fields)


def luhn_valid(pan: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(pan)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0
