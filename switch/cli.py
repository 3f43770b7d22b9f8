"""``iso-switch``: the switch's command line.

Adding a command is one function decorated with ``@cli.command()``; the shared ``--dialect`` /
``--dialect-path`` and framing options come from ``switch.cli_common``, and ``ToolGroup`` reports
library errors (DialectError, CodecError, FramingError, OSError) as one line, never a traceback.
"""

from __future__ import annotations

import dataclasses
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
from switch.exception_groups import leaves as exception_leaves
from switch.ledger import LedgerError
from switch.ledger_backends import is_store_error
from switch.ledger_cli import ledger
from switch.scenario import ScenarioError


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def cli() -> None:
    """iso-switch: an ISO 8583 acquirer-host emulator and message tools."""


cli.add_command(dialects_command)


@cli.command(short_help="List the shipped scenarios --scenario accepts.")
@click.option("--json", "as_json", is_flag=True, help="Name, description and path of each, as JSON.")
def scenarios(as_json: bool) -> None:
    """Shipped scenarios: response rules, host settings and faults, one file each (specs/scenarios)."""
    from switch.scenario import load_scenario, scenario_names

    loaded = [load_scenario(name) for name in scenario_names()]
    if as_json:
        click.echo(json.dumps([{"name": s.name, "description": s.description, "path": s.path,
                                "faults": len(s.faults), "rules": len(s.response_rules)} for s in loaded],
                              indent=2))
        return
    width = max((len(s.name) for s in loaded), default=0)
    for scenario in loaded:
        summary = " ".join(scenario.description.split())
        click.echo(f"{scenario.name:<{width}}  {len(scenario.faults):>2} faults  {summary}")


@cli.command(short_help="List the shipped terminal profile files (--path NAME prints one's path).")
@click.option("--path", "path_of", default=None, metavar="NAME",
              help="Print only the path of this shipped profile file, for --profiles from any directory.")
def profiles(path_of: str | None) -> None:
    """Shipped terminal profile files (specs/profiles), with their terminals. They live inside the
    installed package, so `--profiles "$(iso-switch profiles --path example)"` works from any directory."""
    from pathlib import Path

    import specs
    from switch.profiles import ProfileError, load_profiles

    shipped = {path.stem: path for path in sorted((Path(specs.__file__).parent / "profiles").glob("*.toml"))}
    if path_of is not None:
        if path_of not in shipped:
            raise CliError(f"no shipped profile file {path_of!r} (shipped: {', '.join(shipped) or 'none'})")
        click.echo(str(shipped[path_of]))
        return
    for name, path in shipped.items():
        try:
            terminals = ", ".join(profile.terminal_id for profile in load_profiles(path))
        except ProfileError as exc:
            terminals = f"cannot be loaded: {exc}"
        click.echo(f"{name}  {path}  ({terminals})")


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


# --------------------------------------------------------------------------------------------
# serve


@cli.command(short_help="Run the acquirer host on TCP (127.0.0.1:8583 by default).")
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep it on loopback unless you mean to expose the emulator.")
@click.option("--port", default=8583, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0 picks a free one; the chosen port is printed).")
@dialect_options
@framing_options
@click.option("--tpdu/--no-tpdu", default=None, help="Expect a TPDU before each message (default: the dialect's).")
@click.option("--keepalive", type=click.Choice(["ignore", "echo"]), default=None,
              help="What to do with zero-length frames (default: the dialect's, normally ignore).")
@click.option("--ledger", "ledger_path", default=None, metavar="PATH|:memory:|URL",
              help="SQLite ledger file, or a postgresql://user@host:port/db URL (default: a file in a "
                   "per-user data directory, printed at start).")
@click.option("--scenario", default=None, metavar="NAME|FILE",
              help="Scenario to load: a shipped name (see `iso-switch scenarios`) or a .toml path.")
@click.option("--seed", type=int, default=None, help="Seed for every random choice (overrides the scenario's).")
@click.option("--signon/--no-signon", "require_signon", default=None,
              help="Require 0800 sign-on before financial messages (default: on, or as the scenario says).")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True, metavar="SECONDS",
              help="Close connections with no traffic for this long (0 = never).")
@click.option("--max-connections", type=click.IntRange(min=0), default=1024, show_default=True, metavar="N",
              help="Per listener: close connections beyond this many at once, logged (0 = no limit).")
@click.option("--max-pending", type=click.IntRange(min=1, max=100_000), default=None, metavar="N",
              help="Per connection: requests read but not yet answered, after which reading stops until "
                   "replies go out (backpressure)  [default: 64]")
@click.option("--grace", "grace_period", type=click.FloatRange(min=0), default=5.0, show_default=True,
              metavar="SECONDS", help="On SIGINT/SIGTERM, how long in-flight requests may take to finish.")
@click.option("--journal", "journal_path", default=None, metavar="PATH|none",
              help="JSON-lines journal of every frame (default: journal.jsonl beside the ledger; none: memory only).")
@click.option("--journal-writer", type=click.Choice(["auto", "process", "thread"]), default="auto", show_default=True,
              help="Where the journal file's lines are formatted: a writer process on another core (less CPU in "
                   "the switch per message), the switch process itself (one process fewer), or auto: the "
                   "process when 3 or more CPUs are usable.")
@click.option("--admin-host", default="127.0.0.1", show_default=True, help="Address of the admin HTTP API.")
@click.option("--admin-port", default=8584, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the admin HTTP API (0 picks a free one). Left at the default and taken (another switch), "
                   "a free one is picked and printed.")
@click.option("--no-admin", is_flag=True, help="Do not serve the admin HTTP API.")
@click.option("--admin-token", envvar="ISO_SWITCH_ADMIN_TOKEN", default=None, metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on the admin API (env ISO_SWITCH_ADMIN_TOKEN).")
@click.option("--admin-allow-host", "admin_allow_hosts", multiple=True, metavar="NAME",
              help="Accept this name in the admin API's Host header, besides localhost and IP addresses "
                   "(DNS-rebinding protection). Repeatable.")
@click.option("--scenario-path", "scenario_paths", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="A directory the admin API may load scenario .toml files from (besides the shipped "
                   "names). Repeatable.")
@click.option("--profiles", "profiles_path", default=None, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="Terminal profile file (TOML): the terminals the switch knows, their master keys, MAC "
                   "algorithm and test PINs. Then CUP sign-ons get working keys, MACs are checked and "
                   "added, and unknown terminals are refused (97 CUP, 58 ISO). TEST KEYS ONLY.")
@click.option("--tls-cert", default=None, metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="Serve the main listener over TLS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", default=None, metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="The PEM private key of --tls-cert.")
@click.option("--also-listen", "also_listen", multiple=True, metavar="SPEC",
              help="Another listener with its own dialect, framing and TLS, sharing the ledger: "
                   "[HOST:]PORT[,dialect=NAME|FILE][,length-header=KIND][,tpdu=yes|no][,tls=yes|no]"
                   "[,tls-cert=FILE,tls-key=FILE]. tls=yes reuses --tls-cert/--tls-key. Repeatable, "
                   "e.g. --also-listen 9583,dialect=cup-pos")
@click.option("--multi-instance", is_flag=True,
              help="Share the postgresql:// --ledger with other iso-switch instances (one host behind a load "
                   "balancer): each terminal is decided by one instance at a time (README \"Scaling out\").")
@click.option("--terminal-idle", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="With --multi-instance: give a terminal back to the others after this "
                                      "long without a request.")
@click.option("--fault-epoch", default="", metavar="NAME",
              help="With --multi-instance: the run that counted fault rules (nth/every/first) count in. "
                   "Instances started with the same NAME share counts (and, with no --seed, one seed); a new "
                   "NAME starts every count afresh (README \"Scaling out\").")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run N switch processes on the one port (SO_REUSEPORT, Linux) under a supervisor with one "
                   "admin endpoint; needs a postgresql:// --ledger, implies --multi-instance; journals "
                   "journal-<n>.jsonl (README \"Scaling out\").")
@click.option("-v", "--verbose", count=True, help="Log connections (-v) and every decision (-vv) to stderr.")
def serve(bind_host: str, port: int, dialect: Dialect, framing_overrides: FramingOverrides, tpdu: bool | None,
          keepalive: str | None, ledger_path: str | None, scenario: str | None, seed: int | None,
          require_signon: bool | None, idle_timeout: float, max_connections: int, max_pending: int | None,
          grace_period: float,
          journal_path: str | None, journal_writer: str,
          admin_host: str, admin_port: int, no_admin: bool, admin_token: str | None,
          admin_allow_hosts: tuple[str, ...], scenario_paths: tuple[str, ...], profiles_path: str | None,
          tls_cert: str | None, tls_key: str | None, also_listen: tuple[str, ...], multi_instance: bool,
          terminal_idle: float, fault_epoch: str, workers: int | None, verbose: int) -> None:
    """Run the switch until SIGINT/SIGTERM, then drain in-flight requests and close the ledger.

    \b
    Example: plain ISO 8583 on 8583 and CUP POS terminals over TLS on 9583, one ledger:
      iso-switch serve --profiles specs/profiles/example.toml \\
          --also-listen 9583,dialect=cup-pos,tls-cert=cert.pem,tls-key=key.pem
    """
    import logging

    import trio

    from switch.app import SwitchOptions, build_switch, parse_listener_spec
    from switch.server import listener_address

    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    framing = framing_overrides.framing(dialect, tpdu=tpdu)
    if keepalive is not None:
        framing = dataclasses.replace(framing, keepalive=keepalive)
    if (tls_cert is None) != (tls_key is None):
        raise CliError("TLS needs both --tls-cert and --tls-key")
    specs = []
    for text in also_listen:
        try:
            specs.append(parse_listener_spec(text))
        except ValueError as exc:
            raise CliError(f"--also-listen {text!r}: {exc}") from None
    dialect_paths = tuple(str(path) for path in click.get_current_context().params.get("dialect_paths", ()))
    options = SwitchOptions(host=bind_host, port=port, ledger=ledger_path, scenario=scenario, seed=seed,
                            require_signon=require_signon, idle_timeout=idle_timeout or None,
                            max_connections=max_connections or None,
                            grace_period=grace_period, journal=journal_path, journal_writer=journal_writer,
                            admin_host=admin_host,
                            admin_port=None if no_admin else admin_port, admin_token=admin_token,
                            admin_port_given=click.get_current_context().get_parameter_source("admin_port")
                            is not click.core.ParameterSource.DEFAULT,
                            profiles=profiles_path, dialect_paths=dialect_paths, tls_cert=tls_cert,
                            tls_key=tls_key, also_listen=tuple(specs), admin_allow_hosts=admin_allow_hosts,
                            scenario_paths=scenario_paths, multi_instance=multi_instance,
                            terminal_idle=terminal_idle, fault_epoch=fault_epoch)
    if max_pending is not None:
        options = dataclasses.replace(options, max_pending=max_pending)
    if fault_epoch and not (multi_instance or workers is not None):
        raise CliError("--fault-epoch needs --multi-instance (or --workers): one instance counts in memory")
    if workers is not None:
        from switch.workers_cli import serve_workers

        serve_workers(dialect, framing, options, workers, verbose)
        return
    try:
        switch = build_switch(dialect, framing, options)
    except (ScenarioError, LedgerError, ValueError) as exc:
        raise CliError(str(exc), EXIT_BAD_DATA) from None
    server = switch.server

    def announce(listeners: list[Any], admin: int | None) -> None:
        for number, each in enumerate(switch.servers):
            where = ", ".join("{}:{}".format(*listener_address(listener)) for listener in each.listeners)
            each_framing = each.framing
            details = (f"dialect {each.codec.dialect.name}, framing {each_framing.length_header}"
                       f"{' + TPDU' if each_framing.tpdu else ''}{', TLS' if each.config.ssl_context else ''}")
            if number == 0:
                details += (f", scenario {switch.scenario.name}, seed {server.faults.seed}, "
                            f"sign-on {'required' if server.host.config.require_signon else 'not required'}")
            click.echo(f"iso-switch: {'listening' if number == 0 else 'also listening'} on {where} ({details})")
        if switch.profiles is not None:
            click.echo(f"iso-switch: {len(switch.profiles)} terminal profiles from {switch.profiles.path} "
                       "(unknown terminals refused; TEST KEYS ONLY)")
        click.echo(f"iso-switch: ledger {server.ledger.path}; journal {switch.journal_path or '(memory only)'}")
        if switch.admin_port_taken is not None:
            click.echo(f"iso-switch: admin port {switch.admin_port_taken} is in use (another switch?): the admin "
                       f"API took the free port {admin} instead (set one with --admin-port)", err=True)
        if admin is not None:
            click.echo(f"iso-switch: admin API http://{admin_host}:{admin}/docs"
                       f"{' (bearer token required)' if admin_token else ''}")
            if not admin_token:
                click.echo("iso-switch: WARNING: the admin API has no token: anyone who can reach "
                           f"{admin_host}:{admin} can change faults and read the journal "
                           "(set --admin-token or ISO_SWITCH_ADMIN_TOKEN)", err=True)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners, admin = await nursery.start(switch.run)
            announce(listeners, admin)

    try:
        trio.run(main)
    except OSError as exc:
        raise CliError(f"cannot listen: {exc.strerror or exc}", EXIT_BAD_DATA) from None
    except BaseExceptionGroup as group:  # Trio's nurseries wrap a listener's bind error in groups
        leaves = exception_leaves(group)
        if len(leaves) == 1 and is_store_error(leaves[0]):  # the group committer stopped the switch
            reason = " ".join(str(leaves[0]).split()) or type(leaves[0]).__name__
            if server.owner is not None and leaves[0] is server.owner.failure:  # multi-instance: locks lost
                raise CliError(f"ledger {server.ledger.path}: {reason}; the switch stopped deciding and exited",
                               EXIT_BAD_DATA) from None
            raise CliError(f"ledger {server.ledger.path}: commit failed ({reason}); the replies waiting for it "
                           "were withheld and the switch stopped", EXIT_BAD_DATA) from None
        if len(leaves) != 1 or not isinstance(leaves[0], OSError):
            raise
        raise CliError(f"cannot listen: {leaves[0].strerror or leaves[0]}", EXIT_BAD_DATA) from None
    stats = switch.group.stats if switch.group is not None else server.stats
    click.echo(f"{stats.summary()}; ledger closed cleanly")


# --------------------------------------------------------------------------------------------
# ledger (switch.ledger_cli: reading one, `ledger migrate`)

cli.add_command(ledger)


# --------------------------------------------------------------------------------------------
# journal

JOURNAL_FOLLOW_BACKLOG = 20  # entries shown before following, as `tail -f` does


@cli.command(short_help="Print the switch's message journal readably (--follow to watch it).")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing entries as they are appended, across rotation, until Ctrl-C.")
@click.option("--terminal", default=None, metavar="TID", help="Only entries of this terminal (field 41).")
@click.option("--mti", default=None, metavar="MTI", help="Only entries of this message type, e.g. 0200.")
@click.option("--stan", default=None, metavar="STAN", help="Only entries with this STAN (field 11; leading "
                                                           "zeros optional).")
@click.option("--faults", "faults_only", is_flag=True, help="Only entries a fault was applied to.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON lines instead of one readable line each.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"Only the last N matching entries already in the file (default: all; with --follow: "
                   f"{JOURNAL_FOLLOW_BACKLOG}).")
def journal(paths: tuple[str, ...], follow: bool, terminal: str | None, mti: str | None, stan: str | None,
            faults_only: bool, as_json: bool, limit: int | None) -> None:
    """Print the journal file: one line per frame in (<-) or out (->) with time, connection, MTI,
    STAN, terminal, response code, faults applied and notes. PAN, track, PIN and ICC data are
    masked in the file itself.

    PATH defaults to journal.jsonl next to the default ledger (or, when there is none, the
    journal-<n>.jsonl files `serve --workers` writes there). Several PATHs are read merged by time,
    each line marked with its file (not with --follow). Only PATH is read, not its rotated copies
    (PATH.1, PATH.2, ...); pass one of those to read it.
    """
    import collections
    import pathlib

    from switch.app import default_ledger_path
    from switch.journal import (
        EntryFilter,
        JournalFollower,
        follow_journal,
        format_entry_line,
        read_journal_file,
    )

    if mti is not None and not (len(mti) == 4 and mti.isascii() and mti.isdigit()):
        raise CliError(f"--mti must be four digits, got {mti!r}")
    if stan is not None and not (1 <= len(stan) <= 6 and stan.isascii() and stan.isdigit()):
        raise CliError(f"--stan must be 1 to 6 digits, got {stan!r}")
    journal_paths = [pathlib.Path(path) for path in paths]
    if not journal_paths:
        default = default_ledger_path().parent / "journal.jsonl"
        journal_paths = [default] if default.is_file() else sorted(
            default.parent.glob("journal-*.jsonl"), key=lambda p: (len(p.name), p.name)) or [default]
    for each in journal_paths:
        if not each.is_file():
            raise CliError(f"no journal file at {each}", EXIT_BAD_DATA)
    selection = EntryFilter(terminal=terminal, mti=mti, stan=stan, faults_only=faults_only)
    if len(journal_paths) > 1:
        if follow:
            raise CliError("--follow reads one journal file; give one PATH")
        from switch.workers_cli import print_journals

        print_journals(journal_paths, selection, as_json, limit)
        return
    journal_path = journal_paths[0]

    def warn(number: int, reason: str) -> None:
        click.echo(f"warning: {journal_path} line {number}: {reason}; skipped", err=True)

    def emit(entry: dict[str, Any]) -> None:
        if selection.matches(entry):
            click.echo(json.dumps(entry, separators=(",", ":")) if as_json else format_entry_line(entry))

    if not follow:
        backlog: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        backlog.extend(entry for entry in read_journal_file(journal_path, on_error=warn) if selection.matches(entry))
        for entry in backlog:
            emit(entry)
        return
    follower = JournalFollower(journal_path, on_error=warn)
    try:
        existing = [entry for entry in follower.poll() if selection.matches(entry)]
        for entry in existing[-(limit or JOURNAL_FOLLOW_BACKLOG):]:
            emit(entry)
        follow_journal(follower, emit)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends
    finally:
        follower.close()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``iso-switch``) and ``python -m switch``."""
    run(cli, argv)
