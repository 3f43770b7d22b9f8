"""The fault engine: rules that make the host misbehave on purpose, precisely and repeatably.

Pure, like the host: ``FaultEngine.decide`` turns one received frame (a decoded request, or None
for a frame that would not decode), its connection number and the time since the switch started
into a ``FaultDecision`` of concrete values (seconds to wait, bytes to send, flags) that the Trio
server carries out. Nothing here sleeps, reads a clock or touches a socket, so every rule is
unit-tested without I/O, and the executor needs no random numbers of its own.

A rule is *match + how often + actions*, written as a ``[[fault]]`` table in a scenario file or as
the same object in JSON through the admin API::

    [[fault]]
    id = "lost-0210"                          # optional; default f1, f2, ... by position
    name = "approve, commit, lose the 0210"   # optional; default: the id
    when = { mti = ["0200"], every = 3 }      # optional; no `when` = every frame
    probability = 1.0                         # optional; per matching message
    drop_response = true                      # one or more actions

**How often.** Every message that satisfies a rule's ``when`` (the response-rule criteria plus
``connection`` and the ``after``/``before`` window) is a *match* and is counted. ``nth``, ``every``
and ``first`` look at that count (the 3rd match only / the 3rd, 6th, 9th... / matches 1..n), then
``probability`` is tried on the *message*: each match fires independently with that chance. (Toxiproxy's
"toxicity" is decided once per *connection*, so every message on a connection is affected or none
is; here a 0.1 means one message in ten, whatever the connections.)

**Determinism.** Each rule has two generators of its own, seeded from the engine's seed and the
rule's id: ``random.Random(f"{seed}/{rule_id}")`` draws one number per match, for the probability,
and ``random.Random(f"{seed}/{rule_id}/values")`` the action values (delay samples, garbage bytes,
wrong echo values, MAC mask) each time the rule fires. So the same seed and the same sequence of
messages give the same decisions; a rule's decisions do not shift when other rules are added or
when traffic only they match comes and goes; and editing a rule's actions does not change which
messages it fires on. Messages that race on different connections are matched in the order
``decide`` is called, which is all a concurrent server can promise. Without a seed one is drawn from
``os.urandom`` and shown as ``engine.seed`` for replay.

**Identity draws** (``identity_draws=True``, what ``serve --multi-instance`` uses): the chance and the
values of a match come from a hash of (seed, rule id, terminal, STAN, MTI) instead of the rule's
streams, so several instances sharing a ledger fault the same message the same way whichever of them
receives it, in whatever order. Counts (``nth``, ``every``, ``first``) are then counted in the shared
database, once for every instance (``SharedFaultEngine`` in ``shared``).

**Several rules on one message** all fire and combine: delays add, flags OR, and for a value only
one can have (garbage, truncate, wrong length, MAC mask, check value mask, slice, bandwidth, respond,
each wrong-echo field, hold) the first rule in plan order wins; a hold wins over everything but
the endings before processing (reset, close, drop request). Actions made pointless by another are then
removed, in the order the executor runs them (see ``FaultDecision``), so the decision lists only what
happens.

Modules: ``rule`` (rule values and the bounds on every number), ``parse`` (tables from files and
JSON), ``engine`` (decisions and the mutable plan), ``shared`` (the multi-instance engine; import it
from ``switch.faults.shared``). Everything else is importable from ``switch.faults``.
"""

from switch.faults.engine import EMPTY_DECISION, FaultDecision, FaultEngine, combine
from switch.faults.parse import parse_fault_rules, rule_from_table
from switch.faults.rule import (
    ACTION_KEYS,
    CHECK_VALUE_BYTES,
    DEFAULT_HOLD_CODE,
    DELAY_KINDS,
    GARBAGE_MAX,
    LENGTH_DELTA_MAX,
    MAC_BYTES,
    MAINTENANCE_MODES,
    MAINTENANCE_RULE,
    RULE_KEYS,
    TIMINGS,
    TRUNCATE_KEEP_MAX,
    WHEN_KEYS,
    WRONG_ECHO_FIELDS,
    Actions,
    Delay,
    FaultRule,
    FaultRuleError,
    Hold,
    HoldOutcome,
    format_duration,
)

__all__ = [
    "ACTION_KEYS",
    "CHECK_VALUE_BYTES",
    "DEFAULT_HOLD_CODE",
    "DELAY_KINDS",
    "EMPTY_DECISION",
    "GARBAGE_MAX",
    "LENGTH_DELTA_MAX",
    "MAC_BYTES",
    "MAINTENANCE_MODES",
    "MAINTENANCE_RULE",
    "RULE_KEYS",
    "TIMINGS",
    "TRUNCATE_KEEP_MAX",
    "WHEN_KEYS",
    "WRONG_ECHO_FIELDS",
    "Actions",
    "Delay",
    "FaultDecision",
    "FaultEngine",
    "FaultRule",
    "FaultRuleError",
    "Hold",
    "HoldOutcome",
    "combine",
    "format_duration",
    "parse_fault_rules",
    "rule_from_table",
]
