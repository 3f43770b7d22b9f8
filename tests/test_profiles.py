"""switch.profiles: terminal profile files, their defaults, and errors that name the file, line and key."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest

from switch.codec.framing import Framing
from switch.profiles import (
    DEFAULT_KEY_LAYOUT,
    DEFAULT_PIN_TRIES,
    ProfileError,
    ProfileSet,
    example_profiles_path,
    load_profiles,
    parse_profiles,
)
from switch.scenario import ScenarioError
from switch.security import (
    SecurityError,
    WorkingKeys,
    check_value,
    decrypt_field62,
    encrypt_pin_block,
    pin_block_format0,
    verify_pin,
)

H = bytes.fromhex
TEST_TMK = "0123456789ABCDEFFEDCBA9876543210"


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith("{"):
        return value  # an inline table, written as TOML already
    return json.dumps(value)


def terminal(**overrides: object) -> str:
    """One [[terminal]] table, a valid CUP terminal unless overridden (None drops a key).

    Lines: 1 the header, 2 terminal_id, 3 merchant_id, 4 tmk, 5 dialect, then new keys in order.
    """
    values: dict[str, object] = {
        "terminal_id": "CUP00001",
        "merchant_id": "898100000000001",
        "tmk": TEST_TMK,
        "dialect": "cup-pos",
    }
    values.update(overrides)
    lines = ["[[terminal]]"] + [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def parse(text: str) -> ProfileSet:
    return parse_profiles(toml(text), "p.toml")


def error_of(text: str) -> ProfileError:
    with pytest.raises(ProfileError) as caught:
        parse_profiles(toml(text), "p.toml")
    return caught.value


# --- the shipped example ----------------------------------------------------------------------------


def test_example_file_has_a_cup_and_an_iso_terminal():
    profiles = load_profiles(example_profiles_path())
    assert [profile.terminal_id for profile in profiles] == ["CUP00001", "ISO00001"]
    cup, iso = profiles.get("CUP00001"), profiles.get("ISO00001")
    assert cup is not None and iso is not None
    assert (cup.dialect, cup.family, cup.mac, cup.key_layout) == ("cup-pos", "cup", "cup-ecb", 40)
    assert cup.tmk == H(TEST_TMK) and cup.tmk_check_value == "08D7B4FB"
    assert cup.tpdu == H("6000030000") and cup.framing.tpdu
    assert cup.expected_pin("6270000000000000") == "123456" and cup.expected_pin("4200000000000000") is None
    assert (iso.dialect, iso.family, iso.mac, iso.tmk) == ("iso87-binary", "iso87", "x9.19", None)
    assert iso.static_keys is not None and len(iso.static_keys.mac_key) == 16
    assert profiles.unknown_terminal_code("cup") == "97"
    assert profiles.unknown_terminal_code("iso87") == "58"
    assert "CUP00001" in profiles and "NOPE0001" not in profiles and profiles.get("NOPE0001") is None


def test_example_profile_repr_shows_no_key():
    profiles = load_profiles(example_profiles_path())
    text = repr(list(profiles)).upper()
    assert "0123456789ABCDEF" not in text and "FEDCBA9876543210" not in text


def test_signon_keys_from_a_profile_decrypt_under_its_tmk():
    cup = load_profiles(example_profiles_path()).get("CUP00001")
    assert cup is not None
    keys = cup.issue_keys(random.Random(42))
    assert keys == cup.issue_keys(random.Random(42))  # reproducible from the seed
    assert len(keys.pin_key) == 16 and len(keys.mac_key) == 8  # CUP: single-length MAC key
    field62 = cup.field62(keys)
    assert len(field62) == 40
    assert decrypt_field62(H(TEST_TMK), field62) == keys
    # the layout a CUP terminal asks for in 60.3 (004: with a track key) overrides the profile's
    with_track = cup.issue_keys(random.Random(42), layout=60)
    assert with_track.track_key is not None
    assert decrypt_field62(H(TEST_TMK), cup.field62(with_track, layout=60)) == with_track


def test_static_keys_are_issued_as_they_are_and_have_no_field62():
    iso = load_profiles(example_profiles_path()).get("ISO00001")
    assert iso is not None and iso.static_keys is not None
    assert iso.issue_keys(random.Random(1)) is iso.static_keys
    with pytest.raises(SecurityError, match="no TMK: no field 62"):
        iso.field62(iso.static_keys)


def test_pins_of_a_profile_verify_a_field52():
    cup = load_profiles(example_profiles_path()).get("CUP00001")
    assert cup is not None
    keys = cup.issue_keys(random.Random(9))
    pan = "6270000000000000"
    field52 = encrypt_pin_block(keys.pin_key, pin_block_format0("123456", pan))
    expected = cup.expected_pin(pan)
    assert expected is not None and verify_pin(keys.pin_key, field52, pan, expected)
    assert cup.pin_tries == DEFAULT_PIN_TRIES


# --- defaults and settings ----------------------------------------------------------------------------


def test_defaults_by_dialect_family():
    profiles = parse(
        terminal() + terminal(terminal_id="ISO00001", merchant_id="MERCHANT0000001", dialect="iso87-binary")
    )
    cup, iso = profiles.get("CUP00001"), profiles.get("ISO00001")
    assert cup is not None and iso is not None
    assert (cup.mac, iso.mac) == ("cup-ecb", "none")
    assert cup.key_layout == iso.key_layout == DEFAULT_KEY_LAYOUT
    assert cup.tpdu is None and cup.pins == {} and cup.description == ""
    assert cup.line == 1 and iso.line == 6


def test_defaults_table_fills_every_terminal_and_terminals_override_it():
    profiles = parse(
        """
        [defaults]
        dialect = "cup-pos"
        tmk = "0123456789ABCDEF"
        mac = "x9.9"

        [[terminal]]
        terminal_id = "CUP00001"
        merchant_id = "898100000000001"

        [[terminal]]
        terminal_id = "CUP00002"
        merchant_id = "898100000000001"
        mac = "cup-ecb"
        """
    )
    first, second = profiles.get("CUP00001"), profiles.get("CUP00002")
    assert first is not None and second is not None
    assert first.tmk == H("0123456789ABCDEF") and first.mac == "x9.9" and second.mac == "cup-ecb"


def test_unknown_terminal_code_can_be_set():
    profiles = parse('[settings]\nunknown_terminal_code = "03"\n' + terminal())
    assert profiles.unknown_terminal_code("cup") == profiles.unknown_terminal_code("iso87") == "03"


def test_framing_overrides_apply_on_top_of_the_dialect():
    profiles = parse(terminal(framing='{ length_header = "ascii4", max_frame = 4096 }'))
    profile = profiles.get("CUP00001")
    assert profile is not None
    assert profile.framing == Framing(length_header="ascii4", tpdu=True, max_frame=4096)
    assert dict(profile.framing_overrides) == {"length_header": "ascii4", "max_frame": 4096}


def test_hex_may_be_grouped_with_spaces_and_any_case():
    profile = parse(terminal(tmk="01234567 89abcdef fedcba98 76543210", tmk_check="08d7b4")).get("CUP00001")
    assert profile is not None and profile.tmk == H(TEST_TMK)


def test_an_empty_file_is_an_empty_profile_set():
    profiles = parse("")
    assert len(profiles) == 0 and profiles.unknown_terminal_code("cup") == "97"


# --- errors: file, line, key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "where", "reason"),
    [
        ({"terminal_id": None}, "p.toml:1: terminal[1].terminal_id", "missing"),
        ({"terminal_id": "CUP1"}, "p.toml:2: terminal[1].terminal_id", "exactly 8 printable ASCII characters"),
        ({"merchant_id": 12}, "p.toml:3: terminal[1].merchant_id", "string of 15 characters"),
        ({"tmk": "0123"}, "p.toml:4: terminal[1].tmk", "16 or 32 or 48 hex digits"),
        ({"tmk": "XYZ0123456789ABC"}, "p.toml:4: terminal[1].tmk", "hex digits"),
        ({"tmk_check": "000000"}, "p.toml:6: terminal[1].tmk_check", "check value is 08D7B4, not 000000"),
        ({"dialect": "martian"}, "p.toml:5: terminal[1].dialect", "no such dialect"),
        ({"framing": "{ speed = 3 }"}, "p.toml:6: terminal[1].framing.speed", "unknown key"),
        ({"framing": '{ length_header = "ascii9" }'}, "p.toml:6: terminal[1].framing.length_header", "must be one of"),
        ({"tpdu": "60000300"}, "p.toml:6: terminal[1].tpdu", "10 hex digits"),
        ({"mac": "sha1"}, "p.toml:6: terminal[1].mac", "none, cup-ecb, x9.9, x9.19"),
        ({"key_layout": 30}, "p.toml:6: terminal[1].key_layout", "24 | 40 | 56 | 60 | 84"),
        ({"key_layout": True}, "p.toml:6: terminal[1].key_layout", "got True"),
        ({"mac": "x9.19", "key_layout": 24}, "p.toml:7: terminal[1].key_layout", "16-byte MAC key"),
        ({"pin_key": TEST_TMK}, "p.toml:6: terminal[1].pin_key", "mac_key is missing"),
        ({"pin_tries": 0}, "p.toml:6: terminal[1].pin_tries", "integer 1..99"),
        ({"pins": '{ 4111 = "1234" }'}, "p.toml:6: terminal[1].pins.4111", "8 to 19 digits"),
        ({"description": 5}, "p.toml:6: terminal[1].description", "must be a string"),
        ({"colour": "red"}, "p.toml:6: terminal[1].colour", "unknown key; allowed: terminal_id"),
    ],
)
def test_errors_name_file_line_and_key(overrides, where, reason):
    error = error_of(terminal(**overrides))
    assert str(error).startswith(where + ": "), str(error)
    assert reason in error.reason
    assert isinstance(error, ScenarioError) and error.path == "p.toml"


def test_a_wrong_pin_in_the_table_is_not_echoed():
    error = error_of(terminal(pins='{ 6270000000000000 = "12x456" }'))
    assert error.key == "terminal[1].pins.6270000000000000" and "12x456" not in str(error)


def test_static_mac_key_must_suit_the_algorithm():
    error = error_of(terminal(tmk=None, mac="x9.19", pin_key=TEST_TMK, mac_key="0123456789ABCDEF"))
    assert error.key == "terminal[1].mac_key" and "32 hex digits" in error.reason and "x9.19" in error.reason


def test_a_tpdu_needs_tpdu_framing():
    error = error_of(terminal(dialect="iso87-binary", tpdu="6000030000"))
    assert error.key == "terminal[1].tpdu" and "frames without a TPDU" in error.reason
    assert parse(terminal(dialect="iso87-binary", tpdu="6000030000", framing="{ tpdu = true }")).get("CUP00001")


def test_tmk_is_required_unless_static_keys_are_given():
    error = error_of(terminal(tmk=None))
    assert error.key == "terminal[1].tmk" and "missing" in error.reason
    error = error_of(terminal(tmk=None, pin_key=TEST_TMK, mac_key="0123456789ABCDEF", tmk_check="08D7B4"))
    assert error.key == "terminal[1].tmk_check" and "no tmk" in error.reason


def test_errors_in_defaults_point_at_the_defaults_table():
    error = error_of(
        """
        [defaults]
        dialect = "cup-pos"
        mac = "crc32"

        [[terminal]]
        terminal_id = "CUP00001"
        merchant_id = "898100000000001"
        tmk = "0123456789ABCDEF"
        """
    )
    assert str(error).startswith("p.toml:3: defaults.mac: must be one of")


def test_terminal_id_cannot_be_a_default():
    error = error_of('[defaults]\nterminal_id = "CUP00001"\n')
    assert str(error).startswith("p.toml:2: defaults.terminal_id: every terminal needs its own")


def test_duplicate_terminal_ids_name_the_first_definition():
    error = error_of(terminal() + terminal())
    assert str(error) == "p.toml:7: terminal[2].terminal_id: terminal 'CUP00001' is already defined (line 1)"


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("[terminals]\n", "p.toml:1: terminals", "unknown key; allowed: settings, defaults, terminal"),
        ('[terminal]\nterminal_id = "CUP00001"\n', "p.toml:1: terminal", "[[terminal]] tables"),
        ("terminal = 3\n", "p.toml:1: terminal", "must be an array"),
        ('[settings]\nunknown_terminal_code = "977"\n', "p.toml:2: settings.unknown_terminal_code", "2-character"),
        ("[settings]\ncolour = 1\n", "p.toml:2: settings.colour", "unknown key"),
        ("[[terminal]\n", "p.toml:1", "invalid TOML"),
    ],
)
def test_file_level_errors(text, where, reason):
    error = error_of(text)
    assert str(error).startswith(where), str(error)
    assert reason in error.reason


def test_load_profiles_names_a_missing_file(tmp_path: Path):
    missing = tmp_path / "none.toml"
    with pytest.raises(ProfileError, match=r"none\.toml: no such file"):
        load_profiles(missing)


def test_load_profiles_reads_dialects_from_the_dialect_path(tmp_path: Path):
    (tmp_path / "dialects").mkdir()
    (tmp_path / "dialects" / "my-cup.toml").write_text('extends = "cup-pos"\nname = "my-cup"\n', encoding="utf-8")
    path = tmp_path / "profiles.toml"
    path.write_text(toml(terminal(dialect="my-cup")), encoding="utf-8")
    profile = load_profiles(path, dialect_path=[tmp_path / "dialects"]).get("CUP00001")
    assert profile is not None and (profile.dialect, profile.family, profile.mac) == ("my-cup", "cup", "cup-ecb")
    with pytest.raises(ProfileError, match="dialect path is not a directory"):
        load_profiles(path, dialect_path=[tmp_path / "nowhere"])


def test_static_keys_round_trip_into_working_keys():
    profile = parse(terminal(mac="x9.9", pin_key=TEST_TMK, mac_key="0123456789ABCDEF")).get("CUP00001")
    assert profile is not None
    assert profile.static_keys == WorkingKeys(H(TEST_TMK), H("0123456789ABCDEF"))
    assert profile.tmk_check_value == check_value(H(TEST_TMK)).hex().upper()


def test_static_keys_with_a_tmk_must_fit_the_field62_layout():
    # with a tmk, the static keys are what every sign-on sends in field 62: a misfit would answer 96 every time
    error = error_of(terminal(pin_key="0123456789ABCDEF", mac_key="FEDCBA9876543210"))
    assert str(error).startswith("p.toml:6: terminal[1].pin_key: ") and "key_layout 40" in error.reason
    error = error_of(terminal(pin_key=TEST_TMK, mac_key="FEDCBA9876543210", key_layout=60))
    assert error.key == "terminal[1].key_layout" and "track key" in error.reason
    error = error_of(terminal(mac="cup-ecb", pin_key="0123456789ABCDEF", mac_key=TEST_TMK, key_layout=24))
    assert error.key == "terminal[1].mac_key" and "at most 16 hex digits" in error.reason
    profile = parse(terminal(pin_key="0123456789ABCDEF", mac_key="FEDCBA9876543210", key_layout=24)).get("CUP00001")
    assert profile is not None and profile.static_keys is not None and profile.tmk is not None
    block = profile.field62(profile.issue_keys(random.Random(0)))
    assert decrypt_field62(H(TEST_TMK), block) == profile.static_keys
