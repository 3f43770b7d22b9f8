"""Ledger stores behind one interface (``base.LedgerBackend``): SQLite (embedded, the default) and
PostgreSQL (a server, ``postgresql://`` URLs). ``open_backend`` picks one from the ``--ledger`` value."""

from __future__ import annotations

import os
import sqlite3
import sys

from switch.ledger_backends.base import SCHEMA_VERSION, TABLES, LedgerBackend, LedgerError

__all__ = ["SCHEMA_VERSION", "TABLES", "LedgerBackend", "LedgerError", "is_postgres_target", "is_store_error",
           "open_backend"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_target(target: str | os.PathLike[str]) -> bool:
    """A ``postgresql://`` or ``postgres://`` URL (anything else is a SQLite path or ``:memory:``)."""
    return isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES)


def open_backend(target: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> LedgerBackend:
    """The backend for ``target``, schema created or migrated. psycopg is imported only for a URL,
    so a SQLite-only run never loads it."""
    if is_postgres_target(target):
        from switch.ledger_backends.postgresql import PostgresBackend

        return PostgresBackend(str(target), connect_timeout=max(busy_timeout, 10.0))
    from switch.ledger_backends.sqlite import SqliteBackend

    return SqliteBackend(os.fspath(target), busy_timeout=busy_timeout)


def is_store_error(exc: BaseException) -> bool:
    """An error of a backend's database (a failed commit: disk, lock, refused row, lost connection),
    as ``Ledger.flush`` passes it on; ``serve`` reports it as one line instead of an internal error."""
    if isinstance(exc, sqlite3.Error | LedgerError):
        return True
    psycopg = sys.modules.get("psycopg")  # loaded only when a PostgreSQL ledger was opened
    return psycopg is not None and isinstance(exc, psycopg.Error)
