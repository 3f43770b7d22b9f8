"""The switch's side of the journal writer process (``switch.journal.writer``): start it, hand it
batches, follow its reports, stop it.

Every batch handed over is kept until the process reports it written, so a writer that dies
loses nothing: ``Journal`` rewrites what it had not confirmed (``JournalFile.resume``). Sends and
waits are bounded in time; a writer that stops reading is killed and treated as dead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import trio

from switch.journal.handoff import WriterSettings, frame, settings_payload

START_TIMEOUT = 30.0  # a cold interpreter on a loaded machine imports the codec in well under this
SEND_TIMEOUT = 60.0  # the writer not reading for this long is hung (a stalled disk): killed, rewritten here
STOP_TIMEOUT = 60.0  # draining at shutdown: at ~100k lines/s the pipe's megabyte is written in well under this
_KILLED_TIMEOUT = 5.0  # after SIGKILL the pipe closes at once; this only bounds a wait that cannot hang
_PIPE_BYTES = 1 << 20  # the pipe's capacity asked for (Linux's default ceiling): a batch goes in one write


class WriterStartError(Exception):
    """The writer process did not start; ``file_error``: it started but cannot write the file."""

    def __init__(self, reason: str, *, file_error: bool = False):
        super().__init__(reason)
        self.file_error = file_error


def _environment() -> dict[str, str]:
    """This process's environment, with the directory this ``switch`` package came from first on the
    path: the writer must run the same code (a source checkout, a test run) whatever is installed."""
    root = str(Path(__file__).resolve().parents[2])
    paths = [root, *(os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


class WriterProcess:
    """One running writer process, as the switch sees it."""

    def __init__(self, process: trio.Process):
        self._process = process
        self.pid = process.pid
        self.sent = 0  # batches handed over
        self.confirmed = 0  # batches it reported written
        self._unconfirmed: deque[bytes] = deque()
        self.error: str | None = None  # its "E" report: the file cannot be written
        self.gone = False  # its stdout ended: it exited (or is about to)
        self.broken = False  # a send failed or timed out
        self._changed = trio.Event()
        self._buffer = bytearray()
        self._reader: trio.CancelScope | None = None

    @classmethod
    async def start(cls, settings: WriterSettings) -> WriterProcess:
        """A writer with the file open and ready; ``WriterStartError`` says why not."""
        try:
            payload = settings_payload(settings)
        except Exception as exc:  # e.g. a dialect object pickle cannot take
            raise WriterStartError(f"cannot hand the settings over: {exc}") from exc
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "switch.journal.writer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=_environment())
        except OSError as exc:
            raise WriterStartError(f"cannot run {sys.executable}: {exc}") from exc
        writer = cls(process)
        assert process.stdin is not None
        with contextlib.suppress(OSError, AttributeError):  # Linux only; the default 64 KiB works, in more writes
            fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)  # type: ignore[attr-defined]
        reply = None
        try:
            with trio.move_on_after(START_TIMEOUT):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # died: stdout says why
                    await process.stdin.send_all(frame(payload))
                reply = await writer._read_line()
        except BaseException:  # cancelled while it starts: no writer left behind
            await writer._kill()
            raise
        if reply == "R":
            return writer
        await writer._kill()
        if reply is not None and reply[:2] in ("E ", "B "):
            raise WriterStartError(reply[2:], file_error=reply.startswith("E "))
        if reply is None:
            raise WriterStartError(f"it exited with status {process.returncode} before it was ready")
        raise WriterStartError(f"it did not answer within {START_TIMEOUT:.0f} s")

    async def _read_line(self) -> str | None:
        """The next report line; None at the end of its stdout."""
        stdout = self._process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:  # bounded: each turn reads more, or returns at the end
            data = await stdout.receive_some(4096)
            if not data:
                return None
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode("ascii", "replace")

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def read_reports(self) -> None:
        """Follow its reports until its stdout ends. Shielded: at shutdown it must see the last
        reports after the journal's task is cancelled; ``stop`` bounds it."""
        with trio.CancelScope(shield=True) as self._reader:
            while (line := await self._read_line()) is not None:
                if line.isdigit():
                    count = int(line)
                    for _ in range(min(count - self.confirmed, len(self._unconfirmed))):
                        self._unconfirmed.popleft()
                    self.confirmed = count
                elif line.startswith("E "):
                    self.error = line[2:]
                elif line.startswith("B "):
                    self.broken = True  # it exits; what it did not write is rewritten here
                self._wake()
        self.gone = True
        self._wake()

    @property
    def alive(self) -> bool:
        return not (self.gone or self.broken or self.error is not None)

    def unconfirmed(self) -> list[bytes]:
        """The batches handed over and not reported written, oldest first."""
        return list(self._unconfirmed)

    async def send(self, payload: bytes) -> bool:
        """Hand a batch over (kept until confirmed); False if the writer is gone or stopped reading.

        Shielded: a frame cut short by a cancellation would put the pipe out of step."""
        self._unconfirmed.append(payload)
        self.sent += 1
        if not self.alive:
            return False
        stdin = self._process.stdin
        assert stdin is not None
        with trio.CancelScope(shield=True), trio.move_on_after(SEND_TIMEOUT):
            try:
                await stdin.send_all(frame(payload))
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self.broken = True
        return False

    async def wait_confirmed(self) -> bool:
        """Until every batch sent is reported written (True), or the writer fails (False)."""
        with trio.move_on_after(STOP_TIMEOUT):
            while self.confirmed < self.sent and self.alive:  # bounded: each turn is one report
                await self._changed.wait()
        return self.confirmed >= self.sent

    async def stop(self) -> int | None:
        """Close its stdin and wait for it to write the rest and exit (killed if it takes longer than
        ``STOP_TIMEOUT``); its exit status. Shielded: this is the shutdown drain."""
        stdin = self._process.stdin
        assert stdin is not None
        with trio.CancelScope(shield=True):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stdin.aclose()
            with trio.move_on_after(STOP_TIMEOUT) as scope:
                while not self.gone:  # bounded: the end of its stdout comes once
                    await self._changed.wait()
                await self._process.wait()
            if scope.cancelled_caught:
                await self._kill()
        return self._process.returncode

    async def _kill(self) -> None:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(OSError):
                self._process.kill()
            with trio.move_on_after(_KILLED_TIMEOUT):
                await self._process.wait()
            if not self.gone and self._reader is not None:
                with trio.move_on_after(_KILLED_TIMEOUT):
                    while not self.gone:
                        await self._changed.wait()
                self._reader.cancel()
            self.broken = True
