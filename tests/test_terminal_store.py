"""The terminal's durable store: counters, journal, queues, atomic transactions, reopening."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.message import Message
from terminal.store import (
    FIRST_BATCH,
    JOURNAL_STATES,
    PendingSettlement,
    StoreError,
    TerminalStore,
    next_batch_number,
    next_stan,
)

TID = "T0000001"
NOW = 1_740_830_400.0


def request(stan: str = "000001", **extra: str) -> Message:
    fields = {2: "4111111111111111", 3: "000000", 4: "000000001234", 7: "0301120000", 11: stan,
              35: "4111111111111111=2712101", 41: TID, 42: "SHOP01         ", 52: "0123456789ABCDEF"}
    fields.update({int(k.removeprefix("f")): v for k, v in extra.items()})
    return Message("0200", fields)


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "terminal.sqlite"


@pytest.fixture
def store(store_path):
    with TerminalStore.open(store_path, TID) as opened:
        yield opened


def add(store: TerminalStore, stan: str = "000001", state: str = "in-flight", **kw):
    return store.add_entry(kind=kw.pop("kind", "purchase"), direction=kw.pop("direction", "debit"),
                           request=request(stan), amount=kw.pop("amount", 1234), currency="840",
                           pan="4111111111111111", state=state, now=NOW, **kw)


# -- counters ----------------------------------------------------------------------------------


def test_stan_sequence_starts_at_one_and_wraps_past_999999():
    assert next_stan("000000") == "000001"
    assert next_stan("000041") == "000042"
    assert next_stan("999999") == "000001"
    assert next_batch_number("999999") == "000001"


@given(st.integers(0, 999_999))
@settings(max_examples=200, deadline=None)
def test_next_stan_is_always_a_valid_stan(value):
    stan = next_stan(f"{value:06d}")
    assert len(stan) == 6 and stan != "000000"
    assert int(stan) == value + 1 if value < 999_999 else stan == "000001"


def test_stan_and_batch_survive_reopening(store_path):
    with TerminalStore.open(store_path, TID) as store:
        assert store.last_stan == "000000"
        assert [store.next_stan() for _ in range(3)] == ["000001", "000002", "000003"]
        assert store.batch == FIRST_BATCH
        assert store.close_batch() == "000002"
    with TerminalStore.open(store_path, TID) as store:
        assert store.last_stan == "000003"
        assert store.next_stan() == "000004"
        assert store.batch == "000002"


def test_stan_wraps_in_the_store(store):
    store._set_meta("stan", "999998")
    assert [store.next_stan(), store.next_stan(), store.next_stan()] == ["999999", "000001", "000002"]


def test_closing_a_batch_clears_an_unanswered_settlement(store):
    store.set_pending_settlement(PendingSettlement("000001", Message("0500", {11: "000009"}), 1))
    store.close_batch()
    assert store.pending_settlement is None


# -- opening -----------------------------------------------------------------------------------


def test_file_store_uses_wal_and_full_sync(store):
    conn = store._db()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_store_belongs_to_one_terminal(store_path):
    TerminalStore.open(store_path, "T0000001  ").close()  # field 41 padding is not identity
    with pytest.raises(StoreError, match="store of terminal 'T0000001', not 'T0000002'"):
        TerminalStore.open(store_path, "T0000002")


def test_blank_terminal_id_is_refused(store_path):
    with pytest.raises(StoreError, match="non-blank"):
        TerminalStore.open(store_path, "   ")


def test_other_files_are_not_stores(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a terminal store"):
        TerminalStore.open(junk, TID)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a terminal store"):
        TerminalStore.open(other, TID)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        TerminalStore.open(tmp_path / "nope" / "t.sqlite", TID)


def test_other_schema_version_is_refused(store_path):
    with TerminalStore.open(store_path, TID) as store:
        store._set_meta("schema_version", "99")
    with pytest.raises(StoreError, match="schema '99'"):
        TerminalStore.open(store_path, TID)


def test_closed_store_says_so(store_path):
    store = TerminalStore.open(store_path, TID)
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.next_stan()


# -- journal -----------------------------------------------------------------------------------


def test_journal_entry_round_trip_without_secrets(store):
    entry = add(store, "000007")
    assert (entry.stan, entry.transmission_time, entry.amount, entry.state) == ("000007", "0301120000", 1234,
                                                                                 "in-flight")
    assert entry.pan == "411111******1111"
    assert entry.batch == FIRST_BATCH
    assert 35 not in entry.request and 52 not in entry.request
    assert entry.request[2] == "4111111111111111"  # a reversal and an upload need the card number
    raw = store._db().execute("SELECT request FROM journal").fetchone()[0]
    assert "=2712" not in raw and "0123456789ABCDEF" not in raw


def test_journal_updates_and_queries(store):
    first = add(store, "000001")
    second = add(store, "000002")
    store.update_entry(first.id, now=NOW + 1, state="approved", response_code="00", rrn="000000000001",
                       auth_code="123456")
    store.update_entry(second.id, now=NOW + 1, state="declined", response_code="51")
    assert [e.stan for e in store.entries(states=("approved",))] == ["000001"]
    assert [e.stan for e in store.entries(batch=FIRST_BATCH)] == ["000001", "000002"]
    assert store.entries(batch="000002") == []
    approved = store.entry(first.id)
    assert approved.money_moved is True and approved.captured and approved.updated_at == NOW + 1
    assert store.entry(second.id).money_moved is False
    assert approved.as_dict()["money_moved"] is True


def test_money_moved_is_known_only_for_final_states(store):
    entry = add(store)
    expected = {"in-flight": None, "approved": True, "declined": False, "unknown": None, "reversed": False,
                "reversal-refused": None, "advice-pending": None}
    assert set(expected) == set(JOURNAL_STATES)
    for state, moved in expected.items():
        assert store.update_entry(entry.id, now=NOW, state=state).money_moved is moved


def test_authorizations_hold_funds_but_are_not_captured(store):
    entry = add(store, kind="authorization", state="approved")
    assert entry.money_moved is True and not entry.captured


@pytest.mark.parametrize(("changes", "message"), [
    ({"state": "lost"}, "journal state must be one of"),
    ({"stan": "000009"}, "cannot be changed"),
    ({"response_code": "000"}, "response_code must be up to 2"),
])
def test_bad_journal_updates_are_refused(store, changes, message):
    entry = add(store)
    with pytest.raises(StoreError, match=message):
        store.update_entry(entry.id, now=NOW, **changes)


@pytest.mark.parametrize(("kw", "message"), [
    ({"kind": "loan"}, "journal kind"),
    ({"direction": "up"}, "direction"),
    ({"state": "maybe"}, "journal state"),
    ({"amount": -1}, "amount must be"),
])
def test_bad_journal_entries_are_refused(store, kw, message):
    with pytest.raises(StoreError, match=message):
        add(store, **kw)


def test_unknown_entry_is_an_error(store):
    with pytest.raises(StoreError, match="no journal entry 42"):
        store.entry(42)
    with pytest.raises(StoreError, match="no journal entry 42"):
        store.update_entry(42, now=NOW, state="approved")


def test_recovery_turns_in_flight_into_unknown(store):
    in_flight = add(store, "000001")
    done = add(store, "000002", state="approved")
    recovered = store.recover_in_flight(NOW + 5)
    assert [e.id for e in recovered] == [in_flight.id]
    assert store.entry(in_flight.id).state == "unknown"
    assert store.entry(done.id).state == "approved"
    assert store.recover_in_flight(NOW + 6) == []


# -- queues ------------------------------------------------------------------------------------


def test_pending_reversals_in_order_and_updates(store):
    one, two = add(store, "000001"), add(store, "000002")
    r2 = store.add_reversal(two.id, "98", request("000002").copy(mti="0400"), NOW)
    r1 = store.add_reversal(one.id, "98", request("000001").copy(mti="0400"), NOW)
    assert [r.id for r in store.reversals()] == [r2.id, r1.id]  # the order they were stored in
    assert r1.attempts == 0 and 35 not in r1.message and 52 not in r1.message
    updated = store.update_reversal(r1.id, now=NOW + 1, attempts=1, reason="A0",
                                    message=r1.message.copy(f11="000003"))
    assert (updated.attempts, updated.reason, updated.message[11]) == (1, "A0", "000003")
    assert store.reversal_for(one.id) == updated
    store.delete_reversal(r1.id)
    assert store.reversal_for(one.id) is None
    with pytest.raises(StoreError, match="no pending reversal"):
        store.reversal(r1.id)


def test_one_reversal_per_journal_entry(store):
    entry = add(store)
    store.add_reversal(entry.id, "98", request().copy(mti="0400"), NOW)
    with pytest.raises(sqlite3.IntegrityError):
        store.add_reversal(entry.id, "98", request().copy(mti="0400"), NOW)


def test_pending_advices(store):
    entry = add(store, kind="advice", state="advice-pending")
    advice = store.add_advice(entry.id, request().copy(mti="0220"), NOW)
    assert store.advices() == [advice]
    bumped = store.update_advice(advice.id, now=NOW + 1, attempts=2)
    assert bumped.attempts == 2 and bumped.message == advice.message
    store.delete_advice(advice.id)
    assert store.advices() == []


def test_pending_settlement_round_trip(store_path):
    message = Message("0500", {11: "000005", 41: TID, 74: "0000000000"})
    with TerminalStore.open(store_path, TID) as store:
        assert store.pending_settlement is None
        store.set_pending_settlement(PendingSettlement("000001", message, 1))
    with TerminalStore.open(store_path, TID) as store:
        assert store.pending_settlement == PendingSettlement("000001", message, 1)
        store.clear_pending_settlement()
        assert store.pending_settlement is None


def test_signon_is_recorded_for_status_only(store):
    assert store.signed_on_at is None
    store.record_signon(NOW)
    assert store.signed_on_at == NOW
    store.record_signon(None)
    assert store.signed_on_at is None


def test_summary(store):
    entry = add(store)
    store.add_reversal(entry.id, "98", request().copy(mti="0400"), NOW)
    summary = store.summary()
    assert summary["pending_reversals"] == 1 and summary["open_batch_states"] == {"in-flight": 1}
    assert summary["batch"] == FIRST_BATCH and summary["pending_settlement"] is None


# -- atomicity ---------------------------------------------------------------------------------


def test_a_transaction_commits_all_or_nothing(store_path):
    with TerminalStore.open(store_path, TID) as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.next_stan()
            entry = add(store)
            store.add_reversal(entry.id, "98", request().copy(mti="0400"), NOW)
            raise RuntimeError("killed between steps")
        assert store.last_stan == "000000"
        assert store.entries() == [] and store.reversals() == []
        with store.transaction():
            store.next_stan()
            entry = add(store)
            store.add_reversal(entry.id, "98", request().copy(mti="0400"), NOW)
    with TerminalStore.open(store_path, TID) as store:
        assert store.last_stan == "000001"
        assert len(store.entries()) == 1 and len(store.reversals()) == 1


def test_a_committed_step_is_visible_to_another_connection_at_once(store_path, store):
    """Durable before the method returns: a second reader (a restarted process) sees it."""
    with store.transaction():
        store.next_stan()
        add(store)
    reader = sqlite3.connect(store_path)
    try:
        assert reader.execute("SELECT value FROM meta WHERE key = 'stan'").fetchone()[0] == "000001"
        assert reader.execute("SELECT COUNT(*) FROM journal").fetchone()[0] == 1
    finally:
        reader.close()


def test_memory_store_for_tests():
    with TerminalStore.open(":memory:", TID) as store:
        assert store.next_stan() == "000001"


# -- deferred sync and the in-memory copies -----------------------------------------------------


def test_deferred_sync_store_says_when_it_must_sync_and_a_full_one_never(store_path, store):
    add(store)
    assert not store.needs_sync  # synchronous=FULL: every commit is on disk already
    with TerminalStore.open(store_path.with_name("deferred.sqlite"), TID, deferred_sync=True) as deferred:
        assert deferred.deferred_sync and not deferred.needs_sync
        entry = add(deferred)
        assert deferred.needs_sync
        deferred.sync()
        assert not deferred.needs_sync
        deferred.update_entry(entry.id, now=NOW + 1, state="approved")
        assert deferred.needs_sync  # an answer's write waits for the next request (or close)
    with TerminalStore.open(store_path.with_name("deferred.sqlite"), TID) as reopened:
        assert reopened.entry(entry.id).state == "approved"  # close made it durable
    memory = TerminalStore.open(":memory:", TID, deferred_sync=True)
    add(memory)
    assert not memory.deferred_sync and not memory.needs_sync
    memory.close()


def test_deferred_sync_checkpoints_now_and_then(store_path):
    with TerminalStore.open(store_path, TID, deferred_sync=True) as deferred:
        for _ in range(1499):
            deferred.next_stan()
            deferred.sync()
        wal = store_path.with_name(store_path.name + "-wal")
        assert wal.stat().st_size < 3_000_000  # sync() checkpoints well before SQLite's own 1000 pages (4 MB)
        assert deferred.last_stan == "001499"


def test_what_the_store_remembers_equals_what_it_reads_back(store_path):
    with TerminalStore.open(store_path, TID, deferred_sync=True) as store:
        entry = add(store, amount=700)
        reversal = store.add_reversal(entry.id, "98", request(), NOW)
        advice = store.add_advice(entry.id, request("000002"), NOW)
        store.update_entry(entry.id, now=NOW + 2, state="approved", amount=650, rrn="000000000009")
        store.update_reversal(reversal.id, now=NOW + 3, attempts=2, message=request(f39="98"))
        store.update_advice(advice.id, now=NOW + 4, attempts=1)
        remembered = (store.entry(entry.id), store.reversals(), store.advices(), store.last_stan)
    with TerminalStore.open(store_path, TID) as fresh:
        assert (fresh.entry(entry.id), fresh.reversals(), fresh.advices(), fresh.last_stan) == remembered
    assert remembered[0].request.get(35) is None and remembered[1][0].message.get(52) is None  # no secrets


def test_a_rolled_back_transaction_leaves_nothing_in_memory_either(store):
    entry = add(store)
    with pytest.raises(RuntimeError), store.transaction():
        store.next_stan()
        store.add_reversal(entry.id, "98", request(), NOW)
        store.update_entry(entry.id, now=NOW, state="approved")
        raise RuntimeError("the process failed mid-step")
    assert store.reversals() == [] and store.reversal_for(entry.id) is None
    assert store.entry(entry.id).state == "in-flight" and store.last_stan == "000000"


def test_changing_what_the_store_returned_does_not_change_the_store(store):
    entry = add(store)
    store.add_reversal(entry.id, "98", request(), NOW)
    store.entry(entry.id).request.fields[4] = "999999999999"
    store.reversals()[0].message.fields[4] = "999999999999"
    assert store.entry(entry.id).request[4] == "000000001234"
    assert store.reversals()[0].message[4] == "000000001234"


def test_a_failed_step_of_a_deferred_store_undoes_only_itself(store_path):
    with TerminalStore.open(store_path, TID, deferred_sync=True) as store:
        entry = add(store)
        store.add_reversal(entry.id, "98", request(), NOW)
        with pytest.raises(RuntimeError), store.transaction():
            store.next_stan()
            store.update_entry(entry.id, now=NOW, state="approved")
            raise RuntimeError("the process failed mid-step")
        assert store.entry(entry.id).state == "in-flight" and len(store.reversals()) == 1  # the earlier steps stand
        assert store.last_stan == "000000"
        store.sync()
    with TerminalStore.open(store_path, TID) as reopened:
        assert reopened.entry(entry.id).state == "in-flight" and len(reopened.reversals()) == 1


def test_a_failed_first_step_after_a_sync_undoes_only_itself(store_path):
    """The first step after a sync opens the transaction without a savepoint: undoing it is a rollback,
    which must leave the synced steps and let the next step start cleanly."""
    with TerminalStore.open(store_path, TID, deferred_sync=True) as store:
        entry = add(store)
        store.sync()
        assert not store.needs_sync
        with pytest.raises(RuntimeError), store.transaction():
            store.update_entry(entry.id, now=NOW, state="approved")
            raise RuntimeError("the process failed mid-step")
        assert store.entry(entry.id).state == "in-flight" and store.last_stan == "000000"
        assert not store.needs_sync  # nothing new to sync: the failed step left nothing behind
        store.next_stan()  # a first step again (the failed one's transaction is gone), then a savepoint step
        store.update_entry(entry.id, now=NOW, state="declined")
        with pytest.raises(RuntimeError), store.transaction():
            store.next_stan()
            raise RuntimeError("the second step fails")
        assert store.last_stan == "000001" and store.entry(entry.id).state == "declined"
        store.sync()
    with TerminalStore.open(store_path, TID) as reopened:
        assert reopened.last_stan == "000001" and reopened.entry(entry.id).state == "declined"


def test_steps_of_a_deferred_store_not_yet_synced_are_not_on_disk(store_path):
    """What a request depends on is committed by sync(), which the driver calls before sending."""
    store = TerminalStore.open(store_path, TID, deferred_sync=True)
    add(store)
    other = sqlite3.connect(store_path)  # another reader sees nothing uncommitted (the store holds its lock)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("SELECT COUNT(*) FROM journal").fetchone()
    other.close()
    store.sync()
    store.close()
    with TerminalStore.open(store_path, TID) as reopened:
        assert len(reopened.entries()) == 1
