"""``iso-switch serve --ledger postgresql://...`` as users run it: a real switch process on a real
PostgreSQL database, a real ``iso-terminal purchase`` over loopback (sign-on included), then the
ledger read back (``Ledger`` and ``iso-switch ledger``) after a clean stop and after a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from switch.ledger import Ledger
from switch.testing import SwitchProcess


def serve(pg_url: str, tmp_path: Path) -> SwitchProcess:
    return SwitchProcess.start(["--ledger", pg_url, "--no-admin", "--journal", str(tmp_path / "journal.jsonl")])


def purchase(port: int, tmp_path: Path, amount: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "terminal", "purchase", "--amount", amount, "--json", "--port", str(port),
         "--store", str(tmp_path / "terminal.sqlite"), "--terminal-id", "PGTERM01"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    outcome: dict[str, object] = json.loads(done.stdout)
    return outcome


def test_serve_on_postgresql_posts_a_terminal_purchase(pg_url: str, tmp_path: Path) -> None:
    with serve(pg_url, tmp_path) as switch:
        first = purchase(switch.port, tmp_path, "12.34")
    assert switch.returncode == 0 and switch.closed_cleanly, switch.output
    assert any(f"ledger {pg_url};" in line for line in switch.output), switch.output
    assert first["kind"] == "approved" and first["amount"] == 1234

    book = Ledger.open(pg_url)
    [posted] = book.postings(terminal="PGTERM01")
    assert (posted.rrn, posted.amount, posted.approved) == (first["rrn"], 1234, True)
    book.close()

    with serve(pg_url, tmp_path) as switch:  # a restart replays the database and goes on numbering
        second = purchase(switch.port, tmp_path, "1.00")
    assert second["kind"] == "approved" and str(second["rrn"]) > str(first["rrn"])

    shown = subprocess.run([sys.executable, "-m", "switch", "ledger", "--ledger", pg_url, "--json"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert [p["rrn"] for p in document["postings"]] == [first["rrn"], second["rrn"]]
    [batch] = document["batches"]
    assert (batch["terminal"], batch["debit_count"], batch["debit_amount"]) == ("PGTERM01", 2, 1334)


def test_lost_database_connection_stops_the_switch_without_acknowledging(pg_url: str, tmp_path: Path) -> None:
    """The server ends the switch's session mid-run: the next approval cannot be committed, so it is never
    sent (the terminal hears nothing it could book) and the switch stops instead of serving on."""
    with serve(pg_url, tmp_path) as switch:
        purchase(switch.port, tmp_path, "2.00")  # signed on and one approval stored
        with psycopg.connect(pg_url, autocommit=True) as conn:
            ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = 'iso-switch' AND datname = current_database()").fetchall()
        assert ended == [(True,)]
        lost = subprocess.run(
            [sys.executable, "-m", "terminal", "purchase", "--amount", "3.00", "--json", "--port", str(switch.port),
             "--store", str(tmp_path / "terminal.sqlite"), "--terminal-id", "PGTERM01", "--timeout", "10",
             "--connect-attempts", "1"],
            capture_output=True, text=True, timeout=60)
        assert switch.process.wait(timeout=30) != 0, switch.output
    assert "error: ledger postgresql://" in switch.text and "commit failed" in switch.text, switch.text
    assert "replies waiting for it were withheld and the switch stopped" in switch.text
    assert json.loads(lost.stdout)["kind"] == "unknown-queued", lost.stdout + lost.stderr  # no approval heard
    book = Ledger.open(pg_url)
    assert [p.amount for p in book.postings()] == [200]
    book.close()
