"""The pending reversals and advices of a ``TerminalStore``, and the stored form of a message.

Apart from ``terminal.store`` so that each file has one job: this one is the two queues of what
the terminal owes the host (persisted, and kept in memory as well: the policy asks for them at
every step, and one process owns a store file, so the copy cannot go stale; a rolled-back
transaction drops it), and how a message is written to and read from the store (secrets removed).
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import AbstractContextManager
from json.encoder import encode_basestring_ascii as _string  # what JSONEncoder uses for text
from typing import Any, TypeVar

from switch.codec.message import Message
from terminal.records import PendingAdvice, PendingReversal

__all__ = ["SECRET_FIELDS", "PendingQueues", "StoreError"]

SECRET_FIELDS = frozenset({35, 36, 45, 52, 53, 55})
"""Never written to the store: track 2/3/1, PIN block, security control, ICC data."""




class StoreError(RuntimeError):
    """The store cannot be opened or used (not a terminal store, another terminal's, misuse)."""


_JSON = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps with options builds one per call


def _stored_fields(message: Message) -> dict[int, str]:
    """The fields as stored: sorted, secrets removed (a new dict the caller may keep)."""
    return {k: v for k, v in sorted(message.fields.items()) if k not in SECRET_FIELDS}


_KEY_PREFIXES = {number: f'"{number}":' for number in range(1, 193)}  # '"4":' for each field number


def _encode(message: Message, fields: dict[int, str]) -> str:
    """The stored form of ``message`` with its ``_stored_fields`` (so one dict serves both the row
    and the in-memory copy). Joined from each value's JSON string: what ``json`` writes for the same
    object, in a third fewer instructions than its generic encoder (twice per request); anything
    else (a field number beyond 192, a value that is not text) goes through that encoder."""
    try:
        body = ",".join([_KEY_PREFIXES[number] + _string(value) for number, value in fields.items()])
        return f'{{"mti":{_string(message.mti)},"header":{_string(message.header)},"fields":{{{body}}}}}'
    except (KeyError, TypeError):
        return _JSON.encode({"mti": message.mti, "header": message.header, "fields": fields})


def _message_json(message: Message) -> str:
    return _encode(message, _stored_fields(message))


def _stored(message: Message) -> Message:
    """``message`` as the store gives it back (what ``_message_from(_message_json(message))`` reads)."""
    return Message(message.mti, _stored_fields(message), message.header)


def _json_and_stored(message: Message) -> tuple[str, Message]:
    """Both forms of ``message`` from one pass over its fields (every store write needs both)."""
    fields = _stored_fields(message)
    return _encode(message, fields), Message(message.mti, fields, message.header)


def _copy(message: Message) -> Message:
    return Message(message.mti, dict(message.fields), message.header)


_Item = TypeVar("_Item", PendingReversal, PendingAdvice)


def _fresh_item(item: _Item) -> _Item:
    """A copy the caller may change without changing the store's memory of it."""
    if isinstance(item, PendingReversal):
        return PendingReversal(item.id, item.journal_id, item.reason, _copy(item.message), item.attempts,
                               item.created_at, item.updated_at)
    return PendingAdvice(item.id, item.journal_id, _copy(item.message), item.attempts, item.created_at,
                         item.updated_at)


def fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _message_from(text: str) -> Message:
    raw = json.loads(text)
    return Message(raw["mti"], {int(k): v for k, v in raw["fields"].items()}, raw["header"])



def _check_code_like(name: str, value: object, width: int) -> None:
    if not (isinstance(value, str) and len(value) <= width and value.isascii() and value.isprintable()):
        raise StoreError(f"{name} must be up to {width} printable ASCII characters, got {value!r}")


class PendingQueues:
    """The reversal and advice queues; ``TerminalStore`` supplies ``_db`` and ``transaction``."""

    _reversal_cache: dict[int, PendingReversal] | None
    _advice_cache: dict[int, PendingAdvice] | None

    def _db(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        raise NotImplementedError

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    # -- pending reversals ----------------------------------------------------------------------

    def _reversals(self) -> dict[int, PendingReversal]:
        if self._reversal_cache is None:
            rows = self._db().execute(
                "SELECT id, journal_id, reason, message, attempts, created_at, updated_at FROM reversals ORDER BY id")
            self._reversal_cache = {row[0]: PendingReversal(row[0], row[1], row[2], _message_from(row[3]), row[4],
                                                            row[5], row[6]) for row in rows}
        return self._reversal_cache

    def add_reversal(self, journal_id: int, reason: str, message: Message, now: float) -> PendingReversal:
        _check_code_like("reversal reason", reason, 2)
        text, stored = _json_and_stored(message)
        with self.transaction():
            cursor = self._exec(
                "INSERT INTO reversals (journal_id, reason, message, attempts, created_at, updated_at) "
                "VALUES (?, ?, ?, 0, ?, ?)",
                (journal_id, reason, text, now, now),
            )
            assert cursor.lastrowid is not None
            reversal = PendingReversal(cursor.lastrowid, journal_id, reason, stored, 0, float(now), float(now))
            self._reversals()[reversal.id] = reversal
        return _fresh_item(reversal)

    def reversal(self, reversal_id: int) -> PendingReversal:
        self._db()
        reversal = self._reversals().get(reversal_id)
        if reversal is None:
            raise StoreError(f"no pending reversal {reversal_id}")
        return _fresh_item(reversal)

    def reversals(self) -> list[PendingReversal]:
        """Pending reversals, oldest first (the order they must go out in)."""
        self._db()
        return [_fresh_item(reversal) for reversal in self._reversals().values()]

    def reversal_for(self, journal_id: int) -> PendingReversal | None:
        self._db()
        return next((_fresh_item(r) for r in self._reversals().values() if r.journal_id == journal_id), None)

    def update_reversal(
        self,
        reversal_id: int,
        *,
        now: float,
        message: Message | None = None,
        attempts: int | None = None,
        reason: str | None = None,
    ) -> PendingReversal:
        current = self.reversal(reversal_id)
        if reason is not None:
            _check_code_like("reversal reason", reason, 2)
        new_attempts = current.attempts if attempts is None else attempts
        text, stored = _json_and_stored(message or current.message)
        with self.transaction():
            self._exec(
                "UPDATE reversals SET message = ?, attempts = ?, reason = ?, updated_at = ? WHERE id = ?",
                (text, new_attempts, reason or current.reason, now, reversal_id),
            )
            cache = self._reversals()
            if isinstance(new_attempts, int) and isinstance(now, int | float):
                cache[reversal_id] = PendingReversal(
                    reversal_id, current.journal_id, reason or current.reason, stored, new_attempts,
                    current.created_at, float(now))
            else:  # read back what SQLite made of the values
                self._reversal_cache = None
        return self.reversal(reversal_id)

    def delete_reversal(self, reversal_id: int) -> None:
        with self.transaction():
            self._exec("DELETE FROM reversals WHERE id = ?", (reversal_id,))
            self._reversals().pop(reversal_id, None)

    # -- pending advices ------------------------------------------------------------------------

    def _advices(self) -> dict[int, PendingAdvice]:
        if self._advice_cache is None:
            rows = self._db().execute(
                "SELECT id, journal_id, message, attempts, created_at, updated_at FROM advices ORDER BY id")
            self._advice_cache = {row[0]: PendingAdvice(row[0], row[1], _message_from(row[2]), row[3], row[4],
                                                        row[5]) for row in rows}
        return self._advice_cache

    def add_advice(self, journal_id: int, message: Message, now: float) -> PendingAdvice:
        text, stored = _json_and_stored(message)
        with self.transaction():
            cursor = self._exec(
                "INSERT INTO advices (journal_id, message, attempts, created_at, updated_at) VALUES (?, ?, 0, ?, ?)",
                (journal_id, text, now, now),
            )
            assert cursor.lastrowid is not None
            advice = PendingAdvice(cursor.lastrowid, journal_id, stored, 0, float(now), float(now))
            self._advices()[advice.id] = advice
        return _fresh_item(advice)

    def advice(self, advice_id: int) -> PendingAdvice:
        self._db()
        advice = self._advices().get(advice_id)
        if advice is None:
            raise StoreError(f"no pending advice {advice_id}")
        return _fresh_item(advice)

    def advices(self) -> list[PendingAdvice]:
        """Pending advices, oldest first."""
        self._db()
        return [_fresh_item(advice) for advice in self._advices().values()]

    def update_advice(
        self, advice_id: int, *, now: float, attempts: int, message: Message | None = None
    ) -> PendingAdvice:
        current = self.advice(advice_id)
        text, stored = _json_and_stored(message or current.message)
        with self.transaction():
            self._exec(
                "UPDATE advices SET attempts = ?, message = ?, updated_at = ? WHERE id = ?",
                (attempts, text, now, advice_id),
            )
            cache = self._advices()
            if isinstance(attempts, int) and isinstance(now, int | float):
                cache[advice_id] = PendingAdvice(
                    advice_id, current.journal_id, stored, attempts, current.created_at, float(now))
            else:
                self._advice_cache = None
        return self.advice(advice_id)

    def delete_advice(self, advice_id: int) -> None:
        with self.transaction():
            self._exec("DELETE FROM advices WHERE id = ?", (advice_id,))
            self._advices().pop(advice_id, None)
