"""``iso-terminal session``: many commands over one connection and one sign-on (a REPL, or a script).

The one-shot commands each connect, sign on and disconnect, so nothing that happens *between*
transactions can be seen with them. A session keeps one ``TerminalClient`` (one policy, one store,
one connection) for its whole life: the host closing an idle connection, forgetting or ending the
sign-on, renewing the working keys, or answering late on the same connection all show up — as the
journal notes printed before the next outcome line.

The language (``terminal.session``) is pure; this module only reads lines (prompt_toolkit with
history and completion on a terminal, plain lines from a file or a pipe), runs each step on Trio and
prints. Script rules: a line that cannot be parsed stops the script naming its line (exit 3); an
``expect`` that does not hold stops it too (exit 5); otherwise the exit status is 0, whatever the
outcomes were — ``expect`` is how a script asserts. Interactively a mistake only prints its error.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import click
import trio

from switch.cli_common import CliError
from switch.security import check_value
from terminal.api import build_client
from terminal.cli.app import cli
from terminal.cli.status_command import status_lines, store_status
from terminal.cli.terminal_command import (
    EXIT_INTERRUPTED,
    EXIT_OUTCOME_UNKNOWN,
    EXIT_TERMINAL_USAGE,
    OUTCOME_EXIT_CODES,
    TerminalCommand,
    TerminalSettings,
    _is_interrupt,
    _notes_to_stderr,
    _open_store,
    outcome_line,
    terminal_options,
)
from terminal.client import ConnectFactory, TerminalClient, TrioClock
from terminal.policy import Note, Outcome
from terminal.session import (
    COMMANDS,
    Expect,
    Help,
    Quit,
    Run,
    SessionError,
    Status,
    Wait,
    check_expectation,
    help_lines,
    parse_line,
)
from terminal.store import TerminalStore

EXIT_EXPECT_FAILED = 5
"""A script's ``expect`` line did not hold (distinct from every outcome's exit status)."""

MAX_SCRIPT_BYTES = 1 << 20  # a script is typed by people; a megabyte is a wrong file
MAX_LINES = 1_000_000  # bounds a session fed from an endless pipe

SHOWN_NOTES = frozenset({
    "signed-on", "signon-failed", "signon-demanded", "signed-off", "connect-failed", "connection-lost",
    "exchange-failed", "reversal-queued", "reversal-refused", "late-reply-discarded",
    "unexpected-message-discarded", "recovered", "upload-started", "batch-closed",
})
"""Notes printed before the outcome line: what happened on the connection and to the session."""


class LineSource(Protocol):
    """Where the session's lines come from; ``None`` at the end of input."""

    interactive: bool

    async def next_line(self) -> str | None: ...


@dataclass
class ScriptLines:
    """A script read whole (``--script FILE``)."""

    lines: list[str]
    interactive: bool = False
    _position: int = 0

    async def next_line(self) -> str | None:
        await trio.lowlevel.checkpoint()
        if self._position >= len(self.lines):
            return None
        self._position += 1
        return self.lines[self._position - 1]


@dataclass
class StreamLines:
    """Lines read one by one from a pipe (``--script -``, or stdin that is not a terminal), so a
    program can feed the session as it goes."""

    stream: IO[str]
    interactive: bool = False

    async def next_line(self) -> str | None:
        line = await trio.to_thread.run_sync(self.stream.readline, abandon_on_cancel=True)
        return line or None


class PromptLines:
    """A prompt with line editing, history (kept across sessions) and completion of commands and
    options: prompt_toolkit, run in a worker thread so the connection's reader keeps running."""

    interactive = True

    def __init__(self, terminal_id: str) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import NestedCompleter
        from prompt_toolkit.history import FileHistory, History, InMemoryHistory

        from terminal.cli.terminal_command import default_store_path

        history: History = InMemoryHistory()
        path = default_store_path(terminal_id).parent / "session-history"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            history = FileHistory(str(path))
        nested: dict[str, Any] = {name: dict.fromkeys(options) or None for name, (options, _) in COMMANDS.items()}
        nested["help"] = dict.fromkeys(COMMANDS)
        self._prompt = PromptSession[str](history=history, completer=NestedCompleter.from_nested_dict(nested))
        self._message = f"{terminal_id.rstrip()}> "

    def _read(self) -> str | None:
        try:
            return self._prompt.prompt(self._message)
        except KeyboardInterrupt:
            return ""  # Ctrl-C at the prompt drops the line, as shells do
        except EOFError:
            return None  # Ctrl-D

    async def next_line(self) -> str | None:
        return await trio.to_thread.run_sync(self._read, abandon_on_cancel=True)


@dataclass
class Printer:
    """Where a session writes: outcome and note lines to ``out``, errors to ``err``."""

    out: Callable[[str], None]
    err: Callable[[str], None]


@dataclass(frozen=True)
class SessionEnd:
    """How a session ended: its exit status."""

    status: int


class _Session:
    """The running session: one client over one store; runs steps and remembers the last outcome."""

    def __init__(self, settings: TerminalSettings, store: TerminalStore, printer: Printer,
                 client: TerminalClient, handle_sigint: bool) -> None:
        self.settings = settings
        self.store = store
        self.printer = printer
        self.client = client
        self.handle_sigint = handle_sigint
        self.last: Outcome | None = None

    async def run(self, source: LineSource) -> SessionEnd:
        for number in range(1, MAX_LINES + 1):
            line = await source.next_line()
            if line is None:
                return SessionEnd(0)
            try:
                step = parse_line(line, exponent=self.settings.profile.currency_exponent)
            except SessionError as exc:
                if source.interactive:
                    self.printer.err(f"error: {exc}")
                    continue
                self.printer.err(f"error: line {number}: {exc}")
                return SessionEnd(EXIT_TERMINAL_USAGE)
            if step is None:
                continue
            if isinstance(step, Quit):
                return SessionEnd(0)
            end = await self._step(step, number, source.interactive)
            if end is not None:
                return end
        self.printer.err(f"error: the session stopped after {MAX_LINES} lines")
        return SessionEnd(EXIT_TERMINAL_USAGE)

    async def _step(self, step: Run | Wait | Expect | Status | Help, number: int,
                    interactive: bool) -> SessionEnd | None:
        if isinstance(step, Run):
            return await self._run(step)
        if isinstance(step, Wait):
            await trio.sleep(step.seconds)
        elif isinstance(step, Expect):
            failure = check_expectation(step, self.last)
            if failure is not None:
                if interactive:
                    self.printer.err(f"expect failed: {failure}")
                else:
                    self.printer.err(f"error: line {number}: {failure}")
                    return SessionEnd(EXIT_EXPECT_FAILED)
        elif isinstance(step, Status):
            for text in self.status_lines():
                self.printer.out(text)
        else:
            try:
                lines = help_lines(step.topic)
            except SessionError as exc:
                self.printer.err(f"error: {exc}")
                return None if interactive else SessionEnd(EXIT_TERMINAL_USAGE)
            for text in lines:
                self.printer.out(text)
        return None

    async def _run(self, step: Run) -> SessionEnd | None:
        """One operation; Ctrl-C abandons it and ends the session as the one-shot commands end."""
        outcome: Outcome | None = None
        interrupted = False
        with contextlib.ExitStack() as stack:
            interrupts = (stack.enter_context(trio.open_signal_receiver(signal.SIGINT))
                          if self.handle_sigint else None)
            async with trio.open_nursery() as nursery:

                async def operate() -> None:
                    nonlocal outcome
                    outcome = await self.client.run_command(step.command)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(operate)
                if interrupts is not None:
                    async for _ in interrupts:
                        interrupted = True
                        nursery.cancel_scope.cancel()
                        break
        if outcome is None:
            policy = self.client.policy
            outcome = (policy.interrupt(self.client.clock.now()) if policy.busy
                       else Outcome("failed", step.command.name, "interrupted"))
            interrupted = True
        self.last = outcome
        self._print_outcome(outcome, interrupted)
        if interrupted:
            code = OUTCOME_EXIT_CODES[outcome.kind]
            return SessionEnd(EXIT_OUTCOME_UNKNOWN if code == EXIT_OUTCOME_UNKNOWN else EXIT_INTERRUPTED)
        return None

    def _print_outcome(self, outcome: Outcome, interrupted: bool) -> None:
        if self.settings.as_json:
            self.printer.out(json.dumps({**outcome.as_dict(), "interrupted": interrupted}))
        else:
            self.printer.out(outcome_line(outcome, self.settings.profile.currency_exponent))

    def note(self, note: Note) -> None:
        if note.kind in SHOWN_NOTES and not self.settings.as_json:
            self.printer.out(f"  {note.kind}: {note.text}")

    def status_lines(self) -> list[str]:
        policy, settings = self.client.policy, self.settings
        where = f"{settings.host}:{settings.port}"
        link = f"connected to {where}" if self.client.connected else f"not connected ({where})"
        lines = [f"session: {link}; {'signed on' if policy.signed_on else 'not signed on'} "
                 "(as of the last exchange)"]
        keys = policy.working_keys
        if keys is not None:
            lines.append(f"working keys: PIN key check {check_value(keys.pin_key).hex().upper()}, "
                         f"MAC key check {check_value(keys.mac_key).hex().upper()}")
        if self.last is not None:
            code = f" ({self.last.response_code})" if self.last.response_code else ""
            lines.append(f"last outcome: {self.last.operation} {self.last.kind}{code}")
        return lines + status_lines(store_status(self.store), settings.profile.currency_exponent)


async def run_session(settings: TerminalSettings, store: TerminalStore, source: LineSource, printer: Printer, *,
                      connect: ConnectFactory | None = None, clock: TrioClock | None = None,
                      handle_sigint: bool = False) -> int:
    """Run a session to its end; returns the exit status. ``connect``/``clock`` default to TCP to
    ``settings.host:port`` and the wall clock (tests pass memory streams and a virtual clock)."""
    session: _Session | None = None

    def on_note(note: Note) -> None:
        if session is not None:
            session.note(note)

    async with build_client(settings.host_address(), settings.profile, store, clock=clock, on_note=on_note,
                            connect=connect) as client:
        session = _Session(settings, store, printer, client, handle_sigint)
        end = await session.run(source)
        session = None  # closing the connection at the end is our own doing: no note for it
    return end.status


def _script_source(script: str) -> LineSource:
    if script == "-":
        return StreamLines(sys.stdin)
    path = Path(script).expanduser()
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_SCRIPT_BYTES else None
    except OSError as exc:
        raise CliError(f"--script {script}: {exc.strerror or exc}", EXIT_TERMINAL_USAGE) from None
    if data is None:
        raise CliError(f"--script {script}: larger than {MAX_SCRIPT_BYTES} bytes: is it a script?",
                       EXIT_TERMINAL_USAGE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"--script {script}: not UTF-8 text (byte {exc.start})", EXIT_TERMINAL_USAGE) from None
    return ScriptLines(text.splitlines())


@contextlib.contextmanager
def _quiet_prompt_errors() -> Iterator[None]:
    """prompt_toolkit needs a real terminal; say so in one line if it cannot start."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise CliError(f"cannot start the interactive prompt: {exc}; use --script FILE", EXIT_TERMINAL_USAGE) from None


@cli.command(cls=TerminalCommand, short_help="Many commands on one connection and one sign-on (REPL or --script).")
@terminal_options
@click.option("--script", default=None, metavar="FILE|-",
              help="Run the commands of FILE ('-': standard input) instead of prompting; stops at the first "
                   "bad line (exit 3) or failed expect (exit 5).")
def session(settings: TerminalSettings, script: str | None) -> None:
    """Keep one connection and one sign-on across commands, typed at a prompt (history, completion)
    or read from a script, so idle timeouts, sign-offs by the host, key renewal and late replies
    on the same connection are visible.

    \b
    Commands: signon, signoff, echo, purchase [MAJOR] [--amount|--minor|--pan|--expiry|--pin],
    refund (as purchase), balance [--pan|--expiry], reverse-last, settle, drain,
    wait SECONDS, expect CODE|KIND [...], status, help [COMMAND], quit.

    \b
    Example script (iso-terminal session --script sale.txt):
      signon
      purchase 12.34
      expect 00
      wait 2
      settle
      expect approved
    """
    source: LineSource
    if script is not None:
        source = _script_source(script)
    elif sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty():
        with _quiet_prompt_errors():
            source = PromptLines(settings.profile.terminal_id)
        click.echo(f"session: terminal {settings.profile.terminal_id.rstrip()} → {settings.host}:{settings.port} "
                   f"({settings.dialect.name}); help lists the commands, Ctrl-D ends", err=True)
    else:
        source = StreamLines(sys.stdin)
    printer = Printer(click.echo, lambda text: click.echo(text, err=True))
    with _notes_to_stderr(settings.verbose):
        store = _open_store(settings)
        try:
            status = trio.run(_main, settings, store, source, printer)
        except BaseException as exc:
            if not _is_interrupt(exc):
                raise
            raise CliError("interrupted: anything owed to the host is stored and goes out before the next "
                           "transaction", EXIT_INTERRUPTED) from None
        finally:
            store.close()
    click.get_current_context().exit(status)


def _main(settings: TerminalSettings, store: TerminalStore, source: LineSource, printer: Printer) -> Awaitable[int]:
    return run_session(settings, store, source, printer, handle_sigint=True)
