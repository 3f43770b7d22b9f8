"""``iso-terminal session --script`` end to end: a real ``iso-switch serve`` subprocess on loopback,
the session as a user runs it (``python -m terminal session``), fed line by line through a pipe while
the switch's admin API drops every sign-on between two purchases."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from switch.cli import cli as cli_switch
from switch.testing import SwitchProcess
from terminal.cli import EXIT_EXPECT_FAILED, cli

TIMEOUT = 60


def _reset_sessions(admin_url: str) -> None:
    request = urllib.request.Request(f"{admin_url}/api/v1/reset", data=json.dumps({"what": "sessions"}).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        assert response.status == 200


def test_script_from_a_pipe_shows_the_host_dropping_the_session(tmp_path: Path) -> None:
    with SwitchProcess.start(["--ledger", str(tmp_path / "ledger.sqlite"), "--journal", "none"]) as switch:
        assert switch.admin_url is not None
        terminal = subprocess.Popen(
            [sys.executable, "-m", "terminal", "session", "--script", "-", "--port", str(switch.port),
             "--store", str(tmp_path / "t.sqlite"), "--signon-code", "58"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert terminal.stdin is not None and terminal.stdout is not None
            terminal.stdin.write("signon\npurchase 12.34\nexpect 00\n")
            terminal.stdin.flush()
            seen: list[str] = []
            for _ in range(50):  # bounded: a handful of lines come before the purchase's
                line = terminal.stdout.readline()
                assert line, f"the session ended early: {seen} {terminal.stderr.read() if terminal.stderr else ''}"
                seen.append(line.rstrip("\n"))
                if line.startswith("purchase "):
                    break
            assert "approved" in seen[-1], seen
            _reset_sessions(switch.admin_url)  # the host forgets the sign-on; the connection stays open
            out, err = terminal.communicate("purchase 1\nexpect 00\nstatus\n", timeout=TIMEOUT)
        finally:
            if terminal.poll() is None:
                terminal.kill()
                terminal.wait()
    assert terminal.returncode == 0, err
    lines = out.splitlines()
    assert any("signon-demanded" in line for line in lines), lines  # the host's "sign on first", shown
    assert any(line.startswith("  signed-on") for line in lines)  # and the sign-on that followed
    assert any(line.startswith("purchase 1.00 STAN ") and "approved" in line for line in lines)
    assert any(line.startswith("session: connected to 127.0.0.1:") for line in lines)


def test_script_file_through_the_cli(tmp_path: Path) -> None:
    script = tmp_path / "sale.txt"
    script.write_text("# a sale, then a decline the script does not expect\nsignon\npurchase 2\nexpect approved\n"
                      "purchase 3 --pan 4000000000000051\nexpect 00\nsettle\n")
    with SwitchProcess.start(["--ledger", str(tmp_path / "ledger.sqlite"), "--journal", "none",
                              "--no-admin"]) as switch:
        result = CliRunner().invoke(cli, ["session", "--script", str(script), "--port", str(switch.port),
                                          "--store", str(tmp_path / "t.sqlite")])
    assert result.exit_code == EXIT_EXPECT_FAILED, result.output
    assert result.stderr.strip() == ("error: line 6: expect 00: the last outcome was purchase declined (answered 51): "
                                     "declined 51 (insufficient funds)")
    assert "settle" not in result.stdout


def test_script_usage_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["session", "--script", str(tmp_path / "missing.txt")])
    assert result.exit_code == 3
    assert result.stderr.strip() == f"error: --script {tmp_path / 'missing.txt'}: No such file or directory"
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"signon\n\xff\xfe\n")
    result = CliRunner().invoke(cli, ["session", "--script", str(binary)])
    assert result.exit_code == 3 and "not UTF-8 text" in result.stderr


def test_key_check_values_show_at_v_on_both_sides(tmp_path: Path) -> None:
    """A TMK terminal signs on twice in one session: the switch (-v) logs each new key set's check
    values, and the session shows the terminal loading them — key renewal, visible on both sides."""
    profiles = CliRunner().invoke(cli_switch, ["profiles", "--path", "example"]).stdout.strip()
    with socket.socket() as probe:  # a free port for the CUP listener (SwitchProcess reads only the main one)
        probe.bind(("127.0.0.1", 0))
        cup_port = probe.getsockname()[1]
    with SwitchProcess.start(["--ledger", str(tmp_path / "ledger.sqlite"), "--journal", "none", "--no-admin",
                              "--profiles", profiles, "--also-listen", f"{cup_port},dialect=cup-pos", "-v"]) as switch:
        result = CliRunner().invoke(cli, ["session", "--script", "-", "--port", str(cup_port),
                                          "--profiles", profiles, "--terminal-id", "CUP00001",
                                          "--store", str(tmp_path / "t.sqlite")], input="signon\nsignon\nstatus\n")
        switch.stop()
        log = switch.text
    assert result.exit_code == 0, result.output
    switch_checks = [line.split("): ", 1)[1] for line in log.splitlines() if "working keys in field 62" in line]
    assert len(switch_checks) == 2 and switch_checks[0] != switch_checks[1], log  # renewed at each sign-on
    assert f"working keys: {switch_checks[1]}\n" in result.stdout  # the terminal holds the second set
