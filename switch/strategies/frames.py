"""Framed bytes: whole conversations as a terminal writes them, and the malformed frames the fuzzer sends.

A conversation is valid messages framed by the dialect's framing (length header, TPDU) and cut into
arbitrary TCP segments, so a reader under test sees what a socket really delivers: several frames
in one read, one frame across many. Malformed frames reuse ``switch.testkit.mutations`` (the same
code ``scripts/fuzz_switch.py`` runs), driven by hypothesis's random so failures shrink and replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import strategies as st

from switch.codec import Codec, Dialect, Message
from switch.codec.framing import Framing
from switch.strategies.messages import dialect_of, messages
from switch.testkit.mutations import DEFAULT_TPDU, MalformedFrame, Mutator, seed_messages

__all__ = ["Conversation", "conversations", "malformed_frames", "segments"]

_FIXED_NOW = datetime(2026, 1, 15, 12, 30, 45, tzinfo=UTC)  # seed messages' field 7: replayable examples


@dataclass(frozen=True)
class Conversation:
    """Messages in order, each framed (``frames``), all of it as one byte string (``wire``), and the
    same bytes as the TCP segments they arrived in (``chunks``: concatenated, they are ``wire``)."""

    messages: tuple[Message, ...]
    frames: tuple[bytes, ...]
    chunks: tuple[bytes, ...]

    @property
    def wire(self) -> bytes:
        return b"".join(self.frames)


def segments(data: bytes, *, max_cuts: int = 8) -> st.SearchStrategy[tuple[bytes, ...]]:
    """``data`` cut at up to ``max_cuts`` points: how TCP may deliver it (never an empty segment)."""
    if len(data) < 2:
        return st.just((data,) if data else ())
    cuts = st.sets(st.integers(1, len(data) - 1), max_size=min(max_cuts, len(data) - 1))
    return cuts.map(lambda points: tuple(data[a:b] for a, b in zip((0, *sorted(points)),
                                                                   (*sorted(points), len(data)), strict=True)))


def conversations(dialect: Dialect | str, *, framing: Framing | None = None, min_messages: int = 1,
                  max_messages: int = 5, max_fields: int | None = 12,
                  tpdu: bytes = DEFAULT_TPDU) -> st.SearchStrategy[Conversation]:
    """Valid messages of ``dialect`` framed by ``framing`` (default: the dialect's), TPDU included
    where the framing has one, cut into segments."""
    loaded = dialect_of(dialect)
    frame_with = framing or Framing.from_dialect(loaded)
    codec = Codec(loaded)
    header_tpdu = tpdu if frame_with.tpdu else None

    @st.composite
    def build(draw: st.DrawFn) -> Conversation:
        drawn = draw(st.lists(messages(loaded, max_fields=max_fields), min_size=min_messages,
                              max_size=max_messages))
        frames = tuple(frame_with.encode(codec.encode(message), header_tpdu) for message in drawn)
        chunks = draw(segments(b"".join(frames)))
        return Conversation(tuple(drawn), frames, chunks)

    return build()


def malformed_frames(dialect: Dialect | str, *, framing: Framing | None = None,
                     seeds: list[bytes] | None = None) -> st.SearchStrategy[MalformedFrame]:
    """Frames the fuzzer would send: a valid seed message (sign-on, echo, purchase, reversal, advice,
    settlement; or your ``seeds``) flipped, cut, padded, given lying length headers, or pure noise.
    ``kind`` says which mutation; "valid" is the untouched control case."""
    loaded = dialect_of(dialect)
    frame_with = framing or Framing.from_dialect(loaded)
    starts = seeds if seeds is not None else seed_messages(Codec(loaded), now=_FIXED_NOW)
    if not starts:
        raise ValueError("malformed_frames needs at least one seed message")
    return st.randoms(use_true_random=False).map(
        lambda rng: Mutator(rng, list(starts), frame_with, frame_with.max_frame).frame())
