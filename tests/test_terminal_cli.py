"""``iso-terminal``'s terminal commands: amounts, usage errors, outcome lines and exit codes, status,
and end-to-end runs against a real ``python -m switch serve`` on loopback (127.0.0.1 only).

The switch runs as a subprocess on a port it picks (``--port 0``) with its ledger in a temporary
directory; the commands run in-process through ``CliRunner`` (and once as ``python -m terminal``).
Every exchange here is answered at once or fails at once (resets, refused connections): the
timeout rules are proven on a virtual clock in ``test_terminal_client.py``, not with real waits.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.ledger import Ledger
from switch.testing import SwitchProcess
from terminal.cli import (
    OUTCOME_EXIT_CODES,
    TEST_PAN,
    cli,
    default_expiry,
    default_store_path,
    format_amount,
    outcome_line,
    parse_amount,
)
from terminal.policy import OUTCOME_KINDS, Outcome
from terminal.store import TerminalStore

RESET_CARD = "4999000000000021"  # the custom scenario below resets the connection on this card


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def start_switch(tmp: Path, *extra: str) -> SwitchProcess:
    return SwitchProcess.start(["--ledger", str(tmp / "ledger.sqlite"), "--no-admin", "--journal", "none", *extra])


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A real switch (default scenario: sign-on required, test cards); yields (port, its directory)."""
    tmp = tmp_path_factory.mktemp("switch")
    with start_switch(tmp) as switch:
        yield switch.port, tmp


def host_args(port: int, store: Path, *, terminal: str = "TERM0001") -> list[str]:
    return ["--port", str(port), "--store", str(store), "--terminal-id", terminal]


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# amounts and small pure pieces


@pytest.mark.parametrize(
    ("text", "exponent", "minor"),
    [("12.34", 2, 1234), ("12.3", 2, 1230), ("12", 2, 1200), ("0", 2, 0), ("0.01", 2, 1), ("7", 0, 7),
     (" 5.5 ", 3, 5500), ("000012.34", 2, 1234)],
)
def test_amounts_in_major_units(text: str, exponent: int, minor: int) -> None:
    assert parse_amount(text, exponent) == minor


@pytest.mark.parametrize(
    ("text", "exponent", "reason"),
    [("1.234", 2, "at most 2 decimal places"), ("1.5", 0, "no decimal places"), ("-1", 2, "cannot be negative"),
     ("abc", 2, "expected a decimal number"), ("1.", 2, "expected a decimal number"), ("", 2, "expected"),
     ("1e3", 2, "expected"), ("+1", 2, "expected"), ("1,50", 2, "expected"), ("١٢", 2, "expected")],
)
def test_bad_amounts_say_why(text: str, exponent: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_amount(text, exponent)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**13), st.integers(0, 4))
def test_amount_text_round_trips(minor: int, exponent: int) -> None:
    assert parse_amount(format_amount(minor, exponent), exponent) == minor


def test_default_expiry_is_in_the_future_and_store_is_per_terminal() -> None:
    assert default_expiry(date(2025, 3, 1)) == "2812"
    assert default_expiry(date(2025, 12, 31)) == "2812"
    path = default_store_path("T/1 ")
    assert path.name == "T_1.sqlite" and path.parent.name == "terminals"
    assert default_store_path("TERM0001") != default_store_path("TERM0002")


def test_every_outcome_kind_has_an_exit_code() -> None:
    assert set(OUTCOME_EXIT_CODES) == set(OUTCOME_KINDS)
    assert [OUTCOME_EXIT_CODES[k] for k in ("approved", "declined", "refused", "reversed", "unknown-queued",
                                            "unknown", "failed", "completed")] == [0, 1, 1, 2, 2, 2, 3, 0]


def test_outcome_line() -> None:
    approved = Outcome("approved", "purchase", "approved, RRN 000000000007, auth code 123456", stan="000002",
                       amount=1234)
    assert outcome_line(approved, 2) == "purchase 12.34 STAN 000002: approved, RRN 000000000007, auth code 123456"
    failed = Outcome("failed", "settle", "settle not done: cannot connect: 127.0.0.1:9: Connection refused")
    assert outcome_line(failed, 2) == "settle: not done: cannot connect: 127.0.0.1:9: Connection refused"


# ---------------------------------------------------------------------------------------------
# usage errors: one line, exit 3 (2 means "outcome unknown" for these commands)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amount", "1.234"], "error: --amount '1.234': this currency has at most 2 decimal places\n"),
        (["--amount", "-5"], "error: --amount '-5': an amount cannot be negative\n"),
        (["--amount", "ten"], "error: --amount 'ten': expected a decimal number of major units, e.g. 12.34\n"),
        (["--minor", "-5"], "error: --minor '-5': an amount cannot be negative\n"),
        (["--minor", "12.5"], "error: --minor '12.5': expected whole minor units, e.g. 1234\n"),
        ([], "error: give the amount once: --amount 12.34 (major units) or --minor 1234 (minor units)\n"),
        (["--amount", "1", "--minor", "100"],
         "error: give the amount once: --amount 12.34 (major units) or --minor 1234 (minor units)\n"),
        (["--amount", "1.5", "--currency-exponent", "0"], "error: --amount '1.5': this currency has no decimal "
                                                          "places\n"),
        (["--amount", "1", "--terminal-id", "TOOLONGID"], "terminal_id must be 1 to 8 printable ASCII"),
        (["--amount", "1", "--currency", "EUR"], "currency must be a 3-digit ISO 4217 numeric code"),
        (["--amount", "1", "--dialect", "nope"], "error: nope: no such dialect"),
        (["--amount", "1", "--tpdu", "6000010000"], "error: --tpdu: the framing of dialect iso87-binary carries no"),
        (["--amount", "1", "--dialect", "cup-pos", "--tpdu", "60"], "error: --tpdu: a TPDU is 5 bytes, got 1\n"),
        (["--amount", "1", "--bogus"], "No such option '--bogus'"),
        (["--amount", "1", "--timeout", "0"], "Invalid value for '--timeout'"),
    ],
)
def test_usage_errors_exit_3_before_anything_is_stored(args: list[str], message: str, tmp_path: Path) -> None:
    store = tmp_path / "t.sqlite"
    result = invoke("purchase", "--store", str(store), "--port", str(free_port()), *args)
    assert result.exit_code == 3, result.output
    assert message in result.stderr and result.stdout == ""
    if message.startswith("error: "):
        assert result.stderr.count("\n") == 1
    assert not store.exists()


def test_connection_refused_is_one_line_and_exit_3(tmp_path: Path) -> None:
    port = free_port()
    result = invoke("purchase", "--amount", "12.34", "--connect-attempts", "1", *host_args(port, tmp_path / "t.db"))
    assert result.exit_code == 3
    assert result.stdout == f"purchase: not done: cannot connect: 127.0.0.1:{port}: Connection refused\n"
    assert result.stderr == ""
    with TerminalStore.open(tmp_path / "t.db", "TERM0001") as store:
        assert store.entries() == [] and store.reversals() == []  # nothing was sent, nothing is owed


def test_verbose_logs_what_the_terminal_did_on_stderr(tmp_path: Path) -> None:
    port = free_port()
    result = invoke("echo", "-v", "--connect-attempts", "1", *host_args(port, tmp_path / "t.db"))
    assert result.exit_code == 3 and result.stdout.startswith("echo: not done: cannot connect")
    assert f"WARNING TERM0001 connect-failed: cannot connect: 127.0.0.1:{port}: Connection refused" in result.stderr


def test_status_without_a_store_connects_nowhere_and_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "none.sqlite"
    result = invoke("status", "--store", str(store), "--terminal-id", "T9")
    assert result.exit_code == 0
    assert result.stdout == f"terminal T9: no store at {store} yet (nothing done with this terminal)\n"
    as_json = json.loads(invoke("status", "--store", str(store), "--json").stdout)
    assert as_json == {"store": str(store), "exists": False, "terminal_id": "TERM0001"}
    assert not store.exists()


# ---------------------------------------------------------------------------------------------
# against a real switch


def test_signon_purchase_zero_amount_settle_and_status(switch: tuple[int, Path], tmp_path: Path) -> None:
    port, switch_dir = switch
    store = tmp_path / "t.sqlite"
    common = host_args(port, store, terminal="CLI00001")

    signon = invoke("signon", *common)
    assert (signon.exit_code, signon.stdout) == (0, "signon: signed on\n")

    bought = invoke("purchase", "--amount", "12.34", *common)
    assert bought.exit_code == 0, bought.output
    assert bought.stdout.startswith("purchase 12.34 STAN ") and ": approved, RRN " in bought.stdout
    assert bought.stdout.count("\n") == 1

    zero = invoke("purchase", "--amount", "0", *common)
    assert (zero.exit_code, zero.stdout) == (1, "purchase: refused: amount must be greater than zero, got 0\n")

    declined = invoke("purchase", "--minor", "500", "--pan", "4000000000000051", *common)
    assert declined.exit_code == 1 and "declined 51 (insufficient funds)" in declined.stdout

    refund = invoke("refund", "--amount", "2", "--json", *common)
    assert refund.exit_code == 0
    refund_outcome = json.loads(refund.stdout)
    assert (refund_outcome["kind"], refund_outcome["operation"], refund_outcome["amount"]) == ("approved", "refund",
                                                                                               200)
    status = invoke("status", *common)
    assert status.exit_code == 0
    lines = status.stdout.splitlines()
    assert lines[0] == f"terminal CLI00001 (store {store})"
    assert "open batch 000001: 3 entries (approved 2, declined 1)" in lines[1]
    assert lines[2] == "open batch totals: 1 debits 12.34, 1 credits 2.00, net 10.34"
    assert "not trusted across runs" in lines[3]
    # the host's 0810 carried its time (12/13): same machine, so within a second of ours
    assert re.fullmatch(r"clock: host − terminal [+-][01]s, learnt at sign-on .* use the host's time", lines[4])
    assert lines[5:] == ["pending reversals: none", "pending advices: none", "pending settlement: none"]

    settled = invoke("settle", *common)
    assert (settled.exit_code, settled.stdout) == (
        0, "settle: settled, balanced: batch 000001 closed, batch 000002 open\n")
    after = json.loads(invoke("status", "--json", *common).stdout)
    assert after["summary"]["batch"] == "000002" and after["open_batch_entries"] == []

    # the host agrees: its batch 000001 of this terminal is closed with the same net totals
    ledger = Ledger.open(switch_dir / "ledger.sqlite")
    try:
        (batch,) = [b for b in ledger.batches(terminal="CLI00001") if b.batch == "000001"]
    finally:
        ledger.close()
    assert (batch.status, batch.debit_amount, batch.credit_amount) == ("closed", 1234, 200)


def test_void_exits_2_because_money_went_back(switch: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = switch
    common = host_args(port, tmp_path / "t.sqlite", terminal="CLI00002")
    assert invoke("purchase", "--amount", "3", *common).exit_code == 0
    voided = invoke("reverse-last", *common)
    assert voided.exit_code == 0 and voided.stdout.startswith("reverse-last 3.00 STAN ")
    assert "voided: the host acknowledged the reversal (answer 00)" in voided.stdout
    assert "approved" not in voided.stdout  # a reversal acknowledgement is never "approved"
    nothing = invoke("reverse-last", *common)
    assert nothing.exit_code == 1 and "refused: no approved transaction in the open batch" in nothing.stdout
    drained = invoke("drain", *common)
    assert (drained.exit_code, drained.stdout) == (0, "drain: nothing owed to the host\n")


def test_python_m_terminal_purchase_in_a_subprocess(switch: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = switch
    done = subprocess.run(
        [sys.executable, "-m", "terminal", "purchase", "--amount", "1.00", "--json",
         *host_args(port, tmp_path / "t.sqlite", terminal="CLI00003")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["kind"] == "approved" and outcome["amount"] == 100 and len(outcome["rrn"]) == 12
    assert done.stderr == ""


SCENARIO = f"""
[scenario]
name = "resets"
description = "card {RESET_CARD}: approved, committed, connection reset; its reversals reset too"

[[fault]]
id = "reset-purchase"
when = {{ mti = ["0200"], pan_prefix = ["{RESET_CARD}"] }}
reset = "after"

[[fault]]
id = "reset-reversal"
when = {{ mti = ["0400", "0401"], pan_prefix = ["{RESET_CARD}"] }}
reset = "before"
"""


def test_connection_reset_mid_purchase_exits_2_and_blocks_the_next_sale(tmp_path: Path) -> None:
    scenario = tmp_path / "resets.toml"
    scenario.write_text(SCENARIO)
    with start_switch(tmp_path, "--scenario", str(scenario)) as switch:
        port = switch.port
        common = host_args(port, tmp_path / "t.sqlite")
        lost = invoke("purchase", "--amount", "9.99", "--pan", RESET_CARD, *common)
        assert lost.exit_code == 2, lost.output
        assert ": outcome unknown: the card may be debited, do not charge again; " in lost.stdout
        assert lost.stdout.count("\n") == 1

        status = invoke("status", *common).stdout.splitlines()
        assert "pending reversals: 1" in status
        (queued,) = [line for line in status if line.startswith("  purchase STAN ")]
        assert "9.99: reason 98 (no reply (issuer timeout)), 3 attempts" in queued

        blocked = invoke("purchase", "--amount", "1", "--pan", TEST_PAN, *common)  # the reversal goes first
        assert blocked.exit_code == 3 and "got no answer in 3 attempts; it stays stored" in blocked.stdout
        as_json = json.loads(invoke("status", "--json", *common).stdout)
        assert [r["attempts"] for r in as_json["pending_reversals"]] == [6]
        assert [e["state"] for e in as_json["open_batch_entries"]] == ["unknown"]  # the new sale never left


# ---------------------------------------------------------------------------------------------
# Ctrl-C (SIGINT) while a command waits on the host: one line, a consistent store, exit 2 or 130


def _interrupt_cli(args: list[str], wait_for: Callable[[], None]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m terminal ARGS``, call ``wait_for`` (returns once the command is waiting on the
    host), send SIGINT, and collect the result — all bounded in time."""
    import signal

    process = subprocess.Popen([sys.executable, "-m", "terminal", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
def test_ctrl_c_while_signing_on_to_a_silent_host_exits_130(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(20)
        port = server.getsockname()[1]
        accepted: list[socket.socket] = []

        def signon_arrived() -> None:
            connection, _ = server.accept()
            accepted.append(connection)
            connection.settimeout(20)
            assert connection.recv(4096)  # the 0800, never answered

        store = tmp_path / "t.sqlite"
        result = _interrupt_cli(["purchase", "--amount", "1", *host_args(port, store), "--timeout", "60"],
                                signon_arrived)
        for connection in accepted:
            connection.close()
    assert result.returncode == 130, result
    assert result.stdout.count("\n") == 1 and "interrupted while waiting for the signon answer" in result.stdout
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    with TerminalStore.open(store, "TERM0001") as opened:
        assert opened.entries() == [] and opened.reversals() == []  # no payment was sent


DELAY_SCENARIO = """
[scenario]
name = "silent-sale"
description = "every 0200 is held for a minute: the terminal is left waiting"

[[fault]]
id = "hold-sale"
when = { mti = ["0200"] }
delay_request = "60s"
"""


@pytest.mark.slow
def test_ctrl_c_while_a_sale_is_in_flight_exits_2_with_its_reversal_stored(tmp_path: Path) -> None:
    scenario = tmp_path / "silent.toml"
    scenario.write_text(DELAY_SCENARIO)
    store = tmp_path / "t.sqlite"
    with start_switch(tmp_path, "--scenario", str(scenario)) as switch:

        def sale_sent() -> None:
            import time

            from terminal.store import StoreError

            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if store.exists():
                    try:
                        with TerminalStore.open(store, "TERM0001") as opened:
                            if any(e.state == "in-flight" for e in opened.entries()):
                                return
                    except StoreError:  # opened while the terminal was still creating it: look again
                        pass
                time.sleep(0.05)
            raise AssertionError("the sale never went out")

        result = _interrupt_cli(["purchase", "--amount", "2.50", *host_args(switch.port, store), "--timeout", "60"],
                                sale_sent)
    assert result.returncode == 2, result
    assert result.stdout.count("\n") == 1
    assert ("interrupted: outcome unknown: the card may be debited, do not charge again; "
            "the reversal goes out automatically") in result.stdout
    assert "Traceback" not in result.stderr
    with TerminalStore.open(store, "TERM0001") as opened:
        (entry,) = opened.entries()
        assert entry.state == "unknown" and [r.journal_id for r in opened.reversals()] == [entry.id]


UNBALANCED_SCENARIO = """
[scenario]
name = "unbalanced-once"
description = "the first settlement is answered 95: the terminal uploads, then settles after upload"

[[fault]]
id = "first-settlement-95"
when = { mti = ["0500"], first = 1 }
respond = "95"
"""


def test_settle_after_95_upload_and_00_exits_4_and_says_unbalanced(tmp_path: Path) -> None:
    scenario = tmp_path / "unbalanced.toml"
    scenario.write_text(UNBALANCED_SCENARIO)
    with start_switch(tmp_path, "--scenario", str(scenario)) as switch:
        common = host_args(switch.port, tmp_path / "t.sqlite")
        assert invoke("purchase", "--amount", "3", *common).exit_code == 0
        settled = invoke("settle", *common)
        assert settled.exit_code == 4, settled.output  # not 0: never "balanced" after 95 → upload → 00
        assert settled.stdout.startswith("settle: settlement unbalanced: uploaded, contact the acquirer.")
        assert "The host closed batch 000001 after the upload of 1 record (answered 00)" in settled.stdout
        assert "the terminal's were debits 1 / 3.00" in settled.stdout
        assert settled.stdout.count("\n") == 1
        after = json.loads(invoke("status", "--json", *common).stdout)
        assert after["summary"]["batch"] == "000002"  # closed because the host closed it


def test_no_confirm_needs_a_confirm_timeout(tmp_path: Path) -> None:
    result = invoke("purchase", "--amount", "1", "--no-confirm", *host_args(free_port(), tmp_path / "t.sqlite"))
    assert result.exit_code == 3 and "--no-confirm needs --confirm-timeout" in result.output


def test_balance_inquiry_against_the_switch(switch: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = switch
    result = invoke("balance", *host_args(port, tmp_path / "t.sqlite", terminal="CLI00009"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("balance: available ") and result.stdout.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# first-hour fixes: group-level usage errors, the settle lines


@pytest.mark.parametrize(("args", "message"), [
    (["purchse"], "error: No such command 'purchse'. Did you mean 'purchase'? (try 'iso-terminal --help')\n"),
    (["--bogus"], "error: No such option '--bogus'. (try 'iso-terminal --help')\n"),
])
def test_group_level_usage_errors_are_one_line_exit_3(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args, prog_name="iso-terminal")
    assert result.exit_code == 3  # never 2: that means "money may have moved"
    assert result.stderr == message
    assert result.stdout == ""


def test_a_bare_iso_terminal_shows_help_but_does_not_pass() -> None:
    result = CliRunner().invoke(cli, [], prog_name="iso-terminal")
    assert result.exit_code == 3
    assert "session" in result.output and "purchase" in result.output


def test_the_unbalanced_settle_line_says_what_was_uploaded_and_the_totals() -> None:
    from switch.codec.composite import SettlementTotals
    from terminal.settlement import unbalanced_text

    ours, theirs = SettlementTotals(2, 3000, 1, 250), SettlementTotals(1, 1766, 1, 250)
    assert unbalanced_text("000001", "000002", "00", ours, theirs, 3, 2) == (
        "settlement unbalanced: uploaded, contact the acquirer. The host closed batch 000001 after the upload of "
        "3 records (answered 00); terminal − host: debits +1 / +12.34; the terminal's totals: debits 2 / 30.00, "
        "credits 1 / 2.50; batch 000002 open")
    alone = unbalanced_text("000001", "000002", "00", ours, None, 1, 0)
    assert "the upload of 1 record (answered 00)" in alone
    assert "the host gave no totals; the terminal's were debits 2 / 3000, credits 1 / 250" in alone


def test_a_terminal_in_the_wrong_dialect_is_told_which_one_fits(switch: tuple[int, Path], tmp_path: Path) -> None:
    """Not pyiso8583's "field t": the reply decodes as the switch's dialect, and the line says so."""
    port, _ = switch
    result = invoke("echo", "--dialect", "iso87-ascii", *host_args(port, tmp_path / "t.sqlite"))
    assert result.exit_code != 0
    assert "this looks like a different dialect: it decodes as iso87-binary, not as iso87-ascii" in result.output
    assert "field t" not in result.output


def test_load_checks_consistency_against_the_switch_it_loads(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """The check is told the terminals' host and port, so it can refuse an admin API of another switch."""
    seen: list[object] = []

    def fake_execute(config: object, check: object, **_: object) -> int:
        seen.append(check)
        return 0

    import terminal.load

    monkeypatch.setattr(terminal.load, "execute", fake_execute)
    result = invoke("load", "--count", "1", "--port", "18583", "--store-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert getattr(seen[0], "target", None) == ("127.0.0.1", 18583)
