"""The runtime admin API: change faults, scenario and maintenance while the switch runs; read its state.

A FastAPI app (request validation with reasons, an OpenAPI document at ``/openapi.json``, docs at
``/docs``) served by hypercorn's Trio worker inside the switch's own event loop, so handlers and the
message hot path never run concurrently: every endpoint is ``async`` and runs on the loop thread,
and a change is seen by the next message the server reads (the fault engine keeps in-flight
messages on the plan they started with).

Endpoints (JSON): ``GET /health`` (never needs the token, for liveness probes), ``GET /metrics``
(Prometheus text), and under ``/api/v1``: ``/faults`` (GET, POST), ``/faults/{id}`` (GET, PATCH,
DELETE), ``POST /scenario``, ``POST /reset``, ``PUT /maintenance``, ``GET /journal``, ``GET /held``,
``POST /held/{id}/release`` (``switch.admin_held``),
``GET /ledger/postings | batches | discrepancies | settlements``.

Errors: a bad payload is answered 422 with FastAPI's shape, ``{"detail": [{"loc": [...], "msg":
...}]}``, whether pydantic or the fault engine / scenario loader found the problem (their key goes
in ``loc`` after ``"body"``); an unknown fault rule id is 404; a missing or wrong bearer token 401.

Hostile callers: a body over ``MAX_BODY_BYTES`` is 413 before it is read; a ``Host`` header that is
neither an IP address, a localhost name, the listen address nor an ``--admin-allow-host`` name is
421 (a web page cannot reach the API through DNS rebinding); scenario files come only from the
shipped set or ``--scenario-path`` directories, read off the ledger's commit thread.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import trio
from fastapi import Body, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from pydantic import BaseModel, ConfigDict, Field

from switch.admin_held import add_held_routes
from switch.faults import FaultRuleError, parse_fault_rules
from switch.host import HostConfig
from switch.metrics import CONTENT_TYPE, SwitchMetrics
from switch.scenario import MAX_SCENARIO_NAME, Scenario, ScenarioError, load_scenario_within

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from switch.codec import Dialect
    from switch.commit import GroupCommitter
    from switch.faults import FaultEngine, FaultRule
    from switch.held import HeldRequests
    from switch.host import Host
    from switch.journal import Journal
    from switch.ledger import Ledger

__all__ = [
    "API_PREFIX",
    "DEFAULT_ADMIN_PORT",
    "RESTART_ONLY_HOST_SETTINGS",
    "SwitchRuntime",
    "create_admin_app",
    "serve_admin",
]

log = logging.getLogger("switch.admin")

API_PREFIX = "/api/v1"
DEFAULT_ADMIN_PORT = 8584
OPEN_PATHS = frozenset({"/health"})
"""Paths served without the bearer token: liveness probes should not need a secret."""
MAX_BODY_BYTES = 1 << 20
"""Request bodies above 1 MiB are refused (413): a rule or a scenario request is a few hundred bytes."""
LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
"""Host header names always accepted, with any IP address literal (an IP cannot be DNS-rebound)."""
COMMIT_STALL_SECONDS = 10.0
"""``/health`` answers 503 once the oldest row not yet durable has waited this long."""
SCENARIO_LOADS = 2
"""Scenario loads running at once; more wait their turn instead of taking more worker threads."""

RESTART_ONLY_HOST_SETTINGS = frozenset({"family", "signon_required_code"})
"""Host settings a loaded scenario cannot change at runtime: ``Host`` derives state from them when
it is constructed (the dialect family's checks, the "sign on first" code), so replacing its config
would make ``host.config`` say one thing while the host does another. Every other setting is read
from ``host.config`` on each message."""


@dataclasses.dataclass
class SwitchRuntime:
    """Everything the admin API reads or drives in a running switch.

    ``seed`` is the command line's ``--seed`` (None when not given): as at start-up it wins over a
    loaded scenario's seed, so a replay stays a replay. The seed in force is ``faults.seed``.
    ``host_overrides`` are the command line's host settings; as at start-up they win over a
    scenario's ``[host]`` table. ``dialect``, when given, is used to refuse a scenario whose rules
    the dialect cannot carry (as ``build_switch`` does at start-up). ``token`` set: every endpoint
    except ``/health`` needs ``Authorization: Bearer <token>``.
    """

    faults: FaultEngine
    host: Host
    ledger: Ledger
    journal: Journal
    metrics: SwitchMetrics
    dialect_name: str
    scenario: str = "default"
    seed: int | None = None
    token: str | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)
    dialect: Dialect | None = None
    host_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    more_listeners: tuple[tuple[Host, Dialect], ...] = ()
    """The hosts of ``--also-listen`` listeners with their dialects: a scenario or a reset applies
    to every listener, as at start-up."""
    committer: GroupCommitter | None = None
    """The ledger's group committer: ``/health`` reports a commit path that makes no progress."""
    commit_stall_seconds: float = COMMIT_STALL_SECONDS
    scenario_paths: tuple[str, ...] = ()
    """``--scenario-path`` directories: besides shipped names, the API loads ``.toml`` files only here."""
    held: HeldRequests | None = None
    """Requests parked by ``hold`` faults (``GET /api/v1/held``); None: the API lists none."""
    allowed_hosts: tuple[str, ...] = ()
    """``--admin-allow-host`` names accepted in the Host header on top of localhost names, IP
    addresses and the listen address (``serve_admin`` adds the latter)."""

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.host, *(host for host, _ in self.more_listeners))


# ---------------------------------------------------------------------------------------------
# Request bodies (extra keys are refused, so a typo is a 422 naming it rather than ignored)


class ScenarioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_SCENARIO_NAME,
                      description="A shipped scenario name (e.g. 'flaky-network') or a .toml file under a "
                                  "--scenario-path directory.")
    seed: int | None = Field(default=None, gt=-(2**64), lt=2**64,
                             description="Fault RNG seed; default: --seed, else the scenario's.")


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: Literal["faults", "sessions", "all"] = Field(
        description="faults: the fault engine's reset; sessions: every terminal must sign on again; all: both.")


class MaintenanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "refuse", "respond"] = Field(
        description="off; refuse: new connections are closed at once; respond: every request is answered `code`.")
    code: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{2}$",
                             description="Response code in 'respond' mode (e.g. '91'); default: unchanged.")


# ---------------------------------------------------------------------------------------------
# Helpers


def _unprocessable(loc: Sequence[str | int], msg: str, **extra: Any) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(status_code=422, detail=[{"loc": list(loc), "msg": msg, "type": "value_error", **extra}])


def _fault_rule_error(exc: FaultRuleError) -> HTTPException:
    """The engine's ``path`` (``("when", "nth")``; empty for the rule as a whole) becomes ``loc``."""
    return _unprocessable(["body", *exc.path], exc.reason)


def _scenario_error(exc: ScenarioError) -> HTTPException:
    return _unprocessable(["body", "name"], str(exc), file=exc.path, line=exc.line, key=exc.key)


def _find_rule(faults: FaultEngine, rule_id: str) -> FaultRule:
    for rule in faults.rules:
        if rule.id == rule_id:
            return rule
    raise HTTPException(status_code=404, detail=f"no fault rule with id {rule_id!r}")


def _unix_seconds(moment: datetime | None) -> float | None:
    """Journal times are Unix seconds; a query time without a zone is taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _faults_state(faults: FaultEngine) -> dict[str, Any]:
    return {
        "rules": [rule.to_dict() for rule in faults.rules],
        "maintenance": {"mode": faults.maintenance, "code": faults.maintenance_code},
        "seed": faults.seed,
        "counters": faults.counters(),
    }


def _host_config_for(runtime: SwitchRuntime, current: HostConfig, scenario: Scenario
                     ) -> tuple[HostConfig, dict[str, Any], dict[str, str]]:
    """The host config a scenario asks for, what of it changes now, and what must wait for a restart.

    Built as at start-up: the family's defaults, then the scenario's ``[host]``, then the command
    line's settings; so loading "healthy" after "system-timeout" undoes the latter's settings.
    Raises ValueError when the combination is not a valid configuration.
    """
    wanted = HostConfig(family=current.family, **{**scenario.host, **runtime.host_overrides})
    applied: dict[str, Any] = {}
    not_applied: dict[str, str] = {}
    keep: dict[str, Any] = {}
    for spec in dataclasses.fields(HostConfig):
        name = spec.name
        old, new = getattr(current, name), getattr(wanted, name)
        if old == new:
            continue
        if name == "signon_required_code" and wanted.signon_code == current.signon_code:
            applied[name] = new  # same code in force, only spelled differently (explicit vs default)
        elif name in RESTART_ONLY_HOST_SETTINGS:
            keep[name] = old
            not_applied[name] = (f"wants {new!r}, keeps {old!r}: the host fixes this setting when it starts; "
                                 "restart the switch with this scenario to apply it")
        else:
            applied[name] = new
    return dataclasses.replace(wanted, **keep), applied, not_applied


def _host_name(value: bytes) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-case."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    name, _, port = text.rpartition(":")
    return (name if name and port.isdigit() else text).rstrip(".")  # "localhost." is localhost


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _Guard:
    """ASGI middleware run before anything else: the Host header check and the body cap.

    Host: a browser page on ``evil.example`` that rebinds its name to 127.0.0.1 sends
    ``Host: evil.example``; refusing names we were not told about (421) stops it reaching the API.
    Body: refused from its ``Content-Length`` at once, and counted as it streams otherwise, so a
    100 MB body is never buffered (at most ``MAX_BODY_BYTES`` are).
    """

    def __init__(self, app: ASGIApp, runtime: SwitchRuntime) -> None:
        self.app = app
        self.runtime = runtime

    def _host_allowed(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        hosts = [value for name, value in headers if name == b"host"]
        if len(hosts) != 1:
            return False
        name = _host_name(hosts[0])
        allowed = {*LOCAL_HOST_NAMES, *(host.lower() for host in self.runtime.allowed_hosts)}
        return _is_ip(name) or name in allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if not self._host_allowed(headers):
            response = JSONResponse({"detail": "Host header not allowed (use localhost or an IP address, "
                                               "or start the switch with --admin-allow-host NAME)"}, status_code=421)
            await response(scope, receive, send)
            return
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if declared is not None and (not declared.strip().isdigit() or int(declared) > MAX_BODY_BYTES):
            await self._too_large(scope, receive, send)
            return
        # read the body here, at most the cap (FastAPI would buffer it all anyway), then replay it
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        await response(scope, receive, send)


class _BearerAuth:
    """ASGI middleware: with ``runtime.token`` set, every path but ``OPEN_PATHS`` needs the bearer token.

    A middleware rather than a FastAPI dependency so that ``/openapi.json``, ``/docs`` and
    ``/metrics`` are covered too. The token is read per request, so it can be changed at runtime.
    """

    def __init__(self, app: ASGIApp, runtime: SwitchRuntime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.runtime.token
        if token and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
                    break
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), token.encode()):
                reason = "missing bearer token" if not given else "wrong bearer token"
                response = JSONResponse({"detail": reason}, status_code=401,
                                        headers={"WWW-Authenticate": 'Bearer realm="iso-switch admin"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# The app


def create_admin_app(runtime: SwitchRuntime) -> FastAPI:
    """The admin API over ``runtime``; serve it with ``serve_admin`` or call it with any ASGI client."""
    app = FastAPI(
        title="iso-switch admin API",
        description="Change the emulator's faults, scenario and maintenance mode at runtime; read its journal, "
                    "ledger and metrics. Changes apply to the next message. With a token configured, send "
                    "`Authorization: Bearer <token>` to every endpoint but /health.",
        version="1",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(_BearerAuth, runtime=runtime)
    app.add_middleware(_Guard, runtime=runtime)  # added last: runs first
    api = API_PREFIX
    # scenario loads read files in worker threads: a limiter of their own, so however many callers
    # send loads, they never take the threads that others (the ledger's flushes) need
    scenario_loads = trio.CapacityLimiter(SCENARIO_LOADS)

    # -- health and metrics ------------------------------------------------------------------

    @app.get("/health", tags=["status"], responses={503: {"description": "The commit path is stalled"}})
    async def health() -> JSONResponse:
        """Liveness and the switch's mode; open without the token.

        503 with ``problems`` when approvals cannot go out: the oldest ledger row not yet durable has
        waited over ``commit_stall_seconds``, or the group committer stopped with rows pending.
        """
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
        body: dict[str, Any] = {
            "status": "unhealthy" if problems else "ok",
            "uptime_seconds": round(time.monotonic() - runtime.started, 3),
            "connections_open": runtime.metrics.open_connections,
            "dialect": runtime.dialect_name,
            "scenario": runtime.scenario,
            "seed": faults.seed,
            "maintenance": faults.maintenance,
            "commit_lag_seconds": round(commit_age, 3),
        }
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/metrics", tags=["status"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        """Messages by MTI and response code, faults applied, latency histogram, open connections."""
        return Response(content=runtime.metrics.render(), media_type=CONTENT_TYPE)

    # -- fault rules ---------------------------------------------------------------------------

    @app.get(f"{api}/faults", tags=["faults"])
    async def list_faults() -> dict[str, Any]:
        """Every fault rule in evaluation order, maintenance mode, the seed in force and the counters."""
        return _faults_state(runtime.faults)

    @app.post(f"{api}/faults", tags=["faults"], status_code=201)
    async def add_fault(table: Annotated[dict[str, Any], Body(
            description="One fault rule, written as a scenario's [[fault]] table in JSON.")]) -> dict[str, Any]:
        """Add a fault rule; it applies from the next message."""
        try:
            rule = runtime.faults.add(table)
        except FaultRuleError as exc:
            raise _fault_rule_error(exc) from None
        log.info("admin: fault rule %s added", rule.id)
        return rule.to_dict()

    @app.get(f"{api}/faults/{{rule_id}}", tags=["faults"])
    async def get_fault(rule_id: str) -> dict[str, Any]:
        return _find_rule(runtime.faults, rule_id).to_dict()

    @app.patch(f"{api}/faults/{{rule_id}}", tags=["faults"])
    async def patch_fault(rule_id: str, changes: Annotated[dict[str, Any], Body(
            description="Keys of the rule to replace, as in a [[fault]] table.")]) -> dict[str, Any]:
        """Change some keys of a rule; messages already in flight keep the plan they started with."""
        rule = _find_rule(runtime.faults, rule_id)
        try:
            patched = runtime.faults.patch(rule.id, changes)
        except FaultRuleError as exc:
            raise _fault_rule_error(exc) from None
        except KeyError:  # deleted meanwhile (cannot happen on one loop, but the engine has the last word)
            raise HTTPException(status_code=404, detail=f"no fault rule with id {rule_id!r}") from None
        log.info("admin: fault rule %s patched: %s", rule.id, ", ".join(sorted(changes)))
        return patched.to_dict()

    @app.delete(f"{api}/faults/{{rule_id}}", tags=["faults"])
    async def delete_fault(rule_id: str) -> dict[str, Any]:
        rule = _find_rule(runtime.faults, rule_id)
        try:
            runtime.faults.delete(rule.id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no fault rule with id {rule_id!r}") from None
        log.info("admin: fault rule %s deleted", rule.id)
        return {"deleted": rule.to_dict()}

    # -- scenario, reset, maintenance ----------------------------------------------------------

    @app.post(f"{api}/scenario", tags=["control"])
    async def load(request: ScenarioRequest) -> dict[str, Any]:
        """Load a scenario: its response rules, fault rules and the host settings that can change at runtime.

        Everything is validated before anything changes: a bad scenario leaves the switch as it was.
        """
        try:
            # reading and parsing a file is blocking work: keep it off the loop the terminals use,
            # on threads of its own (see scenario_loads)
            scenario = await trio.to_thread.run_sync(load_scenario_within, request.name, runtime.scenario_paths,
                                                     limiter=scenario_loads)
            for dialect in (runtime.dialect, *(dialect for _, dialect in runtime.more_listeners)):
                if dialect is not None:
                    scenario.check_dialect(dialect)
            rules = parse_fault_rules(scenario)
        except ScenarioError as exc:
            raise _scenario_error(exc) from None
        try:
            # one config per listener (families differ); the main listener's changes are reported
            configs = [_host_config_for(runtime, host.config, scenario) for host in runtime.hosts]
        except ValueError as exc:
            raise _unprocessable(["body", "name"], f"{scenario.name}: [host]: {exc}") from None
        seed = next((s for s in (request.seed, runtime.seed, scenario.seed) if s is not None), None)

        # parse_fault_rules checked everything load() would (ids unique); nothing below can fail
        runtime.faults.load(rules, seed=seed)
        for host, (config, _, _) in zip(runtime.hosts, configs, strict=True):
            host.rules = scenario.response_rules or None
            host.config = config
        _, applied, not_applied = configs[0]
        runtime.scenario = scenario.name
        log.info("admin: scenario %s loaded (%d response rules, %d fault rules, seed %s)",
                 scenario.name, len(scenario.response_rules), len(rules), runtime.faults.seed)
        return {
            "scenario": scenario.name,
            "path": scenario.path,
            "seed": runtime.faults.seed,
            "response_rules": len(scenario.response_rules),
            "fault_rules": [rule.to_dict() for rule in runtime.faults.rules],
            "host": {"applied": applied, "not_applied": not_applied},
        }

    @app.post(f"{api}/reset", tags=["control"])
    async def reset(request: ResetRequest) -> dict[str, Any]:
        """Reset the fault engine, the sign-on sessions, or both. The ledger is never touched."""
        result: dict[str, Any] = {"reset": request.what}
        if request.what in ("faults", "all"):
            runtime.faults.reset()
            result["faults"] = _faults_state(runtime.faults)
        if request.what in ("sessions", "all"):
            result["sessions_cleared"] = sum(len(host.sessions) for host in runtime.hosts)
            for host in runtime.hosts:
                host.reset_sessions()
        log.info("admin: reset %s", request.what)
        return result

    @app.put(f"{api}/maintenance", tags=["control"])
    async def maintenance(request: MaintenanceRequest) -> dict[str, Any]:
        """Maintenance mode: refuse new connections, or answer every request with one code (91 by default)."""
        faults = runtime.faults
        if request.code is not None:
            faults.maintenance_code = request.code.upper()
        faults.maintenance = request.mode
        log.info("admin: maintenance %s (code %s)", faults.maintenance, faults.maintenance_code)
        return {"mode": faults.maintenance, "code": faults.maintenance_code}

    add_held_routes(app, runtime)

    # -- journal and ledger ----------------------------------------------------------------------

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
            raise _unprocessable(["query", "since"], "since is after until")
        entries = runtime.journal.query(terminal=terminal, mti=mti, stan=stan, since=start, until=end,
                                        faults_only=faults, unmatched=unmatched, limit=limit)
        return {"count": len(entries), "entries": [entry.as_dict() for entry in entries]}  # PANs masked

    @app.get(f"{api}/ledger/postings", tags=["read"])
    async def postings(terminal: str | None = None, batch: Annotated[str | None, Query(pattern=r"^[0-9]{6}$")] = None
                       ) -> dict[str, Any]:
        """Every financial request the host decided, approved or declined."""
        rows = runtime.ledger.postings(terminal=terminal, batch=batch)
        return {"count": len(rows), "postings": [row.as_dict() for row in rows]}

    @app.get(f"{api}/ledger/batches", tags=["read"])
    async def batches(terminal: str | None = None) -> dict[str, Any]:
        """Batch totals per terminal (net of reversals: what settlement compares)."""
        rows = runtime.ledger.batches(terminal=terminal)
        return {"count": len(rows), "batches": [row.as_dict() for row in rows]}

    @app.get(f"{api}/ledger/discrepancies", tags=["read"])
    async def discrepancies(terminal: str | None = None,
                            batch: Annotated[str | None, Query(pattern=r"^[0-9]{6}$")] = None) -> dict[str, Any]:
        """Differences between uploaded batches and the ledger, found when settling after an upload."""
        rows = runtime.ledger.discrepancies(terminal=terminal, batch=batch)
        return {"count": len(rows), "discrepancies": [row.as_dict() for row in rows]}

    @app.get(f"{api}/ledger/settlements", tags=["read"])
    async def settlements(terminal: str | None = None) -> dict[str, Any]:
        rows = runtime.ledger.settlements(terminal=terminal)
        return {"count": len(rows), "settlements": [row.as_dict() for row in rows]}

    return app


# ---------------------------------------------------------------------------------------------
# Serving


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_of(bind: str) -> int:
    """The port of a hypercorn bind report such as ``http://127.0.0.1:41234`` or ``http://[::1]:41234``."""
    return int(bind.rsplit(":", 1)[1])


async def serve_admin(runtime: SwitchRuntime, host: str = "127.0.0.1", port: int = DEFAULT_ADMIN_PORT, *,
                      shutdown: trio.Event | None = None,
                      task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin API on ``host:port`` until cancelled or ``shutdown`` is set (then gracefully).

    Reports the bound port through ``task_status`` (``port=0`` picks a free one): hypercorn reports
    the addresses its sockets actually got, so no port is guessed. A port that cannot be bound (in
    use, no such address) raises a plain OSError.
    """
    config = HypercornConfig()
    config.bind = [_bind_address(host, port)]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 2.0
    if host not in ("", "0.0.0.0", "::") and host not in runtime.allowed_hosts:
        runtime.allowed_hosts = (*runtime.allowed_hosts, host)  # the name it was told to listen on
    # FastAPI is an ASGI 3 app; hypercorn types scopes as TypedDicts, Starlette as plain mappings,
    # so the two signatures differ only in precision: tell mypy, and tell hypercorn not to guess
    app = cast("ASGIFramework", create_admin_app(runtime))
    trigger = shutdown.wait if shutdown is not None else None
    bound: int | None = None
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(hypercorn_serve, app, config, shutdown_trigger=trigger,
                                                           mode="asgi"))
            bound = _port_of(binds[0])  # hypercorn has logged "Running on ..." to our logger
            task_status.started(bound)
    except BaseExceptionGroup as group:
        # hypercorn binds inside its nurseries, so "address in use" arrives wrapped in groups; callers
        # (the CLI) should see the plain OSError they can report in one line
        leaves = _leaves(group)
        if bound is None and len(leaves) == 1 and isinstance(leaves[0], OSError):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
