"""What ``iso-switch`` and ``iso-terminal`` share: option decorators, error reporting, ``dialects``.

Both tools take the same ``--dialect`` / ``--dialect-path`` and framing options, so they are defined
once here; a command declares them with a decorator and receives the loaded ``Dialect`` (or the
framing overrides) as one argument. ``ToolGroup`` turns the library's own errors into a one-line
``error: ...`` with a meaningful exit status, so no input ever ends in a traceback.

Exit status: 0 success, 1 the data was bad (undecodable message, framing error, I/O failure),
2 the command line was bad (usage, unknown or broken dialect, a value that cannot be encoded).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

import specs
from switch.codec.dialect import Dialect, DialectError, DialectRegistry, load_dialect
from switch.codec.framing import LENGTH_HEADERS, MAX_FRAME_LIMIT, Framing, FramingError
from switch.codec.message import CodecError

DISTRIBUTION = "iso8583-switch-emulator"
DEFAULT_DIALECT = "iso87-binary"
EXIT_BAD_DATA = 1
EXIT_USAGE = 2
DEBUG_ENV = "ISO8583_DEBUG"  # set to 1 to get the traceback of an unexpected internal error

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A refusal shown as one line, ``error: <message>``, with the given exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


class ToolGroup(click.Group):
    """A click group whose commands report library errors as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # one line, as every other refusal: not click's usage block
            where = f" (try '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            raise CliError(f"{exc.format_message()}{where}", exc.exit_code) from None
        except DialectError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        except (CodecError, FramingError) as exc:
            raise CliError(str(exc), EXIT_BAD_DATA) from None
        except BrokenPipeError:
            raise  # click's own handling: the reader went away (`| head`), not an error to report
        except OSError as exc:
            raise CliError(_os_error_text(exc), EXIT_BAD_DATA) from None


def run(group: click.Group, argv: Sequence[str] | None = None) -> NoReturn:
    """Run a tool's group as a program: never a traceback, always an exit status.

    ``ToolGroup`` already handles errors raised by commands; this is the net for anything raised
    outside them (and for bugs, which are named as such; ``ISO8583_DEBUG=1`` shows the traceback).
    """
    try:
        group.main(args=list(argv) if argv is not None else None)
    except DialectError as exc:
        _fail(str(exc), EXIT_USAGE)
    except (CodecError, FramingError) as exc:
        _fail(str(exc), EXIT_BAD_DATA)
    except OSError as exc:
        _fail(_os_error_text(exc), EXIT_BAD_DATA)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        _fail(f"internal error ({type(exc).__name__}: {exc}); set {DEBUG_ENV}=1 for the traceback", 70)
    sys.exit(0)  # pragma: no cover - group.main() in standalone mode always exits itself


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def version_option(func: F) -> F:
    return click.version_option(package_name=DISTRIBUTION, message="%(prog)s %(version)s")(func)


# --------------------------------------------------------------------------------------------
# Dialect options


def dialect_path_option(func: F) -> F:
    """``--dialect-path DIR`` (repeatable) -> ``dialect_paths: tuple[Path, ...]``."""
    return click.option(
        "--dialect-path", "dialect_paths", multiple=True, metavar="DIR",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Directory of extra dialect files (NAME.toml), searched before the shipped ones. Repeatable.",
    )(func)


def dialect_options(func: F) -> F:
    """``--dialect NAME|FILE`` and ``--dialect-path DIR`` -> ``dialect: Dialect``, loaded.

    A dialect that cannot be loaded raises DialectError, which the group reports in one line.
    """

    @click.option(
        "--dialect", "dialect_name", default=DEFAULT_DIALECT, show_default=True, metavar="NAME|FILE",
        help="Dialect name (see the `dialects` command) or path to a dialect .toml file.",
    )
    @dialect_path_option
    @functools.wraps(func)
    def wrapper(*args: Any, dialect_name: str, dialect_paths: tuple[Path, ...], **kwargs: Any) -> Any:
        return func(*args, dialect=load_dialect(dialect_name, dialect_paths), **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Framing options


@dataclass(frozen=True, slots=True)
class FramingOverrides:
    """Framing flags given on the command line; ``None`` means "as the dialect says"."""

    length_header: str | None = None
    length_includes_itself: bool | None = None
    max_frame: int | None = None

    def framing(self, dialect: Dialect, *, tpdu: bool | None = None) -> Framing:
        """The dialect's framing with these overrides; contradictory settings are a usage error."""
        try:
            return Framing.from_dialect(
                dialect, length_header=self.length_header, length_includes_itself=self.length_includes_itself,
                max_frame=self.max_frame, tpdu=tpdu,
            )
        except FramingError as exc:
            raise CliError(f"framing: {exc}", EXIT_USAGE) from None


def framing_options(func: F) -> F:
    """``--length-header``, ``--length-includes-itself/--length-excludes-itself``, ``--max-frame``
    -> ``framing_overrides: FramingOverrides``. TPDU options differ per command, so each declares its own.
    """

    @click.option("--length-header", type=click.Choice(LENGTH_HEADERS), default=None,
                  help="Length header before each message (default: the dialect's).")
    @click.option("--length-includes-itself/--length-excludes-itself", default=None,
                  help="Whether the length header counts its own bytes (default: the dialect's).")
    @click.option("--max-frame", type=click.IntRange(1, MAX_FRAME_LIMIT), default=None, metavar="BYTES",
                  help="Largest frame body accepted (default: the dialect's, normally 8192).")
    @functools.wraps(func)
    def wrapper(*args: Any, length_header: str | None, length_includes_itself: bool | None,
                max_frame: int | None, **kwargs: Any) -> Any:
        overrides = FramingOverrides(length_header, length_includes_itself, max_frame)
        return func(*args, framing_overrides=overrides, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# `dialects`, the same command in both tools


@click.command("dialects", short_help="List the dialects --dialect accepts.")
@dialect_path_option
def dialects_command(dialect_paths: tuple[Path, ...]) -> None:
    """List the dialects --dialect accepts: name, default framing, source and title.

    A dialect file that cannot be loaded is listed as refused, with its reason on stderr, and the
    exit status is 1.
    """
    from switch.describe import framing_summary  # here: only this command needs the message describer

    registry = DialectRegistry(dialect_paths)
    shipped = specs.dialects_dir().resolve()
    rows: list[tuple[str, str, str, str]] = []
    refusals: list[str] = []
    for name in registry.names():
        path = registry.path_of(name)
        source = "shipped" if path.resolve().parent == shipped else str(path)
        try:
            dialect = registry.load(name)
        except DialectError as exc:
            rows.append((name, "-", source, "REFUSED (see below)"))
            refusals.append(str(exc))
            continue
        rows.append((name, framing_summary(dialect.framing), source, dialect.title))
    widths = [max(len(row[i]) for row in [("name", "framing", "source", ""), *rows]) for i in range(3)]
    click.echo(f"{'name':<{widths[0]}}  {'framing':<{widths[1]}}  {'source':<{widths[2]}}  title")
    for name, framing, source, title in rows:
        click.echo(f"{name:<{widths[0]}}  {framing:<{widths[1]}}  {source:<{widths[2]}}  {title}")
    for refusal in refusals:
        click.echo(f"error: {refusal}", err=True)
    if refusals:
        click.get_current_context().exit(EXIT_BAD_DATA)
