"""``iso-switch serve --workers N`` end to end: real worker processes on one port (SO_REUSEPORT) over a real
PostgreSQL ledger, one admin endpoint that aggregates them, a killed worker restarted, SIGTERM draining
all; and the refusal of a SQLite ledger. Subprocesses and sockets: marked slow (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from switch.cli import cli
from switch.ledger import Ledger
from switch.workers_admin import merge_metrics
from tests.test_server import connect, exchange, purchase

START = 90.0  # seconds for the workers to spawn and open the ledger on a loaded machine
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Supervisor:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = START) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r}; saw {self.seen}; stderr {self._stderr()}")

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(running)"
        return self.process.stderr.read()[-3000:]


@contextmanager
def supervisor(args: list[str]) -> Iterator[Supervisor]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield Supervisor(process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def get(url: str) -> tuple[int, str]:
    try:
        with NO_PROXY.open(url, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def send(url: str, method: str, body: object) -> tuple[int, str, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"content-type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=20) as response:
            return response.status, response.headers.get("X-Iso-Workers", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Iso-Workers", ""), exc.read().decode()


async def purchases(port: int, terminals: int) -> list[str]:
    codes: list[str] = []
    for number in range(terminals):  # one connection each: SO_REUSEPORT spreads them over the workers
        frames = await connect(port)
        try:
            codes.append((await exchange(frames, purchase(number + 1, terminal=f"TERM{number:04d}")))[39])
        finally:
            await frames.aclose()
    return codes


async def test_workers_share_one_port_one_admin_endpoint_and_drain(pg_url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with supervisor(["--workers", "2", "--port", "0", "--admin-port", "0", "--ledger", pg_url, "--no-signon",
                     "--journal", str(journal), "--grace", "2"]) as run:
        port = int(run.wait_for(r"2 workers on port (\d+)").group(1))
        admin = int(run.wait_for(r"admin API http://127\.0\.0\.1:(\d+)/health").group(1))
        base = f"http://127.0.0.1:{admin}"
        status, text = await trio.to_thread.run_sync(get, f"{base}/health")
        health = json.loads(text)
        assert status == 200 and [w["worker"] for w in health["workers"]] == [1, 2], health
        assert all(w["status"] == "ok" for w in health["workers"])

        assert await purchases(port, 12) == ["00"] * 12
        status, text = await trio.to_thread.run_sync(get, f"{base}/health")
        terminals = [w["health"]["terminals"] for w in json.loads(text)["workers"]]
        assert sum(t["acquired"] for t in terminals) == 12 and sum(t["owned"] for t in terminals) == 12, terminals

        status, text = await trio.to_thread.run_sync(get, f"{base}/metrics")
        assert status == 200 and 'worker="1"' in text and 'worker="2"' in text
        assert text.count("# TYPE iso_switch_connections_total counter") == 1  # one family, both workers
        assert re.search(r'iso_switch_connections_total\{worker="1"\} [1-9]', text)

        status, workers, _ = await trio.to_thread.run_sync(
            send, f"{base}/api/v1/faults", "POST", {"id": "all-91", "respond": "91"})
        assert status == 201 and workers in ("1=201,2=201", "2=201,1=201"), workers
        codes = await purchases(port, 6)
        assert codes == ["91"] * 6  # whichever worker got the connection had the rule
        status, _, _ = await trio.to_thread.run_sync(send, f"{base}/api/v1/faults/all-91", "DELETE", {})
        assert status in (200, 204)

        status, _, _ = await trio.to_thread.run_sync(
            send, f"{base}/api/v1/faults", "POST", {"id": "kept", "when": {"terminal": ["NOSUCH01"]}, "respond": "05"})
        assert status == 201

        # a worker killed outright is reported and restarted; its terminals are freed with its session
        first_pid = health["workers"][0]["pid"]
        os.kill(first_pid, signal.SIGKILL)
        run.wait_for(r"worker 1 restarted \(pid \d+\); 3 admin changes re-applied")
        status, text = await trio.to_thread.run_sync(get, f"{base}/api/v1/faults?worker=1")
        assert status == 200 and [rule["id"] for rule in json.loads(text)["rules"]] == ["kept"], text
        status, text = await trio.to_thread.run_sync(get, f"{base}/health")
        after = json.loads(text)
        assert status == 200 and after["workers"][0]["restarts"] == 1 and after["workers"][0]["pid"] != first_pid
        assert await purchases(port, 12) != []

        run.process.send_signal(signal.SIGTERM)
        returncode = await trio.to_thread.run_sync(run.process.wait, 60)
        run.wait_for(r"2 workers drained and stopped", timeout=5)
        assert returncode == 0
    files = sorted(tmp_path.glob("journal-*.jsonl"))
    assert [path.name for path in files] == ["journal-1.jsonl", "journal-2.jsonl"]
    read = CliRunner().invoke(cli, ["journal", *map(str, files), "--json", "--mti", "0200"])
    assert read.exit_code == 0, read.output
    entries = [json.loads(line) for line in read.output.splitlines()]
    assert {entry["file"] for entry in entries} == {"journal-1.jsonl", "journal-2.jsonl"}  # both workers served
    assert [entry["time"] for entry in entries] == sorted(entry["time"] for entry in entries)
    # the requests after the restart at least (SIGKILL may cost worker 1 journal lines not yet written)
    assert len(entries) >= 12
    followed = CliRunner().invoke(cli, ["journal", *map(str, files), "--follow"])
    assert followed.exit_code != 0 and "--follow reads one journal file" in followed.output
    with contextlib.closing(Ledger.open(pg_url)) as ledger:  # every approval of both workers, each terminal booked once
        postings = [p for p in ledger.postings() if p.response_code == "00"]
        assert len(postings) == 12 and len({p.terminal for p in postings}) == 12


def test_workers_refuse_a_sqlite_ledger_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "switch", "serve", "--workers", "2", "--ledger",
                           str(tmp_path / "l.sqlite")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --workers needs a postgresql:// --ledger"), done.stderr
    assert "own memory" in lines[0]


def test_metrics_of_several_workers_merge_into_one_valid_exposition() -> None:
    one = ('# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{mti="0200"} 3.0\n'
           '# HELP up Up.\n# TYPE up gauge\nup 1.0\n')
    two = ('# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{mti="0200"} 5.0\n'
           '# HELP up Up.\n# TYPE up gauge\nup 1.0\n')
    assert merge_metrics([(1, one), (2, two)]).splitlines() == [
        "# HELP requests_total Requests.", "# TYPE requests_total counter",
        'requests_total{worker="1",mti="0200"} 3.0', 'requests_total{worker="2",mti="0200"} 5.0',
        "# HELP up Up.", "# TYPE up gauge", 'up{worker="1"} 1.0', 'up{worker="2"} 1.0']


@pytest.mark.parametrize(("journal", "expected"), [("/x/journal.jsonl", "/x/journal-3.jsonl"), (None, None)])
def test_worker_journal_paths(journal: str | None, expected: str | None) -> None:
    from switch.workers import worker_journal_path

    assert worker_journal_path(journal, 3) == expected


def test_multi_instance_refuses_a_sqlite_ledger_in_one_line(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["serve", "--multi-instance", "--port", "0", "--no-admin", "--journal", "none",
                                    "--ledger", str(tmp_path / "l.sqlite")])
    assert done.exit_code != 0
    assert "--multi-instance needs a postgresql:// ledger" in done.output and "own memory" in done.output
