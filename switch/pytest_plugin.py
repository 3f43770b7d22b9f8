"""pytest plugin: a running switch, a terminal bound to it, its admin API, and ledger assertions.

Registered through the ``pytest11`` entry point, so installing the package is enough (no conftest).
Fixtures:

- ``iso_switch``: ``iso-switch serve`` in a subprocess on free loopback ports (``host``, ``port``,
  ``admin_url``, ``admin``, ``dialect``, ``framing``; ``postings()``, ``journal()``,
  ``assert_posted(stan, ...)``, ``assert_not_posted(stan)``, ``assert_reversed_once(stan)``). It is
  stopped as an operator stops it after the test, which errors if the ledger did not close cleanly.
- ``iso_switch_trio``: the same switch served by the test's own Trio loop (async tests, pytest-trio):
  no process start; call its admin API with ``switch.testkit.admin.AsyncSwitchAdmin``.
- ``switch_admin``: ``SwitchAdmin`` (httpx) on ``iso_switch``'s admin API: faults, scenarios,
  maintenance, journal, ledger.
- ``iso_terminal`` / ``iso_terminal_trio``: a signed-on ``terminal.api.Terminal`` bound to that
  switch (same dialect and framing), its store in the test's ``tmp_path`` (async fixtures).
- ``iso_dialect``: the dialect under ``@pytest.mark.iso_dialects`` (None otherwise).

Choose the switch with a marker or an indirect parameter (a dict, a ``SwitchConfig`` or a scenario
name); the parameter wins over the marker::

    @pytest.mark.iso_switch(scenario="system-timeout", dialect="iso87-ascii", seed=7)
    @pytest.mark.parametrize("iso_switch", [{"framing": "ascii4"}], indirect=True)

Settings: scenario, dialect, framing (length header kind), tpdu, ledger, seed, profiles, signon,
args (more ``serve`` arguments, subprocess only). ``@pytest.mark.iso_terminal(...)`` passes keywords
to ``terminal.api.open_terminal`` (``terminal_id``, ``response_timeout``, ``sign_on=False``, ...).
``@pytest.mark.iso_dialects`` runs the test once per shipped dialect (or per name given).

Nothing heavy is imported until a fixture runs: this module is loaded by every pytest run in an
environment where the package is installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from switch.testkit.admin import SwitchAdmin
    from switch.testkit.config import SwitchConfig
    from switch.testkit.running import InProcessSwitch, ProcessSwitch
    from terminal.api import Terminal

_MARKERS = (
    "iso_switch(**settings): the switch the iso_switch / iso_switch_trio fixtures start (scenario, dialect, "
    "framing, tpdu, ledger, seed, profiles, signon, args)",
    "iso_terminal(**options): keywords for terminal.api.open_terminal in the iso_terminal fixtures",
    "iso_dialects(*names): run the test once per shipped dialect (or per dialect named); the iso_switch "
    "fixtures use it, and iso_dialect says which",
)


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("iso_dialects")
    if marker is None:
        return
    if "iso_dialect" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.iso_dialects needs a test that uses "
                                "iso_switch, iso_switch_trio or iso_dialect")
    names = list(marker.args)
    if not names:
        from switch.codec.dialect import DialectRegistry

        names = DialectRegistry().names()
    metafunc.parametrize("iso_dialect", names, ids=names)


@pytest.fixture
def iso_dialect() -> str | None:
    """The dialect name ``@pytest.mark.iso_dialects`` runs this test with (None without the marker)."""
    return None


def _switch_config(request: pytest.FixtureRequest, dialect: str | None) -> SwitchConfig:
    from switch.testkit.config import SwitchConfig

    marker = request.node.get_closest_marker("iso_switch")
    config = SwitchConfig.of(dict(marker.kwargs) if marker is not None else None)
    param = getattr(request, "param", None)
    if isinstance(param, SwitchConfig):
        config = param
    elif isinstance(param, str):
        config = config.merged({"scenario": param})
    elif param is not None:
        config = config.merged(param)
    if dialect is not None:
        config = config.merged({"dialect": dialect})
    return config


@pytest.fixture
def iso_switch(request: pytest.FixtureRequest, tmp_path: Path, iso_dialect: str | None) -> Iterator[ProcessSwitch]:
    """``iso-switch serve`` in a subprocess on free loopback ports; stopped (and checked) after the test."""
    from switch.testkit.running import start_process_switch

    directory = tmp_path / "iso-switch"
    directory.mkdir()
    switch = start_process_switch(_switch_config(request, iso_dialect), directory)
    try:
        yield switch
    finally:
        switch.stop()


@pytest.fixture
async def iso_switch_trio(request: pytest.FixtureRequest, tmp_path: Path,
                          iso_dialect: str | None) -> AsyncIterator[InProcessSwitch]:
    """The switch served by this test's Trio loop (pytest-trio); drained and closed after the test."""
    from switch.testkit.running import run_switch

    directory = tmp_path / "iso-switch"
    directory.mkdir()
    async with run_switch(_switch_config(request, iso_dialect), directory) as switch:
        yield switch


@pytest.fixture
def switch_admin(iso_switch: ProcessSwitch) -> SwitchAdmin:
    """The admin API of ``iso_switch``, typed (``switch.testkit.admin.SwitchAdmin``)."""
    return iso_switch.admin


def _terminal_options(request: pytest.FixtureRequest, config: SwitchConfig, framing: Any,
                      directory: Path) -> dict[str, Any]:
    marker = request.node.get_closest_marker("iso_terminal")
    options: dict[str, Any] = {"dialect": config.dialect, "framing": framing,
                               "store": directory / "terminal.sqlite", **(marker.kwargs if marker else {})}
    if config.profiles is not None and "profile" not in options:
        from switch.profiles import load_profiles
        from terminal.profile import TerminalProfile

        profiles = load_profiles(config.profiles)
        wanted = options.pop("terminal_id", None)
        entries = list(profiles)
        security = (profiles.get(wanted.ljust(8)) or profiles.get(wanted)) if wanted else (
            entries[0] if len(entries) == 1 else None)
        if security is None:
            known = ", ".join(entry.terminal_id for entry in entries)
            raise pytest.UsageError(f"iso_terminal: pick a terminal of {config.profiles} with "
                                    f"@pytest.mark.iso_terminal(terminal_id=...) (it has: {known})")
        merchant_id = options.pop("merchant_id", None)
        settings = {key: options.pop(key) for key in list(options) if key in TerminalProfile.__dataclass_fields__}
        profile = TerminalProfile.from_security_profile(security, **settings)
        options["profile"] = dataclasses.replace(profile, merchant_id=merchant_id) if merchant_id else profile
        if security.tpdu is not None:
            options.setdefault("tpdu", security.tpdu)
    return options


@pytest.fixture
async def iso_terminal(request: pytest.FixtureRequest, iso_switch: ProcessSwitch,
                       tmp_path: Path) -> AsyncIterator[Terminal]:
    """A signed-on terminal bound to ``iso_switch``, its store in ``tmp_path``."""
    from terminal.api import open_terminal

    options = _terminal_options(request, iso_switch.config, iso_switch.framing, tmp_path)
    async with open_terminal(iso_switch.host, iso_switch.port, **options) as terminal:
        yield terminal


@pytest.fixture
async def iso_terminal_trio(request: pytest.FixtureRequest, iso_switch_trio: InProcessSwitch,
                            tmp_path: Path) -> AsyncIterator[Terminal]:
    """A signed-on terminal bound to ``iso_switch_trio``, its store in ``tmp_path``."""
    from terminal.api import open_terminal

    options = _terminal_options(request, iso_switch_trio.config, iso_switch_trio.framing, tmp_path)
    async with open_terminal(iso_switch_trio.host, iso_switch_trio.port, **options) as terminal:
        yield terminal
