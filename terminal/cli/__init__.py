"""``iso-terminal``: the terminal's command line.

The terminal commands (``signon``, ``echo``, ``purchase``, ``refund``, ``reverse-last``, ``settle``,
``drain``, ``signoff``) each run one operation of ``terminal.policy`` through ``terminal.client``
against a host, print its outcome in one line (or ``--json``) and exit with a status scripts can
branch on: 0 approved/completed, 1 declined/refused, 2 outcome unknown or reversed, 3 usage or
connection error. Exit 2 must mean "money may have moved" and nothing else, so in these commands
every usage error (click's included) exits 3, not click's usual 2. ``status`` shows the durable
store without connecting. ``session`` keeps one connection and one sign-on across many commands
(a REPL, or ``--script FILE``).

``build`` is the inverse of ``iso-switch describe``: it encodes a message given field by field and
prints its hex, so a test message can be crafted and piped
(``iso-terminal build ... | iso-switch describe -``). Adding a command is one function decorated
with ``@cli.command()``; shared options come from ``switch.cli_common``.

Modules: ``app`` (the ``cli`` group and ``main``), ``terminal_command`` (what every terminal command
shares: exit codes, ``TerminalSettings``, ``terminal_options``, running one operation),
``operations`` (the single-terminal operation commands), ``session_command``, ``status_command``, ``load_command``,
``build_command``. A command's module is imported when the command is looked up (``app.COMMAND_MODULES``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from terminal.cli.app import cli, main

if TYPE_CHECKING:
    from terminal.cli.build_command import build, parse_field_args
    from terminal.cli.load_command import load
    from terminal.cli.operations import balance, drain, echo, purchase, refund, reverse_last, settle, signoff, signon
    from terminal.cli.session_command import EXIT_EXPECT_FAILED, run_session, session
    from terminal.cli.status_command import status, status_lines, store_status
    from terminal.cli.terminal_command import (
        DEFAULT_MERCHANT_ID,
        DEFAULT_TERMINAL_ID,
        EXIT_INTERRUPTED,
        EXIT_OUTCOME_UNKNOWN,
        EXIT_SETTLED_UNBALANCED,
        EXIT_TERMINAL_USAGE,
        OUTCOME_EXIT_CODES,
        TEST_PAN,
        TerminalCommand,
        TerminalSettings,
        card_options,
        default_expiry,
        default_store_path,
        format_amount,
        outcome_line,
        parse_amount,
        run_terminal_command,
        terminal_options,
    )

# Where each re-exported name lives, imported on first use (see ``app.COMMAND_MODULES``: the
# command modules are loaded only when needed, so a start of one command does not import them all).
_EXPORTS = {
    **dict.fromkeys(("build", "parse_field_args"), "build_command"),
    "load": "load_command",
    **dict.fromkeys(("balance", "drain", "echo", "purchase", "refund", "reverse_last", "settle", "signoff",
                     "signon"), "operations"),
    **dict.fromkeys(("EXIT_EXPECT_FAILED", "run_session", "session"), "session_command"),
    **dict.fromkeys(("status", "status_lines", "store_status"), "status_command"),
    **dict.fromkeys(("DEFAULT_MERCHANT_ID", "DEFAULT_TERMINAL_ID", "EXIT_INTERRUPTED", "EXIT_OUTCOME_UNKNOWN",
                     "EXIT_SETTLED_UNBALANCED", "EXIT_TERMINAL_USAGE", "OUTCOME_EXIT_CODES", "TEST_PAN",
                     "TerminalCommand", "TerminalSettings", "card_options", "default_expiry", "default_store_path",
                     "format_amount", "outcome_line", "parse_amount", "run_terminal_command", "terminal_options"),
                    "terminal_command"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'terminal.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(f"terminal.cli.{module}"), name)


__all__ = [
    "DEFAULT_MERCHANT_ID",
    "DEFAULT_TERMINAL_ID",
    "EXIT_EXPECT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OUTCOME_UNKNOWN",
    "EXIT_SETTLED_UNBALANCED",
    "EXIT_TERMINAL_USAGE",
    "OUTCOME_EXIT_CODES",
    "TEST_PAN",
    "TerminalCommand",
    "TerminalSettings",
    "balance",
    "build",
    "card_options",
    "cli",
    "default_expiry",
    "default_store_path",
    "drain",
    "echo",
    "format_amount",
    "load",
    "main",
    "outcome_line",
    "parse_amount",
    "parse_field_args",
    "purchase",
    "refund",
    "reverse_last",
    "run_session",
    "run_terminal_command",
    "session",
    "settle",
    "signoff",
    "signon",
    "status",
    "status_lines",
    "store_status",
    "terminal_options",
]
