"""Prometheus metrics for the switch, rendered by the admin API's ``/metrics``.

The server calls these methods on its hot path, once or twice per message, so each call is a dict
look-up plus an increment: labelled children are created once and cached here rather than through
``Counter.labels()`` (which validates and locks on every call).

Every ``SwitchMetrics`` owns its own ``CollectorRegistry`` instead of prometheus_client's global
one: two switches in one process (tests, the benchmark) must not share or collide on series.

Label values come from the wire (a client chooses its MTIs), so they are normalised and the number
of distinct series is capped: a client sending garbage MTIs cannot grow the registry without bound.
"""

from __future__ import annotations

import re
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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


class SwitchMetrics:
    """Counters, a latency histogram and the open-connection gauge of one switch."""

    def __init__(self, namespace: str = "iso_switch") -> None:
        self.registry = CollectorRegistry()
        self._messages = Counter(
            "messages", "Requests handled, by request MTI and the response code sent (none: not answered).",
            ("mti", "response_code"), namespace=namespace, registry=self.registry,
        )
        self._faults = Counter(
            "faults_applied", "Fault actions applied to messages or connections, by action.",
            ("action",), namespace=namespace, registry=self.registry,
        )
        self._latency = Histogram(
            "request_latency_seconds", "Time from a request's last byte in to its response's last byte out, "
            "injected delays included.",
            namespace=namespace, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
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
        self._message_children: dict[tuple[str, str | None], Counter] = {}
        self._fault_children: dict[str, Counter] = {}
        self._open = 0

    # -- hot path -------------------------------------------------------------------------------

    def message(self, mti: str, response_code: str | None) -> None:
        """One request handled: its MTI and the response code sent (None: it was not answered)."""
        child = self._message_children.get((mti, response_code))
        if child is None:
            child = self._message_child(mti, response_code)
        child.inc()

    def fault(self, action: str) -> None:
        """One fault action applied (e.g. "delay", "drop-response")."""
        child = self._fault_children.get(action)
        if child is None:
            child = self._fault_child(action)
        child.inc()

    def latency(self, seconds: float) -> None:
        """How long one request took, arrival to reply sent."""
        self._latency.observe(seconds)

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

    def _message_child(self, mti: str, response_code: str | None) -> Counter:
        mti_label = mti if isinstance(mti, str) and _MTI.fullmatch(mti) else INVALID
        if response_code is None:
            code_label = NO_RESPONSE
        elif isinstance(response_code, str) and _RESPONSE_CODE.fullmatch(response_code):
            code_label = response_code.upper()
        else:
            code_label = INVALID
        if len(self._message_children) >= MAX_SERIES:  # keep counting, in one bounded series
            return self._messages.labels(mti=OTHER, response_code=OTHER)
        child = self._messages.labels(mti=mti_label, response_code=code_label)
        self._message_children[(mti, response_code)] = child
        return child

    def _fault_child(self, action: str) -> Counter:
        label = action if isinstance(action, str) and _ACTION.fullmatch(action) else INVALID
        if len(self._fault_children) >= MAX_SERIES:
            return self._faults.labels(action=OTHER)
        child = self._faults.labels(action=label)
        self._fault_children[action] = child
        return child
