"""Pure accounting of a load run over explicit timestamps: ``LoadStats``, percentiles, ``Progress``."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from terminal.load.options import ERROR_KINDS, PERCENTILES
from terminal.policy import (
    OUTCOME_KINDS,
    meaning_of,
)

_RECENT_WINDOW = 2.0  # seconds of completions the live "TPS now" is averaged over
_HISTOGRAM_BINS_PER_DECADE = 10
_TICKS_PER_SECOND = 10  # outcomes are counted per tenth of a second
TIMELINE_RESOLUTION = 1 / _TICKS_PER_SECOND
TIMELINE_WIDTHS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
_TIMELINE_COLUMNS = ("finished", "ok", "declined", "errors")  # ok: approved, completed, a void done
_OK_COLUMN, _DECLINED_COLUMN, _ERRORS_COLUMN = (_TIMELINE_COLUMNS.index(name) for name in ("ok", "declined", "errors"))


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
        self.finished = 0  # kept as outcomes are recorded: read on every record and every snapshot
        self.errors = 0
        self.outcomes: Counter[str] = Counter({kind: 0 for kind in OUTCOME_KINDS})
        self.by_operation: dict[str, Counter[str]] = {}
        self.response_codes: Counter[str] = Counter()
        self.declined_by_code: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.messages_sent: Counter[str] = Counter()
        self.housekeeping: dict[str, Counter[str]] = {}
        self._timeline: dict[int, list[int]] = {}  # tenth of a second → counts in _TIMELINE_COLUMNS order
        self.connect_failure: str | None = None  # the first "cannot connect: ..." of any terminal, for one error line
        self.first_outcome_at: float | None = None
        self.last_outcome_at: float | None = None
        self._latencies: list[float] = []
        self._sorted = True
        self._recent: deque[float] = deque()

    # -- recording -------------------------------------------------------------------------------

    def record_started(self, operation: str) -> None:
        self.started += 1
        if operation not in self.by_operation:
            self.by_operation[operation] = Counter()

    def record_outcome(self, operation: str, kind: str, response_code: str, latency: float, at: float) -> None:
        """One transaction ended with ``kind`` after ``latency`` seconds, at ``at``. Called once per
        transaction, so written for speed: no throwaway objects, the timeline's columns by index."""
        outcomes = self.outcomes
        if kind not in outcomes:
            raise ValueError(f"not an outcome kind: {kind!r}")
        if not (math.isfinite(latency) and latency >= 0):
            raise ValueError(f"latency must be seconds >= 0, got {latency!r}")
        if self.finished >= self.started:
            raise ValueError("an outcome was recorded for a transaction never started")
        outcomes[kind] += 1
        self.finished += 1
        by_operation = self.by_operation.get(operation)
        if by_operation is None:
            by_operation = self.by_operation[operation] = Counter()
        by_operation[kind] += 1
        if response_code:
            self.response_codes[response_code] += 1
        if kind == "declined":
            self.declined_by_code[response_code or "--"] += 1
        latencies = self._latencies
        if latencies and latency < latencies[-1]:
            self._sorted = False
        latencies.append(latency)
        tick_index = max(0, math.floor(at * _TICKS_PER_SECOND))
        tick = self._timeline.get(tick_index)
        if tick is None:
            tick = self._timeline[tick_index] = [0] * len(_TIMELINE_COLUMNS)
        tick[0] += 1
        if is_error(operation, kind):
            self.errors += 1
            tick[_ERRORS_COLUMN] += 1
        else:
            tick[_DECLINED_COLUMN if kind == "declined" else _OK_COLUMN] += 1
        if self.first_outcome_at is None:
            self.first_outcome_at = at
        last = self.last_outcome_at
        if last is None or at > last:
            self.last_outcome_at = at
        self._recent.append(at)
        self._prune_recent(at)

    def record_note(self, kind: str, text: str = "") -> None:
        self.notes[kind] += 1
        if kind == "connect-failed" and self.connect_failure is None:
            self.connect_failure = text or "cannot connect"

    def record_sends(self, purposes: Iterable[str]) -> None:
        """Messages the terminals transmitted, by the policy's purpose (signon, financial, reversal...)."""
        self.messages_sent.update(purposes)

    def record_housekeeping(self, operation: str, kind: str) -> None:
        """A drain or settlement outside the measured transactions (start and end of the run)."""
        self.housekeeping.setdefault(operation, Counter())[kind] += 1

    def _prune_recent(self, at: float) -> None:
        recent, oldest = self._recent, at - _RECENT_WINDOW
        while recent and recent[0] <= oldest:
            recent.popleft()

    # -- reading ---------------------------------------------------------------------------------

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
        if sum(self.outcomes.values()) != finished:
            problems.append(f"outcomes add up to {sum(self.outcomes.values())}, not {finished}")
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
