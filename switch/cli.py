"""``iso-switch``: the switch's command line.

Adding a command is one function decorated with ``@cli.command()``; the shared ``--dialect`` /
``--dialect-path`` and framing options come from ``switch.cli_common``, and ``ToolGroup`` reports
library errors (DialectError, CodecError, FramingError, OSError) as one line, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from switch.cli_common import (
    EXIT_BAD_DATA,
    CliError,
    FramingOverrides,
    ToolGroup,
    dialect_options,
    dialects_command,
    framing_options,
    run,
    version_option,
)
from switch.codec.dialect import Dialect
from switch.codec.framing import TPDU_LENGTH, FrameDecoder, FramingError
from switch.codec.message import Codec
from switch.describe import (
    MessageReport,
    describe_message,
    length_header_hint,
    parse_hex,
    render_text,
    report_to_json,
    stdin_bytes,
)


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def cli() -> None:
    """iso-switch: an ISO 8583 acquirer-host emulator and message tools."""


cli.add_command(dialects_command)


# --------------------------------------------------------------------------------------------
# describe


@dataclass(frozen=True, slots=True)
class DescribedFrame:
    """One message of the input and where it sits; ``report`` is None for a keep-alive frame."""

    number: int | None  # 1-based frame number; None when the input is one unframed message
    input_offset: int  # where the message (after length header and TPDU) starts in the input
    report: MessageReport | None


def _read_input(message: tuple[str, ...], raw_stdin: bool) -> bytes:
    if message == ("-",):
        if sys.stdin is None:
            raise CliError("no standard input to read ('-')")
        data = stdin_bytes(sys.stdin.buffer.read(), raw=raw_stdin)
        if not data:
            raise CliError("standard input is empty: nothing to describe")
        return data
    if "-" in message:
        raise CliError("'-' (read standard input) must be the only argument")
    if raw_stdin:
        raise CliError("--raw applies to standard input only ('-')")
    try:
        data = parse_hex(" ".join(message))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not data:
        raise CliError("no hex digits given: nothing to describe")
    return data


def _describe_frames(codec: Codec, data: bytes, overrides: FramingOverrides, tpdu: bool | None,
                     unmask: bool) -> tuple[list[DescribedFrame], str | None]:
    """Every complete frame of ``data`` described, and the framing error that stopped the rest."""
    framing = overrides.framing(codec.dialect, tpdu=tpdu)
    decoder = FrameDecoder(framing)
    decoder.feed(data)
    described: list[DescribedFrame] = []
    position = 0  # input offset of the next frame's length header
    try:
        while (frame := decoder.next_frame()) is not None:
            start = position + framing.header_size + (TPDU_LENGTH if frame.tpdu is not None else 0)
            report = None if frame.is_keepalive else describe_message(
                codec, frame.payload, unmask=unmask, tpdu=frame.tpdu)
            described.append(DescribedFrame(len(described) + 1, start, report))
            position = start + len(frame.payload)
        decoder.close()
    except FramingError as exc:
        return described, f"framing: {exc} (frame {len(described) + 1} at input byte {position})"
    return described, None


def _failure_line(item: DescribedFrame) -> str | None:
    report = item.report
    if report is None or report.failure is None:
        return None
    line = report.failure.line()
    if item.number is not None:
        where = f" in frame {item.number}"
        if report.failure.offset >= 0:
            where += f" (input byte {item.input_offset + report.failure.offset})"
        line += where
    return line


def _print_text(described: list[DescribedFrame], framing_error: str | None, hint: str | None) -> None:
    for index, item in enumerate(described):
        if index:
            click.echo()
        if item.number is not None:
            if item.report is None:
                click.echo(f"frame {item.number}: keep-alive (empty frame)")
            else:
                click.echo(f"frame {item.number}: message at input byte {item.input_offset}")
        if item.report is not None:
            for line in render_text(item.report):
                click.echo(line)
        failure = _failure_line(item)
        if failure is not None:
            click.echo(failure, err=True)
    if framing_error is not None:
        click.echo(f"error: {framing_error}", err=True)
    if hint is not None:
        click.echo(hint, err=True)


def _json_document(dialect: Dialect, framed: bool, described: list[DescribedFrame],
                   framing_error: str | None) -> dict[str, Any]:
    messages = []
    for item in described:
        entry: dict[str, Any] = {"frame": item.number, "input_offset": item.input_offset,
                                 "keepalive": item.report is None}
        if item.report is not None:
            entry.update(report_to_json(item.report))
        messages.append(entry)
    return {"dialect": dialect.name, "framed": framed, "messages": messages, "framing_error": framing_error}


@cli.command(short_help="Decode a message and show every field.")
@click.argument("message", nargs=-1, required=True, metavar="HEX...|-")
@dialect_options
@click.option("--framed", is_flag=True,
              help="The bytes include the length header (and TPDU, if the dialect's framing has one); "
                   "several frames are described one by one.")
@framing_options
@click.option("--tpdu/--no-tpdu", default=None,
              help="With --framed: whether a 5-byte TPDU follows each length header "
                   "(default: the dialect's).")
@click.option("--unmask", is_flag=True, help="Show PAN, track data, PIN block and ICC data in clear.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (all wire bytes in full) instead of a table.")
@click.option("--raw", "raw_stdin", is_flag=True,
              help="With '-': take standard input as raw bytes even if it looks like hex.")
def describe(message: tuple[str, ...], dialect: Dialect, framed: bool, framing_overrides: FramingOverrides,
             tpdu: bool | None, unmask: bool, as_json: bool, raw_stdin: bool) -> None:
    """Decode a message and show every field: number, name, wire bytes and value.

    The message is hex (spaces, newlines and colons between digits are fine) or '-' to read standard
    input: hex text if it is valid hex, raw bytes otherwise. PAN and track data are masked and the
    PIN block hidden unless --unmask. Undecodable input: what was decoded up to the failing field,
    then 'error: <reason> at field F, byte offset N', exit status 1.
    """
    if not framed and (tpdu is not None or framing_overrides != FramingOverrides()):
        raise CliError("--tpdu, --no-tpdu, --length-header, --length-includes-itself and --max-frame "
                       "describe the framing: add --framed")
    data = _read_input(message, raw_stdin)
    codec = Codec(dialect)
    hint = None
    if framed:
        described, framing_error = _describe_frames(codec, data, framing_overrides, tpdu, unmask)
    else:
        report = describe_message(codec, data, unmask=unmask)
        described, framing_error = [DescribedFrame(None, 0, report)], None
        if report.failure is not None:
            hint = length_header_hint(data)
    if as_json:
        document = _json_document(dialect, framed, described, framing_error)
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        for item in described:
            if (failure := _failure_line(item)) is not None:
                click.echo(failure, err=True)
        if framing_error is not None:
            click.echo(f"error: {framing_error}", err=True)
    else:
        _print_text(described, framing_error, hint)
    if framing_error is not None or any(item.report and item.report.failure for item in described):
        click.get_current_context().exit(EXIT_BAD_DATA)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``iso-switch``) and ``python -m switch``."""
    run(cli, argv)
