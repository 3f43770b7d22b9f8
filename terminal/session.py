"""The command language of ``iso-terminal session``: one line → one step, pure (no I/O, no clock).

A session keeps one terminal, one connection and one sign-on across many commands, so what only
shows over time — a host that closes an idle connection, forgets or ends the sign-on, renews the
working keys, or answers late on the same connection — can be reproduced by hand or by a script.
This module only turns text into typed steps and judges ``expect`` lines; the Trio loop that runs
them is ``terminal.cli.session_command``. Kept apart so the language is unit-tested without a host.

Grammar (one command per line; ``#`` starts a comment; words are split as a POSIX shell does)::

    signon | signoff | echo | drain | settle | reverse-last
    purchase [MAJOR] [--amount MAJOR | --minor UNITS] [--pan PAN] [--expiry YYMM] [--pin DIGITS]
    refund   (as purchase)
    balance  [--pan PAN] [--expiry YYMM]
    wait SECONDS            sleep on the open connection (the host may time it out meanwhile)
    expect WHAT [WHAT...]   the last outcome's response code (00, 51, ...) or kind (approved, ...)
    status | help [COMMAND] | quit
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from terminal.defaults import TEST_PAN, default_expiry
from terminal.policy import (
    OUTCOME_KINDS,
    BalanceInquiry,
    Command,
    Drain,
    Echo,
    Outcome,
    Purchase,
    Refund,
    ReverseLast,
    Settle,
    SignOff,
    SignOn,
)

__all__ = [
    "COMMANDS",
    "MAX_WAIT",
    "Expect",
    "Help",
    "Quit",
    "Run",
    "SessionError",
    "Status",
    "Step",
    "Wait",
    "check_expectation",
    "help_lines",
    "parse_line",
]

MAX_WAIT = 24 * 3600.0
"""The longest ``wait``: a day; longer is a typo (minutes meant as seconds), not a test."""



class SessionError(ValueError):
    """A line that cannot be run; the message is one line saying what is wrong and what was meant."""


@dataclass(frozen=True)
class Run:
    """Run one terminal operation on the session's connection."""

    command: Command


@dataclass(frozen=True)
class Wait:
    """Sleep, keeping the connection and the sign-on: lets idle timeouts and late replies happen."""

    seconds: float


@dataclass(frozen=True)
class Expect:
    """The last outcome must match one of ``wanted``: response codes or outcome kinds."""

    wanted: tuple[str, ...]


@dataclass(frozen=True)
class Status:
    """Show the session (connection, sign-on, keys) and the store (STAN, batch, what is owed)."""


@dataclass(frozen=True)
class Help:
    topic: str | None = None


@dataclass(frozen=True)
class Quit:
    """End the session: close the connection (without signing off) and exit."""


Step = Run | Wait | Expect | Status | Help | Quit

_CARD_OPTIONS = ("--amount", "--minor", "--pan", "--expiry", "--pin")
COMMANDS: Mapping[str, tuple[tuple[str, ...], str]] = {
    "signon": ((), "sign on (0800/001): new working keys with a TMK profile"),
    "signoff": ((), "sign off (0800/002)"),
    "echo": ((), "echo test (0800/301)"),
    "purchase": (_CARD_OPTIONS, "a sale (0200): purchase 12.34, or --amount/--minor, --pan, --expiry, --pin"),
    "refund": (_CARD_OPTIONS, "a refund (0200, processing code 20), options as purchase"),
    "balance": (("--pan", "--expiry"), "balance inquiry (0200, processing code 31)"),
    "reverse-last": ((), "void the last approved transaction of the open batch (0400)"),
    "settle": ((), "settle the open batch (0500; on 95 upload and settle again)"),
    "drain": ((), "send only what is owed to the host (reversals, advices, settlement)"),
    "wait": ((), "wait SECONDS on the open connection (idle timeouts, late replies)"),
    "expect": ((), "expect CODE|KIND [...]: fail the script unless the last outcome matches"),
    "status": ((), "the connection, sign-on, keys, and the store: STAN, batch, what is owed"),
    "help": ((), "help [COMMAND]"),
    "quit": ((), "end the session (also: exit, end of input)"),
}
"""Every command: (its options, one line of help). Also what the prompt completes."""

_ALIASES = {"exit": "quit", "reverse": "reverse-last", "void": "reverse-last"}
_SIMPLE: Mapping[str, Command] = {
    "signon": SignOn(), "signoff": SignOff(), "echo": Echo(), "drain": Drain(), "settle": Settle(),
    "reverse-last": ReverseLast(),
}


def parse_line(text: str, *, exponent: int = 2, today: date | None = None) -> Step | None:
    """One line → a step; None for a blank line or a comment. Raises ``SessionError``.

    ``exponent``: the currency's decimal places (how ``12.34`` becomes minor units); ``today``
    dates the default card expiry (December, three years ahead), as in the one-shot commands.
    """
    try:
        words = shlex.split(text, comments=True)
    except ValueError as exc:  # an unclosed quote
        raise SessionError(f"cannot split the line: {exc}") from None
    if not words:
        return None
    name, args = words[0].lower(), words[1:]
    name = _ALIASES.get(name, name)
    if name not in COMMANDS:
        raise SessionError(f"unknown command {words[0]!r} (commands: {', '.join(COMMANDS)}; try help)")
    if name in _SIMPLE:
        _no_arguments(name, args)
        return Run(_SIMPLE[name])
    if name in ("status", "quit"):
        _no_arguments(name, args)
        return Status() if name == "status" else Quit()
    if name == "help":
        if len(args) > 1:
            raise SessionError("help takes at most one command name")
        return Help(args[0].lower() if args else None)
    if name == "wait":
        return Wait(_seconds(args))
    if name == "expect":
        return Expect(_expectations(args))
    options, positional = _options(name, args)
    expiry = options.get("--expiry") or default_expiry(today or date.today())
    pan = options.get("--pan", TEST_PAN)
    if name == "balance":
        if positional:
            raise SessionError(f"balance takes no amount, got {positional[0]!r}")
        return Run(BalanceInquiry(pan, expiry))
    amount = _amount(name, options, positional, exponent)
    kind = Purchase if name == "purchase" else Refund
    return Run(kind(amount, pan, expiry, pin=options.get("--pin")))


def _no_arguments(name: str, args: list[str]) -> None:
    if args:
        raise SessionError(f"{name} takes no arguments, got {' '.join(args)!r}")


def _seconds(args: list[str]) -> float:
    if len(args) != 1:
        raise SessionError("wait takes one number of seconds, e.g. wait 2.5")
    try:
        seconds = float(args[0])
    except ValueError:
        raise SessionError(f"wait {args[0]!r}: expected a number of seconds, e.g. wait 2.5") from None
    if not 0 <= seconds <= MAX_WAIT:  # also refuses nan
        raise SessionError(f"wait {args[0]}: expected 0 to {MAX_WAIT:g} seconds")
    return seconds


def _expectations(args: list[str]) -> tuple[str, ...]:
    if not args:
        raise SessionError("expect what? a response code (expect 00) or an outcome kind (expect approved)")
    wanted = []
    for word in args:
        lowered = word.lower()
        if lowered in OUTCOME_KINDS:
            wanted.append(lowered)
        elif len(word) == 2 and word.isascii() and word.isalnum():
            wanted.append(word.upper())
        else:
            raise SessionError(f"expect {word!r}: not a 2-character response code nor an outcome kind "
                               f"({', '.join(OUTCOME_KINDS)})")
    return tuple(wanted)


def _options(name: str, args: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--name value`` / ``--name=value`` pairs (each at most once) and the positional words."""
    allowed = COMMANDS[name][0]
    options: dict[str, str] = {}
    positional: list[str] = []
    words = iter(args)
    for word in words:
        if not word.startswith("--"):
            positional.append(word)
            continue
        option, sep, value = word.partition("=")
        if option not in allowed:
            raise SessionError(f"{name}: no option {option} (it takes {', '.join(allowed)})")
        if not sep:
            value = next(words, "")
            if not value or value.startswith("--"):
                raise SessionError(f"{name}: {option} needs a value")
        if option in options:
            raise SessionError(f"{name}: {option} is given twice")
        options[option] = value.strip()
    return options, positional


def _amount(name: str, options: dict[str, str], positional: list[str], exponent: int) -> int:
    from terminal.cli.terminal_command import parse_amount  # imported late: terminal.cli imports this module

    if len(positional) > 1:
        raise SessionError(f"{name}: one amount, got {' '.join(positional)!r}")
    given = [text for text in (positional[0] if positional else None, options.get("--amount")) if text is not None]
    minor = options.get("--minor")
    if len(given) + (minor is not None) != 1:
        raise SessionError(f"{name}: give the amount once: {name} 12.34, --amount 12.34 or --minor 1234")
    if minor is not None:
        if not (minor.isascii() and minor.isdigit()):
            raise SessionError(f"{name}: --minor {minor!r}: expected whole minor units, e.g. 1234")
        return int(minor)
    try:
        return parse_amount(given[0], exponent)
    except ValueError as exc:
        raise SessionError(f"{name}: {str(exc).removeprefix('--amount ')}") from None


def check_expectation(expect: Expect, last: Outcome | None) -> str | None:
    """None when the last outcome matches ``expect``; else the one-line reason it does not."""
    wanted = " ".join(expect.wanted)
    if last is None:
        return f"expect {wanted}: no command has run yet"
    if last.kind in expect.wanted or (last.response_code and last.response_code.upper() in expect.wanted):
        return None
    answered = f"answered {last.response_code}" if last.response_code else "no response code"
    return f"expect {wanted}: the last outcome was {last.operation} {last.kind} ({answered}): {last.text}"


def help_lines(topic: str | None = None) -> list[str]:
    """``help`` (every command, one line each) or ``help COMMAND``."""
    if topic is None:
        width = max(len(name) for name in COMMANDS)
        return [f"{name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    name = _ALIASES.get(topic, topic)
    if name not in COMMANDS:
        raise SessionError(f"help {topic!r}: no such command (commands: {', '.join(COMMANDS)})")
    options, text = COMMANDS[name]
    lines = [f"{name}: {text}"]
    if options:
        lines.append(f"  options: {' '.join(options)}")
    return lines
