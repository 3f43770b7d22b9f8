"""The journal writer process (``--journal-writer process``, the switch's default): the same file,
byte for byte, as the in-process writer (every dialect, masking, update lines, rotation); the
shutdown drain; a writer that dies (rewritten here, nothing lost); a switch killed with SIGKILL
leaves no writer behind, and what it had handed over is still written."""

from __future__ import annotations

import http
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest
import trio

import switch.journal.writing as writing
from switch.codec import Codec, Message, load_dialect
from switch.codec.framing import Framing
from switch.journal import Journal, JournalWriterKind
from switch.journal.filing import JournalFile
from switch.journal.writing import choose_writer
from switch.testing import SwitchProcess
from tests.test_journal import BINARY, CODECS, DIALECTS, PAN, lines_of, purchase, response

WAIT_SECONDS = 20.0  # bounds on waiting for another process; never a timing assertion


class Unpicklable:
    """A connection id that neither marshal nor pickle can take (a local object): its batch travels as lines."""

    def __reduce__(self) -> str:
        raise TypeError("not picklable")

    def __repr__(self) -> str:
        return "<connection>"


def fixed_clock() -> Callable[[], float]:
    ticks = count()
    return lambda: 1_764_000_000.0 + next(ticks) / 7  # floats whose repr has many digits


async def write_traffic(codec: Codec, path: Path, kind: str, *, max_bytes: int = 1 << 30,
                        backups: int = 5) -> int | None:
    """The same records, in the same rounds, through a journal with writer ``kind``; the pid of its
    writer process (None for the thread)."""
    journal = Journal(codec, path=path, writer=kind, clock=fixed_clock(), max_bytes=max_bytes, backups=backups,
                      flush_interval=3600)
    pid = None
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        writer = journal._writer
        assert writer is not None
        if writer._process is not None:
            pid = writer._process.pid
        for round_number in range(4):
            unsent = []
            for index in range(12):
                stan = f"{round_number * 100 + index + 1:06d}"
                request = purchase(codec, stan=stan, terminal=f"T{index % 3:07d}")
                raw = codec.encode(request)
                connection: object = index
                if index == 5:
                    connection = http.HTTPStatus.OK  # an IntEnum: marshal refuses it, pickle takes it
                if index == 7 and round_number == 2:
                    connection = Unpicklable()  # neither: the batch goes as formatted lines
                tagged = index % 4 == 0
                seq = journal.record_in(connection=connection, peer=f'peer "{index}"\u00e9', raw=raw,  # type: ignore[arg-type]
                                        message=request, faults=("delay",) if tagged else (),
                                        rules=("slow",) if tagged else (), note='note \u00e9 "q"' if index == 3 else "")
                if index % 5 == 4:
                    unsent.append(seq)  # answered with nothing: an update line once its request is written
                    continue
                reply = response(request, "05" if index % 3 else "00")
                journal.record_out(connection=connection, peer="p", raw=codec.encode(reply), message=reply,  # type: ignore[arg-type]
                                   request_seq=seq)
            journal.record_in(connection=99, peer="p", raw=b"\x02\x00garbage 4761739001010119 rest",
                              message=None, error="cannot decode")
            await journal.flush()
            for seq in unsent:
                journal.record_unsent(seq, ("drop_response",), "dropped (fault)", ("lose",))
        nursery.cancel_scope.cancel()
    journal.close()
    return pid


def files_of(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("name", DIALECTS)
async def test_both_writers_write_the_same_bytes(name: str, tmp_path: Path) -> None:
    codec = CODECS[name]
    (tmp_path / "thread").mkdir()
    (tmp_path / "process").mkdir()
    assert await write_traffic(codec, tmp_path / "thread" / "journal.jsonl", "thread") is None
    assert await write_traffic(codec, tmp_path / "process" / "journal.jsonl", "process") is not None
    thread, process = files_of(tmp_path / "thread"), files_of(tmp_path / "process")
    assert thread == process
    entries = lines_of(tmp_path / "process" / "journal.jsonl")
    assert len([entry for entry in entries if entry.get("update") == "unsent"]) == 4 * 2
    assert PAN.encode() not in process["journal.jsonl"]  # masked (the garbage frame's digit run too)
    assert any(entry["connection"] == 200 for entry in entries)  # the pickled batch
    assert any(entry["connection"] == "<connection>" for entry in entries)  # the batch sent as lines


async def test_both_writers_rotate_the_same(tmp_path: Path) -> None:
    for kind in ("thread", "process"):
        (tmp_path / kind).mkdir()
        await write_traffic(BINARY, tmp_path / kind / "journal.jsonl", kind, max_bytes=9000, backups=2)
    thread, process = files_of(tmp_path / "thread"), files_of(tmp_path / "process")
    assert sorted(process) == ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2"]
    assert thread == process
    assert all(len(data) <= 9000 for data in process.values())


def writer_is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet (its parent was killed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not writer_is_gone(pid):
        assert time.monotonic() < deadline, f"writer process {pid} still running {WAIT_SECONDS} s after its switch"
        time.sleep(0.05)


def record_exchanges(journal: Journal, start: int, stop: int) -> None:
    for number in range(start, stop):
        request = purchase(BINARY, stan=f"{number:06d}")
        seq = journal.record_in(connection=1, peer="p", raw=BINARY.encode(request), message=request)
        reply = response(request)
        journal.record_out(connection=1, peer="p", raw=BINARY.encode(reply), message=reply, request_seq=seq)


async def test_cancelled_run_drains_everything_handed_over_and_the_process_exits(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(BINARY, path=path, writer="process", flush_interval=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        assert journal._writer is not None and journal._writer._process is not None
        pid = journal._writer._process.pid
        record_exchanges(journal, 1, 3001)  # several hand-off batches, none sent before the cancel
        nursery.cancel_scope.cancel()
    assert writer_is_gone(pid)  # run() returned after the process wrote everything and exited
    record_exchanges(journal, 3001, 3002)  # after run: close() writes it, here
    journal.close()
    assert [entry["seq"] for entry in lines_of(path)] == list(range(1, 6003))


async def test_a_dead_writer_is_replaced_and_nothing_is_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(BINARY, path=path, writer="process", flush_interval=3600)
    with caplog.at_level(logging.ERROR, logger="switch.journal"):
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            writer = journal._writer
            assert writer is not None and writer._process is not None
            record_exchanges(journal, 1, 101)
            await journal.flush()  # written and confirmed
            pid = writer._process.pid
            os.kill(pid, signal.SIGKILL)
            record_exchanges(journal, 101, 201)
            await journal.flush()  # the hand-off fails or goes unconfirmed: rewritten here
            assert writer._process is None
            record_exchanges(journal, 201, 301)
            await journal.flush()  # in this process from now on
            nursery.cancel_scope.cancel()
        journal.close()
    assert [entry["seq"] for entry in lines_of(path)] == list(range(1, 601))
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"(pid {pid}) exited" in errors[0] and "nothing lost" in errors[0]


def test_resume_cuts_a_torn_line_and_writes_only_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    lines = [f'{{"seq":{number}}}\n' for number in range(1, 6)]
    path.write_text(lines[0] + lines[1] + lines[2][:5])  # the writer died writing line 3
    assert JournalFile(path, 1 << 20, 2).resume(lines[1:]) == 3  # 2 was written, not confirmed
    assert path.read_text() == "".join(lines)

    path.write_text(lines[0])  # none of them written
    assert JournalFile(path, 1 << 20, 2).resume(lines[1:3]) == 2
    assert path.read_text() == "".join(lines[:3])

    path.with_name("journal.jsonl.1").write_text(lines[0] + lines[1])  # died right after rotating
    path.write_text("")
    resumed = JournalFile(path, 1 << 20, 2)
    assert resumed.resume(lines[1:4]) == 2
    resumed.close()
    assert path.read_text() == lines[2] + lines[3]


async def test_unwritable_file_is_reported_once_with_the_writer_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    journal = Journal(BINARY, path=blocker / "journal.jsonl", writer="process")
    with caplog.at_level(logging.ERROR, logger="switch.journal"):
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)  # returns: nothing to write to
        record_exchanges(journal, 1, 2)
        await journal.flush()
        journal.close()
    assert [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()] != []
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert [entry.seq for entry in journal.query()] == [1, 2]


async def test_a_writer_that_cannot_start_leaves_the_thread_writing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    path = tmp_path / "journal.jsonl"
    journal = Journal(BINARY, path=path, writer="process")
    with caplog.at_level(logging.ERROR, logger="switch.journal"):
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            assert journal._writer is not None and journal._writer._process is None
            record_exchanges(journal, 1, 3)
            nursery.cancel_scope.cancel()
        journal.close()
    assert [entry["seq"] for entry in lines_of(path)] == [1, 2, 3, 4]
    assert any("could not start" in r.getMessage() for r in caplog.records)


def test_writer_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="writer must be one of thread, process"):
        Journal(BINARY, path="x.jsonl", writer="fork")
    assert Journal(BINARY, path="x.jsonl", writer="process").writer_kind is JournalWriterKind.PROCESS
    assert Journal(BINARY, path="x.jsonl").writer_kind is JournalWriterKind.THREAD  # a library object's default
    assert Journal(BINARY).writer_kind is None


@pytest.mark.parametrize(("cpus", "chosen"), [(1, "thread"), (2, "thread"), (3, "process"), (16, "process")])
def test_auto_takes_the_process_only_with_a_core_to_spare(
        cpus: int, chosen: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writing, "usable_cpus", lambda: cpus)
    assert choose_writer("auto") is JournalWriterKind(chosen)
    assert choose_writer("thread") is JournalWriterKind.THREAD and choose_writer("process") is JournalWriterKind.PROCESS
    with pytest.raises(ValueError, match="must be auto, thread or process, got 'fork'"):
        choose_writer("fork")


def test_the_switch_takes_the_writer_it_is_told(tmp_path: Path) -> None:
    from switch.app import SwitchOptions, build_switch

    dialect = load_dialect("iso87-binary")
    for option, kind in (("thread", JournalWriterKind.THREAD), ("process", JournalWriterKind.PROCESS)):
        switch = build_switch(dialect, Framing.from_dialect(dialect),
                              SwitchOptions(port=0, ledger=str(tmp_path / option / "ledger.sqlite"), admin_port=None,
                                            journal_writer=option))
        assert switch.runtime.journal.writer_kind is kind
        switch.runtime.ledger.close()


# --------------------------------------------------------------------------------------------
# The switch killed with SIGKILL


def writer_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"switch.journal.writer" in command:
            found.append(int(entry.name))
    return found


def wait_for_writer(parent: int) -> int:
    deadline = time.monotonic() + WAIT_SECONDS
    while not (children := writer_children(parent)):
        assert time.monotonic() < deadline, "no journal writer process started"
        time.sleep(0.05)
    (pid,) = children
    return pid


@pytest.fixture
def kill_on_failure() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_SECONDS)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc (Linux)")
def test_sigkilled_switch_leaves_no_writer_and_its_journal_keeps_what_it_handed_over(tmp_path: Path) -> None:
    switch = SwitchProcess.start(["--ledger", str(tmp_path / "ledger.sqlite"), "--no-admin", "--no-signon",
                                  "--journal-writer", "process"])
    try:
        writer = wait_for_writer(switch.process.pid)
        dialect = load_dialect("iso87-binary")
        framing = Framing.from_dialect(dialect)
        echo = Codec(dialect).encode(Message("0800", {7: "0601120000", 11: "000001", 70: "301"}))
        with socket.create_connection(("127.0.0.1", switch.port), timeout=WAIT_SECONDS) as connection:
            connection.sendall(framing.encode(echo))
            assert connection.recv(4096)  # answered: both frames are journalled
        journal = tmp_path / "journal.jsonl"
        deadline = time.monotonic() + WAIT_SECONDS
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 2):  # handed over and written
            assert time.monotonic() < deadline, "the writer process did not write the exchange"
            time.sleep(0.05)
        switch.process.send_signal(signal.SIGKILL)
        switch.process.wait(timeout=WAIT_SECONDS)
        wait_until_gone(writer)
    finally:
        if switch.process.poll() is None:
            switch.process.kill()
            switch.process.wait(timeout=WAIT_SECONDS)
    assert [entry["mti"] for entry in lines_of(journal)] == ["0800", "0810"]


def test_writer_writes_what_it_was_handed_when_its_parent_is_killed(
        tmp_path: Path, kill_on_failure: list[subprocess.Popen[str]]) -> None:
    """Deterministic: the parent hands 4000 records over, then SIGKILLs itself before the writer
    confirms them; the writer reads to the end of the pipe, writes them all, and exits."""
    path = tmp_path / "journal.jsonl"
    script = textwrap.dedent(f"""
        import os, signal, trio
        from tests.test_journal import BINARY
        from tests.test_journal_writer import record_exchanges
        from switch.journal import Journal

        async def main():
            journal = Journal(BINARY, path={str(path)!r}, writer="process", flush_interval=3600)
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                print(journal._writer._process.pid, flush=True)
                record_exchanges(journal, 1, 2001)
                await journal._writer._flush()  # handed over, not waiting for the writer
                os.kill(os.getpid(), signal.SIGKILL)

        trio.run(main)
    """)
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    kill_on_failure.append(parent)
    assert parent.stdout is not None
    writer = int(parent.stdout.readline())
    assert parent.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    wait_until_gone(writer)
    assert [entry["seq"] for entry in lines_of(path)] == list(range(1, 4001))


async def test_a_flush_cancelled_while_claiming_writes_every_line_once_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread writer claims and formats in slices with checkpoints between them; a flush
    cancelled at one keeps the lines of the slices it claimed, and the next flush writes them
    first, then the rest: the file is byte for byte that of a flush never cancelled."""
    monkeypatch.setattr(writing, "_SLICE", 3)

    def journal_at(path: Path) -> Journal:
        journal = Journal(BINARY, path=path, writer="thread", clock=fixed_clock(), flush_interval=3600)
        record_exchanges(journal, 1, 11)  # 20 records: 7 slices
        return journal

    reference = journal_at(tmp_path / "reference.jsonl")
    await reference.flush()
    reference.close()

    journal = journal_at(tmp_path / "cancelled.jsonl")
    writer = journal._writer
    assert writer is not None
    claim = writing.FileWriter._claim
    scope = trio.CancelScope()
    slices = 0

    def claim_then_cancel(self: writing.FileWriter, batch: writing._Batch, count: int) -> None:
        nonlocal slices
        claim(self, batch, count)
        slices += 1
        if slices == 2:
            scope.cancel()  # taken at the checkpoint after the second slice

    monkeypatch.setattr(writing.FileWriter, "_claim", claim_then_cancel)
    with scope:
        await journal.flush()
    assert scope.cancelled_caught
    assert len(writer.pending) == 20 - 2 * 3  # the rest stays queued, unclaimed
    monkeypatch.setattr(writing.FileWriter, "_claim", claim)
    journal.record_unsent(journal.record_in(connection=1, peer="p", raw=b"late", message=None), ("drop",), "x")
    await journal.flush()
    journal.close()
    written = (tmp_path / "cancelled.jsonl").read_bytes().splitlines(keepends=True)
    assert written[:20] == (tmp_path / "reference.jsonl").read_bytes().splitlines(keepends=True)
    assert [entry["seq"] for entry in lines_of(tmp_path / "cancelled.jsonl")] == list(range(1, 22))
