"""The store file stays the format the previous release reads and writes (schema "1"), whatever page
size a new file gets; the WAL stays small and is reused; the stored JSON of a message is what the
generic encoder writes; the in-memory copies of a deferred store match the file after many steps."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.message import Message
from terminal.store import SCHEMA_VERSION, TerminalStore
from terminal.store_queues import _JSON, _encode, _message_from, _stored_fields
from terminal.store_sql import _SCHEMA

TID = "T0000001"
NOW = 1_740_830_400.0


def request(stan: str) -> Message:
    return Message("0200", {2: "4111111111111111", 3: "000000", 4: "000000001234", 7: "0301120000", 11: stan,
                            35: "4111111111111111=2712101", 41: TID, 42: "SHOP01         ", 49: "840",
                            52: "0123456789ABCDEF"}, "")


def purchase(store: TerminalStore, now: float) -> None:
    """What the load runner's policy does per approved purchase: two steps, a sync before sending."""
    with store.transaction():
        stan = store.next_stan()
        entry = store.add_entry(kind="purchase", direction="debit", request=request(stan), amount=1234,
                                currency="840", pan="4111111111111111", state="in-flight", now=now)
        store.add_reversal(entry.id, "98", request(stan).copy(mti="0400"), now)
    store.sync()
    reversal = store.reversal_for(entry.id)
    assert reversal is not None
    with store.transaction():
        store.update_entry(entry.id, now=now + 1, response_code="00", rrn="000000000001", state="approved",
                           auth_code="123456", amount=1234, reason="approved")
        store.delete_reversal(reversal.id)


def previous_release_file(path: Path) -> None:
    """A store as the previous release made it: default (4096-byte) pages, the same schema and meta rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("terminal_id", TID),
                                                        ("stan", "000041"), ("batch", "000001")])
    conn.execute("COMMIT")
    conn.close()


def test_a_file_of_the_previous_release_opens_keeps_its_pages_and_counts_on(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    previous_release_file(path)
    with TerminalStore.open(path, TID, deferred_sync=True) as store:
        assert store._db().execute("PRAGMA page_size").fetchone()[0] == 4096  # a file keeps its page size
        purchase(store, NOW)
    with TerminalStore.open(path, TID) as reopened:
        assert reopened.last_stan == "000042" and reopened.entries()[0].state == "approved"


def test_a_new_file_is_the_previous_release_format(tmp_path: Path) -> None:
    """Same tables, same SQL, same meta keys: only the page size differs, which SQLite reads from
    the file's header, so the previous release opens it as any other store."""
    path = tmp_path / "new.sqlite"
    with TerminalStore.open(path, TID, deferred_sync=True) as store:
        purchase(store, NOW)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 2048
        schema = [row[0] for row in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
                                                 "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
        assert schema == list(_SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta == {"schema_version": SCHEMA_VERSION, "terminal_id": TID, "stan": "000001", "batch": "000001"}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_a_sync_reaches_the_disk_not_just_the_file(tmp_path: Path) -> None:
    # SIGKILL (tests/test_store_kill.py) keeps what the kernel holds, so only the settings prove the
    # fsync: sync() commits with synchronous=FULL (WAL written and fsynced inside the COMMIT).
    for deferred in (True, False):
        store = TerminalStore.open(tmp_path / f"t{deferred}.sqlite", "T1", deferred_sync=deferred)
        try:
            conn = store._db()
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            store.close()


def test_the_wal_stays_small_and_is_reused(tmp_path: Path) -> None:
    """sync() checkpoints every few dozen commits, so the WAL is written from its start again instead
    of growing (an fdatasync of a file that grew must also write its new size)."""
    path = tmp_path / "t.sqlite"
    wal = tmp_path / "t.sqlite-wal"
    with TerminalStore.open(path, TID, deferred_sync=True) as store:
        for index in range(100):
            purchase(store, NOW + index)
        size = wal.stat().st_size
        assert size < 64 * 8 * (2048 + 24)  # a few dozen commits of a few pages each
        for index in range(200):
            purchase(store, NOW + 100 + index)
        assert wal.stat().st_size <= size * 1.25  # reused, not grown (a page split may add a frame or two)
        remembered = [store.entry(entry.id) for entry in store.entries()]
        assert store.last_stan == "000300" and store.reversals() == []
    with TerminalStore.open(path, TID) as reopened:
        assert reopened.entries() == remembered


_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(fields=st.dictionaries(st.integers(min_value=0, max_value=400), _texts, max_size=20), header=_texts,
       mti=st.sampled_from(["0200", "0400", "0220"]))
def test_the_stored_json_is_what_the_generic_encoder_writes(fields: dict[int, str], header: str, mti: str) -> None:
    message = Message(mti, fields, header)
    stored = _stored_fields(message)
    text = _encode(message, stored)
    assert text == _JSON.encode({"mti": mti, "header": header, "fields": {str(k): v for k, v in stored.items()}})
    assert _message_from(text) == Message(mti, stored, header)
    assert json.loads(text)["fields"].keys() == {str(k) for k in stored}
