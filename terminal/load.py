"""``iso-terminal load``: many careful terminals on one Trio loop, their accounting, and the check.

N emulated terminals run at once, each one a real ``TerminalPolicy`` over its own ``TerminalStore``
driven by a ``TerminalClient`` — so every terminal rule holds under load: sign-on first, response
timeouts, stored reversals sent before the next transaction, late replies discarded, settlement with
upload on 95. The runner only decides *what* to ask for (a seeded random mix of operations) and
*when* (closed loop, or an open-loop global rate limit); everything else is the policy's business.

Pieces, and why they are apart:

* ``LoadStats`` — pure accounting over explicit timestamps (seconds since the run started), so the
  numbers are unit-tested on a virtual clock. Percentiles are **exact, nearest-rank** on the sorted
  samples: for p in (0, 100], the value at rank ``ceil(p/100 * n)`` (1-based) — always a latency
  that was actually observed, never an interpolation, and p100 is the maximum. Counts add up by
  construction: ``started = finished + in_flight`` and ``finished`` is the sum of the outcome kinds
  (``check_totals`` verifies every such identity).
* ``TokenBucket`` — pure rate limiting: ``--rate R/s`` is one bucket shared by all terminals
  (open loop: transactions are started at R/s whatever the host's latency, as long as a terminal
  is free); without it each terminal starts its next transaction as soon as the last one ended.
* ``LoadRunner`` — the Trio shell. Latency is measured around ``run_command``: the time until the
  operation had its outcome, *including* anything the policy had to send first (a sign-on, a stored
  reversal), because that is what the person at the till waits for. When the run ends (count
  reached or duration over) no new transaction starts; the ones in flight finish under the
  terminal's own timeouts. Then every terminal drains what it owes (reversals, advices) and, with
  ``--settle``, settles its batch.
* ``compare_views`` — the consistency check, pure: every journal entry of the run against the host's
  posting for the same (terminal, STAN, field 7). Money moved is compared, not existence: a request
  the host never saw and the terminal reversed is consistent; an approval the host never booked is
  not. Undecided entries (the terminal itself cannot know: a reversal the host refused, or one
  still owed because the drain failed) are listed apart, never silently counted as consistent.
  ``fetch_postings`` reads the host side over the admin API (``/api/v1/ledger/postings``).

Scoping, so an earlier run with the same terminal ids never pollutes this one: terminal entries are
those created during this run; a host posting with no entry of this run is flagged "host only" when
it falls within the run (its field 7, set by our own terminals' clock; for CUP, which has no field 7,
the host's receive time, with ``CUP_CLOCK_SLACK``) and no store has ever journalled its key. The
CLI keeps the stores where the single-terminal commands keep theirs, so STANs and batches continue
across runs as on real terminals; a fresh store per run would reuse STANs, which a CUP host rightly
answers 94 (without field 7 nothing tells the two transactions apart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import trio

from switch.codec.dialect import Dialect
from switch.codec.framing import Framing
from switch.codec.message import Codec
from switch.scenario import parse_duration
from terminal.client import ConnectFactory, TerminalClient, TrioClock, tcp_connector
from terminal.policy import (
    OUTCOME_KINDS,
    Action,
    Command,
    Drain,
    Echo,
    Note,
    OfflineSale,
    Outcome,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Send,
    Settle,
    TerminalPolicy,
    meaning_of,
)
from terminal.profile import TerminalProfile, format_amount
from terminal.store import JournalEntry, StoreError, TerminalStore

__all__ = [
    "CUP_CLOCK_SLACK",
    "DEFAULT_ADMIN_URL",
    "DEFAULT_MIX",
    "ERROR_KINDS",
    "EXIT_CHECK_REQUIRED",
    "EXIT_HOST_NOT_REACHED",
    "EXIT_INCONSISTENT",
    "EXIT_INTERRUPTED",
    "OPERATIONS",
    "PERCENTILES",
    "AdminUnavailable",
    "CheckOptions",
    "ConsistencyResult",
    "HostPosting",
    "LoadConfig",
    "LoadError",
    "LoadResult",
    "LoadRunner",
    "LoadStats",
    "Mismatch",
    "Progress",
    "TokenBucket",
    "check_consistency",
    "compare_views",
    "derive_terminal_ids",
    "execute",
    "exit_status",
    "fetch_postings",
    "field7_time",
    "is_error",
    "nearest_rank",
    "parse_load_duration",
    "parse_mix",
    "parse_rate",
    "progress_line",
    "run_window",
    "store_file_name",
]

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

EXIT_HOST_NOT_REACHED = 3
EXIT_INCONSISTENT = 4
EXIT_CHECK_REQUIRED = 5
EXIT_INTERRUPTED = 130

_TERMINAL_ID_WIDTH = 8
_RECENT_WINDOW = 2.0  # seconds of completions the live "TPS now" is averaged over
_HISTOGRAM_BINS_PER_DECADE = 10
_TICKS_PER_SECOND = 10  # outcomes are counted per tenth of a second
TIMELINE_RESOLUTION = 1 / _TICKS_PER_SECOND
TIMELINE_WIDTHS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
_TIMELINE_COLUMNS = ("finished", "ok", "declined", "errors")  # ok: approved, completed, a void done

T = TypeVar("T")


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


# ---------------------------------------------------------------------------------------------
# Pure pieces: the rate limiter and the accounting


class TokenBucket:
    """A token bucket over explicit times: ``rate`` tokens per second, at most ``burst`` saved up.

    ``reserve(now)`` takes one token and returns when the caller may go (``now`` if a token was
    there); reservations queue up, so concurrent callers are spaced ``1/rate`` apart. Pure: the
    caller sleeps.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise LoadError(f"rate must be a number > 0, got {rate!r}")
        if not (isinstance(burst, int | float) and math.isfinite(burst) and burst >= 1):
            raise LoadError(f"burst must be a number >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated: float | None = None

    def reserve(self, now: float) -> float:
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return now
        return now + (-self._tokens) / self.rate


def nearest_rank(sorted_samples: Sequence[float], percentile: float) -> float:
    """The nearest-rank percentile of ascending ``sorted_samples``: the sample at 1-based rank
    ``ceil(p/100 * n)``. ``p`` is taken exactly as written (99.9 is 999/10, no float rounding)."""
    if not sorted_samples:
        raise ValueError("no samples")
    if not 0 < percentile <= 100:
        raise ValueError(f"a percentile is in (0, 100], got {percentile!r}")
    rank = math.ceil(Fraction(str(percentile)) * len(sorted_samples) / 100)
    return sorted_samples[max(rank, 1) - 1]


@dataclass(frozen=True)
class Progress:
    """What the live display shows; latencies in seconds, None before the first outcome."""

    elapsed: float
    started: int
    finished: int
    in_flight: int
    outcomes: Mapping[str, int]
    declined_by_code: Mapping[str, int]
    reversals_sent: int
    reversals_acknowledged: int
    late_replies: int
    tps: float
    recent_tps: float
    p50: float | None
    p99: float | None

    @property
    def unknown(self) -> int:
        return self.outcomes.get("unknown-queued", 0) + self.outcomes.get("unknown", 0)


class LoadStats:
    """Everything counted during a run. Times are seconds since the run started (any clock).

    Not thread-safe, and it need not be: the runner records from the Trio thread only.
    """

    def __init__(self) -> None:
        self.started = 0
        self.errors = 0
        self.outcomes: Counter[str] = Counter({kind: 0 for kind in OUTCOME_KINDS})
        self.by_operation: dict[str, Counter[str]] = {}
        self.response_codes: Counter[str] = Counter()
        self.declined_by_code: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.messages_sent: Counter[str] = Counter()
        self.housekeeping: dict[str, Counter[str]] = {}
        self._timeline: dict[int, list[int]] = {}  # tenth of a second → counts in _TIMELINE_COLUMNS order
        self.first_outcome_at: float | None = None
        self.last_outcome_at: float | None = None
        self._latencies: list[float] = []
        self._sorted = True
        self._recent: deque[float] = deque()

    # -- recording -------------------------------------------------------------------------------

    def record_started(self, operation: str) -> None:
        self.started += 1
        self.by_operation.setdefault(operation, Counter())

    def record_outcome(self, operation: str, kind: str, response_code: str, latency: float, at: float) -> None:
        """One transaction ended with ``kind`` after ``latency`` seconds, at ``at``."""
        if kind not in self.outcomes:
            raise ValueError(f"not an outcome kind: {kind!r}")
        if not (math.isfinite(latency) and latency >= 0):
            raise ValueError(f"latency must be seconds >= 0, got {latency!r}")
        if self.finished >= self.started:
            raise ValueError("an outcome was recorded for a transaction never started")
        self.outcomes[kind] += 1
        self.by_operation.setdefault(operation, Counter())[kind] += 1
        if response_code:
            self.response_codes[response_code] += 1
        if kind == "declined":
            self.declined_by_code[response_code or "--"] += 1
        if self._latencies and latency < self._latencies[-1]:
            self._sorted = False
        self._latencies.append(latency)
        tick = self._timeline.setdefault(max(0, math.floor(at * _TICKS_PER_SECOND)), [0] * len(_TIMELINE_COLUMNS))
        tick[0] += 1
        error = is_error(operation, kind)
        self.errors += error
        tick[_TIMELINE_COLUMNS.index("errors" if error else "declined" if kind == "declined" else "ok")] += 1
        if self.first_outcome_at is None:
            self.first_outcome_at = at
        self.last_outcome_at = at if self.last_outcome_at is None else max(self.last_outcome_at, at)
        self._recent.append(at)
        self._prune_recent(at)

    def record_note(self, kind: str) -> None:
        self.notes[kind] += 1

    def record_sends(self, purposes: Iterable[str]) -> None:
        """Messages the terminals transmitted, by the policy's purpose (signon, financial, reversal...)."""
        self.messages_sent.update(purposes)

    def record_housekeeping(self, operation: str, kind: str) -> None:
        """A drain or settlement outside the measured transactions (start and end of the run)."""
        self.housekeeping.setdefault(operation, Counter())[kind] += 1

    def _prune_recent(self, at: float) -> None:
        while self._recent and self._recent[0] <= at - _RECENT_WINDOW:
            self._recent.popleft()

    # -- reading ---------------------------------------------------------------------------------

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    @property
    def in_flight(self) -> int:
        return self.started - self.finished

    def sorted_latencies(self) -> list[float]:
        if not self._sorted:
            self._latencies.sort()  # timsort: cheap on the mostly sorted list it keeps seeing
            self._sorted = True
        return self._latencies

    def percentile(self, percentile: float) -> float | None:
        samples = self.sorted_latencies()
        return nearest_rank(samples, percentile) if samples else None

    def tps(self, elapsed: float) -> float:
        return self.finished / elapsed if elapsed > 0 else 0.0

    def snapshot(self, at: float) -> Progress:
        self._prune_recent(at)
        window = min(_RECENT_WINDOW, at)
        return Progress(
            elapsed=at, started=self.started, finished=self.finished, in_flight=self.in_flight,
            outcomes=dict(self.outcomes), declined_by_code=dict(self.declined_by_code),
            reversals_sent=self.messages_sent["reversal"], reversals_acknowledged=self.notes["reversal-cleared"],
            late_replies=self.notes["late-reply-discarded"], tps=self.tps(at),
            recent_tps=len(self._recent) / window if window > 0 else 0.0,
            p50=self.percentile(50), p99=self.percentile(99),
        )

    def latency_histogram(self) -> list[dict[str, float]]:
        """Counts in log-spaced bins (10 per decade of milliseconds), from the fastest to the slowest
        bin observed, empty bins included, so the shape is honest on a log axis."""
        samples = self.sorted_latencies()
        if not samples:
            return []

        def index(seconds: float) -> int:
            milliseconds = max(seconds * 1000.0, 1e-3)
            return math.floor(math.log10(milliseconds) * _HISTOGRAM_BINS_PER_DECADE + 1e-9)

        counts = Counter(index(sample) for sample in samples)
        low, high = min(counts), max(counts)
        return [{"from_ms": _bin_edge(k), "to_ms": _bin_edge(k + 1), "count": counts.get(k, 0)}
                for k in range(low, high + 1)]

    def timeline(self, max_buckets: int = 300) -> list[dict[str, float | int]]:
        """Outcomes over time in contiguous buckets from the start: the narrowest width in
        ``TIMELINE_WIDTHS`` that needs at most ``max_buckets``, so a 2-second run and a 1-hour run
        both draw well. Each bucket: ``start`` and ``seconds`` (its width), then counts."""
        if not self._timeline:
            return []
        ticks = max(self._timeline) + 1
        span = ticks / _TICKS_PER_SECOND
        width = next((w for w in TIMELINE_WIDTHS if span / w <= max_buckets), None)
        if width is None:
            width = TIMELINE_WIDTHS[-1] * math.ceil(span / (TIMELINE_WIDTHS[-1] * max_buckets))
        per_bucket = round(width * _TICKS_PER_SECOND)
        buckets: list[dict[str, float | int]] = []
        for first in range(0, ticks, per_bucket):
            sums = [0] * len(_TIMELINE_COLUMNS)
            for tick in range(first, min(first + per_bucket, ticks)):
                for column, value in enumerate(self._timeline.get(tick, ())):
                    sums[column] += value
            buckets.append({"start": round(first / _TICKS_PER_SECOND, 3), "seconds": width,
                            **dict(zip(_TIMELINE_COLUMNS, sums, strict=True))})
        return buckets

    def check_totals(self) -> list[str]:
        """Every accounting identity that must hold; the broken ones, described (empty: all hold)."""
        problems = []
        finished = self.finished
        if self.started != finished + self.in_flight or self.in_flight < 0:
            problems.append(f"started {self.started} != finished {finished} + in flight {self.in_flight}")
        per_operation = sum(sum(counts.values()) for counts in self.by_operation.values())
        if per_operation != finished:
            problems.append(f"outcomes by operation add up to {per_operation}, not {finished}")
        if len(self._latencies) != finished:
            problems.append(f"{len(self._latencies)} latency samples for {finished} outcomes")
        in_timeline = sum(tick[0] for tick in self._timeline.values())
        if in_timeline != finished:
            problems.append(f"the timeline holds {in_timeline} outcomes, not {finished}")
        in_columns = sum(sum(tick[1:]) for tick in self._timeline.values())
        if in_columns != finished:
            problems.append(f"the timeline's columns hold {in_columns} outcomes, not {finished}")
        if sum(self.declined_by_code.values()) != self.outcomes["declined"]:
            problems.append("declines by code do not add up to the declines")
        return problems

    def summary(self, elapsed: float) -> dict[str, Any]:
        """The JSON-ready summary (``--json``, summary.json): counts, rates, latency, timeline."""
        samples = self.sorted_latencies()
        latency: dict[str, float | int | None] = {"count": len(samples)}
        if samples:
            latency["min"] = _ms(samples[0])
            for p in PERCENTILES:
                latency[f"p{p:g}"] = _ms(nearest_rank(samples, p))
            latency["max"] = _ms(samples[-1])
            latency["mean"] = _ms(sum(samples) / len(samples))
        else:
            latency.update({"min": None, **{f"p{p:g}": None for p in PERCENTILES}, "max": None, "mean": None})
        return {
            "elapsed_seconds": round(elapsed, 6),
            "transactions": {"started": self.started, "finished": self.finished, "in_flight": self.in_flight},
            "tps": round(self.tps(elapsed), 3),
            "latency_ms": latency,
            "latency_histogram": self.latency_histogram(),
            "outcomes": dict(self.outcomes),
            "errors": self.errors,
            "by_operation": {op: {kind: n for kind, n in counts.items() if n}
                             for op, counts in sorted(self.by_operation.items())},
            "response_codes": {code: {"count": n, "meaning": meaning_of(code)}
                               for code, n in sorted(self.response_codes.items())},
            "declined_by_code": dict(sorted(self.declined_by_code.items())),
            "terminal_events": {
                "reversals_sent": self.messages_sent["reversal"],
                "reversals_acknowledged": self.notes["reversal-cleared"],
                "reversals_refused": self.notes["reversal-refused"],
                "late_replies_discarded": self.notes["late-reply-discarded"],
                "unexpected_messages_discarded": self.notes["unexpected-message-discarded"],
                "exchanges_failed": self.notes["exchange-failed"],
                "sign_ons": self.notes["signed-on"],
                "sign_on_demands": self.notes["signon-demanded"],
                "connections_lost": self.notes["connection-lost"],
                "connect_failures": self.notes["connect-failed"],
                "recovered_in_flight": self.notes["recovered"],
            },
            "messages_sent": dict(sorted(self.messages_sent.items())),
            "notes": dict(sorted(self.notes.items())),
            "housekeeping": {op: dict(counts) for op, counts in sorted(self.housekeeping.items())},
            "timeline": self.timeline(),
            "accounting_problems": self.check_totals(),
        }


def is_error(operation: str, kind: str) -> bool:
    """Whether an outcome means "no trustworthy host answer". Not for a void: "reversed" is its
    success, and "refused" means there was no approval left to void (the mix asked for one anyway)."""
    return kind in ERROR_KINDS and not (operation == "void" and kind in ("reversed", "refused"))


def _bin_edge(k: int) -> float:
    return float(f"{10 ** (k / _HISTOGRAM_BINS_PER_DECADE):.4g}")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


# ---------------------------------------------------------------------------------------------
# The consistency check (pure part)


@dataclass(frozen=True)
class HostPosting:
    """The fields of one host ledger posting the check needs (from ``/api/v1/ledger/postings``)."""

    terminal: str
    stan: str
    transmission_time: str
    kind: str
    direction: str
    amount: int
    approved: bool
    reversed: bool
    response_code: str
    received_at: float
    rrn: str = ""

    @property
    def money_moved(self) -> bool:
        return self.approved and not self.reversed

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> HostPosting:
        try:
            return cls(
                terminal=str(row["terminal"]).rstrip(" "), stan=str(row["stan"]),
                transmission_time=str(row.get("transmission_time") or ""), kind=str(row["kind"]),
                direction=str(row["direction"]), amount=int(row["amount"]), approved=bool(row["approved"]),
                reversed=bool(row.get("reversed", row.get("reversal_seq") is not None)),
                response_code=str(row.get("response_code") or ""), received_at=float(row["received_at"]),
                rrn=str(row.get("rrn") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AdminUnavailable(f"the admin API answered a posting without {exc}: is it an iso-switch?") from None


@dataclass(frozen=True)
class Mismatch:
    """One transaction the terminal and the host disagree about, as both see it."""

    terminal: str
    stan: str
    transmission_time: str
    problem: str
    terminal_view: str
    host_view: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        when = f" field 7 {self.transmission_time}" if self.transmission_time else ""
        return (f"{self.terminal} STAN {self.stan}{when}: {self.problem} — terminal: {self.terminal_view}; "
                f"host: {self.host_view}")


@dataclass(frozen=True)
class ConsistencyResult:
    """The check's verdict. ``status``: consistent | inconsistent | skipped (``reason`` says why)."""

    status: str
    reason: str = ""
    checked: int = 0
    money_moved: int = 0
    net_amount: int = 0  # debits minus credits that moved, minor units
    host_postings: int = 0
    mismatches: tuple[Mismatch, ...] = ()
    undecided: tuple[Mismatch, ...] = ()
    hint: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "inconsistent"

    def headline(self, exponent: int = 2) -> str:
        if self.status == "skipped":
            return f"consistency check skipped: {self.reason}"
        net = format_amount(self.net_amount, exponent)
        text = (f"{self.status}: {self.checked} transactions, {self.money_moved} money moved (net {net}), "
                f"{len(self.mismatches)} mismatches")
        if self.undecided:
            text += f", {len(self.undecided)} undecided (the terminal cannot know yet; not counted as consistent)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "reason": self.reason, "checked": self.checked,
            "money_moved": self.money_moved, "net_amount": self.net_amount, "host_postings": self.host_postings,
            "mismatches": [m.as_dict() for m in self.mismatches],
            "undecided": [m.as_dict() for m in self.undecided], "hint": self.hint,
        }


def field7_time(text: str, near: float) -> float | None:
    """Field 7 (MMDDhhmmss, UTC) as Unix seconds, in the year that puts it closest to ``near``."""
    if len(text) != 10 or not text.isdigit():
        return None
    year = datetime.fromtimestamp(near, UTC).year
    best: float | None = None
    for candidate in (year - 1, year, year + 1):
        try:
            moment = datetime.strptime(f"{candidate}{text}", "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
        except ValueError:  # 29 February in a year without one
            continue
        if best is None or abs(moment - near) < abs(best - near):
            best = moment
    return best


def run_window(entries: Iterable[JournalEntry], started: float, ended: float) -> tuple[float, float]:
    """The run's time span by our clock, widened to every field 7 our terminals actually sent."""
    low, high = started, ended
    for entry in entries:
        moment = field7_time(entry.transmission_time, started)
        if moment is not None:
            low, high = min(low, moment), max(high, moment)
    return low, high


def _terminal_view(entry: JournalEntry, exponent: int) -> str:
    amount = format_amount(entry.amount, exponent)
    moved = {True: "money moved", False: "nothing moved", None: "cannot know"}[entry.money_moved]
    code = f" ({entry.response_code} {meaning_of(entry.response_code)})" if entry.response_code else ""
    return f"{entry.kind} {entry.direction} {amount} {entry.state}{code}: {moved}"


def _host_view(posting: HostPosting | None, exponent: int) -> str:
    if posting is None:
        return "no posting (never received, or never booked)"
    amount = format_amount(posting.amount, exponent)
    state = "reversed" if posting.reversed else ("approved" if posting.approved else "declined")
    moved = "money moved" if posting.money_moved else "nothing moved"
    code = f" ({posting.response_code} {meaning_of(posting.response_code)})" if posting.response_code else ""
    return f"{posting.kind} {posting.direction} {amount} {state}{code}: {moved}"


def _in_window(posting: HostPosting, low: float, high: float) -> bool:
    """Whether a host posting may belong to a run spanning [low, high] (our clock).

    Field 7 is set by our own terminals (whole seconds, hence one second of slack); without it
    (CUP) the host's receive time is all there is, with ``CUP_CLOCK_SLACK``.
    """
    if posting.transmission_time:
        moment = field7_time(posting.transmission_time, low)
        return moment is not None and low - 1.0 <= moment <= high + 1.0
    return low - CUP_CLOCK_SLACK <= posting.received_at <= high + CUP_CLOCK_SLACK


def compare_views(
    entries: Mapping[str, Sequence[JournalEntry]],
    postings: Sequence[HostPosting],
    window: tuple[float, float],
    *,
    journalled: Iterable[tuple[str, str, str]] = (),
    exponent: int = 2,
) -> ConsistencyResult:
    """Compare every terminal's journal with the host's postings, transaction by transaction.

    ``entries``: terminal id → the journal entries of this run. ``postings``: the host's postings of
    those terminals, of any age. ``window`` (Unix seconds, our clock) and ``journalled`` — the
    (terminal, STAN, field 7) keys of every entry the stores hold, earlier runs' included — decide
    which host postings with no entry of this run are this run's: those in the window that no
    store has ever journalled. Keys: terminal + STAN + field 7; CUP (no field 7): terminal + STAN,
    the posting the host received nearest the moment the terminal journalled it, within the window.

    Verdicts per transaction: the same money movement (and, where money moved, the same amount
    and direction) is consistent; a terminal that cannot know yet is "undecided"; anything else,
    and any host posting of the run the terminal never journalled, is a mismatch.
    """
    low, high = window
    by_key: dict[tuple[str, str, str], HostPosting] = {}
    repeated: list[HostPosting] = []  # a second posting of one key: the host booked one request twice
    cup_candidates: dict[tuple[str, str], list[HostPosting]] = {}
    for booked in postings:
        if booked.transmission_time:
            key = (booked.terminal, booked.stan, booked.transmission_time)
            if key in by_key:
                repeated.append(booked)
            else:
                by_key[key] = booked
        elif _in_window(booked, low, high):
            cup_candidates.setdefault((booked.terminal, booked.stan), []).append(booked)
    mismatches: list[Mismatch] = []
    undecided: list[Mismatch] = []
    matched: set[int] = set()  # id() of the postings some entry was compared with
    checked = moved = net = 0
    for terminal, journal in entries.items():
        terminal = terminal.rstrip(" ")
        for entry in journal:
            posting: HostPosting | None
            if entry.transmission_time:
                posting = by_key.get((terminal, entry.stan, entry.transmission_time))
            else:
                candidates = cup_candidates.get((terminal, entry.stan), [])
                posting = min(candidates, key=lambda p: abs(p.received_at - entry.created_at), default=None)
            if posting is not None:
                matched.add(id(posting))
            checked += 1
            terminal_view, host_view = _terminal_view(entry, exponent), _host_view(posting, exponent)
            host_moved = posting is not None and posting.money_moved
            problem = ""
            if entry.money_moved is None:
                reason = f"the terminal cannot know ({entry.state}: {entry.reason})"
                undecided.append(Mismatch(terminal, entry.stan, entry.transmission_time, reason,
                                          terminal_view, host_view))
                continue
            if entry.money_moved and not host_moved:
                problem = ("the terminal believes money moved; the host has no posting" if posting is None
                           else "the terminal believes money moved; the host did not move it")
            elif not entry.money_moved and host_moved:
                problem = "the host moved money; the terminal believes nothing moved"
            elif entry.money_moved and posting is not None:
                if posting.amount != entry.amount:
                    problem = "different amounts"
                elif posting.direction != entry.direction:
                    problem = "different directions (debit / credit)"
            if problem:
                mismatches.append(Mismatch(terminal, entry.stan, entry.transmission_time, problem,
                                           terminal_view, host_view))
                continue
            if entry.money_moved:
                moved += 1
                net += entry.amount if entry.direction == "debit" else -entry.amount
    known = {(terminal.rstrip(" "), stan, f7) for terminal, stan, f7 in journalled}
    host_in_run = 0
    in_window = [p for p in (*by_key.values(), *repeated) if _in_window(p, low, high)]
    repeated_ids = {id(p) for p in repeated}
    in_window += [p for candidates in cup_candidates.values() for p in candidates]
    for posting in sorted(in_window, key=lambda p: (p.terminal, p.received_at, p.stan)):
        if id(posting) in matched:
            host_in_run += 1
        elif id(posting) in repeated_ids:
            host_in_run += 1
            mismatches.append(Mismatch(
                posting.terminal, posting.stan, posting.transmission_time,
                "the host has this terminal, STAN and field 7 more than once (one request booked twice)",
                "one transaction", _host_view(posting, exponent)))
        elif (posting.terminal, posting.stan, posting.transmission_time) not in known:
            host_in_run += 1
            mismatches.append(Mismatch(
                posting.terminal, posting.stan, posting.transmission_time,
                "the host has a transaction the terminal never journalled",
                "no journal entry", _host_view(posting, exponent)))
    status = "inconsistent" if mismatches else "consistent"
    return ConsistencyResult(status, checked=checked, money_moved=moved, net_amount=net, host_postings=host_in_run,
                             mismatches=tuple(mismatches), undecided=tuple(undecided))


# ---------------------------------------------------------------------------------------------
# The consistency check (the host side, over the admin API)


class AdminUnavailable(RuntimeError):
    """The admin API could not be asked (not reachable, refused, not an iso-switch): the reason."""


@dataclass(frozen=True)
class CheckOptions:
    """``admin_url`` None: no check (``--no-check``). ``required``: a skipped check is an error."""

    admin_url: str | None = DEFAULT_ADMIN_URL
    token: str | None = None
    required: bool = False
    timeout: float = 10.0


def _get_json(url: str, token: str | None, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        hint = " (give the switch's token with --admin-token)" if exc.code == 401 else ""
        raise AdminUnavailable(f"{url} answered HTTP {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise AdminUnavailable(f"admin API not reachable at {url}: {reason}") from None
    except (OSError, TimeoutError) as exc:
        raise AdminUnavailable(f"admin API not reachable at {url}: {exc.strerror or exc}") from None
    except ValueError:
        raise AdminUnavailable(f"{url} did not answer JSON: is it an iso-switch admin API?") from None


def fetch_postings(admin_url: str, terminals: Iterable[str], *, token: str | None = None,
                   timeout: float = 10.0) -> list[HostPosting]:
    """Every posting the host holds for ``terminals`` (one request per terminal). Blocking."""
    base = admin_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise AdminUnavailable(f"--admin {admin_url!r}: expected an http:// or https:// URL")
    _get_json(f"{base}/health", None, min(timeout, 5.0))  # reachable at all? (open without the token)
    postings: list[HostPosting] = []
    for terminal in terminals:
        query = urllib.parse.urlencode({"terminal": terminal.rstrip(" ")})
        document = _get_json(f"{base}/api/v1/ledger/postings?{query}", token, timeout)
        rows = document.get("postings") if isinstance(document, dict) else None
        if not isinstance(rows, list):
            raise AdminUnavailable(f"{base}/api/v1/ledger/postings answered no postings list: is it an iso-switch?")
        postings.extend(HostPosting.from_json(row) for row in rows)
    return postings


def check_consistency(options: CheckOptions, entries: Mapping[str, Sequence[JournalEntry]],
                      window: tuple[float, float], *, journalled: Iterable[tuple[str, str, str]] = (),
                      exponent: int = 2) -> ConsistencyResult:
    """Fetch the host's postings and compare; a host that cannot be asked gives a "skipped" result."""
    if options.admin_url is None:
        return ConsistencyResult("skipped", reason="--no-check")
    try:
        postings = fetch_postings(options.admin_url, entries, token=options.token, timeout=options.timeout)
    except AdminUnavailable as exc:
        return ConsistencyResult("skipped", reason=str(exc))
    result = compare_views(entries, postings, window, journalled=journalled, exponent=exponent)
    journalled_moves = any(entry.money_moved for journal in entries.values() for entry in journal)
    if not postings and journalled_moves:
        hint = (f"the host at {options.admin_url} has no posting at all for these terminals: is it the admin "
                "API of the switch the terminals talked to?")
        result = dataclasses.replace(result, hint=hint)
    return result


# ---------------------------------------------------------------------------------------------
# The runner (Trio)


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
    store_dir: str | None = None  # None: a temporary directory, removed after the run
    tpdu: bytes | None = None
    ssl_context: ssl.SSLContext | None = None  # TLS to the host
    offload_store: bool = True  # store calls in worker threads (fsync must not stall every terminal)

    def __post_init__(self) -> None:
        if not self.terminal_ids:
            raise LoadError("at least one terminal is needed")
        if len(set(self.terminal_ids)) != len(self.terminal_ids):
            raise LoadError("terminal ids must be distinct")
        if (self.count is None) == (self.duration is None):
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
            "store_dir": self.store_dir or "(temporary)",
        }


@dataclass
class LoadResult:
    """What a run leaves: the stores (still open, for the check), times by both clocks, interruption."""

    stores: dict[str, TerminalStore]
    started_at: float  # Unix seconds (the policies' clock)
    ended_at: float
    elapsed: float  # seconds from the start to the last transaction's outcome (or to the stop)
    interrupted: bool = False

    def journal(self) -> dict[str, list[JournalEntry]]:
        """Each terminal's journal entries made during this run (earlier runs' entries excluded)."""
        return {terminal: [entry for entry in store.entries() if entry.created_at >= self.started_at]
                for terminal, store in self.stores.items()}

    def journalled_keys(self) -> set[tuple[str, str, str]]:
        """(terminal, STAN, field 7) of every entry the stores hold, from any run."""
        return {(terminal, entry.stan, entry.transmission_time)
                for terminal, store in self.stores.items() for entry in store.entries()}

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


class _CountingPolicy(TerminalPolicy):
    """The policy, counting each message it has the driver send (by purpose: reversal, signon...).

    ``next_action`` may run in a worker thread; only this terminal's calls touch the list, one at a
    time, and the runner takes it between commands, when no call is running.
    """

    def __init__(self, profile: TerminalProfile, store: TerminalStore, now: float) -> None:
        super().__init__(profile, store, now)
        self._sent: list[str] = []

    def next_action(self, now: float) -> Action:
        action = super().next_action(now)
        if isinstance(action, Send):
            self._sent.append(action.purpose)
        return action

    def take_sent(self) -> list[str]:
        sent, self._sent = self._sent, []
        return sent


@dataclass(frozen=True)
class _Job:
    operation: str
    command: Command


class LoadRunner:
    """Runs ``config`` on the current Trio loop, counting into ``stats``.

    ``connect`` defaults to TCP to ``config.host:config.port`` (tests pass memory streams); ``clock``
    defaults to the wall clock. ``store_dir`` is where each terminal's store file goes.
    """

    def __init__(self, config: LoadConfig, stats: LoadStats, store_dir: str, *,
                 connect: ConnectFactory | None = None, clock: TrioClock | None = None) -> None:
        self.config = config
        self.stats = stats
        self.store_dir = store_dir
        self._connect = connect or tcp_connector(config.host, config.port, ssl_context=config.ssl_context)
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._bucket = TokenBucket(config.rate) if config.rate else None
        self._operations = list(config.mix)
        self._weights = [config.mix[name] for name in self._operations]
        self._codec = Codec(config.dialect)
        self._issued = 0
        self._stopping = False
        self._stop_requested = trio.Event()  # wakes terminals waiting for a rate-limit slot
        self._t0 = 0.0
        self._deadline: float | None = None
        self.stores: dict[str, TerminalStore] = {}

    def store_path(self, terminal_id: str) -> str:
        return os.path.join(self.store_dir, store_file_name(terminal_id))

    async def run(self, on_progress: Callable[[Progress], None] | None = None,
                  progress_interval: float = 0.25) -> LoadResult:
        clock = self._clock or TrioClock.wall()
        self._clock = clock
        self._t0 = trio.current_time()
        started_at = clock.now()
        if self.config.duration is not None:
            self._deadline = self._t0 + self.config.duration
        result = LoadResult(self.stores, started_at, started_at, 0.0)
        try:
            async with trio.open_nursery() as nursery:
                if on_progress is not None:
                    nursery.start_soon(self._report_progress, on_progress, progress_interval)
                async with trio.open_nursery() as terminals:
                    for terminal_id in self.config.terminal_ids:
                        terminals.start_soon(self._terminal, terminal_id)
                nursery.cancel_scope.cancel()
        finally:
            result.ended_at = clock.now()
            last = self.stats.last_outcome_at
            result.elapsed = last if last is not None else self._at()
            if on_progress is not None:
                on_progress(self.stats.snapshot(self._at()))
        return result

    def _at(self) -> float:
        return trio.current_time() - self._t0

    async def _report_progress(self, on_progress: Callable[[Progress], None], interval: float) -> None:
        while True:
            await trio.sleep(interval)
            on_progress(self.stats.snapshot(self._at()))

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.config.offload_store:
            return await trio.to_thread.run_sync(functools.partial(fn, *args))
        return fn(*args)

    async def _terminal(self, terminal_id: str) -> None:
        assert self._clock is not None
        config = self.config
        store = await self._call(TerminalStore.open, self.store_path(terminal_id), terminal_id)
        self.stores[terminal_id] = store
        profile = dataclasses.replace(config.profile, terminal_id=terminal_id)
        policy = await self._call(_CountingPolicy, profile, store, self._clock.now())
        closing = False

        def on_note(note: Note) -> None:
            if not (closing and note.kind == "connection-lost"):  # our own close at the end is no loss
                self.stats.record_note(note.kind)

        client = TerminalClient(policy, self._codec, config.framing, self._connect, self._clock, tpdu=config.tpdu,
                                offload_store=config.offload_store, on_note=on_note)
        async with client:
            await self._housekeeping(client, policy, Drain())  # anything an earlier run left owed
            while (job := await self._next_job()) is not None:
                self.stats.record_started(job.operation)
                began = trio.current_time()
                outcome = await client.run_command(job.command)
                ended = trio.current_time()
                self.stats.record_sends(policy.take_sent())
                self.stats.record_outcome(job.operation, outcome.kind, outcome.response_code, ended - began,
                                          ended - self._t0)
            await self._housekeeping(client, policy, Drain())
            if config.settle:
                await self._housekeeping(client, policy, Settle())
            closing = True

    async def _housekeeping(self, client: TerminalClient, policy: _CountingPolicy, command: Command) -> Outcome:
        outcome = await client.run_command(command)
        self.stats.record_sends(policy.take_sent())
        self.stats.record_housekeeping(command.name, outcome.kind)
        return outcome

    def stop(self) -> None:
        """End the run early, gracefully: no new transaction starts; the ones in flight finish, then
        every terminal drains (and settles) as at a normal end."""
        self._stopping = True
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def _next_job(self) -> _Job | None:
        """The next transaction to run, at the moment it may start; None when the run is over."""
        count, deadline = self.config.count, self._deadline
        if self._stopping or (count is not None and self._issued >= count):
            return None
        now = trio.current_time()
        if deadline is not None and now >= deadline:
            return None
        self._issued += 1  # taken before any await, so terminals together never exceed --count
        if self._bucket is not None:
            start = self._bucket.reserve(now)
            if deadline is not None and start >= deadline:
                self._issued -= 1
                return None
            with trio.move_on_at(start):
                await self._stop_requested.wait()
            if self._stopping:
                self._issued -= 1
                return None
        return self._job()

    def _job(self) -> _Job:
        config = self.config
        operation = self._rng.choices(self._operations, self._weights)[0]
        amount = self._rng.randint(*config.amount_range)
        pan = self._rng.choice(config.pans)
        command: Command
        if operation == "purchase":
            command = Purchase(amount, pan, config.expiry)
        elif operation == "refund":
            command = Refund(amount, pan, config.expiry)
        elif operation == "preauth":
            command = PreAuthorization(amount, pan, config.expiry)
        elif operation == "offline":
            command = OfflineSale(amount, pan, config.expiry)
        elif operation == "void":
            command = ReverseLast()
        else:
            command = Echo()
        return _Job(operation, command)


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


# ---------------------------------------------------------------------------------------------
# The command: run, summarise, check, report


@contextlib.contextmanager
def _store_directory(store_dir: str | None) -> Iterator[str]:
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
    from terminal.report import summary_lines, write_report

    out = out or sys.stdout
    err = err or sys.stderr
    stats = LoadStats()
    with _store_directory(config.store_dir) as directory:
        runner = LoadRunner(config, stats, directory)
        display: LiveProgress | PlainProgress | None = None
        if not quiet:
            use_live = live if live is not None else err.isatty()
            title = (f"iso-terminal load → {config.host}:{config.port}: {len(config.terminal_ids)} terminals, "
                     + (f"{config.count} transactions" if config.count else f"{config.duration:g}s")
                     + (f" at {config.rate:g}/s" if config.rate else ""))
            display = LiveProgress(err, title) if use_live else PlainProgress(err)
        wall_start = time.time()
        try:
            result = trio.run(_run_until_interrupted, runner, display, err)
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
                       "interrupted": interrupted, "stopped_early": runner.stopping, "config": config.describe(),
                       **stats.summary(result.elapsed)}
            if interrupted:
                consistency = ConsistencyResult("skipped", reason="the run was interrupted")
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
    if report_dir is not None:
        json_path, html_path = write_report(report_dir, summary)
        summary["report"] = {"summary": str(json_path), "html": str(html_path)}
    if as_json:
        print(json.dumps(summary, indent=2), file=out)
    else:
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


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _raise_plainly(exc: BaseException) -> NoReturn:
    """Re-raise a terminal's store or I/O failure as itself, out of Trio's exception groups, so the
    CLI reports it in one line (a store that is another terminal's, a full disk); anything else as is."""
    leaves = _leaves(exc)
    plain = [leaf for leaf in leaves if isinstance(leaf, StoreError | OSError)]
    if plain and all(isinstance(leaf, StoreError | OSError | trio.Cancelled) for leaf in leaves):
        raise plain[0] from None
    raise exc


def _only_interrupts(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt, or a group of nothing else (Trio wraps them)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(inner) for inner in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


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
