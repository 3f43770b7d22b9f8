"""What the benchmark scripts share: timing turns and starting a server process.

Imported by the scripts next to it (``python scripts/bench_*.py`` puts this directory on the path).
"""

from __future__ import annotations

import gc
import os
import subprocess
import time
from collections.abc import Callable

__all__ = ["best_of", "start_server"]


def best_of(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The fastest of ``rounds`` runs of each, with the collector off.

    The runs take turns within a round, so a burst of load from another process slows one round of
    every figure rather than every round of one figure.
    """
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            gc.collect()
            gc.disable()
            try:
                timings[name].append(run())
            finally:
                gc.enable()
    return {name: min(values) for name, values in timings.items()}


def start_server(argv: list[str], ready: str, env: dict[str, str] | None = None,
                 timeout: float = 30.0, cwd: str | None = None) -> subprocess.Popen[str]:
    """Start ``argv`` and return once a line of its output contains ``ready``; killed if it never does.

    ``cwd``: where it runs. ``python -m switch`` puts its working directory first on the path, ahead
    of PYTHONPATH, so a server meant to run from another source tree must not start in a checkout.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            env=env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if ready in line:
            return proc
    proc.kill()
    raise RuntimeError(f"server did not start: {argv}")
