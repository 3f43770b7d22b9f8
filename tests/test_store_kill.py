"""A deferred-sync store killed with SIGKILL at an arbitrary instant (mid-step, mid-commit, mid-checkpoint)
still holds everything it said was synced, and only whole steps: what a request depends on is on disk
before the request may leave, and the file is either before or after each step. (SIGKILL leaves the
kernel's page cache intact, so this proves the commit comes before "sending", not the fsync; that the
commit is fsynced is the store's synchronous=FULL, checked in tests/test_store_format.py.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from terminal.store import TerminalStore

TID = "T0000001"

# Runs purchases as the load runner's policy does (two steps, a sync before "sending"); after each
# sync it prints the STAN it would now send, then answers it (second step, not yet synced).
WORKER = textwrap.dedent("""
    import sys
    from switch.codec.message import Message
    from terminal.store import TerminalStore

    store = TerminalStore.open(sys.argv[1], "T0000001", deferred_sync=True)
    store.recover_in_flight(0.0)
    now = 1_740_830_400.0
    while True:
        with store.transaction():
            stan = store.next_stan()
            request = Message("0200", {2: "4111111111111111", 4: "000000001234", 7: "0301120000", 11: stan,
                                       41: "T0000001", 52: "0123456789ABCDEF"}, "")
            entry = store.add_entry(kind="purchase", direction="debit", request=request, amount=1234,
                                    currency="840", pan="4111111111111111", state="in-flight", now=now)
            store.add_reversal(entry.id, "98", request.copy(mti="0400"), now)
        store.sync()
        print(stan, flush=True)  # what would be sent now
        reversal = store.reversal_for(entry.id)
        with store.transaction():
            store.update_entry(entry.id, now=now, state="approved", response_code="00", rrn="000000000001")
            store.delete_reversal(reversal.id)
""")


def sent_then_killed(path: Path, after: int) -> list[str]:
    """Start a worker on ``path``, read ``after`` sent STANs, SIGKILL it at once; every STAN it printed."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert worker.stdout is not None
    sent = []
    try:
        for _ in range(after):
            line = worker.stdout.readline()
            assert line, "the worker stopped early"
            sent.append(line.strip())
    finally:
        worker.send_signal(signal.SIGKILL)
        sent.extend(line.strip() for line in worker.stdout.read().splitlines())  # printed before it died
        worker.wait(10)
    return sent


@pytest.mark.parametrize("after", [1, 31, 33, 77, 140])  # around the checkpoints (every 32 commits) too
def test_a_killed_deferred_store_keeps_whatever_was_sent_and_only_whole_steps(tmp_path: Path, after: int) -> None:
    path = tmp_path / "t.sqlite"
    sent = sent_then_killed(path, after)
    sent += sent_then_killed(path, 5)  # restarted after a kill, killed again
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with TerminalStore.open(path, TID) as store:
        entries = {entry.stan: entry for entry in store.entries()}
        assert set(sent) <= set(entries)  # everything sent was on disk first
        assert int(store.last_stan) >= max(int(stan) for stan in sent)  # no STAN handed out twice
        reversals = {reversal.journal_id for reversal in store.reversals()}
        for entry in entries.values():  # whole steps only: a request and its reversal, an answer and its delete
            assert entry.state in ("in-flight", "unknown", "approved")
            assert (entry.id in reversals) == (entry.state != "approved"), entry
