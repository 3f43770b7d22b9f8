"""The ``iso-terminal`` click group (every command registers on it) and the console-script entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import click

from switch.cli_common import ToolGroup, dialects_command, run, version_option


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def cli() -> None:
    """iso-terminal: a careful POS terminal client and message tools."""


cli.add_command(dialects_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``iso-terminal``) and ``python -m terminal``."""
    run(cli, argv)
