"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker-thread calls (the switch's ledger flush) run inline, so the autojump clock cannot jump
    ahead while one runs: a virtual-clock test would otherwise see timeouts that cannot happen."""

    async def run_inline(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", run_inline)
