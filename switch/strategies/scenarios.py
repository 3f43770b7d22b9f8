"""Host and terminal scenarios: what a terminal asks (``terminal.policy`` commands over valid cards)
and how the host misbehaves (fault rules the fault engine accepts), drawn together.

Every value is valid by construction — a Luhn-correct card that has not expired, an amount that
fits field 4, a fault rule whose actions can take effect together — so a property test explores
behaviour, not input validation. Feed the commands to ``terminal.api.Terminal.run`` (or a
``TerminalClient``) and the rules to the admin API (``SwitchAdmin.add_fault``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from hypothesis import strategies as st

from switch.codec.composite import luhn_valid
from terminal.policy import BalanceInquiry, Command, Echo, Purchase, Refund, ReverseLast, Settle, SignOn

__all__ = ["Card", "HostScenario", "amounts", "cards", "fault_rules", "host_scenarios", "terminal_commands"]

FINANCIAL_MTIS = ("0100", "0200", "0220", "0400", "0500")


@dataclass(frozen=True)
class Card:
    """A card a careful terminal sends: ``pan`` 12-19 digits with a Luhn check digit, ``expiry`` YYMM."""

    pan: str
    expiry: str


def _with_check_digit(body: str) -> str:
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("a Luhn check digit always exists")  # pragma: no cover


def cards(*, today: date | None = None) -> st.SearchStrategy[Card]:
    """Luhn-valid PANs (12-19 digits, no leading 0) expiring this month or up to 9 years ahead."""
    day = today or date.today()
    bodies = st.tuples(st.sampled_from("3456"), st.text("0123456789", min_size=10, max_size=17)).map("".join)
    this_month = (day.year, day.month)

    def expiry(ahead: tuple[int, int]) -> str:
        years, month = ahead
        year = day.year + years
        if (year, month) < this_month:
            year += 1
        return f"{year % 100:02d}{month:02d}"

    return st.builds(Card, bodies.map(_with_check_digit), st.tuples(st.integers(0, 8), st.integers(1, 12)).map(expiry))


def amounts(*, max_minor: int = 10_000_000) -> st.SearchStrategy[int]:
    """Amounts in minor units a host approves by default: 1..``max_minor`` (fits field 4's 12 digits)."""
    if not 1 <= max_minor < 10**12:
        raise ValueError(f"max_minor must be 1..999999999999, got {max_minor}")
    return st.integers(1, max_minor)


def terminal_commands(*, financial_only: bool = False) -> st.SearchStrategy[Command]:
    """Commands an operator gives: purchase, refund, balance, void of the last sale; unless
    ``financial_only``, also sign-on, echo and settle."""
    purchase = st.builds(lambda card, amount: Purchase(amount, card.pan, card.expiry), cards(), amounts())
    refund = st.builds(lambda card, amount: Refund(amount, card.pan, card.expiry), cards(), amounts())
    balance = cards().map(lambda card: BalanceInquiry(card.pan, card.expiry))
    choices: list[st.SearchStrategy[Command]] = [purchase, refund, balance, st.just(ReverseLast())]
    if not financial_only:
        choices += [st.just(SignOn()), st.just(Echo()), st.just(Settle())]
    return st.one_of(choices)


def _action() -> st.SearchStrategy[dict[str, Any]]:
    """One action, or a delay with one ending: never a combination the engine refuses."""
    delay = st.integers(1, 2000).map(lambda ms: f"{ms}ms")
    ending = st.one_of(
        st.just({"drop_response": True}),
        st.just({"drop_request": True}),
        st.sampled_from(("before", "after")).map(lambda when: {"close": when}),
        st.sampled_from(("91", "96", "05", "51")).map(lambda code: {"respond": code}),
        st.just({"duplicate": True}),
        st.lists(st.sampled_from(("stan", "amount", "terminal")), min_size=1, max_size=3, unique=True)
        .map(lambda fields: {"wrong_echo": fields}),
    )
    return st.one_of(ending, delay.map(lambda d: {"delay_response": d}),
                     st.tuples(delay, st.just({"drop_response": True})).map(lambda t: {"delay_request": t[0], **t[1]}))


def fault_rules(*, mtis: tuple[str, ...] = FINANCIAL_MTIS) -> st.SearchStrategy[dict[str, Any]]:
    """Fault rules as ``[[fault]]`` tables in JSON form (``POST /api/v1/faults`` takes them as they are):
    one or more of ``mtis`` selected, maybe only the first N or every Nth, with a probability."""
    if not mtis:
        raise ValueError("fault_rules needs at least one MTI")
    when = st.fixed_dictionaries(
        {"mti": st.lists(st.sampled_from(mtis), min_size=1, max_size=len(mtis), unique=True)},
        optional={"first": st.integers(1, 5), "every": st.integers(1, 5)},
    )
    ids = st.integers(0, 10**6).map(lambda n: f"rule-{n}")
    probability = st.one_of(st.just(1.0), st.floats(0.0, 1.0, allow_nan=False))
    return st.builds(lambda rule_id, chosen, chance, action: {"id": rule_id, "when": chosen, "probability": chance,
                                                              **action}, ids, when, probability, _action())


@dataclass(frozen=True)
class HostScenario:
    """Fault rules to install (ids unique), then the commands a terminal runs against that host."""

    faults: tuple[dict[str, Any], ...]
    commands: tuple[Command, ...]


def host_scenarios(*, max_faults: int = 3, max_commands: int = 6) -> st.SearchStrategy[HostScenario]:
    """A misbehaving host and a terminal's session against it."""
    rules = st.lists(fault_rules(), max_size=max_faults, unique_by=lambda rule: rule["id"])
    commands = st.lists(terminal_commands(), min_size=1, max_size=max_commands)
    return st.builds(lambda faults, steps: HostScenario(tuple(faults), tuple(steps)), rules, commands)
