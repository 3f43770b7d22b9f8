"""The command-line side of ``serve --workers N`` and of reading several journals (``iso-switch journal A B``).

Kept out of ``switch.cli`` so that module stays one screenful per command; ``switch.workers`` is the
supervisor itself, this module only turns its outcomes into the CLI's lines and exit statuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import click

from switch.cli_common import EXIT_BAD_DATA, CliError
from switch.codec import Dialect
from switch.exception_groups import leaves as exception_leaves

__all__ = ["print_journals", "serve_workers"]


def print_journals(paths: Sequence[Any], selection: Any, as_json: bool, limit: int | None) -> None:
    """Several journal files (one per worker of ``serve --workers``) as one, merged by time; each entry
    names its file (``"file"`` in --json, a ``[name]`` prefix otherwise)."""
    import collections
    import heapq

    from switch.journal import format_entry_line, read_journal_file

    def entries(path: Any) -> Iterator[dict[str, Any]]:
        def warn(number: int, reason: str) -> None:
            click.echo(f"warning: {path} line {number}: {reason}; skipped", err=True)

        for entry in read_journal_file(path, on_error=warn):
            if selection.matches(entry):
                yield {**entry, "file": path.name}

    merged = heapq.merge(*(entries(path) for path in paths), key=lambda entry: float(entry.get("time") or 0))
    for entry in collections.deque(merged, maxlen=limit):
        if as_json:
            click.echo(json.dumps(entry, separators=(",", ":")))
        else:
            click.echo(f"[{entry['file']}] {format_entry_line(entry)}")


def serve_workers(dialect: Dialect, framing: Any, options: Any, count: int, verbose: int) -> None:
    """``serve --workers N``: the supervisor (switch.workers) until SIGINT/SIGTERM."""
    from functools import partial

    import trio

    from switch.ledger_backends.postgresql import display_url
    from switch.workers import WorkerError, Workers

    try:
        supervisor = Workers(dialect, framing, options, count, verbose=verbose, echo=click.echo)
    except WorkerError as exc:
        raise CliError(str(exc), EXIT_BAD_DATA) from None

    def announce(running: Workers, admin: int | None) -> None:
        for state in running.workers:
            where = ", ".join(f"{host}:{port}" for host, port in state.listeners)
            click.echo(f"iso-switch: worker {state.index} (pid {state.pid}) listening on {where}")
        ledger = display_url(str(options.ledger))
        click.echo(f"iso-switch: {running.count} workers on port {running.port}, ledger {ledger} "
                   f"(multi-instance); journals {running.journal or '(memory only)'} as journal-<n>")
        if admin is not None:
            click.echo(f"iso-switch: admin API http://{options.admin_host}:{admin}/health (all workers)")

    try:
        trio.run(partial(supervisor.run, announce=announce))
    except WorkerError as exc:
        raise CliError(str(exc), EXIT_BAD_DATA) from None
    except OSError as exc:
        raise CliError(f"cannot listen: {exc.strerror or exc}", EXIT_BAD_DATA) from None
    except BaseExceptionGroup as group:
        leaves = exception_leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], WorkerError | OSError):
            raise CliError(str(leaves[0]), EXIT_BAD_DATA) from None
        raise
    codes = supervisor.exit_codes()
    failed = [f"worker {n}: status {code}" for n, code in enumerate(codes, 1) if code not in (0, None)]
    if failed:
        raise CliError(f"workers stopped with errors ({', '.join(failed)})", EXIT_BAD_DATA)
    click.echo(f"iso-switch: {count} workers drained and stopped")
