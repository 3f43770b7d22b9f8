"""``iso-switch ledger``: read a ledger (SQLite file or PostgreSQL URL) and ``ledger migrate`` one into
PostgreSQL. Kept out of ``switch.cli`` so that module stays about serving and messages."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from switch.cli_common import EXIT_BAD_DATA, CliError
from switch.ledger_backends import LedgerError, is_postgres_target

if TYPE_CHECKING:
    from switch.ledger_records import SessionRecord

__all__ = ["ledger"]


def _amount(minor: int) -> str:
    return f"{minor / 100:,.2f}"


@click.group(invoke_without_command=True, short_help="Show ledger postings and batch totals; migrate a ledger.")
@click.option("--ledger", "ledger_path", default=None, metavar="PATH|URL",
              help="Ledger file or postgresql:// URL (default: the file `serve` uses without --ledger).")
@click.option("--terminal", default=None, help="Only this terminal (field 41).")
@click.option("--batch", default=None, help="Only this batch number.")
@click.option("--postings/--no-postings", default=True, show_default=True, help="List postings, not only batches.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document: postings, batches, discrepancies, sessions.")
@click.pass_context
def ledger(ctx: click.Context, ledger_path: str | None, terminal: str | None, batch: str | None, postings: bool,
           as_json: bool) -> None:
    """Postings (approved and declined, with reversal state) and per-batch NET totals; the sign-on
    sessions multi-instance switches share (never their keys), when there are any.

    `iso-switch ledger migrate SOURCE DEST` copies a SQLite ledger into PostgreSQL.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pathlib import Path

    from switch.app import default_ledger_path
    from switch.ledger import Ledger

    if ledger_path and is_postgres_target(ledger_path):
        target = ledger_path
    else:
        path = Path(ledger_path) if ledger_path else default_ledger_path()
        if not path.is_file():
            raise CliError(f"no ledger at {path} (start `iso-switch serve` first, or pass --ledger)", EXIT_BAD_DATA)
        target = str(path)
    try:
        book = Ledger.open(target, claim=False)  # a read: nothing written to a ledger a switch may serve
    except LedgerError as exc:
        raise CliError(str(exc), EXIT_BAD_DATA) from None
    try:
        rows = [p for p in book.postings(terminal=terminal, batch=batch)] if postings else []
        batches = [b for b in book.batches(terminal=terminal) if batch is None or b.batch == batch]
        discrepancies = book.discrepancies(terminal=terminal, batch=batch)
        sessions = [record for record in book.sessions() if terminal is None or record.terminal == terminal]
    finally:
        book.close()
    if as_json:
        click.echo(json.dumps({"ledger": book.path, "postings": [p.as_dict() for p in rows],
                               "batches": [b.as_dict() for b in batches],
                               "discrepancies": [d.as_dict() for d in discrepancies],
                               "sessions": [_session_dict(record) for record in sessions]}, indent=2))
        return
    click.echo(f"ledger {book.path}")
    if postings:
        click.echo(f"\npostings ({len(rows)})")
        if rows:
            click.echo(f"  {'seq':>6}  {'terminal':<8}  {'stan':<6}  {'mti':<4}  {'kind':<13}  {'amount':>12}  "
                       f"{'code':<4}  {'rrn':<12}  {'auth':<6}  {'batch':<6}  state")
        for p in rows:
            state = "reversed" if p.reversed else ("captured" if p.captured else
                                                  ("approved" if p.approved else "declined"))
            click.echo(f"  {p.seq:>6}  {p.terminal:<8}  {p.stan:<6}  {p.mti:<4}  {p.kind:<13}  "
                       f"{_amount(p.amount):>12}  {p.response_code:<4}  {p.rrn:<12}  {p.auth_code or '-':<6}  "
                       f"{p.batch:<6}  {state}")
    click.echo(f"\nbatches ({len(batches)})  [net totals: approved, captured, not reversed]")
    for b in batches:
        click.echo(f"  {b.terminal:<8} batch {b.batch}  {b.status:<6}  debits {b.debit_count} / "
                   f"{_amount(b.debit_amount)}  credits {b.credit_count} / {_amount(b.credit_amount)}  "
                   f"reversed {b.debit_reversal_count + b.credit_reversal_count}  uploads {b.upload_count}"
                   f"{' (ended)' if b.upload_ended else ''}  discrepancies {b.discrepancies}")
    if discrepancies:
        click.echo(f"\ndiscrepancies ({len(discrepancies)})")
        for d in discrepancies:
            click.echo(f"  {d.terminal:<8} batch {d.batch}  {d.kind}  stan {d.stan}  {d.detail}")
    if sessions:
        click.echo(f"\nsessions ({sum(record.signed_on for record in sessions)} signed on)  [multi-instance]")
        for record in sessions:
            state = (f"signed on {_utc(record.signed_on_at)}" if record.signed_on_at is not None
                     else f"no session since {_utc(record.changed_at)}")
            keys = "  working keys" if record.working_keys else ""
            click.echo(f"  {record.terminal:<8}  {state}  sign-ons {record.signons}{keys}")


def _utc(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _session_dict(record: SessionRecord) -> dict[str, object]:
    """A session row without its key material (a ledger listing is no place for clear keys)."""
    document = record.as_dict()
    document["working_keys"] = record.working_keys is not None
    return document


@ledger.command(short_help="Copy a SQLite ledger into a PostgreSQL database.")
@click.argument("source", metavar="SOURCE")
@click.argument("destination", metavar="DEST")
@click.option("--replace", is_flag=True,
              help="DEST already holds a ledger: delete its rows and copy SOURCE instead (default: refuse).")
def migrate(source: str, destination: str, replace: bool) -> None:
    """Copy the SQLite ledger file SOURCE into the PostgreSQL database DEST (a postgresql:// URL).

    SOURCE is only read (a snapshot, so a switch may still be serving from it; an older schema is
    migrated in the copy). DEST gets every row in one transaction, then both are replayed and their
    row counts per table and batch totals compared. Stop the switch on SOURCE before pointing it at
    DEST, or approvals made meanwhile stay behind.

    Example: iso-switch ledger migrate ~/.local/share/iso8583-switch-emulator/ledger.sqlite
    postgresql://switch@db.example:5432/ledger
    """
    from switch.ledger_backends.migrate import migrate_sqlite_to_postgres

    if is_postgres_target(source):
        raise CliError("SOURCE must be a SQLite ledger file (DEST is the postgresql:// URL)")
    tty = sys.stderr.isatty()

    def progress(table: str, copied: int, total: int) -> None:
        line = f"copying {table}: {copied}/{total} rows"
        if tty:
            click.echo(f"\r{line}\033[K", err=True, nl=copied >= total)
        elif copied >= total:
            click.echo(line, err=True)

    try:
        report = migrate_sqlite_to_postgres(source, destination, replace=replace, progress=progress)
    except LedgerError as exc:
        raise CliError(str(exc), EXIT_BAD_DATA) from None
    rows = ", ".join(f"{table} {count}" for table, count in report.counts.items())
    click.echo(f"copied {sum(report.counts.values())} rows from {report.source} to {report.destination} ({rows}); "
               f"verified: row counts per table and the totals of {report.batches} batches are equal")
