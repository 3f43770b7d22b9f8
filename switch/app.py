"""Assembles a switch from command-line choices: dialect, framing, scenario, ledger, server.

Kept apart from the click layer so tests and the benchmark build exactly what ``iso-switch serve``
runs, without parsing arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from switch.codec import Codec, Dialect
from switch.codec.framing import Framing
from switch.commit import GroupCommitter
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import Scenario, default_scenario, load_scenario
from switch.server import ServerConfig, SwitchServer

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


def resolve_ledger_path(option: str | os.PathLike[str] | None) -> str:
    if option is None:
        path = default_ledger_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)
    if str(option) != ":memory:":
        Path(option).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return str(option)


def build_switch(dialect: Dialect, framing: Framing, options: SwitchOptions) -> tuple[SwitchServer, Scenario]:
    """Everything ``serve`` needs, wired together; raises the loaders' typed errors on bad input."""
    scenario = load_scenario(options.scenario) if options.scenario else default_scenario()
    scenario.check_dialect(dialect)
    overrides = {**scenario.host, **options.host_overrides}
    if options.require_signon is not None:
        overrides["require_signon"] = options.require_signon
    config = HostConfig.for_dialect(dialect, **overrides)
    ledger = Ledger.open(resolve_ledger_path(options.ledger))
    host = Host(config, ledger, scenario.response_rules)
    server = SwitchServer(
        codec=Codec(dialect), framing=framing, host=host, ledger=ledger, committer=GroupCommitter(ledger),
        config=ServerConfig(host=options.host, port=options.port, idle_timeout=options.idle_timeout,
                            grace_period=options.grace_period),
    )
    return server, scenario
