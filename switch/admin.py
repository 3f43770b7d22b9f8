"""The runtime admin API: change faults, scenario and maintenance while the switch runs; read its state.

A FastAPI app (request validation with reasons, an OpenAPI document at ``/openapi.json``, docs at
``/docs``) served by hypercorn's Trio worker inside the switch's own event loop, so handlers and the
message hot path never run concurrently: every endpoint is ``async`` and runs on the loop thread,
and a change is seen by the next message the server reads (the fault engine keeps in-flight
messages on the plan they started with).

This module builds the app and serves it; the routes live by job in ``switch.admin_read`` (``GET
/health`` never needs the token; ``/metrics``; journal; ledger), ``switch.admin_control`` (faults,
scenario, seed, reset, maintenance), ``switch.admin_held`` (held requests), ``switch.admin_live``
(the journal as a server-sent event stream, the health history) and ``switch.admin_console`` (the
QA console at ``/``, Swagger UI at ``/docs`` served from the package, message descriptions,
terminal pages). ``switch.admin_guard`` holds the middlewares.

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
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import trio
from fastapi import FastAPI
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from switch.admin_console import add_console_routes
from switch.admin_control import RESTART_ONLY_HOST_SETTINGS, add_control_routes
from switch.admin_guard import MAX_BODY_BYTES, OPEN_PATHS, BearerAuth, Guard
from switch.admin_held import add_held_routes
from switch.admin_live import HealthHistory, add_live_routes
from switch.admin_read import add_read_routes
from switch.exception_groups import leaves as exception_leaves
from switch.metrics import SwitchMetrics

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

    from switch.codec import Dialect
    from switch.commit import GroupCommitter
    from switch.faults import FaultEngine
    from switch.held import HeldRequests
    from switch.host import Host
    from switch.journal import Journal
    from switch.ledger import Ledger
    from switch.server_terminals import TerminalOwner

__all__ = [
    "API_PREFIX",
    "DEFAULT_ADMIN_PORT",
    "MAX_BODY_BYTES",
    "OPEN_PATHS",
    "RESTART_ONLY_HOST_SETTINGS",
    "SwitchRuntime",
    "create_admin_app",
    "serve_admin",
]

log = logging.getLogger("switch.admin")

API_PREFIX = "/api/v1"
DEFAULT_ADMIN_PORT = 8584
COMMIT_STALL_SECONDS = 10.0
"""``/health`` answers 503 once the oldest row not yet durable has waited this long."""


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
    owner: TerminalOwner | None = None
    """Multi-instance mode: the terminal owner; ``/health`` reports its terminals and a lost lock session."""
    """The ledger's group committer: ``/health`` reports a commit path that makes no progress."""
    commit_stall_seconds: float = COMMIT_STALL_SECONDS
    scenario_paths: tuple[str, ...] = ()
    """``--scenario-path`` directories: besides shipped names, the API loads ``.toml`` files only here."""
    held: HeldRequests | None = None
    """Requests parked by ``hold`` faults (``GET /api/v1/held``); None: the API lists none."""
    allowed_hosts: tuple[str, ...] = ()
    """``--admin-allow-host`` names accepted in the Host header on top of localhost names, IP
    addresses and the listen address (``serve_admin`` adds the latter)."""
    listeners: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every bound terminal address (host, port, dialect, tls), set by ``Switch.run`` once bound:
    ``/health`` lists them so a client can tell whether this admin API belongs to its switch."""
    history: HealthHistory = dataclasses.field(default_factory=HealthHistory)
    """Messages/s, latency and connections sampled once a second while ``serve_admin`` runs (the
    console's health chart)."""

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.host, *(host for host, _ in self.more_listeners))


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
        docs_url=None,  # served by switch.admin_console from the package: no CDN on an offline lab network
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(BearerAuth, runtime=runtime)
    app.add_middleware(Guard, runtime=runtime)  # added last: runs first
    add_read_routes(app, runtime, API_PREFIX)
    add_control_routes(app, runtime, API_PREFIX)
    add_held_routes(app, runtime, API_PREFIX)
    add_live_routes(app, runtime, API_PREFIX)
    add_console_routes(app, runtime, API_PREFIX)
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
    if host not in ("", "0.0.0.0", "::") and host not in runtime.allowed_hosts:
        runtime.allowed_hosts = (*runtime.allowed_hosts, host)  # the name it was told to listen on
    # FastAPI is an ASGI 3 app; hypercorn types scopes as TypedDicts, Starlette as plain mappings,
    # so the two signatures differ only in precision: tell mypy, and tell hypercorn not to guess
    app = cast("ASGIFramework", create_admin_app(runtime))
    await serve_asgi(app, host, port, shutdown=shutdown, task_status=task_status,
                     beside=partial(runtime.history.run, runtime.metrics, shutdown))


async def serve_asgi(app: ASGIFramework, host: str, port: int, *, shutdown: trio.Event | None = None,
                     beside: Callable[[], Awaitable[object]] | None = None,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` with hypercorn on ``host:port`` until cancelled or ``shutdown`` is set (then
    gracefully), ``beside`` running next to it once bound; reports the bound port. Shared by the admin
    API and the ``--workers`` supervisor's endpoint."""
    config = HypercornConfig()
    config.bind = [_bind_address(host, port)]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 2.0
    trigger = shutdown.wait if shutdown is not None else None
    bound: int | None = None
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(hypercorn_serve, app, config, shutdown_trigger=trigger,
                                                           mode="asgi"))
            bound = _port_of(binds[0])  # hypercorn has logged "Running on ..." to our logger
            if beside is not None:
                nursery.start_soon(beside)
            task_status.started(bound)
    except BaseExceptionGroup as group:
        # hypercorn binds inside its nurseries, so "address in use" arrives wrapped in groups; callers
        # (the CLI) should see the plain OSError they can report in one line
        leaves = exception_leaves(group)
        if bound is None and len(leaves) == 1 and isinstance(leaves[0], OSError):
            raise leaves[0] from None
        raise
