"""The plumbing every terminal command shares: exit codes, settings and options, running one operation."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import platformdirs

from switch.cli_common import (
    DISTRIBUTION,
    EXIT_USAGE,
    CliError,
    FramingOverrides,
    dialect_options,
    framing_options,
)
from switch.codec.dialect import Dialect, DialectError
from switch.codec.framing import TPDU_LENGTH, Framing
from terminal.defaults import DEFAULT_MERCHANT_ID, DEFAULT_TERMINAL_ID, TEST_PAN, default_expiry
from terminal.policy import (
    Command,
    Outcome,
    ReverseLast,
)
from terminal.profile import ProfileError, TerminalProfile, format_amount
from terminal.store import StoreError, TerminalStore

if TYPE_CHECKING:
    from switch.profiles import TerminalSecurityProfile
    from terminal.api import HostAddress

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

_AMOUNT = re.compile(r"[0-9]+(?:\.([0-9]+))?")

F = TypeVar("F", bound=Callable[..., Any])


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

    def host_address(self) -> HostAddress:
        """Where and how to connect, as ``terminal.api.build_client`` takes it (imported late: Trio)."""
        from terminal.api import HostAddress

        return HostAddress(self.host, self.port, self.dialect, self.framing, self.tpdu, self.ssl_context)


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
            from switch.describe import parse_hex  # only with --tpdu: the describer is a big import

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
    from terminal.api import open_store

    return open_store(settings.store_path, settings.profile.terminal_id)


async def _drive(settings: TerminalSettings, store: TerminalStore, command: Command,
                 confirmation: Callable[[], Awaitable[None]] | None = None) -> tuple[Outcome, bool]:
    """(outcome, interrupted). Ctrl-C cancels the command instead of raising KeyboardInterrupt through
    Trio's task groups: the policy is told (``interrupt``) so the store says what was in flight."""
    import signal

    import trio

    from terminal.api import build_client
    from terminal.client import TrioClock

    clock = TrioClock.wall()
    client = build_client(settings.host_address(), settings.profile, store, clock=clock, confirmation=confirmation)
    policy = client.policy
    finished: list[Outcome] = []
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with client, trio.open_nursery() as nursery:

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
