"""Scaling out: approved TPS and p99 latency of the switch with 1, 2 and 4 ``--workers`` on PostgreSQL.

Configurations, each a fresh ledger (a new SQLite file, or a new database on one private PostgreSQL
server started with tests/pg_server.py), the switch a subprocess on 127.0.0.1 with its file journal
in a temporary directory:

* ``sqlite``: plain ``iso-switch serve`` on a SQLite ledger (one process: the single-box reference);
* ``pg w1`` / ``pg w2`` / ``pg w4``: ``iso-switch serve --ledger postgresql://... --workers N``
  (``--workers 1`` rather than a bare ``--multi-instance``, so every PostgreSQL row runs the same
  supervisor and multi-instance ledger, and only the worker count differs).

Each is driven by ``iso-terminal load --terminals T --duration S --store-dir :memory: --mix
purchase=100 --no-check`` (in-memory stores and only 0200s: the load runner spends the least CPU
per transaction it can, and every transaction is one ledger row). Rounds run every configuration
once, the order rotated each round, so a burst of other work slows one round of every figure rather
than every round of one; the report gives the median of the rounds and the ratio of the median TPS
to ``pg w1``'s. After the rounds, the largest configuration runs once more WITH the consistency check
(every terminal's journal against the host's ledger), to show the workers' ledger stays exact.

The private PostgreSQL runs with ``fsync=off`` like the tests' (``--pg-fsync`` turns it on):
without it the figures measure CPU, not the disk's flush rate. ``ISO_TEST_POSTGRES_URL`` points at a
server of your own instead (it needs CREATEDB). The load runner, the workers and PostgreSQL share
this machine's cores: on a 2-core machine expect little beyond 2 workers.

    python scripts/bench_scaleout.py [--quick] [--rounds 3] [--seconds 8] [--terminals 64] [--json]

Exit status: 0 done; 4 the final run was not consistent (the load runner's check, or the approvals
against the approved postings in the database); 1 an error (PostgreSQL or a switch did not start, a
load run failed); 130 interrupted. Every process it started is stopped in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from benchkit import start_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.pg_server: the one way this project starts a throwaway PostgreSQL

from tests.pg_server import PostgresServer  # noqa: E402

BIN = Path(sys.executable).parent
LOAD_TIMEOUT_EXTRA = 120.0  # beyond --duration: start-up, sign-on, drain and (once) the consistency check
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Config:
    """One switch set-up to measure."""

    name: str
    workers: int  # 0: plain single-process serve on SQLite

    @property
    def postgres(self) -> bool:
        return self.workers > 0


@dataclass(frozen=True)
class Run:
    """What one load run measured."""

    tps: float  # approved transactions per second
    approved: int
    p99_ms: float
    p50_ms: float
    finished: int
    errors: int
    consistency: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT (the switch drains), then a kill if it does not exit in time; never left running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def switch(config: Config, url: str | None, workdir: Path) -> Iterator[tuple[int, int]]:
    """A switch for ``config`` on ``url`` (PostgreSQL) or a new SQLite file: its (port, admin port); stopped after."""
    port, admin = _free_port(), _free_port()
    argv = [str(BIN / "iso-switch"), "serve", "--port", str(port), "--admin-port", str(admin),
            "--journal", str(workdir / "journal.jsonl")]
    if url is not None:
        argv += ["--ledger", url, "--workers", str(config.workers)]
        ready = " workers on port "
    else:
        argv += ["--ledger", str(workdir / "ledger.sqlite")]
        ready = "iso-switch: ledger "
    proc = start_server(argv, ready, timeout=60.0)
    try:
        if url is not None:  # the supervisor's admin line follows the workers line: wait for it too
            assert proc.stdout is not None
            for _ in range(50):
                line = proc.stdout.readline()
                if not line or "admin API" in line:
                    break
        _drain_in_background(proc)  # its output is no longer read: a full pipe must not stall it
        yield port, admin
    finally:
        _stop(proc)


def _drain_in_background(proc: subprocess.Popen[str]) -> None:
    def drain() -> None:
        assert proc.stdout is not None
        try:
            for _ in proc.stdout:
                pass
        except (ValueError, OSError):
            pass  # the pipe went with the process

    threading.Thread(target=drain, daemon=True).start()


def run_load(port: int, admin: int, args: argparse.Namespace, check: bool) -> Run:
    """One ``iso-terminal load`` run against the switch on ``port``; its JSON summary reduced to a Run."""
    argv = [str(BIN / "iso-terminal"), "load", "--port", str(port), "--terminals", str(args.terminals),
            "--duration", f"{args.seconds}s", "--store-dir", ":memory:", "--mix", "purchase=100",
            "--workers", str(args.load_workers), "--json", "--quiet"]
    argv += ["--admin", f"http://127.0.0.1:{admin}", "--require-check"] if check else ["--no-check"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=args.seconds + LOAD_TIMEOUT_EXTRA)
    if done.returncode not in ((0, 4) if check else (0,)):  # 4: inconsistent, reported below
        reason = (done.stderr or done.stdout).strip()[-400:]
        raise RuntimeError(f"iso-terminal load exited {done.returncode}: {reason}")
    summary: dict[str, Any] = json.loads(done.stdout)
    elapsed = float(summary["elapsed_seconds"])
    approved = int(summary["outcomes"].get("approved", 0))
    latency = summary["latency_ms"]
    consistency = summary.get("consistency") or {}
    return Run(tps=approved / elapsed if elapsed > 0 else 0.0, approved=approved, p99_ms=float(latency["p99"] or 0.0),
               p50_ms=float(latency["p50"] or 0.0), finished=int(summary["transactions"]["finished"]),
               errors=int(summary["errors"]), consistency=str(consistency.get("headline") or "not checked"))


def measure(config: Config, pg: PostgresServer, args: argparse.Namespace, check: bool = False
            ) -> tuple[Run, int | None]:
    """A fresh ledger and switch for ``config``, one load run against it, everything stopped after.

    With ``check``, also the approved postings the PostgreSQL ledger holds once the switch has drained:
    the database itself, not one worker's view of it.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    url = pg.create_database() if config.postgres else None
    try:
        with switch(config, url, workdir) as (port, admin):
            run = run_load(port, admin, args, check)
        return run, (_approved_rows(url) if check and url is not None else None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if url is not None:
            with suppress(psycopg.Error):  # the server is gone (Ctrl-C reaches it too); main removes it
                pg.drop_database(url)



def _approved_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM postings WHERE approved").fetchone()
    return int(row[0]) if row is not None else 0


def _start_postgres(fsync: bool) -> PostgresServer:
    external = os.environ.get("ISO_TEST_POSTGRES_URL")
    if external:
        return PostgresServer(external)
    server = PostgresServer.start()
    if fsync:  # the test server turns it off; a SIGHUP setting, so a reload is enough
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET fsync = on")
            conn.execute("SELECT pg_reload_conf()")
    return server


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--seconds", type=float, default=8.0, help="--duration of each load run")
    parser.add_argument("--terminals", type=int, default=64, help="terminals per load run (spread over workers)")
    parser.add_argument("--load-workers", type=int, default=1, help="iso-terminal load --workers")
    parser.add_argument("--workers", default="1,2,4", help="PostgreSQL worker counts, comma-separated")
    parser.add_argument("--pg-fsync", action="store_true", help="run the private PostgreSQL with fsync=on")
    parser.add_argument("--quick", action="store_true", help="short run: 2 rounds x 4 s")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 4.0
    try:
        counts = sorted({int(n) for n in args.workers.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--workers: not a comma-separated list of numbers: {args.workers!r}")
    if not counts or counts[0] < 1 or args.rounds < 1 or args.seconds <= 0 or args.terminals < 1:
        parser.error("--workers, --rounds, --seconds and --terminals must be positive")
    configs = [Config("sqlite", 0), *(Config(f"pg w{n}", n) for n in counts)]
    log = (lambda *_: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))

    # SIGTERM takes the same way out as Ctrl-C: every `finally` stops its processes
    signal.signal(signal.SIGTERM, _interrupt)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = _load_average()
    try:
        pg = _start_postgres(args.pg_fsync)
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError) as exc:
        print(f"error: PostgreSQL could not start: {exc}", file=sys.stderr)
        return 1
    runs: dict[str, list[Run]] = {c.name: [] for c in configs}
    try:
        for round_number in range(args.rounds):
            shift = round_number % len(configs)
            for config in configs[shift:] + configs[:shift]:
                run, _ = measure(config, pg, args)
                runs[config.name].append(run)
                log(f"round {round_number + 1} {config.name:7} {run.tps:8.0f} TPS  p50 {run.p50_ms:6.1f} ms  "
                    f"p99 {run.p99_ms:6.1f} ms  errors {run.errors}")
        final, in_database = measure(configs[-1], pg, args, check=True)
        log(f"check   {configs[-1].name:7} {final.tps:8.0f} TPS  {final.consistency}; "
            f"{final.approved} approved, {in_database} approved postings in PostgreSQL")
    except KeyboardInterrupt:
        print("interrupted: everything stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError, json.JSONDecodeError, psycopg.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if pg.process is not None:
            pg.stop()

    base = statistics.median(r.tps for r in runs[configs[1].name])
    results: list[dict[str, Any]] = [
               {"config": c.name, "workers": c.workers or 1, "ledger": "postgresql" if c.postgres else "sqlite",
                "tps_median": round(statistics.median(r.tps for r in runs[c.name]), 1),
                "p99_ms_median": round(statistics.median(r.p99_ms for r in runs[c.name]), 2),
                "ratio_to_pg_w1": round(statistics.median(r.tps for r in runs[c.name]) / base, 3) if base else None,
                "tps_runs": [round(r.tps, 1) for r in runs[c.name]],
                "errors": sum(r.errors for r in runs[c.name])} for c in configs]
    report = {"started": started, "cpus": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": _load_average(), "rounds": args.rounds, "seconds": args.seconds,
              "terminals": args.terminals, "load_workers": args.load_workers, "pg_fsync": args.pg_fsync,
              "results": results,
              "final_check": {"config": configs[-1].name, "tps": round(final.tps, 1), "consistency": final.consistency,
                              "approved": final.approved, "approved_postings_in_database": in_database,
                              "database_matches": in_database == final.approved}}
    consistent = final.consistency.startswith("consistent") and in_database in (None, final.approved)
    status = 0 if consistent else 4  # 4, as iso-terminal load: terminals and host disagree
    if args.json:
        print(json.dumps(report, indent=2))
        return status
    print(f"{args.rounds} rounds x {args.seconds:g} s, {args.terminals} terminals, {os.cpu_count()} CPUs, "
          f"load average {load_before} -> {report['load_average_after']}, PostgreSQL fsync "
          f"{'on' if args.pg_fsync else 'off'}")
    print(f"{'config':8} {'TPS (median)':>13} {'p99 ms':>8} {'vs pg w1':>9}  runs")
    for row in results:
        print(f"{row['config']:8} {row['tps_median']:13.0f} {row['p99_ms_median']:8.1f} "
              f"{row['ratio_to_pg_w1']:9.2f}  {', '.join(f'{t:.0f}' for t in row['tps_runs'])}")
    print(f"consistency check ({configs[-1].name}, one more run): {final.consistency}")
    print(f"  the run's {final.approved} approvals vs {in_database} approved postings in the PostgreSQL ledger: "
          f"{'equal' if in_database == final.approved else 'DIFFERENT'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
