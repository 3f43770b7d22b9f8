"""The journal file read back: ``format_entry_line``, ``read_journal_file``, following a growing and
rotating file (``follow_journal``), and the ``iso-switch journal`` command. Masking, the ring and
writing the file are in test_journal.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import switch.journal.reading as journal_module  # follow_journal sleeps here
from switch.cli import cli as switch_cli
from switch.journal import (
    EntryFilter,
    JournalFileError,
    JournalFollower,
    follow_journal,
    format_entry_line,
    read_journal_file,
)
from tests.test_journal import BINARY, PAN, journal_for, record_exchange

# --------------------------------------------------------------------------------------------
# Reading, formatting and following the file


def write_lines(path: Path, entries: list[dict[str, Any]], mode: str = "a") -> None:
    with open(path, mode) as file:
        for entry in entries:
            file.write(json.dumps(entry) + "\n")


def entry_dict(seq: int, **values: Any) -> dict[str, Any]:
    base = {"seq": seq, "time": 1_700_000_000.5, "connection": 1, "peer": "127.0.0.1:5000", "direction": "in",
            "mti": "0200", "stan": "000001", "terminal": "TERM0001", "response_code": None, "faults": [],
            "fields": {}, "raw_hex": "", "note": "", "error": None, "matched": None, "request_seq": None}
    base.update(values)
    return base


def test_format_entry_line_says_what_happened() -> None:
    line = format_entry_line(entry_dict(7, direction="out", mti="0210", response_code="91", request_seq=6,
                                        faults=["delay_response", "override_code"], note="late reply"))
    assert "#7" in line and "c1" in line and " -> " in line
    assert "0210 financial response" in line
    assert "STAN 000001" in line and "TID TERM0001" in line
    assert "RC 91 issuer or switch inoperative" in line
    assert "re #6" in line and "faults: delay_response,override_code" in line and "(late reply)" in line
    undecodable = format_entry_line(entry_dict(8, mti=None, stan=None, terminal=None, error="bad bitmap"))
    assert " <- " in undecodable and "(undecodable)" in undecodable and "error: bad bitmap" in undecodable


def test_format_entry_line_escapes_control_characters_and_survives_odd_values() -> None:
    line = format_entry_line(entry_dict(1, terminal="\x1b[2J", time="yesterday", direction=["x"], faults="x"))
    assert "\x1b" not in line and "\\x1b[2J" in line
    assert "??" in line


def test_read_journal_file_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps(entry_dict(1)) + "\n\nnot json\n[1, 2]\n" + json.dumps(entry_dict(2))[:-5])
    with pytest.raises(JournalFileError, match="line 3"):
        list(read_journal_file(path))
    problems: list[tuple[int, str]] = []
    entries = list(read_journal_file(path, on_error=lambda number, reason: problems.append((number, reason))))
    assert [entry["seq"] for entry in entries] == [1]
    assert [number for number, _ in problems] == [3, 4, 5]


def test_entry_filter() -> None:
    entry = entry_dict(1, terminal="TERM0001 ", faults=["drop_response"])
    assert EntryFilter().matches(entry)
    assert EntryFilter(terminal="TERM0001", mti="0200", stan="1", faults_only=True).matches(entry)
    assert not EntryFilter(terminal="TERM0002").matches(entry)
    assert not EntryFilter(mti="0210").matches(entry)
    assert not EntryFilter(stan="000002").matches(entry)
    assert not EntryFilter(faults_only=True).matches(entry_dict(2))


def test_follower_reads_appends_partial_lines_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    follower = JournalFollower(path)
    assert follower.poll() == []  # not there yet
    write_lines(path, [entry_dict(1), entry_dict(2)])
    assert [e["seq"] for e in follower.poll()] == [1, 2]
    assert follower.poll() == []
    line = json.dumps(entry_dict(3)) + "\n"
    with open(path, "a") as file:
        file.write(line[:10])
    assert follower.poll() == []  # half a line waits for the rest
    with open(path, "a") as file:
        file.write(line[10:])
    assert [e["seq"] for e in follower.poll()] == [3]
    # Rotation: a last line lands in the old file, which is renamed; the new file is not there yet.
    write_lines(path, [entry_dict(4)])
    os.replace(path, tmp_path / "journal.jsonl.1")
    assert [e["seq"] for e in follower.poll()] == [4]
    write_lines(tmp_path / "journal.jsonl.1", [entry_dict(5)])  # written just before the new file
    write_lines(path, [entry_dict(6)])
    assert [e["seq"] for e in follower.poll()] == [5, 6]
    write_lines(path, [entry_dict(7, peer="-")], mode="w")  # truncated in place, rewritten shorter
    assert [e["seq"] for e in follower.poll()] == [7]
    follower.close()


def test_follow_journal_stops_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    write_lines(path, [entry_dict(1)])
    follower = JournalFollower(path)
    seen: list[int] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        write_lines(path, [entry_dict(len(sleeps) + 1)])

    follow_journal(follower, lambda entry: seen.append(entry["seq"]), interval=0.25,
                   stop=lambda: len(sleeps) >= 3, sleep=sleep)
    follower.close()
    assert seen == [1, 2, 3]  # the line written by the last sleep is left for the next poll
    assert sleeps == [0.25, 0.25, 0.25]


# --------------------------------------------------------------------------------------------
# iso-switch journal


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(switch_cli, ["journal", *args])


@pytest.fixture
def journal_file(tmp_path: Path) -> Path:
    path = tmp_path / "journal.jsonl"
    write_lines(path, [
        entry_dict(1, stan="000001"),
        entry_dict(2, direction="out", mti="0210", response_code="00", request_seq=1),
        entry_dict(3, stan="000002", terminal="TERM0002", faults=["delay_request"]),
        entry_dict(4, direction="out", mti="0210", stan="000002", terminal="TERM0002", response_code="05",
                   request_seq=3),
    ])
    return path


def test_cli_prints_readable_lines(journal_file: Path) -> None:
    result = invoke([str(journal_file)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4
    assert "0200 financial request" in lines[0] and "<-" in lines[0]
    assert "RC 05 do not honour" in lines[3] and "->" in lines[3]


def test_cli_filters_limit_and_json(journal_file: Path) -> None:
    assert len(invoke([str(journal_file), "--terminal", "TERM0002"]).output.splitlines()) == 2
    assert len(invoke([str(journal_file), "--mti", "0210"]).output.splitlines()) == 2
    assert len(invoke([str(journal_file), "--stan", "2"]).output.splitlines()) == 2
    only = invoke([str(journal_file), "--faults"]).output.splitlines()
    assert len(only) == 1 and "delay_request" in only[0]
    result = invoke([str(journal_file), "--json", "--limit", "2"])
    assert [json.loads(line)["seq"] for line in result.output.splitlines()] == [3, 4]


def test_cli_missing_file_and_bad_options(tmp_path: Path) -> None:
    result = invoke([str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: no journal file at {tmp_path / 'absent.jsonl'}"
    assert invoke([str(tmp_path / "absent.jsonl"), "--mti", "200"]).exit_code == 2
    assert invoke([str(tmp_path / "absent.jsonl"), "--stan", "12345678"]).exit_code == 2


def test_cli_default_path_is_next_to_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import switch.app

    monkeypatch.setattr(switch.app, "default_ledger_path", lambda: tmp_path / "ledger.sqlite")
    write_lines(tmp_path / "journal.jsonl", [entry_dict(1)])
    result = invoke([])
    assert result.exit_code == 0 and "#1" in result.output


def test_cli_warns_about_bad_lines_and_goes_on(journal_file: Path) -> None:
    with open(journal_file, "a") as file:
        file.write("garbage\n")
    result = CliRunner().invoke(switch_cli, ["journal", str(journal_file)])
    assert result.exit_code == 0
    assert "line 5: not JSON" in result.output
    assert "#4" in result.output


def test_cli_follow_prints_new_entries_across_rotation_until_ctrl_c(
        journal_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    def sleep(seconds: float) -> None:  # the follow loop's pause: the file changes, then Ctrl-C
        calls.append(seconds)
        if len(calls) == 1:
            write_lines(journal_file, [entry_dict(5, stan="000003")])
        elif len(calls) == 2:
            os.replace(journal_file, journal_file.with_name("journal.jsonl.1"))
            write_lines(journal_file, [entry_dict(6, direction="out", mti="0210", stan="000003",
                                                  response_code="00", request_seq=5)])
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(journal_module.time, "sleep", sleep)
    result = invoke([str(journal_file), "--follow", "--limit", "1", "--stan", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2  # nothing old matches STAN 3; the two new ones do
    assert "#5" in lines[0] and "#6" in lines[1]
    assert len(calls) == 3


def test_cli_follow_shows_the_recent_backlog(journal_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(journal_module.time, "sleep", interrupt)
    result = invoke([str(journal_file), "-f", "--limit", "2"])
    assert result.exit_code == 0
    assert ["#3" in result.output, "#4" in result.output, "#2" in result.output] == [True, True, False]


async def test_cli_reads_a_file_the_journal_wrote(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = journal_for(path=path)
    record_exchange(journal, BINARY, stan="000042", faults=("delay_response",))
    await journal.flush()
    journal.close()
    result = invoke([str(path), "--faults"])
    assert result.exit_code == 0
    (line,) = result.output.splitlines()
    assert "0210" in line and "STAN 000042" in line and "faults: delay_response" in line and "re #1" in line
    assert PAN not in invoke([str(path), "--json"]).output
