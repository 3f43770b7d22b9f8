"""``iso-terminal status``: the terminal's store (STAN, batch, what is owed), without connecting."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import click

from terminal.cli.app import cli
from terminal.cli.terminal_command import TerminalCommand, TerminalSettings, terminal_options
from terminal.policy import (
    meaning_of,
)
from terminal.profile import format_amount
from terminal.store import JournalEntry, TerminalStore


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _batch_totals(entries: Iterable[JournalEntry]) -> dict[str, int]:
    totals = {"debit_count": 0, "debit_amount": 0, "credit_count": 0, "credit_amount": 0}
    for entry in entries:
        if entry.captured:
            totals[f"{entry.direction}_count"] += 1
            totals[f"{entry.direction}_amount"] += entry.amount
    totals["net_amount"] = totals["debit_amount"] - totals["credit_amount"]
    return totals


def store_status(store: TerminalStore) -> dict[str, Any]:
    """What ``status --json`` prints: counters, queues with reasons and attempts, the open batch."""
    entries = store.entries(batch=store.batch)
    reversals = []
    for reversal in store.reversals():
        entry = store.entry(reversal.journal_id)
        reversals.append({
            "journal_id": entry.id, "kind": entry.kind, "stan": entry.stan, "amount": entry.amount,
            "reason": reversal.reason, "meaning": meaning_of(reversal.reason), "attempts": reversal.attempts,
            "created_at": reversal.created_at, "updated_at": reversal.updated_at,
        })
    advices = []
    for advice in store.advices():
        entry = store.entry(advice.journal_id)
        advices.append({
            "journal_id": entry.id, "stan": entry.stan, "amount": entry.amount, "attempts": advice.attempts,
            "created_at": advice.created_at, "updated_at": advice.updated_at,
        })
    pending = store.pending_settlement
    return {
        "store": store.path,
        "summary": store.summary(),
        "signed_on_trusted": False,
        "clock": None if store.clock_offset is None else {
            "offset_seconds": store.clock_offset[0], "synced_at": store.clock_offset[1],
        },  # sessions do not survive restarts: the next command signs on again
        "open_batch_totals": _batch_totals(entries),
        "pending_reversals": reversals,
        "pending_advices": advices,
        "pending_settlement": None if pending is None else {
            "batch": pending.batch, "stan": pending.message.get(11), "attempts": pending.attempts,
        },
        "open_batch_entries": [entry.as_dict() for entry in entries],
    }


def _clock_line(clock: dict[str, float] | None) -> str:
    if clock is None:
        return "clock: not synchronised with the host yet (the next sign-on does it)"
    return (f"clock: host − terminal {clock['offset_seconds']:+.0f}s, learnt at sign-on {_utc(clock['synced_at'])}; "
            "fields 7/12/13 use the host's time")


def status_lines(status: dict[str, Any], exponent: int) -> list[str]:
    """``status_json`` for people."""
    summary = status["summary"]
    money = functools.partial(format_amount, exponent=exponent)
    states = ", ".join(f"{state} {count}" for state, count in sorted(summary["open_batch_states"].items()))
    totals = status["open_batch_totals"]
    signed = summary["signed_on_at"]
    lines = [
        f"terminal {summary['terminal_id']} (store {status['store']})",
        f"last STAN {summary['last_stan']}; open batch {summary['batch']}: "
        f"{summary['open_batch_entries']} entries{f' ({states})' if states else ''}",
        f"open batch totals: {totals['debit_count']} debits {money(totals['debit_amount'])}, "
        f"{totals['credit_count']} credits {money(totals['credit_amount'])}, net {money(totals['net_amount'])}",
        ("signed on: never, or signed off" if signed is None else f"last signed on {_utc(signed)}")
        + " (not trusted across runs: the next command signs on first)",
        _clock_line(status.get("clock")),
        f"pending reversals: {len(status['pending_reversals']) or 'none'}",
    ]
    for item in status["pending_reversals"]:
        lines.append(f"  {item['kind']} STAN {item['stan']} {money(item['amount'])}: reason {item['reason']} "
                     f"({item['meaning']}), {item['attempts']} attempts, queued {_utc(item['created_at'])}")
    lines.append(f"pending advices: {len(status['pending_advices']) or 'none'}")
    for item in status["pending_advices"]:
        lines.append(f"  advice STAN {item['stan']} {money(item['amount'])}: {item['attempts']} attempts")
    pending = status["pending_settlement"]
    lines.append("pending settlement: " + ("none" if pending is None else
                 f"batch {pending['batch']} STAN {pending['stan']}, {pending['attempts']} attempts, "
                 "repeated before anything else"))
    return lines


@cli.command(cls=TerminalCommand, short_help="Show the terminal's store: STAN, batch, what is owed. No network.")
@terminal_options
def status(settings: TerminalSettings) -> None:
    """Show the terminal's durable state without connecting: last STAN, open batch and its totals,
    pending reversals and advices (with reasons and attempts), an unanswered settlement."""
    path = settings.store_path
    if path != ":memory:" and not os.path.exists(path):
        terminal = settings.profile.terminal_id.rstrip()
        if settings.as_json:
            click.echo(json.dumps({"store": path, "exists": False, "terminal_id": terminal}))
        else:
            click.echo(f"terminal {terminal}: no store at {path} yet (nothing done with this terminal)")
        return
    with TerminalStore.open(path, settings.profile.terminal_id) as store:
        report = store_status(store)
    if settings.as_json:
        click.echo(json.dumps({**report, "exists": True}))
    else:
        click.echo("\n".join(status_lines(report, settings.profile.currency_exponent)))
