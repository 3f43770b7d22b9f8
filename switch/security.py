"""Terminal security, pure: DES/3DES, working keys in CUP field 62, MACs on field 64/128, ISO PIN blocks.

Real POS terminals refuse a host that does not hand out working keys at sign-on or does not MAC its
replies, so the switch and the terminal client both need this layer. Everything here is a pure
function of its inputs (keys come from a caller-supplied seeded ``random.Random``), so every rule is
unit-tested without sockets. DES itself is never implemented here: the ``cryptography`` package does
every block operation; this module only arranges blocks.

TEST KEYS ONLY. The emulator keeps master keys in plain TOML files and logs check values freely; it
is a development tool and must never hold a key that protects real cards.

Conventions chosen where real systems differ (see also the README section on profiles):

* Keys are 8 bytes (single DES), 16 (double-length 3DES, K1 K2 K1) or 24 (triple-length). A single
  DES operation is 3DES with K1 = K2 = K3, so one library primitive serves all three.
* A check value is the key encrypting eight zero bytes, first ``length`` bytes (CUP: 4, KCV: 3).
* Field 62 (CUP sign-on reply) is the working keys encrypted under the terminal master key (TMK),
  3DES-ECB, each followed by the 4-byte check value of the *clear* key, see ``KEY_LAYOUTS``.
* MACs cover the message from the MTI up to, not including, the MAC field: the length header, the
  TPDU and the dialect header (CUP: 6 bytes) are outside, see ``mac_input``.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography >= 43 keeps the DES family in the "decrepit" module
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - cryptography 42
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef, unused-ignore]

if TYPE_CHECKING:
    from switch.codec.dialect import Dialect
    from switch.codec.message import Message

BLOCK = 8
KEY_LENGTHS = (8, 16, 24)
CHECK_VALUE_LENGTH = 4  # CUP sends 4 bytes after each key in field 62
MAC_LENGTH = 8


class SecurityError(ValueError):
    """Bad key material, key block, PIN block or MAC input; the message says which and why."""


class Field62Error(SecurityError):
    """Field 62 of a sign-on reply that cannot be working keys (wrong size, unknown layout)."""


class KeyCheckError(Field62Error):
    """A working key whose check value does not match: a wrong TMK, or keys damaged on the way.

    CUP terminals treat it as a failed sign-on. ``key`` names the key ("PIN key", "MAC key",
    "track key"); ``expected`` is the check value received, ``actual`` the one computed.
    """

    def __init__(self, key: str, expected: bytes, actual: bytes):
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{key} check value mismatch: field 62 says {expected.hex().upper()}, "
            f"the decrypted key gives {actual.hex().upper()} (wrong TMK?)"
        )


class PinBlockError(SecurityError):
    """A PIN block that is not ISO 9564 format 0 for this PAN (CUP answers 99, PIN format error)."""


class MacError(SecurityError):
    """A message that cannot carry a MAC as asked (too short, unknown algorithm, wrong key size)."""


# ---------------------------------------------------------------------------------------------------
# DES / 3DES


def _check_key(key: bytes, what: str = "key", lengths: tuple[int, ...] = KEY_LENGTHS) -> None:
    if not isinstance(key, bytes | bytearray):
        raise SecurityError(f"{what} must be bytes, got {type(key).__name__}")
    if len(key) not in lengths:
        *others, last = (str(n) for n in lengths)
        allowed = f"{', '.join(others)} or {last}" if others else last
        raise SecurityError(f"{what} must be {allowed} bytes, got {len(key)}")


def _three_key(key: bytes) -> bytes:
    """8 → K K K, 16 → K1 K2 K1, 24 → as is: cryptography deprecates 8- and 16-byte 3DES keys."""
    key = bytes(key)
    if len(key) == 8:
        return key * 3
    if len(key) == 16:
        return key + key[:8]
    return key


def _blocks(data: bytes, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise SecurityError(f"{what} must be bytes, got {type(data).__name__}")
    if not data or len(data) % BLOCK:
        raise SecurityError(f"{what} must be one or more 8-byte blocks, got {len(data)} bytes")
    return bytes(data)


def des_encrypt(key: bytes, block: bytes) -> bytes:
    """ECB-encrypt one or more 8-byte blocks: DES for an 8-byte key, 3DES (EDE) for 16 or 24 bytes."""
    _check_key(key)
    encryptor = Cipher(TripleDES(_three_key(key)), modes.ECB()).encryptor()
    return encryptor.update(_blocks(block, "data")) + encryptor.finalize()


def des_decrypt(key: bytes, block: bytes) -> bytes:
    """ECB-decrypt one or more 8-byte blocks; the inverse of ``des_encrypt`` for the same key."""
    _check_key(key)
    decryptor = Cipher(TripleDES(_three_key(key)), modes.ECB()).decryptor()
    return decryptor.update(_blocks(block, "data")) + decryptor.finalize()


def _des_cbc_last_block(key: bytes, data: bytes) -> bytes:
    """Last block of DES-CBC (zero IV) over ``data`` zero-padded to whole blocks: the X9.9 core."""
    encryptor = Cipher(TripleDES(_three_key(key)), modes.CBC(bytes(BLOCK))).encryptor()
    ciphertext = encryptor.update(_zero_pad(data)) + encryptor.finalize()
    return ciphertext[-BLOCK:]


def check_value(key: bytes, length: int = CHECK_VALUE_LENGTH) -> bytes:
    """The key encrypting eight zero bytes, first ``length`` bytes (CUP field 62: 4; KCV: 3)."""
    if not 1 <= length <= BLOCK:
        raise SecurityError(f"check value length must be 1..8 bytes, got {length}")
    return des_encrypt(key, bytes(BLOCK))[:length]


def with_odd_parity(key: bytes) -> bytes:
    """Each byte's low bit set so the byte has an odd number of 1 bits, as DES keys are written.

    DES ignores the parity bits, so this changes no cipher result; terminals and HSMs that check
    parity refuse keys without it.
    """
    return bytes(byte & 0xFE | (bin(byte & 0xFE).count("1") + 1) % 2 for byte in key)


def has_odd_parity(key: bytes) -> bool:
    return all(bin(byte).count("1") % 2 == 1 for byte in key)


# ---------------------------------------------------------------------------------------------------
# Working keys and CUP field 62


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """How field 62 of a CUP sign-on reply lays out the working keys.

    Every key travels encrypted under the TMK and is followed by its 4-byte check value. The MAC
    slot may be longer than the MAC key: CUP MACs with a single-length key, and the double-length
    layouts send it as 8 encrypted bytes followed by 8 zero bytes.
    """

    size: int  # bytes of field 62
    key_length: int  # PIN (and track) key length: 8, 16 or 24
    mac_slot: int  # bytes reserved for the encrypted MAC key
    track_key: bool  # a track (TDK) key follows the MAC key
    network_code: str | None  # CUP 60.3 with which a terminal asks for this layout

    @property
    def slots(self) -> tuple[tuple[str, int], ...]:
        """(key name, encrypted bytes) in field order."""
        slots = [("PIN key", self.key_length), ("MAC key", self.mac_slot)]
        if self.track_key:
            slots.append(("track key", self.key_length))
        return tuple(slots)


KEY_LAYOUTS: Mapping[int, KeyLayout] = MappingProxyType(
    {
        # CUP 60.3 = 001, single DES: PIN key 8 + 4, MAC key 8 + 4.
        24: KeyLayout(24, 8, 8, False, "001"),
        # 60.3 = 003, double length: PIN key 16 + 4, MAC key 16 (8 + 8 zero bytes in CUP) + 4.
        40: KeyLayout(40, 16, 16, False, "003"),
        # 60.3 = 004, double length with a track key: PIN 16 + 4, MAC 16 + 4, track 16 + 4.
        60: KeyLayout(60, 16, 16, True, "004"),
        # Triple-length variants (public CUP descriptions stop at 60 but size the field b...084):
        # 56 = PIN 24 + 4, MAC 24 + 4; 84 = PIN, MAC and track keys, 24 + 4 each.
        56: KeyLayout(56, 24, 24, False, None),
        84: KeyLayout(84, 24, 24, True, None),
    }
)
"""Field 62 layouts by size in bytes."""
DEFAULT_KEY_LAYOUT = 40  # CUP 60.3 = 003, double-length keys: what current CUP terminals ask for


def key_layout(size: int) -> KeyLayout:
    """The layout of a field 62 of ``size`` bytes; ``Field62Error`` for sizes no layout has."""
    layout = KEY_LAYOUTS.get(size) if isinstance(size, int) and not isinstance(size, bool) else None
    if layout is None:
        known = ", ".join(str(n) for n in sorted(KEY_LAYOUTS))
        raise Field62Error(f"field 62 key layout must be one of {known} bytes, got {size!r}")
    return layout


def layout_for_network_code(code: str) -> int | None:
    """The field 62 size a CUP terminal asks for with sign-on 60.3 (001 → 24, 003 → 40, 004 → 60)."""
    for size, layout in KEY_LAYOUTS.items():
        if layout.network_code == code:
            return size
    return None


MAC_KEY_LENGTHS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {"cup-ecb": (8, 16, 24), "x9.9": (8,), "x9.19": (16,)}
)
"""MAC key lengths each algorithm takes."""

PREFERRED_MAC_KEY_LENGTH: Mapping[str, int] = MappingProxyType({"none": 8, "cup-ecb": 8, "x9.9": 8, "x9.19": 16})
"""The MAC key length the switch generates per algorithm: CUP MACs with a single-length key."""


@dataclass(frozen=True, slots=True)
class WorkingKeys:
    """The clear working keys of one sign-on session. ``repr`` shows check values, never keys."""

    pin_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    track_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_key(self.pin_key, "PIN key")
        _check_key(self.mac_key, "MAC key")
        if self.track_key is not None:
            _check_key(self.track_key, "track key")

    def __repr__(self) -> str:
        track = check_value(self.track_key).hex().upper() if self.track_key else None
        return (
            f"WorkingKeys(pin_key=<{len(self.pin_key)} bytes, check {check_value(self.pin_key).hex().upper()}>, "
            f"mac_key=<{len(self.mac_key)} bytes, check {check_value(self.mac_key).hex().upper()}>, "
            f"track_key={f'<{len(self.track_key)} bytes, check {track}>' if self.track_key else None})"
        )

    @classmethod
    def generate(
        cls,
        rng: random.Random,
        *,
        double_length: bool,
        mac_key_length: int | None = None,
        track_key: bool = False,
    ) -> WorkingKeys:
        """Fresh keys with odd parity, drawn only from ``rng`` so a seed reproduces a session.

        PIN (and track) keys are 16 bytes with ``double_length``, else 8; the MAC key is
        ``mac_key_length`` bytes (default: the PIN key's length).
        """
        length = 16 if double_length else 8
        return cls._draw(rng, length, mac_key_length or length, track_key)

    @classmethod
    def for_layout(cls, rng: random.Random, layout: int, *, mac_algorithm: str = "cup-ecb") -> WorkingKeys:
        """Keys that fill field 62 ``layout`` and suit ``mac_algorithm`` (what the switch hands out).

        The MAC key is single-length for CUP ECB and X9.9, double-length for X9.19; a layout whose
        MAC slot is too small for the algorithm's key is refused.
        """
        shape = key_layout(layout)
        if mac_algorithm not in PREFERRED_MAC_KEY_LENGTH:
            raise MacError(f"unknown MAC algorithm {mac_algorithm!r} (known: {', '.join(PREFERRED_MAC_KEY_LENGTH)})")
        mac_length = PREFERRED_MAC_KEY_LENGTH[mac_algorithm]
        if mac_length > shape.mac_slot:
            raise Field62Error(
                f"{mac_algorithm} needs a {mac_length}-byte MAC key but field 62 layout {layout} carries "
                f"{shape.mac_slot} bytes; use a double-length layout (40 or 60)"
            )
        return cls._draw(rng, shape.key_length, mac_length, shape.track_key)

    @classmethod
    def _draw(cls, rng: random.Random, length: int, mac_length: int, track: bool) -> WorkingKeys:
        pin = with_odd_parity(rng.randbytes(length))
        mac = with_odd_parity(rng.randbytes(mac_length))
        return cls(pin, mac, with_odd_parity(rng.randbytes(length)) if track else None)


def encrypt_field62(tmk: bytes, keys: WorkingKeys, *, layout: int) -> bytes:
    """Field 62 of a sign-on reply: each key encrypted under ``tmk`` (ECB) + its 4-byte check value.

    A MAC key shorter than its slot is encrypted and followed by zero bytes (the CUP convention for
    the single-length MAC key in the 40- and 60-byte layouts).
    """
    _check_key(tmk, "TMK")
    shape = key_layout(layout)
    if shape.track_key and keys.track_key is None:
        raise Field62Error(f"field 62 layout {layout} carries a track key, but none was given")
    if not shape.track_key and keys.track_key is not None:
        raise Field62Error(f"field 62 layout {layout} has no room for the track key; use 60 or 84")
    clear_keys = [keys.pin_key, keys.mac_key] + ([keys.track_key] if keys.track_key is not None else [])
    parts: list[bytes] = []
    for (name, slot), key in zip(shape.slots, clear_keys, strict=True):
        fits = len(key) <= slot if name == "MAC key" else len(key) == slot
        if not fits:
            wanted = f"at most {slot}" if name == "MAC key" else f"{slot}"
            raise Field62Error(f"field 62 layout {layout} needs a {name} of {wanted} bytes, got {len(key)}")
        encrypted = des_encrypt(tmk, key)
        parts += [encrypted, bytes(slot - len(encrypted)), check_value(key)]
    return b"".join(parts)


def decrypt_field62(tmk: bytes, data: bytes, *, layout: int | None = None) -> WorkingKeys:
    """The clear working keys from field 62, every check value verified (``KeyCheckError`` if not).

    ``layout`` None takes it from the size of ``data``. In the MAC slot, trailing zero blocks after
    the first mean a shorter MAC key (CUP: 8 encrypted bytes + 8 zero bytes). A host that instead
    encrypts the key *with* its zero padding is accepted too: the check value decides which key it is.
    """
    _check_key(tmk, "TMK")
    if not isinstance(data, bytes | bytearray):
        raise Field62Error(f"field 62 must be bytes, got {type(data).__name__}")
    shape = key_layout(len(data) if layout is None else layout)
    if len(data) != shape.size:
        raise Field62Error(f"field 62 layout {shape.size} is {shape.size} bytes, got {len(data)}")
    keys: list[bytes] = []
    offset = 0
    for name, slot in shape.slots:
        encrypted = bytes(data[offset : offset + slot])
        received = bytes(data[offset + slot : offset + slot + CHECK_VALUE_LENGTH])
        offset += slot + CHECK_VALUE_LENGTH
        if name == "MAC key":
            encrypted = _strip_zero_blocks(encrypted)
        clear = des_decrypt(tmk, encrypted)
        candidates = [clear]
        if name == "MAC key" and _strip_zero_blocks(clear) != clear:
            candidates.insert(0, _strip_zero_blocks(clear))
        for candidate in candidates:
            if hmac.compare_digest(check_value(candidate), received):
                keys.append(candidate)
                break
        else:
            raise KeyCheckError(name, received, check_value(candidates[-1]))
    return WorkingKeys(keys[0], keys[1], keys[2] if shape.track_key else None)


def _strip_zero_blocks(data: bytes) -> bytes:
    """Drop trailing all-zero 8-byte blocks, keeping at least one block."""
    while len(data) > BLOCK and not any(data[-BLOCK:]):
        data = data[:-BLOCK]
    return data


# ---------------------------------------------------------------------------------------------------
# MAC algorithms


def _zero_pad(data: bytes) -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise MacError(f"MAC input must be bytes, got {type(data).__name__}")
    if not data:
        raise MacError("MAC input is empty: there is nothing to authenticate")
    return bytes(data) + bytes(-len(data) % BLOCK)


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def mac_cup_ecb(mac_key: bytes, data: bytes) -> bytes:
    """The CUP POS "ECB" MAC (银联 ECB 算法): 8 ASCII hex characters, the field 64 value.

    1. zero-pad ``data`` to whole 8-byte blocks (no block is added when it already fits) and XOR
       the blocks together;
    2. write the 8-byte result as 16 upper-case hex characters (16 ASCII bytes);
    3. encrypt the first 8 with the MAC key, XOR the result with the last 8, encrypt again;
    4. write that as 16 upper-case hex characters; the first 8 are the MAC.

    The MAC key is normally single DES; a 16- or 24-byte key makes each step 3DES.
    """
    _check_key(mac_key, "MAC key", MAC_KEY_LENGTHS["cup-ecb"])
    padded = _zero_pad(data)
    folded = bytes(BLOCK)
    for start in range(0, len(padded), BLOCK):
        folded = _xor(folded, padded[start : start + BLOCK])
    expanded = folded.hex().upper().encode("ascii")
    first = des_encrypt(mac_key, expanded[:BLOCK])
    second = des_encrypt(mac_key, _xor(first, expanded[BLOCK:]))
    return second.hex().upper().encode("ascii")[:MAC_LENGTH]


def mac_x99(key8: bytes, data: bytes) -> bytes:
    """ANSI X9.9 (ISO 9797-1 algorithm 1): single-DES CBC, zero IV, zero padding, last block."""
    _check_key(key8, "X9.9 MAC key", MAC_KEY_LENGTHS["x9.9"])
    return _des_cbc_last_block(key8, data)


def mac_x919(key16: bytes, data: bytes) -> bytes:
    """ANSI X9.19 retail MAC (ISO 9797-1 algorithm 3): X9.9 with K1, then decrypt K2, encrypt K1."""
    _check_key(key16, "X9.19 MAC key", MAC_KEY_LENGTHS["x9.19"])
    left, right = key16[:BLOCK], key16[BLOCK:]
    return des_encrypt(left, des_decrypt(right, _des_cbc_last_block(left, data)))


MacFunction = Callable[[bytes, bytes], bytes]
MAC_ALGORITHMS: Mapping[str, MacFunction] = MappingProxyType(
    {"cup-ecb": mac_cup_ecb, "x9.9": mac_x99, "x9.19": mac_x919}
)
"""MAC algorithm name (as profiles spell it) → function(key, data) → 8 bytes."""

MAC_CHOICES = ("none", *MAC_ALGORITHMS)
"""What a profile's ``mac`` may say: no MAC, or one of the algorithms."""


# ---------------------------------------------------------------------------------------------------
# MAC placement in an encoded message


@dataclass(frozen=True, slots=True)
class MacPlacement:
    """Where the MAC sits in a dialect's encoded message (no length header, no TPDU).

    ``header_length`` bytes of dialect header precede the MTI and are outside the MAC input (the
    CUP convention: MAC from the MTI up to field 63); ``hex_field`` means the MAC field travels as
    16 hex characters (dialects with ``binary = "hex"``) instead of 8 raw bytes.
    """

    header_length: int = 0
    hex_field: bool = False

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> MacPlacement:
        spec = dialect.spec.get("64")
        if spec is None or spec.get("len_type") != 0:
            raise MacError(f"dialect {dialect.name} has no fixed-length field 64 to carry a MAC")
        hex_field = spec.get("data_enc") != "b"
        if spec.get("max_len") != (2 * MAC_LENGTH if hex_field else MAC_LENGTH):
            raise MacError(f"dialect {dialect.name}: field 64 is not an 8-byte MAC ({spec.get('max_len')} long)")
        return cls(dialect.header_length, hex_field)

    @property
    def field_length(self) -> int:
        """Bytes the MAC field takes on the wire."""
        return 2 * MAC_LENGTH if self.hex_field else MAC_LENGTH


def mac_input(raw_message: bytes, mac_field_len: int = MAC_LENGTH, *, header_length: int = 0) -> bytes:
    """The bytes a MAC covers: from the MTI up to, not including, the trailing MAC field value.

    ``raw_message`` is the encoded message without length header and TPDU; its dialect header
    (``header_length`` bytes, CUP: 6) is skipped. The MAC field (64, or 128 with a secondary
    bitmap) is always the message's last field, so its value is the last ``mac_field_len`` bytes.
    """
    if not isinstance(raw_message, bytes | bytearray):
        raise MacError(f"message must be bytes, got {type(raw_message).__name__}")
    if header_length < 0 or mac_field_len <= 0:
        raise MacError(f"bad MAC placement: header {header_length} bytes, MAC field {mac_field_len} bytes")
    if len(raw_message) <= header_length + mac_field_len:
        raise MacError(
            f"message of {len(raw_message)} bytes is too short for a {header_length}-byte header, "
            f"an MTI and a {mac_field_len}-byte MAC field"
        )
    return bytes(raw_message[header_length : len(raw_message) - mac_field_len])


def _algorithm(algorithm: str) -> MacFunction:
    function = MAC_ALGORITHMS.get(algorithm)
    if function is None:
        raise MacError(f"unknown MAC algorithm {algorithm!r} (known: {', '.join(MAC_ALGORITHMS)})")
    return function


def compute_mac(encoded: bytes, algorithm: str, key: bytes, placement: MacPlacement = MacPlacement()) -> bytes:
    """The 8-byte MAC of an encoded message whose last field is the MAC (its value is ignored)."""
    data = mac_input(encoded, placement.field_length, header_length=placement.header_length)
    return _algorithm(algorithm)(key, data)


def apply_mac(encoded: bytes, algorithm: str, key: bytes, placement: MacPlacement = MacPlacement()) -> bytes:
    """``encoded`` with its trailing MAC field (a placeholder, see ``with_mac_placeholder``) replaced
    by the MAC; the rest of the bytes are unchanged."""
    mac = compute_mac(encoded, algorithm, key, placement)
    wire = mac.hex().upper().encode("ascii") if placement.hex_field else mac
    return bytes(encoded[: len(encoded) - placement.field_length]) + wire


def verify_mac(encoded: bytes, algorithm: str, key: bytes, placement: MacPlacement = MacPlacement()) -> bool:
    """Whether the trailing MAC field of ``encoded`` is the MAC of the rest (constant-time compare).

    Malformed input (message too short, unknown algorithm, wrong key size) raises ``MacError``;
    a MAC that merely differs returns False.
    """
    mac = compute_mac(encoded, algorithm, key, placement)
    received = bytes(encoded[len(encoded) - placement.field_length :])
    if placement.hex_field:
        return hmac.compare_digest(received.upper(), mac.hex().upper().encode("ascii"))
    return hmac.compare_digest(received, mac)


def mac_field(message: Message) -> int:
    """The field that carries the message's MAC: 128 when a secondary bitmap is present, else 64."""
    return 128 if any(number > 64 for number in message.fields) else 64


def with_mac_placeholder(message: Message) -> Message:
    """A copy with eight zero bytes in the MAC field (64 or 128), ready to encode and ``apply_mac``.

    With a secondary bitmap a stale field 64 is dropped: the MAC must be the last field.
    """
    number = mac_field(message)
    copy = message.copy(drop=(64,) if number == 128 else ())
    copy.fields[number] = "00" * MAC_LENGTH
    return copy


# ---------------------------------------------------------------------------------------------------
# PIN blocks (ISO 9564 format 0)


PIN_LENGTHS = range(4, 13)


def _pan_field(pan: str) -> bytes:
    """0000 + the 12 rightmost PAN digits excluding the check digit (left-padded with zeros)."""
    if not isinstance(pan, str) or not (pan.isascii() and pan.isdigit()) or not 8 <= len(pan) <= 19:
        raise PinBlockError(f"PAN must be 8 to 19 digits, got {pan!r}")
    return bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0"))


def pin_block_format0(pin: str, pan: str) -> bytes:
    """The clear ISO format 0 PIN block: (0, length, PIN, F padding) XOR (0000, 12 PAN digits)."""
    if not isinstance(pin, str) or not (pin.isascii() and pin.isdigit()) or len(pin) not in PIN_LENGTHS:
        shown = f"{len(pin)} characters" if isinstance(pin, str) else type(pin).__name__  # never echo a PIN
        raise PinBlockError(f"PIN must be 4 to 12 digits, got {shown}")
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    return _xor(pin_field, _pan_field(pan))


def pin_from_block(block: bytes, pan: str) -> str:
    """The PIN in a clear format 0 block for ``pan``; ``PinBlockError`` when it is not one.

    A block built for another PAN, or decrypted with the wrong key, almost always fails the format
    checks (control nibble 0, length 4-12, digits, F padding) and so raises rather than returning a
    wrong PIN.
    """
    if not isinstance(block, bytes | bytearray) or len(block) != BLOCK:
        shown = f"{len(block)} bytes" if isinstance(block, bytes | bytearray) else type(block).__name__
        raise PinBlockError(f"a PIN block is 8 bytes, got {shown}")
    nibbles = _xor(bytes(block), _pan_field(pan)).hex().upper()
    if nibbles[0] != "0":
        raise PinBlockError(f"not ISO format 0: control nibble is {nibbles[0]}, expected 0")
    length = int(nibbles[1], 16)
    if length not in PIN_LENGTHS:
        raise PinBlockError(f"PIN length nibble is {length}, expected 4 to 12")
    pin, padding = nibbles[2 : 2 + length], nibbles[2 + length :]
    if not pin.isdigit():
        raise PinBlockError("PIN digits are not all 0-9 (wrong PAN or wrong PIN key?)")
    if padding != "F" * len(padding):
        raise PinBlockError("PIN block padding is not all F (wrong PAN or wrong PIN key?)")
    return pin


def encrypt_pin_block(pin_key: bytes, block: bytes) -> bytes:
    """Field 52: the clear PIN block encrypted under the PIN working key."""
    if len(block) != BLOCK:
        raise PinBlockError(f"a PIN block is 8 bytes, got {len(block)}")
    return des_encrypt(pin_key, block)


def decrypt_pin_block(pin_key: bytes, block: bytes) -> bytes:
    """The clear PIN block from field 52."""
    if len(block) != BLOCK:
        raise PinBlockError(f"a PIN block is 8 bytes, got {len(block)}")
    return des_decrypt(pin_key, block)


def verify_pin(pin_key: bytes, field52: bytes, pan: str, expected_pin: str) -> bool:
    """Whether encrypted PIN block ``field52`` holds ``expected_pin`` for ``pan`` (host: else 55).

    ``PinBlockError`` when the block does not decrypt to a format 0 block at all (CUP: 99).
    """
    entered = pin_from_block(decrypt_pin_block(pin_key, field52), pan)
    return hmac.compare_digest(entered.encode("ascii"), expected_pin.encode("ascii"))
