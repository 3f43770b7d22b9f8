"""Prometheus metrics for the switch, rendered by the admin API's ``/metrics``.

The server calls these methods on its hot path, once or twice per message, so each call is a dict
look-up plus an integer increment. The per-message series (messages, faults, the latency histogram)
are therefore plain counters kept here and handed to prometheus_client only when ``render()`` asks
(a collector): a prometheus_client ``Counter.inc`` takes a lock and ``Histogram.observe`` walks the
buckets in Python, together 3-6 us per request, as much as the ledger. Every method must be called
from the thread running the switch (the Trio thread), as ``render`` is.

Every ``SwitchMetrics`` owns its own ``CollectorRegistry`` instead of prometheus_client's global
one: two switches in one process (tests, the benchmark) must not share or collide on series.

Label values come from the wire (a client chooses its MTIs), so they are normalised and the number
of distinct series is capped: a client sending garbage MTIs cannot grow the registry without bound.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "MAX_SERIES", "SwitchMetrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
"""The HTTP Content-Type of ``render()``'s output (Prometheus text format 0.0.4)."""

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds. From 1 ms (an idle host's answer) to 60 s (beyond any terminal's response timeout, so
injected late replies land in a finite bucket instead of only in +Inf)."""

MAX_SERIES: Final = 500
"""Distinct label combinations kept per labelled metric; later new ones are counted as "other"."""

NO_RESPONSE: Final = "none"
"""``response_code`` label of a request that was not answered (dropped, or closed on)."""

INVALID: Final = "invalid"
"""Label of an MTI or response code that is not well-formed (garbage from a client)."""

OTHER: Final = "other"
"""Label used once ``MAX_SERIES`` distinct values have been seen."""

_MTI = re.compile(r"[0-9]{4}")
_RESPONSE_CODE = re.compile(r"[0-9A-Za-z]{2}")
_ACTION = re.compile(r"[a-z0-9_-]{1,40}")
_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a fault rule id (switch.faults.rule)

UNKNOWN_RULE: Final = "unknown"
"""``rule`` label of a fault action recorded without the id of the rule that asked for it."""


class _Count:
    """One series' count: a mutable cell shared by every raw label pair normalised to the series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _HotCollector:
    """Hands the counters ``SwitchMetrics`` keeps itself to prometheus_client at render time."""

    def __init__(self, metrics: SwitchMetrics, namespace: str):
        self._metrics = metrics
        self._names = (f"{namespace}_messages", f"{namespace}_faults_applied", f"{namespace}_request_latency_seconds")

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self._names[0], ""), CounterMetricFamily(self._names[1], ""),
                HistogramMetricFamily(self._names[2], "")]

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        messages = CounterMetricFamily(
            self._names[0], "Requests handled, by request MTI and the response code sent (none: not answered).",
            labels=("mti", "response_code"))
        for labels, count in metrics._message_series.items():
            messages.add_metric(labels, count.value)
        yield messages
        faults = CounterMetricFamily(
            self._names[1], "Fault actions applied to messages or connections, by action and by the id of the "
            "rule that asked for it (maintenance: the maintenance mode).", labels=("action", "rule"))
        for labels, count in metrics._fault_series.items():
            faults.add_metric(labels, count.value)
        yield faults
        cumulative = 0
        buckets = []
        for bound, in_bucket in zip((*LATENCY_BUCKETS, float("inf")), metrics._latency_counts, strict=True):
            cumulative += in_bucket
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            self._names[2], "Time from a request's last byte in to its response's last byte out, "
            "injected delays included.", buckets=buckets, sum_value=metrics._latency_sum)


class SwitchMetrics:
    """Counters, a latency histogram and the open-connection gauge of one switch."""

    def __init__(self, namespace: str = "iso_switch") -> None:
        self.registry = CollectorRegistry()
        self._message_series: dict[tuple[str, str], _Count] = {}
        self._fault_series: dict[tuple[str, str], _Count] = {}
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket (not cumulative), +Inf last
        self._latency_sum = 0.0
        self.registry.register(_HotCollector(self, namespace))
        self._connections_open = Gauge(
            "connections_open", "Terminal connections currently open.", namespace=namespace, registry=self.registry,
        )
        self._connections_total = Counter(
            "connections", "Terminal connections accepted since start.", namespace=namespace, registry=self.registry,
        )
        self._held = Gauge(
            "held_requests", "Requests parked by a hold fault, waiting for a release through the admin API.",
            namespace=namespace, registry=self.registry,
        )
        self._message_children: dict[tuple[str, str | None], _Count] = {}  # raw labels -> their series
        self._fault_children: dict[tuple[str, str], _Count] = {}
        self._open = 0

    # -- hot path -------------------------------------------------------------------------------

    def message(self, mti: str, response_code: str | None) -> None:
        """One request handled: its MTI and the response code sent (None: it was not answered)."""
        child = self._message_children.get((mti, response_code))
        if child is None:
            child = self._message_child(mti, response_code)
        child.value += 1

    def fault(self, action: str, rule: str = "") -> None:
        """One fault action applied (e.g. "delay_request") by the rule with id ``rule`` ("" when not
        known: labelled "unknown")."""
        child = self._fault_children.get((action, rule))
        if child is None:
            child = self._fault_child(action, rule)
        child.value += 1

    def latency(self, seconds: float) -> None:
        """How long one request took, arrival to reply sent (a bucket's bound is inclusive)."""
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def connection_opened(self) -> None:
        self._open += 1
        self._connections_open.inc()
        self._connections_total.inc()

    def connection_closed(self) -> None:
        self._open -= 1
        self._connections_open.dec()

    def held(self, count: int) -> None:
        """Requests held right now (``switch.held``)."""
        self._held.set(count)

    # -- reading --------------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connections open right now (for ``/health``, without parsing the registry)."""
        return self._open

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    # -- label children (first sight of a label combination only) -------------------------------

    @staticmethod
    def _series(series: dict[tuple[str, str], _Count], labels: tuple[str, str]) -> _Count:
        count = series.get(labels)
        if count is None:
            count = series[labels] = _Count()
        return count

    def _message_child(self, mti: str, response_code: str | None) -> _Count:
        mti_label = mti if isinstance(mti, str) and _MTI.fullmatch(mti) else INVALID
        if response_code is None:
            code_label = NO_RESPONSE
        elif isinstance(response_code, str) and _RESPONSE_CODE.fullmatch(response_code):
            code_label = response_code.upper()
        else:
            code_label = INVALID
        if len(self._message_children) >= MAX_SERIES:  # keep counting, in one bounded series
            return self._series(self._message_series, (OTHER, OTHER))
        child = self._series(self._message_series, (mti_label, code_label))
        self._message_children[(mti, response_code)] = child
        return child

    def _fault_child(self, action: str, rule: str) -> _Count:
        label = action if isinstance(action, str) and _ACTION.fullmatch(action) else INVALID
        if rule == "":
            rule_label = UNKNOWN_RULE
        else:
            rule_label = rule if isinstance(rule, str) and _RULE.fullmatch(rule) else INVALID
        if len(self._fault_children) >= MAX_SERIES:
            return self._series(self._fault_series, (OTHER, OTHER))
        child = self._series(self._fault_series, (label, rule_label))
        self._fault_children[(action, rule)] = child
        return child
