"""The server backend: a PostgreSQL database (psycopg 3), for ledgers that outlive one machine.

Same logical schema as SQLite (``base.TABLES``) with PostgreSQL types: BIGINT for sequences and
money, TEXT, DOUBLE PRECISION for host time (never for money), BOOLEAN for flags. The schema also
states the ledger's invariants that hold unconditionally, so the database refuses what the host must
never do even if a bug (or, later, a second instance) tried:

* one posting per RRN (RRNs are made from the ledger sequence);
* at most one FULL reversal per original posting (partial reversals may be several);
* at most one closing settlement per terminal and batch;
* effects, settlement results, discrepancy kinds, directions and posting kinds from their known sets.

Deliberately NOT unique: (terminal, STAN, identity) of postings and (terminal, STAN) of settlements.
The host answers a repeat from the first posting only within its duplicate window; after it, a
terminal that reused its STAN gets a new posting, as real hosts do. Those keys are indexed for the
lookups instead; making them exclusive across instances is the per-terminal ownership of
docs/scaleout.md.

Durability: a write returns after COMMIT, which with PostgreSQL's default ``synchronous_commit=on``
means the WAL is flushed on the server.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from operator import itemgetter
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg

from switch.ledger_backends.base import (
    ROW_TABLES,
    SCHEMA_VERSION,
    SESSION_COLUMNS,
    SESSIONS,
    TABLES,
    UNPOSTED_CLAIM,
    UNPOSTED_KEY,
    Column,
    ColumnKind,
    LedgerBackend,
    LedgerError,
    PendingRow,
    RowSource,
    check_version,
)
from switch.ledger_records import DISCREPANCY_KINDS, REVERSAL_EFFECTS, SETTLEMENT_RESULTS

__all__ = ["FAULT_COUNTERS_DDL", "MIGRATIONS", "SEQ_KEY", "SESSIONS_DDL", "WRITER_LOCK_KEY", "WRITER_LOCK_WAIT",
           "Fence", "PostgresBackend", "claim_sequences_on", "claim_unposted_on", "create_statements", "display_url",
           "reason", "terminal_rows_on"]


class Fence(Protocol):
    """What the write transaction asks of the lock connection (``pg_control.PostgresControl``)."""

    def fence_check(self, cursor: psycopg.Cursor[Any], terminals: Collection[str]) -> None: ...


_TYPES = {ColumnKind.SEQ: "BIGINT PRIMARY KEY", ColumnKind.INT: "BIGINT", ColumnKind.TEXT: "TEXT",
          ColumnKind.TIME: "DOUBLE PRECISION", ColumnKind.FLAG: "BOOLEAN"}

_MIGRATION_LOCK = 0x1508_3500_0001  # pg_advisory_xact_lock key: instances starting at once migrate in turn
WRITER_LOCK_KEY = 0x1508_3500_0002
"""pg_advisory_lock key: held EXCLUSIVE by a single-instance switch, SHARED by every multi-instance one,
so the two modes never serve one database at once."""
SEQ_KEY = "seq_next"
"""``meta`` key (multi-instance mode): the first ledger sequence no instance has claimed yet."""
WRITER_LOCK_WAIT = 3.0


def display_url(url: str) -> str:
    """The URL without its password (it is printed at start and in errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _one_of(column: str, values: Sequence[str]) -> str:
    return f"CHECK ({column} IN ({', '.join(repr(v) for v in values)}))"


_CONSTRAINTS: dict[str, tuple[str, ...]] = {
    "postings": ("UNIQUE (rrn)", _one_of("kind", ("authorization", "purchase", "advice")),
                 _one_of("direction", ("debit", "credit"))),
    "reversals": (_one_of("effect", REVERSAL_EFFECTS),),
    "uploads": (_one_of("direction", ("debit", "credit")),),
    "settlements": (_one_of("result", SETTLEMENT_RESULTS),),
    "discrepancies": (_one_of("kind", DISCREPANCY_KINDS),),
}

_INDEXES = (
    # the invariants a unique constraint cannot say without a WHERE
    "CREATE UNIQUE INDEX reversals_one_full_reversal ON reversals (original_seq) WHERE effect = 'reversed'",
    "CREATE UNIQUE INDEX settlements_one_close_per_batch ON settlements (terminal, batch) WHERE closed",
    # the host's lookups, and a later per-terminal reload (docs/scaleout.md)
    "CREATE INDEX postings_repeat_key ON postings (terminal, stan, identity)",
    "CREATE INDEX postings_by_terminal ON postings (terminal, seq)",
    "CREATE INDEX reversals_by_terminal ON reversals (terminal, seq)",
    "CREATE INDEX settlements_by_terminal ON settlements (terminal, stan)",
    "CREATE INDEX uploads_by_batch ON uploads (terminal, batch)",
)


def _definitions(columns: Sequence[Column]) -> list[str]:
    return [f"{c.name} {_TYPES[c.kind]}{'' if c.nullable or c.kind is ColumnKind.SEQ else ' NOT NULL'}"
            for c in columns]


SESSIONS_DDL = (f"CREATE TABLE {SESSIONS} ("
                + ", ".join(_definitions(SESSION_COLUMNS)).replace("terminal TEXT NOT NULL",
                                                                   "terminal TEXT PRIMARY KEY")
                + ", CHECK (working_keys IS NULL OR signed_on_at IS NOT NULL), CHECK (signons >= 0))")
"""One row per terminal (``base.SESSIONS``): keys only with a session."""
FAULT_COUNTERS_DDL = ("CREATE TABLE fault_counters (scope TEXT NOT NULL, rule_id TEXT NOT NULL, "
                      "matched BIGINT NOT NULL, PRIMARY KEY (scope, rule_id))")
"""How many messages each counted fault rule (``every``, ``first``, ``nth``) matched, counted by every
instance together (``switch.fault_counters``). PostgreSQL only: a SQLite ledger is one process's."""


def create_statements() -> list[str]:
    """The current schema for an empty database."""
    statements = ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"]
    for table, columns in TABLES.items():
        defs = _definitions(columns)
        statements.append(f"CREATE TABLE {table} ({', '.join(defs + list(_CONSTRAINTS.get(table, ())))})")
    return [*statements, *_INDEXES, SESSIONS_DDL, FAULT_COUNTERS_DDL]


MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2 -> 3: sign-on sessions as rows (multi-instance switches share them) and global fault counters;
    # both new tables start empty, nothing existing changes.
    3: (SESSIONS_DDL, FAULT_COUNTERS_DDL),
}
"""Statements that take a database from the version before to the key's version. PostgreSQL ledgers
start at version 2 (``create_statements``)."""


def _select(table: str) -> str:
    columns = ", ".join(f"{c.name}::int" if c.kind is ColumnKind.FLAG else c.name for c in ROW_TABLES[table])
    return f"SELECT {columns} FROM {table} ORDER BY seq"


_UPSERT_SESSION = (
    f"INSERT INTO {SESSIONS} VALUES ({', '.join(['%s'] * len(SESSION_COLUMNS))}) ON CONFLICT (terminal) DO UPDATE "
    "SET " + ", ".join(f"{c.name} = excluded.{c.name}" for c in SESSION_COLUMNS if c.name != "terminal")
    + f" WHERE {SESSIONS}.seq < excluded.seq")
"""A session change replaces the terminal's row, unless the stored row is newer (never, while one
instance owns the terminal; the guard makes a late write harmless all the same)."""
_END_SESSIONS = (f"UPDATE {SESSIONS} SET signed_on_at = NULL, working_keys = NULL "
                 "WHERE signed_on_at IS NOT NULL")


_CLAIM_AHEAD = (f"INSERT INTO meta VALUES ('{UNPOSTED_KEY}', %s) ON CONFLICT (key) DO UPDATE SET "
                "value = GREATEST(meta.value::bigint, excluded.value::bigint)::text")
_CLAIM_AT_OPEN = (f"INSERT INTO meta VALUES ('{UNPOSTED_KEY}', %s) ON CONFLICT (key) DO UPDATE SET "
                  "value = (meta.value::bigint + %s)::text RETURNING value::bigint")
_COPY = {table: f"COPY {table} ({', '.join(c.name for c in columns)}) FROM STDIN"
         for table, columns in ROW_TABLES.items()}
"""Rows go in by COPY (flags as 0/1 or bools, which BOOLEAN accepts): measured 3-4x less CPU per row
than a pipelined INSERT per row, and the flush holds the GIL while it encodes."""
_TABLE, _PARAMS = itemgetter(1), itemgetter(2)  # of a PendingRow
_PROGRESS_EVERY = 50_000
_REPLAY_CHUNK = 10_000


def reason(exc: BaseException) -> str:
    """psycopg's message on one line (libpq's are often several)."""
    return re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__


def _select_terminal(table: str) -> str:
    return _select(table).replace(" ORDER BY seq", " WHERE terminal = %s ORDER BY seq")


def terminal_rows_on(conn: psycopg.Connection[Any], terminal: str) -> dict[str, list[tuple[Any, ...]]]:
    """One terminal's committed rows per table (seq ascending, ``ROW_TABLES`` column order), read in one
    REPEATABLE READ snapshot so the tables agree. postings and reversals have (terminal, seq)
    indexes, settlements and uploads terminal-first ones, sessions its primary key; upload_ends and
    discrepancies (a row per upload round / per difference found) are small enough to scan."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return {table: conn.execute(_select_terminal(table), (terminal,)).fetchall() for table in ROW_TABLES}


_SEQ_ROW = f"INSERT INTO meta VALUES ('{SEQ_KEY}', '0') ON CONFLICT (key) DO NOTHING"
_CLAIM_SEQUENCES = (
    "UPDATE meta SET value = (GREATEST(value::bigint, (SELECT COALESCE(max(m), 0) + 1 FROM ("
    + " UNION ALL ".join(f"SELECT max(seq) AS m FROM {table}" for table in TABLES)
    + f") AS s)) + %s)::text WHERE key = '{SEQ_KEY}' RETURNING value::bigint")


def claim_unposted_on(conn: psycopg.Connection[Any], block: int) -> int:
    """Move the unposted RRN high-water mark up by ``block`` in one atomic statement; the block's start."""
    row = conn.execute(_CLAIM_AT_OPEN, (str(block), block)).fetchone()
    assert row is not None
    return int(row[0]) - block


def claim_sequences_on(conn: psycopg.Connection[Any], block: int) -> int:
    """Claim ``block`` ledger sequences for this instance alone; return the first (multi-instance mode).

    One autocommit statement pair on the ``meta`` row: the UPDATE's row lock makes concurrent claims
    take turns, so blocks never overlap, and every block starts above every committed row (a
    single-instance run in between may have numbered rows from its own counter; ``max(seq)`` of each
    table is one index probe)."""
    with conn.cursor() as cursor:
        cursor.execute(_SEQ_ROW)
        cursor.execute(_CLAIM_SEQUENCES, (block,))
        row = cursor.fetchone()
    assert row is not None
    return int(row[0]) - block


class PostgresBackend(LedgerBackend):
    """A ledger in a PostgreSQL database named by a ``postgresql://`` URL."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.name = display_url(url)
        self.url = url
        self.fence: Fence | None = None
        """Multi-instance mode: checked inside every write transaction (``pg_control``)."""
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout)),
                                   application_name="iso-switch")
        except psycopg.Error as exc:
            raise LedgerError(f"{self.name}: cannot open ledger: {reason(exc)}") from None
        self._conn: psycopg.Connection[Any] | None = conn
        try:
            self._create_or_migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            raise LedgerError(f"{self.name}: not a usable ledger database: {reason(exc)}") from None
        except BaseException:
            conn.close()
            raise

    def _create_or_migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            has_meta = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            row = None
            if has_meta and has_meta[0]:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                others = conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY(%s)",
                    (["meta", *ROW_TABLES, "fault_counters"],)).fetchone()
                if others and others[0]:
                    raise LedgerError(f"{self.name}: the database has ledger-named tables but no schema version; "
                                      "not a ledger this program created")
                for statement in create_statements():
                    conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema', %s)", (str(SCHEMA_VERSION),))
                return
            version = check_version(self.name, str(row[0]), dict(MIGRATIONS))
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute("UPDATE meta SET value = %s WHERE key = 'schema'", (str(target),))

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise LedgerError(f"{self.name}: ledger is closed")
        return self._conn

    @contextmanager
    def snapshot(self) -> Iterator[RowSource]:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

            def rows(table: str) -> Iterator[tuple[Any, ...]]:
                # a server-side cursor streams the table in chunks: a big ledger is not held twice
                # (as query results and as replayed state) while the six tables are merged
                with conn.cursor(name=f"replay_{table}") as cursor:
                    cursor.itersize = _REPLAY_CHUNK
                    cursor.execute(_select(table))
                    yield from cursor

            yield rows

    def write(self, batch: Sequence[PendingRow]) -> None:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cursor:
            if self.fence is not None:  # multi-instance: still the owner of every terminal written?
                self.fence.fence_check(cursor, {row[2][2] for row in batch if row[1] != UNPOSTED_CLAIM})
            for table, group in groupby(batch, key=_TABLE):
                if table == UNPOSTED_CLAIM:
                    cursor.executemany(_CLAIM_AHEAD, map(_PARAMS, group))
                    continue
                if table == SESSIONS:  # replaced per terminal, in sequence order
                    cursor.executemany(_UPSERT_SESSION, map(_PARAMS, group))
                    continue
                with cursor.copy(_COPY[table]) as copy:  # COPY: rows stream without a statement each
                    for params in group:
                        copy.write_row(params[2])

    def claim_unposted(self, block: int) -> int:
        return claim_unposted_on(self._connection(), block)

    def import_rows(self, source: RowSource, *, replace: bool, unposted_next: int,
                    progress: Callable[[str, int], None] | None = None) -> None:
        """Copy every row of ``source`` in (COPY, one transaction: all or nothing). ``replace`` empties
        the tables first; otherwise they must be empty. ``unposted_next``: the source's unposted RRN
        high-water mark, kept so numbers the source handed out are never handed out again.
        ``progress(table, rows copied so far)`` is called every ``_PROGRESS_EVERY`` rows and at a
        table's end."""
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cursor:
            if replace:
                cursor.execute(f"TRUNCATE {', '.join(ROW_TABLES)}")
            else:
                for table in ROW_TABLES:
                    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
                    found = cursor.fetchone()
                    if found and found[0]:
                        raise LedgerError(f"{self.name}: table {table} is not empty")
            for table in ROW_TABLES:
                copied = 0
                with cursor.copy(_COPY[table]) as copy:
                    for row in source(table):
                        copy.write_row(row)
                        copied += 1
                        if progress is not None and copied % _PROGRESS_EVERY == 0:
                            progress(table, copied)
                if progress is not None:
                    progress(table, copied)
            cursor.execute(_CLAIM_AHEAD, (str(unposted_next),))

    def terminal_snapshot(self, terminal: str) -> RowSource:
        rows = terminal_rows_on(self._connection(), terminal)
        return lambda table: rows[table]

    def claim_sequences(self, block: int) -> int:
        return claim_sequences_on(self._connection(), block)

    def lock_writer(self) -> None:
        """A session-level advisory lock: held until this connection closes, released by the server when
        the process dies (SIGKILL included), so a restart never finds it stale. Tried for up to
        ``WRITER_LOCK_WAIT`` seconds: the server may take a moment to notice a killed predecessor."""
        conn = self._connection()
        deadline = time.monotonic() + WRITER_LOCK_WAIT
        while True:  # bounded by the deadline
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,)).fetchone()
            if (row and row[0]) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not (row and row[0]):
            raise LedgerError(f"{self.name}: another switch is serving from this ledger; one process per ledger "
                              "unless every instance runs in multi-instance mode (docs/scaleout.md)")

    def end_sessions(self) -> int:
        return self._connection().execute(_END_SESSIONS).rowcount

    def open_session_terminals(self) -> list[str]:
        rows = self._connection().execute(
            f"SELECT terminal FROM {SESSIONS} WHERE signed_on_at IS NOT NULL ORDER BY terminal").fetchall()
        return [str(row[0]) for row in rows]

    def meta(self, key: str) -> str | None:
        row = self._connection().execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def table_counts(self) -> dict[str, int]:
        conn = self._connection()
        counts = {}
        for table in ROW_TABLES:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
