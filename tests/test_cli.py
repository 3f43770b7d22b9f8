"""Both command-line tools: describe, build, dialects, error reporting, and real subprocess runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from switch.app import SwitchOptions
from switch.cli import cli as switch_cli
from switch.cli import main as switch_main
from switch.cli_common import DEBUG_ENV, DISTRIBUTION, ToolGroup, run
from switch.codec.dialect import Dialect, DialectError, DialectRegistry, load_dialect
from switch.codec.framing import FrameDecoder, Framing
from switch.codec.message import Codec, Message, MessageDecodeError
from switch.testing import SwitchProcess
from terminal.cli import cli as terminal_cli

PAN = "4761739001010010"
PURCHASE = Message("0200", {2: PAN, 3: "000000", 4: "000000001234", 11: "000001", 41: "TERM0001", 49: "840"})
ISO = Codec(load_dialect("iso87-binary"))
PURCHASE_HEX = ISO.encode(PURCHASE).hex()
# The same 0200 written out by hand: ASCII MTI, binary bitmap (fields 2 3 4 11 41 49), ASCII fields.
GOLDEN_HEX = ("30323030" "7020000000808000" "3136" "34373631373339303031303130303130" "303030303030"
              "303030303030303031323334" "303030303031" "5445524D30303031" "383430")
BUILD_ARGS = ["build", "--mti", "0200", "-f", f"2={PAN}", "-f", "3=000000", "-f", "4=000000001234",
              "-f", "11=000001", "-f", "41=TERM0001", "-f", "49=840"]
SUBPROCESS_TIMEOUT = 60


def invoke(group: click.Group, args: list[str], stdin: bytes | str | None = None) -> Result:
    program = "iso-switch" if group is switch_cli else "iso-terminal"  # as messages name the program
    return CliRunner().invoke(group, args, input=stdin, prog_name=program)


def test_golden_hex_is_the_codecs_encoding() -> None:
    assert PURCHASE_HEX.upper() == GOLDEN_HEX


# --------------------------------------------------------------------------------------------
# describe


def test_describe_prints_mti_and_every_field_masked() -> None:
    result = invoke(switch_cli, ["describe", GOLDEN_HEX])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "MTI   0200  financial request"
    assert "476173******0010" in result.stdout
    assert PAN not in result.stdout
    for name in ("Primary Account Number (PAN)", "Processing Code", "Amount, Transaction", "TERM0001"):
        assert name in result.stdout
    assert result.stderr == ""


def test_describe_accepts_spaced_and_coloned_hex_and_several_arguments() -> None:
    spaced = " ".join(GOLDEN_HEX[i:i + 2] for i in range(0, len(GOLDEN_HEX), 2))
    coloned = ":".join(GOLDEN_HEX[i:i + 2] for i in range(0, len(GOLDEN_HEX), 2))
    reference = invoke(switch_cli, ["describe", GOLDEN_HEX]).stdout
    assert invoke(switch_cli, ["describe", spaced]).stdout == reference
    assert invoke(switch_cli, ["describe", coloned.lower()]).stdout == reference
    assert invoke(switch_cli, ["describe", *spaced.split(" ")]).stdout == reference


def test_describe_reads_hex_or_raw_bytes_from_stdin() -> None:
    reference = invoke(switch_cli, ["describe", GOLDEN_HEX]).stdout
    two_lines = GOLDEN_HEX[:30] + "\n" + GOLDEN_HEX[30:] + "\n"
    assert invoke(switch_cli, ["describe", "-"], stdin=two_lines).stdout == reference
    raw = invoke(switch_cli, ["describe", "-"], stdin=bytes.fromhex(GOLDEN_HEX))
    assert raw.exit_code == 0 and raw.stdout == reference


def test_raw_flag_reads_hex_looking_bytes_as_bytes() -> None:
    codec = Codec(load_dialect("iso87-ascii"))
    message = codec.encode(Message("0800", {11: "000001", 49: "840", 70: "301"}))
    assert all(chr(b) in "0123456789ABCDEF" for b in message) and len(message) % 2 == 0  # reads as hex
    result = invoke(switch_cli, ["describe", "--dialect", "iso87-ascii", "--raw", "-"], stdin=message)
    assert result.exit_code == 0, result.output
    assert "network management request" in result.stdout and "echo test" in result.stdout
    as_hex = invoke(switch_cli, ["describe", "--dialect", "iso87-ascii", "-"], stdin=message)
    assert as_hex.exit_code == 1  # without --raw the digits are taken as hex, as documented
    assert as_hex.stderr.endswith(" at MTI, byte offset 0\n")  # bytes 08 00 ... are no ASCII MTI


def test_unmask_and_json() -> None:
    clear = invoke(switch_cli, ["describe", "--unmask", GOLDEN_HEX])
    assert PAN in clear.stdout
    result = invoke(switch_cli, ["describe", "--json", GOLDEN_HEX])
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["dialect"] == "iso87-binary" and document["framed"] is False
    [message] = document["messages"]
    assert message["mti"] == "0200" and message["error"] is None
    assert [e["element"] for e in message["elements"]] == ["t", "p", "2", "3", "4", "11", "41", "49"]
    pan = message["elements"][2]
    assert pan["masked"] is True and pan["data"] is None and PAN not in result.stdout


def test_truncated_message_shows_what_decoded_then_the_error() -> None:
    result = invoke(switch_cli, ["describe", GOLDEN_HEX[:-4]])
    assert result.exit_code == 1
    assert "476173******0010" in result.stdout and "TERM0001" in result.stdout
    assert "840" not in result.stdout.split("TERM0001")[1]
    assert result.stderr == "error: Field data is 1 bytes, expecting 3 at field 49, byte offset 62\n"
    assert "Traceback" not in result.output


def test_length_prefixed_input_without_framed_gets_a_hint() -> None:
    framed = Framing().encode(bytes.fromhex(GOLDEN_HEX)).hex()
    result = invoke(switch_cli, ["describe", framed])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("hint: the input starts with a binary2 length header")


def test_framed_describes_every_frame_and_keepalives() -> None:
    framing = Framing()
    payload = bytes.fromhex(GOLDEN_HEX)
    stream = framing.encode(payload) + framing.encode(b"") + framing.encode(payload)
    result = invoke(switch_cli, ["describe", "--framed", stream.hex()])
    assert result.exit_code == 0, result.output
    assert "frame 1: message at input byte 2" in result.stdout
    assert "frame 2: keep-alive (empty frame)" in result.stdout
    assert f"frame 3: message at input byte {2 + len(payload) + 2 + 2}" in result.stdout
    assert result.stdout.count("MTI   0200  financial request") == 2


def test_framed_error_in_a_later_frame_names_frame_and_input_byte() -> None:
    framing = Framing(length_header="ascii4")
    payload = bytes.fromhex(GOLDEN_HEX)
    bad = payload.replace(b"TERM0001", b"TERM0001"[:7]) + b"8"  # shifts field 49 by one byte: too short
    stream = framing.encode(payload) + framing.encode(bad[:-1])
    result = invoke(switch_cli, ["describe", "--framed", "--length-header", "ascii4", stream.hex()])
    assert result.exit_code == 1
    assert result.stdout.count("MTI   0200") == 2
    assert result.stderr.startswith("error: ")
    assert " in frame 2 (input byte " in result.stderr


def test_framed_truncated_stream_describes_complete_frames_then_fails() -> None:
    framing = Framing()
    stream = framing.encode(bytes.fromhex(GOLDEN_HEX)) + b"\x00\x40\x30"
    result = invoke(switch_cli, ["describe", "--framed", stream.hex()])
    assert result.exit_code == 1
    assert "frame 1" in result.stdout and "TERM0001" in result.stdout
    assert result.stderr.startswith("error: framing: stream ended mid-frame")
    assert result.stderr.rstrip().endswith(f"(frame 2 at input byte {2 + len(GOLDEN_HEX) // 2})")


def test_framed_oversize_header_is_refused() -> None:
    result = invoke(switch_cli, ["describe", "--framed", "--max-frame", "16", "0040" + GOLDEN_HEX])
    assert result.exit_code == 1
    assert "exceeds the limit of 16 bytes" in result.stderr


def test_cup_framed_sign_on_shows_tpdu_and_header() -> None:
    codec = Codec(load_dialect("cup-pos"))
    message = Message("0800", {11: "000001", 41: "TERM0001", 60: "00000001003"}, header="603100000000")
    tpdu = bytes.fromhex("6000010000")
    frame = Framing.from_dialect(codec.dialect).encode(codec.encode(message), tpdu=tpdu)
    result = invoke(switch_cli, ["describe", "--dialect", "cup-pos", "--framed", frame.hex()])
    assert result.exit_code == 0, result.output
    assert "TPDU  6000010000 (id 60, destination 0001, source 0000)" in result.stdout
    assert "MTI   0800  network management request" in result.stdout
    assert "CUP Header" in result.stdout


@pytest.mark.parametrize("name", DialectRegistry().names())
def test_describe_decodes_a_message_of_every_shipped_dialect(name: str) -> None:
    dialect = load_dialect(name)
    codec = Codec(dialect)
    header = "603100000000" if dialect.header_length == 6 else "0" * dialect.header_length
    message = Message("0200", {3: "000000", 4: "000000001234", 11: "000123", 41: "TERM0001"}, header=header)
    result = invoke(switch_cli, ["describe", "--dialect", name, codec.encode(message).hex()])
    assert result.exit_code == 0, result.output
    assert "MTI   0200  financial request" in result.stdout
    assert "000000001234" in result.stdout and "TERM0001" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "02G0"], "error: not hex: 'G' at hex digit 3\n"),
        (["describe", "020"], "error: odd number of hex digits (3): a byte is two digits\n"),
        (["describe", " "], "error: no hex digits given: nothing to describe\n"),
        (["describe", "-", "00"], "error: '-' (read standard input) must be the only argument\n"),
        (["describe", "--tpdu", "00"], "error: --tpdu, --no-tpdu, --length-header, --length-includes-itself "
                                       "and --max-frame describe the framing: add --framed\n"),
        (["describe", "--raw", "00"], "error: --raw applies to standard input only ('-')\n"),
        (["serve", "--max-pending", "0"], "error: Invalid value for '--max-pending': 0 is not in the range "
                                          "1<=x<=100000. (try 'iso-switch serve --help')\n"),
        (["serve", "--fault-epoch", "run-1"], "error: --fault-epoch needs --multi-instance (or --workers): one "
                                              "instance counts in memory\n"),
        # click's own refusals, one line too (not click's usage block)
        (["serve", "--port", "abc"], "error: Invalid value for '--port': 'abc' is not a valid integer range. "
                                     "(try 'iso-switch serve --help')\n"),
        (["nosuch"], "error: No such command 'nosuch'. (try 'iso-switch --help')\n"),
    ],
)
def test_describe_usage_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = invoke(switch_cli, args)
    assert result.exit_code == 2
    assert result.stderr == message


def test_empty_stdin_is_refused() -> None:
    result = invoke(switch_cli, ["describe", "-"], stdin=b"")
    assert (result.exit_code, result.stderr) == (2, "error: standard input is empty: nothing to describe\n")


def test_unknown_dialect_is_one_line_exit_2() -> None:
    result = invoke(switch_cli, ["describe", "--dialect", "nope", "00"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: nope: no such dialect (known: ")
    assert result.stderr.count("\n") == 1


def test_broken_dialect_file_names_file_field_and_key(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('extends = "iso87-binary"\n'
                                          '[fields]\n3 = { type = "n", max = "six" }\n')
    result = invoke(switch_cli, ["describe", "--dialect-path", str(tmp_path), "--dialect", "broken", "00"])
    assert result.exit_code == 2
    assert result.stderr == (f"error: {tmp_path / 'broken.toml'}: field 3: key 'max': "
                             "must be a positive integer, got 'six'\n")


def test_a_user_dialect_shadows_and_extends(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('extends = "iso87-binary"\ntitle = "My host"\n'
                                        '[fields]\n48 = { name = "Loyalty Number" }\n')
    codec = Codec(DialectRegistry([tmp_path]).load("mine"))
    raw = codec.encode(Message("0200", {48: "L-123"})).hex()
    result = invoke(switch_cli, ["describe", "--dialect-path", str(tmp_path), "--dialect", "mine", raw])
    assert result.exit_code == 0 and "Loyalty Number" in result.stdout
    by_path = invoke(switch_cli, ["describe", "--dialect", str(tmp_path / "mine.toml"), raw])
    assert by_path.exit_code == 0 and "Loyalty Number" in by_path.stdout


# --------------------------------------------------------------------------------------------
# dialects


@pytest.mark.parametrize("group", [switch_cli, terminal_cli], ids=["iso-switch", "iso-terminal"])
def test_dialects_lists_names_framing_and_titles(group: click.Group) -> None:
    result = invoke(group, ["dialects"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "framing", "source", "title"]
    listed = {line.split()[0]: line for line in lines[1:]}
    assert set(listed) == set(DialectRegistry().names())
    assert "binary2 + TPDU" in listed["cup-pos"]
    assert load_dialect("iso87-binary").title in listed["iso87-binary"]


def test_dialects_with_a_path_shows_user_files_and_refuses_broken_ones(tmp_path: Path) -> None:
    (tmp_path / "ascii4-host.toml").write_text('extends = "iso87-binary"\ntitle = "Host with ASCII lengths"\n'
                                               '[framing]\nlength_header = "ascii4"\n')
    (tmp_path / "bad.toml").write_text("this is = = not toml")
    result = invoke(terminal_cli, ["dialects", "--dialect-path", str(tmp_path)])
    assert result.exit_code == 1
    listed = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "ascii4" in listed["ascii4-host"] and str(tmp_path / "ascii4-host.toml") in listed["ascii4-host"]
    assert "REFUSED" in listed["bad"]
    assert result.stderr.startswith(f"error: {tmp_path / 'bad.toml'}: not valid TOML")


# --------------------------------------------------------------------------------------------
# build


def test_build_prints_the_encoded_message() -> None:
    result = invoke(terminal_cli, BUILD_ARGS)
    assert result.exit_code == 0, result.output
    assert result.stdout == GOLDEN_HEX + "\n"


def test_build_then_describe_round_trip_framed_cup() -> None:
    args = ["build", "--dialect", "cup-pos", "--header", "603100000000", "--mti", "0800", "-f", "11=000007",
            "-f", "41=TERM0001", "-f", "60=00000001003", "--framed", "--tpdu", "6000010000"]
    built = invoke(terminal_cli, args)
    assert built.exit_code == 0, built.output
    frame = bytes.fromhex(built.stdout)
    framing = Framing.from_dialect(load_dialect("cup-pos"))
    assert frame[:2] == (len(frame) - 2).to_bytes(2, "big") and frame[2:7] == bytes.fromhex("6000010000")
    decoded = Codec(load_dialect("cup-pos")).decode(frame[2 + 5:])
    assert decoded == Message("0800", {11: "000007", 41: "TERM0001", 60: "00000001003"}, "603100000000")
    assert framing.tpdu
    described = invoke(switch_cli, ["describe", "--dialect", "cup-pos", "--framed", "-"], stdin=built.stdout)
    assert described.exit_code == 0 and "000007" in described.stdout


def test_build_framing_overrides() -> None:
    built = invoke(terminal_cli,
                   [*BUILD_ARGS, "--framed", "--length-header", "ascii4", "--length-includes-itself"])
    frame = bytes.fromhex(built.stdout)
    assert frame[:4] == b"%04d" % len(frame) and frame[4:].hex().upper() == GOLDEN_HEX
    no_tpdu = invoke(terminal_cli, ["build", "--dialect", "cup-pos", "--header", "603100000000",
                                    "--mti", "0800", "--framed", "--no-tpdu"])
    assert no_tpdu.exit_code == 0 and bytes.fromhex(no_tpdu.stdout)[2:4] == b"\x60\x31"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-f", "4=0000000012345"],
         "error: field 4 (Amount, Transaction): Field data is 13 bytes, expecting 12\n"),
        (["-f", "200=1"], "error: field 200 is not defined in dialect iso87-binary\n"),
        (["-f", "3=000001"], "error: field 3 given twice\n"),
        (["-f", "65=00"], "error: field 65 is a bitmap; the codec computes it from the fields given\n"),
        (["-f", "4"], "error: -f '4': expected FIELD=VALUE, e.g. -f 3=000000\n"),
        (["-f", "four=1"], "error: -f 'four=1': 'four' is not a field number\n"),
        (["--header", "6031"], "error: dialect iso87-binary has no message header; drop --header\n"),
        (["--tpdu", "6000010000"], "error: --tpdu, --no-tpdu, --length-header, --length-includes-itself and "
                                   "--max-frame shape the frame: add --framed\n"),
        (["--framed", "--tpdu", "60", "--no-tpdu"], "error: --tpdu and --no-tpdu contradict each other\n"),
        (["--framed", "--tpdu", "6000"], "error: framing: a TPDU is 5 bytes, got 2: 60 00\n"),
        (["--framed", "--max-frame", "10"],
         "error: framing: frame body of 18 bytes exceeds the limit of 10 bytes\n"),
    ],
)
def test_build_errors_are_one_line_naming_the_field_exit_2(extra: list[str], message: str) -> None:
    result = invoke(terminal_cli, ["build", "--mti", "0200", "-f", "3=000000", *extra])
    assert result.exit_code == 2, result.output
    assert result.stderr == message


def test_build_value_with_wrong_content_names_the_field() -> None:
    result = invoke(terminal_cli, ["build", "--mti", "0200", "-f", "4=00000000ABCD"])
    assert result.exit_code == 2
    assert result.stderr == "error: field 4 (Amount, Transaction): must hold digits only\n"


def test_build_cup_needs_a_tpdu_when_framed_and_checks_the_header() -> None:
    base = ["build", "--dialect", "cup-pos", "--mti", "0800", "-f", "11=000001"]
    no_tpdu = invoke(terminal_cli, [*base, "--header", "603100000000", "--framed"])
    assert no_tpdu.exit_code == 2 and "give it with --tpdu HEX" in no_tpdu.stderr
    short = invoke(terminal_cli, [*base, "--header", "6031"])
    assert short.stderr == "error: --header: dialect cup-pos has a 6-byte header, got 2 bytes\n"


def test_build_cup_header_defaults_to_the_usual_one() -> None:
    result = invoke(terminal_cli, ["build", "--dialect", "cup-pos", "--mti", "0800", "-f", "11=000001"])
    assert result.exit_code == 0, result.output
    assert Codec(load_dialect("cup-pos")).decode(bytes.fromhex(result.stdout)).header == "603100000000"


def test_build_rejects_a_bad_mti_as_usage_error() -> None:
    result = invoke(terminal_cli, ["build", "--mti", "02000"])
    assert result.exit_code == 2 and "an MTI is four digits" in result.stderr


# --------------------------------------------------------------------------------------------
# Group plumbing: --version, error conversion, main()


@pytest.mark.parametrize("group", [switch_cli, terminal_cli], ids=["iso-switch", "iso-terminal"])
def test_version(group: click.Group) -> None:
    result = invoke(group, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip().endswith(version(DISTRIBUTION))


def _failing_group(exc: BaseException) -> click.Group:
    @click.group(cls=ToolGroup)
    def group() -> None:
        """A group whose only command raises ``exc``."""

    @group.command()
    def boom() -> None:
        raise exc

    return group


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (DialectError("x.toml", "bad", field="3", key="max"), 2, "error: x.toml: field 3: key 'max': bad\n"),
        (MessageDecodeError("short", field="4", offset=9, raw=b"", partial={}), 1,
         "error: short (field 4, byte offset 9)\n"),
        (FileNotFoundError(2, "No such file or directory", "/nope"), 1,
         "error: /nope: No such file or directory\n"),
    ],
)
def test_library_errors_become_one_line(exc: Exception, code: int, line: str) -> None:
    result = invoke(_failing_group(exc), ["boom"])
    assert (result.exit_code, result.stderr) == (code, line)


def test_run_turns_an_unexpected_error_into_one_line(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    group = click.Group("plain", commands=[click.Command("boom", callback=lambda: 1 / 0)])
    with pytest.raises(SystemExit) as exit_info:
        run(group, ["boom"])
    assert exit_info.value.code == 70
    err = capsys.readouterr().err
    assert err.startswith("error: internal error (ZeroDivisionError: division by zero)")
    assert err.count("\n") == 1
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ZeroDivisionError):
        run(group, ["boom"])


def test_main_exits_with_the_commands_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        switch_main(["describe", "--dialect", "nope", "00"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: nope: no such dialect")
    with pytest.raises(SystemExit) as exit_info:
        switch_main(["describe", GOLDEN_HEX])
    assert exit_info.value.code == 0


# --------------------------------------------------------------------------------------------
# Real processes: python -m switch / python -m terminal, from a directory outside the repo


def test_python_m_switch_describe_in_a_subprocess(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "switch", "describe", GOLDEN_HEX], cwd=tmp_path,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MTI   0200  financial request\n") and done.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "switch", "describe", GOLDEN_HEX[:-4]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.endswith("at field 49, byte offset 62\n")


def test_build_piped_into_describe_across_processes(tmp_path: Path) -> None:
    build = subprocess.run([sys.executable, "-m", "terminal", *BUILD_ARGS, "--framed"], cwd=tmp_path,
                           capture_output=True, timeout=SUBPROCESS_TIMEOUT, check=True)
    describe = subprocess.run([sys.executable, "-m", "switch", "describe", "--framed", "-"], cwd=tmp_path,
                              input=build.stdout, capture_output=True, text=False,
                              timeout=SUBPROCESS_TIMEOUT, check=False)
    out = describe.stdout.decode()
    assert describe.returncode == 0, describe.stderr
    assert "frame 1: message at input byte 2" in out and "476173******0010" in out and PAN not in out


# --------------------------------------------------------------------------------------------
# The README's set-up commands


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_setup_commands() -> list[str]:
    lines = README.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.startswith("pip install ")]


def test_readme_has_exactly_the_two_setup_commands() -> None:
    main_command, test_command = _readme_setup_commands()
    assert main_command.startswith("pip install . && iso-switch ")
    assert test_command == 'pip install ".[test]" && python -m pytest -q'


def test_readme_main_command_serves_with_its_defaults(tmp_path: Path) -> None:
    """The main command, as written, with only what a test must change (free ports, a ledger of its own)."""
    main_command = _readme_setup_commands()[0].removeprefix("pip install . && ")
    program, *args = main_command.split()
    assert program == "iso-switch" and args[0] == "serve", main_command
    with SwitchProcess.start([*args[1:], "--ledger", str(tmp_path / "ledger.sqlite")]) as switch:
        assert "dialect iso87-binary, framing binary2" in switch.text and "sign-on required" in switch.text
        codec, framing = Codec(load_dialect("iso87-binary")), Framing.from_dialect(load_dialect("iso87-binary"))
        with socket.create_connection(("127.0.0.1", switch.port), timeout=10) as sock:
            sock.sendall(framing.encode(codec.encode(Message("0800", {7: "1122103000", 11: "000001",
                                                                      70: "301"}))))
            decoder = FrameDecoder(framing)
            while (frame := decoder.next_frame()) is None:
                data = sock.recv(4096)
                assert data, "the switch closed the connection"
                decoder.feed(data)
        assert codec.decode(frame.payload)[39] == "00"
    assert switch.returncode == 0 and switch.closed_cleanly, switch.text


# --------------------------------------------------------------------------------------------
# first-hour fixes: a second switch on the admin port, auth codes per seed


def _switch_options(**options: Any) -> tuple[Dialect, Framing, SwitchOptions]:
    dialect = load_dialect("iso87-binary")
    return dialect, Framing.from_dialect(dialect), SwitchOptions(port=0, ledger=":memory:", journal="none", **options)


def _busy_port() -> socket.socket:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    return busy


async def test_a_taken_default_admin_port_is_replaced_by_a_free_one() -> None:
    import trio

    from switch.app import build_switch

    with _busy_port() as busy:
        taken = busy.getsockname()[1]
        dialect, framing, options = _switch_options(admin_port=taken, admin_port_given=False)
        switch = build_switch(dialect, framing, options)
        async with trio.open_nursery() as nursery:
            listeners, admin = await nursery.start(switch.run)
            assert switch.admin_port_taken == taken
            assert admin not in (None, taken)
            port = listeners[0].socket.getsockname()[1]
            assert switch.runtime.listeners == [
                {"host": "127.0.0.1", "port": port, "dialect": "iso87-binary", "tls": False}]
            nursery.cancel_scope.cancel()


def test_an_admin_port_asked_for_and_taken_names_the_port_and_the_option() -> None:
    with _busy_port() as busy:
        taken = busy.getsockname()[1]
        result = invoke(switch_cli, ["serve", "--port", "0", "--ledger", ":memory:", "--journal", "none",
                                     "--admin-port", str(taken)])
    assert result.exit_code == 1
    assert result.stderr == (f"error: cannot listen: admin API 127.0.0.1:{taken}: Address already in use (another "
                             "switch? set its port with --admin-port, 0 for a free one, or --no-admin)\n")


def test_auth_codes_follow_the_seed() -> None:
    from switch.app import build_switch
    from switch.host import auth_code_for, auth_salt

    salts: dict[int, set[int]] = {}
    for seed in (1, 2, 1):
        dialect, framing, options = _switch_options(seed=seed, admin_port=None)
        switch = build_switch(dialect, framing, options)
        salts.setdefault(seed, set()).add(switch.server.host.auth_salt)
        switch.server.ledger.close()
    assert salts == {1: {auth_salt(1)}, 2: {auth_salt(2)}}  # a seed replays its codes
    assert auth_code_for(1, auth_salt(1)) != auth_code_for(1, auth_salt(2))  # another seed: another first code
    firsts = {auth_code_for(1, auth_salt(seed)) for seed in range(50)}
    assert len(firsts) > 45
    assert len({auth_code_for(seq, auth_salt(7)) for seq in range(1, 10_001)}) == 10_000  # still a bijection


def test_the_shipped_profiles_work_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the source tree: as after `pip install`
    listed = invoke(switch_cli, ["profiles"])
    assert listed.exit_code == 0 and listed.stdout.startswith("example  ") and "CUP00001, ISO00001" in listed.stdout
    path = invoke(switch_cli, ["profiles", "--path", "example"]).stdout.strip()
    assert Path(path).is_absolute() and Path(path).is_file()
    status = invoke(terminal_cli, ["status", "--profiles", path, "--terminal-id", "ISO00001",
                                   "--store", str(tmp_path / "t.sqlite")])
    assert status.exit_code == 0, status.output
    unknown = invoke(switch_cli, ["profiles", "--path", "nope"])
    assert (unknown.exit_code, unknown.stderr) == (2, "error: no shipped profile file 'nope' (shipped: example)\n")


def test_max_pending_reaches_every_listener() -> None:
    from switch.app import SwitchOptions, build_switch
    from switch.codec.framing import Framing

    dialect = load_dialect("iso87-binary")
    switch = build_switch(dialect, Framing.from_dialect(dialect),
                          SwitchOptions(port=0, ledger=":memory:", journal="none", admin_port=None, max_pending=3))
    try:
        assert [server.config.max_pending for server in switch.servers] == [3]
    finally:
        switch.server.ledger.close()
