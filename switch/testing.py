"""The switch as a subprocess, started as users start it, for tests and benchmarks (yours and ours).

QA suites want a real ``iso-switch serve`` on free ports, its ports read from what it prints, its
output kept for the failure message, and a clean stop that says whether the ledger closed cleanly::

    from switch.testing import SwitchProcess

    with SwitchProcess.start(["--scenario", "system-timeout", "--ledger", str(tmp / "ledger.db")]) as switch:
        ...  # terminals on 127.0.0.1:switch.port, the admin API at switch.admin_url
    assert switch.returncode == 0 and switch.closed_cleanly

``--port 0`` and ``--admin-port 0`` are added unless the arguments name ports (or ``--no-admin``).
For pytest there is more: fixtures (``iso_switch``, ``iso_terminal``, ``switch_admin``) in
``switch.pytest_plugin`` and the pieces they are made of in ``switch.testkit``.
A thread keeps reading the switch's output, so a chatty switch (``-vv``) never blocks on a full pipe.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["SwitchProcess", "SwitchStartError"]

_LISTENING = re.compile(r"iso-switch: (also )?listening on (\S+?):(\d+)[ ,]")
_ADMIN = re.compile(r"iso-switch: admin API (http://\S+?)/docs")
_CLEAN = "ledger closed cleanly"


class SwitchStartError(RuntimeError):
    """The switch exited or stayed silent instead of printing its ports; the message holds its output."""


class SwitchProcess:
    """A running ``python -m switch serve``: ``host``, ``port``, ``also_ports`` (``--also-listen``), ``admin_url``."""

    def __init__(self, process: subprocess.Popen[str], startup_timeout: float, want_admin: bool):
        self.process = process
        self.output: list[str] = []
        self.host: str = "127.0.0.1"  # the main listener's address, as the switch printed it
        self.port: int = 0
        self.also_ports: list[int] = []
        self.admin_url: str | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self._wait_for_ports(startup_timeout, want_admin)

    @classmethod
    def start(cls, args: Sequence[str] = (), *, cwd: str | Path | None = None, startup_timeout: float = 30.0,
              env: dict[str, str] | None = None) -> SwitchProcess:
        """Start the switch with ``args`` after ``serve``; returns once it listens (and serves its admin API)."""
        args = list(args)
        argv = [sys.executable, "-m", "switch", "serve"]
        if "--port" not in args:
            argv += ["--port", "0"]
        want_admin = "--no-admin" not in args
        if want_admin and "--admin-port" not in args:
            argv += ["--admin-port", "0"]
        process = subprocess.Popen(argv + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                   env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"})
        try:
            return cls(process, startup_timeout, want_admin)
        except BaseException:
            process.kill()
            process.wait()
            raise

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _wait_for_ports(self, timeout: float, want_admin: bool) -> None:
        deadline = time.monotonic() + timeout
        while not self.port or (want_admin and self.admin_url is None):
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SwitchStartError(f"the switch printed no ports within {timeout:g}s:\n{self.text}") from None
            if line is None:
                raise SwitchStartError(f"the switch exited with status {self.process.wait()}:\n{self.text}")
            self.output.append(line)
            if found := _LISTENING.search(line):
                if found.group(1):
                    self.also_ports.append(int(found.group(3)))
                else:
                    self.host, self.port = found.group(2).strip("[]"), int(found.group(3))
            elif found := _ADMIN.search(line):
                self.admin_url = found.group(1)

    @property
    def text(self) -> str:
        """Everything the switch printed so far."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.output.append(line)
        return "".join(self.output)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def closed_cleanly(self) -> bool:
        """Whether the switch has said, on its way out, that its ledger closed cleanly."""
        return _CLEAN in self.text

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as an operator stops it (in-flight requests drain); SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            returncode = self.process.wait()
        self._reader.join(timeout=5)
        return returncode

    def kill(self) -> int:
        """SIGKILL: a crash, nothing drains (what durability tests need)."""
        self.process.kill()
        returncode = self.process.wait()
        self._reader.join(timeout=5)
        return returncode

    def __enter__(self) -> SwitchProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
