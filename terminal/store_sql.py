"""The terminal store's SQL and its transaction step: the schema, the journal's columns and
statements (made once, not per call), and ``_Transaction`` (what ``TerminalStore.transaction()``
returns: a savepoint or a transaction of its own, see ``terminal.store``). Split from
``terminal.store`` to keep that module to the store's methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from terminal.store import TerminalStore

__all__ = ["_INSERT_ENTRY", "_JOURNAL_COLUMNS", "_JOURNAL_UPDATABLE", "_SCHEMA", "_SELECT_ENTRY", "_UPDATED_AT",
           "_Transaction", "_UpdatePlan", "_update_plan"]


class _Transaction:
    """``TerminalStore.transaction()``: a plain class, not a generator, because every store write
    goes through it several times per request; one per store, reused (its state is the store's
    ``_depth``), and a nested one only counts."""

    __slots__ = ("store",)

    def __init__(self, store: TerminalStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        store = self.store
        if store._depth:
            store._depth += 1
            return
        conn = store._db()
        if store.deferred_sync:  # a step of the open transaction that ``sync`` commits
            if conn.in_transaction:
                store._exec("SAVEPOINT step")
                store._whole_step = False
            else:  # the first step since the last sync: undoing it is undoing the transaction
                store._exec("BEGIN IMMEDIATE")
                store._whole_step = True
        else:
            store._exec("BEGIN IMMEDIATE")
        store._depth = 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        store = self.store
        store._depth -= 1
        if store._depth:
            return
        conn = store._db()
        if store.deferred_sync:
            if exc_type is not None:  # undo this step only: the steps before it stand
                store._forget()
                if conn.in_transaction:  # (SQLite itself rolls everything back on some I/O errors)
                    if store._whole_step:
                        store._exec("ROLLBACK")
                    else:
                        store._exec("ROLLBACK TO step")
                        store._exec("RELEASE step")
                return
            if not store._whole_step:
                store._exec("RELEASE step")
            store._unsynced = True
            return
        if exc_type is not None:
            store._forget()
            store._exec("ROLLBACK")
            return
        try:
            store._exec("COMMIT")
        except BaseException:
            store._forget()
            raise


_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT, batch TEXT NOT NULL, kind TEXT NOT NULL,
        direction TEXT NOT NULL, mti TEXT NOT NULL, stan TEXT NOT NULL, transmission_time TEXT NOT NULL,
        amount INTEGER NOT NULL, currency TEXT NOT NULL, pan TEXT NOT NULL, state TEXT NOT NULL,
        response_code TEXT NOT NULL, rrn TEXT NOT NULL, auth_code TEXT NOT NULL, reason TEXT NOT NULL,
        request TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    "CREATE INDEX journal_batch ON journal (batch, id)",
    """CREATE TABLE reversals (
        id INTEGER PRIMARY KEY AUTOINCREMENT, journal_id INTEGER NOT NULL UNIQUE REFERENCES journal (id),
        reason TEXT NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE advices (
        id INTEGER PRIMARY KEY AUTOINCREMENT, journal_id INTEGER NOT NULL UNIQUE REFERENCES journal (id),
        message TEXT NOT NULL, attempts INTEGER NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
)
_JOURNAL_COLUMNS = (
    "id",
    "batch",
    "kind",
    "direction",
    "mti",
    "stan",
    "transmission_time",
    "amount",
    "currency",
    "pan",
    "state",
    "response_code",
    "rrn",
    "auth_code",
    "reason",
    "request",
    "created_at",
    "updated_at",
)
_INSERT_ENTRY = (f"INSERT INTO journal ({', '.join(_JOURNAL_COLUMNS[1:])}) VALUES "
                 f"({', '.join('?' * (len(_JOURNAL_COLUMNS) - 1))})")
_SELECT_ENTRY = f"SELECT {', '.join(_JOURNAL_COLUMNS)} FROM journal"
_JOURNAL_UPDATABLE = frozenset({"state", "response_code", "rrn", "auth_code", "reason", "amount", "batch"})
_CODE_WIDTHS = {"response_code": 2, "rrn": 12, "auth_code": 6}  # columns checked as short printable codes
_UPDATED_AT = len(_JOURNAL_COLUMNS) - 1


class _UpdatePlan(NamedTuple):
    """How ``update_entry`` changes one set of columns: its UPDATE, where each column sits in a
    journal row, which are codes to check and whether the state is among them — worked out once
    per set of column names (a load run uses two or three), not per call."""

    sql: str
    positions: tuple[int, ...]
    codes: tuple[tuple[int, str, int], ...]  # (index in the changes, column, width)
    state: int  # index of "state" in the changes, -1 if absent


_UPDATE_PLANS: dict[tuple[str, ...], _UpdatePlan] = {}


def _update_plan(columns: tuple[str, ...]) -> _UpdatePlan | str:
    """The plan for ``columns`` (made once), or the error if some cannot be changed."""
    plan = _UPDATE_PLANS.get(columns)
    if plan is not None:
        return plan
    unknown = set(columns) - _JOURNAL_UPDATABLE
    if unknown:
        return f"journal column(s) {', '.join(sorted(unknown))} cannot be changed"
    assignments = ", ".join(f"{name} = ?" for name in columns)
    codes = tuple((columns.index(name), name, width) for name, width in _CODE_WIDTHS.items() if name in columns)
    plan = _UPDATE_PLANS[columns] = _UpdatePlan(
        f"UPDATE journal SET {assignments}, updated_at = ? WHERE id = ?",
        tuple(_JOURNAL_COLUMNS.index(name) for name in columns),
        codes,
        columns.index("state") if "state" in columns else -1,
    )
    return plan
