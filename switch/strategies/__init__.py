"""Hypothesis strategies for ISO 8583 property tests: messages, framed conversations, malformed
frames, host and terminal scenarios, plus ``assert_same_wire`` to compare encoders.

Needs hypothesis, a test-time dependency: ``pip install "iso8583-switch-emulator[testing]"``.
Importing ``switch`` never imports this package; importing this package without hypothesis raises
an ImportError that says what to install.

Property-test your own encoder against ours::

    from hypothesis import given
    from switch.codec import Codec, load_dialect
    from switch.strategies import assert_same_wire, messages

    CODEC = Codec(load_dialect("iso87-ascii"))

    @given(messages("iso87-ascii"))
    def test_my_encoder_matches(message):
        assert_same_wire(my_encode(message), CODEC.encode(message), dialect="iso87-ascii")

What each strategy gives (valid by construction, derived from the dialect file, no field numbers
hard-coded):

- ``messages(dialect)``: ``Message`` values whose fields fit each field's ISO class and length, so
  ``decode(encode(m)) == m``; ``encoded_messages`` their bytes; ``field_value`` one field's values;
  ``dialects()`` any shipped dialect, ``shipped_dialects()`` their names.
- ``conversations(dialect)``: several messages framed (length header, TPDU) and cut into TCP segments.
- ``malformed_frames(dialect)``: the fuzzer's mutations (``switch.testkit.mutations``) of valid frames.
- ``cards()``, ``amounts()``, ``terminal_commands()``: what a terminal asks; ``fault_rules()``: how a
  host misbehaves (JSON tables the admin API takes); ``host_scenarios()`` both together.
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401  (the check only)
except ImportError as exc:  # pragma: no cover - the test extras install it
    raise ImportError("switch.strategies needs hypothesis, a test-time dependency: "
                      "pip install 'iso8583-switch-emulator[testing]'") from exc

from switch.strategies.frames import Conversation, conversations, malformed_frames, segments
from switch.strategies.messages import (
    ALPHANUMERIC,
    DIGITS,
    HEX_UPPER,
    KNOWN_MTIS,
    PRINTABLE_ASCII,
    dialect_of,
    dialects,
    encoded_messages,
    field_value,
    field_values,
    headers,
    messages,
    mtis,
    shipped_dialects,
    single_byte_chars,
)
from switch.strategies.scenarios import (
    Card,
    HostScenario,
    amounts,
    cards,
    fault_rules,
    host_scenarios,
    terminal_commands,
)
from switch.testkit.mutations import MUTATIONS, MalformedFrame
from switch.testkit.wire import assert_same_wire, wire_differences

__all__ = [
    "ALPHANUMERIC",
    "DIGITS",
    "HEX_UPPER",
    "KNOWN_MTIS",
    "MUTATIONS",
    "PRINTABLE_ASCII",
    "Card",
    "Conversation",
    "HostScenario",
    "MalformedFrame",
    "amounts",
    "assert_same_wire",
    "cards",
    "conversations",
    "dialect_of",
    "dialects",
    "encoded_messages",
    "fault_rules",
    "field_value",
    "field_values",
    "headers",
    "host_scenarios",
    "malformed_frames",
    "messages",
    "mtis",
    "segments",
    "shipped_dialects",
    "single_byte_chars",
    "terminal_commands",
    "wire_differences",
]
