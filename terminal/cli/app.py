"""The ``iso-terminal`` click group (every command registers on it) and the console-script entry point."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from switch.cli_common import CliError, ToolGroup, dialects_command, run, version_option

EXIT_TERMINAL_USAGE = 3  # as terminal_command.EXIT_TERMINAL_USAGE (which imports this module)

# Each command's module, imported when the command is looked up (importing it registers it on
# ``cli``): ``iso-terminal load`` then does not compile and import the session REPL, the
# single-terminal operations, ``build`` and ``status`` (and what only they need) on every start.
COMMAND_MODULES = {
    **dict.fromkeys(("balance", "drain", "echo", "purchase", "refund", "reverse-last", "settle", "signoff",
                     "signon"), "terminal.cli.operations"),
    "build": "terminal.cli.build_command",
    "load": "terminal.cli.load_command",
    "session": "terminal.cli.session_command",
    "status": "terminal.cli.status_command",
}


class TerminalGroup(ToolGroup):
    """``iso-terminal``'s group: a mistake before any command runs (an unknown command, an unknown
    option of the group itself) is one ``error:`` line and exit 3, because exit 2 means "money may
    have moved" for this tool. A bare ``iso-terminal`` shows the help, also with exit 3, so a script
    whose command word came out empty does not pass."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.exit_code = EXIT_TERMINAL_USAGE  # type: ignore[misc]  # per instance, on purpose
            raise
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(COMMAND_MODULES[cmd_name])
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc) from None


def _one_line(exc: click.UsageError) -> CliError:
    where = f" (try '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return CliError(f"{exc.format_message()}{where}", EXIT_TERMINAL_USAGE)


@click.group(cls=TerminalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def cli() -> None:
    """iso-terminal: a careful POS terminal client and message tools."""


cli.add_command(dialects_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``iso-terminal``) and ``python -m terminal``."""
    run(cli, argv)
