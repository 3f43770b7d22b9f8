"""A switch under test, two ways: a subprocess (``start_process_switch``) or inside the test's own Trio
loop (``run_switch``). Both give ``host``, ``port``, ``admin_url``, the dialect and framing a
terminal needs, the ledger and journal as records, and the assertions of ``switch.testkit.checks``.

The subprocess is ``iso-switch serve`` exactly as users start it (``switch.testing.SwitchProcess``):
the most faithful, and usable from any test, sync or async. The in-process switch is assembled by
``switch.app.build_switch`` — what ``serve`` runs — but served by the caller's nursery: no process
start-up, and the ledger and journal are read directly. It has to live in the loop of an async test
(pytest-trio), and its admin API must be called with ``AsyncSwitchAdmin``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from switch.codec.dialect import load_dialect
from switch.codec.framing import Framing
from switch.journal import JournalEntry
from switch.ledger_records import Posting
from switch.testkit import checks
from switch.testkit.config import SwitchConfig

if TYPE_CHECKING:
    from switch.app import Switch
    from switch.testing import SwitchProcess
    from switch.testkit.admin import SwitchAdmin

__all__ = ["InProcessSwitch", "LedgerChecks", "ProcessSwitch", "run_switch", "start_process_switch"]

JOURNAL_LIMIT = 10_000  # the admin API's largest page: enough for any one test's traffic
DRAIN_SECONDS = 2.0  # in-process grace period at the end of a test: in-flight replies finish, then it stops


def framing_of(config: SwitchConfig) -> Framing:
    """The framing the switch listens with (and a terminal must use)."""
    return Framing.from_dialect(load_dialect(config.dialect), length_header=config.framing, tpdu=config.tpdu)


class LedgerChecks:
    """The assertions, on whatever ledger and journal a subclass reads."""

    def postings(self, *, terminal: str | None = None) -> list[Posting]:
        raise NotImplementedError

    def journal(self, *, terminal: str | None = None, stan: str | None = None) -> list[JournalEntry]:
        raise NotImplementedError

    def assert_posted(self, stan: str | int, *, terminal: str | None = None, amount: int | None = None,
                      approved: bool | None = True, response_code: str | None = None,
                      reversed: bool | None = None) -> Posting:
        """One posting with this STAN, as expected (see ``checks.assert_posted``); returns it."""
        return checks.assert_posted(self.postings(terminal=terminal), stan, terminal=terminal, amount=amount,
                                    approved=approved, response_code=response_code, reversed=reversed)

    def assert_not_posted(self, stan: str | int, *, terminal: str | None = None) -> None:
        checks.assert_not_posted(self.postings(terminal=terminal), stan, terminal=terminal)

    def assert_reversed_once(self, stan: str | int, *, terminal: str | None = None) -> Posting:
        """Reversed in the ledger, and exactly one reversal of it in the journal (repeats allowed)."""
        return checks.assert_reversed_once(self.postings(terminal=terminal), self.journal(terminal=terminal), stan,
                                           terminal=terminal)


@dataclass
class ProcessSwitch(LedgerChecks):
    """A subprocess switch: ``process`` is the ``SwitchProcess`` (output, stop, kill), ``admin`` its client."""

    process: SwitchProcess
    config: SwitchConfig
    admin: SwitchAdmin
    framing: Framing

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def admin_url(self) -> str:
        return self.admin.base_url

    @property
    def dialect(self) -> str:
        return self.config.dialect

    def postings(self, *, terminal: str | None = None) -> list[Posting]:
        return self.admin.postings(terminal=terminal)

    def journal(self, *, terminal: str | None = None, stan: str | None = None) -> list[JournalEntry]:
        return self.admin.journal(terminal=terminal, stan=stan, limit=JOURNAL_LIMIT)

    def stop(self) -> None:
        """Stop as an operator does (SIGTERM, drain); AssertionError with its output unless it closed
        its ledger cleanly."""
        self.admin.close()
        returncode = self.process.stop()
        if returncode != 0 or not self.process.closed_cleanly:
            raise AssertionError(f"the switch did not stop cleanly (status {returncode}):\n{self.process.text}")


def start_process_switch(config: SwitchConfig, directory: Path, *, startup_timeout: float = 30.0) -> ProcessSwitch:
    """``iso-switch serve`` on free loopback ports, its ledger and journal in ``directory``."""
    from switch.testing import SwitchProcess
    from switch.testkit.admin import SwitchAdmin

    framing = framing_of(config)  # a bad dialect or framing fails here, in one line, before a process starts
    process = SwitchProcess.start(config.serve_args(directory), cwd=directory, startup_timeout=startup_timeout)
    if process.admin_url is None:  # pragma: no cover - start() waits for it unless --no-admin
        process.stop()
        raise RuntimeError("the switch serves no admin API (--no-admin): the fixture needs it")
    return ProcessSwitch(process, config, SwitchAdmin(process.admin_url), framing)


@dataclass
class InProcessSwitch(LedgerChecks):
    """A switch served by the caller's nursery; ``switch`` is the ``switch.app.Switch`` itself."""

    switch: Switch
    config: SwitchConfig
    host: str
    port: int
    admin_url: str | None
    framing: Framing
    also_ports: list[int] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return self.config.dialect

    def postings(self, *, terminal: str | None = None) -> list[Posting]:
        return self.switch.runtime.ledger.postings(terminal=terminal)

    def journal(self, *, terminal: str | None = None, stan: str | None = None) -> list[JournalEntry]:
        return self.switch.runtime.journal.query(terminal=terminal, stan=stan, limit=JOURNAL_LIMIT)

    def shutdown(self) -> None:
        """Stop accepting; in-flight requests finish within the grace period, then the ledger closes."""
        (self.switch.group or self.switch.server).shutdown()


@asynccontextmanager
async def run_switch(config: SwitchConfig, directory: Path, *, admin: bool = True,
                     extra_listeners: Sequence[str] = ()) -> AsyncIterator[InProcessSwitch]:
    """Serve a switch in the current Trio task until the block ends; then drain and close its ledger.

    ``config.args`` is for subprocesses and refused here; ``extra_listeners`` takes ``--also-listen``
    specs instead.
    """
    import trio

    from switch.app import SwitchOptions, build_switch, parse_listener_spec
    from switch.server_listen import listener_address

    if config.args:
        raise ValueError(f"args={config.args!r}: serve arguments apply to the subprocess switch only")
    framing = framing_of(config)
    options = SwitchOptions(
        port=0, ledger=config.ledger_path(directory), scenario=config.scenario, seed=config.seed,
        require_signon=config.signon, profiles=config.profiles, admin_port=0 if admin else None,
        grace_period=DRAIN_SECONDS, also_listen=tuple(parse_listener_spec(spec) for spec in extra_listeners),
    )
    switch = build_switch(load_dialect(config.dialect), framing, options)
    async with trio.open_nursery() as nursery:
        listeners, admin_port = await nursery.start(functools.partial(switch.run, handle_signals=False))
        admin_url = f"http://{options.admin_host}:{admin_port}" if admin_port is not None else None
        host, port = listener_address(listeners[0])
        running = InProcessSwitch(switch, config, host, port, admin_url, framing,
                                  [listener_address(extra)[1] for extra in listeners[1:]])
        try:
            yield running
        finally:
            running.shutdown()  # drains, closes the ledger; then run() stops the admin API and the journal
