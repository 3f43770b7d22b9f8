"""``iso-terminal load``: the command line of the load runner (``terminal.load``)."""

from __future__ import annotations

import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

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
    _notes_to_stderr,
    default_expiry,
    default_store_path,
    parse_amount,
    terminal_options,
)


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
                   "batches continue across runs and `status --terminal-id L0000001` works). ':memory:' keeps "
                   "them in memory only: faster, but a terminal killed mid-run forgets its pending reversals.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Processes, each running its share of the terminals (one event loop is one core).")
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
         store_dir: str | None, workers: int, report_dir: str | None, quiet: bool, admin_url: str | None,
         admin_token: str | None, no_check: bool, require_check: bool) -> None:
    """Run N emulated terminals against a host and report throughput, latency and outcomes.

    Every terminal follows all the terminal rules (sign-on, timeouts, reversals, settlement) with
    its own store; ids count up from L0000001 (or from --terminal-id; with --profiles every terminal
    uses that entry's keys and MAC settings under its own id). At the end each terminal
    drains what it owes, settles with --settle, and — when the switch's admin API answers — every
    terminal's journal is compared with the host's ledger, transaction by transaction.

    \b
    Exit: 0 done (and consistent, or not checked); 3 usage error or host not reached;
    4 terminals and host disagree; 5 --require-check and the check could not run; 130 interrupted.

    \b
    Example:
      iso-terminal load --terminals 20 --duration 30s --settle --report load-report
    """
    from terminal.load import (
        DEFAULT_ADMIN_URL,
        DEFAULT_MIX,
        MEMORY_STORES,
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
            store_dir=store_dir or str(default_store_path("L0000001").parent), workers=workers,
        )
    except LoadError as exc:
        raise CliError(str(exc), EXIT_TERMINAL_USAGE) from None
    for option, directory in (("--store-dir", config.store_dir), ("--report", report_dir)):
        in_memory = option == "--store-dir" and directory == MEMORY_STORES
        if directory is not None and not in_memory:  # before the run: a run is not repeated for a typo
            try:
                Path(directory).expanduser().mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=Path(directory).expanduser()):
                    pass
            except OSError as exc:
                raise CliError(f"{option} {directory}: cannot write there: {exc.strerror or exc}",
                               EXIT_TERMINAL_USAGE) from None
    check = CheckOptions(admin_url=None if no_check else (admin_url or DEFAULT_ADMIN_URL), token=admin_token,
                         required=require_check, target=(settings.host, settings.port))
    with _notes_to_stderr(settings.verbose):
        status = execute(config, check, report_dir=report_dir, as_json=settings.as_json, quiet=quiet)
    ctx.exit(status)
