"""What a ledger store must do, and the logical schema every store keeps.

``switch.ledger.Ledger`` decides everything in memory and only asks its backend for a few things:
replay the committed rows of each table in sequence order (in one consistent snapshot; all of them,
or one terminal's), write a batch of queued rows in ONE durable transaction (the group commit),
claim a block of unposted RRN numbers atomically, and close. (Multi-instance mode, PostgreSQL only,
adds a lock connection: ``pg_control``.) Everything dialect-specific (placeholders, upserts, column types,
constraints, migrations) lives in the backend modules, so the in-memory logic is the same whatever
the database.

The logical schema below is the contract between the two: table names, column names in order and a
column kind per column. Rows cross the seam as plain tuples in that order, with FLAG columns as 0/1
ints and TIME columns as float Unix seconds, so a ledger replayed from SQLite and one replayed from
PostgreSQL hold identical state.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Self

__all__ = [
    "ROW_TABLES",
    "SCHEMA_VERSION",
    "SESSIONS",
    "SESSION_COLUMNS",
    "TABLES",
    "UNPOSTED_CLAIM",
    "UNPOSTED_KEY",
    "Column",
    "ColumnKind",
    "LedgerBackend",
    "LedgerError",
    "PendingRow",
    "check_version",
]

SCHEMA_VERSION = 3
"""The logical schema this program writes. 1: the first releases; 2 added ``postings.identity``,
``postings.requested_amount`` and ``reversals.amount`` (repeat identity, partial approvals and
partial reversals); 3 added the ``sessions`` table (sign-on sessions shared by multi-instance
switches) and, in PostgreSQL, ``fault_counters`` (counted fault rules counted across instances)."""

UNPOSTED_KEY = "unposted_rrn_next"
"""``meta`` key: the first unposted RRN number not yet claimed by any open."""
UNPOSTED_CLAIM = "meta:" + UNPOSTED_KEY
"""The pseudo-table of a queued claim ahead (params: the new high-water mark as text); the backend
stores max(stored, new) so an older claim can never lower it."""

PendingRow = tuple[int, str, tuple[Any, ...]]
"""A queued write: (sequence, table name or ``UNPOSTED_CLAIM``, the row's values in column order)."""


class LedgerError(RuntimeError):
    """The ledger cannot be opened or used (not a ledger, other schema, unreachable, used after close)."""


class ColumnKind(enum.Enum):
    """What a column holds; each backend maps a kind to its own type (money is always an integer)."""

    SEQ = "seq"  # the row's ledger sequence: the primary key
    INT = "int"  # integers, amounts in minor units (never floating point)
    TEXT = "text"
    TIME = "time"  # host time, float Unix seconds (not money: float is exact enough for display and windows)
    FLAG = "flag"  # a boolean, 0/1 across the seam


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: ColumnKind
    nullable: bool = False


def _columns(spec: str) -> tuple[Column, ...]:
    """``"name:kind[?]"`` words to columns (``?``: nullable); keeps the table list readable."""
    columns = []
    for word in spec.split():
        name, kind = word.split(":")
        columns.append(Column(name, ColumnKind(kind.rstrip("?")), kind.endswith("?")))
    return tuple(columns)


TABLES: dict[str, tuple[Column, ...]] = {
    "postings": _columns(
        "seq:seq received_at:time terminal:text stan:text transmission_time:text mti:text kind:text "
        "direction:text amount:int currency:text pan:text batch:text response_code:text approved:flag "
        "rrn:text auth_code:text identity:text requested_amount:int?"),
    "reversals": _columns(
        "seq:seq received_at:time terminal:text stan:text transmission_time:text mti:text original_seq:int? "
        "original_stan:text original_time:text response_code:text effect:text amount:int"),
    "uploads": _columns(
        "seq:seq received_at:time terminal:text batch:text stan:text processing_code:text direction:text "
        "amount:int rrn:text pan:text"),
    "upload_ends": _columns("seq:seq received_at:time terminal:text batch:text"),
    "settlements": _columns(
        "seq:seq received_at:time terminal:text batch:text stan:text transmission_time:text result:text "
        "response_code:text closed:flag debit_count:int debit_amount:int credit_count:int credit_amount:int"),
    "discrepancies": _columns(
        "seq:seq received_at:time terminal:text batch:text kind:text stan:text rrn:text ledger_amount:int? "
        "upload_amount:int? detail:text"),
}
"""Append-only tables, one per record type; the ledger's state is the replay of all rows in seq order."""

SESSIONS = "sessions"
"""The one table that is not append-only: a terminal's sign-on session, one row per terminal (primary
key ``terminal``), replaced on every change (sign-on, sign-off, expiry, MAC failure). Written only by
multi-instance switches, which share sessions through it (docs/scaleout.md); a single-instance switch
keeps sessions in memory, as real hosts do, and never writes it."""
SESSION_COLUMNS = _columns("seq:int changed_at:time terminal:text signed_on_at:time? working_keys:text? signons:int")
"""``seq``: the ledger sequence of the change (a newer row never loses to an older one);
``signed_on_at`` NULL: no session (signed off, expired, closed by a MAC failure); ``working_keys``:
the session's clear working keys as hex (an emulator's test keys; a real host would keep them under a
key-encryption key), NULL without profiles; ``signons``: sign-ons so far, which seeds the next keys so
no two sign-ons of a terminal share keys whichever instance served them."""

ROW_TABLES: dict[str, tuple[Column, ...]] = {**TABLES, SESSIONS: SESSION_COLUMNS}
"""Every table a replay reads (at open, and one terminal's rows at a take-over), a copy copies and a
verification counts: the append-only tables, then ``sessions``."""


def check_version(name: str, found: str, migrations: dict[int, object]) -> int:
    """The stored schema version as an int, or a LedgerError saying why this program cannot use it.

    ``migrations`` maps each version this backend can migrate TO from the one before.
    """
    if not found.isdigit():
        raise LedgerError(f"{name}: unknown ledger schema version {found!r}")
    version = int(found)
    if version > SCHEMA_VERSION:
        raise LedgerError(f"{name}: ledger schema version {version} is newer than this program's "
                          f"{SCHEMA_VERSION}; upgrade iso8583-switch-emulator to open it")
    missing = [v for v in range(version + 1, SCHEMA_VERSION + 1) if v not in migrations]
    if missing:
        raise LedgerError(f"{name}: ledger schema version {version} cannot be migrated to "
                          f"{SCHEMA_VERSION} by this backend (no migration to version {missing[0]})")
    return version


RowSource = Callable[[str], Iterable[tuple[Any, ...]]]
"""Given a table name: its committed rows in seq order, as tuples in ``TABLES`` column order."""


class LedgerBackend(ABC):
    """A durable store of ledger rows (one connection, used by one thread at a time).

    ``Ledger`` serialises ``write`` and ``close`` under its flush lock; ``open`` (the constructor of
    each backend) creates or migrates the schema in one transaction before anything else.
    """

    name: str
    """How to name this ledger in messages: a path, or a URL without its password."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[RowSource]:
        """A consistent view of every committed row (one read transaction), for replay."""

    @abstractmethod
    def write(self, batch: Sequence[PendingRow]) -> None:
        """Write ``batch`` (seq ascending, grouped by table as queued) in ONE transaction, durable when
        this returns. On any error nothing is written and the error propagates."""

    @abstractmethod
    def terminal_snapshot(self, terminal: str) -> RowSource:
        """One terminal's committed rows, per table in seq order, read in one consistent snapshot
        (what an instance replays when it takes a terminal over; also how tests compare an instance's
        view with the database's)."""

    @abstractmethod
    def claim_unposted(self, block: int) -> int:
        """Atomically and durably move the unposted RRN high-water mark up by ``block``; return where the
        claimed block starts."""

    @abstractmethod
    def lock_writer(self) -> None:
        """Make sure no other process serves from this ledger while this connection lives, or raise
        LedgerError."""

    @abstractmethod
    def end_sessions(self) -> int:
        """End every stored sign-on session (keep the rows' sign-on counts); the number ended. A
        single-instance writer calls it at open: its sessions start empty, as after every restart, and
        sessions left by multi-instance runs must not come back when instances serve again."""

    @abstractmethod
    def open_session_terminals(self) -> list[str]:
        """The terminals whose stored sign-on session is open (sorted): what a multi-instance sessions
        reset must end, read without replaying the ledger."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def table_counts(self) -> dict[str, int]:
        """Committed rows per table (``ledger migrate``'s verification)."""

