"""The careful POS terminal: policy (``terminal.policy``), driver (``terminal.client``), store, CLI.

From Python, ``open_terminal`` (``terminal.api``) gives a connected, signed-on terminal whose
operations return typed outcomes. Exported lazily, so ``import terminal`` (which every CLI start
does) does not load Trio and the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from terminal.api import HostAddress, OutcomeKind, SignOnFailed, Terminal, TerminalOutcome, open_terminal

__all__ = ["HostAddress", "OutcomeKind", "SignOnFailed", "Terminal", "TerminalOutcome", "open_terminal"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from terminal import api

        return getattr(api, name)
    raise AttributeError(f"module 'terminal' has no attribute {name!r}")
