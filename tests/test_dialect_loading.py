"""Dialect files: user directories, shadowing, ``extends`` across directories, and refusals.

Every refusal must let a user find the mistake without reading our code: the ``DialectError``
names the file (``source``), the field and the key at fault, and its text says all three.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import specs
from switch.codec import Codec, DialectError, DialectRegistry, Message, load_dialect

TINY = """\
name = "tiny"
title = "Two fields"
[fields]
3 = { name = "Processing Code", type = "n", max = 6 }
41 = { name = "Terminal", type = "ans", max = 8 }
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refusal(directory: Path, name: str = "broken") -> DialectError:
    with pytest.raises(DialectError) as info:
        DialectRegistry([directory]).load(name)
    return info.value


# --- finding user dialects ---------------------------------------------------------------------------


def test_user_dialect_is_found_by_name_and_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny", TINY)
    registry = DialectRegistry([tmp_path])
    assert "tiny" in registry.names() and "iso87-binary" in registry.names()
    dialect = registry.load("tiny")
    assert (dialect.name, dialect.title, dialect.source) == ("tiny", "Two fields", str(path))
    assert sorted(dialect.fields) == [3, 41]
    assert load_dialect("tiny", dialect_path=[tmp_path]).fields == dialect.fields
    assert load_dialect(str(path)).source == str(path)
    message = Message("0200", {3: "000000", 41: "TERM0001"})
    assert Codec(dialect).decode(Codec(dialect).encode(message)) == message


def test_user_dialect_shadows_a_shipped_one_of_the_same_name(tmp_path: Path) -> None:
    path = write(tmp_path, "iso87-binary", TINY.replace('"tiny"', '"iso87-binary"'))
    shadowed = DialectRegistry([tmp_path]).load("iso87-binary")
    assert shadowed.source == str(path) and sorted(shadowed.fields) == [3, 41]
    shipped = DialectRegistry().load("iso87-binary")
    assert shipped.source == str(specs.dialects_dir() / "iso87-binary.toml")
    assert len(shipped.fields) > 100
    # Search-path semantics: a shipped dialect that extends the shadowed name gets the user's file.
    assert sorted(DialectRegistry([tmp_path]).load("iso87-ascii").fields) == [3, 41]


def test_extends_a_shipped_dialect_from_a_user_directory(tmp_path: Path) -> None:
    write(tmp_path, "mybcd", """\
extends = "iso87-binary"
name = "mybcd"
numeric = "bcd"
length = "binary"
remove_fields = [52, 128]
[fields]
4 = { max = 10 }
60 = { name = "Batch", type = "n", length = "LLL", max = 17 }
""")
    base = load_dialect("iso87-binary")
    dialect = DialectRegistry([tmp_path]).load("mybcd")
    assert dialect.name == "mybcd" and dialect.title == "mybcd"  # the parent's title is not inherited
    assert set(dialect.fields) == set(base.fields) - {52, 128}
    assert dialect.fields[4].max == 10 and dialect.fields[4].name == base.fields[4].name
    assert (dialect.fields[60].type, dialect.fields[60].max) == ("n", 17)
    assert dialect.fields[3].wire_numeric and dialect.spec["3"]["data_enc"] == "b"
    assert dialect.spec["2"]["len_enc"] == "b" and dialect.spec["2"]["len_type"] == 1
    message = Message("0200", {2: "4761739001010010", 4: "0000012500", 60: "22000001003"})
    assert Codec(dialect).decode(Codec(dialect).encode(message)) == message


def test_extends_chains_through_several_user_directories(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write(first, "child", 'extends = "middle"\nname = "child"\n[fields]\n39 = { max = 3 }\n')
    write(second, "middle", 'extends = "iso87-ascii"\nname = "middle"\nremove_fields = [64]\n')
    dialect = DialectRegistry([first, second]).load("child")
    ascii_base = load_dialect("iso87-ascii")
    assert set(dialect.fields) == set(ascii_base.fields) - {64}
    assert dialect.fields[39].max == 3
    assert dialect.spec["p"] == ascii_base.spec["p"]  # hex bitmap inherited two levels up


def test_a_missing_dialect_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DialectError) as info:
        DialectRegistry([missing])
    assert info.value.source == str(missing) and "not a directory" in str(info.value)


def test_an_unknown_dialect_name_lists_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path, "tiny", TINY)
    with pytest.raises(DialectError) as info:
        DialectRegistry([tmp_path]).load("tinny")
    assert info.value.source == "tinny"
    assert "tiny" in str(info.value) and "iso87-binary" in str(info.value)


# --- refusals: file, field and key named --------------------------------------------------------------

FIELDS_OK = '[fields]\n3 = { type = "n", max = 6 }\n'

BROKEN = {
    # case: (file text, field, key, text the message must contain)
    "toml syntax": ('name = "x"\n[fields]\n3 = { type = "n" max = 6 }\n', None, None, "line 3"),
    "unknown top-level key": ('colour = "red"\n' + FIELDS_OK, None, "colour", "unknown key"),
    "unknown field key": ('[fields]\n3 = { type = "n", max = 6, colour = "red" }\n', "3", "colour",
                          "unknown key"),
    "field not a table": ('[fields]\n3 = "n6"\n', "3", None, "must be a table"),
    "bad type": ('[fields]\n3 = { type = "num", max = 6 }\n', "3", "type", "'num'"),
    "missing type": ('[fields]\n3 = { max = 6 }\n', "3", "type", "must be one of"),
    "max zero": ('[fields]\n3 = { type = "n", max = 0 }\n', "3", "max", "positive integer"),
    "max negative": ('[fields]\n3 = { type = "n", max = -1 }\n', "3", "max", "positive integer"),
    "max text": ('[fields]\n3 = { type = "n", max = "x" }\n', "3", "max", "positive integer"),
    "max boolean": ('[fields]\n3 = { type = "n", max = true }\n', "3", "max", "positive integer"),
    "max float": ('[fields]\n3 = { type = "n", max = 6.0 }\n', "3", "max", "positive integer"),
    "max missing": ('[fields]\n3 = { type = "n" }\n', "3", "max", "positive integer"),
    "max too big for LL": ('[fields]\n2 = { type = "n", length = "LL", max = 100 }\n', "2", "max",
                           "does not fit a LL ascii length prefix (max 99)"),
    "max too big for binary L": ('[fields]\n2 = { type = "b", length = "L", length_encoding = "binary", '
                                 'max = 256 }\n', "2", "max", "(max 255)"),
    "hex binary doubles max": ('binary = "hex"\n[fields]\n55 = { type = "b", length = "LL", max = 50 }\n',
                               "55", "max", "100 does not fit"),
    "bad length type": ('[fields]\n2 = { type = "n", length = "LLLLL", max = 5 }\n', "2", "length",
                        "'LLLLL'"),
    "bad text codec": ('text = "no-such-codec"\n' + FIELDS_OK, None, "text", "unknown text encoding"),
    # codecs that exist but cannot carry ASCII: the dialect would load and never answer anything
    "rot13 text codec": ('text = "rot13"\n' + FIELDS_OK, None, "text", "not a text encoding 'rot13'"),
    "base64 text codec": ('text = "base64"\n' + FIELDS_OK, None, "text", "not a text encoding 'base64'"),
    "bytes codec": ('text = "zlib"\n' + FIELDS_OK, None, "text", "not a text encoding 'zlib'"),
    "two-byte text codec": ('text = "utf-16"\n' + FIELDS_OK, None, "text", "one byte per character"),
    "idna text codec": ('text = "idna"\n' + FIELDS_OK, None, "text", "cannot carry printable ASCII"),
    "rot13 field codec": ('[fields]\n41 = { type = "ans", max = 8, encoding = "rot_13" }\n', "41", "encoding",
                          "not a text encoding"),
    "bad bcd pad char": ('bcd_pad_char = "E"\n' + FIELDS_OK, None, "bcd_pad_char", "must be one of 0, F"),
    "signed bcd not fixed": ('[fields]\n28 = { type = "xn", length = "LL", max = 9, encoding = "bcd" }\n', "28",
                             "encoding", "must be fixed length"),
    # huge integers and deep nesting: named, never a traceback
    "max huge": ('[fields]\n3 = { type = "n", max = ' + "9" * 400 + ' }\n', "3", "max",
                 "must be at most 99999, got an integer of 1329 bits"),
    "integer too long for python": ('[fields]\n3 = { type = "n", max = ' + "9" * 5000 + ' }\n', None, "max",
                                    "integer too long at line 2"),
    "header length huge": ('[header]\nlength = ' + "9" * 300 + '\n' + FIELDS_OK, None, "header.length",
                           "got an integer of 997 bits"),
    "nested too deep": ('x = ' + "[" * 5000 + "]" * 5000 + '\n' + FIELDS_OK, None, None, "nested too deep"),
    "bad numeric encoding": ('numeric = "packed"\n' + FIELDS_OK, None, "numeric", "'packed'"),
    "bad length encoding": ('length = "hex"\n' + FIELDS_OK, None, "length", "'hex'"),
    "bad bitmap encoding": ('bitmap = "octal"\n' + FIELDS_OK, None, "bitmap", "'octal'"),
    "bad field text codec": ('[fields]\n41 = { type = "ans", max = 8, encoding = "klingon" }\n', "41",
                             "encoding", "unknown text encoding"),
    "bad numeric field encoding": ('[fields]\n3 = { type = "n", max = 6, encoding = "ebcdic" }\n', "3",
                                   "encoding", "numeric fields take one of"),
    "bad binary field encoding": ('[fields]\n52 = { type = "b", max = 8, encoding = "ascii" }\n', "52",
                                  "encoding", "binary fields take one of"),
    "bad pad char": ('numeric = "bcd"\n[fields]\n3 = { type = "n", max = 5, pad_char = "G" }\n', "3",
                     "pad_char", "one hex digit"),
    "field 1": ('[fields]\n1 = { type = "b", max = 8 }\n', "1", None, "1 and 65 are bitmaps"),
    "field 65": ('[fields]\n65 = { type = "b", max = 8 }\n', "65", None, "1 and 65 are bitmaps"),
    "field 129": ('[fields]\n129 = { type = "n", max = 3 }\n', "129", None, "2..128"),
    "field 0": ('[fields]\n0 = { type = "n", max = 3 }\n', "0", None, "2..128"),
    "field not a number": ('[fields]\npan = { type = "n", max = 3 }\n', "pan", None, "2..128"),
    "field with leading zero": ('[fields]\n065 = { type = "b", max = 8 }\n', "065", None, "leading zeros"),
    "missing fields": ('name = "x"\n', None, "fields", "needs a [fields] table"),
    "empty fields": ('name = "x"\n[fields]\n', None, "fields", "needs a [fields] table"),
    "fields not a table": ('fields = 3\n', None, "fields", "needs a [fields] table"),
    "empty name": ('name = ""\n' + FIELDS_OK, None, "name", "non-empty"),
    "bad header length": ('[header]\nlength = 100\n' + FIELDS_OK, None, "header.length", "0..64"),
    "unknown header key": ('[header]\nsize = 6\n' + FIELDS_OK, None, "size", "unknown key in [header]"),
    "unknown framing key": ('[framing]\nspeed = 1\n' + FIELDS_OK, None, "speed", "unknown key in [framing]"),
    "bad framing flag": ('[framing]\ntpdu = "yes"\n' + FIELDS_OK, None, "framing.tpdu", "true or false"),
    "extends not a name": ('extends = 3\n' + FIELDS_OK, None, "extends", "must be a dialect name"),
    "extends missing target": ('extends = "no-such-dialect"\n' + FIELDS_OK, None, "extends",
                               "'no-such-dialect': no such dialect"),
    "extends itself": ('extends = "broken"\n' + FIELDS_OK, None, "extends", "cycle: broken -> broken"),
    "remove_fields not a list": ('extends = "iso87-binary"\nremove_fields = 52\n', None, "remove_fields",
                                 "list of field numbers"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_dialect_is_refused_naming_file_field_and_key(tmp_path: Path, case: str) -> None:
    text, field, key, says = BROKEN[case]
    path = write(tmp_path, "broken", text)
    error = refusal(tmp_path)
    assert (error.source, error.field, error.key) == (str(path), field, key)
    message = str(error)
    assert message.startswith(str(path)) and says in message
    if field is not None:
        assert f"field {field}" in message
    if key is not None:
        assert f"key '{key}'" in message


def test_extends_cycle_names_the_file_and_the_chain(tmp_path: Path) -> None:
    first = write(tmp_path, "first", 'extends = "second"\n' + FIELDS_OK)
    write(tmp_path, "second", 'extends = "first"\n' + FIELDS_OK)
    error = refusal(tmp_path, "first")
    assert (error.source, error.key) == (str(first), "extends")
    assert "first -> second -> first" in str(error)


def test_error_in_a_parent_names_the_parent_file(tmp_path: Path) -> None:
    parent = write(tmp_path, "parent", '[fields]\n3 = { type = "n", max = 0 }\n')
    write(tmp_path, "child", 'extends = "parent"\n[fields]\n4 = { type = "n", max = 12 }\n')
    error = refusal(tmp_path, "child")
    assert (error.source, error.field, error.key) == (str(parent), "3", "max")


def test_error_in_a_child_override_names_the_child_file(tmp_path: Path) -> None:
    child = write(tmp_path, "child", 'extends = "iso87-binary"\n[fields]\n4 = { max = -12 }\n')
    error = refusal(tmp_path, "child")
    assert (error.source, error.field, error.key) == (str(child), "4", "max")


def test_unreadable_dialect_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "broken", "")
    path.write_bytes(b'name = "\xff\xfe"\n')  # not UTF-8: TOML requires it
    error = refusal(tmp_path)
    assert error.source == str(path) and "not UTF-8 text (byte 8)" in str(error)


def test_a_text_codec_that_carries_ascii_one_byte_each_is_accepted(tmp_path: Path) -> None:
    # EBCDIC is not ASCII's bytes, but it carries every printable character and gives it back
    write(tmp_path, "ebcdic", 'extends = "iso87-binary"\ntext = "cp500"\n')
    codec = Codec(DialectRegistry([tmp_path]).load("ebcdic"))
    assert codec.encode(Message("0800", {41: "TERM0001"}))[-8:] == "TERM0001".encode("cp500")

