"""``iso-switch ledger migrate``: copy a SQLite ledger into PostgreSQL, then prove the copy.

The source file is never changed: it is read through SQLite's online backup into memory (a
consistent snapshot even while a switch is serving from it), and an older schema version is migrated
there, in the copy. The destination gets every row in one transaction (all or nothing). Afterwards
both are replayed through ``Ledger`` and compared: row counts per table and every batch's totals
must be equal, or the command fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from switch.ledger import Ledger
from switch.ledger_backends import is_postgres_target
from switch.ledger_backends.base import UNPOSTED_KEY, LedgerError
from switch.ledger_backends.postgresql import PostgresBackend
from switch.ledger_backends.sqlite import SqliteBackend

__all__ = ["MigrationReport", "migrate_sqlite_to_postgres"]


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What was copied and what the verification compared."""

    source: str
    destination: str  # without a password
    counts: dict[str, int]  # rows per table, equal on both sides
    batches: int  # batches whose totals were compared and found equal


def _read_source(path: str) -> SqliteBackend:
    """The source ledger as an in-memory copy (schema migrated there if older)."""
    file = Path(path)
    if not file.is_file():
        raise LedgerError(f"{path}: no such ledger file")
    try:
        source = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        memory = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        try:
            source.backup(memory)
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot read ledger: {exc}") from None
    return SqliteBackend(path, connection=memory)


def migrate_sqlite_to_postgres(source_path: str, destination_url: str, *, replace: bool = False,
                               progress: Callable[[str, int, int], None] | None = None) -> MigrationReport:
    """Copy the SQLite ledger at ``source_path`` into the PostgreSQL database ``destination_url``.

    A destination that already holds ledger rows is refused unless ``replace`` (its rows are then
    deleted first, in the same transaction). ``progress(table, copied, total)`` reports the copy.
    Raises LedgerError with the reason for anything refused or found different.
    """
    if not is_postgres_target(destination_url):
        raise LedgerError(f"{destination_url}: the destination must be a postgresql:// URL")
    source = _read_source(source_path)
    try:
        destination = PostgresBackend(destination_url)
    except BaseException:
        source.close()
        raise
    with source, destination:
        counts = source.table_counts()
        existing = sum(destination.table_counts().values())
        if existing and not replace:
            raise LedgerError(f"{destination.name}: already holds a ledger ({existing} rows); "
                              "--replace deletes them and copies the source instead")

        def report(table: str, copied: int) -> None:
            if progress is not None:
                progress(table, copied, counts[table])

        unposted = source.meta(UNPOSTED_KEY)
        with source.snapshot() as rows:
            destination.import_rows(rows, replace=replace, progress=report,
                                    unposted_next=int(unposted) if unposted and unposted.isdigit() else 0)
        copied = destination.table_counts()
        if copied != counts:
            raise LedgerError(f"verification failed: rows per table differ (source {counts}, destination {copied})")
        expected = Ledger.from_backend(source, claim=False).batches()
        found = Ledger.from_backend(destination, claim=False).batches()
        if expected != found:
            differing = next(f"{a.terminal} batch {a.batch}" for a, b in zip(expected, found, strict=False) if a != b) \
                if len(expected) == len(found) else f"{len(expected)} batches vs {len(found)}"
            raise LedgerError(f"verification failed: batch totals differ ({differing})")
        return MigrationReport(source_path, destination.name, counts, len(expected))
