"""The embedded backend: one SQLite file (stdlib ``sqlite3``), WAL with ``synchronous=FULL``.

The file format is the one every release wrote: table ``meta`` (key/value, ``schema`` = the version)
and one table per record type. Version 1 files (the first releases) are migrated in place at open,
inside the same transaction that checks the version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from operator import itemgetter
from typing import Any

from switch.ledger_backends.base import (
    ROW_TABLES,
    SCHEMA_VERSION,
    SESSION_COLUMNS,
    SESSIONS,
    TABLES,
    UNPOSTED_CLAIM,
    UNPOSTED_KEY,
    ColumnKind,
    LedgerBackend,
    LedgerError,
    PendingRow,
    RowSource,
    check_version,
)

__all__ = ["MIGRATIONS", "SqliteBackend", "create_statements"]

_TYPES = {ColumnKind.SEQ: "INTEGER PRIMARY KEY", ColumnKind.INT: "INTEGER", ColumnKind.TEXT: "TEXT",
          ColumnKind.TIME: "REAL", ColumnKind.FLAG: "INTEGER"}

MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: repeat identity ("" = key by field 7, exactly what version 1 keyed by), the amount asked
    # for (NULL = the amount approved; version 1 never approved partially) and the amount a partial
    # reversal undid (0 for every other effect; version 1 had no partial reversals).
    2: ("ALTER TABLE postings ADD COLUMN identity TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE postings ADD COLUMN requested_amount INTEGER",
        "ALTER TABLE reversals ADD COLUMN amount INTEGER NOT NULL DEFAULT 0"),
    # 2 -> 3: the sessions table (``create_statements`` makes it; nothing existing changes). A
    # single-instance switch never writes it: the table is there so a file copied into PostgreSQL by
    # ``ledger migrate`` and a PostgreSQL ledger have one schema.
    3: (),
}
"""Statements that take a file from the version before to the key's version. ``ALTER TABLE ADD
COLUMN`` appends, so migrated tables keep the column order ``TABLES`` lists."""

_CLAIM_AHEAD = (f"INSERT INTO meta VALUES ('{UNPOSTED_KEY}', ?) ON CONFLICT(key) DO UPDATE SET "
                "value = CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)")


def create_statements() -> list[str]:
    """The current schema, as a new file gets it (the same DDL text every release wrote; ``sessions``
    since version 3, keyed by terminal)."""
    statements = []
    for table, columns in ROW_TABLES.items():
        defs = ", ".join(f"{c.name} {_TYPES[c.kind]}{'' if c.nullable or c.kind is ColumnKind.SEQ else ' NOT NULL'}"
                         for c in columns)
        if table == SESSIONS:
            defs = defs.replace("terminal TEXT NOT NULL", "terminal TEXT PRIMARY KEY")
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({defs})")
    return statements


def _insert(table: str) -> str:
    return f"INSERT INTO {table} VALUES ({', '.join('?' * len(TABLES[table]))})"


_UPSERT_SESSION = (
    f"INSERT INTO {SESSIONS} VALUES ({', '.join('?' * len(SESSION_COLUMNS))}) ON CONFLICT(terminal) DO UPDATE SET "
    + ", ".join(f"{c.name} = excluded.{c.name}" for c in SESSION_COLUMNS if c.name != "terminal")
    + f" WHERE {SESSIONS}.seq < excluded.seq")
_STATEMENTS = ({table: _insert(table) for table in TABLES}
               | {UNPOSTED_CLAIM: _CLAIM_AHEAD, SESSIONS: _UPSERT_SESSION})
_TABLE, _PARAMS = itemgetter(1), itemgetter(2)  # of a PendingRow


class SqliteBackend(LedgerBackend):
    """A ledger file (or ``":memory:"``)."""

    def __init__(self, name: str, *, busy_timeout: float = 5.0, connection: sqlite3.Connection | None = None):
        """Open ``name``, switch it to WAL + full sync, create or migrate the schema.

        ``busy_timeout``: how long a write waits for a lock another connection holds (a reader's
        checkpoint) before failing. ``connection``: an already open database to use instead (``ledger
        migrate`` reads a source from an in-memory copy so the source file is never changed).
        """
        self.name = name
        try:
            conn = connection or sqlite3.connect(name, timeout=busy_timeout, check_same_thread=False,
                                                 isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"{name}: cannot open ledger: {exc}") from None
        self._conn: sqlite3.Connection | None = conn
        try:
            if name != ":memory:" and connection is None:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise LedgerError(f"{name}: cannot switch the ledger to WAL mode (got {mode!r})")
                conn.execute("PRAGMA synchronous=FULL")
            self._create_or_migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{name}: not a usable ledger database: {exc}") from None
        except BaseException:
            conn.close()
            raise

    def _create_or_migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            else:
                version = check_version(self.name, str(row[0]), dict(MIGRATIONS))
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[target]:
                        conn.execute(statement)
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(target),))
            for statement in create_statements():
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"{self.name}: ledger is closed")
        return self._conn

    @contextmanager
    def snapshot(self) -> Iterator[RowSource]:
        conn = self._connection()
        conn.execute("BEGIN")  # one read transaction: a serving writer's later commits stay out of view

        def rows(table: str) -> Iterator[tuple[Any, ...]]:
            yield from conn.execute(f"SELECT * FROM {table} ORDER BY seq")

        try:
            yield rows
        finally:
            conn.execute("COMMIT")

    def terminal_snapshot(self, terminal: str) -> RowSource:
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            rows = {table: conn.execute(f"SELECT * FROM {table} WHERE terminal = ? ORDER BY seq",
                                        (terminal,)).fetchall() for table in ROW_TABLES}
        finally:
            conn.execute("COMMIT")
        return lambda table: rows[table]

    def write(self, batch: Sequence[PendingRow]) -> None:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for table, group in groupby(batch, key=_TABLE):
                conn.executemany(_STATEMENTS[table], map(_PARAMS, group))  # no per-row Python code (GIL)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def claim_unposted(self, block: int) -> int:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (UNPOSTED_KEY,)).fetchone()
            start = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            conn.execute(_CLAIM_AHEAD, (str(start + block),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return start

    def lock_writer(self) -> None:
        """Nothing to take: one process per file is the operator's to keep, as it always was (a lock
        beside SQLite's own file locks could interfere with them on network file systems)."""

    def end_sessions(self) -> int:
        conn = self._connection()
        cursor = conn.execute("UPDATE sessions SET signed_on_at = NULL, working_keys = NULL "
                              "WHERE signed_on_at IS NOT NULL")  # autocommit: one statement
        return cursor.rowcount

    def open_session_terminals(self) -> list[str]:
        rows = self._connection().execute(
            "SELECT terminal FROM sessions WHERE signed_on_at IS NOT NULL ORDER BY terminal").fetchall()
        return [str(row[0]) for row in rows]

    def meta(self, key: str) -> str | None:
        row = self._connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def table_counts(self) -> dict[str, int]:
        conn = self._connection()
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ROW_TABLES}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
