"""Assertions over what the switch recorded: the ledger's postings and the journal's frames.

Pure functions over the switch's own record types, so the same check runs against a subprocess
switch (rows fetched through the admin API) and an in-process one (rows read directly). Each failure
message lists the rows it looked at: a test that fails says what the switch did instead.

"Reversed exactly once" is the property a careful terminal promises after a lost answer: the ledger
shows the original reversed, and the journal shows one reversal for it — repeats (0401/0421) of that
reversal are retransmissions, not second reversals; a second 0400 with a new STAN is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from switch.journal import DIRECTION_IN, JournalEntry
from switch.ledger_records import Posting

__all__ = ["assert_not_posted", "assert_posted", "assert_reversed_once", "reversal_requests"]

_ORIGINAL_STAN = slice(4, 10)  # field 90: original MTI (4), STAN (6), field 7 (10), acquirer, forwarder


def _stan(stan: str | int) -> str:
    text = str(stan).strip()
    if not (text.isascii() and text.isdigit() and 1 <= len(text) <= 6):
        raise ValueError(f"a STAN is 1-6 digits, got {stan!r}")
    return text.zfill(6)


def _same_terminal(value: str | None, terminal: str | None) -> bool:
    return terminal is None or (value or "").rstrip() == terminal.rstrip()


def _describe(postings: Iterable[Posting]) -> str:
    rows = [f"    {p.terminal.rstrip()} STAN {p.stan} {p.mti} {p.kind} {p.amount} code {p.response_code}"
            f"{' reversed' if p.reversed else ''}" for p in postings]
    return "\n".join(rows) or "    (none)"


def _matching(postings: Iterable[Posting], stan: str | int, terminal: str | None) -> list[Posting]:
    wanted = _stan(stan)
    return [p for p in postings if p.stan == wanted and _same_terminal(p.terminal, terminal)]


def assert_posted(postings: Sequence[Posting], stan: str | int, *, terminal: str | None = None,
                  amount: int | None = None, approved: bool | None = True, response_code: str | None = None,
                  reversed: bool | None = None) -> Posting:
    """Exactly one posting with this STAN (and terminal), matching every expectation given; returns it.

    ``approved=None`` / ``reversed=None`` accept either.
    """
    found = _matching(postings, stan, terminal)
    where = f"STAN {_stan(stan)}" + (f" of terminal {terminal}" if terminal else "")
    if len(found) != 1:
        raise AssertionError(f"expected one posting for {where}, found {len(found)}; the ledger has:\n"
                             f"{_describe(postings)}")
    posting = found[0]
    problems = []
    if amount is not None and posting.amount != amount:
        problems.append(f"amount {posting.amount}, expected {amount}")
    if approved is not None and posting.approved != approved:
        problems.append(f"{'approved' if posting.approved else 'declined'} (code {posting.response_code}), "
                        f"expected {'approved' if approved else 'declined'}")
    if response_code is not None and posting.response_code != response_code:
        problems.append(f"response code {posting.response_code}, expected {response_code}")
    if reversed is not None and posting.reversed != reversed:
        problems.append("reversed, expected not" if posting.reversed else "not reversed, expected reversed")
    if problems:
        raise AssertionError(f"posting for {where}: {'; '.join(problems)}")
    return posting


def assert_not_posted(postings: Sequence[Posting], stan: str | int, *, terminal: str | None = None) -> None:
    """No posting with this STAN: the request never reached the host, or was dropped before processing."""
    found = _matching(postings, stan, terminal)
    if found:
        raise AssertionError(f"expected no posting for STAN {_stan(stan)}, found:\n{_describe(found)}")


def reversal_requests(journal: Iterable[JournalEntry], stan: str | int, *,
                      terminal: str | None = None) -> list[JournalEntry]:
    """Reversal requests (04xx received) naming ``stan`` as their original: field 90's STAN (ISO), or
    their own STAN when field 90 is absent (a CUP reversal keeps the original's)."""
    wanted = _stan(stan)
    found = []
    for entry in journal:
        if entry.direction != DIRECTION_IN or not (entry.mti or "").startswith("04"):
            continue
        if not _same_terminal(entry.terminal, terminal):
            continue
        original = entry.fields.get("90")
        named = original[_ORIGINAL_STAN] if original and len(original) >= 10 else entry.stan
        if named == wanted:
            found.append(entry)
    return found


def assert_reversed_once(postings: Sequence[Posting], journal: Sequence[JournalEntry], stan: str | int, *,
                         terminal: str | None = None) -> Posting:
    """The posting with this STAN is reversed in the ledger, and the journal shows exactly one reversal
    of it (any number of repeats of that one reversal allowed); returns the posting."""
    posting = assert_posted(postings, stan, terminal=terminal, approved=None, reversed=True)
    requests = reversal_requests(journal, stan, terminal=terminal or posting.terminal)
    distinct = sorted({entry.stan or "" for entry in requests})
    if len(distinct) != 1:
        shown = "\n".join(f"    {e.mti} STAN {e.stan} at {e.time:.3f}" for e in requests) or "    (none)"
        raise AssertionError(f"STAN {_stan(stan)} is reversed in the ledger, but the journal shows "
                             f"{len(distinct)} distinct reversals of it (repeats of one are fine):\n{shown}")
    return posting
