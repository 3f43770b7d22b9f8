"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.pg_server import pg_url, postgres_server  # noqa: F401  # fixtures: a real PostgreSQL for ledger tests


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker-thread calls (the switch's ledger flush) run inline, so the autojump clock cannot jump
    ahead while one runs: a virtual-clock test would otherwise see timeouts that cannot happen."""

    async def run_inline(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", run_inline)


_SLOW_MODULES = frozenset({
    "test_admin_e2e", "test_cli", "test_consistency", "test_durability", "test_fuzz_e2e", "test_scenarios_e2e",
    "test_switch_process", "test_terminal_cli", "test_tls", "test_session_e2e",
    "test_plugin", "test_plugin_example",
    "test_ledger_postgres_e2e", "test_ownership_stateful",
    "test_journal_writer",
    "test_multi_instance", "test_workers", "test_fault_counters", "test_shared_sessions_admin",
    "test_store_kill",
})
"""Modules whose tests start real switches, subprocesses or whole terminal-against-host runs."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark end-to-end modules slow in one place, so `pytest -m "not slow"` is the fast tier."""
    slow = pytest.mark.slow
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in _SLOW_MODULES:
            item.add_marker(slow)
