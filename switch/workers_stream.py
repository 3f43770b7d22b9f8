"""The live journal of ``serve --workers N`` as ONE server-sent event stream, at the supervisor's
``/api/v1/journal/stream``: every worker's stream (``switch.admin_live``) followed at once and merged.

**Numbering.** Each worker numbers its journal from 1 (again after a restart), so the merged stream
gives every entry a number no other worker's entry has, and the QA console (which keys its rows by
``seq``) works unchanged::

    seq = (worker * LIFE_SPAN + restarts % LIFE_SPAN) * SEQ_SPAN + the worker's own seq

and adds ``worker`` and ``worker_seq`` (the worker's own number) to the entry; ``request_seq`` and a
gap's ``before`` are numbered the same way. ``GET /api/v1/journal/{seq}`` at the supervisor takes such
a number back to its worker (``entry_target``). ``after`` (what the console sends when it reconnects:
the highest ``seq`` it got) resumes each worker where it can be told (``upstream_after``): the worker
that number belongs to exactly, workers numbered above it from their oldest entry in memory, workers
below it from "now" (a console that reconnects misses what those journaled while it was away).

**Structure.** One nursery per client: a follower task per worker (an ``httpx`` stream to the
worker's own admin port, on loopback), the client's writer, and a watcher of the client's
disconnect that cancels everything. A follower whose stream breaks (the worker died, its stream ended
after an hour) connects again with backoff (``BACKOFF_FIRST`` doubling to ``BACKOFF_MAX``), to the
worker's new admin port once it was restarted (it then starts from that worker's first entry), and
gives up after ``MAX_RECONNECTS`` failures in a row. Besides the journal's ``entry``, ``update``, ``gap``
and ``end``, the stream says ``worker`` events: ``{"worker": n, "status": "joined" | "left" | "lost",
"restarts": r}`` (a console that does not know them ignores them).

Filters: ``worker=N`` follows that worker alone; every other query parameter goes to the workers as
given. A worker that refuses the request (401 without the right token, 422 for a bad parameter) makes
the supervisor answer with that status before the stream starts.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import trio

from switch.admin_live import KEEPALIVE_SECONDS

if TYPE_CHECKING:
    from starlette.types import Receive, Send

    from switch.workers import Workers, WorkerState

__all__ = ["LIFE_SPAN", "SEQ_SPAN", "SseParser", "entry_target", "merged_seq", "retag", "split_seq",
           "stream_journal", "upstream_after"]

log = logging.getLogger("switch.workers")

STREAM_PATH = "/api/v1/journal/stream"
SEQ_SPAN = 10**9
"""Entries one worker life may journal before its numbers would run into the next life's."""
LIFE_SPAN = 1000
"""Restarts of one worker told apart (then they wrap); the merged numbers stay below 2**53, as exact
JavaScript numbers, for worker numbers below 9000."""
MAX_RECONNECTS = 30
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0
"""Seconds between a follower's tries: 0.25 doubling to 5, so 30 tries span ~2.5 minutes, more than
a worker takes to be restarted (``switch.workers.START_TIMEOUT``)."""
HANDSHAKE_SECONDS = 10.0
"""How long the stream waits for every worker's first answer before it starts without the slow ones."""
MERGED_STREAM_MAX_SECONDS = 86_400.0
"""The merged stream ends after a day (each worker's own stream ends hourly and is resumed inside): a
client reconnecting with ``after`` resumes exactly only for the worker that numbered it, so the
merged stream is kept open as long as a bound allows rather than an hour."""
READ_TIMEOUT = 2 * KEEPALIVE_SECONDS + 10.0
"""A worker's stream silent this long (it sends a keep-alive every 15 s) is taken as broken."""
BUFFER = 256
"""Events queued between the followers and the client; a slow client holds the followers back."""
_ENTRY_PATH = re.compile(r"^/api/v1/journal/(\d+)$")


# -- numbering (pure) ----------------------------------------------------------------------------------


def merged_seq(worker: int, life: int, seq: int) -> int:
    """The number of a worker's entry on the merged stream (module docstring)."""
    return (worker * LIFE_SPAN + life % LIFE_SPAN) * SEQ_SPAN + seq


def split_seq(merged: int) -> tuple[int, int, int] | None:
    """(worker, life, the worker's seq) of a merged number; None for a number below every merged one."""
    if merged < LIFE_SPAN * SEQ_SPAN:
        return None
    base, seq = divmod(merged, SEQ_SPAN)
    worker, life = divmod(base, LIFE_SPAN)
    return worker, life, seq


def upstream_after(after: int, worker: int, life: int) -> int:
    """The ``after`` to ask a worker (in its life ``life``) for, from a client's merged ``after``."""
    if after < 0:
        return -1  # only what is journaled from now on, as at a worker
    first = merged_seq(worker, life, 0)
    if after < first:
        return 0  # the client has seen nothing of this worker's life
    if after < first + SEQ_SPAN:
        return after - first
    return -1  # the client saw later workers only: its place in this one is unknown


def retag(kind: str, data: Any, worker: int, life: int) -> Any:
    """A worker's event as the merged stream says it: numbers merged, the worker named."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if kind in ("entry", "update") and isinstance(data.get("seq"), int):
        data["worker_seq"] = data["seq"]
        data["seq"] = merged_seq(worker, life, data["seq"])
        if isinstance(data.get("request_seq"), int):
            data["request_seq"] = merged_seq(worker, life, data["request_seq"])
    elif kind == "gap" and isinstance(data.get("before"), int):
        data["before"] = merged_seq(worker, life, data["before"])
    data["worker"] = worker
    return data


def event_bytes(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


@dataclass
class SseParser:
    """Server-sent events from lines (without their newline): ``feed`` returns (kind, data) when a
    blank line ends an event with data; comments (keep-alives) and ``retry`` give nothing."""

    kind: str = "message"
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> tuple[str, str] | None:
        if line == "":
            event = (self.kind, "\n".join(self.data)) if self.data else None
            self.kind, self.data = "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        return None


def entry_target(path: str, workers: list[WorkerState]) -> tuple[WorkerState, str, int] | str | None:
    """``GET /api/v1/journal/{merged seq}``: (the worker, its path, the life) to ask; a reason (str)
    when the entry's worker life is over; None when the path is not a merged number (ask as before)."""
    found = _ENTRY_PATH.match(path)
    parts = split_seq(int(found.group(1))) if found else None
    if parts is None:
        return None
    worker, life, seq = parts
    state = next((item for item in workers if item.index == worker), None)
    if state is None or not state.alive:
        return f"journal entry {found.group(1) if found else path}: worker {worker} is not up"
    if state.restarts % LIFE_SPAN != life:
        return (f"journal entry {found.group(1) if found else path}: it was journaled by worker {worker} "
                "before its restart; read its journal file")
    return state, f"/api/v1/journal/{seq}", life


def retag_entry_answer(body: bytes, worker: int, life: int) -> bytes:
    """A worker's ``GET /journal/{seq}`` answer with its entries numbered as on the merged stream."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or not isinstance(data.get("entry"), dict):
        return body
    data["entry"] = retag("entry", data["entry"], worker, life)
    data["related"] = [{**item, "entry": retag("entry", item["entry"], worker, life)}
                       for item in data.get("related") or [] if isinstance(item, dict) and "entry" in item]
    return json.dumps(data).encode()


# -- the stream (Trio) ---------------------------------------------------------------------------------


@dataclass
class _Follower:
    """One worker's side of a client's stream."""

    state: WorkerState
    first: trio.Event = field(default_factory=trio.Event)
    refused: tuple[int, bytes] | None = None  # the worker's answer when it was not a stream


class _MergedStream:
    def __init__(self, states: list[WorkerState], after: int, params: list[tuple[str, str]],
                 headers: dict[str, str]) -> None:
        self.followers = [_Follower(state) for state in states]
        self.after = after
        self.params = params
        self.headers = headers
        self.sent_max = max(after, 0)
        self.send_events, self.events = trio.open_memory_channel[bytes](BUFFER)
        self.lost = 0  # followers that gave up: when all have, the stream ends
        self.all_lost = trio.Event()

    async def follow(self, follower: _Follower, client: httpx.AsyncClient) -> None:
        """Relay one worker's stream, reconnecting with backoff (bounded), rejoining after a restart."""
        state = follower.state
        life: int | None = None
        local_after = 0
        failures = 0
        joined = False
        while failures < MAX_RECONNECTS:
            port, restarts = state.admin_port, state.restarts % LIFE_SPAN
            if not state.alive or port is None:
                follower.first.set()
                failures += 1
                await trio.sleep(_backoff(failures))
                continue
            if restarts != life:  # first connection, or the worker was restarted: start of its new journal
                local_after = upstream_after(self.after, state.index, restarts) if life is None else 0
                life = restarts
            query = urllib.parse.urlencode([*self.params, ("after", str(local_after))])
            try:
                async with client.stream("GET", f"http://127.0.0.1:{port}{STREAM_PATH}?{query}",
                                         headers=self.headers) as response:
                    if response.status_code != 200:
                        body = await response.aread()
                        if not follower.first.is_set() and 400 <= response.status_code < 500:
                            follower.refused = (response.status_code, body)
                            follower.first.set()
                            return
                        raise httpx.HTTPStatusError(f"status {response.status_code}", request=response.request,
                                                    response=response)
                    follower.first.set()
                    failures = 0
                    if not joined:
                        joined = True
                        await self._say(state, "joined")
                    local_after, ended = await self._relay(response, state.index, life, local_after)
                    if ended:
                        continue  # the worker's stream ended on time: at once, where it stopped
            except (httpx.HTTPError, OSError) as exc:
                log.debug("journal stream of worker %d: %s", state.index, exc)
            follower.first.set()
            failures += 1
            if joined:
                joined = False
                await self._say(state, "left")
            await trio.sleep(_backoff(failures))
        await self._say(state, "lost")
        self.lost += 1
        if self.lost == len(self.followers):
            self.all_lost.set()

    async def _say(self, state: WorkerState, status: str) -> None:
        await self.send_events.send(event_bytes("worker", {"worker": state.index, "status": status,
                                                            "restarts": state.restarts}))

    async def _relay(self, response: httpx.Response, worker: int, life: int, local_after: int) -> tuple[int, bool]:
        """Forward a worker's events until its stream ends: the last seq of it seen (to resume after),
        and whether it ended as streams do after an hour (``end``) rather than broke off."""
        parser = SseParser()
        async for line in response.aiter_lines():
            event = parser.feed(line)
            if event is None:
                continue
            kind, text = event
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if kind == "end":  # the worker's stream ends after an hour: go on where it stopped
                if isinstance(data, dict) and isinstance(data.get("after"), int):
                    local_after = max(local_after, data["after"])
                return local_after, True
            if kind == "entry" and isinstance(data, dict) and isinstance(data.get("seq"), int):
                local_after = max(local_after, data["seq"])
            tagged = retag(kind, data, worker, life)
            if kind == "entry" and isinstance(tagged, dict):
                self.sent_max = max(self.sent_max, tagged["seq"])
            await self.send_events.send(event_bytes(kind, tagged))
        return local_after, False


def _backoff(failures: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 10))


Answer = Callable[[int, bytes], Awaitable[None]]


async def stream_journal(workers: Workers, query: str, headers: dict[str, str], receive: Receive, send: Send,
                         answer: Answer, *, max_seconds: float = MERGED_STREAM_MAX_SECONDS) -> None:
    """Serve one client's merged stream (module docstring); ``answer(status, json body)`` refuses it."""
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    after_values = [value for name, value in params if name == "after"]
    wanted = [value for name, value in params if name == "worker"]
    passed = [(name, value) for name, value in params if name not in ("after", "worker")]
    try:
        after = int(after_values[-1]) if after_values else 0
        if after < -1:
            raise ValueError
    except ValueError:
        await answer(422, json.dumps({"detail": "after: must be an integer >= -1"}).encode())
        return
    states = [state for state in workers.workers if not wanted or str(state.index) == wanted[-1]]
    if not states:
        await answer(404, json.dumps({"detail": "no such worker; see /health for their numbers"}).encode())
        return
    if not any(state.alive for state in states):
        await answer(503, json.dumps({"detail": "no worker is up"}).encode())
        return
    merged = _MergedStream(states, after, passed, {k: v for k, v in headers.items() if k.lower() == "authorization"})
    refused: tuple[int, bytes] | None = None
    timeout = httpx.Timeout(5.0, read=READ_TIMEOUT)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client, trio.open_nursery() as nursery:
        for follower in merged.followers:
            nursery.start_soon(merged.follow, follower, client)
        with trio.move_on_after(HANDSHAKE_SECONDS):
            for follower in merged.followers:
                await follower.first.wait()
        refused = next((f.refused for f in merged.followers if f.refused is not None), None)
        if refused is None:
            await _pump(merged, receive, send, nursery, max_seconds)
        nursery.cancel_scope.cancel()
    if refused is not None:
        await answer(*refused)


async def _pump(merged: _MergedStream, receive: Receive, send: Send, nursery: trio.Nursery, max_seconds: float
                ) -> None:
    """Write the merged events to the client until it goes away or ``max_seconds`` pass (then ``end``)."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]})
    await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        nursery.cancel_scope.cancel()  # every follower's upstream stream with it

    async def ended_when_all_lost() -> None:
        await merged.all_lost.wait()
        pump.cancel()  # no worker to follow any more: say ``end`` rather than keep-alives for hours

    nursery.start_soon(disconnected)
    nursery.start_soon(ended_when_all_lost)
    with trio.move_on_after(max_seconds) as pump:
        while True:
            with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
                chunk = await merged.events.receive()
            await send({"type": "http.response.body", "more_body": True,
                        "body": b": keep-alive\n\n" if idle.cancelled_caught else chunk})
    await send({"type": "http.response.body", "body": event_bytes("end", {"after": merged.sent_max}),
                "more_body": False})
