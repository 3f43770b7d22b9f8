"""``iso-terminal``: the terminal's command line.

The terminal commands (``signon``, ``echo``, ``purchase``, ``refund``, ``reverse-last``, ``settle``,
``drain``, ``signoff``) each run one operation of ``terminal.policy`` through ``terminal.client``
against a host, print its outcome in one line (or ``--json``) and exit with a status scripts can
branch on: 0 approved/completed, 1 declined/refused, 2 outcome unknown or reversed, 3 usage or
connection error. Exit 2 must mean "money may have moved" and nothing else, so in these commands
every usage error (click's included) exits 3, not click's usual 2. ``status`` shows the durable
store without connecting.

``build`` is the inverse of ``iso-switch describe``: it encodes a message given field by field and
prints its hex, so a test message can be crafted and piped
(``iso-terminal build ... | iso-switch describe -``). Adding a command is one function decorated
with ``@cli.command()``; shared options come from ``switch.cli_common``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import platformdirs

from switch.cli_common import (
    DISTRIBUTION,
    EXIT_USAGE,
    CliError,
    FramingOverrides,
    ToolGroup,
    dialect_options,
    dialects_command,
    framing_options,
    run,
    version_option,
)
from switch.codec.composite import CupHeader
from switch.codec.dialect import Dialect, DialectError
from switch.codec.framing import TPDU_LENGTH, Framing, FramingError
from switch.codec.message import Codec, Message, MessageEncodeError
from switch.describe import STRUCTURAL_NAMES, parse_hex
from switch.profiles import TerminalSecurityProfile
from terminal.policy import (
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
    meaning_of,
)
from terminal.profile import ProfileError, TerminalProfile, format_amount
from terminal.store import JournalEntry, StoreError, TerminalStore


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def cli() -> None:
    """iso-terminal: a careful POS terminal client and message tools."""


cli.add_command(dialects_command)


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


# ============================================================================================
# Terminal commands: run one operation against a host


EXIT_OUTCOME_UNKNOWN = 2
EXIT_TERMINAL_USAGE = 3
EXIT_SETTLED_UNBALANCED = 4
EXIT_INTERRUPTED = 130
OUTCOME_EXIT_CODES = {
    "unbalanced": EXIT_SETTLED_UNBALANCED,
    "approved": 0,
    "completed": 0,
    "declined": 1,
    "refused": 1,
    "reversed": EXIT_OUTCOME_UNKNOWN,
    "unknown-queued": EXIT_OUTCOME_UNKNOWN,
    "unknown": EXIT_OUTCOME_UNKNOWN,
    "failed": EXIT_TERMINAL_USAGE,
}
"""Exit status per ``Outcome.kind``: 0 done, 1 declined/refused, 2 money may have moved, 3 not done,
4 the batch was settled unbalanced (uploaded, closed by the host: contact the acquirer)."""

DEFAULT_TERMINAL_ID = "TERM0001"
DEFAULT_MERCHANT_ID = "MERCHANT0000001"
TEST_PAN = "4761739001010010"  # Luhn-valid, and not in the switch's test-card table: approved
_AMOUNT = re.compile(r"[0-9]+(?:\.([0-9]+))?")

F = TypeVar("F", bound=Callable[..., Any])


def default_expiry(today: date) -> str:
    """A card expiry (YYMM) safely in the future: December, three years from ``today``."""
    return f"{(today.year + 3) % 100:02d}12"


def default_store_path(terminal_id: str) -> Path:
    """The per-user store file of a terminal, so it survives across runs without any flag."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", terminal_id.strip()) or "terminal"
    return Path(platformdirs.user_data_dir(DISTRIBUTION)) / "terminals" / f"{safe}.sqlite"


def parse_amount(text: str, exponent: int) -> int:
    """``"12.34"`` in major units → 1234 minor units (``exponent`` 2). ValueError says what is wrong."""
    value = text.strip()
    if value.startswith("-"):
        raise ValueError(f"--amount {text!r}: an amount cannot be negative")
    match = _AMOUNT.fullmatch(value)
    if match is None:
        raise ValueError(f"--amount {text!r}: expected a decimal number of major units, e.g. 12.34")
    decimals = match.group(1) or ""
    if len(decimals) > exponent:
        allowed = f"at most {exponent} decimal places" if exponent else "no decimal places"
        raise ValueError(f"--amount {text!r}: this currency has {allowed}")
    whole = value.split(".", 1)[0]
    return int(whole) * 10**exponent + int(decimals.ljust(exponent, "0") or "0")


def _minor_units(amount: str | None, minor: str | None, exponent: int) -> int:
    if (amount is None) == (minor is None):
        raise CliError(
            "give the amount once: --amount 12.34 (major units) or --minor 1234 (minor units)",
            EXIT_TERMINAL_USAGE,
        )
    try:
        if amount is not None:
            return parse_amount(amount, exponent)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_TERMINAL_USAGE) from None
    assert minor is not None
    text = minor.strip()
    if not (text.isascii() and text.isdigit()):
        reason = "an amount cannot be negative" if text.startswith("-") else "expected whole minor units, e.g. 1234"
        raise CliError(f"--minor {minor!r}: {reason}", EXIT_TERMINAL_USAGE)
    return int(text)


class TerminalCommand(click.Command):
    """A terminal command: every usage error exits 3, because 2 means "outcome unknown" here."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            exc.exit_code = EXIT_TERMINAL_USAGE  # type: ignore[misc]  # per instance, on purpose
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (DialectError, ProfileError, StoreError) as exc:
            raise CliError(str(exc), EXIT_TERMINAL_USAGE) from None
        except click.ClickException as exc:
            if exc.exit_code == EXIT_USAGE:
                exc.exit_code = EXIT_TERMINAL_USAGE  # type: ignore[misc]  # per instance, on purpose
            raise


@dataclass(frozen=True)
class TerminalSettings:
    """Everything the shared options decide: where the host is, how to talk, who the terminal is."""

    host: str
    port: int
    dialect: Dialect
    framing: Framing
    tpdu: bytes | None
    profile: TerminalProfile
    store_path: str
    as_json: bool
    verbose: bool
    ssl_context: ssl.SSLContext | None = None  # TLS to the host (--tls, --tls-ca, --tls-insecure)


def terminal_options(func: F) -> F:
    """The options every terminal command shares → ``settings: TerminalSettings``."""

    @click.option("--host", default="127.0.0.1", show_default=True, help="Host (switch) address.")
    @click.option("--port", default=8583, show_default=True, type=click.IntRange(1, 65535), help="Host TCP port.")
    @dialect_options
    @framing_options
    @click.option("--tpdu", "tpdu_hex", metavar="HEX",
                  help="TPDU sent before each message when the framing has one (CUP; default 6000010000).")
    @click.option("--terminal-id", default=DEFAULT_TERMINAL_ID, show_default=True, metavar="ID",
                  help="Terminal id (field 41, up to 8 characters); each has its own store.")
    @click.option("--merchant-id", default=DEFAULT_MERCHANT_ID, show_default=True, metavar="ID",
                  help="Merchant id (field 42, up to 15 characters).")
    @click.option("--currency", default="", metavar="CODE",
                  help="ISO 4217 numeric currency (default: 840, or 156 for CUP dialects).")
    @click.option("--currency-exponent", type=click.IntRange(0, 4), default=2, show_default=True,
                  help="Decimal places of the currency: how --amount 12.34 becomes minor units.")
    @click.option("--timeout", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
                  metavar="SECONDS", help="Response timeout of every exchange; then the terminal reverses.")
    @click.option("--connect-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
                  metavar="SECONDS", help="Bound on one connection attempt.")
    @click.option("--connect-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
                  help="Connection attempts (with backoff) before the command gives up.")
    @click.option("--signon-code", "signon_codes", multiple=True, metavar="CODE",
                  help="A response code by which this host demands a new sign-on, besides A0 and 99 (and the "
                       "CUP header's 3); repeatable. E.g. 58 for a host that answers 58 to an unsigned terminal.")
    @click.option("--store", "store_option", default=None, metavar="PATH",
                  help="The terminal's SQLite store (default: a per-user data file per terminal id).")
    @click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
    @click.option("-v", "--verbose", is_flag=True,
                  help="Log what the terminal does (sign-ons, timeouts, reversals, late replies) to stderr.")
    @click.option("--profiles", "profiles_path", default=None, metavar="FILE",
                  type=click.Path(exists=True, dir_okay=False),
                  help="Terminal profile file (the switch's --profiles): ids, dialect, framing, TPDU, master "
                       "key, MAC algorithm of --terminal-id (not needed when the file has one terminal).")
    @click.option("--tls", is_flag=True, help="Connect over TLS, verifying the host's certificate.")
    @click.option("--tls-ca", default=None, metavar="FILE", type=click.Path(exists=True, dir_okay=False),
                  help="Trust this CA or self-signed certificate (PEM) instead of the system's. Implies --tls.")
    @click.option("--tls-insecure", is_flag=True,
                  help="TLS without checking the host's certificate (test switches only). Implies --tls.")
    @functools.wraps(func)
    def wrapper(*args: Any, host: str, port: int, dialect: Dialect, framing_overrides: FramingOverrides,
                tpdu_hex: str | None, terminal_id: str, merchant_id: str, currency: str, currency_exponent: int,
                timeout: float, connect_timeout: float, connect_attempts: int, signon_codes: tuple[str, ...],
                store_option: str | None,
                as_json: bool, verbose: bool, profiles_path: str | None, tls: bool, tls_ca: str | None,
                tls_insecure: bool, **kwargs: Any) -> Any:
        security = None
        if profiles_path is not None:
            security, dialect = _profile_from_file(profiles_path, terminal_id, dialect)
            framing = framing_overrides.framing(dialect) if framing_overrides != FramingOverrides() else (
                security.framing)
            if framing_overrides != FramingOverrides() and security.framing_overrides:
                raise CliError(f"terminal {security.terminal_id} sets its framing in {profiles_path}; "
                               "drop --length-header / --length-includes-itself / --max-frame, or edit the file",
                               EXIT_TERMINAL_USAGE)
        else:
            framing = framing_overrides.framing(dialect)
        tpdu = None
        if tpdu_hex is not None:
            if not framing.tpdu:
                raise CliError(f"--tpdu: the framing of dialect {dialect.name} carries no TPDU")
            try:
                tpdu = parse_hex(tpdu_hex)
            except ValueError as exc:
                raise CliError(f"--tpdu: {exc}") from None
            if len(tpdu) != TPDU_LENGTH:
                raise CliError(f"--tpdu: a TPDU is {TPDU_LENGTH} bytes, got {len(tpdu)}")
        settings_kwargs: dict[str, Any] = {
            "currency": currency, "currency_exponent": currency_exponent, "response_timeout": timeout,
            "connect_timeout": connect_timeout, "connect_attempts": connect_attempts,
        }
        if security is None:
            profile = TerminalProfile.for_dialect(dialect, terminal_id, merchant_id, **settings_kwargs)
        else:
            profile = TerminalProfile.from_security_profile(security, **settings_kwargs)
            if _given("merchant_id"):
                profile = dataclasses.replace(profile, merchant_id=merchant_id)
            if tpdu is None and security.tpdu is not None:
                tpdu = security.tpdu
        if signon_codes:
            demand = frozenset(profile.signon_demand_codes or ()) | frozenset(c.upper() for c in signon_codes)
            try:
                profile = dataclasses.replace(profile, signon_demand_codes=demand)
            except ProfileError as exc:
                raise CliError(f"--signon-code: {exc}", EXIT_TERMINAL_USAGE) from None
        ssl_context = None
        if tls or tls_ca is not None or tls_insecure:
            from terminal.client import client_ssl_context

            try:
                ssl_context = client_ssl_context(tls_ca, insecure=tls_insecure)
            except ValueError as exc:
                raise CliError(str(exc), EXIT_TERMINAL_USAGE) from None
        path = default_store_path(profile.terminal_id) if store_option is None else Path(store_option).expanduser()
        settings = TerminalSettings(host, port, dialect, framing, tpdu, profile, str(path), as_json, verbose,
                                    ssl_context)
        return func(*args, settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


def _given(name: str) -> bool:
    """Whether option ``name`` was given on the command line (or the environment), not defaulted."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _profile_from_file(path: str, terminal_id: str, dialect: Dialect) -> tuple[TerminalSecurityProfile, Dialect]:
    """The terminal's entry in a profile file and its dialect; --terminal-id picks it unless the file
    has one terminal, and an explicit --dialect must agree with the file."""
    from switch.codec.dialect import load_dialect
    from switch.profiles import ProfileError as ProfileFileError
    from switch.profiles import load_profiles

    dialect_paths = click.get_current_context().params.get("dialect_paths", ())
    try:
        profiles = load_profiles(path, dialect_path=dialect_paths)
    except ProfileFileError as exc:
        raise CliError(str(exc), EXIT_TERMINAL_USAGE) from None
    known = ", ".join(p.terminal_id for p in profiles) or "none"
    if _given("terminal_id"):
        security = profiles.get(terminal_id.ljust(8)) or profiles.get(terminal_id)
        if security is None:
            raise CliError(f"terminal {terminal_id!r} is not in {path} (it has: {known})", EXIT_TERMINAL_USAGE)
    elif len(profiles) == 1:
        security = next(iter(profiles))
    else:
        raise CliError(f"{path} has {len(profiles)} terminals ({known}): pick one with --terminal-id",
                       EXIT_TERMINAL_USAGE)
    if _given("dialect_name"):
        if dialect.name != security.dialect:
            raise CliError(f"--dialect {dialect.name} contradicts terminal {security.terminal_id}'s dialect "
                           f"{security.dialect} in {path}", EXIT_TERMINAL_USAGE)
        return security, dialect
    return security, load_dialect(security.dialect, dialect_paths)


def card_options(func: F) -> F:
    """Amount and card of a purchase or refund."""

    @click.option("--amount", metavar="MAJOR", help="Amount in major units, e.g. 12.34.")
    @click.option("--minor", metavar="UNITS", help="Amount in minor units instead, e.g. 1234.")
    @click.option("--pan", default=TEST_PAN, show_default=True, help="Card number (Luhn-checked).")
    @click.option("--expiry", default=None, metavar="YYMM", help="Card expiry (default: December, 3 years ahead).")
    @click.option("--pin", default=None, metavar="DIGITS",
                  help="Cardholder PIN (a TEST PIN): sent in field 52 as an ISO format 0 block encrypted under "
                       "the PIN working key, so it needs a profile with a tmk or pin_key (--profiles).")
    @functools.wraps(func)
    def wrapper(*args: Any, settings: TerminalSettings, amount: str | None, minor: str | None, pan: str,
                expiry: str | None, pin: str | None, **kwargs: Any) -> Any:
        units = _minor_units(amount, minor, settings.profile.currency_exponent)
        card = {"amount": units, "pan": pan.strip(), "expiry": expiry or default_expiry(date.today())}
        if pin is not None:
            card["pin"] = pin.strip()
        return func(*args, settings=settings, card=card, **kwargs)

    return wrapper  # type: ignore[return-value]


def outcome_line(outcome: Outcome, exponent: int) -> str:
    """One readable line: ``purchase 12.34 STAN 000002: approved, RRN 000000000001, auth code 123456``."""
    head = [outcome.operation]
    if outcome.amount is not None:
        head.append(format_amount(outcome.amount, exponent))
    if outcome.stan:
        head.append(f"STAN {outcome.stan}")
    text = outcome.text.removeprefix(f"{outcome.operation} ")
    return f"{' '.join(head)}: {text}"


@contextlib.contextmanager
def _notes_to_stderr(verbose: bool) -> Iterator[None]:
    """The client's journal notes on stderr with -v; otherwise nowhere (the outcome line says it all)."""
    logger = logging.getLogger("terminal")
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    else:
        handler = logging.NullHandler()  # keeps logging's last-resort handler from printing warnings
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _open_store(settings: TerminalSettings) -> TerminalStore:
    if settings.store_path != ":memory:":
        Path(settings.store_path).parent.mkdir(parents=True, exist_ok=True)
    return TerminalStore.open(settings.store_path, settings.profile.terminal_id)


async def _drive(settings: TerminalSettings, store: TerminalStore, command: Command,
                 confirmation: Callable[[], Awaitable[None]] | None = None) -> tuple[Outcome, bool]:
    """(outcome, interrupted). Ctrl-C cancels the command instead of raising KeyboardInterrupt through
    Trio's task groups: the policy is told (``interrupt``) so the store says what was in flight."""
    import signal

    import trio

    from terminal.client import TerminalClient, TrioClock, tcp_connector
    from terminal.policy import TerminalPolicy

    clock = TrioClock.wall()
    policy = TerminalPolicy(settings.profile, store, clock.now())
    connect = tcp_connector(settings.host, settings.port, ssl_context=settings.ssl_context)
    finished: list[Outcome] = []
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with TerminalClient(policy, Codec(settings.dialect), settings.framing, connect, clock,
                                  tpdu=settings.tpdu, confirmation=confirmation) as client, \
                trio.open_nursery() as nursery:

            async def run() -> None:
                finished.append(await client.run_command(command))
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for _ in interrupts:
                nursery.cancel_scope.cancel()
                break
    if finished:
        return finished[0], False
    if not policy.busy:  # interrupted after the operation finished, before its result was taken
        return Outcome("failed", command.name, "interrupted"), True
    return policy.interrupt(clock.now()), True


def run_terminal_command(settings: TerminalSettings, command: Command,
                         confirmation: Callable[[], Awaitable[None]] | None = None) -> NoReturn:
    """Run one command against the host, print its outcome, exit with its status.

    Ctrl-C prints one line and exits 2 ("outcome unknown") when an exchange was in flight — its
    reversal or repeat is stored and goes out before the next transaction — else 130.
    """
    import trio

    with _notes_to_stderr(settings.verbose):
        store = _open_store(settings)
        try:
            outcome, interrupted = trio.run(_drive, settings, store, command, confirmation)
        except BaseException as exc:  # a second Ctrl-C during shutdown: KeyboardInterrupt, maybe grouped
            if not _is_interrupt(exc):
                raise
            raise CliError(
                "interrupted: anything owed to the host is stored and goes out before the next transaction",
                EXIT_INTERRUPTED,
            ) from None
        finally:
            store.close()
    if settings.as_json:
        click.echo(json.dumps({**outcome.as_dict(), "interrupted": interrupted}))
    else:
        click.echo(outcome_line(outcome, settings.profile.currency_exponent))
    code = OUTCOME_EXIT_CODES[outcome.kind]
    if isinstance(command, ReverseLast) and outcome.kind == "reversed":
        code = 0  # the void asked for was done; 2 stays "money may have moved"
    if interrupted and code != EXIT_OUTCOME_UNKNOWN:
        code = EXIT_INTERRUPTED
    click.get_current_context().exit(code)


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(KeyboardInterrupt)[1]
        return rest is None or _is_interrupt(rest)
    return False


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


# -- status ---------------------------------------------------------------------------------------


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _batch_totals(entries: Iterable[JournalEntry]) -> dict[str, int]:
    totals = {"debit_count": 0, "debit_amount": 0, "credit_count": 0, "credit_amount": 0}
    for entry in entries:
        if entry.captured:
            totals[f"{entry.direction}_count"] += 1
            totals[f"{entry.direction}_amount"] += entry.amount
    totals["net_amount"] = totals["debit_amount"] - totals["credit_amount"]
    return totals


def store_status(store: TerminalStore) -> dict[str, Any]:
    """What ``status --json`` prints: counters, queues with reasons and attempts, the open batch."""
    entries = store.entries(batch=store.batch)
    reversals = []
    for reversal in store.reversals():
        entry = store.entry(reversal.journal_id)
        reversals.append({
            "journal_id": entry.id, "kind": entry.kind, "stan": entry.stan, "amount": entry.amount,
            "reason": reversal.reason, "meaning": meaning_of(reversal.reason), "attempts": reversal.attempts,
            "created_at": reversal.created_at, "updated_at": reversal.updated_at,
        })
    advices = []
    for advice in store.advices():
        entry = store.entry(advice.journal_id)
        advices.append({
            "journal_id": entry.id, "stan": entry.stan, "amount": entry.amount, "attempts": advice.attempts,
            "created_at": advice.created_at, "updated_at": advice.updated_at,
        })
    pending = store.pending_settlement
    return {
        "store": store.path,
        "summary": store.summary(),
        "signed_on_trusted": False,
        "clock": None if store.clock_offset is None else {
            "offset_seconds": store.clock_offset[0], "synced_at": store.clock_offset[1],
        },  # sessions do not survive restarts: the next command signs on again
        "open_batch_totals": _batch_totals(entries),
        "pending_reversals": reversals,
        "pending_advices": advices,
        "pending_settlement": None if pending is None else {
            "batch": pending.batch, "stan": pending.message.get(11), "attempts": pending.attempts,
        },
        "open_batch_entries": [entry.as_dict() for entry in entries],
    }


def _clock_line(clock: dict[str, float] | None) -> str:
    if clock is None:
        return "clock: not synchronised with the host yet (the next sign-on does it)"
    return (f"clock: host − terminal {clock['offset_seconds']:+.0f}s, learnt at sign-on {_utc(clock['synced_at'])}; "
            "fields 7/12/13 use the host's time")


def status_lines(status: dict[str, Any], exponent: int) -> list[str]:
    """``status_json`` for people."""
    summary = status["summary"]
    money = functools.partial(format_amount, exponent=exponent)
    states = ", ".join(f"{state} {count}" for state, count in sorted(summary["open_batch_states"].items()))
    totals = status["open_batch_totals"]
    signed = summary["signed_on_at"]
    lines = [
        f"terminal {summary['terminal_id']} (store {status['store']})",
        f"last STAN {summary['last_stan']}; open batch {summary['batch']}: "
        f"{summary['open_batch_entries']} entries{f' ({states})' if states else ''}",
        f"open batch totals: {totals['debit_count']} debits {money(totals['debit_amount'])}, "
        f"{totals['credit_count']} credits {money(totals['credit_amount'])}, net {money(totals['net_amount'])}",
        ("signed on: never, or signed off" if signed is None else f"last signed on {_utc(signed)}")
        + " (not trusted across runs: the next command signs on first)",
        _clock_line(status.get("clock")),
        f"pending reversals: {len(status['pending_reversals']) or 'none'}",
    ]
    for item in status["pending_reversals"]:
        lines.append(f"  {item['kind']} STAN {item['stan']} {money(item['amount'])}: reason {item['reason']} "
                     f"({item['meaning']}), {item['attempts']} attempts, queued {_utc(item['created_at'])}")
    lines.append(f"pending advices: {len(status['pending_advices']) or 'none'}")
    for item in status["pending_advices"]:
        lines.append(f"  advice STAN {item['stan']} {money(item['amount'])}: {item['attempts']} attempts")
    pending = status["pending_settlement"]
    lines.append("pending settlement: " + ("none" if pending is None else
                 f"batch {pending['batch']} STAN {pending['stan']}, {pending['attempts']} attempts, "
                 "repeated before anything else"))
    return lines


@cli.command(cls=TerminalCommand, short_help="Show the terminal's store: STAN, batch, what is owed. No network.")
@terminal_options
def status(settings: TerminalSettings) -> None:
    """Show the terminal's durable state without connecting: last STAN, open batch and its totals,
    pending reversals and advices (with reasons and attempts), an unanswered settlement."""
    path = settings.store_path
    if path != ":memory:" and not os.path.exists(path):
        terminal = settings.profile.terminal_id.rstrip()
        if settings.as_json:
            click.echo(json.dumps({"store": path, "exists": False, "terminal_id": terminal}))
        else:
            click.echo(f"terminal {terminal}: no store at {path} yet (nothing done with this terminal)")
        return
    with TerminalStore.open(path, settings.profile.terminal_id) as store:
        report = store_status(store)
    if settings.as_json:
        click.echo(json.dumps({**report, "exists": True}))
    else:
        click.echo("\n".join(status_lines(report, settings.profile.currency_exponent)))


# -- load -----------------------------------------------------------------------------------------


@cli.command(cls=TerminalCommand, short_help="Many terminals at once: throughput, latency, consistency check.")
@terminal_options
@click.option("--terminals", "terminal_count", type=click.IntRange(1, 100_000), default=10, show_default=True,
              help="Emulated terminals, each with its own store, all on one event loop.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Total transactions over all terminals.")
@click.option("--duration", default=None, metavar="TIME", help="Or run this long, e.g. 60s, 5m, 1m30s.")
@click.option("--rate", default=None, metavar="R/s",
              help="Global rate limit (open loop), e.g. 200/s. Default: every terminal back to back (closed loop).")
@click.option("--mix", default=None, metavar="OP=W,...",
              help="Operations and weights among purchase, refund, preauth, offline, void, echo "
                   "(default: purchase=90,echo=5,refund=5).")
@click.option("--settle", is_flag=True, help="Settle every terminal's batch at the end.")
@click.option("--amount", "amount_text", default="1.00-100.00", show_default=True, metavar="MIN-MAX",
              help="Random amounts in this range, in major units (one value: always that amount).")
@click.option("--pan", "pans", multiple=True, metavar="PAN",
              help="Card number to use; repeat for several, picked at random (default: an approved test card).")
@click.option("--seed", type=int, default=None, help="Seed for the mix, amounts and cards (repeatable runs).")
@click.option("--store-dir", default=None, metavar="DIR",
              help="The terminals' stores (default: where every terminal command keeps its store, so STANs and "
                   "batches continue across runs and `status --terminal-id L0000001` works).")
@click.option("--report", "report_dir", default=None, metavar="DIR", help="Write summary.json and report.html here.")
@click.option("--quiet", is_flag=True, help="No progress display; only the summary.")
@click.option("--admin", "admin_url", default=None, metavar="URL",
              help="The switch's admin API, for the consistency check (default: http://127.0.0.1:8584).")
@click.option("--admin-token", envvar="ISO_SWITCH_ADMIN_TOKEN", default=None, metavar="TOKEN",
              help="Bearer token of the admin API (env ISO_SWITCH_ADMIN_TOKEN).")
@click.option("--no-check", is_flag=True, help="Skip the consistency check.")
@click.option("--require-check", is_flag=True, help="Exit 5 when the consistency check cannot run.")
def load(settings: TerminalSettings, terminal_count: int, count: int | None, duration: str | None, rate: str | None,
         mix: str | None, settle: bool, amount_text: str, pans: tuple[str, ...], seed: int | None,
         store_dir: str | None, report_dir: str | None, quiet: bool, admin_url: str | None, admin_token: str | None,
         no_check: bool, require_check: bool) -> None:
    """Run N emulated terminals against a host and report throughput, latency and outcomes.

    Every terminal follows all the terminal rules (sign-on, timeouts, reversals, settlement) with
    its own store; ids count up from L0000001 (or from --terminal-id; with --profiles every terminal
    uses that entry's keys and MAC settings under its own id). At the end each terminal
    drains what it owes, settles with --settle, and — when the switch's admin API answers — every
    terminal's journal is compared with the host's ledger, transaction by transaction.

    \b
    Exit: 0 done (and consistent, or not checked); 3 usage error or host never reached;
    4 terminals and host disagree; 5 --require-check and the check could not run; 130 interrupted.

    \b
    Example:
      iso-terminal load --terminals 20 --duration 30s --settle --report load-report
    """
    from terminal.load import (
        DEFAULT_ADMIN_URL,
        DEFAULT_MIX,
        CheckOptions,
        LoadConfig,
        LoadError,
        derive_terminal_ids,
        execute,
        parse_load_duration,
        parse_mix,
        parse_rate,
    )
    from terminal.policy import card_problem

    ctx = click.get_current_context()
    if ctx.get_parameter_source("store_option") is not click.core.ParameterSource.DEFAULT:
        raise CliError("load keeps one store per terminal: give a directory with --store-dir", EXIT_TERMINAL_USAGE)
    if no_check and (require_check or admin_url is not None):
        raise CliError("--no-check contradicts --require-check and --admin", EXIT_TERMINAL_USAGE)
    explicit_id = ctx.get_parameter_source("terminal_id") is not click.core.ParameterSource.DEFAULT
    exponent = settings.profile.currency_exponent
    low_text, _, high_text = amount_text.partition("-")
    try:
        amount_range = (parse_amount(low_text, exponent), parse_amount(high_text or low_text, exponent))
    except ValueError as exc:
        raise CliError(str(exc), EXIT_TERMINAL_USAGE) from None
    expiry = default_expiry(date.today())
    cards = tuple(pan.strip() for pan in pans) or (TEST_PAN,)
    for pan in cards:
        problem = card_problem(pan, expiry, datetime.now(UTC))
        if problem is not None:
            raise CliError(f"--pan {pan}: {problem}", EXIT_TERMINAL_USAGE)
    try:
        config = LoadConfig(
            host=settings.host, port=settings.port, dialect=settings.dialect, framing=settings.framing,
            profile=settings.profile, tpdu=settings.tpdu, ssl_context=settings.ssl_context,
            terminal_ids=tuple(derive_terminal_ids(
                settings.profile.terminal_id if explicit_id else "L0000001", terminal_count)),
            count=count, duration=None if duration is None else parse_load_duration(duration),
            rate=None if rate is None else parse_rate(rate), mix=parse_mix(mix or DEFAULT_MIX), settle=settle,
            amount_range=amount_range, pans=cards, expiry=expiry, seed=seed,
            store_dir=store_dir or str(default_store_path("L0000001").parent),
        )
    except LoadError as exc:
        raise CliError(str(exc), EXIT_TERMINAL_USAGE) from None
    for option, directory in (("--store-dir", config.store_dir), ("--report", report_dir)):
        if directory is not None:  # before the run, not after it: a run is not repeated for a typo
            try:
                Path(directory).expanduser().mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=Path(directory).expanduser()):
                    pass
            except OSError as exc:
                raise CliError(f"{option} {directory}: cannot write there: {exc.strerror or exc}",
                               EXIT_TERMINAL_USAGE) from None
    check = CheckOptions(admin_url=None if no_check else (admin_url or DEFAULT_ADMIN_URL), token=admin_token,
                         required=require_check)
    with _notes_to_stderr(settings.verbose):
        status = execute(config, check, report_dir=report_dir, as_json=settings.as_json, quiet=quiet)
    ctx.exit(status)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``iso-terminal``) and ``python -m terminal``."""
    run(cli, argv)
