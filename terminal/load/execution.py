"""The ``iso-terminal load`` command run: execute, summarise, check, report; its exit status."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import trio

from switch.exception_groups import leaves as exception_leaves
from terminal.client import tcp_connector
from terminal.load.consistency import CheckOptions, ConsistencyResult, check_consistency, run_window
from terminal.load.options import (
    EXIT_CHECK_REQUIRED,
    EXIT_HOST_NOT_REACHED,
    EXIT_INCONSISTENT,
    EXIT_INTERRUPTED,
    MEMORY_STORES,
    LoadConfig,
)
from terminal.load.progress import LiveProgress, PlainProgress
from terminal.load.runner import LoadResult, LoadRunner
from terminal.load.stats import LoadStats, Progress
from terminal.load.workers import run_workers
from terminal.store import StoreError

# ---------------------------------------------------------------------------------------------
# The command: run, summarise, check, report


@contextlib.contextmanager
def _store_directory(store_dir: str | None) -> Iterator[str]:
    if store_dir == MEMORY_STORES:
        yield MEMORY_STORES
        return
    if store_dir is not None:
        Path(store_dir).expanduser().mkdir(parents=True, exist_ok=True)
        yield str(Path(store_dir).expanduser())
        return
    with tempfile.TemporaryDirectory(prefix="iso-terminal-load-") as directory:
        yield directory


def execute(config: LoadConfig, check: CheckOptions, *, report_dir: str | None = None, as_json: bool = False,
            quiet: bool = False, live: bool | None = None, out: TextIO | None = None,
            err: TextIO | None = None) -> int:
    """Run the load, print the summary (text or ``as_json``), check consistency, write the report.

    Progress goes to ``err`` (a live table when it is a terminal and ``live`` is not False, else a
    plain line per second; nothing with ``quiet``), the summary to ``out``. Returns the exit status:
    0 done; 3 no transaction reached the host; 4 the check found mismatches; 5 the check was
    required but could not run; 130 interrupted (the summary covers what was done).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    unreachable = _unreachable(config)
    if unreachable is not None:  # one line, not one per terminal, and no run against nothing
        print(f"error: cannot connect: {unreachable}", file=err, flush=True)
        return EXIT_HOST_NOT_REACHED
    stats = LoadStats()
    with _store_directory(config.store_dir) as directory:
        runner = LoadRunner(config, stats, directory)
        display: LiveProgress | PlainProgress | None = None
        if not quiet:
            use_live = live if live is not None else err.isatty()
            title = (f"iso-terminal load → {config.host}:{config.port}: {len(config.terminal_ids)} terminals, "
                     + (f"{config.count} transactions" if config.count else f"{config.duration:g}s")
                     + (f" at {config.rate:g}/s" if config.rate else "")
                     + (f", {config.workers} workers" if config.workers > 1 else ""))
            display = LiveProgress(err, title) if use_live else PlainProgress(err)
        wall_start = time.time()
        stopped_early = False
        try:
            if config.workers > 1:
                merged = run_workers(config, directory, stats, display, err, journals=check.admin_url is not None)
                result, stopped_early = merged.result, merged.stopped_early
            else:
                result = trio.run(_run_until_interrupted, runner, display, err)
                stopped_early = runner.stopping
        except BaseException as exc:
            if not _only_interrupts(exc):
                _raise_plainly(exc)
            result = None  # Ctrl-C before the signal watcher was up
        finally:
            if display is not None:
                display.close()
        interrupted = result is None
        try:
            if result is None:
                now = time.time()
                last = stats.last_outcome_at
                result = LoadResult(runner.stores, wall_start, now, last if last is not None else now - wall_start,
                                    interrupted=True)
            summary = {"tool": "iso-terminal load", "format": 1,
                       "started_at": _iso(result.started_at), "ended_at": _iso(result.ended_at),
                       "interrupted": interrupted, "stopped_early": stopped_early, "config": config.describe(),
                       **stats.summary(result.elapsed)}
            if interrupted:
                consistency = ConsistencyResult("skipped", reason="the run was interrupted")
            elif check.admin_url is None:  # --no-check: the journals are not even read (a long run's are big)
                consistency = check_consistency(check, {}, (result.started_at, result.ended_at))
            else:
                journal = result.journal()
                window = run_window((e for entries in journal.values() for e in entries),
                                    result.started_at, result.ended_at)
                consistency = check_consistency(check, journal, window, journalled=result.journalled_keys(),
                                                exponent=config.profile.currency_exponent)
            summary["consistency"] = consistency.as_dict()
            summary["consistency"]["headline"] = consistency.headline(config.profile.currency_exponent)
        finally:
            for store in runner.stores.values():
                store.close()
    if _never_connected(summary) and stats.connect_failure:
        print(f"error: {stats.connect_failure}", file=err, flush=True)  # once, however many terminals failed
    if report_dir is not None:
        from terminal.report import write_report  # here: a run without --report (or with --json) never loads it

        json_path, html_path = write_report(report_dir, summary)
        summary["report"] = {"summary": str(json_path), "html": str(html_path)}
    if as_json:
        print(json.dumps(summary, indent=2), file=out)
    else:
        from terminal.report import summary_lines

        print("\n".join(summary_lines(summary)), file=out)
    out.flush()
    return exit_status(summary, check)


async def _run_until_interrupted(runner: LoadRunner, display: Callable[[Progress], None] | None,
                                 err: TextIO) -> LoadResult | None:
    """``runner.run`` with Ctrl-C handled as load tools do: the first stops the run gracefully (what
    is in flight finishes, terminals drain and settle, the check runs), the second abandons it at
    once (None: whatever was sent is in the stores and goes out at the next run)."""
    result: LoadResult | None = None
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT) as interrupts:
                async for _ in interrupts:
                    if runner.stopping:
                        nursery.cancel_scope.cancel()
                        return
                    runner.stop()
                    print("stopping: no new transactions; those in flight finish, then the terminals drain "
                          "(Ctrl-C again to abandon them)", file=err, flush=True)

        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            nursery.start_soon(watch)
        result = await runner.run(display)
        nursery.cancel_scope.cancel()
    return result


def _raise_plainly(exc: BaseException) -> NoReturn:
    """Re-raise a terminal's store or I/O failure as itself, out of Trio's exception groups, so the
    CLI reports it in one line (a store that is another terminal's, a full disk); anything else as is."""
    leaves = exception_leaves(exc)
    plain = [leaf for leaf in leaves if isinstance(leaf, StoreError | OSError)]
    if plain and all(isinstance(leaf, StoreError | OSError | trio.Cancelled) for leaf in leaves):
        raise plain[0] from None
    raise exc


def _only_interrupts(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt, or a group of nothing else (Trio wraps them)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(inner) for inner in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def _unreachable(config: LoadConfig) -> str | None:
    """Why the host cannot be reached (after the profile's connect attempts), or None when it answers
    a TCP connect (TLS handshake included). Checked once before the run, so a wrong port is one line."""
    connect = tcp_connector(config.host, config.port, ssl_context=config.ssl_context)
    profile = config.profile

    async def probe() -> str | None:
        reason = ""
        for attempt in range(1, max(1, profile.connect_attempts) + 1):
            with trio.move_on_after(profile.connect_timeout) as scope:
                try:
                    stream = await connect()
                except OSError as exc:
                    reason = str(exc)
                else:
                    await trio.aclose_forcefully(stream)
                    return None
            if scope.cancelled_caught:
                reason = f"{config.host}:{config.port}: connect timed out after {profile.connect_timeout:g}s"
            if attempt < profile.connect_attempts:
                await trio.sleep(profile.backoff(attempt))
        return reason

    return trio.run(probe)


def _never_connected(summary: Mapping[str, Any]) -> bool:
    return bool(summary.get("terminal_events", {}).get("connect_failures")) and not any(
        summary.get("messages_sent", {}).values())


def exit_status(summary: Mapping[str, Any], check: CheckOptions) -> int:
    if summary.get("interrupted"):
        return EXIT_INTERRUPTED
    consistency = summary["consistency"]
    if consistency["status"] == "inconsistent":
        return EXIT_INCONSISTENT
    outcomes = summary["outcomes"]
    finished = sum(outcomes.values())
    if finished and outcomes.get("failed", 0) == finished:
        return EXIT_HOST_NOT_REACHED
    connect_failures = summary.get("terminal_events", {}).get("connect_failures", 0)
    if finished and connect_failures and not any(summary.get("messages_sent", {}).values()):
        return EXIT_HOST_NOT_REACHED  # e.g. voids refused and offline sales queued, nothing ever sent
    if summary.get("stopped_early"):
        return EXIT_INTERRUPTED  # Ctrl-C: checked, but not the run that was asked for (a script must not go on)
    if consistency["status"] == "skipped" and check.required:
        return EXIT_CHECK_REQUIRED
    return 0


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
