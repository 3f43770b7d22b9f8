"""Live progress of a load run: the one-line summary, plain and live (terminal) displays."""

from __future__ import annotations

import math
from typing import Any, TextIO

from terminal.load.stats import Progress

# ---------------------------------------------------------------------------------------------
# Live progress


def progress_line(progress: Progress) -> str:
    """One plain line per interval (logs, CI, pipes)."""
    declined = sum(progress.declined_by_code.values())
    codes = " ".join(f"{code}:{n}" for code, n in sorted(progress.declined_by_code.items()))
    return (f"[{progress.elapsed:7.1f}s] sent {progress.started} approved {progress.outcomes.get('approved', 0)} "
            f"declined {declined}{f' ({codes})' if codes else ''} unknown {progress.unknown} "
            f"reversed {progress.outcomes.get('reversed', 0)} failed {progress.outcomes.get('failed', 0)} "
            f"reversals {progress.reversals_sent}/{progress.reversals_acknowledged} "
            f"tps {progress.recent_tps:.1f} p50 {_fmt_ms(progress.p50)} p99 {_fmt_ms(progress.p99)}")


def _fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    milliseconds = seconds * 1000
    return f"{milliseconds:.1f}ms" if milliseconds < 1000 else f"{seconds:.2f}s"


class PlainProgress:
    """A line every ``every`` seconds of run time, and one at the end."""

    def __init__(self, out: TextIO, every: float = 1.0) -> None:
        self.out = out
        self.every = every
        self._next = every
        self._last: Progress | None = None
        self._printed: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        self._last = progress
        if progress.elapsed >= self._next:
            self._next = (math.floor(progress.elapsed / self.every) + 1) * self.every
            self._print(progress)

    def close(self) -> None:
        """The final state, unless that very line is already out."""
        if self._last is not None and self._last is not self._printed:
            self._print(self._last)

    def _print(self, progress: Progress) -> None:
        self._printed = progress
        print(progress_line(progress), file=self.out, flush=True)


class LiveProgress:
    """A rich table redrawn in place (about four times a second), on a terminal."""

    def __init__(self, out: TextIO, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.console = Console(file=out)
        self.live = Live(self._table(None), console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def __call__(self, progress: Progress) -> None:
        self.live.update(self._table(progress), refresh=True)

    def close(self) -> None:
        self.live.stop()  # the last table drawn stays on the screen

    def _table(self, progress: Progress | None) -> Any:
        """One metric a row, so every number stays whole on an 80-column terminal (thirteen columns
        side by side do not fit: rich would cut the numbers to "12…")."""
        from rich.table import Table

        table = Table(title=self.title, title_justify="left", show_header=False, expand=False,
                      min_width=len(self.title))
        table.add_column("metric", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True)
        table.add_column("detail", overflow="fold")
        if progress is None:
            for name in ("time", "sent", "approved", "declined", "unknown", "reversed", "failed", "reversals",
                         "late replies", "TPS", "latency"):
                table.add_row(name, "-", "")
            return table
        declined = sum(progress.declined_by_code.values())
        codes = " ".join(f"{code}×{n}" for code, n in sorted(progress.declined_by_code.items()))
        unknown = progress.unknown
        failed = progress.outcomes.get("failed", 0)
        table.add_row("time", f"{progress.elapsed:.1f}s", "")
        table.add_row("sent", str(progress.started), f"[dim]{progress.in_flight} in flight")
        table.add_row("approved", f"[green]{progress.outcomes.get('approved', 0)}", "")
        table.add_row("declined", f"[yellow]{declined}", f"[dim]{codes}" if codes else "")
        table.add_row("unknown", f"[red]{unknown}" if unknown else "0", "")
        table.add_row("reversed", str(progress.outcomes.get("reversed", 0)), "")
        table.add_row("failed", f"[red]{failed}" if failed else "0", "")
        table.add_row("reversals", f"{progress.reversals_sent}/{progress.reversals_acknowledged}",
                      "[dim]sent/acknowledged")
        table.add_row("late replies", str(progress.late_replies), "[dim]discarded")
        table.add_row("TPS", f"{progress.recent_tps:.1f}", f"[dim]now; average {progress.tps:.1f}")
        table.add_row("latency", f"p50 {_fmt_ms(progress.p50)}", f"p99 {_fmt_ms(progress.p99)}")
        return table
