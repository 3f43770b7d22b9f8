"""Admin API routes that read the switch: health, metrics, the journal and the ledger."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import trio
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response

from switch.admin_control import unprocessable
from switch.ledger import Ledger
from switch.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from switch.admin import SwitchRuntime


def _unix_seconds(moment: datetime | None) -> float | None:
    """Journal times are Unix seconds; a query time without a zone is taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@asynccontextmanager
async def ledger_view(ledger: Ledger, terminal: str | None) -> AsyncIterator[Ledger]:
    """The ledger to read from: the switch's own, or — for a multi-instance ledger, which holds only
    the terminals this instance owns — a replay of what the database has committed (in a worker
    thread; one terminal's rows when the request names one)."""
    if not ledger.multi_instance:
        yield ledger
        return
    view = await trio.to_thread.run_sync(ledger.database_view, terminal)
    try:
        yield view
    finally:
        await trio.to_thread.run_sync(view.close)


def health_body(runtime: SwitchRuntime) -> tuple[dict[str, Any], int]:
    """``/health``'s answer and status: 503 with ``problems`` when approvals cannot go out."""
    faults = runtime.faults
    problems: list[str] = []
    committer = runtime.committer
    commit_age = 0.0
    if committer is not None:
        commit_age = committer.uncommitted_age()
        if commit_age > runtime.commit_stall_seconds:
            problems.append(f"commit path stalled: the oldest uncommitted ledger row has waited "
                            f"{commit_age:.1f} s (limit {runtime.commit_stall_seconds:g} s)")
        elif commit_age and not committer.running:
            problems.append("commit path stopped: ledger rows are pending and the group committer is not running")
    owner = runtime.owner
    if owner is not None and owner.failure is not None:
        problems.append(f"multi-instance: {owner.failure}")
    body: dict[str, Any] = {
        "status": "unhealthy" if problems else "ok",
        "uptime_seconds": round(time.monotonic() - runtime.started, 3),
        "connections_open": runtime.metrics.open_connections,
        "dialect": runtime.dialect_name,
        "scenario": runtime.scenario,
        "seed": faults.seed,
        "maintenance": faults.maintenance,
        "commit_lag_seconds": round(commit_age, 3),
        "listeners": runtime.listeners,
    }
    if owner is not None:  # multi-instance: which terminals this instance decides for, how often they moved
        body["terminals"] = {"owned": len(runtime.ledger.owned_terminals()), "acquired": owner.stats.acquired,
                             "busy": owner.stats.busy, "released": owner.stats.released}
    if problems:
        body["problems"] = problems
    return body, 503 if problems else 200


def add_read_routes(app: FastAPI, runtime: SwitchRuntime, api: str) -> None:
    """Register ``/health``, ``/metrics``, the journal and the ledger endpoints."""

    @app.get("/health", tags=["status"], responses={503: {"description": "The commit path is stalled"}})
    async def health() -> JSONResponse:
        """Liveness and the switch's mode; open without the token.

        503 with ``problems`` when approvals cannot go out: the oldest ledger row not yet durable has
        waited over ``commit_stall_seconds``, or the group committer stopped with rows pending.
        """
        body, status = health_body(runtime)
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", tags=["status"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        """Messages by MTI and response code, faults applied, latency histogram, open connections."""
        return Response(content=runtime.metrics.render(), media_type=CONTENT_TYPE)


    @app.get(f"{api}/journal", tags=["read"])
    async def journal(
        terminal: Annotated[str | None, Query(min_length=1, max_length=16,
                                              description="Field 41; trailing spaces ignored.")] = None,
        mti: Annotated[str | None, Query(pattern=r"^[0-9]{4}$")] = None,
        stan: Annotated[str | None, Query(pattern=r"^[0-9]{1,6}$", description="Field 11; leading zeros optional.")
                        ] = None,
        since: Annotated[datetime | None, Query(description="ISO 8601 or Unix seconds; no zone = UTC.")] = None,
        until: Annotated[datetime | None, Query(description="ISO 8601 or Unix seconds; no zone = UTC.")] = None,
        faults: Annotated[bool, Query(description="Only entries with a fault applied.")] = False,
        unmatched: Annotated[bool, Query(description="Only requests never answered / replies never matched.")
                             ] = False,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        """The newest ``limit`` journal entries matching every filter given, oldest first."""
        start, end = _unix_seconds(since), _unix_seconds(until)
        if start is not None and end is not None and start > end:
            raise unprocessable(["query", "since"], "since is after until")
        entries = runtime.journal.query(terminal=terminal, mti=mti, stan=stan, since=start, until=end,
                                        faults_only=faults, unmatched=unmatched, limit=limit)
        return {"count": len(entries), "entries": [entry.as_dict() for entry in entries]}  # PANs masked

    @app.get(f"{api}/ledger/postings", tags=["read"])
    async def postings(terminal: str | None = None, batch: Annotated[str | None, Query(pattern=r"^[0-9]{6}$")] = None
                       ) -> dict[str, Any]:
        """Every financial request the host decided, approved or declined."""
        async with ledger_view(runtime.ledger, terminal) as ledger:
            rows = ledger.postings(terminal=terminal, batch=batch)
        return {"count": len(rows), "postings": [row.as_dict() for row in rows]}

    @app.get(f"{api}/ledger/batches", tags=["read"])
    async def batches(terminal: str | None = None) -> dict[str, Any]:
        """Batch totals per terminal (net of reversals: what settlement compares)."""
        async with ledger_view(runtime.ledger, terminal) as ledger:
            rows = ledger.batches(terminal=terminal)
        return {"count": len(rows), "batches": [row.as_dict() for row in rows]}

    @app.get(f"{api}/ledger/discrepancies", tags=["read"])
    async def discrepancies(terminal: str | None = None,
                            batch: Annotated[str | None, Query(pattern=r"^[0-9]{6}$")] = None) -> dict[str, Any]:
        """Differences between uploaded batches and the ledger, found when settling after an upload."""
        async with ledger_view(runtime.ledger, terminal) as ledger:
            rows = ledger.discrepancies(terminal=terminal, batch=batch)
        return {"count": len(rows), "discrepancies": [row.as_dict() for row in rows]}

    @app.get(f"{api}/ledger/settlements", tags=["read"])
    async def settlements(terminal: str | None = None) -> dict[str, Any]:
        async with ledger_view(runtime.ledger, terminal) as ledger:
            rows = ledger.settlements(terminal=terminal)
        return {"count": len(rows), "settlements": [row.as_dict() for row in rows]}

