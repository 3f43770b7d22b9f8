"""``iso-terminal load`` over loopback against a ``python -m switch serve`` subprocess with its admin API:
a consistent run with settlement, a run whose host approves a card without booking it (the zero-amount
scenario's fault: the check must catch it and exit 4), usage errors, and ``--workers`` /
``--store-dir :memory:`` (splitting the run, merging the records)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from switch.testing import SwitchProcess
from terminal.cli import cli
from terminal.load import (
    EXIT_CHECK_REQUIRED,
    EXIT_HOST_NOT_REACHED,
    EXIT_INCONSISTENT,
    LoadStats,
    nearest_rank,
)
from terminal.load.workers import ForwardingStats, replay, split_config
from tests.test_load import DECLINED_PAN, PAN, UNBOOKED_PAN, load_config

# ---------------------------------------------------------------------------------------------
# iso-terminal load over loopback, against a real switch with its admin API


def start_switch(tmp: Path, *extra: str) -> SwitchProcess:
    return SwitchProcess.start(["--ledger", str(tmp / "ledger.sqlite"), "--journal", "none", *extra])


@pytest.fixture(scope="module")
def healthy_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    with start_switch(tmp_path_factory.mktemp("healthy")) as switch:
        assert switch.admin_url is not None
        yield switch.port, switch.admin_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def user_data_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The per-user data directory (where load keeps its stores by default) inside the test's tmp."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def load(*args: str) -> Any:
    return CliRunner().invoke(cli, ["load", *args])


def test_real_run_with_settlement_is_consistent(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "4", "--count", "160",
                  "--settle", "--seed", "11", "--json", "--quiet", "--store-dir", str(tmp_path / "stores"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["transactions"] == {"started": 160, "finished": 160, "in_flight": 0}
    assert summary["accounting_problems"] == []
    assert summary["outcomes"]["approved"] == 160
    assert summary["housekeeping"]["settle"] == {"approved": 4}
    echoes = summary["by_operation"].get("echo", {}).get("approved", 0)
    consistency = summary["consistency"]
    assert consistency["status"] == "consistent" and consistency["mismatches"] == []
    assert consistency["checked"] == consistency["money_moved"] == consistency["host_postings"] == 160 - echoes
    assert consistency["headline"].startswith(f"consistent: {160 - echoes} transactions")
    assert sorted(p.name for p in (tmp_path / "stores").iterdir() if p.suffix == ".sqlite") == [
        "L0000001.sqlite", "L0000002.sqlite", "L0000003.sqlite", "L0000004.sqlite"]


def test_text_summary_and_progress_lines(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "2", "--count", "20",
                  "--terminal-id", "LT000101", "--mix", "purchase=1", "--pan", DECLINED_PAN, "--pan", PAN,
                  "--seed", "3", "--report", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert "2 terminals" in result.stdout and "20 transactions" in result.stdout
    assert "51 " in result.stdout and "insufficient funds" in result.stdout
    assert "check    consistent: 20 transactions" in result.stdout
    assert "[" in result.stderr and "sent 20" in result.stderr  # the plain progress line (not a TTY)
    assert (tmp_path / "report" / "report.html").exists()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["config"]["first_terminal"] == "LT000101" and summary["config"]["last_terminal"] == "LT000102"
    # the stores are the terminals' own, where `iso-terminal status --terminal-id LT000101` looks
    status = CliRunner().invoke(cli, ["status", "--terminal-id", "LT000101", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["summary"]["open_batch_entries"] > 0
    again = load("--port", str(port), "--admin", admin, "--terminals", "2", "--count", "4",
                 "--terminal-id", "LT000101", "--mix", "purchase=1", "--quiet")  # STANs go on; only this run checked
    assert again.exit_code == 0, again.output
    assert "check    consistent: 4 transactions" in again.stdout


def test_an_approval_the_host_never_booked_is_caught(tmp_path: Path) -> None:
    with start_switch(tmp_path, "--scenario", "zero-amount") as switch:
        port, admin = switch.port, switch.admin_url
        result = load("--port", str(port), "--admin", admin, "--terminals", "2",
                      "--count", "30", "--mix", "purchase=1", "--pan", PAN, "--pan", UNBOOKED_PAN, "--seed", "4",
                      "--settle", "--quiet")
        as_json = load("--port", str(port), "--admin", admin, "--terminals", "1",
                       "--count", "3", "--mix", "purchase=1", "--pan", UNBOOKED_PAN, "--quiet", "--json",
                       "--terminal-id", "Z0000001")
    assert result.exit_code == EXIT_INCONSISTENT, result.output
    assert "check    inconsistent:" in result.stdout
    assert "MISMATCH" in result.stdout
    assert "the terminal believes money moved; the host has no posting" in result.stdout
    assert as_json.exit_code == EXIT_INCONSISTENT
    mismatches = json.loads(as_json.stdout)["consistency"]["mismatches"]
    assert [m["stan"] for m in mismatches] == ["000002", "000003", "000004"]  # 000001 is the sign-on
    assert all(m["terminal"] == "Z0000001" and "no posting" in m["host_view"] for m in mismatches)


def test_unreachable_admin_api_skips_the_check(healthy_switch: tuple[int, int]) -> None:
    port, _ = healthy_switch
    nowhere = f"http://127.0.0.1:{free_port()}"
    skipped = load("--port", str(port), "--admin", nowhere, "--count", "4", "--terminals", "2", "--quiet")
    assert skipped.exit_code == 0, skipped.output
    assert "consistency check skipped: admin API not reachable at" in skipped.stdout
    required = load("--port", str(port), "--admin", nowhere, "--count", "2", "--terminals", "1", "--quiet",
                    "--require-check")
    assert required.exit_code == EXIT_CHECK_REQUIRED
    unchecked = load("--port", str(port), "--no-check", "--count", "2", "--terminals", "1", "--quiet")
    assert unchecked.exit_code == 0 and "skipped: --no-check" in unchecked.stdout


def test_host_not_reached_is_one_line_and_exit_3(tmp_path: Path) -> None:
    result = load("--port", str(port := free_port()), "--no-check", "--count", "20", "--terminals", "5", "--quiet",
                  "--connect-attempts", "2", "--store-dir", str(tmp_path / "stores"))
    assert result.exit_code == EXIT_HOST_NOT_REACHED, result.output
    assert result.output.count("cannot connect") == 1  # once, not once per terminal
    assert f"error: cannot connect: 127.0.0.1:{port}: Connection refused" in result.output
    assert "load " not in result.output and not list((tmp_path / "stores").glob("*.sqlite"))  # no run


def test_a_store_that_is_not_a_terminal_store_is_one_line_exit_3(tmp_path: Path) -> None:
    (tmp_path / "L0000002.sqlite").write_text("not a database")
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen()
    with listener:
        result = load("--port", str(port), "--no-check", "--count", "2", "--terminals", "2", "--quiet",
                      "--store-dir", str(tmp_path))
    assert result.exit_code == 3, result.output
    assert "L0000002.sqlite is not a terminal store" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("option", ["--report", "--store-dir"])
def test_a_directory_that_cannot_be_written_is_a_usage_error_before_the_run(option: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen()
    with listener:  # a host that accepts: a run would connect; the check must come first
        result = load("--port", str(port), "--no-check", "--count", "1", "--terminals", "1", "--quiet",
                      option, str(tmp_path / "a-file" / "sub"))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert result.exit_code == 3, result.output
    assert f"{option} " in result.output and "cannot write there" in result.output
    assert "Traceback" not in result.output and "load " not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--count", "5", "--duration", "5s"], "not both"),
    ([], "say how long to run: --count (total transactions) or --duration (wall time)"),
    (["--count", "1", "--terminals", "2", "--workers", "2"], "fewer than --workers"),
    (["--count", "5", "--terminals", "2", "--workers", "3"], "every worker needs a terminal"),
    (["--count", "5", "--mix", "buy=1"], "unknown operation"),
    (["--count", "5", "--rate", "fast"], "--rate"),
    (["--count", "5", "--store", "x.sqlite"], "--store-dir"),
    (["--count", "5", "--pan", "4761739001010011"], "Luhn"),
    (["--count", "5", "--amount", "5.00-1.00"], "amount range"),
    (["--count", "5", "--no-check", "--require-check"], "contradicts"),
    (["--count", "5", "--terminals", "0"], "--terminals"),
])
def test_usage_errors_exit_3(args: list[str], message: str) -> None:
    result = load("--port", "1", *args)
    assert result.exit_code == 3, result.output
    assert message in result.output


# ---------------------------------------------------------------------------------------------
# --workers: splitting the run, merging the records; --store-dir :memory:


def test_split_config_shares_add_up_and_terminals_are_disjoint() -> None:
    config = load_config(7, count=23, rate=90.0, seed=4, workers=3)
    parts = split_config(config)
    assert [len(part.terminal_ids) for part in parts] == [2, 2, 3]
    assert [t for part in parts for t in part.terminal_ids] == list(config.terminal_ids)
    assert [part.count for part in parts] == [8, 8, 7] and sum(p.count or 0 for p in parts) == 23
    assert sum(part.rate or 0 for part in parts) == pytest.approx(90.0)
    assert len({part.seed for part in parts}) == 3 and all(part.workers == 1 for part in parts)
    assert split_config(config)[1].seed == parts[1].seed  # the same --seed repeats the run
    duration = split_config(load_config(4, duration=5.0, workers=2))
    assert all(part.duration == 5.0 and part.count is None for part in duration)


def test_replayed_worker_records_merge_exactly() -> None:
    """Two workers' records replayed into one LoadStats give the stats of all samples together:
    percentiles over the merged samples (not an average of the workers' percentiles)."""
    first, second = ForwardingStats(), ForwardingStats()
    for index in range(100):  # worker 1: fast; worker 2: slow
        for stats, latency in ((first, 0.010 + index / 10_000), (second, 1.0 + index / 100)):
            at = index / 50
            stats.record_started("purchase")
            stats.record_sends(["financial"])
            stats.record_outcome("purchase", "approved", "00", latency, at)
    second.record_note("connect-failed", "cannot connect: 127.0.0.1:1: Connection refused")
    merged = LoadStats()
    replay(merged, first.take(), 0.0)
    replay(merged, second.take(), 0.5)
    assert merged.check_totals() == []
    assert (merged.started, merged.finished, merged.messages_sent["financial"]) == (200, 200, 200)
    all_latencies = sorted(first.sorted_latencies() + second.sorted_latencies())
    assert merged.percentile(50) == nearest_rank(all_latencies, 50) == first.percentile(100)
    assert merged.percentile(99) == nearest_rank(all_latencies, 99)
    assert merged.percentile(50) != (first.percentile(50) + second.percentile(50)) / 2  # type: ignore[operator]
    assert merged.last_outcome_at == pytest.approx(99 / 50 + 0.5)  # worker 2's clock shifted onto the parent's
    assert merged.connect_failure == "cannot connect: 127.0.0.1:1: Connection refused"
    assert first.take() == []  # taken once
    with pytest.raises(ValueError, match="not a load record"):
        replay(merged, [("bogus",)], 0.0)


def test_workers_merge_into_one_consistent_report(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "5", "--count", "101", "--workers", "2",
                  "--settle", "--seed", "7", "--json", "--quiet", "--store-dir", str(tmp_path / "stores"),
                  "--terminal-id", "W0000001")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["transactions"] == {"started": 101, "finished": 101, "in_flight": 0}
    assert summary["accounting_problems"] == []
    assert summary["latency_ms"]["count"] == 101 and sum(b["count"] for b in summary["latency_histogram"]) == 101
    assert summary["housekeeping"]["settle"] == {"approved": 5} and summary["terminal_events"]["sign_ons"] == 5
    assert summary["config"]["workers"] == 2
    echoes = summary["by_operation"].get("echo", {}).get("approved", 0)
    consistency = summary["consistency"]
    assert consistency["status"] == "consistent", consistency
    assert consistency["checked"] == consistency["host_postings"] == 101 - echoes
    assert sorted(p.name for p in (tmp_path / "stores").iterdir() if p.suffix == ".sqlite") == [
        f"W000000{n}.sqlite" for n in range(1, 6)]


def test_workers_with_memory_stores(healthy_switch: tuple[int, int], tmp_path: Path) -> None:
    port, admin = healthy_switch
    result = load("--port", str(port), "--admin", admin, "--terminals", "4", "--count", "40", "--workers", "2",
                  "--json", "--quiet", "--store-dir", ":memory:", "--terminal-id", "M0000001")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["transactions"]["finished"] == 40 and summary["config"]["store_dir"] == ":memory:"
    assert summary["consistency"]["status"] == "consistent"
    assert not (tmp_path / "xdg").exists()  # nothing written where the stores would otherwise go


def test_load_start_imports_only_what_a_run_needs() -> None:
    """``iso-terminal load`` imports neither the other commands nor what only they (or the check) use.

    Measured: these lazy imports cut the start of ``load`` by ~40 % of its instructions."""
    import subprocess
    import sys

    probe = ("import sys; from terminal.cli import cli; cli.get_command(None, 'load'); import terminal.load; "
             "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    assert "terminal.cli.load_command" in loaded and "terminal.load.runner" in loaded
    never = {"terminal.cli.session_command", "terminal.cli.operations", "terminal.cli.build_command",
             "terminal.cli.status_command", "terminal.session", "terminal.api", "switch.scenario",
             "switch.profiles", "switch.describe", "urllib.request", "rich", "prompt_toolkit"}
    assert loaded & never == set()
