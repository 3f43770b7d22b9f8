"""The single-terminal operation commands: signon, signoff, echo, purchase, refund, balance, reverse-last,
settle, drain."""

from __future__ import annotations

import functools
import sys
from datetime import date
from typing import Any

import click

from switch.cli_common import (
    CliError,
)
from terminal.cli.app import cli
from terminal.cli.terminal_command import (
    EXIT_TERMINAL_USAGE,
    TEST_PAN,
    TerminalCommand,
    TerminalSettings,
    card_options,
    default_expiry,
    run_terminal_command,
    terminal_options,
)
from terminal.policy import (
    BalanceInquiry,
    Drain,
    Echo,
    Purchase,
    Refund,
    ReverseLast,
    Settle,
    SignOff,
    SignOn,
)


@cli.command(cls=TerminalCommand, short_help="Sign on to the host (0800, network code 001).")
@terminal_options
def signon(settings: TerminalSettings) -> None:
    """Sign on (0800/001), retried with backoff. Exit 0 signed on, 1 declined, 3 not reached."""
    run_terminal_command(settings, SignOn())


@cli.command(cls=TerminalCommand, short_help="Sign off from the host (0800, network code 002).")
@terminal_options
def signoff(settings: TerminalSettings) -> None:
    """Sign off (0800/002)."""
    run_terminal_command(settings, SignOff())


@cli.command(cls=TerminalCommand, short_help="Network echo test (0800, network code 301).")
@terminal_options
def echo(settings: TerminalSettings) -> None:
    """Echo test (0800/301): is the host there? Works signed on or not."""
    run_terminal_command(settings, Echo())


async def _enter_confirms(timeout: float) -> None:
    """The cardholder confirms by pressing Enter; at end of input nobody will, so wait for the deadline."""
    import trio

    click.echo(f"waiting up to {timeout:g}s for the cardholder to confirm: press Enter", err=True)
    line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    if not line:
        await trio.sleep_forever()


async def _never_confirms() -> None:
    import trio

    await trio.sleep_forever()


@cli.command(cls=TerminalCommand, short_help="A card sale (0200), reversed by itself if the answer is lost.")
@terminal_options
@card_options
@click.option("--confirm-timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="After approval, the cardholder must confirm (Enter on stdin) within this time; otherwise the "
                   "sale is reversed (0400, field 39 = 17 customer cancellation).")
@click.option("--no-confirm", is_flag=True,
              help="Simulate a cardholder who never confirms (with --confirm-timeout): the approved sale is "
                   "reversed when the time is up.")
def purchase(settings: TerminalSettings, card: dict[str, Any], confirm_timeout: float | None,
             no_confirm: bool) -> None:
    """A sale (0200). Stored reversals and other items owed to the host go out first.

    \b
    Exit: 0 approved; 1 declined by the host, or refused locally (amount 0, bad card, expired);
    2 no trustworthy answer: the reversal was acknowledged (reversed) or is stored and goes out
    before the next transaction (unknown-queued); 3 usage error or host not reached.

    \b
    Example:
      iso-terminal purchase --amount 12.34
    """
    if no_confirm and confirm_timeout is None:
        raise CliError("--no-confirm needs --confirm-timeout SECONDS", EXIT_TERMINAL_USAGE)
    confirmation = None
    if confirm_timeout is not None:
        confirmation = _never_confirms if no_confirm else functools.partial(_enter_confirms, confirm_timeout)
    run_terminal_command(settings, Purchase(**card, confirm_timeout=confirm_timeout), confirmation)


@cli.command(cls=TerminalCommand, short_help="A refund to the card (0200, processing code 20).")
@terminal_options
@card_options
def refund(settings: TerminalSettings, card: dict[str, Any]) -> None:
    """A refund (0200, processing code 20): a credit in settlement. Exit codes as for purchase."""
    run_terminal_command(settings, Refund(**card))


@cli.command(cls=TerminalCommand, short_help="Balance inquiry (0200, processing code 31): nothing moves.")
@terminal_options
@click.option("--pan", default=TEST_PAN, show_default=True, help="Card number (Luhn-checked).")
@click.option("--expiry", default=None, metavar="YYMM", help="Card expiry (default: December, 3 years ahead).")
def balance(settings: TerminalSettings, pan: str, expiry: str | None) -> None:
    """Balance inquiry (0200, processing code 310000; CUP 60.1 = 01): no amount, no reversal. The
    balance comes from the answer's field 54. Exit 0 answered, 1 declined, 3 no answer."""
    run_terminal_command(settings, BalanceInquiry(pan.strip(), expiry or default_expiry(date.today())))


@cli.command("reverse-last", cls=TerminalCommand, short_help="Void the last approved transaction (0400).")
@terminal_options
def reverse_last(settings: TerminalSettings) -> None:
    """Void: reverse the last approved transaction of the open batch (0400, reason 17).

    Exit 0 when the host acknowledged the void (what the operator asked for happened; nothing stays
    charged), 1 when it refused it or there is nothing to void, 2 when its outcome is unknown.
    """
    run_terminal_command(settings, ReverseLast())


@cli.command(cls=TerminalCommand, short_help="Settle the open batch (0500; on 95 upload and settle again).")
@terminal_options
def settle(settings: TerminalSettings) -> None:
    """Settle the open batch with totals from the terminal's journal (0500).

    ISO: 0500 920000 with the totals; on 95 (totals differ) every record is uploaded (0320) and a
    0500 960000 ("after upload") follows. CUP: 0500; on flag '2' the upload ends with a 0320 (60.3
    207). The batch closes (and the next number opens) only when the host closed it.

    \b
    Exit: 0 balanced and closed; 4 unbalanced, uploaded and closed by the host (contact the
    acquirer); 1 declined (batch stays open); 2 unanswered (repeated before the next transaction).
    """
    run_terminal_command(settings, Settle())


@cli.command(cls=TerminalCommand, short_help="Send only what is owed to the host (reversals, advices, settlement).")
@terminal_options
def drain(settings: TerminalSettings) -> None:
    """Send what is stored and owed to the host, and nothing else. Exit 0 when nothing is left owed."""
    run_terminal_command(settings, Drain())
