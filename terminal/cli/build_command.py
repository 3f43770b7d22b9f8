"""``iso-terminal build``: encode a message given field by field and print its hex."""

from __future__ import annotations

from collections.abc import Iterable

import click

from switch.cli_common import (
    EXIT_USAGE,
    CliError,
    FramingOverrides,
    dialect_options,
    framing_options,
)
from switch.codec.composite import CupHeader
from switch.codec.dialect import Dialect
from switch.codec.framing import FramingError
from switch.codec.message import Codec, Message, MessageEncodeError
from switch.describe import STRUCTURAL_NAMES, parse_hex
from terminal.cli.app import cli


def parse_field_args(assignments: Iterable[str], dialect: Dialect) -> dict[int, str]:
    """``["3=000000", "41=TERM0001"]`` -> ``{3: "000000", 41: "TERM0001"}``, checked against the dialect.

    Values are what ``Message`` holds: text as text, binary and BCD-packed fields as hex digits.
    """
    fields: dict[int, str] = {}
    for assignment in assignments:
        number_text, sep, value = assignment.partition("=")
        if not sep:
            raise CliError(f"-f {assignment!r}: expected FIELD=VALUE, e.g. -f 3=000000")
        number_text = number_text.strip()
        if not number_text.isdigit():
            raise CliError(f"-f {assignment!r}: {number_text!r} is not a field number")
        number = int(number_text)
        if number in (1, 65):
            raise CliError(f"field {number} is a bitmap; the codec computes it from the fields given")
        if number not in dialect.fields:
            raise CliError(f"field {number} is not defined in dialect {dialect.name}")
        if number in fields:
            raise CliError(f"field {number} given twice")
        fields[number] = value
    return dict(sorted(fields.items()))


def _header_value(dialect: Dialect, header_hex: str | None) -> str:
    """The ``Message.header`` text for ``--header HEX``, or the dialect's usual header."""
    if not dialect.header_length:
        if header_hex is not None:
            raise CliError(f"dialect {dialect.name} has no message header; drop --header")
        return ""
    if header_hex is None:
        if dialect.family == "cup":
            return CupHeader.DEFAULT.format()
        raise CliError(
            f"dialect {dialect.name} starts each message with a {dialect.header_length}-byte "
            f"{dialect.header_name}: give it with --header HEX"
        )
    try:
        header = parse_hex(header_hex)
    except ValueError as exc:
        raise CliError(f"--header: {exc}") from None
    if len(header) != dialect.header_length:
        raise CliError(
            f"--header: dialect {dialect.name} has a {dialect.header_length}-byte header, "
            f"got {len(header)} bytes"
        )
    if dialect.spec["h"]["data_enc"] == "b":
        return header.hex().upper()
    try:
        return header.decode("ascii")
    except UnicodeDecodeError:
        raise CliError(f"--header: dialect {dialect.name} carries its header as ASCII text") from None


def _element(dialect: Dialect, key: str) -> str:
    if key in STRUCTURAL_NAMES:
        return STRUCTURAL_NAMES[key]
    if key.isdigit():
        return f"field {key} ({dialect.field_name(int(key))})"
    return "the message"


def _check_mti(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if len(value) != 4 or not value.isdigit():
        raise click.BadParameter(f"an MTI is four digits, got {value!r}")
    return value


@cli.command(short_help="Encode a message given field by field and print its hex.")
@click.option("--mti", required=True, callback=_check_mti, metavar="MTI", help="Message type, e.g. 0200.")
@click.option(
    "-f",
    "--field",
    "field_args",
    multiple=True,
    metavar="N=VALUE",
    help="A field, e.g. -f 4=000000001234; binary and BCD-packed fields take hex digits. Repeatable.",
)
@click.option(
    "--header",
    "header_hex",
    metavar="HEX",
    help="Dialect message header (CUP: 6 bytes; default 603100000000).",
)
@dialect_options
@click.option("--framed", is_flag=True, help="Add the dialect's length header (and TPDU).")
@framing_options
@click.option("--tpdu", "tpdu_hex", metavar="HEX", help="With --framed: the 5-byte TPDU, e.g. 6000010000.")
@click.option("--no-tpdu", is_flag=True, help="With --framed: no TPDU even if the dialect's framing has one.")
def build(
    mti: str,
    field_args: tuple[str, ...],
    header_hex: str | None,
    dialect: Dialect,
    framed: bool,
    framing_overrides: FramingOverrides,
    tpdu_hex: str | None,
    no_tpdu: bool,
) -> None:
    """Encode a message and print it as hex (the inverse of `iso-switch describe`).

    \b
    Example:
      iso-terminal build --mti 0200 -f 3=000000 -f 4=000000001234 -f 11=000001 \\
          | iso-switch describe -
    """
    if not framed and (tpdu_hex is not None or no_tpdu or framing_overrides != FramingOverrides()):
        raise CliError(
            "--tpdu, --no-tpdu, --length-header, --length-includes-itself and --max-frame "
            "shape the frame: add --framed"
        )
    if tpdu_hex is not None and no_tpdu:
        raise CliError("--tpdu and --no-tpdu contradict each other")
    fields = parse_field_args(field_args, dialect)
    message = Message(mti, fields, _header_value(dialect, header_hex))
    try:
        payload = Codec(dialect).encode(message)
    except MessageEncodeError as exc:
        raise CliError(f"{_element(dialect, exc.field)}: {exc.reason}", EXIT_USAGE) from None
    if framed:
        payload = _frame(dialect, payload, framing_overrides, tpdu_hex, no_tpdu)
    click.echo(payload.hex().upper())


def _frame(
    dialect: Dialect, payload: bytes, overrides: FramingOverrides, tpdu_hex: str | None, no_tpdu: bool
) -> bytes:
    framing = overrides.framing(dialect, tpdu=True if tpdu_hex is not None else (False if no_tpdu else None))
    tpdu = None
    if framing.tpdu:
        if tpdu_hex is None:
            raise CliError(
                f"dialect {dialect.name} frames messages with a TPDU: give it with --tpdu HEX "
                "(e.g. --tpdu 6000010000) or drop it with --no-tpdu"
            )
        try:
            tpdu = parse_hex(tpdu_hex)
        except ValueError as exc:
            raise CliError(f"--tpdu: {exc}") from None
    try:
        return framing.encode(payload, tpdu=tpdu)
    except FramingError as exc:
        raise CliError(f"framing: {exc}", EXIT_USAGE) from None
