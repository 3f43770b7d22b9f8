"""switch.security: DES/3DES, check values, CUP field 62 working keys, MAC algorithms, ISO PIN blocks.

Expected values come from published vectors (FIPS/NBS DES, NIST SP 800-67 TDEA, Botan's X9.19 MAC
vectors, a CUP POS frame with its host-computed MAC, the CUP blog example of a TMK-encrypted MAC key)
or are computed here step by step straight with ``cryptography``, never through the module under test.
"""

from __future__ import annotations

import random
import warnings

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.dialect import load_dialect
from switch.codec.message import Codec, Message
from switch.security import (
    KEY_LAYOUTS,
    MAC_ALGORITHMS,
    MAC_CHOICES,
    Field62Error,
    KeyCheckError,
    MacError,
    MacPlacement,
    PinBlockError,
    SecurityError,
    WorkingKeys,
    apply_mac,
    check_value,
    compute_mac,
    decrypt_field62,
    decrypt_pin_block,
    des_decrypt,
    des_encrypt,
    encrypt_field62,
    encrypt_pin_block,
    has_odd_parity,
    key_layout,
    layout_for_network_code,
    mac_cup_ecb,
    mac_field,
    mac_input,
    mac_x99,
    mac_x919,
    pin_block_format0,
    pin_from_block,
    verify_mac,
    verify_pin,
    with_mac_placeholder,
    with_odd_parity,
)

H = bytes.fromhex
PROPERTY = settings(max_examples=200, deadline=None)

# --- the independent oracle: cryptography used directly --------------------------------------------


def oracle_des(key: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    """ECB with the key spelled out as three 8-byte parts, the way the 3DES standard defines it."""
    k1, k2, k3 = key[:8], key[8:16] or key[:8], key[16:24] or key[:8]
    cipher = Cipher(TripleDES(k1 + k2 + k3), modes.ECB())
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(data) + context.finalize()


def oracle_xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def oracle_pad(data: bytes) -> bytes:
    return data + b"\x00" * ((8 - len(data) % 8) % 8)


keys = st.sampled_from([8, 16, 24]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
blocks = st.integers(1, 6).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n))


# --- DES / 3DES ----------------------------------------------------------------------------------


def test_des_matches_the_classic_fips_vector():
    key = H("0123456789ABCDEF")
    assert des_encrypt(key, b"Now is t") == H("3FA40E8A984D4815")
    assert des_decrypt(key, H("3FA40E8A984D4815")) == b"Now is t"


def test_three_key_tdea_matches_the_nist_sp800_67_example():
    key = H("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123")
    assert des_encrypt(key, b"The qufc") == H("A826FD8CE53B855F")


def test_ecb_encrypts_each_block_on_its_own():
    key = H("0123456789ABCDEFFEDCBA9876543210")
    two = des_encrypt(key, b"Now is tNow is t")
    assert two[:8] == two[8:] == oracle_des(key, b"Now is t")


def test_short_keys_are_the_repeated_long_ones():
    single, double = H("0123456789ABCDEF"), H("0123456789ABCDEFFEDCBA9876543210")
    assert des_encrypt(single, bytes(8)) == des_encrypt(single * 3, bytes(8))
    assert des_encrypt(double, bytes(8)) == des_encrypt(double + double[:8], bytes(8))


def test_no_deprecation_warning_for_8_or_16_byte_keys():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        des_encrypt(bytes(range(8)), bytes(8))
        des_decrypt(bytes(range(16)), bytes(8))


@pytest.mark.parametrize("length", [0, 7, 9, 15, 32])
def test_keys_of_other_lengths_are_refused(length):
    with pytest.raises(SecurityError, match=f"8, 16 or 24 bytes, got {length}"):
        des_encrypt(bytes(length), bytes(8))


@pytest.mark.parametrize("data", [b"", b"1234567", b"123456789"])
def test_data_must_be_whole_blocks(data):
    with pytest.raises(SecurityError, match="8-byte blocks"):
        des_encrypt(bytes(8), data)


@PROPERTY
@given(keys, blocks)
def test_decrypt_inverts_encrypt_and_both_match_the_oracle(key, data):
    encrypted = des_encrypt(key, data)
    assert encrypted == oracle_des(key, data)
    assert des_decrypt(key, encrypted) == data


# --- check values and parity -----------------------------------------------------------------------


def test_check_values_of_the_textbook_test_keys():
    # The published KCVs: D5D44F for 0123456789ABCDEF, 08D7B4 for the double-length test key.
    assert check_value(H("0123456789ABCDEF"), 3) == H("D5D44F")
    assert check_value(H("0123456789ABCDEFFEDCBA9876543210"), 3) == H("08D7B4")
    assert (
        check_value(H("0123456789ABCDEFFEDCBA9876543210"))
        == oracle_des(H("0123456789ABCDEFFEDCBA9876543210"), bytes(8))[:4]
    )


@pytest.mark.parametrize("length", [0, 9])
def test_check_value_length_is_1_to_8(length):
    with pytest.raises(SecurityError, match=r"1\.\.8"):
        check_value(bytes(8), length)


@PROPERTY
@given(keys)
def test_odd_parity_changes_no_cipher_result(key):
    adjusted = with_odd_parity(key)
    assert has_odd_parity(adjusted)
    assert with_odd_parity(adjusted) == adjusted
    assert all(a >> 1 == b >> 1 for a, b in zip(key, adjusted, strict=True))  # only the low bits move
    assert des_encrypt(adjusted, bytes(8)) == des_encrypt(key, bytes(8))


# --- working keys ------------------------------------------------------------------------------------


def test_generated_keys_are_reproducible_from_the_seed():
    first = WorkingKeys.generate(random.Random(7), double_length=True)
    assert first == WorkingKeys.generate(random.Random(7), double_length=True)
    assert first != WorkingKeys.generate(random.Random(8), double_length=True)


@pytest.mark.parametrize(
    ("double", "mac_length", "track", "lengths"),
    [
        (False, None, False, (8, 8, None)),
        (True, None, False, (16, 16, None)),
        (True, 8, True, (16, 8, 16)),
    ],
)
def test_generated_key_lengths_and_parity(double, mac_length, track, lengths):
    keys_ = WorkingKeys.generate(random.Random(1), double_length=double, mac_key_length=mac_length, track_key=track)
    got = (len(keys_.pin_key), len(keys_.mac_key), len(keys_.track_key) if keys_.track_key else None)
    assert got == lengths
    assert all(has_odd_parity(key) for key in (keys_.pin_key, keys_.mac_key, keys_.track_key) if key)


@pytest.mark.parametrize(
    ("layout", "algorithm", "lengths"),
    [
        (24, "cup-ecb", (8, 8, None)),
        (40, "cup-ecb", (16, 8, None)),  # CUP: double-length PIN key, single-length MAC key
        (40, "x9.19", (16, 16, None)),
        (60, "x9.9", (16, 8, 16)),
        (56, "none", (24, 8, None)),
        (84, "x9.19", (24, 16, 24)),
    ],
)
def test_keys_for_a_layout_fit_the_layout_and_the_mac(layout, algorithm, lengths):
    keys_ = WorkingKeys.for_layout(random.Random(3), layout, mac_algorithm=algorithm)
    got = (len(keys_.pin_key), len(keys_.mac_key), len(keys_.track_key) if keys_.track_key else None)
    assert got == lengths


def test_x919_cannot_fit_the_single_des_layout():
    with pytest.raises(Field62Error, match=r"x9\.19 needs a 16-byte MAC key but field 62 layout 24"):
        WorkingKeys.for_layout(random.Random(3), 24, mac_algorithm="x9.19")
    with pytest.raises(MacError, match="unknown MAC algorithm 'md5'"):
        WorkingKeys.for_layout(random.Random(3), 40, mac_algorithm="md5")


def test_working_keys_repr_shows_check_values_not_keys():
    keys_ = WorkingKeys(H("0123456789ABCDEF"), H("0123456789ABCDEFFEDCBA9876543210"))
    text = repr(keys_)
    assert "0123456789" not in text.upper()
    assert "D5D44FF7" in text and "08D7B4FB" in text


def test_working_keys_refuse_bad_key_sizes():
    with pytest.raises(SecurityError, match="MAC key must be 8, 16 or 24 bytes, got 5"):
        WorkingKeys(bytes(8), bytes(5))


# --- field 62 ----------------------------------------------------------------------------------------

TMK = H("0123456789ABCDEFFEDCBA9876543210")


def oracle_slot(tmk: bytes, key: bytes, slot: int) -> bytes:
    """One field 62 entry: key under the TMK, zero-filled to the slot, then the key's check value."""
    encrypted = oracle_des(tmk, key)
    return encrypted + bytes(slot - len(encrypted)) + oracle_des(key, bytes(8))[:4]


def test_decrypts_the_published_cup_example_key():
    # CUP blog example: under TMK 70F2...B923 the MAC key 96D605EA176B7E9E decrypts to C24A8FB57AA20123.
    tmk, mac_clear = H("70F2A84CCBC2AE8625CBB0F2C22AB923"), H("C24A8FB57AA20123")
    pin_clear = H("1C2D3E4F5A6B7C8D")
    field62 = oracle_slot(tmk, pin_clear, 8) + H("96D605EA176B7E9E") + oracle_des(mac_clear, bytes(8))[:4]
    keys_ = decrypt_field62(tmk, field62, layout=24)
    assert keys_ == WorkingKeys(pin_clear, mac_clear)


def test_40_byte_layout_sends_the_single_length_mac_key_then_8_zero_bytes():
    keys_ = WorkingKeys(H("0123456789ABCDEF89ABCDEF01234567"), H("FEDCBA9876543210"))
    field62 = encrypt_field62(TMK, keys_, layout=40)
    assert field62 == oracle_slot(TMK, keys_.pin_key, 16) + oracle_slot(TMK, keys_.mac_key, 16)
    assert field62[28:36] == bytes(8)
    assert decrypt_field62(TMK, field62) == keys_


def test_a_host_that_encrypts_the_zero_padding_is_understood_too():
    pin, mac = H("0123456789ABCDEF89ABCDEF01234567"), H("FEDCBA9876543210")
    padded_mac = oracle_des(TMK, mac + bytes(8)) + oracle_des(mac, bytes(8))[:4]
    field62 = oracle_slot(TMK, pin, 16) + padded_mac
    assert decrypt_field62(TMK, field62).mac_key == mac
    # ...and if its check value is the one of the padded 16-byte key, that is the key.
    as_double = oracle_des(TMK, mac + bytes(8)) + oracle_des(mac + bytes(8), bytes(8))[:4]
    assert decrypt_field62(TMK, oracle_slot(TMK, pin, 16) + as_double).mac_key == mac + bytes(8)


def test_60_byte_layout_carries_a_track_key():
    keys_ = WorkingKeys(bytes(range(16)), bytes(range(16, 24)), bytes(range(32, 48)))
    field62 = encrypt_field62(TMK, keys_, layout=60)
    assert field62[40:] == oracle_slot(TMK, keys_.track_key, 16)
    assert decrypt_field62(TMK, field62, layout=60) == keys_


@PROPERTY
@given(st.integers(0, 2**32), st.sampled_from(sorted(KEY_LAYOUTS)), st.sampled_from(MAC_CHOICES), keys)
def test_field62_round_trips_for_every_layout(seed, layout, algorithm, tmk):
    if algorithm == "x9.19" and layout == 24:
        return
    keys_ = WorkingKeys.for_layout(random.Random(seed), layout, mac_algorithm=algorithm)
    field62 = encrypt_field62(tmk, keys_, layout=layout)
    assert len(field62) == layout
    assert decrypt_field62(tmk, field62) == keys_


@pytest.mark.parametrize(("offset", "name"), [(17, "PIN key"), (38, "MAC key"), (3, "PIN key"), (22, "MAC key")])
def test_a_damaged_key_or_check_value_fails_the_check(offset, name):
    keys_ = WorkingKeys.for_layout(random.Random(5), 40)
    field62 = bytearray(encrypt_field62(TMK, keys_, layout=40))
    field62[offset] ^= 0x40
    with pytest.raises(KeyCheckError) as caught:
        decrypt_field62(TMK, bytes(field62))
    assert caught.value.key == name
    assert name in str(caught.value) and "wrong TMK?" in str(caught.value)


def test_the_wrong_tmk_fails_the_first_check():
    field62 = encrypt_field62(TMK, WorkingKeys.for_layout(random.Random(5), 24), layout=24)
    with pytest.raises(KeyCheckError, match="PIN key check value mismatch"):
        decrypt_field62(H("FEDCBA98765432100123456789ABCDEF"), field62)


@pytest.mark.parametrize(
    ("data", "layout", "message"),
    [
        (bytes(30), None, "must be one of 24, 40, 56, 60, 84 bytes, got 30"),
        (bytes(24), 40, "layout 40 is 40 bytes, got 24"),
        (bytes(24), 41, "got 41"),
    ],
)
def test_field62_of_the_wrong_size_is_refused(data, layout, message):
    with pytest.raises(Field62Error, match=message):
        decrypt_field62(TMK, data, layout=layout)


def test_track_keys_must_match_the_layout():
    with_track = WorkingKeys(bytes(16), bytes(8), bytes(16))
    with pytest.raises(Field62Error, match="no room for the track key"):
        encrypt_field62(TMK, with_track, layout=40)
    with pytest.raises(Field62Error, match="carries a track key, but none was given"):
        encrypt_field62(TMK, WorkingKeys(bytes(16), bytes(8)), layout=60)
    with pytest.raises(Field62Error, match="needs a PIN key of 16 bytes, got 8"):
        encrypt_field62(TMK, WorkingKeys(bytes(8), bytes(8)), layout=40)
    with pytest.raises(Field62Error, match="needs a MAC key of at most 8 bytes, got 16"):
        encrypt_field62(TMK, WorkingKeys(bytes(8), bytes(16)), layout=24)


def test_layouts_and_cup_network_codes():
    assert [layout_for_network_code(code) for code in ("001", "003", "004", "002")] == [24, 40, 60, None]
    assert key_layout(60).slots == (("PIN key", 16), ("MAC key", 16), ("track key", 16))
    with pytest.raises(Field62Error):
        key_layout(True)  # type: ignore[arg-type]


# --- MAC algorithms ----------------------------------------------------------------------------------

# A CUP POS 0200 frame posted with the MAC its host computed ("B3A092AE"), MAC key 0723C80DB5F4CD3D
# (sent as a double-length key with equal halves): length 007F, TPDU 6000030000, header 603210320072,
# then MTI 0200 ... field 64. It pins down the convention: the MAC input starts at the MTI.
CUP_FRAME = H(
    "007F600003000060321032007202003020048000C0801500000000000000123400000203009930303030303030313935"
    "3237313831383232313738373531353600192600000100060000000000435F0112323834343132333435363738393031"
    "3233345F03063136303033365F04063230303832365C0230314233413039324145"
)
CUP_MAC_KEY = H("0723C80DB5F4CD3D0723C80DB5F4CD3D")


def test_cup_frame_fixture_is_intact():
    assert int.from_bytes(CUP_FRAME[:2], "big") == len(CUP_FRAME) - 2
    assert CUP_FRAME[13:15] == H("0200") and CUP_FRAME[-8:] == b"B3A092AE"


def test_cup_ecb_reproduces_a_real_host_mac():
    message = CUP_FRAME[7:]  # without length header and TPDU
    assert mac_cup_ecb(CUP_MAC_KEY, message[6:-8]) == b"B3A092AE"
    assert verify_mac(message, "cup-ecb", CUP_MAC_KEY, MacPlacement(header_length=6))
    placeholder = message[:-8] + bytes(8)
    assert apply_mac(placeholder, "cup-ecb", CUP_MAC_KEY, MacPlacement(header_length=6)) == message
    # with the header inside the MAC input, as some implementations try, the MAC does not match
    assert not verify_mac(message, "cup-ecb", CUP_MAC_KEY)
    assert not verify_mac(message[:-1] + b"F", "cup-ecb", CUP_MAC_KEY, MacPlacement(header_length=6))


def oracle_cup_ecb(key: bytes, data: bytes) -> bytes:
    padded = oracle_pad(data)
    folded = bytes(8)
    for start in range(0, len(padded), 8):
        folded = oracle_xor(folded, padded[start : start + 8])
    hex16 = folded.hex().upper().encode()
    step = oracle_des(key, oracle_xor(oracle_des(key, hex16[:8]), hex16[8:]))
    return step.hex().upper().encode()[:8]


@PROPERTY
@given(
    st.sampled_from([8, 16]).flatmap(lambda n: st.binary(min_size=n, max_size=n)), st.binary(min_size=1, max_size=200)
)
def test_cup_ecb_follows_the_published_steps(key, data):
    mac = mac_cup_ecb(key, data)
    assert mac == oracle_cup_ecb(key, data)
    assert len(mac) == 8 and mac.decode().isalnum() and mac.decode() == mac.decode().upper()


def test_cup_ecb_adds_no_padding_block_to_whole_blocks_and_ignores_block_order():
    key = H("0123456789ABCDEF")
    # 8 bytes are one block as they are: the same MAC as with an explicit zero block after them
    assert mac_cup_ecb(key, b"ABCDEFGH") == mac_cup_ecb(key, b"ABCDEFGH" + bytes(8))
    assert mac_cup_ecb(key, b"ABCDEFG") == mac_cup_ecb(key, b"ABCDEFG\x00")
    # The XOR fold makes CUP ECB blind to the order of whole blocks: a known weakness, kept as specified.
    assert mac_cup_ecb(key, b"AAAAAAAABBBBBBBB") == mac_cup_ecb(key, b"BBBBBBBBAAAAAAAA")


BOTAN_IN_1 = H(
    "31311C3931383237333634351C1C35383134333237361C1C3B313233343536373839303132333435363D393931323130"
    "3030303F1C30303031323530301C393738363533343132343837363932331C"
)
BOTAN_IN_2 = H(
    "35383134333237361C3B313233343536373839303132333435363D1C30303031323530301C393738363533343132343837363932331C"
)
BOTAN_IN_4 = H(
    "3330303030323031393543555354303120202020552020202020202020202020202020202020202054303253454154504152"
    "594742324C54535435534F414131393935303232373133333934343030303020202020202020202020202020333030303031"
    "304139354558413030303030333144"
)


def test_x99_matches_published_vectors():
    # Botan's X9.19 vectors with a single-length key, where X9.19 reduces to X9.9.
    assert mac_x99(H("0123456789ABCDEF"), BOTAN_IN_1) == H("C156F1B8CDBFB451")
    assert mac_x99(H("0123456789ABCDEF"), BOTAN_IN_2) == H("AB4884061A159618")


def test_x919_matches_published_vectors():
    assert mac_x919(H("0123456789ABCDEFFEDCBA9876543210"), BOTAN_IN_1) == H("C209CCB78EE1B606")
    assert mac_x919(H("4061610D85685DB0F4D9F1C8FE15A123"), BOTAN_IN_4) == H("DBE9EB0FA03838D2")


def oracle_x99(key: bytes, data: bytes) -> bytes:
    state = bytes(8)
    padded = oracle_pad(data)
    for start in range(0, len(padded), 8):
        state = oracle_des(key, oracle_xor(state, padded[start : start + 8]))
    return state


@PROPERTY
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=1, max_size=200))
def test_x99_and_x919_follow_their_definitions(key16, data):
    left, right = key16[:8], key16[8:]
    assert mac_x99(left, data) == oracle_x99(left, data)
    assert mac_x919(key16, data) == oracle_des(left, oracle_des(right, oracle_x99(left, data), decrypt=True))


def test_mac_key_sizes_are_checked_per_algorithm():
    with pytest.raises(SecurityError, match=r"X9\.9 MAC key must be 8 bytes, got 16"):
        mac_x99(bytes(16), b"data")
    with pytest.raises(SecurityError, match=r"X9\.19 MAC key must be 16 bytes, got 8"):
        mac_x919(bytes(8), b"data")
    with pytest.raises(MacError, match="empty"):
        mac_cup_ecb(bytes(8), b"")
    assert set(MAC_ALGORITHMS) == {"cup-ecb", "x9.9", "x9.19"} and MAC_CHOICES[0] == "none"


# --- MAC placement -------------------------------------------------------------------------------------


def test_mac_input_skips_the_header_and_the_mac_field():
    raw = b"HEADER" + b"0200" + b"fields" + b"MACMACMA"
    assert mac_input(raw, header_length=6) == b"0200fields"
    assert mac_input(raw, 16) == b"HEADER02"  # a 16-byte (hex) MAC field
    with pytest.raises(MacError, match="too short"):
        mac_input(b"HEADERMACMACMA", header_length=6)
    with pytest.raises(MacError, match="unknown MAC algorithm 'sha1'"):
        compute_mac(raw, "sha1", bytes(8))


def test_placement_per_dialect():
    assert MacPlacement.for_dialect(load_dialect("cup-pos")) == MacPlacement(6, False)
    assert MacPlacement.for_dialect(load_dialect("iso87-binary")) == MacPlacement(0, False)
    ascii_dialect = MacPlacement.for_dialect(load_dialect("iso87-ascii"))
    assert ascii_dialect == MacPlacement(0, True) and ascii_dialect.field_length == 16


def test_mac_field_is_128_with_a_secondary_bitmap():
    assert mac_field(Message("0200", {3: "000000", 41: "T"})) == 64
    assert mac_field(Message("0200", {3: "000000", 70: "001"})) == 128
    placed = with_mac_placeholder(Message("0800", {64: "FF" * 8, 70: "001"}))
    assert placed.fields == {70: "001", 128: "00" * 8}


def cup_request() -> Message:
    fields = {3: "000000", 4: "000000001000", 11: "000001", 41: "CUP00001", 42: "898100000000001", 49: "156"}
    return Message("0200", {**fields, 60: "22000001000"}, "603100000000")


@pytest.mark.parametrize(
    ("dialect_name", "algorithm", "key"),
    [
        ("cup-pos", "cup-ecb", H("0723C80DB5F4CD3D")),
        ("iso87-binary", "x9.9", H("0123456789ABCDEF")),
        ("iso87-ascii", "x9.19", H("0123456789ABCDEFFEDCBA9876543210")),
        ("iso87-bcd", "cup-ecb", H("0123456789ABCDEFFEDCBA9876543210")),
    ],
)
def test_mac_travels_in_field_64_through_the_codec(dialect_name, algorithm, key):
    dialect = load_dialect(dialect_name)
    codec, placement = Codec(dialect), MacPlacement.for_dialect(dialect)
    request = cup_request()
    if dialect.header_length == 0:
        request = Message("0200", {k: v for k, v in request.fields.items() if k != 60})
    signed = apply_mac(codec.encode(with_mac_placeholder(request)), algorithm, key, placement)
    decoded = codec.decode(signed)
    body = codec.encode(with_mac_placeholder(decoded))[dialect.header_length : -placement.field_length]
    assert decoded.fields[64] == MAC_ALGORITHMS[algorithm](key, body).hex().upper()
    assert verify_mac(signed, algorithm, key, placement)
    assert not verify_mac(signed, algorithm, bytes(len(key)), placement)


@PROPERTY
@given(st.sampled_from(list(MAC_ALGORITHMS)), st.data())
def test_any_change_in_the_mac_input_is_caught(algorithm, data):
    key = {"cup-ecb": H("0123456789ABCDEF"), "x9.9": H("0123456789ABCDEF"), "x9.19": TMK}[algorithm]
    hex_field = data.draw(st.booleans())
    placement = MacPlacement(header_length=6, hex_field=hex_field)
    body = data.draw(st.binary(min_size=1, max_size=120))
    signed = apply_mac(b"HEADER" + body + bytes(placement.field_length), algorithm, key, placement)
    assert verify_mac(signed, algorithm, key, placement)
    position = data.draw(st.integers(6, 6 + len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(signed)
    tampered[position] ^= flip
    assert not verify_mac(bytes(tampered), algorithm, key, placement)
    tampered = bytearray(signed)
    tampered[0] ^= 0xFF  # the header is outside the MAC input by convention
    assert verify_mac(bytes(tampered), algorithm, key, placement)


def test_hex_mac_field_is_upper_case_and_verified_in_any_case():
    placement = MacPlacement(hex_field=True)
    signed = apply_mac(b"0200body" + bytes(16), "x9.9", H("0123456789ABCDEF"), placement)
    assert signed[-16:] == mac_x99(H("0123456789ABCDEF"), b"0200body").hex().upper().encode()
    assert verify_mac(signed[:-16] + signed[-16:].lower(), "x9.9", H("0123456789ABCDEF"), placement)


# --- PIN blocks ----------------------------------------------------------------------------------------


def test_format0_block_by_hand():
    # PIN field 04 1234 FFFFFFFFFF; PAN field 0000 + 12 rightmost digits without the check digit
    # (411111111111111 → 111111111111): 0000111111111111. XOR, nibble by nibble:
    assert pin_block_format0("1234", "4111111111111111") == H("041225EEEEEEEEEE")


@pytest.mark.parametrize(
    ("pin", "pan", "block"),
    [
        ("123456", "1234567890123456", "06127131 76FEDCBA"),  # published 16-digit PAN example
        ("123456", "123456789012345678", "061253DF FEDCBA98"),  # published 18-digit PAN example
        ("1234", "4111111111111112", "041225EE EEEEEEEE"),  # the check digit is not used
        # short PAN, zero-filled on the left: 0C123456789012FF XOR 0000000001234567
        ("123456789012", "12345678", "0C123456 79B35798"),
    ],
)
def test_format0_blocks(pin, pan, block):
    expected = H(block.replace(" ", ""))
    assert pin_block_format0(pin, pan) == expected
    assert pin_from_block(expected, pan) == pin


@PROPERTY
@given(st.from_regex(r"[0-9]{4,12}", fullmatch=True), st.from_regex(r"[0-9]{8,19}", fullmatch=True))
def test_pin_survives_a_block_round_trip(pin, pan):
    assert pin_from_block(pin_block_format0(pin, pan), pan) == pin


@pytest.mark.parametrize(
    ("clear_field", "message"),
    [
        ("141234FFFFFFFFFF", "control nibble is 1"),
        ("031234FFFFFFFFFF", "length nibble is 3"),
        ("0D1234FFFFFFFFFF", "length nibble is 13"),
        ("04123AFFFFFFFFFF", "not all 0-9"),
        ("041234FFFFFFFFFE", "padding is not all F"),
    ],
)
def test_malformed_pin_blocks_are_refused(clear_field, message):
    pan = "4111111111111111"
    block = oracle_xor(H(clear_field), H("0000111111111111"))
    with pytest.raises(PinBlockError, match=message):
        pin_from_block(block, pan)


@pytest.mark.parametrize(
    ("pin", "pan", "message"),
    [
        ("123", "4111111111111111", "PIN must be 4 to 12 digits, got 3 characters"),
        ("12a4", "4111111111111111", "PIN must be 4 to 12 digits"),
        ("1234567890123", "4111111111111111", "got 13 characters"),
        ("1234", "41111", "PAN must be 8 to 19 digits"),
        ("1234", "4111-1111-1111-1111", "PAN must be 8 to 19 digits"),
    ],
)
def test_bad_pin_or_pan_inputs(pin, pan, message):
    with pytest.raises(PinBlockError, match=message) as caught:
        pin_block_format0(pin, pan)
    assert "12a4" not in str(caught.value)  # a PIN is never echoed in an error


def test_pin_blocks_need_8_bytes():
    with pytest.raises(PinBlockError, match="8 bytes, got 7"):
        pin_from_block(bytes(7), "4111111111111111")
    with pytest.raises(PinBlockError, match="8 bytes, got 9"):
        encrypt_pin_block(bytes(8), bytes(9))


def test_field52_encryption_and_pin_verification():
    pin_key, pan = H("0123456789ABCDEFFEDCBA9876543210"), "6270000000000000"
    clear = pin_block_format0("123456", pan)
    field52 = encrypt_pin_block(pin_key, clear)
    assert field52 == oracle_des(pin_key, clear)
    assert decrypt_pin_block(pin_key, field52) == clear
    assert verify_pin(pin_key, field52, pan, "123456")
    assert not verify_pin(pin_key, field52, pan, "654321")
    with pytest.raises(PinBlockError):  # the wrong key yields no format 0 block (CUP: 99)
        verify_pin(H("FEDCBA98765432100123456789ABCDEF"), field52, pan, "123456")
