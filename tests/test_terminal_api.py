"""terminal.api: open_terminal against the real switch in-process (memory streams, virtual clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import terminal
from switch.testkit.checks import assert_posted
from terminal.api import OutcomeKind, SignOnFailed, TerminalOutcome, open_terminal
from terminal.profile import TerminalProfile
from terminal.store import TerminalStore
from tests.test_terminal_client import ISO, MID, TID, Rig, switch


def _open(rig: Rig, **options: Any) -> Any:
    return open_terminal(dialect=rig.dialect, clock=rig.clock, connect=rig.connect, on_note=rig.notes.append,
                         terminal_id=TID, merchant_id=MID, **options)


async def test_purchase_is_approved_with_typed_values_and_posted(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, _open(rig) as t:
        assert t.signed_on and rig.note_kinds().count("signed-on") == 1  # signed on at entry
        sale = await t.purchase(1234)
        assert isinstance(sale, TerminalOutcome)
        assert sale.kind is OutcomeKind.APPROVED and sale.approved and not sale.money_may_have_moved
        assert (sale.operation, sale.response_code, sale.amount) == ("purchase", "00", 1234)
        assert len(sale.rrn) == 12 and len(sale.auth_code) == 6 and sale.stan
        posting = assert_posted(rig.ledger.postings(), sale.stan, terminal=TID, amount=1234)
        assert (posting.rrn, posting.auth_code) == (sale.rrn, sale.auth_code)
        assert rig.connections == 1  # sign-on and sale on one connection


async def test_lost_answer_ends_reversed_and_void_is_reversed(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, _open(rig, response_timeout=5.0) as t:
        rig.faults.add({"id": "lose", "when": {"mti": ["0200"], "first": 1}, "drop_response": True})
        lost = await t.purchase(700)
        assert lost.kind is OutcomeKind.REVERSED and not lost.approved
        assert_posted(rig.ledger.postings(), lost.stan, approved=True, reversed=True)
        sale = await t.purchase(800)
        void = await t.reverse_last()
        assert (sale.kind, void.kind) == (OutcomeKind.APPROVED, OutcomeKind.REVERSED)
        assert_posted(rig.ledger.postings(), sale.stan, reversed=True)


async def test_declines_refusals_and_balance(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, _open(rig) as t:
        declined = await t.purchase(100, pan="4000000000000051")
        assert (declined.kind, declined.response_code, declined.meaning) == (
            OutcomeKind.DECLINED, "51", "insufficient funds")
        refused = await t.purchase(100, pan="4000000000000052")  # Luhn check fails: nothing sent
        assert refused.kind is OutcomeKind.REFUSED
        balance = await t.balance()
        assert balance.kind is OutcomeKind.APPROVED
        drained = await t.drain()
        assert drained.kind is OutcomeKind.COMPLETED


async def test_refused_signon_raises_with_the_outcome(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        rig.faults.add({"id": "no", "when": {"mti": ["0800"]}, "respond": "05"})
        with pytest.raises(SignOnFailed, match="sign-on failed") as failure:
            async with _open(rig, signon_attempts=1):
                pytest.fail("entered without a sign-on")
        assert failure.value.outcome.kind is OutcomeKind.DECLINED
        assert failure.value.outcome.response_code == "05"


async def test_without_signon_at_entry_the_sale_signs_on_itself(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig, _open(rig, sign_on=False) as t:
        assert not t.signed_on and rig.connections == 0
        assert (await t.purchase(100)).approved
        assert t.signed_on


async def test_store_path_is_created_kept_and_closed(autojump_clock: Any, inline_threads: None, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "terminal.sqlite"
    async with switch() as rig, _open(rig, store=path) as t:
        stan = (await t.purchase(100)).stan
    assert t.store.closed
    with TerminalStore.open(path, TID) as store:
        assert store.last_stan == stan


async def test_a_store_you_open_stays_yours(autojump_clock: Any, inline_threads: None) -> None:
    with TerminalStore.open(":memory:", TID) as store:
        async with switch() as rig, _open(rig, store=store) as t:
            await t.echo()
        assert not store.closed


async def test_profile_or_settings_not_both() -> None:
    profile = TerminalProfile.for_dialect(ISO, TID, MID)
    with pytest.raises(ValueError, match="either profile= or"):
        async with open_terminal(profile=profile, response_timeout=3.0):
            pass


def test_exported_from_the_terminal_package() -> None:
    assert terminal.open_terminal is open_terminal and terminal.OutcomeKind is OutcomeKind
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        terminal.nope  # noqa: B018
    assert {kind.value for kind in OutcomeKind} == set(__import__("terminal.policy").policy.OUTCOME_KINDS)


async def test_an_error_in_the_block_comes_out_as_raised(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        with pytest.raises(AssertionError, match="mine"):
            async with _open(rig):
                raise AssertionError("mine")


def test_the_cli_and_the_api_share_their_defaults() -> None:
    """Until the CLI imports terminal.defaults, the two must not drift apart."""
    from datetime import date

    from terminal import defaults
    from terminal.cli import terminal_command as cli

    day = date(2026, 6, 1)
    assert (cli.TEST_PAN, cli.DEFAULT_TERMINAL_ID, cli.DEFAULT_MERCHANT_ID, cli.default_expiry(day)) == (
        defaults.TEST_PAN, defaults.DEFAULT_TERMINAL_ID, defaults.DEFAULT_MERCHANT_ID, defaults.default_expiry(day))
