"""Sign-on sessions shared through a multi-instance PostgreSQL ledger (issue 16, docs/scaleout.md), in
process and without sockets: two ``Ledger`` + ``Host`` + ``TerminalOwner`` sets on one database stand in
for two switch instances. ``Node.ask`` does what the server does around the host: own the terminal
first, decide, make ``commit_seq`` durable, only then hand the answer back.

What must hold: a terminal signed on at A transacts at B without signing on again (with profiles, the
MAC made with A's working keys verifies at B); sign-off, expiry and MAC failures end the session for
every instance; a session committed before A crashed is B's; a sign-on whose commit failed left
nothing behind. Single-instance hosts write no session rows and forget sessions at a restart, as
before. Against a real PostgreSQL server (tests/pg_server.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from switch.codec import Codec, Message
from switch.host import Host, HostConfig
from switch.host.core import keys_from_text, keys_to_text
from switch.ledger import Ledger, LedgerError
from switch.profiles import ProfileSet
from switch.scenario import default_scenario
from switch.security import MacPlacement, WorkingKeys, apply_mac, with_mac_placeholder
from switch.server_terminals import TerminalOwner
from tests.pg_server import terminate_ledger_sessions
from tests.test_cup_security import CUP, cup_purchase, cup_signon, keys_from_field62_layout40, profile_set
from tests.test_server import DIALECT, NOW, network, purchase

T = "TERM0001"
SIGNON_FIRST = "A0"  # ISO 8583 family's sign-on-first and MAC-failure code (HostConfig defaults)


class Node:
    """One instance: a multi-instance ledger, its host and its terminal owner (clock moved by hand)."""

    def __init__(self, pg_url: str, *, profiles: ProfileSet | None = None, dialect: Any = DIALECT, **host: Any):
        self.ledger = Ledger.open(pg_url, multi_instance=True)
        self.host = Host(HostConfig.for_dialect(dialect, require_signon=True, **host), self.ledger,
                         default_scenario().response_rules, profiles=profiles, key_seed=8583,
                         mac_placement=MacPlacement.for_dialect(dialect) if profiles is not None else None)
        self.now = 0.0
        self.owner = TerminalOwner(self.ledger, [self.host], wait=2.0, clock=lambda: self.now)

    async def own(self, terminal: str = T) -> None:
        assert self.owner.owned(terminal) or await self.owner.acquire(terminal)

    async def ask(self, request: Message, at: datetime = NOW, *, raw: bytes | None = None) -> Message:
        """The server's order: own the terminal, decide, commit what the answer rests on, answer."""
        await self.own(Host.terminal_of(request.fields))
        decision = self.host.handle(request, at, raw=raw)
        if decision.commit_seq is not None:
            await trio.to_thread.run_sync(self.ledger.flush)
            assert self.ledger.is_committed(decision.commit_seq)
        assert decision.response is not None, decision.reason
        return decision.response

    async def release(self) -> list[str]:
        """Give back every idle terminal (a far later owner clock), then drop the database locks."""
        self.now += 1e6
        released = self.owner.sweep()
        await trio.to_thread.run_sync(self.ledger.unlock_released_terminals)
        return released


@pytest.fixture
def nodes(pg_url: str) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        with contextlib.suppress(LedgerError, psycopg.Error):  # a test cut its database sessions
            node.ledger.close()


def stored(pg_url: str, terminal: str = T) -> Any:
    """The terminal's session row as the database holds it (a fresh reader)."""
    with contextlib.closing(Ledger.open(pg_url)) as reader:
        return reader.session(terminal)


# ---------------------------------------------------------------------------------------------
# ISO terminal, no profiles: the session itself


async def test_signed_on_at_a_transacts_at_b_without_signing_on_again(nodes: list[Node], pg_url: str) -> None:
    a, b = Node(pg_url), Node(pg_url)
    nodes += [a, b]
    assert (await a.ask(network("001")))[39] == "00"
    assert (await a.ask(purchase(2)))[39] == "00"
    row = stored(pg_url)
    assert (row.terminal, row.signed_on_at, row.working_keys, row.signons) == (T, NOW.timestamp(), None, 1)
    assert await a.release() == [T]
    assert T not in a.host.sessions  # the database is the truth now
    await b.own()
    assert b.host.sessions[T] == NOW.timestamp()  # restored at the take-over, before any request
    assert (await b.ask(purchase(3)))[39] == "00"
    assert b.host.config.require_signon and b.owner.stats.acquired == 1
    with contextlib.closing(Ledger.open(pg_url)) as reader:
        assert sorted(p.stan for p in reader.postings(T)) == ["000002", "000003"]


async def test_sign_off_at_a_means_sign_on_first_at_b(nodes: list[Node], pg_url: str) -> None:
    a, b = Node(pg_url), Node(pg_url)
    nodes += [a, b]
    await a.ask(network("001"))
    signoff = a.host.handle(network("002", stan=2), NOW)
    assert signoff.outcome == "signoff" and signoff.commit_seq is not None  # durable before the 00 leaves
    await trio.to_thread.run_sync(a.ledger.flush)
    assert stored(pg_url).signed_on_at is None and stored(pg_url).signons == 1
    await a.release()
    refused = await b.ask(purchase(3))
    assert refused[39] == SIGNON_FIRST and 37 not in refused.fields
    assert (await b.ask(network("001", stan=4)))[39] == "00"
    assert (await b.ask(purchase(5)))[39] == "00"
    assert stored(pg_url).signons == 2  # B counted on from A's count


async def test_a_sign_on_first_answer_waits_for_the_sign_off_it_rests_on(nodes: list[Node], pg_url: str) -> None:
    """A0 "not signed on" right after a sign-off (another connection, same instance) must not leave
    before the sign-off's row is durable: a crash in between would restore the session elsewhere."""
    a = Node(pg_url)
    nodes.append(a)
    await a.ask(network("001"))
    signoff = a.host.handle(network("002", stan=2), NOW)
    refused = a.host.handle(purchase(3), NOW)  # the sign-off is not committed yet
    assert refused.outcome == "signon-required" and refused.commit_seq is not None
    assert refused.commit_seq == signoff.commit_seq and not a.ledger.is_committed(refused.commit_seq)


async def test_a_row_in_a_flush_not_yet_committed_is_not_committed(nodes: list[Node], pg_url: str) -> None:
    """A flush takes the rows out of the queue before its transaction commits: until it has, the rows
    are not durable, and ``is_committed`` (what the writer's wait trusts) must say so."""
    a = Node(pg_url)
    nodes.append(a)
    await a.ask(network("001"))
    signoff = a.host.handle(network("002", stan=2), NOW)
    assert signoff.commit_seq is not None
    backend = a.ledger._backend
    assert backend is not None
    entered, release = threading.Event(), threading.Event()
    write = backend.write

    def slow_write(batch: Any) -> None:
        entered.set()
        assert release.wait(10)
        write(batch)

    backend.write = slow_write  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, a.ledger.flush)
        await trio.to_thread.run_sync(entered.wait, 10)
        assert not a.ledger.is_committed(signoff.commit_seq)  # taken by the flush, not committed yet
        release.set()
    assert a.ledger.is_committed(signoff.commit_seq)


async def test_a_second_listener_never_moves_the_sign_on_count_back(nodes: list[Node], pg_url: str) -> None:
    """Two listeners' hosts on one instance keep their own memory; the row's count only rises, so the
    keys seeded by it are never issued twice."""
    a = Node(pg_url)
    nodes.append(a)
    other = Host(HostConfig.for_dialect(DIALECT, require_signon=True), a.ledger, default_scenario().response_rules,
                 key_seed=8583)
    a.owner.add_host(other)
    for stan in (1, 2, 3):
        await a.ask(network("001", stan=stan))
    await a.own()
    decision = other.handle(network("001", stan=4), NOW)
    await trio.to_thread.run_sync(a.ledger.flush)
    assert decision.outcome == "signon" and stored(pg_url).signons == 4


async def test_expiry_counts_from_the_sign_on_time_at_the_other_instance(nodes: list[Node], pg_url: str) -> None:
    a, b = Node(pg_url, session_timeout=120.0), Node(pg_url, session_timeout=120.0)
    nodes += [a, b]
    await a.ask(network("001"), NOW)
    await a.release()
    assert (await b.ask(purchase(2), NOW + timedelta(seconds=60)))[39] == "00"
    expired = b.host.handle(purchase(3), NOW + timedelta(seconds=121))
    assert expired.outcome == "signon-required" and "expired" in expired.reason
    assert expired.commit_seq is not None  # the session's end is a row, durable before the A0 leaves
    await trio.to_thread.run_sync(b.ledger.flush)
    await b.release()
    assert stored(pg_url).signed_on_at is None
    assert (await a.ask(purchase(4), NOW + timedelta(seconds=122)))[39] == SIGNON_FIRST


async def test_a_session_committed_before_a_crash_is_the_next_owners(nodes: list[Node], pg_url: str) -> None:
    a, b = Node(pg_url), Node(pg_url)
    nodes += [a, b]
    await a.ask(network("001"))  # committed: its 00 may have left
    terminate_ledger_sessions(pg_url, a.ledger)  # A dies owning the terminal; PostgreSQL drops its locks
    assert (await b.ask(purchase(2)))[39] == "00"
    assert b.host.sessions[T] == NOW.timestamp()


async def test_a_sign_on_whose_commit_failed_left_no_session(nodes: list[Node], pg_url: str) -> None:
    """The server answers a sign-on only once ``commit_seq`` is durable; here the commit is refused
    (A lost its locks before the group commit), so the 00 never left, and B must not find a session."""
    a, b = Node(pg_url), Node(pg_url)
    nodes += [a, b]
    await a.own()
    decision = a.host.handle(network("001"), NOW)
    assert decision.outcome == "signon" and decision.commit_seq is not None
    terminate_ledger_sessions(pg_url, a.ledger)
    with pytest.raises((LedgerError, psycopg.Error)):
        a.ledger.flush()
    assert not a.ledger.is_committed(decision.commit_seq)  # so the server sends nothing (CommitError)
    assert (await b.ask(purchase(2)))[39] == SIGNON_FIRST
    assert stored(pg_url) is None


async def test_reset_sessions_ends_the_owned_sessions_in_the_database(nodes: list[Node], pg_url: str) -> None:
    a, b = Node(pg_url), Node(pg_url)
    nodes += [a, b]
    await a.ask(network("001"))
    a.host.reset_sessions(now=NOW.timestamp() + 5)
    await trio.to_thread.run_sync(a.ledger.flush)  # the group committer's idle flush, in a switch
    row = stored(pg_url)
    assert row.signed_on_at is None and row.changed_at == NOW.timestamp() + 5
    await a.release()
    assert (await b.ask(purchase(2)))[39] == SIGNON_FIRST


# ---------------------------------------------------------------------------------------------
# Profiles: working keys and MACs


def maced(message: Message, mac_key: bytes) -> tuple[Message, bytes]:
    """The request as a CUP terminal sends it with its MAC, and its bytes (what the host verifies)."""
    codec = Codec(CUP)
    raw = apply_mac(codec.encode(with_mac_placeholder(message)), "cup-ecb", mac_key, MacPlacement.for_dialect(CUP))
    return codec.decode(raw), raw


async def test_a_mac_made_with_keys_from_a_verifies_at_b(nodes: list[Node], pg_url: str) -> None:
    a, b = (Node(pg_url, profiles=profile_set(), dialect=CUP) for _ in range(2))
    nodes += [a, b]
    signon = await a.ask(cup_signon())
    assert signon[39] == "00"
    pin_key, mac_key = keys_from_field62_layout40(bytes.fromhex(signon[62]))
    sale, raw = maced(cup_purchase(2), mac_key)
    assert (await a.ask(sale, raw=raw))[39] == "00"
    await a.release()
    await b.own("CUP00001")
    assert b.host.session_keys["CUP00001"] == WorkingKeys(pin_key, mac_key)
    sale, raw = maced(cup_purchase(3), mac_key)
    answer = b.host.handle(sale, NOW, raw=raw)
    assert answer.outcome == "approved", answer.reason
    assert answer.response is not None and b.host.response_mac(answer.response) == ("cup-ecb", mac_key)
    await trio.to_thread.run_sync(b.ledger.flush)
    # a wrong MAC at B ends the session for everyone: A, taking the terminal back, finds none
    forged, raw = maced(cup_purchase(4), bytes(8))
    refused = b.host.handle(forged, NOW, raw=raw)
    assert refused.outcome == "mac-failed" and "session closed" in refused.reason
    assert refused.commit_seq is not None
    await trio.to_thread.run_sync(b.ledger.flush)
    await b.release()
    assert stored(pg_url, "CUP00001").signed_on_at is None
    await a.own("CUP00001")
    assert "CUP00001" not in a.host.sessions and "CUP00001" not in a.host.session_keys


async def test_no_two_sign_ons_share_keys_whichever_instance_served_them(nodes: list[Node], pg_url: str) -> None:
    a, b = (Node(pg_url, profiles=profile_set(), dialect=CUP) for _ in range(2))
    nodes += [a, b]
    first = await a.ask(cup_signon())
    await a.release()
    second = await b.ask(cup_signon(stan=2))
    assert first[62] != second[62]  # B drew sign-on 2's keys, not sign-on 1's again
    assert stored(pg_url, "CUP00001").signons == 2


async def test_unreadable_stored_keys_restore_no_session(nodes: list[Node], pg_url: str) -> None:
    a, b = (Node(pg_url, profiles=profile_set(), dialect=CUP) for _ in range(2))
    nodes += [a, b]
    await a.ask(cup_signon())
    await a.release()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("UPDATE sessions SET working_keys = 'ZZ/00'")
    await b.own("CUP00001")
    assert "CUP00001" not in b.host.sessions and "CUP00001" not in b.host.session_keys


def test_working_keys_text_round_trips() -> None:
    keys = WorkingKeys(bytes.fromhex("0123456789ABCDEF" * 2), bytes.fromhex("FEDCBA9876543210"),
                       bytes.fromhex("1111111111111111" * 2))
    assert keys_from_text(keys_to_text(keys)) == keys
    assert keys_to_text(WorkingKeys(keys.pin_key, keys.mac_key)).count("/") == 1
    for bad in ("", "00", "A/B/C/D", "XYZ/00"):
        with pytest.raises(ValueError):
            keys_from_text(bad)


# ---------------------------------------------------------------------------------------------
# Single-instance mode: as before


def test_a_single_instance_host_writes_no_session_rows_and_forgets_at_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path, writer=True)
    host = Host(HostConfig.for_dialect(DIALECT, require_signon=True), ledger, default_scenario().response_rules)
    signon = host.handle(network("001"), NOW)
    assert (signon.outcome, signon.commit_seq) == ("signon", None)  # nothing to wait for, as ever
    assert host.handle(purchase(2), NOW).response[39] == "00"  # type: ignore[index]
    ledger.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    again = Ledger.open(path, writer=True)
    restarted = Host(HostConfig.for_dialect(DIALECT, require_signon=True), again, default_scenario().response_rules)
    assert restarted.handle(purchase(3), NOW).response[39] == SIGNON_FIRST  # type: ignore[index]
    again.close()


async def test_a_single_instance_writer_ends_sessions_instances_left(nodes: list[Node], pg_url: str) -> None:
    """Sessions left by multi-instance runs must not outlive a single-instance run in between (which
    keeps its sessions in memory): its open ends them, keeping the sign-on counts."""
    a = Node(pg_url)
    nodes.append(a)
    await a.ask(network("001"))
    a.ledger.close()
    single = Ledger.open(pg_url, writer=True)
    record = single.session(T)
    assert record is not None and record.signed_on_at is None and record.signons == 1
    single.close()
    b = Node(pg_url)
    nodes.append(b)
    assert (await b.ask(purchase(2)))[39] == SIGNON_FIRST
