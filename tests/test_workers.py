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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner

from switch.cli import cli
from switch.ledger import Ledger
from switch.workers import WorkerState
from switch.workers_admin import merge_metrics
from switch.workers_stream import (
    LIFE_SPAN,
    SEQ_SPAN,
    STREAM_PATH,
    SseParser,
    event_bytes,
    merged_seq,
    retag,
    split_seq,
    stream_journal,
    upstream_after,
)
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


async def purchases(port: int, terminals: int, prefix: str = "TERM") -> list[str]:
    codes: list[str] = []
    for number in range(terminals):  # one connection each: SO_REUSEPORT spreads them over the workers
        frames = await connect(port)
        try:
            codes.append((await exchange(frames, purchase(number + 1, terminal=f"{prefix}{number:04d}")))[39])
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


# -- the merged live journal (switch.workers_stream) --------------------------------------------------------


class StreamReader:
    """The supervisor's merged journal stream, read in a task: every (kind, data) event in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.status: int | None = None
        self.changed = trio.Event()

    async def read(self, url: str, headers: dict[str, str]) -> None:
        parser = SseParser()
        async with (httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0), trust_env=False) as client,
                    client.stream("GET", url, headers=headers) as response):
            self.status = response.status_code
            self.changed.set()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    self.events.append((event[0], json.loads(event[1])))
                    self.changed.set()

    async def wait_until(self, test: Callable[[list[tuple[str, Any]]], bool], timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while not test(self.events):
                self.changed = trio.Event()
                await self.changed.wait()

    def entries(self) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == "entry"]


async def test_one_journal_stream_merges_every_worker_and_rejoins_a_restarted_one(pg_url: str, tmp_path: Path
                                                                                    ) -> None:
    token = "s3cret-token"
    auth = {"Authorization": f"Bearer {token}"}
    with supervisor(["--workers", "2", "--port", "0", "--admin-port", "0", "--ledger", pg_url, "--no-signon",
                     "--journal", str(tmp_path / "journal.jsonl"), "--grace", "2", "--admin-token", token]) as run:
        port = int(run.wait_for(r"2 workers on port (\d+)").group(1))
        admin = int(run.wait_for(r"admin API http://127\.0\.0\.1:(\d+)/health").group(1))
        base = f"http://127.0.0.1:{admin}/api/v1/journal/stream"
        async with httpx.AsyncClient(trust_env=False, timeout=20.0) as client:
            refused = await client.get(base)  # the workers check the token: their 401 is the answer
            assert refused.status_code == 401, refused.text
            assert (await client.get(f"{base}?after=x", headers=auth)).status_code == 422
            assert (await client.get(f"{base}?worker=9", headers=auth)).status_code == 404
        stream = StreamReader()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.read, base, auth)
            await stream.wait_until(lambda events: sum(k == "worker" and d["status"] == "joined"
                                                       for k, d in events) == 2)
            assert stream.status == 200
            assert await purchases(port, 12) == ["00"] * 12
            await stream.wait_until(lambda _: {e["worker"] for e in stream.entries()} == {1, 2}
                                    and sum(e["direction"] == "out" for e in stream.entries()) == 12)
            entries = stream.entries()
            assert len({e["seq"] for e in entries}) == len(entries) == 24  # one number per entry, never shared
            by_seq = {e["seq"]: e for e in entries}
            for entry in entries:
                assert split_seq(entry["seq"]) == (entry["worker"], 0, entry["worker_seq"])
                if entry["direction"] == "out":  # a reply points at its request, of the same worker
                    request = by_seq[entry["request_seq"]]
                    assert request["worker"] == entry["worker"] and request["stan"] == entry["stan"]

            # the console's detail view asks the supervisor for a merged number: the right worker answers
            second = next(e for e in entries if e["worker"] == 2 and e["direction"] == "in")
            detail = await trio.to_thread.run_sync(
                get_with, f"http://127.0.0.1:{admin}/api/v1/journal/{second['seq']}", auth)
            assert detail[0] == 200 and detail[2] == "2", detail
            answered = json.loads(detail[1])
            assert answered["entry"]["seq"] == second["seq"] and answered["entry"]["stan"] == second["stan"]

            # a counted rule through the supervisor: both workers count in the database, nth = 3 fires once
            added = await trio.to_thread.run_sync(call_with, f"http://127.0.0.1:{admin}/api/v1/faults", auth, "POST",
                                                  {"id": "third", "when": {"mti": "0200", "nth": 3}, "respond": "05"})
            assert added[0] == 201, added
            codes = await purchases(port, 8, prefix="NTHX")
            assert codes.count("05") == 1 and codes.count("00") == 7, codes
            fired = []
            for worker in (1, 2):
                answer = await trio.to_thread.run_sync(get_with, f"http://127.0.0.1:{admin}/api/v1/faults?worker={worker}",
                                                       auth)
                fired.append(json.loads(answer[1])["counters"]["third"]["fired"])
            assert sum(fired) == 1, fired

            # worker 1 killed: it leaves the stream, is restarted, and its new journal joins the same stream
            _, text, _ = await trio.to_thread.run_sync(get_with, f"http://127.0.0.1:{admin}/health", auth)
            os.kill(json.loads(text)["workers"][0]["pid"], signal.SIGKILL)
            await stream.wait_until(lambda events: ("worker", {"worker": 1, "status": "joined", "restarts": 1})
                                    in events, timeout=START)
            assert ("worker", {"worker": 1, "status": "left", "restarts": 1}) in stream.events or \
                ("worker", {"worker": 1, "status": "left", "restarts": 0}) in stream.events
            before = len(stream.entries())
            # the restarted worker got the rule again and counts under the same scope: it never fires again
            assert await purchases(port, 12, prefix="AFTR") == ["00"] * 12
            await stream.wait_until(lambda _: any(split_seq(e["seq"])[:2] == (1, 1)  # type: ignore[index]
                                                  for e in stream.entries()[before:]))
            nursery.cancel_scope.cancel()  # the client goes away: the supervisor ends the upstream streams
        status, _, _ = await trio.to_thread.run_sync(get_with, f"http://127.0.0.1:{admin}/health", auth)
        assert status == 200  # and keeps serving


def get_with(url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    return call_with(url, headers, "GET", None)


def call_with(url: str, headers: dict[str, str], method: str, body: object) -> tuple[int, str, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={**headers, "content-type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=20) as response:
            return response.status, response.read().decode(), response.headers.get("X-Iso-Worker", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("X-Iso-Worker", "")


def test_merged_numbers_are_unique_and_resume_each_worker_where_it_can() -> None:
    assert merged_seq(1, 0, 5) == 1_000 * SEQ_SPAN + 5 and split_seq(merged_seq(2, 3, 77)) == (2, 3, 77)
    assert split_seq(57) is None  # a worker's own number: not a merged one
    assert merged_seq(8999, LIFE_SPAN - 1, SEQ_SPAN - 1) < 2**53  # exact as a JavaScript number
    seen = merged_seq(2, 0, 40)
    assert upstream_after(seen, 2, 0) == 40  # the worker it belongs to: exactly where it was
    assert upstream_after(seen, 3, 0) == 0  # a worker above: nothing of it was seen
    assert upstream_after(seen, 2, 1) == 0  # the same worker restarted: its new journal from the start
    assert upstream_after(seen, 1, 0) == -1  # a worker below: its place is unknown, from now on
    assert upstream_after(0, 1, 0) == 0 and upstream_after(-1, 1, 0) == -1


def test_events_are_retagged_and_parsed_as_the_console_reads_them() -> None:
    parser = SseParser()
    lines = ["retry: 1000", "", ": keep-alive", "", "event: entry", 'data: {"seq": 3, "request_seq": 2}', ""]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert events == [("entry", '{"seq": 3, "request_seq": 2}')]
    assert retag("entry", json.loads(events[0][1]), 2, 1) == {
        "seq": merged_seq(2, 1, 3), "request_seq": merged_seq(2, 1, 2), "worker_seq": 3, "worker": 2}
    assert retag("gap", {"before": 9}, 1, 0) == {"before": merged_seq(1, 0, 9), "worker": 1}
    assert retag("update", {"seq": 4, "request_seq": None}, 1, 0)["request_seq"] is None


async def test_a_client_that_goes_away_ends_every_upstream_stream_and_a_broken_one_resumes() -> None:
    """Two stand-in workers over loopback (plain SSE over HTTP/1.1): worker 1 breaks its first stream
    after one entry and is followed again from there; the filters and the token reach both; when the
    client goes away, both upstream connections are closed."""
    requests: list[tuple[int, str]] = []
    closed = {1: trio.Event(), 2: trio.Event()}

    async def worker(index: int, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        lines = head.decode().split("\r\n")
        assert "authorization: bearer t0k" in head.decode().lower()  # the caller's token, passed on
        requests.append((index, lines[0].split()[1]))
        attempt = sum(1 for who, _ in requests if who == index)
        seq = attempt if index == 1 else 1
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                              b"retry: 1000\n\n" + event_bytes("entry", {"seq": seq, "request_seq": None}))
        if index == 1 and attempt == 1:
            return  # the worker "died": its stream broke off
        while await stream.receive_some(4096):  # until the supervisor closes it
            pass
        closed[index].set()

    sent: list[bytes] = []
    gone = trio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))
        text = b"".join(sent)
        if text.count(b"event: entry") == 3:  # worker 1 twice (before and after its break), worker 2 once
            gone.set()

    async def refuse(status: int, body: bytes) -> None:
        raise AssertionError(f"refused {status} {body!r}")

    async with trio.open_nursery() as nursery:
        ports = []
        for index in (1, 2):
            listeners = await nursery.start(trio.serve_tcp, partial(worker, index), 0)
            ports.append(listeners[0].socket.getsockname()[1])
        alive = SimpleNamespace(exitcode=None, pid=0)
        workers = SimpleNamespace(workers=[WorkerState(1, process=alive, admin_port=ports[0]),
                                           WorkerState(2, process=alive, admin_port=ports[1])])
        with trio.fail_after(20):
            await stream_journal(workers, "terminal=T1&after=0", {"Authorization": "Bearer t0k"},  # type: ignore[arg-type]
                                 receive, send, refuse)  # type: ignore[arg-type]
            for event in closed.values():
                await event.wait()
        nursery.cancel_scope.cancel()
    assert sorted(requests) == [(1, f"{STREAM_PATH}?terminal=T1&after=0"), (1, f"{STREAM_PATH}?terminal=T1&after=1"),
                                (2, f"{STREAM_PATH}?terminal=T1&after=0")]
    text = b"".join(sent).decode()
    seqs = sorted(int(found) for found in re.findall(r'"seq":(\d+)', text))
    assert seqs == sorted([merged_seq(1, 0, 1), merged_seq(1, 0, 2), merged_seq(2, 0, 1)])
    assert '"status":"left"' in text and text.count('"status":"joined"') == 3
