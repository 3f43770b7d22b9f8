"""A real PostgreSQL server for the tests: ``initdb`` into a temporary directory, ``postgres`` on a free
127.0.0.1 port (its unix socket in that directory too), one fresh database per test, stopped at the end.

* ``ISO_TEST_POSTGRES_URL`` set: that server is used instead (it needs CREATEDB rights); nothing is
  started.
* Binaries: ``ISO_TEST_POSTGRES_BIN`` (a directory), else ``pg_config --bindir``, else the newest
  ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package).
* As root, ``initdb`` and ``postgres`` refuse to run: they run as user ``nobody`` through ``setpriv``
  (which execs, so the server process is ours to signal), with the directory handed to that user.
* In CI (``CI`` set) a server that cannot start FAILS the tests; elsewhere they skip with the reason.

The server runs with ``fsync=off``: it protects against an operating-system crash, which no test
causes; the ledger's own durability (a COMMIT before the reply) is what the tests check, and a
SIGKILLed switch process loses nothing PostgreSQL acknowledged either way.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    from switch.ledger import Ledger

__all__ = ["PostgresServer", "pg_url", "postgres_server", "terminate_ledger_sessions"]

START_TIMEOUT = 30.0
_UNPRIVILEGED = "nobody"


def _bindir() -> Path | None:
    explicit = os.environ.get("ISO_TEST_POSTGRES_BIN")
    if explicit:
        return Path(explicit)
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One server (ours or the one ``ISO_TEST_POSTGRES_URL`` names) and the databases made on it."""

    def __init__(self, admin_url: str, process: subprocess.Popen[bytes] | None = None,
                 directory: Path | None = None) -> None:
        self.admin_url = admin_url
        self.process = process
        self.directory = directory
        self._names = itertools.count(1)

    @classmethod
    def start(cls) -> PostgresServer:
        """Start a private server; raise RuntimeError saying why it could not."""
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (install Debian's `postgresql` package, or set "
                               "ISO_TEST_POSTGRES_BIN, or ISO_TEST_POSTGRES_URL to use a running server)")
        # /tmp: short enough for the unix socket path (~107 bytes) and reachable by the unprivileged
        # user, which a TMPDIR under root's home would not be
        base = "/tmp" if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK) else None
        directory = Path(tempfile.mkdtemp(prefix="iso-pg-", dir=base))
        prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as an unprivileged user
            user = pwd.getpwnam(_UNPRIVILEGED)
            os.chown(directory, user.pw_uid, user.pw_gid)
            prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                      "--clear-groups", "--reset-env"]
        data = directory / "data"
        initdb = subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C", "--no-sync"], capture_output=True, text=True, check=False, timeout=120)
        if initdb.returncode != 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {(initdb.stderr or initdb.stdout).strip()[-500:]}")
        last_error = ""
        for _ in range(3):  # a free port can be taken between choosing it and binding it
            port = _free_port()
            log = open(directory / "server.log", "ab")  # noqa: SIM115  # the server writes it until stopped
            process = subprocess.Popen(
                [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                 "-k", str(directory), "-c", "fsync=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=50", "-c", "shared_buffers=32MB"],
                stdout=log, stderr=subprocess.STDOUT)
            log.close()
            server = cls(f"postgresql://postgres@127.0.0.1:{port}/postgres", process, directory)
            try:
                server._wait_ready()
                return server
            except RuntimeError as exc:
                last_error = str(exc)
                server.stop(remove=False)
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(last_error)

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:  # bounded by the deadline
            if self.process is not None and self.process.poll() is not None:
                tail = (Path(self.directory or ".") / "server.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {tail.strip()}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections in {START_TIMEOUT:.0f}s: {exc}") from None
            time.sleep(0.05)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"iso_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{name}"))

    def drop_database(self, url: str) -> None:
        import psycopg

        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    def stop(self, *, remove: bool = True) -> None:
        """Fast shutdown (SIGINT), then the directory goes; bounded waits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if remove and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (see the module docstring for where it comes from)."""
    external = os.environ.get("ISO_TEST_POSTGRES_URL")
    if external:
        yield PostgresServer(external)
        return
    try:
        server = PostgresServer.start()
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError) as exc:
        message = f"PostgreSQL test server could not start: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message + " (see tests/pg_server.py; in CI this fails)")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def terminate_ledger_sessions(pg_url: str, ledger: Ledger) -> None:
    """End both database sessions of a multi-instance ``ledger`` (its lock connection and its writer)
    from the server side: what SIGKILL of the instance's process does to them."""
    import psycopg

    ownership, backend = ledger._ownership, ledger._backend
    assert ownership is not None and ownership.control._conn is not None and backend is not None
    pids = [ownership.control._conn.info.backend_pid, backend._conn.info.backend_pid]  # type: ignore[attr-defined]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
