"""Live views for the QA console: the journal as a server-sent event stream, and a health history.

The stream polls the journal's in-memory ring through its public ``query`` (no hook in the hot path:
a console that nobody opens costs nothing) and sends each new entry once, then sends an entry
again when it changes (a request becomes matched when its response goes out, or a dropped response
adds faults and a note). ``fetch`` with a bearer header reads it as well as ``EventSource`` does.

The history samples the Prometheus counters once a second into a bounded ring, so the console can
draw messages/s and mean latency over the last minutes without keeping anything per message.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import trio
from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse

if TYPE_CHECKING:
    from switch.admin import SwitchRuntime
    from switch.journal import Journal, JournalEntry
    from switch.metrics import SwitchMetrics

POLL_SECONDS = 0.25
"""How often a stream looks at the ring: well under a human's notice, a few cheap scans a second."""
BATCH = 200
"""Newest entries a poll reads; more new ones than this between polls are announced as a gap. Each
new entry is formatted (masked) on the event loop: 200 of them took ~25 ms on a busy 2-core machine."""
BUSY_POLL_SECONDS = 1.0
"""After a gap (a load test, not something a person reads frame by frame) the stream polls once a
second, so a console left open costs a loaded switch a few percent of its loop, not ten."""
TRACKED = 2_000
"""Entries a stream remembers to notice their later changes (matched, faults, note)."""
KEEPALIVE_SECONDS = 15.0
STREAM_MAX_SECONDS = 3_600.0
"""A stream ends after an hour; the console reconnects with ``after`` so nothing is missed."""
HISTORY_SECONDS = 600
"""Samples kept: ten minutes at one a second."""


def _signature(entry: JournalEntry) -> tuple[Any, ...]:
    """What can change in an entry after it was first sent (the rest of it is fixed)."""
    data = entry.as_dict()
    return data["matched"], tuple(data["faults"]), data["note"], tuple(data.get("rules") or ())


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


class JournalFollower:
    """One stream's view of the ring: which entries it has sent, and how they looked then. Pure, no I/O."""

    def __init__(self, after: int) -> None:
        self.last_seq = after
        self._sent: OrderedDict[int, tuple[Any, ...]] = OrderedDict()

    def poll(self, journal: Journal) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """New entries, changed entries and whether new entries were skipped (more than ``BATCH``)."""
        entries = journal.query(limit=BATCH)
        new: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        gap = bool(entries) and entries[0].seq > self.last_seq + 1 and len(entries) == BATCH
        for entry in entries:
            signature = _signature(entry)
            if entry.seq > self.last_seq:
                new.append(entry.as_dict())
                self.last_seq = entry.seq
            elif self._sent.get(entry.seq, signature) != signature:
                changed.append(entry.as_dict())
            else:
                continue
            self._sent[entry.seq] = signature
            self._sent.move_to_end(entry.seq)
        while len(self._sent) > TRACKED:
            self._sent.popitem(last=False)
        return new, changed, gap


async def journal_events(journal: Journal, after: int, *, poll: float = POLL_SECONDS,
                         busy_poll: float = BUSY_POLL_SECONDS, max_seconds: float = STREAM_MAX_SECONDS
                         ) -> AsyncIterator[bytes]:
    """Server-sent events: ``entry`` (new), ``update`` (changed), ``gap`` (skipped), comments as keep-alives."""
    follower = JournalFollower(after)
    started = last_write = trio.current_time()
    yield b"retry: 1000\n\n"
    while trio.current_time() - started < max_seconds:
        new, changed, gap = follower.poll(journal)
        if gap:
            yield _event("gap", {"before": new[0]["seq"] if new else follower.last_seq})
        for data in new:
            yield _event("entry", data)
        for data in changed:
            yield _event("update", data)
        now = trio.current_time()
        if new or changed or gap:
            last_write = now
        elif now - last_write >= KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"
            last_write = now
        await trio.sleep(busy_poll if gap else poll)
    yield _event("end", {"after": follower.last_seq})


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counters at one moment (Unix seconds)."""

    time: float
    messages: float
    latency_sum: float
    latency_count: float
    connections: int


def take_sample(metrics: SwitchMetrics, now: float | None = None) -> Sample:
    """Read the totals from the Prometheus registry (public API; the hot path is not touched)."""
    messages = latency_sum = latency_count = 0.0
    for metric in metrics.registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_messages_total"):
                messages += sample.value
            elif sample.name.endswith("_request_latency_seconds_sum"):
                latency_sum += sample.value
            elif sample.name.endswith("_request_latency_seconds_count"):
                latency_count += sample.value
    return Sample(time.time() if now is None else now, messages, latency_sum, latency_count,
                  metrics.open_connections)


class HealthHistory:
    """The last ``HISTORY_SECONDS`` samples, and the per-interval rates the chart draws."""

    def __init__(self, size: int = HISTORY_SECONDS) -> None:
        self.samples: deque[Sample] = deque(maxlen=size)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    async def run(self, metrics: SwitchMetrics, shutdown: trio.Event | None = None, interval: float = 1.0) -> None:
        """Sample every ``interval`` seconds until cancelled or ``shutdown`` is set."""
        while shutdown is None or not shutdown.is_set():
            self.add(take_sample(metrics))
            await trio.sleep(interval)

    def series(self, latest: Sample | None = None) -> list[dict[str, Any]]:
        """One point per interval: messages/s, mean latency (ms, None without replies), connections."""
        samples = list(self.samples)
        if latest is not None and (not samples or latest.time > samples[-1].time):
            samples.append(latest)
        points = []
        for before, after in itertools.pairwise(samples):
            elapsed = after.time - before.time
            if elapsed <= 0:
                continue  # a wall clock stepped back: no rate for this interval
            replies = after.latency_count - before.latency_count
            latency = (after.latency_sum - before.latency_sum) / replies * 1000 if replies > 0 else None
            points.append({
                "time": after.time,
                "messages_per_second": round(max(0.0, after.messages - before.messages) / elapsed, 3),
                "latency_ms": None if latency is None or not math.isfinite(latency) else round(latency, 3),
                "connections": after.connections,
            })
        return points


def add_live_routes(app: FastAPI, runtime: SwitchRuntime, api: str) -> None:
    """Register ``GET {api}/journal/stream`` and ``GET {api}/health/history``."""

    @app.get(f"{api}/journal/stream", tags=["read"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-sent events: entry, update, gap, end"}})
    async def journal_stream(after: Annotated[int, Query(ge=-1, description="Send entries after this seq; "
                                                         "-1: only those journaled from now on.")] = 0
                             ) -> StreamingResponse:
        """Journal entries as they are recorded (PANs masked), then their changes; filter on the client."""
        if after < 0:
            newest = runtime.journal.query(limit=1)
            after = newest[0].seq if newest else 0
        return StreamingResponse(journal_events(runtime.journal, after), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get(f"{api}/health/history", tags=["status"])
    async def health_history() -> dict[str, Any]:
        """Messages/s, mean latency and open connections per second over the last minutes."""
        points = runtime.history.series(take_sample(runtime.metrics))
        return {"interval_seconds": 1, "window_seconds": HISTORY_SECONDS, "points": points}
