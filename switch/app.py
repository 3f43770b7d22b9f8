"""Assembles a switch from command-line choices: dialect, framing, scenario, ledger, server.

Kept apart from the click layer so tests and the benchmark build exactly what ``iso-switch serve``
runs, without parsing arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
import trio

from switch.admin import SwitchRuntime, serve_admin
from switch.codec import Codec, Dialect
from switch.codec.framing import Framing
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.journal import Journal
from switch.ledger import Ledger
from switch.metrics import SwitchMetrics
from switch.scenario import Scenario, default_scenario, load_scenario
from switch.server import ServerConfig, SwitchServer, run_until_signalled

APP_NAME = "iso8583-switch-emulator"


def default_ledger_path() -> Path:
    """Per-user data directory, so the ledger survives restarts without any flag."""
    return Path(platformdirs.user_data_dir(APP_NAME)) / "ledger.sqlite"


@dataclass
class SwitchOptions:
    host: str = "127.0.0.1"
    port: int = 8583
    ledger: str | os.PathLike[str] | None = None  # None: default_ledger_path(); ":memory:" allowed
    scenario: str | None = None
    seed: int | None = None
    require_signon: bool | None = None  # None: scenario / default decides
    idle_timeout: float | None = 300.0
    grace_period: float = 5.0
    host_overrides: dict[str, object] = field(default_factory=dict)
    journal: str | os.PathLike[str] | None = None  # None: journal.jsonl beside the ledger file; "none": memory only
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 8584  # None: no admin API
    admin_token: str | None = None


def resolve_ledger_path(option: str | os.PathLike[str] | None) -> str:
    if option is None:
        path = default_ledger_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)
    if str(option) != ":memory:":
        Path(option).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return str(option)


def resolve_journal_path(option: str | os.PathLike[str] | None, ledger_path: str) -> str | None:
    """The journal file: given, beside a file ledger, or none (memory ring only)."""
    if option is not None:
        return None if str(option).lower() == "none" else str(option)
    if ledger_path == ":memory:":
        return None
    return str(Path(ledger_path).parent / "journal.jsonl")


@dataclass
class Switch:
    """A configured switch: the TCP server plus what the admin API drives."""

    server: SwitchServer
    runtime: SwitchRuntime
    scenario: Scenario
    options: SwitchOptions
    journal_path: str | None

    async def run(self, *, task_status: trio.TaskStatus[tuple[list[trio.SocketListener], int | None]]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGINT/SIGTERM: listeners, journal writer and admin API in one nursery.

        On the signal the server drains (grace period) and closes the ledger; then the journal
        writes what is queued and the admin API stops.
        """
        async with trio.open_nursery() as nursery:
            if self.server.journal is not None:
                await nursery.start(self.server.journal.run)
            admin_port = None
            if self.options.admin_port is not None:
                admin_port = await nursery.start(serve_admin, self.runtime, self.options.admin_host,
                                                 self.options.admin_port)
            async with trio.open_nursery() as serving:
                listeners = await serving.start(run_until_signalled, self.server)
                task_status.started((listeners, admin_port))
            # drained and the ledger closed: the journal writer flushes as it is cancelled
            nursery.cancel_scope.cancel()
        if self.server.journal is not None:
            self.server.journal.close()  # anything recorded after the writer stopped, then the file


def build_switch(dialect: Dialect, framing: Framing, options: SwitchOptions) -> Switch:
    """Everything ``serve`` needs, wired together; raises the loaders' typed errors on bad input."""
    scenario = load_scenario(options.scenario) if options.scenario else default_scenario()
    scenario.check_dialect(dialect)
    cli_overrides = dict(options.host_overrides)
    if options.require_signon is not None:
        cli_overrides["require_signon"] = options.require_signon
    config = HostConfig.for_dialect(dialect, **{**scenario.host, **cli_overrides})
    faults = FaultEngine.from_scenario(scenario, seed=options.seed)
    ledger_path = resolve_ledger_path(options.ledger)
    ledger = Ledger.open(ledger_path)
    host = Host(config, ledger, scenario.response_rules)
    codec = Codec(dialect)
    journal_path = resolve_journal_path(options.journal, ledger_path)
    journal = Journal(codec, path=journal_path)
    metrics = SwitchMetrics()
    server = SwitchServer(
        codec=codec, framing=framing, host=host, ledger=ledger, committer=GroupCommitter(ledger),
        config=ServerConfig(host=options.host, port=options.port, idle_timeout=options.idle_timeout,
                            grace_period=options.grace_period),
        faults=faults, journal=journal, metrics=metrics,
    )
    runtime = SwitchRuntime(faults=faults, host=host, ledger=ledger, journal=journal, metrics=metrics,
                            dialect_name=dialect.name, scenario=scenario.name, seed=options.seed,
                            token=options.admin_token, dialect=dialect, host_overrides=cli_overrides)
    return Switch(server, runtime, scenario, options, journal_path)
