"""switch.strategies: every strategy yields what it promises, for every shipped dialect, and
assert_same_wire names the element that differs."""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.codec import Codec, Message, MessageDecodeError, load_dialect
from switch.codec.framing import FrameDecoder, Framing, FramingError
from switch.faults import FaultEngine, rule_from_table
from switch.strategies import (
    MUTATIONS,
    Conversation,
    MalformedFrame,
    assert_same_wire,
    cards,
    conversations,
    fault_rules,
    host_scenarios,
    malformed_frames,
    messages,
    shipped_dialects,
    terminal_commands,
    wire_differences,
)
from switch.testkit.mutations import Mutator, seed_messages
from terminal.policy import BalanceInquiry, Purchase, card_problem

DIALECTS = shipped_dialects()
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_dialect_file_is_covered() -> None:
    assert {"iso87-binary", "iso87-ascii", "cup-pos"} <= set(DIALECTS)


@pytest.mark.parametrize("name", DIALECTS)
@FAST
@given(data=st.data())
def test_messages_by_name_round_trip(name: str, data: st.DataObject) -> None:
    codec = Codec(load_dialect(name))
    message = data.draw(messages(name, max_fields=20))
    assert codec.decode(codec.encode(message)) == message


@given(messages("iso87-binary", mti="0800", max_fields=3))
@FAST
def test_messages_can_fix_the_mti(message: Message) -> None:
    assert message.mti == "0800"


@pytest.mark.parametrize("name", DIALECTS)
@FAST
@given(data=st.data())
def test_conversations_reassemble_from_their_segments(name: str, data: st.DataObject) -> None:
    dialect = load_dialect(name)
    conversation: Conversation = data.draw(conversations(dialect, max_messages=4))
    assert b"".join(conversation.chunks) == conversation.wire
    decoder = FrameDecoder(Framing.from_dialect(dialect))
    frames = []
    for chunk in conversation.chunks:
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    codec = Codec(dialect)
    assert tuple(codec.decode(frame.payload) for frame in frames) == conversation.messages


@pytest.mark.parametrize("name", DIALECTS)
@FAST
@given(data=st.data())
def test_malformed_frames_decode_or_fail_cleanly(name: str, data: st.DataObject) -> None:
    """What the fuzzer promises one level down: a mutated frame is a frame error or a decode error, or a message."""
    dialect = load_dialect(name)
    frame: MalformedFrame = data.draw(malformed_frames(dialect))
    assert frame.kind in MUTATIONS
    decoder = FrameDecoder(Framing.from_dialect(dialect))
    decoder.feed(frame.wire)
    try:
        found = decoder.next_frame()
    except FramingError:
        return
    if found is not None:
        with contextlib.suppress(MessageDecodeError):  # anything else escaping decode() fails the test
            Codec(dialect).decode(found.payload)
    if frame.kind == "valid":
        assert found is not None and Codec(dialect).decode(found.payload).mti


def test_mutator_replays_a_seed_and_covers_every_mutation() -> None:
    """The fuzz script and the strategy share this code: one seed, one sequence of frames."""
    dialect = load_dialect("iso87-binary")
    framing = Framing.from_dialect(dialect)
    seeds = seed_messages(Codec(dialect), now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    runs = [Mutator(random.Random(seed), seeds, framing, framing.max_frame) for seed in ("7/0", "7/0", "7/1")]
    frames = [[run.frame() for _ in range(300)] for run in runs]
    assert frames[0] == frames[1] and frames[0] != frames[2]
    assert {frame.kind for frame in frames[0]} == set(MUTATIONS)


@FAST
@given(fault_rules())
def test_fault_rules_are_accepted_by_the_engine(table: dict[str, object]) -> None:
    rule = rule_from_table(table, default_id="x")
    assert rule.id == table["id"]
    FaultEngine().add(table)


@FAST
@given(host_scenarios())
def test_host_scenarios_install_and_their_cards_are_valid(scenario: object) -> None:
    from switch.strategies import HostScenario

    assert isinstance(scenario, HostScenario)
    engine = FaultEngine()
    for table in scenario.faults:
        engine.add(table)
    assert len(engine.rules) == len(scenario.faults)
    for command in scenario.commands:
        if isinstance(command, Purchase | BalanceInquiry):
            assert card_problem(command.pan, command.expiry, datetime.now(UTC)) is None
        if isinstance(command, Purchase):
            assert 1 <= command.amount < 10**12


@FAST
@given(cards(today=date(2026, 12, 31)))
def test_cards_never_expire_before_today(card: object) -> None:
    from switch.strategies import Card

    assert isinstance(card, Card)
    assert card_problem(card.pan, card.expiry, datetime(2026, 12, 31, tzinfo=UTC)) is None


@FAST
@given(terminal_commands(financial_only=True))
def test_financial_commands_only(command: object) -> None:
    assert getattr(command, "name", "") in {"purchase", "refund", "balance", "reverse-last"}


# ---------------------------------------------------------------------------------------------
# assert_same_wire

CODEC = Codec(load_dialect("iso87-ascii"))
SALE = Message("0200", {3: "000000", 4: "000000001234", 11: "000042", 41: "TERM0001"})


def test_same_bytes_pass() -> None:
    assert_same_wire(CODEC.encode(SALE), CODEC.encode(SALE), dialect="iso87-ascii")
    assert wire_differences(b"abc", b"abc") == []


def test_a_different_value_names_the_field_and_its_name() -> None:
    theirs = CODEC.encode(Message("0200", {**SALE.fields, 4: "000000001235"}))
    with pytest.raises(AssertionError) as failure:
        assert_same_wire(theirs, CODEC.encode(SALE), dialect=CODEC.dialect)
    text = str(failure.value)
    assert "field 4 (" in text and "'000000001235' != '000000001234'" in text
    assert "field 11" not in text and "MTI" not in text


def test_a_field_only_one_side_has_and_the_bitmap_are_named() -> None:
    theirs = CODEC.encode(Message("0200", {**SALE.fields, 49: "840"}))
    lines = wire_differences(theirs, CODEC.encode(SALE), dialect="iso87-ascii")
    assert any(line.startswith("primary bitmap:") for line in lines)
    assert any(line.startswith("field 49") and "only in theirs" in line for line in lines)


def test_bytes_that_do_not_decode_get_a_byte_diff() -> None:
    ours = CODEC.encode(SALE)
    lines = wire_differences(ours[:-3], ours, dialect="iso87-ascii")
    assert lines[0].startswith("their bytes do not decode as iso87-ascii")
    assert lines[-1].startswith(f"first difference at byte {len(ours) - 3}")
