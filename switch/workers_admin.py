"""The one admin endpoint of ``serve --workers N``: every worker's admin API behind one port.

Each worker serves its own admin API on a free loopback port; the supervisor serves this one on
``--admin-host``/``--admin-port`` and asks the workers (plain HTTP on 127.0.0.1, a worker thread per
call, so no client library is needed):

* ``GET /health``: every worker's ``/health`` with its number, pid, admin port and restarts; 200 only
  when every worker is up and healthy, else 503 naming the problems.
* ``GET /metrics``: every worker's metrics with a ``worker="<n>"`` label on each sample, each metric
  family once (HELP/TYPE, then the samples of all workers), so Prometheus reads one valid exposition.
* Any other GET: worker ``?worker=N`` (default: the first one up) answers; the reply names it in
  ``X-Iso-Worker``. The journal and held requests are per worker; the ledger is the same everywhere.
* Changes (POST, PUT, PATCH, DELETE: faults, scenario, maintenance, seed, reset, held releases) fan
  out to every worker up. All answer alike: that answer. Some succeed and the rest answer 404 (a held
  request lives in one worker): the success. Otherwise 502 with each worker's status and body.
  ``X-Iso-Workers`` lists each worker's status. Every change all workers accepted is replayed, in
  order, to a worker that is restarted (not held-request releases: those requests died with it).
* ``GET /api/v1/journal/stream``: every worker's live journal merged into one stream, each entry
  tagged with its worker and numbered so that no two workers' entries share a ``seq``
  (``switch.workers_stream``); ``GET /api/v1/journal/{seq}`` takes such a number to its worker.

The Host check and the body cap run here (``switch.admin_guard.Guard``); the bearer token is checked
by the workers, which get the same ``--admin-token`` and receive the caller's Authorization header.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import trio

from switch.admin import serve_asgi
from switch.admin_guard import Guard
from switch.workers_stream import STREAM_PATH, entry_target, retag_entry_answer, stream_journal

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework
    from starlette.types import Receive, Scope, Send

    from switch.workers import Workers, WorkerState

__all__ = ["Change", "merge_metrics", "replay_changes", "serve_workers_admin"]

log = logging.getLogger("switch.workers")

CALL_TIMEOUT = 10.0
"""Seconds one call to a worker's admin API may take."""
RESET_TIMEOUT = 120.0
"""... and a reset: a multi-instance sessions reset takes stored sessions over chunk by chunk."""
FORWARDED_HEADERS = frozenset({"authorization", "content-type", "accept"})
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_REPLAYED = ("/api/v1/held/",)
"""Changes a restarted worker must not get again: a held request lived in the worker that died."""
RESET_PATH = "/api/v1/reset"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Straight to the worker on loopback, whatever ``http_proxy`` says."""
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)$")


@dataclass(frozen=True, slots=True)
class Answer:
    worker: int
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Change:
    """An admin change every worker accepted: replayed, in order, to a worker that is restarted."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


async def replay_changes(state: WorkerState, changes: list[Change]) -> list[str]:
    """Send a restarted worker the changes made since start; the ones it refused, one line each."""
    refused = []
    assert state.admin_port is not None
    for change in list(changes):
        answer = await trio.to_thread.run_sync(_call, state.admin_port, change.method, change.target, change.headers,
                                               change.body, state.index, abandon_on_cancel=True)
        if not 200 <= answer.status < 300:
            refused.append(f"{change.method} {change.target}: {answer.status}")
    return refused


def _call(port: int, method: str, target: str, headers: dict[str, str], body: bytes, worker: int) -> Answer:
    """One HTTP request to a worker's admin API (worker thread); 502 when it cannot be reached."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{target}", data=body or None, method=method,
                                     headers=headers)
    try:
        timeout = RESET_TIMEOUT if target.startswith(RESET_PATH) else CALL_TIMEOUT
        with _OPENER.open(request, timeout=timeout) as response:
            return Answer(worker, response.status, response.headers.get("content-type", ""), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(worker, exc.code, exc.headers.get("content-type", ""), exc.read())
    except (OSError, ValueError) as exc:
        detail = json.dumps({"detail": f"worker {worker} unreachable: {exc}"}).encode()
        return Answer(worker, 502, "application/json", detail)


def merge_metrics(texts: Iterable[tuple[int, str]]) -> str:
    """Prometheus text expositions of several workers as one: a ``worker`` label on every sample and
    each family's HELP/TYPE once, followed by the samples of every worker (an exposition may not
    split a family)."""
    order: list[str] = []
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in texts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in headers:
                        order.append(family)
                        headers[family], samples[family] = [], []
                    if line not in headers[family]:
                        headers[family].append(line)
                continue
            found = _SAMPLE.match(line)
            if found is None:
                continue
            name, labels, rest = found.groups()
            label = f'worker="{worker}"'
            labelled = f"{name}{{{label},{labels[1:]}" if labels and labels != "{}" else f"{name}{{{label}}}"
            key = family if family in samples else name
            if key not in samples:
                order.append(key)
                headers[key], samples[key] = [], []
            samples[key].append(labelled + rest)
    lines: list[str] = []
    for family in order:
        lines += headers[family] + samples[family]
    return "\n".join(lines) + "\n"


class WorkersAdmin:
    """The ASGI app (see the module docstring); ``token``/``allowed_hosts`` feed ``Guard``."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.token: str | None = workers.options.admin_token
        self.allowed_hosts: tuple[str, ...] = tuple(workers.options.admin_allow_hosts)

    def _up(self) -> list[WorkerState]:
        return [state for state in self.workers.workers if state.alive]

    async def _ask(self, states: list[WorkerState], method: str, target: str, headers: dict[str, str],
                   body: bytes) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(states)

        async def one(position: int, state: WorkerState) -> None:
            assert state.admin_port is not None
            answers[position] = await trio.to_thread.run_sync(_call, state.admin_port, method, target, headers, body,
                                                              state.index, abandon_on_cancel=True)

        async with trio.open_nursery() as nursery:
            for position, state in enumerate(states):
                nursery.start_soon(one, position, state)
        return [answer for answer in answers if answer is not None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
                   if name.decode("latin-1").lower() in FORWARDED_HEADERS}
        if path == STREAM_PATH and method == "GET":
            async def refuse(status: int, payload: bytes) -> None:
                await _send_whole(send, status, "application/json", payload, {}, method)

            await stream_journal(self.workers, query, headers, receive, send, refuse)
            return
        status, content_type, payload, extra = await self._answer(method, path, query, headers, body)
        await _send_whole(send, status, content_type, payload, extra, method)

    async def _answer(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
                      ) -> tuple[int, str, bytes, dict[str, str]]:
        up = self._up()
        if path == "/health" and method in ("GET", "HEAD"):
            return self._health(await self._ask(up, "GET", "/health", headers, b""))
        if not up:
            return _json(503, {"detail": "no worker is up"})
        target = path + (f"?{query}" if query else "")
        if path == "/metrics" and method in ("GET", "HEAD"):
            answers = await self._ask(up, "GET", target, headers, b"")
            failed = [a for a in answers if a.status != 200]
            if failed:
                return failed[0].status, failed[0].content_type, failed[0].body, {}
            merged = merge_metrics((a.worker, a.body.decode("utf-8", "replace")) for a in answers)
            return 200, answers[0].content_type, merged.encode(), {}
        if method in CHANGING:
            answers = await self._ask(up, method, target, headers, body)
            combined = self._combined(answers)
            if path == RESET_PATH and 200 <= combined[0] < 300:
                combined = _merged_reset(answers, combined)
            replayed = _replayed_body(path, body)
            if 200 <= combined[0] < 300 and replayed is not None:
                self.workers.changes.append(Change(method, target, headers, replayed))  # for restarted workers
            return combined
        target_of = entry_target(path, self.workers.workers) if method == "GET" and "worker=" not in query else None
        if isinstance(target_of, str):
            return _json(404, {"detail": target_of})
        if target_of is not None:  # a seq of the merged journal stream: its worker, its own seq
            state, local, life = target_of
            answer = (await self._ask([state], method, local + (f"?{query}" if query else ""), headers, body))[0]
            payload = retag_entry_answer(answer.body, state.index, life) if answer.status == 200 else answer.body
            return answer.status, answer.content_type, payload, {"X-Iso-Worker": str(answer.worker)}
        chosen = self._chosen(up, query)
        if chosen is None:
            return _json(404, {"detail": "no such worker up; see /health for their numbers"})
        answer = (await self._ask([chosen], method, target, headers, body))[0]
        return answer.status, answer.content_type, answer.body, {"X-Iso-Worker": str(answer.worker)}

    @staticmethod
    def _chosen(up: list[WorkerState], query: str) -> WorkerState | None:
        wanted = urllib.parse.parse_qs(query).get("worker")
        if not wanted:
            return up[0]
        return next((state for state in up if str(state.index) == wanted[0]), None)

    def _health(self, answers: list[Answer]) -> tuple[int, str, bytes, dict[str, str]]:
        by_worker = {answer.worker: answer for answer in answers}
        entries: list[dict[str, Any]] = []
        problems: list[str] = []
        for state in self.workers.workers:
            entry: dict[str, Any] = {"worker": state.index, "pid": state.pid, "admin_port": state.admin_port,
                                     "restarts": state.restarts}
            answer = by_worker.get(state.index)
            if answer is None:
                entry["status"] = "down"
                problems.append(f"worker {state.index} is not running")
            else:
                try:
                    entry["health"] = json.loads(answer.body)
                except ValueError:
                    entry["health"] = {"detail": answer.body.decode("utf-8", "replace")}
                entry["status"] = "ok" if answer.status == 200 else "unhealthy"
                if answer.status != 200:
                    problems.append(f"worker {state.index}: health {answer.status}")
            entries.append(entry)
        body: dict[str, Any] = {"status": "unhealthy" if problems else "ok", "port": self.workers.port,
                                "workers": entries}
        if problems:
            body["problems"] = problems
        return _json(503 if problems else 200, body)

    @staticmethod
    def _combined(answers: list[Answer]) -> tuple[int, str, bytes, dict[str, str]]:
        statuses = {"X-Iso-Workers": ",".join(f"{a.worker}={a.status}" for a in answers)}
        ok = [a for a in answers if 200 <= a.status < 300]
        if len({a.status for a in answers}) == 1 or (ok and all(a in ok or a.status == 404 for a in answers)):
            first = ok[0] if ok else answers[0]
            return first.status, first.content_type, first.body, statuses
        details = [{"worker": a.worker, "status": a.status, "body": a.body.decode("utf-8", "replace")[:2000]}
                   for a in answers]
        status, kind, payload, _ = _json(502, {"detail": "the workers answered differently", "workers": details})
        return status, kind, payload, statuses


def _replayed_body(path: str, body: bytes) -> bytes | None:
    """What a restarted worker gets again of this change (None: nothing). A sessions reset is not
    replayed: sessions are shared ledger rows, and a reset replayed hours later would end the sessions
    of every terminal signed on since; of ``{"what": "all"}`` only the fault part is replayed."""
    if path.startswith(NOT_REPLAYED):
        return None
    if path != RESET_PATH:
        return body
    try:
        what = json.loads(body).get("what")
    except (ValueError, AttributeError):
        return None
    if what == "faults":
        return body
    return b'{"what": "faults"}' if what == "all" else None


def _merged_reset(answers: list[Answer], combined: tuple[int, str, bytes, dict[str, str]]
                  ) -> tuple[int, str, bytes, dict[str, str]]:
    """One answer for a reset every worker did: sessions ended by all of them, and kept only the
    terminals NO worker could end (each worker lists those another one serves, including its peers)."""
    try:
        bodies = [json.loads(answer.body) for answer in answers]
    except ValueError:
        return combined
    if not all(isinstance(body, dict) and "sessions_cleared" in body for body in bodies):
        return combined
    merged = dict(bodies[0])
    merged["sessions_cleared"] = sum(int(body["sessions_cleared"]) for body in bodies)
    if all("sessions_kept" in body for body in bodies):
        kept = set(bodies[0]["sessions_kept"])
        for body in bodies[1:]:
            kept &= set(body["sessions_kept"])
        merged["sessions_kept"] = sorted(kept)
    status, kind, payload, _ = _json(combined[0], merged)
    return status, kind, payload, combined[3]


async def _send_whole(send: Send, status: int, content_type: str, payload: bytes, extra: dict[str, str],
                      method: str) -> None:
    headers = [(b"content-type", content_type.encode("latin-1") or b"application/json"),
               (b"content-length", str(len(payload)).encode())]
    headers += [(name.encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload if method != "HEAD" else b""})


def _json(status: int, body: Any) -> tuple[int, str, bytes, dict[str, str]]:
    return status, "application/json", json.dumps(body).encode(), {}


async def serve_workers_admin(workers: Workers, host: str, port: int, *,
                              task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the aggregated admin endpoint until cancelled; reports the bound port. A port that cannot
    be bound raises a plain OSError."""
    admin = WorkersAdmin(workers)
    if host not in ("", "0.0.0.0", "::") and host not in admin.allowed_hosts:
        admin.allowed_hosts = (*admin.allowed_hosts, host)
    await serve_asgi(cast("ASGIFramework", Guard(cast("Any", admin), admin)), host, port, task_status=task_status)
