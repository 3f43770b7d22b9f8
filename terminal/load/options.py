"""The ``iso-terminal load`` settings: constants, the command line's values parsed, ``LoadConfig``."""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from switch.codec.dialect import Dialect
from switch.codec.framing import Framing
from terminal.profile import TerminalProfile

OPERATIONS = ("purchase", "refund", "preauth", "offline", "void", "echo")
"""What ``--mix`` can ask for: sale (0200), refund (0200/20), pre-authorization (0100), offline
sale (advice 0220), void of the last approval (0400, reason 17), network echo (0800/301)."""
DEFAULT_MIX = "purchase=90,echo=5,refund=5"
DEFAULT_ADMIN_URL = "http://127.0.0.1:8584"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
ERROR_KINDS = frozenset({"reversed", "unknown-queued", "unknown", "failed", "refused"})
"""Outcomes without a trustworthy host answer (a decline is an answer, not an error) — except for
a void, whose "reversed" is its success: ``is_error`` knows."""
CUP_CLOCK_SLACK = 5.0
"""Seconds a CUP posting's host receive time may lie outside the run (no field 7 to go by)."""

MEMORY_STORES = ":memory:"
"""``--store-dir :memory:``: every terminal's store in memory only, gone when the run ends."""

EXIT_HOST_NOT_REACHED = 3
EXIT_INCONSISTENT = 4
EXIT_CHECK_REQUIRED = 5
EXIT_INTERRUPTED = 130

_TERMINAL_ID_WIDTH = 8


class LoadError(ValueError):
    """A load setting that cannot work, with the reason (the CLI shows it as a usage error)."""


# ---------------------------------------------------------------------------------------------
# Parsing the command line's values


def parse_mix(text: str) -> dict[str, int]:
    """``"purchase=90,echo=5,refund=5"`` → ``{"purchase": 90, "echo": 5, "refund": 5}`` (weights).

    Weights are relative (they need not add up to 100); a weight of 0 drops an operation.
    """
    mix: dict[str, int] = {}
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        name, sep, weight_text = item.partition("=")
        name, weight_text = name.strip().lower(), weight_text.strip()
        if not sep:
            raise LoadError(f"--mix {item!r}: expected OPERATION=WEIGHT, e.g. purchase=90")
        if name not in OPERATIONS:
            raise LoadError(f"--mix {item!r}: unknown operation {name!r} (one of {', '.join(OPERATIONS)})")
        if name in mix:
            raise LoadError(f"--mix: {name} given twice")
        if not (weight_text.isascii() and weight_text.isdigit()):
            raise LoadError(f"--mix {item!r}: the weight must be a whole number >= 0")
        mix[name] = int(weight_text)
    if not any(mix.values()):
        raise LoadError(f"--mix {text!r}: give at least one operation a weight above 0")
    return {name: weight for name, weight in mix.items() if weight}


_RATE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:/\s*(s|sec|second|m|min|minute))?")


def parse_rate(text: str) -> float:
    """``"200/s"``, ``"200"`` (per second) or ``"600/m"`` → transactions per second (> 0)."""
    match = _RATE.fullmatch(text.strip().lower())
    if match is None:
        raise LoadError(f"--rate {text!r}: expected transactions per second, e.g. 200/s (or 600/m)")
    rate = float(match.group(1))
    if match.group(2) in ("m", "min", "minute"):
        rate /= 60.0
    if not rate > 0:
        raise LoadError(f"--rate {text!r}: the rate must be above 0")
    return rate


def parse_load_duration(text: str) -> float:
    """``"60s"``, ``"5m"``, ``"1m30s"`` or a number of seconds → seconds (> 0)."""
    try:
        seconds = float(text)  # on a command line a bare number is seconds (scenario files differ)
    except ValueError:
        from switch.scenario import parse_duration  # only for a unit: the scenario loader is a big import

        try:
            seconds = parse_duration(text)
        except ValueError:
            raise LoadError(f"--duration {text!r}: expected a number of seconds or e.g. 30s, 5m, 1m30s") from None
    if not math.isfinite(seconds):
        raise LoadError(f"--duration {text!r}: expected a number of seconds or e.g. 30s, 5m, 1m30s")
    if seconds <= 0:
        raise LoadError(f"--duration {text!r}: must be longer than 0")
    return seconds


def derive_terminal_ids(first: str, count: int) -> list[str]:
    """``count`` terminal ids counting up from ``first``: ``L0000001`` → L0000001, L0000002, ...

    The trailing digits of ``first`` are the counter and keep their width, so ids stay 8 characters.
    """
    first = first.strip()
    if count < 1:
        raise LoadError(f"--terminals must be at least 1, got {count}")
    match = re.fullmatch(r"(.*?)([0-9]+)", first)
    if match is None or len(first) > _TERMINAL_ID_WIDTH or not first.isascii() or not first.isprintable():
        raise LoadError(f"first terminal id {first!r}: up to {_TERMINAL_ID_WIDTH} characters ending in digits, "
                        "e.g. L0000001")
    prefix, digits = match.groups()
    start, width = int(digits), len(digits)
    last = start + count - 1
    if len(str(last)) > width:
        raise LoadError(f"{count} terminals counting from {first} need more than {width} digits; "
                        f"start lower or use a shorter prefix")
    return [f"{prefix}{number:0{width}d}" for number in range(start, last + 1)]


def store_file_name(terminal_id: str) -> str:
    """The store file of a terminal in a store directory — named as the single-terminal commands
    name theirs (``terminal.cli.default_store_path``), so in the default directory a load terminal
    *is* that terminal: ``iso-terminal status --terminal-id L0000001`` shows what a run left."""
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", terminal_id.strip()) or "terminal") + ".sqlite"


@dataclass(frozen=True)
class LoadConfig:
    """One load run. ``profile`` is the template every terminal's profile copies (all but its id)."""

    host: str
    port: int
    dialect: Dialect
    framing: Framing
    profile: TerminalProfile
    terminal_ids: tuple[str, ...]
    count: int | None = None
    duration: float | None = None
    rate: float | None = None
    mix: Mapping[str, int] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    settle: bool = False
    amount_range: tuple[int, int] = (100, 10_000)
    pans: tuple[str, ...] = ("4761739001010010",)
    expiry: str = "3012"
    seed: int | None = None
    store_dir: str | None = None  # None: a temporary directory, removed after the run; MEMORY_STORES: none
    workers: int = 1  # processes, each running its share of the terminals
    tpdu: bytes | None = None
    ssl_context: ssl.SSLContext | None = None  # TLS to the host
    offload_store: bool = True  # store opens and syncs in worker threads (an fsync must not stall every terminal)

    def __post_init__(self) -> None:
        if not self.terminal_ids:
            raise LoadError("at least one terminal is needed")
        if len(set(self.terminal_ids)) != len(self.terminal_ids):
            raise LoadError("terminal ids must be distinct")
        if self.count is None and self.duration is None:
            raise LoadError("say how long to run: --count (total transactions) or --duration (wall time)")
        if self.count is not None and self.duration is not None:
            raise LoadError("give either --count (total transactions) or --duration (wall time), not both")
        if self.count is not None and self.count < 1:
            raise LoadError(f"--count must be at least 1, got {self.count}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise LoadError(f"--duration must be longer than 0, got {self.duration}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise LoadError(f"--rate must be above 0, got {self.rate}")
        unknown = set(self.mix) - set(OPERATIONS)
        if unknown or not self.mix or any(w < 0 for w in self.mix.values()) or not any(self.mix.values()):
            raise LoadError(f"the mix must weigh operations among {', '.join(OPERATIONS)}: {dict(self.mix)}")
        low, high = self.amount_range
        if not 1 <= low <= high < 10**12:
            raise LoadError(f"the amount range must be 1 <= low <= high minor units, got {low}-{high}")
        if not self.pans:
            raise LoadError("at least one card number is needed")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise LoadError(f"--workers must be at least 1, got {self.workers!r}")
        if self.workers > len(self.terminal_ids):
            raise LoadError(f"--workers {self.workers} is more than the {len(self.terminal_ids)} terminals: "
                            "every worker needs a terminal of its own")
        if self.count is not None and self.count < self.workers:
            raise LoadError(f"--count {self.count} is fewer than --workers {self.workers}: every worker needs "
                            "a transaction to run")

    def describe(self) -> dict[str, Any]:
        """The settings as the summary records them."""
        return {
            "host": self.host, "port": self.port, "dialect": self.dialect.name, "terminals": len(self.terminal_ids),
            "first_terminal": self.terminal_ids[0], "last_terminal": self.terminal_ids[-1],
            "count": self.count, "duration_seconds": self.duration, "rate_per_second": self.rate,
            "mode": "open loop (rate limited)" if self.rate else "closed loop",
            "mix": dict(self.mix), "settle": self.settle, "amount_range_minor": list(self.amount_range),
            "cards": len(self.pans), "seed": self.seed, "response_timeout_seconds": self.profile.response_timeout,
            "currency": self.profile.currency, "currency_exponent": self.profile.currency_exponent,
            "tls": self.ssl_context is not None, "mac": self.profile.mac,
            "store_dir": self.store_dir or "(temporary)", "workers": self.workers,
        }
