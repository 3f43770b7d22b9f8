"""Decisions and the engine: which rules fire on a frame, and what they combine into."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from switch.codec.message import Message
from switch.faults.parse import parse_fault_rules, rule_from_table
from switch.faults.rule import (
    _AMOUNT_LIMIT,
    _GENERATED_ID,
    _RESPONSE_CODE,
    _TERMINAL_CHARACTERS,
    CHECK_VALUE_BYTES,
    LENGTH_DELTA_MAX,
    MAC_BYTES,
    MAINTENANCE_MODES,
    MAINTENANCE_RULE,
    MAX_SEED,
    RULE_KEYS,
    TRUNCATE_KEEP_MAX,
    WRONG_ECHO_FIELDS,
    FaultRule,
    FaultRuleError,
    Hold,
    _is_int,
    _shown,
)
from switch.scenario import (
    Scenario,
)

if TYPE_CHECKING:
    from switch.fault_counters import FaultCounters

# ---------------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one frame, fully sampled. The executor runs it in this order, and the first
    step that ends the exchange ends it (``combine`` already removed whatever could not happen):

    1. wait ``delay_request`` seconds;
    2. ``reset_before`` (RST) / ``close_before`` (FIN) / ``drop_request`` (ignore): stop, unprocessed;
       ``hold``: park the request unprocessed (``switch.held``); its release, not this plan, answers it;
    3. ``respond``: build an answer with that code from the request, without the host; else process
       (the host decides, the ledger commits);
    4. wait ``delay_response`` seconds;
    5. ``reset_after`` / ``close_after`` / ``drop_response``: stop, nothing sent (the posting stays);
    6. build the reply: set the ``wrong_echo`` fields (number → value), XOR the last 4 bytes of field
       62 (the last working key's check value) with ``wrong_check_value``, set the CUP header's
       processing requirement to 3 with ``signon_again``; encode (and MAC, when the terminal's
       session has a MAC key); XOR the MAC (field 64, or 128 when the secondary bitmap is in use;
       add an 8-byte field 64 first if none) with ``corrupt_mac``; or frame ``garbage`` instead;
    7. frame it: ``length_delta`` added to the length header (clamped to what the header can say),
       ``truncate_at`` body bytes sent of the frame (clamp to ``len(body) - 1``) and then close;
    8. write it in ``slice`` chunks with pauses, at most ``bandwidth`` bytes per second; ``duplicate``:
       write it again.
    """

    rules: tuple[str, ...] = ()  # ids of rules that fired ("maintenance" for maintenance mode)
    delay_request: float = 0.0
    delay_response: float = 0.0
    drop_request: bool = False
    drop_response: bool = False
    close_before: bool = False
    close_after: bool = False
    reset_before: bool = False
    reset_after: bool = False
    garbage: bytes | None = None
    truncate_at: int | None = None
    length_delta: int = 0
    duplicate: bool = False
    wrong_echo: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    corrupt_mac: bytes | None = None
    slice: tuple[int, float] | None = None
    bandwidth: int | None = None
    respond: str | None = None
    wrong_check_value: bytes | None = None  # XOR mask for the last check value of field 62
    signon_again: bool = False
    hold: Hold | None = None
    # action name (as ``actions_applied`` says it) -> id of the first rule that asked for it; not
    # part of the decision's value (two decisions doing the same are equal whoever asked)
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False, compare=False)

    @property
    def is_clean(self) -> bool:
        """Nothing to do: process and answer as usual (the fast path)."""
        return self is EMPTY_DECISION or not self.actions_applied()

    def actions_applied(self) -> tuple[str, ...]:
        """Names of the actions in execution order, for the journal and metrics."""
        present = (
            ("delay_request", self.delay_request > 0),
            ("reset_before", self.reset_before),
            ("close_before", self.close_before),
            ("drop_request", self.drop_request),
            ("hold", self.hold is not None),
            ("respond", self.respond is not None),
            ("delay_response", self.delay_response > 0),
            ("reset_after", self.reset_after),
            ("close_after", self.close_after),
            ("drop_response", self.drop_response),
            ("wrong_echo", bool(self.wrong_echo)),
            ("wrong_check_value", self.wrong_check_value is not None),
            ("signon_again", self.signon_again),
            ("corrupt_mac", self.corrupt_mac is not None),
            ("garbage", self.garbage is not None),
            ("wrong_length", self.length_delta != 0),
            ("truncate", self.truncate_at is not None),
            ("slice", self.slice is not None),
            ("bandwidth", self.bandwidth is not None),
            ("duplicate", self.duplicate),
        )
        return tuple(name for name, applied in present if applied)

    def rules_applied(self) -> tuple[str, ...]:
        """The rule id behind each of ``actions_applied()``, in the same order, for the journal and
        metrics: the first rule (in plan order) that asked for the action; "maintenance" in
        maintenance mode. A decision built without sources names its first rule (or "")."""
        fallback = self.rules[0] if self.rules else ""
        sources = self.sources
        return tuple(sources.get(name, fallback) for name in self.actions_applied())


EMPTY_DECISION = FaultDecision()


def _wrong_stan(original: str | None, rng: random.Random) -> str:
    if original and len(original) == 6 and original.isascii() and original.isdigit() and original != "000000":
        number = (int(original) - 1 + rng.randrange(1, 999_999)) % 999_999 + 1  # 1..999999, never the original
    else:
        number = rng.randrange(1, 1_000_000)
    return f"{number:06d}"


def _wrong_amount(original: str | None, rng: random.Random) -> str:
    """A different amount of the same width, near the original: the kind of bug that slips through."""
    if original and original.isascii() and original.isdigit():
        amount, width = int(original), len(original)
    else:
        amount, width = rng.randrange(1, 100_000), 12
    limit = min(_AMOUNT_LIMIT, 10**width)
    step = rng.randint(1, max(100, amount))
    if amount + step < limit:
        return f"{amount + step:0{width}d}"
    wrong = amount - step if amount >= step else (amount + 1) % limit
    return f"{wrong:0{width}d}"


def _wrong_terminal(original: str | None, rng: random.Random) -> str:
    """The terminal id with one character changed (same length, so it still fits field 41)."""
    text = original if original else "T" + "".join(rng.choice("0123456789") for _ in range(7))
    position = rng.randrange(len(text))
    choices = _TERMINAL_CHARACTERS.replace(text[position], "")
    return text[:position] + rng.choice(choices) + text[position + 1 :]


_WRONG_VALUE = {"stan": _wrong_stan, "amount": _wrong_amount, "terminal": _wrong_terminal}


def _mac_mask(rng: random.Random, size: int = MAC_BYTES) -> bytes:
    """``size`` random bytes, never all zero (a zero mask would corrupt nothing)."""
    mask = bytearray(rng.randbytes(size))
    if not any(mask):
        mask[rng.randrange(size)] = 1 << rng.randrange(8)
    return bytes(mask)


def combine(fired: Sequence[tuple[FaultRule, random.Random]], message: Message | None) -> FaultDecision:
    """One decision from the rules that fired, in plan order, each with its value generator.

    Delays add, flags OR, single values: the first rule wins. Actions another one makes impossible
    are dropped (module docstring); the generator of a rule is used only for that rule's values.
    """
    delay_request = delay_response = 0.0
    flags: set[str] = set()
    single: dict[str, Any] = {}
    echo: dict[int, str] = {}
    sources: dict[str, str] = {}  # action name (as actions_applied says it) -> first rule asking for it
    fields = message.fields if message is not None else {}
    for rule, rng in fired:
        actions = rule.actions
        asked = rule.id
        if actions.delay_request is not None:
            delay = actions.delay_request.sample(rng)
            delay_request += delay
            if delay > 0:
                sources.setdefault("delay_request", asked)
        if actions.delay_response is not None:
            delay = actions.delay_response.sample(rng)
            delay_response += delay
            if delay > 0:
                sources.setdefault("delay_response", asked)
        for name in ("drop_request", "drop_response", "duplicate"):
            if getattr(actions, name):
                flags.add(name)
                sources.setdefault(name, asked)
        for name in ("close", "reset"):
            if getattr(actions, name):
                flags.add(f"{name}_{getattr(actions, name)}")
                sources.setdefault(f"{name}_{getattr(actions, name)}", asked)
        if actions.garbage is not None and "garbage" not in single:
            single["garbage"] = rng.randbytes(actions.garbage)
            sources["garbage"] = asked
        if actions.truncate and "truncate_at" not in single:
            single["truncate_at"] = rng.randrange(TRUNCATE_KEEP_MAX)
            sources["truncate"] = asked
        if actions.wrong_length and "length_delta" not in single:
            single["length_delta"] = rng.choice((-1, 1)) * rng.randint(1, LENGTH_DELTA_MAX)
            sources["wrong_length"] = asked
        for name in actions.wrong_echo:
            number = WRONG_ECHO_FIELDS[name]
            if number not in echo:
                echo[number] = _WRONG_VALUE[name](fields.get(number), rng)
                sources.setdefault("wrong_echo", asked)
        if actions.corrupt_mac and "corrupt_mac" not in single:
            single["corrupt_mac"] = _mac_mask(rng)
            sources["corrupt_mac"] = asked
        if actions.wrong_check_value and "wrong_check_value" not in single:
            single["wrong_check_value"] = _mac_mask(rng, CHECK_VALUE_BYTES)
            sources["wrong_check_value"] = asked
        if actions.signon_again:
            flags.add("signon_again")
            sources.setdefault("signon_again", asked)
        for name in ("slice", "bandwidth", "respond", "hold"):
            if getattr(actions, name) is not None and name not in single:
                single[name] = getattr(actions, name)
                sources[name] = asked
    ids = tuple(rule.id for rule, _ in fired)
    origin = MappingProxyType(sources)
    ended: dict[str, Any]  # one bool flag, by name (typed loosely so mypy accepts it as **kwargs)
    for ending in ("reset_before", "close_before", "drop_request"):  # the strongest wins
        if ending in flags:
            ended = {ending: True}
            return FaultDecision(rules=ids, delay_request=delay_request, sources=origin, **ended)
    if "hold" in single:  # held unprocessed: what other rules would do to the reply cannot happen
        return FaultDecision(rules=ids, delay_request=delay_request, hold=single["hold"], sources=origin)
    for ending in ("reset_after", "close_after", "drop_response"):
        if ending in flags:
            ended = {ending: True}
            return FaultDecision(
                rules=ids,
                delay_request=delay_request,
                delay_response=delay_response,
                respond=single.get("respond"),
                sources=origin,
                **ended,
            )
    if "garbage" in single:
        echo.clear()
        single.pop("corrupt_mac", None)
        single.pop("wrong_check_value", None)
        flags.discard("signon_again")
    if "truncate_at" in single:
        flags.discard("duplicate")
    return FaultDecision(
        rules=ids,
        delay_request=delay_request,
        delay_response=delay_response,
        duplicate="duplicate" in flags,
        signon_again="signon_again" in flags,
        wrong_echo=MappingProxyType(dict(sorted(echo.items()))),
        sources=origin,
        **single,
    )


# ---------------------------------------------------------------------------------------------------
# The engine


def _shown_whole(rule: FaultRule) -> FaultRule:
    """``rule``, once its ``to_dict`` (what the admin API answers with) is known to work.

    Checked before a rule is installed, so a rule that cannot be shown is refused with a reason
    instead of installed behind a failing answer, which would break every later list, get and delete.
    """
    try:
        rule.to_dict()
    except (ValueError, OverflowError) as exc:
        raise FaultRuleError("", f"cannot be represented: {exc}") from None
    return rule


def identity_draw(seed: int, rule_id: str, message: Message) -> tuple[float, random.Random]:
    """A match's chance (uniform in [0, 1)) and its values' generator, from the seed, the rule and the
    message's identity (terminal: field 41 without trailing spaces, else 42; STAN; MTI) alone: no
    per-process stream, so instances sharing a ledger fault the same message the same way. A message
    sent again unchanged (same STAN and MTI) draws the same again; its 0201/0401 repeat draws anew."""
    fields = message.fields
    terminal = fields.get(41, "").rstrip(" ") or fields.get(42, "").strip()
    identity = f"{seed}\x00{rule_id}\x00{terminal}\x00{fields.get(11, '')}\x00{message.mti}"
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    chance = int.from_bytes(digest[:8], "big") / 2.0**64
    return chance, random.Random(int.from_bytes(digest[8:], "big"))


@dataclass
class _RuleState:
    chance: random.Random  # one draw per match: the probability
    values: random.Random  # the action values, drawn when the rule fires
    matched: int = 0
    fired: int = 0


class FaultEngine:
    """The current fault plan, and the decision for each frame.

    Mutable through ``add`` / ``patch`` / ``delete`` / ``load`` / ``reset`` and ``maintenance``
    (the admin API), but a change only affects frames ``decide`` sees afterwards: a decision already
    given is a plain value, so in-flight messages keep the plan they started with.

    Maintenance: ``"refuse"`` — the server closes new connections at once, and a frame on a
    connection already open gets ``close_before``; ``"respond"`` — every frame is answered with
    ``maintenance_code`` (default 91) without processing. Either way no rule is consulted or
    counted. A sign-on blackout is an ordinary rule (``when = { mti = "0800" }``,
    ``drop_request = true``), shipped in ``signon-timeout.toml``.
    """

    shared: FaultCounters | None = None
    """Where counted rules count when not here: set by ``switch.faults.shared.SharedFaultEngine``
    (multi-instance mode); the server then calls ``decide_shared``."""

    def __init__(self, rules: Sequence[FaultRule] = (), *, seed: int | None = None, maintenance: str = "off",
                 identity_draws: bool = False):
        self._seed = self._valid_seed(seed) if seed is not None else int.from_bytes(os.urandom(4), "big")
        self.identity_draws = identity_draws
        """Draw each match's chance and values from (seed, rule id, terminal, STAN, MTI) instead of the
        rule's stream: the same message gets the same faults in whichever instance sees it
        (multi-instance mode, see ``identity_draw``)."""
        self._maintenance = "off"
        self._maintenance_code = "91"
        self.maintenance = maintenance
        self._rules: tuple[FaultRule, ...] = ()
        self._active: tuple[FaultRule, ...] = ()
        self._states: dict[str, _RuleState] = {}
        self._generated = 0
        self.load(rules)

    @classmethod
    def from_scenario(cls, scenario: Scenario, *, seed: int | None = None, identity_draws: bool = False
                      ) -> FaultEngine:
        """The scenario's faults; ``seed`` (the command line's) overrides the scenario's."""
        return cls(parse_fault_rules(scenario), seed=seed if seed is not None else scenario.seed,
                   identity_draws=identity_draws)

    @staticmethod
    def _valid_seed(seed: Any) -> int:
        if not _is_int(seed) or not -MAX_SEED < seed < MAX_SEED:
            raise FaultRuleError("seed", f"must be an integer of magnitude below 2**64, got {_shown(seed)}")
        return seed

    # -- state ---------------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        """The seed in use (drawn at random when none was given): pass it as ``--seed`` to replay."""
        return self._seed

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        return self._rules

    @property
    def maintenance(self) -> str:
        return self._maintenance

    @maintenance.setter
    def maintenance(self, mode: str) -> None:
        if mode not in MAINTENANCE_MODES:
            raise FaultRuleError("maintenance",
                                 f"must be one of {', '.join(MAINTENANCE_MODES)}, got {_shown(mode)}")
        self._maintenance = mode

    @property
    def maintenance_code(self) -> str:
        return self._maintenance_code

    @maintenance_code.setter
    def maintenance_code(self, code: str) -> None:
        if not isinstance(code, str) or not _RESPONSE_CODE.fullmatch(code):
            raise FaultRuleError("maintenance_code",
                                 f'must be a 2-character response code (e.g. "91"), got {_shown(code)}')
        self._maintenance_code = code

    def get(self, rule_id: str) -> FaultRule:
        """The rule with that id; ``KeyError`` if there is none."""
        for rule in self._rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per rule id, in plan order: ``{"matched": n, "fired": n}`` since it was added or loaded."""
        return {
            rule.id: {"matched": self._states[rule.id].matched, "fired": self._states[rule.id].fired}
            for rule in self._rules
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole plan, JSON-able: seed, maintenance and the rules (``FaultRule.to_dict``)."""
        return {
            "seed": self._seed,
            "maintenance": self._maintenance,
            "maintenance_code": self._maintenance_code,
            "rules": [rule.to_dict() for rule in self._rules],
        }

    # -- changes -------------------------------------------------------------------------------

    def _new_state(self, rule_id: str) -> _RuleState:
        return _RuleState(random.Random(f"{self._seed}/{rule_id}"), random.Random(f"{self._seed}/{rule_id}/values"))

    def _install(self, rules: tuple[FaultRule, ...], states: dict[str, _RuleState]) -> None:
        self._rules = rules
        self._states = states
        self._active = tuple(rule for rule in rules if rule.enabled)

    def load(self, rules: Sequence[FaultRule], seed: int | None = None) -> None:
        """Replace the plan; counters and generators start afresh. ``seed`` None keeps the current one."""
        rules = tuple(rules)
        seen: set[str] = set()
        for index, rule in enumerate(rules):
            if not isinstance(rule, FaultRule):
                raise TypeError(f"rule {index} is not a FaultRule: {_shown(rule)}")
            if rule.id in seen:
                raise FaultRuleError("id", f"id {_shown(rule.id)} is used by two rules")
            seen.add(rule.id)
        if seed is not None:
            self._seed = self._valid_seed(seed)
        generated = [int(found.group(1)) for rule in rules if (found := _GENERATED_ID.fullmatch(rule.id))]
        self._generated = max(generated, default=0)
        self._install(rules, {rule.id: self._new_state(rule.id) for rule in rules})

    def reset(self) -> None:
        """No rules, maintenance off (code 91), counters gone; the seed stays."""
        self._maintenance, self._maintenance_code = "off", "91"
        self.load(())

    def add(self, rule_table: Mapping[str, Any]) -> FaultRule:
        """Validate a rule table (as in a scenario file, or its JSON) and append it to the plan.

        Without an id it gets the next free ``f<n>``. Raises ``FaultRuleError(key, reason)``.
        """
        number = self._generated + 1
        while any(rule.id == f"f{number}" for rule in self._rules):
            number += 1
        rule = _shown_whole(rule_from_table(rule_table, default_id=f"f{number}"))
        if any(existing.id == rule.id for existing in self._rules):
            raise FaultRuleError("id", f"a rule with id {_shown(rule.id)} exists; patch it, or delete it first")
        if "id" not in rule_table:
            self._generated = number
        self._install((*self._rules, rule), {**self._states, rule.id: self._new_state(rule.id)})
        return rule

    def patch(self, rule_id: str, changes: Mapping[str, Any]) -> FaultRule:
        """Change some keys of a rule; it keeps its place, counters and random stream.

        A key set to None goes back to its default (an action is removed); ``when`` is merged key by
        key (None removes a criterion), every other key is replaced. ``KeyError`` for an unknown id,
        ``FaultRuleError`` for a bad change.
        """
        current = self.get(rule_id)
        if not isinstance(changes, Mapping):
            raise FaultRuleError("", f"must be a table of keys to change, got {_shown(changes)}")
        table = current.to_dict()
        for key, value in changes.items():
            if key not in RULE_KEYS:
                raise FaultRuleError(key, f"unknown key; allowed: {', '.join(RULE_KEYS)}")
            if key == "id":
                if value != rule_id:
                    raise FaultRuleError("id", "cannot be changed; delete the rule and add it under the new id")
            elif key == "when" and isinstance(value, Mapping):
                when = dict(table["when"])
                for name, criterion in value.items():
                    if criterion is None:
                        when.pop(name, None)
                    else:
                        when[name] = criterion
                table["when"] = when
            elif value is None:
                table.pop(key, None)
            else:
                table[key] = value
        rule = _shown_whole(rule_from_table(table, default_id=rule_id))
        self._install(tuple(rule if existing.id == rule_id else existing for existing in self._rules), self._states)
        return rule

    def delete(self, rule_id: str) -> None:
        """Remove a rule; ``KeyError`` if there is none with that id."""
        self.get(rule_id)
        states = {key: state for key, state in self._states.items() if key != rule_id}
        self._install(tuple(rule for rule in self._rules if rule.id != rule_id), states)

    # -- deciding ------------------------------------------------------------------------------

    def decide(self, message: Message | None, *, connection: int, elapsed: float) -> FaultDecision:
        """The faults for one received frame: ``message`` None when it did not decode, ``connection``
        its connection number (from 1), ``elapsed`` seconds since the switch started.

        Call it once per request frame (not for keepalives), in the order frames are read.
        """
        if self._maintenance == "respond":
            return FaultDecision(rules=(MAINTENANCE_RULE,), respond=self._maintenance_code)
        if self._maintenance == "refuse":
            return FaultDecision(rules=(MAINTENANCE_RULE,), close_before=True)
        if not self._active:
            return EMPTY_DECISION
        fired: list[tuple[FaultRule, random.Random]] = []
        for rule in self._active:
            if not rule.applies_to(message, connection, elapsed):
                continue
            state = self._states[rule.id]
            state.matched += 1
            if self.identity_draws and message is not None:
                chance, values = identity_draw(self._seed, rule.id, message)
            else:
                chance, values = state.chance.random(), state.values  # drawn on every match: never shifts
            if not rule.counted_in(state.matched) or chance >= rule.probability:
                continue
            state.fired += 1
            fired.append((rule, values))
        if not fired:
            return EMPTY_DECISION
        return combine(fired, message)

    async def decide_shared(self, message: Message | None, *, connection: int, elapsed: float) -> FaultDecision:
        """``decide`` for an engine whose counted rules count elsewhere (``shared``); here: ``decide``."""
        return self.decide(message, connection=connection, elapsed=elapsed)
