"""Clients of the switch's admin API for tests: ``SwitchAdmin`` (blocking) and ``AsyncSwitchAdmin``.

Each endpoint is described once (``_Call``: method, path, body, how to read the answer) and both
clients only send it, so the two cannot drift. Ledger and journal rows come back as the switch's own
record types (``Posting``, ``Settlement``, ``JournalEntry``, ...), so a test reads ``p.reversed``
rather than ``p["reversal_seq"] is not None``. A non-2xx answer raises ``AdminError`` with the
status and the API's ``detail``. The blocking client suits a subprocess switch; a switch in the
test's own Trio loop needs the async one (a blocking call would stall the loop serving it).

Needs httpx (in the ``testing`` extra).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import httpx

from switch.journal import JournalEntry
from switch.ledger_records import BatchSummary, Discrepancy, Posting, Settlement

__all__ = ["AdminError", "AsyncSwitchAdmin", "SwitchAdmin"]

T = TypeVar("T")
R = TypeVar("R")
API = "/api/v1"
DEFAULT_TIMEOUT = 10.0


class AdminError(RuntimeError):
    """The admin API refused a call: ``status`` (e.g. 404, 422) and the API's ``detail``."""

    def __init__(self, method: str, path: str, status: int, detail: Any):
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {path}: {status} {detail}")


def _record(cls: type[R], row: Mapping[str, Any]) -> R:
    """A record dataclass from its JSON form (derived keys such as ``reversed`` dropped)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values = {key: value for key, value in row.items() if key in names}
    if "faults" in values:
        values["faults"] = tuple(values["faults"])
    return cls(**values)


def _rows(key: str, cls: type[R]) -> Callable[[Any], list[R]]:
    return lambda body: [_record(cls, row) for row in body[key]]


def _body(body: Any) -> Any:
    return body


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    accept: tuple[int, ...] = ()  # statuses besides 2xx whose body is an answer (503 from /health)
    text: bool = False  # the answer is text (Prometheus metrics), not JSON

    def read(self, response: httpx.Response) -> T:
        if not (response.is_success or response.status_code in self.accept):
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise AdminError(self.method, self.path, response.status_code, detail)
        return self.parse(response.text if self.text else response.json())


def _query(**values: Any) -> dict[str, Any]:
    """Query parameters that were given (None and False left out, True as "true")."""
    return {key: ("true" if value is True else value) for key, value in values.items()
            if value is not None and value is not False}


class _Endpoints:
    """The endpoints as ``_Call`` values; the clients below run them."""

    @staticmethod
    def health() -> _Call[dict[str, Any]]:
        return _Call("GET", "/health", _body, accept=(503,))

    @staticmethod
    def metrics() -> _Call[str]:
        return _Call("GET", "/metrics", _body, text=True)

    @staticmethod
    def faults() -> _Call[list[dict[str, Any]]]:
        return _Call("GET", f"{API}/faults", lambda body: list(body["rules"]))

    @staticmethod
    def add_fault(rule: Mapping[str, Any]) -> _Call[dict[str, Any]]:
        return _Call("POST", f"{API}/faults", _body, json=dict(rule))

    @staticmethod
    def patch_fault(rule_id: str, changes: Mapping[str, Any]) -> _Call[dict[str, Any]]:
        return _Call("PATCH", f"{API}/faults/{rule_id}", _body, json=dict(changes))

    @staticmethod
    def delete_fault(rule_id: str) -> _Call[dict[str, Any]]:
        return _Call("DELETE", f"{API}/faults/{rule_id}", _body)

    @staticmethod
    def load_scenario(name: str, seed: int | None = None) -> _Call[dict[str, Any]]:
        return _Call("POST", f"{API}/scenario", _body, json={"name": name, **({"seed": seed} if seed is not None
                                                                              else {})})

    @staticmethod
    def reset(what: Literal["faults", "sessions", "all"] = "all") -> _Call[dict[str, Any]]:
        return _Call("POST", f"{API}/reset", _body, json={"what": what})

    @staticmethod
    def maintenance(mode: Literal["off", "refuse", "respond"], code: str | None = None) -> _Call[dict[str, Any]]:
        return _Call("PUT", f"{API}/maintenance", _body, json={"mode": mode, **({"code": code} if code else {})})

    @staticmethod
    def journal(terminal: str | None = None, mti: str | None = None, stan: str | None = None,
                faults: bool = False, unmatched: bool = False, limit: int = 1000) -> _Call[list[JournalEntry]]:
        return _Call("GET", f"{API}/journal", _rows("entries", JournalEntry),
                     params=_query(terminal=terminal, mti=mti, stan=stan, faults=faults, unmatched=unmatched,
                                   limit=limit))

    @staticmethod
    def postings(terminal: str | None = None, batch: str | None = None) -> _Call[list[Posting]]:
        return _Call("GET", f"{API}/ledger/postings", _rows("postings", Posting),
                     params=_query(terminal=terminal, batch=batch))

    @staticmethod
    def batches(terminal: str | None = None) -> _Call[list[BatchSummary]]:
        return _Call("GET", f"{API}/ledger/batches", _rows("batches", BatchSummary), params=_query(terminal=terminal))

    @staticmethod
    def settlements(terminal: str | None = None) -> _Call[list[Settlement]]:
        return _Call("GET", f"{API}/ledger/settlements", _rows("settlements", Settlement),
                     params=_query(terminal=terminal))

    @staticmethod
    def discrepancies(terminal: str | None = None, batch: str | None = None) -> _Call[list[Discrepancy]]:
        return _Call("GET", f"{API}/ledger/discrepancies", _rows("discrepancies", Discrepancy),
                     params=_query(terminal=terminal, batch=batch))

    @staticmethod
    def held() -> _Call[list[dict[str, Any]]]:
        return _Call("GET", f"{API}/held", lambda body: list(body["held"]))

    @staticmethod
    def release_held(held_id: str, outcome: Literal["approve", "decline", "drop"],
                     code: str | None = None) -> _Call[dict[str, Any]]:
        return _Call("POST", f"{API}/held/{held_id}/release", _body,
                     json={"as": outcome, **({"code": code} if code else {})})


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class SwitchAdmin:
    """Blocking admin client: ``SwitchAdmin(switch.admin_url)``; a context manager, or ``close()``."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(token), timeout=timeout)

    def _run(self, call: _Call[T]) -> T:
        return call.read(self._http.request(call.method, call.path, params=call.params, json=call.json))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        """Status, scenario, seed, maintenance, commit lag (a 503 "unhealthy" body is returned too)."""
        return self._run(_Endpoints.health())

    def metrics(self) -> str:
        return self._run(_Endpoints.metrics())

    def faults(self) -> list[dict[str, Any]]:
        return self._run(_Endpoints.faults())

    def add_fault(self, rule: Mapping[str, Any]) -> dict[str, Any]:
        """Install a fault rule (a ``[[fault]]`` table as JSON); it applies from the next message."""
        return self._run(_Endpoints.add_fault(rule))

    def patch_fault(self, rule_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self._run(_Endpoints.patch_fault(rule_id, changes))

    def delete_fault(self, rule_id: str) -> dict[str, Any]:
        return self._run(_Endpoints.delete_fault(rule_id))

    def load_scenario(self, name: str, seed: int | None = None) -> dict[str, Any]:
        return self._run(_Endpoints.load_scenario(name, seed))

    def reset(self, what: Literal["faults", "sessions", "all"] = "all") -> dict[str, Any]:
        return self._run(_Endpoints.reset(what))

    def maintenance(self, mode: Literal["off", "refuse", "respond"], code: str | None = None) -> dict[str, Any]:
        return self._run(_Endpoints.maintenance(mode, code))

    def journal(self, *, terminal: str | None = None, mti: str | None = None, stan: str | None = None,
                faults: bool = False, unmatched: bool = False, limit: int = 1000) -> list[JournalEntry]:
        """The newest ``limit`` frames matching every filter, oldest first (PANs masked)."""
        return self._run(_Endpoints.journal(terminal, mti, stan, faults, unmatched, limit))

    def postings(self, *, terminal: str | None = None, batch: str | None = None) -> list[Posting]:
        return self._run(_Endpoints.postings(terminal, batch))

    def batches(self, *, terminal: str | None = None) -> list[BatchSummary]:
        return self._run(_Endpoints.batches(terminal))

    def settlements(self, *, terminal: str | None = None) -> list[Settlement]:
        return self._run(_Endpoints.settlements(terminal))

    def discrepancies(self, *, terminal: str | None = None, batch: str | None = None) -> list[Discrepancy]:
        return self._run(_Endpoints.discrepancies(terminal, batch))

    def held(self) -> list[dict[str, Any]]:
        return self._run(_Endpoints.held())

    def release_held(self, held_id: str, outcome: Literal["approve", "decline", "drop"],
                     code: str | None = None) -> dict[str, Any]:
        return self._run(_Endpoints.release_held(held_id, outcome, code))


class AsyncSwitchAdmin:
    """The same calls, awaited: for a switch served by the test's own event loop (``iso_switch_trio``)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(token), timeout=timeout)

    async def _run(self, call: _Call[T]) -> T:
        return call.read(await self._http.request(call.method, call.path, params=call.params, json=call.json))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def health(self) -> dict[str, Any]:
        return await self._run(_Endpoints.health())

    async def metrics(self) -> str:
        return await self._run(_Endpoints.metrics())

    async def faults(self) -> list[dict[str, Any]]:
        return await self._run(_Endpoints.faults())

    async def add_fault(self, rule: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run(_Endpoints.add_fault(rule))

    async def patch_fault(self, rule_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run(_Endpoints.patch_fault(rule_id, changes))

    async def delete_fault(self, rule_id: str) -> dict[str, Any]:
        return await self._run(_Endpoints.delete_fault(rule_id))

    async def load_scenario(self, name: str, seed: int | None = None) -> dict[str, Any]:
        return await self._run(_Endpoints.load_scenario(name, seed))

    async def reset(self, what: Literal["faults", "sessions", "all"] = "all") -> dict[str, Any]:
        return await self._run(_Endpoints.reset(what))

    async def maintenance(self, mode: Literal["off", "refuse", "respond"], code: str | None = None) -> dict[str, Any]:
        return await self._run(_Endpoints.maintenance(mode, code))

    async def journal(self, *, terminal: str | None = None, mti: str | None = None, stan: str | None = None,
                      faults: bool = False, unmatched: bool = False, limit: int = 1000) -> list[JournalEntry]:
        return await self._run(_Endpoints.journal(terminal, mti, stan, faults, unmatched, limit))

    async def postings(self, *, terminal: str | None = None, batch: str | None = None) -> list[Posting]:
        return await self._run(_Endpoints.postings(terminal, batch))

    async def batches(self, *, terminal: str | None = None) -> list[BatchSummary]:
        return await self._run(_Endpoints.batches(terminal))

    async def settlements(self, *, terminal: str | None = None) -> list[Settlement]:
        return await self._run(_Endpoints.settlements(terminal))

    async def discrepancies(self, *, terminal: str | None = None, batch: str | None = None) -> list[Discrepancy]:
        return await self._run(_Endpoints.discrepancies(terminal, batch))

    async def held(self) -> list[dict[str, Any]]:
        return await self._run(_Endpoints.held())

    async def release_held(self, held_id: str, outcome: Literal["approve", "decline", "drop"],
                           code: str | None = None) -> dict[str, Any]:
        return await self._run(_Endpoints.release_held(held_id, outcome, code))
