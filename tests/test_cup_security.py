"""Issue 7 end to end: terminal profiles on the switch, CUP sign-on keys, MACs, PINs, the new faults.

The real switch (``SwitchServer`` over ``Host`` with a ``ProfileSet``, in-memory ledger, group
committer) and the real terminal client (``TerminalClient`` over ``TerminalPolicy``) talk over
memory streams on pytest-trio's autojump clock, as in test_terminal_client.py. A few tests speak
to the switch with hand-built frames instead, to send what our terminal never would (a wrong MAC,
a PIN block under the wrong key).

Whatever the tests check about keys and MACs is recomputed here with ``cryptography`` directly,
step by step as the CUP descriptions give it (field 62 layout, check values, the CUP ECB MAC,
ANSI X9.19), rather than through ``switch.security``, so the switch and the terminal are not
merely checked against themselves.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - cryptography 42
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]

from switch.codec import Codec, Message, load_dialect
from switch.codec.composite import CupField60, CupHeader
from switch.codec.dialect import Dialect
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from switch.commit import GroupCommitter
from switch.faults import FaultEngine, FaultRuleError, rule_from_table
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.profiles import ProfileSet, parse_profiles
from switch.scenario import default_scenario
from switch.security import MacPlacement, apply_mac, encrypt_pin_block, pin_block_format0, with_mac_placeholder
from switch.server import ServerConfig, SwitchServer
from switch.strategies import messages
from terminal.client import TerminalClient, TrioClock
from terminal.policy import Note, Purchase, SignOn, TerminalPolicy
from terminal.profile import TerminalProfile
from terminal.store import TerminalStore

CUP = load_dialect("cup-pos")
ISO = load_dialect("iso87-binary")
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
TMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PIN_CARD = "6270000000000000"  # in the CUP terminal's pins table
ISO_PIN_CARD = "4200000000000000"
PLAIN_CARD = "4761739001010010"  # no PIN listed, approved by the test-card table
EXPIRY = "3012"
SEED = 8583

PROFILES = """
[[terminal]]
terminal_id = "CUP00001"
merchant_id = "898100000000001"
tmk = "0123456789ABCDEF FEDCBA9876543210"
tmk_check = "08D7B4FB"
dialect = "cup-pos"
mac = "cup-ecb"
key_layout = 40
pins = { 6270000000000000 = "123456" }
pin_tries = 3

[[terminal]]
terminal_id = "CUP00024"
merchant_id = "898100000000002"
tmk = "0123456789ABCDEF"
dialect = "cup-pos"
mac = "cup-ecb"
key_layout = 24

[[terminal]]
terminal_id = "ISO00001"
merchant_id = "MERCHANT0000001"
dialect = "iso87-binary"
mac = "x9.19"
pin_key = "0123456789ABCDEF FEDCBA9876543210"
mac_key = "FEDCBA9876543210 0123456789ABCDEF"
pins = { 4200000000000000 = "1234" }
"""


def profile_set(text: str = PROFILES) -> ProfileSet:
    return parse_profiles(text, "test-profiles.toml")


# ---------------------------------------------------------------------------------------------
# Independent DES arithmetic (cryptography only)


def tdes(key: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    """ECB DES (8-byte key, as K K K) or 3DES (16-byte K1 K2 K1) straight from cryptography."""
    full = key * 3 if len(key) == 8 else key + key[:8] if len(key) == 16 else key
    cipher = Cipher(TripleDES(full), modes.ECB())
    worker = cipher.decryptor() if decrypt else cipher.encryptor()
    return worker.update(data) + worker.finalize()


def kcv(key: bytes) -> bytes:
    return tdes(key, bytes(8))[:4]


def xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def cup_ecb_mac(key: bytes, data: bytes) -> bytes:
    """The CUP POS "ECB" MAC as the CUP descriptions give it (8 ASCII hex characters)."""
    data += bytes(-len(data) % 8)
    folded = bytes(8)
    for start in range(0, len(data), 8):
        folded = xor(folded, data[start:start + 8])
    text = folded.hex().upper().encode()
    step = tdes(key, xor(tdes(key, text[:8]), text[8:]))
    return step.hex().upper().encode()[:8]


def x919_mac(key: bytes, data: bytes) -> bytes:
    """ANSI X9.19: DES-CBC with the left half, then decrypt with the right, encrypt with the left."""
    left, right = key[:8], key[8:]
    data += bytes(-len(data) % 8)
    chain = bytes(8)
    for start in range(0, len(data), 8):
        chain = tdes(left, xor(chain, data[start:start + 8]))
    return tdes(left, tdes(right, chain, decrypt=True))


def keys_from_field62_layout40(block: bytes) -> tuple[bytes, bytes]:
    """(PIN key, MAC key) of a 40-byte field 62, each check value verified."""
    assert len(block) == 40
    pin_key = tdes(TMK, block[0:16], decrypt=True)
    assert block[16:20] == kcv(pin_key)
    assert block[28:36] == bytes(8)  # CUP: a single-length MAC key, then 8 zero bytes
    mac_key = tdes(TMK, block[20:28], decrypt=True)
    assert block[36:40] == kcv(mac_key)
    return pin_key, mac_key


# ---------------------------------------------------------------------------------------------
# The rig: a switch with profiles, terminals that connect to it over memory streams


@dataclass
class Rig:
    dialect: Dialect
    server: SwitchServer
    faults: FaultEngine
    profiles: ProfileSet
    clock: TrioClock
    nursery: trio.Nursery
    notes: list[Note] = field(default_factory=list)

    @property
    def host(self) -> Host:
        return self.server.host

    @property
    def ledger(self) -> Ledger:
        return self.server.ledger

    async def connect(self) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.handle_stream, server_side)
        return client_side

    @asynccontextmanager
    async def terminal(self, terminal_id: str, **settings: Any) -> AsyncIterator[TerminalClient]:
        """Our terminal client as the profile file describes ``terminal_id`` (keys, MAC, layout)."""
        security = self.profiles.get(terminal_id)
        if security is not None:
            profile = TerminalProfile.from_security_profile(security, **settings)
        else:  # a terminal the switch does not know
            profile = TerminalProfile.for_dialect(self.dialect, terminal_id, "898100000000009", **settings)
        store = TerminalStore.open(":memory:", profile.terminal_id)
        policy = TerminalPolicy(profile, store, self.clock.now())
        try:
            async with TerminalClient(policy, Codec(self.dialect), Framing.from_dialect(self.dialect),
                                      self.connect, self.clock, on_note=self.notes.append) as client:
                yield client
        finally:
            store.close()

    def kinds(self) -> list[str]:
        return [note.kind for note in self.notes]


@asynccontextmanager
async def switch(dialect: Dialect = CUP, profiles: ProfileSet | None = None, **host: Any) -> AsyncIterator[Rig]:
    profiles = profiles or profile_set()
    clock = TrioClock.starting_at(T0)
    ledger = Ledger.open(":memory:")
    faults = FaultEngine(seed=SEED)
    server = SwitchServer(
        codec=Codec(dialect), framing=Framing.from_dialect(dialect),
        host=Host(HostConfig.for_dialect(dialect, **host), ledger, default_scenario().response_rules,
                  profiles=profiles, key_seed=faults.seed, mac_placement=MacPlacement.for_dialect(dialect)),
        ledger=ledger, committer=GroupCommitter(ledger),
        config=ServerConfig(port=0, idle_timeout=300.0, grace_period=2.0),
        clock=lambda: datetime.fromtimestamp(clock.now(), UTC), faults=faults,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        yield Rig(dialect, server, faults, profiles, clock, nursery)
        nursery.cancel_scope.cancel()


class RawTerminal:
    """Hand-built frames to the switch, for what our terminal client never sends."""

    def __init__(self, rig: Rig, stream: trio.abc.Stream):
        self.rig = rig
        self.codec = Codec(rig.dialect)
        self.framing = Framing.from_dialect(rig.dialect)
        self.frames = FrameStream(stream, self.framing)
        self.tpdu = bytes.fromhex("6000010000") if self.framing.tpdu else None

    @classmethod
    async def open(cls, rig: Rig) -> RawTerminal:
        return cls(rig, await rig.connect())

    async def exchange_raw(self, payload: bytes) -> tuple[Message, bytes]:
        await self.frames.send_frame(payload, self.tpdu) if self.tpdu else await self.frames.send_frame(payload)
        with trio.fail_after(5):
            frame = await self.frames.receive_frame()
        assert frame is not None
        return self.codec.decode(frame.payload), frame.payload

    async def exchange(self, message: Message, mac_key: bytes | None = None,
                       algorithm: str = "cup-ecb") -> tuple[Message, bytes]:
        if mac_key is None:
            return await self.exchange_raw(self.codec.encode(message))
        placement = MacPlacement.for_dialect(self.rig.dialect)
        payload = apply_mac(self.codec.encode(with_mac_placeholder(message)), algorithm, mac_key, placement)
        return await self.exchange_raw(payload)


def cup_signon(terminal: str = "CUP00001", stan: int = 1, code: str = "003") -> Message:
    return Message("0800", {11: f"{stan:06d}", 41: terminal, 42: "898100000000001",
                            60: CupField60("00", "000001", code).format()}, CupHeader.DEFAULT.format())


def cup_purchase(stan: int, *, terminal: str = "CUP00001", pan: str = PLAIN_CARD, amount: int = 1000,
                 pin_block: bytes | None = None) -> Message:
    fields = {2: pan, 3: "000000", 4: f"{amount:012d}", 11: f"{stan:06d}", 14: EXPIRY, 22: "021", 25: "00",
              41: terminal, 42: "898100000000001", 49: "156", 60: CupField60("22", "000001", "000").format()}
    if pin_block is not None:
        fields[52] = pin_block.hex().upper()
    return Message("0200", dict(sorted(fields.items())), CupHeader.DEFAULT.format())


# ---------------------------------------------------------------------------------------------
# Sign-on: working keys in field 62


async def test_cup_signon_delivers_working_keys_the_terminal_verifies(autojump_clock: Any,
                                                                      inline_threads: None) -> None:
    async with switch() as rig:
        raw = await RawTerminal.open(rig)
        reply, _ = await raw.exchange(cup_signon())
        assert reply[39] == "00"
        pin_key, mac_key = keys_from_field62_layout40(bytes.fromhex(reply[62]))
        assert len(pin_key) == 16 and len(mac_key) == 8
        assert all(bin(byte).count("1") % 2 for byte in pin_key + mac_key)  # odd parity, as keys are written
        session = rig.host.session_keys["CUP00001"]
        assert (session.pin_key, session.mac_key) == (pin_key, mac_key)
        assert CupField60.parse(reply[60]).batch == "000001"  # 60.2 carries the batch number

        async with rig.terminal("CUP00001") as client:
            outcome = await client.run_command(SignOn())
            assert (outcome.kind, outcome.response_code) == ("approved", "00")
            keys = client.policy.working_keys
            assert keys is not None and keys == rig.host.session_keys["CUP00001"]
            assert (keys.pin_key, keys.mac_key) != (pin_key, mac_key)  # fresh keys at every sign-on
        signed_on = [note.text for note in rig.notes if note.kind == "signed-on"]
        assert f"MAC key check {kcv(keys.mac_key).hex().upper()}" in signed_on[0]


async def test_working_keys_are_replayed_by_the_seed(autojump_clock: Any, inline_threads: None) -> None:
    draws = []
    for _ in range(2):
        async with switch() as rig:
            raw = await RawTerminal.open(rig)
            first, _ = await raw.exchange(cup_signon(stan=1))
            second, _ = await raw.exchange(cup_signon(stan=2))
            draws.append((first[62], second[62]))
    assert draws[0] == draws[1]
    assert draws[0][0] != draws[0][1]
    # the host's documented derivation: random.Random(f"{seed}/keys/{terminal}/{n}"), odd parity
    rng = random.Random(f"{SEED}/keys/CUP00001/1")
    pin_key, _ = keys_from_field62_layout40(bytes.fromhex(draws[0][0]))
    drawn = rng.randbytes(16)
    assert bytes(b & 0xFE for b in pin_key) == bytes(b & 0xFE for b in drawn)


async def test_signon_network_code_picks_the_cup_layout(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        raw = await RawTerminal.open(rig)
        single, _ = await raw.exchange(cup_signon("CUP00001", 1, "001"))  # 001: single-DES keys, 24 bytes
        block = bytes.fromhex(single[62])
        assert len(block) == 24
        pin_key = tdes(TMK, block[0:8], decrypt=True)
        mac_key = tdes(TMK, block[12:20], decrypt=True)
        assert (block[8:12], block[20:24]) == (kcv(pin_key), kcv(mac_key))
        with_track, _ = await raw.exchange(cup_signon("CUP00001", 2, "004"))  # 004: with a track key
        assert len(bytes.fromhex(with_track[62])) == 60
        assert rig.host.session_keys["CUP00001"].track_key is not None
    async with switch() as rig, rig.terminal("CUP00024") as client:  # our terminal asks for its layout
        assert (await client.run_command(SignOn())).kind == "approved"
        keys = client.policy.working_keys
        assert keys is not None and len(keys.pin_key) == 8 and len(keys.mac_key) == 8


async def test_a_wrong_check_value_fails_the_signon(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        rig.faults.add({"id": "kcv", "when": {"mti": "0800"}, "wrong_check_value": True})
        async with rig.terminal("CUP00001", signon_attempts=2, backoff_initial=1.0) as client:
            outcome = await client.run_command(SignOn())
            assert outcome.kind == "failed", outcome
            assert client.policy.working_keys is None and not client.policy.signed_on
            failures = [note.text for note in rig.notes if note.kind == "signon-failed"]
            assert len(failures) == 2
            assert all("check value mismatch" in text for text in failures), failures
            sale = await client.run_command(Purchase(1000, PLAIN_CARD, EXPIRY))
            assert sale.kind == "failed"  # no sale while not signed on
        assert rig.ledger.postings() == []
        assert rig.faults.counters()["kcv"]["fired"] == 4


async def test_a_wrong_check_value_once_then_the_retry_signs_on(autojump_clock: Any,
                                                               inline_threads: None) -> None:
    async with switch() as rig:
        rig.faults.add({"when": {"mti": "0800", "first": 1}, "wrong_check_value": True})
        async with rig.terminal("CUP00001") as client:
            outcome = await client.run_command(SignOn())
            assert outcome.kind == "approved"
            assert rig.kinds().count("signon-failed") == 1
            assert client.policy.working_keys == rig.host.session_keys["CUP00001"]


async def test_unknown_terminal_gets_97_on_cup_and_58_on_iso(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal("CUP09999") as client:
        outcome = await client.run_command(SignOn())
        assert (outcome.kind, outcome.response_code) == ("declined", "97")
        assert "CUP09999" not in rig.host.sessions
    async with switch(ISO) as rig, rig.terminal("ISO09999") as client:
        outcome = await client.run_command(SignOn())
        assert (outcome.kind, outcome.response_code) == ("declined", "58")
    custom = profile_set('[settings]\nunknown_terminal_code = "03"\n' + PROFILES)
    async with switch(CUP, custom) as rig, rig.terminal("CUP09999") as client:
        assert (await client.run_command(SignOn())).response_code == "03"


async def test_a_known_terminal_with_another_merchant_id_gets_03_and_posts_nothing(
        autojump_clock: Any, inline_threads: None) -> None:
    async with switch(ISO) as rig:
        raw = await RawTerminal.open(rig)
        request = Message("0200", {2: PLAIN_CARD, 3: "000000", 4: "000000001000", 7: "0301120000", 11: "000001",
                                   14: EXPIRY, 22: "021", 25: "00", 41: "ISO00001", 42: "SOMEONE ELSE 01",
                                   49: "840"})
        reply, _ = await raw.exchange(request, bytes.fromhex("FEDCBA98765432100123456789ABCDEF"), "x9.19")
        assert reply[39] == "03" and rig.ledger.postings() == []


async def test_without_profiles_the_host_behaves_as_before() -> None:
    ledger = Ledger.open(":memory:")
    host = Host(HostConfig.for_dialect(CUP), ledger)
    decision = host.handle(cup_signon("ANYONE01"), datetime.fromtimestamp(T0, UTC))
    assert decision.response is not None and decision.response[39] == "00"
    assert 62 not in decision.response.fields and host.session_keys == {}


# ---------------------------------------------------------------------------------------------
# MACs


async def test_maced_purchase_is_approved_and_the_reply_mac_is_the_cup_ecb_mac(
    autojump_clock: Any, inline_threads: None
) -> None:
    async with switch() as rig:
        raw = await RawTerminal.open(rig)
        signon, _ = await raw.exchange(cup_signon())
        _, mac_key = keys_from_field62_layout40(bytes.fromhex(signon[62]))
        reply, payload = await raw.exchange(cup_purchase(2), mac_key)
        assert reply[39] == "00"
        header = CUP.header_length
        assert bytes.fromhex(reply[64]) == cup_ecb_mac(mac_key, payload[header:-8])
        (posting,) = rig.ledger.postings()
        assert posting.approved

    async with switch() as rig, rig.terminal("CUP00001") as client:
        outcome = await client.run_command(Purchase(1234, PLAIN_CARD, EXPIRY))
        assert outcome.kind == "approved", outcome
        assert [p.approved for p in rig.ledger.postings()] == [True]


async def test_a_bad_request_mac_gets_a0_closes_the_session_and_posts_nothing(
    autojump_clock: Any, inline_threads: None, caplog: pytest.LogCaptureFixture
) -> None:
    async with switch() as rig:
        raw = await RawTerminal.open(rig)
        signon, _ = await raw.exchange(cup_signon())
        _, mac_key = keys_from_field62_layout40(bytes.fromhex(signon[62]))
        wrong_key = bytes(b ^ 0x02 for b in mac_key)
        reply, _ = await raw.exchange(cup_purchase(2), wrong_key)
        assert reply[39] == "A0"
        assert CupHeader.parse(reply.header).needs_sign_on
        assert 64 not in reply.fields  # the host cannot MAC for a key it no longer trusts
        assert rig.ledger.postings() == []
        assert "CUP00001" not in rig.host.sessions and "CUP00001" not in rig.host.session_keys
        assert any("mac-failed" in record.getMessage() for record in caplog.records)
        again, _ = await raw.exchange(cup_signon(stan=3))  # sign on again: new keys
        _, new_key = keys_from_field62_layout40(bytes.fromhex(again[62]))
        missing, _ = await raw.exchange(cup_purchase(4))  # a request without any MAC
        assert missing[39] == "A0" and rig.ledger.postings() == []
        again, _ = await raw.exchange(cup_signon(stan=5))
        _, new_key = keys_from_field62_layout40(bytes.fromhex(again[62]))
        good, _ = await raw.exchange(cup_purchase(6), new_key)
        assert good[39] == "00" and len(rig.ledger.postings()) == 1


async def test_mac_failure_code_is_configurable(autojump_clock: Any, inline_threads: None) -> None:
    async with switch(ISO, mac_failure_code="63") as rig:
        raw = await RawTerminal.open(rig)
        request = Message("0200", {2: PLAIN_CARD, 3: "000000", 4: "000000001000", 7: "0301120000", 11: "000001",
                                   14: EXPIRY, 22: "021", 25: "00", 41: "ISO00001", 42: "MERCHANT0000001",
                                   49: "840"})
        reply, _ = await raw.exchange(request, bytes(16), "x9.19")
        assert reply[39] == "63"


async def test_a_corrupted_reply_mac_makes_the_terminal_reverse_with_a0(
    autojump_clock: Any, inline_threads: None
) -> None:
    async with switch() as rig, rig.terminal("CUP00001") as client:
        assert (await client.run_command(SignOn())).kind == "approved"
        rig.faults.add({"when": {"mti": "0200"}, "corrupt_mac": True})
        outcome = await client.run_command(Purchase(2500, PLAIN_CARD, EXPIRY))
        assert outcome.kind == "reversed", outcome
        (posting,) = rig.ledger.postings()
        assert posting.approved and posting.reversed  # the host had approved; the reversal undid it
        (reversal,) = rig.ledger.reversals()
        assert reversal.effect == "reversed"
        queued = [note.text for note in rig.notes if note.kind == "reversal-queued"]
        assert queued and "reason A0" in queued[0]
        kinds = rig.kinds()
        assert kinds.count("signed-on") == 2  # a MAC failure means new keys before the reversal
        last_signon = max(index for index, kind in enumerate(kinds) if kind == "signed-on")
        assert kinds.index("reversal-queued") < last_signon < kinds.index("reversal-cleared")
        assert trio.current_time() < 1  # nothing waited for a timeout


async def test_iso_terminal_with_static_keys_macs_with_x919(autojump_clock: Any, inline_threads: None) -> None:
    mac_key = bytes.fromhex("FEDCBA98765432100123456789ABCDEF")
    async with switch(ISO) as rig:
        raw = await RawTerminal.open(rig)
        request = Message("0200", {2: PLAIN_CARD, 3: "000000", 4: "000000001000", 7: "0301120000", 11: "000001",
                                   14: EXPIRY, 22: "021", 25: "00", 41: "ISO00001", 42: "MERCHANT0000001",
                                   49: "840"})
        reply, payload = await raw.exchange(request, mac_key, "x9.19")  # static keys: MACs before any sign-on
        assert reply[39] == "A0"  # MAC good, but ISO terminals sign on first
        assert bytes.fromhex(reply[64]) == x919_mac(mac_key, payload[:-8])
        async with rig.terminal("ISO00001") as client:
            signon = await client.run_command(SignOn())
            assert signon.kind == "approved"
            assert client.policy.working_keys == rig.profiles.get("ISO00001").static_keys  # type: ignore[union-attr]
            outcome = await client.run_command(Purchase(1500, PLAIN_CARD, EXPIRY, pin="1234"))
            assert outcome.kind == "approved", outcome
            wrong = await client.run_command(Purchase(1500, ISO_PIN_CARD, EXPIRY, pin="9999"))
            assert wrong.response_code == "55"
            right = await client.run_command(Purchase(1500, ISO_PIN_CARD, EXPIRY, pin="1234"))
            assert right.kind == "approved", right


# ---------------------------------------------------------------------------------------------
# PINs


async def test_wrong_pins_get_55_then_75_and_the_card_stays_blocked(autojump_clock: Any,
                                                                   inline_threads: None) -> None:
    async with switch() as rig, rig.terminal("CUP00001") as client:
        right = await client.run_command(Purchase(1000, PIN_CARD, EXPIRY, pin="123456"))
        assert right.kind == "approved", right
        codes = []
        for _ in range(3):
            outcome = await client.run_command(Purchase(1000, PIN_CARD, EXPIRY, pin="654321"))
            codes.append(outcome.response_code)
        assert codes == ["55", "55", "75"]
        blocked = await client.run_command(Purchase(1000, PIN_CARD, EXPIRY, pin="123456"))
        assert blocked.response_code == "75"  # blocked until a restart (or an admin sessions reset)
        other = await client.run_command(Purchase(1000, PLAIN_CARD, EXPIRY))
        assert other.kind == "approved"  # cards without a listed PIN are not PIN-checked
        no_pin = await client.run_command(Purchase(1000, PIN_CARD, EXPIRY))
        assert no_pin.response_code == "75"
        rig.host.reset_sessions()
        no_pin = await client.run_command(Purchase(1000, PIN_CARD, EXPIRY))
        assert no_pin.response_code == "55"
        postings = rig.ledger.postings()
        assert [p.response_code for p in postings] == ["00", "55", "55", "75", "75", "00", "75", "55"]


async def test_a_pin_block_that_is_not_format_0_gets_99(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        raw = await RawTerminal.open(rig)
        signon, _ = await raw.exchange(cup_signon())
        pin_key, mac_key = keys_from_field62_layout40(bytes.fromhex(signon[62]))
        good = encrypt_pin_block(pin_key, pin_block_format0("123456", PIN_CARD))
        by_hand = xor(bytes.fromhex("06123456FFFFFFFF"), bytes.fromhex("0000" + PIN_CARD[-13:-1]))
        assert tdes(pin_key, good, decrypt=True) == by_hand
        reply, _ = await raw.exchange(cup_purchase(2, pan=PIN_CARD, pin_block=good), mac_key)
        assert reply[39] == "00"
        under_tmk = encrypt_pin_block(TMK, pin_block_format0("123456", PIN_CARD))  # the wrong key
        reply, _ = await raw.exchange(cup_purchase(3, pan=PIN_CARD, pin_block=under_tmk), mac_key)
        assert reply[39] == "99"
        assert [p.response_code for p in rig.ledger.postings()] == ["00", "99"]


def test_pin_block_arithmetic_matches_iso_9564_format_0() -> None:
    """The block the terminal builds, recomputed by hand: 0 | length | PIN | F... XOR 0000 | 12 PAN digits."""
    block = pin_block_format0("123456", PIN_CARD)
    pin_field = bytes.fromhex("06123456FFFFFFFF")
    pan_field = bytes.fromhex("0000" + PIN_CARD[-13:-1])
    assert block == xor(pin_field, pan_field)


async def test_a_pin_needs_keys_and_is_never_stored(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, rig.terminal("CUP00001") as client:
        outcome = await client.run_command(Purchase(1000, PIN_CARD, EXPIRY, pin="123456"))
        assert outcome.kind == "approved"
        entry = client.policy.store.entry(outcome.journal_id)
        assert 52 not in entry.request.fields
        assert "123456" not in repr(Purchase(1000, PIN_CARD, EXPIRY, pin="123456"))
    plain = TerminalProfile.for_dialect(CUP, "CUP00001", "898100000000001")
    policy = TerminalPolicy(plain, TerminalStore.open(":memory:", "CUP00001"), T0)
    policy.start(Purchase(1000, PIN_CARD, EXPIRY, pin="123456"), T0)
    finished = policy.next_action(T0)
    assert finished.outcome.kind == "refused" and "PIN key" in finished.outcome.text  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Header processing requirement 3


async def test_header_requirement_3_makes_the_terminal_sign_on_again(autojump_clock: Any,
                                                                     inline_threads: None) -> None:
    async with switch() as rig, rig.terminal("CUP00001") as client:
        assert (await client.run_command(SignOn())).kind == "approved"
        first_keys = client.policy.working_keys
        rig.faults.add({"when": {"mti": "0200", "first": 1}, "signon_again": True})
        first = await client.run_command(Purchase(1000, PLAIN_CARD, EXPIRY))
        assert first.kind == "approved"  # the reply itself stands
        assert not client.policy.signed_on
        assert "signon-demanded" in rig.kinds()
        second = await client.run_command(Purchase(2000, PLAIN_CARD, EXPIRY))
        assert second.kind == "approved"
        assert rig.kinds().count("signed-on") == 2
        assert client.policy.working_keys != first_keys


# ---------------------------------------------------------------------------------------------
# The new fault actions, as rules


def test_new_fault_actions_parse_combine_and_round_trip() -> None:
    rule = rule_from_table({"id": "k", "wrong_check_value": True, "signon_again": True}, default_id="x")
    assert rule.actions.names() == ("wrong_check_value", "signon_again")
    assert rule_from_table(rule.to_dict(), default_id="x") == rule
    engine = FaultEngine([rule], seed=1)
    decision = engine.decide(cup_signon(), connection=1, elapsed=0.0)
    assert decision.signon_again and decision.wrong_check_value is not None
    assert len(decision.wrong_check_value) == 4 and any(decision.wrong_check_value)
    assert decision.actions_applied() == ("wrong_check_value", "signon_again")
    again = FaultEngine([rule], seed=1).decide(cup_signon(), connection=1, elapsed=0.0)
    assert again == decision  # replayed by the seed
    for name in ("wrong_check_value", "signon_again"):
        with pytest.raises(FaultRuleError, match="garbage replaces the response"):
            rule_from_table({name: True, "garbage": 8}, default_id="x")
        with pytest.raises(FaultRuleError, match="must be true or false"):
            rule_from_table({name: "yes"}, default_id="x")
        with pytest.raises(FaultRuleError, match="no response is sent"):
            rule_from_table({name: True, "drop_response": True}, default_id="x")


# ---------------------------------------------------------------------------------------------
# Property: with profiles, the host still never raises


_TEMPLATES = [cup_signon(), cup_purchase(2), cup_purchase(3, pan=PIN_CARD, pin_block=bytes(8))]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(_TEMPLATES),
    terminal=st.sampled_from(["CUP00001", "CUP00024", "ISO00001", "NOBODY01", "", "  "]),
    noise=st.dictionaries(st.sampled_from([11, 52, 60, 62, 64, 128, 2, 4]),
                          st.one_of(st.text(max_size=20), st.sampled_from(["", "00" * 8, "ZZ", "0" * 16])),
                          max_size=3),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
    random_message=st.one_of(st.none(), messages(CUP, max_fields=8)),
    signed_on=st.booleans(),
)
def test_host_with_profiles_never_raises(template: Message, terminal: str, noise: dict[int, str], raw: bytes | None,
                                         random_message: Message | None, signed_on: bool) -> None:
    host = Host(HostConfig.for_dialect(CUP), Ledger.open(":memory:"), default_scenario().response_rules,
                profiles=profile_set(), key_seed=1, mac_placement=MacPlacement.for_dialect(CUP))
    now = datetime.fromtimestamp(T0, UTC)
    if signed_on:
        host.handle(cup_signon(), now)
    request = Message(template.mti, {**template.fields, 41: terminal, **noise}, template.header)
    for candidate in (request, random_message):
        if candidate is None:
            continue
        decision = host.handle(candidate, now, raw=raw)
        assert isinstance(decision.outcome, str) and decision.reason
        if decision.response is not None:
            host.response_mac(decision.response)
