"""Schema versions and the PostgreSQL backend's own guarantees: version 1 SQLite files migrate, a newer
database is refused naming both versions, the database refuses what the ledger must never hold (a
second full reversal, a second closing settlement, a reused RRN), and ``iso-switch ledger migrate``
copies a SQLite ledger into PostgreSQL and proves the copy."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from switch.cli import cli
from switch.ledger import (
    FIRST_BATCH,
    Discrepancy,
    Ledger,
    LedgerError,
    Posting,
    Reversal,
    Settlement,
    UploadRecord,
)
from switch.ledger_backends import SCHEMA_VERSION, open_backend
from switch.ledger_backends.base import ROW_TABLES, SESSION_COLUMNS, UNPOSTED_KEY
from switch.ledger_backends.postgresql import PostgresBackend, display_url
from tests.test_ledger import T0, posting, reverse, settle, state

# The schema of the first releases (schema "1"), exactly as they created it.
V1_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE postings (seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, terminal TEXT NOT NULL, "
    "stan TEXT NOT NULL, transmission_time TEXT NOT NULL, mti TEXT NOT NULL, kind TEXT NOT NULL, "
    "direction TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL, pan TEXT NOT NULL, "
    "batch TEXT NOT NULL, response_code TEXT NOT NULL, approved INTEGER NOT NULL, rrn TEXT NOT NULL, "
    "auth_code TEXT NOT NULL)",
    "CREATE TABLE reversals (seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, terminal TEXT NOT NULL, "
    "stan TEXT NOT NULL, transmission_time TEXT NOT NULL, mti TEXT NOT NULL, original_seq INTEGER, "
    "original_stan TEXT NOT NULL, original_time TEXT NOT NULL, response_code TEXT NOT NULL, effect TEXT NOT NULL)",
    "CREATE TABLE uploads (seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, terminal TEXT NOT NULL, "
    "batch TEXT NOT NULL, stan TEXT NOT NULL, processing_code TEXT NOT NULL, direction TEXT NOT NULL, "
    "amount INTEGER NOT NULL, rrn TEXT NOT NULL, pan TEXT NOT NULL)",
    "CREATE TABLE upload_ends (seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, terminal TEXT NOT NULL, "
    "batch TEXT NOT NULL)",
    "CREATE TABLE settlements (seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, terminal TEXT NOT NULL, "
    "batch TEXT NOT NULL, stan TEXT NOT NULL, transmission_time TEXT NOT NULL, result TEXT NOT NULL, "
    "response_code TEXT NOT NULL, closed INTEGER NOT NULL, debit_count INTEGER NOT NULL, "
    "debit_amount INTEGER NOT NULL, credit_count INTEGER NOT NULL, credit_amount INTEGER NOT NULL)",
    "CREATE TABLE discrepancies (seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, terminal TEXT NOT NULL, "
    "batch TEXT NOT NULL, kind TEXT NOT NULL, stan TEXT NOT NULL, rrn TEXT NOT NULL, ledger_amount INTEGER, "
    "upload_amount INTEGER, detail TEXT NOT NULL)",
)


def write_v1_ledger(path: Path) -> None:
    """A ledger as a first release left it: two purchases (one reversed), a decline, a closed batch."""
    conn = sqlite3.connect(path)
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema', '1')")
    purchase = ("TERM0001", "0601120000", "0200", "purchase", "debit")
    conn.executemany("INSERT INTO postings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        (1, T0, purchase[0], "000001", purchase[1], purchase[2], purchase[3], purchase[4], 1500, "840",
         "476173******0010", FIRST_BATCH, "00", 1, "000000000001", "100001"),
        (2, T0 + 1, purchase[0], "000002", "0601120001", purchase[2], purchase[3], purchase[4], 700, "840",
         "476173******0010", FIRST_BATCH, "00", 1, "000000000002", "100002"),
        (3, T0 + 2, purchase[0], "000003", "0601120002", purchase[2], purchase[3], purchase[4], 900, "840",
         "476173******0010", FIRST_BATCH, "51", 0, "000000000003", ""),
    ])
    conn.execute("INSERT INTO reversals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (4, T0 + 3, "TERM0001", "000004", "0601120003", "0400", 2, "000002", "0601120001", "00", "reversed"))
    conn.execute("INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (5, T0 + 4, "TERM0001", FIRST_BATCH, "000005", "", "balanced", "00", 1, 1, 1500, 0, 0))
    conn.commit()
    conn.close()


def test_version_1_sqlite_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    write_v1_ledger(path)
    ledger = Ledger.open(path)
    first = ledger.find_posting("TERM0001", "000001", "0601120000")  # version 1 keyed repeats by field 7
    assert first is not None and (first.identity, first.requested_amount, first.amount) == ("", None, 1500)
    assert ledger.posting(2).reversal_seq == 4 and ledger.reversals()[0].amount == 0
    [batch] = ledger.batches()
    assert (batch.status, batch.debit_count, batch.debit_amount, batch.debit_reversal_amount) == (
        "closed", 1, 1500, 700)
    assert ledger.current_batch("TERM0001") == "000002"
    seq = ledger.next_sequence()
    assert seq == 6
    ledger.append_posting(seq, T0 + 5, "TERM0001", "000006", "0601120005", "0200", "purchase", "debit", 300, "840",
                          "", "000002", "00", True, f"{seq:012d}", "100006", "20L0601120005", 500)
    before = state(ledger)
    ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(SCHEMA_VERSION)
    for table, columns in ROW_TABLES.items():  # migrated tables have the current columns, in order
        assert [row[1] for row in conn.execute(f"PRAGMA table_info({table})")] == [c.name for c in columns]
    conn.close()
    again = Ledger.open(path)
    assert state(again) == before
    assert again.posting(6).requested_amount == 500
    again.close()


def test_version_2_sqlite_ledger_gets_the_sessions_table(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    ledger = Ledger.open(path)
    kept = posting(ledger, "000001")
    ledger.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE sessions")  # what a version 2 release left
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    again = Ledger.open(path)
    assert again.posting(kept.seq) == kept and again.session("TERM0001") is None
    seq = again.next_sequence()
    again.record_session(seq, T0, "TERM0001", T0, None, 1)
    again.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "3"
    assert [row[1] for row in conn.execute("PRAGMA table_info(sessions)")] == [c.name for c in SESSION_COLUMNS]
    conn.close()
    reopened = Ledger.open(path)
    record = reopened.session("TERM0001")
    assert record is not None and (record.seq, record.signed_on_at, record.signons) == (seq, T0, 1)
    reopened.close()


def test_version_2_postgresql_ledger_is_migrated_at_open(pg_url: str) -> None:
    """Version 3 adds ``sessions`` and ``fault_counters``; a version 2 database gets both at its next
    open (one transaction, under the migration lock), its rows untouched."""
    ledger = Ledger.open(pg_url)
    kept = posting(ledger, "000001")
    ledger.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE sessions")
        conn.execute("DROP TABLE fault_counters")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    again = Ledger.open(pg_url)
    assert again.posting(kept.seq) == kept
    seq = again.next_sequence()
    again.record_session(seq, T0, "TERM0001", T0, "00/11", 3)
    again.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
        conn.execute("INSERT INTO fault_counters VALUES ('epoch', 'rule', 1)")
        assert conn.execute("SELECT matched FROM fault_counters").fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.CheckViolation):  # keys only with a session
            conn.execute("UPDATE sessions SET signed_on_at = NULL")
    reopened = Ledger.open(pg_url)
    record = reopened.session("TERM0001")
    assert record is not None and (record.working_keys, record.signons) == ("00/11", 3)
    reopened.close()


def test_an_older_session_row_never_replaces_a_newer_one(tmp_path: Path, pg_url: str) -> None:
    """The sessions table is replaced per terminal, guarded by the sequence: a late write of an older
    change is ignored by both backends."""
    for target in (str(tmp_path / "l.sqlite"), pg_url):
        backend = open_backend(target)
        backend.write([(20, "sessions", (20, T0, "T1", T0, None, 2))])
        backend.write([(10, "sessions", (10, T0 - 9, "T1", None, None, 1))])
        with backend.snapshot() as rows:
            assert list(rows("sessions")) == [(20, T0, "T1", T0, None, 2)]
        backend.close()


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    write_v1_ledger(path)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE reversals ADD COLUMN amount INTEGER")  # a file someone edited by hand
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="duplicate column"):
        Ledger.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "1"
    assert "identity" not in [row[1] for row in conn.execute("PRAGMA table_info(postings)")]  # rolled back
    conn.close()


@pytest.mark.parametrize("version, message", [
    ("4", "ledger schema version 4 is newer than this program's 3; upgrade"),
    ("two", "unknown ledger schema version 'two'"),
])
def test_sqlite_newer_or_unknown_version_is_refused(tmp_path: Path, version: str, message: str) -> None:
    path = tmp_path / "new.sqlite"
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match=message):
        Ledger.open(path)


def test_postgresql_newer_version_is_refused(pg_url: str) -> None:
    ledger = Ledger.open(pg_url)
    posting(ledger, "000001")
    ledger.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    with pytest.raises(LedgerError, match="ledger schema version 4 is newer than this program's 3"):
        Ledger.open(pg_url)


def test_postgresql_refuses_a_database_with_foreign_ledger_tables(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE postings (id int)")
    with pytest.raises(LedgerError, match="no schema version"):
        Ledger.open(pg_url)


def test_postgresql_unreachable_is_one_clear_error() -> None:
    with pytest.raises(LedgerError, match=r"postgresql://switch:\*\*\*@127\.0\.0\.1:1/x: cannot open ledger"):
        Ledger.open("postgresql://switch:secret@127.0.0.1:1/x")
    assert display_url("postgresql://u:p%40ss@h:5/db") == "postgresql://u:***@h:5/db"
    assert display_url("postgres://h/db") == "postgres://h/db"


def test_postgresql_constraints_refuse_what_the_ledger_must_never_hold(pg_url: str) -> None:
    """A batch that breaks an invariant is refused whole: nothing of it is written, its rows stay
    pending and committed_seq does not move (the group committer then stops the switch)."""
    ledger = Ledger.open(pg_url)
    original = posting(ledger, "000001")
    reverse(ledger, original)
    settle(ledger, "TERM0001", FIRST_BATCH, "000003")
    ledger.flush()
    committed = ledger.committed_seq
    backend = open_backend(pg_url)
    refusals = [
        ("reversals", (90, T0, "TERM0001", "000009", "", "0400", original.seq, "000001", "", "00", "reversed", 0),
         "reversals_one_full_reversal"),
        ("settlements", (91, T0, "TERM0001", FIRST_BATCH, "000010", "", "balanced", "00", True, 0, 0, 0, 0),
         "settlements_one_close_per_batch"),
        ("postings", (92, T0, "TERM0001", "000011", "", "0200", "purchase", "debit", 5, "840", "", "000002", "00",
                      1, original.rrn, "1", "x", None), "postings_rrn_key"),
        ("reversals", (93, T0, "TERM0001", "000012", "", "0400", None, "000001", "", "00", "maybe", 0), "check"),
    ]
    for table, row, constraint in refusals:
        with pytest.raises(psycopg.errors.IntegrityError, match=constraint):
            backend.write([(row[0], table, row)])
    backend.close()
    # through the ledger: an RRN reused (a bug the in-memory indexes would not notice) stops the flush
    good = posting(ledger, "000004")
    seq = ledger.next_sequence()
    ledger.record_posting(Posting(seq, T0, "TERM0001", "000005", "", "0200", "purchase", "debit", 1, "840", "",
                                  "000002", "00", True, good.rrn, "1"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        ledger.flush()
    assert ledger.committed_seq == committed and ledger.pending_seq == seq
    ledger._pending.clear()  # drop the bad batch (a switch would stop here) so close() can finish
    ledger.close()
    reopened = Ledger.open(pg_url)
    assert [p.stan for p in reopened.postings()] == ["000001"]  # "000004" went down with its batch
    reopened.close()


def build_sqlite_ledger(path: Path) -> dict[str, object]:
    """A ledger with every kind of row, and unposted RRNs handed out; its state, to compare copies with."""
    ledger = Ledger.open(path)
    kept = [posting(ledger, f"{n:06d}", 100 * n) for n in range(1, 8)]
    reverse(ledger, kept[0])
    posting(ledger, "000020", 50, direction="credit", terminal="TERM0002")
    seq = ledger.next_sequence()
    ledger.record_upload(UploadRecord(seq, T0, "TERM0002", FIRST_BATCH, "000020", "200000", "credit", 50, "", ""))
    ledger.end_upload(ledger.next_sequence(), T0, "TERM0002", FIRST_BATCH)
    ledger.record_settlement(
        Settlement(ledger.next_sequence(), T0, "TERM0002", FIRST_BATCH, "000021", "", "accepted-after-upload", "00",
                   True, 0, 0, 1, 50),
        [Discrepancy(ledger.next_sequence(), T0, "TERM0002", FIRST_BATCH, "totals-differ-from-upload", "", "", None,
                     None, "x")])
    settle(ledger, "TERM0001", FIRST_BATCH, "000030")
    ledger.record_session(ledger.next_sequence(), T0, "TERM0002", T0 - 60, "0011/2233", 4)  # as instances write
    unposted = [ledger.unposted_rrn_number() for _ in range(3)]
    ledger.close()
    reader = Ledger.open(path)
    expected = {"state": state(reader), "unposted": unposted, "sessions": reader.sessions()}
    reader.close()
    return expected


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ledger_migrate_copies_verifies_and_refuses_a_full_destination(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "ledger.sqlite"
    expected = build_sqlite_ledger(source)
    before = digest(source)
    runner = CliRunner()
    result = runner.invoke(cli, ["ledger", "migrate", str(source), pg_url])
    assert result.exit_code == 0, result.output
    assert "copied 15 rows" in result.output and "postings 8, reversals 1" in result.output
    assert "sessions 1" in result.output
    assert "verified: row counts per table and the totals of 2 batches are equal" in result.output
    assert "copying postings: 8/8 rows" in result.stderr
    assert digest(source) == before  # the source is only read
    copy = Ledger.open(pg_url)
    assert state(copy) == expected["state"] and copy.sessions() == expected["sessions"]
    assert copy.unposted_rrn_number() > max(expected["unposted"])  # no unposted RRN handed out twice
    copy.close()

    again = runner.invoke(cli, ["ledger", "migrate", str(source), pg_url])
    assert again.exit_code == 1 and "already holds a ledger" in again.output and "--replace" in again.output
    replaced = runner.invoke(cli, ["ledger", "migrate", "--replace", str(source), pg_url])
    assert replaced.exit_code == 0, replaced.output
    shown = runner.invoke(cli, ["ledger", "--ledger", pg_url, "--json", "--terminal", "TERM0001"])
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    assert len(document["postings"]) == 7 and document["batches"][0]["status"] == "closed"
    text = runner.invoke(cli, ["ledger", "--ledger", pg_url, "--no-postings"])
    assert text.exit_code == 0 and "TERM0002 batch 000001  closed" in text.output
    assert "sessions (1 signed on)" in text.output and "TERM0002  signed on 2025-06-01 11:59:00 UTC  sign-ons 4" \
        "  working keys" in text.output and "0011" not in text.output  # the keys themselves are never shown
    shown = runner.invoke(cli, ["ledger", "--ledger", pg_url, "--json", "--terminal", "TERM0002"])
    [session] = json.loads(shown.output)["sessions"]
    assert (session["terminal"], session["signons"], session["working_keys"]) == ("TERM0002", 4, True)


def test_ledger_migrate_reads_a_version_1_file_without_changing_it(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "old.sqlite"
    write_v1_ledger(source)
    before = digest(source)
    result = CliRunner().invoke(cli, ["ledger", "migrate", str(source), pg_url])
    assert result.exit_code == 0, result.output
    assert digest(source) == before
    conn = sqlite3.connect(source)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "1"
    conn.close()
    copy = Ledger.open(pg_url)
    assert copy.find_posting("TERM0001", "000001", "0601120000") is not None
    assert copy.batches()[0].debit_reversal_amount == 700
    copy.close()


@pytest.mark.parametrize("args, message", [
    (["missing.sqlite", "postgresql://127.0.0.1:1/x"], "no such ledger file"),
    (["postgresql://127.0.0.1:1/x", "postgresql://127.0.0.1:1/y"], "SOURCE must be a SQLite ledger file"),
    (["{source}", "/tmp/other.sqlite"], "the destination must be a postgresql:// URL"),
])
def test_ledger_migrate_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    source = tmp_path / "ledger.sqlite"
    Ledger.open(source).close()
    result = CliRunner().invoke(cli, ["ledger", "migrate", *[a.format(source=source) for a in args]])
    assert result.exit_code != 0 and message in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback


@pytest.mark.parametrize("damage, message", [
    ("drop", "rows per table differ"),
    ("amount", "batch totals differ (TERM0001 batch 000001)"),
])
def test_ledger_migrate_verification_catches_a_bad_copy(tmp_path: Path, pg_url: str,
                                                        monkeypatch: pytest.MonkeyPatch, damage: str,
                                                        message: str) -> None:
    """The verification is real: a copy that lost a row, or changed an amount, fails the command."""
    source = tmp_path / "ledger.sqlite"
    build_sqlite_ledger(source)
    real_import = PostgresBackend.import_rows

    def damaged_import(self: PostgresBackend, rows: Any, **options: Any) -> None:
        def altered(table: str) -> Iterator[tuple[Any, ...]]:
            for row in rows(table):
                if table == "postings" and row[0] == 2:
                    if damage == "drop":
                        continue
                    row = (*row[:8], row[8] + 1, *row[9:])
                yield row

        real_import(self, altered, **options)

    monkeypatch.setattr(PostgresBackend, "import_rows", damaged_import)
    result = CliRunner().invoke(cli, ["ledger", "migrate", str(source), pg_url])
    assert result.exit_code == 1 and f"verification failed: {message}" in result.output


def test_one_switch_serves_a_postgresql_ledger_at_a_time(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second writer is refused while the first lives (readers are not); the lock goes with the
    first one's session, so a restart after a crash or a close is never locked out."""
    monkeypatch.setattr("switch.ledger_backends.postgresql.WRITER_LOCK_WAIT", 0.2)
    first = Ledger.open(pg_url, writer=True)
    with pytest.raises(LedgerError, match="another switch is serving from this ledger"):
        Ledger.open(pg_url, writer=True)
    reader = Ledger.open(pg_url)
    reader.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the session dies, as with a SIGKILLed switch
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                     "'iso-switch' AND datname = current_database()")
    second = Ledger.open(pg_url, writer=True)
    second.close()
    first.close()  # nothing was pending: closing the dead connection just lets it go


def random_history(ledger: Ledger, rng: random.Random, operations: int) -> None:
    """Postings of every kind and direction, full and partial reversals, reversals of unknown originals,
    uploads, settlements open and closed, discrepancies with and without amounts; times with fractions."""
    approved: list[Posting] = []
    for n in range(operations):
        choice = rng.random()
        terminal = f"TERM{rng.randint(1, 4):04d}"
        batch = ledger.current_batch(terminal)
        seq = ledger.next_sequence()
        at = T0 + n + rng.random()
        if choice < 0.6:
            ok = rng.random() < 0.85
            amount = rng.randint(1, 10**9)
            ledger.append_posting(seq, at, terminal, f"{n:06d}", f"0601{n:06d}", "0200",
                                  rng.choice(["purchase", "purchase", "authorization", "advice"]),
                                  rng.choice(["debit", "debit", "credit"]), amount, "840", "476173******0010", batch,
                                  "00" if ok else "51", ok, f"{seq:012d}", "123456" if ok else "",
                                  rng.choice(["", f"L{n}"]), rng.choice([None, amount + 7]))
            if ok:
                approved.append(ledger.posting(seq))
        elif choice < 0.75 and approved:
            original = ledger.posting(rng.choice(approved).seq)
            captured = ledger.captured_amount(original)
            if captured > 1 and rng.random() < 0.4:
                effect, undone = "partially-reversed", rng.randint(1, captured - 1)
            elif captured:
                effect, undone = "reversed", 0
            else:
                effect, undone = "nothing-to-undo", 0
            ledger.record_reversal(Reversal(seq, at, original.terminal, f"{n:06d}", "", "0400", original.seq,
                                            original.stan, original.transmission_time, "00", effect, undone))
        elif choice < 0.8:
            ledger.record_reversal(Reversal(seq, at, terminal, f"{n:06d}", "", "0400", None, "999999", "", "25",
                                            "original-unknown"))
        elif choice < 0.9:
            ledger.record_upload(UploadRecord(seq, at, terminal, batch, f"{n:06d}", "000000", "debit",
                                              rng.randint(1, 500), "", ""))
            if rng.random() < 0.3:
                ledger.end_upload(ledger.next_sequence(), at, terminal, batch)
        else:
            closed = rng.random() < 0.5
            ledger.record_settlement(
                Settlement(seq, at, terminal, batch, f"{n:06d}", "",
                           "accepted-after-upload" if closed else "unbalanced", "00" if closed else "95", closed,
                           1, 2, 3, 4),
                [Discrepancy(ledger.next_sequence(), at, terminal, batch, "amount-differs", "000001", "1",
                             rng.choice([None, 5]), None, "differs")] if closed else [])
        if rng.random() < 0.05:
            ledger.unposted_rrn_number()
        if rng.random() < 0.1:
            ledger.flush()


def test_sqlite_and_postgresql_replay_to_identical_state(tmp_path: Path, pg_url: str) -> None:
    """The seam's contract: the same history written through either backend reads back as the same
    ledger (flags, NULLs, float times, big amounts), so the host decides alike on both."""
    states = []
    for target in (str(tmp_path / "ledger.sqlite"), pg_url):
        ledger = Ledger.open(target)
        random_history(ledger, random.Random(1608), 600)
        live = state(ledger)
        ledger.close()
        reopened = Ledger.open(target)
        assert state(reopened) == live
        states.append(live)
        reopened.close()
    assert states[0] == states[1]
    assert any(b.status == "closed" for b in states[0][1]) and any(b.debit_reversal_amount for b in states[0][1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reading_a_ledger_writes_nothing_to_it(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``iso-switch ledger`` only reads: no unposted RRN block is claimed, so reading a ledger a switch
    serves never contends for its writes nor burns its numbers."""
    target = str(tmp_path / "ledger.sqlite") if backend == "sqlite" else request.getfixturevalue("pg_url")
    Ledger.open(target).close()  # created; a serving open claims a block

    def claimed() -> str | None:
        with open_backend(target) as reader:
            return reader.meta(UNPOSTED_KEY)

    before = claimed()
    for _ in range(3):
        result = CliRunner().invoke(cli, ["ledger", "--ledger", target, "--json"])
        assert result.exit_code == 0, result.output
    assert claimed() == before
