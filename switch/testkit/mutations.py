"""Malformed frames from valid ones: the mutations ``scripts/fuzz_switch.py`` throws at a running
switch, and ``switch.strategies.malformed_frames`` hands to hypothesis.

One seeded ``random.Random`` drives every choice, so a seed (or a hypothesis example) replays the
same frame. Kept free of hypothesis and pytest: the fuzz script imports it without test extras.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from switch.codec import Codec, Message
from switch.codec.composite import CupHeader, OriginalData
from switch.codec.framing import Framing

__all__ = ["DEFAULT_TPDU", "MUTATIONS", "MalformedFrame", "Mutator", "seed_messages"]

DEFAULT_TPDU = bytes.fromhex("6000010000")
"""The TPDU a terminal sends when the framing carries one (CUP): id 60, destination 0001, source 0000."""

MUTATIONS = ("flip", "insert", "delete", "cut", "pad", "bitmap", "letters", "noise", "lying-length", "oversize",
             "valid")
"""Every kind ``Mutator.next`` may return; "valid" leaves the payload as it was (a control case)."""
_WEIGHTED = ("flip", *MUTATIONS)  # flips twice as often: the most common line fault


def seed_messages(codec: Codec, *, terminal: str = "FUZZ0001", now: datetime | None = None) -> list[bytes]:
    """Valid encoded messages of the dialect (sign-on, echo, purchase, reversal, advice, settlement):
    what mutations start from. ``now`` fixes fields 7/12/13, for replayable examples."""
    f7 = (now or datetime.now(UTC)).strftime("%m%d%H%M%S")
    cup = codec.dialect.family == "cup"
    base = {3: "000000", 4: "000000001234", 11: "000001", 22: "021", 25: "00", 41: terminal,
            42: "MERCHANT0000001", 49: "156" if cup else "840"}
    card = {2: "4761739001010010", 14: "3012"}
    if cup:
        header = CupHeader.DEFAULT.format()
        messages = [
            Message("0800", {11: "000001", 41: terminal, 42: "MERCHANT0000001", 60: "00000001003"}, header),
            Message("0200", {**base, **card, 60: "22000001000"}, header),
        ]
    else:
        purchase = Message("0200", {**base, **card, 7: f7, 12: f7[4:], 13: f7[:4]})
        messages = [
            Message("0800", {7: f7, 11: "000001", 41: terminal, 70: "001"}),
            Message("0800", {7: f7, 11: "000002", 70: "301"}),
            purchase,
            Message("0400", {**purchase.fields, 11: "000003", 90: OriginalData.of(purchase).format()}),
            Message("0220", {**purchase.fields, 11: "000004"}),
            Message("0500", {7: f7, 11: "000005", 41: terminal, 42: "MERCHANT0000001", 74: "0000000001",
                             86: "0000000000001234"}),
        ]
    encoded = []
    for message in messages:
        try:
            encoded.append(codec.encode(message))
        except Exception as exc:  # a dialect without one of these fields: start from the others
            print(f"seed {message.mti} does not encode in {codec.dialect.name}: {exc}", file=sys.stderr)
    if not encoded:
        raise ValueError(f"dialect {codec.dialect.name}: none of the seed messages encode")
    return encoded


@dataclass(frozen=True)
class MalformedFrame:
    """What to send: ``wire`` is the whole frame (length header, TPDU, body); ``payload`` the mutated body."""

    kind: str
    payload: bytes
    wire: bytes


@dataclass
class Mutator:
    """Seeded mutations of a payload; ``next`` says what was done (for the report)."""

    rng: random.Random
    seeds: list[bytes]
    framing: Framing
    max_frame: int

    def next(self) -> tuple[str, bytes, bytes | None]:
        """(mutation, payload, raw frame override or None to frame the payload normally)."""
        data = bytearray(self.rng.choice(self.seeds))
        kind = self.rng.choice(_WEIGHTED)
        rng = self.rng
        if kind == "flip":
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "insert":
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        elif kind == "delete":
            at = rng.randrange(len(data))
            del data[at:at + rng.randint(1, 12)]
        elif kind == "cut":
            del data[rng.randrange(1, len(data)):]
        elif kind == "pad":
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == "bitmap":
            start = 4  # MTI of the ASCII dialects; close enough elsewhere: flips land near the bitmap
            for _ in range(rng.randint(1, 3)):
                at = start + rng.randrange(8)
                if at < len(data):
                    data[at] ^= 1 << rng.randrange(8)
        elif kind == "letters":
            digits = [i for i, byte in enumerate(data) if 0x30 <= byte <= 0x39]
            for i in rng.sample(digits, min(len(digits), rng.randint(1, 4))):
                data[i] = rng.choice(b"ABCxyz ")
        elif kind == "noise":
            data = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        elif kind == "lying-length":
            framed = self.framing.encode(bytes(data), self.tpdu)
            body = len(framed) - self.framing.header_size
            return kind, bytes(data), self._with_header(framed, body + rng.choice((-5, -1, 1, 5)))
        elif kind == "oversize":
            framed = self.framing.encode(bytes(data), self.tpdu)
            return kind, bytes(data), self._with_header(framed, self.max_frame + rng.randint(1, 100))
        return kind, bytes(data), None

    def frame(self) -> MalformedFrame:
        """The next mutation as the bytes to put on the wire."""
        kind, payload, raw = self.next()
        return MalformedFrame(kind, payload, raw if raw is not None else self.framing.encode(payload, self.tpdu))

    @property
    def tpdu(self) -> bytes | None:
        return DEFAULT_TPDU if self.framing.tpdu else None

    def _with_header(self, framed: bytes, claimed_body: int) -> bytes:
        """``framed`` with its length header replaced by one claiming a body of ``claimed_body`` bytes."""
        size = self.framing.header_size
        value = claimed_body + (size if self.framing.length_includes_itself else 0)
        return self.framing.header_saying(value) + framed[size:]
